"""Implementation "torch": PyTorch's default functional path, on CUDA or the CPU.

=========  ===========================================  ==========================================
layer      library that runs on CUDA                    call
=========  ===========================================  ==========================================
conv2d     cuDNN (kernels named ``cudnn::...``); NCHW   ``F.conv2d`` with cudnn.benchmark on; the
           input adds NCHW<->NHWC transposes            bias is added by an ATen kernel
pool2d     ATen's own kernels, **not** cuDNN            ``F.max_pool2d`` / ``F.avg_pool2d``
                                                        (count_include_pad=True); on CUDA max
                                                        pooling runs max_pool2d_with_indices,
                                                        which also writes argmax indices
relu       ATen's own elementwise kernel, not cuDNN     ``F.relu`` / ``torch.relu_`` (in place)
linear     cuBLAS / cuBLASLt                            ``F.linear``
=========  ===========================================  ==========================================

The CUDA column was read off the profiler (torch 2.11, cuDNN 9.19), and the GPU
tests re-check it with ``layerbench.measure.provenance``.  On the CPU the same calls run ATen's CPU
kernels (oneDNN for conv2d where torch enables it).  These calls allocate their result, which the
kernel returns, as the builder contract allows.  Build makes the first call, so one-time costs
(module loading, and for conv2d cuDNN's algorithm search) count as build cost:
``torch.backends.cudnn.benchmark`` is switched on around every convolution, so the first call
searches and later calls reuse its choice.  TF32 is whatever the harness's ``precision(dtype)``
set.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from layerbench.dtypes import DType
from layerbench.errors import Unavailable
from layerbench.builders import Tensors
from layerbench.registry import register
from layerbench.layers import Conv2d, Linear, Pool2d, ReLU

DEVICES = ("cuda", "cpu")


@register("conv2d", "torch", backend="torch", reference=True, devices=DEVICES,
          description="F.conv2d (cuDNN on CUDA, cudnn.benchmark on)")
def build_conv2d(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors,
                 out: torch.Tensor) -> Callable[[], torch.Tensor]:
    x, w, b = tensors["x"], tensors["weight"], tensors.get("bias")
    if x.is_cuda and not (torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled):
        # torch would fall back to its slow native convolution without saying so.
        raise Unavailable("torch's cuDNN is unavailable or disabled, so F.conv2d would not run cuDNN")
    stride, padding = (spec.stride_h, spec.stride_w), (spec.padding_h, spec.padding_w)
    dilation, groups = (spec.dilation_h, spec.dilation_w), spec.groups
    cudnn = torch.backends.cudnn

    def kernel() -> torch.Tensor:
        # benchmark must be on at every call, not just the first: with it off torch asks cuDNN's
        # heuristics instead of reusing the algorithm that the search chose.
        previous = cudnn.benchmark
        cudnn.benchmark = True
        try:
            return F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
        finally:
            cudnn.benchmark = previous

    kernel()  # cuDNN's algorithm search happens here, inside build
    return kernel


@register("pool2d", "torch", backend="torch", reference=True, devices=DEVICES,
          description="F.max_pool2d / F.avg_pool2d (ATen kernels, not cuDNN)")
def build_pool2d(spec: Pool2d, dtype: DType, layout: str, tensors: Tensors,
                 out: torch.Tensor) -> Callable[[], torch.Tensor]:
    x = tensors["x"]
    k, s, p = spec.kernel, spec.stride, spec.padding
    if spec.method == "max":
        def kernel() -> torch.Tensor:
            return F.max_pool2d(x, k, s, p)
    else:
        def kernel() -> torch.Tensor:
            return F.avg_pool2d(x, k, s, p, count_include_pad=True)
    kernel()
    return kernel


@register("relu", "torch", backend="torch", reference=True, devices=DEVICES,
          description="F.relu / torch.relu_ (ATen kernel, not cuDNN)")
def build_relu(spec: ReLU, dtype: DType, layout: str, tensors: Tensors,
               out: torch.Tensor) -> Callable[[], torch.Tensor]:
    x = tensors["x"]
    if out is x:
        def kernel() -> torch.Tensor:
            return torch.relu_(x)
    else:
        def kernel() -> torch.Tensor:
            return F.relu(x)
    kernel()
    return kernel


@register("linear", "torch", backend="torch", reference=True, devices=DEVICES,
          description="F.linear (cuBLAS on CUDA)")
def build_linear(spec: Linear, dtype: DType, layout: str, tensors: Tensors,
                 out: torch.Tensor) -> Callable[[], torch.Tensor]:
    x, w, b = tensors["x"], tensors["weight"], tensors.get("bias")

    def kernel() -> torch.Tensor:
        return F.linear(x, w, b)

    kernel()
    return kernel
