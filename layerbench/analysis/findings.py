"""The studies' published findings, checked on today's GPU (``layerbench findings RUN...``).

The thesis's figures live in ``thesis_findings.json`` beside this module (package data), each with
its table numbers (docs/thesis-experiments.md).  Given the runs of the thesis sweeps
(``sweeps/thesis/``, recognised by their experiment name), every finding is set next to ours with a
verdict: ``holds``, ``does not hold``, or why it cannot be checked (no such run, nothing measured).

Which rows: status ok, fp32, NCHW (what the thesis ran), one implementation per point: ``impl``
when given, else the point's reference with energy measured (cuDNN, cuBLAS; torch last).  Energy is
the device's J/launch; where a run has no energy the time stands in and the text says so.
Linearity is the R^2 of a least-squares line (with intercept); a share holds within the finding's
tolerance (absolute, in parts of the whole).
"""

from __future__ import annotations

import json
import math
from importlib import resources
from typing import Any, Callable, Iterable

import pandas as pd

from layerbench.analysis.tables import markdown_table

DATA_FILE = "thesis_findings.json"
REFERENCE_PREFERENCE = ("cudnn", "cublas", "torch")
HOLDS, FAILS = "holds", "does not hold"


def thesis_findings() -> dict[str, Any]:
    """The published findings with their figures and table numbers (package data)."""
    return json.loads(resources.files("layerbench.analysis").joinpath(DATA_FILE).read_text())


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def study_rows(df: pd.DataFrame, impl: str | None = None) -> pd.DataFrame:
    """One row per point: ok, fp32, NCHW; ``impl`` or the preferred reference with energy."""
    d = df
    for col, val in (("status", "ok"), ("dtype", "fp32"), ("layout", "NCHW")):
        if col in d.columns:
            d = d[d[col] == val]
    if impl is not None:
        return d[d["impl"] == impl]
    if "reference" in d.columns:
        d = d[d["reference"].fillna(False).astype(bool)]
    key = "point_hash" if "point_hash" in d.columns else "point_index"
    out = []
    for _, g in d.groupby(key, sort=False):
        def rank(r: pd.Series) -> tuple[int, int]:
            has_e = _num(r.get("energy_j_per_launch")) > 0
            name = str(r["impl"])
            return (0 if has_e else 1,
                    REFERENCE_PREFERENCE.index(name) if name in REFERENCE_PREFERENCE else len(REFERENCE_PREFERENCE))
        out.append(min((r for _, r in g.iterrows()), key=rank))
    return pd.DataFrame(out)


def _energy(d: pd.DataFrame) -> tuple[pd.Series, str]:
    """Energy per launch, or the time where this run measured no energy."""
    e = pd.to_numeric(d.get("energy_j_per_launch"), errors="coerce") if "energy_j_per_launch" in d else None
    if e is not None and e.notna().all() and len(e):
        return e, "energy"
    return pd.to_numeric(d["time_median_s"], errors="coerce"), "time (no energy measured)"


def r_squared(x: Iterable[float], y: Iterable[float]) -> float:
    """R^2 of the least-squares line through (x, y); NaN for fewer than 3 points."""
    xs, ys = [float(v) for v in x], [float(v) for v in y]
    if len(xs) < 3:
        return math.nan
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((a - mx) ** 2 for a in xs)
    syy = sum((b - my) ** 2 for b in ys)
    sxy = sum((a - mx) * (b - my) for a, b in zip(xs, ys))
    if sxx == 0 or syy == 0:
        return math.nan
    return sxy * sxy / (sxx * syy)


def _pct(v: float) -> str:
    return f"{v * 100:.0f} %" if math.isfinite(v) else "-"


# ------------------------------------------------------------------------------ the checks
# Each takes the study's rows of its run and the finding; returns (ours, verdict).

Check = Callable[[pd.DataFrame, dict[str, Any]], tuple[str, str]]


def _share(layer: str) -> Check:
    def check(d: pd.DataFrame, f: dict[str, Any]) -> tuple[str, str]:
        t = pd.to_numeric(d["time_median_s"], errors="coerce")
        shares = {"time_share": t[d["layer"] == layer].sum() / t.sum()}
        e, what = _energy(d)
        if what == "energy":
            shares["energy_share"] = e[d["layer"] == layer].sum() / e.sum()
        tol = f.get("tolerance", 0.1)
        ok = all(abs(v - f["thesis"][k]) <= tol for k, v in shares.items())
        ours = f"time {_pct(shares['time_share'])}" + (f", energy {_pct(shares['energy_share'])}"
                                                        if "energy_share" in shares else ", energy not measured")
        return ours + f" (of {len(d)} layers)", HOLDS if ok else FAILS
    return check


