"""The Triton convolution's backward passes (kernels/triton/conv2d_backward.py): data gradient,
weight and bias gradients, and the training pass they compose with the forward.

Interpreter tests (CPU tensors, tiny shapes, under TRITON_INTERPRET) and GPU tests (realistic
shapes, every dtype and layout) go through layerbench.testing.check_implementation: fresh random
inputs, outputs poisoned with NaN, float64 autograd reference, tolerance by dtype and part.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels.triton  # noqa: F401 - registers the kernels
from kernels.triton import conv2d_backward as backward
from kernels.triton import depthwise_backward as depthwise
from kernels.triton import pointwise_conv
from kernels.triton.support import next_pow2, pixel_run
from layerbench.dtypes import get_dtype
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d
from layerbench.launch import make_batch
from layerbench.registry import get
from layerbench.testing import check_implementation, make_output, make_tensors, specs

SEEDS = st.integers(0, 2**32 - 1)
LAYOUTS = ("NCHW", "NHWC")
BACKWARD = ("backward_data", "backward_weight")


def check(spec: Conv2d, dtype: str, layout: str, seed: int, device: str) -> None:
    result = check_implementation(get("conv2d", "triton"), spec, dtype, layout, device, seed=seed)
    assert result.ok, f"{spec} {dtype} {layout} seed={seed}: {result.message}"


def seed_of(name: str) -> int:
    return zlib.crc32(name.encode())


def at(spec: Conv2d, direction: str) -> Conv2d:
    return dataclasses.replace(spec, direction=direction)


# ------------------------------------------------------------------------- interpreter

# A few hundred outputs each.  16 channels per group take the channel-blocked dgrad walk and the
# tap-blocked wgrad walk (32 output channels: two channel blocks a tap in dgrad under the
# interpreter's tile); fewer take the flat walks.
CASES = {
    "stride2-pad1": Conv2d(2, 3, 4, 9, 11, 3, 3, stride=2, padding=1),
    "blocked-stride2": Conv2d(1, 16, 32, 7, 6, 3, 3, stride=2, padding=1),
    "dilation2": Conv2d(1, 4, 5, 9, 8, 3, 3, padding=2, dilation=2, bias=False),
    # stride 2 with dilation 2: odd rows and columns are reached by no tap at all.
    "stride2-dilation2": Conv2d(1, 3, 4, 8, 9, 2, 2, stride=2, padding=1, dilation=2),
    "groups2": Conv2d(2, 6, 4, 6, 7, 3, 3, padding=1, groups=2),
    "groups2-blocked": Conv2d(1, 32, 32, 4, 5, 3, 3, padding=1, groups=2, bias=False),
    "depthwise": Conv2d(2, 5, 5, 7, 6, 3, 3, padding=1, groups=5),
    "depthwise-multiplier2-stride2": Conv2d(1, 3, 6, 8, 7, 3, 3, stride=2, padding=1, groups=3, bias=False),
    "1x1": Conv2d(2, 6, 5, 5, 4, 1, 1),
    "1x1-stride2-blocked": Conv2d(1, 16, 16, 6, 7, 1, 1, stride=2, bias=False),
    "per-axis": Conv2d(1, 3, 4, 7, 10, 3, 2, stride_h=1, stride_w=3, padding_h=2, padding_w=0,
                       dilation_h=2, dilation_w=1),
    "odd-sizes-stride3": Conv2d(3, 5, 7, 5, 9, 2, 3, stride=3, padding=1),
}


@pytest.mark.interpreter
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("direction", BACKWARD)
@pytest.mark.parametrize("name", CASES)
def test_case(name: str, direction: str, layout: str) -> None:
    # fp32 and bf16 by turns, so each dtype meets every walk in both layouts.
    dtype = ("fp32", "bf16")[(list(CASES).index(name) + LAYOUTS.index(layout)) % 2]
    check(at(CASES[name], direction), dtype, layout, seed_of(name + direction), "cpu")


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", ["tf32", "fp16"])
@pytest.mark.parametrize("direction", BACKWARD)
def test_other_dtypes(direction: str, dtype: str) -> None:
    check(at(CASES["blocked-stride2"], direction), dtype, "NHWC", seed_of(dtype), "cpu")


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype, layout, bias", [("fp32", "NCHW", True), ("fp16", "NHWC", False)])
def test_training(dtype: str, layout: str, bias: bool) -> None:
    """Forward, dgrad and wgrad in a row, each into its part of one buffer (the forward runs plain
    convolutions and no bf16 under the interpreter)."""
    spec = Conv2d(2, 16, 5, 6, 5, 3, 3, stride=2, padding=1, bias=bias, direction="training")
    check(spec, dtype, layout, seed_of(dtype + layout), "cpu")


@pytest.mark.interpreter
@settings(max_examples=8)
@given(spec=st.sampled_from(BACKWARD).flatmap(lambda d: specs(
           "conv2d", max_batch=2, max_channels=18, max_hw=7, max_kernel=3, max_stride=3, max_padding=2,
           max_dilation=2, max_groups=3, per_axis=True, direction=d)),
       dtype=st.sampled_from(["fp32", "bf16"]), layout=st.sampled_from(LAYOUTS), seed=SEEDS)
def test_drawn(spec: Conv2d, dtype: str, layout: str, seed: int) -> None:
    check(spec, dtype, layout, seed, "cpu")


@pytest.mark.interpreter
@pytest.mark.parametrize("name", ["stride2-pad1", "1x1", "odd-sizes-stride3"])
def test_dgrad_through_an_nhwc_buffer(name: str) -> None:
    """The other way to NCHW dx (the GPU build keeps it where it is faster): the GEMM into an NHWC
    buffer, then the layout copy."""
    def through_nhwc(spec, dtype, layout, tensors, out):
        built = backward.dgrad_with_store(spec, dtype, layout, tensors, out, "via_nhwc")
        assert built.details == {"algorithm": "implicit_gemm_via_nhwc"}
        return built

    spec = at(CASES[name], "backward_data")
    result = check_implementation(through_nhwc, spec, "fp32", "NCHW", "cpu", seed=seed_of(name))
    assert result.ok, result.message


@pytest.mark.interpreter
@pytest.mark.parametrize("direction", BACKWARD)
def test_checker_catches_a_mirrored_operand(direction: str) -> None:
    """The checks can fail: the gradients with the kernel (dgrad) or the input (wgrad) mirrored
    left to right have the right shape and wrong values."""
    build = get("conv2d", "triton").build
    operand = "weight" if direction == "backward_data" else "x"

    def mirrored(spec, dtype, layout, tensors, out):
        return build(spec, dtype, layout, dict(tensors, **{operand: tensors[operand].flip(3).contiguous()}), out)

    spec = at(Conv2d(1, 3, 4, 7, 7, 3, 3, padding=1), direction)
    result = check_implementation(mirrored, spec, "fp32", "NCHW", "cpu", seed=2)
    assert not result.ok and result.nonfinite == 0, result.message


@pytest.mark.interpreter
@pytest.mark.parametrize("direction", BACKWARD)
def test_depthwise_runs_the_direct_kernels(direction: str) -> None:
    for spec, algorithm in ((CASES["depthwise"], "depthwise"), (CASES["groups2"], "implicit_gemm")):
        spec = at(spec, direction)
        tensors = make_tensors(spec, "fp32", "NCHW", "cpu")
        built = get("conv2d", "triton").build(spec, get_dtype("fp32"), "NCHW", tensors,
                                              make_output(spec, tensors, "NCHW"))
        assert built.details["algorithm"] == algorithm


@pytest.mark.parametrize("taps", [1, 9, 25, 49])
def test_depthwise_wgrad_tiles_fit_the_accumulator(taps: int) -> None:
    configs = depthwise._wgrad_configs(next_pow2(taps))
    assert configs
    for cfg in configs:
        p, c = cfg.kwargs["BLOCK_P"], cfg.kwargs["BLOCK_C"]
        assert next_pow2(taps) * p * c <= max(depthwise._WGRAD_ACC) and depthwise._ROW_QUANTUM % p == 0


@pytest.mark.parametrize("direction", BACKWARD)
def test_groups_past_the_grid_axis_are_refused_with_the_reason(direction: str) -> None:
    impl = get("conv2d", "triton")
    grouped = Conv2d(1, 2 * 70000, 2 * 70000, 1, 1, 1, 1, groups=70000, direction=direction)
    assert "65535 groups" in impl.unsupported_reason(grouped, "fp16", "NHWC", "cuda")
    depthwise_ = Conv2d(1, 70000, 70000, 1, 1, 1, 1, groups=70000, direction=direction)  # direct kernels
    assert impl.unsupported_reason(depthwise_, "fp16", "NHWC", "cuda") is None


def test_tap_block_choice() -> None:
    assert [backward.tap_block(c, 128) for c in (3, 16, 17, 31, 64, 96, 120, 128, 256, 1)] == \
        [0, 16, 0, 32, 64, 32, 128, 128, 128, 0]
    assert backward.tap_block(256, 64) == 64


@given(n=st.integers(1, 5), c=st.integers(1, 40), h=st.integers(1, 30), w=st.integers(1, 30),
       element_size=st.sampled_from([2, 4]))
def test_nchw_store_hints_hold(n: int, c: int, h: int, w: int, element_size: int) -> None:
    """What the NCHW epilogues tell the compiler (runs of PIX_RUN tile rows contiguous, starting
    on a multiple of PIX_RUN, the store mask constant over a run) holds for every lane, those past
    the edge included: the same index math in numpy, dgrad with one stride phase and the forward."""
    run = pixel_run(h * w, element_size)
    assert run * element_size <= 16 and (h * w) % run == 0
    assert run == 16 // element_size or (h * w) % (2 * run) != 0
    offs = np.arange(next_pow2(n * h * w) + 64)  # whole tiles: lanes past the edge too
    dgrad = (offs // (w * h)) * c * h * w + ((offs // w) % h) * w + offs % w
    forward = (offs // (h * w)) * c * h * w + (offs - (offs // (h * w)) * h * w)  # P, Q = h, w; KY = c
    for pix in (dgrad, forward):
        runs = pix.reshape(-1, run)
        assert (runs[:, 0] % run == 0).all() and (np.diff(runs, axis=1) == 1).all()
    assert ((np.arange(c) * h * w) % run == 0).all()  # the planes' offsets
    valid = offs < n * h * w
    assert (((offs // run) * run < n * h * w) == valid).all()


def test_splits_need_long_slices() -> None:
    """On the GPU a slice count is tried only where each slice keeps MIN_SLICE reduction indices."""
    spec = Conv2d(2, 8, 8, 32, 32, 3, 3, padding=1, direction="backward_weight")  # 2048 indices
    assert [s for s, _ in backward._slice_candidates(spec, False, 16)] == [1, 2]
    assert backward._slice_candidates(spec, True, 16) == [(2, 16)]
    tiny = dataclasses.replace(spec, batch=1, height=4, width=4)  # 16 indices: one BLOCK_K
    assert backward._slice_candidates(tiny, True, 16) == [(1, 16)]


# ------------------------------------------------------------------------- 1x1 NHWC as the linear GEMMs

def pointwise_only(spec: Conv2d, dtype, layout: str, tensors, out: torch.Tensor):
    """The linear layer's backward GEMM on views (the build times it against the implicit GEMM on a GPU)."""
    return pointwise_conv.build_pointwise_backward(spec, dtype, layout, tensors, out)


