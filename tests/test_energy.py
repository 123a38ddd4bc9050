"""The energy meter against a fake NVML on a fake clock: exact numbers, faults, telemetry, cooldown."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from fake_nvml import FakeClock, FakeGPU, FakePynvml, FakeLoad
from layerbench.measure import energy_flags, thermal
from layerbench.measure.energy import EnergyConfig, EnergyMeter, EnergyStats, derived_metrics, pairwise_ratios
from layerbench.measure.nvml import Nvml

CUDA = torch.device("cuda", 0)
FAST = EnergyConfig(cooldown="none", poll_s=0.01, warmup_s=0.5)


class Kernel:
    """Stands in for a kernel: the fake runner draws ``watts`` for ``name``."""

    def __init__(self, name: str, watts: float) -> None:
        self.name, self.watts = name, watts

    def __call__(self) -> None:
        raise AssertionError("the fake runner never launches")


def make_meter(gpu: FakeGPU, cfg: EnergyConfig = FAST, module: FakePynvml | None = None,
               tmp: Path | None = None, own_pid: int = 1000) -> EnergyMeter:
    return EnergyMeter(CUDA, cfg, nvml_module=module or FakePynvml(gpu), nvml_device=0,
                       rapl_root=tmp or Path("/nonexistent-powercap"), clock=gpu.clock.now,
                       sleep=gpu.clock.sleep, load=lambda k, t: FakeLoad(gpu, k.name, t, k.watts),
                       own_pid=own_pid)


@pytest.fixture
def gpu() -> FakeGPU:
    return FakeGPU(FakeClock())


def test_counter_windows_give_exact_joules_per_launch(gpu: FakeGPU) -> None:
    meter = make_meter(gpu)
    assert meter.available and meter.method == "nvml-energy-counter" and meter.reason is None
    s = meter.measure({"a": Kernel("a", 300.0)}, {"a": 1e-3})["a"]
    assert s.method == "nvml-energy-counter"
    assert s.j_per_launch == pytest.approx(0.3, rel=1e-9)           # 300 W * 1 ms
    assert s.j_per_launch_windows == pytest.approx([0.3] * 3, rel=1e-9)
    assert s.spread == pytest.approx(0.0, abs=1e-9)
    assert s.avg_power_w == pytest.approx(300.0, rel=1e-9)
    assert s.idle_power_w == pytest.approx(70.0, rel=1e-9)
    assert s.j_above_idle_per_launch == pytest.approx(0.23, rel=1e-9)  # (300 - 70) W * 1 ms
    assert s.launches == [1000, 1000, 1000]                          # 1.0 s windows of 1 ms launches
    assert s.window_s == pytest.approx([1.0] * 3)
    assert s.s_per_launch == pytest.approx(1e-3, rel=1e-9)
    assert s.updates == [10, 10, 10]
    assert s.flags == [] and not s.throttled
    assert s.host_j_per_launch is None and "host_energy_reason" in s.telemetry
    assert s.temp_start_c == 40.0 and s.temp_end_c == 40.0
    assert s.telemetry["sm_clock_mhz_mean"] == 1980 and s.telemetry["mem_clock_mhz_min"] == 2619
    assert s.telemetry["power_limit_w"] == 700.0
    assert s.idle is not None and "counter updates" in str(s.idle["procedure"])
    assert gpu.log == ["a", "a", "a"]


def test_seconds_per_launch_are_the_windows_not_the_timers(gpu: FakeGPU) -> None:
    """Back to back a kernel may run from L2 faster than the timer measured it cold: the energy
    record keeps the windows' own time per launch, which its J/launch belongs to."""
    meter = EnergyMeter(CUDA, FAST, nvml_module=FakePynvml(gpu), nvml_device=0,
                        rapl_root=Path("/nonexistent-powercap"), clock=gpu.clock.now, sleep=gpu.clock.sleep,
                        load=lambda k, t: FakeLoad(gpu, k.name, t / 3, k.watts), own_pid=1000)
    s = meter.measure({"a": Kernel("a", 300.0)}, {"a": 3e-3})["a"]
    assert s.s_per_launch == pytest.approx(1e-3, rel=1e-9)
    assert s.j_per_launch == pytest.approx(0.3, rel=1e-9)  # 300 W for the 1 ms a launch took there
    assert s.to_record()["energy_s_per_launch"] == pytest.approx(1e-3, rel=1e-9)


