"""The TMA convolution's plan (conv_tma_plan.py) and the kernel's model (conv_tma_model.py, the
kernel transcribed) on the CPU: every tile and k tile of the patch the plan chose (or, in im2col
mode, of the runs of pixels), over the views the launcher encodes, against the layer's float64
reference.  The launcher's own arguments run
the same model in test_cupy_launch_emulation.py; the kernel on a GPU in test_cupy.py
(``-k hopper_path``)."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.cupy import conv_tma, tensor_map
from kernels.cupy import conv_tma_plan as plan
from kernels.cupy.conv_tma_model import Im2colView, MapView, model_conv_tma
from layerbench.layers import Conv2d

BLOCK_N = 64  # the narrowest tile; wider ones differ only in how columns group


def emulate(spec: Conv2d, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, layout: str = "NHWC",
            blocks: int = 3, im2col: bool = False) -> np.ndarray:
    """The kernel's model on x (NHWC) and w (KRSC) through the plan's views (``im2col``: runs of
    pixels through the im2col map), the output in ``layout`` (returned as NHWC); NaN where nothing
    was stored."""
    patch = None if im2col else plan.choose_patch(spec)
    ho, wo, k = spec.out_height, spec.out_width, spec.out_channels
    by_tma = plan.stores_by_tma(spec, layout)
    strides = (ho * wo * k, 1, wo * k, k) if layout == "NHWC" else (k * ho * wo, ho * wo, wo, 1)
    g = conv_tma.geometry(spec, patch, by_tma, strides)
    out = np.full(spec.batch * ho * wo * k, np.nan)
    if patch:
        x_view: MapView | Im2colView = MapView(x.ravel(), *plan.input_view(spec), plan.input_box(patch))
        y_view = MapView(out, *plan.output_view(spec), plan.output_box(patch, conv_tma.OUT_BOX_COLS))
    else:
        x_view = driver_im2col_view(spec, x)
        y_view = MapView(out, *plan.matrix_output_view(spec), (conv_tma.OUT_BOX_COLS, plan.TILE_PIXELS // 2))
    model_conv_tma({name: getattr(g, name) for name, _ in conv_tma.Geometry._fields_}, x_view,
                   MapView(w.ravel(), *plan.weight_view(spec), (plan.BLOCK_K, 1, BLOCK_N)), out,
                   y_view if by_tma else None, bias, BLOCK_N, blocks)
    if layout == "NCHW":
        return out.reshape(spec.batch, k, ho, wo).transpose(0, 2, 3, 1)
    return out.reshape(spec.batch, ho, wo, k)


class Driver:
    """libcuda's cuTensorMapEncodeIm2col, arguments in cuda.h's order, keeping what it was given."""

    def __init__(self) -> None:
        self.given: dict[str, object] = {}

    def cuTensorMapEncodeIm2col(self, tensor_map, dtype, rank, address, dims, strides, lower, upper,  # noqa: N802
                                channels, pixels, element_strides, interleave, swizzle, l2, oob) -> int:
        self.given = {"rank": rank.value, "dims": list(dims), "strides": list(strides), "lower": list(lower),
                      "upper": list(upper), "channels": channels.value, "pixels": pixels.value,
                      "element_strides": list(element_strides), "modes": (interleave, swizzle, oob)}
        return 0


def driver_im2col_view(spec: Conv2d, x: np.ndarray) -> Im2colView:
    """The model's view of NHWC ``x`` read off the arguments the launcher gives the driver for its
    im2col map (arrays innermost first, as cuda.h has them: (c, w, h, n), corners and traversal
    (w, h)), so the model runs through the encoding itself."""
    driver = Driver()
    t = torch.empty(spec.batch, spec.in_channels, spec.height, spec.width, dtype=torch.bfloat16,
                    memory_format=torch.channels_last)
    with mock.patch.object(tensor_map, "_driver", lambda: driver):
        conv_tma._input_map(spec, None, t)
    g = driver.given
    assert g["rank"] == 4 and g["modes"] == (tensor_map.INTERLEAVE_NONE, tensor_map.SWIZZLE_128B,
                                             tensor_map.OOB_FILL_ZEROS)
    assert g["element_strides"][0] == g["element_strides"][3] == 1  # channels and images not strided
    lower, upper, traversal = g["lower"], g["upper"], g["element_strides"][1:3]
    return Im2colView(x.ravel(), tuple(g["dims"]), tuple(s // t.element_size() for s in g["strides"]),
                      (lower[1], lower[0]), (upper[1], upper[0]), (traversal[1], traversal[0]), g["pixels"],
                      g["channels"])


def direct(spec: Conv2d, x: np.ndarray, w: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The layer's own float64 reference on x (NHWC) and w (KRSC), as NHWC."""
    nchw = {"x": torch.from_numpy(x).permute(0, 3, 1, 2), "weight": torch.from_numpy(w).permute(0, 3, 1, 2),
            "bias": torch.from_numpy(bias)}
    return spec.reference(nchw).permute(0, 2, 3, 1).numpy()


