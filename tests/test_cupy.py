"""The CuPy (CUDA C) kernels on a GPU, against float64 references (layerbench.testing).

Hypothesis draws small specs of every layer in every dtype and layout the layer allows; the
explicit cases are the thesis's layers (conv L1-L6 at batch 8, AlexNet pooling, FC layers at
batch 128) and awkward shapes (odd channels, non-square, stride 2 and 4, padding).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from layerbench import registry
from layerbench.registry import Builder
from layerbench.dtypes import get_dtype
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d, Linear, Pool2d, ReLU
from layerbench.testing import (
    check_implementation,
    compare_output,
    conv2d_specs,
    linear_specs,
    make_output,
    make_tensors,
    pool2d_specs,
    relu_specs,
)

pytest.importorskip("cupy", reason="the CuPy kernels need CuPy")
from kernels.cupy import conv2d as cupy_conv2d  # noqa: E402
from kernels.cupy import conv_tma, conv_tma_plan, linear_wgmma, lowered_conv, pointwise_gemm, sources  # noqa: E402
from kernels.pointwise_views import forward_views, strided_refusal, subsampled  # noqa: E402

gpu = pytest.mark.gpu
DEVICE = "cuda"


def impl(layer: str) -> registry.Implementation:
    errors = registry.load_errors()
    assert "cupy" not in errors, errors["cupy"]
    return registry.get(layer, "cupy")


def assert_ok(layer: str | Builder, spec: object, dtype: str, layout: str, runs: int = 2) -> None:
    """The registered kernel of ``layer`` (or a builder of one path alone) is right on ``spec``."""
    build = impl(layer) if isinstance(layer, str) else layer
    result = check_implementation(build, spec, dtype, layout, DEVICE, runs=runs)
    assert result.ok, f"{spec} {dtype} {layout}: {result.message}"


def built_details(layer: str, spec: object, dtype: str, layout: str) -> dict:
    """The details the registered kernel of ``layer`` records when built for ``spec``."""
    dt = get_dtype(dtype)
    tensors = make_tensors(spec, dt, layout, DEVICE)
    return impl(layer).build(spec, dt, layout, tensors, make_output(spec, tensors, layout)).details


def test_registered() -> None:
    for layer in ("conv2d", "pool2d", "relu", "linear"):
        i = impl(layer)
        assert (i.backend, i.devices, i.reference) == ("cupy", ("cuda",), False)
        assert i.description


# ---------------------------------------------------------------- hypothesis, small shapes


@gpu
@given(spec=conv2d_specs(max_batch=3, max_channels=24, max_hw=14, max_kernel=5),
       dtype=st.sampled_from(Conv2d.dtypes), layout=st.sampled_from(Conv2d.layouts))
def test_conv2d_drawn(spec: Conv2d, dtype: str, layout: str) -> None:
    assert_ok("conv2d", spec, dtype, layout)


@gpu
@given(spec=pool2d_specs(max_batch=3, max_channels=20, max_hw=20, max_kernel=5),
       dtype=st.sampled_from(Pool2d.dtypes), layout=st.sampled_from(Pool2d.layouts))
def test_pool2d_drawn(spec: Pool2d, dtype: str, layout: str) -> None:
    assert_ok("pool2d", spec, dtype, layout)


@gpu
@given(spec=relu_specs(max_batch=4, max_channels=9, max_hw=33), dtype=st.sampled_from(ReLU.dtypes))
def test_relu_drawn(spec: ReLU, dtype: str) -> None:
    assert_ok("relu", spec, dtype, "NCHW")


@gpu
@given(spec=linear_specs(max_batch=300, max_features=300), dtype=st.sampled_from(Linear.dtypes))
def test_linear_drawn(spec: Linear, dtype: str) -> None:
    assert_ok("linear", spec, dtype, "NCHW")


# ---------------------------------------------------------------- convolution

# Thesis Table 6-1, batch reduced from 128 to 8 (the float64 reference dominates the cost).
THESIS_CONV = {
    "L1": Conv2d(8, 3, 96, 128, 128, 11, 11),
    "L2": Conv2d(8, 64, 128, 64, 64, 9, 9),
    "L3": Conv2d(8, 128, 128, 32, 32, 9, 9),
    "L4": Conv2d(8, 128, 128, 16, 16, 7, 7),
    "L5": Conv2d(8, 384, 384, 13, 13, 3, 3),
    "L6": Conv2d(8, 192, 192, 27, 27, 5, 5),
}

ODD_CONV = {
    "odd-channels-stride4": Conv2d(4, 3, 5, 31, 17, 7, 3, stride=4, padding=2),
    "odd-both-stride2": Conv2d(3, 13, 17, 20, 21, 3, 3, stride=2, padding=1, bias=False),
    "non-square-pad2": Conv2d(2, 64, 96, 27, 13, 5, 5, stride=1, padding=2),
    "alexnet-conv1": Conv2d(2, 3, 96, 227, 227, 11, 11, stride=4),
    "1x1": Conv2d(4, 72, 40, 9, 9, 1, 1),
    "channels-not-16-bytes": Conv2d(2, 12, 130, 10, 10, 3, 3, padding=1),
}


def conv_reference(spec: Conv2d, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """float64 convolution as im2col + DGEMM: the same numbers as F.conv2d in float64, which
    cuDNN runs far slower than the FP64 GEMM units do."""
    x = tensors["x"].double().contiguous()
    w = tensors["weight"].double().reshape(spec.out_channels, -1)
    cols = F.unfold(x, (spec.kernel_h, spec.kernel_w), padding=spec.padding, stride=spec.stride)
    out = (w @ cols).view(spec.batch, spec.out_channels, spec.out_height, spec.out_width)
    if spec.bias:
        out += tensors["bias"].double().view(1, -1, 1, 1)
    return out


@gpu
def test_conv_reference_is_conv2d() -> None:
    spec = Conv2d(2, 5, 7, 11, 9, 3, 4, stride=2, padding=1)
    t = make_tensors(spec, "fp32", "NCHW", DEVICE)
    want = F.conv2d(t["x"].double(), t["weight"].double(), t["bias"].double(), stride=2, padding=1)
    torch.testing.assert_close(conv_reference(spec, t), want, rtol=1e-12, atol=1e-12)


def check_conv_fast(spec: Conv2d, dtype: str, layout: str, algorithm: str | None = None) -> None:
    """check_implementation's steps (fresh inputs, NaN-poisoned output, two launches, the same
    comparison and tolerances) with the im2col reference; ``algorithm`` forces one of the
    launcher's two ("fft", "igemm") instead of its timed choice."""
    dt = get_dtype(dtype)
    tensors = make_tensors(spec, dt, layout, DEVICE)
    out = make_output(spec, tensors)
    ref = conv_reference(spec, tensors)
    if algorithm is None:
        kernel = impl("conv2d").build(spec, dt, layout, tensors, out)
    else:
        kernel = getattr(cupy_conv2d, f"build_{algorithm}")(spec, dt, tensors, out)
    for _ in range(2):
        out.fill_(math.nan)
        torch.cuda.synchronize()
        kernel()
        torch.cuda.synchronize()
        result = compare_output(out, ref, spec, dt)
        assert result.ok, f"{spec} {dtype} {layout}: {result.message}"