def test_window_respects_minimum_updates_and_length(gpu: FakeGPU) -> None:
    cfg = EnergyConfig(cooldown="none", poll_s=0.01, window_s=0.35, min_updates=7, windows=2)
    s = make_meter(gpu, cfg).measure({"a": Kernel("a", 200.0)}, {"a": 1e-4})["a"]
    assert s.updates == [7, 7]                 # 7 updates take 0.7 s > window_s
    assert s.window_s == pytest.approx([0.7, 0.7])
    assert s.launches == [7000, 7000]
    assert s.j_per_launch == pytest.approx(0.02, rel=1e-9)


def test_nvml_latency_keeps_error_within_one_poll(gpu: FakeGPU) -> None:
    gpu.latency_s = 0.0035  # what one NVML query cost in the VM; polls no longer line up with updates
    cfg = EnergyConfig(cooldown="none", poll_s=0.005)
    s = make_meter(gpu, cfg).measure({"a": Kernel("a", 300.0)}, {"a": 1e-3})["a"]
    assert all(u >= 10 for u in s.updates) and all(w >= 1.0 for w in s.window_s)
    # each end is late by < one poll period (8.5 ms) and both ends alike: well under 1 %
    assert s.j_per_launch == pytest.approx(0.3, rel=0.01)
    assert s.avg_power_w == pytest.approx(300.0, rel=0.01)


def test_interleaved_windows_and_pairwise_ratio(gpu: FakeGPU) -> None:
    meter = make_meter(gpu)
    meter.idle_baseline()
    gpu.log.clear()
    stats = meter.measure({"a": Kernel("a", 300.0), "b": Kernel("b", 150.0)}, {"a": 1e-3, "b": 5e-4})
    assert gpu.log == ["a", "b", "a", "b", "a", "b"]
    assert stats["a"].j_per_launch == pytest.approx(0.3, rel=1e-9)
    assert stats["b"].j_per_launch == pytest.approx(0.075, rel=1e-9)
    r = pairwise_ratios(stats["a"], stats["b"])
    assert r["ratio"] == pytest.approx(4.0, rel=1e-9) and r["spread"] == pytest.approx(0.0, abs=1e-9)
    assert r["n"] == 3.0
    assert stats["a"].telemetry["interleaved_with"] == ["a", "b"]


def test_pairwise_ratio_pairs_window_by_window() -> None:
    a = EnergyStats.unavailable("x", None)
    b = EnergyStats.unavailable("x", None)
    a.j_per_launch_windows, b.j_per_launch_windows = [2.0, 3.0, 4.0], [1.0, 2.0, 2.0]
    r = pairwise_ratios(a, b)
    assert r["ratio"] == 2.0 and r["min"] == 1.5 and r["max"] == 2.0
    assert r["spread"] == pytest.approx(0.25)
    assert math.isnan(pairwise_ratios(a, EnergyStats.unavailable("x", None))["ratio"])


def test_counter_reset_voids_the_window_and_it_is_redone(gpu: FakeGPU) -> None:
    # The counter drops by 1 MJ from t = 2.55 s on (a driver reload), inside the second window.
    gpu.energy_offset_mj = lambda t: -1e9 if t >= 2.55 else 0.0
    s = make_meter(gpu, EnergyConfig(cooldown="none", poll_s=0.01, idle_baseline=False)).measure(
        {"a": Kernel("a", 300.0)}, {"a": 1e-3})["a"]
    assert "counter-reset" in s.flags
    assert s.j_per_launch_windows == pytest.approx([0.3] * 3, rel=1e-9)


