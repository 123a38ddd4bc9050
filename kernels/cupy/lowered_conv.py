"""The lowered convolution (``kernels/lowering.py``: explicit im2col, then one GEMM) in CUDA C:
layout.cu's im2col writes the column matrix inside the timed call, then the CuPy linear layer's
GEMM (mma.sync, on Hopper in fp16/bf16 also the wgmma and TMA GEMMs, the fastest kept) writes the
NHWC output.  The path competes only after its output has passed the float64 check."""

from __future__ import annotations

import torch

from kernels.cupy import linear, sources, support
from kernels.lowering import gemm_operands, lowered_refusal
from layerbench.builders import Built, Kernel, Tensors, as_built, in_order
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d

THREADS, VEC = 256, 8  # must match layout.cu's im2col: threads a block, elements a thread


def build_lowered(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    """The im2col copy and the linear layer's GEMM for this point (``Unsupported`` with the reason
    where it does not apply)."""
    reason = lowered_refusal(spec, dtype, layout)
    if reason:
        raise Unsupported(reason)
    x = tensors["x"]
    index = support.check_tensors(dtype, {"x": x, "out": out})
    gemm, operands, out_matrix = gemm_operands(spec, tensors, out)
    col = operands["x"]
    rows, columns = col.shape
    i32 = support.i32
    fn = support.function("layout", sources.im2col_name(x.element_size()), index)
    chunks = rows * columns // VEC  # columns is a multiple of 16
    args = [support.ptr(x), support.ptr(col), i32(chunks), i32(columns), i32(spec.in_channels),
            i32(spec.kernel_h), i32(spec.kernel_w), i32(spec.out_height), i32(spec.out_width), i32(spec.height),
            i32(spec.width), *(i32(s) for s in x.stride()), i32(spec.stride_h), i32(spec.stride_w),
            i32(spec.padding_h), i32(spec.padding_w), i32(spec.dilation_h), i32(spec.dilation_w)]
    im2col = support.Launch(fn, (-(-chunks // THREADS), 1, 1), (THREADS, 1, 1), args, index, keep=(x, col))
    im2col()  # the GEMM's build times its variants on a filled column matrix
    built = as_built(linear.build(gemm, dtype, "NCHW", operands, out_matrix))
    kernel: Kernel = in_order(im2col, built.launch)
    support.check_result(kernel, spec, dtype, tensors, out, "the lowered convolution")
    return Built(kernel, {"columns": columns, "gemm": dict(built.details)})