@given(batch=st.integers(1, 3), channels=st.integers(1, 24), out_channels=st.integers(1, 24),
       height=st.integers(1, 5), width=st.integers(1, 5), bias=st.booleans(),
       direction=st.sampled_from(BACKWARD), dtype=st.sampled_from(("fp32", "tf32", "fp16")), seed=SEEDS)
def test_pointwise_gemm_backward_drawn(batch: int, channels: int, out_channels: int, height: int, width: int,
                                       bias: bool, direction: str, dtype: str, seed: int) -> None:
    spec = Conv2d(batch, channels, out_channels, height, width, 1, 1, bias=bias, direction=direction)
    result = check_implementation(pointwise_only, spec, dtype, "NHWC", "cpu", seed=seed)
    assert result.ok, f"{spec} {dtype} seed={seed}: {result.message}"


# ------------------------------------------------------------------------- 1x1 NCHW data gradient per image

def nchw_dgrad_only(spec: Conv2d, dtype, layout: str, tensors, out: torch.Tensor):
    """dx[n] = W^T @ dy[n] per image, alone (the build times it against the implicit GEMM on a GPU)."""
    return pointwise_conv.build_nchw_pointwise_dgrad(spec, dtype, layout, tensors, out)


# Channel counts across the interpreter's 16-wide tiles both ways (the weight is read transposed),
# several images; a bias on the layer changes nothing in dx.
@given(batch=st.integers(1, 3), channels=st.integers(1, 40), out_channels=st.integers(1, 40),
       height=st.integers(1, 6), width=st.integers(1, 6), bias=st.booleans(),
       dtype=st.sampled_from(("fp32", "tf32", "fp16")), seed=SEEDS)
