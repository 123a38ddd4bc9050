"""Compare implementations within a run (custom vs reference) or one run with another.

Ratios are ``candidate / baseline`` of median time and of energy per launch, so < 1 means the
candidate is faster or uses less energy.  Each ratio carries an interval from the noise of both
measurements; the verdict is SAME when that interval includes 1 (or the ratio is within
``threshold`` of 1), else FASTER/SLOWER (time) or LESS/MORE (energy).

* Time interval: each median +- half its IQR; the interval is the extreme quotients.
* Energy: the implementations were measured in interleaved windows (A B A B ...), so window i
  of A pairs with window i of B (``layerbench.energy.pairwise_ratios``): the ratio is the median
  per-window quotient and the interval spans them.  Across runs, or without window values, it is
  the quotient of J/launch with each side +- half its relative window spread, like the IQR.

Only rows with status "ok" take part: incorrect results are never compared.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Iterable

import pandas as pd

DEFAULT_THRESHOLD = 0.01


@dataclass(frozen=True)
class Ratio:
    ratio: float
    lo: float
    hi: float

    def verdict(self, threshold: float, words: tuple[str, str] = ("FASTER", "SLOWER")) -> str:
        if not math.isfinite(self.ratio):
            return "n/a"
        if self.lo <= 1.0 <= self.hi or abs(self.ratio - 1.0) < threshold:
            return "SAME"
        return words[0] if self.ratio < 1.0 else words[1]


NAN_RATIO = Ratio(math.nan, math.nan, math.nan)


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def interval_ratio(a: float, a_width: float, b: float, b_width: float) -> Ratio:
    """a / b with a in [a -+ a_width/2] and b in [b -+ b_width/2]."""
    a, b, aw, bw = _num(a), _num(b), _num(a_width), _num(b_width)
    if not (a > 0 and b > 0):
        return NAN_RATIO
    aw = aw if math.isfinite(aw) else 0.0
    bw = bw if math.isfinite(bw) else 0.0
    lo_b = b - bw / 2
    hi = (a + aw / 2) / lo_b if lo_b > 0 else math.inf
    return Ratio(a / b, max(a - aw / 2, 0.0) / (b + bw / 2), hi)


def _windows(v: Any) -> list[float]:
    if isinstance(v, str):
        v = json.loads(v)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return []
    return [_num(x) for x in v]


def time_ratio(a: pd.Series, b: pd.Series) -> Ratio:
    return interval_ratio(a.get("time_median_s"), a.get("time_iqr_s"),
                          b.get("time_median_s"), b.get("time_iqr_s"))


def energy_ratio(a: pd.Series, b: pd.Series, paired: bool) -> Ratio:
    """Energy per launch a / b; ``paired`` when both were measured in the same interleaved run."""
    ja, jb = _num(a.get("energy_j_per_launch")), _num(b.get("energy_j_per_launch"))
    if not (ja > 0 and jb > 0):
        return NAN_RATIO
    wa, wb = _windows(a.get("energy_j_per_launch_windows")), _windows(b.get("energy_j_per_launch_windows"))
    if paired and wa and len(wa) == len(wb) and all(x > 0 for x in wa + wb):
        from layerbench.measure.energy import pairwise_ratios

        # pairwise_ratios reads only the per-window values of each side.
        r = pairwise_ratios(SimpleNamespace(j_per_launch_windows=wa), SimpleNamespace(j_per_launch_windows=wb))
        return Ratio(r["ratio"], r["min"], r["max"])
    sa, sb = _num(a.get("energy_spread")), _num(b.get("energy_spread"))
    return interval_ratio(ja, ja * sa if math.isfinite(sa) else 0.0, jb,
                          jb * sb if math.isfinite(sb) else 0.0)


POINT_COLUMNS = ("name", "layer", "dtype", "layout")


def point_columns(df: pd.DataFrame) -> list[str]:
    """Columns that tell points apart in a table: label, swept axes, layer, dtype, layout."""
    axes = [c for c in df.columns if c.startswith("axis_")]
    cols = [c for c in POINT_COLUMNS if c in df.columns and df[c].notna().any()]
    return cols[:1] + axes + cols[1:]


def _row(point: pd.Series, base: pd.Series, cols: list[str], impl: str, baseline: str, t: Ratio,
         e: Ratio, threshold: float) -> dict[str, Any]:
    out = {c: point.get(c) for c in cols}
    out.update(point_hash=point.get("point_hash"), impl=impl, baseline=baseline,
               j_per_gflop=_num(point.get("j_per_gflop")), base_j_per_gflop=_num(base.get("j_per_gflop")),
               time_ratio=t.ratio, time_lo=t.lo, time_hi=t.hi, time_verdict=t.verdict(threshold),
               energy_ratio=e.ratio, energy_lo=e.lo, energy_hi=e.hi,
               energy_verdict=e.verdict(threshold, ("LESS", "MORE")))
    return out


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"] if "status" in df.columns else df


def compare_within(df: pd.DataFrame, baselines: Iterable[str] | None = None,
                   threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """Each non-reference implementation against each reference one, per point."""
    ok = _ok(df)
    cols = point_columns(df)
    rows = []
    wanted = set(baselines) if baselines else None
    for _, group in ok.groupby("point_hash", sort=False):
        is_ref = group["reference"].fillna(False).astype(bool) if "reference" in group else False
        refs = group[is_ref] if wanted is None else group[group["impl"].isin(wanted)]
        cands = group[~group["impl"].isin(refs["impl"])] if wanted is not None else group[~is_ref]
        for _, b in refs.iterrows():
            for _, a in cands.iterrows():
                paired = bool(a.get("energy_requested")) and bool(b.get("energy_requested"))
                rows.append(_row(a, b, cols, a["impl"], b["impl"], time_ratio(a, b),
                                 energy_ratio(a, b, paired), threshold))
    return pd.DataFrame(rows)


def compare_runs(df_a: pd.DataFrame, df_b: pd.DataFrame,
                 threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """Run B against run A, row by row, matched by config hash (environment excluded)."""
    a = _ok(df_a).drop_duplicates("config_hash", keep="last").set_index("config_hash")
    b = _ok(df_b).drop_duplicates("config_hash", keep="last").set_index("config_hash")
    cols = point_columns(df_a)
    rows = []
    for h in [h for h in b.index if h in a.index]:
        ra, rb = a.loc[h], b.loc[h]
        rows.append(_row(rb, ra, cols, rb["impl"], "run A", time_ratio(rb, ra),
                         energy_ratio(rb, ra, paired=False), threshold))
    return pd.DataFrame(rows)


def geomean(values: Iterable[float]) -> float:
    v = [x for x in values if isinstance(x, (int, float)) and math.isfinite(x) and x > 0]
    return math.exp(sum(math.log(x) for x in v) / len(v)) if v else math.nan


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (implementation, baseline): geometric-mean ratios and verdict counts."""
    rows = []
    if table.empty:
        return pd.DataFrame(rows)
    for (impl, base), g in table.groupby(["impl", "baseline"], sort=True):
        tv, ev = g["time_verdict"].value_counts(), g["energy_verdict"].value_counts()
        rows.append({"impl": impl, "baseline": base, "points": len(g),
                     "time_geomean": geomean(g["time_ratio"]),
                     "faster": int(tv.get("FASTER", 0)), "same": int(tv.get("SAME", 0)),
                     "slower": int(tv.get("SLOWER", 0)),
                     "energy_geomean": geomean(g["energy_ratio"]),
                     "less": int(ev.get("LESS", 0)), "energy_same": int(ev.get("SAME", 0)),
                     "more": int(ev.get("MORE", 0))})
    return pd.DataFrame(rows)


