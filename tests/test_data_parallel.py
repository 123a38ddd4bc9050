"""The gpus axis: a layer split data-parallel over N GPUs; the split, the aggregation, the efficiency
and the unsupported points on the CPU, and the whole path with two CPU "GPUs" (spawned workers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from layerbench import sweep
from layerbench.errors import SweepError
from layerbench.results import rundir as results
from layerbench.results.records import Record
from layerbench.run.data_parallel import (
    add_scaling,
    aggregate_parts,
    gpus_of,
    part_point,
    scaling_efficiency,
    split_batch,
    split_unsupported_reason,
)
from layerbench.run.sweep_runner import RunOptions, run_sweep

SWEEP = """
experiment = "dp_test"
layer = "relu"
implementations = {impls}
[params]
batch = {batch}
channels = 2
size = 4
[axes]
gpus = {gpus}
[timing]
fixed_samples = 2
warmup = 0
[energy]
enabled = false
"""


def _sweep(tmp_path: Path, gpus: list[int], batch: int = 4, impls: list[str] = ["torch"]) -> sweep.Sweep:  # noqa: B006
    path = tmp_path / "s.toml"
    path.write_text(SWEEP.format(gpus=json.dumps(gpus), batch=batch, impls=json.dumps(impls)))
    return sweep.load_sweep(path)


def test_split_batch() -> None:
    assert split_batch(10, 4) == [3, 3, 2, 2]
    assert split_batch(8, 2) == [4, 4]
    assert split_batch(3, 3) == [1, 1, 1]
    with pytest.raises(ValueError, match="batch 2 cannot be split over 3"):
        split_batch(2, 3)


def test_the_gpus_axis_parses_and_enters_identity_only_above_one(tmp_path: Path) -> None:
    s = _sweep(tmp_path, [1, 2])
    assert [gpus_of(p) for p in s.points] == [1, 2]
    assert s.points[0].params == s.points[1].params  # no layer parameter set
    plain = _sweep(tmp_path, [1])
    from layerbench.results.identity import config_hash
    hashes = [config_hash(p, "torch", s.measure, "cuda") for p in s.points]
    assert hashes[0] != hashes[1]
    # gpus = 1 is the plain point: the same record as a sweep without the axis
    path = tmp_path / "plain.toml"
    path.write_text(SWEEP.format(gpus="[1]", batch=4, impls='["torch"]').replace("[axes]\ngpus = [1]\n", ""))
    assert config_hash(sweep.load_sweep(path).points[0], "torch", s.measure, "cuda") == hashes[0]
    del plain
    with pytest.raises(SweepError, match="GPU counts"):
        _sweep(tmp_path, [0])




def test_unsupported_when_more_gpus_than_present(tmp_path: Path) -> None:
    s = _sweep(tmp_path, [1, 4], batch=4)
    assert split_unsupported_reason(s.points[1], 2) == ("gpus=4: the layer split over 4 GPUs needs 4 GPUs, "
                                                        "2 are present here")
    assert split_unsupported_reason(s.points[1], 4) is None
    small = _sweep(tmp_path, [4], batch=2)
    assert "batch 2 cannot be split over 4" in split_unsupported_reason(small.points[0], 8)
    part = part_point(s.points[1], 1)
    assert part.params["batch"] == 1 and part.spec.batch == 1 and s.points[1].spec.batch == 4
    run_dir = run_sweep(s, RunOptions(device="cpu", out=tmp_path / "run", in_process=True, progress=False,
                                      gpus_present=["0"], argv=["t"]))
    recs = {r["axis_gpus"]: r for r in results.read_records(run_dir / results.RESULTS_FILE)}
    assert recs[1]["status"] == "ok"
    assert recs[4]["status"] == "unsupported" and "1 is present" in recs[4]["message"]


def _part(t: float, j: float | None, status: str = "ok") -> Record:
    rec = Record("e", 0, None, "relu", "k", "fp32", "NCHW", "cuda", "h", "p", 0, {}, {}, True)
    rec.finish(status, "" if status == "ok" else "bad")
    rec.time = {"time_median_s": t, "time_iqr_s": t / 100, "time_n": 10}
    rec.energy = {"energy_method": "nvml", "energy_j_per_launch": j, "energy_avg_power_w": 300.0} if j else {}
    rec.first_call_s = 1.0
    return rec


def _full() -> Record:
    rec = Record("e", 0, None, "relu", "k", "fp32", "NCHW", "cuda", "h", "p", 0, {"gpus": 3}, {}, True)
    rec.figures = {"flops": 3_000_000_000, "min_bytes": 1_000_000}
    return rec


def test_aggregate_time_is_the_slowest_energy_the_sum() -> None:
    rec = aggregate_parts(_full(), [_part(1e-3, 0.2), _part(2e-3, 0.3), _part(1.5e-3, 0.25)], [2, 2, 1])
    assert rec.status == "ok"
    assert rec.time["time_median_s"] == 2e-3 and rec.time["time_slowest_gpu"] == 1
    assert rec.time["dp_time_per_gpu_s"] == [1e-3, 2e-3, 1.5e-3] and rec.time["dp_batches"] == [2, 2, 1]
    assert rec.time["tflops"] == pytest.approx(3e9 / 2e-3 / 1e12)
    assert rec.energy["energy_j_per_launch"] == pytest.approx(0.75)
    assert rec.energy["energy_avg_power_w"] == pytest.approx(900.0)
    assert rec.energy["gflops_per_w"] == pytest.approx(3.0 / 0.75)  # GFLOP per J = GFLOP/s per W
    row = rec.to_dict()
    assert row["dp_energy_per_gpu_j"] == [0.2, 0.3, 0.25]


def test_aggregate_takes_the_worst_status() -> None:
    rec = aggregate_parts(_full(), [_part(1e-3, 0.2), _part(1e-3, None, "incorrect")], [1, 1])
    assert rec.status == "incorrect" and "GPU 1: incorrect" in rec.message
    assert "energy_j_per_launch" not in rec.energy


def test_scaling_efficiency() -> None:
    assert scaling_efficiency(4e-3, 1e-3, 4) == 1.0
    assert scaling_efficiency(4e-3, 2e-3, 4) == 0.5
    rows = [{"layer": "conv2d", "impl": "triton", "axis_gpus": 1, "axis_batch": 64, "time_median_s": 4e-3, "status": "ok"},
            {"layer": "conv2d", "impl": "triton", "axis_gpus": 2, "axis_batch": 64, "time_median_s": 2.5e-3, "status": "ok"},
            {"layer": "conv2d", "impl": "triton", "axis_gpus": 2, "axis_batch": 32, "time_median_s": 1e-3, "status": "ok"}]
    add_scaling(rows)
    assert rows[1]["dp_speedup"] == pytest.approx(1.6) and rows[1]["dp_efficiency"] == pytest.approx(0.8)
    assert rows[0]["dp_efficiency"] == 1.0
    assert "dp_efficiency" not in rows[2]  # no gpus = 1 row for batch 32


def test_split_over_two_cpu_workers(tmp_path: Path) -> None:
    """The real path: two spawned, pinned workers evaluate their halves together; one record."""
    s = _sweep(tmp_path, [2], batch=5)
    run_dir = run_sweep(s, RunOptions(device="cpu", out=tmp_path / "run", in_process=True, progress=False,
                                      gpus_present=["0", "1"], point_timeout_s=300, argv=["t"]))
    [rec] = results.read_records(run_dir / results.RESULTS_FILE)
    assert rec["status"] == "ok", rec["message"]
    assert rec["dp_gpus"] == 2 and rec["dp_batches"] == [3, 2] and len(rec["dp_time_per_gpu_s"]) == 2
    assert rec["time_median_s"] == max(rec["dp_time_per_gpu_s"])
    assert rec["batch"] == 5  # the record is the whole layer's


def test_scaling_command(tmp_path: Path, capsys: Any) -> None:
    from layerbench import cli
    rows = [{"layer": "conv2d", "name": "conv1", "impl": "triton", "axis_gpus": n, "status": "ok",
             "time_median_s": t, "energy_j_per_launch": 0.1 * n, "gflops_per_w": 50.0}
            for n, t in ((1, 4e-3), (2, 2.5e-3))]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli.main(["scaling", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "0.80" in out and "1.60" in out
    (tmp_path / "results.jsonl").write_text(json.dumps({"layer": "relu", "status": "ok"}) + "\n")
    assert cli.main(["scaling", str(tmp_path)]) == 2


def test_a_gpus_axis_is_refused_with_gpus_or_ray(tmp_path: Path, capsys: Any, monkeypatch: Any) -> None:
    from layerbench import cli
    monkeypatch.setattr(cli, "visible_gpus", lambda: ["0", "1"])
    _sweep(tmp_path, [1, 2])
    code = cli.main(["run", str(tmp_path / "s.toml"), "--device", "cpu", "--gpus", "all",
                     "--out", str(tmp_path / "r")])
    assert code == 2 and "without --gpus/--ray" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_weight_gradient_split_over_gpus_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fc.toml"
    path.write_text('experiment = "dp_fc"\nlayer = "linear"\nimplementations = ["torch"]\n'
                    "[params]\nbatch = 8\nin_features = 4\nout_features = 3\n"
                    '[axes]\ngpus = [2]\npass = ["forward", "backward_data", "backward_weight", "training"]\n')
    reasons = {p.params.get("direction", "forward"): split_unsupported_reason(p, 2)
               for p in sweep.load_sweep(path).points}
    assert reasons["forward"] is None and reasons["backward_data"] is None
    for direction in ("backward_weight", "training"):
        assert "all-reduce of the weight gradients" in reasons[direction]
