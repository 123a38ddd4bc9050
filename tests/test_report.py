"""Reports: thesis-style tables per swept value and plots, from a synthetic run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from layerbench import sweep
from layerbench.analysis import report
from layerbench.analysis.tables import unit_scale
from layerbench.results import rundir as results
from layerbench.results.records import Record
from layerbench.results.rundir import RunDir

AXIS_SWEEP = """
title = "kernel size"
experiment = "ks"
thesis = ["6-6"]
layer = "conv2d"
implementations = ["triton", "cudnn"]
[params]
batch = 2
in_channels = 4
out_channels = 4
size = 16
[axes]
kernel = [3, 5, 7]
"""

POINTS_SWEEP = """
experiment = "alex"
[params]
batch = 2
[[points]]
name = "conv1"
layer = "conv2d"
in_channels = 3
out_channels = 4
size = 8
kernel = 3
[[points]]
name = "fc6"
layer = "linear"
in_features = 8
out_features = 4
[implementations]
conv2d = ["triton", "cudnn"]
linear = ["triton", "cublas"]
"""


def make_run(tmp_path: Path, text: str, energy: bool = True) -> Path:
    s = sweep.parse_sweep(text, "s.toml")
    run_dir = tmp_path / s.experiment
    run_dir.mkdir()
    run = {"experiment": s.experiment, "title": s.title, "thesis": s.thesis, "axes": s.axis_names,
           "device": "cuda", "sessions": []}
    RunDir(run_dir).write_meta(run)
    session = RunDir(run_dir).new_session(run, ["t"])
    RunDir(run_dir).record_environment(run, session, {"gpu_name": "H100"})
    with results.ResultLog(run_dir / results.RESULTS_FILE) as log:
        for p in s.points:
            for i, impl in enumerate(p.implementations):
                r = Record.for_point(p, impl, s.measure, "cuda", s.experiment, session).to_dict()
                t = 1e-4 * (p.index + 1) * (i + 1)
                r.update(status="ok", reference=impl in ("cudnn", "cublas"), time_median_s=t,
                         time_iqr_s=t / 100)
                if energy:
                    r.update(energy_j_per_launch=300 * t, energy_avg_power_w=300.0 + p.index,
                             energy_j_per_launch_windows=[300 * t] * 3, energy_spread=0.01)
                if p.index == 2 and impl == "triton":
                    r.update(status="oom", message="CUDA out of memory")
                log.append(r)
    return run_dir


def test_axis_report_tables_and_plots(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, AXIS_SWEEP)
    md = report.build_report(run_dir)
    text = md.read_text()
    assert text.startswith("# kernel size")
    assert "**thesis tables**: 6-6" in text
    header = "| kernel | triton time (µs) | triton power (W) | triton energy (mJ) | cudnn time (µs) |"
    assert header in text
    assert "| 3 | 100 | 300 | 30 | 200 | 300 | 60 |" in text
    assert "| 7 | oom | oom | oom | 600 | 302 | 180 |" in text
    assert "CUDA out of memory" in text  # the list of points that did not run
    assert "Custom kernels against the references" in text and "FASTER" in text
    pngs = list(md.parent.glob("*.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"]({pngs[0].name})" in text


def test_layer_list_report_has_sum_row_and_categorical_plot(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, POINTS_SWEEP)
    text = report.build_report(run_dir, tmp_path / "out").read_text()
    assert "| name | triton time (µs) |" in text
    assert "| conv1 | 100 | 300 | 30 |" in text
    assert "| sum | 300 |  | 90 |" in text  # time and energy add up, power does not
    assert (tmp_path / "out" / "fp32_NCHW.png").exists()


def test_a_flagged_energy_reads_as_flagged(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, POINTS_SWEEP)
    log = run_dir / results.RESULTS_FILE
    recs = results.read_records(log)
    for r in recs:
        r["energy_flags"] = ["throttled"] if (r["name"], r["impl"]) == ("conv1", "triton") else []
    log.unlink()
    with results.ResultLog(log) as out:
        for r in recs:
            out.append(r)
    text = report.build_report(run_dir, tmp_path / "out").read_text()
    assert "| conv1 | 100 | 300 | 30 (throttled) |" in text
    assert "\nEnergy flags: throttled: a power or thermal cap" in text
    assert text.count("(throttled)") == 2  # the table's cell and the comparison's energy verdict


def test_sum_row_is_dash_where_a_layer_lacks_the_value(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, POINTS_SWEEP)
    log = run_dir / results.RESULTS_FILE
    recs = results.read_records(log)
    for r in recs:
        if r["name"] == "fc6" and r["impl"] == "triton":
            r.update(status="incorrect", message="rel_norm 1 (tol 1e-05)")
        if r["name"] == "conv1" and r["impl"] == "triton":
            del r["energy_j_per_launch"]
    log.unlink()
    with results.ResultLog(log) as out:
        for r in recs:
            out.append(r)
    text = report.build_report(run_dir, tmp_path / "out").read_text()
    # triton: fc6 incorrect, so neither total stands; cudnn runs conv1 only, which it has.
    assert "| sum | - |  | - | 200 |  | 60 |" in text


def test_report_without_energy_shows_time_only(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, AXIS_SWEEP, energy=False)
    text = report.build_report(run_dir).read_text()
    assert "| kernel | triton time (µs) | cudnn time (µs) |" in text
    assert "power" not in text.split("## ")[1].split("\n")[2]


def test_units_and_empty_run(tmp_path: Path) -> None:
    assert unit_scale([2e-6, 5e-6], "s") == (1e-6, "µs")
    assert unit_scale([3.0], "J") == (1.0, "J")
    assert unit_scale([250.0], "W") == (1.0, "W")
    (tmp_path / results.RESULTS_FILE).write_text("")
    with pytest.raises(ValueError, match="no records"):
        report.build_report(tmp_path)


def _frame(xs: list, times: list[float], impl: str = "triton", x: str = "axis_batch") -> pd.DataFrame:

    return pd.DataFrame([{x: xv, "impl": impl, "status": "ok", "time_median_s": t, "point_index": i}
                         for i, (xv, t) in enumerate(zip(xs, times))])


def test_plots_use_log_axes_for_decades_and_integer_ticks() -> None:
    fig = report.figure(_frame([1, 10, 100], [1e-6, 1e-4, 1e-2]), "axis_batch", ["triton"], "t")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_xscale() == "log"
    assert list(ax.get_xticks()) == [1, 10, 100] and [t.get_text() for t in ax.get_xticklabels()] == ["1", "10", "100"]
    fig = report.figure(_frame([3, 5, 7], [1.0, 1.2, 1.5]), "axis_batch", ["triton"], "t")
    ax = fig.axes[0]
    assert ax.get_yscale() == "linear" and ax.get_xscale() == "linear"
    assert list(ax.get_xticks()) == [3, 5, 7]  # no 3.5, 4.5 ... between the swept integers
    assert ax.lines[0].get_linestyle() == "-"  # one layer over a swept value: joined


def test_points_of_unrelated_layers_are_not_joined() -> None:
    fig = report.figure(_frame(["conv1", "relu1", "fc6"], [1.0, 2.0, 3.0], x="name"), "name", ["triton"], "t")
    assert fig.axes[0].lines[0].get_linestyle() == "None"


def test_columns_put_references_last_and_titles_do_not_repeat(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, AXIS_SWEEP.replace('["triton", "cudnn"]', '["cudnn", "triton"]'))
    text = report.build_report(run_dir).read_text()
    assert "| kernel | triton time (µs) |" in text  # the reference cudnn comes after, as always
    assert report.title_words("relu", "relu", "fp32", None, "NCHW") == "relu fp32 NCHW"


def test_cpu_run_does_not_speak_of_gpu_power(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, AXIS_SWEEP)
    run = RunDir(run_dir).read_meta()
    run["device"] = "cpu"
    RunDir(run_dir).write_meta(run)
    text = report.build_report(run_dir).read_text()
    assert "GPU" not in text.split("## ")[1] and "CPU package (RAPL)" in text
    gpu = make_run(tmp_path / "g", AXIS_SWEEP, energy=False) if (tmp_path / "g").mkdir() is None else None
    assert "power" not in report.build_report(gpu).read_text().split("## ")[1]
