"""layerbench pareto: the front, the latency-limited pick, the revenue score; on fabricated runs."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from analysis_fakes import row, write_run
from layerbench.analysis.pareto import format_pareto, front_mask, pareto, with_metrics
from layerbench.cli import main


def _settings_run() -> pd.DataFrame:
    # One conv point: cuDNN at three SM clocks, Triton at one, two batch sizes for cuDNN.
    return pd.DataFrame([
        row("cudnn", 1.0e-3, 0.30, reference=True, index=0),
        row("cudnn", 1.4e-3, 0.20, reference=True, axes={"sm_clock_mhz": 1200}, setting_sm_clock_mhz=1200, index=1),
        row("cudnn", 2.5e-3, 0.22, reference=True, axes={"sm_clock_mhz": 990}, setting_sm_clock_mhz=990, index=2),
        row("triton", 1.2e-3, 0.35, index=0),
        row("cudnn", 1.6e-3, 0.48, reference=True, batch=16, index=3),
        row("relu", 1e-4, 0.01, layer="relu", index=4, reference=True),
    ])


def test_front_mask() -> None:
    assert front_mask([1, 2, 3, 2], [3, 2, 1, 3]) == [True, True, True, False]
    assert front_mask([1, 1], [2, 2]) == [True, True]  # equal candidates: neither dominates
    assert front_mask([2, 1], [math.nan, math.nan]) == [False, True]  # no energy: the fastest


def test_front_per_launch_and_per_image() -> None:
    res = pareto(_settings_run())
    conv = res.table[res.table["point"].str.startswith("conv2d")]
    front = set(conv[conv["on_front"]]["candidate"])
    assert front == {"cudnn fp32 NCHW b=8", "cudnn fp32 NCHW b=8 sm=1200"}
    assert (res.table["point"] == "relu").sum() == 1  # another layer is another point
    per_image = pareto(_settings_run(), per_image=True)
    conv = per_image.table[per_image.table["point"].str.startswith("conv2d")]
    assert "cudnn fp32 NCHW b=16" in set(conv[conv["on_front"]]["candidate"])  # 0.1 ms and 0.03 J per image


def test_latency_limit_picks_the_lowest_energy_that_meets_it() -> None:
    res = pareto(_settings_run(), latency_limit=1.5e-3)
    pick = res.table[res.table["pick"] & res.table["point"].str.startswith("conv2d")]
    assert list(pick["candidate"]) == ["cudnn fp32 NCHW b=8 sm=1200"]
    res = pareto(_settings_run(), latency_limit=1.1e-3)
    pick = res.table[res.table["pick"] & res.table["point"].str.startswith("conv2d")]
    assert list(pick["candidate"]) == ["cudnn fp32 NCHW b=8"]
    text = format_pareto(pareto(_settings_run(), latency_limit=1e-6), "fab")
    assert "(none meets the limit)" in text


def test_score_is_images_per_joule_with_a_latency_penalty() -> None:
    res = pareto(_settings_run(), score=True, beta=2.0, latency_limit=2e-3)
    conv = res.table[res.table["point"].str.startswith("conv2d")].set_index("candidate")
    # Within the limit: images per joule; beyond it times (L/t)^2.
    assert conv.loc["cudnn fp32 NCHW b=8 sm=1200", "revenue"] == pytest.approx(8 / 0.20)
    assert conv.loc["cudnn fp32 NCHW b=8 sm=990", "revenue"] == pytest.approx(8 / 0.22 * (2e-3 / 2.5e-3) ** 2)
    pick = conv[conv["pick"]]
    assert list(pick.index) == ["cudnn fp32 NCHW b=8 sm=1200"]
    assert pick["gain"].iloc[0] == pytest.approx((8 / 0.20) / (8 / 0.30))  # over the default (reference, fp32)
    assert "gain" in format_pareto(res, "fab")
    beta0 = pareto(_settings_run(), score=True, beta=0.0)
    conv = beta0.table[beta0.table["point"].str.startswith("conv2d")]
    assert conv[conv["pick"]]["candidate"].iloc[0] == "cudnn fp32 NCHW b=8 sm=1200"


def test_metrics_filled_in_for_old_rows() -> None:
    df = with_metrics(pd.DataFrame([row("cudnn", 2e-3, 0.5, batch=4, energy_host_j_per_launch=0.1)]))
    r = df.iloc[0]
    assert r["j_per_gflop"] == pytest.approx(0.5) and r["gflops_per_w"] == pytest.approx(2.0)
    assert r["j_per_image"] == pytest.approx(0.125) and r["system_j_per_launch"] == pytest.approx(0.6)
    assert r["edp_js"] == pytest.approx(1e-3)


def test_pareto_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = write_run(tmp_path / "run", _settings_run().to_dict("records"))
    csv = tmp_path / "p.csv"
    assert main(["pareto", str(run), "--latency-limit", "1.5e-3", "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "| conv2d" in out and "cudnn fp32 NCHW b=8 sm=1200" in out and "| * |" in out
    assert (run / "report" / "pareto.html").stat().st_size > 1_000_000  # plotly inlined
    assert len(pd.read_csv(csv)) == 6
    assert main(["pareto", str(run), "--score", "--no-plot"]) == 0
    assert "revenue" in capsys.readouterr().out
    assert main(["pareto", str(tmp_path / "missing")]) == 2
