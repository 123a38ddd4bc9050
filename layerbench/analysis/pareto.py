"""The time/energy Pareto front per layer point, the best setting under a latency limit, and the
inference study's latency/energy "revenue" score (``layerbench pareto``).

A *layer point* is the layer with its parameters, batch size excepted: within one point the
candidates are every measured (implementation, dtype, layout, batch size, GPU setting) row.

* **Front**: a candidate is on the front when no other one is at least as fast *and* uses at most as
  much energy, and strictly better in one of them.  Time and energy are per launch, or with
  ``per_image`` per image (batch element): time / batch and J / batch; across batch sizes only the
  per-image basis compares like with like.
* **Latency limit** (s): the lowest-energy candidate whose time (per launch, or per image) meets it.
* **Revenue** (study C, "Energy efficiency of CNN inference on high-performance GPUs", 2020, which
  picked the batch size and DVFS setting maximising a latency/energy revenue):
  ``revenue = (images per joule) x min(1, L / t) ** beta`` with ``t`` the time per launch (the
  latency each image of the batch sees), ``L`` the latency limit (default: the fastest candidate's
  time per launch) and ``beta`` the latency weight (default 2).  Within the limit a candidate earns
  its energy efficiency; beyond it the revenue falls as (L/t)^beta.  ``beta = 0`` is pure energy
  efficiency.  ``gain`` is the best revenue over the *default*'s: the point's reference
  implementation at fp32 and NCHW, without changed GPU settings (or the first row measured).

Rows count only with status ``ok`` and a positive time; energy is the device's J/launch
(``energy_j_per_launch``), or with ``energy="system"`` device + RAPL host (``system_j_per_launch``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from layerbench.analysis.compare import PASS_AXES
from layerbench.analysis.tables import fmt_number, markdown_table
from layerbench.layers import LAYERS
from layerbench.measure.energy import derived_metrics, per_image_metrics
from layerbench.sweep import SETTINGS_AXES

DEFAULT_BETA = 2.0
ENERGY_COLUMNS = {"device": "energy_j_per_launch", "system": "system_j_per_launch"}
SETTING_LABELS = {"sm_clock_mhz": "sm", "memory_clock_mhz": "mem", "power_limit_w": "P"}


def with_metrics(df: pd.DataFrame) -> pd.DataFrame:
    """The run's table with the derived energy metrics filled in where a row has energy but not the
    metric (runs recorded before a metric existed); the formulas are those of the records."""
    out = df.copy()
    if "energy_j_per_launch" not in out.columns:
        return out
    cols = ("j_per_gflop", "gflops_per_w", "edp_js", "j_per_image", "system_j_per_launch", "system_j_per_image")
    for c in cols:
        if c not in out.columns:
            out[c] = math.nan
    for i, r in out.iterrows():
        j = _num(r.get("energy_j_per_launch"))
        if not (j > 0) or all(_num(r.get(c)) == _num(r.get(c)) for c in cols):
            continue
        t, flops = _num(r.get("time_median_s")), _num(r.get("flops"))
        m = derived_metrics(j, t if t > 0 else 0.0, int(flops) if flops == flops else 0)
        batch = _num(r.get("batch"))
        m.update(per_image_metrics(j, _opt(r.get("energy_host_j_per_launch")), int(batch) if batch > 0 else None))
        for c in cols:
            if not _num(r.get(c)) == _num(r.get(c)) and m.get(c) is not None:
                out.at[i, c] = m[c]
    return out


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def _opt(v: Any) -> float | None:
    f = _num(v)
    return f if math.isfinite(f) else None


def point_key_columns(df: pd.DataFrame) -> list[str]:
    """The columns that name a layer point: name, layer, the layers' parameters except the batch, and
    any other swept axis (not batch, not a GPU setting)."""
    params = {f for cls in LAYERS.values() for f in cls.__dataclass_fields__} - {"batch"}
    cols = [c for c in ("name", "layer") if c in df.columns]
    cols += sorted(c for c in df.columns if c in params)
    skip = {"axis_batch"} | {f"axis_{a}" for a in SETTINGS_AXES}
    cols += sorted(c for c in df.columns if c.startswith("axis_") and c not in skip
                   and c.removeprefix("axis_") not in params)
    return cols


def point_label(row: pd.Series, key: list[str]) -> str:
    """``conv1 conv2d`` or ``conv2d kernel=3``: the point's name, else its varying parameters."""
    name = row.get("name")
    layer = row.get("layer")
    # The swept values that tell this point from the others (a swept layer parameter too, as pooling's
    # method), but not the batch or a GPU setting: those are the candidates of one point.
    skip = {"axis_batch"} | {f"axis_{a}" for a in SETTINGS_AXES}
    axes = [f"{c.removeprefix('axis_')}={row[c]}" for c in row.index
            if c.startswith("axis_") and c not in skip and pd.notna(row[c])]
    direction = row.get("direction")
    if isinstance(direction, str) and direction != "forward" and not any(a in row.index for a in PASS_AXES):
        axes.append(f"pass={direction}")  # a pass set per point or per file, not swept
    if isinstance(name, str) and name:
        return " ".join([f"{name} ({layer})", *axes])
    return " ".join([str(layer), *axes])


