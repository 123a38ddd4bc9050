"""The three ways a window's energy is read, one class per meter kind.

* ``CounterMeter`` (``nvml-energy-counter``): NVML's total-energy counter, the window's ends aligned
  to the counter's updates (about every 100 ms): the read that sees an update opens or closes it.
* ``PowerIntegralMeter`` (``nvml-power-integral``): where the counter is missing (pre-Volta) or
  never moves, sampled power integrated over the window (trapezoid, each sample at the middle of
  its query).
* ``RaplMeter`` (``rapl``): a CPU device's package + DRAM counters over the window.

Each ``read(load, window_s, telemetry)`` keeps ``load`` running and returns a ``Window``: energy,
seconds, the launches the load counted between the window's two marks, counter updates, host
(RAPL) energy where readable, and flags.  ``HostEnergy`` adds the host's RAPL energy to a GPU
window where it can be read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from layerbench.measure import telemetry
from layerbench.measure.loads import Load, WindowError
from layerbench.measure.nvml import NvmlDevice
from layerbench.measure.rapl import Rapl, Snapshot
from layerbench.options import EnergyConfig

STALL_S = 2.0             # a counter that has not changed for this long is broken
POWER_POLL_S = 0.02       # power-integral sampling interval


@dataclass
class Window:
    energy_j: float
    seconds: float
    launches: float
    updates: int
    temp_start_c: float | None
    temp_end_c: float | None
    telemetry: dict[str, object]
    host_j: float | None
    flags: list[str]
    notes: list[str] = field(default_factory=list)


class _Fault(Exception):
    """The meter cannot give a number; the message is the reason recorded."""


class _CounterWentBack(Exception):
    pass


class MeterFault(Exception):
    """The meter cannot give a number; the message is the reason recorded."""


class CounterWentBack(Exception):
    """The energy counter decreased (a reset or a driver reload): the window is void."""


class HostEnergy:
    """The host's RAPL energy over a GPU window, where RAPL is readable (else ``None``)."""

    def __init__(self, rapl: Rapl | None, reason: str | None) -> None:
        self.rapl, self.reason = rapl, reason

    def snapshot(self) -> Snapshot | None:
        if self.rapl is None:
            return None
        try:
            return self.rapl.snapshot()
        except OSError as exc:
            self.reason = f"RAPL read failed: {exc}"
            return None

    def joules_since(self, before: Snapshot | None) -> float | None:
        after = self.snapshot() if before is not None else None
        return self.rapl.total_joules(before, after) if before is not None and after is not None and self.rapl else None



class CounterMeter:
    """NVML's total-energy counter, window ends aligned to its updates."""

    method = "nvml-energy-counter"

    def __init__(self, dev: NvmlDevice, cfg: EnergyConfig, clock: Callable[[], float],
                 sleep: Callable[[float], None], host: HostEnergy) -> None:
        self.dev, self.cfg, self.clock, self.sleep, self.host = dev, cfg, clock, sleep, host

    def _counter(self) -> int:
        r = self.dev.total_energy_mj()
        if not r.ok:
            raise MeterFault(f"energy counter read failed: {r.reason}")
        return int(r.value)  # type: ignore[arg-type]
    def _await_change(self, load: Load, last: int) -> tuple[int, object]:
        """Poll (sleeping between reads) until the counter moves; returns the new value and a mark."""
        t0 = self.clock()
        while True:
            load.top_up()
            self.sleep(self.cfg.poll_s)
            value = self._counter()
            if value != last:
                mark = load.mark()  # immediately after the read that saw the update
                if value < last:
                    raise CounterWentBack()
                return value, mark
            if self.clock() - t0 > STALL_S:
                raise MeterFault(f"energy counter did not change for {STALL_S} s")
    def read(self, load: Load, window_s: float, tel: telemetry.WindowTelemetry | None) -> Window:
        e_start, m_start = self._await_change(load, self._counter())
        load.ran_dry = False
        host0 = self.host.snapshot()
        t_start = self.clock()
        value, updates = e_start, 0
        while True:
            value, m_end = self._await_change(load, value)
            updates += 1
            if updates >= self.cfg.min_updates and self.clock() - t_start >= window_s:
                break
            if tel is not None:
                tel.poll()  # right after an update: the next one is ~100 ms away
        host_j = self.host.joules_since(host0)
        flags = ["queue-ran-dry"] if load.ran_dry else []
        load.settle()
        launches = load.launches_between(m_start, m_end)
        seconds = load.seconds_between(m_start, m_end)
        if launches <= 0 or seconds <= 0:
            raise WindowError(f"empty window ({launches} launches in {seconds} s)")
        return Window((value - e_start) * 1e-3, seconds, launches, updates, None, None, {}, host_j, flags)


