"""How pool2d.cu's NCHW band kernel is cut into blocks, worked out on the CPU before any launch.

A block pools ``band_rows`` consecutive rows of the flattened (plane, output row) space and first
copies the input rows they read, one contiguous range of x, into shared memory.  Needs neither
CuPy nor a GPU, so that tests can check the index math on any machine.
"""

from __future__ import annotations

import numpy as np

from layerbench.layers import Pool2d

# Must match pool2d.cu.
BAND_BYTES = 24576
THREADS = 256

# Blocks of 256 threads an SM holds at full occupancy, and how many such waves to aim for: more
# blocks than that only repeat the overlapping input rows of neighbouring bands.
RESIDENT_BLOCKS = 8
WAVES = 2


def band_ranges(spec: Pool2d, band_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """First and one-past-last input element (flat NCHW index) that each block reads."""
    s = spec
    rows = s.batch * s.channels * s.out_height
    r0 = np.arange(0, rows, band_rows, dtype=np.int64)
    r1 = np.minimum(r0 + band_rows, rows)
    plane0, oh0 = np.divmod(r0, s.out_height)
    plane1, oh1 = np.divmod(r1 - 1, s.out_height)
    lo = (plane0 * s.height + np.maximum(oh0 * s.stride - s.padding, 0)) * s.width
    hi = (plane1 * s.height + np.minimum(oh1 * s.stride - s.padding + s.kernel, s.height)) * s.width
    return lo, hi


def fits(spec: Pool2d, itemsize: int, band_rows: int) -> bool:
    """True when every block's input range, widened to whole 16-byte vectors, fits the band."""
    lo, hi = band_ranges(spec, band_rows)
    slack = 2 * (16 // itemsize - 1)  # the first vector starts up to VE - 1 elements early, the last ends late
    return int((hi - lo).max()) + slack <= BAND_BYTES // itemsize


def band_rows(spec: Pool2d, itemsize: int, sm_count: int) -> int | None:
    """Output rows per block: enough blocks for WAVES full waves, within the shared band.

    None when not even one output row's windows fit (a very wide map): use the direct kernel.
    """
    rows = spec.batch * spec.channels * spec.out_height
    want = max(1, -(-rows // (sm_count * RESIDENT_BLOCKS * WAVES)))
    # The largest band that fits, by bisection (the span grows with the band).
    if not fits(spec, itemsize, 1):
        return None
    lo, hi = 1, want
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(spec, itemsize, mid):
            lo = mid
        else:
            hi = mid - 1
    return lo
