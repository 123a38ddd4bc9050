"""The point model: what one benchmark group is, how its results are identified, and a sweep of them."""

from __future__ import annotations

import dataclasses
import keyword
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerbench.errors import SweepError
from layerbench.layers import LAYERS, SHORTHANDS, LayerSpec
from layerbench.sweep.filters import Expr

# GPU settings a sweep may vary (sweeps/README.md, "GPU settings"): not layer parameters, but the
# clocks (MHz, locked) and the power limit (W) the point runs under, applied through NVML only
# with ``layerbench run --allow-gpu-settings``.
SETTINGS_AXES = ("sm_clock_mhz", "memory_clock_mhz", "power_limit_w")


@dataclass(frozen=True)
class Measure:
    """Measurement options of a sweep (after --quick); part of every point's config hash."""

    timing: dict[str, Any]
    energy: bool
    energy_config: dict[str, Any]
    energy_where: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"timing": self.timing, "energy": self.energy, "energy_config": self.energy_config,
                "energy_where": list(self.energy_where)}


@dataclass
class Point:
    """One benchmark group: a spec (or why it is invalid), dtype, layout and the implementations.

    ``label`` is the base's name (``conv1``) or None; ``axes`` maps each swept axis name to the
    value of this point (a zipped axis maps to a dict of its fields).
    """

    index: int
    layer: str
    label: str | None
    params: dict[str, Any]
    axes: dict[str, Any]
    dtype: str
    layout: str
    implementations: list[str]
    spec: LayerSpec | None
    invalid: str | None
    energy_impls: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # the point's SETTINGS_AXES values

    def values(self, impl: str) -> dict[str, Any]:
        """What filter expressions see for one of the point's implementations: the parameters as
        written, the spec's fields (``kernel_h`` where the file wrote ``kernel``, defaults such as
        ``groups``), the shorthands of square shapes (``kernel`` where kernel_h == kernel_w, as a
        file may write it), and the pass (forward unless the file says otherwise: every layer has
        one)."""
        fields = {} if self.spec is None else {f.name: getattr(self.spec, f.name)
                                               for f in dataclasses.fields(self.spec)}
        return ({"direction": "forward"} | self.params | fields | square_shorthands(self.layer, fields)
                | {"layer": self.layer, "name": self.label, "dtype": self.dtype, "layout": self.layout, "impl": impl})


def filter_shorthands(layer: str) -> set[str]:
    """The layer's sweep-file shorthands a filter may name (``kernel``, ``size``; not ``pass``, a
    Python keyword: filters name the field, ``direction``)."""
    return {name for name in SHORTHANDS[layer] if name.isidentifier() and not keyword.iskeyword(name)}


def square_shorthands(layer: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Each shorthand's value where all its fields are equal (``kernel``: 3 for a 3x3 window, absent
    for 1x7, so a filter on it admits no 1x7 point)."""
    out = {}
    for name in filter_shorthands(layer):
        values = {fields.get(f) for f in SHORTHANDS[layer][name]}
        if len(values) == 1 and None not in values:
            out[name] = values.pop()
    return out


@dataclass
class Sweep:
    path: Path
    title: str
    experiment: str
    thesis: list[str]
    description: str
    layers: list[str]
    axis_names: list[str]
    measure: Measure
    points: list[Point]
    skipped_invalid: int
    skipped_filtered: int
    text: str
    energy_where: list[Expr] = field(default_factory=list)
    invalid_policy: str = "record"  # the file's `invalid`: "record" or "skip" invalid points
    filter_names: set[str] = field(default_factory=set)  # what a filter over its points may name

    @property
    def settings_axes(self) -> list[str]:
        """The GPU-settings axes the sweep names (empty for an ordinary sweep)."""
        return [a for a in self.axis_names if a in SETTINGS_AXES]

    def _wants_energy(self, point: Point, impl: str) -> bool:
        return self.measure.energy and all(w(point.values(impl)) for w in self.energy_where)

    def add_implementations(self, names: list[str]) -> None:
        """``--impl``: add implementations (``name``, ``module:function`` or ``layer=...``)."""
        for item in names:
            layer, sep, name = item.partition("=")
            if not sep:
                layer, name = "", item
            elif layer not in LAYERS:
                raise SweepError(f"--impl {item}: layer must be one of {', '.join(LAYERS)}")
            if not name.strip():
                raise SweepError(f"--impl {item!r}: no implementation name (NAME, package.module:function "
                                 "or LAYER=NAME)")
            if layer and layer not in self.layers:
                raise SweepError(f"--impl {item}: this sweep has no {layer} layer; its layers are "
                                 f"{', '.join(self.layers)}")
            for p in self.points:
                if (not layer or p.layer == layer) and name not in p.implementations:
                    p.implementations.append(name)
                    if self._wants_energy(p, name):
                        p.energy_impls.append(name)

    def disable_energy(self) -> None:
        """``--no-energy``: time only (a different measurement, so different config hashes)."""
        self.measure = dataclasses.replace(self.measure, energy=False)
        for p in self.points:
            p.energy_impls = []

    def implementation_names(self) -> list[str]:
        """Every implementation name of the sweep's points, in first-use order."""
        return list(dict.fromkeys(n for p in self.points for n in p.implementations))

    def restrict_where(self, source: str) -> None:
        """``--where``: keep only the (point, implementation) rows the filter admits, as a file's
        own ``where`` does (ANDed with it)."""
        try:
            expr = Expr(source, self.filter_names)
        except ValueError as exc:
            raise SweepError(f"--where for {self.path}: {exc}") from None
        for p in self.points:
            p.implementations = [n for n in p.implementations if expr(p.values(n))]
            p.energy_impls = [n for n in p.energy_impls if n in p.implementations]
        kept = [p for p in self.points if p.implementations]
        self.skipped_filtered += len(self.points) - len(kept)
        self.points = kept

    def restrict_implementations(self, names: list[str]) -> None:
        """``--only``: keep just these implementations; each must be one of the sweep's."""
        if not names:
            raise SweepError("--only names no implementation")
        have = self.implementation_names()
        for n in names:
            if n not in have:
                raise SweepError(f"--only {n}: not an implementation of {self.path} "
                                 f"(its implementations: {', '.join(have) or 'none'})")
        for p in self.points:
            p.implementations = [n for n in p.implementations if n in names]
            p.energy_impls = [n for n in p.energy_impls if n in names]
        self.points = [p for p in self.points if p.implementations]


def axis_label(value: Any) -> str:
    """How a point's axis value reads in tables: 13, or 3->96 for a zipped axis."""
    if isinstance(value, dict):
        return "->".join(str(v) for v in value.values())
    return str(value)


def point_title(point: Point) -> str:
    """``conv1 batch=64 fp32 NCHW``: how progress and messages name a group."""
    axes = " ".join(f"{k}={axis_label(v)}" for k, v in point.axes.items())
    return " ".join(p for p in (point.label or point.layer, axes, point.dtype, point.layout) if p)