def test_a_window_whose_queue_ran_dry_is_redone_and_the_last_try_keeps_the_flag(gpu: FakeGPU) -> None:
    dry_windows = [1]  # windows to come that run dry

    class Dry(FakeLoad):
        """Runs dry (the meter sees the flag and an idle GPU's share of energy) in its next windows."""

        def start(self) -> None:
            super().start()
            self.dry = bool(dry_windows) and bool(dry_windows.pop())

        def top_up(self) -> None:
            super().top_up()
            if self.dry:
                self.ran_dry = True

    meter = make_meter(gpu, EnergyConfig(cooldown="none", poll_s=0.01, idle_baseline=False))
    meter._load = lambda k, t: Dry(gpu, k.name, t, k.watts)
    s = meter.measure({"a": Kernel("a", 300.0)}, {"a": 1e-3})["a"]
    assert gpu.log == ["a"] * 4  # three windows, the dry one measured again
    assert s.flags == ["window-redone"] and s.j_per_launch_windows == pytest.approx([0.3] * 3, rel=1e-9)
    assert s.telemetry["notes"] == ["the launch queue ran dry in a window (the GPU idled inside it)"]

    gpu.log.clear()
    dry_windows.extend([1] * 3)  # every try of the first window runs dry: the last one is kept, flagged
    s = meter.measure({"a": Kernel("a", 300.0)}, {"a": 1e-3})["a"]
    assert gpu.log == ["a"] * 5 and s.j_per_launch is not None
    assert s.flags == ["queue-ran-dry", "window-redone"]


def test_counter_reset_during_idle_baseline_is_redone(gpu: FakeGPU) -> None:
    gpu.energy_offset_mj = lambda t: -5e8 if t >= 1.25 else 0.0
    idle = make_meter(gpu).idle_baseline()
    assert idle["power_w"] == pytest.approx(70.0, rel=1e-9)


def test_uncountable_window_is_redone_then_given_up(gpu: FakeGPU) -> None:
    from layerbench.measure.loads import WindowError

    failures = [1]

    class Flaky(FakeLoad):
        def launches_between(self, a: float, b: float) -> float:
            if failures and failures.pop():
                raise WindowError("a window mark fell outside the launched work")
            return super().launches_between(a, b)

    meter = make_meter(gpu, EnergyConfig(cooldown="none", poll_s=0.01, idle_baseline=False))
    meter._load = lambda k, t: Flaky(gpu, k.name, t, k.watts)
    s = meter.measure({"a": Kernel("a", 300.0)}, {"a": 1e-3})["a"]
    assert s.flags == ["window-redone"] and gpu.log == ["a"] * 4
    assert s.telemetry["notes"] == ["a window mark fell outside the launched work"]
    assert s.j_per_launch == pytest.approx(0.3, rel=1e-9)

    failures.extend([1] * 10)  # never countable: unavailable with the reason, no crash
    s = meter.measure({"a": Kernel("a", 300.0)}, {"a": 1e-3})["a"]
    assert s.j_per_launch is None and "no valid window in 3 tries" in str(s.reason)


def test_counter_unsupported_falls_back_to_power_integral(gpu: FakeGPU) -> None:
    module = FakePynvml(gpu, fail={"nvmlDeviceGetTotalEnergyConsumption": 3})
    meter = make_meter(gpu, module=module)
    assert meter.available and meter.method == "nvml-power-integral"
    assert "not supported" in str(meter.reason) and "integrating sampled power" in str(meter.reason)
    # A constant reading cannot show its updates: the window is stretched and flagged, the number exact.
    s = meter.measure({"a": Kernel("a", 250.0)}, {"a": 2e-3})["a"]
    assert s.method == "nvml-power-integral"
    assert s.j_per_launch == pytest.approx(0.5, rel=1e-9)   # constant 250 W * 2 ms, trapezoid exact
    assert s.idle_power_w == pytest.approx(70.0, rel=1e-9)
    assert "few-power-updates" in s.flags and all(w >= 3.0 for w in s.window_s)