def candidate_label(row: pd.Series) -> str:
    """``triton bf16 NHWC b=64 sm=990 P=300``: what tells the candidates of one point apart."""
    parts = [str(row.get("impl")), str(row.get("dtype")), str(row.get("layout"))]
    if pd.notna(row.get("batch")):
        parts.append(f"b={int(row['batch'])}")
    for axis, short in SETTING_LABELS.items():
        v = row.get(f"setting_{axis}", row.get(f"axis_{axis}"))
        if v is not None and pd.notna(v):
            parts.append(f"{short}={v:g}" if isinstance(v, float) else f"{short}={v}")
    return " ".join(parts)


def front_mask(times: list[float], energies: list[float]) -> list[bool]:
    """Whether each (time, energy) is Pareto-optimal (nobody at least as good in both, better in one).

    A candidate whose energy was not measured (NaN) cannot be weighed against one whose energy was:
    where any candidate has energy, the front is over those; where none has, only the fastest is on it.
    """
    measured = [not math.isnan(e) for e in energies]
    if not any(measured):
        fastest = min(range(len(times)), key=lambda i: (times[i], i))
        return [i == fastest for i in range(len(times))]
    out = []
    for i, (t, e) in enumerate(zip(times, energies)):
        out.append(measured[i] and not any(
            measured[k] and t2 <= t and e2 <= e and (t2 < t or e2 < e)
            for k, (t2, e2) in enumerate(zip(times, energies)) if k != i))
    return out


@dataclass
class ParetoResult:
    """The candidates of every point (a table with columns point, candidate, time, energy, on_front,
    revenue, pick) and per point the pick under the limit or score."""

    table: pd.DataFrame
    per_image: bool
    energy: str
    latency_limit: float | None
    score: bool
    beta: float
    notes: list[str]


def pareto(df: pd.DataFrame, per_image: bool = False, latency_limit: float | None = None,
           score: bool = False, beta: float = DEFAULT_BETA, energy: str = "device") -> ParetoResult:
    """Every point's candidates with the front, the latency-limited pick and the revenue score."""
    if energy not in ENERGY_COLUMNS:
        raise ValueError(f"energy must be one of {', '.join(ENERGY_COLUMNS)}, got {energy!r}")
    df = with_metrics(df)
    ok = df[(df["status"] == "ok")] if "status" in df.columns else df
    ok = ok[pd.to_numeric(ok.get("time_median_s"), errors="coerce") > 0]
    notes: list[str] = []
    ecol = ENERGY_COLUMNS[energy]
    if ecol not in ok.columns or not pd.to_numeric(ok[ecol], errors="coerce").gt(0).any():
        notes.append(f"no {energy} energy was measured in this run ({ecol}): the front is the fastest "
                     "candidate, and no latency limit or score can weigh energy")
    key = point_key_columns(ok)
    rows: list[dict[str, Any]] = []
    for _, g in ok.groupby(key, dropna=False, sort=False) if key else [((), ok)]:
        g = g.sort_values("point_index") if "point_index" in g.columns else g
        batch = [(_num(b) if _num(b) > 0 else 1.0) for b in g.get("batch", pd.Series([1.0] * len(g)))]
        t_launch = [_num(v) for v in g["time_median_s"]]
        e_launch = [_num(v) if _num(v) > 0 else math.nan for v in (g[ecol] if ecol in g.columns else [math.nan] * len(g))]
        div = batch if per_image else [1.0] * len(g)
        times = [t / d for t, d in zip(t_launch, div)]
        energies = [e / d for e, d in zip(e_launch, div)]
        on = front_mask(times, energies)
        first = g.iloc[0]
        label = point_label(first, key)
        limit_l = latency_limit if latency_limit is not None else min(t_launch)
        revenue = [(b / e) * min(1.0, limit_l / t) ** beta if e > 0 else math.nan
                   for b, e, t in zip(batch, e_launch, t_launch)]
        default = _default_index(g)
        for i, (_, r) in enumerate(g.iterrows()):
            rows.append({"point": label, "candidate": candidate_label(r), "impl": r.get("impl"),
                         "dtype": r.get("dtype"), "layout": r.get("layout"), "batch": batch[i],
                         **{f"setting_{a}": r.get(f"setting_{a}", r.get(f"axis_{a}")) for a in SETTINGS_AXES},
                         "time_s": times[i], "energy_j": energies[i], "time_per_launch_s": t_launch[i],
                         "j_per_gflop": _num(r.get("j_per_gflop")), "gflops_per_w": _num(r.get("gflops_per_w")),
                         "on_front": on[i], "meets_limit": (latency_limit is None or times[i] <= latency_limit),
                         "revenue": revenue[i], "default": i == default, "pick": False, "gain": math.nan})
        block = rows[-len(g):]
        _choose(block, latency_limit, score)
    table = pd.DataFrame(rows)
    return ParetoResult(table, per_image, energy, latency_limit, score, beta, notes)


