"""Sweep files: the filter language (``filters``), the point model (``points``) and the TOML parser
(``parse``).  The schema is documented in ``sweeps/README.md``."""

from layerbench.errors import SweepError
from layerbench.sweep.parse import iter_sweep_files, load_sweep, parse_sweep
from layerbench.sweep.points import SETTINGS_AXES, Measure, Point, Sweep, axis_label, point_title

__all__ = ["SETTINGS_AXES", "Measure", "Point", "Sweep", "SweepError", "axis_label", "iter_sweep_files", "load_sweep",
           "parse_sweep", "point_title"]
