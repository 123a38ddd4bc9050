"""The evaluation of one point group (same spec, dtype, layout; several implementations).

``GroupEvaluator.evaluate`` reads top-down: inputs and float64 references once for the group, then
per implementation build -> check -> time (and check again) -> and for those still correct, energy
(measured together, interleaved windows) -> provenance (the GPU kernel names; the incorrect ones'
too: what ran is what one needs to explain a wrong result).

The check cannot be fooled by a kernel that only looks right once (``layerbench.check``): the
output is filled with NaN before every checked launch; a second launch gets new input values in the
same tensors and must produce their result (a cached or stale output is named as such); after the
timed launches the kernel is checked again on the first input, and on a GPU its work must stay on
the current stream, which the timing events see.

Records leave through ``emit(kind, payload)``:

* ``("phase", {"impl", "phase"})``: what is about to run (a crash or timeout report names it);
* ``("attempt", (event, path))``: a candidate a build tries (``layerbench.run.suspects``);
* ``("partial", record)``: a record with time statistics, final once energy is done;
* ``("record", record)``: a final record (written to the log at once).
"""

from __future__ import annotations

import contextlib
import os
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch

from layerbench import registry
from layerbench.build_cache import use_build_cache
from layerbench.builders import Built, as_built, attempts, remembering_choices, selection_timing
from layerbench.check.correctness import CheckInputs, CheckResult, check_launch, check_relaunches
from layerbench.check.inputs import make_output, make_tensors
from layerbench.check.streams import check_stream
from layerbench.dtypes import DType, get_dtype, precision
from layerbench.errors import Unavailable, Unsupported
from layerbench.measure.energy import EnergyMeter, derived_metrics, per_image_metrics
from layerbench.launch import l2_flush
from layerbench.measure.provenance import kernel_names, library
from layerbench.measure.timing import time_first_call, time_kernel
from layerbench.options import EnergyConfig, TimingConfig
from layerbench.results.records import Record, flatten
from layerbench.sweep import Measure, Point

Emit = Callable[[str, Any], None]

# Messages of errors after which a CUDA context cannot be trusted (sticky errors).
_POISON_MARKERS = ("illegal memory access", "unspecified launch failure", "misaligned address",
                   "device-side assert", "illegal instruction", "CUDA_ERROR_LAUNCH",
                   "cudaErrorLaunch", "cudaErrorIllegal", "launch timed out", "hardware stack error")


class Poisoned(Exception):
    """The CUDA context is unusable after an error; the worker process must be replaced."""


def classify(exc: BaseException) -> tuple[str, str]:
    """(status, message) of a per-point failure."""
    text = f"{type(exc).__name__}: {exc}".strip()
    if isinstance(exc, Unsupported):
        return "unsupported", str(exc)
    if isinstance(exc, Unavailable):
        return "unavailable", str(exc)
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "OutOfMemory" in type(exc).__name__ \
            or "out of memory" in str(exc).lower():
        return "oom", text.splitlines()[0] if text else "out of memory"
    return "error", text


def is_poisoned(exc: BaseException, device: torch.device) -> bool:
    """A sticky CUDA error: known messages, or the device no longer synchronises."""
    if device.type != "cuda":
        return False
    if any(m in str(exc) for m in _POISON_MARKERS):
        return True
    try:
        torch.cuda.synchronize(device)
    except Exception:  # noqa: BLE001 - any failure here means the context is gone
        return True
    return False


def candidate_of(exc: BaseException) -> str | None:
    """The build candidate (``layerbench.builders.attempting``) an error came from, also where a
    later error (a synchronize after it) took its place."""
    seen: BaseException | None = exc
    while seen is not None:
        if getattr(seen, "candidate", None):
            return seen.candidate  # type: ignore[attr-defined]
        seen = seen.__cause__ or seen.__context__
    return None


def check_columns(check: CheckResult, prefix: str = "check") -> dict[str, Any]:
    return {f"{prefix}_rel_norm": check.rel_norm, f"{prefix}_max_err": check.max_err,
            f"{prefix}_max_abs": check.max_abs, f"{prefix}_nonfinite": check.nonfinite,
            f"{prefix}_message": check.message}


@dataclass
class GroupInputs:
    """What every implementation of a group sees: the input tensors and the checked input sets."""

    seed: int
    tensors: dict[str, torch.Tensor]
    checks: CheckInputs


@dataclass
class Candidate:
    """An implementation that built: its launch and its output buffer."""

    launch: Callable[[], object]
    out: torch.Tensor


