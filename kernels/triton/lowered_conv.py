"""The lowered convolution (``kernels/lowering.py``: explicit im2col, then one GEMM) in Triton:
the column matrix written by ``_im2col_kernel`` inside the timed call, then the Triton linear
layer's GEMM (tiled with split-K, on Hopper also the persistent TMA GEMM, the fastest kept)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from layerbench.builders import Built, Kernel, Tensors, as_built, in_order
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d

from kernels.lowering import gemm_operands, lowered_refusal
from kernels.triton import linear
from kernels.triton.support import pixel_of

BLOCK_M = 64  # column-matrix rows a program writes


@triton.jit
def _im2col_kernel(x_ptr, col_ptr, rows, P, Q, H, W, sxn, sxc, sxh, sxw, SH, SW, PH, PW, DH, DW,
                   C: tl.constexpr, S: tl.constexpr, K_RED: tl.constexpr, KP: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    # Rows: output pixels (n, p, q); columns: reduction index (r, s, c), zero past K_RED and where
    # the tap falls outside the image (the padding).  int32 offsets: the input and the column
    # matrix have fewer than 2^31 elements (the spec and lowered_refusal check it).
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    n, p, q = pixel_of(m, P, Q)
    c = k % C
    s = (k // C) % S
    r = k // (C * S)
    ih = p[:, None] * SH - PH + r[None, :] * DH
    iw = q[:, None] * SW - PW + s[None, :] * DW
    row_ok = m[:, None] < rows
    inside = row_ok & (k[None, :] < K_RED) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    value = tl.load(x_ptr + n[:, None] * sxn + c[None, :] * sxc + ih * sxh + iw * sxw, mask=inside, other=0.0)
    tl.store(col_ptr + m[:, None] * KP + k[None, :], value, mask=row_ok & (k[None, :] < KP))


def block_k(columns: int) -> int:
    """Columns a program writes: 32, or 16 where 32 does not divide the row."""
    return 32 if columns % 32 == 0 else 16


def build_lowered(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    """The im2col copy and the linear layer's GEMM for this point (``Unsupported`` with the reason
    where it does not apply)."""
    reason = lowered_refusal(spec, dtype, layout)
    if reason:
        raise Unsupported(reason)
    gemm, operands, out_matrix = gemm_operands(spec, tensors, out)
    x, col = tensors["x"], operands["x"]
    rows, columns = col.shape
    grid = (triton.cdiv(rows, BLOCK_M), columns // block_k(columns))
    args = (x, col, rows, spec.out_height, spec.out_width, spec.height, spec.width, *x.stride(),
            spec.stride_h, spec.stride_w, spec.padding_h, spec.padding_w, spec.dilation_h, spec.dilation_w)
    meta = {"C": spec.in_channels, "S": spec.kernel_w, "K_RED": spec.in_channels * spec.kernel_h * spec.kernel_w,
            "KP": columns, "BLOCK_M": BLOCK_M, "BLOCK_K": block_k(columns)}
    launcher = _im2col_kernel[grid]

    def im2col() -> None:
        launcher(*args, **meta)

    im2col()  # the GEMM's build times itself on a filled column matrix
    built = as_built(linear.build(gemm, dtype, "NCHW", operands, out_matrix))
    launch: Kernel = in_order(im2col, built.launch)
    return Built(launch, {"columns": columns, "gemm": dict(built.details)})
