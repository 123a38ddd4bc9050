"""Launchers of layout.cu's copies, run inside a convolution's timed call."""

from __future__ import annotations

import torch

from kernels.cupy import sources, support

TILE, ROWS = 32, 8  # must match layout.cu


def channels_last_copy(t: torch.Tensor, ctype: str, index: int) -> tuple[torch.Tensor, support.Launch]:
    """A channels_last buffer for contiguous 4-D ``t`` and the launch that fills it from ``t``."""
    dst = torch.empty_like(t, memory_format=torch.channels_last)
    n, c, h, w = t.shape
    fn = support.function("layout", sources.to_channels_last_name(ctype), index)
    launch = support.Launch(fn, (-(-h * w // TILE), -(-c // TILE), n), (TILE, ROWS, 1),
                            [support.ptr(t), support.ptr(dst), support.i32(c), support.i32(h * w)],
                            index, keep=(t, dst))
    return dst, launch
