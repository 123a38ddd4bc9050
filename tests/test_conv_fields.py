"""Conv2d's per-axis stride and padding, dilation and groups: validation, costs against brute-force
counts, the float64 reference against a direct loop, sweep files, identity, and the kernels that
refuse what they do not compute or take."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from sweep_texts import CONV_SWEEP

from kernels.reference import torch_ref
from kernels.triton import conv2d as triton_conv
from layerbench import registry, sweep
from layerbench.dtypes import get_dtype
from layerbench.errors import SweepError, Unsupported
from layerbench.layers import Conv2d, spec_from_dict
from layerbench.results import identity
from layerbench.testing import make_output, make_tensors, specs

GROUPED = Conv2d(2, 6, 4, 9, 11, 3, 2, stride_h=2, stride_w=3, padding_h=2, padding_w=1,
                 dilation_h=2, dilation_w=3, groups=2)


# ------------------------------------------------------------------ fields and validation

def test_scalar_fields_set_both_axes_and_read_back_the_common_value() -> None:
    c = Conv2d(1, 3, 4, 8, 8, 3, 3, stride=2, padding=1)
    assert (c.stride_h, c.stride_w, c.padding_h, c.padding_w, c.dilation_h, c.dilation_w, c.groups) == \
        (2, 2, 1, 1, 1, 1, 1)
    assert (c.stride, c.padding, c.dilation) == (2, 1, 1)
    assert c == Conv2d(1, 3, 4, 8, 8, 3, 3, stride_h=2, stride_w=2, padding_h=1, padding_w=1)
    assert c == Conv2d(1, 3, 4, 8, 8, 3, 3, stride=2, stride_h=2, padding=1)  # agreeing is fine
    assert Conv2d(1, 3, 4, 8, 8, 3, 3) == Conv2d(1, 3, 4, 8, 8, 3, 3, stride=1, padding=0, dilation=1)
    u = Conv2d(1, 3, 4, 8, 8, 1, 7, padding_w=3)  # an Inception 1x7
    assert (u.padding, u.padding_h, u.padding_w, u.output_shape) == (None, 0, 3, (1, 4, 8, 8))
    assert spec_from_dict("conv2d", {"batch": 1, "in_channels": 2, "out_channels": 2, "height": 5,
                                     "width": 5, "kernel_h": 3, "kernel_w": 3, "dilation": 2}).dilation_w == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"groups": 4}, "Conv2d.groups must divide in_channels and out_channels, got groups 4 and in_channels 6"),
    ({"groups": 3, "out_channels": 4}, "Conv2d.groups .* out_channels 4"),
    ({"groups": 0}, "Conv2d.groups must be in >= 1"),
    ({"stride_h": 0}, "Conv2d.stride_h must be in >= 1"),
    ({"stride": 0}, "Conv2d.stride must be in >= 1"),
    ({"padding_w": -1}, "Conv2d.padding_w must be in >= 0"),
    ({"dilation": 0}, "Conv2d.dilation must be in >= 1"),
    ({"dilation_w": 2.0}, "Conv2d.dilation_w must be an integer"),
    ({"stride": 2, "stride_h": 1}, "Conv2d.stride_h is 1 but stride .* is 2"),
    ({"padding": 1, "padding_w": 0}, "Conv2d.padding_w is 0 but padding"),
    # The dilated kernel 4 * (3 - 1) + 1 = 9 taps does not fit 8 rows; with padding 1 (10) it does.
    ({"dilation_h": 4}, "Conv2d.kernel_h must be in 1..2, got 3"),
    ({"kernel_w": 9}, "Conv2d.kernel_w must be in 1..8"),
])
def test_errors_name_the_field(kwargs: dict, message: str) -> None:
    base = {"batch": 1, "in_channels": 6, "out_channels": 6, "height": 8, "width": 8, "kernel_h": 3,
            "kernel_w": 3} | kwargs
    with pytest.raises(ValueError, match=message):
        Conv2d(**base)


def test_the_dilated_kernel_fits_once_padded() -> None:
    c = Conv2d(1, 6, 6, 8, 8, 3, 3, dilation_h=4, padding_h=1)  # 9 taps over 8 + 2 rows
    assert c.out_height == 2 and c.out_width == 6


# ------------------------------------------------------------------ costs, brute force

def _brute_force(spec: Conv2d) -> tuple[tuple[int, int], int, int]:
    """Output plane and multiply-adds by walking every output position and every tap, and the
    parameters by counting the weights each output channel reads."""
    def positions(size: int, k: int, s: int, p: int, d: int) -> int:
        n, start = 0, -p
        while start + d * (k - 1) <= size - 1 + p:  # every tap inside the padded input
            n, start = n + 1, start + s
        return n

    oh = positions(spec.height, spec.kernel_h, spec.stride_h, spec.padding_h, spec.dilation_h)
    ow = positions(spec.width, spec.kernel_w, spec.stride_w, spec.padding_w, spec.dilation_w)
    per_group_in = spec.in_channels // spec.groups
    reads = [len([c for c in range(spec.in_channels) if c // per_group_in == k // (spec.out_channels // spec.groups)])
             for k in range(spec.out_channels)]  # input channels that output channel k reads
    macs = sum(spec.batch * oh * ow * r * spec.kernel_h * spec.kernel_w for r in reads)
    params = sum(r * spec.kernel_h * spec.kernel_w for r in reads) + (spec.out_channels if spec.bias else 0)
    return (oh, ow), macs, params


@settings(max_examples=60, deadline=None)
@given(specs("conv2d", max_hw=11, max_kernel=4, max_stride=3, max_dilation=3, max_groups=3, per_axis=True))
def test_costs_match_brute_force_counts(spec: Conv2d) -> None:
    (oh, ow), macs, params = _brute_force(spec)
    assert (spec.out_height, spec.out_width) == (oh, ow)
    out = spec.batch * spec.out_channels * oh * ow
    assert spec.flops == 2 * macs + (out if spec.bias else 0)
    assert spec.parameters == params
    assert spec.min_bytes(2) == 2 * (spec.batch * spec.in_channels * spec.height * spec.width + params + out)
    x, w = torch.zeros(spec.input_shape), torch.zeros(spec.weight_shape)
    y = F.conv2d(x, w, stride=(spec.stride_h, spec.stride_w), padding=(spec.padding_h, spec.padding_w),
                 dilation=(spec.dilation_h, spec.dilation_w), groups=spec.groups)
    assert tuple(y.shape) == spec.output_shape


@given(specs("conv2d", max_hw=12, max_kernel=5))
def test_default_strategy_draws_plain_convolutions(spec: Conv2d) -> None:
    assert spec.beyond_plain() is None and spec.stride is not None and spec.padding is not None
    assert set(spec.identity_params()) == {"batch", "in_channels", "out_channels", "height", "width",
                                           "kernel_h", "kernel_w", "stride", "padding", "bias"}


def test_thesis_figures_count_a_group_s_channels() -> None:
    plain = Conv2d(128, 3, 96, 128, 128, 11, 11)  # thesis L1: the published formulas
    assert plain.thesis_parameters == (11 * 11 + 1) * 3 * 96
    dw = Conv2d(64, 96, 96, 112, 112, 3, 3, stride=2, padding=1, groups=96)
    assert dw.depthwise and dw.thesis_parameters == (3 * 3 + 1) * 1 * 96
    assert dw.thesis_connections == dw.thesis_parameters * 56 * 56
    assert dw.thesis_input_size == 112 * 112 * 64 * 96
    assert dw.flops == 2 * 64 * 96 * 56 * 56 * 9 + 64 * 96 * 56 * 56


# ------------------------------------------------------------------ the float64 reference

def _direct(spec: Conv2d, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    out = np.zeros(spec.output_shape)
    cg, kg = spec.in_channels // spec.groups, spec.out_channels // spec.groups
    for n, k, oh, ow in itertools.product(*map(range, spec.output_shape)):
        g = k // kg
        acc = 0.0 if b is None else b[k]
        for c, r, s in itertools.product(range(cg), range(spec.kernel_h), range(spec.kernel_w)):
            ih = oh * spec.stride_h - spec.padding_h + r * spec.dilation_h
            iw = ow * spec.stride_w - spec.padding_w + s * spec.dilation_w
            if 0 <= ih < spec.height and 0 <= iw < spec.width:
                acc += x[n, g * cg + c, ih, iw] * w[k, c, r, s]
        out[n, k, oh, ow] = acc
    return out


def test_reference_matches_a_direct_loop_for_a_grouped_dilated_strided_conv() -> None:
    spec = GROUPED
    assert spec.output_shape == (2, 4, 5, 4) and spec.weight_shape == (4, 3, 3, 2)
    gen = torch.Generator().manual_seed(7)
    t = {"x": torch.randn(spec.input_shape, generator=gen, dtype=torch.float64),
         "weight": torch.randn(spec.weight_shape, generator=gen, dtype=torch.float64),
         "bias": torch.randn(spec.out_channels, generator=gen, dtype=torch.float64)}
    want = _direct(spec, t["x"].numpy(), t["weight"].numpy(), t["bias"].numpy())
    np.testing.assert_allclose(spec.reference(t).numpy(), want, rtol=1e-12, atol=1e-12)


def test_torch_reference_implementation_runs_the_new_fields() -> None:
    spec = GROUPED
    tensors = make_tensors(spec, get_dtype("fp32"), "NCHW", "cpu", torch.Generator().manual_seed(3))
    out = make_output(spec, tensors, "NCHW")
    got = torch_ref.build_conv2d(spec, get_dtype("fp32"), "NCHW", tensors, out)()
    want = spec.reference({k: v.double() for k, v in tensors.items()})
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ the custom kernels refuse

@pytest.mark.parametrize("impl", ["triton", "cupy"])
@pytest.mark.parametrize("kwargs", [{"dilation": 2}, {"groups": 2}, {"groups": 4},
                                    {"stride_h": 2, "stride_w": 1}, {"padding_h": 1, "padding_w": 0}])
def test_custom_kernels_take_every_field(impl: str, kwargs: dict) -> None:
    """Their kernels compute them all (tests/test_triton.py, the CuPy models and GPU tests)."""
    spec = Conv2d(1, 4, 4, 7, 7, 3, 3, **kwargs)
    for layout in Conv2d.layouts:
        assert registry.unsupported_reason("conv2d", impl, spec, "bf16", layout, "cuda") is None


def test_triton_refuses_more_groups_than_a_grid_axis_holds() -> None:
    """A grouped (not depthwise) convolution puts its groups on grid axis 1: 65535 programs at most."""
    spec = Conv2d(1, 2 * 65536, 2 * 65536, 1, 1, 1, 1, groups=65536, bias=False)
    reason = registry.unsupported_reason("conv2d", "triton", spec, "fp32", "NHWC", "cuda")
    assert reason is not None and "groups 65536" in reason
    tensors = make_tensors(spec, get_dtype("fp32"), "NHWC", "cpu", torch.Generator().manual_seed(0))
    with pytest.raises(Unsupported, match="at most 65535 groups"):
        triton_conv.build(spec, get_dtype("fp32"), "NHWC", tensors, make_output(spec, tensors, "NHWC"))
    depthwise = Conv2d(1, 65536, 65536, 1, 1, 1, 1, groups=65536)
    assert registry.unsupported_reason("conv2d", "triton", depthwise, "fp32", "NHWC", "cuda") is None


# ------------------------------------------------------------------ sweep files and identity


def test_sweep_files_take_the_new_fields() -> None:
    s = sweep.parse_sweep("""
