"""``layerbench bench``: custom kernels against the card's ceilings and the references.

The bench is ordinary sweeps (``sweeps/bench/*.toml``: the thesis's sets, their backward passes, and the sets
of real networks: ResNet-50, VGG-16, MobileNetV2, transformer and classifier GEMMs) run by the normal runner — the same
correctness gate, timer, interleaved energy windows and resumable record log — plus the two
ceilings measured on the card (``layerbench.suites.ceilings``) and the performance targets of the
custom kernels, each judged per bench set by a geometric mean, and where it has a floor, on every point too.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from layerbench import sweep
from layerbench.analysis import compare
from layerbench.analysis.stats import geomean
from layerbench.analysis.tables import fmt_number, markdown_table
from layerbench.measure.energy_flags import flags_of, legend, marked
from layerbench.results import rundir as results
from layerbench.run.shared_configs import SharedConfigs
from layerbench.run.sweep_runner import RunOptions, SchedulerFactory, WorkerHandoff, run_sweep
from layerbench.suites import ceilings as ceil
from sweeps import SWEEP_DIR

BENCH_DIR = SWEEP_DIR / "bench"
# sweeps/bench/<name>.toml: the thesis's sets, the backward passes (of the thesis's pooling, ReLU and FC
# shapes, and of ResNet-50 and VGG-16 convolutions), then the networks' sets.
LAYERS = ("relu", "pool", "conv", "conv_sweeps", "linear", "relu_backward", "pool_backward", "conv_backward",
          "linear_backward", "resnet50", "vgg16", "mobilenetv2", "gemm")
CUSTOM = ("triton", "cupy")
MEMORY_BOUND = ("relu", "pool2d")  # judged in GB/s against the copy; the others in TFLOP/s
CEILINGS_FILE = "ceilings.json"
# The vendor results of a point: speedup targets against cuDNN / cuBLAS are judged against the best
# of them (x_best), so a reference short of its best cannot flatter a custom kernel.
VENDOR = ("cudnn", "cublas", "torch")
LIBRARY_REFERENCE = {"conv2d": "cudnn", "linear": "cublas"}  # checked against torch's result per point
# The library a target against the vendor names, by layer: a point without its correct result is
# judged against torch's alone, and the verdict says on how many.
TARGET_LIBRARY = {**LIBRARY_REFERENCE, "pool2d": "cudnn"}
NOT_AT_ITS_BEST = "reference not at its best"
NOT_AT_BEST = 1.03  # the reference is flagged where torch is faster by more than this factor
# A reference whose search kept torch's own call, or chose the very kernels torch launches, ran what
# the torch row ran: a gap between the two is the spread between two measurements, not a slower reference.
SAME_CALL_AS_TORCH = "torch"
SPREAD = "same kernels as torch: measurement spread"


@dataclass(frozen=True)
class Target:
    """The geometric mean of one column over a bench set's rows >= threshold, and every row >= floor."""
    text: str
    layer: str
    impl: str
    dtypes: tuple[str, ...]
    column: str  # ceiling: share of the copy bandwidth; sized_copy: of a copy of the same bytes; x_REF: speedup
    threshold: float
    experiment: str  # the bench set it judges
    floor: float | None = None
    direction: str = "forward"  # the pass whose rows it judges
    depthwise: bool = False  # judges depthwise convolutions only (the other targets never do)


MEMORY_DTYPES = ("fp32", "fp16", "bf16")
# The conv sets (MobileNetV2's pointwise layers; its depthwise ones have targets of their own) and
# the GEMM sets, with what the targets call them.
CONV_SETS = {"bench_conv": "L1-L6", "bench_conv_sweeps": "input-size, kernel-size, channel sweeps",
             "bench_resnet50": "ResNet-50", "bench_vgg16": "VGG-16", "bench_mobilenetv2": "MobileNetV2 pointwise"}