def selection_flush(device: torch.device, mode: str) -> Callable[[], None] | None:
    """What a builder's timed choice between paths runs before each launch: the L2 flush for a
    point measured cold on a GPU, so the path is chosen as it will be measured; else nothing."""
    return l2_flush(device) if device.type == "cuda" and mode == "cold" else None


class GroupEvaluator:
    """Evaluates point groups on one device; keeps the energy meter between groups."""

    def __init__(self, device: str, measure: Measure, experiment: str, session: int):
        self.device = torch.device(device)
        self.measure = measure
        self.experiment = experiment
        self.session = session
        self.timing = TimingConfig(**measure.timing)
        self._meter: EnergyMeter | None = None
        if self.device.type == "cuda":  # before anything compiles: Triton's and CuPy's caches, keyed
            props = torch.cuda.get_device_properties(self.device)
            use_build_cache({"name": props.name, "capability": f"{props.major}.{props.minor}"})

    def meter(self) -> EnergyMeter:
        if self._meter is None:
            self._meter = EnergyMeter(self.device, EnergyConfig(**self.measure.energy_config))
        return self._meter

    def energy_unavailable(self) -> str | None:
        """None when energy can be measured here, else why not."""
        meter = self.meter()
        return None if meter.available else (meter.reason or "no energy meter")

    # ------------------------------------------------------------------ the group

    def evaluate(self, point: Point, impls: list[str], emit: Emit, avoid: Mapping[str, str] | None = None) -> None:
        """Every step for ``impls`` on ``point``; ``avoid``: the build candidates to leave out
        (path -> why, ``layerbench.run.suspects``)."""
        records = {n: Record.for_point(point, n, self.measure, self.device.type, self.experiment,
                                       self.session) for n in impls}
        if point.invalid is not None:
            for rec in records.values():
                emit("record", rec.finish("invalid", point.invalid))
            return
        dtype = get_dtype(point.dtype)
        try:
            with precision(dtype):
                try:
                    group = self.prepare(point, dtype)
                except Exception as exc:  # noqa: BLE001 - recorded per implementation
                    self.record_failure(exc, records.values(), emit)
                    return
                live: dict[str, Candidate] = {}
                for name, rec in records.items():
                    rec.input_seed = group.seed
                    try:
                        candidate = self.build(point, dtype, group, rec, emit, avoid or {})
                        problem = self.check(candidate, group, rec, emit)
                        if problem is None:
                            self.time(candidate, rec, emit)
                            problem = self.check_after_timing(candidate, group, rec, emit)
                        if problem is not None:
                            self.provenance({name: candidate}, records, emit)
                            emit("record", rec.finish("incorrect", problem))
                            continue
                        emit("partial", rec)
                        live[name] = candidate
                    except Exception as exc:  # noqa: BLE001 - recorded as this implementation's status
                        self.record_failure(exc, [rec], emit)
                if live:
                    self.energy(live, records, emit)
                    self.provenance(live, records, emit)
                for name in live:
                    emit("record", records[name].finish("ok"))
        finally:
            # The group's tensors are gone now; give their memory back before the next group.
            if self.device.type == "cuda":
                with contextlib.suppress(Exception):
                    torch.cuda.empty_cache()

    # ------------------------------------------------------------------ the steps

    def prepare(self, point: Point, dtype: DType) -> GroupInputs:
        """Random inputs, and the input sets of the checks with their float64 references (one
        set of references for all implementations: they all see the same inputs)."""
        assert point.spec is not None
        seed = int.from_bytes(os.urandom(4), "little")
        gen = torch.Generator().manual_seed(seed)
        tensors = make_tensors(point.spec, dtype, point.layout, self.device, gen)
        checks = CheckInputs(point.spec, dtype, tensors, generator=gen)
        checks.ref(0)
        return GroupInputs(seed, tensors, checks)

    def build(self, point: Point, dtype: DType, group: GroupInputs, rec: Record, emit: Emit,
              avoid: Mapping[str, str]) -> Candidate:
        try:
            impl = registry.get(point.layer, rec.impl)
        except ValueError as exc:
            raise Unavailable(str(exc)) from exc
        rec.backend, rec.reference = impl.backend, impl.reference
        spec = point.spec
        why = impl.unsupported_reason(spec, dtype, point.layout, self.device)
        if why is not None:
            raise Unsupported(why)  # recorded as unsupported before anything is built
        emit("phase", {"impl": rec.impl, "phase": "build"})
        group.checks.load(0)
        out = make_output(spec, group.tensors)
        built: Built
        announce = lambda event, path: emit("attempt", (event, path))  # noqa: E731
        with selection_timing(selection_flush(self.device, self.timing.mode)), remembering_choices(), \
                attempts(f"{point.layer} {rec.impl}", announce, avoid) as remarks:
            built, rec.first_call_s = time_first_call(
                lambda: as_built(impl.build(spec, dtype, point.layout, group.tensors, out)), self.device)
        rec.set_details({**built.details, **({"remarks": "; ".join(remarks)} if remarks else {})})
        return Candidate(built.launch, out)

    def check(self, candidate: Candidate, group: GroupInputs, rec: Record, emit: Emit) -> str | None:
        """Two launches, the second on new input values; None when both are correct."""
        emit("phase", {"impl": rec.impl, "phase": "check"})
        result = check_relaunches(candidate.launch, candidate.out, group.checks)
        rec.check = check_columns(result)
        return None if result.ok else result.message

    def time(self, candidate: Candidate, rec: Record, emit: Emit) -> None:
        emit("phase", {"impl": rec.impl, "phase": "time"})
        rec.set_time(time_kernel(candidate.launch, self.device, self.timing).to_record())

    def check_after_timing(self, candidate: Candidate, group: GroupInputs, rec: Record,
                           emit: Emit) -> str | None:
        """The timed launches saw all of the kernel's work, and it still computes: on a GPU its
        work stays on the current stream; then one more launch on the first input values."""
        emit("phase", {"impl": rec.impl, "phase": "check after timing"})
        escaped = check_stream(candidate.launch, self.device)
        if escaped is not None:
            rec.check["check_stream"] = escaped
            return escaped
        n = rec.time.get("time_n")
        when = f" after the {n} timed samples" if n else " after timing"
        result = check_launch(candidate.launch, candidate.out, group.checks, 0, previous=1, when=when)
        rec.check.update(check_columns(result, "check_after_timing"))
        return None if result.ok else result.message

    def energy(self, live: dict[str, Candidate], records: dict[str, Record], emit: Emit) -> None:
        names = [n for n in live if records[n].energy_requested]
        for n in live:
            if n not in names:
                records[n].energy = {"energy_method": "off"}
        if not names:
            return
        meter = self.meter()
        if not meter.available:
            for n in names:
                records[n].energy = {"energy_method": "unavailable", "energy_reason": meter.reason}
            return
        for n in names:
            emit("phase", {"impl": n, "phase": "energy"})
        try:
            stats = meter.measure({n: live[n].launch for n in names},
                                  {n: records[n].time["time_median_s"] for n in names})
        except Exception as exc:  # noqa: BLE001 - the times stand; energy says why it is missing
            if is_poisoned(exc, self.device):
                raise Poisoned(f"{type(exc).__name__}: {exc}") from exc
            for n in names:
                records[n].energy = {"energy_method": "error", "energy_reason": f"{type(exc).__name__}: {exc}"}
            return
        for n in names:
            rec = records[n]
            rec.energy = flatten("", stats[n].to_record())
            j = rec.energy.get("energy_j_per_launch")
            if j is not None:
                rec.energy.update(derived_metrics(j, rec.time["time_median_s"], rec.figures["flops"]))
                rec.energy.update(per_image_metrics(j, rec.energy.get("energy_host_j_per_launch"),
                                                    rec.params.get("batch")))
            emit("partial", rec)

    def provenance(self, candidates: dict[str, Candidate], records: dict[str, Record], emit: Emit) -> None:
        if self.device.type != "cuda":
            return
        for n, candidate in candidates.items():
            emit("phase", {"impl": n, "phase": "provenance"})
            rec = records[n]
            try:
                names = list(kernel_names(candidate.launch, self.device))
                rec.provenance = {"kernel_names": names,
                                  "kernel_libraries": sorted({library(k, rec.backend) for k in names})}
            except Exception as exc:  # noqa: BLE001 - the names are informative, not the result
                if is_poisoned(exc, self.device):
                    raise Poisoned(f"{type(exc).__name__}: {exc}") from exc
                rec.provenance = {"kernel_names_error": f"{type(exc).__name__}: {exc}"}

    def record_failure(self, exc: BaseException, recs: Iterable[Record], emit: Emit) -> None:
        status, message = classify(exc)
        poisoned = is_poisoned(exc, self.device)
        if status == "error" and not poisoned:
            tb = traceback.extract_tb(exc.__traceback__)
            if tb:
                message += f" (at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno})"
        candidate = candidate_of(exc)
        if status == "error" and candidate:
            message += f" (in the build's candidate {candidate})"
        for rec in list(recs):
            emit("record", rec.finish(status, message))
        if poisoned:
            raise Poisoned(message) from exc
