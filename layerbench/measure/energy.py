"""Energy per kernel launch: NVML's total-energy counter over steady, counter-aligned windows.

Procedure of one trial (``EnergyMeter.measure``, one benchmark point, one or more implementations)
-------------------------------------------------------------------------------------------------
1. Idle baseline (once per meter, cached; ``idle_baseline(refresh=True)`` re-measures): the GPU
   synchronised and left idle; cooldown per ``EnergyConfig.cooldown``; ``warmup_s`` of settling;
   then the same counter-aligned window as below, with no work, over >= ``idle_s`` and
   >= ``min_updates`` counter updates.  Idle power drifts (72 W cold, 121 W just after heavy work on
   an H100), so the baseline records when it was taken, the temperature and this procedure.
2. Cooldown before the trial, so every trial starts from the same thermal state.
3. Windows interleaved across the implementations, A B A B ... (``windows`` rounds), so thermal
   and clock drift hit all alike; ``pairwise_ratios`` pairs round i of A with round i of B.
4. One window: ``warmup_s`` of back-to-back launches (steady power, clocks and temperature), then
   the counter is polled — a ``poll_s`` sleep between reads, never a tight loop (each NVML query
   costs ~3.5 ms in a VM) — until it changes: that read opens the window and the load marks
   the instant; launches continue until >= ``window_s`` and >= ``min_updates`` further updates,
   and the read that sees the last update closes it.  The energy is the counter difference;
   the launches are those the load counted between the two marks (see ``loads``: GPU
   timestamps of chunk ends and of the marks, interpolated).  A mark follows the counter's
   update by the polling delay at both ends alike, so the offsets cancel on average; each end
   is uncertain by one poll period (~9 ms), i.e. <~1 % of a 1 s window.  The window's seconds
   per launch are kept beside its J/launch (``s_per_launch``): back to back a kernel whose data
   fits in L2 runs from it, faster than the timer's cold mode measures it, so the time this
   energy belongs to is the window's, not the timer's.
5. Per window: telemetry (clocks, temperature, reasons, violation time, other processes), host
   RAPL energy when readable.  A counter that goes backwards (driver reload/reset) voids the
   window, which is redone (flag ``counter-reset``).

Where the counter is unsupported (pre-Volta) sampled power is integrated over the window
(trapezoid, sample times at the middle of each query) — method ``nvml-power-integral``.  On a CPU
device the package+DRAM RAPL counters take NVML's place (method ``rapl``).  NVML faults never
raise: the result is "unavailable" with the reason.  Nothing here changes clocks or power limits.
"""

from __future__ import annotations

import datetime
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from layerbench.measure import telemetry, thermal
from layerbench.measure.loads import CudaLoad, HostLoad, IdleLoad, Load, WindowError
from layerbench.measure.meters import (
    CounterMeter,
    CounterWentBack,
    HostEnergy,
    MeterFault,
    PowerIntegralMeter,
    RaplMeter,
    Window,
)
from layerbench.measure.nvml import NO_PERMISSION, Nvml, NvmlDevice
from layerbench.measure.rapl import DEFAULT_ROOT, Rapl
from layerbench.options import EnergyConfig

UNSTEADY_SPREAD = 0.05    # windows further apart than this are flagged "unsteady"