DEPTHWISE_SETS = {"bench_mobilenetv2": "MobileNetV2"}
GEMM_SETS = {"bench_linear": "AlexNet FC", "bench_gemm": "transformer, classifier GEMMs, GEMV"}
# (impl, dtype, geomean >= x_best, floor): Triton on tensor cores; CuPy fp32 is FFMA (no tensor cores).
CONV_RULES = (("triton", "bf16", 0.95, 0.75), ("triton", "fp16", 0.95, 0.75), ("triton", "tf32", 0.9, None),
              ("cupy", "fp32", 0.8, None), ("cupy", "fp16", 0.8, None), ("cupy", "bf16", 0.8, None))
LINEAR_RULES = (("triton", "bf16", 0.95), ("triton", "fp16", 0.95), ("triton", "tf32", 0.9), ("cupy", "bf16", 0.7),
                ("cupy", "fp16", 0.7))
# A depthwise conv has no GEMM to put on tensor cores: every dtype is judged, fp32 included.
DEPTHWISE_DTYPES = {i: ("fp32", "fp16", "bf16") for i in ("triton", "cupy")}
# What the backward passes are called in the targets' text (cuDNN's words for the conv passes).
CONV_PASSES = {"backward_data": "dgrad", "backward_weight": "wgrad"}
LINEAR_PASSES = {"backward_data": "dx", "backward_weight": "dW"}
ENERGY_BOUND = 1.0  # J/launch against the reference's, on every point where the custom kernel is as fast
TARGETS = (
    *(Target(f"ReLU {i} >= 95 % of copy bandwidth", "relu", i, MEMORY_DTYPES, "ceiling", 0.95, "bench_relu")
      for i in CUSTOM),
    *(t for i in CUSTOM for t in (
        Target(f"pool {i} >= 90 % of a same-size copy", "pool2d", i, MEMORY_DTYPES, "sized_copy", 0.9, "bench_pool",
               0.8),
        Target(f"pool {i} >= 1.5x ATen (torch)", "pool2d", i, MEMORY_DTYPES, "x_torch", 1.5, "bench_pool"),
        Target(f"pool {i} >= 1.0x cuDNN", "pool2d", i, MEMORY_DTYPES, "x_best", 1.0, "bench_pool"))),
    *(Target(f"conv {i} {d}{' (no tensor cores)' if d == 'fp32' else ''} >= {x:g}x cuDNN ({name})", "conv2d", i,
             (d,), "x_best", x, exp, floor) for exp, name in CONV_SETS.items() for i, d, x, floor in CONV_RULES),
    # Depthwise convolutions move little work per byte: judged as memory-bound layers, and against cuDNN.
    *(t for exp, name in DEPTHWISE_SETS.items() for i, ds in DEPTHWISE_DTYPES.items() for d in ds for t in (
        Target(f"depthwise conv {i} {d} >= 85 % of a same-size copy ({name})", "conv2d", i, (d,), "sized_copy", 0.85,
               exp, depthwise=True),
        Target(f"depthwise conv {i} {d} >= 1.2x cuDNN ({name})", "conv2d", i, (d,), "x_best", 1.2, exp,
               depthwise=True))),
    *(Target(f"linear {i} {d} >= {x:g}x cuBLAS ({name})", "linear", i, (d,), "x_best", x, exp)
      for exp, name in GEMM_SETS.items() for i, d, x in LINEAR_RULES),
    # The backward passes: gradients move the forward's bytes (ReLU, pooling: min_bytes counts each
    # pass's own traffic) or are GEMMs of the forward's size (conv, linear).
    *(Target(f"ReLU backward {i} >= 85 % of copy bandwidth", "relu", i, MEMORY_DTYPES, "ceiling", 0.85,
             "bench_relu_backward", direction="backward_data") for i in CUSTOM),
    *(Target(f"pool backward {i} >= 85 % of copy bandwidth", "pool2d", i, MEMORY_DTYPES, "ceiling", 0.85,
             "bench_pool_backward", direction="backward_data") for i in CUSTOM),
    *(Target(f"conv triton {word} bf16 >= 0.85x cuDNN (ResNet-50, VGG-16 layers)", "conv2d", "triton", ("bf16",),
             "x_best", 0.85, "bench_conv_backward", direction=d) for d, word in CONV_PASSES.items()),
    # The linear gradients are GEMMs of the forward's size: the forward's targets.
    *(Target(f"linear {word} {i} {dt} >= {x:g}x cuBLAS", "linear", i, (dt,), "x_best", x, "bench_linear_backward",
             direction=d) for d, word in LINEAR_PASSES.items() for i, dt, x in LINEAR_RULES),
)
# The bench sets the targets judge, each with its layer (its energy is judged against that layer's reference).
TARGETED = {t.experiment: t.layer for t in TARGETS}
ENERGY_REFERENCE = {"conv2d": "cudnn", "pool2d": "cudnn", "relu": "cudnn", "linear": "cublas"}


