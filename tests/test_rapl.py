"""RAPL from a fake powercap tree: domain discovery, wrap-around, unreadable counters."""

from __future__ import annotations

from pathlib import Path

import pytest

from layerbench.measure.rapl import Rapl


def domain(root: Path, name: str, label: str, energy: int, max_range: int = 262_143_328_850) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "name").write_text(label + "\n")
    (d / "energy_uj").write_text(f"{energy}\n")
    (d / "max_energy_range_uj").write_text(f"{max_range}\n")
    return d


def test_discovers_packages_and_dram_only(tmp_path: Path) -> None:
    domain(tmp_path, "intel-rapl:0", "package-0", 1000)
    domain(tmp_path, "intel-rapl:0:0", "core", 10)
    domain(tmp_path, "intel-rapl:0:1", "dram", 20)
    domain(tmp_path, "intel-rapl:1", "package-1", 3000)
    domain(tmp_path, "intel-rapl:2", "psys", 99)
    (tmp_path / "intel-rapl-mmio:0").mkdir()
    r = Rapl(tmp_path)
    assert r.available and r.reason is None
    assert [d.name for d in r.domains] == ["package-0", "package-0/dram", "package-1"]
    assert r.snapshot().energy_uj == {"package-0": 1000, "package-0/dram": 20, "package-1": 3000}


def test_joules_with_wraparound(tmp_path: Path) -> None:
    p0 = domain(tmp_path, "intel-rapl:0", "package-0", 999_000, max_range=1_000_000)
    p1 = domain(tmp_path, "intel-rapl:1", "package-1", 5_000_000)
    r = Rapl(tmp_path)
    a = r.snapshot()
    (p0 / "energy_uj").write_text("4000\n")        # wrapped: 1000 + 4000 uJ
    (p1 / "energy_uj").write_text("7500000\n")     # +2.5 J
    b = r.snapshot()
    assert r.joules(a, b) == {"package-0": pytest.approx(0.005), "package-1": pytest.approx(2.5)}
    assert r.total_joules(a, b) == pytest.approx(2.505)


def test_missing_tree_is_unavailable(tmp_path: Path) -> None:
    r = Rapl(tmp_path / "nope")
    assert not r.available and "does not exist" in str(r.reason)
    empty = Rapl(tmp_path)
    assert not empty.available and "no intel-rapl package domains" in str(empty.reason)


def test_unreadable_counter_is_unavailable_with_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    domain(tmp_path, "intel-rapl:0", "package-0", 1)
    real = Path.read_text

    def guarded(self: Path, *args: object, **kwargs: object) -> str:
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", guarded)  # we run as root here, so chmod would not stop a read
    r = Rapl(tmp_path)
    assert not r.available and "not readable" in str(r.reason) and "CVE-2020-8694" in str(r.reason)


def test_garbage_counter_is_unavailable(tmp_path: Path) -> None:
    d = domain(tmp_path, "intel-rapl:0", "package-0", 1)
    (d / "energy_uj").write_text("n/a\n")
    r = Rapl(tmp_path)
    assert not r.available and "cannot read" in str(r.reason)
