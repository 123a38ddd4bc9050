"""The bench's table and target verdicts, on a tiny CPU run of the real pipeline."""

import json
import math
from pathlib import Path

import pytest

from layerbench import bench, sweep
from layerbench.runner import RunOptions, run_sweep

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
    s = sweep.load(bench.BENCH_DIR / f"{layer}.toml")
    assert s.points and s.experiment == f"bench_{layer}"


@pytest.mark.interpreter
def test_table_and_targets_from_a_cpu_run(tmp_path: Path) -> None:
    run_sweep(sweep.parse(SWEEP), RunOptions(device="cpu", out=tmp_path / "bench_relu", progress=False))
    ceilings = {"copy_gbps": 2.0, "matmul_tflops": {"fp32": 1.0}, "device_name": "test"}
    (tmp_path / bench.CEILINGS_FILE).write_text(json.dumps(ceilings))
    df, ceil = bench.load(tmp_path)
    tab = bench.table(df, ceil)
    tri, ref = (tab[tab["impl"] == i].iloc[0] for i in ("triton", "torch"))
    assert math.isclose(tri["x_torch"], ref["time_median_s"] / tri["time_median_s"])
    assert math.isclose(tri["ceiling"], tri["gbps"] / 2.0)
    tg = bench.targets(tab).set_index("target")
    row = tg.loc["ReLU triton >= 95 % of copy bandwidth"]
    assert row["points"] == 1 and row["verdict"] == ("MET" if tri["ceiling"] >= 0.95 else "MISSED")
    assert tg.loc["ReLU cupy >= 95 % of copy bandwidth", "verdict"] == "n/a"
    assert "### Targets" in bench.format_report(tab, ceil)


def test_unknown_layer_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--layers must be among relu, pool, conv, linear, got softmax"):
        bench.run_bench(tmp_path, "cpu", ("softmax",))