def check(spec: Conv2d, seed: int = 0, layout: str = "NHWC", im2col: bool = False) -> None:
    assert plan.refusal(spec, "bf16", layout) is None, plan.refusal(spec, "bf16", layout)
    refusal = plan.im2col_refusal(spec) if im2col else plan.patch_refusal(spec)
    assert refusal is None, refusal
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((spec.batch, spec.height, spec.width, spec.in_channels))
    w = rng.standard_normal((spec.out_channels, spec.kernel_h, spec.kernel_w, spec.in_channels))
    bias = rng.standard_normal(spec.out_channels)
    got = emulate(spec, x, w, bias, layout, im2col=im2col)
    assert not np.isnan(got).any(), "an output pixel was never stored"
    np.testing.assert_allclose(got, direct(spec, x, w, bias), rtol=1e-12, atol=1e-9)


CASES = {
    "3x3-pad": Conv2d(2, 16, 8, 9, 11, 3, 3, padding=1),
    "channels-past-a-block": Conv2d(1, 72, 24, 6, 5, 3, 3, padding=1),
    "resnet-3x3/2": Conv2d(2, 64, 16, 8, 10, 3, 3, stride=2, padding=1),
    "resnet-1x1/2": Conv2d(3, 64, 72, 6, 6, 1, 1, stride=2),
    "stride-3-7x7": Conv2d(1, 64, 8, 12, 9, 7, 7, stride=3, padding=3),
    "dilated-1x7": Conv2d(2, 8, 8, 7, 13, 1, 7, padding_h=0, padding_w=6, dilation=2),
    "row-stride-only": Conv2d(1, 24, 8, 10, 7, 3, 3, stride_h=2, stride_w=1, padding=1),
    "odd-out-channels": Conv2d(2, 16, 10, 7, 9, 3, 3, padding=1),  # stored from registers in NHWC too
}


@pytest.mark.parametrize("im2col", (False, True), ids=("patches", "im2col"))
@pytest.mark.parametrize("layout", ("NHWC", "NCHW"))
@pytest.mark.parametrize("name", sorted(CASES))
def test_schedule_matches_a_direct_convolution(name: str, layout: str, im2col: bool) -> None:
    check(CASES[name], layout=layout, im2col=im2col)


# Only the im2col mode covers these: sides no multiple of the stride, narrow channels at stride 2,
# a plane whose runs of 128 pixels start mid-row and mid-image, and windows reaching past the input.
IM2COL_ONLY = {
    "odd-sides-stride-2": Conv2d(2, 16, 8, 9, 11, 3, 3, stride=2, padding=1),
    "narrow-stride-2x3": Conv2d(3, 24, 8, 13, 14, 3, 5, stride_h=2, stride_w=3, padding_h=1, padding_w=2),
    "7x7-plane": Conv2d(5, 8, 16, 7, 7, 3, 3, padding=1),
    "alexnet-like-11x11/4": Conv2d(2, 8, 8, 27, 27, 11, 11, stride=4),
}


@pytest.mark.parametrize("layout", ("NHWC", "NCHW"))
@pytest.mark.parametrize("name", sorted(IM2COL_ONLY))
def test_im2col_runs_match_a_direct_convolution(name: str, layout: str) -> None:
    spec = IM2COL_ONLY[name]
    assert plan.refusal(spec, "bf16", layout) is None
    check(spec, layout=layout, im2col=True)


