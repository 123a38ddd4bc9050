"""The flags an energy measurement carries (a record's ``energy_flags``) and what each says about
its J/launch.

The meter sets them (``energy``, ``meters``); the tables that show or judge J/launch print them
beside the value with these meanings, so that a number measured while the card held its power
cap, or while the launch queue ran dry, is never read as a clean one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from layerbench.measure.energy import UNSTEADY_SPREAD

MEANINGS: dict[str, str] = {
    "throttled": "a power or thermal cap (or another throttle reason) held the GPU during a window: its clocks "
                 "dropped, so the J/launch is what the kernel costs at that cap",
    "queue-ran-dry": "the launch queue emptied inside a window: idle time is in the energy",
    "unsteady": f"the windows' J/launch differ by more than {100 * UNSTEADY_SPREAD:.0f} %",
    "other-processes": "another process used the GPU during a window",
    "cooldown-not-reached": "the GPU had not cooled to its idle temperature when the windows began",
    "counter-reset": "the energy counter went backwards in a window, which was measured again",
    "window-redone": "a window was void (it counted no launch, or its launch queue ran dry) and was measured "
                     "again",
    "few-power-updates": "the power reading changed fewer times in a window than the meter asks for",
}
# Not a flag on a number: energy was not measured (the record has no J/launch).
NOT_MEASURED = "unavailable"


def flags_of(value: object) -> list[str]:
    """The flags of a record's ``energy_flags`` as loaded (a list, an array, JSON text from CSV,
    names joined by commas as tables write them, or nothing), without ``unavailable``."""
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("[") else [f.strip() for f in text.split(",") if f.strip()]
    if not isinstance(value, Iterable):  # None, NaN, pandas' NA: a record without energy
        return []
    return [str(f) for f in value if str(f) != NOT_MEASURED]


def marked(text: str, value: object) -> str:
    """``text`` followed by the flags of ``value`` (an ``energy_flags`` as ``flags_of`` takes it) in
    parentheses, if any."""
    names = list(dict.fromkeys(flags_of(value)))
    return f"{text} ({', '.join(names)})" if names else text


def legend(values: Iterable[object]) -> str:
    """One line naming what each flag of ``values`` (``energy_flags`` as ``flags_of`` takes them)
    means (empty when there are none)."""
    names = sorted({f for v in values for f in flags_of(v)})
    if not names:
        return ""
    return "Energy flags: " + "; ".join(f"{n}: {MEANINGS.get(n, 'a flag this version does not describe')}"
                                        for n in names) + "."