def _linear(x_of: Callable[[pd.DataFrame], pd.Series], by: str | None = None,
            keep: Callable[[pd.DataFrame], pd.Series] | None = None, time_too: bool = False) -> Check:
    def check(d: pd.DataFrame, f: dict[str, Any]) -> tuple[str, str]:
        if keep is not None:
            d = d[keep(d)]
        groups = list(d.groupby(by, sort=False)) if by and by in d.columns else [("", d)]
        r2s: dict[str, list[float]] = {}
        what = "energy"
        for _, g in groups:
            e, what = _energy(g)
            r2s.setdefault(what, []).append(r_squared(x_of(g), e))
            if time_too and what == "energy":
                r2s.setdefault("time", []).append(r_squared(x_of(g), g["time_median_s"]))
        worst = {k: min(v) for k, v in r2s.items()}
        if any(math.isnan(v) for v in worst.values()):
            return "fewer than 3 points", "cannot check"
        ok = all(v >= f["thesis"]["r2_min"] for v in worst.values())
        return ", ".join(f"{k} R^2 {v:.3f}" for k, v in worst.items()) + \
            (f" (worst of {len(groups)})" if len(groups) > 1 else ""), HOLDS if ok else FAILS
    return check


def _kernel_power(d: pd.DataFrame, f: dict[str, Any]) -> tuple[str, str]:
    if "energy_avg_power_w" not in d.columns or d["energy_avg_power_w"].isna().all():
        return "no power measured", "cannot check"
    k = pd.to_numeric(d.get("kernel_h"), errors="coerce")
    p = pd.to_numeric(d["energy_avg_power_w"], errors="coerce")
    big = p[k >= f["thesis"]["flat_from_kernel"]]
    if len(big) < 2:
        return "fewer than 2 kernels from 7x7", "cannot check"
    spread = big.max() / big.min() - 1
    small = p[k < f["thesis"]["flat_from_kernel"]]
    ours = (f"power {big.min():.0f}-{big.max():.0f} W from 7x7 (spread {spread * 100:.1f} %)"
            + (f", {small.min():.0f} W below" if len(small) else ""))
    # A board held at its power limit is flat whatever the kernel: say so beside the verdict.
    capped = pd.to_numeric(d.get("energy_telemetry_power_capped_s", pd.Series(0.0, index=d.index)),
                           errors="coerce").reindex(big.index)
    if (capped > 0).any():
        ours += f"; {int((capped > 0).sum())} of {len(big)} from 7x7 at the board's power limit"
    return ours, HOLDS if spread <= f["thesis"]["flat_within"] else FAILS


def _by_batch(d: pd.DataFrame, col: str) -> list[float]:
    """Per point name: the column at the largest batch over the smallest."""
    out = []
    for _, g in d.groupby("name" if "name" in d.columns else "layer", sort=False):
        g = g.sort_values("batch")
        a, b = _num(g[col].iloc[0]) if col in g else math.nan, _num(g[col].iloc[-1]) if col in g else math.nan
        if len(g) >= 2 and a > 0 and b > 0:
            out.append(b / a)
    return out


