"""One self-contained HTML report of a run (``layerbench report RUN --html``).

Plotly's JavaScript is inlined once, so the file opens without a network.  Sections:

1. header: the run, its GPU, driver, power limit and the clocks measured during its energy windows;
2. per table of the markdown report (point name / other axes / dtype / layout): a thesis-style table
   (time, power, energy, J/GFLOP, GFLOP/s per W, J per image per implementation) and interactive
   plots of time, power, energy and J/GFLOP against the swept axis;
3. custom kernels against the references (``compare_within``): ratios per point and a plot;
4. the time/energy Pareto front of each layer point (``analysis.pareto``);
5. with ``against``: the cross-run (cross-GPU) comparison, each run's GPU, clocks and power limit in
   the header, per point the ratio of time, energy and J/GFLOP (``cross_gpu``);
6. with ``findings``: the thesis's published findings next to ours (``analysis.findings``).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from layerbench.analysis.compare import column_title, compare_within
from layerbench.analysis.cross_gpu import cross_gpu_table, run_header
from layerbench.analysis.pareto import ParetoResult, pareto, with_metrics
from layerbench.analysis.report import group_columns, implementation_order, title_words, x_column
from layerbench.analysis.tables import fmt_number
from layerbench.measure.energy_flags import legend, marked
from layerbench.results import rundir as results
from layerbench.results.rundir import RunDir

HTML_FILE = "report.html"
PLOT_METRICS = (("time_median_s", "time per launch (s)"), ("energy_avg_power_w", "average power (W)"),
                ("energy_j_per_launch", "energy per launch (J)"), ("j_per_gflop", "J/GFLOP"))
TABLE_METRICS = (("time_median_s", "time (s)"), ("energy_avg_power_w", "power (W)"),
                 ("energy_j_per_launch", "energy (J)"), ("j_per_gflop", "J/GFLOP"),
                 ("gflops_per_w", "GFLOP/s/W"), ("j_per_image", "J/image"), ("edp_js", "EDP (J s)"),
                 ("system_j_per_launch", "system J"))
MAX_PARETO_PLOTS = 40
STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1400px}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.85em}
th,td{border:1px solid #ccc;padding:.2em .5em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}.note{color:#555}.holds{color:#070}.fails{color:#b00}"""


def _e(v: Any) -> str:
    return html.escape(str(v))