def test_power_integral_with_a_live_reading(gpu: FakeGPU) -> None:
    gpu.ripple_w = 2.0  # the reading alternates +-2 W at each 100 ms update, as a real one moves
    meter = make_meter(gpu, module=FakePynvml(gpu, fail={"nvmlDeviceGetTotalEnergyConsumption": 3}))
    s = meter.measure({"a": Kernel("a", 250.0)}, {"a": 2e-3})["a"]
    assert all(u >= 10 for u in s.updates) and all(1.0 <= w < 1.2 for w in s.window_s)
    assert "few-power-updates" not in s.flags
    assert s.j_per_launch == pytest.approx(0.5, rel=0.01)


def test_stuck_counter_switches_to_power_integral_at_idle_baseline(gpu: FakeGPU) -> None:
    meter = make_meter(gpu, module=FakePynvml(gpu, counter_stuck=True))
    assert meter.method == "nvml-energy-counter"
    s = meter.measure({"a": Kernel("a", 300.0)}, {"a": 1e-3})["a"]
    assert s.method == "nvml-power-integral"
    assert "did not change" in str(s.reason)
    assert s.j_per_launch == pytest.approx(0.3, rel=1e-9)


@pytest.mark.parametrize("code, words", [(3, "not supported"), (4, "permission")])
def test_no_counter_and_no_power_is_unavailable_not_a_crash(gpu: FakeGPU, code: int, words: str) -> None:
    module = FakePynvml(gpu, fail={"nvmlDeviceGetTotalEnergyConsumption": code, "nvmlDeviceGetPowerUsage": code})
    meter = make_meter(gpu, module=module)
    assert not meter.available and meter.method == "unavailable" and words in str(meter.reason)
    s = meter.measure({"a": Kernel("a", 300.0)}, {"a": 1e-3})["a"]
    assert s.method == "unavailable" and s.j_per_launch is None and s.flags == ["unavailable"]
    assert words in str(s.reason)
    assert meter.idle_baseline()["power_w"] is None


def test_nvml_init_failure_is_unavailable(gpu: FakeGPU) -> None:
    meter = make_meter(gpu, module=FakePynvml(gpu, fail={"nvmlInit": 9}))
    assert not meter.available and "driver not loaded" in str(meter.reason)


def test_counter_failing_mid_measurement_reports_reason(gpu: FakeGPU) -> None:
    module = FakePynvml(gpu)
    meter = make_meter(gpu, module=module)
    meter.idle_baseline()
    module.fail["nvmlDeviceGetTotalEnergyConsumption"] = 15  # GPU is lost
    s = meter.measure({"a": Kernel("a", 300.0)}, {"a": 1e-3})["a"]
    assert s.method == "nvml-energy-counter" and s.j_per_launch is None
    assert "energy counter read failed" in str(s.reason) and "GPU is lost" in str(s.reason)


def test_throttling_and_other_processes_are_flagged(gpu: FakeGPU) -> None:
    gpu.reasons = lambda t: 0x004 if t > 1.5 else 0x001   # SW power cap once the kernel runs
    gpu.pids = [1000, 4242]
    s = make_meter(gpu, own_pid=1000).measure({"a": Kernel("a", 690.0)}, {"a": 1e-3})["a"]
    assert s.throttled and "throttled" in s.flags and "other-processes" in s.flags
    assert s.telemetry["throttle_reasons"] == ["sw_power_cap"]
    assert set(s.telemetry["clock_event_reasons"]) >= {"sw_power_cap"}
    assert s.telemetry["other_processes"] == [4242]
    assert s.j_per_launch == pytest.approx(0.69, rel=1e-9)  # flagged, not hidden


def test_violation_time_flags_throttling_the_polls_missed(gpu: FakeGPU) -> None:
    gpu.power_violation_s = lambda t: 0.0 if t < 3.6 else 0.25  # inside the first window
    s = make_meter(gpu).measure({"a": Kernel("a", 300.0)}, {"a": 1e-3})["a"]
    assert s.throttled and s.telemetry["throttle_reasons"] == []
    assert s.telemetry["power_capped_s"] == pytest.approx(0.25)