def directions(df: pd.DataFrame) -> pd.Series:
    """Each row's pass (rows recorded before passes existed are forward)."""
    if "direction" not in df:
        return pd.Series("forward", index=df.index)
    return df["direction"].fillna("forward")


def depthwise_rows(df: pd.DataFrame) -> pd.Series:
    """Which rows are depthwise convolutions (groups == in_channels > 1)."""
    if "groups" not in df or "in_channels" not in df:
        return pd.Series(False, index=df.index)
    groups = pd.to_numeric(df["groups"], errors="coerce")
    return (df["layer"] == "conv2d") & (groups > 1) & (groups == df["in_channels"])


def check_layers(layers: tuple[str, ...]) -> None:
    """ValueError naming ``--layers``' entries that are no bench set."""
    unknown = sorted(set(layers) - set(LAYERS))
    if unknown:
        raise ValueError(f"--layers must be among {', '.join(LAYERS)}, got {', '.join(unknown)}")


def bench_sets(layers: tuple[str, ...], where: str | None = None) -> list[sweep.Sweep]:
    """The bench sets ``layers``, each restricted to the rows ``where`` admits; ValueError naming an
    unknown set, a ``where`` the sweep language refuses, or one that admits no row at all."""
    check_layers(layers)
    sets = [sweep.load_sweep(BENCH_DIR / f"{layer}.toml") for layer in layers]
    if where is not None:
        for s in sets:
            s.restrict_where(where)
        if not any(s.points for s in sets):  # named before the ceilings take a minute of the GPU
            raise ValueError(f"--where {where!r} admits no row of {', '.join(layers)}")
    return sets


def run_bench(out: Path, device: str = "cuda", layers: tuple[str, ...] = LAYERS, resume: bool = False,
              energy: bool = True, progress: bool = True, where: str | None = None,
              scheduler: SchedulerFactory | None = None, ceilings_gpu: str | None = None) -> pd.DataFrame:
    """Measure (or, with ``resume``, complete) the bench in ``out``; return all its records.
    ``where``: a filter over every set's rows (``Sweep.restrict_where``), for a bench in parts.
    ``scheduler``: the sets' point groups spread over several GPUs (``--gpus``); ``ceilings_gpu``:
    the ``CUDA_VISIBLE_DEVICES`` entry of the GPU the ceilings are measured on (None: the first)."""
    sets = bench_sets(layers, where)
    out.mkdir(parents=True, exist_ok=True)
    if not (resume and (out / CEILINGS_FILE).exists()):
        measured = ceil.measure_apart(device, ceilings_gpu) | {"measured_at": results.timestamp()}
        (out / CEILINGS_FILE).write_text(json.dumps(measured, indent=1))
    frames = []
    shared = SharedConfigs()  # a config two bench sets hold is measured once
    handoff = WorkerHandoff()  # one worker goes on from set to set: one start, one CUDA initialisation
    try:
        for s in sets:
            if not energy:
                s.disable_energy()
            run_dir = run_sweep(s, RunOptions(device=device, out=out / s.experiment, resume=resume,
                                              progress=progress, shared=shared, scheduler=scheduler,
                                              handoff=handoff))
            frames.append(results.load_results(run_dir))
    finally:
        handoff.close()
    return pd.concat(frames, ignore_index=True)


