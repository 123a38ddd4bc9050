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

from layerbench.builders import Built, Kernel, fastest_path, selection_ms
from layerbench.errors import Unsupported
from layerbench.layers import Pool2d

MAX_WINNER_KERNEL = 11  # tap numbers up to 11 * 11 - 1 fit an int8


def _not_for(spec: Pool2d) -> str | None:
    """Why winners first does not apply to ``spec``, or None."""
    if spec.method != "max":
        return "winners first is for max pooling"
    if spec.kernel > MAX_WINNER_KERNEL:
        return f"winners first stores tap numbers as int8: kernel must be <= {MAX_WINNER_KERNEL}, got {spec.kernel}"
    return None


def winner_array(spec: Pool2d, device: torch.device) -> torch.Tensor:
    """The int8 array of one tap number a window; Unsupported where winners first does not apply."""
    why = _not_for(spec)
    if why is not None:
        raise Unsupported(why)
    return torch.empty(math.prod(spec.output_shape), dtype=torch.int8, device=device)


def keep_faster(spec: Pool2d, device: torch.device, recompute: Kernel,
                winners_first: Callable[[], Kernel]) -> Kernel | Built:
    """``recompute``, or where winners first applies the faster of it and ``winners_first()``."""
    if _not_for(spec) is not None:
        return recompute
    return fastest_path(("recompute", lambda: recompute), [("winners_first", winners_first)],
                        time_ms=lambda kernel: selection_ms(kernel, device, warmup=2, reps=10),
                        after_failure=lambda: torch.cuda.synchronize(device))  # a sticky error is no fallback
