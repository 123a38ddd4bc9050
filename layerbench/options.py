"""What a measurement is asked to do: the timing and energy options, each with its type and bounds.

This module is the one place where an option's allowed values are written down.  The timer and the
energy meter take these dataclasses, and the sweep-file parser reads its ``[timing]`` and
``[energy]`` schema off them (``option_schema``), so a bound is never checked in two places.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

TIMING_MODES = ("cold", "hot")
COOLDOWN_WORDS = ("auto", "none")


@dataclass(frozen=True)
class Bound:
    """An option's type and range; ``file_min`` is a stricter floor that applies to sweep files."""

    kind: str                       # "int" | "number" | "bool" | "mode" | "cooldown"
    desc: str
    min: float | None = None
    exclusive_min: bool = False
    file_min: float | None = None
    file_why: str = ""


def option(default: Any, bound: Bound) -> Any:
    return field(default=default, metadata={"bound": bound})


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_value(name: str, value: Any, bound: Bound, in_file: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` when ``value`` breaks ``bound``."""
    if bound.kind == "bool":
        ok = isinstance(value, bool)
    elif bound.kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif bound.kind == "mode":
        ok = value in TIMING_MODES
    elif bound.kind == "cooldown":
        ok = value in COOLDOWN_WORDS if isinstance(value, str) else _is_number(value) and value >= 0
    else:
        ok = _is_number(value) and math.isfinite(value)
    if not ok:
        raise ValueError(f"{name}: must be {bound.desc}, got {value!r}")
    if bound.min is not None:
        if value < bound.min or (bound.exclusive_min and value == bound.min):
            raise ValueError(f"{name}: must be {bound.desc}, got {value!r}")
    if in_file and bound.file_min is not None and value < bound.file_min:
        raise ValueError(f"{name}: must be >= {bound.file_min}{bound.file_why}, got {value!r}")


def validate(config: Any, prefix: str) -> None:
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is None and f.default is None:
            continue
        check_value(f"{prefix}.{f.name}", value, f.metadata["bound"])


def option_schema(cls: type) -> dict[str, Bound]:
    """Option name -> its bound, read off a config dataclass (the sweep parser's schema)."""
    return {f.name: f.metadata["bound"] for f in dataclasses.fields(cls)}


def _int(lo: int) -> Bound:
    return Bound("int", f"an integer >= {lo}", min=lo)


def _num(lo: float, exclusive: bool = False, **kw: Any) -> Bound:
    return Bound("number", f"a number {'>' if exclusive else '>='} {lo:g}", min=lo, exclusive_min=exclusive, **kw)


@dataclass(frozen=True)
class TimingConfig:
    mode: str = option("cold", Bound("mode", '"cold" or "hot"'))
    min_samples: int = option(10, _int(1))
    min_time_s: float = option(0.5, _num(0))
    max_noise: float = option(0.005, _num(0, exclusive=True))
    max_time_s: float = option(15.0, _num(0, exclusive=True))
    fixed_samples: int | None = option(None, _int(1))
    warmup: int = option(3, _int(0))
    graph: bool = option(True, Bound("bool", "true or false (hot mode: try CUDA-graph capture first)"))

    def __post_init__(self) -> None:
        validate(self, "timing")


_WINDOW_WHY = " (NVML's energy counter updates about every 100 ms and a window needs >= 10 updates)"


@dataclass(frozen=True)
class EnergyConfig:
    window_s: float = option(1.0, _num(0, exclusive=True, file_min=1.0, file_why=_WINDOW_WHY))
    min_updates: int = option(10, Bound("int", "an integer >= 1", min=1, file_min=2))
    windows: int = option(3, _int(1))
    warmup_s: float = option(0.5, _num(0))
    cooldown: str | float = option("auto", Bound("cooldown", '"auto", "none" or seconds >= 0'))
    cooldown_tolerance_c: float = option(3.0, _num(0, exclusive=True))
    cooldown_max_s: float = option(60.0, _num(0))
    idle_baseline: bool = option(True, Bound("bool", "true or false"))
    idle_s: float = option(2.0, _num(0, exclusive=True))            # idle baseline window, at least
    poll_s: float = option(0.005, _num(0, exclusive=True))          # sleep between counter reads
    # Lengthen windows until the spread over windows <= target_spread.
    adaptive: bool = option(False, Bound("bool", "true or false"))
    target_spread: float = option(0.02, _num(0, exclusive=True))
    max_window_s: float = option(8.0, _num(0, exclusive=True))
    max_retries: int = option(2, _int(0))                           # windows redone (counter reset, queue ran dry)

    def __post_init__(self) -> None:
        validate(self, "energy")
        if self.max_window_s < self.window_s:
            raise ValueError(f"energy.max_window_s: must be >= window_s ({self.window_s}), "
                             f"got {self.max_window_s}")
