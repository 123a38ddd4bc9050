"""Markdown report and plots of a run, laid out like the thesis tables.

For each table (one per combination of the dimensions that are not plotted: point name, other
axes, dtype, layout) the rows are the swept values and each implementation gets three columns:
time per launch, average power, energy per launch (the device's: GPU power on a GPU run, the CPU
package's on a CPU run), custom kernels first and references last.  A PNG per table plots the same
quantities against the swept value, one line per implementation; a quantity spanning two decades
or more gets a log axis, an integer axis integer ticks, and points of unrelated layers are not
joined by lines.  The x axis is the sweep's first axis, or the point name for a list of layers
(then a "sum" row adds the layers up, as thesis Table 5-1 does).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator

from layerbench.analysis.compare import PASS_AXES, column_title, compare_within, format_comparison, pass_columns
from layerbench.analysis.stats import spans_decades
from layerbench.analysis.tables import fmt_cell, fmt_number, markdown_table, unit_scale
from layerbench.measure.energy_flags import legend, marked
from layerbench.results import rundir as results
from layerbench.results.rundir import RunDir

METRICS = (("time_median_s", "time", "s"), ("energy_avg_power_w", "power", "W"),
           ("energy_j_per_launch", "energy", "J"))


def x_column(df: pd.DataFrame, axes: Sequence[str]) -> str:
    """The plotted column: the first swept axis that is not the pass (passes make tables of their
    own, as the thesis's layer breakdown is one table per mode), else the point name, else the pass."""
    present = [f"axis_{a}" for a in axes if f"axis_{a}" in df.columns]
    for a in present:
        if a not in PASS_AXES:
            return a
    if "name" in df.columns and df["name"].notna().any():
        return "name"
    return present[0] if present else "layer"


def group_columns(df: pd.DataFrame, x: str) -> list[str]:
    """The columns whose values make one table each: the other axes, the pass, the name, layer,
    dtype and layout (those that vary or are named)."""
    cols = [c for c in df.columns if c.startswith("axis_") and c != x] + pass_columns(df)
    named = "name" in df.columns and df["name"].notna().any()
    for c in ("name", "layer", "dtype", "layout"):
        # A named point implies its layer; a list of layers is one table, as in thesis Table 5-1.
        if c != x and c in df.columns and df[c].notna().any() and not (c == "layer" and named):
            cols.append(c)
    return cols


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "table"


def _x_values(g: pd.DataFrame, x: str) -> list[Any]:
    return list(g.sort_values("point_index")[x].drop_duplicates())


def _numeric(values: Sequence[Any]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None


def _metrics(g: pd.DataFrame) -> list[tuple[str, str, str]]:
    """Time always; power and energy where this table has any (not on a CPU, not with energy off)."""
    return [m for m in METRICS if m[0] == "time_median_s" or (m[0] in g.columns and g[m[0]].notna().any())]


def _table(g: pd.DataFrame, x: str, impls: list[str], sums: bool) -> tuple[list[str], list[list[str]]]:
    metrics = _metrics(g)
    scales = {}
    for col, _, unit in metrics:
        vals = list(g[col]) if col in g.columns else []
        scales[col] = unit_scale(vals, unit)
    headers = [x.removeprefix("axis_")]
    for impl in impls:
        headers += [f"{impl} {label} ({scales[col][1]})" for col, label, _ in metrics]
    rows = []
    # A total is shown only when every layer the implementation runs has the value: a sum that
    # silently skipped an incorrect layer or a missing energy would read as the whole.
    totals: dict[tuple[str, str], float | None] = {(impl, col): 0.0 for impl in impls for col, _, _ in metrics}
    for xv in _x_values(g, x):
        row = [str(xv)]
        for impl in impls:
            sel = g[(g[x] == xv) & (g["impl"] == impl)]
            r = sel.iloc[-1] if len(sel) else None
            for col, _, _ in metrics:
                if r is None:  # the implementation does not run this layer (cuDNN on an FC layer)
                    row.append("")
                    continue
                ok = r["status"] == "ok"
                v = r.get(col) if ok else None
                text = fmt_number(v, scale=scales[col][0]) if ok else r["status"]
                if ok and col == "energy_j_per_launch":  # a flagged measurement says so where it is read
                    text = marked(text, r.get("energy_flags"))
                row.append(text)
                total = totals[(impl, col)]
                finite = isinstance(v, (int, float)) and math.isfinite(v)
                totals[(impl, col)] = total + v if total is not None and finite else None
        rows.append(row)
    if sums:
        row = ["sum"]
        for impl in impls:
            for col, _, _ in metrics:
                # Summed power is meaningless; the layers' total is time and energy.
                total = totals[(impl, col)]
                row.append("" if col == "energy_avg_power_w" else "-" if total is None
                           else fmt_number(total, scale=scales[col][0]))
        rows.append(row)
    return headers, rows


def implementation_order(df: pd.DataFrame) -> list[str]:
    """Custom implementations in the order the sweep lists them, then the references: the same
    column order in every table of a report."""
    order = list(dict.fromkeys(df.sort_values("point_index", kind="stable")["impl"]))
    refs: set[str] = set()
    if "reference" in df.columns:
        refs = set(df.loc[df["reference"].fillna(False).astype(bool), "impl"])
    return [i for i in order if i not in refs] + [i for i in order if i in refs]


def title_words(*parts: Any) -> str:
    """Parts joined with spaces, a word that is already there left out ("relu relu" reads "relu")."""
    words: list[str] = []
    for part in parts:
        if part is None or (isinstance(part, float) and math.isnan(part)):
            continue
        for w in str(part).split():
            if w.lower() not in (x.lower() for x in words):
                words.append(w)
    return " ".join(words)


def _integers(values: list[float]) -> bool:
    return all(float(v).is_integer() for v in values)


def figure(g: pd.DataFrame, x: str, impls: list[str], title: str) -> Figure | None:
    """Time, average power and energy against the swept value; None when nothing to plot."""
    ok = g[g["status"] == "ok"]
    panels = [m for m in _metrics(ok) if m[0] in ok.columns and ok[m[0]].notna().any()]
    if ok.empty or not panels:
        return None
    xs = _x_values(g, x)
    numeric = None if x in ("name", "layer") else _numeric(xs)
    # Points of a list of layers are unrelated: markers only, never a line from one to the next.
    style = {"marker": "o"} if numeric else {"marker": "o", "linestyle": "none"}
    fig = Figure(figsize=(4.2 * len(panels), 3.6))
    axs = fig.subplots(1, len(panels), squeeze=False)
    for ax, (col, label, unit) in zip(axs[0], panels):
        scale, shown = unit_scale(list(ok[col]), unit)
        for impl in impls:
            sel = ok[ok["impl"] == impl]
            pts = [(i, xv, sel[sel[x] == xv][col].iloc[-1]) for i, xv in enumerate(xs)
                   if (sel[x] == xv).any()]
            pts = [(i, xv, v) for i, xv, v in pts if isinstance(v, (int, float)) and math.isfinite(v)]
            if not pts:
                continue
            px = [numeric[i] if numeric else i for i, _, _ in pts]
            ax.plot(px, [v / scale for _, _, v in pts], label=impl, **style)
        if spans_decades(ok[col]):
            ax.set_yscale("log")
        if numeric:
            if spans_decades(numeric):
                ax.set_xscale("log")
            if _integers(numeric):
                if ax.get_xscale() == "log" or len(numeric) <= 12:
                    ax.xaxis.set_major_locator(FixedLocator(numeric))
                    ax.set_xticks(numeric, [str(int(v)) for v in numeric])
                    ax.xaxis.set_minor_locator(NullLocator())
                else:
                    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            ax.set_xticks(range(len(xs)), [str(v) for v in xs], rotation=45, ha="right")
        ax.set_xlabel(x.removeprefix("axis_"))
        ax.set_ylabel(f"{label} ({shown})")
        ax.grid(True, alpha=0.3)
    axs[0][0].legend(fontsize="small")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    return fig


def plot(g: pd.DataFrame, x: str, impls: list[str], title: str, path: Path) -> bool:
    """Write ``figure`` as a PNG; False when there was nothing to plot."""
    fig = figure(g, x, impls, title)
    if fig is None:
        return False
    fig.savefig(path, dpi=110)
    return True


def _measured_what(run: dict[str, Any], df: pd.DataFrame) -> str:
    """What the columns mean, in the words of this run's device (a CPU run has no GPU power)."""
    text = "Time is the median per launch"
    if any(c in df.columns and df[c].notna().any() for c in ("energy_avg_power_w", "energy_j_per_launch")):
        who = "GPU" if run.get("device", "cuda") == "cuda" else "CPU package (RAPL)"
        text += (f", power the average {who} power while the kernel ran back to back, energy the {who} "
                 "energy per launch (gross, idle included)")
    return text + ". A status word stands where a point did not run correctly."


def build_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write report.md (and its PNG plots) for a run; return the markdown path."""

    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    df = results.load_results(run_dir)
    if df.empty:
        raise ValueError(f"{run_dir}: the run has no records yet")
    run = RunDir(run_dir).read_meta() if (run_dir / results.RUN_FILE).exists() else {}
    axes = run.get("axes", [])
    x = x_column(df, axes)
    parts = [f"# {run.get('title', run_dir.name)}", ""]
    meta = [("experiment", run.get("experiment")), ("sweep file", run.get("sweep_file")),
            ("thesis tables", ", ".join(run.get("thesis", [])) or None), ("device", run.get("device")),
            ("records", len(df)),
            ("status", ", ".join(f"{k} {v}" for k, v in df["status"].value_counts().items()))]
    parts += [f"- **{k}**: {v}" for k, v in meta if v is not None]
    parts += ["", _measured_what(run, df), ""]
    impls = implementation_order(df)
    group_cols = group_columns(df, x)
    groups = df.groupby(group_cols, sort=False, dropna=False) if group_cols else [((), df)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        title = title_words(*key) or "all points"
        g_impls = [i for i in impls if i in set(g["impl"])]
        headers, rows = _table(g, x, g_impls, sums=x == "name" and len(_x_values(g, x)) > 1)
        parts += [f"## {title}", "", markdown_table(headers, rows), ""]
        png = out / f"{_slug(title)}.png"
        if plot(g, x, g_impls, title_words(run.get("experiment"), title), png):
            parts += [f"![{title}]({png.name})", ""]
    energy = df[(df["status"] == "ok") & df["energy_j_per_launch"].notna()] if "energy_j_per_launch" in df else df[:0]
    flags = legend(energy.get("energy_flags", []))
    parts += [flags, ""] if flags else []
    bad = df[df["status"] != "ok"]
    if not bad.empty:
        cols = [c for c in ("name", *[c for c in df.columns if c.startswith("axis_")], *pass_columns(df),
                            "dtype", "layout", "impl", "status", "message")
                if c in bad.columns and bad[c].notna().any()]
        parts += ["## Points that did not run correctly", "",
                  markdown_table([column_title(c) for c in cols],
                                 [[fmt_cell(r[c], 300) for c in cols] for _, r in bad.iterrows()]), ""]
    parts += [format_comparison(compare_within(df), "Custom kernels against the references"), ""]
    parts += _environment(run)
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path


def _environment(run: dict[str, Any]) -> list[str]:
    lines = ["## Environment", ""]
    for s in run.get("sessions", []):
        env = results.flatten("", s.get("environment") or {})
        lines += [f"<details><summary>session {s['index']}, started {s.get('started')}</summary>", "",
                  markdown_table(["key", "value"], [[k, json.dumps(v) if isinstance(v, (list, dict)) else v]
                                                    for k, v in env.items()]), "", "</details>", ""]
    return lines