def load_bench(out: Path) -> tuple[pd.DataFrame, dict]:
    """The records and ceilings of a bench directory."""
    # A run copied without its record log (results.jsonl) still has its parquet table.
    runs = sorted(p for p in out.iterdir() if p.is_dir() and any(
        (p / name).exists() for name in (results.RESULTS_FILE, results.PARQUET_FILE)))
    if not runs:
        raise ValueError(f"{out}: no bench runs here (run `layerbench bench --out {out}` first)")
    ceilings = json.loads((out / CEILINGS_FILE).read_text())
    df = pd.concat([results.load_results(r) for r in runs], ignore_index=True)
    if df.empty:
        raise ValueError(f"{out}: no row measured yet (`layerbench bench --out {out} --resume` measures them)")
    return df, ceilings


def _fraction_of_ceiling(row: pd.Series, ceilings: dict) -> float:
    if row["layer"] in MEMORY_BOUND:
        return row["gbps"] / ceilings["copy_gbps"]
    return row["tflops"] / ceilings["matmul_tflops"][row["dtype"]]


def _fraction_of_sized_copy(row: pd.Series, ceilings: dict) -> float:
    """Rate / the copy curve at the same bytes moved."""
    return row["gbps"] / ceil.copy_gbps_at(ceilings.get("copy_curve") or {}, row["min_bytes"])


def table(df: pd.DataFrame, ceilings: dict) -> pd.DataFrame:
    """One row per correct (point, implementation): time, rate, share of the ceiling, speedups, J."""
    ok = df[df["status"] == "ok"].copy()
    ok["ceiling"] = ok.apply(lambda r: _fraction_of_ceiling(r, ceilings), axis=1)
    # Memory-bound rows (ReLU, pooling, depthwise conv) against a copy of their bytes; NaN for the others.
    bound = ok["layer"].isin(MEMORY_BOUND) | depthwise_rows(ok)
    ok["sized_copy"] = [_fraction_of_sized_copy(r, ceilings) if b else math.nan
                        for (_, r), b in zip(ok.iterrows(), bound)]
    pairs = compare.compare_within(df)
    # Back to back, as the energy windows ran them (caches warm): the speed each J/launch belongs to.
    b2b = ok.groupby(["point_hash", "impl"])["energy_s_per_launch"].last() if "energy_s_per_launch" in ok else None
    for base in sorted(pairs["baseline"].unique()) if not pairs.empty else []:
        sub = pairs[pairs["baseline"] == base].set_index(["point_hash", "impl"])
        key = list(zip(ok["point_hash"], ok["impl"]))
        ok[f"x_{base}"] = [1 / sub["time_ratio"].get(k, math.nan) for k in key]
        ok[f"e_{base}"] = [sub["energy_ratio"].get(k, math.nan) for k in key]
        ok[f"eflags_{base}"] = [sub["energy_flags"].get(k, "") for k in key]  # either side's energy flags
        if b2b is not None:
            ok[f"xe_{base}"] = [b2b.get((h, base), math.nan) / s
                                for h, s in zip(ok["point_hash"], ok["energy_s_per_launch"])]
    vendor = ok[ok["impl"].isin(VENDOR)].groupby("point_hash")["time_median_s"].min()
    ok["x_best"] = ok["point_hash"].map(vendor) / ok["time_median_s"]
    correct = set(zip(ok["point_hash"], ok["impl"]))
    ok["library_ok"] = [layer not in TARGET_LIBRARY or (h, TARGET_LIBRARY[layer]) in correct
                        for h, layer in zip(ok["point_hash"], ok["layer"])]
    return ok


