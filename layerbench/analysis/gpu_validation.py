"""Validation of runs over several GPUs (``layerbench validate-gpus ONE MANY``).

``ONE`` is a run on one GPU (alone: no other GPU of the run busy), ``MANY`` the same sweep on N GPUs
(``--gpus all`` or ``--ray``).  They must give the same records:

* **keys**: the same (point, implementation) configurations (``config_hash``), none missing or extra;
* **correctness**: the same status for each (an ``ok`` on one GPU is ``ok`` on N);
* **time**: each median within noise: ``|t_N - t_1| <= max(time_tolerance * t_1, spread * IQR)``
  with the larger of the two records' interquartile ranges;
* **energy**: J/launch of a record measured while other GPUs of the run were busy (``busy_gpus``
  names more than its own) within ``energy_tolerance`` (3 %) of the same record measured alone:
  neighbours heat the board and share the host's power, and this says whether that moves J/launch.

Rows that are not ``ok`` on both sides are compared by status only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

ENERGY_TOLERANCE = 0.03
TIME_TOLERANCE = 0.05
IQR_SPREAD = 2.0


@dataclass
class Finding:
    check: str  # keys | status | time | energy
    key: str  # config_hash
    what: str  # "conv1 triton fp32: ..." the sentence shown
    ok: bool


@dataclass
class GpuValidation:
    findings: list[Finding] = field(default_factory=list)
    compared: dict[str, int] = field(default_factory=dict)  # per check: how many rows it compared

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok]

    @property
    def passed(self) -> bool:
        return not self.failures

    def add(self, check: str, key: str, what: str, ok: bool) -> None:
        self.compared[check] = self.compared.get(check, 0) + 1
        self.findings.append(Finding(check, key, what, ok))


def _name(row: Mapping[str, Any]) -> str:
    axes = row.get("point_axes") or ""
    return f"{row.get('name') or row.get('layer')} {row.get('impl')} {row.get('dtype')} {axes}".strip()


def _number(row: Mapping[str, Any], key: str) -> float | None:
    v = row.get(key)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def with_neighbours(row: Mapping[str, Any]) -> bool:
    """Whether another GPU of the run was busy while this record was measured."""
    busy = row.get("busy_gpus")
    if not isinstance(busy, (list, tuple)):
        return False
    own = row.get("gpu_index")
    if own is None:
        return len(busy) > 1
    # A local run names the busy GPUs by index, a Ray run by "host:index".
    names = {own, f"{row.get('host')}:{own}"}
    return any(b not in names for b in busy)


def time_agrees(t1: float, tn: float, iqr1: float | None, iqrn: float | None,
                tolerance: float = TIME_TOLERANCE, spread: float = IQR_SPREAD) -> tuple[bool, float]:
    """(within noise, the allowed difference) for two median times."""
    noise = max(iqr1 or 0.0, iqrn or 0.0)
    allowed = max(tolerance * t1, spread * noise)
    return abs(tn - t1) <= allowed, allowed


def validate_gpu_runs(one: Iterable[Mapping[str, Any]], many: Iterable[Mapping[str, Any]],
                      energy_tolerance: float = ENERGY_TOLERANCE,
                      time_tolerance: float = TIME_TOLERANCE) -> GpuValidation:
    """Compare the records of a one-GPU run (``one``) with those of an N-GPU run (``many``)."""
    a = {str(r["config_hash"]): r for r in one}
    b = {str(r["config_hash"]): r for r in many}
    out = GpuValidation()
    for key in sorted(a.keys() - b.keys()):
        out.add("keys", key, f"{_name(a[key])}: in the one-GPU run only", False)
    for key in sorted(b.keys() - a.keys()):
        out.add("keys", key, f"{_name(b[key])}: in the N-GPU run only", False)
    for key in sorted(a.keys() & b.keys()):
        r1, rn = a[key], b[key]
        name = _name(r1)
        out.add("keys", key, name, True)
        s1, sn = r1.get("status"), rn.get("status")
        out.add("status", key, f"{name}: {s1} on one GPU, {sn} on N", s1 == sn)
        if s1 != "ok" or sn != "ok":
            continue
        t1, tn = _number(r1, "time_median_s"), _number(rn, "time_median_s")
        if t1 is not None and tn is not None and t1 > 0:
            ok, allowed = time_agrees(t1, tn, _number(r1, "time_iqr_s"), _number(rn, "time_iqr_s"),
                                      time_tolerance)
            out.add("time", key, f"{name}: {t1 * 1e6:.2f} us on one GPU, {tn * 1e6:.2f} us on N "
                                 f"({(tn / t1 - 1) * 100:+.1f} %, allowed +-{allowed / t1 * 100:.1f} %)", ok)
        e1, en = _number(r1, "energy_j_per_launch"), _number(rn, "energy_j_per_launch")
        if e1 is not None and en is not None and e1 > 0 and with_neighbours(rn) and not with_neighbours(r1):
            rel = en / e1 - 1
            out.add("energy", key, f"{name}: {e1:.4g} J/launch alone, {en:.4g} with GPUs "
                                   f"{rn.get('busy_gpus')} busy ({rel * 100:+.2f} %, allowed "
                                   f"+-{energy_tolerance * 100:g} %)", abs(rel) <= energy_tolerance)
    return out


def format_gpu_validation(result: GpuValidation, limit: int = 20) -> str:
    lines = []
    for check in ("keys", "status", "time", "energy"):
        n = result.compared.get(check, 0)
        bad = [f for f in result.failures if f.check == check]
        verdict = "no rows to compare" if n == 0 else ("PASS" if not bad else f"FAIL ({len(bad)} of {n})")
        lines.append(f"{check:7s} {verdict}" + (f"  ({n} compared)" if n and not bad else ""))
        for f in bad[:limit]:
            lines.append(f"    {f.what}")
        if len(bad) > limit:
            lines.append(f"    ... {len(bad) - limit} more")
    if not result.compared.get("energy"):
        lines.append("note: no record of the N-GPU run was measured with energy while other GPUs were "
                     "busy (busy_gpus), so J/launch alone vs busy was not compared")
    return "\n".join(lines)
