"""A cluster through Ray (``layerbench run FILE --ray [ADDRESS]``): point groups run on Ray, each
on one exclusive GPU; the records come back to the driver, which writes the run's one store.

Ray is optional (``pip install 'layerbench[ray]'``) and imported only here, when ``--ray`` is given.
The driver starts one ``GroupWorker`` actor per GPU of the cluster (``num_gpus=1``; on the CPU
``num_gpus=0`` and one per CPU): Ray sets the actor's ``CUDA_VISIBLE_DEVICES`` to its GPU before
the actor touches CUDA, for the actor's life.  Each point group is one call of an actor (a Ray task
on that GPU), taken from one queue by the next free actor; an actor evaluates the group as a worker
process does (``GroupEvaluator``, whose energy meter and idle baseline are per GPU) and returns its
messages; the driver replays them through the group's writer, stamped with where the group ran
(``host``, ``gpu_index`` as Ray numbered it, ``gpu_uuid``, ``gpu_name``) and ``busy_gpus`` (the
``host:gpu`` of the groups, finished by then, that overlapped it in time).  A worker that dies or
exceeds ``--point-timeout`` costs its group (recorded ``error`` with the reason) and is replaced;
after ``max_failures`` in a row its slot is retired.  A build candidate whose error poisoned a
worker's CUDA context is left out of later groups (``run.suspects``; a task that died returns no
messages, so none is named then).  Resume is the runner's: the records' identity does not depend
on where they ran.

``address``: None starts a Ray on this machine; ``auto`` joins the cluster this node belongs to
(``ray start`` ran on it: KubeRay's head pod, or ``ray start --head`` inside a SLURM allocation,
see README.md); ``ray://host:10001`` is a Ray client connection.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any, Callable

from layerbench.run.executors import DEFAULT_POINT_TIMEOUT_S, Handle, Outcome, Say, environment_or_error
from layerbench.run.group import GroupEvaluator, Poisoned
from layerbench.run.suspects import AttemptWatch, Suspects
from layerbench.run.sweep_runner import MakeWriter
from layerbench.sweep import Measure, Point, point_title

INSTALL_HINT = "pip install 'layerbench[ray]'"
DEFAULT_MAX_FAILURES = 3  # a GPU's workers dying this many times in a row: it is retired


class RayMissing(ValueError):
    """``--ray`` without Ray installed (a usage error: exit 2)."""


def require_ray() -> Any:
    try:
        import ray  # lazy: Ray is an optional dependency, loaded only for --ray
    except ImportError:
        raise RayMissing(f"--ray needs Ray, which is not installed here: {INSTALL_HINT}") from None
    return ray


def task_placement(env: dict[str, Any], gpu_ids: list[Any]) -> dict[str, Any]:
    """Where a task ran, from its worker's environment and the GPU ids Ray gave it."""
    return {"host": socket.gethostname(),
            "gpu_index": int(gpu_ids[0]) if gpu_ids and str(gpu_ids[0]).isdigit() else None,
            "gpu_uuid": env.get("gpu_uuid"), "gpu_name": env.get("gpu_name")}


class GroupWorker:
    """One GPU's worker on the cluster (a Ray actor with ``num_gpus=1``): Ray pins it to its GPU
    for life (``CUDA_VISIBLE_DEVICES`` before the actor's process touches CUDA), and it keeps one
    ``GroupEvaluator``, so the energy meter and its idle baseline are per GPU and paid once.

    An actor, not a plain task per group: Ray runs a GPU task in a fresh process each time
    (``max_calls=1`` for GPU tasks), which would pay torch's import, the CUDA context and the idle
    baseline for every group.  Each group is still one call (a task of the actor) on one GPU."""

    def __init__(self, device: str, measure: Measure, experiment: str, session: int,
                 prepare: Callable[[], None] | None = None):
        if prepare is not None:  # tests: fakes installed in the Ray worker
            prepare()
        self.evaluator = GroupEvaluator(device, measure, experiment, session)
        self.env = environment_or_error(device)
        self.placement = task_placement(self.env, require_ray().get_gpu_ids())

    def evaluate(self, point: Point, impls: list[str], avoid: dict[str, str] | None = None) -> dict[str, Any]:
        """The group's messages, this worker's environment and where it ran; ``avoid``: the build
        candidates to leave out (``layerbench.run.suspects``)."""
        messages: list[tuple[str, Any]] = []
        started = time.time()
        outcome, detail = "done", ""
        try:
            self.evaluator.evaluate(point, impls, lambda kind, payload: messages.append((kind, payload)), avoid)
        except Poisoned as exc:
            outcome, detail = "poisoned", str(exc)
            # This worker's CUDA context is gone: end the process once the result is on its way;
            # the driver starts another worker on the GPU.
            threading.Timer(1.0, os._exit, args=(3,)).start()
        except Exception as exc:  # noqa: BLE001 - a harness bug: recorded, the sweep goes on
            outcome, detail = "failed", f"{type(exc).__name__}: {exc}"
        return {"messages": messages, "outcome": outcome, "detail": detail, "environment": self.env,
                "started": started, "ended": time.time(), "placement": dict(self.placement)}


