"""Run one point group (same spec, dtype, layout; several implementations) and emit its records.

The steps, all inside ``precision(dtype)``: build inputs and the float64 reference once; per
implementation build it (first-call time), check it against the reference, time it; measure
energy of the correct ones together (interleaved windows); record the GPU kernel names of every
kernel that built, the incorrect ones too (what ran is what one needs to explain a wrong result).

Records leave through ``emit(kind, payload)``:

* ``("phase", {"impl", "phase"})``: what is about to run (a crash report names it);
* ``("partial", record)``: a record with time statistics, final once energy is done;
* ``("record", record)``: a final record (written to the log at once).

``serve`` runs the same code in a spawned worker process; a CUDA error that poisons the
context ends that process (``Poisoned``) so the runner can start a clean one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import traceback
from typing import Any, Callable

import torch

from layerbench.builders import as_built
from layerbench.dtypes import get_dtype, precision
from layerbench.errors import Unavailable, Unsupported
from layerbench.results.rundir import base_record, flatten
from layerbench.layers import ReLU
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


def derived(rec: dict[str, Any]) -> dict[str, Any]:
    """Throughput from the median time: TFLOP/s and GB/s of the spec's minimum bytes."""
    t = rec.get("time_median_s")
    if not t or "flops" not in rec:
        return {}
    return {"tflops": rec["flops"] / t / 1e12, "gbps": rec["min_bytes"] / t / 1e9}


