"""A fake GPU for energy tests: a fake clock, a pynvml look-alike, and a runner that draws power.

Time is kept in integer microseconds so that polls and counter updates line up exactly.  The
energy counter, like NVML's, only moves every ``update_s`` (100 ms): between updates it reports
the energy up to the last update.  Every NVML call costs ``latency_s`` of fake time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable


class FakeClock:
    def __init__(self) -> None:
        self.us = 0
        self.listeners: list[Callable[[], None]] = []

    def now(self) -> float:
        return self.us / 1e6

    def advance(self, seconds: float) -> None:
        self.us += round(seconds * 1e6)
        for f in self.listeners:
            f()

    sleep = advance


class FakeNVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


@dataclass
class FakeGPU:
    clock: FakeClock
    idle_w: float = 70.0
    update_s: float = 0.1
    latency_s: float = 0.0
    temp_c: Callable[[float], float] = lambda t: 40.0
    reasons: Callable[[float], int] = lambda t: 0
    power_violation_s: Callable[[float], float] = lambda t: 0.0
    pids: list[int] = field(default_factory=list)
    energy_offset_mj: Callable[[float], float] = lambda t: 0.0   # e.g. a counter reset
    ripple_w: float = 0.0                                         # power reading alternates +-ripple per update
    segments: list[tuple[int, float]] = field(default_factory=list)   # (start us, watts)
    log: list[str] = field(default_factory=list)                     # which runner drew power, in order

    def __post_init__(self) -> None:
        self.segments = [(0, self.idle_w)]

    def set_power(self, watts: float) -> None:
        self.segments.append((self.clock.us, watts))

    def power_at(self, us: int) -> float:
        return [w for t, w in self.segments if t <= us][-1]

    def energy_mj(self, us: int) -> float:
        total = 0.0
        for i, (t, w) in enumerate(self.segments):
            end = self.segments[i + 1][0] if i + 1 < len(self.segments) else us
            end = min(end, us)
            if end > t:
                total += w * (end - t) / 1e3  # W * us / 1e3 = mJ
        return total

    def last_update_us(self) -> int:
        period = round(self.update_s * 1e6)
        return self.clock.us // period * period


class FakePynvml:
    """The pynvml functions layerbench calls.  ``fail[name] = code`` makes a call raise that NVML error;
    ``missing`` names functions this "pynvml version" lacks."""

    # GPU settings (layerbench.measure.gpu_settings): what the card supports, and its defaults.
    MEMORY_CLOCKS = [2619, 1593]
    SM_CLOCKS = [1980, 1755, 1500, 1200, 990]
    POWER_RANGE_MW = (200_000, 700_000)
    DEFAULTS = {"sm_lock": None, "mem_lock": None, "power_limit_mw": 700_000, "log": []}

    def __init__(self, gpu: FakeGPU, fail: dict[str, int] | None = None, missing: tuple[str, ...] = (),
                 counter_stuck: bool = False, settings_file: str | Path | None = None) -> None:
        self.gpu = gpu
        self.fail = dict(fail or {})
        self.calls: dict[str, int] = {}
        self.counter_stuck = counter_stuck
        # The settings live in a JSON file when given, so that several processes (a run killed by
        # a signal, the next command) see one GPU.
        self.settings_file = Path(settings_file) if settings_file is not None else None
        self._settings: dict = json.loads(json.dumps(self.DEFAULTS))
        for name in missing:
            setattr(self, name, None)

    def __getattribute__(self, name: str):  # count and fault-inject every NVML call
        attr = object.__getattribute__(self, name)
        if not name.startswith("nvml") or attr is None:
            return attr

        def call(*args):
            self.calls[name] = self.calls.get(name, 0) + 1
            self.gpu.clock.advance(self.gpu.latency_s)
            if name in self.fail:
                raise FakeNVMLError(self.fail[name])
            return attr(*args)
        return call

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return f"handle{index}"

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        return f"handle-{uuid}"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: str) -> int:
        us = 0 if self.counter_stuck else self.gpu.last_update_us()
        return int(self.gpu.energy_mj(us) + self.gpu.energy_offset_mj(self.gpu.clock.now()))

    def nvmlDeviceGetPowerUsage(self, handle: str) -> int:
        us = self.gpu.last_update_us()
        sign = 1 if (us // round(self.gpu.update_s * 1e6)) % 2 else -1
        return round((self.gpu.power_at(us) + sign * self.gpu.ripple_w) * 1000)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: str) -> int:
        return self.settings()["power_limit_mw"]

    # ---- settings: queries, setters and resets
    def settings(self) -> dict:
        if self.settings_file is not None and self.settings_file.exists():
            return json.loads(self.settings_file.read_text())
        return self._settings

    def _update(self, call: str, **changes) -> None:
        state = self.settings()
        state.update(changes)
        state["log"] = state.get("log", []) + [call]
        if self.settings_file is not None:
            self.settings_file.write_text(json.dumps(state))
        else:
            self._settings = state

    def nvmlDeviceGetPowerManagementLimit(self, handle: str) -> int:
        return self.settings()["power_limit_mw"]

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: str) -> list[int]:
        return list(self.POWER_RANGE_MW)

    def nvmlDeviceGetSupportedMemoryClocks(self, handle: str) -> list[int]:
        return list(self.MEMORY_CLOCKS)

    def nvmlDeviceGetSupportedGraphicsClocks(self, handle: str, mem_mhz: int) -> list[int]:
        return list(self.SM_CLOCKS)

    def nvmlDeviceSetGpuLockedClocks(self, handle: str, lo: int, hi: int) -> None:
        if lo not in self.SM_CLOCKS:
            raise FakeNVMLError(2)
        self._update(f"sm_lock={lo}", sm_lock=lo)

    def nvmlDeviceResetGpuLockedClocks(self, handle: str) -> None:
        self._update("sm_reset", sm_lock=None)

    def nvmlDeviceSetMemoryLockedClocks(self, handle: str, lo: int, hi: int) -> None:
        if lo not in self.MEMORY_CLOCKS:
            raise FakeNVMLError(2)
        self._update(f"mem_lock={lo}", mem_lock=lo)

    def nvmlDeviceResetMemoryLockedClocks(self, handle: str) -> None:
        self._update("mem_reset", mem_lock=None)

    def nvmlDeviceSetPowerManagementLimit(self, handle: str, mw: int) -> None:
        if not self.POWER_RANGE_MW[0] <= mw <= self.POWER_RANGE_MW[1]:
            raise FakeNVMLError(2)
        self._update(f"power={mw}", power_limit_mw=mw)

    def nvmlDeviceGetTemperature(self, handle: str, sensor: int) -> int:
        return round(self.gpu.temp_c(self.gpu.clock.now()))

    def nvmlDeviceGetClockInfo(self, handle: str, kind: int) -> int:
        state = self.settings()
        return {1: state["sm_lock"] or 1980, 2: state["mem_lock"] or 2619}[kind]

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: str) -> int:
        return self.gpu.reasons(self.gpu.clock.now())

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: str) -> int:
        return self.gpu.reasons(self.gpu.clock.now())

    def nvmlDeviceGetViolationStatus(self, handle: str, policy: int) -> SimpleNamespace:
        seconds = self.gpu.power_violation_s(self.gpu.clock.now()) if policy == 0 else 0.0
        return SimpleNamespace(referenceTime=0, violationTime=round(seconds * 1e9))

    def nvmlDeviceGetComputeRunningProcesses(self, handle: str) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=p, usedGpuMemory=1) for p in self.gpu.pids]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: str) -> list[SimpleNamespace]:
        return []

    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.00"

    def nvmlDeviceGetName(self, handle: str) -> bytes:
        return b"Fake H100"

    def nvmlDeviceGetUUID(self, handle: str) -> str:
        return "GPU-fake"


class FakeLoad:
    """Back-to-back launches of ``per_launch_s`` each, drawing ``watts`` while fed."""

    asynchronous = True
    mode = "fake"
    graph_error = None

    def __init__(self, gpu: FakeGPU, name: str, per_launch_s: float, watts: float) -> None:
        self.gpu, self.name, self.per_launch_s, self.watts = gpu, name, per_launch_s, watts
        self.busy = False
        self.ran_dry = False

    def start(self) -> None:
        self.gpu.log.append(self.name)

    def top_up(self) -> None:
        if not self.busy:
            self.gpu.set_power(self.watts)
            self.busy = True

    def mark(self) -> float:
        return self.gpu.clock.now()

    def settle(self) -> None:
        if self.busy:
            self.gpu.set_power(self.gpu.idle_w)
            self.busy = False

    def launches_between(self, a: float, b: float) -> float:
        return (b - a) / self.per_launch_s

    def seconds_between(self, a: float, b: float) -> float:
        return b - a