def references_vs_torch(tab: pd.DataFrame) -> pd.DataFrame:
    """Per conv and linear point: the library reference's time against torch's, and whether torch
    beats it by more than 3 % (the reference is then not at its best: a defect, not a result), or
    the reference ran torch's own call and the gap is the spread between two measurements of it."""
    rows = []
    for layer, ref in LIBRARY_REFERENCE.items():
        sel = tab[(tab["layer"] == layer) & tab["impl"].isin((ref, "torch"))]
        for _, group in sel.groupby("point_hash", sort=False):
            by = {r["impl"]: r for _, r in group.iterrows()}
            if ref not in by or "torch" not in by:
                continue
            r, t = by[ref], by["torch"]
            ratio = r["time_median_s"] / t["time_median_s"]
            path, name = r.get("detail_path"), r.get("name")
            d = r.get("direction")
            rows.append({"layer": layer, "experiment": r.get("experiment"),
                         "point": name if isinstance(name, str) else "",
                         "pass": d if isinstance(d, str) else "forward",
                         "point_index": r.get("point_index"), "dtype": r["dtype"], "layout": r["layout"],
                         "reference": ref, "path": path if isinstance(path, str) else "-",
                         "ref_us": r["time_median_s"] * 1e6, "torch_us": t["time_median_s"] * 1e6,
                         "ref_over_torch": ratio,
                         "flag": _flag(ratio, path, _kernels(r) == _kernels(t) != ())})
    return pd.DataFrame(rows)


def _kernels(row: pd.Series) -> tuple[str, ...]:
    """The profiler's kernel names of a record (none where it was not profiled)."""
    names = row.get("kernel_names")
    return tuple(names) if isinstance(names, (list, tuple, np.ndarray)) else ()


def _flag(ratio: float, path: object, same_kernels: bool) -> str:
    if ratio <= NOT_AT_BEST:
        return ""
    if path == SAME_CALL_AS_TORCH or same_kernels:
        return SPREAD
    return NOT_AT_ITS_BEST


def planned_rows() -> pd.DataFrame:
    """Every (point, implementation) row the bench's sets plan, with what the targets select rows
    by: set, layer, implementation, dtype, pass and whether it is a depthwise convolution."""
    rows = []
    for name in LAYERS:
        s = sweep.load_sweep(BENCH_DIR / f"{name}.toml")
        for p in s.points:
            if p.spec is None:  # an invalid point is recorded as such, never measured
                continue
            depthwise = bool(getattr(p.spec, "depthwise", False))
            rows += [{"experiment": s.experiment, "layer": p.layer, "impl": impl, "dtype": p.dtype,
                      "direction": p.spec.direction, "depthwise": depthwise} for impl in p.implementations]
    return pd.DataFrame(rows)


def _selected(df: pd.DataFrame, t: Target, passes: pd.Series, depthwise: pd.Series) -> pd.DataFrame:
    return df[(df["layer"] == t.layer) & (df["impl"] == t.impl) & df["dtype"].isin(t.dtypes)
              & (passes == t.direction) & (df["experiment"] == t.experiment) & (depthwise == t.depthwise)]


