"""The ``layerbench`` command: run, plan, list, compare, report, info, validate-energy, export.

Usage errors (a bad sweep file, a missing run directory) print one line and exit with 2.
With ``--device cpu`` (TRITON_INTERPRET=1, set by ``layerbench.entry``) the Triton kernels run in the
interpreter and the same pipeline runs without a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console
from rich.table import Table

from layerbench import registry
from layerbench.analysis import compare
from layerbench.analysis.report import build_report
from layerbench.layers import LAYERS, SHORTHANDS
from layerbench.measure.energy import EnergyMeter
from layerbench.measure.environment import collect_environment
from layerbench.options import EnergyConfig
from layerbench.results import rundir as results
from layerbench.run.sweep_runner import RunOptions, run_sweep
from layerbench.suites import bench
from layerbench.suites.validate_energy import format_validation, run_validation
from layerbench.sweep import Sweep, SweepError, axis_label, iter_sweep_files, load_sweep
from sweeps import SWEEP_DIR

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _repo_sweeps() -> list[Path]:
    here = SWEEP_DIR
    roots = [Path("sweeps"), here]
    seen, out = set(), []
    for root in roots:
        if root.is_dir() and root.resolve() not in seen:
            seen.add(root.resolve())
            out.append(root)
    return out


def _check_device(device: str) -> None:
    if device == "cuda":

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA GPU is visible to torch; use --device cpu "
                             "for a CPU smoke run")


def _load_sweep(args: argparse.Namespace, file: str | None = None) -> Sweep:
    s = load_sweep(file or args.file, quick=args.quick)
    if args.impl:
        s.add_implementations(args.impl)
    if args.only:
        s.restrict_implementations([n.strip() for n in args.only.split(",") if n.strip()])
    if args.no_energy:
        s.disable_energy()
    return s


# ------------------------------------------------------------------------------ commands


def cmd_run(args: argparse.Namespace) -> int:

    _check_device(args.device)
    # All files are checked before anything runs: a typo in the last one fails at once.
    sweeps = [_load_sweep(args, f) for f in args.file]
    in_process = {"auto": None, "inline": True, "process": False}[args.worker]
    console = Console(stderr=True)
    for s in sweeps:
        out = None
        if args.out:
            # With several files, --out is their parent: one run directory per experiment.
            out = Path(args.out) / s.experiment if len(sweeps) > 1 else Path(args.out)
        opts = RunOptions(device=args.device, out=out, resume=args.resume, in_process=in_process,
                          point_timeout_s=args.point_timeout, progress=not args.no_progress,
                          argv=list(sys.argv))
        run_dir = run_sweep(s, opts, console)
        records = results.read_records(run_dir / results.RESULTS_FILE)
        counts = results.summarize(records)
        print(f"{run_dir}: {len(records)} records ({', '.join(f'{k} {v}' for k, v in counts.items())})")
        print(f"  {run_dir / results.PARQUET_FILE}\n  {run_dir / results.CSV_FILE}")
        print(f"next: layerbench compare {run_dir}   |   layerbench report {run_dir}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:

    s = _load_sweep(args)
    table = Table(title=f"{s.title} ({s.path})", show_lines=False)
    for col in ("#", "point", "dtype", "layout", "implementations (* energy)", "note"):
        table.add_column(col)
    for p in s.points:
        axes = " ".join(f"{k}={axis_label(v)}" for k, v in p.axes.items())
        label = " ".join(x for x in (p.label or p.layer, axes) if x)
        impls = " ".join(n + ("*" if n in p.energy_impls else "") for n in p.implementations)
        table.add_row(str(p.index), label, p.dtype, p.layout, impls,
                      f"invalid: {p.invalid}" if p.invalid else "")
    console = Console()
    console.print(table)
    rows = sum(len(p.implementations) for p in s.points)
    print(f"{len(s.points)} points, {rows} result rows; {s.skipped_filtered} filtered out by 'where', "
          f"{s.skipped_invalid} invalid points skipped (invalid = \"skip\")")
    est = estimate_seconds(s)
    print(f"lower bound of measuring time: timing {est['timing']:.0f} s + energy {est['energy']:.0f} s "
          f"= {(est['timing'] + est['energy']) / 60:.1f} min (without compile, reference and cooldown)")
    known = {layer: set(registry.names(layer)) for layer in s.layers}
    missing = sorted({(p.layer, n) for p in s.points for n in p.implementations
                      if ":" not in n and n not in known[p.layer]})
    for layer, name in missing:
        print(f"note: {name} is not available for {layer} here; it will be recorded as unavailable")
    for backend, err in registry.load_errors().items():
        print(f"note: {backend} failed to load: {err}")
    return 0


def estimate_seconds(s: Any) -> dict[str, float]:
    """Lower bound of the measuring time: min_time_s per timed row; per energy row and window,
    warm-up + window + about one counter period (~0.1 s) to align the window's start."""
    t = s.measure.timing
    e = s.measure.energy_config
    timed = sum(len(p.implementations) for p in s.points if p.invalid is None)
    per_timing = t.get("min_time_s", 0.5) if "fixed_samples" not in t else 0.0
    energy_rows = sum(len(p.energy_impls) for p in s.points if p.invalid is None)
    per_energy = e.get("windows", 3) * (e.get("warmup_s", 0.5) + e.get("window_s", 1.0) + 0.1)
    return {"timing": timed * per_timing, "energy": energy_rows * per_energy}


