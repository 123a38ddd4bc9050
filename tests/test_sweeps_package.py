"""The shipped sweep files: every one is package data (so a wheel carries it), and ``resolve``
finds it by the paths the README uses, from any directory."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import pytest

from sweeps import SWEEP_DIR, resolve

ROOT = Path(__file__).resolve().parents[1]


def test_every_sweep_file_is_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["sweeps"]
    files = [p.relative_to(SWEEP_DIR).as_posix() for p in SWEEP_DIR.rglob("*")
             if p.is_file() and p.suffix in (".toml", ".md")]
    assert files
    missing = [f for f in files if not any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)]
    assert not missing, f"not shipped in the wheel: {missing}; add their folder to package-data"


@pytest.mark.parametrize("name", ["sweeps/thesis/conv_kernel_size.toml", "thesis/conv_kernel_size.toml"])
def test_resolve_finds_shipped_sweeps_from_elsewhere(name: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve(name) == SWEEP_DIR / "thesis" / "conv_kernel_size.toml"


def test_resolve_prefers_existing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweeps" / "thesis").mkdir(parents=True)
    own = Path("sweeps/thesis/conv_kernel_size.toml")
    own.write_text("# the user's own copy\n")
    assert resolve(own) == own
    assert resolve(tmp_path / "absent.toml") == tmp_path / "absent.toml"  # absolute: as given
    assert resolve("nowhere/absent.toml") == Path("nowhere/absent.toml")  # unknown: as given