def test_nchw_pointwise_dgrad_drawn(batch: int, channels: int, out_channels: int, height: int, width: int,
                                    bias: bool, dtype: str, seed: int) -> None:
    spec = Conv2d(batch, channels, out_channels, height, width, 1, 1, bias=bias, direction="backward_data")
    result = check_implementation(nchw_dgrad_only, spec, dtype, "NCHW", "cpu", seed=seed)
    assert result.ok, f"{spec} {dtype} seed={seed}: {result.message}"


def nchw_wgrad_only(spec: Conv2d, dtype, layout: str, tensors, out: torch.Tensor):
    """dW = sum over images of dy[n] @ x[n]^T, alone (no bias: the build adds the bias gradient)."""
    return pointwise_conv.build_nchw_pointwise_wgrad(spec, dtype, layout, tensors["x"], tensors["dy"], out)


# Several images (two slices of fp32 partials where there are two or more), channel and pixel
# counts across the interpreter's 16-wide tiles.
@given(batch=st.integers(1, 3), channels=st.integers(1, 40), out_channels=st.integers(1, 40),
       height=st.integers(1, 6), width=st.integers(1, 6), dtype=st.sampled_from(("fp32", "tf32", "fp16")),
       seed=SEEDS)
def test_nchw_pointwise_wgrad_drawn(batch: int, channels: int, out_channels: int, height: int, width: int,
                                    dtype: str, seed: int) -> None:
    spec = Conv2d(batch, channels, out_channels, height, width, 1, 1, bias=False, direction="backward_weight")
    result = check_implementation(nchw_wgrad_only, spec, dtype, "NCHW", "cpu", seed=seed)
    assert result.ok, f"{spec} {dtype} seed={seed}: {result.message}"


