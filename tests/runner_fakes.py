"""Test stand-ins: a fast measurement core and fake ReLU implementations for runner tests.

``install`` replaces the timer, the energy meter and the environment where the runner uses them
(``layerbench.run.group`` and ``layerbench.run.executors``) for one test, so runner tests take
milliseconds and do not depend on the real meters.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from layerbench import registry
from layerbench.builders import Built
from layerbench.errors import Unsupported
from layerbench.run import executors, group


# ------------------------------------------------------------------ fake measurement core


@dataclass
class TimeStats:
    samples_s: list[float]

    def to_record(self) -> dict[str, Any]:
        s = sorted(self.samples_s)
        q = statistics.quantiles(s, n=4) if len(s) > 1 else [s[0]] * 3
        return {"time_median_s": statistics.median(s), "time_iqr_s": q[2] - q[0],
                "time_n": len(s), "time_samples_s": s, "time_mode": "cold",
                "time_stop_reason": "fixed"}


def time_kernel(kernel: Any, device: Any, cfg: Any) -> TimeStats:
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
class EnergyStats:
    j_per_launch: float
    windows: list[float] = field(default_factory=list)

    def to_record(self) -> dict[str, Any]:
        return {"energy_method": "fake", "energy_j_per_launch": self.j_per_launch,
                "energy_j_per_launch_windows": self.windows, "energy_avg_power_w": 100.0,
                "energy_spread": 0.01, "energy_telemetry": {"sm_clock_mhz": 1980, "temp_c": 40}}


class EnergyMeter:
    measured: list[list[str]] = []  # which kernels each measure() call saw
    unavailable: str | None = None  # set to a reason: the meter is unavailable

    def __init__(self, device: str, cfg: Any):
        self.available = EnergyMeter.unavailable is None
        self.reason = EnergyMeter.unavailable or ""
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
    # named, not looked up in globals(): a Ray worker gets this module by value, with only the
    # globals its functions name
    fakes = {"time_kernel": time_kernel, "time_first_call": time_first_call, "EnergyMeter": EnergyMeter,
             "derived_metrics": derived_metrics}
    for name, fake in fakes.items():
        monkeypatch.setattr(group, name, fake)
    monkeypatch.setattr(executors, "collect_environment", collect_environment)
    EnergyMeter.measured = []
    EnergyMeter.unavailable = None


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


def prepare_worker() -> None:
    """In another process (a Ray worker): the fake measurement core and implementations."""
    install(pytest.MonkeyPatch())
    register_fakes()


def _exiting(spec: Any, dtype: Any, layout: str, tensors: dict[str, torch.Tensor], out: torch.Tensor) -> Any:
    """Kills its process at the build of one point (size 5): a worker that dies."""
    if tuple(tensors["x"].shape)[-1] == 5:
        os._exit(7)
    return _relu(spec, dtype, layout, tensors, out)


def register_exiting() -> None:
    registry.register("relu", "fake_exit", backend="user", devices=("cpu",), reference=False)(_exiting)


def prepare_exiting_worker() -> None:
    prepare_worker()
    register_exiting()
