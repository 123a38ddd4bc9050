"""The runner on the CPU with a fake measurement core: statuses, energy gating, crash-safe resume."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import runner_fakes
import torch
from rich.console import Console

from layerbench import sweep
from layerbench.measure.energy import EnergyMeter
from layerbench.results import rundir as results
from layerbench.results.rundir import RunDir
from layerbench.run.sweep_runner import RunOptions, WorkerHandoff, run_sweep

SWEEP = """
title = "runner test"
experiment = "runner_test"
layer = "relu"
implementations = {impls}
dtypes = ["fp32", "fp16"]
[params]
batch = 2
channels = 3
[axes]
size = [4, 0, 6]
[timing]
fixed_samples = 3
[energy]
windows = 2
"""


def _sweep(tmp_path: Path, impls: list[str]) -> sweep.Sweep:
    path = tmp_path / "s.toml"
    path.write_text(SWEEP.format(impls=json.dumps(impls)))
    return sweep.load_sweep(path)


def _opts(tmp_path: Path, resume: bool = False) -> RunOptions:
    return RunOptions(device="cpu", out=tmp_path / "run", resume=resume, in_process=True,
                      progress=False, argv=["test"])


def test_statuses_and_energy_only_for_correct(tmp_path: Path, fakes: None) -> None:
    impls = ["fake_ok", "fake_ref", "fake_wrong", "fake_unsupported", "fake_error", "no_such_impl"]
    s = _sweep(tmp_path, impls)
    run_dir = run_sweep(s, _opts(tmp_path))
    recs = results.read_records(run_dir / results.RESULTS_FILE)
    assert len(recs) == 3 * 2 * len(impls)  # sizes x dtypes x impls, one row each
    by = {(r["axis_size"], r["dtype"], r["impl"]): r for r in recs}
    valid = by[(4, "fp32", "fake_ok")]
    assert valid["status"] == "ok" and valid["check_rel_norm"] == 0.0
    assert valid["energy_method"] == "fake" and valid["energy_telemetry_sm_clock_mhz"] == 1980
    assert valid["tflops"] > 0 and valid["gbps"] > 0 and valid["j_per_gflop"] > 0
    assert valid["first_call_s"] >= 0 and valid["time_median_s"] > 0
    assert by[(4, "fp32", "fake_wrong")]["status"] == "incorrect"
    assert "differ" in by[(4, "fp32", "fake_wrong")]["message"]
    assert "energy_j_per_launch" not in by[(4, "fp32", "fake_wrong")]
    # The kernel's own details are recorded, for an incorrect result too (they explain it).
    assert by[(4, "fp32", "fake_wrong")]["detail_algorithm"] == "COPY"
    assert "detail_algorithm" not in valid
    assert by[(4, "fp32", "fake_unsupported")]["status"] == "unsupported"
    assert by[(4, "fp32", "fake_error")]["status"] == "error"
    assert "compile failed" in by[(4, "fp32", "fake_error")]["message"]
    assert by[(4, "fp32", "no_such_impl")]["status"] == "unavailable"
    invalid = by[(0, "fp32", "fake_ok")]
    assert invalid["status"] == "invalid" and "ReLU.height must be in >= 1" in invalid["message"]
    # Energy saw only the correct implementations, measured together (interleaved) per group.
    assert runner_fakes.EnergyMeter.measured and all(
        sorted(m) == ["fake_ok", "fake_ref"] for m in runner_fakes.EnergyMeter.measured)
    assert (run_dir / results.PARQUET_FILE).exists() and (run_dir / results.CSV_FILE).exists()
    df = results.load_results(run_dir)
    assert set(df["env_gpu_name"]) == {"fake GPU"}
    assert set(pd.read_parquet(run_dir / results.PARQUET_FILE)["detail_algorithm"].dropna()) == {"COPY"}
    assert len(set(df["config_hash"])) == len(df)


def test_interrupted_run_resumes_without_loss_or_duplicates(tmp_path: Path, fakes: None) -> None:
    impls = ["fake_ok", "fake_interrupt", "fake_wrong"]
    s = _sweep(tmp_path, impls)
    runner_fakes.CALLS["interrupt_after"] = 3  # Ctrl-C in the 4th build of fake_interrupt
    said = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        run_sweep(s, _opts(tmp_path), console=Console(file=said, width=200))
    assert re.search(r"stopped at .* fake_interrupt \(build, \d+ s in\)", said.getvalue()), said.getvalue()
    log = tmp_path / "run" / results.RESULTS_FILE
    before = results.read_records(log)
    assert 0 < len(before) < 3 * 2 * len(impls)
    runner_fakes.CALLS["interrupt_after"] = None
    run_sweep(_sweep(tmp_path, impls), _opts(tmp_path, resume=True))
    after = results.read_records(log)
    assert after[: len(before)] == before  # nothing rewritten
    hashes = Counter(r["config_hash"] for r in after)
    assert len(after) == 3 * 2 * len(impls) and max(hashes.values()) == 1
    run = RunDir(tmp_path / "run").read_meta()
    assert len(run["sessions"]) == 2
    assert {r["session"] for r in after} == {0, 1}
    # A third run has nothing left to do.
    run_sweep(_sweep(tmp_path, impls), _opts(tmp_path, resume=True))
    assert len(results.read_records(log)) == len(after)


def test_existing_run_needs_resume(tmp_path: Path, fakes: None) -> None:
    s = _sweep(tmp_path, ["fake_ok"])
    run_sweep(s, _opts(tmp_path))
    with pytest.raises(ValueError, match="--resume"):
        run_sweep(_sweep(tmp_path, ["fake_ok"]), _opts(tmp_path))


def test_resume_without_run_json_says_what_is_missing(tmp_path: Path, fakes: None) -> None:
    """Records copied without their run.json cannot be checked to be the same measurement: the
    refusal names the missing file instead of asking for the --resume it was given."""
    s = _sweep(tmp_path, ["fake_ok"])
    run_sweep(s, _opts(tmp_path))
    (tmp_path / "run" / results.RUN_FILE).unlink()
    with pytest.raises(ValueError, match=f"holds results but no {results.RUN_FILE}"):
        run_sweep(_sweep(tmp_path, ["fake_ok"]), _opts(tmp_path, resume=True))


KILL_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
import pytest, runner_fakes
from layerbench import sweep
from layerbench.run.sweep_runner import RunOptions, run_sweep
mp = pytest.MonkeyPatch()
runner_fakes.install(mp)
runner_fakes.register_fakes()
orig = runner_fakes.time_kernel
def slow(kernel, device, cfg):
    time.sleep(0.15)
    return orig(kernel, device, cfg)
runner_fakes.time_kernel = slow
from layerbench.run import group
group.time_kernel = slow
run_sweep(sweep.load_sweep({sweep!r}), RunOptions(device="cpu", out={out!r}, resume={resume}, in_process=True,
                                             progress=False, argv=["t"]))
"""


