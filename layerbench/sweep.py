"""Sweep files: parse and validate a TOML sweep, and expand it into benchmark points.

The schema is documented in ``sweeps/README.md``.  In short: a sweep has one or more *bases*
(``layer`` + ``[params]``, or a ``[[points]]`` list of named, possibly different layers), *axes*
whose cartesian product is applied to every base (a table-valued axis zips its lists), optional
``where`` filters, per-layer implementations/dtypes/layouts and ``[timing]``/``[energy]`` options.

Every error is a ``SweepError`` that names the file, the key and what is allowed.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import itertools
import json
import math
import operator
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from layerbench.specs import LAYERS, LayerSpec, spec_from_dict

# Sweep-file shorthands for square shapes: one key sets two spec fields.
SHORTHANDS: dict[str, dict[str, tuple[str, ...]]] = {
    "conv2d": {"size": ("height", "width"), "kernel": ("kernel_h", "kernel_w")},
    "pool2d": {"size": ("height", "width")},
    "relu": {"size": ("height", "width")},
    "linear": {},
}

TOP_KEYS = {"title", "experiment", "thesis", "description", "layer", "params", "points", "axes",
            "where", "invalid", "implementations", "dtypes", "layouts", "timing", "energy"}
POINT_RESERVED = {"name", "layer"}
INVALID_POLICIES = ("record", "skip")

# name -> (accepted types, description); mirrors layerbench.timing.TimingConfig.
TIMING_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "mode": ((str,), '"cold" or "hot"'),
    "min_samples": ((int,), "an integer >= 1"),
    "min_time_s": ((int, float), "a number >= 0"),
    "max_noise": ((int, float), "a number > 0"),
    "max_time_s": ((int, float), "a number > 0"),
    "fixed_samples": ((int,), "an integer >= 1"),
    "warmup": ((int,), "an integer >= 0"),
    "graph": ((bool,), "true or false (hot mode: try CUDA-graph capture first)"),
}
# name -> (accepted types, description); mirrors layerbench.energy.EnergyConfig, plus the switches.
ENERGY_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "enabled": ((bool,), "true or false"),
    "where": ((str, list), "a filter expression or a list of them"),
    "window_s": ((int, float), "a number >= 1.0 (10 counter updates of ~100 ms)"),
    "min_updates": ((int,), "an integer >= 2"),
    "windows": ((int,), "an integer >= 1"),
    "warmup_s": ((int, float), "a number >= 0"),
    "cooldown": ((str, int, float), '"auto", "none" or seconds >= 0'),
    "cooldown_tolerance_c": ((int, float), "a number > 0"),
    "cooldown_max_s": ((int, float), "a number >= 0"),
    "idle_baseline": ((bool,), "true or false"),
    "idle_s": ((int, float), "a number > 0 (idle baseline window, seconds)"),
    "poll_s": ((int, float), "a number > 0 (sleep between counter reads)"),
    "adaptive": ((bool,), "true or false (lengthen windows until the spread <= target_spread)"),
    "target_spread": ((int, float), "a number > 0"),
    "max_window_s": ((int, float), "a number >= window_s"),
    "max_retries": ((int,), "an integer >= 0"),
}

# What --quick changes: few timing samples and one short energy window, to check a sweep runs.
QUICK_TIMING = {"fixed_samples": 5, "warmup": 1}
QUICK_ENERGY = {"windows": 1, "window_s": 1.0, "warmup_s": 0.2, "cooldown": "none",
                "idle_baseline": False}


class SweepError(ValueError):
    """A sweep file is malformed; the message names the file, the key and what is allowed."""


# ------------------------------------------------------------------------- filter expressions

_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}
_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}


class Expr:
    """A small, safe boolean expression over point values (``out_channels >= in_channels``).

    Only names, numbers, strings, lists/tuples of constants, arithmetic, comparisons and
    ``and``/``or``/``not`` are allowed: sweep files are data, never code.
    """

    def __init__(self, source: str, names: set[str]):
        self.source = source
        try:
            self._tree = ast.parse(source, mode="eval")
        except SyntaxError as exc:
            raise ValueError(f"cannot parse {source!r}: {exc.msg}") from None
        for node in ast.walk(self._tree):
            if isinstance(node, ast.Name):
                if node.id not in names:
                    raise ValueError(f"{source!r} uses unknown name {node.id!r}; "
                                     f"names are {', '.join(sorted(names))}")
            elif not isinstance(node, (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp,
                                       ast.Not, ast.USub, ast.BinOp, ast.Compare, ast.Constant,
                                       ast.Load, ast.Tuple, ast.List, *_COMPARE, *_BINARY)):
                raise ValueError(f"{source!r}: {type(node).__name__} is not allowed in a filter "
                                 "(use names, numbers, strings, arithmetic, comparisons, and/or/not)")

    def __call__(self, values: dict[str, Any]) -> bool:
        try:
            return bool(self._eval(self._tree.body, values))
        except (TypeError, ZeroDivisionError):  # "size" > 3, x / 0: no match
            return False

    def _eval(self, node: ast.AST, values: dict[str, Any]) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return values.get(node.id)
        if isinstance(node, (ast.Tuple, ast.List)):
            return tuple(self._eval(e, values) for e in node.elts)
        if isinstance(node, ast.BoolOp):
            results = (self._eval(v, values) for v in node.values)
            return all(results) if isinstance(node.op, ast.And) else any(results)
        if isinstance(node, ast.UnaryOp):
            v = self._eval(node.operand, values)
            return (not v) if isinstance(node.op, ast.Not) else -v
        # A parameter this point's layer lacks is None: arithmetic on it stays None and every
        # comparison with it is false, so other parts of an ``or`` still decide.
        if isinstance(node, ast.BinOp):
            left, right = self._eval(node.left, values), self._eval(node.right, values)
            return None if left is None or right is None else _BINARY[type(node.op)](left, right)
        if isinstance(node, ast.Compare):
            left = self._eval(node.left, values)
            for op, comp in zip(node.ops, node.comparators, strict=True):
                right = self._eval(comp, values)
                if left is None or right is None or not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        raise ValueError(f"{self.source!r}: unsupported expression")  # unreachable after __init__


# ------------------------------------------------------------------------------- the model


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

    def values(self, impl: str) -> dict[str, Any]:
        """What filter expressions see for one of the point's implementations."""
        return self.params | {"layer": self.layer, "name": self.label, "dtype": self.dtype,
                              "layout": self.layout, "impl": impl}

    def config(self, impl: str, measure: Measure, device: str) -> dict[str, Any]:
        """What identifies a result row: everything that changes the measured quantity."""
        return {"layer": self.layer, "params": _spec_params(self), "dtype": self.dtype,
                "layout": self.layout, "impl": impl, "device": device,
                "measure": measure.to_dict() | {"energy": impl in self.energy_impls}}

    def point_hash(self, measure: Measure, device: str) -> str:
        cfg = self.config("", measure, device)
        del cfg["impl"]
        cfg["measure"]["energy"] = measure.energy
        return stable_hash(cfg)

    def config_hash(self, impl: str, measure: Measure, device: str) -> str:
        return stable_hash(self.config(impl, measure, device))


