"""The runner on a GPU: worker process, NVML energy, kernel names, a poisoned CUDA context."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from layerbench.results import rundir as results
from layerbench import sweep
from layerbench.run.sweep_runner import RunOptions, run_sweep

pytestmark = pytest.mark.gpu

SWEEP = """
experiment = "gpu_runner"
[params]
batch = 8
[[points]]
name = "conv"
layer = "conv2d"
in_channels = 16
out_channels = 32
size = 28
kernel = 3
padding = 1
[[points]]
name = "relu"
layer = "relu"
channels = 32
size = 28
[implementations]
conv2d = ["triton", "cupy", "cudnn", "torch"]
relu = ["triton", "cupy", "cudnn", "torch"]
[timing]
min_time_s = 0.05
max_time_s = 1.0
[energy]
windows = 2
window_s = 1.0
warmup_s = 0.2
cooldown = "none"
"""


def test_gpu_sweep_records_time_energy_and_kernel_names(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(SWEEP)
    opts = RunOptions(device="cuda", out=tmp_path / "run", progress=False, argv=["t"])
    run_dir = run_sweep(sweep.load_sweep(path), opts)
    df = results.load_results(run_dir)
    assert len(df) == 8 and set(df["status"]) == {"ok"}, df[["name", "impl", "status", "message"]]
    assert (df["time_clock"] == "cuda-events").all()
    assert (df["energy_method"] == "nvml-energy-counter").all(), df["energy_reason"]
    assert (df["energy_j_per_launch"] > 0).all() and (df["energy_avg_power_w"] > 0).all(), \
        df[["name", "impl", "energy_reason", "energy_flags"]].to_string()
    libs = {r["impl"] + "/" + r["name"]: set(r["kernel_libraries"]) for _, r in df.iterrows()}
    assert libs["cudnn/conv"] == {"cudnn"} and "cudnn" in libs["torch/conv"]
    assert df["env_gpu_name"].notna().all() and df["env_gpu_uuid"].notna().all()


def test_poisoned_context_is_survived(tmp_path: Path) -> None:
    """A device-side assert poisons the CUDA context: that row is an error, the rest still runs."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "poison_impl.py").write_text(textwrap.dedent("""
        import torch
        def build(spec, dtype, layout, tensors, out):
            flat = out.view(-1)
            bad = torch.tensor([flat.numel() + 10**6], device=out.device)
            flat[bad] = 1.0   # out-of-bounds index: device-side assert, a sticky CUDA error
            torch.cuda.synchronize()
            return lambda: None
    """))
    path = tmp_path / "s.toml"
    path.write_text(textwrap.dedent("""
        layer = "relu"
        implementations = ["poison_impl:build", "torch"]
        [params]
        batch = 2
        channels = 4
        [axes]
        size = [8, 16]
        [timing]
        fixed_samples = 5
        [energy]
        enabled = false
    """))
    sys.path.insert(0, str(mods))
    try:
        run_dir = run_sweep(sweep.load_sweep(path), RunOptions(device="cuda", out=tmp_path / "run",
                                                         progress=False, argv=["t"]))
    finally:
        sys.path.remove(str(mods))
    recs = results.read_records(run_dir / results.RESULTS_FILE)
    status = {(r["axis_size"], r["impl"]): r["status"] for r in recs}
    assert status == {(8, "poison_impl:build"): "error", (8, "torch"): "ok",
                      (16, "poison_impl:build"): "error", (16, "torch"): "ok"}
    assert all("assert" in r["message"] for r in recs if r["status"] == "error")


KEPT_CHOICES = """
experiment = "kept_choices"
dtypes = ["bf16"]
layouts = ["NHWC"]
[params]
batch = 8
[[points]]
name = "conv"
layer = "conv2d"
in_channels = 64
out_channels = 64
size = 28
kernel = 3
padding = 1
[implementations]
conv2d = ["triton", "cupy"]
[timing]
min_time_s = 0.05
max_time_s = 0.5
[energy]
enabled = false
"""


def test_a_second_run_reuses_the_paths_the_first_chose(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker keeps each build's path choice in the build cache; a second run of the same
    point builds only that path and records it as reused, with the same algorithm."""
    monkeypatch.setenv("LAYERBENCH_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "s.toml"
    path.write_text(KEPT_CHOICES)
    runs = []
    for name in ("first", "second"):
        opts = RunOptions(device="cuda", out=tmp_path / name, progress=False, argv=["t"])
        runs.append(results.load_results(run_sweep(sweep.load_sweep(path), opts)).set_index("impl"))
    first, second = runs
    assert set(first["status"]) == set(second["status"]) == {"ok"}, second[["status", "message"]]
    for impl in ("triton", "cupy"):
        assert first.loc[impl].get("detail_reused_choice") is not True
        assert second.loc[impl]["detail_reused_choice"] == True  # noqa: E712 - a table cell, bool or 1.0
        assert second.loc[impl]["detail_algorithm"] == first.loc[impl]["detail_algorithm"]
