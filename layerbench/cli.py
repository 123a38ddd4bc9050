"""The ``layerbench`` command: run, plan, list, compare, report, pareto, findings, info, validate-energy,
validate-gpus, scaling, bench, export.

Usage errors (a bad sweep file, an unknown implementation, a missing run directory, an output path
that cannot be written) print one line and exit with 2, before anything runs where they can be
found up front.  ``run`` exits with 1 when a record has a status named by ``--fail-on``.
With ``--device cpu`` (TRITON_INTERPRET=1, set by ``layerbench.entry``) the Triton kernels run in the
interpreter and the same pipeline runs without a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from layerbench import registry
from layerbench.analysis import compare
from layerbench.analysis import pareto as pareto_analysis
from layerbench.analysis.findings import check_findings, format_findings
from layerbench.analysis.gpu_validation import (
    ENERGY_TOLERANCE,
    TIME_TOLERANCE,
    format_gpu_validation,
    validate_gpu_runs,
)
from layerbench.analysis.html_report import (
    build_html_report,
    write_findings_html,
    write_pareto_html,
)
from layerbench.analysis.report import build_report
from layerbench.layers import LAYERS, SHORTHANDS
from layerbench.layers.passes import layer_directions
from layerbench.measure import gpu_settings
from layerbench.measure.energy import EnergyMeter
from layerbench.measure.environment import collect_environment
from layerbench.options import EnergyConfig
from layerbench.results import rundir as results
from layerbench.results.records import DEFAULT_FAIL_ON, parse_fail_on
from layerbench.results.rundir import RunDir
from layerbench.run.data_parallel import add_scaling, gpus_of, visible_gpus
from layerbench.run.executors import DEFAULT_POINT_TIMEOUT_S
from layerbench.run.multi_gpu import parse_gpus, process_pool
from layerbench.run.ray_executor import ray_scheduler, require_ray
from layerbench.run.shared_configs import SharedConfigs, repeated_rows
from layerbench.run.sweep_runner import RunOptions, WorkerHandoff, run_sweep
from layerbench.suites import bench
from layerbench.suites.validate_energy import format_validation, run_validation
from layerbench.sweep import (
    Point,
    Sweep,
    SweepError,
    axis_label,
    iter_sweep_files,
    load_sweep,
)
from sweeps import SWEEP_DIR, resolve

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a tool whose reader went away


def _version() -> str:
    try:
        return metadata.version("layerbench")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _repo_sweeps() -> list[Path]:
    roots = [Path("sweeps"), SWEEP_DIR]
    seen, out = set(), []
    for root in roots:
        if root.is_dir() and root.resolve() not in seen:
            seen.add(root.resolve())
            out.append(root)
    return out


def _check_device(device: str, cpu_runs: bool = True) -> None:
    """Refuse --device cuda without a GPU; ``cpu_runs``: the command also runs on the CPU."""
    if device == "cuda" and not torch.cuda.is_available():
        hint = "; use --device cpu for a CPU smoke run" if cpu_runs else " (this command measures a GPU)"
        raise ValueError(f"--device cuda: no CUDA GPU is visible to torch{hint}")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _check_output_dir(path: Path, what: str) -> None:
    """Refuse, before anything runs, an output directory that is a file or cannot be written."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path}: is a file, not a directory")
    _check_writable(path, what)


def _check_output_file(path: Path, what: str) -> None:
    if path.is_dir():
        raise ValueError(f"{what} {path}: is a directory, not a file")
    _check_writable(path.parent if not path.exists() else path, what)


