"""One result row as a typed record, and the statuses a row can end with.

A ``Record`` is created from a point before anything runs (``Record.for_point``), filled in by the
evaluation of its group (build details, check, time, energy, provenance) and written once, with its
final status, as one JSON line (``Record.to_json``).  The line's keys are the columns of the
results table; the sections below become column groups:

==============  ============================================================================
identity        experiment, point_index, name, layer, impl, dtype, layout, device, config_hash,
                point_hash, session, point_axes (JSON), measure (JSON), energy_requested
status          status, message
point           axis_<name> (the axis value, with its type), the layer's parameters, flops,
                min_bytes, parameters and the thesis's workload figures where the spec has them
build           backend, reference, input_seed, first_call_s, detail_<key> (what the builder said)
check           check_rel_norm, check_max_err, check_max_abs, check_nonfinite, check_message, ...
time            time_* (the timer's statistics), tflops, gbps
energy          energy_* and the derived j_per_gflop, gflops_per_w, edp_js, j_per_image,
                system_j_per_launch, system_j_per_image (device + RAPL host, where readable)
provenance      kernel_names, kernel_libraries (or kernel_names_error)
placement       where it ran, for runs over several GPUs or hosts: host, gpu_index, gpu_uuid,
                gpu_name, busy_gpus (the GPUs of the run busy while it ran: indices on one
                host, "host:index" through Ray)
settings        setting_<axis> and setting_read_* (a sweep with GPU-settings axes only)
==============  ============================================================================
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from layerbench.dtypes import get_dtype
from layerbench.results.identity import config_hash, layer_params, point_hash
from layerbench.sweep import Measure, Point, axis_label

STATUSES = ("ok", "incorrect", "oom", "unsupported", "unavailable", "invalid", "error")
# The statuses that make a run fail unless the user names others (``--fail-on``).
DEFAULT_FAIL_ON = ("incorrect", "error")
THESIS_FIGURES = ("thesis_parameters", "thesis_input_size", "thesis_connections")


def flatten(prefix: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dicts become ``prefix_key_sub`` columns; lists stay lists (JSONL/Parquet)."""
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}_{k}" if prefix else k
        if isinstance(v, Mapping):
            out.update(flatten(key, v))
        else:
            out[key] = v
    return out


def axis_value(value: Any) -> Any:
    """An axis value as its column holds it: the value itself (13 stays an integer), a zipped
    axis as its label (``3->96``)."""
    return axis_label(value) if isinstance(value, (dict, list, tuple)) else value


