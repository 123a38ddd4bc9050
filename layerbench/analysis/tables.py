"""Markdown tables and number formatting for compare, report and bench: one helper for each."""

from __future__ import annotations

import math
from typing import Any, Sequence

from layerbench.analysis.stats import is_finite_number

_PREFIXES = ((1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"))


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def unit_scale(values: Sequence[Any], unit: str) -> tuple[float, str]:
    """The SI prefix that puts the largest value at >= 1 (W stays W)."""
    finite = [abs(v) for v in values if is_finite_number(v) and v]
    if unit == "W" or not finite:
        return 1.0, unit
    top = max(finite)
    for scale, prefix in _PREFIXES:
        if top >= scale:
            return scale, prefix + unit
    return _PREFIXES[-1][0], _PREFIXES[-1][1] + unit


def fmt_number(v: Any, spec: str = ".4g", scale: float = 1.0, missing: str = "-") -> str:
    """``v / scale`` formatted with ``spec``; ``missing`` for None, NaN, infinities and non-numbers."""
    if not is_finite_number(v):
        return missing
    return format(v / scale, spec)


def fmt_interval(r: float, lo: float, hi: float) -> str:
    """``0.512 [0.498, 0.530]``: a ratio and its interval."""
    if not is_finite_number(r):
        return "-"
    return f"{r:.3f} [{lo:.3f}, {hi:.3f}]"


def fmt_pair(a: Any, b: Any) -> str:
    """``0.5 / 1``: two values side by side, or '-' when either is missing."""
    if not (is_finite_number(a) and is_finite_number(b)):
        return "-"
    return f"{a:.3g} / {b:.3g}"


def fmt_cell(v: Any, limit: int | None = None) -> str:
    """A value as table text: empty for None and NaN, cut to ``limit`` characters."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    text = str(v)
    return text if limit is None else text[:limit]
