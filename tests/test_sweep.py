"""Sweep files: expansion into points, validation errors, and every shipped sweep file."""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from layerbench import sweep
from layerbench.layers import Conv2d
from layerbench.options import EnergyConfig, TimingConfig, option_schema
from layerbench.results import identity
from layerbench.sweep import SweepError
from layerbench.sweep.parse import ENERGY_SWITCHES, TOP_KEYS

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = sorted((ROOT / "sweeps").rglob("*.toml"))


def toml(data: dict[str, Any]) -> str:
    """A small TOML writer for test data: scalars, lists, tables, arrays of tables."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + "}"
        raise TypeError(type(v))

    lines, tables = [], []
    for k, v in data.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            tables.extend((f"[{k}]", x) for x in v)
        else:
            lines.append(f"{json.dumps(k)} = {value(v)}")
    for k, v in tables:
        lines.append(f"[{k}]")
        lines.extend(f"{json.dumps(kk)} = {value(vv)}" for kk, vv in v.items())
    return "\n".join(lines) + "\n"


BASE: dict[str, Any] = {
    "title": "t",
    "layer": "conv2d",
    "implementations": ["torch", "triton"],
    "dtypes": ["fp32", "bf16"],
    "layouts": ["NCHW", "NHWC"],
    "params": {"batch": 2, "size": 8, "stride": 1},
    "axes": {"kernel": [3, 5], "channels": {"in_channels": [3, 4], "out_channels": [8, 4]}},
    "timing": {"mode": "cold", "fixed_samples": 3},
    "energy": {"windows": 2, "window_s": 1.0},
}


def parse(data: dict[str, Any], name: str = "bad.toml") -> sweep.Sweep:
    return sweep.parse_sweep(toml(data), name)


def test_cartesian_product_zip_and_shorthands() -> None:
    s = parse(BASE)
    assert len(s.points) == 2 * 2 * 2 * 2  # kernel x channel pairs x dtypes x layouts
    assert s.axis_names == ["kernel", "channels"]
    p = s.points[0]
    assert p.spec == Conv2d(batch=2, in_channels=3, out_channels=8, height=8, width=8, kernel_h=3,
                            kernel_w=3, stride=1)
    assert p.axes == {"kernel": 3, "channels": {"in_channels": 3, "out_channels": 8}}
    assert sweep.axis_label(p.axes["channels"]) == "3->8"
    assert {(q.spec.in_channels, q.spec.out_channels) for q in s.points} == {(3, 8), (4, 4)}
    assert p.energy_impls == ["torch", "triton"]


def test_filters_name_the_square_shorthands() -> None:
    # `kernel` and `size` as the file writes them; a 1x7 window has no `kernel`, so no filter on it
    # admits the point.
    square = parse(BASE | {"where": "kernel == 5 and size == 8"})
    assert {p.spec.kernel_h for p in square.points} == {5}
    wide = parse(BASE | {"params": {"batch": 2, "size": 8, "kernel_h": 1, "in_channels": 3, "out_channels": 4},
                         "axes": {"kernel_w": [1, 7]}})
    wide.restrict_where("kernel == 1")
    assert {(p.spec.kernel_h, p.spec.kernel_w) for p in wide.points} == {(1, 1)}
    with pytest.raises(SweepError, match="unknown name 'kernal'"):
        parse(BASE).restrict_where("kernal == 3")


def test_hashes_are_stable_and_cover_measurement_not_order() -> None:
    a, b = parse(BASE), parse(dict(reversed(list(BASE.items()))))
    h = [identity.config_hash(p, "torch", a.measure, "cuda") for p in a.points]
    assert h == [identity.config_hash(p, "torch", b.measure, "cuda") for p in b.points]
    assert len(set(h)) == len(h)
    hot = parse(BASE | {"timing": {"mode": "hot", "fixed_samples": 3}})
    assert identity.config_hash(hot.points[0], "torch", hot.measure, "cuda") != h[0]
    assert identity.config_hash(a.points[0], "torch", a.measure, "cpu") != h[0]
    assert identity.config_hash(a.points[0], "triton", a.measure, "cuda") != h[0]
    quick = sweep.parse_sweep(toml(BASE), "x.toml", quick=True)
    assert identity.config_hash(quick.points[0], "torch", quick.measure, "cuda") != h[0]
    assert re.fullmatch(r"[0-9a-f]{16}", h[0])


def test_invalid_points_recorded_or_skipped() -> None:
    data = BASE | {"axes": {"kernel": [3, 9], "channels": BASE["axes"]["channels"]}}  # 9 > size 8
    s = parse(data)
    bad = [p for p in s.points if p.invalid]
    assert len(bad) == 8 and all("Conv2d.kernel_h must be in 1..8, got 9" in p.invalid for p in bad)
    skipped = parse(data | {"invalid": "skip"})
    assert len(skipped.points) == 8 and skipped.skipped_invalid == 8
    assert not any(p.invalid for p in skipped.points)


def test_where_filters_and_energy_subset() -> None:
    s = parse(BASE | {"where": ["out_channels >= in_channels", "not (dtype == 'bf16' and layout == 'NHWC')"],
                      "energy": {"where": "dtype == 'fp32' and impl != 'torch'"}})
    assert all(p.params["out_channels"] >= p.params["in_channels"] for p in s.points)
    assert not any(p.dtype == "bf16" and p.layout == "NHWC" for p in s.points)
    assert s.skipped_filtered == 16 - len(s.points)
    assert {tuple(p.energy_impls) for p in s.points if p.dtype == "fp32"} == {("triton",)}
    assert all(p.energy_impls == [] for p in s.points if p.dtype == "bf16")


def test_where_naming_impl_drops_single_implementations() -> None:
    s = parse(BASE | {"where": "not (impl == 'triton' and dtype == 'fp32')"})
    assert len(s.points) == 16 and s.skipped_filtered == 0
    assert {p.dtype: p.implementations for p in s.points} == {"fp32": ["torch"], "bf16": ["torch", "triton"]}
    # A point left with no implementation is filtered out as a whole.
    gone = parse(BASE | {"where": "impl == 'triton' and dtype == 'bf16'"})
    assert {p.dtype for p in gone.points} == {"bf16"} and gone.skipped_filtered == 8


def test_points_list_with_mixed_layers_and_axes() -> None:
    data = {"experiment": "alex", "params": {"batch": 8},
            "points": [{"name": "conv1", "layer": "conv2d", "in_channels": 3, "out_channels": 4, "size": 9,
                        "kernel": 3},
                       {"name": "pool1", "layer": "pool2d", "channels": 4, "size": 7, "kernel": 3, "stride": 2},
                       {"name": "fc", "layer": "linear", "in_features": 16, "out_features": 4}],
            "implementations": {"conv2d": ["torch"], "pool2d": ["torch", "triton"], "linear": ["torch"]},
            "dtypes": {"conv2d": ["fp32", "bf16"]},
            "layouts": {"pool2d": ["NCHW", "NHWC"]}}
    s = parse(data)
    assert [(p.label, p.dtype, p.layout) for p in s.points] == [
        ("conv1", "fp32", "NCHW"), ("conv1", "bf16", "NCHW"), ("pool1", "fp32", "NCHW"),
        ("pool1", "fp32", "NHWC"), ("fc", "fp32", "NCHW")]
    assert all(p.spec.batch == 8 for p in s.points)
    assert s.points[2].implementations == ["torch", "triton"]
    with_axis = parse(data | {"params": {}, "axes": {"batch": [1, 2]}})
    assert len(with_axis.points) == 10
    # A parameter a layer lacks makes its comparisons false, not the whole filter an error.
    filtered = parse(data | {"where": "kernel_h * 1 == 3 or layer == 'pool2d'"})
    assert [p.label for p in filtered.points] == ["conv1", "conv1", "pool1", "pool1"]


def test_impl_options() -> None:
    s = parse(BASE)
    s.add_implementations(["mypkg.mod:build", "conv2d=other"])
    assert s.points[0].implementations == ["torch", "triton", "mypkg.mod:build", "other"]
    s.restrict_implementations(["triton"])
    assert s.points[0].implementations == ["triton"] and s.points[0].energy_impls == ["triton"]
    with pytest.raises(SweepError, match="layer must be one of"):
        s.add_implementations(["nolayer=x"])
    s.disable_energy()
    assert not s.measure.energy and s.points[0].energy_impls == []


BAD_CASES = [
    ({"colour": "red"}, "colour", "unknown key"),
    ({"layer": "conv3d"}, "layer", "must be one of conv2d, pool2d, relu, linear"),
    ({"params": {"batch": 2, "size": 8, "stride": 1, "output_padding": 2}}, "params.output_padding", "no parameter"),
    ({"params": {"batch": [2], "size": 8}}, "params.batch", "must be a number"),
    ({"axes": {"dtype": ["bf16"]}}, "axes.dtype", "top-level dtypes = [...]"),
    ({"params": {"batch": 2, "size": 8, "stride": 1, "layout": "NHWC"}}, "params.layout", "top-level layouts"),
    ({"axes": {"kernel": 3}}, "axes.kernel", "must be a list"),
    ({"axes": {"kernel": []}}, "axes.kernel", "at least one value"),
    ({"axes": {"ch": {"in_channels": [1, 2], "out_channels": [3]}}}, "axes.ch", "equal lengths"),
    ({"axes": {"batch": [1, 2]}}, "params.batch", "also swept"),
    ({"axes": {"kernel": [3], "k": {"kernel_h": [3]}}}, "axes.k.kernel_h", "swept by two axes"),
    ({"dtypes": ["fp64"]}, "dtypes", "allowed: fp32, tf32, fp16, bf16"),
    ({"layouts": ["NHCW"]}, "layouts", "allowed: NCHW, NHWC"),
    ({"implementations": []}, "implementations", "at least one"),
    ({"implementations": "torch"}, "implementations", "a list of strings"),
    ({"implementations": {"pool2d": ["torch"]}}, "implementations.pool2d", "no 'pool2d' layer"),
    ({"timing": {"mode": "warm"}}, "timing.mode", '"cold" or "hot"'),
    ({"timing": {"fixed_samples": 0}}, "timing.fixed_samples", ">= 1"),
    ({"timing": {"samples": 3}}, "timing.samples", "unknown option"),
    ({"timing": {"min_time_s": "1"}}, "timing.min_time_s", "a number"),
    ({"timing": {"min_time_s": 3.0, "max_time_s": 1.0}}, "timing.max_time_s", "must be >= min_time_s (3.0)"),
    ({"energy": {"window_s": 0.5}}, "energy.window_s", ">= 1.0"),
    ({"energy": {"cooldown": "sometimes"}}, "energy.cooldown", '"auto", "none"'),
    ({"energy": {"enabled": 1}}, "energy.enabled", "true or false"),
    ({"where": "foo > 1"}, "where", "unknown name 'foo'"),
    ({"where": "__import__('os')"}, "where", "not allowed"),
    ({"where": "batch >"}, "where", "cannot parse"),
    ({"invalid": "ignore"}, "invalid", "record, skip"),
    ({"axes": {"kernel": [3]}}, "params", "conv2d needs in_channels, out_channels"),
    ({"thesis": [6]}, "thesis[0]", "a string"),
    ({"experiment": "a b"}, "experiment", "letters, digits"),
]


@pytest.mark.parametrize("change,key,text", BAD_CASES)
def test_errors_name_file_key_and_allowed(change: dict[str, Any], key: str, text: str) -> None:
    with pytest.raises(SweepError) as exc:
        parse(BASE | change, "sweeps/bad.toml")
    msg = str(exc.value)
    assert msg.startswith("sweeps/bad.toml: "), msg
    assert f": {key}: " in msg, msg
    assert text in msg, msg


def test_missing_layer_and_bad_toml() -> None:
    data = {k: v for k, v in BASE.items() if k != "layer"}
    with pytest.raises(SweepError, match="bad.toml: layer: is required"):
        parse(data)
    with pytest.raises(SweepError, match="not valid TOML"):
        sweep.parse_sweep("layer = ", "bad.toml")
    with pytest.raises(SweepError, match="cannot read"):
        sweep.load_sweep("/nonexistent/sweep.toml")


# ------------------------------------------------------------------------- hypothesis

SECTIONS = ["", "params", "timing", "energy"]
WRONG_VALUES = st.one_of(st.lists(st.integers(), max_size=2), st.dictionaries(st.just("x"), st.integers(), max_size=1),
                         st.text(st.characters(whitelist_categories=("L", "N", "P", "S")), max_size=3), st.booleans(),
                         st.floats(allow_nan=False, allow_infinity=False))


# Built from plain alphabets: st.from_regex made hypothesis warn about non-round-tripping characters.
KEYS = st.builds(str.__add__, st.sampled_from(string.ascii_lowercase),
                 st.text(string.ascii_lowercase + "_", max_size=10))


@given(section=st.sampled_from(SECTIONS), key=KEYS, value=st.integers())
def test_unknown_keys_are_rejected(section: str, key: str, value: int) -> None:
    data = json.loads(json.dumps(BASE))
    table = data if not section else data[section]
    known = (TOP_KEYS if not section else set(option_schema(TimingConfig)) if section == "timing"
             else set(option_schema(EnergyConfig)) | set(ENERGY_SWITCHES) if section == "energy"
             else {f for f in ("batch", "in_channels", "out_channels", "height", "width", "kernel_h",
                               "kernel_w", "stride", "padding", "bias", "size", "kernel")})
    if key in known:
        return
    table[key] = value
    with pytest.raises(SweepError) as exc:
        parse(data, "h.toml")
    expected = key if not section else f"{section}.{key}"
    assert f"h.toml: {expected}: " in str(exc.value)


@given(key=st.sampled_from(["title", "layer", "implementations", "dtypes", "layouts", "params", "axes",
                            "timing", "energy", "where", "invalid", "thesis"]), value=WRONG_VALUES)
def test_wrong_types_are_rejected_or_harmless(key: str, value: Any) -> None:
    data = json.loads(json.dumps(BASE)) | {key: value}
    try:
        s = parse(data, "h.toml")
    except SweepError as exc:
        assert str(exc).startswith("h.toml: ") and key in str(exc)
    else:
        # Accepted only when the value is of a type the key takes (a string title, "1" as a
        # filter, an empty thesis list or options table); never for the other keys.
        allowed = {"title": str, "where": (str, list), "thesis": (str, list), "timing": dict, "energy": dict,
                   "invalid": str, "dtypes": dict, "layouts": dict}  # an empty per-layer table: defaults
        assert key in allowed and isinstance(value, allowed[key]) and not isinstance(value, bool), (key, value)
        assert s.points


@given(batch=st.integers(-2, 3), size=st.integers(-1, 9), kernel=st.integers(-1, 12),
       stride=st.integers(-1, 3), padding=st.integers(-1, 3))
def test_bad_layer_params_become_invalid_points(batch: int, size: int, kernel: int, stride: int,
                                                padding: int) -> None:
    data = BASE | {"params": {"batch": batch, "size": size, "stride": stride, "padding": padding,
                              "in_channels": 2, "out_channels": 2},
                   "axes": {"kernel": [kernel]}}
    s = parse(data)
    for p in s.points:
        try:
            Conv2d(batch=batch, in_channels=2, out_channels=2, height=size, width=size, kernel_h=kernel,
                   kernel_w=kernel, stride=stride, padding=padding)
        except ValueError as exc:
            assert p.spec is None and p.invalid == str(exc)
        else:
            assert p.invalid is None and p.spec is not None
    assert not any(p.invalid for p in parse(data | {"invalid": "skip"}).points)


# --------------------------------------------------------------------- shipped sweep files


@pytest.mark.parametrize("path", SWEEPS, ids=[str(p.relative_to(ROOT)) for p in SWEEPS])
def test_shipped_sweeps_parse(path: Path) -> None:
    s = sweep.load_sweep(path)
    assert s.points and s.title
    assert not any(p.invalid for p in s.points), [p.invalid for p in s.points if p.invalid]
    if path.parent.name == "thesis":
        assert s.thesis, "thesis sweeps name their thesis tables"
        assert all("fp32" in {q.dtype for q in s.points if q.layer == p.layer} for p in s.points)


def test_thesis_set_covers_the_experiments() -> None:
    thesis = {p.stem: sweep.load_sweep(p) for p in SWEEPS if p.parent.name == "thesis"}
    alex = thesis["alexnet_layers"]
    names = {p.label for p in alex.points}
    assert names == {f"conv{i}" for i in range(1, 6)} | {f"relu{i}" for i in range(1, 6)} | \
        {"pool1", "pool2", "pool5", "fc6", "fc7", "fc8"}
    conv1 = next(p.spec for p in alex.points if p.label == "conv1")
    assert conv1.out_height == 55 and conv1.batch == 128
    pool5 = next(p.spec for p in alex.points if p.label == "pool5")
    fc6 = next(p.spec for p in alex.points if p.label == "fc6")
    assert pool5.channels * pool5.out_height * pool5.out_width == fc6.in_features == 9216
    assert sorted({p.spec.batch for p in thesis["batch_size"].points}) == [16, 32, 64, 96, 128]
    assert sorted({p.spec.height for p in thesis["conv_input_size"].points}) == [13, 16, 27, 56, 128, 224]
    assert sorted({p.spec.kernel_h for p in thesis["conv_kernel_size"].points}) == [3, 5, 7, 9, 11]
    assert {(p.spec.in_channels, p.spec.out_channels) for p in thesis["conv_kernel_number"].points} == {
        (3, 96), (64, 128), (128, 128), (128, 384), (384, 384)}
    # Table 6-11 lists 4,100,096 for Small (= 4096 x 1001); its own formula gives (4096 + 1) x 1000.
    assert {p.spec.thesis_parameters for p in thesis["fc"].points} == {37_752_832, 16_781_312, 4_097_000}
    assert {p.label for p in thesis["conv_common"].points} == {f"L{i}" for i in range(1, 7)}
    assert {p.spec.method for p in thesis["pool_method"].points} == {"max", "avg"}
    assert {p.spec.kernel for p in thesis["pool_kernel_size"].points} == {2, 3}
    assert sorted({p.spec.height for p in thesis["pool_input_size"].points}) == [13, 27, 55]


@pytest.mark.parametrize("value", ['"one"', "1.5", "true"])
@pytest.mark.parametrize("where", ["params", "points", "axes"])
def test_wrong_parameter_type_is_a_file_error(where: str, value: str) -> None:
    """A wrong type is a mistake in the file (exit 2); a wrong value of the right type is a point's."""
    if where == "params":
        text = f'layer = "relu"\nimplementations = ["torch"]\n[params]\nbatch = {value}\nchannels = 2\n'
        key = "params.batch"
    elif where == "points":
        text = (f'implementations = ["torch"]\n[[points]]\nname = "r"\nlayer = "relu"\nbatch = {value}\n'
                'channels = 2\n')
        key = r"points\[0\]\.batch"
    else:
        text = f'layer = "relu"\nimplementations = ["torch"]\n[params]\nchannels = 2\n[axes]\nbatch = [1, {value}]\n'
        key = r"axes.batch\[1\]"
    with pytest.raises(SweepError, match=rf"{key}: must be an integer, got "):
        sweep.parse_sweep(text, "t.toml")


def test_wrong_type_of_bool_and_string_parameters() -> None:
    base = 'layer = "pool2d"\nimplementations = ["torch"]\n[params]\nbatch = 1\nchannels = 1\nsize = 4\nkernel = 2\nstride = 2\n'
    with pytest.raises(SweepError, match=r"params.method: must be a string, got an integer 3"):
        sweep.parse_sweep(base + "method = 3\n", "t.toml")
    relu = 'layer = "relu"\nimplementations = ["torch"]\n[params]\nbatch = 1\nchannels = 1\n'
    with pytest.raises(SweepError, match=r"params.inplace: must be true or false, got an integer 1"):
        sweep.parse_sweep(relu + "inplace = 1\n", "t.toml")
    # A value of the right type out of range stays a per-point invalid record.
    s = sweep.parse_sweep(base.replace("batch = 1", "batch = 0"), "t.toml")
    assert s.points[0].invalid and "batch" in s.points[0].invalid
