"""The lowered convolutions of ``kernels/lowering.py`` in Triton, both copies by ``_im2col_kernel``
inside the timed call: the column matrix, then the Triton linear layer's GEMM (tiled with split-K,
on Hopper also the persistent TMA GEMM, the fastest kept); or the input unfolded along the width,
then the TMA convolution of the R x 1 layer over it (conv_tma.py)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from layerbench.builders import Built, Kernel, Tensors, as_built, in_order
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d

from kernels.lowering import (gemm_operands, lowered_refusal, unfolded_refusal, unfolded_specs,
                              unfolded_tensors)
from kernels.triton import linear
from kernels.triton.conv_tma import build_conv_tma, tma_refusal
from kernels.triton.support import next_pow2

BLOCK_Q = 64  # at most this many output pixels of a row a program writes


@triton.jit
def _im2col_kernel(x_ptr, col_ptr, P, Q, H, W, sxn, sxc, sxh, sxw, SH, SW, PH, PW, DH, DW,
                   C: tl.constexpr, S: tl.constexpr, K_RED: tl.constexpr, KP: tl.constexpr,
                   BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr):
    # A program: BLOCK_Q pixels q of output row (n, p) by BLOCK_K columns k = (r, s, c), zero past
    # K_RED and where the tap falls outside the image (the padding).  The row fixes the input row
    # each column reads and whether it is inside, so an element's address is a pixel's offset plus
    # a column's, and its test one add and two compares.  int32 offsets: the input and the column
    # matrix have fewer than 2^31 elements (the spec, lowered_refusal and unfolded_refusal check it).
    row = tl.program_id(0)
    n = row // P
    p = row - n * P
    q = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    k = tl.program_id(2) * BLOCK_K + tl.arange(0, BLOCK_K)
    c = k % C
    s = (k // C) % S
    r = k // (C * S)
    ih = p * SH - PH + r * DH
    tap_w = s * DW - PW
    column_ok = (k < K_RED) & (ih >= 0) & (ih < H)
    iw = q[:, None] * SW + tap_w[None, :]
    inside = column_ok[None, :] & (iw >= 0) & (iw < W)
    source = x_ptr + n * sxn + (q * SW * sxw)[:, None] + (ih * sxh + c * sxc + tap_w * sxw)[None, :]
    value = tl.load(source, mask=inside, other=0.0)
    tl.store(col_ptr + (row * Q + q)[:, None] * KP + k[None, :], value, mask=(q < Q)[:, None] & (k < KP)[None, :])


def im2col_meta(spec: Conv2d, columns: int) -> dict[str, int]:
    """The im2col kernel's meta-parameters for ``spec``'s column matrix of ``columns`` columns: a
    program writes up to BLOCK_Q pixels of a row by all its columns where they are 32 or fewer,
    else by 32 where 32 divide them, else by 16 (columns past the row's end masked)."""
    block_k = next_pow2(columns) if columns <= 32 else (32 if columns % 32 == 0 else 16)
    return {"C": spec.in_channels, "S": spec.kernel_w, "K_RED": spec.in_channels * spec.kernel_h * spec.kernel_w,
            "KP": columns, "BLOCK_Q": min(BLOCK_Q, next_pow2(spec.out_width)), "BLOCK_K": block_k}


def im2col(spec: Conv2d, x: torch.Tensor, col: torch.Tensor) -> Kernel:
    """The copy of ``x`` into the dense column matrix ``col`` [pixels, columns] of ``spec``
    (columns past C*R*S zeros)."""
    columns = col.shape[1]
    meta = im2col_meta(spec, columns)
    grid = (spec.batch * spec.out_height, triton.cdiv(spec.out_width, meta["BLOCK_Q"]),
            triton.cdiv(columns, meta["BLOCK_K"]))
    args = (x, col, spec.out_height, spec.out_width, spec.height, spec.width, *x.stride(),
            spec.stride_h, spec.stride_w, spec.padding_h, spec.padding_w, spec.dilation_h, spec.dilation_w)
    launcher = _im2col_kernel[grid]

    def copy() -> None:
        launcher(*args, **meta)

    return copy


def build_lowered(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    """The im2col copy and the linear layer's GEMM for this point (``Unsupported`` with the reason
    where it does not apply)."""
    reason = lowered_refusal(spec, dtype, layout)
    if reason:
        raise Unsupported(reason)
    gemm, operands, out_matrix = gemm_operands(spec, tensors, out)
    col = operands["x"]
    copy = im2col(spec, tensors["x"], col)
    copy()  # the GEMM's build times itself on a filled column matrix
    built = as_built(linear.build(gemm, dtype, "NCHW", operands, out_matrix))
    launch: Kernel = in_order(copy, built.launch)
    return Built(launch, {"columns": col.shape[1], "gemm": dict(built.details)})


def build_unfolded(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    """The input unfolded along the width, then the TMA convolution of the R x 1 layer over it, for
    this point (``Unsupported`` with the reason where it does not apply)."""
    reason = unfolded_refusal(spec, dtype)
    if reason:
        raise Unsupported(reason)
    unfold, rows = unfolded_specs(spec, dtype)
    reason = tma_refusal(rows, dtype, layout)
    if reason:
        raise Unsupported(f"the unfolded convolution's {rows.kernel_h} x 1 layer: {reason}")
    folded = unfolded_tensors(rows, tensors)
    copy = im2col(unfold, tensors["x"], folded["x"].permute(0, 2, 3, 1).reshape(-1, rows.in_channels))
    copy()  # the TMA convolution's build times its configs on the filled input
    built = build_conv_tma(rows, dtype, layout, folded, out)
    return Built(in_order(copy, built.launch), {"unfolded_channels": rows.in_channels, "tma": dict(built.details)})
