"""The Triton FFT convolution's plan (kernels/triton/fft_plan.py) on the CPU: its DFT matrices,
applied as the kernels apply them, against numpy.fft; sizes; refusals; tf32 rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kernels.triton.fft_plan import INT32_LIMIT, fft_plan, round_tf32
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d

# tf32 matrices: about 2^-11 relative per entry.
TF32_REL = 2e-3


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def forward_model(plan, plane: np.ndarray, offset: int, sign: int) -> np.ndarray:
    """[N, V] complex half spectrum of ``plane`` placed at (offset, offset), as steps 1-2 compute it."""
    h, w = plane.shape
    rows = plane @ plan.rows_forward(w, offset, sign).T.astype(np.float64)  # [h, 2V], 2v + ri
    stacked = np.concatenate([rows[:, 0::2], rows[:, 1::2]])  # [2h, V]: ri * h + h'
    spectrum = plan.columns_forward(h, offset, sign).astype(np.float64) @ stacked  # [2N, V]: 2u + ri
    return spectrum[0::2] + 1j * spectrum[1::2]


@pytest.mark.parametrize("spec", [Conv2d(1, 1, 1, 12, 12, 3, 3, padding=2),
                                  Conv2d(1, 1, 1, 9, 7, 2, 4, padding=1),  # N = 11, odd
                                  Conv2d(1, 1, 1, 16, 16, 5, 5)])
def test_forward_matrices_are_the_dft(spec: Conv2d) -> None:
    plan = fft_plan(spec)
    rng = np.random.default_rng(0)
    plane = rng.standard_normal((spec.height, spec.width))
    placed = np.zeros((plan.n, plan.n))
    p = spec.padding
    placed[p:p + spec.height, p:p + spec.width] = plane
    expected = np.fft.fft2(placed)[:, :plan.v]
    assert rel_err(forward_model(plan, plane, p, -1), expected) < TF32_REL
    assert rel_err(forward_model(plan, plane, p, +1), np.conj(expected)) < TF32_REL


@pytest.mark.parametrize("spec", [Conv2d(1, 1, 1, 12, 12, 3, 3, padding=2),
                                  Conv2d(1, 1, 1, 9, 7, 2, 4, padding=1)])
def test_whole_model_is_the_correlation(spec: Conv2d) -> None:
    """Forward both, multiply, then the inverse matrices (crop, 1/N^2): F.conv2d in float64."""
    plan = fft_plan(spec)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((spec.height, spec.width))
    w = rng.standard_normal((spec.kernel_h, spec.kernel_w))
    product = forward_model(plan, x, spec.padding, -1) * forward_model(plan, w, 0, +1)  # [N, V]
    stacked = np.concatenate([product.real, product.imag]).reshape(2, plan.n, plan.v)
    stacked = stacked.transpose(1, 0, 2).reshape(2 * plan.n, plan.v)  # rows 2u + ri
    columns = plan.columns_inverse().astype(np.float64) @ stacked  # [2 OH, V]: ri * OH + oh
    oh = spec.out_height
    interleaved = np.empty((oh, 2 * plan.v))
    interleaved[:, 0::2], interleaved[:, 1::2] = columns[:oh], columns[oh:]
    y = interleaved @ plan.rows_inverse().T.astype(np.float64)  # [OH, OW]
    expected = F.conv2d(torch.tensor(x)[None, None], torch.tensor(w)[None, None],
                        padding=spec.padding)[0, 0].numpy()
    assert y.shape == expected.shape
    assert rel_err(y, expected) < 2 * TF32_REL


def test_sizes() -> None:
    plan = fft_plan(Conv2d(128, 128, 128, 32, 32, 9, 9))
    assert (plan.n, plan.v, plan.freqs) == (32, 17, 544)
    assert plan.buffer_sizes()["x_spectrum"] == 2 * 544 * 128 * 128
    assert plan.buffer_sizes()["y_columns"] == 2 * 17 * 24 * 128 * 128
    assert fft_plan(Conv2d(1, 1, 1, 13, 9, 3, 3, padding=1)).n == 15


def test_refuses() -> None:
    with pytest.raises(Unsupported, match="stride 1"):
        fft_plan(Conv2d(1, 1, 1, 8, 8, 3, 3, stride=2))
    with pytest.raises(Unsupported, match="int32"):
        fft_plan(Conv2d(256, 1, 512, 128, 128, 100, 100))  # a product of 2.2e9 values


def test_round_tf32_is_nearest() -> None:
    one_ulp = 2.0**-10  # a tf32 ulp at 1.0
    values = np.array([1.0, 1 + one_ulp * 0.49, 1 + one_ulp * 0.51, -(1 + one_ulp * 0.51), 3.0e-3],
                      dtype=np.float32)
    rounded = round_tf32(values)
    assert rounded[0] == 1.0 and rounded[1] == 1.0
    assert rounded[2] == np.float32(1 + one_ulp) and rounded[3] == -np.float32(1 + one_ulp)
    assert abs(rounded[4] - values[4]) <= 3.0e-3 * 2.0**-11
    assert (round_tf32(values).view(np.uint32) & 0x1FFF == 0).all()
    assert INT32_LIMIT == 2**31