def test_killed_process_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    impls = ["fake_ok", "fake_ref"]
    path = tmp_path / "s.toml"
    path.write_text(SWEEP.format(impls=json.dumps(impls)))
    out = tmp_path / "run"
    tests = str(Path(__file__).parent)
    env = os.environ | {"TRITON_INTERPRET": "1"}

    def script(resume: bool) -> list[str]:
        code = KILL_SCRIPT.format(tests=tests, sweep=str(path), out=str(out), resume=resume)
        return [sys.executable, "-c", textwrap.dedent(code)]

    proc = subprocess.Popen(script(False), env=env, stderr=subprocess.PIPE)
    log = out / results.RESULTS_FILE
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if log.exists() and len(results.read_records(log)) >= 3:
            break
        if proc.poll() is not None:
            pytest.fail(f"worker script ended early: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no cleanup, no export
    proc.wait()
    before = results.read_records(log)
    assert 3 <= len(before) < 3 * 2 * len(impls)
    done = subprocess.run(script(True), env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    after = results.read_records(log)
    assert after[: len(before)] == before
    assert len(after) == 3 * 2 * len(impls)
    assert max(Counter(r["config_hash"] for r in after).values()) == 1


def test_torn_last_line_is_repaired_before_appending(tmp_path: Path, fakes: None) -> None:
    s = _sweep(tmp_path, ["fake_ok"])
    run_dir = run_sweep(s, _opts(tmp_path))
    log = run_dir / results.RESULTS_FILE
    full = results.read_records(log)
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:-1]) + lines[-1][:20])  # a kill in the middle of a write
    assert len(results.read_records(log)) == len(full) - 1
    run_sweep(_sweep(tmp_path, ["fake_ok"]), _opts(tmp_path, resume=True))
    after = results.read_records(log)
    assert len(after) == len(full)
    assert [r["config_hash"] for r in after] == [r["config_hash"] for r in full]