layer = "conv2d"
implementations = ["torch", "triton"]
[params]
batch = 1
in_channels = 8
out_channels = 8
size = 9
kernel_h = 1
kernel_w = 7
padding_w = 3
[axes]
groups = [1, 2, 8]
dilation = [1, 2]
""", "c.toml")
    got = [(p.spec.groups, p.spec.dilation_h, p.spec.dilation_w, p.spec.padding_h, p.spec.padding_w)
           for p in s.points]
    assert got == [(g, d, d, 0, 3) for g in (1, 2, 8) for d in (1, 2)]
    assert not any(p.invalid for p in s.points)
    bad = sweep.parse_sweep(CONV_SWEEP.replace("padding = 1", "padding = 1\ngroups = 2"), "c.toml")
    assert "Conv2d.groups must divide" in bad.points[0].invalid
    with pytest.raises(SweepError, match="groups"):
        sweep.parse_sweep(CONV_SWEEP.replace("padding = 1", 'padding = 1\ngroups = "2"'), "c.toml")


def test_new_fields_enter_the_identity_only_where_they_say_something() -> None:
    """The pinned hashes of a plain conv point: tests/test_results.py."""
    s = sweep.parse_sweep(CONV_SWEEP, "c.toml")
    p = s.points[0]
    same = sweep.parse_sweep(CONV_SWEEP.replace("stride = 2", "stride_h = 2\nstride_w = 2\ndilation = 1\ngroups = 1"),
                             "c.toml")
    assert identity.config_hash(same.points[0], "torch", s.measure, "cuda") == \
        identity.config_hash(p, "torch", s.measure, "cuda")
    for change in ("stride_w = 2\nstride_h = 1", "dilation = 2", "groups = 3"):
        other = sweep.parse_sweep(CONV_SWEEP.replace("stride = 2", change).replace("in_channels = 3", "in_channels = 6")
                                  .replace("out_channels = 4", "out_channels = 6"), "c.toml")
        assert "groups" in identity.identity_params(other.points[0])
        assert identity.config_hash(other.points[0], "torch", s.measure, "cuda") != "109bb393223a2d7a"
    # The record keeps every field as a column.
    assert {"stride_h", "dilation_w", "groups", "stride"} <= set(identity.layer_params(p))
