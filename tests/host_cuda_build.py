"""Builds a tests/host_cuda harness: the harness's C++ with a kernels/cupy .cu file as its body
(the CUDA include left out; tests/host_cuda/cuda_shim.h shims the CUDA keywords).  Skips the test
where no C++17 compiler is found.  Also reads a kernel file's integer constants, which the Python
launchers and plans must repeat."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HARNESSES = ROOT / "tests" / "host_cuda"


def built(tmp_path: Path, harness: str, source: str, defines: list[str] = []) -> Path:  # noqa: B006 - never mutated
    """The binary of ``tests/host_cuda/<harness>.cpp`` with ``kernels/cupy/<source>`` as its body."""
    compiler = shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no C++ compiler to build the host check with")
    body = tmp_path / "body.cu"
    text = (ROOT / "kernels" / "cupy" / source).read_text()
    body.write_text("".join(line for line in text.splitlines(keepends=True)
                            if not line.startswith('#include "layerbench_common.cuh"')))
    binary = tmp_path / harness
    command = [compiler, "-std=c++17", "-O2", "-pthread", *defines, f'-DBODY="{body}"', "-o", str(binary),
               str(HARNESSES / f"{harness}.cpp")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return binary


def assert_constants_match(source: str, expected: dict[str, int]) -> None:
    """The ``constexpr int NAME = <literal>;`` lines of ``kernels/cupy/<source>`` named in
    ``expected`` hold the values the Python side uses."""
    found: dict[str, int] = {}
    for name, value in re.findall(r"constexpr int (\w+) = (\d+);", (ROOT / "kernels" / "cupy" / source).read_text()):
        assert found.setdefault(name, int(value)) == int(value), f"{source} sets {name} twice"
    assert {name: found.get(name) for name in expected} == expected, source