def _default_index(g: pd.DataFrame) -> int:
    """The default configuration: a reference at fp32/NCHW with no setting changed, else the first."""
    for i, (_, r) in enumerate(g.iterrows()):
        settings = [r.get(f"setting_{a}") for a in SETTINGS_AXES]
        if (bool(r.get("reference")) and r.get("dtype") == "fp32" and r.get("layout") == "NCHW"
                and all(s is None or (isinstance(s, float) and math.isnan(s)) for s in settings)):
            return i
    for i, (_, r) in enumerate(g.iterrows()):
        if bool(r.get("reference")) and r.get("dtype") == "fp32" and r.get("layout") == "NCHW":
            return i
    return 0


def _choose(block: list[dict[str, Any]], latency_limit: float | None, score: bool) -> None:
    """Mark the pick of one point: the best revenue (score), else the lowest energy within the limit."""
    if score:
        cands = [r for r in block if r["revenue"] == r["revenue"]]
        if cands:
            best = max(cands, key=lambda r: r["revenue"])
            best["pick"] = True
            base = next(r for r in block if r["default"])["revenue"]
            best["gain"] = best["revenue"] / base if base == base and base > 0 else math.nan
        return
    if latency_limit is None:
        return
    meet = [r for r in block if r["meets_limit"]]
    with_energy = [r for r in meet if r["energy_j"] == r["energy_j"]]
    if with_energy:
        min(with_energy, key=lambda r: r["energy_j"])["pick"] = True
    elif meet and not any(r["energy_j"] == r["energy_j"] for r in block):
        # No energy measured for this point at all: the fastest that meets the limit.
        min(meet, key=lambda r: r["time_s"])["pick"] = True
    # Else no pick: what meets the limit has no energy measured, so it cannot be called the lowest.


def format_pareto(res: ParetoResult, title: str, all_rows: bool = False) -> str:
    """Markdown: per point its front (or every candidate), and the pick with why."""
    unit = "image" if res.per_image else "launch"
    lines = [f"# Pareto fronts: {title}", ""]
    what = (f"time and {res.energy} energy per {unit}; a candidate is on the front when no other is "
            "both at least as fast and at most as costly")
    lines.append(what + ".")
    if res.score:
        lines.append(f"Score: revenue = images/J x min(1, L/t)^{res.beta:g} with t the time per launch and "
                     f"L = {'%g s' % res.latency_limit if res.latency_limit is not None else 'the fastest time per launch'}"
                     "; gain = the pick's revenue over the default's (reference fp32 NCHW, settings unchanged).")
    elif res.latency_limit is not None:
        lines.append(f"Latency limit: {res.latency_limit:g} s per {unit}: the pick (*) is the lowest-energy "
                     "candidate that meets it.")
    lines += [f"note: {n}" for n in res.notes]
    lines.append("")
    if res.table.empty:
        return "\n".join(lines + ["no measured rows (status ok with a time)"])
    headers = ["point", "candidate", f"time/{unit} (s)", f"energy/{unit} (J)", "J/GFLOP", "GFLOP/s/W",
               "front", "pick"] + (["revenue (img/J)", "gain"] if res.score else [])
    body = []
    for point, g in res.table.groupby("point", sort=False):
        shown = g if all_rows else g[g["on_front"] | g["pick"]]
        for _, r in shown.sort_values("time_s").iterrows():
            row = [point, r["candidate"], fmt_number(r["time_s"], ".4g"), fmt_number(r["energy_j"], ".4g"),
                   fmt_number(r["j_per_gflop"], ".4g"), fmt_number(r["gflops_per_w"], ".4g"),
                   "yes" if r["on_front"] else "", "*" if r["pick"] else ""]
            if res.score:
                row += [fmt_number(r["revenue"], ".4g"), fmt_number(r["gain"], ".3g")]
            body.append(row)
        if (res.latency_limit is not None or res.score) and not g["pick"].any():
            why = ("(none meets the limit)" if not g["meets_limit"].any() else
                   "(what meets the limit has no energy measured)")
            body.append([point, why, "", "", "", "", "", ""] + (["", ""] if res.score else []))
    lines.append(markdown_table(headers, body))
    return "\n".join(lines)