@gpu
@pytest.mark.parametrize("layout", Conv2d.layouts)
@pytest.mark.parametrize("dtype", Conv2d.dtypes)
@pytest.mark.parametrize("name", sorted(THESIS_CONV))
def test_conv2d_thesis_layers(name: str, dtype: str, layout: str) -> None:
    check_conv_fast(THESIS_CONV[name], dtype, layout)


@gpu
@pytest.mark.parametrize("layout", Conv2d.layouts)
@pytest.mark.parametrize("dtype", Conv2d.dtypes)
@pytest.mark.parametrize("name", sorted(ODD_CONV))
def test_conv2d_awkward_shapes(name: str, dtype: str, layout: str) -> None:
    assert_ok("conv2d", ODD_CONV[name], dtype, layout)


# Shapes for the FFT convolution: every transform size (16-128), padding, tiles of the
# per-frequency product cut by batch, channel and output-channel counts, a window as large as
# the input, no bias; planes over 128 as overlap-save tiles (the last ones cut by the plane's
# edge, a non-square grid of tiles, a large window).
FFT_CONV = {
    **{name: THESIS_CONV[name] for name in ("L1", "L2", "L3", "L4", "L5", "L6")},
    "non-square-pad2": ODD_CONV["non-square-pad2"],
    "odd-counts-no-bias": Conv2d(33, 13, 41, 20, 21, 3, 3, padding=1, bias=False),
    "to-128-with-padding": Conv2d(2, 4, 5, 120, 100, 5, 5, padding=4),
    "window-is-input": Conv2d(3, 9, 10, 9, 9, 9, 9),
    "1-channel": Conv2d(5, 1, 1, 16, 16, 2, 3),
    "tiled-padded": Conv2d(3, 5, 7, 140, 260, 3, 3, padding=1),
    "tiled-k11-no-bias": Conv2d(2, 6, 4, 133, 129, 11, 11, bias=False),
    "window-17-plane-transform": Conv2d(2, 3, 5, 40, 36, 17, 17, padding=2),  # weight past fft_weight's taps
}


@gpu
@pytest.mark.parametrize("layout", Conv2d.layouts)
@pytest.mark.parametrize("algorithm", ["fft", "igemm"])
@pytest.mark.parametrize("name", sorted(FFT_CONV))
def test_conv2d_fp32_each_algorithm(name: str, algorithm: str, layout: str) -> None:
    check_conv_fast(FFT_CONV[name], "fp32", layout, algorithm)