def _spec_params(point: Point) -> dict[str, Any]:
    if point.spec is not None:
        return dataclasses.asdict(point.spec)
    return dict(sorted(point.params.items()))


def stable_hash(obj: Any) -> str:
    """16 hex digits of SHA-256 over canonical JSON: the same config hashes alike everywhere."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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

    def restrict_implementations(self, names: list[str]) -> None:
        """``--only``: keep just these implementations."""
        for p in self.points:
            p.implementations = [n for n in p.implementations if n in names]
            p.energy_impls = [n for n in p.energy_impls if n in names]


# --------------------------------------------------------------------------------- parsing


def load(path: str | Path, quick: bool = False) -> Sweep:
    """Read and validate a sweep file; raise ``SweepError`` naming the file and key."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SweepError(f"{path}: cannot read ({exc.strerror})") from None
    return parse(text, path, quick)


def parse(text: str, path: str | Path = "<sweep>", quick: bool = False) -> Sweep:
    path = Path(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(f"{path}: not valid TOML: {exc}") from None
    try:
        return _Parser(data, path, quick).sweep(text)
    except _KeyError as exc:
        raise SweepError(f"{path}: {exc}") from None


class _KeyError(Exception):
    pass


def _fail(key: str, msg: str) -> None:
    raise _KeyError(f"{key}: {msg}")


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _check_type(key: str, value: Any, types: tuple[type, ...], allowed: str) -> None:
    # TOML booleans are ints in Python; a bool is only accepted where bool is listed.
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        _fail(key, f"must be {allowed}, got {_type_name(value)} {value!r}")


def _scalar_ok(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))