@dataclass
class EnergyStats:
    method: str
    reason: str | None
    j_per_launch: float | None
    j_per_launch_windows: list[float]
    spread: float | None
    avg_power_w: float | None
    idle_power_w: float | None
    j_above_idle_per_launch: float | None
    launches: list[int]
    window_s: list[float]
    temp_start_c: float | None
    temp_end_c: float | None
    telemetry: dict[str, object]
    throttled: bool
    flags: list[str]
    host_j_per_launch: float | None
    launches_exact: list[float] = field(default_factory=list)   # interpolated launch counts
    power_w_windows: list[float] = field(default_factory=list)
    updates: list[int] = field(default_factory=list)             # counter updates per window
    launch_mode: str | None = None                               # "cuda-graph" | "stream" | "host"
    cooldown: dict[str, object] | None = None
    idle: dict[str, object] | None = None                        # the baseline used, with its procedure
    # Seconds a launch took inside the windows (median): back to back, so caches stay warm where the
    # timer flushes them (cold mode); the time this J/launch belongs to.
    s_per_launch: float | None = None

    @classmethod
    def unavailable(cls, method: str, reason: str | None) -> "EnergyStats":
        return cls(method=method, reason=reason, j_per_launch=None, j_per_launch_windows=[], spread=None,
                   avg_power_w=None, idle_power_w=None, j_above_idle_per_launch=None, launches=[],
                   window_s=[], temp_start_c=None, temp_end_c=None, telemetry={}, throttled=False,
                   flags=["unavailable"], host_j_per_launch=None)

    def to_record(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for key, value in asdict(self).items():
            if key == "telemetry":
                out.update({f"energy_telemetry_{k}": v for k, v in value.items()})
            elif key in ("cooldown", "idle"):
                out.update({f"energy_{key}_{k}": v for k, v in (value or {}).items()})
            else:
                out[f"energy_{key}"] = value
        return out


class EnergyMeter:
    """Energy per launch on one device.  ``clock``/``sleep``/``load`` are injectable for tests."""

    def __init__(self, device: torch.device, cfg: EnergyConfig = EnergyConfig(), *,
                 nvml_module: object | None = None, rapl_root: str | Path = DEFAULT_ROOT,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 load: Callable[[Callable[[], object], float], Load] | None = None,
                 own_pid: int | None = None, nvml_device: object | None = None) -> None:
        """``nvml_device``: what identifies the GPU to NVML (default: ``device`` itself, matched by
        UUID); tests with a fake NVML pass an index."""
        self.device = torch.device(device)
        self.cfg = cfg
        self.clock, self.sleep = clock, sleep
        self.own_pid = own_pid
        self.dev: NvmlDevice | None = None
        self.meter: CounterMeter | PowerIntegralMeter | RaplMeter | None = None
        self.host = HostEnergy(None, None)
        self._idle: dict[str, object] | None = None
        self._idle_temp: float | None = None
        self.reason: str | None = None

        if self.device.type == "cuda":
            host = Rapl(Path(rapl_root))
            self.host = HostEnergy(host, None) if host.available else HostEnergy(None, host.reason)
            self._open_nvml(nvml_module, self.device if nvml_device is None else nvml_device)
            self._load = load or (lambda k, t: CudaLoad(k, t, self.device))
        elif self.device.type == "cpu":
            host = Rapl(Path(rapl_root))
            if host.available:
                self.meter = RaplMeter(host, self.clock, self.sleep, cfg.poll_s)
            else:
                self.reason = f"RAPL unavailable: {host.reason}"
            self._load = load or (lambda k, t: HostLoad(k, t, self.clock))
        else:
            self.reason = f"no energy meter for {self.device.type!r} devices"
            self._load = load or (lambda k, t: HostLoad(k, t, self.clock))

    @property
    def available(self) -> bool:
        return self.meter is not None

    @property
    def method(self) -> str:
        return self.meter.method if self.meter is not None else "unavailable"

    def _open_nvml(self, module: object | None, which: object) -> None:
        opened = Nvml(module).open(which)
        if not opened.ok:
            self.reason = f"NVML unavailable: {opened.reason}"
            return
        self.dev = opened.value
        counter = self.dev.total_energy_mj()
        if counter.ok:
            self.meter = CounterMeter(self.dev, self.cfg, self.clock, self.sleep, self.host)
            return
        power = self.dev.power_w()
        if power.ok:
            self.meter = PowerIntegralMeter(self.dev, self.cfg, self.clock, self.sleep, self.host)
            self.reason = f"total-energy counter unavailable ({counter.reason}); integrating sampled power"
            return
        self.reason = f"NVML energy unavailable: {counter.reason}; {power.reason}"
        if NO_PERMISSION in (counter.code, power.code):
            self.reason += " (permission denied: run with access to the GPU's management interface)"

    # ------------------------------------------------------------------ public

    def idle_baseline(self, refresh: bool = False) -> dict[str, object]:
        """Idle power by the documented procedure (cached; ``refresh`` re-measures)."""
        if self._idle is not None and not refresh:
            return self._idle
        if not self.available:
            return {"power_w": None, "reason": self.reason}
        try:
            self._idle = self._measure_idle()
        except MeterFault as exc:
            return {"power_w": None, "reason": str(exc)}
        return self._idle

    def idle_window(self) -> dict[str, object]:
        """An idle window after the usual cooldown, measured like a kernel's: its power, and above the baseline."""
        base = self.idle_baseline()
        if base.get("power_w") is None:
            return {"power_w": None, "reason": base.get("reason")}
        try:
            self._sync()
            self._cool()
            w = self._window_retrying(IdleLoad(self.clock), self.cfg.window_s)
        except MeterFault as exc:
            return {"power_w": None, "reason": str(exc)}
        power = w.energy_j / w.seconds
        return {"power_w": power, "idle_power_w": base["power_w"], "above_idle_w": power - base["power_w"],
                "above_idle_j": w.energy_j - base["power_w"] * w.seconds, "seconds": w.seconds,
                "updates": w.updates, "temp_start_c": w.temp_start_c, "temp_end_c": w.temp_end_c}

    def measure(self, kernels: dict[str, Callable[[], object]],
                time_per_launch_s: dict[str, float]) -> dict[str, EnergyStats]:
        names = list(kernels)
        if not names:
            raise ValueError("kernels must name at least one kernel")
        if set(time_per_launch_s) != set(names):
            raise ValueError(f"time_per_launch_s must have exactly the keys {names}, got {list(time_per_launch_s)}")
        for n, t in time_per_launch_s.items():
            if not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
                raise ValueError(f"time_per_launch_s[{n!r}] must be a positive number of seconds, got {t!r}")
        if not self.available:
            return {n: EnergyStats.unavailable(self.method, self.reason) for n in names}
        try:
            self._sync()
            idle = self.idle_baseline() if self.cfg.idle_baseline else None
            if idle is not None and idle.get("power_w") is None:
                raise MeterFault(f"idle baseline failed: {idle.get('reason')}")
            cool = self._cool()
            loads = {n: self._load(kernels[n], float(time_per_launch_s[n])) for n in names}
            window_s = self.cfg.window_s
            while True:
                results: dict[str, list[Window]] = {n: [] for n in names}
                for _ in range(self.cfg.windows):
                    for n in names:
                        results[n].append(self._window_retrying(loads[n], window_s))
                spreads = [_spread([w.energy_j / w.launches for w in ws]) for ws in results.values()]
                if not self.cfg.adaptive or window_s >= self.cfg.max_window_s or \
                        all(s is not None and s <= self.cfg.target_spread for s in spreads):
                    break
                window_s = min(2 * window_s, self.cfg.max_window_s)
        except MeterFault as exc:
            return {n: EnergyStats.unavailable(self.method, str(exc)) for n in names}
        return {n: self._stats(results[n], idle, cool, loads[n], names) for n in names}

    # ------------------------------------------------------------------ procedure

    def _sync(self) -> None:
        if self.device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.synchronize(self.device)

    def _cool(self) -> thermal.Cooldown:
        return thermal.cool_down(self.dev, self.cfg.cooldown, self._idle_temp, self.cfg.cooldown_tolerance_c,
                                 self.cfg.cooldown_max_s, self.clock, self.sleep)

    def _measure_idle(self) -> dict[str, object]:
        # Idle means "this process's CUDA context alive, nothing queued": the state kernels run
        # from.  Measured before the context exists, an H100 read 76 W; right after, 129 W.
        self._sync()
        cool = self._cool()
        when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        idle_s = max(self.cfg.idle_s, 1e-3)
        try:
            w = self._window_retrying(IdleLoad(self.clock), idle_s)
        except MeterFault as exc:
            if self.method != "nvml-energy-counter" or "did not change" not in str(exc) or self.dev is None \
                    or not self.dev.power_w().ok:
                raise
            # A counter that reads but never moves (seen in some VMs): integrate power instead.
            self.meter = PowerIntegralMeter(self.dev, self.cfg, self.clock, self.sleep, self.host)
            self.reason = f"{exc}; integrating sampled power"
            w = self._window_retrying(IdleLoad(self.clock), idle_s)
        temps = [t for t in (w.temp_start_c, w.temp_end_c) if t is not None]
        if temps:
            low = min(temps)
            self._idle_temp = low if self._idle_temp is None else min(self._idle_temp, low)
        return {
            "power_w": w.energy_j / w.seconds, "seconds": w.seconds, "updates": w.updates,
            "temp_c": w.temp_end_c, "measured_at": when, "method": self.method,
            "idle_temp_c": self._idle_temp, "cooldown": cool.to_dict(),
            "procedure": (f"CUDA context alive, GPU synchronised and idle; cooldown {self.cfg.cooldown!r} "
                          f"(tolerance {self.cfg.cooldown_tolerance_c} C, max {self.cfg.cooldown_max_s} s); "
                          f"{self.cfg.warmup_s} s settling; energy over >= {idle_s} s and >= "
                          f"{self.cfg.min_updates} counter updates, ends aligned to updates ({self.method})"),
        }

    def _window_retrying(self, load: Load, window_s: float) -> Window:
        """A window; one voided by a counter reset or an uncountable mark is redone (and flagged),
        and so is one whose launch queue ran dry while tries remain (the last try keeps its flag)."""
        flags: list[str] = []
        notes: list[str] = []
        for attempt in range(self.cfg.max_retries + 1):
            try:
                w = self._window(load, window_s)
                if "queue-ran-dry" in w.flags and attempt < self.cfg.max_retries:
                    # The GPU idled inside the window: its idle energy would count as the kernel's.
                    flags.append("window-redone")
                    notes.append("the launch queue ran dry in a window (the GPU idled inside it)")
                    continue
                w.flags.extend(f for f in flags if f not in w.flags)
                w.notes.extend(notes)
                return w
            except CounterWentBack:
                flags.append("counter-reset")
                notes.append("the energy counter went backwards (reset or driver reload)")
            except WindowError as exc:
                flags.append("window-redone")
                notes.append(str(exc))
        raise MeterFault(f"no valid window in {self.cfg.max_retries + 1} tries: {'; '.join(notes)}")

    def _window(self, load: Load, window_s: float) -> Window:
        load.start()
        try:
            self._run_for(load, self.cfg.warmup_s)
            assert self.meter is not None
            if self.dev is None:  # RAPL on a CPU device: no GPU telemetry
                return self.meter.read(load, window_s, None)
            temp0 = self._temp()
            tel = telemetry.WindowTelemetry(self.dev, self.own_pid) if self.dev is not None else None
            w = self.meter.read(load, window_s, tel)
            w.temp_start_c, w.temp_end_c = temp0, self._temp()
            if tel is not None:
                w.telemetry = tel.finish()
                if w.telemetry["throttled"]:
                    w.flags.append("throttled")
                if w.telemetry["other_processes"]:
                    w.flags.append("other-processes")
            return w
        finally:
            load.settle()

    def _run_for(self, load: Load, seconds: float) -> None:
        t0 = self.clock()
        while self.clock() - t0 < seconds:
            load.top_up()
            if load.asynchronous:
                self.sleep(self.cfg.poll_s)

    def _temp(self) -> float | None:
        if self.dev is None:
            return None
        r = self.dev.temperature_c()
        return r.value if r.ok else None

    # ------------------------------------------------------------------ summary

    def _stats(self, windows: list[Window], idle: dict[str, object] | None, cool: thermal.Cooldown,
               load: Load, names: list[str]) -> EnergyStats:
        per_launch = [w.energy_j / w.launches for w in windows]
        seconds = [w.seconds / w.launches for w in windows]
        powers = [w.energy_j / w.seconds for w in windows]
        idle_w = idle.get("power_w") if idle else None
        above = ([(w.energy_j - idle_w * w.seconds) / w.launches for w in windows]  # type: ignore[operator]
                 if isinstance(idle_w, float) else None)
        hosts = [w.host_j / w.launches for w in windows if w.host_j is not None]
        flags: list[str] = []
        for w in windows:
            flags.extend(f for f in w.flags if f not in flags)
        if not cool.reached and cool.temp_start_c is not None:  # no thermometer (CPU): nothing to reach
            flags.append("cooldown-not-reached")
        spread = _spread(per_launch)
        if spread is not None and spread > UNSTEADY_SPREAD:
            flags.append("unsteady")
        tel = telemetry.merge([w.telemetry for w in windows]) if self.dev is not None else {}
        tel["window_temps_c"] = [[w.temp_start_c, w.temp_end_c] for w in windows]
        tel["interleaved_with"] = [n for n in names]
        tel["own_pid"] = self.own_pid if self.own_pid is not None else os.getpid()
        tel["notes"] = [n for w in windows for n in w.notes]
        if self.method != "rapl" and self.host.reason:
            tel["host_energy_reason"] = self.host.reason
        return EnergyStats(
            method=self.method, reason=self.reason,
            j_per_launch=statistics.median(per_launch), j_per_launch_windows=per_launch, spread=spread,
            avg_power_w=statistics.median(powers), idle_power_w=idle_w,  # type: ignore[arg-type]
            j_above_idle_per_launch=statistics.median(above) if above else None,
            launches=[round(w.launches) for w in windows], window_s=[w.seconds for w in windows],
            temp_start_c=windows[0].temp_start_c, temp_end_c=windows[-1].temp_end_c,
            telemetry=tel, throttled="throttled" in flags, flags=flags,
            host_j_per_launch=(statistics.median(hosts)
                               if len(hosts) == len(windows) and self.method != "rapl" else None),
            launches_exact=[w.launches for w in windows], power_w_windows=powers,
            updates=[w.updates for w in windows], launch_mode=load.mode,
            cooldown=cool.to_dict(), idle=idle, s_per_launch=statistics.median(seconds))


def _spread(values: list[float]) -> float | None:
    if not values:
        return None
    med = statistics.median(values)
    return (max(values) - min(values)) / med if med > 0 else None


def derived_metrics(j_per_launch: float | None, time_s: float, flops: int) -> dict[str, float | None]:
    """J/GFLOP, GFLOP/s per W (= GFLOP per J, power taken as J/launch over time/launch) and energy-delay product."""
    if j_per_launch is None or not math.isfinite(j_per_launch) or j_per_launch <= 0:
        return {"j_per_gflop": None, "gflops_per_w": None, "edp_js": None}
    gflop = flops / 1e9
    return {
        "j_per_gflop": j_per_launch / gflop if gflop > 0 else None,
        "gflops_per_w": gflop / j_per_launch if gflop > 0 else None,
        "edp_js": j_per_launch * time_s if time_s > 0 else None,
    }


def per_image_metrics(j_per_launch: float | None, host_j_per_launch: float | None,
                      batch: int | None) -> dict[str, float | None]:
    """Energy per image (per batch element) and the thesis's system energy: the device's energy plus
    the host's RAPL package + DRAM energy over the same windows, where RAPL was readable."""
    ok = j_per_launch is not None and math.isfinite(j_per_launch) and j_per_launch > 0
    host_ok = ok and host_j_per_launch is not None and math.isfinite(host_j_per_launch)
    system = j_per_launch + host_j_per_launch if host_ok else None  # type: ignore[operator]
    n = batch if batch and batch > 0 else None
    return {"j_per_image": j_per_launch / n if ok and n else None,  # type: ignore[operator]
            "system_j_per_launch": system,
            "system_j_per_image": system / n if system is not None and n else None}


def pairwise_ratios(a: EnergyStats, b: EnergyStats) -> dict[str, float]:
    """A/B energy ratio from interleaved windows: window i of A over window i of B; median and spread."""
    n = min(len(a.j_per_launch_windows), len(b.j_per_launch_windows))
    if n == 0:
        return {"ratio": math.nan, "spread": math.nan, "min": math.nan, "max": math.nan, "n": 0.0}
    ratios = [x / y for x, y in zip(a.j_per_launch_windows[:n], b.j_per_launch_windows[:n])]
    med = statistics.median(ratios)
    return {"ratio": med, "spread": (max(ratios) - min(ratios)) / med, "min": min(ratios),
            "max": max(ratios), "n": float(n)}
