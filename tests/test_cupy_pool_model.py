"""pool2d.cu's loops, modelled on the CPU (kernels/cupy/models.py), against torch's pooling in
float64; the band plan (kernels/cupy/pool_plan.py) and its constant in the kernel; the NCHW band
kernel's own source compiled as host C++ (tests/host_cuda/pool2d_nchw.cpp; needs a C++17
compiler, skipped without one)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from host_cuda_build import assert_constants_match, built
from kernels.cupy import pool_plan
from kernels.cupy.models import model_pool_nchw_band, model_pool_nhwc
from layerbench.layers import Pool2d
from layerbench.testing import pool2d_specs


def _torch_pool(spec: Pool2d, x: torch.Tensor) -> torch.Tensor:
    if spec.method == "max":
        return F.max_pool2d(x, spec.kernel, spec.stride, spec.padding)
    return F.avg_pool2d(x, spec.kernel, spec.stride, spec.padding, count_include_pad=True)


@given(spec=pool2d_specs(max_channels=6, max_hw=12), seed=st.integers(0, 2**31 - 1))
def test_model_pool_nhwc_matches_torch(spec, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(spec.input_shape, generator=gen, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(model_pool_nhwc(spec, x), _torch_pool(spec, x), rtol=1e-12, atol=1e-12)


@given(spec=pool2d_specs(max_channels=6, max_hw=12), itemsize=st.sampled_from([2, 4]), data=st.data(),
       seed=st.integers(0, 2**31 - 1))
def test_model_pool_nchw_band_matches_torch(spec, itemsize, data, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(spec.input_shape, generator=gen, dtype=torch.float64)
    mis = data.draw(st.integers(0, 16 // itemsize - 1), label="mis")
    rows = spec.batch * spec.channels * spec.out_height
    band_rows = data.draw(st.integers(1, rows), label="band_rows")
    threads = data.draw(st.sampled_from([1, 5, 32, pool_plan.THREADS]), label="threads")
    got = model_pool_nchw_band(spec, x, itemsize, mis, band_rows, threads)
    torch.testing.assert_close(got, _torch_pool(spec, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("shape", "kernel", "itemsize"), [
    ((128, 64, 55, 55), 3, 2), ((128, 64, 55, 55), 3, 4), ((128, 256, 13, 13), 2, 2), ((2, 3, 224, 224), 3, 4),
    ((1, 1, 3, 20000), 3, 4)])
def test_pool_band_plan(shape: tuple[int, int, int, int], kernel: int, itemsize: int) -> None:
    """Bands fill the H100 twice over where the map allows, and always fit the shared band."""
    spec = Pool2d(*shape, kernel, 2)
    rows = pool_plan.band_rows(spec, itemsize, sm_count=132)
    if shape[3] * kernel * itemsize > pool_plan.BAND_BYTES:
        assert rows is None  # one row's windows do not fit: the direct kernel
        return
    assert rows is not None and pool_plan.fits(spec, itemsize, rows)
    total = spec.batch * spec.channels * spec.out_height
    want = -(-total // (132 * pool_plan.RESIDENT_BLOCKS * pool_plan.WAVES))
    assert rows == want or (rows < want and not pool_plan.fits(spec, itemsize, rows + 1))


def test_band_bytes_match_the_kernel() -> None:
    assert_constants_match("pool2d.cu", {"BAND_BYTES": pool_plan.BAND_BYTES})


def test_band_kernel_source_on_the_cpu(tmp_path: Path) -> None:
    """The NCHW band kernel itself, each block's threads as host threads that meet at its barrier,
    with and without its checks for padding."""
    result = subprocess.run([str(built(tmp_path, "pool2d_nchw", "pool2d.cu"))], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0 and " 0 bad, 0 misaligned" in result.stdout, result.stdout + result.stderr