@gpu
def test_conv2d_records_its_algorithm() -> None:
    def details(spec: Conv2d, dtype: str) -> dict:
        return built_details("conv2d", spec, dtype, "NCHW")

    timed = details(Conv2d(16, 64, 64, 32, 32, 9, 9), "fp32")
    paths = ("fft", "implicit_gemm", "wgmma_implicit_gemm", "tma_implicit_gemm", "im2col_gemm")
    times = {path: timed[f"{path}_ms"] for path in paths if f"{path}_ms" in timed}
    assert {"fft", "implicit_gemm"} <= times.keys() and min(times.values()) > 0
    assert timed["algorithm"] == min(times, key=times.get), timed
    assert "stride 1" in details(Conv2d(2, 8, 8, 16, 16, 3, 3, stride=2), "fp32")["fft"]
    assert "fp32 only" in details(Conv2d(2, 8, 8, 16, 16, 3, 3), "bf16")["fft"]
    # bf16: one of the implicit GEMMs (on Hopper also the wgmma and TMA ones), never the FFT
    assert details(Conv2d(2, 8, 8, 16, 16, 3, 3), "bf16")["algorithm"] in paths[1:4]


@gpu
def test_fft_conv_refuses_what_it_cannot_run() -> None:
    spec = Conv2d(1, 2, 2, 200, 200, 65, 65)  # tiles of 128 would be mostly halo
    tensors = make_tensors(spec, get_dtype("fp32"), "NCHW", DEVICE)
    with pytest.raises(Unsupported, match="windows up to 64"):
        cupy_conv2d.build_fft(spec, get_dtype("fp32"), tensors, make_output(spec, tensors))


# ---------------------------------------------------------------- pooling

ALEXNET_MAPS = [(64, 55), (192, 27), (256, 13)]  # (channels, height = width), batch 128


@gpu
@pytest.mark.parametrize("layout", Pool2d.layouts)
@pytest.mark.parametrize("dtype", Pool2d.dtypes)
@pytest.mark.parametrize("method", ["max", "avg"])
@pytest.mark.parametrize("window", [(3, 2), (2, 2)], ids=["3x3s2", "2x2s2"])
@pytest.mark.parametrize("maps", ALEXNET_MAPS, ids=[f"{h}x{h}x{c}" for c, h in ALEXNET_MAPS])
def test_pool2d_alexnet(maps: tuple[int, int], window: tuple[int, int], method: str, dtype: str,
                        layout: str) -> None:
    c, hw = maps
    kernel, stride = window
    assert_ok("pool2d", Pool2d(128, c, hw, hw, kernel, stride, method=method), dtype, layout)


@gpu
@pytest.mark.parametrize("layout", Pool2d.layouts)
@pytest.mark.parametrize("dtype", Pool2d.dtypes)
@pytest.mark.parametrize("spec", [
    Pool2d(3, 5, 17, 11, 3, 2, padding=1, method="avg"),
    Pool2d(2, 7, 9, 30, 4, 3, padding=2, method="max"),
    Pool2d(4, 24, 13, 13, 3, 1, padding=1, method="max"),
    Pool2d(2, 16, 8, 8, 8, 8, method="avg"),
    Pool2d(2, 3, 5, 7000, 3, 2, padding=1, method="max"),  # NCHW: one row's windows overflow the band
], ids=["odd-avg-pad", "odd-max-pad", "s1", "global", "wide-rows"])
def test_pool2d_awkward_shapes(spec: Pool2d, dtype: str, layout: str) -> None:
    assert_ok("pool2d", spec, dtype, layout)


@gpu
@pytest.mark.parametrize("dtype", Pool2d.dtypes)
@pytest.mark.parametrize("method", ["max", "avg"])
def test_pool2d_nchw_off_the_16_byte_grid(method: str, dtype: str) -> None:
    """x and out one element past a 16-byte boundary: the band's aligned vectors start before x."""
    spec = Pool2d(3, 5, 27, 27, 3, 2, method=method)
    dt = get_dtype(dtype)
    n = math.prod(spec.input_shape)
    x = torch.randn(n + 1, device=DEVICE).to(dt.torch_dtype)[1:].view(spec.input_shape)
    out = torch.full((math.prod(spec.output_shape) + 1,), math.nan, device=DEVICE,
                     dtype=dt.torch_dtype)[1:].view(spec.output_shape)
    impl("pool2d").build(spec, dt, "NCHW", {"x": x}, out)()
    torch.cuda.synchronize()
    want = (F.max_pool2d(x.double(), 3, 2) if method == "max" else F.avg_pool2d(x.double(), 3, 2))
    result = compare_output(out, want, spec, dt)
    assert result.ok, result.message


