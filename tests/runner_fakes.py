"""Test stand-ins: a fast measurement core and fake ReLU implementations for runner tests.

The fake timing/energy/environment modules replace ``layerbench.measure.timing``, ``layerbench.measure.energy``
and ``layerbench.measure.environment`` in ``sys.modules`` for one test (the runner imports them lazily),
so runner tests take milliseconds and do not depend on the real meters.
"""

from __future__ import annotations

import statistics
import sys
import time
import types
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from layerbench.builders import Built

from layerbench import registry
from layerbench.errors import Unsupported


# ------------------------------------------------------------------ fake measurement core


@dataclass
class TimingConfig:
    mode: str = "cold"
    min_samples: int = 10
    min_time_s: float = 0.5
    max_noise: float = 0.005
    max_time_s: float = 15.0
    fixed_samples: int | None = None
    warmup: int = 3


@dataclass
class TimeStats:
    samples_s: list[float]

    def to_record(self) -> dict[str, Any]:
        s = sorted(self.samples_s)
        q = statistics.quantiles(s, n=4) if len(s) > 1 else [s[0]] * 3
        return {"time_median_s": statistics.median(s), "time_iqr_s": q[2] - q[0],
                "time_n": len(s), "time_samples_s": s, "time_mode": "cold",
                "time_stop_reason": "fixed"}


def time_kernel(kernel: Any, device: Any, cfg: TimingConfig) -> TimeStats:
    samples = []
    for _ in range(cfg.fixed_samples or 3):
        t = time.perf_counter()
        kernel()
        samples.append(time.perf_counter() - t)
    return TimeStats(samples)


def time_first_call(fn: Any, device: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t


@dataclass
class EnergyConfig:
    window_s: float = 1.0
    min_updates: int = 10
    windows: int = 3
    warmup_s: float = 0.5
    cooldown: Any = "auto"
    cooldown_tolerance_c: float = 3.0
    cooldown_max_s: float = 60.0
    idle_baseline: bool = True


@dataclass
class EnergyStats:
    j_per_launch: float
    windows: list[float] = field(default_factory=list)

    def to_record(self) -> dict[str, Any]:
        return {"energy_method": "fake", "energy_j_per_launch": self.j_per_launch,
                "energy_j_per_launch_windows": self.windows, "energy_avg_power_w": 100.0,
                "energy_spread": 0.01, "energy_telemetry": {"sm_clock_mhz": 1980, "temp_c": 40}}


class EnergyMeter:
    measured: list[list[str]] = []  # which kernels each measure() call saw

    def __init__(self, device: str, cfg: EnergyConfig):
        self.available = True
        self.reason = ""
        self.method = "fake"
        self.cfg = cfg

    def idle_baseline(self) -> dict[str, Any]:
        return {"idle_power_w": 50.0}

    def measure(self, kernels: dict[str, Any], time_per_launch_s: dict[str, float]) -> dict[str, EnergyStats]:
        EnergyMeter.measured.append(list(kernels))
        for k in kernels.values():
            k()
        return {n: EnergyStats(100.0 * t, [100.0 * t] * self.cfg.windows)
                for n, t in time_per_launch_s.items()}


def derived_metrics(j_per_launch: float, time_s: float, flops: int) -> dict[str, float]:
    return {"j_per_gflop": j_per_launch / (flops / 1e9), "gflops_per_w": flops / 1e9 / j_per_launch,
            "edp_js": j_per_launch * time_s}


def collect_environment(device: str) -> dict[str, Any]:
    return {"gpu": {"name": "fake GPU", "uuid": "GPU-0"}, "git_commit": "abc123", "device": device}


def install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace the measurement core for one test."""
    timing = types.ModuleType("layerbench.measure.timing")
    for name in ("TimingConfig", "TimeStats", "time_kernel", "time_first_call"):
        setattr(timing, name, globals()[name])
    energy = types.ModuleType("layerbench.measure.energy")
    for name in ("EnergyConfig", "EnergyMeter", "EnergyStats", "derived_metrics"):
        setattr(energy, name, globals()[name])
    env = types.ModuleType("layerbench.measure.environment")
    env.collect_environment = collect_environment  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "layerbench.measure.timing", timing)
    monkeypatch.setitem(sys.modules, "layerbench.measure.energy", energy)
    monkeypatch.setitem(sys.modules, "layerbench.measure.environment", env)
    EnergyMeter.measured = []


# ----------------------------------------------------------------- fake implementations

CALLS = {"interrupt_after": None, "builds": 0}


def _relu(spec: Any, dtype: Any, layout: str, tensors: dict[str, torch.Tensor], out: torch.Tensor) -> Any:
    x = tensors["x"]

    def kernel() -> None:
        torch.clamp_min(x, 0, out=out)
    return kernel


def _wrong(spec: Any, dtype: Any, layout: str, tensors: dict[str, torch.Tensor], out: torch.Tensor) -> Any:
    x = tensors["x"]

    def kernel() -> None:
        out.copy_(x)  # negatives pass through: wrong
    return Built(kernel, {"algorithm": "COPY", "workspace_bytes": 0})  # what a library chose, like cuDNN's


def _unsupported(*args: Any) -> Any:
    raise Unsupported("fake_unsupported cannot run this dtype")


def _error(*args: Any) -> Any:
    raise RuntimeError("compile failed: fake error")


def _interrupting(spec: Any, dtype: Any, layout: str, tensors: dict[str, torch.Tensor], out: torch.Tensor) -> Any:
    """Like fake_ok, but raises KeyboardInterrupt (a Ctrl-C) at a chosen build."""
    CALLS["builds"] += 1
    if CALLS["interrupt_after"] is not None and CALLS["builds"] > CALLS["interrupt_after"]:
        raise KeyboardInterrupt
    return _relu(spec, dtype, layout, tensors, out)


def register_fakes() -> None:
    for name, fn, ref in (("fake_ok", _relu, False), ("fake_ref", _relu, True), ("fake_wrong", _wrong, False),
                          ("fake_unsupported", _unsupported, False), ("fake_error", _error, False),
                          ("fake_interrupt", _interrupting, False)):
        registry.register("relu", name, backend="user", devices=("cpu",), reference=ref)(fn)
