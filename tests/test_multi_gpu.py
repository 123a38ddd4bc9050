"""--gpus: the per-GPU worker pool on the CPU, with fake workers standing in for the GPUs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from layerbench import sweep
from layerbench.results import rundir as results
from layerbench.results.rundir import RunDir
from layerbench.run import multi_gpu
from layerbench.run.executors import InlineExecutor, Outcome, child_environment
from layerbench.run.data_parallel import visible_gpus
from layerbench.run.multi_gpu import GpuPool, GpuSlot, parse_gpus
from layerbench.run.sweep_runner import RunOptions, run_sweep

SWEEP = """
experiment = "pool_test"
layer = "relu"
implementations = ["fake_ok", "fake_ref"]
dtypes = ["fp32"]
[params]
batch = 2
channels = 3
[axes]
size = [4, 5, 6, 7, 8, 9]
[timing]
fixed_samples = 3
[energy]
windows = 2
"""


def _sweep(tmp_path: Path) -> sweep.Sweep:
    path = tmp_path / "s.toml"
    path.write_text(SWEEP)
    return sweep.load_sweep(path)


class SlowInline(InlineExecutor):
    """A fake GPU worker: evaluates in this process (a thread per GPU), slowly enough to overlap."""

    def run(self, point: Any, impls: list[str], handle: Any) -> Outcome:
        time.sleep(0.02)
        return super().run(point, impls, handle)


class Crashing:
    """A GPU whose worker dies on every group (a failing board)."""

    def __init__(self) -> None:
        self.runs = 0

    def run(self, point: Any, impls: list[str], handle: Any) -> Outcome:
        self.runs += 1
        handle("phase", {"impl": impls[0], "phase": "time"})
        return Outcome("crashed", "worker process died (killed by SIGSEGV)")

    def close(self, kill: bool = False) -> None:
        pass


def _pool(n: int, crash: set[int] = frozenset(), max_failures: int = 3):  # noqa: ANN202
    def factory(device: str, measure: Any, experiment: str, session: int, timeout: Any, say: Any) -> GpuPool:
        def make(slot: GpuSlot) -> Any:
            if slot.index in crash:
                return Crashing()
            return SlowInline(device, measure, experiment, session)
        return GpuPool([GpuSlot(i, str(i)) for i in range(n)], make, say, max_failures, host="hostA")
    return factory


def _opts(tmp_path: Path, n: int, out: str = "run", resume: bool = False, **kw: Any) -> RunOptions:
    return RunOptions(device="cpu", out=tmp_path / out, resume=resume, progress=False,
                      scheduler=_pool(n, **kw), argv=["test"])


def _records(run_dir: Path) -> list[dict[str, Any]]:
    return results.read_records(run_dir / results.RESULTS_FILE)


# ------------------------------------------------------------------------ parsing --gpus


def test_parse_gpus() -> None:
    present = ["0", "1", "2", "3", "4", "5"]
    assert parse_gpus("all", present) == [0, 1, 2, 3, 4, 5]
    assert parse_gpus("0,2,5", present) == [0, 2, 5]
    with pytest.raises(ValueError, match="GPU 7 is not present"):
        parse_gpus("7", present)
    with pytest.raises(ValueError, match="named twice"):
        parse_gpus("1,1", present)
    with pytest.raises(ValueError, match="not a GPU index"):
        parse_gpus("x", present)
    with pytest.raises(ValueError, match="no GPU is visible"):
        parse_gpus("all", [])


def test_visible_gpus_follow_cuda_visible_devices() -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "3,GPU-abc"}) == ["3", "GPU-abc"]
    assert visible_gpus({}, count=lambda: 3) == ["0", "1", "2"]


def test_pinned_child_sees_its_gpu_before_anything_imports() -> None:
    """The environment a spawned worker starts with holds its GPU; ours is restored after."""
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    with child_environment({"CUDA_VISIBLE_DEVICES": "5"}):
        out = subprocess.run([sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"],
                             capture_output=True, text=True, check=True).stdout
    assert out.strip() == "5"
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == before


def test_spawned_child_never_sees_the_terminals_ctrl_c() -> None:
    """A child spawned in ``child_environment`` starts with Ctrl-C blocked (the parent stops it),
    even before its first import; ours is unblocked after."""
    with child_environment(None):
        out = subprocess.run([sys.executable, "-c", "import signal; print(signal.SIGINT in "
                              "signal.pthread_sigmask(signal.SIG_BLOCK, []))"],
                             capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


# ------------------------------------------------------------------------ the pool


def test_three_gpus_give_the_records_of_one(tmp_path: Path, fakes: None) -> None:
    one = _records(run_sweep(_sweep(tmp_path), _opts(tmp_path, 1, "one")))
    three = _records(run_sweep(_sweep(tmp_path), _opts(tmp_path, 3, "three")))
    assert sorted(r["config_hash"] for r in one) == sorted(r["config_hash"] for r in three)
    assert len(three) == 12 and all(r["status"] == "ok" for r in three)
    assert {r["gpu_index"] for r in one} == {0}
    assert {r["gpu_index"] for r in three} <= {0, 1, 2} and len({r["gpu_index"] for r in three}) > 1
    assert all(r["host"] == "hostA" and r["gpu_index"] in r["busy_gpus"] for r in three)
    assert set(one[0]) == set(three[0])  # the same columns
    # each GPU's worker recorded its environment
    session = RunDir(tmp_path / "three").read_meta()["sessions"][0]
    assert set(session["worker_environments"]) == {"gpu0", "gpu1", "gpu2"}


def test_a_crashing_gpu_costs_its_points_not_the_run(tmp_path: Path, fakes: None) -> None:
    messages: list[str] = []
    opts = _opts(tmp_path, 3, crash={1}, max_failures=2)
    import io

    from rich.console import Console
    buf = io.StringIO()
    run_dir = run_sweep(_sweep(tmp_path), opts, Console(file=buf, width=300))
    recs = _records(run_dir)
    assert len(recs) == 12 and len({r["config_hash"] for r in recs}) == 12
    errors = [r for r in recs if r["status"] == "error"]
    assert errors and all(r["gpu_index"] == 1 and "SIGSEGV" in r["message"] for r in errors)
    # at most max_failures groups were lost before GPU 1 was retired; the others did the rest
    assert len({r["point_index"] for r in errors}) <= 2
    assert sum(r["status"] == "ok" for r in recs) >= 8
    assert "GPU 1" in buf.getvalue() and "retired" in buf.getvalue()
    del messages


def test_every_gpu_retired_records_the_rest(tmp_path: Path, fakes: None) -> None:
    recs = _records(run_sweep(_sweep(tmp_path), _opts(tmp_path, 2, crash={0, 1}, max_failures=1)))
    assert len(recs) == 12 and all(r["status"] == "error" for r in recs)
    assert any("every GPU of the run was retired" in r["message"] for r in recs)


def test_resume_after_a_partial_multi_gpu_run(tmp_path: Path, fakes: None) -> None:
    """A run stopped part way on 3 GPUs resumes on 2 without losing or repeating a record."""
    state = {"groups": 0}
    real = SlowInline.run

    def stopping(self: Any, point: Any, impls: list[str], handle: Any) -> Outcome:
        with lock:
            state["groups"] += 1
            if state["groups"] > 3:
                raise KeyboardInterrupt
        return real(self, point, impls, handle)
    lock = threading.Lock()
    SlowInline.run = stopping  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            run_sweep(_sweep(tmp_path), _opts(tmp_path, 3))
    finally:
        SlowInline.run = real  # type: ignore[method-assign]
    first = _records(tmp_path / "run")
    assert 0 < len(first) < 12
    run_sweep(_sweep(tmp_path), _opts(tmp_path, 2, resume=True))
    recs = _records(tmp_path / "run")
    assert len(recs) == 12 and len({r["config_hash"] for r in recs}) == 12
    assert {r["session"] for r in recs} == {0, 1}


def test_cli_gpus_flag_builds_a_pool_over_the_gpus_present(tmp_path: Path, fakes: None,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from layerbench import cli
    made: dict[str, Any] = {}

    def fake_pool(gpus: list[int], present: list[str], *args: Any, **kw: Any) -> GpuPool:
        made.update(gpus=gpus, present=present)
        device, measure, experiment, session = args[:4]
        return GpuPool([GpuSlot(i, present[i]) for i in gpus],
                       lambda slot: SlowInline(device, measure, experiment, session), host="h")

    monkeypatch.setattr(cli, "process_pool", fake_pool)
    monkeypatch.setattr(cli, "visible_gpus", lambda: ["0", "1", "2", "3"])
    path = tmp_path / "s.toml"
    path.write_text(SWEEP)
    code = cli.main(["run", str(path), "--device", "cpu", "--gpus", "1,3", "--out", str(tmp_path / "r"),
                     "--no-progress"])
    assert code == 0
    assert made == {"gpus": [1, 3], "present": ["0", "1", "2", "3"]}
    assert {r["gpu_index"] for r in _records(tmp_path / "r")} <= {1, 3}
    assert cli.main(["run", str(path), "--device", "cpu", "--gpus", "9", "--out", str(tmp_path / "q")]) == 2
    json.dumps(made)


def test_bench_gpus_spreads_every_set_and_measures_the_ceilings_apart(tmp_path: Path, fakes: None,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from layerbench import cli
    from layerbench.suites import bench
    made: list[list[int]] = []
    ceilings_on: list[Any] = []

    def fake_pool(gpus: list[int], present: list[str], *args: Any, **kw: Any) -> GpuPool:
        made.append(gpus)
        _, measure, experiment, session = args[:4]  # the GPUs are stood in for on the CPU
        return GpuPool([GpuSlot(i, present[i]) for i in gpus],
                       lambda slot: SlowInline("cpu", measure, experiment, session), host="h")

    def fake_ceilings(device: str, visible: Any) -> dict[str, Any]:
        ceilings_on.append(visible)
        return {"copy_gbps": 2.0, "matmul_tflops": {"fp32": 1.0}, "device_name": "test", "copy_curve": {}}

    sets = tmp_path / "sets"
    sets.mkdir()
    for name in bench.LAYERS:  # the report counts every set's planned rows
        (sets / f"{name}.toml").write_text(SWEEP.replace('"pool_test"', f'"bench_{name}"'))
    monkeypatch.setattr(bench, "BENCH_DIR", sets)
    monkeypatch.setattr(bench.ceil, "measure_apart", fake_ceilings)
    monkeypatch.setattr(cli, "process_pool", fake_pool)
    monkeypatch.setattr(cli, "visible_gpus", lambda: ["0", "1", "2", "3"])
    monkeypatch.setattr(cli.torch.cuda, "is_available", lambda: True)
    code = cli.main(["bench", "--gpus", "2,1", "--layers", "relu,pool", "--out", str(tmp_path / "b"),
                     "--no-progress"])
    assert code == 0
    assert made == [[2, 1], [2, 1]] and ceilings_on == ["2"]
    for name in ("relu", "pool"):
        recs = _records(tmp_path / "b" / f"bench_{name}")
        assert len(recs) == 12 and {r["gpu_index"] for r in recs} <= {1, 2}
    assert (tmp_path / "b" / "bench.md").exists()


def test_bench_without_gpus_runs_every_set_with_the_ceilings_measured_apart(
        tmp_path: Path, fakes: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from layerbench.suites import bench
    sets = tmp_path / "sets"
    sets.mkdir()
    for name in ("relu", "pool"):
        (sets / f"{name}.toml").write_text(SWEEP.replace('"pool_test"', f'"bench_{name}"'))
    monkeypatch.setattr(bench, "BENCH_DIR", sets)
    monkeypatch.setattr(bench.ceil, "measure_apart", lambda device, visible: {"copy_gbps": 2.0})
    df = bench.run_bench(tmp_path / "b", "cpu", ("relu", "pool"), progress=False)
    assert len(df) == 24 and set(df["experiment"]) == {"bench_relu", "bench_pool"}
    assert json.loads((tmp_path / "b" / bench.CEILINGS_FILE).read_text())["copy_gbps"] == 2.0


class Hung(Crashing):
    """A GPU whose worker hangs on every group (killed by the point timeout)."""

    def run(self, point: Any, impls: list[str], handle: Any) -> Outcome:
        self.runs += 1
        return Outcome("timeout", "timed out in the preparation; the group had 5 s (--point-timeout); worker killed")


def test_a_hung_gpu_costs_its_points(tmp_path: Path, fakes: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(__import__(__name__), "Crashing", Hung)
    recs = _records(run_sweep(_sweep(tmp_path), _opts(tmp_path, 2, crash={0}, max_failures=1)))
    errors = [r for r in recs if r["status"] == "error"]
    assert errors and all("timed out" in r["message"] and r["gpu_index"] == 0 for r in errors)
    assert sum(r["status"] == "ok" for r in recs) == 12 - len(errors) >= 10


def test_process_pool_pins_each_worker(tmp_path: Path) -> None:
    """The real pool: two spawned workers on the CPU, each started with its CUDA_VISIBLE_DEVICES."""
    path = tmp_path / "s.toml"
    path.write_text(SWEEP.replace('["fake_ok", "fake_ref"]', '["torch"]').replace("[4, 5, 6, 7, 8, 9]", "[4, 5, 6]")
                    .replace("[energy]\nwindows = 2", "[energy]\nenabled = false"))

    def factory(*a: Any) -> GpuPool:
        return multi_gpu.process_pool([0, 1], ["3", "GPU-x"], *a)
    run_dir = run_sweep(sweep.load_sweep(path), RunOptions(device="cpu", out=tmp_path / "run", progress=False,
                                                           point_timeout_s=300, scheduler=factory, argv=["t"]))
    recs = _records(run_dir)
    assert len(recs) == 3 and all(r["status"] == "ok" for r in recs)
    envs = RunDir(run_dir).read_meta()["sessions"][0]["worker_environments"]
    # what each worker process saw in its own environment
    assert {e["cuda_visible_devices"] for e in envs.values()} <= {"3", "GPU-x"} and envs
    assert all(e["worker"] == f"gpu{0 if e['cuda_visible_devices'] == '3' else 1}" for e in envs.values())


def test_ctrl_c_records_nothing_of_the_groups_in_flight(tmp_path: Path, fakes: None) -> None:
    """Ctrl-C reaches the main thread while GPUs work: no record is written for what was running
    (not even errors of killed workers), and --resume completes the run."""
    import _thread
    state = {"groups": 0}
    interrupted = threading.Event()
    real = SlowInline.run

    def on_ctrl_c(signum: int, frame: Any) -> None:
        # Python's own handler, and a sign for the worker that it ran (an ignored SIGINT would not).
        interrupted.set()
        signal.default_int_handler(signum, frame)

    def interrupting(self: Any, point: Any, impls: list[str], handle: Any) -> Outcome:
        state["groups"] += 1
        if state["groups"] == 3:
            _thread.interrupt_main()
            assert interrupted.wait(30), "the main thread never took the interrupt"
            time.sleep(0.5)  # the main thread stops the pool meanwhile
            return Outcome("crashed", "worker process died (killed by SIGKILL)")
        return real(self, point, impls, handle)
    SlowInline.run = interrupting  # type: ignore[method-assign]
    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_sweep(_sweep(tmp_path), _opts(tmp_path, 2))
    finally:
        SlowInline.run = real  # type: ignore[method-assign]
        signal.signal(signal.SIGINT, previous)
    first = _records(tmp_path / "run")
    assert all(r["status"] == "ok" for r in first) and len(first) < 12
    run_sweep(_sweep(tmp_path), _opts(tmp_path, 2, resume=True))
    recs = _records(tmp_path / "run")
    assert len(recs) == 12 and all(r["status"] == "ok" for r in recs)
