"""The bench's table and target verdicts, on a tiny CPU run of the real pipeline."""

import json
import math
import os
import tomllib
from pathlib import Path

import pandas as pd
import pytest
import torch

from layerbench import cli, sweep
from layerbench.cli import build_parser, main, plan_rows
from layerbench.results import rundir as results
from layerbench.run.sweep_runner import RunOptions, run_sweep
from layerbench.suites import bench, ceilings

SWEEP = """
experiment = "bench_relu"
layer = "relu"
implementations = ["triton", "torch"]
dtypes = ["fp32"]
[params]
batch = 2
channels = 3
size = 8
[timing]
fixed_samples = 5
[energy]
enabled = false
"""


@pytest.mark.parametrize("layer", bench.LAYERS)
def test_bench_sweeps_parse(layer: str) -> None:
    s = sweep.load_sweep(bench.BENCH_DIR / f"{layer}.toml")
    assert s.points and s.experiment == f"bench_{layer}"


@pytest.mark.interpreter
def test_table_and_targets_from_a_cpu_run(tmp_path: Path) -> None:
    run_sweep(sweep.parse_sweep(SWEEP), RunOptions(device="cpu", out=tmp_path / "bench_relu", progress=False))
    # The copy curve: 1 GB/s at 1 kB moved, 4 GB/s at 1 MB (the ReLU here moves 3 kB).
    measured = {"copy_gbps": 2.0, "matmul_tflops": {"fp32": 1.0}, "device_name": "test",
                "copy_curve": {"1000": 1.0, "1000000": 4.0},
                "matmul_runs": {"fp32": {run: {"best": 1.0, "median": 0.9} for run in ("4096 cold", "8192 cold",
                                                                                       "8192 hot")}}}
    (tmp_path / bench.CEILINGS_FILE).write_text(json.dumps(measured))
    df, ceil = bench.load_bench(tmp_path)
    tab = bench.table(df, ceil)
    tri, ref = (tab[tab["impl"] == i].iloc[0] for i in ("triton", "torch"))
    assert math.isclose(tri["x_torch"], ref["time_median_s"] / tri["time_median_s"])
    assert math.isclose(tri["ceiling"], tri["gbps"] / 2.0)
    at_size = 1.0 + 3.0 * math.log(tri["min_bytes"] / 1000) / math.log(1000)  # linear in log(size)
    assert tri["min_bytes"] == 2 * 2 * 3 * 8 * 8 * 4 and math.isclose(tri["sized_copy"], tri["gbps"] / at_size)
    tg = bench.targets(tab).set_index("target")
    row = tg.loc["ReLU triton >= 95 % of copy bandwidth"]
    assert row["points"] == 1 and row["verdict"] == ("MET" if tri["ceiling"] >= 0.95 else "MISSED")
    assert math.isclose(row["copy_bound"], at_size / 2.0)  # the copy at this size against the ceiling
    assert tg.loc["ReLU cupy >= 95 % of copy bandwidth", "verdict"] == "n/a"
    assert math.isnan(tg.loc["linear triton bf16 >= 0.95x cuBLAS (AlexNet FC)", "copy_bound"])
    report = bench.format_bench_report(tab, ceil)
    assert "### Targets" in report and "Against a copy of the same size (geomean): relu triton" in report
    assert ("TFLOP/s: fp32 1 (the fastest sample of cuBLAS products 4096 cold, 8192 cold, 8192 hot; each in "
            "ceilings.json)." in report)


@pytest.mark.interpreter
def test_report_shows_each_rows_pass(tmp_path: Path) -> None:
    backward = SWEEP.replace('"bench_relu"', '"bench_relu_backward"').replace('["triton", "torch"]', '["torch"]')
    for text in (SWEEP, backward.replace("size = 8", 'size = 8\npass = "backward_data"')):
        s = sweep.parse_sweep(text)
        run_sweep(s, RunOptions(device="cpu", out=tmp_path / s.experiment, progress=False))
    measured = {"copy_gbps": 2.0, "matmul_tflops": {"fp32": 1.0}, "device_name": "test",
                "copy_curve": {"1000": 1.0, "1000000": 4.0}}
    (tmp_path / bench.CEILINGS_FILE).write_text(json.dumps(measured))
    df, ceil = bench.load_bench(tmp_path)
    tab = bench.table(df, ceil)
    back = tab[tab["experiment"] == "bench_relu_backward"].iloc[0]
    assert back["direction"] == "backward_data" and back["min_bytes"] == 3 * 2 * 3 * 8 * 8 * 4  # x, dy, dx
    report = bench.format_bench_report(tab, ceil)
    assert "TFLOP/s: fp32 1." in report  # ceilings measured before each product's rate was kept
    assert "| relu | relu_backward |  | backward_data | fp32 | NCHW | torch |" in report
    assert "| relu | relu |  | forward | fp32 | NCHW | triton |" in report


