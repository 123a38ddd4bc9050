"""Host CPU energy from Intel RAPL through the Linux powercap interface.

Reads every package domain (``intel-rapl:N``, plus its ``dram`` subdomain where present) under
``/sys/class/powercap``.  Each ``energy_uj`` counter wraps at ``max_energy_range_uj``; a
difference that goes backwards is taken as one wrap (the counters wrap after minutes to hours,
far longer than a measurement window).  Since 2020 kernels make ``energy_uj`` readable by root
only; an unreadable counter makes the reader unavailable with that reason, never a guess.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ROOT = Path("/sys/class/powercap")
_DOMAIN = re.compile(r"^intel-rapl:\d+(:\d+)?$")


@dataclass(frozen=True)
class Domain:
    path: Path
    name: str          # e.g. "package-0", "package-0/dram"
    max_range_uj: int


@dataclass(frozen=True)
class Snapshot:
    energy_uj: dict[str, int]


@dataclass
class Rapl:
    """The readable RAPL domains under ``root`` (injectable for tests)."""

    root: Path = DEFAULT_ROOT
    domains: list[Domain] = field(default_factory=list)
    reason: str | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.domains, self.reason = _discover(self.root)

    @property
    def available(self) -> bool:
        return self.reason is None

    def snapshot(self) -> Snapshot:
        """Read all counters; raises OSError if one became unreadable (callers turn it into a reason)."""
        return Snapshot({d.name: int((d.path / "energy_uj").read_text().strip()) for d in self.domains})

    def joules(self, a: Snapshot, b: Snapshot) -> dict[str, float]:
        """Energy per domain between two snapshots, each counter's wrap-around undone."""
        out = {}
        for d in self.domains:
            delta = b.energy_uj[d.name] - a.energy_uj[d.name]
            if delta < 0:
                delta += d.max_range_uj
            out[d.name] = delta * 1e-6
        return out

    def total_joules(self, a: Snapshot, b: Snapshot) -> float:
        """Packages plus DRAM (package counters do not include DRAM on servers)."""
        return sum(self.joules(a, b).values())


def _discover(root: Path) -> tuple[list[Domain], str | None]:
    if not root.is_dir():
        return [], f"{root} does not exist (no powercap/RAPL on this host)"
    domains = []
    for path in sorted(root.iterdir()):
        if not _DOMAIN.match(path.name):
            continue
        try:
            name = (path / "name").read_text().strip()
        except OSError as exc:
            return [], f"cannot read {path / 'name'}: {exc.strerror or exc}"
        sub = path.name.count(":") == 2
        if sub and name != "dram":
            continue  # core/uncore are already inside the package counter
        if sub:
            parent = (root / path.name.rsplit(":", 1)[0] / "name")
            try:
                name = f"{parent.read_text().strip()}/{name}"
            except OSError:
                name = f"{path.name}/{name}"
        elif not name.startswith("package"):
            continue  # e.g. "psys": overlaps the packages
        try:
            max_range = int((path / "max_energy_range_uj").read_text().strip())
            int((path / "energy_uj").read_text().strip())
        except PermissionError:
            return [], (f"{path / 'energy_uj'} is not readable by uid {os.getuid()} "
                        "(kernels restrict RAPL to root since CVE-2020-8694)")
        except (OSError, ValueError) as exc:
            return [], f"cannot read {path}: {exc}"
        domains.append(Domain(path, name, max_range))
    if not domains:
        return [], f"no intel-rapl package domains under {root}"
    return domains, None
