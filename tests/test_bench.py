"""The bench's table and target verdicts, on a tiny CPU run of the real pipeline."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from layerbench.suites import bench
from layerbench.suites import ceilings
from layerbench import sweep
from layerbench.cli import build_parser
from layerbench.run.sweep_runner import RunOptions, run_sweep

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
                "copy_curve": {"1000": 1.0, "1000000": 4.0}}
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
    assert math.isnan(tg.loc["linear triton bf16 >= 0.95x cuBLAS", "copy_bound"])
    report = bench.format_report(tab, ceil)
    assert "### Targets" in report and "Against a copy of the same size (geomean, not a target): relu triton" in report


def test_copy_curve_interpolates_in_log_size_and_is_flat_beyond() -> None:
    curve = {"1000": 1.0, "1000000": 4.0}
    assert math.isclose(ceilings.copy_gbps_at(curve, 31622.8), 2.5, rel_tol=1e-5)  # halfway in log size
    assert ceilings.copy_gbps_at(curve, 10) == 1.0 and ceilings.copy_gbps_at(curve, 1e9) == 4.0
    assert math.isnan(ceilings.copy_gbps_at({}, 1e6))  # ceilings measured before the curve existed


def test_unknown_layer_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--layers must be among relu, pool, conv, conv_sweeps, linear, got softmax"):
        bench.run_bench(tmp_path, "cpu", ("softmax",))


def test_bench_command_runs_every_bench_sweep_by_default() -> None:
    args = build_parser().parse_args(["bench"])
    assert tuple(args.layers.split(",")) == bench.LAYERS


def test_conv_targets_judge_l1_l6_apart_from_the_sweeps() -> None:
    tab = pd.DataFrame({"layer": "conv2d", "impl": "triton", "dtype": "bf16",
                        "experiment": ["bench_conv", "bench_conv", "bench_conv_sweeps"],
                        "x_cudnn": [1.0, 1.0, 0.5], "ceiling": 0.5, "sized_copy": math.nan})
    tg = bench.targets(tab).set_index("target")
    l16 = tg.loc["conv triton bf16 >= 0.9x cuDNN (L1-L6)"]
    swept = tg.loc["conv triton bf16 >= 0.9x cuDNN (input-size, kernel-size, channel sweeps)"]
    assert (l16["points"], l16["verdict"]) == (2, "MET")
    assert (swept["points"], swept["geomean"], swept["verdict"]) == (1, 0.5, "MISSED")