@gpu
@pytest.mark.parametrize("layout", Pool2d.layouts)
@pytest.mark.parametrize("dtype", Pool2d.dtypes)
def test_max_pool_special_values(dtype: str, layout: str) -> None:
    """NaN anywhere in a window wins (first or not), -inf loses to any number, -0 and +0 tie."""
    spec = Pool2d(2, 16, 9, 9, 3, 2, padding=1, method="max")
    dt = get_dtype(dtype)
    x = torch.randn(spec.input_shape, device=DEVICE).to(dt.torch_dtype)
    x[0, 0, 0, 0] = math.nan  # first tap of its windows
    x[0, 1, 4, 4] = math.nan  # a middle tap, after real numbers
    x[1, 2] = -math.inf  # a whole plane of -inf
    x[1, 3, :3, :3] = -0.0
    x[1, 3, 0, 0] = math.inf
    x[1, 4] = -0.0
    if layout == "NHWC":
        x = x.contiguous(memory_format=torch.channels_last)
    out = torch.full(spec.output_shape, math.nan, device=DEVICE, dtype=dt.torch_dtype)
    if layout == "NHWC":
        out = out.contiguous(memory_format=torch.channels_last)
    impl("pool2d").build(spec, dt, layout, {"x": x}, out)()
    torch.cuda.synchronize()
    want = F.max_pool2d(x.float(), 3, 2, 1).to(dt.torch_dtype)
    assert torch.equal(torch.isnan(out), torch.isnan(want))
    assert int(torch.isnan(want).sum()) > 0 and bool(torch.isneginf(out[1, 2]).all())
    assert bool((out == want)[~torch.isnan(want)].all())


# ---------------------------------------------------------------- relu


@gpu
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("dtype", ReLU.dtypes)
@pytest.mark.parametrize("shape", [(128, 96, 55, 55), (128, 256, 13, 13), (3, 5, 7, 11), (1, 1, 1, 1)])
def test_relu_shapes(shape: tuple[int, int, int, int], dtype: str, inplace: bool) -> None:
    assert_ok("relu", ReLU(*shape, inplace=inplace), dtype, "NCHW")


@gpu
@pytest.mark.parametrize("dtype", ReLU.dtypes)
def test_relu_misaligned_and_special_values(dtype: str) -> None:
    """Pointers off the 16-byte grid take the scalar path; NaN propagates, -inf and -0 give 0."""
    spec = ReLU(1, 1, 1, 1000)
    dt = get_dtype(dtype)
    base = torch.randn(1003, device=DEVICE).to(dt.torch_dtype)
    base[5:9] = torch.tensor([math.nan, -math.inf, math.inf, -0.0])
    x = base[1:1001].view(spec.input_shape)
    out = torch.full((1002,), math.nan, device=DEVICE, dtype=dt.torch_dtype)[2:1002].view(spec.input_shape)
    impl("relu").build(spec, dt, "NCHW", {"x": x}, out)()
    torch.cuda.synchronize()
    want = torch.relu(x)
    assert torch.equal(torch.isnan(out), torch.isnan(want))
    assert bool((out == want)[~torch.isnan(want)].all())


@gpu
def test_launches_on_torch_current_stream() -> None:
    """Work queued on a side stream before kernel() must be seen by it."""
    spec = ReLU(64, 64, 32, 32)
    tensors = make_tensors(spec, "fp32", "NCHW", DEVICE)
    out = make_output(spec, tensors)
    kernel = impl("relu").build(spec, get_dtype("fp32"), "NCHW", tensors, out)
    fresh = torch.randn(spec.input_shape, device=DEVICE)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # ~tens of ms: a kernel on another stream would run first
        tensors["x"].copy_(fresh)
        kernel()
    side.synchronize()
    assert torch.equal(out, torch.relu(fresh))


# ---------------------------------------------------------------- linear

FC = {"fc6": (9216, 4096), "fc7": (4096, 4096), "fc8": (4096, 1000)}  # thesis Tables 6-9..6-11


@gpu
@pytest.mark.parametrize("dtype", Linear.dtypes)
@pytest.mark.parametrize("name", sorted(FC))
def test_linear_thesis_layers(name: str, dtype: str) -> None:
    assert_ok("linear", Linear(128, *FC[name]), dtype, "NCHW")


@gpu
@pytest.mark.parametrize("dtype", Linear.dtypes)
@pytest.mark.parametrize("spec", [
    Linear(7, 33, 65), Linear(1, 4096, 1000), Linear(129, 130, 3, bias=False), Linear(1000, 1, 1),
], ids=["odd", "batch1", "odd-nobias", "k1"])
def test_linear_awkward_shapes(spec: Linear, dtype: str) -> None:
    assert_ok("linear", spec, dtype, "NCHW")


# The wgmma GEMM alone: tiles cut by M, N and K (K a multiple of 8, not of the 64-element tile
# row), an odd N (single-column stores), one row, no bias, and both tile shapes' grids.
WGMMA_FC = {"square-1024": Linear(1024, 1024, 1024), "ragged": Linear(300, 1032, 776),
            "odd-n": Linear(257, 200, 777), "one-row": Linear(1, 4096, 1000),
            "no-bias": Linear(130, 136, 264, bias=False), "fc6": Linear(128, *FC["fc6"])}


def skip_unless_hopper() -> None:
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the wgmma GEMM is sm_90a code")


@gpu
@pytest.mark.parametrize("dtype", ("fp16", "bf16"))
@pytest.mark.parametrize("name", sorted(WGMMA_FC))
def test_linear_wgmma_alone(name: str, dtype: str) -> None:
    skip_unless_hopper()

    def wgmma_only(spec: Linear, dt, layout: str, tensors, out: torch.Tensor):
        return linear_wgmma.build_wgmma(spec, dt, tensors, out)

    assert_ok(wgmma_only, WGMMA_FC[name], dtype, "NCHW")


