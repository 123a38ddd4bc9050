"""Compare implementations within a run (custom vs reference) or one run with another.

Ratios are ``candidate / baseline`` of median time and of energy per launch, so < 1 means the
candidate is faster or uses less energy.  Each ratio carries an interval from the noise of both
measurements; the verdict is SAME when that interval includes 1 (or the ratio is within
``threshold`` of 1), else FASTER/SLOWER (time) or LESS/MORE (energy).

* Time interval: each median +- half its IQR; the interval is the extreme quotients.
* Energy: the implementations were measured in interleaved windows (A B A B ...), so window i
  of A pairs with window i of B (``stats.paired_ratio``): the ratio is the median
  per-window quotient and the interval spans them.  Across runs, or without window values, it is
  the quotient of J/launch with each side +- half its relative window spread, like the IQR.

Only rows with status "ok" take part: incorrect results are never compared.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import pandas as pd

from layerbench.analysis.stats import (DEFAULT_THRESHOLD, NAN_RATIO, Ratio, geomean, interval_ratio,
                                       paired_ratio, to_float, window_values)
from layerbench.analysis.tables import fmt_cell, fmt_interval, fmt_number, fmt_pair, markdown_table
from layerbench.measure.energy_flags import flags_of, legend, marked


def time_ratio(a: pd.Series, b: pd.Series) -> Ratio:
    return interval_ratio(a.get("time_median_s"), a.get("time_iqr_s"),
                          b.get("time_median_s"), b.get("time_iqr_s"))


def energy_ratio(a: pd.Series, b: pd.Series, paired: bool) -> Ratio:
    """Energy per launch a / b; ``paired`` when both were measured in the same interleaved run."""
    ja, jb = to_float(a.get("energy_j_per_launch")), to_float(b.get("energy_j_per_launch"))
    if not (ja > 0 and jb > 0):
        return NAN_RATIO
    wa = window_values(a.get("energy_j_per_launch_windows"))
    wb = window_values(b.get("energy_j_per_launch_windows"))
    if paired and wa and len(wa) == len(wb) and all(x > 0 for x in wa + wb):
        return paired_ratio(wa, wb)
    sa, sb = to_float(a.get("energy_spread")), to_float(b.get("energy_spread"))
    return interval_ratio(ja, ja * sa if math.isfinite(sa) else 0.0, jb,
                          jb * sb if math.isfinite(sb) else 0.0)


POINT_COLUMNS = ("name", "layer", "dtype", "layout")
# The axes that sweep the pass (sweep files write ``pass``, or the field's own name ``direction``).
PASS_AXES = ("axis_pass", "axis_direction")


def pass_columns(df: pd.DataFrame) -> list[str]:
    """``["direction"]`` where the run has passes other than forward and no axis shows them (a pass
    set per point, or for the whole file), else none: a forward-only run reads as it always did."""
    if "direction" not in df.columns or any(c in df.columns for c in PASS_AXES):
        return []
    return ["direction"] if (df["direction"].fillna("forward") != "forward").any() else []


def column_title(column: str) -> str:
    """A column's header: an axis by its name, the direction by what sweep files call it."""
    return "pass" if column == "direction" else column.removeprefix("axis_")


def point_columns(df: pd.DataFrame) -> list[str]:
    """Columns that tell points apart in a table: label, swept axes, the pass, layer, dtype, layout."""
    axes = [c for c in df.columns if c.startswith("axis_")]
    cols = [c for c in POINT_COLUMNS if c in df.columns and df[c].notna().any()]
    return cols[:1] + axes + pass_columns(df) + cols[1:]


def _row(point: pd.Series, base: pd.Series, cols: list[str], impl: str, baseline: str, t: Ratio,
         e: Ratio, threshold: float) -> dict[str, Any]:
    out = {c: point.get(c) for c in cols}
    out.update(point_hash=point.get("point_hash"), impl=impl, baseline=baseline,
               j_per_gflop=to_float(point.get("j_per_gflop")),
               base_j_per_gflop=to_float(base.get("j_per_gflop")),
               time_ratio=t.ratio, time_lo=t.lo, time_hi=t.hi, time_verdict=t.verdict(threshold),
               energy_ratio=e.ratio, energy_lo=e.lo, energy_hi=e.hi,
               energy_verdict=e.verdict(threshold, ("LESS", "MORE")),
               # A ratio is only as clean as both of its measurements (names joined by commas: CSV-friendly).
               energy_flags=(",".join(sorted(set(flags_of(point.get("energy_flags")))
                                             | set(flags_of(base.get("energy_flags")))))
                             if math.isfinite(e.ratio) else ""))
    return out


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"] if "status" in df.columns else df


def compare_within(df: pd.DataFrame, baselines: Iterable[str] | None = None,
                   threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """Each non-reference implementation against each reference one, per point."""
    if df.empty or "point_hash" not in df.columns:
        return pd.DataFrame()
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
    if df_a.empty or df_b.empty:
        return pd.DataFrame()
    a = _ok(df_a).drop_duplicates("config_hash", keep="last").set_index("config_hash")
    b = _ok(df_b).drop_duplicates("config_hash", keep="last").set_index("config_hash")
    cols = point_columns(df_a)
    rows = []
    for h in [h for h in b.index if h in a.index]:
        ra, rb = a.loc[h], b.loc[h]
        rows.append(_row(rb, ra, cols, rb["impl"], "run A", time_ratio(rb, ra),
                         energy_ratio(rb, ra, paired=False), threshold))
    return pd.DataFrame(rows)


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


def format_comparison(table: pd.DataFrame, title: str) -> str:
    """Markdown: the per-point table, then the geometric means."""
    if table.empty:
        return f"## {title}\n\nNothing to compare (no pair of correct results).\n"
    point_cols = [c for c in table.columns if c in POINT_COLUMNS or c == "direction" or c.startswith("axis_")]
    headers = [column_title(c) for c in point_cols] + [
        "impl", "vs", "time ratio [interval]", "time", "energy ratio [interval]", "energy",
        "J/GFLOP impl / vs"]
    rows = [[fmt_cell(r[c]) for c in point_cols] + [
        r["impl"], r["baseline"], fmt_interval(r["time_ratio"], r["time_lo"], r["time_hi"]),
        r["time_verdict"], fmt_interval(r["energy_ratio"], r["energy_lo"], r["energy_hi"]),
        marked(r["energy_verdict"], r["energy_flags"]), fmt_pair(r["j_per_gflop"], r["base_j_per_gflop"])]
        for _, r in table.iterrows()]
    s = summary(table)
    srows = [[r["impl"], r["baseline"], r["points"], fmt_number(r["time_geomean"], ".3f"),
              f"{r['faster']}/{r['same']}/{r['slower']}", fmt_number(r["energy_geomean"], ".3f"),
              f"{r['less']}/{r['energy_same']}/{r['more']}"] for _, r in s.iterrows()]
    flags = legend(table["energy_flags"])
    return (f"## {title}\n\nRatios are candidate / baseline (< 1: faster, less energy).\n\n"
            + markdown_table(headers, rows) + (f"\n\n{flags}" if flags else "") + "\n\n### Geometric means\n\n"
            + markdown_table(["impl", "vs", "points", "time ratio", "faster/same/slower",
                              "energy ratio", "less/same/more"], srows) + "\n")