def html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], classes: Sequence[str] | None = None) -> str:
    """An HTML table; ``classes`` gives each row a CSS class (e.g. holds / fails)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for i, r in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_e(v)}</td>" for v in r) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _fig_html(fig: go.Figure) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})


def _has(g: pd.DataFrame, col: str) -> bool:
    return col in g.columns and pd.to_numeric(g[col], errors="coerce").notna().any()


def _groups(df: pd.DataFrame, x: str) -> list[tuple[str, pd.DataFrame]]:
    cols = group_columns(df, x)
    if not cols:
        return [("all", df)]
    out = []
    for key, g in df.groupby(cols, dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        out.append((title_words(*[f"{column_title(c)}={k}" if c.startswith("axis_") or c == "direction" else k
                                  for c, k in zip(cols, key)]), g))
    return out


def metric_figure(g: pd.DataFrame, x: str, impls: list[str], title: str) -> go.Figure | None:
    """Time, power, energy and J/GFLOP against the swept axis, one line per implementation."""
    metrics = [m for m in PLOT_METRICS if _has(g, m[0])]
    if not metrics:
        return None
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[label for _, label in metrics])
    for k, (col, label) in enumerate(metrics, start=1):
        for j, impl in enumerate(impls):
            s = g[g["impl"] == impl].sort_values("point_index")
            vals = pd.to_numeric(s[col], errors="coerce")
            if vals.notna().any():
                fig.add_trace(go.Scatter(x=[str(v) for v in s[x]], y=list(vals), mode="lines+markers", name=impl,
                                         legendgroup=impl, showlegend=k == 1,
                                         line={"color": _color(j)}), row=1, col=k)
        positive = pd.to_numeric(g[col], errors="coerce")
        positive = positive[positive > 0]
        if len(positive) and positive.max() / positive.min() >= 100:
            fig.update_yaxes(type="log", row=1, col=k)
        fig.update_xaxes(title_text=x.removeprefix("axis_"), type="category", row=1, col=k)
    fig.update_layout(title=title, height=360, margin={"t": 70, "b": 40})
    return fig


def _color(i: int) -> str:
    palette = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
    return palette[i % len(palette)]


def thesis_table(g: pd.DataFrame, x: str, impls: list[str]) -> str:
    metrics = [m for m in TABLE_METRICS if _has(g, m[0])]
    headers = [x.removeprefix("axis_")] + [f"{impl} {label}" for impl in impls for _, label in metrics]
    rows = []
    for xv in list(g.sort_values("point_index")[x].drop_duplicates()):
        row: list[Any] = [xv]
        for impl in impls:
            r = g[(g[x] == xv) & (g["impl"] == impl)]
            for col, _ in metrics:
                v = r[col].iloc[0] if len(r) and col in r.columns else None
                row.append(fmt_number(v, ".4g") if r.empty or r["status"].iloc[0] == "ok"
                           else str(r["status"].iloc[0]))
        rows.append(row)
    return html_table(headers, rows)


def compare_section(df: pd.DataFrame) -> str:
    table = compare_within(df)
    if table.empty:
        return "<p class='note'>No custom/reference pair of correct results to compare.</p>"
    point_cols = [c for c in table.columns if c in ("name", "layer", "dtype", "layout") or c.startswith("axis_")]
    rows = [[" ".join(str(r[c]) for c in point_cols if pd.notna(r[c])), r["impl"], r["baseline"],
             fmt_number(r["time_ratio"], ".3f"), r["time_verdict"], fmt_number(r["energy_ratio"], ".3f"),
             marked(r["energy_verdict"], r["energy_flags"])] for _, r in table.iterrows()]
    text = html_table(["point", "impl", "vs", "time ratio", "time", "energy ratio", "energy"], rows)
    flags = legend(table["energy_flags"])
    text += f"<p class='note'>{html.escape(flags)}</p>" if flags else ""
    labels = [f"{r[0]} {r[1]}/{r[2]}" for r in rows]
    fig = go.Figure([go.Bar(name="time ratio", x=labels, y=list(table["time_ratio"])),
                     go.Bar(name="energy ratio", x=labels, y=list(table["energy_ratio"]))])
    fig.add_hline(y=1.0, line_dash="dot")
    fig.update_layout(barmode="group", title="custom / reference (< 1: faster, less energy)", height=420,
                      yaxis_type="log")
    return text + _fig_html(fig)


def pareto_figures(res: ParetoResult, limit: int = MAX_PARETO_PLOTS) -> list[go.Figure]:
    """Per point: every candidate (time, energy), the front as a line, the pick starred."""
    figs = []
    t = res.table
    if t.empty or not t["energy_j"].notna().any():
        return figs
    unit = "image" if res.per_image else "launch"
    for point, g in list(t.groupby("point", sort=False))[:limit]:
        g = g[g["energy_j"].notna()]
        if g.empty:
            continue
        fig = go.Figure()
        fig.add_trace(go.Scatter(x=list(g["time_s"]), y=list(g["energy_j"]), mode="markers", name="candidates",
                                 text=list(g["candidate"]), hovertemplate="%{text}<br>%{x:.4g} s, %{y:.4g} J"))
        f = g[g["on_front"]].sort_values("time_s")
        fig.add_trace(go.Scatter(x=list(f["time_s"]), y=list(f["energy_j"]), mode="lines+markers", name="front",
                                 text=list(f["candidate"]), hovertemplate="%{text}"))
        p = g[g["pick"]]
        if len(p):
            fig.add_trace(go.Scatter(x=list(p["time_s"]), y=list(p["energy_j"]), mode="markers", name="pick",
                                     marker={"symbol": "star", "size": 14}, text=list(p["candidate"])))
        if res.latency_limit is not None:
            fig.add_vline(x=res.latency_limit, line_dash="dot")
        fig.update_layout(title=f"{point}: Pareto front", xaxis_title=f"time per {unit} (s)",
                          yaxis_title=f"{res.energy} energy per {unit} (J)", height=380)
        figs.append(fig)
    return figs


def pareto_section(res: ParetoResult) -> str:
    parts = [f"<p class='note'>{_e(n)}</p>" for n in res.notes]
    t = res.table
    if t.empty:
        return "".join(parts) + "<p class='note'>No measured rows.</p>"
    unit = "image" if res.per_image else "launch"
    rows = [[r["point"], r["candidate"], fmt_number(r["time_s"], ".4g"), fmt_number(r["energy_j"], ".4g"),
             fmt_number(r["j_per_gflop"], ".4g"), fmt_number(r["gflops_per_w"], ".4g"), "*" if r["pick"] else ""]
            for _, r in t[t["on_front"] | t["pick"]].iterrows()]
    parts.append(html_table(["point", "candidate on the front", f"time/{unit} (s)", f"energy/{unit} (J)",
                             "J/GFLOP", "GFLOP/s/W", "pick"], rows))
    parts += [_fig_html(f) for f in pareto_figures(res)]
    return "".join(parts)


def cross_section(df_a: pd.DataFrame, df_b: pd.DataFrame, name_a: str, name_b: str) -> str:
    heads = [run_header(df_a, name_a), run_header(df_b, name_b)]
    keys = list(heads[0])
    parts = [html_table(["", *keys], [[h["run"], *[h[k] for k in keys]] for h in heads])]
    table = cross_gpu_table(df_a, df_b)
    if table.empty:
        return "".join(parts) + "<p class='note'>The runs share no correct result row (same config hash).</p>"
    parts.append(f"<p>Ratios are {_e(name_b)} / {_e(name_a)} (&lt; 1: {_e(name_b)} faster, less energy).</p>")
    rows = [[r["point"], r["impl"], fmt_number(r["time_ratio"], ".3f"), fmt_number(r["energy_ratio"], ".3f"),
             fmt_number(r["j_per_gflop_ratio"], ".3f")] for _, r in table.iterrows()]
    parts.append(html_table(["point", "impl", "time ratio", "energy ratio", "J/GFLOP ratio"], rows))
    labels = [f"{r['point']} {r['impl']}" for _, r in table.iterrows()]
    fig = go.Figure([go.Bar(name=n, x=labels, y=list(table[c])) for c, n in
                     (("time_ratio", "time"), ("energy_ratio", "energy"), ("j_per_gflop_ratio", "J/GFLOP"))])
    fig.add_hline(y=1.0, line_dash="dot")
    fig.update_layout(barmode="group", yaxis_type="log", height=420, title=f"{name_b} / {name_a}")
    parts.append(_fig_html(fig))
    return "".join(parts)


def findings_section(rows: list[dict[str, Any]]) -> str:
    table = [[r["id"], r["tables"], r["finding"], r["thesis"], r["ours"], r["verdict"]] for r in rows]
    classes = [{"holds": "holds", "does not hold": "fails"}.get(r["verdict"], "") for r in rows]
    return html_table(["id", "thesis tables", "finding", "thesis", "ours", "holds?"], table, classes)


def render_html(title: str, sections: list[tuple[str, str]], header: str = "") -> str:
    """The page: plotly's JS inlined once, then each (heading, body) section."""
    body = "".join(f"<h2>{_e(h)}</h2>\n{b}\n" for h, b in sections)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{STYLE}</style><script type='text/javascript'>{get_plotlyjs()}</script></head>"
            f"<body><h1>{_e(title)}</h1>{header}{body}</body></html>")