def test_nchw_pointwise_dgrad_refuses_other_layers() -> None:
    spec = Conv2d(1, 4, 4, 5, 5, 1, 1, stride=2, direction="backward_data")
    tensors = make_tensors(spec, "fp16", "NCHW", "cpu")
    with pytest.raises(Unsupported, match="stride 2x2"):
        nchw_dgrad_only(spec, get_dtype("fp16"), "NCHW", tensors, make_output(spec, tensors, "NCHW"))


# ------------------------------------------------------------------------- GPU: realistic shapes

# ResNet-50 layers, batch 8-32, in every dtype and layout.
GPU_CORE = {
    "resnet-3x3-64": Conv2d(16, 64, 64, 56, 56, 3, 3, padding=1, bias=False),
    "resnet-3x3-s2-128": Conv2d(16, 128, 128, 56, 56, 3, 3, stride=2, padding=1, bias=False),
    "resnet-1x1-256-64": Conv2d(16, 256, 64, 56, 56, 1, 1, bias=False),
}
# More realistic layers (MobileNetV2, ResNeXt, dilated, with bias), each dtype in turn.
GPU_MORE = {
    "resnet-1x1-s2-512-1024": Conv2d(8, 512, 1024, 28, 28, 1, 1, stride=2, bias=False),
    "resnet-3x3-512-bias": Conv2d(32, 512, 512, 7, 7, 3, 3, padding=1),
    "stem-7x7-s2": Conv2d(8, 3, 64, 224, 224, 7, 7, stride=2, padding=3),
    "mobilenet-depthwise-s2": Conv2d(8, 144, 144, 56, 56, 3, 3, stride=2, padding=1, groups=144, bias=False),
    "depthwise-5x5-multiplier2": Conv2d(8, 32, 64, 28, 28, 5, 5, padding=2, groups=32),
    "resnext-groups32": Conv2d(8, 256, 256, 28, 28, 3, 3, padding=1, groups=32, bias=False),
    "dilated-2": Conv2d(8, 256, 256, 28, 28, 3, 3, padding=2, dilation=2),
}