def test_process_worker_survives_a_crash(tmp_path: Path) -> None:
    """A segfault-like exit in the worker: that implementation is recorded, the rest runs."""
    pytest.importorskip("layerbench.measure.timing")
    pytest.importorskip("layerbench.measure.environment")
    path = tmp_path / "s.toml"
    path.write_text(textwrap.dedent("""
        layer = "relu"
        implementations = ["torch", "crashing_impl:build", "torch_again:build"]
        [params]
        batch = 1
        channels = 2
        size = 4
        [timing]
        fixed_samples = 2
        warmup = 0
        [energy]
        enabled = false
    """))
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "crashing_impl.py").write_text("import os\ndef build(*a):\n    os._exit(7)\n")
    (mods / "torch_again.py").write_text(
        "import torch\ndef build(spec, dtype, layout, t, out):\n"
        "    return lambda: torch.clamp_min(t['x'], 0, out=out)\n")
    sys.path.insert(0, str(mods))
    try:
        s = sweep.load_sweep(path)
        opts = RunOptions(device="cpu", out=tmp_path / "run", in_process=False, progress=False,
                          point_timeout_s=300, argv=["t"])
        run_dir = run_sweep(s, opts)
    finally:
        sys.path.remove(str(mods))
    recs = {r["impl"]: r for r in results.read_records(run_dir / results.RESULTS_FILE)}
    assert recs["crashing_impl:build"]["status"] == "error"
    assert "exit code 7" in recs["crashing_impl:build"]["message"]
    assert "during build" in recs["crashing_impl:build"]["message"]
    assert recs["torch"]["status"] == "ok"
    assert recs["torch_again:build"]["status"] == "ok"
    assert RunDir(run_dir).read_meta()["sessions"][0]["environment"]


def test_the_next_file_of_a_command_goes_on_in_the_same_worker(tmp_path: Path) -> None:
    """A handoff passes the worker on: one process start for the command, each run announced and
    recorded as if it had its own worker; a worker that died between the runs is replaced."""
    handoff = WorkerHandoff()
    pids = []
    try:
        for name in ("one", "two", "three"):
            path = tmp_path / f"{name}.toml"
            path.write_text(f'experiment = "{name}"\nlayer = "relu"\nimplementations = ["torch"]\n'
                            "[params]\nbatch = 1\nchannels = 2\nsize = 4\n[timing]\nfixed_samples = 2\n"
                            "warmup = 0\n[energy]\nenabled = false\n")
            opts = RunOptions(device="cpu", out=tmp_path / name, in_process=False, progress=False,
                              handoff=handoff, argv=["t"])
            run_dir = run_sweep(sweep.load_sweep(path), opts)
            assert [r["status"] for r in results.read_records(run_dir / results.RESULTS_FILE)] == ["ok"]
            assert RunDir(run_dir).read_meta()["sessions"][0]["environment"]
            assert handoff.executor is not None
            pids.append(handoff.executor._proc.pid)
            if name == "two":
                handoff.executor._proc.kill()
                handoff.executor._proc.join(10)
    finally:
        handoff.close()
    assert pids[0] == pids[1] != pids[2]
    assert handoff.executor is None


# ------------------------------------------------------------ one run per directory (20.1)

SLOW_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
import pytest, runner_fakes
from layerbench import sweep
from layerbench.run import group
from layerbench.run.sweep_runner import RunOptions, run_sweep
runner_fakes.install(pytest.MonkeyPatch())
runner_fakes.register_fakes()
orig = runner_fakes.time_kernel
def slow(kernel, device, cfg):
    time.sleep(0.5)
    return orig(kernel, device, cfg)
group.time_kernel = slow
run_sweep(sweep.load_sweep({sweep!r}), RunOptions(device="cpu", out={out!r}, resume=True, in_process=True,
                                             progress=False, argv=["t"]))
