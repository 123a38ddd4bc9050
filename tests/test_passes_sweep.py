"""The pass axis end to end: sweep files (``pass``/``direction``, the errors of a pass a layer lacks),
plan, run, records and their hashes, compare and report, on the CPU with tiny shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from sweep_texts import CONV_SWEEP

from layerbench import registry, sweep
from layerbench.analysis import compare
from layerbench.analysis.pareto import point_key_columns, point_label
from layerbench.analysis.report import group_columns, x_column
from layerbench.cli import main, plan_rows
from layerbench.results import identity
from layerbench.results import rundir as results
from layerbench.results.records import Record

CUSTOM = "passes_custom"  # a custom ReLU with its forward and backward passes (so also its training pass)


def _relu_forward(spec: Any, dtype: Any, layout: str, tensors: dict[str, torch.Tensor], out: torch.Tensor) -> Any:
    x = tensors["x"]
    return lambda: torch.clamp_min(x, 0, out=out)


def _relu_backward(spec: Any, dtype: Any, layout: str, tensors: dict[str, torch.Tensor], out: torch.Tensor) -> Any:
    x, dy = tensors["x"], tensors["dy"]
    return lambda: out.copy_(torch.where(x > 0, dy, torch.zeros_like(dy)))


@pytest.fixture
def custom_relu() -> None:
    registry.register("relu", CUSTOM, backend="user", devices=("cpu",))(_relu_forward)
    registry.register("relu", CUSTOM, backend="user", devices=("cpu",), direction="backward_data")(_relu_backward)


POINTS = """
[params]
batch = 2

[[points]]
name = "c"
layer = "conv2d"
in_channels = 2
out_channels = 3
size = 5
kernel = 3
padding = 1

[[points]]
name = "r"
layer = "relu"
channels = 3
size = 4

[[points]]
name = "p"
layer = "pool2d"
channels = 3
size = 4
kernel = 2
stride = 2

[[points]]
name = "fc"
layer = "linear"
in_features = 6
out_features = 4
"""

MEASURE = """
[timing]
fixed_samples = 2
warmup = 1

[energy]
enabled = false
"""

SWEEP = f"""
title = "passes"
experiment = "passes"
where = "direction != 'backward_weight' or layer in ['conv2d', 'linear']"

[implementations]
conv2d = ["torch"]
relu = ["{CUSTOM}", "torch"]
pool2d = ["torch"]
linear = ["torch"]

