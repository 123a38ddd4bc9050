"""Convolution launcher: the implicit GEMM of igemm.cu on NCHW or NHWC tensors.

fp32 runs on FFMA (no tensor cores); tf32, fp16 and bf16 on tensor cores (mma.sync), all with
fp32 accumulation.  Both layouts run the same kernels through the tensors' strides; NHWC with
channels a multiple of 16 bytes moves the input in 16-byte chunks, anything else element-wise.
"""

from __future__ import annotations

import torch

from kernels.cupy import _igemm, _launch
from layerbench.dtypes import DType
from layerbench.registry import Kernel, Tensors, register
from layerbench.specs import Conv2d


@register("conv2d", "cupy", backend="cupy",
          description="CUDA C (CuPy): implicit GEMM, 128x128 tiles; FFMA for fp32, mma.sync tensor "
                      "cores for tf32/fp16/bf16; split-K when the output is small")
def build(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Kernel:
    _launch.check_dtype("conv2d", dtype, spec.dtypes)
    _launch.check_layout("conv2d", layout, spec.layouts)
    x, weight = tensors["x"], tensors["weight"]
    g = _igemm.Geometry(
        batch=spec.batch, channels=spec.in_channels, height=spec.height, width=spec.width,
        out_channels=spec.out_channels, out_h=spec.out_height, out_w=spec.out_width,
        kernel_h=spec.kernel_h, kernel_w=spec.kernel_w, stride=spec.stride, padding=spec.padding,
        x_strides=tuple(x.stride()), w_strides=tuple(weight.stride()),
        out_strides=tuple(out.stride()))
    return _igemm.build(dtype, x, weight, tensors.get("bias") if spec.bias else None, out, g)