def test_copy_curve_interpolates_in_log_size_and_is_flat_beyond() -> None:
    curve = {"1000": 1.0, "1000000": 4.0}
    assert math.isclose(ceilings.copy_gbps_at(curve, 31622.8), 2.5, rel_tol=1e-5)  # halfway in log size
    assert ceilings.copy_gbps_at(curve, 10) == 1.0 and ceilings.copy_gbps_at(curve, 1e9) == 4.0
    assert math.isnan(ceilings.copy_gbps_at({}, 1e6))  # ceilings measured before the curve existed


@pytest.mark.gpu
def test_matrix_products_give_their_fastest_and_median_rates() -> None:
    runs = ceilings.matmul_rates(torch.device("cuda"), "bf16", ((1024, "cold"), (2048, "hot")))
    assert list(runs) == ["1024 cold", "2048 hot"]
    # TFLOP/s: a product that ran, at a rate a GPU has; its fastest sample at least its median
    assert all(5000.0 > r["best"] >= r["median"] > 1.0 for r in runs.values())


def test_ceilings_are_measured_in_a_child_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "parent")
    with pytest.raises(ValueError, match="ceilings are measured on a CUDA device, got cpu"):
        ceilings.measure_apart("cpu", visible="7")  # raised in the child, carried back
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "parent"


def test_unknown_layer_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--layers must be among relu, pool, conv, conv_sweeps, linear, relu_backward, "
                       "pool_backward, conv_backward, linear_backward, resnet50, vgg16, mobilenetv2, gemm, got softmax"):
        bench.run_bench(tmp_path, "cpu", ("softmax",))


def test_a_where_that_admits_no_row_is_named_before_the_ceilings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--where 'kernel_h == 2' admits no row of resnet50, vgg16"):
        bench.run_bench(tmp_path / "b", "cpu", ("resnet50", "vgg16"), where="kernel_h == 2")
    assert not (tmp_path / "b").exists()
    part = sweep.load_sweep(bench.BENCH_DIR / "resnet50.toml")
    part.restrict_where("dtype == 'bf16' and layout == 'NHWC' and kernel_h == 1 and stride_h == 2")
    assert [p.label for p in part.points] == ["conv3_proj 1x1 256->512/2", "conv4_proj 1x1 512->1024/2",
                                              "conv5_proj 1x1 1024->2048/2"]