def test_old_pynvml_throttle_name_is_used(gpu: FakeGPU) -> None:
    gpu.reasons = lambda t: 0x040
    module = FakePynvml(gpu, missing=("nvmlDeviceGetCurrentClocksEventReasons",))
    s = make_meter(gpu, module=module).measure({"a": Kernel("a", 300.0)}, {"a": 1e-3})["a"]
    assert s.telemetry["throttle_reasons"] == ["hw_thermal_slowdown"]
    assert module.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] > 0


def test_idle_baseline_is_cached_and_refreshable(gpu: FakeGPU) -> None:
    meter = make_meter(gpu)
    first = meter.idle_baseline()
    assert first["power_w"] == pytest.approx(70.0, rel=1e-9) and first["seconds"] == pytest.approx(2.0)
    assert meter.idle_baseline() is first
    gpu.idle_w = 121.0
    gpu.set_power(121.0)
    again = meter.idle_baseline(refresh=True)
    assert again["power_w"] == pytest.approx(121.0, rel=1e-9) and again["measured_at"]


def test_idle_window_reads_idle_power(gpu: FakeGPU) -> None:
    w = make_meter(gpu).idle_window()
    assert w["power_w"] == pytest.approx(70.0, rel=1e-9)
    assert w["above_idle_j"] == pytest.approx(0.0, abs=1e-9)


def test_adaptive_windows_grow_until_spread_is_small(gpu: FakeGPU) -> None:
    cfg = EnergyConfig(cooldown="none", poll_s=0.01, adaptive=True, target_spread=0.02, max_window_s=4.0,
                       idle_baseline=False)
    watts = [300.0, 330.0, 300.0, 300.0, 300.0, 300.0]  # round one disagrees by 10 %, round two agrees

    class Drifting(FakeLoad):
        def start(self) -> None:
            super().start()
            self.watts = watts.pop(0)

    meter = make_meter(gpu, cfg)
    meter._load = lambda k, t: Drifting(gpu, k.name, t, 0.0)
    s = meter.measure({"a": Kernel("a", 0.0)}, {"a": 1e-3})["a"]
    assert gpu.log == ["a"] * 6 and not watts
    assert s.window_s == pytest.approx([2.0] * 3)
    assert s.j_per_launch_windows == pytest.approx([0.3] * 3, rel=1e-9)


def test_derived_metrics() -> None:
    d = derived_metrics(0.5, 2e-3, 10**9)
    assert d == {"j_per_gflop": 0.5, "gflops_per_w": 2.0, "edp_js": pytest.approx(1e-3)}
    assert derived_metrics(None, 1e-3, 10**9) == {"j_per_gflop": None, "gflops_per_w": None, "edp_js": None}
    assert derived_metrics(0.5, 1e-3, 0)["j_per_gflop"] is None


def test_to_record_is_flat_and_prefixed(gpu: FakeGPU) -> None:
    s = make_meter(gpu).measure({"a": Kernel("a", 300.0)}, {"a": 1e-3})["a"]
    rec = s.to_record()
    assert all(k.startswith("energy_") for k in rec)
    assert rec["energy_j_per_launch"] == s.j_per_launch
    assert rec["energy_telemetry_power_limit_w"] == 700.0
    assert not any(isinstance(v, dict) for k, v in rec.items() if k != "energy_idle_cooldown")


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="window_s"):
        EnergyConfig(window_s=0)
    with pytest.raises(ValueError, match="windows"):
        EnergyConfig(windows=0)
    with pytest.raises(ValueError, match="cooldown"):
        EnergyConfig(cooldown="warm")
    with pytest.raises(ValueError, match="cooldown"):
        EnergyConfig(cooldown=-1.0)


def test_measure_rejects_mismatched_times(gpu: FakeGPU) -> None:
    meter = make_meter(gpu)
    with pytest.raises(ValueError, match="time_per_launch_s"):
        meter.measure({"a": Kernel("a", 1.0)}, {"b": 1e-3})
    with pytest.raises(ValueError, match="positive"):
        meter.measure({"a": Kernel("a", 1.0)}, {"a": 0.0})