"""


def test_second_run_on_the_same_directory_is_refused(tmp_path: Path, fakes: None) -> None:
    path = tmp_path / "s.toml"
    path.write_text(SWEEP.format(impls=json.dumps(["fake_ok", "fake_ref"])))
    out = tmp_path / "run"
    code = SLOW_SCRIPT.format(tests=str(Path(__file__).parent), sweep=str(path), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", code], env=os.environ | {"TRITON_INTERPRET": "1"},
                            stderr=subprocess.PIPE)
    try:
        log = out / results.RESULTS_FILE
        deadline = time.monotonic() + 120
        while not (log.exists() and results.read_records(log)):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"first run did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        with pytest.raises(results.RunDirLocked,
                           match=rf"{out} is in use by another layerbench run \(pid {proc.pid}\)"):
            run_sweep(sweep.load_sweep(path), _opts(tmp_path, resume=True))
    finally:
        proc.kill()  # SIGKILL: its lock file stays behind, its flock does not
        proc.wait()
    run_sweep(sweep.load_sweep(path), _opts(tmp_path, resume=True))
    recs = results.read_records(out / results.RESULTS_FILE)
    assert len(recs) == 3 * 2 * 2 and max(Counter(r["config_hash"] for r in recs).values()) == 1


# ------------------------------------------------- resume with other options (20.2)


def test_resume_with_other_measurement_options_is_refused(tmp_path: Path, fakes: None) -> None:
    run_sweep(_sweep(tmp_path, ["fake_ok"]), _opts(tmp_path))
    other = tmp_path / "other.toml"
    other.write_text(SWEEP.format(impls='["fake_ok"]').replace("[timing]\nfixed_samples = 3\n", "")
                     .replace("windows = 2", "windows = 3"))
    with pytest.raises(ValueError) as err:
        run_sweep(sweep.load_sweep(other), _opts(tmp_path, resume=True))
    message = str(err.value)
    assert "was run with other measurement options" in message
    assert "timing.fixed_samples: 3 in this run, absent now" in message
    assert "energy.windows: 2 in this run, 3 now" in message
    s = _sweep(tmp_path, ["fake_ok"])
    s.disable_energy()
    with pytest.raises(ValueError, match="energy.enabled: True in this run, False now"):
        run_sweep(s, _opts(tmp_path, resume=True))
    # The same options resume.
    run_sweep(_sweep(tmp_path, ["fake_ok"]), _opts(tmp_path, resume=True))
    assert len(RunDir(tmp_path / "run").read_meta()["sessions"]) == 2


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=400), buf


def test_resume_says_it_repaired_a_torn_line(tmp_path: Path, fakes: None) -> None:
    run_dir = run_sweep(_sweep(tmp_path, ["fake_ok"]), _opts(tmp_path))
    log = run_dir / results.RESULTS_FILE
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:-1]) + lines[-1][:20])
    console, buf = _console()
    run_sweep(_sweep(tmp_path, ["fake_ok"]), _opts(tmp_path, resume=True), console)
    out = buf.getvalue()
    assert out.count("incomplete") == 1
    assert f"line {len(lines)} is incomplete (a run stopped in the middle of writing it); removed it" in out


# ------------------------------------------------------- energy unavailable (20.11)


def test_energy_unavailable_is_said_once_at_the_start(tmp_path: Path, fakes: None) -> None:
    runner_fakes.EnergyMeter.unavailable = "NVML unavailable: no driver"
    console, buf = _console()
    run_dir = run_sweep(_sweep(tmp_path, ["fake_ok", "fake_ref"]), _opts(tmp_path), console)
    out = buf.getvalue()
    assert out.count("energy will not be measured") == 1
    assert "note: energy will not be measured: NVML unavailable: no driver" in out.splitlines()[0]
    recs = results.read_records(run_dir / results.RESULTS_FILE)
    assert {r.get("energy_method") for r in recs if r["status"] == "ok"} == {"unavailable"}
    # Not asked for: nothing to say.
    s = _sweep(tmp_path, ["fake_ok"])
    s.disable_energy()
    console, buf = _console()
    run_sweep(s, RunOptions(device="cpu", out=tmp_path / "noenergy", in_process=True, progress=False,
                            argv=["t"]), console)
    assert "energy" not in buf.getvalue()


# --------------------------------------------------------------- point timeout (20.12)


def test_in_process_executor_says_it_cannot_enforce_a_timeout(tmp_path: Path, fakes: None) -> None:
    console, buf = _console()
    opts = _opts(tmp_path)
    opts.point_timeout_s = 5
    run_sweep(_sweep(tmp_path, ["fake_ok"]), opts, console)
    assert buf.getvalue().count("--point-timeout 5 s cannot be enforced") == 1
    console, buf = _console()
    run_sweep(_sweep(tmp_path, ["fake_ok"]), RunOptions(device="cpu", out=tmp_path / "b", in_process=True,
                                                        progress=False, argv=["t"]), console)
    assert "point-timeout" not in buf.getvalue()


SLOW_SWEEP = """
layer = "relu"
implementations = ["{impl}"]
[params]
batch = 1
channels = 2
size = 4
[timing]
fixed_samples = 2
warmup = 0
[energy]
enabled = false
"""


def test_process_timeout_names_the_phase_and_its_time(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(SLOW_SWEEP.format(impl="sleepy_impl:build"))
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "sleepy_impl.py").write_text("import time\ndef build(*a):\n    time.sleep(600)\n")
    sys.path.insert(0, str(mods))
    try:
        opts = RunOptions(device="cpu", out=tmp_path / "run", in_process=False, progress=False,
                          point_timeout_s=20, argv=["t"])
        run_dir = run_sweep(sweep.load_sweep(path), opts)
    finally:
        sys.path.remove(str(mods))
    (rec,) = results.read_records(run_dir / results.RESULTS_FILE)
    assert rec["status"] == "error"
    assert rec["message"].startswith("timed out in the build phase of sleepy_impl:build, which had run ")
    assert "the group had 20 s (--point-timeout)" in rec["message"], rec["message"]


ORPHAN_SCRIPT = """
import sys
sys.path.insert(0, {mods!r})
from layerbench import sweep
from layerbench.run.sweep_runner import RunOptions, run_sweep
run_sweep(sweep.load_sweep({sweep!r}), RunOptions(device="cpu", out={out!r}, in_process=False,
                                                progress=False, argv=["t"]))
