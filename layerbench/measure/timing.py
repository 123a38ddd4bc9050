"""Kernel timing: CUDA events on the current stream (perf_counter on the CPU), nvbench-style stop rule.

Modes
-----
* ``cold``: before every sample the device's L2-sized flush buffer is written, then one launch is
  timed between two events.
* ``hot``: ``N`` back-to-back launches between two events, ``N`` chosen so that a sample is
  >= 1 ms of GPU time; the launches are one CUDA-graph replay when capture works, else a plain
  loop (``launch_mode`` records which, ``graph_error`` why).  The sample is the time divided by N.

Samples are enqueued in batches of 16 behind one spin kernel ("blocker", nvbench's blocking
kernel) that holds the stream while the host enqueues them, so host launch latency stays out of
the timed regions and the GPU then runs the samples back to back.  Each sample is checked after
the fact: an event recorded just before the spin gives the GPU's time at which the sample's start
event ran, and the host's clock the time at which the sample was fully enqueued.  A sample the
GPU could have reached before the host had enqueued it is dropped (``dropped`` counts them) and
the hold doubles for the next batch; at the hold's cap (a host that syncs inside the kernel, say)
such samples are kept and counted in ``exposed``.

Warm-up launches (JIT compile, autotuning, algorithm search, lazy allocation) are never sampled;
``time_first_call`` measures that first-call cost on its own.

Stop rule (after nvbench's "stdrel" criterion): at least ``min_samples`` samples and
``min_time_s`` of accumulated kernel time; then stop once the relative noise is <= ``max_noise``
or once the noise estimate has stabilised (the last 8 estimates lie within 5 % of the current
one); give up at ``max_time_s`` of wall time.  Noise is the robust relative spread
1.4826 * MAD / median (equal to stdev/mean for normal samples; one preempted sample does not keep
a run going).  It is re-estimated every max(16, n/16) samples, so the cost stays O(n log n).
``fixed_samples`` switches the rule off: exactly that many samples, for reproducible CI runs.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import torch

from layerbench import launch as _launch
from layerbench.options import TimingConfig

T = TypeVar("T")

HOT_SAMPLE_S = 1e-3        # a hot sample holds at least this much GPU time
BATCH = 16                 # samples enqueued between two synchronisations
STABLE_WINDOW = 8
STABLE_TOLERANCE = 0.05
DEFAULT_CPU_CACHE_BYTES = 64 * 1024 * 1024


@dataclass
class TimeStats:
    median_s: float
    iqr_s: float
    mean_s: float
    stdev_s: float
    min_s: float
    max_s: float
    n: int
    noise: float
    stop_reason: str   # "noise" | "noise-stable" | "timeout" | "fixed-count"
    mode: str
    clock: str         # "cuda-events" | "perf_counter"
    launches_per_sample: int
    samples_s: list[float]
    launch_mode: str = "single"        # "single" (cold) | "cuda-graph" | "stream"
    graph_error: str | None = None
    flush_bytes: int | None = None     # cold mode: bytes written before each sample
    flush_source: str | None = None    # "device" (its L2 size) | "default" | "cpu-cache" | "cpu-default"
    blocked: bool = False              # the host enqueue was hidden behind a spin kernel
    dropped: int = 0                   # samples thrown away: the host may still have been enqueueing them
    exposed: int = 0                   # samples kept although they may hold host time (the hold at its cap)

    def to_record(self) -> dict[str, object]:
        return {f"time_{k}": v for k, v in asdict(self).items()}


def summarize_samples(samples: list[float], stop_reason: str, mode: str, clock: str, launches_per_sample: int,
              **extra: object) -> TimeStats:
    if not samples:
        raise ValueError("no samples to summarise")
    arr = np.asarray(samples, dtype=np.float64)
    q1, q3 = np.percentile(arr, [25, 75])
    return TimeStats(
        median_s=float(np.median(arr)), iqr_s=float(q3 - q1), mean_s=float(arr.mean()),
        stdev_s=float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        min_s=float(arr.min()), max_s=float(arr.max()), n=int(arr.size), noise=robust_noise(samples),
        stop_reason=stop_reason, mode=mode, clock=clock, launches_per_sample=launches_per_sample,
        samples_s=[float(x) for x in samples], **extra)  # type: ignore[arg-type]


def robust_noise(samples: list[float]) -> float:
    """1.4826 * MAD / median: relative spread that one outlier cannot inflate."""
    arr = np.asarray(samples, dtype=np.float64)
    med = float(np.median(arr))
    if arr.size < 2:
        return math.inf
    if med <= 0:
        return math.inf if np.any(arr != med) else 0.0
    return 1.4826 * float(np.median(np.abs(arr - med))) / med


@dataclass
class StopRule:
    """The stop rule, fed one sample at a time; ``gpu_s`` is the kernel time the sample covered."""

    cfg: TimingConfig
    samples: list[float] = field(default_factory=list)
    noise_history: list[float] = field(default_factory=list)
    kernel_time_s: float = 0.0
    _next_check: int = 0

    def add(self, sample_s: float, gpu_s: float | None = None) -> None:
        self.samples.append(sample_s)
        self.kernel_time_s += sample_s if gpu_s is None else gpu_s

    def stop_reason(self, wall_s: float) -> str | None:
        cfg, n = self.cfg, len(self.samples)
        if cfg.fixed_samples is not None:
            return "fixed-count" if n >= cfg.fixed_samples else None
        if n < cfg.min_samples or self.kernel_time_s < cfg.min_time_s:
            return "timeout" if wall_s >= cfg.max_time_s and n > 0 else None
        if n >= self._next_check:
            self._next_check = n + max(16, n // 16)
            noise = robust_noise(self.samples)
            self.noise_history.append(noise)
            if noise <= cfg.max_noise:
                return "noise"
            recent = self.noise_history[-STABLE_WINDOW:]
            if len(recent) == STABLE_WINDOW and math.isfinite(noise) and noise > 0 and \
                    max(abs(x - noise) for x in recent) <= STABLE_TOLERANCE * noise:
                return "noise-stable"
        return "timeout" if wall_s >= cfg.max_time_s else None


def time_kernel(kernel: Callable[[], object], device: torch.device,
                cfg: TimingConfig = TimingConfig()) -> TimeStats:
    """Time ``kernel`` (which launches on the current stream, or computes on the CPU) per ``cfg``."""
    device = torch.device(device)
    if device.type == "cpu":
        return _time_cpu(kernel, cfg)
    if device.type == "cuda":
        with torch.cuda.device(device):
            return _time_cuda(kernel, device, cfg)
    raise ValueError(f"device must be a CUDA or CPU device, got {device}")


def time_first_call(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """Run ``fn`` once and return its result and wall seconds, the device synchronised on both sides."""
    device = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    result = fn()
    sync()
    return result, time.perf_counter() - t0


# ---------------------------------------------------------------- CUDA

def _time_cuda(kernel: Callable[[], object], device: torch.device, cfg: TimingConfig) -> TimeStats:
    stream = torch.cuda.current_stream(device)
    block = _launch.blocker(device)

    def event() -> torch.cuda.Event:
        return torch.cuda.Event(enable_timing=True)

    # Warm-up, also sizing the hot batch and the blocker: per-launch GPU time and host enqueue time.
    gpu_est, host_est = [], []
    for _ in range(max(cfg.warmup, 1)):
        a, b = event(), event()
        block.block(0.0005)  # keeps the host's enqueue out of the estimate
        t0 = time.perf_counter()
        a.record(stream)
        kernel()
        b.record(stream)
        host_est.append(time.perf_counter() - t0)
        b.synchronize()
        gpu_est.append(a.elapsed_time(b) * 1e-3)
    per_launch, host = statistics.median(gpu_est), statistics.median(host_est)

    extra: dict[str, object] = {"blocked": block.available}
    if cfg.mode == "cold":
        n = 1
        extra.update(flush_bytes=_launch.l2_flush_buffer(device).numel(),
                     flush_source=_launch.l2_size_bytes(device)[1])
        prepare = _launch.l2_flush(device)
        launch: Callable[[], object] = kernel
        host += _launch.host_seconds(prepare)
    else:
        cap = _launch.MAX_GRAPH_LAUNCHES if cfg.graph else _launch.MAX_LOOP_LAUNCHES
        n = _launch.launches_for(HOT_SAMPLE_S, per_launch, cap)
        launch, launch_mode, graph_error = _launch.make_batch(kernel, n, device, cfg.graph)
        if launch_mode == "stream":
            n = min(n, _launch.MAX_LOOP_LAUNCHES)
            launch, _, _ = _launch.make_batch(kernel, n, device, try_graph=False)
        extra.update(launch_mode=launch_mode, graph_error=graph_error)
        host = _launch.host_seconds(launch)  # also a warm-up of the batch
        torch.cuda.synchronize(device)

        def prepare() -> None:
            pass

    # The spin must last until the GPU would catch up with the host: the host enqueues a sample
    # in ``host`` seconds and the GPU runs one in at least ``per_launch * n``.
    lag = max(0.0, host - per_launch * n)
    hold = _launch.hold_time(host + (BATCH - 1) * lag)
    rule = StopRule(cfg)
    dropped = exposed = 0
    t_start = time.perf_counter()
    while True:
        todo = BATCH if cfg.fixed_samples is None else min(BATCH, cfg.fixed_samples - len(rule.samples))
        pending = []
        origin = event()
        t_origin = time.perf_counter()  # the GPU runs ``origin`` no earlier than this
        origin.record(stream)
        block.block(hold)
        for _ in range(todo):
            a, b = event(), event()
            prepare()
            a.record(stream)
            launch()
            b.record(stream)
            pending.append((a, b, time.perf_counter() - t_origin))
        pending[-1][1].synchronize()
        reason, grow, at_cap = None, False, hold >= _launch.MAX_HOLD_S
        for a, b, enqueued_s in pending:
            # Did the GPU reach this sample's start before the host had enqueued all of it?
            late = block.available and enqueued_s > origin.elapsed_time(a) * 1e-3
            if late and not at_cap:
                dropped += 1
                grow = True
                continue
            exposed += late
            elapsed = a.elapsed_time(b) * 1e-3
            rule.add(elapsed / n, elapsed)
            reason = rule.stop_reason(time.perf_counter() - t_start)
            if reason:
                break
        if grow:
            hold = min(2.0 * hold, _launch.MAX_HOLD_S)
        if reason:
            extra.update(dropped=dropped, exposed=exposed)
            return summarize_samples(rule.samples, reason, cfg.mode, "cuda-events", n, **extra)


# ---------------------------------------------------------------- CPU

def _cpu_cache_bytes() -> tuple[int, str]:
    """Largest CPU cache level from sysfs, else a default (documented in ``flush_source``)."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = f.read_text().strip().upper()
            mult = {"K": 1024, "M": 1024 ** 2}.get(text[-1], 1)
            sizes.append(int(text.rstrip("KM")) * mult)
        except (OSError, ValueError):
            continue
    return (max(sizes), "cpu-cache") if sizes else (DEFAULT_CPU_CACHE_BYTES, "cpu-default")


