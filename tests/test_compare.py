"""Noise-aware verdicts, custom-vs-reference and run-vs-run comparison, geometric means."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from layerbench.analysis import compare
from layerbench.analysis.stats import Ratio, geomean, interval_ratio


@pytest.mark.parametrize("a,aw,b,bw,verdict", [
    (1.0, 0.02, 2.0, 0.02, "FASTER"),
    (2.0, 0.02, 1.0, 0.02, "SLOWER"),
    (1.0, 0.3, 1.1, 0.3, "SAME"),       # intervals overlap 1
    (1.0, 0.0, 1.005, 0.0, "SAME"),     # within the 1 % threshold
    (0.0, 0.0, 1.0, 0.0, "n/a"),
])
def test_time_verdicts(a: float, aw: float, b: float, bw: float, verdict: str) -> None:
    r = interval_ratio(a, aw, b, bw)
    assert r.verdict(0.01) == verdict
    if verdict != "n/a":
        assert r.lo <= r.ratio <= r.hi and r.ratio == pytest.approx(a / b)


def test_interval_is_exact_for_known_values() -> None:
    r = interval_ratio(1.0, 0.2, 2.0, 0.4)  # a in [0.9, 1.1], b in [1.8, 2.2]
    assert (r.lo, r.ratio, r.hi) == pytest.approx((0.9 / 2.2, 0.5, 1.1 / 1.8))
    assert Ratio(1.2, 1.1, 1.3).verdict(0.0, ("LESS", "MORE")) == "MORE"


def _row(point: str, impl: str, ref: bool, t: float, j: float | None, windows: list[float] | None,
         status: str = "ok") -> dict:
    return {"point_hash": point, "config_hash": point + impl, "name": point, "layer": "conv2d",
            "dtype": "fp32", "layout": "NCHW", "axis_size": point, "impl": impl, "reference": ref,
            "status": status, "time_median_s": t, "time_iqr_s": t * 0.01, "energy_j_per_launch": j,
            "energy_j_per_launch_windows": windows, "energy_spread": 0.02 if j else None,
            "energy_requested": j is not None, "j_per_gflop": j / 2.0 if j else None}


def test_compare_within_pairs_custom_with_references_and_skips_incorrect() -> None:
    df = pd.DataFrame([
        _row("p1", "cudnn", True, 2e-3, 2.0, [2.0, 2.0, 2.0]),
        _row("p1", "triton", False, 1e-3, 1.0, [1.0, 1.1, 0.9]),
        _row("p1", "cupy", False, 4e-3, 2.0, [1.9, 2.1, 2.0]),
        _row("p2", "cudnn", True, 1e-3, None, None),
        _row("p2", "triton", False, 1e-3, None, None, status="incorrect"),
    ])
    table = compare.compare_within(df)
    assert len(table) == 2  # the incorrect p2 triton row takes no part
    tri = table[table["impl"] == "triton"].iloc[0]
    assert tri["baseline"] == "cudnn" and tri["time_verdict"] == "FASTER"
    assert tri["energy_ratio"] == pytest.approx(0.5) and tri["energy_verdict"] == "LESS"
    assert (tri["energy_lo"], tri["energy_hi"]) == pytest.approx((0.45, 0.55))
    cupy = table[table["impl"] == "cupy"].iloc[0]
    assert cupy["time_verdict"] == "SLOWER" and cupy["energy_verdict"] == "SAME"
    s = compare.summary(table)
    assert set(s["impl"]) == {"triton", "cupy"}
    text = compare.format_comparison(table, "t")
    assert "FASTER" in text and "Geometric means" in text and "| p1 |" in text
    assert "| 0.5 / 1 |" in text  # J/GFLOP of triton and of cudnn
    assert "Energy flags" not in text  # clean windows: nothing to explain
    # A flag on either measurement marks the ratio it enters, and the table says what it means.
    df.loc[0, "energy_flags"] = "[\"throttled\"]"  # the reference's, as a CSV holds it
    df.loc[1, "energy_flags"] = "[\"unsteady\", \"throttled\"]"
    flagged = compare.format_comparison(compare.compare_within(df), "t")
    assert "| LESS (throttled, unsteady) |" in flagged and "| SAME (throttled) |" in flagged
    assert "Energy flags: throttled: " in flagged
    assert "; unsteady: the windows' J/launch differ by more than 5 %" in flagged
    # An explicit baseline compares everything else with it.
    only = compare.compare_within(df, baselines=["triton"])
    assert set(only["impl"]) == {"cudnn", "cupy"} and set(only["baseline"]) == {"triton"}


def test_compare_runs_matches_config_hashes() -> None:
    a = pd.DataFrame([_row("p1", "triton", False, 2e-3, 2.0, [2.0]), _row("p2", "triton", False, 1e-3, 1.0, [1.0])])
    b = pd.DataFrame([_row("p1", "triton", False, 1e-3, 1.0, [1.0]), _row("p3", "triton", False, 1e-3, 1.0, [1.0])])
    table = compare.compare_runs(a, b)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["time_ratio"] == pytest.approx(0.5) and row["time_verdict"] == "FASTER"
    assert row["energy_ratio"] == pytest.approx(0.5) and row["energy_verdict"] == "LESS"


def test_geomean() -> None:
    assert geomean([0.5, 2.0, float("nan"), None]) == pytest.approx(1.0)
    assert math.isnan(geomean([]))
    assert "Nothing to compare" in compare.format_comparison(pd.DataFrame(), "t")


def test_analysis_modules_import_at_the_top_and_not_in_a_circle() -> None:
    import ast
    from pathlib import Path

    import layerbench.analysis as analysis

    imports: dict[str, set[str]] = {}
    for path in Path(analysis.__path__[0]).glob("*.py"):
        tree = ast.parse(path.read_text())
        top = {n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}
        nested = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and n not in top]
        assert not nested, f"{path.name}: imports inside functions at lines {[n.lineno for n in nested]}"
        imports[path.stem] = {n.module.rsplit(".", 1)[-1] for n in top if isinstance(n, ast.ImportFrom) and n.module
                              and n.module.startswith("layerbench.analysis")}
    assert "report" not in imports["compare"] and "compare" in imports["report"]
    assert imports["stats"] == set() and imports["tables"] <= {"stats"}
