"""Sweep files: parse and validate a TOML sweep, and expand it into benchmark points.

The schema is documented in ``sweeps/README.md``.  In short: a sweep has one or more *bases*
(``layer`` + ``[params]``, or a ``[[points]]`` list of named, possibly different layers), *axes*
whose cartesian product is applied to every base (a table-valued axis zips its lists), optional
``where`` filters, per-layer implementations/dtypes/layouts and ``[timing]``/``[energy]`` options.

Every error is a ``SweepError`` that names the file, the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import tomllib
import typing
from pathlib import Path
from typing import Any, Callable, Iterator

from layerbench.errors import SweepError
from layerbench.layers import DIRECTIONS, LAYERS, SHORTHANDS, required_fields, spec_from_dict
from layerbench.layers.passes import layer_directions
from layerbench.options import (
    Bound,
    EnergyConfig,
    TimingConfig,
    check_value,
    option_schema,
)
from layerbench.sweep.filters import Expr
from layerbench.sweep.points import SETTINGS_AXES, Measure, Point, Sweep, filter_shorthands

TOP_KEYS = {"title", "experiment", "thesis", "description", "layer", "params", "points", "axes",
            "where", "invalid", "implementations", "dtypes", "layouts", "timing", "energy"}
POINT_RESERVED = {"name", "layer"}
# The axis of the multi-GPU experiments: the layer split data-parallel over N GPUs
# (layerbench.run.data_parallel); it sets no layer parameter.
GPUS_AXIS = "gpus"
INVALID_POLICIES = ("record", "skip")

# Sweep-file switches of [energy] beside EnergyConfig's options.
ENERGY_SWITCHES: dict[str, tuple[tuple[type, ...], str]] = {
    "enabled": ((bool,), "true or false"),
    "where": ((str, list), "a filter expression or a list of them"),
}

# What --quick changes: few timing samples and one short energy window, to check a sweep runs.
QUICK_TIMING = {"fixed_samples": 5, "warmup": 1}
QUICK_ENERGY = {"windows": 1, "window_s": 1.0, "warmup_s": 0.2, "cooldown": "none",
                "idle_baseline": False}





def load_sweep(path: str | Path, quick: bool = False) -> Sweep:
    """Read and validate a sweep file; raise ``SweepError`` naming the file and key."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SweepError(f"{path}: cannot read ({exc.strerror})") from None
    return parse_sweep(text, path, quick)


def parse_sweep(text: str, path: str | Path = "<sweep>", quick: bool = False) -> Sweep:
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
        shown = str(value).lower() if isinstance(value, bool) else repr(value)  # as TOML writes it
        _fail(key, f"must be {allowed}, got {_type_name(value)} {shown}")


# Names a user may write as a layer parameter or axis that the file sets at its top level.
_TOP_LEVEL_LISTS = {"dtype": "dtypes", "dtypes": "dtypes", "layout": "layouts", "layouts": "layouts",
                    "impl": "implementations", "implementation": "implementations",
                    "implementations": "implementations"}


def _no_parameter(layer: str, name: str, fields: set[str]) -> str:
    """The error for a name that is not a parameter of ``layer``."""
    if name in _TOP_LEVEL_LISTS:
        return (f"{name} is no layer parameter: every point runs each of the file's top-level "
                f"{_TOP_LEVEL_LISTS[name]} = [...] (a table of lists keyed by layer where they differ)")
    return f"{layer} has no parameter {name!r}; parameters are {', '.join(sorted(fields))}"


def _scalar_ok(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))


# How a parameter's type reads in an error; a wrong type is an error of the file (exit 2), while a
# value of the right type out of its range makes an invalid point (sweeps/README.md).
_PARAM_TYPES: dict[type, tuple[tuple[type, ...], str]] = {
    int: ((int,), "an integer"), bool: ((bool,), "true or false"), str: ((str,), "a string")}


def param_type(layer: str, key: str) -> type | None:
    """The Python type of a layer parameter or shorthand (``size`` is an int), None if unknown."""
    hints = typing.get_type_hints(LAYERS[layer])
    field = SHORTHANDS[layer].get(key, (key,))[0]
    hint = hints.get(field)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args and len(args) == 1 and type(None) in typing.get_args(hint):  # ``int | None``: given, an int
        return args[0]
    return hint


def _check_param_type(key: str, layer: str, param: str, value: Any) -> None:
    kind = param_type(layer, param)
    if kind in _PARAM_TYPES:
        _check_type(key, value, *_PARAM_TYPES[kind])


def _sets_direction(layer: str, param: str) -> bool:
    """Whether a key (``pass`` or ``direction``) sets the spec's ``direction``."""
    return SHORTHANDS[layer].get(param, (param,)) == ("direction",)


