"""The FFT convolution (fft_conv.cu), modelled on the CPU (kernels/cupy/models.py), against
NumPy's FFT and torch's conv2d; its plan (kernels/cupy/fft_plan.py) and constants."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from host_cuda_build import assert_constants_match
from kernels.cupy import fft_plan
from kernels.cupy import sources
from kernels.cupy.models import model_fft_forward, model_fft_inverse, model_fft_weight
from layerbench.layers import Conv2d


@pytest.mark.parametrize("log_n", list(fft_plan.LOG_SIZES))
def test_model_fft_transforms_match_numpy(log_n: int) -> None:
    n = 1 << log_n
    rng = np.random.default_rng(log_n)
    x = rng.standard_normal((n - 5, n - 3))
    spec = model_fft_forward(x, 1, log_n)
    grid = np.zeros((n, n))
    grid[1:1 + x.shape[0], 1:1 + x.shape[1]] = x
    np.testing.assert_allclose(spec, np.fft.rfft2(grid), atol=1e-9 * n * n)
    back = model_fft_inverse(spec, n - 1, n - 2, log_n)
    np.testing.assert_allclose(back, grid[:n - 1, :n - 2], atol=1e-12 * n * n)


@pytest.mark.parametrize("log_n", list(fft_plan.LOG_SIZES))
@pytest.mark.parametrize("window", [(1, 1), (3, 5), (7, 2), (16, 16)])
def test_model_fft_weight_matches_the_plane_transform(log_n: int, window: tuple[int, int]) -> None:
    """The weight's spectrum from its taps equals the transform of the zero-padded plane."""
    n = 1 << log_n
    if max(window) > n:
        pytest.skip("a window larger than the transform")
    w = np.random.default_rng(n + window[0]).standard_normal(window)
    grid = np.zeros((n, n))
    grid[:window[0], :window[1]] = w
    np.testing.assert_allclose(model_fft_weight(w, log_n), np.fft.rfft2(grid), atol=1e-10 * n)
    np.testing.assert_allclose(model_fft_weight(w, log_n), model_fft_forward(w, 0, log_n), atol=1e-10 * n)


def test_fft_weight_takes_small_windows_within_shared_memory() -> None:
    assert fft_plan.fft_plan(Conv2d(2, 3, 4, 30, 30, 16, 16)).pruned_weight
    assert not fft_plan.fft_plan(Conv2d(2, 3, 4, 30, 30, 17, 17)).pruned_weight
    for log_n in fft_plan.LOG_SIZES:
        assert fft_plan.weight_shared_bytes(1 << log_n, fft_plan.PRUNED_TAPS) <= 48 * 1024  # no opt-in needed


@pytest.mark.parametrize("spec", [Conv2d(2, 3, 4, 13, 9, 3, 5, padding=2), Conv2d(1, 2, 3, 16, 16, 16, 16),
                                  Conv2d(2, 2, 2, 5, 7, 2, 3), Conv2d(1, 1, 2, 30, 30, 7, 7, padding=1)])
def test_model_fft_conv_matches_torch(spec: Conv2d) -> None:
    """Spectra of x and w, the per-frequency product with conj(w), the cropped inverse: the
    convolution, with padding, at every transform size fft_plan picks."""
    plan = fft_plan.fft_plan(spec)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(spec.input_shape)
    w = rng.standard_normal(spec.weight_shape)
    xs = np.array([[model_fft_forward(x[b, c], spec.padding, plan.log_n) for c in range(spec.in_channels)]
                   for b in range(spec.batch)])
    ws = np.array([[model_fft_forward(w[k, c], 0, plan.log_n) for c in range(spec.in_channels)]
                   for k in range(spec.out_channels)])
    ys = np.einsum("bcuv,kcuv->bkuv", xs, np.conj(ws))
    out = np.array([[model_fft_inverse(ys[b, k], spec.out_height, spec.out_width, plan.log_n)
                     for k in range(spec.out_channels)] for b in range(spec.batch)])
    want = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=spec.padding).numpy()
    np.testing.assert_allclose(out, want, atol=1e-10)


@pytest.mark.parametrize("spec", [Conv2d(2, 3, 2, 30, 23, 5, 5, padding=2), Conv2d(1, 2, 3, 17, 40, 3, 3),
                                  Conv2d(1, 1, 1, 16, 16, 7, 7, padding=3)])