@st.composite
def tma_specs(draw: st.DrawFn) -> Conv2d:
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    channels = draw(st.sampled_from((64, 128)) if sw > 1 else st.sampled_from((8, 16, 24, 72)))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, (kh - 1) * dh)), draw(st.integers(0, (kw - 1) * dw))
    # The dilated window must fit the padded input: at least that many pixels, in whole strides.
    least_h = max(1, -(-((kh - 1) * dh + 1 - 2 * ph) // sh))
    least_w = max(1, -(-((kw - 1) * dw + 1 - 2 * pw) // sw))
    h, w = sh * draw(st.integers(least_h, least_h + 5)), sw * draw(st.integers(least_w, least_w + 5))
    return Conv2d(draw(st.integers(1, 3)), channels, draw(st.sampled_from((3, 8, 10, 16, 72))), h, w, kh, kw,
                  stride_h=sh, stride_w=sw, padding_h=ph, padding_w=pw, dilation_h=dh, dilation_w=dw)


@settings(max_examples=25, deadline=None)
@given(spec=tma_specs(), seed=st.integers(0, 2**16), layout=st.sampled_from(("NHWC", "NCHW")))
def test_drawn_schedules_match_a_direct_convolution(spec: Conv2d, seed: int, layout: str) -> None:
    check(spec, seed, layout)


@st.composite
def im2col_specs(draw: st.DrawFn) -> Conv2d:
    """Any window, stride, dilation and padding whose output is at least a pixel, any sides."""
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, (kh - 1) * dh)), draw(st.integers(0, (kw - 1) * dw))
    h = draw(st.integers(max(1, (kh - 1) * dh + 1 - 2 * ph), 14))
    w = draw(st.integers(max(1, (kw - 1) * dw + 1 - 2 * pw), 14))
    return Conv2d(draw(st.integers(1, 3)), draw(st.sampled_from((8, 16, 72))), draw(st.sampled_from((3, 8, 16))),
                  h, w, kh, kw, stride_h=sh, stride_w=sw, padding_h=ph, padding_w=pw, dilation_h=dh, dilation_w=dw)


@settings(max_examples=25, deadline=None)
@given(spec=im2col_specs(), seed=st.integers(0, 2**16), layout=st.sampled_from(("NHWC", "NCHW")))
def test_drawn_im2col_runs_match_a_direct_convolution(spec: Conv2d, seed: int, layout: str) -> None:
    check(spec, seed, layout, im2col=True)


@pytest.mark.parametrize("out_hw, batch, want", [
    ((56, 56), 64, plan.Patch(2, 8, 8)),  # no waste (16 columns would), less halo than 4 x 4 x 8
    ((7, 7), 64, plan.Patch(16, 1, 8)),  # one row of 16 images: 1 of 8 pixels wasted, not 79 of 128
    ((28, 28), 1, plan.Patch(1, 4, 32)),  # 4 of 32 columns wasted; 8 x 16 would waste rows too
])
def test_patch_wastes_least(out_hw: tuple[int, int], batch: int, want: plan.Patch) -> None:
    spec = Conv2d(batch, 64, 64, *out_hw, 3, 3, padding=1)
    assert plan.choose_patch(spec) == want


@pytest.mark.parametrize("spec, dtype, layout, reason", [
    (Conv2d(2, 16, 8, 9, 9, 3, 3), "fp32", "NHWC", "fp16 and bf16"),
    (Conv2d(2, 16, 8, 9, 9, 3, 3), "bf16", "CHWN", "NCHW and NHWC"),
    (Conv2d(2, 16, 8, 9, 9, 3, 3, groups=2), "bf16", "NHWC", "one group"),
    (Conv2d(2, 12, 8, 9, 9, 3, 3), "bf16", "NHWC", "multiple of 8"),
    # Neither mode: the patches need sides in whole strides, the im2col copy strides of at most 8.
    (Conv2d(1, 16, 8, 40, 41, 9, 9, stride=9), "bf16", "NHWC", "at stride 9x9; the im2col copy strides at most 8"),
], ids=str)
def test_refusals_name_the_field(spec: Conv2d, dtype: str, layout: str, reason: str) -> None:
    assert reason in plan.refusal(spec, dtype, layout)


@pytest.mark.parametrize("spec, reason", [
    (Conv2d(2, 16, 8, 9, 9, 3, 3, stride=2), "multiples of the stride"),
    (Conv2d(2, 32, 8, 10, 10, 3, 3, stride=2), "multiple of 64"),
], ids=str)
def test_patch_refusals_leave_the_im2col_mode(spec: Conv2d, reason: str) -> None:
    assert reason in plan.patch_refusal(spec)
    assert plan.im2col_refusal(spec) is None and plan.refusal(spec, "bf16", "NHWC") is None