def build_html_report(run_dir: str | Path, out: str | Path | None = None, against: str | Path | None = None,
                      findings: list[dict[str, Any]] | None = None, per_image: bool = False) -> Path:
    """Write RUN/report/report.html (or ``out``); return its path."""
    run_dir = Path(run_dir)
    df = with_metrics(results.load_results(run_dir))
    try:
        meta = RunDir(run_dir).read_meta()
    except (OSError, ValueError):
        meta = {}
    title = f"{meta.get('title') or run_dir.name}"
    head = run_header(df, str(run_dir))
    header = html_table(list(head), [list(head.values())])
    if meta.get("thesis"):
        header += f"<p>Thesis tables: {_e(', '.join(meta['thesis']))}</p>"
    sections: list[tuple[str, str]] = []
    x = x_column(df, meta.get("axes") or [])
    impls = implementation_order(df)
    for name, g in _groups(df, x):
        part = thesis_table(g, x, [i for i in impls if i in set(g["impl"])])
        fig = metric_figure(g, x, [i for i in impls if i in set(g["impl"])], name)
        sections.append((name, part + (_fig_html(fig) if fig is not None else "")))
    sections.append(("Custom kernels against the references", compare_section(df)))
    sections.append(("Pareto fronts (time / energy)", pareto_section(pareto(df, per_image=per_image))))
    if against is not None:
        df_b = with_metrics(results.load_results(against))
        sections.append(("Cross-run comparison", cross_section(df, df_b, str(run_dir), str(against))))
    if findings is not None:
        sections.append(("The studies' findings on this GPU", findings_section(findings)))
    path = Path(out) if out is not None else run_dir / "report" / HTML_FILE
    if path.suffix != ".html":
        path = path / HTML_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(title, sections, header))
    return path


def write_pareto_html(res: ParetoResult, title: str, path: Path) -> Path:
    """``layerbench pareto --plot``: the fronts alone, as one self-contained page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(f"Pareto fronts: {title}", [("Pareto fronts", pareto_section(res))]))
    return path



def write_findings_html(rows: list[dict[str, Any]], path: Path) -> Path:
    """``layerbench findings --html``: the findings table as one page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html("The studies' findings on this GPU",
                                [("Published findings next to ours", findings_section(rows))]))
    return path