def cmd_list(args: argparse.Namespace) -> int:

    what = args.what
    if what in ("layers", "all"):
        print("layers:")
        for name, cls in LAYERS.items():
            fields = ", ".join(f.name + ("" if f.default is dataclasses.MISSING else f"={f.default!r}")
                               for f in dataclasses.fields(cls))
            short = ", ".join(f"{k} -> {'+'.join(v)}" for k, v in SHORTHANDS[name].items())
            print(f"  {name}: {fields}")
            print(f"    dtypes {', '.join(cls.dtypes)}; layouts {', '.join(cls.layouts)}"
                  + (f"; shorthands {short}" if short else ""))
    if what in ("impls", "all"):

        print("implementations:")
        for impl in registry.all_implementations():
            ref = " (reference)" if impl.reference else ""
            print(f"  {impl.layer:7s} {impl.name:10s} backend {impl.backend}, devices "
                  f"{', '.join(impl.devices)}{ref}  {impl.description}")
        for backend, err in registry.load_errors().items():
            print(f"  not loaded: {backend}: {err}")
    if what in ("sweeps", "all"):

        print("sweeps:")
        for root in _repo_sweeps():
            for path in iter_sweep_files(root):
                try:
                    s = load_sweep(path)
                    info = f"{len(s.points)} points  {s.title}"
                except SweepError as exc:
                    info = f"INVALID: {exc}"
                print(f"  {path}: {info}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    df = results.load_results(args.run)
    baselines = [b.strip() for b in args.baseline.split(",")] if args.baseline else None
    if args.run_b:
        table = compare.compare_runs(df, results.load_results(args.run_b), args.threshold)
        title = f"{args.run_b} against {args.run}"
    else:
        table = compare.compare_within(df, baselines, args.threshold)
        title = f"{args.run}: custom kernels against references"
    text = compare.format_comparison(table, title)
    if args.csv:
        table.to_csv(args.csv, index=False)
    print(text)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    path = build_report(args.run, args.out)
    print(path)
    return 0


def cmd_info(args: argparse.Namespace) -> int:

    env = collect_environment(args.device)
    print("environment:")
    print(json.dumps(env, indent=2, default=str))
    print("energy meter:")
    try:

        meter = EnergyMeter(args.device, EnergyConfig())
        state = f"available ({meter.method})" if meter.available else f"unavailable: {meter.reason}"
    except Exception as exc:  # noqa: BLE001 - info reports what is broken instead of failing
        state = f"unavailable: {type(exc).__name__}: {exc}"
    print(f"  {args.device}: {state}")
    print("implementations:")
    for impl in registry.all_implementations():
        print(f"  {impl.layer:7s} {impl.name:10s} {impl.backend:7s} {', '.join(impl.devices)}"
              + (" reference" if impl.reference else ""))
    errors = registry.load_errors()
    for backend, err in errors.items():
        print(f"  load error: {backend}: {err}")
    return 0


def cmd_validate_energy(args: argparse.Namespace) -> int:
    _check_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = run_validation(args.device, out, args.quick)
    print(format_validation(result))
    return 0 if result.get("passed") else 1


def cmd_bench(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.report_only:
        df, ceilings = bench.load_bench(out)
    else:
        _check_device(args.device)
        df = bench.run_bench(out, args.device, tuple(args.layers.split(",")), args.resume,
                             energy=not args.no_energy, progress=not args.no_progress)
        ceilings = json.loads((out / bench.CEILINGS_FILE).read_text())
    text = bench.format_report(bench.table(df, ceilings), ceilings)
    (out / "bench.md").write_text(text)
    print(text)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    for path in results.export_results(args.run):
        print(path)
    return 0


# -------------------------------------------------------------------------------- parser


def _positive_float(text: str) -> float:
    v = float(text)
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="layerbench", description="Time, energy and correctness of CNN layer "
                                "kernels (Triton, CuPy, cuDNN/cuBLAS, torch) over parameter sweeps.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for usage errors")
    sub = p.add_subparsers(dest="command", required=True)

    def device(sp: argparse.ArgumentParser, default: str = "cuda") -> None:
        sp.add_argument("--device", choices=("cuda", "cpu"), default=default,
                        help="cpu: torch and Triton-interpreter kernels, for smoke runs")

    def sweep_options(sp: argparse.ArgumentParser, with_file: bool = True) -> None:
        if with_file:
            sp.add_argument("file", help="sweep TOML file")
        sp.add_argument("--impl", action="append", default=[], metavar="NAME",
                        help="add an implementation: a registered name, package.module:function, "
                             "or LAYER=... for one layer of a mixed sweep (repeatable)")
        sp.add_argument("--only", metavar="NAMES", help="comma-separated implementations to keep")
        sp.add_argument("--quick", action="store_true",
                        help="few timing samples, one short energy window: checks that a sweep runs")
        sp.add_argument("--no-energy", action="store_true", help="time only")

    sp = sub.add_parser("run", help="run sweeps")
    sp.add_argument("file", nargs="+", help="sweep TOML file(s)")
    sweep_options(sp, with_file=False)
    device(sp)
    sp.add_argument("--out", help="run directory (default runs/EXPERIMENT-TIMESTAMP); with several "
                                  "files, the parent of one directory per experiment")
    sp.add_argument("--resume", action="store_true",
                    help="continue a run: skip points already recorded (default: the newest run "
                         "of this experiment under runs/); a run that never started starts")
    sp.add_argument("--worker", choices=("auto", "process", "inline"), default="auto",
                    help="where points run: a restartable worker process (auto on a GPU) or this "
                         "process (auto on the CPU)")
    sp.add_argument("--point-timeout", type=_positive_float, default=1200.0, metavar="S",
                    help="kill the worker when one point group takes longer (process worker only)")
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("plan", help="list a sweep's points without running them")
    sweep_options(sp)
    device(sp)
    sp.set_defaults(func=cmd_plan)

    sp = sub.add_parser("list", help="list layers, implementations or sweep files")
    sp.add_argument("what", nargs="?", choices=("layers", "impls", "sweeps", "all"), default="all")
    device(sp)
    sp.set_defaults(func=cmd_list)

    sp = sub.add_parser("compare", help="custom vs reference in RUN, or RUN_B against RUN")
    sp.add_argument("run")
    sp.add_argument("run_b", nargs="?")
    sp.add_argument("--baseline", metavar="NAMES",
                    help="comma-separated implementations to compare against (default: references)")
    sp.add_argument("--threshold", type=float, default=0.01,
                    help="ratios within this of 1 count as SAME (default 0.01)")
    sp.add_argument("--csv", metavar="FILE", help="also write the per-point table as CSV")
    sp.set_defaults(func=cmd_compare)

    sp = sub.add_parser("report", help="markdown tables and PNG plots of a run")
    sp.add_argument("run")
    sp.add_argument("--out", help="output directory (default RUN/report)")
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("info", help="GPU, meters, versions, implementations")
    device(sp)
    sp.set_defaults(func=cmd_info)

    sp = sub.add_parser("validate-energy", help="check the energy meter against known loads "
                                                "(exit 1 unless every check passes)")
    device(sp)
    sp.add_argument("--out", default="validation", help="output directory (default ./validation)")
    sp.add_argument("--quick", action="store_true")
    sp.set_defaults(func=cmd_validate_energy)

    sp = sub.add_parser("bench", help="custom kernels vs the card's ceilings and the references "
                                      "(sweeps/bench), with issue-5 target verdicts")
    device(sp)
    sp.add_argument("--out", default="runs/bench", help="output directory (default runs/bench)")
    sp.add_argument("--layers", default="relu,pool,conv,conv_sweeps,linear", help="comma-separated subset")
    sp.add_argument("--resume", action="store_true", help="continue the bench in --out")
    sp.add_argument("--no-energy", action="store_true", help="time only")
    sp.add_argument("--no-progress", action="store_true")
    sp.add_argument("--report-only", action="store_true", help="print the table of an existing --out")
    sp.set_defaults(func=cmd_bench)

    sp = sub.add_parser("export", help="write results.parquet and results.csv of a run")
    sp.add_argument("run")
    sp.set_defaults(func=cmd_export)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "device", None) == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        # layerbench.entry sets it before Triton is imported; a caller of main() must do the same.
        raise SystemExit("layerbench: --device cpu needs TRITON_INTERPRET=1 set before Triton is "
                         "imported (the layerbench command does this)")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ValueError as exc:  # SweepError and other bad input: one line, no traceback
        if args.debug:
            raise
        print(f"layerbench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("layerbench: interrupted; records so far are kept (run again with --resume)",
              file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
