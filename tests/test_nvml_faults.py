"""The pynvml wrapper: every fault becomes a reason, never an exception; both reason-API spellings."""

from __future__ import annotations

import sys

import pytest

from fake_nvml import FakeClock, FakeGPU, FakePynvml
from layerbench.measure.nvml import THROTTLE_MASK, Nvml, other_processes, reason_names


@pytest.fixture
def gpu() -> FakeGPU:
    return FakeGPU(FakeClock())


def test_missing_pynvml_is_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes "import pynvml" raise ImportError
    nv = Nvml()
    assert not nv.ok and "pynvml cannot be imported" in str(nv.reason)
    r = nv.open(0)
    assert not r.ok and r.value is None and r.reason == nv.reason
    assert not nv.driver_version().ok


def test_init_failure_names_the_error(gpu: FakeGPU) -> None:
    nv = Nvml(FakePynvml(gpu, fail={"nvmlInit": 12}))
    assert nv.reason == "nvmlInit failed: NVML library not found (NVML error 12)"


@pytest.mark.parametrize("code, text", [(3, "not supported"), (4, "no permission"), (15, "GPU is lost"),
                                        (999, "unknown error")])
def test_query_errors_become_reasons_with_codes(gpu: FakeGPU, code: int, text: str) -> None:
    nv = Nvml(FakePynvml(gpu, fail={"nvmlDeviceGetTotalEnergyConsumption": code}))
    dev = nv.open(0).value
    r = dev.total_energy_mj()
    assert not r.ok and r.value is None and r.code == code
    assert r.reason == f"nvmlDeviceGetTotalEnergyConsumption: {text} (NVML error {code})"


def test_typed_values_and_units(gpu: FakeGPU) -> None:
    gpu.clock.advance(1.0)
    gpu.pids = [7, 9]
    nv = Nvml(FakePynvml(gpu))
    dev = nv.open(0).value
    assert dev.total_energy_mj().value == 70_000          # 70 W for 1 s
    assert dev.power_w().value == 70.0
    assert dev.power_limit_w().value == 700.0
    assert dev.temperature_c().value == 40.0
    assert (dev.sm_clock_mhz().value, dev.mem_clock_mhz().value) == (1980, 2619)
    assert dev.process_ids().value == [7, 9]
    assert dev.name().value == "Fake H100" and dev.uuid().value == "GPU-fake"
    assert nv.driver_version().value == "580.00"
    assert nv.open("GPU-abc").value.handle == "handle-GPU-abc"


def test_non_nvidia_device_is_a_reason(gpu: FakeGPU) -> None:
    import torch

    r = Nvml(FakePynvml(gpu)).open(torch.device("cpu"))
    assert not r.ok and "not 'cpu'" in str(r.reason)


def test_function_missing_from_this_pynvml(gpu: FakeGPU) -> None:
    nv = Nvml(FakePynvml(gpu, missing=("nvmlDeviceGetTotalEnergyConsumption",)))
    r = nv.open(0).value.total_energy_mj()
    assert not r.ok and r.code == 13 and "not in this pynvml" in str(r.reason)


def test_clock_event_reasons_both_spellings(gpu: FakeGPU) -> None:
    gpu.reasons = lambda t: 0x004 | 0x001
    new = Nvml(FakePynvml(gpu)).open(0).value
    assert new.clock_event_reasons().value == 0x005
    old_module = FakePynvml(gpu, missing=("nvmlDeviceGetCurrentClocksEventReasons",))
    old = Nvml(old_module).open(0).value
    assert old.clock_event_reasons().value == 0x005
    assert old_module.calls == {"nvmlInit": 1, "nvmlDeviceGetHandleByIndex": 1,
                                "nvmlDeviceGetCurrentClocksThrottleReasons": 1}
    # A driver without the new function (NVML "function not found") also falls back.
    drv = Nvml(FakePynvml(gpu, fail={"nvmlDeviceGetCurrentClocksEventReasons": 13})).open(0).value
    assert drv.clock_event_reasons().value == 0x005
    # Not supported is a real answer: no fallback, the reason is kept.
    ns = Nvml(FakePynvml(gpu, fail={"nvmlDeviceGetCurrentClocksEventReasons": 3})).open(0).value
    r = ns.clock_event_reasons()
    assert not r.ok and "not supported" in str(r.reason)


