"""Bring the GPU to a defined thermal state before a trial (Zeus-style thermally stable profiling).

Power draw rises with temperature (leakage, fans), so a trial that follows a hot one reads high.
Before each trial the GPU sits idle until it is back near its idle temperature; the wait, the
temperatures and whether the target was reached are recorded with the result.  The temperature
is polled once a second: NVML reports whole degrees, and queries cost milliseconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

from layerbench.measure.nvml import NvmlDevice

POLL_S = 1.0
# With no idle temperature known yet, "auto" waits until the temperature stops falling for this long.
STABLE_S = 5.0


@dataclass(frozen=True)
class Cooldown:
    policy: str                 # "auto" | "fixed" | "none"
    waited_s: float
    temp_start_c: float | None
    temp_end_c: float | None
    target_c: float | None      # idle temperature + tolerance ("auto" with a known idle temperature)
    reached: bool               # False: stopped by cooldown_max_s before the target (flagged by callers)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def cool_down(dev: NvmlDevice | None, policy: str | float, idle_temp_c: float | None,
              tolerance_c: float, max_s: float,
              clock: Callable[[], float], sleep: Callable[[float], None]) -> Cooldown:
    """Wait (GPU idle; the caller has synchronised) according to ``policy``; never touches clocks."""

    def temp() -> float | None:
        if dev is None:
            return None
        r = dev.temperature_c()
        return r.value if r.ok else None

    t0 = clock()
    start = temp()
    if policy == "none":
        return Cooldown("none", 0.0, start, start, None, True)
    if not isinstance(policy, str):
        sleep(float(policy))
        return Cooldown("fixed", clock() - t0, start, temp(), None, True)
    if start is None:
        return Cooldown("auto", 0.0, None, None, None, False)

    if idle_temp_c is not None:
        target = idle_temp_c + tolerance_c
        now = start
        while now is not None and now > target and clock() - t0 < max_s:
            sleep(POLL_S)
            now = temp()
        return Cooldown("auto", clock() - t0, start, now, target, now is not None and now <= target)

    # No idle temperature yet: wait until the temperature has stopped falling for STABLE_S.
    history = [(t0, start)]
    while clock() - t0 < max_s:
        sleep(POLL_S)
        now = temp()
        if now is None:
            break
        history.append((clock(), now))
        old = [v for t, v in history if t <= history[-1][0] - STABLE_S]
        if old and now >= old[-1]:
            return Cooldown("auto", clock() - t0, start, now, None, True)
    return Cooldown("auto", clock() - t0, start, history[-1][1], None, False)
