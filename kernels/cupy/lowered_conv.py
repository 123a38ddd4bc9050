"""The lowered convolutions of ``kernels/lowering.py`` in CUDA C, both copies by layout.cu's im2col
inside the timed call: the column matrix, then the CuPy linear layer's GEMM (mma.sync, on Hopper
in fp16/bf16 also the wgmma and TMA GEMMs, the fastest kept) writes the NHWC output; or the input
unfolded along the width (an NCHW one after a copy to NHWC), then the TMA convolution of the
R x 1 layer over it (conv_tma.py).  Each path competes only after its output has passed the float64 check."""

from __future__ import annotations

import torch

from kernels.cupy import conv_tma, conv_tma_plan, linear, sources, support
from kernels.cupy.layout import channels_last_copy
from kernels.lowering import gemm_operands, lowered_refusal, unfolded_refusal, unfolded_specs, unfolded_tensors
from layerbench.builders import Built, Kernel, Tensors, as_built, in_order
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d

THREADS, VEC = 256, 8  # must match layout.cu's im2col: threads a block, elements a thread
SHARED_BUDGET = 32 * 1024  # bytes of staged input and offsets a block: seven blocks an SM still fit


def window_columns(spec: Conv2d, pixels: int) -> int:
    """WS: the input columns the taps of ``pixels`` neighbouring output pixels of a row read."""
    return (pixels - 1) * spec.stride_w + (spec.kernel_w - 1) * spec.dilation_w + 1


def segment_pixels(spec: Conv2d, columns: int, itemsize: int) -> int:
    """QB: the output pixels of a row one im2col block writes, as many as the shared-memory budget
    holds the staged input of (``Unsupported`` where not even one pixel's fits)."""
    span = window_columns(spec, 1)
    room = (SHARED_BUDGET - columns * 4) // (spec.kernel_h * spec.in_channels * itemsize)
    if room < span:
        raise Unsupported(f"the lowered convolution stages {spec.kernel_h} input rows of {span} pixels a block; "
                          f"with a {spec.kernel_h}x{spec.kernel_w} filter at dilation "
                          f"{spec.dilation_h}x{spec.dilation_w} they exceed its {SHARED_BUDGET // 1024} KiB")
    return min(spec.out_width, (room - span) // spec.stride_w + 1)


def im2col(spec: Conv2d, x: torch.Tensor, col: torch.Tensor, index: int) -> tuple[support.Launch, int]:
    """The copy of the NHWC ``x`` (checked by ``support.check_tensors``, on device ``index``) into the
    dense column matrix ``col`` [pixels, columns] of ``spec`` (columns a multiple of 8, past C*R*S
    zeros), and the output pixels a block writes."""
    if not x.permute(0, 2, 3, 1).is_contiguous():
        raise Unsupported("the im2col copy reads x dense in channels_last order")
    columns = col.shape[1]
    if columns % VEC:
        raise Unsupported(f"the im2col copy writes rows of a multiple of {VEC} columns, got {columns}")
    pixels = segment_pixels(spec, columns, x.element_size())
    window = window_columns(spec, pixels)
    segments = -(-spec.out_width // pixels)
    shared = columns * 4 + spec.kernel_h * window * spec.in_channels * x.element_size()
    i32 = support.i32
    fn = support.function("layout", sources.im2col_name(x.element_size()), index)
    args = [support.ptr(x), support.ptr(col), i32(segments), i32(pixels), i32(window), i32(columns),
            i32(spec.in_channels), i32(spec.kernel_h), i32(spec.kernel_w), i32(spec.out_height), i32(spec.out_width),
            i32(spec.height), i32(spec.width), i32(spec.stride_h), i32(spec.stride_w), i32(spec.padding_h),
            i32(spec.padding_w), i32(spec.dilation_h), i32(spec.dilation_w)]
    blocks = spec.batch * spec.out_height * segments
    launch = support.Launch(fn, (blocks, 1, 1), (THREADS, 1, 1), args, index, keep=(x, col), shared_bytes=shared)
    return launch, pixels


def build_lowered(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    """The im2col copy and the linear layer's GEMM for this point (``Unsupported`` with the reason
    where it does not apply)."""
    reason = lowered_refusal(spec, dtype, layout)
    if reason:
        raise Unsupported(reason)
    index = support.check_tensors(dtype, {"x": tensors["x"], "out": out})
    gemm, operands, out_matrix = gemm_operands(spec, tensors, out)
    col = operands["x"]
    copy, pixels = im2col(spec, tensors["x"], col, index)
    copy()  # the GEMM's build times its variants on a filled column matrix
    built = as_built(linear.build(gemm, dtype, "NCHW", operands, out_matrix))
    kernel: Kernel = in_order(copy, built.launch)
    support.check_result(kernel, spec, dtype, tensors, out, "the lowered convolution")
    return Built(kernel, {"columns": col.shape[1], "segment_pixels": pixels, "gemm": dict(built.details)})


def build_unfolded(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    """The input unfolded along the width, then the TMA convolution of the R x 1 layer over it, for
    this point (``Unsupported`` with the reason where it does not apply)."""
    reason = unfolded_refusal(spec, dtype)
    if reason:
        raise Unsupported(reason)
    unfold, rows = unfolded_specs(spec, dtype)
    reason = conv_tma_plan.refusal(rows, dtype.name, layout)
    if reason:  # before any copy runs
        raise Unsupported(f"the unfolded convolution's {rows.kernel_h} x 1 layer: {reason}")
    x = tensors["x"]
    index = support.check_tensors(dtype, {"x": x, "out": out})
    copies: list[Kernel] = []
    if layout == "NCHW":  # the im2col copy reads NHWC: the input copied first, in the timed call
        if not x.is_contiguous():
            raise Unsupported("the unfolded convolution needs an NCHW x dense (contiguous)")
        x, copy_x = channels_last_copy(x, support.ctype_of(dtype), index)
        copies.append(copy_x)
    folded = unfolded_tensors(rows, tensors)
    copy, _ = im2col(unfold, x, folded["x"].permute(0, 2, 3, 1).reshape(-1, rows.in_channels), index)
    copies.append(copy)
    for launch in copies:
        launch()  # the TMA convolution's build times its configurations on the filled input
    try:
        built = conv_tma.build(rows, dtype, layout, folded, out)
    except Unsupported as e:
        raise Unsupported(f"the unfolded convolution's {rows.kernel_h} x 1 layer: {e}") from None
    kernel: Kernel = in_order(*copies, built.launch)
    support.check_result(kernel, spec, dtype, tensors, out, "the unfolded convolution")
    return Built(kernel, {"unfolded_channels": rows.in_channels, "tma": dict(built.details)})