def test_reason_names_and_throttle_mask() -> None:
    assert reason_names(0x001 | 0x004 | 0x040) == ["gpu_idle", "sw_power_cap", "hw_thermal_slowdown"]
    assert reason_names(0x001 & THROTTLE_MASK) == []
    assert reason_names(0x0FF & THROTTLE_MASK) == ["sw_power_cap", "hw_slowdown", "sw_thermal_slowdown",
                                                   "hw_thermal_slowdown", "hw_power_brake_slowdown"]


def test_violation_seconds(gpu: FakeGPU) -> None:
    gpu.power_violation_s = lambda t: 1.5
    dev = Nvml(FakePynvml(gpu)).open(0).value
    assert dev.violation_s("power").value == pytest.approx(1.5)
    assert dev.violation_s("thermal").value == 0.0


def test_process_list_partial_failure(gpu: FakeGPU) -> None:
    gpu.pids = [5]
    dev = Nvml(FakePynvml(gpu, fail={"nvmlDeviceGetGraphicsRunningProcesses": 3})).open(0).value
    assert dev.process_ids().value == [5]
    both = Nvml(FakePynvml(gpu, fail={"nvmlDeviceGetGraphicsRunningProcesses": 3,
                                      "nvmlDeviceGetComputeRunningProcesses": 4})).open(0).value
    r = both.process_ids()
    assert not r.ok and "no permission" in str(r.reason) and "not supported" in str(r.reason)


def test_other_processes_with_and_without_pid_namespaces() -> None:
    assert other_processes([100, 200], own_pid=100) == [200]
    assert other_processes([100], own_pid=100) == []
    # In a container NVML shows host pids: one unknown pid is us, two mean someone else is there.
    assert other_processes([31337], own_pid=100) == []
    assert other_processes([31337, 31338], own_pid=100) == [31337, 31338]
    assert other_processes([], own_pid=100) == []


def test_only_gpu_settings_sets_clocks_or_power_limits_and_only_behind_the_flag() -> None:
    """No module but layerbench/measure/gpu_settings.py names an NVML setter, and that module's
    ``GpuSettings`` refuses to exist without --allow-gpu-settings."""
    import re
    from pathlib import Path

    import layerbench
    from layerbench.measure.gpu_settings import GpuSettings, GpuSettingsError

    root = Path(layerbench.__file__).parent
    setters = re.compile(r"nvml\w*(Set|Reset|Clear)\w*")
    offenders = {str(p.relative_to(root)): setters.findall(p.read_text())
                 for p in root.rglob("*.py") if setters.search(p.read_text())}
    assert set(offenders) <= {"measure/gpu_settings.py"}
    module = FakePynvml(FakeGPU(FakeClock()))
    with pytest.raises(GpuSettingsError, match="--allow-gpu-settings"):
        GpuSettings("unused", "cpu", allow=False, module=module)
    assert not any(setters.search(name) for name in module.calls)


def test_a_full_measurement_only_queries(gpu: FakeGPU) -> None:
    import torch

    from fake_nvml import FakeLoad
    from layerbench.measure.energy import EnergyConfig, EnergyMeter

    module = FakePynvml(gpu)
    meter = EnergyMeter(torch.device("cuda", 0), EnergyConfig(cooldown="auto", cooldown_max_s=3.0, poll_s=0.01),
                        nvml_module=module, nvml_device=0, clock=gpu.clock.now, sleep=gpu.clock.sleep,
                        load=lambda k, t: FakeLoad(gpu, "k", t, 300.0))
    meter.measure({"k": lambda: None}, {"k": 1e-3})
    assert module.calls and all(name.startswith(("nvmlInit", "nvmlDeviceGet", "nvmlSystemGet"))
                                for name in module.calls)