@gpu
@pytest.mark.parametrize("dtype", ("fp16", "bf16"))
@pytest.mark.parametrize("name", sorted(WGMMA_FC))
def test_every_wgmma_gemm_variant_alone(name: str, dtype: str) -> None:
    """Each loader (cp.async, TMA), tile shape and split-K of the wgmma GEMM on its own: the build
    keeps the fastest right one, so a wrong variant would otherwise only show in its details."""
    skip_unless_hopper()
    spec = WGMMA_FC[name]
    dt = get_dtype(dtype)
    tensors = make_tensors(spec, dt, "NCHW", DEVICE)
    found, no_tma = linear_wgmma.variants(spec, dt, tensors, make_output(spec, tensors), 0)
    assert no_tma is None and any(v.startswith("tma") for v in found), (no_tma, sorted(found))
    for variant in found:
        def only(spec: Linear, dt, layout: str, tensors, out: torch.Tensor, variant: str = variant):
            return linear_wgmma.variants(spec, dt, tensors, out, 0)[0][variant]

        assert_ok(only, spec, dtype, "NCHW")


@gpu
@pytest.mark.parametrize("dtype", ("fp16", "bf16"))
def test_linear_times_mma_sync_and_wgmma(dtype: str) -> None:
    """On Hopper the CuPy linear build times both GEMMs and records both (a failed wgmma path is
    recorded, not raised: only this test sees it)."""
    skip_unless_hopper()
    details = built_details("linear", Linear(2048, 2048, 2048), dtype, "NCHW")
    assert details["mma_sync_ms"] > 0 and details["wgmma_ms"] > 0, details
    assert details["path"] == min(("mma_sync", "wgmma"), key=lambda p: details[f"{p}_ms"])


POINTWISE = {"resnet-1x1-1024-256": Conv2d(8, 1024, 256, 14, 14, 1, 1, bias=False),
             "odd": Conv2d(3, 96, 24, 29, 31, 1, 1)}


@gpu
@pytest.mark.parametrize("dtype", ("fp16", "bf16"))
@pytest.mark.parametrize("name", sorted(POINTWISE))
def test_conv2d_pointwise_wgmma_alone(name: str, dtype: str) -> None:
    skip_unless_hopper()

    def wgmma_only(spec: Conv2d, dt, layout: str, tensors, out: torch.Tensor):
        gemm, views, out_matrix = forward_views(spec, layout, tensors, out)
        return linear_wgmma.build_wgmma(gemm, dt, views, out_matrix)

    assert_ok(wgmma_only, POINTWISE[name], dtype, "NHWC")


@gpu
def test_conv2d_pointwise_times_the_wgmma_gemm() -> None:
    skip_unless_hopper()
    details = built_details("conv2d", POINTWISE["resnet-1x1-1024-256"], "bf16", "NHWC")
    assert details["implicit_gemm_ms"] > 0 and details["wgmma_gemm_ms"] > 0, details


# Strided 1x1 NHWC convolutions (a ResNet projection; odd sizes, a stride per axis): the copy of the
# pixels on the stride's grid, then the wgmma GEMM.
STRIDED_POINTWISE = {"resnet-proj-256-512/2": Conv2d(4, 256, 512, 56, 56, 1, 1, stride=2, bias=False),
                     "odd-2x3": Conv2d(3, 40, 24, 29, 31, 1, 1, stride_h=2, stride_w=3)}



# The implicit GEMM on wgmma alone, every conv field: 16-byte channel runs (copied to NHWC from
# NCHW) and element-wise ones, stride, padding, dilation, groups, split-K, odd sizes.
WGMMA_CONV = {"resnet-3x3-128": Conv2d(4, 128, 128, 28, 28, 3, 3, padding=1),
              "strided-odd": Conv2d(3, 40, 72, 17, 19, 3, 3, stride=2, padding=1),
              "element-channels": Conv2d(2, 3, 64, 31, 29, 7, 7, stride=2, padding=3),
              "dilated-grouped": Conv2d(2, 64, 96, 20, 18, 3, 3, padding=2, dilation=2, groups=2, bias=False),
              "split-k-7x7": Conv2d(2, 512, 512, 7, 7, 3, 3, padding=1),
              "inception-1x7": Conv2d(2, 96, 64, 17, 17, 1, 7, padding_h=0, padding_w=3)}


@gpu
@pytest.mark.parametrize("layout", Conv2d.layouts)
@pytest.mark.parametrize("dtype", ("fp16", "bf16"))
@pytest.mark.parametrize("name", sorted(WGMMA_CONV))
def test_conv2d_wgmma_implicit_gemm_alone(name: str, dtype: str, layout: str) -> None:
    skip_unless_hopper()

    def wgmma_only(spec: Conv2d, dt, layout: str, tensors, out: torch.Tensor):
        return cupy_conv2d.build_igemm(spec, dt, tensors, out, wgmma=True)

    assert_ok(wgmma_only, WGMMA_CONV[name], dtype, layout)


