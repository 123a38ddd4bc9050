"""Statistics of results: numbers read from records, ratios with their noise intervals, geometric means.

Ratios are ``candidate / baseline``, so < 1 means the candidate is faster or uses less energy.  A
ratio carries an interval from the noise of both measurements; its verdict is SAME when that
interval includes 1 (or the ratio is within ``threshold`` of 1), else one of two words
(FASTER/SLOWER for time, LESS/MORE for energy).
"""

from __future__ import annotations

import json
import math
import numbers
import statistics
from dataclasses import dataclass
from typing import Any, Iterable

DEFAULT_THRESHOLD = 0.01


def to_float(v: Any) -> float:
    """A record's value as a float; NaN for None, text and anything else that is not a number."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def is_finite_number(v: Any) -> bool:
    """A real number (Python or NumPy, not a boolean) that is neither NaN nor infinite."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Ratio:
    ratio: float
    lo: float
    hi: float

    def verdict(self, threshold: float, words: tuple[str, str] = ("FASTER", "SLOWER")) -> str:
        if not math.isfinite(self.ratio):
            return "n/a"
        if self.lo <= 1.0 <= self.hi or abs(self.ratio - 1.0) < threshold:
            return "SAME"
        return words[0] if self.ratio < 1.0 else words[1]


NAN_RATIO = Ratio(math.nan, math.nan, math.nan)


def interval_ratio(a: float, a_width: float, b: float, b_width: float) -> Ratio:
    """a / b with a in [a -+ a_width/2] and b in [b -+ b_width/2]."""
    a, b, aw, bw = to_float(a), to_float(b), to_float(a_width), to_float(b_width)
    if not (a > 0 and b > 0):
        return NAN_RATIO
    aw = aw if math.isfinite(aw) else 0.0
    bw = bw if math.isfinite(bw) else 0.0
    lo_b = b - bw / 2
    hi = (a + aw / 2) / lo_b if lo_b > 0 else math.inf
    return Ratio(a / b, max(a - aw / 2, 0.0) / (b + bw / 2), hi)


def paired_ratio(a: list[float], b: list[float]) -> Ratio:
    """Interleaved windows (A B A B ...): window i of A over window i of B; the median quotient,
    spanned by the smallest and largest."""
    n = min(len(a), len(b))
    if n == 0:
        return NAN_RATIO
    quotients = [x / y for x, y in zip(a[:n], b[:n])]
    return Ratio(statistics.median(quotients), min(quotients), max(quotients))


def window_values(v: Any) -> list[float]:
    """Per-window values as a record holds them: a list, JSON text (CSV), or nothing."""
    if isinstance(v, str):
        v = json.loads(v)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return []
    return [to_float(x) for x in v]


def geomean(values: Iterable[Any]) -> float:
    """Geometric mean of the finite positive values (NaN when there are none)."""
    v = [x for x in values if is_finite_number(x) and x > 0]
    return math.exp(sum(math.log(x) for x in v) / len(v)) if v else math.nan


def spans_decades(values: Iterable[Any], factor: float = 100.0) -> bool:
    """Whether positive values range over at least ``factor`` (a log axis reads them better)."""
    v = [x for x in values if is_finite_number(x) and x > 0]
    return bool(v) and max(v) / min(v) >= factor