def _batch_power(d: pd.DataFrame, f: dict[str, Any]) -> tuple[str, str]:
    ratios = _by_batch(d, "energy_avg_power_w")
    if not ratios:
        return "no power measured", "cannot check"
    med = sorted(ratios)[len(ratios) // 2]
    return (f"power at the largest / smallest batch: {min(ratios):.2f}-{max(ratios):.2f}x (thesis "
            f"{f['thesis']['ratio']:.2f}x)"), HOLDS if med > 1.02 else FAILS


def _gflops_per_w(d: pd.DataFrame, f: dict[str, Any]) -> tuple[str, str]:
    ratios = _by_batch(d, "gflops_per_w")
    if not ratios:
        return "no energy measured", "cannot check"
    med = sorted(ratios)[len(ratios) // 2]
    best = pd.to_numeric(d["gflops_per_w"], errors="coerce").max()
    return (f"GFLOP/s per W at the largest / smallest batch: {min(ratios):.2f}-{max(ratios):.2f}x; "
            f"best {best:.1f} GFLOP/s/W"), HOLDS if med > 1.0 else FAILS


def _avg_vs_max(d: pd.DataFrame, f: dict[str, Any]) -> tuple[str, str]:
    e, what = _energy(d)
    d = d.assign(_e=e)
    ratios = []
    for _, g in d.groupby("name" if "name" in d.columns else "height", sort=False):
        m = g[g["method"] == "max"]["_e"]
        a = g[g["method"] == "avg"]["_e"]
        if len(m) and len(a) and m.iloc[0] > 0:
            ratios.append(a.iloc[0] / m.iloc[0])
    if not ratios:
        return "no max/avg pair measured", "cannot check"
    ours = f"avg / max {what}: {min(ratios):.2f}-{max(ratios):.2f}x"
    return ours, HOLDS if min(ratios) > 1.05 else FAILS


def _area(g: pd.DataFrame) -> pd.Series:
    return pd.to_numeric(g["height"], errors="coerce") * pd.to_numeric(g["width"], errors="coerce")


def _channels(g: pd.DataFrame) -> pd.Series:
    return pd.to_numeric(g["in_channels"], errors="coerce") * pd.to_numeric(g["out_channels"], errors="coerce")


def _params(g: pd.DataFrame) -> pd.Series:
    col = "thesis_parameters" if "thesis_parameters" in g.columns else "parameters"
    return pd.to_numeric(g[col], errors="coerce")


CHECKS: dict[str, Check] = {
    "A2-conv-share": _share("conv2d"),
    "A2-fc-share": _share("linear"),
    "A2-pool-share": _share("pool2d"),
    "A3-batch-linear": _linear(lambda g: pd.to_numeric(g["batch"], errors="coerce"), by="name", time_too=True),
    "A3-batch-power": _batch_power,
    "A4-input-area": _linear(_area),
    "A4-kernel-power": _kernel_power,
    "A4-channel-product": _linear(_channels, keep=lambda g: pd.to_numeric(g["in_channels"]) != 3, time_too=True),
    "A5-fc-parameters": _linear(_params, time_too=True),
    "A6-avg-vs-max": _avg_vs_max,
    "B-gflops-per-w-batch": _gflops_per_w,
}


def _thesis_text(f: dict[str, Any]) -> str:
    t = f["thesis"]
    if "time_share" in t:
        return f"time {_pct(t['time_share'])}, energy {_pct(t['energy_share'])}"
    if "ratio_min" in t:
        return f"{t['ratio_min']:g}-{t['ratio_max']:g}x"
    if "power_w_at_16" in t:
        return f"{t['power_w_at_16']} W at 16 -> {t['power_w_at_128']} W at 128"
    if "flat_from_kernel" in t:
        return f"flat from {t['flat_from_kernel']}x{t['flat_from_kernel']}"
    if "r2_min" in t:
        return f"linear (we ask R^2 >= {t['r2_min']:g})"
    return "higher with larger batches"


def check_findings(runs: Iterable[pd.DataFrame], impl: str | None = None) -> list[dict[str, Any]]:
    """Each published finding, the thesis's figure, ours and the verdict, from the runs given (each
    recognised by its ``experiment``; a later run of an experiment replaces an earlier one)."""
    by_experiment: dict[str, pd.DataFrame] = {}
    for df in runs:
        if len(df) and "experiment" in df.columns:
            by_experiment[str(df["experiment"].iloc[0])] = df
    out = []
    for f in thesis_findings()["findings"]:
        row = {"id": f["id"], "tables": f["tables"], "finding": f["finding"], "thesis": _thesis_text(f),
               "experiment": f["experiment"]}
        df = by_experiment.get(f["experiment"])
        if df is None:
            row.update(ours=f"no {f['experiment']} run given", verdict="not checked")
        else:
            d = study_rows(df, impl)
            if d.empty:
                row.update(ours="no fp32 NCHW row measured" + (f" for {impl}" if impl else ""), verdict="not checked")
            else:
                impls = ", ".join(sorted(set(d["impl"])))
                ours, verdict = CHECKS[f["id"]](d, f)
                row.update(ours=f"{ours} [{impls}]", verdict=verdict)
        out.append(row)
    return out


def format_findings(rows: list[dict[str, Any]]) -> str:
    held = sum(r["verdict"] == HOLDS for r in rows)
    failed = sum(r["verdict"] == FAILS for r in rows)
    return ("# The studies' findings on this GPU\n\n"
            + markdown_table(["finding", "thesis tables", "thesis", "ours", "holds?"],
                             [[r["finding"], r["tables"], r["thesis"], r["ours"], r["verdict"]] for r in rows])
            + f"\n\n{held} hold, {failed} do not, {len(rows) - held - failed} not checked.\n")