@gpu
def test_conv2d_times_the_wgmma_implicit_gemm() -> None:
    skip_unless_hopper()
    details = built_details("conv2d", WGMMA_CONV["resnet-3x3-128"], "fp16", "NHWC")
    assert details["implicit_gemm_ms"] > 0 and details["wgmma_implicit_gemm_ms"] > 0, details


# The TMA convolution alone (every tile width, each checked at build): 3x3 on whole and ragged
# patches, channels past a block of 64, the strided phase view (3x3/2, 1x1/2, stride 3), dilation
# with per-axis padding, several images a patch, no bias, output channels stored from registers,
# a ResNet layer at its size and a VGG one's 64 channels.
TMA_CONV = {"resnet-3x3-128": Conv2d(8, 128, 128, 28, 28, 3, 3, padding=1),
            "ragged-3x3": Conv2d(3, 40, 72, 17, 19, 3, 3, padding=1),
            "channels-past-a-block": Conv2d(2, 72, 136, 13, 13, 3, 3, padding=1, bias=False),
            "resnet-3x3/2": Conv2d(4, 128, 128, 28, 28, 3, 3, stride=2, padding=1),
            "resnet-1x1/2": Conv2d(4, 256, 512, 28, 28, 1, 1, stride=2),
            "stride-3-7x7": Conv2d(2, 64, 64, 24, 21, 7, 7, stride=3, padding=3),
            "dilated-1x7": Conv2d(2, 96, 64, 17, 17, 1, 7, padding_h=0, padding_w=6, dilation=2),
            "images-a-patch": Conv2d(32, 512, 512, 7, 7, 3, 3, padding=1),
            "odd-out-channels": Conv2d(3, 64, 100, 15, 15, 3, 3, padding=1),
            "vgg-64-channels": Conv2d(2, 64, 64, 56, 56, 3, 3, padding=1),
            # the im2col mode alone: sides no multiple of the stride, 40 channels at stride 2
            "odd-sides-3x3/2": Conv2d(3, 40, 48, 15, 17, 3, 3, stride=2, padding=1)}

# The paths on Hopper alone, by the name the build records: (builder, cases, layouts, the case the
# registered build must time beside the implicit GEMM).
HOPPER_PATHS = {
    "strided_wgmma_gemm": (cupy_conv2d.build_strided_pointwise, STRIDED_POINTWISE, ("NHWC",), "resnet-proj-256-512/2"),
    "tma_implicit_gemm": (conv_tma.build, TMA_CONV, ("NHWC", "NCHW"), "resnet-3x3-128")}


@gpu
@pytest.mark.parametrize("dtype", ("fp16", "bf16"))
@pytest.mark.parametrize("path, name, layout", [(p, n, lt) for p, (_, cases, layouts, _) in HOPPER_PATHS.items()
                                                for n in sorted(cases) for lt in layouts])
def test_conv2d_hopper_path_alone(path: str, name: str, layout: str, dtype: str) -> None:
    skip_unless_hopper()
    builder, cases, _, _ = HOPPER_PATHS[path]
    assert_ok(builder, cases[name], dtype, layout)


@gpu
@pytest.mark.parametrize("layout", ("NHWC", "NCHW"))
@pytest.mark.parametrize("name", ["resnet-3x3-128", "vgg-64-channels", "images-a-patch", "odd-out-channels",
                                  "odd-sides-3x3/2"])
def test_every_tma_convolution_configuration_alone(name: str, layout: str) -> None:
    """Each tile width and blocks-an-SM of the TMA convolution on its own, in both modes (patches,
    runs of pixels through an im2col map): the build keeps the fastest right one, so a wrong
    configuration would otherwise only show in its details."""
    skip_unless_hopper()
    spec, dt = TMA_CONV[name], get_dtype("bf16")
    tensors = make_tensors(spec, dt, layout, DEVICE)
    found, _ = conv_tma.variants(spec, dt, layout, tensors, make_output(spec, tensors))
    modes = [r is None for r in (conv_tma_plan.patch_refusal(spec), conv_tma_plan.im2col_refusal(spec))]
    assert len(found) == sum(modes) * len(sources.TMA_CONFIGS), sorted(found)
    for variant in found:
        def only(spec: Conv2d, dt, layout: str, tensors, out: torch.Tensor, variant: str = variant):
            return conv_tma.variants(spec, dt, layout, tensors, out)[0][variant]

        assert_ok(only, spec, "bf16", layout)


@gpu
@pytest.mark.parametrize("path", sorted(HOPPER_PATHS))
def test_conv2d_hopper_path_is_timed_beside_the_implicit_gemm(path: str) -> None:
    skip_unless_hopper()
    _, cases, layouts, name = HOPPER_PATHS[path]
    details = built_details("conv2d", cases[name], "bf16", layouts[0])
    assert details["implicit_gemm_ms"] > 0 and details[f"{path}_ms"] > 0, details