@pytest.mark.gpu
@pytest.mark.parametrize("layout", Conv2d.layouts)
@pytest.mark.parametrize("dtype", Conv2d.dtypes)
@pytest.mark.parametrize("direction", BACKWARD)
@pytest.mark.parametrize("name", GPU_CORE)
def test_gpu_core(name: str, direction: str, dtype: str, layout: str) -> None:
    check(at(GPU_CORE[name], direction), dtype, layout, seed_of(name), "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", Conv2d.dtypes)
@pytest.mark.parametrize("direction", BACKWARD)
@pytest.mark.parametrize("spec", [Conv2d(8, 1024, 256, 14, 14, 1, 1, bias=False), Conv2d(3, 96, 24, 29, 31, 1, 1)],
                         ids=str)
def test_gpu_pointwise_gemm_backward(spec: Conv2d, direction: str, dtype: str) -> None:
    result = check_implementation(pointwise_only, at(spec, direction), dtype, "NHWC", "cuda", seed=seed_of(str(spec)))
    assert result.ok, f"{spec} {direction} {dtype}: {result.message}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", Conv2d.dtypes)
@pytest.mark.parametrize("spec", [Conv2d(8, 256, 64, 56, 56, 1, 1, bias=False), Conv2d(3, 96, 24, 29, 31, 1, 1)],
                         ids=str)
def test_gpu_nchw_pointwise_dgrad(spec: Conv2d, dtype: str) -> None:
    result = check_implementation(nchw_dgrad_only, at(spec, "backward_data"), dtype, "NCHW", "cuda",
                                  seed=seed_of(str(spec)))
    assert result.ok, f"{spec} {dtype}: {result.message}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", Conv2d.dtypes)
@pytest.mark.parametrize("spec", [Conv2d(8, 256, 64, 56, 56, 1, 1, bias=False), Conv2d(3, 96, 24, 29, 31, 1, 1,
                                                                                        bias=False)], ids=str)
def test_gpu_nchw_pointwise_wgrad(spec: Conv2d, dtype: str) -> None:
    result = check_implementation(nchw_wgrad_only, at(spec, "backward_weight"), dtype, "NCHW", "cuda",
                                  seed=seed_of(str(spec)))
    assert result.ok, f"{spec} {dtype}: {result.message}"