def _fmt_ratio(r: float, lo: float, hi: float) -> str:
    if not math.isfinite(r):
        return "-"
    return f"{r:.3f} [{lo:.3f}, {hi:.3f}]"


def format_comparison(table: pd.DataFrame, title: str) -> str:
    """Markdown: the per-point table, then the geometric means."""
    from layerbench.analysis.report import markdown_table

    if table.empty:
        return f"## {title}\n\nNothing to compare (no pair of correct results).\n"
    point_cols = [c for c in table.columns if c in POINT_COLUMNS or c.startswith("axis_")]
    headers = [c.removeprefix("axis_") for c in point_cols] + [
        "impl", "vs", "time ratio [interval]", "time", "energy ratio [interval]", "energy",
        "J/GFLOP impl / vs"]
    rows = [[_cell(r[c]) for c in point_cols] + [
        r["impl"], r["baseline"], _fmt_ratio(r["time_ratio"], r["time_lo"], r["time_hi"]),
        r["time_verdict"], _fmt_ratio(r["energy_ratio"], r["energy_lo"], r["energy_hi"]),
        r["energy_verdict"], _fmt_pair(r["j_per_gflop"], r["base_j_per_gflop"])]
        for _, r in table.iterrows()]
    s = summary(table)
    srows = [[r["impl"], r["baseline"], r["points"], _fmt(r["time_geomean"]),
              f"{r['faster']}/{r['same']}/{r['slower']}", _fmt(r["energy_geomean"]),
              f"{r['less']}/{r['energy_same']}/{r['more']}"] for _, r in s.iterrows()]
    return (f"## {title}\n\nRatios are candidate / baseline (< 1: faster, less energy).\n\n"
            + markdown_table(headers, rows) + "\n\n### Geometric means\n\n"
            + markdown_table(["impl", "vs", "points", "time ratio", "faster/same/slower",
                              "energy ratio", "less/same/more"], srows) + "\n")


def _fmt_pair(a: float, b: float) -> str:
    if not (math.isfinite(a) and math.isfinite(b)):
        return "-"
    return f"{a:.3g} / {b:.3g}"


def _fmt(v: float) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) and math.isfinite(v) else "-"


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v)
