"""Two runs of the same sweep on different GPUs, side by side (the thesis's K20m vs Titan X, A7).

``run_header`` says what each run ran on (GPU, driver, power limit, the clocks measured during its
energy windows, the GPU settings a sweep set); ``cross_gpu_table`` gives per point and
implementation the ratio B / A of time, energy and J/GFLOP, rows matched by config hash (the same
sweep and measurement options; the environment is not part of the hash).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from layerbench.analysis.compare import column_title, compare_runs, point_columns
from layerbench.sweep import SETTINGS_AXES


def _first(df: pd.DataFrame, col: str) -> Any:
    if col not in df.columns:
        return None
    vals = df[col].dropna()
    return vals.iloc[0] if len(vals) else None


def _span(df: pd.DataFrame, col: str, unit: str) -> str:
    if col not in df.columns:
        return "-"
    vals = pd.to_numeric(df[col], errors="coerce").dropna()
    if vals.empty:
        return "-"
    lo, hi = vals.min(), vals.max()
    return f"{lo:.0f} {unit}" if math.isclose(lo, hi, rel_tol=0.01) else f"{lo:.0f}-{hi:.0f} {unit}"


def run_header(df: pd.DataFrame, name: str) -> dict[str, str]:
    """What one run ran on: GPU, driver, power limit, clocks in its energy windows, settings swept."""
    gpu = _first(df, "env_gpu_name")
    device = _first(df, "device")
    settings = [f"{a} {', '.join(str(v) for v in sorted(df[f'axis_{a}'].dropna().unique()))}"
                for a in SETTINGS_AXES if f"axis_{a}" in df.columns]
    return {"run": name,
            "GPU": str(gpu) if gpu is not None else f"none ({device or 'unknown'} run)",
            "driver": str(_first(df, "env_driver_version") or "-"),
            "power limit": _span(df, "env_gpu_power_limit_w", "W"),
            "SM clock (energy windows)": _span(df, "energy_telemetry_sm_clock_mhz_mean", "MHz"),
            "memory clock (energy windows)": _span(df, "energy_telemetry_mem_clock_mhz_mean", "MHz"),
            "GPU settings swept": "; ".join(settings) or "none"}


def cross_gpu_table(df_a: pd.DataFrame, df_b: pd.DataFrame) -> pd.DataFrame:
    """Per point and implementation present (ok) in both runs: B / A of time, energy, J/GFLOP."""
    table = compare_runs(df_a, df_b)
    if table.empty:
        return pd.DataFrame(columns=["point", "impl", "time_ratio", "energy_ratio", "j_per_gflop_ratio"])
    cols = [c for c in point_columns(df_a) if c in table.columns]

    def label(r: pd.Series) -> str:
        return " ".join(f"{column_title(c)}={r[c]}" if c.startswith("axis_") or c == "direction" else str(r[c])
                        for c in cols if pd.notna(r[c]))

    def ratio(a: Any, b: Any) -> float:
        try:
            a, b = float(a), float(b)
        except (TypeError, ValueError):
            return math.nan
        return a / b if b > 0 and a > 0 else math.nan

    return pd.DataFrame({"point": [label(r) for _, r in table.iterrows()], "impl": table["impl"],
                         "time_ratio": table["time_ratio"], "energy_ratio": table["energy_ratio"],
                         "j_per_gflop_ratio": [ratio(r["j_per_gflop"], r["base_j_per_gflop"])
                                               for _, r in table.iterrows()]})
