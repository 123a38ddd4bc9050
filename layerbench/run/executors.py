"""Where a point group is evaluated: in this process, or in a worker process.

A worker process (``ProcessExecutor``, the default on a GPU) makes a CUDA error that poisons the
context, a segfault or a hung kernel cost one record, not the sweep: the runner records the
implementation that was running as ``error``, a fresh worker runs the rest of the group.  It also
enforces ``--point-timeout``.  In this process (``InlineExecutor``, the default on the CPU) a group
cannot be stopped from outside, so a timeout is not enforced (and the executor says so once).

Both report through ``handle(kind, payload)`` (see ``layerbench.run.group``) and return an
``Outcome``; the worker adds ``environment`` and ``meter`` messages when it starts.  The worker
process also names the build candidate (a path, a kernel variant) that crashed, hung or poisoned
it, and leaves it out of the run's later builds (``layerbench.run.suspects``).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from layerbench.measure.environment import collect_environment
from layerbench.run.group import GroupEvaluator, Poisoned
from layerbench.run.suspects import AttemptWatch, Suspects
from layerbench.sweep import Measure, Point, point_title

Handle = Callable[[str, Any], None]
Say = Callable[[str], None]

DEFAULT_POINT_TIMEOUT_S = 1200.0


@dataclass
class Outcome:
    kind: str  # done | poisoned | crashed | timeout | failed
    detail: str = ""


def environment_or_error(device: str) -> dict[str, Any]:
    try:
        env = dict(collect_environment(device))
    except Exception as exc:  # noqa: BLE001 - results without an environment beat no results
        env = {"error": f"{type(exc).__name__}: {exc}"}
    # which GPUs this process was given (--gpus pins each worker to one; Ray does the same)
    env.setdefault("cuda_visible_devices", os.environ.get("CUDA_VISIBLE_DEVICES"))
    return env


def phase_text(phase: dict[str, Any]) -> str:
    """``the time phase of triton``, or the group's preparation before any implementation."""
    if not phase.get("impl"):
        return "the preparation of the group's inputs and references"
    return f"the {phase['phase']} phase of {phase['impl']}"


# ------------------------------------------------------------------------- in process


class InlineExecutor:
    """Runs groups in this process (CPU runs and tests); nothing to restart."""

    def __init__(self, device: str, measure: Measure, experiment: str, session: int,
                 timeout_s: float | None = None, say: Say = print):
        self._evaluator = GroupEvaluator(device, measure, experiment, session)
        self._device = device
        if timeout_s is not None:
            say(f"note: --point-timeout {timeout_s:g} s cannot be enforced when points run in this "
                "process (--worker inline, the default on the CPU); use --worker process to enforce it")

    def environment(self) -> dict[str, Any]:
        return environment_or_error(self._device)

    def energy_unavailable(self) -> str | None:
        return self._evaluator.energy_unavailable()

    def run(self, point: Point, impls: list[str], handle: Handle) -> Outcome:
        try:
            self._evaluator.evaluate(point, impls, handle)
        except Poisoned as exc:
            return Outcome("poisoned", str(exc))
        except Exception as exc:  # noqa: BLE001 - a harness bug: recorded, the sweep goes on
            return Outcome("failed", f"{type(exc).__name__}: {exc}")
        return Outcome("done")

    def close(self, kill: bool = False) -> None:
        pass


# ----------------------------------------------------------------------- worker process

_ENV_LOCK = threading.Lock()


@contextmanager
def child_environment(env: dict[str, str] | None) -> Iterator[None]:
    """``env`` set in this process's environment while a child is spawned, then restored: a spawned
    child starts with it, so ``CUDA_VISIBLE_DEVICES`` pins it before it imports torch.  Ctrl-C is
    blocked meanwhile, and the child keeps it blocked through its exec: the parent handles Ctrl-C
    (it stops its children and keeps what was recorded), and a child still importing would
    otherwise die of it with a traceback.  A Ctrl-C pressed meanwhile reaches the parent once
    unblocked."""
    env = env or {}
    with _ENV_LOCK:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


class ParentGone(BaseException):
    """The runner's end of the pipe is closed (it ended or was killed): the worker leaves quietly.

    A BaseException, so that no ``except Exception`` on the way records it as a point's error."""