"""


def test_worker_leaves_quietly_when_its_parent_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(SLOW_SWEEP.format(impl="pausing_impl:build"))
    mods = tmp_path / "mods"
    mods.mkdir()
    started = tmp_path / "started"
    (mods / "pausing_impl.py").write_text(
        "import pathlib, time, torch\n"
        "def build(spec, dtype, layout, t, out):\n"
        f"    pathlib.Path({str(started)!r}).write_text('x')\n"
        "    time.sleep(3)\n"
        "    return lambda: torch.clamp_min(t['x'], 0, out=out)\n")
    code = ORPHAN_SCRIPT.format(mods=str(mods), sweep=str(path), out=str(tmp_path / "run"))
    proc = subprocess.Popen([sys.executable, "-c", code], env=os.environ | {"TRITON_INTERPRET": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not started.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the worker did not start: {proc.communicate()[1].decode()[-2000:]}")
        time.sleep(0.05)
    proc.kill()  # the parent dies; the worker, in its build, writes to a closed pipe afterwards
    _, err = proc.communicate(timeout=120)  # EOF once the worker, which shares stderr, has ended
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()[-3000:]


def test_worker_says_once_that_energy_is_unavailable(tmp_path: Path) -> None:
    """The process executor: the first worker reports the meter, the runner says it once."""
    reason = EnergyMeter(torch.device("cpu")).reason
    if reason is None:
        pytest.skip("RAPL is readable here: energy is measured")
    path = tmp_path / "s.toml"
    path.write_text(textwrap.dedent("""
        layer = "relu"
        implementations = ["torch"]
        [params]
        batch = 1
        channels = 2
        [axes]
        size = [4, 5]
        [timing]
        fixed_samples = 2
        warmup = 0
        [energy]
        window_s = 1.0
        windows = 1
        cooldown = "none"
    """))
    console, buf = _console()
    opts = RunOptions(device="cpu", out=tmp_path / "run", in_process=False, progress=False,
                      point_timeout_s=300, argv=["t"])
    run_sweep(sweep.load_sweep(path), opts, console)
    assert buf.getvalue().count("note: energy will not be measured: RAPL unavailable") == 1, buf.getvalue()