def targets(tab: pd.DataFrame, planned: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each performance target: the geometric mean over its rows, the worst row, and whether it is met;
    with ``planned`` (``planned_rows``), also how many rows its set plans (``planned``)."""
    rows = []
    passes, dw = directions(tab), depthwise_rows(tab)
    for t in TARGETS:
        sel = _selected(tab, t, passes, dw)
        # What a kernel running exactly as fast as a copy of the same bytes would score: a copy target
        # above it cannot be met by any kernel that moves the minimum bytes, at these sizes.
        bound = geomean(sel["ceiling"] / sel["sized_copy"]) if t.column == "ceiling" and len(sel) else math.nan
        planned_n = (len(_selected(planned, t, planned["direction"], planned["depthwise"]))
                     if planned is not None and len(planned) else math.nan)
        # Rows judged against torch alone: the library the target names has no correct result there.
        alone = int((~sel["library_ok"].astype(bool)).sum()) if t.column == "x_best" and "library_ok" in sel else 0
        rows.append(_judge(t.text, sel, t.column, t.threshold, t.floor)
                    | {"copy_bound": bound, "planned": planned_n, "library": TARGET_LIBRARY.get(t.layer),
                       "library_missing": alone})
    # Energy: on every point where a custom kernel is at least as fast as the reference, at most its J/launch.
    for exp, layer in TARGETED.items():
        ref = ENERGY_REFERENCE[layer]
        sel = tab[(tab["experiment"] == exp) & tab["impl"].isin(CUSTOM)]
        if f"x_{ref}" not in sel:
            sel = sel.iloc[:0]
        else:
            # As fast where the energy was measured, back to back; the timer's speed for records without it.
            fast = sel[f"xe_{ref}"].fillna(sel[f"x_{ref}"]) if f"xe_{ref}" in sel else sel[f"x_{ref}"]
            sel = sel[fast >= 1.0]
        text = f"energy <= {ENERGY_BOUND:.1f}x {ref} where at least as fast ({exp.removeprefix('bench_')})"
        judged = sel[pd.to_numeric(sel[f"e_{ref}"], errors="coerce").notna()] if f"e_{ref}" in sel else sel
        flagged = [marked(f"{_where(r)}, {r['impl']}", r.get(f"eflags_{ref}"))
                   for _, r in judged.iterrows() if flags_of(r.get(f"eflags_{ref}"))]
        # Which points are as fast is known only once measured: no planned count.
        rows.append(_judge(text, sel, f"e_{ref}", ENERGY_BOUND, ENERGY_BOUND, at_most=True)
                    | {"planned": math.nan, "flagged": flagged})
    return pd.DataFrame(rows)


def _judge(text: str, rows: pd.DataFrame, column: str, threshold: float, floor: float | None,
           at_most: bool = False) -> dict[str, object]:
    """The geomean of ``column`` against ``threshold`` and every row against ``floor`` (with ``at_most``,
    both are upper bounds); every judged target names its worst row."""
    values = pd.to_numeric(rows[column], errors="coerce").dropna() if column in rows else pd.Series(dtype=float)
    sign = -1.0 if at_most else 1.0  # judge -value >= -bound for upper bounds
    g = geomean(values)
    below = int((sign * values < sign * floor).sum()) if floor is not None else 0
    worst = (sign * values).idxmin() if len(values) else None
    verdict = "n/a" if math.isnan(g) else ("MISSED" if sign * g < sign * threshold or below else "MET")
    return {"target": text, "points": len(values), "geomean": g,
            "floor": math.nan if floor is None else floor, "below_floor": below,
            "worst": math.nan if worst is None else float(values[worst]),
            "worst_point": "" if worst is None else _where(rows.loc[worst]), "verdict": verdict}


def _point(row: pd.Series) -> str:
    """The point's name, with a pooling point's method and window."""
    name = row.get("name")
    method = row.get("method")
    return (name if isinstance(name, str) else "") + ("" if pd.isna(method) else f" {method} k{row['kernel']}")


def _where(row: pd.Series) -> str:
    """Where a row is: its bench set, point, pass (other than forward), dtype and layout."""
    exp, d = row.get("experiment"), row.get("direction")
    parts = (exp.removeprefix("bench_") if isinstance(exp, str) else "", _point(row),
             d if isinstance(d, str) and d != "forward" else "", row.get("dtype"), row.get("layout"))
    return ", ".join(p for p in parts if isinstance(p, str) and p)


def _references_section(tab: pd.DataFrame) -> list[str]:
    """The report's lines on the references against torch (none where no conv or linear point ran)."""
    vs = references_vs_torch(tab)
    if vs.empty:
        return []
    flagged = int((vs["flag"] == NOT_AT_ITS_BEST).sum())
    spread = vs[vs["flag"] == SPREAD]
    table_rows = [[r["layer"], r["point"], r["pass"], r["dtype"], r["layout"], r["reference"], r["path"],
                   fmt_number(r["ref_us"], ".1f"),
                   fmt_number(r["torch_us"], ".1f"), fmt_number(r["ref_over_torch"], ".3f"), r["flag"]]
                  for _, r in vs.sort_values(["layer", "point_index", "pass", "dtype", "layout"]).iterrows()]
    margin = f"{100 * (NOT_AT_BEST - 1):.0f} %"
    verdict = (f"{flagged} of {len(vs)} points: torch faster than the reference by more than {margin} "
               "(reference not at its best)." if flagged else
               f"The reference is within {margin} of torch or faster on all {len(vs)} points.")
    if len(spread):
        worst = spread["ref_over_torch"].max()
        verdict += (f" On {len(spread)} more the reference ran the kernels torch runs and measured up to "
                    f"{100 * (worst - 1):.1f} % slower than the torch row: the spread between two "
                    "measurements of the same kernels at that point.")
    return ["### References against torch (conv: cudnn, linear: cublas)", "",
            markdown_table(["layer", "point", "pass", "dtype", "layout", "reference", "path", "ref us", "torch us",
                            "ref / torch", ""], table_rows), "", verdict, ""]


def _points_cell(row: pd.Series) -> str:
    """``13 of 23`` where the set plans more rows than were measured, else the count."""
    planned = row.get("planned")
    if planned is None or pd.isna(planned) or row["points"] >= planned:
        return str(row["points"])
    return f"{row['points']} of {int(planned)}"


def _verdict_cell(row: pd.Series) -> str:
    planned = row.get("planned")
    partial = row["verdict"] != "n/a" and planned is not None and not pd.isna(planned) and row["points"] < planned
    cell = f"{row['verdict']}, partial" if partial else row["verdict"]
    alone = row.get("library_missing")
    if alone and not pd.isna(alone):
        cell += f"; against torch alone on {int(alone)} of {row['points']} points (no correct {row['library']} result)"
    return cell


def _matmul_runs_note(ceilings: dict) -> str:
    """How the matrix ceiling was taken: the products whose fastest sample it is (none in older
    ceilings)."""
    runs = next(iter((ceilings.get("matmul_runs") or {}).values()), None)
    return f" (the fastest sample of cuBLAS products {', '.join(runs)}; each in {CEILINGS_FILE})" if runs else ""


def format_bench_report(tab: pd.DataFrame, ceilings: dict, planned: pd.DataFrame | None = None) -> str:
    """The bench's report: ceilings, references against torch, every row, the targets' verdicts;
    with ``planned`` (``planned_rows``), each target says how many of its set's rows were measured."""
    rates = ", ".join(f"{d} {v:.0f}" for d, v in ceilings["matmul_tflops"].items())
    methods = ceilings.get("copy_methods") or {}
    copies = "".join(f"; {m} {v:.0f}" for m, v in methods.items())
    lines = [f"## layerbench bench on {ceilings['device_name']}", "",
             f"Ceilings measured {ceilings.get('measured_at', 'in this run')}: "
             f"copy {ceilings['copy_gbps']:.0f} GB/s (read + write{copies}); matrix product TFLOP/s: {rates}"
             f"{_matmul_runs_note(ceilings)}.", "",
             "% copy@size (ReLU, pooling, depthwise conv): the rate against a copy of the same bytes, timed alike (cold), "
             "from the copy curve: what is reachable at that size.",
             "x_REF: REF's time / this time (> 1: faster). e_REF: this J/launch / REF's (< 1: less energy). "
             "xe_REF: x_REF back to back, as the energy windows ran both (where energy was measured). "
             "x_best: against the fastest vendor result of the point (cuDNN / cuBLAS or torch), which the "
             "targets against cuDNN and cuBLAS are judged by.", ""]
    lines += _references_section(tab)
    refs = sorted(c[2:] for c in tab.columns if c.startswith("x_") and c != "x_best")  # x_best: no e_best
    warm = [r for r in refs if f"xe_{r}" in tab and tab[f"xe_{r}"].notna().any()]  # energy measured against r
    headers = ["layer", "set", "point", "pass", "dtype", "layout", "impl", "time us", "rate", "% ceiling", "% copy@size",
               *[f"x_{r}" for r in (*refs, "best")], "J/launch", *[f"e_{r}" for r in refs], *[f"xe_{r}" for r in warm]]
    rows = []
    tab = tab.assign(set=tab["experiment"].fillna("").astype(str).str.removeprefix("bench_")
                     if "experiment" in tab else "", pass_=directions(tab))
    for _, r in tab.sort_values(["layer", "set", "point_index", "pass_", "dtype", "layout", "impl"]).iterrows():
        point = _point(r)
        rate = f"{r['gbps']:.0f} GB/s" if r["layer"] in MEMORY_BOUND else f"{r['tflops']:.1f} TFLOP/s"
        rows.append([r["layer"], r["set"], point, r["pass_"], r["dtype"], r["layout"], r["impl"],
                     fmt_number(r["time_median_s"] * 1e6, ".1f"),
                     rate, fmt_number(100 * r["ceiling"], ".0f"), fmt_number(100 * r["sized_copy"], ".0f"),
                     *[fmt_number(r.get(f"x_{b}"), ".2f") for b in (*refs, "best")],
                     marked(fmt_number(r.get("energy_j_per_launch"), ".4g"), r.get("energy_flags")),
                     *[fmt_number(r.get(f"e_{b}"), ".3f") for b in refs],
                     *[fmt_number(r.get(f"xe_{b}"), ".2f") for b in warm]])
    lines += [markdown_table(headers, rows), ""]
    flags = legend(tab.get("energy_flags", []))
    lines += [flags, ""] if flags else []
    lines += ["### Targets (geometric means per bench set)", ""]
    tg = targets(tab, planned)
    lines.append(markdown_table(
        ["target", "points", "geomean", "floor", "worst", "worst point", "same-size copy", "verdict"],
        [[r["target"], _points_cell(r), fmt_number(r["geomean"], ".3f"), fmt_number(r["floor"], ".2f"),
          fmt_number(r["worst"], ".3f"),
          r["worst_point"] + (f" ({r['below_floor']} past the floor)" if r["below_floor"] else ""),
          fmt_number(r.get("copy_bound"), ".3f"), _verdict_cell(r)] for _, r in tg.iterrows()]))
    for _, r in tg.iterrows():
        if isinstance(r.get("flagged"), list) and r["flagged"]:
            n = len(r["flagged"])
            lines += ["", f"{r['target']}: {n} of the {r['points']} rows judged {'has' if n == 1 else 'have'} "
                      f"flagged energy windows (the kernel's or the reference's): {'; '.join(r['flagged'])}."]
    lines += ["", "A target is met when its geomean is and no point is past its floor (energy: an upper bound on "
              "every point); each target names its worst point (set, point, pass, dtype, layout).",
              "energy: judged where the kernel is at least as fast as the reference back to back, as the energy "
              "windows ran both (caches warm: a kernel whose data fits in L2 runs faster there than the timer's "
              "cold mode says).",
              "partial: judged on the points measured so far (`13 of 23`); `layerbench bench --resume` measures "
              "the rest.",
              "same-size copy (bandwidth targets): the geomean a kernel would score if it ran as fast as "
              "the copy of its bytes at every point; a target above it is out of reach at these sizes."]
    passes = directions(tab)
    sized = [f"{layer}{'' if d == 'forward' else ' ' + d} {impl} {100 * g:.0f} %"
             for layer in MEMORY_BOUND for d in dict.fromkeys(passes) for impl in CUSTOM
             if not math.isnan(g := geomean(tab.loc[(tab["layer"] == layer) & (tab["impl"] == impl) & (passes == d),
                                                    "sized_copy"]))]
    if sized:
        lines += ["", "Against a copy of the same size (geomean): " + ", ".join(sized) + "."]
    return "\n".join(lines) + "\n"
