"""The multi-GPU experiments: a layer split data-parallel over N GPUs (the sweep axis ``gpus``).

A point with ``gpus = N`` (N > 1) divides its batch over N GPUs (``split_batch``: as even as it
goes, the first GPUs take one more).  One worker process per GPU, each pinned to its GPU through
``CUDA_VISIBLE_DEVICES`` before it imports torch, evaluates its part (the same implementations:
our kernel or the reference, on its share of the batch) with the usual group evaluation.  The
workers are launched together and kept together: every phase (build, check, time, energy of each
implementation) starts on all GPUs at once, at a barrier, so the timed launches and the energy
windows of the N parts overlap as they would in a data-parallel layer.

The N per-GPU records become the point's one record (``aggregate_parts``): time = the slowest GPU's
median (the layer is done when its last part is), energy = the sum over the GPUs of J/launch,
GFLOP/s per watt = the whole layer's GFLOP over that energy; the per-GPU figures stay in
``dp_*`` columns.  Scaling efficiency against one GPU (``scaling_efficiency``, ``add_scaling``)
compares the point with the same point at ``gpus = 1``: ``t_1 / (N * t_N)``.

A point whose N exceeds the GPUs present, or whose batch is smaller than N, is recorded
``unsupported`` with the reason.  ``gpus = 1`` is the plain point (same identity hash).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import threading
import time
from typing import Any, Callable, Iterable, Mapping

import torch

from layerbench.layers import spec_from_dict
from layerbench.measure.energy import derived_metrics
from layerbench.results.records import Record
from layerbench.run.executors import (
    DEFAULT_POINT_TIMEOUT_S,
    Handle,
    Outcome,
    child_environment,
)
from layerbench.run.group import GroupEvaluator
from layerbench.sweep import Measure, Point

GPUS_AXIS = "gpus"
GPU_ENV = "CUDA_VISIBLE_DEVICES"
BARRIER_TIMEOUT_S = 600.0
SEVERITY = ("error", "oom", "incorrect", "unavailable", "unsupported", "invalid", "ok")


def visible_gpus(environ: dict[str, str] | None = None, count: Callable[[], int] | None = None) -> list[str]:
    """This host's GPUs as CUDA numbers them here: the entries of ``CUDA_VISIBLE_DEVICES`` where it
    is set (indices or UUIDs), else ``0 .. n-1``.  torch counts them through NVML, without a CUDA
    context in this process."""
    environ = os.environ if environ is None else environ
    listed = environ.get(GPU_ENV)
    if listed is not None and listed.strip():
        return [e.strip() for e in listed.split(",") if e.strip()]
    n = (count or torch.cuda.device_count)()
    return [str(i) for i in range(n)]


def gpus_of(point: Point) -> int:
    value = point.axes.get(GPUS_AXIS, 1)
    return int(value) if isinstance(value, int) else 1


def split_batch(batch: int, n: int) -> list[int]:
    """``batch`` over ``n`` GPUs, as even as possible: 10 over 4 -> [3, 3, 2, 2]."""
    if n < 1:
        raise ValueError(f"cannot split over {n} GPUs")
    if batch < n:
        raise ValueError(f"batch {batch} cannot be split over {n} GPUs (each needs at least one sample)")
    q, r = divmod(batch, n)
    return [q + 1 if i < r else q for i in range(n)]


def part_point(point: Point, batch: int) -> Point:
    """The point with its batch replaced by one GPU's share."""
    params = dict(point.params, batch=batch)
    return dataclasses.replace(point, params=params, spec=spec_from_dict(point.layer, params))


def split_unsupported_reason(point: Point, present: int) -> str | None:
    n = gpus_of(point)
    if n > present:
        return (f"gpus={n}: the layer split over {n} GPUs needs {n} GPUs, "
                f"{present} {'is' if present == 1 else 'are'} present here")
    batch = point.params.get("batch")
    if not isinstance(batch, int):
        return f"gpus={n}: the layer has no batch to split"
    if batch < n:
        return f"gpus={n}: batch {batch} cannot be split over {n} GPUs"
    direction = point.params.get("direction", "forward")
    if direction in ("backward_weight", "training") and point.layer in ("conv2d", "linear"):
        # Each GPU's share gives a partial weight gradient; their all-reduce is not measured here.
        return (f"gpus={n}: the {direction} pass split over GPUs would need an all-reduce of the weight "
                "gradients, which is not measured; split the forward or backward_data pass")
    return None


# ------------------------------------------------------------------------- aggregation


