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

The backward passes make the ATen calls that autograd makes (convolution_backward: cuDNN's dgrad and
wgrad on CUDA; mm for linear; max_pool2d_with_indices_backward, avg_pool2d_backward,
threshold_backward), and return their results; max pooling's backward also runs the forward that
gives it the argmax, as torch must.  The training pass is autograd itself: the forward call, then
``torch.autograd.grad`` with the upstream gradient.
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


# The backward passes: the ATen calls that autograd makes (on CUDA: cuDNN's dgrad / wgrad for conv2d,
# cuBLAS for linear, ATen's own kernels for pooling and ReLU), each returning its results; training
# is autograd itself (forward, then torch.autograd.grad), as a PyTorch training step runs the layer.

def _first_call(kernel: Callable[[], object]) -> Callable[[], object]:
    """``kernel`` after its first call (module loading, cuDNN's search: build cost, not timed)."""
    kernel()
    return kernel


def _conv_args(spec: Conv2d) -> tuple:
    return ((spec.stride_h, spec.stride_w), (spec.padding_h, spec.padding_w),
            (spec.dilation_h, spec.dilation_w), False, (0, 0), spec.groups)


def _benchmarked(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` with cudnn.benchmark on around each call (as the forward conv does)."""
    cudnn = torch.backends.cudnn

    def kernel() -> object:
        previous = cudnn.benchmark
        cudnn.benchmark = True
        try:
            return fn()
        finally:
            cudnn.benchmark = previous

    return kernel


@register("conv2d", "torch", backend="torch", reference=True, devices=DEVICES, direction="backward_data",
          description="aten.convolution_backward, dx (cuDNN's dgrad on CUDA)")
def build_conv2d_backward_data(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors,
                               out: torch.Tensor) -> Callable[[], object]:
    x, w, dy = tensors["x"], tensors["weight"], tensors["dy"]
    args = _conv_args(spec)

    def call() -> torch.Tensor:
        return torch.ops.aten.convolution_backward(dy, x, w, None, *args, [True, False, False])[0]

    return _first_call(_benchmarked(call))


@register("conv2d", "torch", backend="torch", reference=True, devices=DEVICES, direction="backward_weight",
          description="aten.convolution_backward, dweight and dbias (cuDNN's wgrad on CUDA)")
def build_conv2d_backward_weight(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors,
                                 out: torch.Tensor) -> Callable[[], object]:
    x, w, dy = tensors["x"], tensors["weight"], tensors["dy"]
    args = _conv_args(spec)
    bias_sizes = [spec.out_channels] if spec.bias else None

    def call() -> dict[str, torch.Tensor]:
        _, dw, db = torch.ops.aten.convolution_backward(dy, x, w, bias_sizes, *args, [False, True, spec.bias])
        return {"dweight": dw, "dbias": db} if spec.bias else {"dweight": dw}

    return _first_call(_benchmarked(call))


def _autograd_training(forward: Callable[..., torch.Tensor], tensors: Tensors,
                       names: tuple[str, ...]) -> Callable[[], dict[str, torch.Tensor]]:
    """One training iteration of a layer by autograd: forward, then the gradients of ``names``."""
    leaves = {k: tensors[k].detach().requires_grad_(True) for k in names}
    dy = tensors["dy"]

    def kernel() -> dict[str, torch.Tensor]:
        with torch.enable_grad():
            y = forward(leaves)
            grads = torch.autograd.grad(y, [leaves[k] for k in names], dy)
        return {"y": y.detach(), **{f"d{k}": g for k, g in zip(names, grads)}}

    return _first_call(kernel)


@register("conv2d", "torch", backend="torch", reference=True, devices=DEVICES, direction="training",
          description="F.conv2d and torch.autograd.grad (cuDNN on CUDA)")
def build_conv2d_training(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors,
                          out: torch.Tensor) -> Callable[[], object]:
    names = ("x", "weight", "bias") if spec.bias else ("x", "weight")
    stride, padding, dilation = (spec.stride_h, spec.stride_w), (spec.padding_h, spec.padding_w), (
        spec.dilation_h, spec.dilation_w)
    return _benchmarked(_autograd_training(
        lambda t: F.conv2d(t["x"], t["weight"], t.get("bias"), stride=stride, padding=padding,
                           dilation=dilation, groups=spec.groups), tensors, names))


@register("pool2d", "torch", backend="torch", reference=True, devices=DEVICES, direction="backward_data",
          description="aten.max_pool2d_with_indices_backward (after the forward that gives it the argmax) / "
                      "aten.avg_pool2d_backward")
def build_pool2d_backward_data(spec: Pool2d, dtype: DType, layout: str, tensors: Tensors,
                               out: torch.Tensor) -> Callable[[], torch.Tensor]:
    x, dy = tensors["x"], tensors["dy"]
    k, s, p = [spec.kernel] * 2, [spec.stride] * 2, [spec.padding] * 2
    if spec.method == "max":
        # torch's backward reads the argmax that its forward saves, so each launch runs that
        # forward first: x may change between launches.
        def kernel() -> torch.Tensor:
            indices = torch.ops.aten.max_pool2d_with_indices(x, k, s, p)[1]
            return torch.ops.aten.max_pool2d_with_indices_backward(dy, x, k, s, p, [1, 1], False, indices)
    else:
        def kernel() -> torch.Tensor:
            return torch.ops.aten.avg_pool2d_backward(dy, x, k, s, p, False, True, None)
    kernel()
    return kernel


@register("relu", "torch", backend="torch", reference=True, devices=DEVICES, direction="backward_data",
          description="aten.threshold_backward (ATen kernel)")
def build_relu_backward_data(spec: ReLU, dtype: DType, layout: str, tensors: Tensors,
                             out: torch.Tensor) -> Callable[[], torch.Tensor]:
    x, dy = tensors["x"], tensors["dy"]
    return _first_call(lambda: torch.ops.aten.threshold_backward(dy, x, 0))


@register("linear", "torch", backend="torch", reference=True, devices=DEVICES, direction="backward_data",
          description="dx = dy @ W (cuBLAS on CUDA)")
def build_linear_backward_data(spec: Linear, dtype: DType, layout: str, tensors: Tensors,
                               out: torch.Tensor) -> Callable[[], torch.Tensor]:
    w, dy = tensors["weight"], tensors["dy"]
    return _first_call(lambda: torch.mm(dy, w))


@register("linear", "torch", backend="torch", reference=True, devices=DEVICES, direction="backward_weight",
          description="dweight = dy^T @ x, dbias = sum of dy over the batch (cuBLAS, ATen reduction)")
def build_linear_backward_weight(spec: Linear, dtype: DType, layout: str, tensors: Tensors,
                                 out: torch.Tensor) -> Callable[[], dict[str, torch.Tensor]]:
    x, dy = tensors["x"], tensors["dy"]
    if spec.bias:
        return _first_call(lambda: {"dweight": torch.mm(dy.t(), x), "dbias": dy.sum(0)})
    return _first_call(lambda: {"dweight": torch.mm(dy.t(), x)})


@register("linear", "torch", backend="torch", reference=True, devices=DEVICES, direction="training",
          description="F.linear and torch.autograd.grad (cuBLAS on CUDA)")
def build_linear_training(spec: Linear, dtype: DType, layout: str, tensors: Tensors,
                          out: torch.Tensor) -> Callable[[], object]:
    names = ("x", "weight", "bias") if spec.bias else ("x", "weight")
    return _autograd_training(lambda t: F.linear(t["x"], t["weight"], t.get("bias")), tensors, names)


@register("pool2d", "torch", backend="torch", reference=True, devices=DEVICES, direction="training",
          description="F.max_pool2d / F.avg_pool2d and torch.autograd.grad")
def build_pool2d_training(spec: Pool2d, dtype: DType, layout: str, tensors: Tensors,
                          out: torch.Tensor) -> Callable[[], object]:
    k, s, p = spec.kernel, spec.stride, spec.padding
    pool = ((lambda t: F.max_pool2d(t["x"], k, s, p)) if spec.method == "max"
            else (lambda t: F.avg_pool2d(t["x"], k, s, p, count_include_pad=True)))
    return _autograd_training(pool, tensors, ("x",))


@register("relu", "torch", backend="torch", reference=True, devices=DEVICES, direction="training",
          description="F.relu and torch.autograd.grad")
def build_relu_training(spec: ReLU, dtype: DType, layout: str, tensors: Tensors,
                        out: torch.Tensor) -> Callable[[], object]:
    return _autograd_training(lambda t: F.relu(t["x"]), tensors, ("x",))