@pytest.mark.gpu
def test_gpu_nchw_pointwise_wgrad_with_bias_is_timed_beside_the_implicit_gemm() -> None:
    spec = at(Conv2d(16, 256, 64, 56, 56, 1, 1), "backward_weight")  # the build adds the bias gradient
    result = check_implementation(backward.build_wgrad, spec, "bf16", "NCHW", "cuda", seed=seed_of("wgrad-bias"))
    assert result.ok, result.message
    tensors = make_tensors(spec, "bf16", "NCHW", "cuda")
    details = backward.build_wgrad(spec, get_dtype("bf16"), "NCHW", tensors, make_output(spec, tensors, "NCHW")).details
    assert details["nchw_pointwise_gemm_ms"] > 0 and details["implicit_gemm_ms"] > 0, details


@pytest.mark.gpu
def test_gpu_nchw_pointwise_dgrad_is_timed_beside_the_implicit_gemm() -> None:
    spec = at(GPU_CORE["resnet-1x1-256-64"], "backward_data")
    tensors = make_tensors(spec, "bf16", "NCHW", "cuda")
    details = backward.build_dgrad(spec, get_dtype("bf16"), "NCHW", tensors, make_output(spec, tensors, "NCHW")).details
    assert details["nchw_pointwise_gemm_ms"] > 0 and details["implicit_gemm_ms"] > 0, details


@pytest.mark.gpu
@pytest.mark.parametrize("store", ["direct", "via_nhwc", "choose"])
@pytest.mark.parametrize("name", ["resnet-3x3-s2-128", "resnet-3x3-512-bias"])
def test_gpu_each_nchw_dgrad_store(name: str, store: str) -> None:
    """Strided and 7x7 (odd) layers, where the GPU build times both ways to NCHW dx."""
    spec = at({**GPU_CORE, **GPU_MORE}[name], "backward_data")
    details: dict = {}

    def build(spec, dtype, layout, tensors, out):
        built = backward.dgrad_with_store(spec, dtype, layout, tensors, out, store)
        details.update(built.details)
        return built

    result = check_implementation(build, spec, "bf16", "NCHW", "cuda", seed=seed_of(name))
    assert result.ok, result.message
    if store == "choose":
        assert details["algorithm"] in ("implicit_gemm", "implicit_gemm_via_nhwc")
        assert details["implicit_gemm_ms"] > 0 and details["implicit_gemm_via_nhwc_ms"] > 0


