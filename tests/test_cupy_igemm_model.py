"""The implicit GEMM (igemm.cu), modelled on the CPU (kernels/cupy/models.py): loaders, tiles,
split-K, groups and epilogue against torch's conv2d (per-axis stride and padding, dilation, groups)
and linear in float64, and the split choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from kernels.cupy import igemm_plan
from kernels.cupy.igemm_plan import BM, BN
from kernels.cupy.models import epilogue_map, model_igemm
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d
from layerbench.testing import conv2d_specs, linear_specs


@pytest.mark.parametrize("tensor_cores", [False, True], ids=["simt", "mma"])
def test_epilogue_covers_tile_once(tensor_cores: bool) -> None:
    rows, cols = epilogue_map(tensor_cores)
    assert len(rows) == BM * BN
    assert len(np.unique(rows * BN + cols)) == BM * BN



def _conv_case(spec: object, layout: str, dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if layout == "NHWC" else torch.contiguous_format
    x = torch.randn(spec.input_shape, generator=gen).to(dtype).contiguous(memory_format=fmt)
    w = torch.randn(spec.weight_shape, generator=gen).to(dtype).contiguous(memory_format=fmt)
    b = torch.randn(spec.out_channels, generator=gen).to(dtype) if spec.bias else None
    out = torch.empty(spec.output_shape, dtype=torch.float64).contiguous(memory_format=fmt)
    g = igemm_plan.Geometry(
        batch=spec.batch, channels=spec.in_channels, height=spec.height, width=spec.width,
        out_channels=spec.out_channels, out_h=spec.out_height, out_w=spec.out_width,
        kernel_h=spec.kernel_h, kernel_w=spec.kernel_w,
        x_strides=tuple(x.stride()), w_strides=tuple(w.stride()), out_strides=tuple(out.stride()),
        stride_h=spec.stride_h, stride_w=spec.stride_w, padding_h=spec.padding_h, padding_w=spec.padding_w,
        dilation_h=spec.dilation_h, dilation_w=spec.dilation_w, groups=spec.groups)
    ref = F.conv2d(x.double(), w.double(), b.double() if b is not None else None,
                   stride=(spec.stride_h, spec.stride_w), padding=(spec.padding_h, spec.padding_w),
                   dilation=(spec.dilation_h, spec.dilation_w), groups=spec.groups)
    return g, x, w, b, out, ref


def _assert_model_matches(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert not torch.isnan(out).any(), "an output element was never written"
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)


@given(spec=conv2d_specs(max_channels=20, max_hw=10, max_dilation=2, max_groups=4, per_axis=True),
       layout=st.sampled_from(["NCHW", "NHWC"]),
       dtype=st.sampled_from([torch.float32, torch.float16]), tensor_cores=st.booleans(),
       slots=st.sampled_from([1, 6, 264]), seed=st.integers(0, 2**31 - 1))
def test_model_conv2d_matches_torch(spec, layout, dtype, tensor_cores, slots, seed) -> None:
    g, x, w, b, out, ref = _conv_case(spec, layout, dtype, seed)
    model_igemm(g, x, w, b, out, x.element_size(), tensor_cores or dtype != torch.float32, slots)
    _assert_model_matches(out, ref)


CONV_CASES = {
    # name: (spec kwargs, layout, dtype, slots); vector paths, odd channels, several tiles, splits
    "nhwc-vec-fp32-split": (dict(batch=2, in_channels=8, out_channels=20, height=9, width=7, kernel_h=3,
                                 kernel_w=3, stride=1, padding=1), "NHWC", torch.float32, 264),
    "nhwc-vec-fp16-2tiles": (dict(batch=3, in_channels=16, out_channels=130, height=8, width=7, kernel_h=2,
                                  kernel_w=3, stride=2, padding=1), "NHWC", torch.float16, 4),
    "nchw-odd-stride4": (dict(batch=2, in_channels=3, out_channels=5, height=19, width=23, kernel_h=11,
                              kernel_w=11, stride=4, padding=2), "NCHW", torch.float32, 264),
    "nhwc-odd-channels": (dict(batch=2, in_channels=3, out_channels=7, height=12, width=11, kernel_h=5,
                               kernel_w=5, stride=1, padding=2), "NHWC", torch.float16, 1),
    "many-m-tiles": (dict(batch=4, in_channels=4, out_channels=9, height=12, width=12, kernel_h=3,
                          kernel_w=3, stride=1, padding=0, bias=False), "NHWC", torch.float32, 1),
    # the conv fields of real networks: an Inception 1x7 with stride (2, 1), a dilated 3x3, groups
    "1x7-stride-2-1-pad-3-0": (dict(batch=2, in_channels=8, out_channels=6, height=7, width=9, kernel_h=1,
                                    kernel_w=7, stride_h=2, stride_w=1, padding_h=3, padding_w=0),
                               "NHWC", torch.float32, 264),
    "7x1-odd-nchw": (dict(batch=1, in_channels=3, out_channels=5, height=11, width=5, kernel_h=7, kernel_w=1,
                          padding_h=3, padding_w=0), "NCHW", torch.float16, 1),
    "dilated-3x3": (dict(batch=2, in_channels=16, out_channels=12, height=9, width=10, kernel_h=3, kernel_w=3,
                         padding=2, dilation=2), "NHWC", torch.float16, 264),
    "dilated-per-axis-odd": (dict(batch=2, in_channels=5, out_channels=3, height=11, width=8, kernel_h=3,
                                  kernel_w=2, stride_h=1, stride_w=2, padding_h=1, padding_w=2, dilation_h=2,
                                  dilation_w=3), "NCHW", torch.float32, 1),
    "groups-2-vec-split": (dict(batch=2, in_channels=16, out_channels=10, height=8, width=7, kernel_h=3,
                                kernel_w=3, padding=1, groups=2), "NHWC", torch.float32, 264),
    "groups-4-fp16-vec": (dict(batch=2, in_channels=32, out_channels=12, height=6, width=9, kernel_h=3, kernel_w=3,
                               stride=2, padding=1, groups=4), "NHWC", torch.float16, 1),
    "groups-4-odd-nchw": (dict(batch=3, in_channels=12, out_channels=8, height=7, width=6, kernel_h=2, kernel_w=3,
                               padding_h=1, padding_w=0, dilation=2, groups=4, bias=False), "NCHW", torch.float32,
                          264),
    "groups-2-two-n-tiles": (dict(batch=1, in_channels=4, out_channels=260, height=5, width=5, kernel_h=1,
                                  kernel_w=1, groups=2), "NHWC", torch.float32, 1),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_model_conv2d_cases(case: str) -> None:
    kwargs, layout, dtype, slots = CONV_CASES[case]
    spec = Conv2d(**kwargs)
    g, x, w, b, out, ref = _conv_case(spec, layout, dtype, seed=1)
    for tensor_cores in ([False, True] if dtype == torch.float32 else [True]):
        p = model_igemm(g, x, w, b, out, x.element_size(), tensor_cores, slots)
        _assert_model_matches(out, ref)
    per_group = kwargs["in_channels"] // kwargs.get("groups", 1)
    if layout == "NHWC" and per_group % (16 // x.element_size()) == 0:
        assert p.a_vec and p.b_vec, "NHWC with whole 16-byte channel groups must take the vector path"
    if layout == "NCHW" or per_group % (16 // x.element_size()):
        assert not p.a_vec
    assert p.grid[2] == p.splits * spec.groups


@given(spec=linear_specs(max_batch=140, max_features=80), dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       transposed_weight=st.booleans(), slots=st.sampled_from([1, 264]), seed=st.integers(0, 2**31 - 1))
def test_model_linear_matches_torch(spec, dtype, transposed_weight, slots, seed) -> None:
    """kernels/cupy/linear.py's geometry: a batch of 1x1 images; a transposed weight view is
    copied at setup."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(spec.input_shape, generator=gen).to(dtype)
    w = torch.randn(spec.weight_shape, generator=gen).to(dtype)
    if transposed_weight:
        w = w.t().contiguous().t()
    b = torch.randn(spec.out_features, generator=gen).to(dtype) if spec.bias else None
    out = torch.empty(spec.output_shape, dtype=torch.float64)
    g = igemm_plan.Geometry(
        batch=spec.batch, channels=spec.in_features, height=1, width=1, out_channels=spec.out_features,
        out_h=1, out_w=1, kernel_h=1, kernel_w=1,
        x_strides=(x.stride(0), x.stride(1), 0, 0), w_strides=(w.stride(0), w.stride(1), 0, 0),
        out_strides=(out.stride(0), out.stride(1), 0, 0))
    p = model_igemm(g, x, w, b, out, x.element_size(), dtype != torch.float32, slots)
    ref = F.linear(x.double(), w.double(), b.double() if b is not None else None)
    _assert_model_matches(out, ref)
    assert p.copy_weight == (transposed_weight and spec.in_features > 1 and spec.out_features > 1)