_cpu_flush: torch.Tensor | None = None


def _time_cpu(kernel: Callable[[], object], cfg: TimingConfig) -> TimeStats:
    global _cpu_flush
    for _ in range(cfg.warmup):
        kernel()
    extra: dict[str, object] = {}
    if cfg.mode == "cold":
        n = 1
        size, source = _cpu_cache_bytes()
        if _cpu_flush is None or _cpu_flush.numel() != size:
            _cpu_flush = torch.empty(size, dtype=torch.uint8)
        flush = _cpu_flush
        extra.update(flush_bytes=size, flush_source=source)

        def prepare() -> None:
            flush.add_(1)  # a write to every byte evicts the caches' previous contents
    else:
        # Like timeit's autorange: double a batch until it takes HOT_SAMPLE_S, then size from the
        # fastest per-call time seen (a preempted batch only ever looks slower).
        n, per_call = 1, math.inf
        while n < _launch.MAX_GRAPH_LAUNCHES:
            t0 = time.perf_counter()
            for _ in range(n):
                kernel()
            elapsed = time.perf_counter() - t0
            per_call = min(per_call, elapsed / n)
            if elapsed >= HOT_SAMPLE_S:
                break
            n *= 2
        n = _launch.launches_for(HOT_SAMPLE_S, per_call, _launch.MAX_GRAPH_LAUNCHES)
        extra.update(launch_mode="stream")

        def prepare() -> None:
            pass

    rule = StopRule(cfg)
    t_start = time.perf_counter()
    while True:
        prepare()
        t0 = time.perf_counter()
        for _ in range(n):
            kernel()
        elapsed = time.perf_counter() - t0
        rule.add(elapsed / n, elapsed)
        reason = rule.stop_reason(time.perf_counter() - t_start)
        if reason:
            return summarize_samples(rule.samples, reason, cfg.mode, "perf_counter", n, **extra)

