"""Does a kernel's work stay on the current stream?  (The timing events only see that stream.)

A kernel that launches its work on a stream of its own returns at once, and two events recorded
on the current stream around it measure almost nothing.  ``probe_stream`` launches the kernel
``n`` times between two events on the current stream, then synchronises the whole device, and
compares the events' time with the wall time: for a kernel on the current stream the two agree
(the wall time adds only the synchronisation's latency); for work elsewhere the wall time is the
work and the events' time is only the host's enqueueing.  The verdict (``escape_verdict``) is a
pure function of the two times, so it is tested without a GPU.

Work shorter than its own launch overhead cannot be told apart this way (the events then time the
host anyway); the check is meant for kernels whose work the timing would otherwise miss.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

# The events must cover at least this share of the synchronised wall time ...
MIN_EVENT_SHARE = 0.5
# ... unless the gap is below this (synchronisation latency and host jitter on a short probe).
MIN_GAP_S = 1e-3
PROBE_S = 5e-3        # each probe runs about this long
MAX_LAUNCHES = 1000
REPEATS = 3           # a verdict needs every probe to agree (one preempted probe cannot flag)


@dataclass(frozen=True)
class StreamProbe:
    launches: int
    event_s: float    # between the events on the current stream
    wall_s: float     # from before the first launch until the device is synchronised


def escape_verdict(probes: list[StreamProbe]) -> str | None:
    """None when the work is on the current stream; else what was seen, for an ``incorrect`` record."""
    if not probes:
        return None
    gaps = [p.wall_s - p.event_s for p in probes]
    escaped = all(g > MIN_GAP_S and p.event_s < MIN_EVENT_SHARE * p.wall_s for p, g in zip(probes, gaps))
    if not escaped:
        return None
    p = min(probes, key=lambda q: q.wall_s - q.event_s)
    return (f"work escapes the current stream: {p.launches} launches took {p.wall_s * 1e3:.3g} ms until "
            f"the device was idle, but only {p.event_s * 1e3:.3g} ms between events on the current "
            "stream, which the timing uses (launch on torch.cuda.current_stream())")


def probe_stream(kernel: Callable[[], object], device: torch.device, repeats: int = REPEATS) -> list[StreamProbe]:
    """``repeats`` probes of ``kernel`` (see the module docstring); the kernel has run before."""
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    kernel()
    torch.cuda.synchronize(device)
    once = max(time.perf_counter() - t0, 1e-6)
    n = max(1, min(MAX_LAUNCHES, math.ceil(PROBE_S / once)))
    stream = torch.cuda.current_stream(device)
    probes = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        start.record(stream)
        for _ in range(n):
            kernel()
        end.record(stream)
        torch.cuda.synchronize(device)
        wall = time.perf_counter() - t0
        probes.append(StreamProbe(n, start.elapsed_time(end) * 1e-3, wall))
    return probes


def check_stream(kernel: Callable[[], object], device: torch.device) -> str | None:
    """On a CUDA device: None, or why the kernel's work escapes the timing events."""
    if device.type != "cuda":
        return None
    with torch.cuda.device(device):
        return escape_verdict(probe_stream(kernel, device))