def serve(conn: Any, device: str, measure: Measure, experiment: str, session: int,
          announce: bool) -> None:
    """Worker-process main loop: receive ``("group", (point, impls, avoid))``, send messages,
    ``("done", None)`` after each; ``("run", (measure, experiment, session))`` goes on with another
    run (the next file of the command) and announces it; None ends.

    ``announce``: first send the environment and whether energy can be measured (the first worker).
    """
    if device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    # Ctrl-C is the parent's to handle: it kills this process and keeps what was recorded.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def emit(kind: str, payload: Any) -> None:
        try:
            conn.send((kind, payload))
        except (OSError, EOFError) as exc:  # BrokenPipeError, ConnectionResetError
            raise ParentGone from exc

    try:
        evaluator = GroupEvaluator(device, measure, experiment, session)
        if announce:
            emit("environment", environment_or_error(device))
            emit("meter", evaluator.energy_unavailable())
        while True:
            try:
                task = conn.recv()
            except (OSError, EOFError) as exc:
                raise ParentGone from exc
            if task is None:
                return
            kind, body = task
            if kind == "run":  # the next sweep file of the command: its evaluator and announcement
                evaluator = GroupEvaluator(device, *body)
                emit("environment", environment_or_error(device))
                emit("meter", evaluator.energy_unavailable())
                continue
            point, impls, avoid = body
            try:
                evaluator.evaluate(point, impls, emit, avoid)
            except Poisoned as exc:
                emit("poisoned", str(exc))
                return
            except Exception as exc:  # noqa: BLE001 - a harness bug: the runner records it, we go on
                emit("failed", f"{type(exc).__name__}: {exc}")
                continue
            emit("done", None)
    except ParentGone:
        return


class ProcessExecutor:
    """Runs groups in a spawned worker process, restarted after a crash or a poisoned context."""

    def __init__(self, device: str, measure: Measure, experiment: str, session: int,
                 timeout_s: float | None = None, env: dict[str, str] | None = None,
                 suspects: Suspects | None = None):
        # env: set in the worker's environment before it starts (--gpus: CUDA_VISIBLE_DEVICES)
        self._env = env
        # the build candidates this run leaves out (shared with the other GPUs' executors)
        self.suspects = suspects if suspects is not None else Suspects()
        self._ctx = multiprocessing.get_context("spawn")
        self._args = (device, measure, experiment, session)
        self._timeout_s = DEFAULT_POINT_TIMEOUT_S if timeout_s is None else timeout_s
        self._proc: Any = None
        self._conn: Any = None
        self._announce = True
        self._next_run: tuple[Measure, str, int] | None = None  # for the worker, before its next group

    def environment(self) -> None:
        return None  # the first worker sends it as an "environment" message

    def start_run(self, measure: Measure, experiment: str, session: int) -> None:
        """Go on with another run (the next sweep file of one command) in this worker, which saves
        a process start, the imports and CUDA's initialisation per file.  Before its next group the
        worker makes that run's evaluator (its own idle baseline) and announces its environment, as
        a new worker would; a worker started later starts with the new run."""
        self._args = (self._args[0], measure, experiment, session)
        self._announce = True
        self._next_run = (measure, experiment, session) if self._proc is not None else None

    def energy_unavailable(self) -> None:
        return None  # the first worker sends it as a "meter" message

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=serve, args=(child, *self._args, self._announce),
                                       daemon=True, name="layerbench-worker")
        with child_environment(self._env):
            self._proc.start()
        child.close()
        self._conn = parent
        self._announce = False

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
        if self._next_run is not None and self._proc is not None:
            try:
                self._conn.send(("run", self._next_run))
                self._announce = False
            except OSError:  # it died between the runs: a new one starts with the new run
                self._stop(kill=True)
        self._next_run = None
        if self._proc is None:
            self._start()
        self._conn.send(("group", (point, impls, self.suspects.snapshot())))
        watch = AttemptWatch()
        started = time.monotonic()
        phase: dict[str, Any] = {}
        phase_started = started
        while True:
            if self._conn.poll(0.2):
                try:
                    kind, payload = self._conn.recv()
                except (EOFError, OSError):
                    return self._suspect(watch, point, self._died())
                if kind == "done":
                    return Outcome("done")
                if kind == "poisoned":
                    self._stop(kill=False)
                    return self._suspect(watch, point, Outcome("poisoned", payload))
                if kind == "failed":
                    return Outcome("failed", payload)
                if kind == "attempt":
                    watch.see(*payload)
                    continue
                if kind == "phase":
                    phase, phase_started = dict(payload), time.monotonic()
                    watch.phase()
                handle(kind, payload)
            elif not self._proc.is_alive():
                return self._suspect(watch, point, self._died())
            elif time.monotonic() - started > self._timeout_s:
                self._stop(kill=True)
                ran = time.monotonic() - phase_started
                return self._suspect(watch, point, Outcome("timeout", (
                    f"timed out in {phase_text(phase)}, which had run {ran:.1f} s; the group had "
                    f"{self._timeout_s:g} s (--point-timeout) and had run "
                    f"{time.monotonic() - started:.1f} s; worker killed")))

    def _suspect(self, watch: AttemptWatch, point: Point, outcome: Outcome) -> Outcome:
        """``outcome``, naming the build candidate to blame where there is one, which the run's
        later builds leave out."""
        culprit = self.suspects.blame(watch, outcome.kind, outcome.detail, point_title(point))
        if culprit is None:
            return outcome
        return Outcome(outcome.kind, f"{outcome.detail} (in the build's candidate {culprit}, left out of "
                                     "the rest of the run)")

    def close(self, kill: bool = False) -> None:
        self._stop(kill=kill)
