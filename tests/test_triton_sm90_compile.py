"""The TMA convolution and the 1x1 convolutions' GEMMs (NCHW per image, strided NHWC gathering) as
Triton compiles them for Hopper (sm_90), without a GPU: every config's warpgroup MMA takes both operands from shared memory,
where the copies put them, and no config spills registers to local memory.  A patch fed to the
MMA from registers (one copy out of shared memory every k step) ran the 3x3 layers at 0.66-0.76x
cuDNN; only the compiled code shows it.

The report runs in its own process: the tests run Triton's interpreter, whose kernels cannot be
compiled for a GPU target.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "triton_compile_report.py"


def test_tma_convolution_feeds_the_mma_from_shared_memory_without_spilling() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(TOOL), "conv_tma"], capture_output=True, text=True, env=env,
                         cwd=TOOL.parents[1], timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    kernels = [line for line in run.stdout.splitlines() if line.startswith("conv TMA stride")]
    assert len(kernels) >= 40, run.stdout[-2000:]  # both strides, both outputs, every config and patch width
    assert any(" NCHW out " in line for line in kernels) and any(" RGB padded " in line for line in kernels)
    for line in kernels:
        assert "mma_operands=smem+smem" in line, line
        assert re.search(r"local_mem_ops=0\b", line), line  # no register spills


def test_pointwise_gemms_run_on_the_warpgroup_mma_without_spilling() -> None:
    """The NCHW per-image GEMM's B tiles of channel rows with the pixels contiguous (MN-major), and
    the strided NHWC GEMM's A tiles gathered pixel by pixel, still reach the warpgroup MMA from
    shared memory, filled by asynchronous copies."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(TOOL), "pointwise"], capture_output=True, text=True, env=env,
                         cwd=TOOL.parents[1], timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    kernels = [line for line in run.stdout.splitlines() if line.startswith("pointwise N")]
    assert sum(line.startswith("pointwise NHWC strided gather") for line in kernels) >= 3, run.stdout[-2000:]
    assert sum(line.startswith("pointwise NCHW") for line in kernels) >= 3, run.stdout[-2000:]
    for line in kernels:
        assert "wgmma=1" in line and "mma_operands=smem+smem" in line, line
        assert re.search(r"async_copies=[1-9]", line), line
        assert re.search(r"local_mem_ops=0\b", line), line
