"""Layout copies between NCHW and channels_last (NHWC) tensors, run inside a timed call where a
kernel walks one layout and the point's tensors are in the other (as cuDNN copies internally)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from layerbench.builders import Kernel


@triton.jit
def _layout_copy_kernel(src_ptr, dst_ptr, C, HW, TO_NHWC: tl.constexpr, BLOCK_C: tl.constexpr,
                        BLOCK_HW: tl.constexpr):
    """One BLOCK_C x BLOCK_HW tile of image n (program axis 2): dst[n, hw, c] = src[n, c, hw]
    (TO_NHWC), else dst[n, c, hw] = src[n, hw, c].

    The NCHW side runs along hw and the NHWC side along c; Triton gives each its own coalesced
    layout and converts between them through shared memory.
    """
    n = tl.program_id(2)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    hws = tl.program_id(0) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    ok = (cs < C)[:, None] & (hws < HW)[None, :]
    base = n * C * HW
    nchw = base + cs[:, None] * HW + hws[None, :]
    nhwc = base + hws[None, :] * C + cs[:, None]
    if TO_NHWC:
        tl.store(dst_ptr + nhwc, tl.load(src_ptr + nchw, mask=ok), mask=ok)
    else:
        tl.store(dst_ptr + nchw, tl.load(src_ptr + nhwc, mask=ok), mask=ok)


_TRANSPOSE_TILE = 64


def layout_copy(src: torch.Tensor, dst: torch.Tensor, to_nhwc: bool) -> Kernel:
    """The launcher that copies dense 4-D ``src`` into ``dst`` of the same shape: NCHW into
    channels_last (``to_nhwc``), or channels_last into NCHW."""
    n, c, h, w = src.shape
    launch = _layout_copy_kernel[(triton.cdiv(h * w, _TRANSPOSE_TILE), triton.cdiv(c, _TRANSPOSE_TILE), n)]

    def copy() -> None:
        launch(src, dst, c, h * w, TO_NHWC=to_nhwc, BLOCK_C=_TRANSPOSE_TILE, BLOCK_HW=_TRANSPOSE_TILE)

    return copy


def channels_last_copy(t: torch.Tensor) -> tuple[torch.Tensor, Kernel]:
    """A channels_last buffer for contiguous 4-D ``t`` and the launcher that fills it from ``t``."""
    dst = torch.empty_like(t, memory_format=torch.channels_last)
    return dst, layout_copy(t, dst, to_nhwc=True)
