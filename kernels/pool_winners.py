"""Max pooling's backward, winners first: what the Triton and the CuPy kernels share.

Both backends know each window's winner in one of two ways: found again by every dx element that
the window holds (``recompute``), or found once a window by a first kernel that stores its tap
number (row * kernel + column, padding counted) in an int8 array in dy's memory order, which the
gather then reads (``winners_first``).  ``keep_faster`` times both on the GPU at build and keeps
the faster; the ``path`` detail says which.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from layerbench.builders import Built, Kernel, fastest_path, hot_median_ms
from layerbench.errors import Unsupported
from layerbench.layers import Pool2d

MAX_WINNER_KERNEL = 11  # tap numbers up to 11 * 11 - 1 fit an int8


def winner_array(spec: Pool2d, device: torch.device) -> torch.Tensor:
    """The int8 array of one tap number a window; Unsupported where winners first does not apply."""
    if spec.method != "max":
        raise Unsupported("winners first is for max pooling")
    if spec.kernel > MAX_WINNER_KERNEL:
        raise Unsupported(f"winners first stores tap numbers as int8: kernel must be <= {MAX_WINNER_KERNEL}, "
                          f"got {spec.kernel}")
    return torch.empty(math.prod(spec.output_shape), dtype=torch.int8, device=device)


def keep_faster(spec: Pool2d, device: torch.device, recompute: Kernel,
                winners_first: Callable[[], Kernel]) -> Kernel | Built:
    """``recompute``, or for max pooling the faster of it and ``winners_first()``, timed hot."""
    if spec.method != "max" or spec.kernel > MAX_WINNER_KERNEL:
        return recompute
    return fastest_path(("recompute", lambda: recompute), [("winners_first", winners_first)],
                        time_ms=lambda kernel: hot_median_ms(kernel, device, warmup=2, reps=10),
                        after_failure=lambda: torch.cuda.synchronize(device))  # a sticky error is no fallback
