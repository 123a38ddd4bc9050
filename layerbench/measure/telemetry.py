"""GPU telemetry over a measurement window: clocks, temperature, power limit, clock-event reasons.

A window is polled a few times (each poll is four NVML queries, ~3.5 ms each in a VM, so the
energy loop polls telemetry once per counter update, not continuously).  Polls can miss a short
throttle, so the window also reads NVML's cumulative violation counters (time held down by the
power or thermal policy) at both ends: their growth catches what the polls did not.
"""

from __future__ import annotations

import statistics
from typing import Any

from layerbench.measure.nvml import (
    THROTTLE_MASK,
    NvmlDevice,
    Reading,
    other_processes,
    reason_names,
)


class WindowTelemetry:
    def __init__(self, dev: NvmlDevice, own_pid: int | None = None) -> None:
        self.dev = dev
        self.own_pid = own_pid
        self.sm: list[int] = []
        self.mem: list[int] = []
        self.temps: list[float] = []
        self.reasons = 0
        self.errors: set[str] = set()
        self._violation0 = {p: self._read(dev.violation_s(p)) for p in ("power", "thermal")}

    def _read(self, r: Reading[Any]) -> Any:
        if r.ok:
            return r.value
        self.errors.add(str(r.reason))
        return None

    def poll(self) -> None:
        for reading, sink in ((self.dev.sm_clock_mhz(), self.sm), (self.dev.mem_clock_mhz(), self.mem),
                              (self.dev.temperature_c(), self.temps)):
            v = self._read(reading)
            if v is not None:
                sink.append(v)
        mask = self._read(self.dev.clock_event_reasons())
        if mask is not None:
            self.reasons |= int(mask)

    def finish(self) -> dict[str, object]:
        """Summary of the window; ``throttled`` is True if any throttle reason or violation time appeared."""
        capped = {}
        for policy, before in self._violation0.items():
            after = self._read(self.dev.violation_s(policy))
            capped[policy] = (after - before) if before is not None and after is not None else None
        pids = self._read(self.dev.process_ids())
        others = other_processes(pids, self.own_pid) if pids is not None else None
        throttle = reason_names(self.reasons & THROTTLE_MASK)
        return {
            "polls": len(self.sm),
            "sm_clock_mhz_mean": statistics.fmean(self.sm) if self.sm else None,
            "sm_clock_mhz_min": min(self.sm) if self.sm else None,
            "mem_clock_mhz_mean": statistics.fmean(self.mem) if self.mem else None,
            "mem_clock_mhz_min": min(self.mem) if self.mem else None,
            "temp_c_max": max(self.temps) if self.temps else None,
            "power_limit_w": self._read(self.dev.power_limit_w()),
            "clock_event_reasons": reason_names(self.reasons),
            "throttle_reasons": throttle,
            "power_capped_s": capped["power"],
            "thermal_capped_s": capped["thermal"],
            "other_processes": others,
            "throttled": bool(throttle) or any((v or 0) > 0 for v in capped.values()),
            "errors": sorted(self.errors),
        }


def merge(windows: list[dict[str, object]]) -> dict[str, object]:
    """Combine per-window summaries of one kernel: means of means, minima of minima, unions."""

    def values(key: str) -> list[Any]:
        return [w[key] for w in windows if w.get(key) is not None]

    def total(key: str) -> float | None:
        v = values(key)
        return sum(v) if v else None

    out: dict[str, object] = {
        "sm_clock_mhz_mean": statistics.fmean(values("sm_clock_mhz_mean")) if values("sm_clock_mhz_mean") else None,
        "sm_clock_mhz_min": min(values("sm_clock_mhz_min"), default=None),
        "mem_clock_mhz_mean": statistics.fmean(values("mem_clock_mhz_mean")) if values("mem_clock_mhz_mean") else None,
        "mem_clock_mhz_min": min(values("mem_clock_mhz_min"), default=None),
        "temp_c_max": max(values("temp_c_max"), default=None),
        "power_limit_w": values("power_limit_w")[-1] if values("power_limit_w") else None,
        "power_capped_s": total("power_capped_s"),
        "thermal_capped_s": total("thermal_capped_s"),
    }
    for key in ("clock_event_reasons", "throttle_reasons", "other_processes", "errors"):
        seen: list[object] = []
        for w in windows:
            for item in w.get(key) or []:  # type: ignore[attr-defined]
                if item not in seen:
                    seen.append(item)
        out[key] = seen
    out["throttled"] = any(bool(w.get("throttled")) for w in windows)
    return out