# ---------------------------------------------------------------- cooldown

def test_cooldown_auto_waits_for_idle_temperature(gpu: FakeGPU) -> None:
    gpu.temp_c = lambda t: max(40.0, 70.0 - t)  # 1 C per second down to 40 C
    dev = Nvml(FakePynvml(gpu)).open(0).value
    c = thermal.cool_down(dev, "auto", 40.0, 3.0, 60.0, gpu.clock.now, gpu.clock.sleep)
    assert c.reached and c.target_c == 43.0 and c.temp_start_c == 70.0 and c.temp_end_c == 43.0
    assert c.waited_s == pytest.approx(27.0)


def test_cooldown_auto_gives_up_at_the_cap(gpu: FakeGPU) -> None:
    gpu.temp_c = lambda t: 80.0
    dev = Nvml(FakePynvml(gpu)).open(0).value
    c = thermal.cool_down(dev, "auto", 40.0, 3.0, 5.0, gpu.clock.now, gpu.clock.sleep)
    assert not c.reached and c.waited_s == pytest.approx(5.0)


def test_cooldown_without_idle_temperature_waits_until_stable(gpu: FakeGPU) -> None:
    gpu.temp_c = lambda t: max(50.0, 60.0 - t)  # falls for 10 s, then flat
    dev = Nvml(FakePynvml(gpu)).open(0).value
    c = thermal.cool_down(dev, "auto", None, 3.0, 60.0, gpu.clock.now, gpu.clock.sleep)
    assert c.reached and c.temp_end_c == 50.0
    assert c.waited_s == pytest.approx(15.0)  # flat from 10 s, judged over 5 s


def test_cooldown_fixed_and_none(gpu: FakeGPU) -> None:
    dev = Nvml(FakePynvml(gpu)).open(0).value
    c = thermal.cool_down(dev, 7.5, None, 3.0, 60.0, gpu.clock.now, gpu.clock.sleep)
    assert c.policy == "fixed" and c.waited_s == pytest.approx(7.5)
    c = thermal.cool_down(dev, "none", None, 3.0, 60.0, gpu.clock.now, gpu.clock.sleep)
    assert c.policy == "none" and c.waited_s == 0.0


def test_trial_cooldown_uses_the_idle_temperature_and_is_flagged_when_short(gpu: FakeGPU) -> None:
    gpu.temp_c = lambda t: 40.0 if t < 3.0 else 60.0   # idle at 40 C, then stays hot
    cfg = EnergyConfig(cooldown="auto", cooldown_max_s=2.0, poll_s=0.01)
    meter = make_meter(gpu, cfg)
    meter.idle_baseline()
    gpu.clock.advance(5.0)
    s = meter.measure({"a": Kernel("a", 300.0)}, {"a": 1e-3})["a"]
    assert s.cooldown is not None and s.cooldown["target_c"] == 43.0 and not s.cooldown["reached"]
    assert "cooldown-not-reached" in s.flags
    assert s.temp_start_c == 60.0


# ---------------------------------------------------------------- host energy (RAPL) on a GPU run

