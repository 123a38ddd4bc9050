"""Keep a kernel running back-to-back for an energy window, and count the launches inside it.

The energy meter reads a counter that lives on its own clock (NVML's, ~100 ms) while the GPU runs
asynchronously behind the host.  A load answers one question exactly: how many launches ran
between two instants the meter marked?

``CudaLoad`` enqueues the kernel in chunks (one CUDA-graph replay of ~2 ms of launches, or a
plain loop where capture fails) and records a timing event after every chunk, keeping ~50 ms of
work queued so the GPU never waits on the host.  ``mark()`` records an event on an otherwise
idle side stream: it completes as soon as the GPU front end sees it, so its timestamp is the GPU
clock at the moment the host marked, while the kernel stream keeps running.  After the window the
launches between two marks are interpolated from the chunk-end timestamps (launches within a
chunk run back to back, so progress inside a chunk is linear in time) — fractional, and exact to
well under one launch.
"""

from __future__ import annotations

import bisect
from typing import Callable, Protocol

import torch

from layerbench import launch as _launch

CHUNK_S = 0.002           # GPU time per chunk: the granularity of progress timestamps
AHEAD_S = 0.05            # GPU work kept queued; covers a poll, a sleep and a telemetry query
MIN_AHEAD_CHUNKS = 2
CALIBRATION_CHUNKS = 3


class WindowError(Exception):
    """A window could not be counted (the meter redoes it or reports the reason)."""


class Load(Protocol):
    asynchronous: bool        # True: work runs while the host sleeps (GPU, idle); False: top_up() runs it
    mode: str                 # how launches are issued: "cuda-graph" | "stream" | "host" | "idle"
    graph_error: str | None
    ran_dry: bool             # the queue emptied (GPU idled between launches); the meter clears it at a window's start

    def start(self) -> None: ...
    def top_up(self) -> None: ...
    def mark(self) -> object: ...
    def settle(self) -> None: ...
    def launches_between(self, a: object, b: object) -> float: ...
    def seconds_between(self, a: object, b: object) -> float: ...


