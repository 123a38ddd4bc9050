"""What the convolution's gradient kernels share: the stride phases of the data gradient, and
deterministic reductions in two stages (fp32 partial sums per chunk of rows, then their sum).

Stride phases: dx pixel h receives dy row oh from tap r where h + pad - r*dil = oh*stride.  Which
taps hit depends only on the phase h mod stride, and they recur every period = stride /
gcd(stride, dil) taps; a program that takes pixels of one phase walks just those taps, from the
first one, and computes oh = i + (phase + pad - r*dil) / stride for pixel h = phase + stride*i
with an exact division.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from layerbench.builders import Kernel

from kernels.triton.support import INT32_MAX, interpreting

_SUM_BLOCK = 1024
MAX_GRID_YZ = 65535  # CUDA's limit on grid axes 1 and 2


@triton.jit
def first_tap(phase, pad, dil, stride, period):
    """The first tap r in [0, period) with (phase + pad - r*dil) divisible by stride, else period
    (no tap hits this phase: none of the first period does)."""
    first = period
    for t in range(0, period):
        hit = ((phase + pad - t * dil) % stride == 0) & (first == period)
        first = tl.where(hit, t, first)
    return first


@triton.jit
def tap_count(first, period, R):
    """How many taps first, first + period, ... lie in [0, R) (none where first is period)."""
    return tl.where((first < period) & (first < R), (R - 1 - first) // period + 1, 0)


def tap_period(stride: int, dilation: int) -> int:
    return stride // math.gcd(stride, dilation)


@triton.jit
def _sum_slices_kernel(ws_ptr, out_ptr, L, SLICES, BLOCK: tl.constexpr):
    """out[i] = sum of ws[s, i] over the slices s in order (deterministic), in out's dtype."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < L
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(0, SLICES):
        acc += tl.load(ws_ptr + s * L + offs, mask=ok, other=0.0)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=ok)


def sum_slices(ws: torch.Tensor, out: torch.Tensor, slices: int) -> Kernel:
    """The launcher that sums ``slices`` rows of the fp32 workspace ``ws`` into ``out`` (dense,
    in memory order)."""
    size = out.numel()
    launch = _sum_slices_kernel[(triton.cdiv(size, _SUM_BLOCK),)]

    def kernel() -> None:
        launch(ws, out, size, slices, BLOCK=_SUM_BLOCK)

    return kernel


def row_chunks(rows: int, programs_per_chunk: int, quantum: int, min_rows: int, partial_size: int,
               device: torch.device, fn: object) -> tuple[int, int]:
    """(rows per chunk, chunks) to cut a reduction over ``rows`` into, for programs that each sum
    one chunk (``programs_per_chunk`` programs side by side per chunk) into a partial result of
    ``partial_size`` values.

    On the GPU: enough chunks to fill it about four times over, each at least ``min_rows`` long,
    and few enough that the partials are indexed in int32.  Under the interpreter: two chunks
    where the rows span more than one ``quantum``, so the partial path is checked.  Chunks start
    on multiples of ``quantum``.
    """
    if interpreting(fn):
        wanted = 2 if rows > quantum else 1
    else:
        programs = 4 * torch.cuda.get_device_properties(device).multi_processor_count
        wanted = max(1, min(triton.cdiv(programs, programs_per_chunk), rows // min_rows, MAX_GRID_YZ,
                            INT32_MAX // partial_size))
    per_chunk = triton.cdiv(triton.cdiv(rows, wanted), quantum) * quantum
    return per_chunk, triton.cdiv(rows, per_chunk)
