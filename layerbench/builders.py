"""The builder kit: what a kernel's builder (ours or a user's) returns, and the helpers it uses.

The builder contract (see ``layerbench.registry``)::

    build(spec, dtype, layout, tensors, out) -> Kernel | Built

* ``Built(launch, details)``: the launch and what the record should say about it (the algorithm a
  library or a timing choice picked, its timings); a bare callable means no details.
* ``in_order``: several launches as one kernel (a layout copy, then a GEMM).
* ``faster_of``: keep the faster of two algorithms, timed at build time, as cudnnFind does.
* ``fastest_path``: keep the fastest of several ways into a library (cuDNN's legacy API and its
  graph API, torch's cuBLAS call and a cuBLASLt search), saying which won and why a path was not
  there.
* ``choice_of``: the key under which ``fastest_of`` and ``fastest_path`` keep their choice in the
  build cache (``remember=``): a later run of the same point builds only the path chosen then.
  Only the harness's builds, inside ``remembering_choices()``, keep and reuse choices.
* ``selection_ms`` (``selection_times``: its samples): that build-time timer (a choice, not a
  measurement: the harness times), in the point's timing mode: the harness builds a cold point
  inside ``selection_timing(flush)``, and the timer then flushes the L2 before each launch, so no
  path wins only because its operands sat in L2.
* ``check_workspace``: refuse a workspace over half the free device memory, with the reason.
* ``attempting`` / ``avoided``: each candidate a build tries (a path, a variant) is announced to the
  harness, which names the one that was running when a worker crashed, hung or lost its CUDA
  context, and leaves it out of the rest of the run (``avoided`` says why); the ``fastest_*``
  helpers do both.  ``remark``: what a build passed over that its details do not say.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterator, Mapping

import torch

from layerbench.build_cache import autotune_choices, choice_key
from layerbench.errors import Unavailable, Unsupported
from layerbench.launch import blocker, hold_time

Kernel = Callable[[], object]
Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Built:
    """A built kernel: ``launch()`` runs it; ``details`` go into the record as ``detail_*`` columns."""

    launch: Kernel
    details: dict[str, object] = field(default_factory=dict)

    def __call__(self) -> object:
        return self.launch()


def as_built(result: Kernel | Built) -> Built:
    """A builder's return value as ``Built`` (a bare callable has no details)."""
    if isinstance(result, Built):
        return result
    if not callable(result):
        raise TypeError(f"a builder must return a callable or a Built, got {type(result).__name__}")
    return Built(result)


def in_order(*kernels: Kernel) -> Kernel:
    """One kernel that launches ``kernels`` one after another (e.g. a layout copy, then a GEMM)."""
    if len(kernels) == 1:
        return kernels[0]

    def kernel() -> None:
        for launch in kernels:
            launch()

    return kernel


def choice_of(what: str, spec: object, dtype: str, layout: str, tensors: Tensors, out: torch.Tensor,
              backend: str) -> str:
    """The build cache's key for the choice ``what`` (a builder's choice among its paths or
    variants) on one point: its spec, dtype and layout, the tensors' shapes, strides and dtypes,
    the build-time timer's mode (``selection_mode``) and the code of ``backend`` (a folder under
    ``kernels/``: a change to it chooses anew)."""
    return choice_key(what, [*(tensors[k] for k in sorted(tensors)), out],
                      {"spec": repr(spec), "dtype": dtype, "layout": layout, "timed": selection_mode()}, backend)


_remembering: ContextVar[bool] = ContextVar("layerbench_remembering_choices", default=False)


