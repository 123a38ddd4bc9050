"""GPU launch helpers shared by the timer, the energy meter and the build-time timer.

* ``l2_flush_buffer``: one buffer per device, the size of its L2 cache, written before a cold sample
  (``l2_flush``: that write as a launch).
* ``Blocker``: a spin kernel (``torch.cuda._sleep``) that holds the stream while the host enqueues
  the timed work, so a timed region never contains host launch latency (nvbench's "blocking kernel").
* ``make_batch``: ``n`` launches of a kernel as one CUDA-graph replay, or a plain loop where capture fails.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

# Used when torch does not report the L2 size: larger than the L2 of any NVIDIA GPU to date
# (A100 40 MB, H100 50 MB, B200 126 MB), so a flush with it is never too small.
DEFAULT_L2_BYTES = 128 * 1024 * 1024
MAX_GRAPH_LAUNCHES = 4096  # launches captured in one graph
MAX_LOOP_LAUNCHES = 512    # launches per plain-loop batch (the driver's launch queue holds ~1000)

_flush_buffers: dict[torch.device, torch.Tensor] = {}
_blockers: dict[torch.device, "Blocker"] = {}


def _key(device: torch.device) -> torch.device:
    return torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())


def l2_size_bytes(device: torch.device) -> tuple[int, str]:
    """The device's L2 size and where the number came from ("device" or "default")."""
    size = getattr(torch.cuda.get_device_properties(_key(device)), "L2_cache_size", 0) or 0
    return (int(size), "device") if size > 0 else (DEFAULT_L2_BYTES, "default")


def l2_flush_buffer(device: torch.device) -> torch.Tensor:
    key = _key(device)
    if key not in _flush_buffers:
        size, _ = l2_size_bytes(key)
        _flush_buffers[key] = torch.empty(size, dtype=torch.uint8, device=key)
    return _flush_buffers[key]


def l2_flush(device: torch.device) -> Callable[[], None]:
    """A launch that writes the device's L2-sized flush buffer: what precedes a cold sample."""
    buffer = l2_flush_buffer(device)

    def flush() -> None:
        # A write, as nvbench does.  A read-only flush leaves the L2 clean, and then up to an L2
        # of the kernel's own writes is written back after the timed region (notes/perf.md).
        buffer.zero_()

    return flush


class Blocker:
    """Holds the current stream for a given time, calibrated in SM cycles per second."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.available = hasattr(torch.cuda, "_sleep")
        self.cycles_per_s = 0.0
        if self.available:
            cycles = 1 << 20
            torch.cuda._sleep(cycles // 16)  # first launch loads the module
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.cuda._sleep(cycles)
            end.record()
            end.synchronize()
            self.cycles_per_s = cycles / (start.elapsed_time(end) * 1e-3)

    def block(self, seconds: float) -> None:
        if self.available and seconds > 0:
            torch.cuda._sleep(max(1, int(self.cycles_per_s * seconds)))


def blocker(device: torch.device) -> Blocker:
    key = _key(device)
    if key not in _blockers:
        with torch.cuda.device(key):
            _blockers[key] = Blocker(key)
    return _blockers[key]


MAX_HOLD_S = 0.05  # keeps a pathological host from stalling a run


def hold_time(host_s: float) -> float:
    """How long to hold the stream so that ``host_s`` of enqueueing hides behind it.

    Twice the host time plus 50 us covers jitter; beyond the cap a sample may include launch
    gaps, as plain timing would.
    """
    return min(2.0 * host_s + 50e-6, MAX_HOLD_S)


def make_batch(kernel: Callable[[], object], n: int, device: torch.device,
               try_graph: bool = True) -> tuple[Callable[[], None], str, str | None]:
    """``(launch, mode, graph_error)``: ``launch()`` enqueues ``n`` launches on the current stream.

    mode is "cuda-graph" (one replay of ``n`` captured launches) or "stream" (a Python loop);
    graph_error says why capture was not used.  The kernel has been run (warmed up) before.
    """
    if n < 1:
        raise ValueError(f"launches per batch must be >= 1, got {n}")

    def loop() -> None:
        for _ in range(n):
            kernel()

    if not try_graph:
        return loop, "stream", "graph capture not requested"
    caller = torch.cuda.current_stream(device)
    try:
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream(device)
        side.wait_stream(caller)
        with torch.cuda.stream(side):  # torch's advice: one eager run on a side stream before capture
            kernel()
        torch.cuda.current_stream(device).wait_stream(side)
        with torch.cuda.graph(graph):
            loop()
        graph.replay()
        torch.cuda.synchronize(device)
    except Exception as exc:  # a kernel that syncs, allocates on the host side, or uses its own stream
        torch.cuda.synchronize(device)  # a sticky CUDA error surfaces here and propagates
        # torch.cuda.graph leaves its capture stream current when capture_end raises: give the
        # caller its stream back, or every later launch (and timing event) lands on that stream.
        torch.cuda.set_stream(caller)
        _end_generator_capture(device)
        first_line = (str(exc).splitlines() or [""])[0]
        return loop, "stream", f"graph capture failed: {type(exc).__name__}: {first_line}"

    def replay() -> None:
        # The graph holds raw device pointers: referencing ``loop`` (and so the kernel) keeps what
        # the launcher owns, such as a split-K workspace and its semaphores, allocated while the
        # graph can run.  Freed and reused, they made replays wrong (Triton linear, H100).
        keep_alive = loop  # noqa: F841
        graph.replay()

    return replay, "cuda-graph", None


def _end_generator_capture(device: torch.device) -> None:
    """Take torch's CUDA RNG out of capture mode after a failed capture.

    A capture that fails never reaches torch's capture epilogue, so the default generator stays
    "capturing" and every later ``torch.randn(device="cuda")`` raises "Offset increment outside
    graph capture".  One small capture that succeeds runs the epilogue and clears that state.
    """
    scratch = torch.zeros(1, device=device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        scratch.add_(1)


def launches_for(target_s: float, per_launch_s: float, cap: int) -> int:
    """Launches needed for ``target_s`` of GPU work, between 1 and ``cap``."""
    if per_launch_s <= 0 or not math.isfinite(per_launch_s):
        return cap
    return max(1, min(cap, math.ceil(target_s / per_launch_s)))


def host_seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
