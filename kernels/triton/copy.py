"""A streaming device-to-device copy in Triton: the copy-bandwidth ceiling that memory-bound
kernels are judged against (``layerbench.suites.ceilings``).  Not a layer: nothing registers.

Each program moves ``COPY_BLOCK`` fp32 elements (16 KiB each way, 8 warps) with unmasked 16-byte
vector accesses, and reads with ``evict_first`` so the source does not crowd L2.
"""

from __future__ import annotations

from typing import Callable

import torch
import triton
import triton.language as tl

COPY_BLOCK = 4096  # fp32 elements per program
NUM_WARPS = 8


@triton.jit
def _copy_kernel(src_ptr, dst_ptr, BLOCK: tl.constexpr):
    # Whole blocks only (the buffer is a multiple of BLOCK): unmasked 16-byte vector accesses.
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(dst_ptr + offs, tl.load(src_ptr + offs, eviction_policy="evict_first"))


def copy_launcher(src: torch.Tensor, dst: torch.Tensor) -> Callable[[], object]:
    """A launcher that copies fp32 ``src`` into ``dst``; both hold a multiple of COPY_BLOCK elements."""
    if src.dtype != torch.float32 or dst.dtype != torch.float32 or src.shape != dst.shape:
        raise ValueError(f"src and dst must be fp32 of one shape, got {src.dtype} {tuple(src.shape)} "
                         f"and {dst.dtype} {tuple(dst.shape)}")
    if src.numel() == 0 or src.numel() % COPY_BLOCK:
        raise ValueError(f"the copy moves whole blocks of {COPY_BLOCK} elements, got {src.numel()}")
    grid = (src.numel() // COPY_BLOCK,)
    return lambda: _copy_kernel[grid](src, dst, BLOCK=COPY_BLOCK, num_warps=NUM_WARPS)