# The lowered convolution (im2col + the linear layer's GEMM) alone on first layers of real networks
# (batch cut), a 1-channel dilated one with per-axis stride and padding, and rows too wide for one
# im2col block (in segments), every dtype.
LOWERED = {"vgg-conv1_1": Conv2d(4, 3, 64, 224, 224, 3, 3, padding=1),
           "resnet-stem": Conv2d(4, 3, 64, 224, 224, 7, 7, stride=2, padding=3, bias=False),
           "alexnet-conv1": Conv2d(8, 3, 96, 227, 227, 11, 11, stride=4),
           "grey-dilated": Conv2d(2, 1, 24, 61, 59, 5, 3, stride_h=2, padding_w=2, dilation=2),
           "wide-rows": Conv2d(2, 3, 16, 5, 3000, 3, 3, padding=1)}


@gpu
@pytest.mark.parametrize("dtype", ("fp32", "tf32", "fp16", "bf16"))
@pytest.mark.parametrize("name", sorted(LOWERED))
def test_lowered_convolution_alone(name: str, dtype: str) -> None:
    assert_ok(lowered_conv.build_lowered, LOWERED[name], dtype, "NHWC")


@gpu
def test_lowered_convolution_is_timed_beside_the_implicit_gemm() -> None:
    details = built_details("conv2d", LOWERED["vgg-conv1_1"], "bf16", "NHWC")
    assert details["implicit_gemm_ms"] > 0 and details["im2col_gemm_ms"] > 0, details


# The width unfold + TMA convolution alone on first layers of real networks (batch cut), an odd
# height (the TMA convolution's im2col mode) and a narrow, dilated one with per-axis stride and
# padding; both layouts (NCHW input copied to NHWC first).
UNFOLDED = {"vgg-conv1_1": LOWERED["vgg-conv1_1"], "resnet-stem": LOWERED["resnet-stem"],
            "alexnet-conv1": LOWERED["alexnet-conv1"],
            "grey-dilated": Conv2d(2, 2, 40, 62, 59, 5, 3, stride_h=2, stride_w=3, padding_w=2, dilation=2)}


@gpu
@pytest.mark.parametrize("layout", ("NHWC", "NCHW"))
@pytest.mark.parametrize("dtype", ("fp16", "bf16"))
@pytest.mark.parametrize("name", sorted(UNFOLDED))
def test_unfolded_convolution_alone(name: str, dtype: str, layout: str) -> None:
    skip_unless_hopper()
    assert_ok(lowered_conv.build_unfolded, UNFOLDED[name], dtype, layout)


@gpu
def test_unfolded_convolution_is_timed_beside_the_implicit_gemm() -> None:
    skip_unless_hopper()
    details = built_details("conv2d", UNFOLDED["resnet-stem"], "bf16", "NHWC")
    assert details["implicit_gemm_ms"] > 0 and details["unfolded_tma_ms"] > 0, details


# 1x1 convolutions on the pointwise GEMM. NCHW (one product per image): ResNet-50's bottleneck
# ends (batch cut; at 28 x 28 an odd batch, whose column tiles span images), a layer whose output
# channels and pixels end inside a tile, with a bias; MobileNetV2's few output channels and 14 x 14
# planes (pixels in chunks of four). NHWC (one product, bias by output channel): MobileNetV2's
# expansion and projection of few channels, output channels a multiple of 4 only, a wide layer.
POINTWISE = {"resnet-256-64": (Conv2d(8, 256, 64, 56, 56, 1, 1, bias=False), "NCHW"),
             "resnet-64-256": (Conv2d(8, 64, 256, 56, 56, 1, 1, bias=False), "NCHW"),
             "resnet-128-512@28": (Conv2d(5, 128, 512, 28, 28, 1, 1, bias=False), "NCHW"),
             "ragged": (Conv2d(3, 40, 136, 12, 18, 1, 1), "NCHW"),
             "few-out-24@56": (Conv2d(4, 96, 24, 56, 56, 1, 1), "NCHW"),
             "few-out-40@14": (Conv2d(6, 192, 40, 14, 14, 1, 1), "NCHW"),  # pixels in fours
             "expand-96-576@14": (Conv2d(5, 96, 576, 14, 14, 1, 1, bias=False), "NCHW"),
             "odd-in-fours": (Conv2d(3, 24, 200, 10, 18, 1, 1), "NCHW"),  # 180 pixels: a multiple of 4
             "nhwc-expand-24-144@56": (Conv2d(4, 24, 144, 56, 56, 1, 1), "NHWC"),
             "nhwc-project-32-16@112": (Conv2d(2, 32, 16, 112, 112, 1, 1), "NHWC"),
             "nhwc-odd-rows": (Conv2d(3, 40, 100, 13, 7, 1, 1, bias=False), "NHWC"),  # 100 channels: in fours
             "nhwc-wide": (Conv2d(2, 256, 1000, 9, 9, 1, 1), "NHWC")}


@gpu
@pytest.mark.parametrize("dtype", ("fp16", "bf16"))
@pytest.mark.parametrize("name", sorted(POINTWISE))
def test_pointwise_gemm_alone(name: str, dtype: str) -> None:
    spec, layout = POINTWISE[name]
    assert_ok(pointwise_gemm.build, spec, dtype, layout)