class _Replay:
    """A finished task's result as an executor for the group's writer; a second call (after a
    poisoned CUDA context cost its culprit) runs the rest of the group in a fresh task."""

    def __init__(self, result: dict[str, Any] | None, failure: str | None,
                 resubmit: Callable[[Point, list[str]], dict[str, Any]], suspects: Suspects):
        self.result, self.failure, self.resubmit = result, failure, resubmit
        self.suspects = suspects

    def run(self, point: Point, impls: list[str], handle: Handle) -> Outcome:
        if self.failure is not None:
            # The task died or was cancelled: nothing came back, every remaining implementation is
            # recorded with the reason ("timeout": the writer adds no phase to it).
            return Outcome("timeout", self.failure)
        result = self.result if self.result is not None else self.resubmit(point, impls)
        self.result = None
        watch = AttemptWatch()
        for kind, payload in result["messages"]:
            if kind == "attempt":
                watch.see(*payload)
                continue
            if kind == "phase":
                watch.phase()
            handle(kind, payload)
        if result["outcome"] == "done":
            return Outcome("done")
        if result["outcome"] == "poisoned":  # the culprit is recorded; the rest in a fresh task
            self.suspects.blame(watch, "poisoned", result["detail"], point_title(point))
            return Outcome("poisoned", result["detail"])
        return Outcome("failed", result["detail"])


