"""GPU settings as sweep axes, end to end against the fake NVML (no GPU, nothing real is changed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_nvml import FakeClock, FakeGPU, FakePynvml
from layerbench.cli import main
from layerbench.measure import gpu_settings
from layerbench.measure.gpu_settings import GpuSettings, GpuSettingsError, restore_leftovers
from layerbench.results import rundir as results
from layerbench.sweep import parse_sweep

DRIVER = Path(__file__).parent / "settings_driver.py"
SWEEP = """
title = "settings"
experiment = "settings"
layer = "relu"
implementations = ["torch"]
[params]
batch = 1
channels = 2
size = 4
[axes]
sm_clock_mhz = [1500, 990]
power_limit_w = [300]
[timing]
fixed_samples = 3
warmup = 1
[energy]
enabled = false
"""


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(gpu_settings.STATE_ENV, str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakePynvml:
    module = FakePynvml(FakeGPU(FakeClock()), settings_file=tmp_path / "gpu.json")
    monkeypatch.setattr(gpu_settings, "NVML_MODULE", module)
    return module


def _sweep(tmp_path: Path, text: str = SWEEP) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return path


def _driver(args: list[str], tmp_path: Path, **env: str) -> subprocess.Popen:
    e = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    e.update(TRITON_INTERPRET="1", FAKE_NVML_SETTINGS=str(tmp_path / "gpu.json"),
             PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), e.get("PYTHONPATH", "")]), **env)
    return subprocess.Popen([sys.executable, str(DRIVER), *args], env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_settings_axes_parse_into_points_and_hashes() -> None:
    s = parse_sweep(SWEEP)
    assert s.settings_axes == ["sm_clock_mhz", "power_limit_w"]
    assert [p.settings for p in s.points] == [{"sm_clock_mhz": 1500, "power_limit_w": 300},
                                             {"sm_clock_mhz": 990, "power_limit_w": 300}]
    assert "sm_clock_mhz" not in s.points[0].params
    from layerbench.results.identity import config_hash
    assert len({config_hash(p, "torch", s.measure, "cuda") for p in s.points}) == 2
    with pytest.raises(Exception, match=r"axes.sm_clock_mhz\[0\].*whole number of MHz"):
        parse_sweep(SWEEP.replace("[1500, 990]", "[1500.5]"))


def test_run_without_the_flag_is_refused_before_anything_runs(tmp_path: Path, fake: FakePynvml,
                                                              capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main(["run", str(_sweep(tmp_path)), "--device", "cpu", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--allow-gpu-settings" in err and "shared" in err
    assert not out.exists() and fake.settings()["log"] == []


def test_plan_checks_values_against_the_card(tmp_path: Path, fake: FakePynvml,
                                             capsys: pytest.CaptureFixture) -> None:
    assert main(["plan", str(_sweep(tmp_path)), "--device", "cpu"]) == 0
    assert "every value is supported" in capsys.readouterr().out
    bad = _sweep(tmp_path, SWEEP.replace("[1500, 990]", "[1500, 1234]").replace("[300]", "[900]"))
    assert main(["plan", str(bad), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "1234 MHz is not a supported clock" in err and "990, 1200, 1500, 1755, 1980" in err
    assert "900 W is outside the card's power-limit range 200..700 W" in err


def test_plan_without_nvml_says_it_cannot_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    module = FakePynvml(FakeGPU(FakeClock()), fail={"nvmlInit": 9})
    monkeypatch.setattr(gpu_settings, "NVML_MODULE", module)
    assert main(["plan", str(_sweep(tmp_path)), "--device", "cpu"]) == 0
    assert "cannot check the GPU settings on this machine" in capsys.readouterr().out


def test_missing_permission_names_the_call(tmp_path: Path) -> None:
    module = FakePynvml(FakeGPU(FakeClock()), fail={"nvmlDeviceSetGpuLockedClocks": 4})
    s = GpuSettings(tmp_path, "cpu", allow=True, module=module)
    with pytest.raises(GpuSettingsError, match="nvmlDeviceSetGpuLockedClocks: no permission"):
        s.apply({"sm_clock_mhz": 1500})
    assert (tmp_path / gpu_settings.SAVED_FILE).exists()  # saved before the first change
    s.close()
    assert not (tmp_path / gpu_settings.SAVED_FILE).exists()
    with pytest.raises(GpuSettingsError, match="--allow-gpu-settings"):
        GpuSettings(tmp_path, "cpu", allow=False, module=module)


def test_apply_record_restore_on_normal_end(tmp_path: Path, fake: FakePynvml) -> None:
    out = tmp_path / "run"
    fake._update("user", power_limit_mw=650_000)
    assert main(["run", str(_sweep(tmp_path)), "--device", "cpu", "--out", str(out), "--no-progress",
                 "--allow-gpu-settings"]) == 0
    df = results.load_results(out)
    assert sorted(df["setting_sm_clock_mhz"]) == [990, 1500]
    assert set(df["setting_power_limit_w"]) == {300}
    assert sorted(df["setting_read_sm_clock_mhz"]) == [990, 1500]  # read back while in effect
    assert set(df["setting_read_power_limit_w"]) == {300.0}
    state = fake.settings()
    # Saved first, set per group, restored after every group, and at the end.
    assert state["log"][1:] == ["sm_lock=1500", "power=300000", "sm_reset", "power=650000",
                                "sm_lock=990", "power=300000", "sm_reset", "power=650000",
                                "sm_reset", "power=650000"]
    assert state["sm_lock"] is None and state["power_limit_mw"] == 650_000
    assert not (out / gpu_settings.SAVED_FILE).exists()


def test_restore_on_sigterm(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _driver(["run", str(_sweep(tmp_path)), "--device", "cpu", "--out", str(out), "--no-progress",
                    "--allow-gpu-settings"], tmp_path, FAKE_SLOW_S="60")
    state_file = tmp_path / "gpu.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the first group's settings are in effect
        if state_file.exists() and json.loads(state_file.read_text())["sm_lock"] == 1500:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"the settings were never applied: {proc.communicate()[1][-2000:]}")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    state = json.loads(state_file.read_text())
    assert state["sm_lock"] is None and state["power_limit_mw"] == 700_000
    assert state["log"][-2:] == ["sm_reset", "power=700000"]
    assert not (out / gpu_settings.SAVED_FILE).exists()


def test_a_crash_leaves_the_file_and_the_next_command_restores(tmp_path: Path, fake: FakePynvml,
                                                               state_dir: Path) -> None:
    run_dir = tmp_path / "crashed"
    s = GpuSettings(run_dir, "cpu", allow=True)
    s.apply({"sm_clock_mhz": 990, "memory_clock_mhz": 1593, "power_limit_w": 250})
    assert fake.settings()["sm_lock"] == 990 and fake.settings()["power_limit_mw"] == 250_000
    # The process "dies" here: nothing restores. Make its pointer name a dead process.
    pointer = next((state_dir / "gpu-settings-pending").glob("*.json"))
    info = json.loads(pointer.read_text())
    pointer.write_text(json.dumps(info | {"pid": 2 ** 22 + 12345}))
    saved = json.loads((run_dir / gpu_settings.SAVED_FILE).read_text())
    assert saved["power_limit_mw"] == 700_000 and set(saved["touched"]) == {"sm_clock_mhz", "memory_clock_mhz",
                                                                           "power_limit_w"}
    # The next command, in another process, restores before doing anything else.
    proc = _driver(["list", "layers"], tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "restored the GPU settings a crashed run left changed" in err
    state = fake.settings()
    assert state["sm_lock"] is None and state["mem_lock"] is None and state["power_limit_mw"] == 700_000
    assert not (run_dir / gpu_settings.SAVED_FILE).exists() and not pointer.exists()


def test_leftovers_of_a_live_run_are_left_alone(tmp_path: Path, fake: FakePynvml) -> None:
    s = GpuSettings(tmp_path / "live", "cpu", allow=True)
    s.apply({"power_limit_w": 250})
    import layerbench.measure.gpu_settings as g
    pointer = next(g.pending_dir().glob("*.json"))
    pointer.write_text(json.dumps(json.loads(pointer.read_text()) | {"pid": os.getppid()}))
    assert restore_leftovers(lambda m: None) == []
    assert fake.settings()["power_limit_mw"] == 250_000
    s.close()
    assert fake.settings()["power_limit_mw"] == 700_000


def test_run_with_the_flag_but_no_nvml_is_refused_before_anything_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(gpu_settings, "NVML_MODULE", FakePynvml(FakeGPU(FakeClock()), fail={"nvmlInit": 12}))
    out = tmp_path / "run"
    assert main(["run", str(_sweep(tmp_path)), "--device", "cpu", "--out", str(out), "--no-progress",
                 "--allow-gpu-settings"]) == 2
    assert "cannot set the GPU settings on this machine" in capsys.readouterr().err
    assert not out.exists()
