"""relu.cu's bit trick, modelled on the CPU (kernels/cupy/models.py), against torch.relu on
every 16-bit pattern and on random and special fp32 patterns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels.cupy.models import BITS, relu_bits


def _patterns(name: str) -> tuple[np.ndarray, torch.Tensor]:
    """Bit patterns (unsigned, int64) and their values: all of them for 16-bit types; for fp32
    random ones plus the special values."""
    sign, inf, tdt, idt, bits = BITS[name]
    if bits == 16:
        u = np.arange(1 << 16, dtype=np.int64)
    else:
        rng = np.random.default_rng(0)
        special = [0, sign, inf, inf | sign, inf + 1, 0x7FFFFFFF, 1, sign | 1, 0x00800000, 0x3F800000, 0xBF800000]
        u = np.unique(np.concatenate([rng.integers(0, 1 << 32, 200_000, dtype=np.int64),
                                      np.array(special, dtype=np.int64)]))
    signed = np.where(u >= (1 << (bits - 1)), u - (1 << bits), u)
    values = torch.from_numpy(signed).to(idt).view(tdt)
    return u, values



@pytest.mark.parametrize("name", sorted(BITS))
def test_relu_bits_match_torch(name: str) -> None:
    sign, inf, tdt, idt, bits = BITS[name]
    u, values = _patterns(name)
    out = relu_bits(u, name)
    signed = np.where(out >= (1 << (bits - 1)), out - (1 << bits), out)
    got = torch.from_numpy(signed).to(idt).view(tdt).double()
    want = torch.relu(values).double()
    both_nan = torch.isnan(got) & torch.isnan(want)
    assert bool(((got == want) | both_nan).all())
    assert torch.equal(torch.isnan(got), torch.isnan(want))