class GroupEvaluator:
    """Runs point groups on one device; keeps the energy meter between groups."""

    def __init__(self, device: str, measure: Measure, experiment: str, session: int):
        self.device = torch.device(device)
        self.measure = measure
        self.experiment = experiment
        self.session = session
        self._meter: Any = None

    def meter(self) -> Any:
        if self._meter is None:
            from layerbench.measure.energy import EnergyConfig, EnergyMeter
            self._meter = EnergyMeter(self.device, EnergyConfig(**self.measure.energy_config))
        return self._meter

    def run(self, point: Point, impls: list[str], emit: Emit) -> None:
        records = {n: base_record(point, n, self.measure, self.device.type, self.experiment,
                                  self.session) for n in impls}

        def final(name: str, status: str, message: str) -> None:
            rec = records.pop(name)
            rec["status"], rec["message"] = status, message
            emit("record", rec)

        if point.invalid is not None:
            for name in list(records):
                final(name, "invalid", point.invalid)
            return
        dtype = get_dtype(point.dtype)
        with precision(dtype):
            try:
                self._run(point, dtype, records, final, emit)
            finally:
                # The group's tensors are gone now; give their memory back before the next group.
                if self.device.type == "cuda":
                    with contextlib.suppress(Exception):
                        torch.cuda.empty_cache()

    def _fail(self, exc: BaseException, names: list[str], final: Callable[[str, str, str], None]) -> None:
        status, message = classify(exc)
        poisoned = is_poisoned(exc, self.device)
        if status == "error" and not poisoned:
            tb = traceback.extract_tb(exc.__traceback__)
            if tb:
                message += f" (at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno})"
        for name in names:
            final(name, status, message)
        if poisoned:
            raise Poisoned(message) from exc

    def _run(self, point: Point, dtype: Any, records: dict[str, dict[str, Any]],
             final: Callable[[str, str, str], None], emit: Emit) -> None:
        from layerbench import registry
        from layerbench.testing import check_kernel, make_output, make_tensors, reference
        from layerbench.measure.timing import TimingConfig, time_first_call, time_kernel

        spec, dev, layout = point.spec, self.device, point.layout
        assert spec is not None
        seed = int.from_bytes(os.urandom(4), "little")
        try:
            tensors = make_tensors(spec, dtype, layout, dev, torch.Generator().manual_seed(seed))
            x_fresh = tensors["x"].clone() if isinstance(spec, ReLU) and spec.inplace else None
            # One float64 reference for all implementations: they all see the same inputs.
            ref = reference(spec, {"x": x_fresh} if x_fresh is not None else tensors)
        except Exception as exc:  # noqa: BLE001 - recorded per implementation
            self._fail(exc, list(records), final)
            return

        timing_cfg = TimingConfig(**self.measure.timing)
        live: dict[str, tuple[Any, torch.Tensor]] = {}
        for name in list(records):
            rec = records[name]
            rec["input_seed"] = seed
            try:
                try:
                    impl = registry.get(point.layer, name)
                except ValueError as exc:
                    raise Unavailable(str(exc)) from exc
                rec["backend"], rec["reference"] = impl.backend, impl.reference
                if dev.type not in impl.devices:
                    raise Unsupported(f"{name} runs on {', '.join(impl.devices)} only, not {dev.type}")
                emit("phase", {"impl": name, "phase": "build"})
                out = make_output(spec, tensors)
                built, rec["first_call_s"] = time_first_call(
                    lambda: as_built(impl.build(spec, dtype, layout, tensors, out)), dev)
                kernel = built.launch
                # What the library chose (e.g. cuDNN's algorithm and math type) as detail_* columns.
                rec.update(flatten("detail", built.details))
                emit("phase", {"impl": name, "phase": "check"})
                check = check_kernel(kernel, out, spec, dtype, tensors, x_fresh, ref=ref)
                rec.update(check_rel_norm=check.rel_norm, check_max_err=check.max_err,
                           check_max_abs=check.max_abs, check_nonfinite=check.nonfinite,
                           check_message=check.message)
                if not check.ok:
                    self._provenance({name: (kernel, out)}, records, emit)
                    final(name, "incorrect", check.message)
                    continue
                emit("phase", {"impl": name, "phase": "time"})
                rec.update(time_kernel(kernel, dev, timing_cfg).to_record())
                rec.update(derived(rec))
                emit("partial", rec)
                live[name] = (kernel, out)
            except Exception as exc:  # noqa: BLE001 - recorded as this implementation's status
                self._fail(exc, [name], final)

        if live:
            self._energy(point, live, records, emit)
            self._provenance(live, records, emit)
        for name in list(live):
            final(name, "ok", "")

    def _energy(self, point: Point, live: dict[str, tuple[Any, torch.Tensor]],
                records: dict[str, dict[str, Any]], emit: Emit) -> None:
        names = [n for n in live if n in point.energy_impls]
        for n in live:
            if n not in names:
                records[n]["energy_method"] = "off"
        if not names:
            return
        meter = self.meter()
        if not meter.available:
            for n in names:
                records[n].update(energy_method="unavailable", energy_reason=meter.reason)
            return
        from layerbench.measure.energy import derived_metrics

        for n in names:
            emit("phase", {"impl": n, "phase": "energy"})
        try:
            stats = meter.measure({n: live[n][0] for n in names},
                                  {n: records[n]["time_median_s"] for n in names})
        except Exception as exc:  # noqa: BLE001 - the times stand; energy says why it is missing
            if is_poisoned(exc, self.device):
                raise Poisoned(f"{type(exc).__name__}: {exc}") from exc
            for n in names:
                records[n].update(energy_method="error", energy_reason=f"{type(exc).__name__}: {exc}")
            return
        for n in names:
            rec = records[n]
            rec.update(flatten("", stats[n].to_record()))
            j = rec.get("energy_j_per_launch")
            if j is not None:
                rec.update(derived_metrics(j, rec["time_median_s"], rec["flops"]))
            emit("partial", rec)

    def _provenance(self, kernels: dict[str, tuple[Any, torch.Tensor]],
                    records: dict[str, dict[str, Any]], emit: Emit) -> None:
        if self.device.type != "cuda":
            return
        from layerbench.measure.provenance import kernel_names, library

        for n, (kernel, _) in kernels.items():
            emit("phase", {"impl": n, "phase": "provenance"})
            try:
                names = list(kernel_names(kernel, self.device))
                records[n]["kernel_names"] = names
                records[n]["kernel_libraries"] = sorted({library(k, records[n].get("backend"))
                                                         for k in names})
            except Exception as exc:  # noqa: BLE001 - the names are informative, not the result
                if is_poisoned(exc, self.device):
                    raise Poisoned(f"{type(exc).__name__}: {exc}") from exc
                records[n]["kernel_names_error"] = f"{type(exc).__name__}: {exc}"


def environment(device: str) -> dict[str, Any]:
    from layerbench.measure.environment import collect_environment

    return collect_environment(device)


def serve(conn: Any, device: str, measure: Measure, experiment: str, session: int,
          send_environment: bool) -> None:
    """Worker-process main loop: receive (point, impls), send messages, ``("done", None)`` after each."""
    if device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    # Ctrl-C is the parent's to handle: it kills this process and keeps what was recorded.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    runner = GroupEvaluator(device, measure, experiment, session)
    emit = lambda kind, payload: conn.send((kind, payload))  # noqa: E731
    if send_environment:
        try:
            env = environment(device)
        except Exception as exc:  # noqa: BLE001 - results without an environment beat no results
            env = {"error": f"{type(exc).__name__}: {exc}"}
        emit("environment", env)
    while True:
        task = conn.recv()
        if task is None:
            return
        point, impls = task
        try:
            runner.run(point, impls, emit)
        except Poisoned as exc:
            emit("poisoned", str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a harness bug: the runner records it, we go on
            emit("failed", f"{type(exc).__name__}: {exc}")
            continue
        emit("done", None)