class CudaLoad:
    asynchronous = True

    def __init__(self, kernel: Callable[[], object], per_launch_s: float, device: torch.device,
                 try_graph: bool = True) -> None:
        self.device = device
        cap = _launch.MAX_GRAPH_LAUNCHES if try_graph else _launch.MAX_LOOP_LAUNCHES
        self.chunk = _launch.launches_for(CHUNK_S, per_launch_s, cap)
        self.launch, self.mode, self.graph_error = _launch.make_batch(kernel, self.chunk, device, try_graph)
        if self.mode == "stream" and self.chunk > _launch.MAX_LOOP_LAUNCHES:
            self.chunk = _launch.MAX_LOOP_LAUNCHES
            self.launch, _, _ = _launch.make_batch(kernel, self.chunk, device, try_graph=False)
        self.chunk_s = self.chunk * per_launch_s
        self.stream = torch.cuda.current_stream(device)
        self.side = torch.cuda.Stream(device)
        self.events: list[torch.cuda.Event] = []   # events[0] before the first chunk, then one per chunk
        self.done = 0                               # events known complete
        self.ran_dry = False

    def start(self) -> None:
        torch.cuda.synchronize(self.device)
        self._calibrate()
        self.events, self.done, self.ran_dry = [], 0, False
        self.events.append(self._record(self.stream))

    def _calibrate(self) -> None:
        """Measure a chunk's real GPU time, back to back.

        The per-launch estimate comes from the timer, often in cold mode (L2 flushed); back to back a
        small kernel runs from L2 several times faster, so a queue sized from the estimate drains
        while the host polls NVML.
        """
        marks = [self._record(self.stream)]
        for _ in range(CALIBRATION_CHUNKS):
            with torch.cuda.stream(self.stream):
                self.launch()
            marks.append(self._record(self.stream))
        torch.cuda.synchronize(self.device)
        measured = min(a.elapsed_time(b) for a, b in zip(marks, marks[1:])) * 1e-3
        if measured > 0:
            self.chunk_s = measured

    def _record(self, stream: torch.cuda.Stream) -> torch.cuda.Event:
        ev = torch.cuda.Event(enable_timing=True)
        ev.record(stream)
        return ev

    def _advance(self) -> None:
        """Counts the chunks whose end event has completed since the last look."""
        while self.done < len(self.events) and self.events[self.done].query():
            self.done += 1

    def top_up(self) -> None:
        seen = self.done
        self._advance()
        if self.done == len(self.events) > 1:
            self.ran_dry = True  # the meter clears this at the window's start mark
        elif self.done > seen and self.done >= 2:
            # The span between the last two chunk ends is one chunk's time (more where the queue
            # drained between them).  The GPU can speed up after calibration (clocks rising from
            # idle): size the queue from the fastest chunk seen, or it holds less than it counts.
            ran = self.events[self.done - 2].elapsed_time(self.events[self.done - 1]) * 1e-3
            if 0 < ran < self.chunk_s:
                self.chunk_s = ran
        queued = len(self.events) - self.done
        while queued < MIN_AHEAD_CHUNKS or queued * self.chunk_s < AHEAD_S:
            with torch.cuda.stream(self.stream):
                self.launch()
            self.events.append(self._record(self.stream))
            queued += 1

    def mark(self) -> tuple[torch.cuda.Event, float, float]:
        """The GPU instant now, with host-side bounds on the launch position for a sanity check:
        at least the chunks already seen complete, at most those already enqueued."""
        self._advance()
        ev = self._record(self.side)
        return ev, float(self.chunk * max(self.done - 1, 0)), float(self.chunk * (len(self.events) - 1))

    def settle(self) -> None:
        torch.cuda.synchronize(self.device)

    def launches_between(self, a: object, b: object) -> float:
        ends = [self.events[0].elapsed_time(ev) for ev in self.events]
        return self._position(ends, b) - self._position(ends, a)

    def _position(self, ends: list[float], mark: object) -> float:
        ev, lo, hi = mark  # type: ignore[misc]
        t = self.events[0].elapsed_time(ev)
        i = bisect.bisect_left(ends, t)
        if i == 0 or i >= len(ends):
            raise WindowError("a window mark fell outside the launched work "
                              f"({t:.3f} ms; work spans 0..{ends[-1]:.3f} ms)")
        span = ends[i] - ends[i - 1]
        frac = (t - ends[i - 1]) / span if span > 0 else 1.0
        pos = self.chunk * (i - 1 + frac)
        slack = 0.02 * self.chunk  # event timestamps resolve ~0.5 us
        if not lo - slack <= pos <= hi + slack:
            raise WindowError(f"a mark's GPU timestamp puts it at launch {pos:.1f}, but the host saw "
                              f"{lo:.0f} done and {hi:.0f} enqueued")
        return pos

    def seconds_between(self, a: object, b: object) -> float:
        return a[0].elapsed_time(b[0]) * 1e-3  # type: ignore[index]


class HostLoad:
    """A CPU kernel: it runs synchronously, so launches are counted exactly by the host."""

    asynchronous = False
    mode = "host"
    graph_error = None
    ran_dry = False

    def __init__(self, kernel: Callable[[], object], per_launch_s: float, clock: Callable[[], float]) -> None:
        self.kernel = kernel
        self.clock = clock
        self.chunk = _launch.launches_for(CHUNK_S, per_launch_s, _launch.MAX_GRAPH_LAUNCHES)
        self.count = 0

    def start(self) -> None:
        pass

    def top_up(self) -> None:
        for _ in range(self.chunk):
            self.kernel()
        self.count += self.chunk

    def mark(self) -> tuple[float, int]:
        return (self.clock(), self.count)

    def settle(self) -> None:
        pass

    def launches_between(self, a: object, b: object) -> float:
        return float(b[1] - a[1])  # type: ignore[index]

    def seconds_between(self, a: object, b: object) -> float:
        return b[0] - a[0]  # type: ignore[index]


class IdleLoad:
    """No work at all: an idle window.  One "launch" per second, so J per launch reads as watts."""

    asynchronous = True
    mode = "idle"
    graph_error = None
    ran_dry = False

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock

    def start(self) -> None:
        pass

    def top_up(self) -> None:
        pass

    def mark(self) -> float:
        return self.clock()

    def settle(self) -> None:
        pass

    def launches_between(self, a: object, b: object) -> float:
        return self.seconds_between(a, b)

    def seconds_between(self, a: object, b: object) -> float:
        return b - a  # type: ignore[operator]
