"""The result log, run.json, the loader and the Parquet/CSV exports."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from layerbench.results import rundir as results
from layerbench import sweep

SWEEP = """
layer = "linear"
implementations = ["torch", "triton"]
[params]
batch = 4
in_features = 8
[axes]
out_features = [2, 3]
"""


def _records(tmp_path: Path) -> tuple[Path, list[dict]]:
    s = sweep.parse_sweep(SWEEP, "s.toml")
    run = {"experiment": "s", "sessions": []}
    results.write_run(tmp_path, run)
    session = results.start_session(tmp_path, run, ["layerbench", "run"])
    results.set_environment(tmp_path, run, session, {"gpu": {"name": "H100", "uuid": "GPU-1"}, "driver": "580"})
    recs = []
    for p in s.points:
        for impl in p.implementations:
            r = results.base_record(p, impl, s.measure, "cuda", s.experiment, session)
            r.update(status="ok", time_median_s=1e-3 * (1 + p.index), time_iqr_s=1e-5,
                     time_samples_s=[1e-3, 1.1e-3], kernel_names=["sm90_xmma_gemm", "at::native::x"],
                     energy_j_per_launch=float("nan"), energy_telemetry_throttle=None)
            recs.append(r)
    return tmp_path, recs


def test_log_appends_and_loads(tmp_path: Path) -> None:
    run_dir, recs = _records(tmp_path)
    with results.ResultLog(run_dir / results.RESULTS_FILE) as log:
        for r in recs:
            log.append(r)
    back = results.read_records(run_dir / results.RESULTS_FILE)
    assert [r["config_hash"] for r in back] == [r["config_hash"] for r in recs]
    assert back[0]["energy_j_per_launch"] is None  # NaN is written as null
    assert results.RunDir(run_dir).done_hashes() == {r["config_hash"] for r in recs}
    df = results.load_results(run_dir)
    assert len(df) == 4 and set(df["env_gpu_name"]) == {"H100"} and set(df["env_driver"]) == {"580"}
    assert set(df["out_features"]) == {2, 3} and set(df["axis_out_features"]) == {2, 3}
    assert (df["flops"] == 2 * df["batch"] * df["in_features"] * df["out_features"]
            + df["batch"] * df["out_features"]).all()
    assert set(df["thesis_parameters"]) == {(8 + 1) * 2, (8 + 1) * 3}


def test_status_must_be_known(tmp_path: Path) -> None:
    run_dir, recs = _records(tmp_path)
    with results.ResultLog(run_dir / results.RESULTS_FILE) as log:
        with pytest.raises(ValueError, match="status must be one of ok, incorrect, oom"):
            log.append(recs[0] | {"status": "fine"})


def test_export_parquet_and_csv_round_trip(tmp_path: Path) -> None:
    run_dir, recs = _records(tmp_path)
    recs[1] |= {"status": "oom", "message": "CUDA out of memory", "time_median_s": None}
    with results.ResultLog(run_dir / results.RESULTS_FILE) as log:
        for r in recs:
            log.append(r)
    parquet, csv = results.export_results(run_dir)
    from_log = results.load_results(run_dir)
    from_parquet = results.load_results(parquet)
    assert list(from_parquet["config_hash"]) == list(from_log["config_hash"])
    assert list(from_parquet["kernel_names"].iloc[0]) == ["sm90_xmma_gemm", "at::native::x"]
    assert from_parquet["env_gpu_uuid"].iloc[0] == "GPU-1"
    table = pd.read_csv(csv)
    assert json.loads(table["kernel_names"].iloc[0]) == ["sm90_xmma_gemm", "at::native::x"]
    assert list(table["status"]) == ["ok", "oom", "ok", "ok"]
    assert math.isnan(table["time_median_s"].iloc[1])
    # A directory holding only the Parquet file loads too.
    only = tmp_path / "only"
    only.mkdir()
    parquet.rename(only / results.PARQUET_FILE)
    assert len(results.load_results(only)) == 4


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no results.jsonl or results.parquet"):
        results.load_results(tmp_path)
    with pytest.raises(ValueError, match="not a layerbench run directory"):
        results.read_run(tmp_path)
    with pytest.raises(ValueError, match="no results.jsonl to export"):
        results.export_results(tmp_path)
