"""A cluster through Ray (``layerbench run FILE --ray [ADDRESS]``): each point group is a Ray task
on one exclusive GPU; the records come back to the driver, which writes the run's one store.

Ray is optional (``pip install 'layerbench[ray]'``) and imported only here, when ``--ray`` is given.
A task asks for ``num_gpus=1`` (0 on the CPU), so Ray sets its ``CUDA_VISIBLE_DEVICES`` to the GPU
it was given; ``max_retries=0``: a group that crashed its worker is recorded as ``error``, not run
again behind the user's back.  The task evaluates the group as a worker process does
(``GroupEvaluator``, one per Ray worker process, so the energy meter and its idle baseline are per
GPU) and returns its messages; the driver replays them through the group's writer, stamped with
where the task ran (``host``, ``gpu_index`` as Ray numbered it, ``gpu_uuid``, ``gpu_name``) and the
other tasks in flight then (``busy_gpus`` as ``host:gpu`` names).  Resume is the runner's: the
records' identity does not depend on where they ran.

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

from layerbench.run.executors import Handle, Outcome, Say, environment_or_error
from layerbench.run.group import GroupEvaluator, Poisoned
from layerbench.run.sweep_runner import MakeWriter
from layerbench.sweep import Measure, Point

INSTALL_HINT = "pip install 'layerbench[ray]'"
_EVALUATORS: dict[tuple[Any, ...], GroupEvaluator] = {}  # per Ray worker process
_ENVIRONMENT: dict[str, Any] = {}


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


def evaluate_group(point: Point, impls: list[str], device: str, measure: Measure, experiment: str,
                   session: int, prepare: Callable[[], None] | None = None) -> dict[str, Any]:
    """The body of one Ray task: the group's messages, the worker's environment, where it ran."""
    ray = require_ray()
    if prepare is not None:  # tests: fakes installed in the Ray worker
        prepare()
    key = (device, experiment, session, repr(measure.to_dict()))
    evaluator = _EVALUATORS.get(key)
    if evaluator is None:
        evaluator = _EVALUATORS[key] = GroupEvaluator(device, measure, experiment, session)
    if device not in _ENVIRONMENT:
        _ENVIRONMENT[device] = environment_or_error(device)
    env = dict(_ENVIRONMENT[device])
    messages: list[tuple[str, Any]] = []
    started = time.time()
    outcome = "done"
    detail = ""
    try:
        evaluator.evaluate(point, impls, lambda kind, payload: messages.append((kind, payload)))
    except Poisoned as exc:
        outcome, detail = "poisoned", str(exc)
        # This worker's CUDA context is gone: end the process once the result is on its way.
        threading.Timer(1.0, os._exit, args=(3,)).start()
    except Exception as exc:  # noqa: BLE001 - a harness bug: recorded, the sweep goes on
        outcome, detail = "failed", f"{type(exc).__name__}: {exc}"
    return {"messages": messages, "outcome": outcome, "detail": detail, "environment": env,
            "started": started, "ended": time.time(),
            "placement": task_placement(env, ray.get_gpu_ids())}


class _Replay:
    """A finished task's result as an executor for the group's writer; a second call (after a
    poisoned CUDA context cost its culprit) runs the rest of the group in a fresh task."""

    def __init__(self, result: dict[str, Any] | None, failure: str | None,
                 resubmit: Callable[[Point, list[str]], dict[str, Any]]):
        self.result, self.failure, self.resubmit = result, failure, resubmit

    def run(self, point: Point, impls: list[str], handle: Handle) -> Outcome:
        if self.failure is not None:
            # The task died or was cancelled: nothing came back, every remaining implementation is
            # recorded with the reason ("timeout": the writer adds no phase to it).
            return Outcome("timeout", self.failure)
        result = self.result if self.result is not None else self.resubmit(point, impls)
        self.result = None
        for kind, payload in result["messages"]:
            handle(kind, payload)
        if result["outcome"] == "done":
            return Outcome("done")
        if result["outcome"] == "poisoned":  # the culprit is recorded; the rest in a fresh task
            return Outcome("poisoned", result["detail"])
        return Outcome("failed", result["detail"])


class RayScheduler:
    """Submits the groups as Ray tasks and writes their records as they finish."""

    def __init__(self, ray: Any, device: str, measure: Measure, experiment: str, session: int,
                 timeout_s: float | None = None, say: Say = print, max_in_flight: int | None = None,
                 prepare: Callable[[], None] | None = None):
        self.ray, self.device, self.measure = ray, device, measure
        self.experiment, self.session, self.say = experiment, session, say
        self.timeout_s = timeout_s
        self.prepare = prepare
        gpus = 1 if device == "cuda" else 0
        options: dict[str, Any] = {"num_gpus": gpus, "num_cpus": 1, "max_retries": 0}
        if device == "cpu":
            options["runtime_env"] = {"env_vars": {"TRITON_INTERPRET": "1"}}
        self.remote = ray.remote(evaluate_group).options(**options)
        resources = ray.cluster_resources()
        slots = int(resources.get("GPU" if gpus else "CPU", 1))
        self.max_in_flight = max_in_flight or max(1, 2 * slots)
        self._in_flight: dict[Any, tuple[Point, list[str], float]] = {}
        self._seen_env: set[str] = set()
        self._finished: list[tuple[str, float, float]] = []  # (host:gpu, started, ended) of each task

    def _submit(self, point: Point, impls: list[str]) -> None:
        ref = self.remote.remote(point, impls, self.device, self.measure, self.experiment, self.session,
                                 self.prepare)
        self._in_flight[ref] = (point, impls, time.monotonic())

    def run_groups(self, todo: list[tuple[Point, list[str]]], make_writer: MakeWriter) -> None:
        queue = list(reversed(todo))
        while queue or self._in_flight:
            while queue and len(self._in_flight) < self.max_in_flight:
                self._submit(*queue.pop())
            done, _ = self.ray.wait(list(self._in_flight), num_returns=1, timeout=1.0)
            for ref in done:
                point, impls, _started = self._in_flight.pop(ref)
                try:
                    result, failure = self.ray.get(ref), None
                except Exception as exc:  # noqa: BLE001 - a crashed or cancelled task: its group's error
                    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
                    result, failure = None, f"Ray task failed: {type(exc).__name__}: {lines[-1] if lines else ''}"
                self._write(point, impls, result, failure, make_writer)
            if self.timeout_s is not None:
                now = time.monotonic()
                for ref, (point, impls, started) in list(self._in_flight.items()):
                    if now - started > self.timeout_s:
                        self.ray.cancel(ref, force=True)
                        self._in_flight.pop(ref)
                        self._write(point, impls, None, f"timed out: the group had {self.timeout_s:g} s "
                                    "(--point-timeout); its Ray task was cancelled", make_writer)

    def _write(self, point: Point, impls: list[str], result: dict[str, Any] | None, failure: str | None,
               make_writer: MakeWriter) -> None:
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
            return self.ray.get(self.remote.remote(point, impls, self.device, self.measure,
                                                   self.experiment, self.session, self.prepare))
        writer.run(_Replay(result, failure, resubmit), impls)

    def close(self, kill: bool = False) -> None:
        for ref in list(self._in_flight):
            self.ray.cancel(ref, force=True)
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