@gpu
@pytest.mark.parametrize("block_m", sources.POINTWISE_GEMM_BLOCKS_M)
@pytest.mark.parametrize("name", ("few-out-40@14", "odd-in-fours", "nhwc-odd-rows"))
def test_pointwise_gemm_each_block_shape(name: str, block_m: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every block shape right on its own, not only the one a build keeps."""
    monkeypatch.setattr(pointwise_gemm, "blocks_m", lambda rows: (block_m,))
    spec, layout = POINTWISE[name]
    assert_ok(pointwise_gemm.build, spec, "bf16", layout)


@gpu
def test_pointwise_gemms_are_timed_beside_the_implicit_gemm() -> None:
    for name, path in (("resnet-256-64", "nchw_pointwise_gemm"), ("nhwc-expand-24-144@56", "nhwc_pointwise_gemm")):
        spec, layout = POINTWISE[name]
        details = built_details("conv2d", spec, "bf16", layout)
        assert details["implicit_gemm_ms"] > 0 and details[f"{path}_ms"] > 0, details


@pytest.mark.parametrize("spec, dtype, reason", [
    (Linear(4, 64, 8), "fp32", "fp16 and bf16"),
    (Linear(4, 60, 8), "bf16", "multiple of 8"),
])
def test_linear_wgmma_says_what_it_cannot_run(spec: Linear, dtype: str, reason: str) -> None:
    tensors = make_tensors(spec, dtype, "NCHW", "cpu")
    with pytest.raises(Unsupported, match=reason):
        linear_wgmma.check_layer(spec, get_dtype(dtype), tensors, make_output(spec, tensors), 0)


def test_strided_pointwise_view() -> None:
    """A strided unpadded 1x1 convolution is the stride-1 one over the pixels on the stride's grid;
    any other point is refused by name before a view is made (a 3x3 window would not fit the plane)."""
    spec = Conv2d(2, 16, 8, 9, 10, 1, 1, stride_h=2, stride_w=3)
    dense = subsampled(spec)
    assert (dense.height, dense.width, dense.stride_h, dense.stride_w) == (5, 4, 1, 1)
    assert dense.output_shape == spec.output_shape and strided_refusal(spec, "NHWC") is None
    window = Conv2d(2, 8, 6, 9, 7, 3, 3, stride_h=2, stride_w=1, padding_h=1, padding_w=0, dilation=2, groups=2)
    assert "1x1 filter" in strided_refusal(window, "NHWC")
    with pytest.raises(ValueError, match="unpadded 1x1"):
        subsampled(window)


@pytest.mark.parametrize("spec, reason", [
    (Conv2d(2, 16, 8, 9, 9, 1, 1, stride=2, padding=1), "no padding"),
    (Conv2d(2, 16, 8, 9, 9, 3, 3, stride=2), "1x1 filter"),
    (Conv2d(2, 16, 8, 9, 9, 1, 1), "stride 1: the pointwise GEMM runs it"),
], ids=str)
def test_strided_pointwise_says_what_it_cannot_run(spec: Conv2d, reason: str) -> None:
    tensors = make_tensors(spec, "bf16", "NHWC", "cpu")
    with pytest.raises(Unsupported, match=reason):
        cupy_conv2d.build_strided_pointwise(spec, get_dtype("bf16"), "NHWC", tensors, make_output(spec, tensors, "NHWC"))


def test_linear_wgmma_refuses_a_strided_input() -> None:
    spec = Linear(4, 64, 8)
    tensors = make_tensors(spec, "bf16", "NCHW", "cpu")
    tensors["x"] = torch.zeros(64, 4, dtype=torch.bfloat16).t()
    with pytest.raises(Unsupported, match="contiguous x"):
        linear_wgmma.check_layer(spec, get_dtype("bf16"), tensors, make_output(spec, tensors), 0)


# ---------------------------------------------------------------- unsupported points


@pytest.mark.parametrize("layer, spec, dtype, layout, reason", [
    ("pool2d", Pool2d(2, 4, 8, 8, 2, 2), "tf32", "NCHW", "tf32"),
    ("relu", ReLU(2, 4, 8, 8), "tf32", "NCHW", "tf32"),
    ("relu", ReLU(2, 4, 8, 8), "fp32", "NHWC", "NHWC"),
    ("linear", Linear(4, 8, 8), "fp16", "NHWC", "NHWC"),
])
def test_unsupported_points_say_why(layer: str, spec: object, dtype: str, layout: str, reason: str) -> None:
    """Dtype and layout are checked before anything touches the device (CPU tensors here)."""
    dt = get_dtype(dtype)
    tensors = make_tensors(spec, dtype, "NCHW", "cpu")
    out = make_output(spec, tensors)
    with pytest.raises(Unsupported, match=reason):
        impl(layer).build(spec, dt, layout, tensors, out)


def test_cpu_tensors_are_unsupported() -> None:
    spec = ReLU(1, 2, 3, 4)
    tensors = make_tensors(spec, "fp32", "NCHW", "cpu")
    with pytest.raises(Unsupported, match="CUDA tensors"):
        impl("relu").build(spec, get_dtype("fp32"), "NCHW", tensors, make_output(spec, tensors))
