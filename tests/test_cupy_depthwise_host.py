"""depthwise.cu's flat-run kernels (NHWC and NCHW) run on the CPU: their CUDA source compiled as
host C++ (tests/host_cuda/depthwise_flat.cpp shims the CUDA keywords) and every block and thread
executed in turn against a float64 direct convolution, strides 1 and 2, paddings 0-2, planes and
bands cut raggedly, runs and rows over several blocks, one or four NCHW columns a thread.  Needs
a C++17 compiler (skipped without one)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "tests" / "host_cuda" / "depthwise_flat.cpp"
SOURCE = ROOT / "kernels" / "cupy" / "depthwise.cu"


@pytest.mark.parametrize("arch", [None, 900], ids=["before-hopper", "hopper"])
def test_flat_kernel_source_on_the_cpu(tmp_path: Path, arch: int | None) -> None:
    """Built as for a GPU of compute capability ``arch`` (its L2 prefetches differ)."""
    compiler = shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no C++ compiler to build the host check with")
    body = tmp_path / "body.cu"
    body.write_text("".join(line for line in SOURCE.read_text().splitlines(keepends=True)
                            if not line.startswith('#include "layerbench_common.cuh"')))
    binary = tmp_path / "depthwise_flat"
    defines = [f"-D__CUDA_ARCH__={arch}"] if arch else []
    command = [compiler, "-std=c++17", "-O2", *defines, f'-DBODY="{body}"', "-o", str(binary), str(HARNESS)]
    built = subprocess.run(command, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and " 0 bad," in result.stdout, result.stdout + result.stderr
    assert " 0 prefetches" not in result.stdout, "the kernel asked L2 for no input row"