def _rapl_tree(root: Path, energy_uj: int, max_uj: int) -> Path:
    d = root / "intel-rapl:0"
    d.mkdir(parents=True)
    (d / "name").write_text("package-0\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return d / "energy_uj"


def test_host_rapl_energy_recorded_beside_gpu_energy(gpu: FakeGPU, tmp_path: Path) -> None:
    counter = _rapl_tree(tmp_path, 0, 10**12)
    # the host draws 50 W: the file advances with the fake clock
    gpu.clock.listeners.append(lambda: counter.write_text(f"{gpu.clock.us * 50}\n"))
    s = make_meter(gpu, tmp=tmp_path).measure({"a": Kernel("a", 300.0)}, {"a": 1e-3})["a"]
    assert s.host_j_per_launch == pytest.approx(0.05, rel=1e-9)   # 50 W * 1 ms
    assert "host_energy_reason" not in s.telemetry


# ---------------------------------------------------------------- CPU device: RAPL


def test_cpu_device_uses_rapl_with_wraparound(tmp_path: Path) -> None:
    clock = FakeClock()
    counter = _rapl_tree(tmp_path, 0, 1_000_000)  # wraps every 1 J: many times... so keep windows short
    state = {"uj": 0}

    def burn(joules: float, seconds: float) -> None:
        state["uj"] += round(joules * 1e6)
        counter.write_text(f"{state['uj'] % 1_000_000}\n")
        clock.advance(seconds)

    def kernel() -> None:
        burn(0.0004, 0.001)    # 0.4 mJ per 1 ms launch: 0.4 W

    def sleep(seconds: float) -> None:
        burn(0.1 * seconds, seconds)   # 0.1 W idle

    cfg = EnergyConfig(window_s=1.0, cooldown="none", warmup_s=0.1, poll_s=0.01, idle_s=1.0)
    meter = EnergyMeter(torch.device("cpu"), cfg, rapl_root=tmp_path, clock=clock.now, sleep=sleep)
    assert meter.available and meter.method == "rapl"
    s = meter.measure({"k": kernel}, {"k": 1e-3})["k"]
    assert s.method == "rapl"
    assert s.j_per_launch == pytest.approx(0.0004, rel=1e-9)
    assert s.idle_power_w == pytest.approx(0.1, rel=1e-6)
    assert s.launches == [1000, 1000, 1000]
    assert s.host_j_per_launch is None  # on a CPU run the RAPL energy *is* j_per_launch


def test_cpu_device_without_rapl_is_unavailable(tmp_path: Path) -> None:
    meter = EnergyMeter(torch.device("cpu"), FAST, rapl_root=tmp_path / "missing")
    assert not meter.available and "does not exist" in str(meter.reason)
    s = meter.measure({"k": lambda: None}, {"k": 1e-3})["k"]
    assert s.method == "unavailable" and s.j_per_launch is None


class _Timeline:
    """A GPU stream in milliseconds: chunks run back to back, each ``chunk_ms`` long."""

    def __init__(self, chunk_ms: float) -> None:
        self.now, self.end, self.chunk_ms = 0.0, 0.0, chunk_ms

    def launch(self) -> None:
        self.end = max(self.end, self.now) + self.chunk_ms

    def record(self, stream: object = None) -> "_Event":
        return _Event(self, max(self.end, self.now))


class _Event:
    def __init__(self, line: _Timeline, at: float) -> None:
        self.line, self.at = line, at

    def query(self) -> bool:
        return self.line.now >= self.at

    def elapsed_time(self, other: "_Event") -> float:
        return other.at - self.at


def test_cuda_load_queue_follows_a_gpu_that_sped_up_after_calibration() -> None:
    from layerbench.measure.loads import AHEAD_S, CudaLoad

    line = _Timeline(chunk_ms=0.5)  # clocks rose: a chunk now takes 0.5 ms, calibration saw 2 ms
    load = object.__new__(CudaLoad)
    load.stream, load.chunk, load.chunk_s, load.launch, load._record = None, 10, 2e-3, line.launch, line.record
    load.events, load.done, load.ran_dry = [line.record()], 0, False
    load.top_up()
    line.now += 3.0  # the host sleeps; six fast chunks finish
    load.top_up()
    assert load.chunk_s == pytest.approx(0.5e-3)
    queued_ms = line.end - line.now
    assert queued_ms >= AHEAD_S * 1e3 - 1e-9  # the queue holds its full lead at the real speed
    line.now += 0.8 * AHEAD_S * 1e3  # a host stall shorter than the lead
    load.top_up()
    assert not load.ran_dry


# ---------------------------------------------------------------- on a real GPU

@pytest.mark.gpu
def test_cuda_runner_counts_launches_between_marks() -> None:
    import time

    from layerbench.measure.loads import CudaLoad
    from layerbench.measure.timing import TimingConfig, time_kernel

    dev = torch.device("cuda")
    a = torch.randn(2048, 2048, device=dev)
    kernel = lambda: torch.mm(a, a)  # noqa: E731
    per_launch = time_kernel(kernel, dev, TimingConfig(mode="hot", max_time_s=2.0)).median_s
    r = CudaLoad(kernel, per_launch, dev)
    assert r.mode == "cuda-graph", r.graph_error
    r.start()
    for _ in range(20):
        r.top_up()
        time.sleep(0.005)
    m0 = r.mark()
    r.ran_dry = False  # as the meter does at a window's start: the question is what ran between the marks
    for _ in range(60):
        r.top_up()
        time.sleep(0.005)
    m1 = r.mark()
    r.settle()
    launches, seconds = r.launches_between(m0, m1), r.seconds_between(m0, m1)
    assert seconds > 0.25
    assert not r.ran_dry, (f"the queue drained: {r.chunk} launches a chunk, {r.chunk_s * 1e3:.3f} ms a chunk, "
                           f"{per_launch * 1e6:.1f} us a launch timed")
    # the GPU ran back to back between the marks: launches x time per launch fills the interval
    assert launches * per_launch == pytest.approx(seconds, rel=0.03)


@pytest.mark.gpu
def test_real_nvml_counter_on_gpu() -> None:
    from layerbench.measure.timing import TimingConfig, time_kernel

    dev = torch.device("cuda")
    a = torch.randn(4096, 4096, device=dev)
    x = torch.randn(8 * 1024 * 1024, device=dev)
    kernels = {"mm": lambda: torch.mm(a, a), "relu": lambda: torch.relu(x)}
    times = {n: time_kernel(k, dev, TimingConfig(mode="hot", max_time_s=2.0)).median_s for n, k in kernels.items()}
    meter = EnergyMeter(dev, EnergyConfig(cooldown="none", windows=2, idle_s=1.0, warmup_s=0.3))
    assert meter.available and meter.method == "nvml-energy-counter", meter.reason
    stats = meter.measure(kernels, times)
    for name, s in stats.items():
        assert s.method == "nvml-energy-counter" and s.j_per_launch and s.j_per_launch > 0, s.reason
        assert all(u >= 10 for u in s.updates) and all(w >= 0.95 for w in s.window_s)
        assert s.launch_mode == "cuda-graph"
        # counted launches agree with the timer: window seconds / launches ~ hot time per launch
        assert s.window_s[0] / s.launches_exact[0] == pytest.approx(times[name], rel=0.1)
        assert s.idle_power_w and 30 < s.idle_power_w < 300
    assert stats["mm"].avg_power_w > stats["mm"].idle_power_w + 50  # a big fp32 matmul works the card


def test_per_image_and_system_energy() -> None:
    from layerbench.measure.energy import per_image_metrics
    assert per_image_metrics(0.8, 0.2, 4) == {"j_per_image": 0.2, "system_j_per_launch": 1.0,
                                              "system_j_per_image": 0.25}
    assert per_image_metrics(0.8, None, 4) == {"j_per_image": 0.2, "system_j_per_launch": None,
                                               "system_j_per_image": None}
    assert per_image_metrics(None, 0.2, 4)["j_per_image"] is None


def test_every_flag_the_meter_sets_is_explained_to_readers() -> None:
    """The tables print a J/launch's flags with their meanings: a flag the meter sets must have one."""
    sources = "\n".join(p.read_text() for p in (Path(energy_flags.__file__).parent).glob("*.py"))
    set_here = set(re.findall(r'flags(?:\.append\(| = \[)"([a-z-]+)"', sources)) - {energy_flags.NOT_MEASURED}
    assert {"throttled", "queue-ran-dry", "unsteady", "few-power-updates"} <= set_here  # the search finds them
    assert set_here <= set(energy_flags.MEANINGS), set_here - set(energy_flags.MEANINGS)
    assert energy_flags.flags_of('["throttled", "unavailable"]') == ["throttled"]
    assert energy_flags.flags_of(float("nan")) == [] and energy_flags.flags_of("unsteady,throttled") == [
        "unsteady", "throttled"]
