"""Does a kernel's work stay where the timing sees it?  (The timing events are on the current stream.)

A kernel that launches its work on a stream of its own returns at once, and two events recorded
on the current stream around it measure almost nothing.  Two checks, on a CUDA device:

1. **Streams** (``profile_streams``, judged by ``stream_verdict``): the kernel runs under the
   profiler between two launches on the current stream: a spin kernel that holds the stream while
   the host enqueues the kernel, and a small marker.  Every device activity on another stream must
   start after the spin ended (it waited for the current stream's earlier work) and end before the
   marker started (the current stream waited for it): a fork that joins is fine, the events then
   cover it.  On an H200, 39 of 40 profiles of a side-stream ReLU (256 to 64M elements, waiting
   for the current stream or not) were caught and no honest or joined one was flagged; up to
   ``PROFILES`` profiles run, and one that catches the kernel is enough.  Side work that waits
   for the spin starts when the marker may, so work shorter than the marker's start-up could end
   first and pass for a joined fork (an H100 once let a 1M-element side-stream ReLU pass): a
   short kernel is therefore launched several times in each profile, until its launches hold
   about ``PROFILED_WORK_S`` of wall time, and its side work queues up past the marker's start.
2. **Times** (``probe_times``, judged by ``escape_verdict``): ``n`` launches between two events on
   the current stream, then the whole device synchronised.  For work on the current stream the
   events' time and the wall time agree (the wall time adds the synchronisation's latency); for work
   elsewhere the wall time is the work and the events' time only the host's enqueueing.  A backstop
   where the profiler cannot run; it sees only work longer than its own launch overhead.

The verdicts are pure functions of what was measured, so they are tested without a GPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

# ``escape_verdict``: the events must cover at least this share of the synchronised wall time ...
MIN_EVENT_SHARE = 0.5
# ... unless the gap is below this (synchronisation latency and host jitter on a short probe).
MIN_GAP_S = 1e-3
PROBE_S = 5e-3        # each timing probe runs about this long
MAX_LAUNCHES = 1000
REPEATS = 3           # a verdict needs every probe to agree (one preempted probe cannot flag)
# ``stream_verdict``: device clocks as the profiler reports them (microseconds); slack for rounding.
TOLERANCE_US = 1.0
SPIN_CYCLES = 2_000_000  # about 1 ms at 2 GHz: longer than the host takes to enqueue a kernel
PROFILES = 3
PROFILED_WORK_S = 1e-4   # launches a profile holds: a launch and synchronisation's wall time into this
MAX_PROFILED_LAUNCHES = 16  # (at most; enqueued within the spin)

ADVICE = "launch on torch.cuda.current_stream(), or make it wait for the work"


@dataclass(frozen=True)
class DeviceActivity:
    """One kernel, copy or set on the device, as the profiler saw it (times in microseconds)."""

    name: str
    stream: int
    start_us: float
    end_us: float


def stream_verdict(activities: list[DeviceActivity]) -> str | None:
    """None when all work is on the stream of the first and last activity (the spin and the marker
    on the current stream) or ordered between them; else what ran elsewhere, out of that order."""
    if len(activities) < 2:
        return None
    ordered = sorted(activities, key=lambda a: a.start_us)
    opening, current = ordered[0], ordered[0].stream
    closing = [a for a in ordered if a.stream == current][-1]
    early = [a for a in ordered if a.stream != current and a.start_us < opening.end_us - TOLERANCE_US]
    late = [a for a in ordered if a.stream != current and a.end_us > closing.start_us + TOLERANCE_US]
    if not early and not late:
        return None
    streams = sorted({a.stream for a in early + late})
    how = []
    if early:
        how.append("started before the current stream's earlier work had ended")
    if late:
        how.append("were still running when the next launch on the current stream began")
    return (f"work escapes the current stream: {len(set(early + late))} launch(es) ran on stream "
            f"{', '.join(map(str, streams))}, not on the current stream {current}, and "
            f"{' and '.join(how)}; the timing events do not see such work ({ADVICE})")


def profile_streams(kernel: Callable[[], object], device: torch.device, launches: int = 1) -> list[DeviceActivity]:
    """The device activities of ``launches`` launches of ``kernel`` between a spin kernel and a
    marker on the current stream (the kernel has run before, so no compilation lands in the trace)."""
    marker = torch.zeros(1, device=device)
    spin = getattr(torch.cuda, "_sleep", None)
    torch.cuda.synchronize(device)
    # acc_events: one profile per call anyway; without it torch warns on every second cycle.
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], acc_events=True) as prof:
        if spin is not None:
            spin(SPIN_CYCLES)
        else:
            marker.add_(1)
        for _ in range(launches):
            kernel()
        marker.add_(1)
        torch.cuda.synchronize(device)
    return [DeviceActivity(e.name, int(e.device_resource_id), float(e.time_range.start), float(e.time_range.end))
            for e in prof.events() if e.device_type == DeviceType.CUDA]


@dataclass(frozen=True)
class StreamProbe:
    launches: int
    event_s: float    # between the events on the current stream
    wall_s: float     # from before the first launch until the device is synchronised


def escape_verdict(probes: list[StreamProbe]) -> str | None:
    """None when the events cover the work; else what was seen, for an ``incorrect`` record."""
    if not probes:
        return None
    escaped = all(p.wall_s - p.event_s > MIN_GAP_S and p.event_s < MIN_EVENT_SHARE * p.wall_s for p in probes)
    if not escaped:
        return None
    p = min(probes, key=lambda q: q.wall_s - q.event_s)
    return (f"work escapes the current stream: {p.launches} launches took {p.wall_s * 1e3:.3g} ms until "
            f"the device was idle, but only {p.event_s * 1e3:.3g} ms between events on the current "
            f"stream, which the timing uses ({ADVICE})")


def probe_times(kernel: Callable[[], object], device: torch.device, repeats: int = REPEATS) -> list[StreamProbe]:
    """``repeats`` timing probes of ``kernel`` (see the module docstring)."""
    n = launches_filling(kernel, device, PROBE_S, MAX_LAUNCHES)
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


def launches_filling(kernel: Callable[[], object], device: torch.device, seconds: float, most: int) -> int:
    """Launches of ``kernel`` that take about ``seconds`` of launch-and-synchronise wall time
    (which includes work on any stream), at least one and at most ``most``."""
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    kernel()
    torch.cuda.synchronize(device)
    once = max(time.perf_counter() - t0, 1e-6)
    return max(1, min(most, math.ceil(seconds / once)))


def check_stream(kernel: Callable[[], object], device: torch.device) -> str | None:
    """On a CUDA device: None, or why the kernel's work escapes the timing events."""
    if device.type != "cuda":
        return None
    with torch.cuda.device(device):
        try:
            launches = launches_filling(kernel, device, PROFILED_WORK_S, MAX_PROFILED_LAUNCHES)
            for _ in range(PROFILES):
                activities = profile_streams(kernel, device, launches)
                if len(activities) < 2:
                    break  # the profiler saw nothing (no CUPTI): the timing probe decides
                verdict = stream_verdict(activities)
                if verdict is not None:
                    return verdict
                if len({a.stream for a in activities}) == 1:
                    return None  # all of it on the current stream
            else:
                return None  # other streams, each time waited for: a fork that joins
        except Exception:  # noqa: BLE001 - no profiler here: the timing probe decides
            pass
        return escape_verdict(probe_times(kernel, device))
