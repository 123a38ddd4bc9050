"""All GPUs of a host (``layerbench run FILE --gpus all|0,2,5``): one worker process per GPU, one queue.

Each GPU gets its own ``ProcessExecutor`` whose worker is spawned with ``CUDA_VISIBLE_DEVICES`` set
to that one GPU, so it is pinned before it imports torch (no daemon besides the workers).  A thread
per GPU in this process pulls point groups from one queue and hands each to its worker; every
record comes back here and is appended to the run's one log by this process only (under one lock),
stamped with where it ran: ``host``, ``gpu_index``, ``gpu_uuid``, ``gpu_name`` and ``busy_gpus``
(the GPUs of the run that were running a group at any time while this group ran: neighbours heat
the board and share the host's power).

Each worker keeps its own energy meter, so the idle baseline, telemetry and thermal state are per
GPU.  A crashed or hung worker costs the implementation it was running (recorded as ``error`` with
the reason, as with one worker) and is restarted; after ``max_failures`` failures in a row its GPU
is retired with a note and the other GPUs take the rest of the queue.  Resume needs nothing here:
the records' identity does not depend on the GPU that ran them.
"""

from __future__ import annotations

import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from layerbench.results.records import Record
from layerbench.run.data_parallel import GPU_ENV
from layerbench.run.executors import Handle, Outcome, ProcessExecutor, Say
from layerbench.run.suspects import Suspects
from layerbench.run.sweep_runner import GroupWriter, MakeWriter
from layerbench.sweep import Measure, Point

DEFAULT_MAX_FAILURES = 3  # crashes or timeouts in a row before a GPU is retired
FAILURES = ("crashed", "timeout")


class Stopped(BaseException):
    """The run was interrupted: a GPU's thread writes nothing more and leaves (what the workers were
    running is not recorded, so that ``--resume`` runs it again)."""


class Worker(Protocol):
    def run(self, point: Point, impls: list[str], handle: Handle) -> Outcome: ...

    def close(self, kill: bool = False) -> None: ...


# ------------------------------------------------------------------------------ the GPUs


def parse_gpus(text: str, present: list[str]) -> list[int]:
    """``--gpus all`` or ``0,2,5`` -> the CUDA indices (positions in ``present``) to run on."""
    text = text.strip()
    if not present:
        raise ValueError(f"--gpus {text}: no GPU is visible here (CUDA_VISIBLE_DEVICES, driver)")
    if text == "all":
        return list(range(len(present)))
    out: list[int] = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit():
            raise ValueError(f"--gpus {text}: {item!r} is not a GPU index; give 'all' or indices like 0,2,5")
        i = int(item)
        if i >= len(present):
            raise ValueError(f"--gpus {text}: GPU {i} is not present (GPUs here: "
                             f"{', '.join(map(str, range(len(present))))})")
        if i in out:
            raise ValueError(f"--gpus {text}: GPU {i} is named twice")
        out.append(i)
    return out


@dataclass
class GpuSlot:
    """One GPU of the pool: its index here, what its worker's CUDA_VISIBLE_DEVICES holds, its
    identity once the worker announced it, and how it fares."""

    index: int
    visible: str
    uuid: str | None = None
    name: str | None = None
    failures: int = 0
    retired: str | None = None  # why, once retired
    last: Outcome | None = field(default=None, repr=False)

    @property
    def env(self) -> dict[str, str]:
        return {GPU_ENV: self.visible}


# ------------------------------------------------------------------------------ the pool


class _SlotWorker:
    """A GPU's worker as the group writer sees it: its outcomes counted, its environment named."""

    def __init__(self, slot: GpuSlot, inner: Worker, on_environment: Callable[[GpuSlot, dict[str, Any]], None]):
        self.slot, self.inner, self.on_environment = slot, inner, on_environment
        environment = getattr(inner, "environment", None)
        # An in-process worker says it at once (passed on with the first group); a process worker
        # sends it as a message when it starts.
        self.pending_env = environment() if callable(environment) else None
        if self.pending_env is not None:
            on_environment(slot, self.pending_env)

    def run(self, point: Point, impls: list[str], handle: Handle) -> Outcome:
        if self.pending_env is not None:
            env, self.pending_env = self.pending_env, None
            handle("environment", env)

        def h(kind: str, payload: Any) -> None:
            if kind == "environment" and isinstance(payload, dict):
                self.on_environment(self.slot, payload)
            handle(kind, payload)
        outcome = self.inner.run(point, impls, h)
        self.slot.last = outcome
        self.slot.failures = self.slot.failures + 1 if outcome.kind in FAILURES else 0
        return outcome

    def close(self, kill: bool = False) -> None:
        self.inner.close(kill=kill)