def test_model_overlap_save_tiles_match_torch(spec: Conv2d) -> None:
    """Planes larger than the largest transform (here 16, to keep the model small): each tile's
    input from its origin, the product, the inverse's step x step outputs put in place."""
    plan = fft_plan.fft_plan(spec, largest=16)
    assert plan.n == 16 and plan.tiles > 1, plan
    rng = np.random.default_rng(1)
    x = rng.standard_normal(spec.input_shape)
    w = rng.standard_normal(spec.weight_shape)
    origins = [(ty * plan.step, tx * plan.step) for ty in range(plan.tiles_h) for tx in range(plan.tiles_w)]
    xs = np.array([[model_fft_forward(x[b, c], spec.padding, plan.log_n, o) for c in range(spec.in_channels)]
                   for b in range(spec.batch) for o in origins])
    ws = np.array([[model_fft_forward(w[k, c], 0, plan.log_n) for c in range(spec.in_channels)]
                   for k in range(spec.out_channels)])
    ys = np.einsum("bcuv,kcuv->bkuv", xs, np.conj(ws))
    out = np.full((spec.batch, spec.out_channels, spec.out_height, spec.out_width), np.nan)
    for image, (b, (oy, ox)) in enumerate((b, o) for b in range(spec.batch) for o in origins):
        rows, cols = min(plan.step, spec.out_height - oy), min(plan.step, spec.out_width - ox)
        for k in range(spec.out_channels):
            out[b, k, oy:oy + rows, ox:ox + cols] = model_fft_inverse(ys[image, k], rows, cols, plan.log_n)
    want = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=spec.padding).numpy()
    np.testing.assert_allclose(out, want, atol=1e-10)  # every output written once: no NaN left


def test_fft_plan_sizes_and_limits() -> None:
    plan = fft_plan.fft_plan
    assert [plan(Conv2d(128, 3, 96, h, h, k, k)).n for h, k in ((128, 11), (64, 9), (32, 9), (16, 7), (13, 3), (27, 5))] \
        == [128, 64, 32, 16, 16, 32]
    assert plan(Conv2d(1, 1, 1, 30, 28, 3, 3, padding=1)).n == 32  # padding counts
    assert plan(Conv2d(1, 1, 1, 31, 28, 3, 3, padding=1)).n == 64
    assert plan(Conv2d(1, 1, 1, 3, 3, 3, 3)).n == 16  # the smallest size instantiated
    tiled = plan(Conv2d(1, 1, 1, 224, 224, 3, 3))  # overlap-save: 126 outputs a tile
    assert (tiled.n, tiled.tiles_h, tiled.tiles_w, tiled.step, tiled.images) == (128, 2, 2, 126, 4)
    tiled = plan(Conv2d(2, 1, 1, 300, 140, 11, 11, padding=5))
    assert (tiled.tiles_h, tiled.tiles_w, tiled.step, tiled.images) == (3, 2, 118, 12)
    with pytest.raises(Exception, match="windows up to 64"):
        plan(Conv2d(1, 1, 1, 300, 300, 65, 65))
    with pytest.raises(Exception, match="stride 1"):
        plan(Conv2d(1, 1, 1, 32, 32, 3, 3, stride=2))
    for log_n in fft_plan.LOG_SIZES:
        p = plan(Conv2d(1, 1, 1, 1 << log_n, 1 << log_n, 1, 1))
        assert p.freqs % fft_plan.FT == 0  # fft_cgemm's 16-byte halves never straddle a tile
    for log_n in fft_plan.LOG_SIZES:  # fits an A100's opt-in maximum
        assert fft_plan.transform_shared_bytes(1 << log_n) <= 163 * 1024
    assert list(fft_plan.LOG_SIZES) == list(sources.FFT_LOG_SIZES)


def test_fft_first_guess() -> None:
    """The thesis's layers at batch 128 are worth timing both ways; a 1x1 convolution is not."""
    for h, c, k, ks in ((128, 3, 96, 11), (64, 64, 128, 9), (32, 128, 128, 9), (16, 128, 128, 7),
                        (13, 384, 384, 3), (27, 192, 192, 5)):
        assert fft_plan.fft_plan(Conv2d(128, c, k, h, h, ks, ks)).worth_timing()
    assert not fft_plan.fft_plan(Conv2d(128, 64, 64, 32, 32, 1, 1)).worth_timing()


def test_fft_constants_match_the_kernel() -> None:
    text = (sources.KERNEL_DIR / "fft_conv.cu").read_text()
    assert_constants_match("fft_conv.cu", {name: getattr(fft_plan, name)
                                           for name in ("GEMM_THREADS", "FT", "BT", "KT", "CT", "GEMM_STAGES")})
    # Transform's threads and planes per block, written as in the kernel, against the plan's.
    assert "THREADS = LOGN >= 7 ? 512 : 256;" in text
    assert "PLANES = LOGN <= 5 ? 512 >> LOGN : (LOGN == 6 ? 4 : 1);" in text
    for log_n in fft_plan.LOG_SIZES:
        n = 1 << log_n
        assert fft_plan.transform_threads(n) == (512 if log_n >= 7 else 256)
        assert fft_plan.planes_per_block(n) == (512 >> log_n if log_n <= 5 else (4 if log_n == 6 else 1))