class _Parser:
    def __init__(self, data: dict[str, Any], path: Path, quick: bool):
        self.d = data
        self.path = path
        self.quick = quick

    def sweep(self, text: str) -> Sweep:
        d = self.d
        unknown = sorted(set(d) - TOP_KEYS)
        if unknown:
            _fail(unknown[0], f"unknown key; allowed keys are {', '.join(sorted(TOP_KEYS))}")
        for key in ("title", "experiment", "description"):
            if key in d:
                _check_type(key, d[key], (str,), "a string")
        title = d.get("title", self.path.stem)
        experiment = d.get("experiment", self.path.stem)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", experiment):
            _fail("experiment", f"must use only letters, digits, '_', '.', '-', got {experiment!r}")
        thesis = d.get("thesis", [])
        if isinstance(thesis, str):
            thesis = [thesis]
        _check_type("thesis", thesis, (list,), "a string or a list of strings (table ids)")
        for i, t in enumerate(thesis):
            _check_type(f"thesis[{i}]", t, (str,), "a string (table id such as \"6-6\")")

        bases = self.bases()
        layers = sorted({layer for _, layer, _ in bases})
        axes = self.axes(bases)
        invalid_policy = d.get("invalid", "record")
        if invalid_policy not in INVALID_POLICIES:
            _fail("invalid", f"must be one of {', '.join(INVALID_POLICIES)}, got {invalid_policy!r}")
        impls = self.per_layer("implementations", layers, None)
        dtypes = self.per_layer("dtypes", layers, lambda layer: ["fp32"])
        layouts = self.per_layer("layouts", layers, lambda layer: ["NCHW"])
        for layer in layers:
            cls = LAYERS[layer]
            for key, values, allowed in (("dtypes", dtypes[layer], cls.dtypes),
                                         ("layouts", layouts[layer], cls.layouts)):
                for v in values:
                    if v not in allowed:
                        _fail(key, f"{v!r} is not allowed for {layer}; allowed: {', '.join(allowed)}")
        names = self.filter_names(layers)
        where = [self.expr("where", s, names | {"impl"}) for s in self.str_list("where")]
        measure = self.measure()
        energy_where = [self.expr("energy.where", s, names | {"impl"}) for s in measure.energy_where]

        swept = {f for _, values in axes for _, assigns in values[:1]
                 for layer in layers for f in _expand("axes", layer, assigns)}
        for i, (label, layer, base) in enumerate(bases):
            missing = sorted(_required(layer) - set(base) - swept)
            if missing:
                where_ = f"points[{i}]" if label is not None else "params"
                _fail(where_, f"{layer} needs {', '.join(missing)} (set them here or sweep them in [axes])")

        points: list[Point] = []
        skipped_invalid = skipped_filtered = 0
        axis_values = [values for _, values in axes]
        for (label, layer, base), combo in itertools.product(bases, itertools.product(*axis_values)):
            params = dict(base)
            point_axes: dict[str, Any] = {}
            for (name, _), (value, assigns) in zip(axes, combo, strict=True):
                point_axes[name] = value
                params.update(_expand(f"axes.{name}", layer, assigns))
            try:
                spec, why = spec_from_dict(layer, params), None
            except ValueError as exc:
                spec, why = None, str(exc)
            if why is not None and invalid_policy == "skip":
                skipped_invalid += len(dtypes[layer]) * len(layouts[layer])
                continue
            for dtype, layout in itertools.product(dtypes[layer], layouts[layer]):
                point = Point(len(points), layer, label, params, point_axes, dtype, layout,
                              list(impls[layer]), spec, why)
                # A filter naming `impl` drops single implementations (no Triton fp32 here, say).
                point.implementations = [n for n in point.implementations
                                         if all(w(point.values(n)) for w in where)]
                if not point.implementations:
                    skipped_filtered += 1
                    continue
                points.append(point)
        sweep = Sweep(self.path, title, experiment, list(thesis), d.get("description", ""), layers,
                      [n for n, _ in axes], measure, points, skipped_invalid, skipped_filtered, text,
                      energy_where)
        for point in points:
            point.energy_impls = [n for n in point.implementations if sweep._wants_energy(point, n)]
        return sweep

    # ---- pieces

    def str_list(self, key: str, value: Any = None) -> list[str]:
        value = self.d.get(key, []) if value is None else value
        if isinstance(value, str):
            return [value]
        _check_type(key, value, (list,), "a string or a list of strings")
        for i, v in enumerate(value):
            _check_type(f"{key}[{i}]", v, (str,), "a string")
        return value

    def expr(self, key: str, source: str, names: set[str]) -> Expr:
        try:
            return Expr(source, names)
        except ValueError as exc:
            _fail(key, str(exc))
            raise  # unreachable; keeps type checkers content

    def fields(self, layer: str) -> set[str]:
        return {f.name for f in dataclasses.fields(LAYERS[layer])} | set(SHORTHANDS[layer])

    def check_params(self, key: str, layer: str, params: dict[str, Any]) -> None:
        fields = self.fields(layer)
        for k, v in params.items():
            if k not in fields:
                _fail(f"{key}.{k}", f"{layer} has no parameter {k!r}; parameters are "
                                    f"{', '.join(sorted(fields))}")
            if not _scalar_ok(v):
                _fail(f"{key}.{k}", f"must be a number, string or boolean, got {_type_name(v)}")

    def layer_name(self, key: str, value: Any) -> str:
        _check_type(key, value, (str,), f"one of {', '.join(LAYERS)}")
        if value not in LAYERS:
            _fail(key, f"must be one of {', '.join(LAYERS)}, got {value!r}")
        return value

    def bases(self) -> list[tuple[str | None, str, dict[str, Any]]]:
        d = self.d
        common = d.get("params", {})
        _check_type("params", common, (dict,), "a table of layer parameters")
        if "points" in d:
            points = d["points"]
            _check_type("points", points, (list,), "an array of tables ([[points]])")
            if not points:
                _fail("points", "must hold at least one point")
            default_layer = self.layer_name("layer", d["layer"]) if "layer" in d else None
            bases, seen = [], set()
            for i, p in enumerate(points):
                key = f"points[{i}]"
                _check_type(key, p, (dict,), "a table")
                if "name" not in p:
                    _fail(f"{key}.name", "is required (a label such as \"conv1\")")
                _check_type(f"{key}.name", p["name"], (str,), "a string")
                if p["name"] in seen:
                    _fail(f"{key}.name", f"{p['name']!r} is used twice; names must be unique")
                seen.add(p["name"])
                if "layer" in p:
                    layer = self.layer_name(f"{key}.layer", p["layer"])
                elif default_layer:
                    layer = default_layer
                else:
                    _fail(f"{key}.layer", f"is required (or a top-level layer); one of {', '.join(LAYERS)}")
                params = {k: v for k, v in p.items() if k not in POINT_RESERVED}
                self.check_params(key, layer, params)
                inherited = {k: v for k, v in common.items() if k in self.fields(layer)}
                bases.append((p["name"], layer,
                              _expand("params", layer, inherited) | _expand(key, layer, params)))
            for k in common:
                if not any(k in self.fields(layer) for _, layer, _ in bases):
                    _fail(f"params.{k}", "no point's layer has this parameter")
            return bases
        if "layer" not in d:
            _fail("layer", f"is required (one of {', '.join(LAYERS)}) unless [[points]] are given")
        layer = self.layer_name("layer", d["layer"])
        self.check_params("params", layer, common)
        return [(None, layer, _expand("params", layer, common))]

    def axes(self, bases: list[tuple[str | None, str, dict[str, Any]]]
             ) -> list[tuple[str, list[tuple[Any, dict[str, Any]]]]]:
        """Each axis as (name, [(value shown in reports, parameters it sets)])."""
        raw = self.d.get("axes", {})
        _check_type("axes", raw, (dict,), "a table of axis = [values] or zipped axis tables")
        layers = {layer for _, layer, _ in bases}
        out = []
        set_by_axes: set[str] = set()
        for name, spec in raw.items():
            key = f"axes.{name}"
            if isinstance(spec, list):
                columns = {name: spec}
            elif isinstance(spec, dict):
                columns = spec
                if not columns:
                    _fail(key, "a zipped axis needs at least one parameter list")
            else:
                _fail(key, f"must be a list of values or a table of equal-length lists, got {_type_name(spec)}")
            lengths = set()
            for param, values in columns.items():
                pkey = key if param == name and isinstance(spec, list) else f"{key}.{param}"
                for layer in layers:
                    if param not in self.fields(layer):
                        _fail(pkey, f"{layer} has no parameter {param!r}; parameters are "
                                    f"{', '.join(sorted(self.fields(layer)))}")
                _check_type(pkey, values, (list,), "a non-empty list of values")
                if not values:
                    _fail(pkey, "must hold at least one value")
                for v in values:
                    if not _scalar_ok(v):
                        _fail(pkey, f"values must be numbers, strings or booleans, got {_type_name(v)}")
                for f in {f for layer in layers for f in _expand(pkey, layer, {param: 0})}:
                    if f in set_by_axes:
                        _fail(pkey, f"{f!r} is swept by two axes")
                    set_by_axes.add(f)
                lengths.add(len(values))
            if len(lengths) > 1:
                _fail(key, f"zipped lists must have equal lengths, got {sorted(lengths)}")
            n = lengths.pop()
            if isinstance(spec, list):
                values = [(v, {name: v}) for v in spec]
            else:
                values = [({p: columns[p][i] for p in columns}, {p: columns[p][i] for p in columns})
                          for i in range(n)]
            out.append((name, values))
        for i, (label, _, base) in enumerate(bases):
            clash = sorted(set(base) & set_by_axes)
            if clash:
                where = f"points[{i}]" if label is not None else "params"
                _fail(f"{where}.{clash[0]}", "is also swept by an axis; set it in one place only")
        return out

    def per_layer(self, key: str, layers: list[str],
                  default: Callable[[str], list[str]] | None) -> dict[str, list[str]]:
        """A list for every layer, or a table keyed by layer name."""
        if key not in self.d:
            if default is None:
                _fail(key, "is required: a list of names, or a table of lists keyed by layer")
            return {layer: default(layer) for layer in layers}
        value = self.d[key]
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(layers))
            if unknown:
                _fail(f"{key}.{unknown[0]}", f"this sweep has no {unknown[0]!r} layer; its layers are "
                                            f"{', '.join(layers)}")
            out = {}
            for layer in layers:
                if layer not in value:
                    if default is None:
                        _fail(f"{key}.{layer}", "is missing: every layer of the sweep needs a list")
                    out[layer] = default(layer)
                else:
                    out[layer] = self.name_list(f"{key}.{layer}", value[layer])
            return out
        names = self.name_list(key, value)
        return {layer: list(names) for layer in layers}

    def name_list(self, key: str, value: Any) -> list[str]:
        _check_type(key, value, (list,), "a list of strings")
        if not value:
            _fail(key, "must hold at least one name")
        for i, v in enumerate(value):
            _check_type(f"{key}[{i}]", v, (str,), "a string")
        if len(set(value)) != len(value):
            _fail(key, "lists a name twice")
        return list(value)

    def filter_names(self, layers: list[str]) -> set[str]:
        names = {"layer", "name", "dtype", "layout"}
        for layer in layers:
            names |= {f.name for f in dataclasses.fields(LAYERS[layer])}
        return names

    def measure(self) -> Measure:
        timing = self.options("timing", TIMING_KEYS)
        if "mode" in timing and timing["mode"] not in ("cold", "hot"):
            _fail("timing.mode", f'must be "cold" or "hot", got {timing["mode"]!r}')
        for k in ("min_samples", "fixed_samples"):
            if k in timing and timing[k] < 1:
                _fail(f"timing.{k}", f"must be >= 1, got {timing[k]}")
        for k in ("min_time_s", "warmup"):
            if k in timing and timing[k] < 0:
                _fail(f"timing.{k}", f"must be >= 0, got {timing[k]}")
        for k in ("max_noise", "max_time_s"):
            if k in timing and not timing[k] > 0:
                _fail(f"timing.{k}", f"must be > 0, got {timing[k]}")
        energy = self.options("energy", ENERGY_KEYS)
        enabled = energy.pop("enabled", True)
        where = tuple(self.str_list("energy.where", energy.pop("where", [])))
        if "window_s" in energy and energy["window_s"] < 1.0:
            _fail("energy.window_s", "must be >= 1.0: NVML's energy counter updates about every "
                                     f"100 ms and a window needs >= 10 updates, got {energy['window_s']}")
        if "min_updates" in energy and energy["min_updates"] < 2:
            _fail("energy.min_updates", f"must be >= 2, got {energy['min_updates']}")
        if "windows" in energy and energy["windows"] < 1:
            _fail("energy.windows", f"must be >= 1, got {energy['windows']}")
        for k in ("warmup_s", "cooldown_max_s"):
            if k in energy and energy[k] < 0:
                _fail(f"energy.{k}", f"must be >= 0, got {energy[k]}")
        for k in ("idle_s", "poll_s", "target_spread"):
            if k in energy and not energy[k] > 0:
                _fail(f"energy.{k}", f"must be > 0, got {energy[k]}")
        if "max_retries" in energy and energy["max_retries"] < 0:
            _fail("energy.max_retries", f"must be >= 0, got {energy['max_retries']}")
        if energy.get("max_window_s", math.inf) < energy.get("window_s", 1.0):
            _fail("energy.max_window_s", f"must be >= window_s, got {energy['max_window_s']}")
        if "cooldown_tolerance_c" in energy and not energy["cooldown_tolerance_c"] > 0:
            _fail("energy.cooldown_tolerance_c", f"must be > 0, got {energy['cooldown_tolerance_c']}")
        cooldown = energy.get("cooldown")
        if isinstance(cooldown, str) and cooldown not in ("auto", "none"):
            _fail("energy.cooldown", f'must be "auto", "none" or seconds >= 0, got {cooldown!r}')
        if isinstance(cooldown, (int, float)) and not isinstance(cooldown, bool) and cooldown < 0:
            _fail("energy.cooldown", f"must be >= 0 seconds, got {cooldown}")
        if self.quick:
            timing = timing | QUICK_TIMING
            energy = energy | QUICK_ENERGY
        # The measurement core has the last word on its options (cross-field rules included).
        from layerbench.energy import EnergyConfig
        from layerbench.timing import TimingConfig

        for key, cls, options in (("timing", TimingConfig, timing), ("energy", EnergyConfig, energy)):
            try:
                cls(**options)
            except (TypeError, ValueError) as exc:
                _fail(key, str(exc))
        return Measure(dict(sorted(timing.items())), enabled, dict(sorted(energy.items())), where)

    def options(self, key: str, allowed: dict[str, tuple[tuple[type, ...], str]]) -> dict[str, Any]:
        table = self.d.get(key, {})
        _check_type(key, table, (dict,), "a table")
        for k, v in table.items():
            if k not in allowed:
                _fail(f"{key}.{k}", f"unknown option; allowed: {', '.join(allowed)}")
            types, desc = allowed[k]
            _check_type(f"{key}.{k}", v, types, desc)
            if isinstance(v, float) and not math.isfinite(v):
                _fail(f"{key}.{k}", f"must be finite, got {v}")
        return dict(table)


def _required(layer: str) -> set[str]:
    return {f.name for f in dataclasses.fields(LAYERS[layer])
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}


def _expand(key: str, layer: str, params: dict[str, Any]) -> dict[str, Any]:
    """Replace shorthands (``size``, ``kernel``) by the spec fields they stand for."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        for f in SHORTHANDS[layer].get(k, (k,)):
            if f in out:
                _fail(f"{key}.{k}", f"sets {f!r}, which another key of the same table sets too")
            out[f] = v
    return out


def axis_label(value: Any) -> str:
    """How a point's axis value reads in tables: 13, or 3->96 for a zipped axis."""
    if isinstance(value, dict):
        return "->".join(str(v) for v in value.values())
    return str(value)


def iter_sweep_files(root: Path) -> Iterator[Path]:
    yield from sorted(root.rglob("*.toml"))