def test_the_command_names_an_unknown_layer_before_it_looks_for_a_gpu(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--layers", "conv,softmax", "--out", str(tmp_path / "b")]) == 2
    assert "--layers must be among" in capsys.readouterr().err


def test_the_command_names_a_bad_where_before_it_looks_for_a_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the GPU check would name itself first
    assert main(["bench", "--layers", "relu", "--where", "dtyp == 'bf16'", "--out", str(tmp_path / "b")]) == 2
    assert "uses unknown name 'dtyp'" in capsys.readouterr().err
    assert main(["bench", "--layers", "relu", "--where", "dtype == 'bf17'", "--out", str(tmp_path / "b")]) == 2
    assert "--where \"dtype == 'bf17'\" admits no row of relu" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


@pytest.mark.interpreter
def test_an_interrupted_bench_prints_the_report_of_the_rows_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b"

    def interrupted(out: Path, *args: object, **kwargs: object) -> None:
        out.mkdir()
        (out / bench.CEILINGS_FILE).write_text(json.dumps({"copy_gbps": 2.0, "matmul_tflops": {"fp32": 1.0},
                                                            "device_name": "test"}))
        run_sweep(sweep.parse_sweep(SWEEP), RunOptions(device="cpu", out=out / "bench_relu", progress=False))
        raise KeyboardInterrupt

    monkeypatch.setattr("layerbench.cli._check_device", lambda *a, **k: None)
    monkeypatch.setattr(bench, "run_bench", interrupted)
    assert main(["bench", "--layers", "relu", "--out", str(out)]) == cli.EXIT_INTERRUPTED
    printed = capsys.readouterr()
    assert "### Targets" in printed.out and "| relu | relu |  | forward | fp32 | NCHW | triton |" in printed.out
    assert (out / "bench.md").read_text().strip() == printed.out.strip() and "interrupted" in printed.err

    def nothing_yet(out: Path, *args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run_bench", nothing_yet)
    assert main(["bench", "--layers", "relu", "--out", str(tmp_path / "c")]) == cli.EXIT_INTERRUPTED
    printed = capsys.readouterr()
    assert "### Targets" not in printed.out and "Traceback" not in printed.err


def test_a_bench_with_no_row_yet_is_named(tmp_path: Path) -> None:
    (tmp_path / "bench_relu").mkdir()
    (tmp_path / "bench_relu" / results.RESULTS_FILE).write_text("")  # started, stopped before a record
    (tmp_path / bench.CEILINGS_FILE).write_text("{}")
    with pytest.raises(ValueError, match="no row measured yet"):
        bench.load_bench(tmp_path)


def test_bench_command_runs_every_bench_sweep_by_default() -> None:
    args = build_parser().parse_args(["bench"])
    assert tuple(args.layers.split(",")) == bench.LAYERS


def test_conv_targets_judge_l1_l6_apart_from_the_sweeps() -> None:
    tab = pd.DataFrame({"layer": "conv2d", "impl": "triton", "dtype": "bf16",
                        "experiment": ["bench_conv", "bench_conv", "bench_conv_sweeps"],
                        "x_best": [1.0, 1.0, 0.5], "ceiling": 0.5, "sized_copy": math.nan})
    tg = bench.targets(tab).set_index("target")
    l16 = tg.loc["conv triton bf16 >= 0.95x cuDNN (L1-L6)"]
    swept = tg.loc["conv triton bf16 >= 0.95x cuDNN (input-size, kernel-size, channel sweeps)"]
    assert (l16["points"], l16["verdict"]) == (2, "MET")
    assert (swept["points"], swept["geomean"], swept["verdict"]) == (1, 0.5, "MISSED")


def _vendor_rows(ref: str, layer: str, times: dict[str, float], point: str = "p0") -> list[dict]:
    return [{"point_hash": point, "layer": layer, "impl": impl, "dtype": "bf16", "layout": "NHWC", "name": "L",
             "point_index": 0, "experiment": "bench_conv", "time_median_s": t,
             "detail_path": "graph" if impl == ref else None} for impl, t in times.items()]


def test_verdicts_judge_against_the_best_vendor_result_and_flag_a_slow_reference() -> None:
    # torch 10 % faster than cuDNN at p0: the custom kernel is judged against torch there.
    rows = _vendor_rows("cudnn", "conv2d", {"cudnn": 1.1e-3, "torch": 1.0e-3, "triton": 0.5e-3}, "p0") + \
        _vendor_rows("cudnn", "conv2d", {"cudnn": 1.0e-3, "torch": 1.02e-3, "triton": 2.0e-3}, "p1") + \
        _vendor_rows("cublas", "linear", {"cublas": 1.0e-3, "torch": 1.0e-3}, "p2")
    tab = pd.DataFrame(rows)
    vendor = tab[tab["impl"].isin(bench.VENDOR)].groupby("point_hash")["time_median_s"].min()
    tab["x_best"] = tab["point_hash"].map(vendor) / tab["time_median_s"]
    tri = tab[tab["impl"] == "triton"].set_index("point_hash")["x_best"]
    assert math.isclose(tri["p0"], 2.0) and math.isclose(tri["p1"], 0.5)
    vs = bench.references_vs_torch(tab).set_index("point_index", drop=False)
    assert len(vs) == 3
    flags = dict(zip(zip(vs["layer"], vs["ref_us"].round(1)), vs["flag"]))
    assert flags[("conv2d", 1100.0)] == "reference not at its best"  # torch 10 % faster
    assert flags[("conv2d", 1000.0)] == "" and flags[("linear", 1000.0)] == ""  # within 3 %, or faster
    assert set(vs["path"]) == {"graph"} and set(vs["pass"]) == {"forward"}  # rows recorded without a pass


def test_a_reference_that_ran_torchs_own_call_is_spread_not_a_slow_reference() -> None:
    rows = _vendor_rows("cublas", "linear", {"cublas": 1.05e-3, "torch": 1.0e-3}, "p0") + \
        _vendor_rows("cublas", "linear", {"cublas": 1.05e-3, "torch": 1.0e-3}, "p1")
    rows[0]["detail_path"] = "torch"  # p0's search kept F.linear; p1's kept another algorithm
    rows[2]["detail_path"] = "cublaslt"
    tab = pd.DataFrame(rows)
    flags = dict(zip(bench.references_vs_torch(tab)["path"], bench.references_vs_torch(tab)["flag"]))
    assert flags == {"torch": bench.SPREAD, "cublaslt": "reference not at its best"}
    text = "\n".join(bench._references_section(tab))
    assert "1 of 2 points: torch faster than the reference by more than 3 %" in text
    assert "On 1 more the reference ran the kernels torch runs and measured up to 5.0 % slower" in text


def test_a_reference_that_chose_torchs_kernel_is_spread_not_a_slow_reference() -> None:
    rows = _vendor_rows("cublas", "linear", {"cublas": 1.05e-3, "torch": 1.0e-3}, "p0") + \
        _vendor_rows("cublas", "linear", {"cublas": 1.05e-3, "torch": 1.0e-3}, "p1")
    for row, names in zip(rows, (["nvjet_a"], ["nvjet_a"], ["nvjet_b"], ["nvjet_a"])):
        row["detail_path"], row["kernel_names"] = "cublaslt", names
    vs = bench.references_vs_torch(pd.DataFrame(rows))
    assert list(vs["flag"]) == [bench.SPREAD, "reference not at its best"]  # p1 chose another kernel


def test_table_adds_x_best() -> None:
    df = pd.DataFrame(_vendor_rows("cudnn", "conv2d", {"cudnn": 2e-3, "torch": 1e-3, "triton": 4e-3})).assign(
        status="ok", reference=lambda d: d["impl"] != "triton", tflops=1.0, gbps=1.0, min_bytes=1,
        energy_requested=False, config_hash=lambda d: d["impl"])
    ceil = {"matmul_tflops": {"bf16": 10.0}, "copy_gbps": 1.0, "device_name": "test"}
    tab = bench.table(df, ceil)
    assert math.isclose(tab.set_index("impl").loc["triton", "x_best"], 0.25)
    report = bench.format_bench_report(tab, ceil)
    assert "### References against torch" in report and "reference not at its best" in report
    assert "1 of 1 points: torch faster than the reference by more than 3 %" in report


def test_network_sets_hold_their_layers() -> None:
    def specs(name: str) -> dict[str, object]:
        s = sweep.load_sweep(bench.BENCH_DIR / f"{name}.toml")
        assert not any(p.invalid for p in s.points)
        return {p.label: p.spec for p in s.points}

    resnet = specs("resnet50")
    assert len(resnet) == 23 and resnet["conv1"].output_shape == (64, 64, 112, 112)
    assert resnet["conv1"].kernel_h == 7 and resnet["conv1"].stride == 2 and resnet["conv1"].padding == 3
    # The strided 3x3 and the projection of stages 3-5 halve the plane; every 1x1 keeps padding 0.
    assert {s.out_height for n, s in resnet.items() if "/2" in n} == {28, 14, 7}
    assert all(s.padding == (s.kernel_h // 2) for s in resnet.values())
    assert {(s.in_channels, s.out_channels, s.height) for s in resnet.values()} >= {
        (64, 256, 56), (256, 512, 56), (512, 1024, 28), (1024, 2048, 14), (2048, 512, 7)}
    vgg = specs("vgg16")
    assert len(vgg) == 9 and all(s.kernel_h == 3 and s.padding == 1 and s.output_shape[2] == s.height
                                 for s in vgg.values())
    mobile = specs("mobilenetv2")
    dw = [s for n, s in mobile.items() if n.startswith("dw")]
    assert len(dw) == 10 and all(s.depthwise and s.groups == s.in_channels == s.out_channels for s in dw)
    assert {s.stride for s in dw} == {1, 2}
    assert all(s.kernel_h == 1 and s.groups == 1 for n, s in mobile.items() if not n.startswith("dw"))
    gemm = specs("gemm")
    assert {s.batch for n, s in gemm.items() if n.startswith("square")} == {2048, 4096, 6144, 8192}
    assert any(s.batch == 1 for s in gemm.values()) and len(set(gemm)) == len(gemm)


def test_plan_runs_every_implementation_on_the_mobilenet_points() -> None:
    s = sweep.load_sweep(bench.BENCH_DIR / "mobilenetv2.toml")
    why = {(p.label, impl): reason for p, impl, reason in plan_rows(s, "cuda") if p.dtype == "bf16"}
    for impl in (*bench.CUSTOM, "cudnn", "torch"):
        assert why[("expand 16->96 @112", impl)] is None and why[("dw96/2 @112", impl)] is None


def test_a_verdict_says_where_the_named_library_had_no_correct_result() -> None:
    """cuDNN failed at p1: the Triton row there is judged against torch alone, and the verdict says so."""
    rows = (_vendor_rows("cudnn", "conv2d", {"cudnn": 1.0e-3, "torch": 1.2e-3, "triton": 1.0e-3}, "p0")
            + _vendor_rows("cudnn", "conv2d", {"cudnn": 0.5e-3, "torch": 1.0e-3, "triton": 1.0e-3}, "p1"))
    df = pd.DataFrame(rows).assign(experiment="bench_resnet50", status=["ok", "ok", "ok", "error", "ok", "ok"],
                                   point_index=[0, 0, 0, 1, 1, 1], reference=lambda d: d["impl"] != "triton",
                                   tflops=1.0, gbps=1.0, min_bytes=1, energy_requested=False,
                                   config_hash=lambda d: d["impl"] + d["point_hash"])
    tab = bench.table(df, {"matmul_tflops": {"bf16": 10.0}, "copy_gbps": 1.0, "device_name": "test"})
    target = bench.targets(tab).set_index("target").loc["conv triton bf16 >= 0.95x cuDNN (ResNet-50)"]
    assert (target["points"], target["verdict"], target["library_missing"]) == (2, "MET", 1)
    assert bench._verdict_cell(target) == "MET; against torch alone on 1 of 2 points (no correct cudnn result)"
    every = bench.targets(tab[tab["point_hash"] == "p0"]).set_index("target").loc[target.name]
    assert bench._verdict_cell(every) == "MET"


def test_each_gemm_set_is_judged_apart_and_the_report_names_the_missed_point() -> None:
    rows = []
    for i, (exp, name, t) in enumerate((("bench_linear", "Large", 1.0e-3), ("bench_gemm", "square 2048", 4.0e-3))):
        rows += [dict(r, experiment=exp, layer="linear", name=name) for r in _vendor_rows(
            "cublas", "linear", {"cublas": 1.0e-3, "torch": 1.0e-3, "triton": t}, f"p{i}")]
    df = pd.DataFrame(rows).assign(point_index=[0, 0, 0, 1, 1, 1], status="ok",
                                   reference=lambda d: d["impl"] != "triton", tflops=1.0, gbps=1.0,
                                   min_bytes=1, energy_requested=False,
                                   config_hash=lambda d: d["impl"] + d["point_hash"])
    ceil = {"matmul_tflops": {"bf16": 10.0}, "copy_gbps": 1.0, "device_name": "test"}
    tab = bench.table(df, ceil)
    tg = bench.targets(tab).set_index("target")
    fc = tg.loc["linear triton bf16 >= 0.95x cuBLAS (AlexNet FC)"]
    gemm = tg.loc["linear triton bf16 >= 0.95x cuBLAS (transformer, classifier GEMMs, GEMV)"]
    assert (fc["points"], fc["verdict"]) == (1, "MET")  # the GEMM set's 0.25x is not judged
    assert fc["worst_point"] == "linear, Large, bf16, NHWC"  # a met target names its worst point too
    assert (gemm["points"], gemm["geomean"], gemm["verdict"]) == (1, 0.25, "MISSED")
    assert gemm["worst_point"] == "gemm, square 2048, bf16, NHWC"
    report = bench.format_bench_report(tab, ceil)
    assert "| linear | gemm | square 2048 |" in report and "| linear | linear | Large |" in report
    assert ("| linear triton bf16 >= 0.95x cuBLAS (transformer, classifier GEMMs, GEMV) | 1 | 0.250 | - | 0.250 | "
            "gemm, square 2048, bf16, NHWC | - | MISSED |") in report


def _pass_rows(layer: str, impl: str, dtype: str, experiment: str, direction: str | None, values: list[float],
               column: str, **fields: object) -> list[dict]:
    return [{"layer": layer, "impl": impl, "dtype": dtype, "experiment": experiment, "direction": direction,
             "x_best": math.nan, "ceiling": math.nan, "sized_copy": math.nan} | fields | {column: v} for v in values]


def test_backward_targets_judge_their_own_pass() -> None:
    rows = (_pass_rows("conv2d", "triton", "bf16", "bench_conv_backward", "backward_data", [1.0, 0.8], "x_best")
            + _pass_rows("conv2d", "triton", "bf16", "bench_conv_backward", "backward_weight", [0.5], "x_best")
            + _pass_rows("relu", "triton", "fp32", "bench_relu", "forward", [0.96], "ceiling")
            + _pass_rows("relu", "triton", "fp32", "bench_relu_backward", "backward_data", [0.9, 0.8], "ceiling")
            + _pass_rows("pool2d", "cupy", "bf16", "bench_pool_backward", "backward_data", [0.84], "ceiling")
            + _pass_rows("linear", "triton", "tf32", "bench_linear_backward", "backward_weight", [0.92], "x_best")
            + _pass_rows("linear", "cupy", "bf16", "bench_linear_backward", "backward_data", [0.6], "x_best"))
    tg = bench.targets(pd.DataFrame(rows)).set_index("target")

    def judged(target: str) -> tuple[int, float, str]:
        row = tg.loc[target]
        return row["points"], round(row["geomean"], 4), row["verdict"]

    assert judged("conv triton dgrad bf16 >= 0.85x cuDNN (ResNet-50, VGG-16 layers)") == (2, 0.8944, "MET")
    assert judged("conv triton wgrad bf16 >= 0.85x cuDNN (ResNet-50, VGG-16 layers)") == (1, 0.5, "MISSED")
    # The forward bandwidth target sees the forward row alone, the backward one the backward rows alone.
    assert judged("ReLU triton >= 95 % of copy bandwidth") == (1, 0.96, "MET")
    assert judged("ReLU backward triton >= 85 % of copy bandwidth") == (2, 0.8485, "MISSED")
    assert judged("pool backward cupy >= 85 % of copy bandwidth") == (1, 0.84, "MISSED")
    assert judged("pool backward triton >= 85 % of copy bandwidth")[2] == "n/a"
    # the linear gradients carry the forward GEMM's targets
    assert judged("linear dW triton tf32 >= 0.9x cuBLAS") == (1, 0.92, "MET")
    assert judged("linear dx triton tf32 >= 0.9x cuBLAS")[2] == "n/a"
    assert judged("linear dx cupy bf16 >= 0.7x cuBLAS") == (1, 0.6, "MISSED")
    assert "linear dW triton bf16 >= 0.95x cuBLAS" in tg.index and "linear dW triton fp16 >= 0.95x cuBLAS" in tg.index
    # the forward conv and linear targets do not count backward rows
    assert judged("linear triton tf32 >= 0.9x cuBLAS (AlexNet FC)")[2] == "n/a"


def test_rows_recorded_before_passes_count_as_forward() -> None:
    rows = _pass_rows("relu", "cupy", "fp16", "bench_relu", None, [0.97], "ceiling")
    tab = pd.DataFrame(rows).drop(columns="direction")
    tg = bench.targets(tab).set_index("target")
    assert tg.loc["ReLU cupy >= 95 % of copy bandwidth", "verdict"] == "MET"
    assert tg.loc["ReLU backward cupy >= 85 % of copy bandwidth", "verdict"] == "n/a"


def test_backward_sets_run_their_passes() -> None:
    def passes(name: str) -> dict[str, set[str]]:
        s = sweep.load_sweep(bench.BENCH_DIR / f"{name}.toml")
        assert not any(p.invalid for p in s.points) and s.experiment in bench.TARGETED
        out: dict[str, set[str]] = {}
        for p in s.points:
            out.setdefault(p.label, set()).add(p.spec.direction)
        return out

    conv = passes("conv_backward")
    assert set(map(frozenset, conv.values())) == {frozenset({"backward_data", "backward_weight"})}
    assert any(n.startswith("r50") for n in conv) and any(n.startswith("vgg") for n in conv)
    assert set(map(frozenset, passes("linear_backward").values())) == {frozenset({"backward_data", "backward_weight"})}
    for name in ("pool_backward", "relu_backward"):
        assert set().union(*passes(name).values()) == {"backward_data"}


def test_a_point_past_the_floor_misses_a_target_whose_geomean_is_met() -> None:
    names = ["conv2_1b 3x3 64", "conv3_b 3x3 128", "conv4_b 3x3 256", "conv5_b 3x3 512"]
    rows = [r | {"name": n, "layout": "NHWC"} for r, n in zip(
        _pass_rows("conv2d", "triton", "bf16", "bench_resnet50", "forward", [1.2, 1.2, 1.2, 0.7], "x_best"), names)]
    rows += _pass_rows("conv2d", "triton", "fp16", "bench_resnet50", "forward", [1.0, 0.8], "x_best")
    tg = bench.targets(pd.DataFrame(rows)).set_index("target")
    bf16 = tg.loc["conv triton bf16 >= 0.95x cuDNN (ResNet-50)"]
    assert bf16["geomean"] >= 0.95 and bf16["floor"] == 0.75 and bf16["below_floor"] == 1
    assert (bf16["verdict"], bf16["worst"]) == ("MISSED", 0.7)
    assert bf16["worst_point"] == "resnet50, conv5_b 3x3 512, bf16, NHWC"
    fp16 = tg.loc["conv triton fp16 >= 0.95x cuDNN (ResNet-50)"]  # every point above 0.75, geomean 0.894
    assert (fp16["below_floor"], fp16["verdict"]) == (0, "MISSED")
    met = bench.targets(pd.DataFrame(rows[:3])).set_index("target").loc["conv triton bf16 >= 0.95x cuDNN (ResNet-50)"]
    assert (met["verdict"], met["worst_point"]) == ("MET", "resnet50, conv2_1b 3x3 64, bf16, NHWC")
    vgg = _pass_rows("conv2d", "triton", "tf32", "bench_vgg16", "forward", [1.2, 0.7], "x_best")
    tf32 = bench.targets(pd.DataFrame(vgg)).set_index("target").loc["conv triton tf32 >= 0.9x cuDNN (VGG-16)"]
    assert math.isnan(tf32["floor"]) and tf32["verdict"] == "MET"  # no floor: 0.7 is only the worst point


def test_a_target_judged_on_part_of_its_set_says_so() -> None:
    """The planned rows come from the bench files: ResNet-50 plans 23 layers in each dtype and layout,
    MobileNetV2 10 depthwise layers; a verdict on fewer rows is marked partial in the report."""
    def layers(name: str, depthwise: bool = False) -> int:
        points = tomllib.loads((bench.BENCH_DIR / f"{name}.toml").read_text())["points"]
        return sum((p.get("groups", 1) > 1) == depthwise for p in points)

    planned = bench.planned_rows()
    rows = [r | {"name": f"layer {i}", "layout": "NHWC"} for i, r in enumerate(
        _pass_rows("conv2d", "triton", "bf16", "bench_resnet50", "forward", [1.0, 0.9, 1.1], "x_best"))]
    tg = bench.targets(pd.DataFrame(rows), planned).set_index("target")
    bf16 = tg.loc["conv triton bf16 >= 0.95x cuDNN (ResNet-50)"]
    assert (bf16["points"], bf16["planned"]) == (3, 2 * layers("resnet50"))  # NCHW and NHWC
    assert tg.loc["depthwise conv cupy fp16 >= 85 % of a same-size copy (MobileNetV2)", "planned"] == \
        2 * layers("mobilenetv2", depthwise=True)
    assert tg.loc["conv cupy fp16 >= 0.8x cuDNN (MobileNetV2 pointwise)", "planned"] == 2 * layers("mobilenetv2")
    assert math.isnan(tg.loc["energy <= 1.0x cudnn where at least as fast (resnet50)", "planned"])
    assert bench._points_cell(bf16) == f"3 of {2 * layers('resnet50')}" and bench._verdict_cell(bf16) == "MET, partial"
    missing = tg.loc["conv triton bf16 >= 0.95x cuDNN (VGG-16)"]
    assert bench._points_cell(missing) == f"0 of {2 * layers('vgg16')}" and bench._verdict_cell(missing) == "n/a"


def test_where_keeps_part_of_a_bench_set() -> None:
    """A bench in parts: --where keeps the rows a file's own where would, ANDed with it."""
    full = sweep.load_sweep(bench.BENCH_DIR / "mobilenetv2.toml")
    part = sweep.load_sweep(bench.BENCH_DIR / "mobilenetv2.toml")
    part.restrict_where("groups > 1 and layout == 'NHWC' and dtype in ('bf16', 'fp32')")
    rows = [(p.label, p.dtype, p.layout, n) for p in part.points for n in p.implementations]
    expected = [(p.label, p.dtype, p.layout, n) for p in full.points for n in p.implementations
                if p.spec.groups > 1 and p.layout == "NHWC" and p.dtype in ("bf16", "fp32")]
    assert rows == expected and len(part.points) == 20
    assert all(set(p.energy_impls) <= set(p.implementations) for p in part.points)
    assert part.skipped_filtered == full.skipped_filtered + len(full.points) - len(part.points)


def test_depthwise_layers_are_judged_by_the_depthwise_targets_only() -> None:
    # dw96: groups == in_channels (depthwise); expand: a pointwise conv; grouped: groups 2 of 16 channels.
    times = {"cudnn": 2.0e-3, "triton": 1.0e-3}
    df = pd.DataFrame([
        {"point_hash": name, "name": name, "impl": impl, "time_median_s": t * scale, "groups": g, "in_channels": c,
         "gbps": gbps}
        for name, g, c, scale, gbps in (("dw96/2 @112", 96, 96, 1.0, 3.0), ("expand 16->96 @112", 1, 16, 4.0, 3.0),
                                        ("grouped", 2, 16, 4.0, 3.0))
        for impl, t in times.items()]).assign(
        layer="conv2d", dtype="bf16", layout="NHWC", experiment="bench_mobilenetv2", point_index=0, status="ok",
        reference=lambda d: d["impl"] != "triton", tflops=1.0, min_bytes=1000, energy_requested=False,
        config_hash=lambda d: d["impl"] + d["point_hash"])
    ceil = {"matmul_tflops": {"bf16": 10.0}, "copy_gbps": 4.0, "device_name": "test", "copy_curve": {"1000": 4.0}}
    tab = bench.table(df, ceil).set_index("name", drop=False)
    tri = tab[tab["impl"] == "triton"]
    assert tri.loc["dw96/2 @112", "sized_copy"] == 0.75  # 3 GB/s against a copy of 1 kB at 4 GB/s
    assert tri[["sized_copy"]].loc[["expand 16->96 @112", "grouped"]].isna().all().all()  # compute-bound
    tg = bench.targets(tab.reset_index(drop=True)).set_index("target")
    point = tg.loc["conv triton bf16 >= 0.95x cuDNN (MobileNetV2 pointwise)"]
    assert (point["points"], point["geomean"], point["verdict"]) == (2, 2.0, "MET")  # expand and grouped only
    speed = tg.loc["depthwise conv triton bf16 >= 1.2x cuDNN (MobileNetV2)"]
    assert (speed["points"], speed["geomean"], speed["verdict"]) == (1, 2.0, "MET")
    copy = tg.loc["depthwise conv triton bf16 >= 85 % of a same-size copy (MobileNetV2)"]
    assert (copy["points"], copy["geomean"], copy["verdict"]) == (1, 0.75, "MISSED")
    assert copy["worst_point"] == "mobilenetv2, dw96/2 @112, bf16, NHWC"
    assert tg.loc["depthwise conv cupy bf16 >= 1.2x cuDNN (MobileNetV2)", "verdict"] == "n/a"


def test_energy_at_most_the_references_on_every_point_at_least_as_fast() -> None:
    def rows(exp: str, impl: str, x: list[float], e: list[float]) -> list[dict]:
        return [{"layer": "conv2d", "impl": impl, "dtype": "bf16", "experiment": exp, "name": f"p{i}",
                 "layout": "NHWC", "x_best": xi, "x_cudnn": xi, "e_cudnn": ei, "ceiling": math.nan,
                 "sized_copy": math.nan} for i, (xi, ei) in enumerate(zip(x, e))]

    tab = pd.DataFrame(rows("bench_conv", "triton", [1.1, 1.0, 0.9], [0.8, 1.02, 1.5])  # 1.5: slower, not judged
                       + rows("bench_vgg16", "cupy", [1.2, 1.3], [0.9, 1.0])
                       + rows("bench_vgg16", "cudnn", [1.0], [1.0]))  # the reference itself is not judged
    tg = bench.targets(tab).set_index("target")
    conv = tg.loc["energy <= 1.0x cudnn where at least as fast (conv)"]
    assert (conv["points"], conv["worst"], conv["below_floor"], conv["verdict"]) == (2, 1.02, 1, "MISSED")
    assert conv["worst_point"] == "conv, p1, bf16, NHWC"
    vgg = tg.loc["energy <= 1.0x cudnn where at least as fast (vgg16)"]
    assert (vgg["points"], vgg["worst"], vgg["verdict"]) == (2, 1.0, "MET")
    assert tg.loc["energy <= 1.0x cublas where at least as fast (gemm)", "verdict"] == "n/a"


def test_energy_is_judged_where_the_kernel_is_as_fast_back_to_back() -> None:
    """The energy windows run launches back to back (caches warm): a kernel slower than the
    reference cold but faster there is judged, one faster cold but slower there is not."""
    def row(impl: str, name: str, cold_s: float, b2b_s: float, j: float, flags: list[str]) -> dict:
        return {"layer": "linear", "impl": impl, "dtype": "bf16", "experiment": "bench_gemm", "name": name,
                "point_hash": name, "layout": "NCHW", "status": "ok", "time_median_s": cold_s,
                "energy_s_per_launch": b2b_s, "energy_j_per_launch": j, "tflops": 1.0, "min_bytes": 1000,
                "energy_flags": flags}

    # The reference's GEMV windows ran at the power cap: the judged ratio says so.
    df = pd.DataFrame([row("cublas", "gemv", 20e-6, 10e-6, 2.0, ["throttled"]),
                       row("triton", "gemv", 22e-6, 8e-6, 2.4, []),
                       row("cublas", "square", 20e-6, 20e-6, 1.0, []),
                       row("triton", "square", 19e-6, 21e-6, 3.0, ["unavailable"])])
    pairs = pd.DataFrame([{"baseline": "cublas", "point_hash": name, "impl": impl, "time_ratio": t, "energy_ratio": e,
                           "energy_flags": f}
                          for name, impl, t, e, f in [("gemv", "triton", 1.1, 1.2, "throttled"),
                                                      ("square", "triton", 0.95, 3.0, "")]])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench.compare, "compare_within", lambda _df: pairs)
        tab = bench.table(df, {"matmul_tflops": {"bf16": 10.0}, "copy_gbps": 4.0, "copy_curve": {"1000": 4.0}})
    tri = tab[tab["impl"] == "triton"].set_index("name")
    assert tri.loc["gemv", "xe_cublas"] == pytest.approx(1.25)
    assert tri.loc["square", "xe_cublas"] == pytest.approx(20 / 21)
    energy = bench.targets(tab).set_index("target").loc["energy <= 1.0x cublas where at least as fast (gemm)"]
    assert (energy["points"], energy["worst"], energy["verdict"]) == (1, 1.2, "MISSED")
    assert energy["worst_point"].startswith("gemm, gemv")
    table = bench.format_bench_report(tab.assign(layer="linear", point_index=0, gbps=1.0),
                                      {"matmul_tflops": {"bf16": 10.0}, "copy_gbps": 4.0, "device_name": "test"})
    header = next(line for line in table.splitlines() if line.startswith("| layer | set |"))
    assert header.rstrip(" |").endswith("e_cublas | xe_cublas"), header
    assert "| 1.25 |" in table  # the GEMV's speed back to back
    assert "| cublas | 20.0 | 1.0 TFLOP/s | 10 | - | - | 1.00 | 2 (throttled) |" in table
    assert "| 3 | 3.000 |" in table  # "unavailable" is no flag on a number
    assert "\nEnergy flags: throttled: a power or thermal cap" in table
    assert ("energy <= 1.0x cublas where at least as fast (gemm): 1 of the 1 rows judged has flagged energy "
            "windows (the kernel's or the reference's): gemm, gemv, bf16, NCHW, triton (throttled).") in table


def test_every_bench_set_has_targets_each_named_once() -> None:
    assert {f"bench_{name}" for name in bench.LAYERS} == set(bench.TARGETED)
    assert len({t.text for t in bench.TARGETS}) == len(bench.TARGETS)