@contextmanager
def _scoped(var: ContextVar, value: object) -> Iterator[None]:
    """``var`` set to ``value`` inside the block."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def remembering_choices() -> ContextManager[None]:
    """Builds inside keep their choices in the build cache on disk and reuse those of earlier runs
    (the harness's builds; a builder called directly, as a test does, always chooses by timing)."""
    return _scoped(_remembering, True)


def _choices_kept() -> bool:
    return _remembering.get() and autotune_choices().directory is not None


def known_choice(remember: str | None) -> str | None:
    """The name an earlier run chose under key ``remember``; None where none is kept, without a
    key, outside ``remembering_choices`` or without a build cache on disk."""
    known = autotune_choices().get(remember) if remember and _choices_kept() else None
    return known.get("name") if known else None


def keep_choice(remember: str | None, name: str, what: str) -> None:
    """Keep ``name`` as the choice under key ``remember`` (where ``known_choice`` would read it)."""
    if remember and _choices_kept():
        autotune_choices().put(remember, {"name": name}, {"kernel": what})


# What the harness learns of a build's candidates: announce(event, path), event "trying", "tried"
# (it returned) or "failed" (it raised); path: the scope (layer and implementation), then the
# names of the candidates it is nested in, then its own, joined by " > ".
Announce = Callable[[str, str], None]
_announce: ContextVar[Announce | None] = ContextVar("layerbench_announce", default=None)
_attempt_path: ContextVar[tuple[str, ...]] = ContextVar("layerbench_attempt_path", default=())
_avoid: ContextVar[Mapping[str, str]] = ContextVar("layerbench_avoid", default={})
_remarks: ContextVar[list[str] | None] = ContextVar("layerbench_remarks", default=None)


@contextmanager
def attempts(scope: str, announce: Announce | None, avoid: Mapping[str, str]) -> Iterator[list[str]]:
    """Builds inside announce their candidates under ``scope`` and leave out those ``avoid`` names
    (path -> why); yields the list their ``remark``s go to."""
    remarks: list[str] = []
    tokens = (_attempt_path.set((scope,)), _announce.set(announce), _avoid.set(avoid), _remarks.set(remarks))
    try:
        yield remarks
    finally:
        for var, token in zip((_attempt_path, _announce, _avoid, _remarks), tokens):
            var.reset(token)


def remark(text: str) -> None:
    """Tell the record (``detail_remarks``) what a build passed over that its details do not say
    (a tuned config that failed to compile); nothing outside the harness's builds."""
    remarks = _remarks.get()
    if remarks is not None:
        remarks.append(text)


def _path(name: str) -> str:
    return " > ".join((*_attempt_path.get(), name))


def avoided(name: str) -> str | None:
    """Why the candidate ``name`` is left out of this build (it crashed a worker earlier in the
    run), or None."""
    return _avoid.get().get(_path(name))


@contextmanager
def attempting(name: str) -> Iterator[None]:
    """Run one candidate of a build (its build, timing and check) as ``name``, announced."""
    announce, path = _announce.get(), _path(name)
    token = _attempt_path.set((*_attempt_path.get(), name))
    if announce:
        announce("trying", path)
    try:
        yield
    except Exception as exc:  # an interrupt is nobody's fault: it just passes
        if not hasattr(exc, "candidate"):  # the innermost candidate it left: the record names it
            with suppress(AttributeError):
                exc.candidate = path  # type: ignore[attr-defined]
        if announce:
            announce("failed", path)
        raise
    finally:
        _attempt_path.reset(token)
    if announce:
        announce("tried", path)


def _reused(name: str, build: Callable[[], Kernel | Built], after_failure: Callable[[], None]) -> Built | None:
    """The path an earlier run chose, built again; None where it no longer builds (the choice is
    then made anew, and the failure recorded there)."""
    try:
        with attempting(name):
            return as_built(build())
    except Unsupported:
        return None
    except Exception:  # noqa: BLE001 - the full choice that follows builds it again and records why
        after_failure()
        return None


def faster_of(default_name: str, default: Kernel | Built, other_name: str,
              build_other: Callable[[], Kernel | Built], time_ms: Callable[[Kernel], float]) -> Built:
    """``default``, or the other algorithm where it builds and ``time_ms`` finds it faster, with
    details saying which: ``algorithm`` and both times, or, where ``build_other`` raised
    Unsupported, the reason under ``other_name``."""
    return fastest_of(default_name, default, [(other_name, build_other)], time_ms)


def fastest_of(default_name: str, default: Kernel | Built, others: list[tuple[str, Callable[[], Kernel | Built]]],
               time_ms: Callable[[Kernel], float], after_failure: Callable[[], None] = lambda: None,
               remember: str | None = None) -> Built:
    """The fastest of ``default`` and the ``others`` that build, by ``time_ms``; details: the
    winner as ``algorithm`` with its own details (where it is a ``Built``), ``<name>_ms`` of each
    timed, and for each of the others that is missing the reason: what it raised as Unsupported,
    or ``failed: ...`` for any other error in its build or its timing (a candidate's failure is
    no reason to lose the point; ``after_failure`` runs after each such error and raises where
    it left the device unusable).  A tie keeps the earlier.

    With ``remember`` (a ``choice_of`` key) the winner is kept in the build cache, and where an
    earlier run kept one, only that path is built, untimed (details: ``reused_choice``)."""
    known = known_choice(remember)
    for name, build in [(default_name, lambda: default), *others]:
        reused = _reused(name, build, after_failure) if name == known and not avoided(name) else None
        if reused is not None:
            return Built(reused.launch, {"algorithm": name, "reused_choice": True,
                                         **{k: v for k, v in reused.details.items() if k != "algorithm"}})
    details: dict[str, object] = {"algorithm": default_name}
    timed: list[tuple[str, Built]] = []
    for name, build in others:
        skipped = avoided(name)
        if skipped:
            details[name] = f"skipped: {skipped}"
            continue
        try:
            with attempting(name):
                timed.append((name, as_built(build())))
        except Unsupported as why:
            details[name] = str(why)
        except Exception as exc:  # noqa: BLE001 - recorded, see above
            details[name] = f"failed: {type(exc).__name__}: {exc}"
            after_failure()
    chosen = as_built(default)
    if timed:
        with attempting(default_name):
            best_ms = float(time_ms(chosen.launch))
        details[f"{default_name}_ms"] = best_ms
        for name, built in timed:
            try:
                with attempting(name):
                    ms = float(time_ms(built.launch))
            except Exception as exc:  # noqa: BLE001
                details[name] = f"failed when timed: {type(exc).__name__}: {exc}"
                after_failure()
                continue
            details[f"{name}_ms"] = ms
            if ms < best_ms:
                details["algorithm"], chosen, best_ms = name, built, ms
    details.update({k: v for k, v in chosen.details.items() if k != "algorithm"})
    if timed:  # a choice was made by timing; alone, the default is no choice to keep
        keep_choice(remember, str(details["algorithm"]), "fastest_of")
    return Built(chosen.launch, details)


def fastest_path(primary: tuple[str, Callable[[], Kernel | Built]],
                 others: list[tuple[str, Callable[[], Kernel | Built]]],
                 time_ms: Callable[[Kernel], float],
                 after_failure: Callable[[], None] = lambda: None, remember: str | None = None) -> Built:
    """The fastest of several builds of one layer, each timed by ``time_ms`` (the same timer for all).

    ``primary`` is built first; it may raise only ``Unsupported`` (then the others may still run
    the point), any other error propagates.  An error in one of ``others`` (a missing optional
    package, a failed search) is no reason to lose the point: that path is left out and its
    reason recorded, never silently; ``after_failure`` runs after each such error and raises where
    the failure left the device unusable (a sticky CUDA error must not be hidden).

    Details: ``path`` (the winner), ``<name>_ms`` for each path timed, and under ``<name>`` each
    path's own details (a dict) or the reason it is missing (a string).  A tie keeps the earlier
    path.  Where no path builds, ``Unsupported`` names every reason.  ``remember``: as
    ``fastest_of``'s (details of a path built again: ``path``, ``reused_choice`` and its own).
    """
    known = known_choice(remember)
    for name, build in [primary, *others]:
        reused = _reused(name, build, after_failure) if name == known and not avoided(name) else None
        if reused is not None:
            return Built(reused.launch, {"path": name, "reused_choice": True, name: dict(reused.details)})
    details: dict[str, object] = {}
    candidates: list[tuple[float, int, str, Built]] = []
    for rank, (name, build) in enumerate([primary, *others]):
        skipped = avoided(name)
        if skipped:
            details[name] = f"skipped: {skipped}"
            continue
        try:
            with attempting(name):
                built = as_built(build())
        except Unsupported as why:
            details[name] = f"unsupported: {why}"
            continue
        except Unavailable as why:  # an optional package is missing
            if rank == 0:
                raise
            details[name] = f"unavailable: {why}"
            continue
        except Exception as exc:  # noqa: BLE001 - an optional path's failure is recorded, not fatal
            if rank == 0:
                raise
            details[name] = f"failed: {type(exc).__name__}: {exc}"
            after_failure()
            continue
        try:
            with attempting(name):
                ms = float(time_ms(built.launch))
        except Exception as exc:  # noqa: BLE001
            if rank == 0:
                raise
            details[name] = f"failed when timed: {type(exc).__name__}: {exc}"
            after_failure()
            continue
        details[f"{name}_ms"] = ms
        details[name] = dict(built.details)
        candidates.append((ms, rank, name, built))
    if not candidates:
        raise Unsupported("; ".join(f"{name}: {details[name]}" for name, _ in [primary, *others]))
    ms, _, name, built = min(candidates, key=lambda c: (c[0], c[1]))
    if len(candidates) > 1:  # a choice was made by timing
        keep_choice(remember, name, "fastest_path")
    return Built(built.launch, {"path": name, **details})


_selection_flush: ContextVar[Kernel | None] = ContextVar("layerbench_selection_flush", default=None)


def selection_timing(flush: Kernel | None) -> ContextManager[None]:
    """Build-time choices made inside run ``flush`` before each timed launch (None: hot, L2 warm)."""
    return _scoped(_selection_flush, flush)


def selection_mode() -> str:
    """The build-time timer's mode: "cold" inside ``selection_timing`` with a flush, else "hot".
    Part of the key of a choice kept across runs, so a choice made hot is not reused cold."""
    return "hot" if _selection_flush.get() is None else "cold"


def selection_ms(kernel: Kernel, device: torch.device, warmup: int = 3, reps: int = 10) -> float:
    """Median GPU time of ``kernel`` in ms over ``reps`` launches after ``warmup``, for choosing
    between algorithms at build time, as cudnnFind does; not a measurement (the harness's timing
    is).  Under ``selection_timing(flush)`` each launch follows a flush, outside the events.  As
    in the harness's timer, a spin kernel holds the stream while the host enqueues each launch:
    otherwise a path that makes more API calls (a graph execute, a second kernel for the bias)
    is charged its host time and loses to a slower kernel."""
    return statistics.median(selection_times(kernel, device, warmup, reps))


def selection_times(kernel: Kernel, device: torch.device, warmup: int = 3, reps: int = 10,
                    warmup_s: float = 0.0) -> list[float]:
    """The ``reps`` launch times in ms behind ``selection_ms``; ``warmup_s`` more seconds of launches
    first bring a GPU fresh from idle to its clocks."""
    flush = _selection_flush.get()
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device)
        host = []
        for _ in range(max(warmup, 1)):
            t0 = time.perf_counter()
            kernel()
            host.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < warmup_s:
            for _ in range(8):
                kernel()
            torch.cuda.synchronize(device)
        block, hold = blocker(device), hold_time(min(host))  # min: the first call may be slow
        times = []
        for _ in range(reps):
            if flush is not None:
                flush()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            block.block(hold)
            start.record(stream)
            kernel()
            end.record(stream)
            end.synchronize()
            times.append(start.elapsed_time(end))
    return times


def check_workspace(nbytes: int, device: torch.device, what: str) -> None:
    """Unsupported where ``what`` needs over half of ``device``'s free memory: the rest stays for
    the point's tensors and the other implementations built beside it."""
    free, _ = torch.cuda.mem_get_info(device)
    if nbytes > free // 2:
        raise Unsupported(f"{what} needs {nbytes / 2**30:.1f} GiB of workspace, over half of the "
                          f"{free / 2**30:.1f} GiB free")