@pytest.mark.gpu
@pytest.mark.parametrize("layout", Conv2d.layouts)
@pytest.mark.parametrize("direction", BACKWARD)
@pytest.mark.parametrize("name", GPU_MORE)
def test_gpu_more(name: str, direction: str, layout: str) -> None:
    dtype = Conv2d.dtypes[(list(GPU_MORE).index(name) + Conv2d.layouts.index(layout)) % len(Conv2d.dtypes)]
    check(at(GPU_MORE[name], direction), dtype, layout, seed_of(name), "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("layout", Conv2d.layouts)
@pytest.mark.parametrize("dtype", Conv2d.dtypes)
def test_gpu_training(dtype: str, layout: str) -> None:
    check(Conv2d(16, 64, 128, 28, 28, 3, 3, stride=2, padding=1, direction="training"), dtype, layout,
          seed_of(dtype), "cuda")


# The autotuner keeps one config per problem; each config is forced here on sizes that cut every
# tile edge, on the blocked walks (64 channels) and the flat ones (3).
CONFIG_CASES = {"blocked": (Conv2d(3, 64, 40, 11, 13, 3, 3, stride=2, padding=1), "NHWC"),
                "flat": (Conv2d(2, 3, 20, 12, 12, 5, 5, padding=2), "NCHW")}


def _tile_tables(direction: str) -> tuple[dict, object]:
    """The pass's config table (by dot mode) and its cached tile lists."""
    return ((backward._DGRAD_CONFIGS, backward._dgrad_tiles) if direction == "backward_data"
            else (backward._WGRAD_CONFIGS, backward._wgrad_tiles))


# One test a config, so that parallel workers share them out.
TILE_CONFIG_CASES = [(direction, dtype, i) for direction in BACKWARD for dtype in ("fp16", "tf32", "fp32")
                     for i in range(len(_tile_tables(direction)[0][backward.DOT_MODE[dtype]]))]


@pytest.mark.gpu
@pytest.mark.parametrize("direction, dtype, index", TILE_CONFIG_CASES)
def test_gpu_every_tile_config(direction: str, dtype: str, index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    table, tiles = _tile_tables(direction)
    mode = backward.DOT_MODE[dtype]
    config = table[mode][index]
    try:
        monkeypatch.setitem(table, mode, [config])
        tiles.cache_clear()
        for name, (spec, layout) in CONFIG_CASES.items():
            result = check_implementation(get("conv2d", "triton"), at(spec, direction), dtype, layout,
                                          "cuda", seed=seed_of(name))
            assert result.ok, f"{config} {name} {dtype}: {result.message}"
    finally:
        tiles.cache_clear()


@pytest.mark.gpu
@pytest.mark.parametrize("direction", BACKWARD)
def test_gpu_every_depthwise_tile(direction: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = at(Conv2d(3, 40, 40, 11, 13, 3, 3, stride=2, padding=1, groups=40), direction)
    configs = depthwise._DGRAD_CONFIGS if direction == "backward_data" else depthwise._wgrad_configs(16)
    for config in configs:
        if direction == "backward_data":
            monkeypatch.setattr(depthwise, "_DGRAD_CONFIGS", [config])
        else:
            monkeypatch.setattr(depthwise, "_wgrad_configs", lambda taps, config=config: [config])
        for layout in Conv2d.layouts:
            result = check_implementation(get("conv2d", "triton"), spec, "bf16", layout, "cuda", seed=7)
            assert result.ok, f"{config} {layout}: {result.message}"


@pytest.mark.gpu
@settings(max_examples=10)
@given(spec=st.sampled_from(BACKWARD).flatmap(lambda d: specs(
           "conv2d", max_batch=4, max_channels=72, max_hw=30, max_kernel=5, max_stride=3, max_padding=3,
           max_dilation=3, max_groups=4, per_axis=True, direction=d)),
       dtype=st.sampled_from(Conv2d.dtypes), layout=st.sampled_from(Conv2d.layouts), seed=SEEDS)
def test_gpu_drawn(spec: Conv2d, dtype: str, layout: str, seed: int) -> None:
    check(spec, dtype, layout, seed, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("direction", BACKWARD)
def test_gpu_capturable_in_a_cuda_graph(direction: str) -> None:
    """Workspaces are allocated in build: the launches (split-K and its sum included) replay in a
    CUDA graph, as the harness runs short kernels."""
    build = get("conv2d", "triton").build

    def captured(spec, dtype, layout, tensors, out):
        eager = build(spec, dtype, layout, tensors, out)
        eager()
        replay, mode, error = make_batch(eager, 1, out.device)
        assert mode == "cuda-graph", error
        return replay

    spec = at(Conv2d(8, 64, 64, 28, 28, 3, 3, stride=2, padding=1), direction)
    result = check_implementation(captured, spec, "bf16", "NHWC", "cuda", seed=11)
    assert result.ok, result.message


@pytest.mark.gpu
def test_gpu_wgrad_records_its_slices() -> None:
    spec = at(GPU_CORE["resnet-3x3-64"], "backward_weight")
    tensors = make_tensors(spec, "bf16", "NHWC", "cuda")
    built = get("conv2d", "triton").build(spec, get_dtype("bf16"), "NHWC", tensors,
                                          make_output(spec, tensors, "NHWC"))
    assert built.details["slices"] in backward.SPLIT_CANDIDATES
    torch.cuda.synchronize()
