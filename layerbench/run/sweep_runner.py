"""Run a sweep: the run directory's lock and sessions, resume bookkeeping, the executor, the
result log and the progress bar.

Each point group goes to an executor (``layerbench.run.executors``): a worker process on a GPU,
so that a crash costs one record, or this process on the CPU.  Every final record is appended to
the run's log at once; ``--resume`` skips the configs already recorded.  A run holds a lock on its
directory, and resumes only with the measurement options it was started with.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from layerbench.measure.gpu_settings import GpuSettings
from layerbench.results.identity import config_hash
from layerbench.results.records import Record
from layerbench.results.rundir import RUN_FILE, ResultLog, RunDir, timestamp
from layerbench.run.data_parallel import DataParallelExecutor, gpus_of, visible_gpus
from layerbench.run.executors import InlineExecutor, Outcome, ProcessExecutor
from layerbench.run.shared_configs import SharedConfigs
from layerbench.sweep import Measure, Point, Sweep, point_title

DEFAULT_RUNS_DIR = Path("runs")
Executor = InlineExecutor | ProcessExecutor
MakeWriter = Callable[[Point], "GroupWriter"]


class Scheduler(Protocol):
    """Runs the groups on many workers at once (``--gpus``: ``run.multi_gpu``, ``--ray``:
    ``run.ray_executor``); each group's records go through the writer it gets from ``make_writer``."""

    def run_groups(self, todo: list[tuple[Point, list[str]]], make_writer: MakeWriter) -> None: ...

    def close(self, kill: bool = False) -> None: ...


# (device, measure, experiment, session, point timeout, say) -> the scheduler of this session
SchedulerFactory = Callable[[str, Measure, str, int, "float | None", Callable[[str], None]], Scheduler]


@dataclass
class WorkerHandoff:
    """The worker process that one run of a command passes on to the next (``RunOptions.handoff``)."""

    executor: ProcessExecutor | None = None

    def close(self) -> None:
        if self.executor is not None:
            self.executor.close()
            self.executor = None


@dataclass
class RunOptions:
    device: str = "cuda"
    out: Path | None = None
    resume: bool = False
    # None: in this process on the CPU (fast tests), a worker process on a GPU.
    in_process: bool | None = None
    # None: the process executor's default (executors.DEFAULT_POINT_TIMEOUT_S), and no note that
    # the in-process executor cannot enforce one.
    point_timeout_s: float | None = None
    progress: bool = True
    # --gpus / --ray: groups spread over several workers (None: one executor, one group at a time)
    scheduler: SchedulerFactory | None = None
    # the GPUs a gpus axis may split a layer over (None: those visible here; tests inject some)
    gpus_present: list[str] | None = None
    # Apply the sweep's GPU-settings axes (clocks, power limit); refused without it.
    allow_gpu_settings: bool = False
    # The rows earlier sweep files of this command recorded: a config among them is copied, not
    # measured again (None: measure every row).  This run's rows are added to it at the end.
    shared: SharedConfigs | None = None
    # The worker process a finished run leaves for the next file of the command (None: each run
    # starts its own and ends it).  Whoever makes it closes its worker at the end.
    handoff: WorkerHandoff | None = None
    argv: list[str] = field(default_factory=lambda: list(sys.argv))


# ------------------------------------------------------------------------------ running