def _check_writable(path: Path, what: str) -> None:
    # The nearest existing ancestor is where the first directory or file gets created.
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() and existing != path:
        raise ValueError(f"{what} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK):
        raise ValueError(f"{what} {path}: {existing} is not writable")


def _check_names(s: Sweep, added: Iterable[str]) -> None:
    """Every implementation of every point must be known (or a backend that failed to load here,
    recorded as unavailable) and every ``module:function`` must import: else one line, exit 2."""
    from_cli = {item.partition("=")[2] if "=" in item else item: item for item in added}
    checked: set[tuple[str, str]] = set()
    for p in s.points:
        for name in p.implementations:
            if (p.layer, name) in checked:
                continue
            checked.add((p.layer, name))
            try:
                registry.check_name(p.layer, name)
            except ValueError as exc:
                where = f"--impl {from_cli[name]}" if name in from_cli else f"{s.path}: implementations"
                raise SweepError(f"{where}: {str(exc).removeprefix(f'{name}: ')}") from None


def _impl_items(s: Sweep, items: list[str]) -> list[str]:
    """``--impl NAME`` of a registered name goes to the layers of the sweep that have it (cuDNN to
    the convolutions of a mixed file, not to its FC layers); other items stay as given."""
    out = []
    for item in items:
        layers = [layer for layer in s.layers if item in registry.names(layer)]
        if "=" in item or ":" in item or not layers:
            out.append(item)
        else:
            out += [item] if len(layers) == len(s.layers) else [f"{layer}={item}" for layer in layers]
    return out


def _load_sweep(args: argparse.Namespace, file: str) -> Sweep:
    file = str(resolve(file))
    s = load_sweep(file, quick=args.quick)
    if args.impl:
        s.add_implementations(_impl_items(s, args.impl))
    _check_names(s, args.impl)  # before --only: a typo is refused even where --only drops it
    if args.only is not None:
        s.restrict_implementations([n.strip() for n in args.only.split(",") if n.strip()])
    if args.where is not None:
        s.restrict_where(args.where)
    if args.no_energy:
        s.disable_energy()
    return s


def _fail_on(text: str) -> tuple[str, ...]:
    """``--fail-on``: a comma-separated list of record statuses, or "none"."""
    try:
        return parse_fail_on(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# ------------------------------------------------------------------------------ commands


def cmd_run(args: argparse.Namespace) -> int:
    # All files are checked before anything runs, and before the GPU is looked for: a typo in the
    # last one fails at once, on a machine without a GPU too.
    sweeps = [_load_sweep(args, f) for f in args.file]
    if not any(s.points for s in sweeps):  # a filter that keeps nothing is a mistake, not an empty run
        raise ValueError("nothing to run: " + "; ".join(
            f"{s.path}: none of its rows pass its where, --where and --only ({s.skipped_filtered} filtered "
            f"out, {s.skipped_invalid} invalid and skipped)" for s in sweeps))
    _check_device(args.device)
    scheduler = _scheduler(args)  # --gpus / --ray: refused at once where they cannot work
    if scheduler is not None:
        for s in sweeps:
            if any(gpus_of(p) > 1 for p in s.points):
                raise ValueError(f"{s.path}: its gpus axis splits a layer over several GPUs itself; "
                                 "run it without --gpus/--ray")
    if args.out:
        _check_output_dir(Path(args.out), "--out")
    with_settings = [s for s in sweeps if s.settings_axes]
    for s in with_settings:
        if scheduler is not None:
            raise ValueError(f"{s.path}: GPU-settings axes are applied on one GPU at a time; run this sweep "
                             "without --gpus/--ray")
        if not args.allow_gpu_settings:
            raise ValueError(f"{s.path}: the sweep varies GPU settings ({', '.join(s.settings_axes)}), which "
                             "changes the GPU's clocks or power limit for every process on it; run applies "
                             "them only with --allow-gpu-settings (never on a GPU shared with others)")
        # Unsupported values, or no NVML to set them with: one line, exit 2, before anything runs.
        note = gpu_settings.plan_check(_settings_values(s), args.device)
        if note is not None:
            raise ValueError(f"{s.path}: --allow-gpu-settings: {note.replace('cannot check', 'cannot set')}")
    # With GPU settings, SIGTERM unwinds like Ctrl-C, so the runner restores them on the way out.
    previous = signal.signal(signal.SIGTERM, _terminate) if with_settings else None
    try:
        return _run_sweeps(args, sweeps, scheduler)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run_sweeps(args: argparse.Namespace, sweeps: list[Sweep], scheduler: Any) -> int:
    in_process = {"auto": None, "inline": True, "process": False}[args.worker]
    console = Console(stderr=True)
    shared = SharedConfigs() if len(sweeps) > 1 and not args.remeasure else None
    handoff = WorkerHandoff()
    try:
        return _run_each(args, sweeps, scheduler, in_process, console, shared, handoff)
    finally:
        handoff.close()


def _run_each(args: argparse.Namespace, sweeps: list[Sweep], scheduler: Any, in_process: bool | None,
              console: Console, shared: SharedConfigs | None, handoff: WorkerHandoff) -> int:
    failed: dict[str, int] = {}
    for s in sweeps:
        out = None
        if args.out:
            # With several files, --out is their parent: one run directory per experiment.
            out = Path(args.out) / s.experiment if len(sweeps) > 1 else Path(args.out)
        opts = RunOptions(device=args.device, out=out, resume=args.resume, in_process=in_process,
                          point_timeout_s=args.point_timeout, progress=not args.no_progress,
                          scheduler=scheduler, allow_gpu_settings=args.allow_gpu_settings,
                          shared=shared, handoff=handoff, argv=list(sys.argv))
        run_dir = RunDir(run_sweep(s, opts, console))
        status = run_dir.status_counts(args.fail_on)
        total = sum(status.counts.values())
        print(f"{run_dir.path}: {_plural(total, 'record')} ({status.as_text() or 'nothing ran'})")
        written = [p for p in (run_dir.path / results.PARQUET_FILE, run_dir.path / results.CSV_FILE) if p.exists()]
        for path in written:
            print(f"  {path}")
        if written:
            print(f"next: layerbench compare {run_dir.path}   |   layerbench report {run_dir.path}")
        for name, n in status.failures.items():
            failed[name] = failed.get(name, 0) + n
    if failed:
        print(f"layerbench: {', '.join(f'{v} {k}' for k, v in failed.items())} "
              f"(exit 1 because of --fail-on {','.join(args.fail_on)})", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _scheduler(args: argparse.Namespace) -> Any:
    """``--gpus``: a worker per GPU of this host; ``--ray``: Ray tasks on a cluster; else None."""
    if args.gpus is not None and args.ray is not None:
        raise ValueError("--gpus and --ray: choose one (Ray places the tasks on the GPUs itself)")
    if args.ray is not None:
        require_ray()
        address = None if args.ray == "local" else args.ray
        return lambda *a: ray_scheduler(address, *a)
    if args.gpus is None:
        return None
    if args.worker == "inline":
        raise ValueError("--gpus runs a worker process per GPU; it cannot run with --worker inline")
    return _gpu_pool(args.gpus)[0]


def _gpu_pool(text: str) -> tuple[Any, str]:
    """``--gpus``: the pool's factory (a worker per GPU of this host) and the first GPU's
    ``CUDA_VISIBLE_DEVICES`` entry."""
    present = visible_gpus()
    gpus = parse_gpus(text, present)
    return (lambda *a: process_pool(gpus, present, *a)), present[gpus[0]]


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _settings_values(s: Sweep) -> dict[str, list[Any]]:
    """Each GPU-settings axis of the sweep with its values."""
    return {a: sorted({p.settings[a] for p in s.points if a in p.settings}) for a in s.settings_axes}


def plan_rows(s: Sweep, device: str) -> list[tuple[Point, str, str | None]]:
    """Each (point, implementation) of a sweep with why it will not run here (None: it runs)."""
    rows = []
    for p in s.points:
        for name in p.implementations:
            why = p.invalid or registry.unsupported_reason(p.layer, name, p.spec, p.dtype, p.layout, device)
            rows.append((p, name, why))
    return rows


def cmd_plan(args: argparse.Namespace) -> int:
    sweeps = [_load_sweep(args, f) for f in args.file]
    for i, s in enumerate(sweeps):
        if i:
            print()
        _plan_one(s, args.device)
    if len(sweeps) > 1:
        rows, energy = repeated_rows(sweeps, args.device)
        print(f"\nacross the {len(sweeps)} files: {_plural(rows, 'row')} ({energy} with energy) repeat a config of "
              "an earlier file; `run` measures each config once and copies its record (--remeasure: each file "
              "measures its own)")
    return 0


def _plan_one(s: Sweep, device: str) -> None:
    rows = plan_rows(s, device)
    unsupported = {(p.index, name): why for p, name, why in rows if why and not p.invalid}
    table = Table(title=f"{s.title} ({s.path})", show_lines=False)
    for col in ("#", "point", "dtype", "layout", "implementations (* energy, - not run)", "note"):
        table.add_column(col)
    for p in s.points:
        axes = " ".join(f"{k}={axis_label(v)}" for k, v in p.axes.items())
        direction = p.params.get("direction", "forward")
        fixed_pass = f"pass={direction}" if direction != "forward" and not {"pass", "direction"} & set(p.axes) else ""
        label = " ".join(x for x in (p.label or p.layer, axes, fixed_pass) if x)
        impls = " ".join(n + ("-" if (p.index, n) in unsupported else "*" if n in p.energy_impls else "")
                         for n in p.implementations)
        notes = [f"invalid: {p.invalid}"] if p.invalid else []
        notes += [f"unsupported: {why}" for n in p.implementations if (why := unsupported.get((p.index, n)))]
        table.add_row(str(p.index), label, p.dtype, p.layout, impls, "; ".join(notes))
    Console().print(table)
    if s.settings_axes:
        note = gpu_settings.plan_check(_settings_values(s), device)
        print(f"GPU settings ({', '.join(s.settings_axes)}): "
              + (note if note else "every value is supported by this card")
              + "; run applies them only with --allow-gpu-settings")
    invalid = sum(1 for p in s.points if p.invalid)
    if s.invalid_policy == "skip":
        invalid_text = f"{_plural(s.skipped_invalid, 'invalid point')} skipped (invalid = \"skip\")"
    else:
        invalid_text = f"{_plural(invalid, 'invalid point')} recorded as invalid (invalid = \"record\")"
    print(f"{_plural(len(s.points), 'point')}, {_plural(len(rows), 'result row')}"
          + (f" ({len(unsupported)} unsupported here, recorded as unsupported without building)" if unsupported else "")
          + f"; {s.skipped_filtered} filtered out by 'where', {invalid_text}")
    est = estimate_seconds(s, set(unsupported))
    no_energy = _energy_unavailable(device) if any(p.energy_impls for p in s.points) else None
    if no_energy is not None:
        print(f"note: energy will not be measured on {device} here: {no_energy}")
        est["energy"] = 0.0
    print(f"lower bound of measuring time: timing {est['timing']:.0f} s + energy {est['energy']:.0f} s "
          f"= {(est['timing'] + est['energy']) / 60:.1f} min (without compile, reference and cooldown)")
    used = set(s.implementation_names())
    for backend, err in registry.load_errors().items():
        if backend in used:
            print(f"note: {backend} failed to load here, its rows will be recorded as unavailable: {err}")


def _energy_unavailable(device: str) -> str | None:
    """Why this machine cannot measure energy on ``device`` (None: it can)."""
    try:
        meter = EnergyMeter(torch.device(device), EnergyConfig())
    except Exception as exc:  # noqa: BLE001 - plan reports what is broken instead of failing
        return f"{type(exc).__name__}: {exc}"
    return None if meter.available else (meter.reason or "no energy meter")


def estimate_seconds(s: Sweep, skipped: set[tuple[int, str]] | None = None) -> dict[str, float]:
    """Lower bound of the measuring time: min_time_s per timed row; per energy row and window,
    warm-up + window + about one counter period (~0.1 s) to align the window's start.
    ``skipped`` holds the (point index, implementation) rows that will not run."""
    skipped = skipped or set()
    t = s.measure.timing
    e = s.measure.energy_config
    timed = sum(1 for p in s.points if p.invalid is None for n in p.implementations
                if (p.index, n) not in skipped)
    per_timing = t.get("min_time_s", 0.5) if "fixed_samples" not in t else 0.0
    energy_rows = sum(1 for p in s.points if p.invalid is None for n in p.energy_impls
                      if (p.index, n) not in skipped)
    per_energy = e.get("windows", 3) * (e.get("warmup_s", 0.5) + e.get("window_s", 1.0) + 0.1)
    return {"timing": timed * per_timing, "energy": energy_rows * per_energy}


def implementation_table(impls: Iterable[registry.Implementation]) -> list[str]:
    """The implementations as an aligned text table with a header row."""
    headers = ("layer", "name", "backend", "devices", "dtypes", "layouts", "passes", "kind", "description")
    rows = [(i.layer, i.name, i.backend, ",".join(i.devices), ",".join(i.supported_dtypes),
             ",".join(i.supported_layouts), ",".join(i.directions), "reference" if i.reference else "custom",
             i.description)
            for i in impls]
    widths = [max(len(r[c]) for r in [headers, *rows]) for c in range(len(headers) - 1)]
    return ["  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1] for r in [headers, *rows]]


def cmd_list(args: argparse.Namespace) -> int:
    what = args.what
    if what in ("layers", "all"):
        print("layers:")
        for name, cls in LAYERS.items():
            shown = getattr(cls, "default_text", {})  # defaults that read better than None
            fields = ", ".join(f.name + ("" if f.default is dataclasses.MISSING
                                         else f"={shown.get(f.name, repr(f.default))}")
                               for f in dataclasses.fields(cls))
            short = ", ".join(f"{k} -> {'+'.join(v)}" for k, v in SHORTHANDS[name].items())
            print(f"  {name}: {fields}")
            print(f"    dtypes {', '.join(cls.dtypes)}; layouts {', '.join(cls.layouts)}; "
                  f"passes {', '.join(layer_directions(cls))}" + (f"; shorthands {short}" if short else ""))
    if what in ("impls", "all"):
        impls = [i for i in registry.all_implementations() if args.device is None or args.device in i.devices]
        print("implementations" + (f" that run on {args.device}:" if args.device else ":"))
        for line in implementation_table(impls):
            print(f"  {line}")
        for backend, err in registry.load_errors().items():
            print(f"  not loaded: {backend}: {err}")
    if what in ("sweeps", "all"):
        print("sweeps:")
        for root in _repo_sweeps():
            for path in iter_sweep_files(root):
                try:
                    s = load_sweep(path)
                    info = f"{_plural(len(s.points), 'point')}  {s.title}"
                except SweepError as exc:
                    info = f"INVALID: {exc}"
                print(f"  {path}: {info}")
    return 0


def _load_run(run: str) -> Any:
    df = results.load_results(run)
    if df.empty:
        raise ValueError(f"{run}: the run has no records yet")
    return df


def cmd_compare(args: argparse.Namespace) -> int:
    if args.csv:
        _check_output_file(Path(args.csv), "--csv")
    df = _load_run(args.run)
    baselines = None
    if args.baseline is not None:
        baselines = [b.strip() for b in args.baseline.split(",") if b.strip()]
        have = sorted(set(df["impl"]))
        unknown = [b for b in baselines if b not in have]
        if unknown or not baselines:
            raise ValueError(f"--baseline {args.baseline}: {', '.join(unknown) or 'no name'} not in {args.run}; "
                             f"its implementations: {', '.join(have)}")
    if args.run_b:
        if baselines is not None:
            raise ValueError("--baseline compares implementations within one run; "
                             "with RUN_B each row is compared with the same row of RUN")
        table = compare.compare_runs(df, _load_run(args.run_b), args.threshold)
        title = f"{args.run_b} against {args.run}"
    else:
        table = compare.compare_within(df, baselines, args.threshold)
        title = f"{args.run}: custom kernels against " + (", ".join(baselines) if baselines else "references")
    text = compare.format_comparison(table, title)
    if args.csv:
        table.to_csv(args.csv, index=False)
    print(text)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    if args.out:
        _check_output_dir(Path(args.out), "--out")
    else:
        _check_output_dir(Path(args.run) / "report", "report directory")
    if args.against is not None and not args.html:
        raise ValueError("--against compares two runs in the HTML report; add --html")
    if args.against is not None:
        _load_run(args.against)  # a missing or empty run B: one line, exit 2
    if args.html:
        df = _load_run(args.run)
        # A run of a thesis sweep gets the findings its experiment checks.
        experiment = str(df["experiment"].iloc[0]) if "experiment" in df.columns else None
        findings = [r for r in check_findings([df]) if r["experiment"] == experiment] or None
        path = build_html_report(args.run, Path(args.out) / HTML_NAME if args.out else None,
                                 against=args.against, findings=findings, per_image=args.per_image)
        print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")
        return 0
    path = build_report(args.run, args.out)
    print(path)
    return 0


HTML_NAME = "report.html"


def cmd_findings(args: argparse.Namespace) -> int:
    if args.html:
        _check_output_file(Path(args.html), "--html")
    rows = check_findings([_load_run(r) for r in args.runs], args.impl)
    print(format_findings(rows))
    if args.html:
        print(write_findings_html(rows, Path(args.html)))
    return 0


def cmd_pareto(args: argparse.Namespace) -> int:
    if args.csv:
        _check_output_file(Path(args.csv), "--csv")
    plot = None if args.no_plot else Path(args.plot) if args.plot else Path(args.run) / "report" / "pareto.html"
    if plot is not None:
        _check_output_file(plot, "--plot")
    df = _load_run(args.run)
    res = pareto_analysis.pareto(df, per_image=args.per_image, latency_limit=args.latency_limit,
                                 score=args.score, beta=args.latency_weight, energy=args.energy)
    print(pareto_analysis.format_pareto(res, str(args.run), all_rows=args.all))
    if args.csv:
        res.table.to_csv(args.csv, index=False)
    if plot is not None:
        print(f"\nplot: {write_pareto_html(res, str(args.run), plot)}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    device = args.device
    has_gpu = torch.cuda.is_available()
    if not has_gpu:
        print("GPU: none visible to torch (torch.cuda.is_available() is False)"
              + ("; --device cuda cannot run here" if device == "cuda" else "")
              + "; showing the CPU")
        device = "cpu"
    elif device is None:
        device = "cuda"
    env = collect_environment(device)
    print("environment:")
    print(json.dumps(env, indent=2, default=str))
    print("energy meter:")
    try:
        meter = EnergyMeter(device, EnergyConfig())
        state = f"available ({meter.method})" if meter.available else f"unavailable: {meter.reason}"
    except Exception as exc:  # noqa: BLE001 - info reports what is broken instead of failing
        state = f"unavailable: {type(exc).__name__}: {exc}"
    print(f"  {device}: {state}")
    print("implementations:")
    for line in implementation_table(registry.all_implementations()):
        print(f"  {line}")
    for backend, err in registry.load_errors().items():
        print(f"  load error: {backend}: {err}")
    return 0


def cmd_validate_energy(args: argparse.Namespace) -> int:
    _check_device(args.device)
    out = Path(args.out)
    _check_output_dir(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    result = run_validation(args.device, out, args.quick, training=args.training)
    print(format_validation(result))
    return 0 if result.get("passed") else 1


def cmd_validate_gpus(args: argparse.Namespace) -> int:
    rows = []
    for run in (args.one, args.many):
        path = Path(run)
        log = path / results.RESULTS_FILE if path.is_dir() else path
        if not log.exists():
            raise ValueError(f"{run}: no {results.RESULTS_FILE} (a run directory of layerbench run)")
        rows.append(results.read_records(log))
    result = validate_gpu_runs(rows[0], rows[1], args.energy_tolerance, args.time_tolerance)
    print(format_gpu_validation(result))
    return 0 if result.passed else EXIT_FAILED


def cmd_scaling(args: argparse.Namespace) -> int:
    path = Path(args.run)
    log = path / results.RESULTS_FILE if path.is_dir() else path
    if not log.exists():
        raise ValueError(f"{args.run}: no {results.RESULTS_FILE} (a run directory of layerbench run)")
    rows = [r for r in add_scaling(results.read_records(log)) if "axis_gpus" in r]
    if not rows:
        raise ValueError(f"{args.run}: no gpus axis in this run (see sweeps/multi_gpu.toml)")
    table = Table(title=f"{path}: a layer split over N GPUs (time: the slowest GPU; energy: the sum)")
    for col in ("point", "impl", "gpus", "status", "time us", "speedup", "efficiency", "J/launch", "GFLOP/s/W"):
        table.add_column(col, justify="left" if col in ("point", "impl", "status") else "right")

    def num(v: Any, fmt: str, scale: float = 1.0) -> str:
        return format(v * scale, fmt) if isinstance(v, (int, float)) else "-"
    for r in sorted(rows, key=lambda r: (str(r.get("name") or r.get("layer")), str(r.get("impl")), r["axis_gpus"])):
        table.add_row(str(r.get("name") or r.get("layer")), str(r.get("impl")), str(r["axis_gpus"]),
                      str(r.get("status")), num(r.get("time_median_s"), ".1f", 1e6), num(r.get("dp_speedup"), ".2f"),
                      num(r.get("dp_efficiency"), ".2f"), num(r.get("energy_j_per_launch"), ".4g"),
                      num(r.get("gflops_per_w"), ".1f"))
    Console().print(table)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    out = Path(args.out)
    _check_output_dir(out, "--out")
    if args.report_only:
        df, ceilings = bench.load_bench(out)
    else:
        bench.bench_sets(tuple(args.layers.split(",")), args.where)  # typos are named before the GPU is looked for
        _check_device(args.device, cpu_runs=False)
        scheduler, first_gpu = _gpu_pool(args.gpus) if args.gpus is not None else (None, None)
        try:
            df = bench.run_bench(out, args.device, tuple(args.layers.split(",")), args.resume,
                                 energy=not args.no_energy, progress=not args.no_progress, where=args.where,
                                 scheduler=scheduler, ceilings_gpu=first_gpu)
        except KeyboardInterrupt:  # the verdicts on the rows measured so far, then the usual exit
            try:
                _bench_report(out, *bench.load_bench(out))
            except (ValueError, OSError):  # interrupted before a row was measured: nothing to judge
                pass
            raise
        ceilings = json.loads((out / bench.CEILINGS_FILE).read_text())
    _bench_report(out, df, ceilings)
    return 0


def _bench_report(out: Path, df: pd.DataFrame, ceilings: dict) -> None:
    """The bench's report on ``df``, printed and written to ``out``/bench.md."""
    text = bench.format_bench_report(bench.table(df, ceilings), ceilings, bench.planned_rows())
    (out / "bench.md").write_text(text)
    print(text)


def cmd_export(args: argparse.Namespace) -> int:
    run = Path(args.run)
    if run.is_dir():
        _check_writable(run, "run directory")
    for path in results.export_results(args.run):
        print(path)
    return 0


# -------------------------------------------------------------------------------- parser


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


def _non_negative_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}") from None
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return v


DEBUG_HELP = "show tracebacks for usage errors"
WHERE_HELP = ("keep only the rows this filter admits, in the sweep files' where language (e.g. \"dtype == "
              "'bf16' and layout == 'NHWC'\"; names: the layer's fields, name, dtype, layout, impl)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="layerbench", description="Time, energy and correctness of CNN layer "
                                "kernels (Triton, CuPy, cuDNN/cuBLAS, torch) over parameter sweeps.")
    p.add_argument("--version", action="version", version=f"layerbench {_version()}",
                   help="print the installed version and exit")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        # Accepted after the command too; SUPPRESS keeps a --debug given before it.
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        return sp

    def device(sp: argparse.ArgumentParser, default: str | None = "cuda", choices: tuple[str, ...] = ("cuda", "cpu"),
               help: str = "cuda (default) or cpu: torch and Triton-interpreter kernels, for smoke runs") -> None:
        sp.add_argument("--device", choices=choices, default=default, help=help)

    def sweep_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("file", nargs="+", help="sweep TOML file(s); see sweeps/README.md")
        sp.add_argument("--impl", action="append", default=[], metavar="NAME",
                        help="add an implementation: a registered name, package.module:function "
                             "(imported with the current directory first on the path), or LAYER=... "
                             "for one layer of a mixed sweep (repeatable)")
        sp.add_argument("--only", metavar="NAMES",
                        help="comma-separated implementations of the sweep to keep (others are dropped)")
        sp.add_argument("--where", metavar="EXPR", help=WHERE_HELP)
        sp.add_argument("--quick", action="store_true",
                        help="few timing samples, one short energy window: checks that a sweep runs")
        sp.add_argument("--no-energy", action="store_true", help="time only, no energy windows")

    sp = command("run", "run sweeps")
    sweep_options(sp)
    device(sp)
    sp.add_argument("--out", help="run directory (default runs/EXPERIMENT-TIMESTAMP); with several "
                                  "files, the parent of one directory per experiment")
    sp.add_argument("--resume", action="store_true",
                    help="continue a run: skip points already recorded (default: the newest run "
                         "of this experiment under runs/); a run that never started starts")
    sp.add_argument("--remeasure", action="store_true",
                    help="with several files, measure each file's rows itself (default: a row whose "
                         "config an earlier file of this command recorded is copied from there, its "
                         "copied_from column says so)")
    sp.add_argument("--worker", choices=("auto", "process", "inline"), default="auto",
                    help="where points run: a restartable worker process (auto on a GPU) or this "
                         "process (auto on the CPU)")
    sp.add_argument("--point-timeout", type=_positive_float, default=None, metavar="S",
                    help="kill the worker when one point group takes longer than S seconds "
                         f"(process worker only; default {DEFAULT_POINT_TIMEOUT_S:g})")
    sp.add_argument("--gpus", metavar="all|0,2,5", default=None,
                    help="spread the point groups over these GPUs of this host: one worker process "
                         "per GPU, pinned to it, one result store")
    sp.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                    help="run the point groups as Ray tasks, one GPU each: on a cluster at ADDRESS "
                         "('auto': the cluster this node belongs to), or a local Ray without one "
                         "(needs: pip install 'layerbench[ray]')")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.add_argument("--allow-gpu-settings", action="store_true",
                    help="apply the sweep's GPU-settings axes (sm_clock_mhz, memory_clock_mhz, "
                         "power_limit_w) through NVML; the original settings are saved in the run "
                         "directory and restored after every point group and at the end. Never on a "
                         "GPU shared with others")
    sp.add_argument("--fail-on", type=_fail_on, default=DEFAULT_FAIL_ON, metavar="STATUSES",
                    help=f"exit with 1 when any record of the run has one of these statuses "
                         f"(comma-separated among {', '.join(results.STATUSES)}; default "
                         f"{','.join(DEFAULT_FAIL_ON)}; none: always exit 0 once the run completes)")
    sp.set_defaults(func=cmd_run)

    sp = command("plan", "list sweeps' points, and the rows that will not run here, without running them")
    sweep_options(sp)
    device(sp, help="the device to plan for (default cuda): rows an implementation does not run there "
                    "are shown as unsupported")
    sp.set_defaults(func=cmd_plan)

    sp = command("list", "list layers, implementations or sweep files")
    sp.add_argument("what", nargs="?", choices=("layers", "impls", "sweeps", "all"), default="all",
                    help="what to list (default all)")
    device(sp, default=None, help="list only the implementations that run on this device (default: all)")
    sp.set_defaults(func=cmd_list)

    sp = command("compare", "custom vs reference in RUN, or RUN_B against RUN")
    sp.add_argument("run", help="run directory (or its results.jsonl / results.parquet)")
    sp.add_argument("run_b", nargs="?", help="a second run: each of its rows against the same row of RUN")
    sp.add_argument("--baseline", metavar="NAMES",
                    help="comma-separated implementations of RUN to compare against (default: references)")
    sp.add_argument("--threshold", type=_non_negative_float, default=compare.DEFAULT_THRESHOLD,
                    help=f"ratios within this of 1 count as SAME (>= 0, default {compare.DEFAULT_THRESHOLD})")
    sp.add_argument("--csv", metavar="FILE", help="also write the per-point table as CSV")
    sp.set_defaults(func=cmd_compare)

    sp = command("report", "markdown tables and PNG plots of a run")
    sp.add_argument("run", help="run directory")
    sp.add_argument("--out", help="output directory (default RUN/report)")
    sp.add_argument("--html", action="store_true",
                    help="write one self-contained HTML file (RUN/report/report.html; plotly, no network "
                         "needed) with the tables, interactive plots, custom vs reference and Pareto fronts")
    sp.add_argument("--against", metavar="RUN_B",
                    help="with --html: compare with another run of the same sweep (another GPU): each "
                         "run's GPU, clocks and power limit, and per point the ratio of time, energy, J/GFLOP")
    sp.add_argument("--per-image", action="store_true", help="with --html: Pareto fronts per image, not per launch")
    sp.set_defaults(func=cmd_report)

    sp = command("pareto", "per layer point, the time/energy Pareto front over implementations, dtypes, "
                           "layouts, batch sizes and GPU settings; the best under a latency limit or by score")
    sp.add_argument("run", help="run directory")
    sp.add_argument("--per-image", action="store_true",
                    help="time and energy per image (batch element) instead of per launch: compares batch sizes")
    sp.add_argument("--latency-limit", type=_positive_float, metavar="S",
                    help="pick per point the lowest-energy candidate whose time (per launch, or per image "
                         "with --per-image) is at most S seconds")
    sp.add_argument("--score", action="store_true",
                    help="pick per point the best latency/energy revenue (the inference study's trade-off): "
                         "revenue = images per joule x min(1, L/t)^BETA, t = time per launch, L = "
                         "--latency-limit (default the point's fastest time per launch); shows the gain "
                         "over the default (reference, fp32, NCHW, settings unchanged)")
    sp.add_argument("--latency-weight", type=_non_negative_float, default=pareto_analysis.DEFAULT_BETA,
                    metavar="BETA", help=f"BETA of --score (default {pareto_analysis.DEFAULT_BETA:g}; 0: energy "
                                         "efficiency only)")
    sp.add_argument("--energy", choices=tuple(pareto_analysis.ENERGY_COLUMNS), default="device",
                    help="device energy (default) or system: device + RAPL host, where RAPL was readable")
    sp.add_argument("--all", action="store_true", help="list every candidate, not only the front")
    sp.add_argument("--csv", metavar="FILE", help="also write every candidate as CSV")
    sp.add_argument("--plot", metavar="FILE", help="the interactive plot (default RUN/report/pareto.html)")
    sp.add_argument("--no-plot", action="store_true", help="no plot")
    sp.set_defaults(func=cmd_pareto)

    sp = command("findings", "the thesis's published findings (data with their table numbers) next to ours, "
                             "from runs of the sweeps/thesis files, and whether each still holds")
    sp.add_argument("runs", nargs="+", metavar="RUN", help="run directories of thesis sweeps (recognised by "
                                                           "experiment: alexnet_layers, batch_size, conv_*, fc, pool_method)")
    sp.add_argument("--impl", help="check with this implementation's rows (default: each point's reference "
                                   "with energy: cudnn, cublas)")
    sp.add_argument("--html", metavar="FILE", help="also write the table as a self-contained HTML page")
    sp.set_defaults(func=cmd_findings)

    sp = command("info", "GPU, meters, versions, implementations")
    device(sp, default=None, help="the device to describe (default: cuda where a GPU is visible, else cpu)")
    sp.set_defaults(func=cmd_info)

    sp = command("validate-energy", "check the energy meter against known loads "
                                    "(exit 1 unless every check passes)")
    device(sp)
    sp.add_argument("--out", default="validation", help="output directory (default ./validation)")
    sp.add_argument("--quick", action="store_true", help="fewer and shorter windows")
    sp.add_argument("--training", action="store_true",
                    help="instead of the four checks, thesis Table 5-1 in training mode: the sum of each "
                         "AlexNet layer's training pass (forward and backward, measured alone) against one "
                         "training iteration of the whole network with autograd, time and energy within "
                         "5 percent (writes validate-energy-training.json)")
    sp.set_defaults(func=cmd_validate_energy)

    sp = command("validate-gpus", "check that a sweep on N GPUs gives the records of one GPU: the same "
                                  "keys and statuses, times within noise, J/launch with the other GPUs "
                                  "busy within 3 percent of alone (exit 1 unless all pass)")
    sp.add_argument("one", help="run directory of the sweep on one GPU (e.g. --gpus 0)")
    sp.add_argument("many", help="run directory of the same sweep on N GPUs (--gpus all, --ray)")
    sp.add_argument("--energy-tolerance", type=_non_negative_float, default=ENERGY_TOLERANCE,
                    help=f"J/launch busy vs alone, relative (default {ENERGY_TOLERANCE:g})")
    sp.add_argument("--time-tolerance", type=_non_negative_float, default=TIME_TOLERANCE,
                    help=f"median time, relative, unless the IQRs allow more (default {TIME_TOLERANCE:g})")
    sp.set_defaults(func=cmd_validate_gpus)

    sp = command("scaling", "the multi-GPU experiments of a run (gpus axis): time, speedup and scaling "
                            "efficiency against one GPU, J/launch, GFLOP/s per W")
    sp.add_argument("run", help="run directory")
    sp.set_defaults(func=cmd_scaling)

    sp = command("bench", "custom kernels vs the card's ceilings and the references (sweeps/bench), "
                          "with each performance target's verdict")
    device(sp, choices=("cuda",), help="cuda only: the bench measures the GPU's copy and matrix-product ceilings")
    sp.add_argument("--out", default="runs/bench", help="output directory (default runs/bench)")
    sp.add_argument("--layers", default=",".join(bench.LAYERS),
                    help=f"comma-separated subset of {', '.join(bench.LAYERS)} (default all)")
    sp.add_argument("--resume", action="store_true", help="continue the bench in --out")
    sp.add_argument("--where", metavar="EXPR", help=WHERE_HELP + "; the report marks the targets it leaves "
                                                   "partly measured")
    sp.add_argument("--no-energy", action="store_true", help="time only, no energy windows")
    sp.add_argument("--gpus", metavar="all|0,2,5", default=None,
                    help="spread the sets' point groups over these GPUs of this host (one worker process "
                         "per GPU, one result store per set); the ceilings are measured on the first")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.add_argument("--report-only", action="store_true", help="print the table of an existing --out")
    sp.set_defaults(func=cmd_bench)

    sp = command("export", "write results.parquet and results.csv of a run")
    sp.add_argument("run", help="run directory")
    sp.set_defaults(func=cmd_export)
    return p


def _os_error(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else ""
    return f"{where}: {exc.strerror or exc}" if where else (exc.strerror or str(exc))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "device", None) == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        # layerbench.entry sets it before Triton is imported; a caller of main() must do the same.
        raise SystemExit("layerbench: --device cpu needs TRITON_INTERPRET=1 set before Triton is "
                         "imported (the layerbench command does this)")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        # A crashed run with --allow-gpu-settings left its saved settings: put them back first.
        gpu_settings.restore_leftovers(lambda msg: print(msg, file=sys.stderr))
    except Exception as exc:  # noqa: BLE001 - never stop a command; say what is left to do
        print(f"layerbench: could not check for GPU settings left by a crashed run: {exc}", file=sys.stderr)
    try:
        code = func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below
        return code
    except BrokenPipeError:
        # The reader went away (`layerbench list | head`): stop quietly, as other tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except (ValueError, OSError) as exc:  # SweepError and other bad input: one line, no traceback
        if args.debug:
            raise
        text = _os_error(exc) if isinstance(exc, OSError) else str(exc)
        print(f"layerbench: error: {text}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("layerbench: interrupted; records so far are kept (run again with --resume)",
              file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