def _worst(statuses: Iterable[str | None]) -> str:
    order = {s: i for i, s in enumerate(SEVERITY)}
    return min((s or "error" for s in statuses), key=lambda s: order.get(s, 0))


def aggregate_parts(full: Record, parts: list[Record], batches: list[int]) -> Record:
    """The point's record from its N per-GPU records: time = slowest, energy = sum; see the module."""
    status = _worst(p.status for p in parts)
    if status != "ok":
        why = "; ".join(f"GPU {i}: {p.status}: {p.message}" for i, p in enumerate(parts) if p.status != "ok")
        full.finish(status, why)
    else:
        full.finish("ok")
    first = parts[0]
    full.backend, full.reference, full.input_seed = first.backend, first.reference, first.input_seed
    full.details = dict(first.details)
    full.provenance = dict(first.provenance)
    full.check = dict(first.check)
    times = [p.time.get("time_median_s") for p in parts]
    dp: dict[str, Any] = {"dp_gpus": len(parts), "dp_batches": list(batches),
                          "dp_time_per_gpu_s": times, "dp_first_call_s": [p.first_call_s for p in parts]}
    firsts = [p.first_call_s for p in parts if p.first_call_s is not None]
    full.first_call_s = max(firsts) if firsts else None
    if all(t is not None for t in times) and times:
        slowest = max(range(len(parts)), key=lambda i: times[i])
        columns = {k: v for k, v in parts[slowest].time.items() if k not in ("tflops", "gbps")}
        columns["time_slowest_gpu"] = slowest
        full.set_time(columns)  # tflops and gbps of the whole layer over the slowest GPU's time
    full.time.update(dp)
    joules = [p.energy.get("energy_j_per_launch") for p in parts]
    if parts and all(isinstance(j, (int, float)) for j in joules):
        total = float(sum(joules))  # type: ignore[arg-type]
        power = [p.energy.get("energy_avg_power_w") for p in parts]
        full.energy = {"energy_method": first.energy.get("energy_method"), "energy_j_per_launch": total,
                       "dp_energy_per_gpu_j": joules,
                       "energy_avg_power_w": float(sum(power)) if all(isinstance(w, (int, float)) for w in power) else None}
        t = full.time.get("time_median_s")
        if t:
            full.energy.update(derived_metrics(total, t, full.figures.get("flops", 0)))
    else:
        full.energy = {"energy_method": first.energy.get("energy_method", "off"),
                       "dp_energy_per_gpu_j": joules}
    return full


def scaling_efficiency(t1: float, tn: float, n: int) -> float:
    """Against one GPU on the whole batch: speedup over N; 1.0 is perfect scaling."""
    if t1 <= 0 or tn <= 0 or n < 1:
        raise ValueError("times and GPU counts must be positive")
    return t1 / (n * tn)