def resolve_run_dir(sweep: Sweep, opts: RunOptions) -> Path:
    if opts.out is not None:
        return Path(opts.out)
    if opts.resume:
        runs = sorted(DEFAULT_RUNS_DIR.glob(f"{sweep.experiment}-*/{RUN_FILE}"))
        if runs:
            return runs[-1].parent
    return DEFAULT_RUNS_DIR / f"{sweep.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def measure_differences(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``timing.fixed_samples: 5 in this run, absent now``: how two sets of measurement options
    differ (``energy_config`` reads as ``energy``, as the sweep file names it)."""
    def named(d: dict[str, Any]) -> dict[str, Any]:
        flat = _flat(d)
        return {k.replace("energy_config.", "energy.").replace("energy_where", "energy.where")
                if k != "energy" else "energy.enabled": v for k, v in flat.items()}

    old, new = named(recorded), named(now)
    out = []
    for key in sorted(old.keys() | new.keys()):
        if key not in new:
            out.append(f"{key}: {old[key]!r} in this run, absent now")
        elif key not in old:
            out.append(f"{key}: absent in this run, {new[key]!r} now")
        elif old[key] != new[key]:
            out.append(f"{key}: {old[key]!r} in this run, {new[key]!r} now")
    return out


def open_run(sweep: Sweep, opts: RunOptions, rundir: RunDir) -> dict[str, Any]:
    """run.json of a new run, or of the run to resume after checking it is the same measurement."""
    measure = sweep.measure.to_dict()
    if opts.resume and rundir.has_run():
        run = rundir.read_meta()
        if run.get("device") != opts.device:
            raise ValueError(f"--resume: {rundir.path} ran on {run.get('device')}, not {opts.device}; "
                             f"pass --device {run.get('device')}")
        if run.get("experiment") != sweep.experiment:
            raise ValueError(f"--resume: {rundir.path} holds experiment {run.get('experiment')!r}, "
                             f"not {sweep.experiment!r}")
        sessions = [s for s in run.get("sessions", []) if "measure" in s]
        recorded = sessions[-1]["measure"] if sessions else run.get("measure")
        diff = measure_differences(recorded, measure) if recorded is not None else []
        if diff:
            raise ValueError(f"--resume: {rundir.path} was run with other measurement options "
                             f"({'; '.join(diff)}); resume with the run's options, or choose "
                             "another --out")
        return run
    if rundir.has_records():
        if opts.resume:
            raise ValueError(f"--resume: {rundir.path} holds results but no {RUN_FILE} (what was run, and how), "
                             f"so they cannot be checked to be the same measurement; restore {RUN_FILE} from "
                             "where the results came from, or choose another --out")
        raise ValueError(f"{rundir.path} already holds results; pass --resume to continue it, "
                         "or choose another --out")
    run = {"experiment": sweep.experiment, "title": sweep.title, "thesis": sweep.thesis,
           "description": sweep.description, "sweep_file": str(sweep.path), "sweep_text": sweep.text,
           "axes": sweep.axis_names, "device": opts.device, "measure": measure,
           "created": timestamp(), "sessions": []}
    rundir.write_meta(run)
    return run


def run_sweep(sweep: Sweep, opts: RunOptions, console: Console | None = None) -> Path:
    """Run every point of ``sweep`` not yet recorded in the run directory; return the directory."""
    console = console or Console(stderr=True)
    say = lambda msg: console.print(msg, markup=False, highlight=False)  # noqa: E731
    rundir = RunDir(resolve_run_dir(sweep, opts), say=say)
    rundir.lock()
    try:
        return _run_locked(sweep, opts, rundir, console, say)
    finally:
        rundir.unlock()


def _run_locked(sweep: Sweep, opts: RunOptions, rundir: RunDir, console: Console,
                say: Callable[[str], None]) -> Path:
    run = open_run(sweep, opts, rundir)
    session = rundir.new_session(run, opts.argv, sweep.measure.to_dict())
    log = rundir.open_log()  # cuts (and reports) a torn last line before anything is read
    done = rundir.done_hashes()
    measure, device = sweep.measure, opts.device
    todo = []
    copied = 0
    for point in sweep.points:
        impls = []
        for n in point.implementations:
            if config_hash(point, n, measure, device) in done:
                continue
            row = None if opts.shared is None else opts.shared.get(
                Record.for_point(point, n, measure, device, sweep.experiment, session))
            if row is None:
                impls.append(n)
            else:
                log.append(row)
                copied += 1
        if impls:
            todo.append((point, impls))
    total = sum(len(impls) for _, impls in todo)
    if done:
        say(f"resuming {rundir.path}: {len(done)} records kept, {total} to run")
    if copied:
        say(f"{rundir.path}: {copied} records copied from earlier files of this command "
            "(the same configs; --remeasure measures them again)")
    wants_energy = any(p.energy_impls and p.invalid is None for p, _ in todo)

    in_process = opts.in_process if opts.in_process is not None else device == "cpu"
    executor: Executor | Scheduler
    scheduler = None
    if opts.scheduler is not None:  # its workers announce their environments, one per GPU
        executor = scheduler = opts.scheduler(device, measure, sweep.experiment, session,
                                              opts.point_timeout_s, say)
    elif in_process:
        executor = InlineExecutor(device, measure, sweep.experiment, session, opts.point_timeout_s, say)
        rundir.record_environment(run, session, executor.environment())
        if wants_energy:
            _say_energy_unavailable(executor.energy_unavailable(), say)
    elif opts.handoff is not None and opts.handoff.executor is not None:
        executor = opts.handoff.executor
        opts.handoff.executor = None  # this run's until it ends
        executor.start_run(measure, sweep.experiment, session)
    else:
        executor = ProcessExecutor(device, measure, sweep.experiment, session, opts.point_timeout_s)
    worker = executor if isinstance(executor, ProcessExecutor) else None
    if any(gpus_of(p) > 1 for p, _ in todo):
        if scheduler is not None:
            raise ValueError("a gpus axis (a layer split over several GPUs) uses the GPUs itself: "
                             "run this sweep without --gpus/--ray")
        executor = DataParallelExecutor(executor, device, measure, sweep.experiment, session,
                                        visible_gpus() if opts.gpus_present is None else opts.gpus_present,
                                        opts.point_timeout_s)

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                        console=console, disable=not opts.progress)
    task = progress.add_task(sweep.experiment, total=total)
    finished = False
    progress_say = lambda msg: progress.console.print(msg, markup=False, highlight=False)  # noqa: E731

    def on_message(kind: str, payload: Any) -> None:
        if kind == "environment" and "worker" in payload:  # one of several workers: one per GPU/host
            workers = run["sessions"][session].setdefault("worker_environments", {})
            workers[str(payload["worker"])] = payload
            if run["sessions"][session].get("environment") is None:
                run["sessions"][session]["environment"] = payload
            rundir.write_meta(run)
        elif kind == "environment":
            rundir.record_environment(run, session, payload)
        elif kind == "meter" and wants_energy:
            _say_energy_unavailable(payload, progress_say)

    settings = None
    if sweep.settings_axes and todo:
        settings = GpuSettings(rundir.path, device, opts.allow_gpu_settings, say)
    try:
        with progress:
            def make_writer(point: Point) -> GroupWriter:
                return GroupWriter(point, sweep, device, session, log, on_message,
                                   lambda: progress.advance(task), progress_say)

            if scheduler is not None:
                scheduler.run_groups(todo, make_writer)
            else:
                for point, impls in todo:
                    progress.update(task, description=point_title(point))
                    group = make_writer(point)
                    try:
                        if settings is not None:
                            group.settings = settings.apply(point.settings)
                        group.run(executor, impls)
                    finally:
                        if settings is not None:
                            settings.restore()  # after every point group
        finished = True
    finally:
        log.close()
        if opts.shared is not None:
            opts.shared.add(rundir.records())
        if finished and opts.handoff is not None and worker is not None and executor is worker:
            opts.handoff.executor = worker  # the next file's run goes on in it
        else:
            executor.close(kill=not finished)  # on Ctrl-C or a harness error: no waiting
        if settings is not None:
            settings.close()  # the end, Ctrl-C, SIGTERM: the original settings, the saved file gone
        if finished and rundir.has_records():
            try:
                rundir.export()
            except Exception as exc:  # noqa: BLE001 - the log holds everything; export can be redone
                say(f"export failed ({type(exc).__name__}: {exc}); the records are safe in "
                    f"{rundir.log_path}; retry with: layerbench export {rundir.path}")
    return rundir.path


def _say_energy_unavailable(reason: str | None, say: Callable[[str], None]) -> None:
    if reason is not None:
        say(f"note: energy will not be measured: {reason} (records say energy_method 'unavailable'; "
            "--no-energy times only)")


class GroupWriter:
    """One group's records on their way to the log, through as many workers as it takes."""

    def __init__(self, point: Point, sweep: Sweep, device: str, session: int, log: ResultLog,
                 on_message: Callable[[str, Any], None], advance: Callable[[], None],
                 say: Callable[[str], None]):
        self.point, self.sweep, self.device, self.session = point, sweep, device, session
        self.log, self.on_message, self.advance, self.say = log, on_message, advance, say
        self.remaining: list[str] = []
        self.pending: dict[str, Record] = {}  # timed, energy not yet measured
        self.phase: dict[str, Any] = {}  # what runs now: {"impl", "phase"}, since phase_started
        self.phase_started = time.monotonic()
        # Several workers at once (a Scheduler): one lock for the log, and where a record ran.
        self.lock: Any = contextlib.nullcontext()
        self.stamp: Callable[[Record], None] | None = None
        self.settings: dict[str, Any] = {}  # the GPU settings in effect, as record columns

    def write(self, rec: Record) -> None:
        with self.lock:
            self._write(rec)

    def _write(self, rec: Record) -> None:
        if self.stamp is not None:
            self.stamp(rec)
        # When the record was written: the gaps between records show what each point cost.
        rec.recorded_at = timestamp()
        rec.settings = dict(self.settings)
        self.log.append(rec)
        self.pending.pop(rec.impl, None)
        if rec.impl in self.remaining:
            self.remaining.remove(rec.impl)
        self.advance()
        if rec.status != "ok":
            self.say(f"{point_title(self.point)} {rec.impl}: {rec.status}: {rec.message}")

    def handle(self, kind: str, payload: Any) -> None:
        if kind == "record":
            self.write(payload)
        elif kind == "partial":
            self.pending[payload.impl] = payload
        elif kind == "phase":
            self.phase = dict(payload)
            self.phase_started = time.monotonic()
        else:
            with self.lock:
                self.on_message(kind, payload)

    def doing(self) -> str:
        """The point, and the implementation and phase running for how long."""
        title = point_title(self.point)
        if not self.phase:
            return f"{title} (preparing its inputs)"
        seconds = time.monotonic() - self.phase_started
        return f"{title} {self.phase['impl']} ({self.phase['phase']}, {seconds:.0f} s in)"

    def record_errors(self, names: list[str], message: str) -> None:
        for name in names:
            rec = self.pending.get(name) or Record.for_point(
                self.point, name, self.sweep.measure, self.device, self.sweep.experiment, self.session)
            self.write(rec.finish("error", message))

    def run(self, executor: Executor, impls: list[str]) -> None:
        self.remaining = list(impls)
        while self.remaining:
            self.phase, self.pending, self.phase_started = {}, {}, time.monotonic()
            try:
                outcome: Outcome = executor.run(self.point, list(self.remaining), self.handle)
            except KeyboardInterrupt:  # say where it stopped: a long build or search shows here
                self.say(f"stopped at {self.doing()}")
                raise
            if outcome.kind == "done":
                if self.remaining:  # the worker returned without a record for these: a harness bug
                    self.record_errors(list(self.remaining), "no result was recorded for this implementation")
                return
            if outcome.kind == "poisoned":
                continue  # the culprit is recorded; the rest of the group runs in a fresh worker
            if outcome.kind == "failed":
                self.record_errors(list(self.remaining), f"harness error: {outcome.detail}")
                return
            # crashed or timed out: blame what was running; a group-wide phase takes all with it.
            culprit = self.phase.get("impl")
            detail = outcome.detail
            if outcome.kind == "crashed":
                detail += f" during {self.phase['phase']} of {culprit}" if culprit else " while preparing inputs"
            if culprit is None or self.phase.get("phase") == "energy" or culprit not in self.remaining:
                self.record_errors(list(self.remaining), detail)
            else:
                self.record_errors([culprit], detail)
