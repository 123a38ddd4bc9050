"""The command line: usage errors, plan/list, and the smoke sweep end to end on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from layerbench.results import rundir as results
from layerbench.cli import main

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "sweeps" / "smoke.toml"


def test_bad_sweep_file_exits_2_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('layer = "conv2d"\nimplementations = ["torch"]\n[params]\nbatch = "many"\n')
    assert main(["plan", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"layerbench: error: {bad}: ")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["run", str(tmp_path / "missing.toml"), "--device", "cpu"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_plan_lists_points_without_running(capsys: pytest.CaptureFixture) -> None:
    assert main(["plan", str(SMOKE), "--device", "cpu", "--only", "torch"]) == 0
    out = capsys.readouterr().out
    assert "8 points, 8 result rows" in out
    assert "conv batch=1" in out and "triton" not in out.split("result rows")[0]


def test_list(capsys: pytest.CaptureFixture) -> None:
    assert main(["list", "layers"]) == 0
    out = capsys.readouterr().out
    assert "conv2d: batch, in_channels" in out and "shorthands size -> height+width" in out
    assert main(["list", "sweeps"]) == 0
    out = capsys.readouterr().out
    assert "smoke.toml: 8 points" in out and "alexnet_layers.toml" in out and "INVALID" not in out


def test_smoke_sweep_end_to_end_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``python -m layerbench run --device cpu`` (which sets TRITON_INTERPRET itself), then
    compare, report and export on its run directory."""
    run_dir = tmp_path / "smoke"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "layerbench", "run", str(SMOKE), "--device", "cpu",
                           "--out", str(run_dir), "--no-progress"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "16 records (ok 16)" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    df = results.load_results(run_dir)
    assert len(df) == 16 and set(df["status"]) == {"ok"}
    assert set(df["impl"]) == {"torch", "triton"} and set(df["layer"]) == {"conv2d", "pool2d", "relu", "linear"}
    assert (df["time_median_s"] > 0).all() and (df["first_call_s"] > 0).all()
    assert (df["check_rel_norm"] < 1e-5).all()
    assert df["env_python"].notna().all() and "env_git_commit" in df
    csv = pd.read_csv(run_dir / results.CSV_FILE)
    assert len(csv) == 16 and len(pd.read_parquet(run_dir / results.PARQUET_FILE)) == 16

    assert main(["compare", str(run_dir), "--csv", str(tmp_path / "cmp.csv")]) == 0
    out = capsys.readouterr().out
    assert "| triton | torch |" in out and "Geometric means" in out
    assert len(pd.read_csv(tmp_path / "cmp.csv")) == 8
    assert main(["compare", str(run_dir), str(run_dir)]) == 0  # a run against itself: all SAME
    out = capsys.readouterr().out
    assert "SLOWER" not in out and "FASTER" not in out and "SAME" in out

    assert main(["report", str(run_dir)]) == 0
    report = Path(capsys.readouterr().out.strip())
    text = report.read_text()
    assert "## conv fp32 NCHW" in text and "| batch | triton time" in text  # the reference torch last
    assert len(list(report.parent.glob("*.png"))) == 4

    (run_dir / results.PARQUET_FILE).unlink()
    assert main(["export", str(run_dir)]) == 0
    assert (run_dir / results.PARQUET_FILE).exists()

    # Running again into the same directory needs --resume, which then has nothing to do.
    assert main(["run", str(SMOKE), "--device", "cpu", "--out", str(run_dir), "--no-progress"]) == 2
    assert main(["run", str(SMOKE), "--device", "cpu", "--out", str(run_dir), "--no-progress", "--resume"]) == 0
    assert len(results.read_records(run_dir / results.RESULTS_FILE)) == 16


def test_info_on_cpu(capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "energy meter:" in out and "cpu: " in out and "implementations:" in out


def test_several_files_get_one_run_directory_each(tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / f"{name}.toml").write_text(
            f'experiment = "{name}"\nlayer = "relu"\nimplementations = ["torch"]\n'
            "[params]\nbatch = 1\nchannels = 2\nsize = 3\n[timing]\nfixed_samples = 2\n"
            "[energy]\nenabled = false\n")
    files = [str(tmp_path / "one.toml"), str(tmp_path / "two.toml")]
    out = tmp_path / "runs"
    assert main(["run", *files, "--device", "cpu", "--out", str(out), "--no-progress"]) == 0
    for name in ("one", "two"):
        recs = results.read_records(out / name / results.RESULTS_FILE)
        assert [r["status"] for r in recs] == ["ok"] and recs[0]["experiment"] == name
    # --resume with a directory that never started starts it.
    assert main(["run", files[0], "--device", "cpu", "--out", str(tmp_path / "fresh"), "--resume",
                 "--no-progress"]) == 0
    assert len(results.read_records(tmp_path / "fresh" / results.RESULTS_FILE)) == 1


def test_a_config_that_several_files_hold_is_measured_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    timing = "[timing]\nfixed_samples = 2\n[energy]\nenabled = false\n"
    (tmp_path / "sizes.toml").write_text(
        'experiment = "sizes"\nlayer = "relu"\nimplementations = ["torch"]\n'
        "[params]\nbatch = 1\nchannels = 2\n[axes]\nsize = [3, 5]\n" + timing)
    (tmp_path / "batches.toml").write_text(
        'experiment = "batches"\nlayer = "relu"\nimplementations = ["torch"]\n'
        "[params]\nsize = 5\nchannels = 2\n[axes]\nbatch = [1, 2]\n" + timing)
    files = [str(tmp_path / "sizes.toml"), str(tmp_path / "batches.toml")]
    assert main(["plan", *files, "--device", "cpu"]) == 0
    assert "1 row (0 with energy) repeat a config of an earlier file" in capsys.readouterr().out
    out = tmp_path / "runs"
    assert main(["run", *files, "--device", "cpu", "--out", str(out), "--no-progress"]) == 0
    sizes = {r["axis_size"]: r for r in results.read_records(out / "sizes" / results.RESULTS_FILE)}
    batches = {r["axis_batch"]: r for r in results.read_records(out / "batches" / results.RESULTS_FILE)}
    assert not any("copied_from" in r for r in sizes.values())
    assert "copied_from" not in batches[2]
    copy, source = batches[1], sizes[5]
    assert copy["copied_from"] == "sizes (session 0)"
    # the measurement is the source's; the identity and the axes are this file's point's
    assert copy["time_samples_s"] == source["time_samples_s"] and copy["config_hash"] == source["config_hash"]
    assert (copy["experiment"], copy["point_index"], "axis_size" in copy) == ("batches", 0, False)
    assert main(["run", *files, "--device", "cpu", "--out", str(tmp_path / "again"), "--no-progress",
                 "--remeasure"]) == 0
    again = results.read_records(tmp_path / "again" / "batches" / results.RESULTS_FILE)
    assert len(again) == 2 and not any("copied_from" in r for r in again)


def test_cli_imports_at_the_top() -> None:
    import ast

    import layerbench.cli as cli

    tree = ast.parse(Path(cli.__file__).read_text())
    top = {n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}
    nested = [n.lineno for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and n not in top]
    assert not nested, f"imports inside functions at lines {nested}"
