"""depthwise.cu's kernels run on the CPU: their CUDA source compiled as host C++
(tests/host_cuda/cuda_shim.h shims the CUDA keywords) against a float64 direct convolution.  The
flat-run kernels (NHWC and NCHW): every block and thread in turn, strides 1 and 2, paddings 0-2,
planes and bands cut raggedly, runs and rows over several blocks, one or four NCHW columns a
thread.  The NCHW rows kernel: each block's threads as host threads meeting at its barriers,
every unrolled window and the loops, chunks of bands or of planes, walked by one block or one a
block (tests/host_cuda/depthwise_rows.cpp says what else).  Needs a C++17 compiler (skipped
without one)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HARNESSES = ROOT / "tests" / "host_cuda"
SOURCE = ROOT / "kernels" / "cupy" / "depthwise.cu"


def _built(tmp_path: Path, harness: str, defines: list[str]) -> Path:
    """The harness compiled with depthwise.cu as its body (the CUDA include left out)."""
    compiler = shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no C++ compiler to build the host check with")
    body = tmp_path / "body.cu"
    body.write_text("".join(line for line in SOURCE.read_text().splitlines(keepends=True)
                            if not line.startswith('#include "layerbench_common.cuh"')))
    binary = tmp_path / harness
    command = [compiler, "-std=c++17", "-O2", "-pthread", *defines, f'-DBODY="{body}"', "-o", str(binary),
               str(HARNESSES / f"{harness}.cpp")]
    built = subprocess.run(command, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    return binary


@pytest.mark.parametrize("arch", [None, 900], ids=["before-hopper", "hopper"])
def test_flat_kernel_source_on_the_cpu(tmp_path: Path, arch: int | None) -> None:
    """Built as for a GPU of compute capability ``arch`` (its L2 prefetches differ)."""
    binary = _built(tmp_path, "depthwise_flat", [f"-D__CUDA_ARCH__={arch}"] if arch else [])
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and " 0 bad," in result.stdout, result.stdout + result.stderr
    assert " 0 prefetches" not in result.stdout, "the kernel asked L2 for no input row"


def test_rows_kernel_source_on_the_cpu(tmp_path: Path) -> None:
    """The NCHW rows kernel, each block's threads as host threads that meet at its barriers."""
    result = subprocess.run([str(_built(tmp_path, "depthwise_rows", []))], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0 and " 0 bad, 0 misaligned" in result.stdout, result.stdout + result.stderr
