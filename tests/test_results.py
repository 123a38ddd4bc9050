"""The result log, run.json, the loader and the Parquet/CSV exports."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
from sweep_texts import CONV_SWEEP

from layerbench import sweep
from layerbench.results import identity
from layerbench.results import rundir as results
from layerbench.results.records import Record, count_statuses, parse_fail_on
from layerbench.results.rundir import RunDir

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
    RunDir(tmp_path).write_meta(run)
    session = RunDir(tmp_path).new_session(run, ["layerbench", "run"])
    RunDir(tmp_path).record_environment(run, session, {"gpu": {"name": "H100", "uuid": "GPU-1"}, "driver": "580"})
    recs = []
    for p in s.points:
        for impl in p.implementations:
            r = Record.for_point(p, impl, s.measure, "cuda", s.experiment, session).to_dict()
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
        RunDir(tmp_path).read_meta()
    with pytest.raises(ValueError, match="no results.jsonl to export"):
        results.export_results(tmp_path)


# ----------------------------------------------------------------- records and identity


def test_record_identity_matches_the_sweep_hashes() -> None:
    """Records of earlier runs resume: the hashes of a fixed point are pinned to the values the
    earlier code wrote."""
    s = sweep.parse_sweep(SWEEP, "s.toml")
    p = s.points[0]
    assert identity.config_hash(p, "torch", s.measure, "cuda") == "4d52fd3293b5f117"
    assert identity.point_hash(p, s.measure, "cuda") == "d93ed3546fde09e3"
    for p in s.points:
        for impl in p.implementations:
            rec = Record.for_point(p, impl, s.measure, "cuda", s.experiment, 0)
            assert rec.config_hash == identity.config_hash(p, impl, s.measure, "cuda")
            assert rec.point_hash == identity.point_hash(p, s.measure, "cuda")


def test_conv_identity_is_pinned_across_the_new_conv_fields() -> None:
    """A conv point without per-axis fields, dilation or groups hashes as the code wrote it before
    Conv2d had them (the values below come from that code)."""
    s = sweep.parse_sweep(CONV_SWEEP, "c.toml")
    p = s.points[0]
    assert identity.config_hash(p, "torch", s.measure, "cuda") == "109bb393223a2d7a"
    assert identity.point_hash(p, s.measure, "cuda") == "3474c62e5cda4cc0"
    rec = Record.for_point(p, "torch", s.measure, "cuda", s.experiment, 0)
    assert rec.config_hash == "109bb393223a2d7a" and {"stride_h", "groups", "dilation_w"} <= set(rec.params)


def test_record_keeps_the_column_layout() -> None:
    s = sweep.parse_sweep(SWEEP, "s.toml")
    row = Record.for_point(s.points[0], "torch", s.measure, "cuda", "s", 0).finish("ok").to_dict()
    assert row["point_axes"] == '{"out_features": 2}' and "axes" not in row
    assert row["axis_out_features"] == 2 and row["out_features"] == 2 and row["flops"] > 0
    assert list(row)[:4] == ["experiment", "point_index", "name", "layer"]
    with pytest.raises(ValueError, match="status must be one of"):
        Record.for_point(s.points[0], "torch", s.measure, "cuda", "s", 0).finish("fine")


# --------------------------------------------------- the lock


def test_second_lock_on_a_run_dir_is_refused_and_released(tmp_path: Path) -> None:
    first = results.RunDir(tmp_path / "run")
    first.lock()
    with pytest.raises(results.RunDirLocked, match=rf"in use by another layerbench run \(pid {os.getpid()}\)"):
        results.RunDir(tmp_path / "run").lock()
    first.unlock()
    second = results.RunDir(tmp_path / "run")
    second.lock()  # a lock file left behind does not block: the flock went with its holder
    second.unlock()
    assert issubclass(results.RunDirLocked, ValueError)  # the CLI's one-line error, exit 2


def test_out_naming_a_file_or_a_read_only_dir_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a run directory"):
        results.RunDir(tmp_path / "file").lock()
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: a read-only directory is writable")
        with pytest.raises(ValueError, match="cannot"):
            results.RunDir(ro / "run").lock()
    finally:
        ro.chmod(0o700)


# ------------------------------------------ a torn last line


def test_torn_last_line_is_reported_once_with_its_line_number(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, recs = _records(tmp_path)
    with results.ResultLog(run_dir / results.RESULTS_FILE) as log:
        for r in recs:
            log.append(r)
    log_path = run_dir / results.RESULTS_FILE
    log_path.write_bytes(log_path.read_bytes()[:-30])  # the 4th line loses its end
    df = results.load_results(run_dir)
    assert len(df) == 3
    err = capsys.readouterr().err
    assert err.count("line 4 is incomplete") == 1 and "it is left out" in err
    # Loading a table reads the log once: one note per load.
    rundir = results.RunDir(run_dir)
    rundir.load_table(), rundir.records()
    assert capsys.readouterr().err.count("line 4 is incomplete") == 1
    # Opening the log to append (a resume) cuts the line and says so.
    notes: list[str] = []
    results.RunDir(run_dir, say=notes.append).open_log().close()
    assert len(notes) == 1 and "line 4 is incomplete" in notes[0] and "removed it" in notes[0]
    assert log_path.read_bytes().endswith(b"\n") and len(results.read_records(log_path)) == 3


def test_a_corrupt_middle_line_names_its_number(tmp_path: Path) -> None:
    log = tmp_path / results.RESULTS_FILE
    log.write_text('{"status": "ok"}\nnot json\n{"status": "ok"}\n')
    with pytest.raises(ValueError, match="line 2 is not a JSON record"):
        results.read_records(log)


# ------------------------------------------------ statuses


def test_status_counts_and_failing_statuses(tmp_path: Path) -> None:
    rows = [{"status": s} for s in ("ok", "ok", "incorrect", "unsupported", "error")]
    counts = count_statuses(rows)
    assert counts.counts == {"ok": 2, "incorrect": 1, "unsupported": 1, "error": 1}
    assert counts.failed and counts.failures == {"incorrect": 1, "error": 1}
    assert counts.as_text() == "ok 2, incorrect 1, unsupported 1, error 1"
    assert not count_statuses([{"status": "ok"}, {"status": "unsupported"}]).failed
    assert count_statuses(rows, parse_fail_on("unsupported")).failures == {"unsupported": 1}
    assert not count_statuses(rows, parse_fail_on("none")).failed
    with pytest.raises(ValueError, match="--fail-on: unknown status 'incorect'"):
        parse_fail_on("ok,incorect")
    run_dir, recs = _records(tmp_path)
    recs[0]["status"] = "incorrect"
    with results.ResultLog(run_dir / results.RESULTS_FILE) as log:
        for r in recs:
            log.append(r)
    status = results.RunDir(run_dir).status_counts()
    assert status.counts == {"ok": 3, "incorrect": 1} and status.failed


# ------------------------------------------------- table types

RELU = """
layer = "relu"
implementations = ["torch"]
[params]
batch = 1
channels = 2
[axes]
size = [4, 8]
"""


def test_mixed_layer_table_keeps_integer_parameters_and_axis_types(tmp_path: Path) -> None:
    run_dir, recs = _records(tmp_path)  # linear rows: in_features, out_features, bias
    relu = sweep.parse_sweep(RELU, "r.toml")
    recs += [Record.for_point(p, "torch", relu.measure, "cuda", relu.experiment, 0).to_dict() | {"status": "ok"}
             for p in relu.points]
    with results.ResultLog(run_dir / results.RESULTS_FILE) as log:
        for r in recs:
            log.append(r)
    for df in (results.load_results(run_dir), results.load_results(results.export_results(run_dir)[0])):
        assert str(df["in_features"].dtype) == "Int64" and str(df["height"].dtype) == "Int64"
        assert df["in_features"].dropna().tolist() == [8, 8, 8, 8] and df["in_features"].isna().sum() == 2
        assert str(df["bias"].dtype) == "boolean" and str(df["inplace"].dtype) == "boolean"
        assert str(df["axis_size"].dtype) == "Int64" and df["axis_size"].dropna().tolist() == [4, 8]
        assert str(df["batch"].dtype) == "int64"  # complete columns keep their plain type
        assert not [c for c in df.columns if hasattr(pd.DataFrame, c)]
        assert "point_axes" in df.columns


def test_old_runs_load_with_their_columns_renamed(tmp_path: Path) -> None:
    """A log written before the record type: ``axes`` column, axis values as text."""
    run_dir, recs = _records(tmp_path)
    old = []
    for r in recs:
        r = dict(r)
        r["axes"] = r.pop("point_axes")
        r["axis_out_features"] = str(r["axis_out_features"])
        old.append(r)
    with results.ResultLog(run_dir / results.RESULTS_FILE) as log:
        for r in old:
            log.append(r)
    df = results.load_results(run_dir)
    assert "axes" not in df.columns and df["point_axes"].iloc[0] == '{"out_features": 2}'
    assert set(df["axis_out_features"]) == {"2", "3"}
    parquet, _ = results.export_results(run_dir)
    assert "point_axes" in results.load_results(parquet).columns
    # Resumed by this version: old and new rows in one log, one column.
    with results.ResultLog(run_dir / results.RESULTS_FILE) as log:
        log.append(recs[0] | {"config_hash": "new"})
    df = results.load_results(run_dir)
    assert "axes" not in df.columns and df["point_axes"].notna().all() and len(df) == 5