def spec_figures(point: Point) -> dict[str, Any]:
    """FLOPs, minimum bytes and the thesis's workload figures where the spec defines them."""
    spec = point.spec
    if spec is None:
        return {}
    out: dict[str, Any] = {"flops": spec.flops, "min_bytes": spec.min_bytes(get_dtype(point.dtype).itemsize),
                           "parameters": spec.parameters}
    for attr in THESIS_FIGURES:
        if hasattr(spec, attr):
            out[attr] = getattr(spec, attr)
    return out


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, enums, paths: written as plain values.
    for attr in ("tolist", "item"):
        if hasattr(obj, attr):
            return getattr(obj, attr)()
    return str(obj)


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null (and keep them out of Parquet's way)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def to_json_line(row: Mapping[str, Any]) -> str:
    """One log line (no newline): NaN/inf as null, numpy values as plain ones."""
    return json.dumps({k: _clean(v) for k, v in row.items()}, default=_json_default, allow_nan=False)


@dataclass
class Record:
    """One (point, implementation) result; see the module docstring for its columns."""

    # identity
    experiment: str
    point_index: int
    name: str | None
    layer: str
    impl: str
    dtype: str
    layout: str
    device: str
    config_hash: str
    point_hash: str
    session: int
    point_axes: dict[str, Any]
    measure: dict[str, Any]
    energy_requested: bool
    # status
    status: str | None = None
    message: str = ""
    # the point: axis values, layer parameters, FLOPs and bytes
    axis_values: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    # build
    backend: str | None = None
    reference: bool | None = None
    input_seed: int | None = None
    first_call_s: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    # measurements, each a group of columns (check_*, time_*, energy_*, kernel_*)
    check: dict[str, Any] = field(default_factory=dict)
    time: dict[str, Any] = field(default_factory=dict)
    energy: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    # where it ran (--gpus, --ray): host, gpu_index, gpu_uuid, gpu_name, busy_gpus
    placement: dict[str, Any] = field(default_factory=dict)
    # GPU settings in effect (setting_*: asked for and read back), where the sweep varies them
    settings: dict[str, Any] = field(default_factory=dict)
    recorded_at: str | None = None

    @classmethod
    def for_point(cls, point: Point, impl: str, measure: Measure, device: str, experiment: str,
                  session: int) -> "Record":
        """What was asked for, before anything ran."""
        return cls(
            experiment=experiment, point_index=point.index, name=point.label, layer=point.layer,
            impl=impl, dtype=point.dtype, layout=point.layout, device=device,
            config_hash=config_hash(point, impl, measure, device),
            point_hash=point_hash(point, measure, device), session=session,
            point_axes=dict(point.axes), measure=measure.to_dict(),
            energy_requested=impl in point.energy_impls,
            axis_values={name: axis_value(v) for name, v in point.axes.items()},
            params=layer_params(point), figures=spec_figures(point))

    # ------------------------------------------------------------------ filled in as it runs

    def finish(self, status: str, message: str = "") -> "Record":
        if status not in STATUSES:
            raise ValueError(f"record status must be one of {', '.join(STATUSES)}, got {status!r}")
        self.status, self.message = status, message
        return self

    def set_details(self, details: Mapping[str, Any]) -> None:
        """What the builder said about its kernel (e.g. cuDNN's algorithm), as ``detail_*``."""
        self.details = flatten("", details)

    def set_time(self, time_columns: Mapping[str, Any]) -> None:
        """The timer's statistics (``time_*``) and the throughput of the median time."""
        self.time = dict(time_columns)
        t = self.time.get("time_median_s")
        if t and "flops" in self.figures:
            self.time.update(tflops=self.figures["flops"] / t / 1e12,
                             gbps=self.figures["min_bytes"] / t / 1e9)

    @property
    def time_median_s(self) -> float | None:
        return self.time.get("time_median_s")

    # ------------------------------------------------------------------------- on disk

    def to_dict(self) -> dict[str, Any]:
        """The flat row, in the column order of the log."""
        row: dict[str, Any] = {
            "experiment": self.experiment, "point_index": self.point_index, "name": self.name,
            "layer": self.layer, "impl": self.impl, "dtype": self.dtype, "layout": self.layout,
            "device": self.device, "config_hash": self.config_hash, "point_hash": self.point_hash,
            "session": self.session, "point_axes": json.dumps(self.point_axes, sort_keys=True),
            "measure": json.dumps(self.measure, sort_keys=True),
            "energy_requested": self.energy_requested, "status": self.status, "message": self.message,
        }
        row.update({f"axis_{k}": v for k, v in self.axis_values.items()})
        row.update(self.params)
        row.update(self.figures)
        for key in ("backend", "reference", "input_seed", "first_call_s"):
            if getattr(self, key) is not None:
                row[key] = getattr(self, key)
        row.update({f"detail_{k}": v for k, v in self.details.items()})
        row.update(self.check)
        row.update(self.time)
        row.update(self.energy)
        row.update(self.provenance)
        row.update(self.placement)
        row.update(self.settings)
        if self.recorded_at is not None:
            row["recorded_at"] = self.recorded_at
        return row

    def to_json(self) -> str:
        if self.status not in STATUSES:
            raise ValueError(f"record status must be one of {', '.join(STATUSES)}, got {self.status!r}")
        return to_json_line(self.to_dict())


# ------------------------------------------------------------------------------ statuses


@dataclass(frozen=True)
class StatusCounts:
    """Rows per status, and those of the failing statuses (what a run's exit code reflects)."""

    counts: dict[str, int]
    fail_on: tuple[str, ...]

    @property
    def failures(self) -> dict[str, int]:
        return {s: n for s, n in self.counts.items() if s in self.fail_on}

    @property
    def failed(self) -> bool:
        return bool(self.failures)

    def as_text(self) -> str:
        """``ok 12, incorrect 1``, in the order of STATUSES."""
        return ", ".join(f"{s} {self.counts[s]}" for s in self.counts)


def parse_fail_on(text: str) -> tuple[str, ...]:
    """``--fail-on incorrect,error,oom``: the statuses that fail a run ('' or 'none': none does)."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if names in ((), ("none",)):
        return ()
    unknown = [n for n in names if n not in STATUSES]
    if unknown:
        raise ValueError(f"--fail-on: unknown status {', '.join(map(repr, unknown))}; "
                         f"statuses are {', '.join(STATUSES)}")
    return names


def count_statuses(rows: Iterable[Mapping[str, Any]],
                   fail_on: Iterable[str] = DEFAULT_FAIL_ON) -> StatusCounts:
    """Rows per status (in the order of STATUSES, unknown ones last) and whether any fails."""
    counts: dict[str, int] = {}
    for r in rows:
        status = str(r.get("status"))
        counts[status] = counts.get(status, 0) + 1
    order = {s: i for i, s in enumerate(STATUSES)}
    ordered = dict(sorted(counts.items(), key=lambda kv: order.get(kv[0], len(order))))
    return StatusCounts(ordered, tuple(fail_on))
