"""Fabricated run tables for the analysis tests (pareto, HTML report, cross-GPU, findings)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pandas as pd


def row(impl: str, time_s: float, joules: float | None, *, layer: str = "conv2d", name: str | None = None,
        dtype: str = "fp32", layout: str = "NCHW", batch: int = 8, flops: int = 10**9, reference: bool = False,
        axes: dict[str, Any] | None = None, gpu: str = "Fake H100", index: int = 0, **extra: Any) -> dict[str, Any]:
    axes = axes or {}
    key = f"{layer}|{name}|{dtype}|{layout}|{batch}|{sorted(axes.items())}|{extra.get('params', '')}"
    r: dict[str, Any] = {
        "experiment": "fab", "point_index": index, "name": name, "layer": layer, "impl": impl, "dtype": dtype,
        "layout": layout, "device": "cuda", "status": "ok", "reference": reference, "batch": batch,
        "flops": flops, "time_median_s": time_s, "time_iqr_s": time_s * 0.01,
        "config_hash": hashlib.sha256(f"{key}|{impl}".encode()).hexdigest()[:16],
        "point_hash": hashlib.sha256(key.encode()).hexdigest()[:16],
        "env_gpu_name": gpu, "env_driver_version": "580.00", "env_gpu_power_limit_w": 700.0,
        "energy_telemetry_sm_clock_mhz_mean": 1980.0, "energy_telemetry_mem_clock_mhz_mean": 2619.0,
    }
    r.update({f"axis_{k}": v for k, v in axes.items()})
    if joules is not None:
        r.update(energy_j_per_launch=joules, energy_avg_power_w=joules / time_s, energy_spread=0.01)
    r.update({k: v for k, v in extra.items() if k != "params"})
    return r


def write_run(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path / "results.parquet")
    return path