def pass_error(layer: str, value: Any) -> str | None:
    """Why ``value`` cannot be a pass of ``layer`` (None: it can).  A pass is a choice among names,
    not a value of a range: a wrong one is a mistake in the file, never an invalid point."""
    if not isinstance(value, str):
        return None  # the type check names it
    if value not in DIRECTIONS:
        return f"must be one of {', '.join(DIRECTIONS)}, got {value!r}"
    have = layer_directions(LAYERS[layer])
    if value not in have:
        return f"{layer} has no {value} pass; its passes are {', '.join(have)}"
    return None


def _pass_filter_hint(value: str) -> str:
    having = [name for name, cls in LAYERS.items() if value in layer_directions(cls)]
    return (f"leave those points out with where = \"direction != '{value}' or layer in "
            f"[{', '.join(repr(n) for n in having)}]\"")


class _Parser:
    def __init__(self, data: dict[str, Any], path: Path, quick: bool):
        self.d = data
        self.path = path
        self.quick = quick
        self.pass_key = "axes"  # the axis that sweeps the pass, once ``axes`` has read it

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
            missing = sorted(required_fields(layer) - set(base) - swept)
            if missing:
                where_ = f"points[{i}]" if label is not None else "params"
                _fail(where_, f"{layer} needs {', '.join(missing)} (set them here or sweep them in [axes])")

        points: list[Point] = []
        skipped_invalid = skipped_filtered = 0
        axis_values = [values for _, values in axes]
        for (label, layer, base), combo in itertools.product(bases, itertools.product(*axis_values)):
            params = dict(base)
            point_axes: dict[str, Any] = {}
            settings: dict[str, Any] = {}
            for (name, _), (value, assigns) in zip(axes, combo, strict=True):
                point_axes[name] = value
                if name in SETTINGS_AXES:
                    settings[name] = value
                params.update(_expand(f"axes.{name}", layer, assigns))
            try:
                spec, why = spec_from_dict(layer, params), None
            except ValueError as exc:
                spec, why = None, str(exc)
            # The bases' own passes were checked as they were read: this one comes from the axis.
            lacking = pass_error(layer, params["direction"]) if "direction" in params else None
            if why is not None and invalid_policy == "skip" and lacking is None:
                skipped_invalid += len(dtypes[layer]) * len(layouts[layer])
                continue
            for dtype, layout in itertools.product(dtypes[layer], layouts[layer]):
                point = Point(len(points), layer, label, params, point_axes, dtype, layout,
                              list(impls[layer]), spec, why, settings=dict(settings))
                # A filter naming `impl` drops single implementations (no Triton fp32 here, say).
                point.implementations = [n for n in point.implementations
                                         if all(w(point.values(n)) for w in where)]
                if not point.implementations:
                    skipped_filtered += 1
                    continue
                if lacking is not None:
                    _fail(self.pass_key, f"{lacking} ({label or layer}); "
                                         f"{_pass_filter_hint(params['direction'])}")
                points.append(point)
        sweep = Sweep(self.path, title, experiment, list(thesis), d.get("description", ""), layers,
                      [n for n, _ in axes], measure, points, skipped_invalid, skipped_filtered, text,
                      energy_where, invalid_policy, names | {"impl"})
        for point in points:
            point.energy_impls = [n for n in point.implementations if sweep._wants_energy(point, n)]
        if measure.energy and energy_where and points and not any(p.energy_impls for p in points):
            rows = sum(len(p.implementations) for p in points)
            _fail("energy.where", f"admits none of the sweep's {rows} row{'s' * (rows != 1)}, so no energy "
                                  "would be measured (set energy.enabled = false to time only)")
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
                _fail(f"{key}.{k}", _no_parameter(layer, k, fields))
            if not _scalar_ok(v):
                _fail(f"{key}.{k}", f"must be a number, string or boolean, got {_type_name(v)}")
            _check_param_type(f"{key}.{k}", layer, k, v)
            if _sets_direction(layer, k) and (why := pass_error(layer, v)):
                _fail(f"{key}.{k}", why)

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
                for k, v in inherited.items():
                    _check_param_type(f"params.{k}", layer, k, v)
                    if _sets_direction(layer, k) and (why := pass_error(layer, v)):
                        _fail(f"params.{k}", f"{why} (points[{i}], {p['name']!r}, inherits it)")
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
            if name == GPUS_AXIS:
                _check_type(key, spec, (list,), "a list of GPU counts such as [1, 2, 4, 8]")
                if not spec or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in spec):
                    _fail(key, f"must be a non-empty list of GPU counts >= 1, got {spec!r}")
                if any("batch" not in self.fields(layer) for layer in layers):
                    _fail(key, "splits the batch over the GPUs: every layer of the sweep needs a batch")
                out.append((name, [(v, {}) for v in spec]))
                continue
            if name in SETTINGS_AXES:
                out.append((name, _settings_axis(key, spec)))
                continue
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
                        _fail(pkey, _no_parameter(layer, param, self.fields(layer)))
                _check_type(pkey, values, (list,), "a non-empty list of values")
                if not values:
                    _fail(pkey, "must hold at least one value")
                for i, v in enumerate(values):
                    if not _scalar_ok(v):
                        _fail(pkey, f"values must be numbers, strings or booleans, got {_type_name(v)}")
                    for layer in layers:
                        _check_param_type(f"{pkey}[{i}]", layer, param, v)
                        if _sets_direction(layer, param):
                            self.pass_key = pkey
                            if isinstance(v, str) and v not in DIRECTIONS:
                                _fail(f"{pkey}[{i}]", str(pass_error(layer, v)))
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
            names |= {f.name for f in dataclasses.fields(LAYERS[layer])} | filter_shorthands(layer)
        return names

    def measure(self) -> Measure:
        _check_type("energy", self.d.get("energy", {}), (dict,), "a table")
        energy_table = dict(self.d.get("energy", {}))
        switches = {k: energy_table.pop(k) for k in ENERGY_SWITCHES if k in energy_table}
        for k, v in switches.items():
            _check_type(f"energy.{k}", v, *ENERGY_SWITCHES[k])
        timing = self.options("timing", self.d.get("timing", {}), TimingConfig)
        energy = self.options("energy", energy_table, EnergyConfig)
        enabled = switches.get("enabled", True)
        where = tuple(self.str_list("energy.where", switches.get("where", [])))
        if self.quick:
            timing = timing | QUICK_TIMING
            energy = energy | QUICK_ENERGY
        # Cross-field rules (max_window_s >= window_s) live in the config classes themselves.
        built = {}
        for key, cls, options in (("timing", TimingConfig, timing), ("energy", EnergyConfig, energy)):
            try:
                built[key] = cls(**options)
            except ValueError as exc:
                raise _KeyError(str(exc)) from None
        t = built["timing"]
        if t.fixed_samples is None and t.max_time_s < t.min_time_s:
            # Allowed in code (tests time out on purpose); in a file it is a mistake.
            _fail("timing.max_time_s", f"must be >= min_time_s ({t.min_time_s}): a wall-time cap below the "
                                       f"kernel-time minimum stops every point at the cap; got {t.max_time_s}")
        return Measure(dict(sorted(timing.items())), enabled, dict(sorted(energy.items())), where)

    def options(self, key: str, table: Any, cls: type) -> dict[str, Any]:
        """A ``[timing]`` or ``[energy]`` table checked against its config class's schema."""
        _check_type(key, table, (dict,), "a table")
        schema: dict[str, Bound] = option_schema(cls)
        for k, v in table.items():
            if k not in schema:
                allowed = [*schema, *(ENERGY_SWITCHES if key == "energy" else ())]
                _fail(f"{key}.{k}", f"unknown option; allowed: {', '.join(allowed)}")
            try:
                check_value(f"{key}.{k}", v, schema[k], in_file=True)
            except ValueError as exc:
                raise _KeyError(str(exc)) from None
        return dict(table)


def _settings_axis(key: str, spec: Any) -> list[tuple[Any, dict[str, Any]]]:
    """A GPU-settings axis: a non-empty list of positive numbers (whole MHz for the clocks)."""
    if not isinstance(spec, list) or not spec:
        _fail(key, "a GPU-settings axis must be a non-empty list of values")
    whole = not key.endswith("power_limit_w")
    for i, v in enumerate(spec):
        ok = isinstance(v, int) if whole else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok or v <= 0:
            _fail(f"{key}[{i}]", f"must be a positive {'whole number of MHz' if whole else 'number of watts'}, "
                                 f"got {v!r}")
    if len(set(spec)) != len(spec):
        _fail(key, "values must not repeat")
    return [(v, {}) for v in spec]


def _expand(key: str, layer: str, params: dict[str, Any]) -> dict[str, Any]:
    """Replace shorthands (``size``, ``kernel``) by the spec fields they stand for."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        for f in SHORTHANDS[layer].get(k, (k,)):
            if f in out:
                _fail(f"{key}.{k}", f"sets {f!r}, which another key of the same table sets too")
            out[f] = v
    return out


def iter_sweep_files(root: Path) -> Iterator[Path]:
    yield from sorted(root.rglob("*.toml"))