def test_split_choice() -> None:
    # FC 9216 -> 4096 at batch 128 on 132 SMs x 2 blocks: 32 tiles, 8 splits of 72 fp32 tiles.
    assert igemm_plan.choose_split(32, 9216 // 16, 264) == (8, 72)
    # Enough tiles: no split.  Short K: no split below MIN_KTILES_PER_SPLIT tiles each.
    assert igemm_plan.choose_split(871, 23, 264) == (1, 23)
    assert igemm_plan.choose_split(1, 7, 264) == (1, 7)
    # Every split gets work: splits * per covers ktiles, (splits - 1) * per does not.
    for tiles in (1, 3, 32, 100):
        for ktiles in (4, 9, 37, 576):
            splits, per = igemm_plan.choose_split(tiles, ktiles, 264)
            assert (splits - 1) * per < ktiles <= splits * per



def test_split_times_groups_fits_the_grid() -> None:
    """blockIdx.z = split * groups + group: many groups cap the splits, too many are refused."""
    def plan(groups: int) -> igemm_plan.Plan:
        # Two channels per group, a 16 x 16 window: K = 512 fp32 values, 32 k tiles, up to 8 splits.
        c = 2 * groups
        g = igemm_plan.Geometry(batch=1, channels=c, height=16, width=16, out_channels=c, out_h=1, out_w=1,
                                kernel_h=16, kernel_w=16, x_strides=(256 * c, 256, 16, 1),
                                w_strides=(512, 256, 16, 1), out_strides=(c, 1, 1, 1), groups=groups)
        return igemm_plan.make_plan(g, 4, 0, 0, lambda a_vec: 10**6)

    assert (plan(2).splits, plan(2).grid) == (8, (1, 1, 16))
    capped = plan(10000)  # 8 splits would need blockIdx.z up to 80000
    assert capped.splits == 6 and capped.grid[2] == 60000 <= igemm_plan.MAX_GRID_Z
    with pytest.raises(Unsupported, match="groups"):
        plan(igemm_plan.MAX_GRID_Z + 1)
