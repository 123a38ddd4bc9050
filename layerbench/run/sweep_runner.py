"""Run a sweep: resume bookkeeping, the worker process, the result log and the progress bar.

Points run in a spawned worker process (``layerbench.worker.serve``) so that a CUDA error that
poisons the context, a segfault or a hung kernel costs one record, not the sweep: the runner
records the implementation that was running as ``error`` with the reason, starts a fresh worker
and runs the rest of the group there.  On the CPU the group can run in this process instead.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from layerbench.results import rundir as results
from layerbench.results.rundir import ResultLog
from layerbench.sweep import Measure, Point, Sweep, axis_label

Handle = Callable[[str, Any], None]

DEFAULT_RUNS_DIR = Path("runs")


@dataclass
class RunOptions:
    device: str = "cuda"
    out: Path | None = None
    resume: bool = False
    # None: in this process on the CPU (fast tests), a worker process on a GPU.
    in_process: bool | None = None
    point_timeout_s: float = 1200.0
    progress: bool = True
    argv: list[str] = field(default_factory=lambda: list(sys.argv))


@dataclass
class Outcome:
    kind: str  # done | poisoned | crashed | timeout | failed
    detail: str = ""


def point_title(point: Point) -> str:
    """``conv1 batch=64 fp32 NCHW``: how progress and messages name a group."""
    axes = " ".join(f"{k}={axis_label(v)}" for k, v in point.axes.items())
    return " ".join(p for p in (point.label or point.layer, axes, point.dtype, point.layout) if p)


# --------------------------------------------------------------------------- executors


class InlineExecutor:
    """Runs groups in this process (CPU runs and tests); nothing to restart."""

    def __init__(self, device: str, measure: Measure, experiment: str, session: int):
        from layerbench.run.group import GroupEvaluator

        self._runner = GroupEvaluator(device, measure, experiment, session)
        self._device = device

    def environment(self) -> dict[str, Any]:
        from layerbench.run.group import environment

        return environment(self._device)

    def run(self, point: Point, impls: list[str], handle: Handle) -> Outcome:
        from layerbench.run.group import Poisoned

        try:
            self._runner.run(point, impls, handle)
        except Poisoned as exc:
            return Outcome("poisoned", str(exc))
        except Exception as exc:  # noqa: BLE001 - a harness bug: recorded, the sweep goes on
            return Outcome("failed", f"{type(exc).__name__}: {exc}")
        return Outcome("done")

    def close(self, kill: bool = False) -> None:
        pass


class ProcessExecutor:
    """Runs groups in a spawned worker process, restarted after a crash or a poisoned context."""

    def __init__(self, device: str, measure: Measure, experiment: str, session: int, timeout_s: float):
        self._ctx = multiprocessing.get_context("spawn")
        self._args = (device, measure, experiment, session)
        self._timeout_s = timeout_s
        self._proc: Any = None
        self._conn: Any = None
        self._env_pending = True

    def environment(self) -> None:
        return None  # the first worker sends it as an "environment" message

    def _start(self) -> None:
        from layerbench.run.group import serve

        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=serve, args=(child, *self._args, self._env_pending),
                                       daemon=True, name="layerbench-worker")
        self._proc.start()
        child.close()
        self._conn = parent
        self._env_pending = False

    def _stop(self, kill: bool) -> None:
        if self._proc is None:
            return
        if not kill:
            try:
                self._conn.send(None)
            except OSError:
                pass
            self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(10)
        self._conn.close()
        self._proc = self._conn = None

    def _died(self) -> Outcome:
        self._proc.join(5)
        code = self._proc.exitcode
        why = f"exit code {code}"
        if code is not None and code < 0:
            try:
                why = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                pass
        self._stop(kill=True)
        return Outcome("crashed", f"worker process died ({why})")

    def run(self, point: Point, impls: list[str], handle: Handle) -> Outcome:
        if self._proc is None:
            self._start()
        self._conn.send((point, impls))
        deadline = time.monotonic() + self._timeout_s
        while True:
            if self._conn.poll(0.2):
                try:
                    kind, payload = self._conn.recv()
                except (EOFError, OSError):
                    return self._died()
                if kind == "done":
                    return Outcome("done")
                if kind == "poisoned":
                    self._stop(kill=False)
                    return Outcome("poisoned", payload)
                if kind == "failed":
                    return Outcome("failed", payload)
                handle(kind, payload)
            elif not self._proc.is_alive():
                return self._died()
            elif time.monotonic() > deadline:
                self._stop(kill=True)
                return Outcome("timeout", f"no result within {self._timeout_s:g} s (worker killed)")

    def close(self, kill: bool = False) -> None:
        self._stop(kill=kill)


# ------------------------------------------------------------------------------ running


def resolve_run_dir(sweep: Sweep, opts: RunOptions) -> Path:
    if opts.out is not None:
        return Path(opts.out)
    if opts.resume:
        runs = sorted(DEFAULT_RUNS_DIR.glob(f"{sweep.experiment}-*/{results.RUN_FILE}"))
        if runs:
            return runs[-1].parent
    return DEFAULT_RUNS_DIR / f"{sweep.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"


def _open_run(sweep: Sweep, opts: RunOptions, run_dir: Path) -> dict[str, Any]:
    log = run_dir / results.RESULTS_FILE
    if opts.resume and (run_dir / results.RUN_FILE).exists():
        run = results.read_run(run_dir)
        if run.get("device") != opts.device:
            raise ValueError(f"--resume: {run_dir} ran on {run.get('device')}, not {opts.device}; "
                             f"pass --device {run.get('device')}")
        if run.get("experiment") != sweep.experiment:
            raise ValueError(f"--resume: {run_dir} holds experiment {run.get('experiment')!r}, "
                             f"not {sweep.experiment!r}")
        return run
    if log.exists() and log.stat().st_size > 0:
        raise ValueError(f"{run_dir} already holds results; pass --resume to continue it, "
                         "or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    run = {"experiment": sweep.experiment, "title": sweep.title, "thesis": sweep.thesis,
           "description": sweep.description, "sweep_file": str(sweep.path), "sweep_text": sweep.text,
           "axes": sweep.axis_names, "device": opts.device, "measure": sweep.measure.to_dict(),
           "created": results.timestamp(), "sessions": []}
    results.write_run(run_dir, run)
    return run


def run_sweep(sweep: Sweep, opts: RunOptions, console: Console | None = None) -> Path:
    """Run every point of ``sweep`` not yet recorded in the run directory; return the directory."""
    console = console or Console(stderr=True)
    run_dir = resolve_run_dir(sweep, opts)
    run = _open_run(sweep, opts, run_dir)
    session = results.start_session(run_dir, run, opts.argv)
    log_path = run_dir / results.RESULTS_FILE
    done = results.done_hashes(log_path)
    measure, device = sweep.measure, opts.device
    todo = []
    for point in sweep.points:
        impls = [n for n in point.implementations if point.config_hash(n, measure, device) not in done]
        if impls:
            todo.append((point, impls))
    total = sum(len(impls) for _, impls in todo)
    if done:
        console.print(f"resuming {run_dir}: {len(done)} records kept, {total} to run")

    in_process = opts.in_process if opts.in_process is not None else device == "cpu"
    executor: InlineExecutor | ProcessExecutor
    if in_process:
        executor = InlineExecutor(device, measure, sweep.experiment, session)
        results.set_environment(run_dir, run, session, executor.environment())
    else:
        executor = ProcessExecutor(device, measure, sweep.experiment, session, opts.point_timeout_s)

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                        console=console, disable=not opts.progress)
    task = progress.add_task(sweep.experiment, total=total)
    log = ResultLog(log_path)
    finished = False
    try:
        with progress:
            for point, impls in todo:
                progress.update(task, description=point_title(point))
                _run_group(point, impls, executor, log, run_dir, run, session, sweep, device,
                           lambda: progress.advance(task), lambda msg: progress.console.print(msg))
        finished = True
    finally:
        log.close()
        executor.close(kill=not finished)  # on Ctrl-C or a harness error: no waiting
        if finished and log_path.stat().st_size:
            try:
                results.export_results(run_dir)
            except Exception as exc:  # noqa: BLE001 - the log holds everything; export can be redone
                console.print(f"export failed ({type(exc).__name__}: {exc}); the records are safe in "
                              f"{log_path}; retry with: layerbench export {run_dir}")
    return run_dir


def _run_group(point: Point, impls: list[str], executor: InlineExecutor | ProcessExecutor,
               log: ResultLog, run_dir: Path, run: dict[str, Any], session: int, sweep: Sweep,
               device: str, advance: Callable[[], None], say: Callable[[str], None]) -> None:
    remaining = list(impls)
    pending: dict[str, dict[str, Any]] = {}  # partial records (timed, energy not yet measured)
    phase: dict[str, str] = {}

    def write(rec: dict[str, Any]) -> None:
        # When the record was written: the gaps between records show what each point cost.
        rec = rec | {"recorded_at": results.timestamp()}
        log.append(rec)
        pending.pop(rec["impl"], None)
        if rec["impl"] in remaining:
            remaining.remove(rec["impl"])
        advance()
        if rec["status"] != "ok":
            say(f"{point_title(point)} {rec['impl']}: {rec['status']}: {rec['message']}")

    def handle(kind: str, payload: Any) -> None:
        if kind == "record":
            write(payload)
        elif kind == "partial":
            pending[payload["impl"]] = payload
        elif kind == "phase":
            phase.clear()
            phase.update(payload)
        elif kind == "environment":
            results.set_environment(run_dir, run, session, payload)

    def fail(names: list[str], message: str) -> None:
        for name in names:
            rec = pending.get(name) or results.base_record(point, name, sweep.measure, device,
                                                           sweep.experiment, session)
            write(rec | {"status": "error", "message": message})

    while remaining:
        phase.clear()
        pending.clear()
        outcome = executor.run(point, list(remaining), handle)
        if outcome.kind == "done":
            if remaining:  # the worker returned without a record for these: a harness bug
                fail(list(remaining), "no result was recorded for this implementation")
            return
        if outcome.kind == "poisoned":
            continue  # the culprit is recorded; the rest of the group runs in a fresh worker
        if outcome.kind == "failed":
            fail(list(remaining), f"harness error: {outcome.detail}")
            return
        # crashed or timed out: blame what was running; a group-wide phase takes all with it.
        culprit = phase.get("impl")
        where = f" during {phase['phase']} of {culprit}" if culprit else " while preparing inputs"
        if culprit is None or phase.get("phase") == "energy" or culprit not in remaining:
            fail(list(remaining), outcome.detail + where)
        else:
            fail([culprit], outcome.detail + where)
