"""--ray on the CPU: point groups as Ray tasks (num_gpus=0) on a one-CPU local Ray, records on the driver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import runner_fakes

from layerbench import cli, sweep
from layerbench.results import rundir as results
from layerbench.results.rundir import RunDir
from layerbench.run import ray_executor
from layerbench.run.sweep_runner import RunOptions, run_sweep

SWEEP = """
experiment = "ray_test"
layer = "relu"
implementations = ["fake_ok", "fake_ref", "fake_wrong"]
dtypes = ["fp32"]
[params]
batch = 2
channels = 3
[axes]
size = [4, 5, 6]
[timing]
fixed_samples = 3
[energy]
windows = 2
"""


def test_without_ray_the_flag_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import builtins
    real = builtins.__import__

    def no_ray(name: str, *a: Any, **kw: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_ray)
    path = tmp_path / "s.toml"
    path.write_text(SWEEP)
    assert cli.main(["run", str(path), "--device", "cpu", "--ray", "--out", str(tmp_path / "r")]) == 2
    assert "pip install 'layerbench[ray]'" in capsys.readouterr().err
    assert cli.main(["run", str(path), "--device", "cpu", "--ray", "auto", "--gpus", "all"]) == 2


@pytest.fixture(scope="module")
def ray_local() -> Any:
    ray = pytest.importorskip("ray")
    from ray import cloudpickle
    cloudpickle.register_pickle_by_value(runner_fakes)  # the Ray workers get the fakes by value
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_run_gathers_records_and_resumes(tmp_path: Path, ray_local: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    runner_fakes.install(monkeypatch)
    runner_fakes.register_fakes()
    path = tmp_path / "s.toml"
    path.write_text(SWEEP)

    def scheduler(*a: Any) -> ray_executor.RayScheduler:
        return ray_executor.RayScheduler(ray_local, *a, prepare=runner_fakes.prepare_worker)

    def opts(resume: bool) -> RunOptions:
        return RunOptions(device="cpu", out=tmp_path / "run", resume=resume, progress=False,
                          scheduler=scheduler, argv=["t"])

    # a partial run (the first point only), then the whole sweep resumed through Ray
    s = sweep.load_sweep(path)
    s.points = s.points[:1]
    run_sweep(s, opts(False))
    assert len(results.read_records(tmp_path / "run" / results.RESULTS_FILE)) == 3
    run_sweep(sweep.load_sweep(path), opts(True))
    recs = results.read_records(tmp_path / "run" / results.RESULTS_FILE)
    assert len(recs) == 9 and len({r["config_hash"] for r in recs}) == 9
    by = {(r["point_index"], r["impl"]): r for r in recs}
    assert by[(2, "fake_ok")]["status"] == "ok" and by[(2, "fake_wrong")]["status"] == "incorrect"
    assert all(r["host"] and "busy_gpus" in r for r in recs)
    run = RunDir(tmp_path / "run").read_meta()
    assert run["sessions"][1]["worker_environments"]


def test_a_dying_ray_worker_costs_its_group(tmp_path: Path, ray_local: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    runner_fakes.install(monkeypatch)
    runner_fakes.register_fakes()
    runner_fakes.register_exiting()
    path = tmp_path / "s.toml"
    path.write_text(SWEEP.replace('"fake_wrong"', '"fake_exit"'))

    def scheduler(*a: Any) -> ray_executor.RayScheduler:
        return ray_executor.RayScheduler(ray_local, *a, prepare=runner_fakes.prepare_exiting_worker)

    run_sweep(sweep.load_sweep(path), RunOptions(device="cpu", out=tmp_path / "run", progress=False,
                                                 scheduler=scheduler, argv=["t"]))
    recs = {(r["point_index"], r["impl"]): r for r in results.read_records(tmp_path / "run" / results.RESULTS_FILE)}
    assert len(recs) == 9
    assert all(recs[(1, n)]["status"] == "error" and "Ray worker failed" in recs[(1, n)]["message"]
               for n in ("fake_ok", "fake_ref", "fake_exit"))
    assert all(recs[(i, n)]["status"] == "ok" for i in (0, 2) for n in ("fake_ok", "fake_ref", "fake_exit"))