def add_scaling(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``dp_speedup`` and ``dp_efficiency`` on each ok row of a gpus sweep, against the row of the
    same point and implementation at ``gpus = 1`` (rows without one are left as they are)."""
    def base(row: Mapping[str, Any]) -> tuple[Any, ...]:
        return (row.get("layer"), row.get("name"), row.get("impl"), row.get("dtype"), row.get("layout"),
                tuple(sorted((k, repr(v)) for k, v in row.items()
                             if k.startswith("axis_") and k != f"axis_{GPUS_AXIS}")))
    ones = {base(r): r.get("time_median_s") for r in rows
            if r.get(f"axis_{GPUS_AXIS}", 1) == 1 and r.get("status") == "ok"}
    for r in rows:
        n, t1, tn = r.get(f"axis_{GPUS_AXIS}"), ones.get(base(r)), r.get("time_median_s")
        if isinstance(n, int) and t1 and tn and r.get("status") == "ok":
            r["dp_speedup"] = t1 / tn
            r["dp_efficiency"] = scaling_efficiency(t1, tn, n)
    return rows


# ------------------------------------------------------------------------- the workers


def serve_part(conn: Any, point: Point, impls: list[str], device: str, measure: Measure,
               experiment: str, session: int, barrier: Any) -> None:
    """One GPU's part: evaluate it, each phase started at the barrier with the other GPUs."""
    synced = [True]

    def emit(kind: str, payload: Any) -> None:
        if kind == "phase" and synced[0]:
            try:
                barrier.wait(BARRIER_TIMEOUT_S)
            except threading.BrokenBarrierError:
                synced[0] = False  # another GPU failed or went another way: go on alone
        if kind in ("record", "phase"):
            conn.send((kind, payload))

    try:
        GroupEvaluator(device, measure, experiment, session).evaluate(point, impls, emit)
        conn.send(("done", synced[0]))
    except Exception as exc:  # noqa: BLE001 - the parent records it for this GPU's part
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
    finally:
        try:
            barrier.abort()  # the others stop waiting for a phase this GPU will not reach
        except Exception:  # noqa: BLE001 - the barrier's manager may be gone with the parent
            pass


class DataParallelExecutor:
    """Runs ``gpus = N > 1`` points over N pinned workers; other points go to ``inner``."""

    def __init__(self, inner: Any, device: str, measure: Measure, experiment: str, session: int,
                 present: list[str], timeout_s: float | None = None):
        self.inner, self.device, self.measure = inner, device, measure
        self.experiment, self.session, self.present = experiment, session, present
        self.timeout_s = DEFAULT_POINT_TIMEOUT_S if timeout_s is None else timeout_s
        self._ctx = multiprocessing.get_context("spawn")

    def environment(self) -> Any:
        return self.inner.environment()

    def energy_unavailable(self) -> Any:
        return self.inner.energy_unavailable()

    def close(self, kill: bool = False) -> None:
        self.inner.close(kill=kill)

    def _record(self, point: Point, impl: str) -> Record:
        return Record.for_point(point, impl, self.measure, self.device, self.experiment, self.session)

    def run(self, point: Point, impls: list[str], handle: Handle) -> Outcome:
        n = gpus_of(point)
        if n == 1 or point.invalid is not None:
            return self.inner.run(point, impls, handle)
        why = split_unsupported_reason(point, len(self.present))
        if why is not None:
            for impl in impls:
                handle("record", self._record(point, impl).finish("unsupported", why))
            return Outcome("done")
        batches = split_batch(point.params["batch"], n)
        parts, problem = self.run_parts(point, impls, batches, handle)
        for impl in impls:
            full = self._record(point, impl)
            got = [p.get(impl) for p in parts]
            if problem is not None or any(g is None for g in got):
                full.finish("error", problem or "a GPU's part returned no record for this implementation")
                full.time = {"dp_gpus": n, "dp_batches": batches}
            else:
                aggregate_parts(full, got, batches)  # type: ignore[arg-type]
            handle("record", full)
        return Outcome("done")

    def run_parts(self, point: Point, impls: list[str], batches: list[int],
                  handle: Handle) -> tuple[list[dict[str, Record]], str | None]:
        """Start one pinned worker per part, together; their final records per implementation."""
        n = len(batches)
        barrier = self._ctx.Barrier(n)
        procs, conns = [], []
        for i, b in enumerate(batches):
            parent, child = self._ctx.Pipe()
            sub = part_point(point, b)
            proc = self._ctx.Process(target=serve_part, daemon=True, name=f"layerbench-dp{i}",
                                     args=(child, sub, impls, self.device, self.measure, self.experiment,
                                           self.session, barrier))
            with child_environment({GPU_ENV: self.present[i]}):
                proc.start()
            child.close()
            procs.append(proc)
            conns.append(parent)
        parts: list[dict[str, Record]] = [{} for _ in batches]
        open_ = set(range(n))
        problem: str | None = None
        started = time.monotonic()
        try:
            while open_:
                for i in list(open_):
                    conn = conns[i]
                    if conn.poll(0.05):
                        try:
                            kind, payload = conn.recv()
                        except (EOFError, OSError):
                            open_.discard(i)
                            problem = problem or f"GPU {i}'s worker died ({_exit_text(procs[i])})"
                            continue
                        if kind == "record":
                            parts[i][payload.impl] = payload
                        elif kind == "phase" and i == 0:
                            handle("phase", payload)
                        elif kind == "failed":
                            problem = problem or f"GPU {i}: harness error: {payload}"
                            open_.discard(i)
                        elif kind == "done":
                            open_.discard(i)
                    elif not procs[i].is_alive() and not conn.poll(0):
                        open_.discard(i)
                        problem = problem or f"GPU {i}'s worker died ({_exit_text(procs[i])})"
                if problem is not None:
                    barrier.abort()  # a GPU is gone: the others stop waiting for it
                if open_ and time.monotonic() - started > self.timeout_s:
                    problem = (f"timed out: the split over {n} GPUs had {self.timeout_s:g} s "
                               "(--point-timeout); workers killed")
                    break
        finally:
            for proc, conn in zip(procs, conns):
                if proc.is_alive():
                    proc.join(5 if problem is None else 0)
                if proc.is_alive():
                    proc.kill()
                proc.join(5)
                conn.close()
        return parts, problem


def _exit_text(proc: Any) -> str:
    proc.join(2)
    return f"exit code {proc.exitcode}"