class GpuPool:
    """Point groups from one queue over one worker per GPU; see the module docstring."""

    def __init__(self, slots: list[GpuSlot], make_worker: Callable[[GpuSlot], Worker],
                 say: Say = print, max_failures: int = DEFAULT_MAX_FAILURES, host: str | None = None):
        if not slots:
            raise ValueError("a GPU pool needs at least one GPU")
        self.slots = slots
        self.say = say
        self.max_failures = max_failures
        self.host = host or socket.gethostname()
        self.lock = threading.RLock()
        self._busy: dict[int, set[int]] = {}  # slot index -> the GPUs seen busy while its group ran
        self._workers = {s.index: _SlotWorker(s, make_worker(s), self._environment) for s in slots}
        self._stop = threading.Event()
        self._errors: list[BaseException] = []

    # ---------------------------------------------------------------- bookkeeping

    def _environment(self, slot: GpuSlot, env: dict[str, Any]) -> None:
        with self.lock:
            slot.uuid = env.get("gpu_uuid") or slot.uuid
            slot.name = env.get("gpu_name") or slot.name
            env.setdefault("worker", f"gpu{slot.index}")
            env.setdefault("host", self.host)
            env.setdefault("cuda_visible_devices", slot.visible)

    def _begin(self, slot: GpuSlot) -> None:
        with self.lock:
            self._busy[slot.index] = set(self._busy) | {slot.index}
            for seen in self._busy.values():
                seen.add(slot.index)

    def _end(self, slot: GpuSlot) -> None:
        with self.lock:
            self._busy.pop(slot.index, None)

    def busy_gpus(self, slot: GpuSlot) -> list[int]:
        with self.lock:
            return sorted(self._busy.get(slot.index, {slot.index}))

    def stamp(self, slot: GpuSlot, rec: Record) -> None:
        """Where ``rec`` ran (called under the lock, as the record is written)."""
        rec.placement = {"host": self.host, "gpu_index": slot.index, "gpu_uuid": slot.uuid,
                         "gpu_name": slot.name, "busy_gpus": self.busy_gpus(slot)}

    # ---------------------------------------------------------------- running

    def run_groups(self, todo: list[tuple[Point, list[str]]], make_writer: MakeWriter) -> None:
        queue = deque(todo)
        threads = [threading.Thread(target=self._serve, args=(slot, queue, make_writer),
                                    name=f"layerbench-gpu{slot.index}", daemon=True)
                   for slot in self.slots]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.2)  # in slices: Ctrl-C reaches this thread
        except BaseException:
            self._stop.set()
            raise
        if self._errors:
            raise self._errors[0]
        if queue:  # every GPU retired: the rest is recorded, not silently dropped
            why = "; ".join(f"GPU {s.index}: {s.retired}" for s in self.slots)
            while queue:
                point, impls = queue.popleft()
                writer = make_writer(point)
                writer.lock = self.lock
                writer.record_errors(impls, f"not run: every GPU of the run was retired ({why})")

    def _guarded(self, write: Callable[[Record], None]) -> Callable[[Record], None]:
        """``write``, unless the run was stopped (Ctrl-C, a harness error): then nothing is written,
        not even the errors of the workers killed on the way out."""
        def guarded(rec: Record) -> None:
            with self.lock:
                if self._stop.is_set():
                    raise Stopped
                write(rec)
        return guarded

    def _next(self, queue: deque[tuple[Point, list[str]]]) -> tuple[Point, list[str]] | None:
        with self.lock:
            return queue.popleft() if queue and not self._stop.is_set() else None

    def _serve(self, slot: GpuSlot, queue: deque[tuple[Point, list[str]]], make_writer: MakeWriter) -> None:
        worker = self._workers[slot.index]
        try:
            while (task := self._next(queue)) is not None:
                point, impls = task
                writer: GroupWriter = make_writer(point)
                writer.lock = self.lock
                writer.stamp = lambda rec, slot=slot: self.stamp(slot, rec)
                writer.write = self._guarded(writer.write)  # type: ignore[method-assign]
                self._begin(slot)
                try:
                    writer.run(worker, impls)
                finally:
                    self._end(slot)
                if slot.failures >= self.max_failures:
                    slot.retired = (f"{slot.failures} failures in a row, the last: "
                                    f"{slot.last.detail if slot.last else '?'}")
                    self.say(f"note: GPU {slot.index} ({slot.name or slot.visible}) retired after "
                             f"{slot.retired}; the other GPUs take its share of the queue")
                    worker.close(kill=True)
                    return
        except Stopped:
            return
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
            with self.lock:
                self._errors.append(exc)
                self._stop.set()

    def close(self, kill: bool = False) -> None:
        for worker in self._workers.values():
            worker.close(kill=kill)


def process_pool(gpus: list[int], present: list[str], device: str, measure: Measure, experiment: str,
                 session: int, timeout_s: float | None = None, say: Say = print,
                 extra_env: dict[str, str] | None = None) -> GpuPool:
    """The pool of ``--gpus``: a spawned worker per GPU, pinned through its environment."""
    slots = [GpuSlot(i, present[i]) for i in gpus]
    suspects = Suspects()  # a build candidate that crashed one GPU's worker is left out on all

    def make(slot: GpuSlot) -> Worker:
        return ProcessExecutor(device, measure, experiment, session, timeout_s,
                               env={**(extra_env or {}), **slot.env}, suspects=suspects)
    return GpuPool(slots, make, say)