class PowerIntegralMeter:
    """Sampled NVML power, integrated over the window."""

    method = "nvml-power-integral"

    def __init__(self, dev: NvmlDevice, cfg: EnergyConfig, clock: Callable[[], float],
                 sleep: Callable[[float], None], host: HostEnergy) -> None:
        self.dev, self.cfg, self.clock, self.sleep, self.host = dev, cfg, clock, sleep, host

    def read(self, load: Load, window_s: float, tel: telemetry.WindowTelemetry | None) -> Window:
        samples: list[tuple[float, float]] = []
        marks: list[object] = []
        changes, last = 0, None
        cap = max(3 * window_s, window_s + STALL_S)
        host0 = self.host.snapshot()
        t_start = self.clock()
        while True:
            load.top_up()
            ta = self.clock()
            r = self.dev.power_w()
            tb = self.clock()
            marks.append(load.mark())
            if not r.ok:
                raise MeterFault(f"power read failed: {r.reason}")
            samples.append(((ta + tb) / 2, float(r.value)))  # type: ignore[arg-type]
            if len(samples) == 1:
                load.ran_dry = False
            elif r.value != last:
                changes += 1
            last = r.value
            elapsed = self.clock() - t_start
            if (elapsed >= window_s and changes >= self.cfg.min_updates) or elapsed >= cap:
                break
            if tel is not None and len(samples) % 5 == 0:
                tel.poll()
            self.sleep(POWER_POLL_S)
        host_j = self.host.joules_since(host0)
        flags = ["queue-ran-dry"] if load.ran_dry else []
        if changes < self.cfg.min_updates:
            flags.append("few-power-updates")
        load.settle()
        energy = sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(samples, samples[1:]))
        seconds = samples[-1][0] - samples[0][0]
        launches = load.launches_between(marks[0], marks[-1])
        if launches <= 0 or seconds <= 0:
            raise WindowError(f"empty window ({launches} launches in {seconds} s)")
        return Window(energy, seconds, launches, changes, None, None,
                       {"power_samples": len(samples)}, host_j, flags)


class RaplMeter:
    """A CPU device's RAPL package + DRAM energy over the window."""

    method = "rapl"

    def __init__(self, rapl: Rapl, clock: Callable[[], float], sleep: Callable[[float], None],
                 poll_s: float) -> None:
        self.rapl, self.clock, self.sleep, self.poll_s = rapl, clock, sleep, poll_s

    def read(self, load: Load, window_s: float, tel: telemetry.WindowTelemetry | None = None) -> Window:
        try:
            s0, m0 = self.rapl.snapshot(), load.mark()
            t0 = self.clock()
            while self.clock() - t0 < window_s:
                load.top_up()
                if load.asynchronous:
                    self.sleep(self.poll_s)
            m1, s1 = load.mark(), self.rapl.snapshot()
        except OSError as exc:
            raise MeterFault(f"RAPL read failed: {exc}") from None
        return Window(self.rapl.total_joules(s0, s1), load.seconds_between(m0, m1),
                       load.launches_between(m0, m1), 0, None, None, {}, None, [])
