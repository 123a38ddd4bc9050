"""The CuPy convolution's forward on the conv fields real networks use (per-axis stride and padding,
dilation, groups, depthwise) on a GPU, through check_implementation against float64: MobileNetV2's
depthwise layers, an Inception 1x7 and 7x1, a dilated 3x3, ResNeXt's grouped 3x3, and drawn shapes,
every dtype and layout.  What the launcher refuses, and why, runs anywhere."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from layerbench import registry
from layerbench.builders import Built
from layerbench.dtypes import get_dtype
from layerbench.layers import Conv2d
from layerbench.testing import check_implementation, conv2d_specs, make_output, make_tensors

pytest.importorskip("cupy", reason="the CuPy kernels need CuPy")
from kernels.cupy import depthwise, depthwise_plan, sources  # noqa: E402

gpu = pytest.mark.gpu
DEVICE = "cuda"


def assert_ok(spec: Conv2d, dtype: str, layout: str) -> None:
    assert "cupy" not in registry.load_errors(), registry.load_errors()["cupy"]
    result = check_implementation(registry.get("conv2d", "cupy"), spec, dtype, layout, DEVICE)
    assert result.ok, f"{spec} {dtype} {layout}: {result.message}"


NETWORK_LAYERS = {
    # MobileNetV2: the first expanded block's depthwise 3x3 at stride 2, and a 14x14 one at stride 1.
    "mobilenetv2-dw-96x112-s2": Conv2d(64, 96, 96, 112, 112, 3, 3, stride=2, padding=1, groups=96),
    "mobilenetv2-dw-576x14-s1": Conv2d(64, 576, 576, 14, 14, 3, 3, stride=1, padding=1, groups=576),
    # Inception-v3 (17x17 grid): the factorised 7x7 as 1x7 and 7x1.
    "inception-1x7": Conv2d(16, 128, 128, 17, 17, 1, 7, padding_h=0, padding_w=3),
    "inception-7x1": Conv2d(16, 128, 192, 17, 17, 7, 1, padding_h=3, padding_w=0),
    # DeepLab-style atrous 3x3.
    "dilated-3x3": Conv2d(4, 256, 256, 33, 33, 3, 3, padding=2, dilation=2),
    # ResNeXt-50 32x4d: the grouped 3x3 of stage 1, and stage 3's first at stride 2.
    "resnext-g32-56": Conv2d(8, 128, 128, 56, 56, 3, 3, padding=1, groups=32),
    "resnext-g32-28-s2": Conv2d(8, 512, 512, 28, 28, 3, 3, stride=2, padding=1, groups=32),
}

AWKWARD = {
    "stride-2-1-pad-3-0-1x7": Conv2d(3, 12, 20, 15, 11, 1, 7, stride_h=2, stride_w=1, padding_h=3, padding_w=0),
    "dilation-per-axis-odd": Conv2d(2, 5, 7, 19, 13, 3, 2, padding_h=2, padding_w=1, dilation_h=2, dilation_w=3),
    "groups-2-odd": Conv2d(2, 6, 10, 13, 9, 3, 3, stride=2, padding=1, groups=2, bias=False),
    "groups-4-vector": Conv2d(2, 64, 32, 12, 12, 3, 3, padding=1, groups=4),
    "groups-many-n-tiles": Conv2d(2, 16, 520, 7, 7, 1, 1, groups=2),
    "dw-multiplier-2": Conv2d(4, 24, 48, 15, 15, 3, 3, padding=1, groups=24),
    "dw-5x5-s2": Conv2d(4, 40, 40, 29, 29, 5, 5, stride=2, padding=2, groups=40),
    "dw-7x7-odd": Conv2d(2, 33, 33, 13, 31, 7, 7, padding=3, groups=33, bias=False),
    "dw-dilated": Conv2d(2, 32, 32, 20, 20, 3, 3, padding=4, dilation=4, groups=32),
    "dw-stride-3": Conv2d(2, 16, 16, 25, 25, 3, 3, stride=3, groups=16),
    "dw-1x7": Conv2d(2, 64, 64, 17, 17, 1, 7, padding_h=0, padding_w=3, groups=64),
}


@gpu
@pytest.mark.parametrize("layout", Conv2d.layouts)
@pytest.mark.parametrize("dtype", Conv2d.dtypes)
@pytest.mark.parametrize("name", sorted(NETWORK_LAYERS))
def test_network_layers(name: str, dtype: str, layout: str) -> None:
    assert_ok(NETWORK_LAYERS[name], dtype, layout)


@gpu
@pytest.mark.parametrize("layout", Conv2d.layouts)
@pytest.mark.parametrize("dtype", Conv2d.dtypes)
@pytest.mark.parametrize("name", sorted(AWKWARD))
def test_awkward_fields(name: str, dtype: str, layout: str) -> None:
    assert_ok(AWKWARD[name], dtype, layout)


@gpu
@given(spec=conv2d_specs(max_batch=3, max_channels=24, max_hw=14, max_kernel=5, max_dilation=2, max_groups=4,
                         per_axis=True),
       dtype=st.sampled_from(Conv2d.dtypes), layout=st.sampled_from(Conv2d.layouts))
def test_conv2d_fields_drawn(spec: Conv2d, dtype: str, layout: str) -> None:
    assert_ok(spec, dtype, layout)


@gpu
@given(channels=st.integers(2, 40), multiplier=st.sampled_from([1, 1, 2]), size=st.integers(1, 20),
       kernel=st.sampled_from([1, 2, 3, 5, 7]), stride=st.integers(1, 3), dilation=st.integers(1, 2),
       dtype=st.sampled_from(Conv2d.dtypes), layout=st.sampled_from(Conv2d.layouts))
def test_depthwise_drawn(channels: int, multiplier: int, size: int, kernel: int, stride: int, dilation: int,
                         dtype: str, layout: str) -> None:
    while dilation * (kernel - 1) + 1 > size + 2 * (kernel // 2):  # the window must fit the padded input
        kernel -= 1
    spec = Conv2d(2, channels, multiplier * channels, size, size, kernel, kernel, stride=stride,
                  padding=kernel // 2, dilation=dilation, groups=channels)
    assert_ok(spec, dtype, layout)


# The flat-run depthwise kernels alone: MobileNetV2's channel counts on planes that cut their bands
# and runs raggedly, strides 1 and 2, bias or not; in NCHW also a row of 150 columns (two segments).
FLAT_DEPTHWISE = [Conv2d(3, 144, 144, 37, 29, 3, 3, padding=1, groups=144),
                  Conv2d(2, 96, 96, 45, 61, 3, 3, stride=2, padding=1, groups=96),
                  Conv2d(4, 40, 40, 14, 14, 3, 3, stride=2, padding_h=0, padding_w=2, groups=40, bias=False),
                  Conv2d(2, 960, 960, 7, 7, 3, 3, padding=1, groups=960)]
FLAT_DEPTHWISE_NCHW = [Conv2d(2, 5, 5, 9, 150, 3, 3, padding_h=2, padding_w=1, groups=5)]


@gpu
@pytest.mark.parametrize("band", [None, depthwise_plan.FLAT_BANDS[0]], ids=["usual-band", "tallest-band"])
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_depthwise_flat_alone(layout: str, dtype: str, band: int | None) -> None:
    for columns in sources.DEPTHWISE_NCHW_FLAT_COLUMNS if layout == "NCHW" else (depthwise_plan.NCHW_FLAT_COLUMNS,):
        def build(*args: object) -> Built:
            return depthwise.build_flat(*args, band=band, columns=columns)

        for spec in FLAT_DEPTHWISE + (FLAT_DEPTHWISE_NCHW if layout == "NCHW" else []):
            result = check_implementation(build, spec, dtype, layout, DEVICE)
            assert result.ok, f"{spec} {dtype} {layout} columns={columns}: {result.message}"


# The NCHW rows kernel alone: every depthwise layer above (strips, loops, multiplier 2, groups of
# planes, bands) and the flat kernels' shapes, in every dtype; also a 5 x 5 window at stride 1
# (two columns an item) on an odd width, so that the last item's second column is off the plane.
ROWS_DEPTHWISE = [Conv2d(2, 12, 12, 19, 23, 5, 5, padding=2, groups=12)]


@gpu
@pytest.mark.parametrize("stages", [2, depthwise.DEEP_STAGES])
@pytest.mark.parametrize("dtype", Conv2d.dtypes)
def test_depthwise_rows_alone(dtype: str, stages: int) -> None:
    def build(*args: object) -> object:
        return depthwise.build_rows(*args, stages=stages)

    specs = [spec for spec in (*NETWORK_LAYERS.values(), *AWKWARD.values()) if spec.depthwise]
    for spec in specs + FLAT_DEPTHWISE + FLAT_DEPTHWISE_NCHW + ROWS_DEPTHWISE:
        result = check_implementation(build, spec, dtype, "NCHW", DEVICE)
        assert result.ok, f"{spec} {dtype} {stages} buffers: {result.message}"


@gpu
def test_builds_record_their_path() -> None:
    def details(spec: Conv2d, dtype: str = "fp32", layout: str = "NHWC") -> dict:
        dt = get_dtype(dtype)
        tensors = make_tensors(spec, dt, layout, DEVICE)
        return registry.get("conv2d", "cupy").build(spec, dt, layout, tensors, make_output(spec, tensors, layout)).details

    dw = details(NETWORK_LAYERS["mobilenetv2-dw-576x14-s1"], "fp16")
    assert dw["depthwise_ms"] > 0 and dw["depthwise_flat_ms"] > 0, dw  # both timed, the faster kept
    flat = "depthwise_nhwc_flat<__half, 8, 1>"
    kernels = {"depthwise": "depthwise_nhwc<__half, 8, 3, 1>", "depthwise_flat": flat, "depthwise_flat_tall": flat}
    assert dw["kernel"] == kernels[dw["algorithm"]], dw
    planar = details(NETWORK_LAYERS["mobilenetv2-dw-576x14-s1"], "bf16", "NCHW")
    assert min(planar[f"{name}_ms"] for name in ("depthwise", "depthwise_flat", "depthwise_rows",
                                                 "depthwise_rows_deep")) > 0, planar
    flat = "depthwise_nchw_flat<__nv_bfloat16, 1, 4>"
    kernels = {"depthwise": "depthwise_nchw<__nv_bfloat16, 3>", "depthwise_flat": flat, "depthwise_flat_tall": flat,
               "depthwise_flat_column": "depthwise_nchw_flat<__nv_bfloat16, 1, 1>",
               "depthwise_flat_two_columns": "depthwise_nchw_flat<__nv_bfloat16, 1, 2>",
               "depthwise_rows": "depthwise_nchw_rows<__nv_bfloat16, 3, 1>",
               "depthwise_rows_deep": "depthwise_nchw_rows<__nv_bfloat16, 3, 1>"}
    assert planar["kernel"] == kernels[planar["algorithm"]], planar
    grouped = details(AWKWARD["groups-2-odd"])
    assert grouped["algorithm"] == "implicit_gemm" and "groups 2" in grouped["fft"]


# ------------------------------------------------------------------ what is refused, anywhere


@pytest.mark.parametrize("spec", [
    Conv2d(1, 4, 4, 7, 7, 3, 3, dilation=2), Conv2d(1, 4, 4, 7, 7, 3, 3, groups=2),
    Conv2d(1, 4, 4, 7, 7, 3, 3, groups=4), Conv2d(1, 4, 8, 7, 7, 3, 3, groups=4),
    Conv2d(1, 4, 4, 7, 7, 3, 3, stride_h=2, stride_w=1), Conv2d(1, 4, 4, 7, 7, 1, 7, padding_h=1, padding_w=3),
], ids=["dilation", "groups", "depthwise", "depthwise-multiplier", "stride-per-axis", "padding-per-axis"])
@pytest.mark.parametrize("layout", Conv2d.layouts)
def test_runs_the_conv_fields(spec: Conv2d, layout: str) -> None:
    for dtype in Conv2d.dtypes:
        assert registry.unsupported_reason("conv2d", "cupy", spec, dtype, layout, "cuda") is None


def test_refuses_only_past_the_limits_saying_why() -> None:
    # An NCHW depthwise window whose input tile outgrows shared memory (NHWC runs it).
    huge = Conv2d(1, 2, 2, 130, 130, 5, 5, dilation=30, groups=2)
    assert "shared memory" in registry.unsupported_reason("conv2d", "cupy", huge, "fp32", "NCHW", "cuda")
    assert registry.unsupported_reason("conv2d", "cupy", huge, "fp32", "NHWC", "cuda") is None
    # More groups than blockIdx.z holds (not depthwise: two channels a group).
    many = Conv2d(1, 2 * 65536, 2 * 65536, 1, 1, 1, 1, groups=65536)
    assert "65535 groups" in registry.unsupported_reason("conv2d", "cupy", many, "fp16", "NHWC", "cuda")
