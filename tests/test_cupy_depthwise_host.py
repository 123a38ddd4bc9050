"""depthwise.cu's kernels run on the CPU: their CUDA source compiled as host C++
(tests/host_cuda/cuda_shim.h shims the CUDA keywords) against a float64 direct convolution.  The
flat-run kernels (NHWC and NCHW): every block and thread in turn, strides 1 and 2, paddings 0-2,
planes and bands cut raggedly, runs and rows over several blocks, one, two or four NCHW columns a
thread.  The NCHW rows kernel: each block's threads as host threads meeting at its barriers,
every unrolled window and the loops, chunks of bands or of planes, walked by one block or one a
block (tests/host_cuda/depthwise_rows.cpp says what else).  Needs a C++17 compiler (skipped
without one)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from host_cuda_build import built


@pytest.mark.parametrize("arch", [None, 900], ids=["before-hopper", "hopper"])
def test_flat_kernel_source_on_the_cpu(tmp_path: Path, arch: int | None) -> None:
    """Built as for a GPU of compute capability ``arch`` (its L2 prefetches differ)."""
    binary = built(tmp_path, "depthwise_flat", "depthwise.cu", [f"-D__CUDA_ARCH__={arch}"] if arch else [])
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and " 0 bad," in result.stdout, result.stdout + result.stderr
    assert " 0 prefetches" not in result.stdout, "the kernel asked L2 for no input row"


def test_rows_kernel_source_on_the_cpu(tmp_path: Path) -> None:
    """The NCHW rows kernel, each block's threads as host threads that meet at its barriers."""
    binary = built(tmp_path, "depthwise_rows", "depthwise.cu")
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0 and " 0 bad, 0 misaligned granules, 0 unwaited" in result.stdout, (
        result.stdout + result.stderr)
