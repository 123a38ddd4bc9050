"""Print the energy columns of a run, one row per record: how each energy number was taken.

    python tools/energy_diag.py RUN_DIR
"""
import sys

import pandas as pd

from layerbench.results import rundir as results

df = results.load_results(sys.argv[1])
cols = [c for c in ["name", "impl", "dtype", "layout", "status", "time_median_s", "time_launch_mode", "energy_method",
                    "energy_reason", "energy_flags", "energy_j_per_launch", "energy_spread", "energy_avg_power_w",
                    "energy_launch_mode", "message"] if c in df.columns]
with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_colwidth", 90):
    print(df[cols].to_string())