[axes]
pass = ["forward", "backward_data", "backward_weight", "training"]
{POINTS}{MEASURE}"""

PASSES = {"c": {"forward", "backward_data", "backward_weight", "training"},
          "fc": {"forward", "backward_data", "backward_weight", "training"},
          "r": {"forward", "backward_data", "training"}, "p": {"forward", "backward_data", "training"}}


def test_pass_axis_end_to_end_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture,
                                              custom_relu: None) -> None:
    path = tmp_path / "passes.toml"
    path.write_text(SWEEP)
    assert main(["plan", str(path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    # 14 points (c, fc: 4 passes; r, p: 3) and 17 rows (r has two implementations); r's and p's
    # backward_weight are filtered out by the sweep's `where`
    assert "14 points, 17 result rows; 2 filtered out by 'where'" in out

    run = tmp_path / "run"
    assert main(["run", str(path), "--device", "cpu", "--out", str(run), "--no-progress"]) == 0
    assert "17 records (ok 17)" in capsys.readouterr().out
    df = results.load_results(run)
    assert set(df["status"]) == {"ok"} and (df["check_rel_norm"] < 1e-5).all()
    # the pass is a column of every record (the spec's field), and the axis' column beside it
    assert (df["direction"] == df["axis_pass"]).all()
    assert {n: set(g["direction"]) for n, g in df.groupby("name")} == PASSES
    # FLOPs and bytes of a training row are those of its single passes together
    for name in ("c", "fc", "r"):
        rows = df[(df["name"] == name) & (df["impl"] == "torch")].set_index("direction")
        singles = [p for p in PASSES[name] if p != "training"]
        assert rows.loc["training", "flops"] == sum(rows.loc[p, "flops"] for p in singles)
        assert rows.loc["training", "min_bytes"] == sum(rows.loc[p, "min_bytes"] for p in singles)
    # each pass is a point of its own, and a forward point hashes as it did before passes existed
    torch_rows = df[df["impl"] == "torch"]
    assert torch_rows["point_hash"].is_unique and torch_rows["config_hash"].is_unique
    plain = sweep.parse_sweep(SWEEP.replace('pass = ["forward", "backward_data", "backward_weight", "training"]', ""),
                              "plain.toml")
    forward_hashes = {identity.config_hash(p, n, plain.measure, "cpu") for p in plain.points for n in p.implementations}
    assert set(df.loc[df["direction"] == "forward", "config_hash"]) == forward_hashes

    # compare: the custom ReLU against torch at each of its passes, one row per pass
    csv = tmp_path / "cmp.csv"
    assert main(["compare", str(run), "--csv", str(csv)]) == 0
    text = capsys.readouterr().out
    assert "| name | pass | layer | dtype | layout | impl | vs |" in text
    table = pd.read_csv(csv)
    assert sorted(table["axis_pass"]) == ["backward_data", "forward", "training"]
    assert set(table["impl"]) == {CUSTOM} and set(table["baseline"]) == {"torch"}

    # report: a table per pass, the layers as rows with their sum (thesis Table 5-1's layout)
    assert main(["report", str(run)]) == 0
    report = Path(capsys.readouterr().out.strip()).read_text()
    for d in ("forward", "backward_data", "backward_weight", "training"):
        assert f"## {d} fp32 NCHW" in report
    training = report.split("## training fp32 NCHW")[1].split("##")[0]
    assert "| name | passes_custom time" in training and "| sum |" in training
    assert all(f"| {n} |" in training for n in ("c", "r", "p", "fc"))


@pytest.mark.parametrize(("text", "message"), [
    ('layer = "pool2d"\n[params]\nbatch = 1\nchannels = 1\nsize = 4\nkernel = 2\nstride = 2\npass = "backward_weight"\n',
     "params.pass: pool2d has no backward_weight pass; its passes are forward, backward_data, training"),
    ('layer = "relu"\n[params]\nbatch = 1\nchannels = 1\n[axes]\ndirection = ["forward", "backwards"]\n',
     r"axes.direction\[1\]: must be one of forward, backward_data, backward_weight, training, got 'backwards'"),
    ('[params]\nbatch = 1\n[[points]]\nname = "r"\nlayer = "relu"\nchannels = 1\npass = "backward_weight"\n',
     r"points\[0\].pass: relu has no backward_weight pass"),
    ('[params]\nbatch = 1\npass = "backward_weight"\n[[points]]\nname = "fc"\nlayer = "linear"\nin_features = 1\n'
     'out_features = 1\n[[points]]\nname = "r"\nlayer = "relu"\nchannels = 1\n',
     r"params.pass: relu has no backward_weight pass; .* \(points\[1\], 'r', inherits it\)"),
    ('[params]\nbatch = 1\n[[points]]\nname = "fc"\nlayer = "linear"\nin_features = 1\nout_features = 1\n'
     '[[points]]\nname = "r"\nlayer = "relu"\nchannels = 1\n[axes]\npass = ["forward", "backward_weight"]\n',
     r"axes.pass: relu has no backward_weight pass; .* \(r\); leave those points out with "
     r"where = \"direction != 'backward_weight' or layer in \['conv2d', 'linear'\]\""),
])
def test_a_pass_the_layer_lacks_is_a_file_error(text: str, message: str) -> None:
    with pytest.raises(sweep.SweepError, match=message):
        sweep.parse_sweep('implementations = ["torch"]\n' + text, "s.toml")


def test_a_pass_the_layer_lacks_exits_2_at_plan(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('layer = "pool2d"\nimplementations = ["torch"]\n[params]\nbatch = 1\nchannels = 1\nsize = 4\n'
                   'kernel = 2\nstride = 2\npass = "backward_weight"\n')
    assert main(["plan", str(bad), "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip() == (f"layerbench: error: {bad}: params.pass: pool2d has no "
                                               "backward_weight pass; its passes are forward, backward_data, training")


def test_pass_and_direction_name_the_same_field() -> None:
    base = 'layer = "relu"\nimplementations = ["torch"]\n[params]\nbatch = 1\nchannels = 1\n'
    for key in ("pass", "direction"):
        s = sweep.parse_sweep(base + f'{key} = "backward_data"\n', "s.toml")
        assert [p.spec.direction for p in s.points] == ["backward_data"]
    with pytest.raises(sweep.SweepError, match="params.direction: sets 'direction', which another key"):
        sweep.parse_sweep(base + 'pass = "forward"\ndirection = "forward"\n', "s.toml")


def test_filters_see_the_forward_pass_where_the_file_sets_none() -> None:
    s = sweep.parse_sweep('layer = "relu"\nimplementations = ["torch"]\nwhere = "direction == \'forward\'"\n'
                          '[params]\nbatch = 1\nchannels = 1\n[axes]\nsize = [1, 2]\n', "s.toml")
    assert len(s.points) == 2 and s.skipped_filtered == 0


def test_filters_see_the_specs_fields_where_the_file_writes_a_shorthand_or_nothing() -> None:
    # kernel and stride written as one number each; groups left at its default of 1.
    text = ('layer = "conv2d"\nimplementations = ["torch"]\nwhere = "groups == 1 and kernel_h == 1 and stride_w == 2"\n'
            '[params]\nbatch = 1\nin_channels = 2\nout_channels = 2\nsize = 8\n[axes]\nkernel = [1, 3]\n'
            'stride = [1, 2]\n')
    s = sweep.parse_sweep(text, "s.toml")
    assert [(p.spec.kernel_h, p.spec.stride_w) for p in s.points] == [(1, 2)] and s.skipped_filtered == 3


def test_plan_rows_by_pass(capsys: pytest.CaptureFixture,
                                                               custom_relu: None) -> None:
    s = sweep.parse_sweep('layer = "linear"\nimplementations = ["torch", "passes_custom"]\n'
                          '[params]\nbatch = 1\nin_features = 2\nout_features = 2\npass = "training"\n', "s.toml")
    rows = plan_rows(s, "cpu")
    assert [why for _, impl, why in rows if impl == "torch"] == [None]
    with pytest.raises(ValueError, match="implementation 'passes_custom' has no linear kernel"):
        registry.check_name("linear", CUSTOM)
    s = sweep.parse_sweep(f'layer = "relu"\nimplementations = ["{CUSTOM}"]\n[params]\nbatch = 1\nchannels = 1\n'
                          '[axes]\npass = ["training"]\n', "s.toml")
    assert plan_rows(s, "cpu")[0][2] is None  # forward + backward_data: its training pass is composed
    assert registry.get("relu", CUSTOM).directions == ("forward", "backward_data", "training")


def test_thesis_training_sweep_plans_on_the_cpu(capsys: pytest.CaptureFixture) -> None:
    s = sweep.load_sweep(Path(__file__).resolve().parent.parent / "sweeps" / "thesis" / "alexnet_training.toml")
    layers = sweep.load_sweep(Path(__file__).resolve().parent.parent / "sweeps" / "thesis" / "alexnet_layers.toml")
    assert {p.label for p in s.points} == {p.label for p in layers.points}
    assert {p.spec.batch for p in s.points} == {128}
    by_layer: dict[str, set[str]] = {}
    for p in s.points:
        by_layer.setdefault(p.layer, set()).add(p.spec.direction)
    assert by_layer["conv2d"] == by_layer["linear"] == {"forward", "backward_data", "backward_weight", "training"}
    assert by_layer["relu"] == by_layer["pool2d"] == {"forward", "backward_data", "training"}
    rows = plan_rows(s, "cpu")
    # torch runs every pass here; a CUDA-only implementation is refused with its reason
    assert all(why is None for _, impl, why in rows if impl == "torch")
    assert all("runs on cuda only" in str(why) for _, impl, why in rows if impl in ("cupy", "cudnn", "cublas")
               and why is not None and "pass" not in str(why))
    assert main(["plan", "thesis/alexnet_training.toml", "--device", "cpu"]) == 0
    assert "137 points, 548 result rows" in capsys.readouterr().out


def test_list_layers_names_each_layers_passes(capsys: pytest.CaptureFixture) -> None:
    assert main(["list", "layers"]) == 0
    out = capsys.readouterr().out
    assert "passes forward, backward_data, backward_weight, training; shorthands size" in out  # conv2d
    assert "layouts NCHW, NHWC; passes forward, backward_data, training; shorthands" in out  # pool2d


# ----------------------------------------------------------------------------- records, identity


def test_forward_hashes_stay_and_other_passes_hash_apart() -> None:
    """The pinned hashes of tests/test_results.py: ``pass = "forward"`` written out changes nothing."""
    hashes = {}
    for extra in ("", 'pass = "forward"\n', 'pass = "backward_data"\n', 'pass = "training"\n'):
        s = sweep.parse_sweep(CONV_SWEEP + extra, "c.toml")
        p = s.points[0]
        rec = Record.for_point(p, "torch", s.measure, "cuda", s.experiment, 0)
        assert rec.params["direction"] == (extra.split('"')[1] if extra else "forward")
        hashes[extra] = (rec.config_hash, rec.point_hash)
    assert hashes[""] == hashes['pass = "forward"\n'] == ("109bb393223a2d7a", "3474c62e5cda4cc0")
    assert len(set(hashes.values())) == 3


def test_invalid_points_keep_their_hash_and_have_a_direction() -> None:
    s = sweep.parse_sweep(CONV_SWEEP.replace("size = 9", "size = 2").replace("padding = 1", ""), "c.toml")
    p = s.points[0]
    assert p.invalid is not None
    rec = Record.for_point(p, "torch", s.measure, "cuda", s.experiment, 0)
    assert rec.params["direction"] == "forward"
    assert identity.identity_params(p) == dict(sorted(p.params.items()))  # as before passes existed


# -------------------------------------------------------------------------------- compare, report


def _row(point: str, impl: str, direction: str | None, t: float, name: str = "c") -> dict:
    return {"point_hash": point + str(direction), "config_hash": point + str(direction) + impl, "name": name,
            "layer": "conv2d", "dtype": "fp32", "layout": "NCHW", "impl": impl, "reference": impl == "torch",
            "status": "ok", "time_median_s": t, "time_iqr_s": 0.0, "energy_j_per_launch": None,
            "energy_requested": False, "direction": direction, "point_index": 0}


def test_compare_shows_a_pass_set_per_point_or_file() -> None:
    df = pd.DataFrame([_row("p", "torch", "backward_data", 2.0), _row("p", "mine", "backward_data", 1.0),
                       _row("p", "torch", "forward", 1.0), _row("p", "mine", "forward", 4.0)])
    table = compare.compare_within(df)
    assert dict(zip(table["direction"], table["time_ratio"])) == {"backward_data": 0.5, "forward": 4.0}
    text = compare.format_comparison(table, "t")
    assert "| name | pass | layer |" in text and "| c | backward_data | conv2d |" in text
    # a forward-only run, or a run that records no pass at all, reads as before
    forward = df[df["direction"] == "forward"]
    assert "direction" not in compare.point_columns(forward)
    assert "direction" not in compare.point_columns(forward.drop(columns="direction"))
    # where an axis sweeps the pass, its column says it once
    assert compare.point_columns(df.assign(axis_pass=df["direction"])) == [
        "name", "axis_pass", "layer", "dtype", "layout"]


def test_report_makes_a_table_per_pass_with_the_layers_as_rows() -> None:
    df = pd.DataFrame([_row("p", "torch", d, 1.0, name=n) for d in ("training", "forward") for n in ("c", "r")])
    assert x_column(df, []) == "name" and group_columns(df, "name") == ["direction", "dtype", "layout"]
    swept = df.assign(axis_pass=df["direction"], axis_kernel=3)
    assert x_column(swept, ["pass", "kernel"]) == "axis_kernel"  # the pass groups, another axis is plotted
    assert x_column(swept.drop(columns="name"), ["pass"]) == "axis_pass"  # nothing else to plot
    assert group_columns(swept, "name") == ["axis_pass", "axis_kernel", "dtype", "layout"]


def test_pareto_keeps_passes_apart_and_names_a_fixed_one() -> None:
    df = pd.DataFrame([_row("p", "torch", d, 1.0) for d in ("backward_data", "forward")])
    assert "direction" in point_key_columns(df)
    labels = [point_label(r, point_key_columns(df)) for _, r in df.iterrows()]
    assert labels == ["c (conv2d) pass=backward_data", "c (conv2d)"]
    swept = df.assign(axis_pass=df["direction"])
    assert point_label(swept.iloc[0], point_key_columns(swept)) == "c (conv2d) pass=backward_data"