class RayScheduler:
    """One ``GroupWorker`` actor per GPU of the cluster (per CPU on a CPU run, up to ``workers``);
    each takes the next group from one queue; records are written on the driver as groups finish."""

    def __init__(self, ray: Any, device: str, measure: Measure, experiment: str, session: int,
                 timeout_s: float | None = None, say: Say = print, workers: int | None = None,
                 prepare: Callable[[], None] | None = None, max_failures: int = DEFAULT_MAX_FAILURES):
        self.ray, self.device, self.measure = ray, device, measure
        self.experiment, self.session, self.say = experiment, session, say
        self.timeout_s = DEFAULT_POINT_TIMEOUT_S if timeout_s is None else timeout_s
        self.prepare = prepare
        self.max_failures = max_failures
        gpus = 1 if device == "cuda" else 0
        options: dict[str, Any] = {"num_gpus": gpus, "num_cpus": 0 if gpus else 1, "max_restarts": 0}
        if device == "cpu":
            options["runtime_env"] = {"env_vars": {"TRITON_INTERPRET": "1"}}
        self.actor_class = ray.remote(GroupWorker).options(**options)
        resources = ray.cluster_resources()
        self.n_workers = workers or max(1, int(resources.get("GPU" if gpus else "CPU", 1)))
        self._actors: dict[int, Any] = {}
        self._failures: dict[int, int] = {}
        self._retired: dict[int, str] = {}
        self._in_flight: dict[Any, tuple[int, Point, list[str], float]] = {}
        self._seen_env: set[str] = set()
        self._finished: list[tuple[str, float, float]] = []  # (host:gpu, started, ended) of each group
        self.suspects = Suspects()  # build candidates that poisoned a worker, left out of later groups

    def _actor(self, slot: int) -> Any:
        if slot not in self._actors:
            self._actors[slot] = self.actor_class.remote(self.device, self.measure, self.experiment,
                                                         self.session, self.prepare)
        return self._actors[slot]

    def _replace(self, slot: int) -> None:
        actor = self._actors.pop(slot, None)
        if actor is not None:
            try:
                self.ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass

    def _failed(self, slot: int, why: str) -> None:
        self._replace(slot)
        self._failures[slot] = self._failures.get(slot, 0) + 1
        if self._failures[slot] >= self.max_failures:
            self._retired[slot] = why
            self.say(f"note: Ray worker {slot} retired after {self._failures[slot]} failures in a row "
                     f"(the last: {why}); the other workers take the rest")

    def run_groups(self, todo: list[tuple[Point, list[str]]], make_writer: MakeWriter) -> None:
        queue = list(reversed(todo))
        while queue or self._in_flight:
            busy = {slot for slot, *_ in self._in_flight.values()}
            free = [s for s in range(self.n_workers) if s not in busy and s not in self._retired]
            if not free and not self._in_flight:  # every worker retired: the rest is recorded
                why = "; ".join(f"worker {k}: {v}" for k, v in self._retired.items())
                for point, impls in reversed(queue):
                    self._write(point, impls, None, f"not run: every Ray worker was retired ({why})", make_writer)
                return
            for slot in free:
                if not queue:
                    break
                point, impls = queue.pop()
                ref = self._actor(slot).evaluate.remote(point, impls, self.suspects.snapshot())
                self._in_flight[ref] = (slot, point, impls, time.monotonic())
            done, _ = self.ray.wait(list(self._in_flight), num_returns=1, timeout=1.0)
            for ref in done:
                slot, point, impls, _started = self._in_flight.pop(ref)
                try:
                    result, failure = self.ray.get(ref), None
                except Exception as exc:  # noqa: BLE001 - the worker died: its group's error
                    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
                    result, failure = None, f"Ray worker failed: {type(exc).__name__}: {lines[-1] if lines else ''}"
                    self._failed(slot, failure)
                else:
                    self._failures[slot] = 0
                self._write(point, impls, result, failure, make_writer, slot)
            # a hung GPU: its worker is killed, its group recorded
            now = time.monotonic()
            for ref, (slot, point, impls, started) in list(self._in_flight.items()):
                if now - started > self.timeout_s:
                    self._in_flight.pop(ref)
                    why = (f"timed out: the group had {self.timeout_s:g} s (--point-timeout); "
                           "its Ray worker was killed")
                    self._failed(slot, why)
                    self._write(point, impls, None, why, make_writer)

    def _write(self, point: Point, impls: list[str], result: dict[str, Any] | None, failure: str | None,
               make_writer: MakeWriter, slot: int | None = None) -> None:
        writer = make_writer(point)
        placement: dict[str, Any] = {"host": None, "gpu_index": None, "gpu_uuid": None, "gpu_name": None}
        if result is not None:
            placement.update(result["placement"])
            name = f"{placement['host']}:{placement['gpu_index']}"
            span = (result["started"], result["ended"])
            self._finished.append((name, *span))
            # The GPUs (host:index) whose groups, finished by now, ran at the same time as this one.
            placement["busy_gpus"] = sorted({n for n, a, b in self._finished if a < span[1] and b > span[0]})
            if name not in self._seen_env:
                self._seen_env.add(name)
                env = dict(result["environment"], worker=name, host=placement["host"])
                writer.handle("environment", env)
        else:
            placement["busy_gpus"] = []

        def stamp(rec: Any) -> None:
            rec.placement = dict(placement)
        writer.stamp = stamp

        def resubmit(point: Point, impls: list[str]) -> dict[str, Any]:
            # after a poisoned CUDA context: the rest of the group on a fresh worker for that GPU
            where = slot if slot is not None else 0
            self._replace(where)
            return self.ray.get(self._actor(where).evaluate.remote(point, impls, self.suspects.snapshot()))
        writer.run(_Replay(result, failure, resubmit, self.suspects), impls)

    def close(self, kill: bool = False) -> None:
        for slot in list(self._actors):
            self._replace(slot)
        self._in_flight.clear()


def ray_scheduler(address: str | None, device: str, measure: Measure, experiment: str, session: int,
                  timeout_s: float | None = None, say: Say = print) -> RayScheduler:
    """The scheduler of ``--ray [ADDRESS]``: connects (or starts a local Ray) and says where."""
    ray = require_ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    res = ray.cluster_resources()
    say(f"ray: {len(ray.nodes())} node(s), {int(res.get('GPU', 0))} GPU(s), {int(res.get('CPU', 0))} CPU(s)")
    if device == "cuda" and not res.get("GPU"):
        raise ValueError("--ray: the Ray cluster has no GPU; start its nodes with GPUs "
                         "(ray start --num-gpus N) or run with --device cpu")
    return RayScheduler(ray, device, measure, experiment, session, timeout_s, say)
