"""Triton kernels on a CUDA GPU at realistic shapes (thesis layers, AlexNet, the conv fields of
MobileNetV2, Inception, DeepLab and ResNeXt), every dtype and layout.

Batch sizes are cut to 8-32 where the float64 reference would otherwise dominate; channel counts
and spatial sizes are the real ones.  The first run is dominated by Triton compiling and
autotuning (configs compile in parallel); later runs hit Triton's on-disk cache.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels.triton  # noqa: F401 - registers the kernels
from kernels.triton import conv2d as triton_conv
from kernels.triton import (conv_tma, depthwise, depthwise_pairs, depthwise_rows, fft_conv, gemv, linear, linear_tma,
                            lowered_conv, pointwise_conv, pool2d)
from kernels.triton.support import DOT_MODE
from layerbench.builders import as_built
from layerbench.launch import make_batch
from layerbench.dtypes import get_dtype
from layerbench.errors import Unsupported
from layerbench.registry import get
from layerbench.layers import Conv2d, Linear, Pool2d, ReLU
from layerbench.testing import check_implementation, make_output, make_tensors, specs

pytestmark = pytest.mark.gpu

SEEDS = st.integers(0, 2**32 - 1)


def check(layer: str, spec, dtype: str, layout: str, seed: int) -> None:
    result = check_implementation(get(layer, "triton"), spec, dtype, layout, "cuda", seed=seed)
    assert result.ok, f"{spec} {dtype} {layout} seed={seed}: {result.message}"


def seed_of(name: str) -> int:
    return zlib.crc32(name.encode())


# Thesis Table 6-1 (docs/thesis-experiments.md A4), batch 8 instead of 128.
THESIS_CONV = {
    "L1": Conv2d(8, 3, 96, 128, 128, 11, 11),
    "L2": Conv2d(8, 64, 128, 64, 64, 9, 9),
    "L3": Conv2d(8, 128, 128, 32, 32, 9, 9),
    "L4": Conv2d(8, 128, 128, 16, 16, 7, 7),
    "L5": Conv2d(8, 384, 384, 13, 13, 3, 3),
    "L6": Conv2d(8, 192, 192, 27, 27, 5, 5),
}
OTHER_CONV = {
    "alexnet-conv1-stride4": Conv2d(8, 3, 64, 227, 227, 11, 11, stride=4, padding=2),
    "alexnet-conv2-pad2": Conv2d(8, 64, 192, 27, 27, 5, 5, padding=2),
    # Both without bias: they then share one compiled variant (C, K, C*R*S all odd-ish).
    "odd-channels-stride2-no-bias": Conv2d(8, 5, 7, 31, 17, 3, 5, stride=2, padding=1, bias=False),
    "channels-17-no-bias": Conv2d(4, 17, 33, 20, 30, 3, 3, stride=2, padding=1, bias=False),
    "resnet-1x1-stride2": Conv2d(8, 256, 512, 28, 28, 1, 1, stride=2),
}


@pytest.mark.parametrize("layout", Conv2d.layouts)
@pytest.mark.parametrize("dtype", Conv2d.dtypes)
@pytest.mark.parametrize("name", list(THESIS_CONV) + list(OTHER_CONV))
def test_conv2d(name: str, dtype: str, layout: str) -> None:
    spec = THESIS_CONV.get(name) or OTHER_CONV[name]
    check("conv2d", spec, dtype, layout, seed_of(name))


# The autotuner keeps one config per problem, so the bench shapes alone leave most tiles of the
# tuned set unchecked.  Each config is forced here: on the channel-blocked walk (C = 64, every
# BLOCK_K) with pixels and channels past the tile edges, and on the flat walk (C = 3).
CONFIG_CASES = {"channel-blocked": (Conv2d(3, 64, 40, 11, 13, 3, 3, padding=1), "NHWC"),
                "flat": (Conv2d(2, 3, 20, 12, 12, 5, 5), "NCHW")}


# One test a config, so that parallel workers share them out.
TILE_CONFIG_CASES = [(dtype, i) for dtype in ("fp16", "tf32", "fp32")
                     for i in range(len(triton_conv._CONFIGS[triton_conv.DOT_MODE[dtype]]))]


@pytest.mark.parametrize("dtype, index", TILE_CONFIG_CASES)
def test_conv2d_every_tile_config(dtype: str, index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    mode = triton_conv.DOT_MODE[dtype]
    config = triton_conv._CONFIGS[mode][index]
    try:
        monkeypatch.setitem(triton_conv._CONFIGS, mode, [config])
        triton_conv._tiles.cache_clear()  # tile lists are cached per mode: build one of this config
        for name, (spec, layout) in CONFIG_CASES.items():
            result = check_implementation(get("conv2d", "triton"), spec, dtype, layout, "cuda", seed=seed_of(name))
            assert result.ok, f"{config} {name} {dtype}: {result.message}"
    finally:
        triton_conv._tiles.cache_clear()


# The fields real networks use: MobileNetV2's depthwise layers (batch 64), Inception-v3's 1x7 and
# 7x1 (batch 32), a ResNet layer4 3x3 dilated for DeepLab, ResNeXt-50 32x4d's grouped 3x3s (4 and
# 16 channels a group: the flat and the channel-blocked walk).
NETWORK_CONV = {
    "mobilenetv2-dw-96ch-112-s2": Conv2d(64, 96, 96, 112, 112, 3, 3, stride=2, padding=1, groups=96,
                                         bias=False),
    "mobilenetv2-dw-144ch-56-s1": Conv2d(64, 144, 144, 56, 56, 3, 3, padding=1, groups=144, bias=False),
    "mobilenetv2-dw-576ch-14-s1": Conv2d(64, 576, 576, 14, 14, 3, 3, padding=1, groups=576, bias=False),
    "mobilenetv2-dw-960ch-7-s1": Conv2d(64, 960, 960, 7, 7, 3, 3, padding=1, groups=960),
    "depthwise-mult2-5x5": Conv2d(16, 32, 64, 30, 30, 5, 5, padding=2, groups=32),
    "inception-1x7": Conv2d(32, 128, 128, 17, 17, 1, 7, padding_w=3),
    "inception-7x1": Conv2d(32, 128, 192, 17, 17, 7, 1, padding_h=3),
    "deeplab-dilated-3x3": Conv2d(8, 512, 512, 28, 28, 3, 3, padding=2, dilation=2),
    "resnext-grouped-3x3-4ch": Conv2d(16, 128, 128, 56, 56, 3, 3, padding=1, groups=32, bias=False),
    "resnext-grouped-3x3-16ch-s2": Conv2d(16, 512, 512, 28, 28, 3, 3, stride=2, padding=1, groups=32,
                                          bias=False),
}


@pytest.mark.parametrize("layout", Conv2d.layouts)
@pytest.mark.parametrize("dtype", Conv2d.dtypes)
@pytest.mark.parametrize("name", NETWORK_CONV)
def test_conv2d_network_fields(name: str, dtype: str, layout: str) -> None:
    check("conv2d", NETWORK_CONV[name], dtype, layout, seed_of(name))


# Every depthwise tile forced in turn (the autotuner keeps one per problem), on sizes that cut the
# tiles: 40 channels (NHWC blocks of 32 and 64 ragged), 13x13 planes (NCHW: several a program).
DEPTHWISE_CONFIG_CASES = [Conv2d(3, 40, 40, 13, 13, 3, 3, stride=2, padding=1, groups=40),
                          Conv2d(2, 20, 40, 37, 29, 3, 5, padding_h=1, padding_w=4, dilation_w=2, groups=20)]


@pytest.mark.parametrize("layout", Conv2d.layouts)
def test_conv2d_depthwise_every_tile_config(layout: str, monkeypatch: pytest.MonkeyPatch) -> None:
    tiles = depthwise._NHWC_TILES if layout == "NHWC" else depthwise._NCHW_TILES
    tile_lists = (depthwise._nhwc_tiles, depthwise._nchw_tiles)
    try:
        for tile in list(tiles):
            monkeypatch.setattr(depthwise, "_NHWC_TILES" if layout == "NHWC" else "_NCHW_TILES", [tile])
            for tile_list in tile_lists:
                tile_list.cache_clear()
            for i, spec in enumerate(DEPTHWISE_CONFIG_CASES):
                for dtype in ("fp16", "fp32"):
                    result = check_implementation(depthwise.build_depthwise, spec, dtype, layout, "cuda", seed=i)
                    assert result.ok, f"{tile} {spec} {dtype}: {result.message}"
    finally:
        for tile_list in tile_lists:
            tile_list.cache_clear()


# The row-streaming kernel's configs forced in turn, on planes that cut its bands and column
# blocks raggedly: 40 channels (blocks of 32 and 64 hang past them), 144 (MobileNetV2's, blocks
# of 16 divide them), horizontal stride 2 and a padding of 2.
DEPTHWISE_ROWS_CASES = [Conv2d(3, 40, 40, 37, 29, 3, 3, padding=1, groups=40),
                        Conv2d(2, 144, 144, 45, 61, 3, 3, stride_w=2, padding_h=2, padding_w=1, groups=144)]


def check_each_row_config(monkeypatch: pytest.MonkeyPatch, table: str, configs: list, build: Callable,
                          spec: Conv2d, dtype: str, seed: int, layout: str = "NHWC",
                          module: object = depthwise_rows) -> None:
    """Each of ``configs`` forced alone (``module.<table>`` gives only it) through ``build``."""
    assert configs
    for config in configs:
        monkeypatch.setattr(module, table, lambda *_, config=config: [config])
        result = check_implementation(build, spec, dtype, layout, "cuda", seed=seed)
        assert result.ok, f"{config} {spec} {dtype} {layout}: {result.message}"


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("i", range(len(DEPTHWISE_ROWS_CASES)))
def test_conv2d_depthwise_rows_every_config(i: int, dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = DEPTHWISE_ROWS_CASES[i]
    configs = depthwise_rows._configs(spec.in_channels, spec.out_width, get_dtype(dtype).itemsize,
                                      torch.cuda.get_device_capability() >= (9, 0))
    check_each_row_config(monkeypatch, "_configs", configs, depthwise_rows.build_depthwise_rows, spec, dtype, i)


# The flat kernel's configs forced in turn: runs that split pixels (40 and 144 channels), a row
# shorter than every run (24 channels x 7 columns), a padding of 2; at stride 2, odd and even
# planes (the last output row reading the bottom padding or not).
DEPTHWISE_FLAT_ROWS_CASES = [Conv2d(3, 40, 40, 37, 29, 3, 3, padding=1, groups=40),
                             Conv2d(2, 144, 144, 45, 61, 3, 3, padding_h=2, padding_w=1, groups=144),
                             Conv2d(2, 24, 24, 9, 7, 3, 3, padding=1, groups=24),
                             Conv2d(2, 144, 144, 45, 62, 3, 3, stride=2, padding=1, groups=144),
                             Conv2d(3, 40, 40, 38, 29, 3, 3, stride=2, padding_h=1, padding_w=2, groups=40)]


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("i", range(len(DEPTHWISE_FLAT_ROWS_CASES)))
def test_conv2d_depthwise_flat_rows_every_config(i: int, dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = DEPTHWISE_FLAT_ROWS_CASES[i]
    configs = depthwise_rows._flat_configs(spec.out_width * spec.out_channels,
                                           torch.cuda.get_device_capability() >= (9, 0))
    check_each_row_config(monkeypatch, "_flat_configs", configs, depthwise_rows.build_depthwise_flat_rows, spec,
                          dtype, i)


# The flat kernel in NCHW, each tile forced in turn: output rows of 29, 61, 7, 31 and 15 columns
# (power-of-two tiles 32, 64, 8, 32 and 16 columns wide, and flat pairs), planes and rows cut
# across tiles, strides 1 and 2.
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("i", range(len(DEPTHWISE_FLAT_ROWS_CASES)))
def test_conv2d_depthwise_flat_rows_nchw_every_config(i: int, dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = DEPTHWISE_FLAT_ROWS_CASES[i]
    check_each_row_config(monkeypatch, "_plane_configs", depthwise_rows._plane_configs(spec.out_width),
                          depthwise_rows.build_depthwise_flat_rows, spec, dtype, i, "NCHW")


# The word-pair kernel, each tile forced in turn: odd and even output rows (an odd row ends on a
# pair of one output), paddings 0-2, strides 1 and 2, planes and rows cut across tiles, and the
# first and last planes' edge rows (whose word loads are masked).
DEPTHWISE_PAIRS_CASES = [Conv2d(3, 40, 40, 37, 29, 3, 3, padding=1, groups=40),
                         Conv2d(2, 144, 144, 45, 62, 3, 3, padding_h=2, padding_w=1, groups=144),
                         Conv2d(2, 24, 24, 9, 7, 3, 3, groups=24),
                         Conv2d(1, 32, 32, 14, 13, 3, 3, padding=2, groups=32),
                         Conv2d(2, 144, 144, 45, 62, 3, 3, stride=2, padding=1, groups=144),
                         Conv2d(3, 40, 40, 38, 29, 3, 3, stride=2, padding_h=1, padding_w=2, groups=40)]


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("i", range(len(DEPTHWISE_PAIRS_CASES)))
def test_conv2d_depthwise_pairs_every_config(i: int, dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    check_each_row_config(monkeypatch, "_configs", depthwise_pairs._configs(), depthwise_pairs.build_depthwise_pairs,
                          DEPTHWISE_PAIRS_CASES[i], dtype, i, "NCHW", depthwise_pairs)


def test_conv2d_depthwise_rows_are_timed_beside_the_direct_kernel() -> None:
    details = conv_details(Conv2d(8, 144, 144, 56, 56, 3, 3, padding=1, groups=144))
    assert all(details[f"{path}_ms"] > 0 for path in ("depthwise", "depthwise_rows", "depthwise_flat_rows")), details
    strided = conv_details(Conv2d(8, 144, 144, 56, 56, 3, 3, stride=2, padding=1, groups=144))
    assert strided["depthwise_ms"] > 0 and strided["depthwise_flat_rows_ms"] > 0, strided
    assert "depthwise_rows_ms" not in strided, strided  # vertical stride 2: the 2-D row kernel refuses it
    for stride in (1, 2):
        planar = conv_details(Conv2d(8, 144, 144, 56, 56, 3, 3, stride=stride, padding=1, groups=144), "NCHW")
        assert all(planar[f"{path}_ms"] > 0 for path in ("depthwise", "depthwise_flat_rows", "depthwise_pairs")), planar
        assert "depthwise_rows_ms" not in planar, planar  # the 2-D row kernel runs NHWC only


@pytest.mark.parametrize("dtype", ["fp16", "tf32", "fp32"])
def test_conv2d_narrow_group_every_tile_config(dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Groups of 8 output channels take every tile narrowed to 16 channels (swapped tiles left out)."""
    mode = triton_conv.DOT_MODE[dtype]
    spec = Conv2d(3, 32, 32, 11, 13, 3, 3, padding=1, groups=4)
    try:
        for config in [c for c in triton_conv._CONFIGS[mode] if not c.kwargs["SWAP"]]:
            monkeypatch.setitem(triton_conv._CONFIGS, mode, [config])
            triton_conv._tiles.cache_clear()
            for layout in Conv2d.layouts:
                result = check_implementation(get("conv2d", "triton"), spec, dtype, layout, "cuda", seed=5)
                assert result.ok, f"{config} {layout} {dtype}: {result.message}"
    finally:
        triton_conv._tiles.cache_clear()


# ------------------------------------------------------------------------- FFT convolution (tf32)

def fft_only(spec: Conv2d, dtype, layout: str, tensors, out: torch.Tensor):
    """The FFT path alone, whatever the timing at build would choose."""
    return triton_conv.build_fft(spec, dtype, tensors, out)


FFT_SHAPES = {**THESIS_CONV, "alexnet-conv2-pad2": OTHER_CONV["alexnet-conv2-pad2"],
              "odd-pad1-no-bias": Conv2d(3, 17, 33, 20, 30, 3, 5, padding=1, bias=False)}


@pytest.mark.parametrize("layout", Conv2d.layouts)
@pytest.mark.parametrize("name", FFT_SHAPES)
def test_conv2d_tf32_fft(name: str, layout: str) -> None:
    result = check_implementation(fft_only, FFT_SHAPES[name], "tf32", layout, "cuda", seed=seed_of(name))
    assert result.ok, f"{name} {layout}: {result.message}"


def test_conv2d_fft_every_tile_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each transform tile and each complex-product tile forced in turn, on sizes that cut them."""
    spec = Conv2d(3, 20, 36, 19, 23, 3, 5, padding=2)
    gemm, complex_ = list(fft_conv._GEMM_CONFIGS), list(fft_conv._COMPLEX_CONFIGS)
    for i in range(max(len(gemm), len(complex_))):
        monkeypatch.setattr(fft_conv, "_GEMM_CONFIGS", [gemm[i % len(gemm)]])
        monkeypatch.setattr(fft_conv, "_COMPLEX_CONFIGS", [complex_[i % len(complex_)]])
        for layout in Conv2d.layouts:
            result = check_implementation(fft_only, spec, "tf32", layout, "cuda", seed=i)
            assert result.ok, f"configs #{i} {layout}: {result.message}"


def test_conv2d_tf32_records_its_algorithm() -> None:
    spec = THESIS_CONV["L3"]
    tensors = make_tensors(spec, "tf32", "NCHW", "cuda")
    kernel = get("conv2d", "triton").build(spec, get_dtype("tf32"), "NCHW", tensors,
                                           make_output(spec, tensors))
    details = kernel.details
    times = {path: details[f"{path}_ms"] for path in ("fft", "implicit_gemm", "tma_implicit_gemm", "im2col_gemm")
             if f"{path}_ms" in details}
    assert {"fft", "implicit_gemm"} <= times.keys() and min(times.values()) > 0
    assert details["algorithm"] == min(times, key=times.get), details


# AlexNet feature maps (thesis A6) with 3x3 and 2x2 windows, stride 2; batch 32.
ALEXNET_MAPS = {"55x55x64": (64, 55), "27x27x192": (192, 27), "13x13x256": (256, 13)}
POOL_WINDOWS = {"3x3-max": (3, "max"), "3x3-avg": (3, "avg"), "2x2-max": (2, "max")}


@pytest.mark.parametrize("layout", Pool2d.layouts)
@pytest.mark.parametrize("dtype", Pool2d.dtypes)
@pytest.mark.parametrize("window", POOL_WINDOWS)
@pytest.mark.parametrize("fmap", ALEXNET_MAPS)
def test_pool2d_alexnet(fmap: str, window: str, dtype: str, layout: str) -> None:
    channels, size = ALEXNET_MAPS[fmap]
    kernel, method = POOL_WINDOWS[window]
    spec = Pool2d(32, channels, size, size, kernel, 2, method=method)
    check("pool2d", spec, dtype, layout, seed_of(fmap + window))


# Each NCHW 16-bit row read forced (the build times them all and keeps the fastest): one value a
# load, or aligned word pairs for one or two outputs an element, on AlexNet's odd maps.
@pytest.mark.parametrize("pairs,outputs", [(False, 1), (True, 1), (True, 2)])
@pytest.mark.parametrize("window", POOL_WINDOWS)
@pytest.mark.parametrize("fmap", ["55x55x64", "27x27x192"])
def test_pool2d_nchw_16bit_row_reads(fmap: str, window: str, pairs: bool, outputs: int,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool2d, "PAIRED_READS", (pairs,))
    monkeypatch.setattr(pool2d, "PAIR_OUTPUTS", (outputs,))
    channels, size = ALEXNET_MAPS[fmap]
    kernel, method = POOL_WINDOWS[window]
    check("pool2d", Pool2d(32, channels, size, size, kernel, 2, method=method), "bf16", "NCHW", seed_of(fmap + window))


# NCHW outputs one and two wide and one high: the divisors whose multipliers reach 32 bits
# (2**32 - 1 and 2**31), each row read forced.
@pytest.mark.parametrize("pairs,outputs", [(False, 1), (True, 1), (True, 2)])
@pytest.mark.parametrize("spec", [Pool2d(6, 5, 5, 3, 3, 2), Pool2d(3, 7, 3, 6, 3, 2, method="avg"),
                                  Pool2d(2, 9, 4, 4, 2, 2, padding=1)], ids=["q1", "p1-q2", "padded-q3"])
def test_pool2d_nchw_narrow_outputs(spec: Pool2d, pairs: bool, outputs: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool2d, "PAIRED_READS", (pairs,))
    monkeypatch.setattr(pool2d, "PAIR_OUTPUTS", (outputs,))
    for dtype in ("fp16", "bf16"):
        check("pool2d", spec, dtype, "NCHW", seed_of(str(spec)))


# Each NHWC channel run forced (the build times both where C is no power of two): 192 channels
# as runs of 128 (the second half idle) or of 64.
@pytest.mark.parametrize("run", [128, 64])
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_pool2d_nhwc_channel_runs(dtype: str, run: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool2d, "channel_blocks", lambda channels: (run,))
    check("pool2d", Pool2d(32, 192, 27, 27, 3, 2), dtype, "NHWC", seed_of(f"runs{run}"))


@pytest.mark.parametrize("layout", Pool2d.layouts)
@pytest.mark.parametrize("dtype", Pool2d.dtypes)
@pytest.mark.parametrize("method", ["max", "avg"])
def test_pool2d_padded_odd_non_square(method: str, dtype: str, layout: str) -> None:
    spec = Pool2d(16, 3, 57, 41, 3, 2, padding=1, method=method)
    check("pool2d", spec, dtype, layout, seed_of(method))


@pytest.mark.parametrize("dtype", ReLU.dtypes)
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("shape", [(128, 96, 55, 55), (3, 5, 7, 11)])
def test_relu(shape: tuple[int, int, int, int], inplace: bool, dtype: str) -> None:
    check("relu", ReLU(*shape, inplace=inplace), dtype, "NCHW", seed_of(str(shape)))


# Thesis A5 FC layers at batch 128.
FC = {"large": Linear(128, 9216, 4096), "median": Linear(128, 4096, 4096),
      "small": Linear(128, 4096, 1000), "odd": Linear(37, 1000, 333, bias=False)}


@pytest.mark.parametrize("dtype", Linear.dtypes)
@pytest.mark.parametrize("name", FC)
def test_linear(name: str, dtype: str) -> None:
    check("linear", FC[name], dtype, "NCHW", seed_of(name))


def conv_details(spec: Conv2d, layout: str = "NHWC") -> dict:
    """The details of the registered Triton convolution built for ``spec`` in bf16 ``layout``."""
    tensors = make_tensors(spec, "bf16", layout, "cuda")
    return as_built(get("conv2d", "triton").build(spec, get_dtype("bf16"), layout, tensors,
                                                  make_output(spec, tensors, layout))).details


def skip_before_hopper() -> None:
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the TMA paths need a Hopper or later GPU")


# The TMA-fed convolution (NHWC; the build keeps it only where it is faster): ResNet-50 and
# VGG-16 layers (their RGB first layers on padded pixel rows), L5's 13 x 13 plane, a dilated and
# a per-axis padded layer, strided ones.
CONV_TMA = {"resnet-3x3-64": Conv2d(8, 64, 64, 56, 56, 3, 3, padding=1, bias=False),
            "resnet-3x3-512-7x7": Conv2d(8, 512, 512, 7, 7, 3, 3, padding=1),
            "vgg-3x3-512-14x14": Conv2d(32, 512, 512, 14, 14, 3, 3, padding=1),  # 2 x 2 patches of 32 images
            "L5-13x13": THESIS_CONV["L5"], "vgg-3x3-256": Conv2d(4, 256, 256, 56, 56, 3, 3, padding=1),
            "dilated-2": Conv2d(4, 256, 256, 28, 28, 3, 3, padding=2, dilation=2),
            "inception-1x7": Conv2d(4, 128, 192, 17, 17, 1, 7, padding_h=0, padding_w=3),
            "pointwise-odd": Conv2d(3, 96, 24, 29, 31, 1, 1),
            "resnet-1x1-256-512/2": Conv2d(8, 256, 512, 56, 56, 1, 1, stride=2, bias=False),
            "resnet-3x3-128/2": Conv2d(8, 128, 128, 56, 56, 3, 3, stride=2, padding=1, bias=False),
            "vgg-conv1_1-rgb": Conv2d(4, 3, 64, 64, 64, 3, 3, padding=1),
            "resnet-stem-rgb": Conv2d(4, 3, 64, 64, 64, 7, 7, stride=2, padding=3, bias=False)}


def test_conv2d_tma_is_timed_beside_the_implicit_gemm() -> None:
    skip_before_hopper()
    details = conv_details(CONV_TMA["resnet-3x3-64"])
    assert details["tma_implicit_gemm_ms"] > 0 and details["implicit_gemm_ms"] > 0, details


# Each config alone (the build keeps one; the others must be right too, each with its own patch
# shape and pipeline): a 56-wide plane of 64 channels, a stride-2 layer through the phase view, a
# 7 x 7 plane with K not a multiple of the widest tiles, 14 x 14 planes in patches stacked over
# images (2 x 2 in 64-pixel tiles, 2 x 16 in the others).
EACH_CONFIG_CONV = {"resnet-3x3-64": Conv2d(4, 64, 64, 56, 56, 3, 3, padding=1, bias=False),
                    "3x3-128/2": Conv2d(2, 128, 96, 56, 56, 3, 3, stride=2, padding=1),
                    "3x3-7x7-320": Conv2d(8, 256, 320, 7, 7, 3, 3, padding=1),
                    "3x3-14x14-stacked": Conv2d(48, 64, 96, 14, 14, 3, 3, padding=1)}
EACH_CONFIG_CASES = [(name, dtype, i) for name in EACH_CONFIG_CONV for dtype in ("tf32", "bf16")
                     for i in range(len(conv_tma.CONFIGS[DOT_MODE[dtype]]))]


@pytest.mark.parametrize("name, dtype, index", EACH_CONFIG_CASES)
def test_conv2d_tma_each_config(name: str, dtype: str, index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    skip_before_hopper()
    config = conv_tma.CONFIGS[DOT_MODE[dtype]][index]
    monkeypatch.setitem(conv_tma.CONFIGS, DOT_MODE[dtype], [config])
    result = check_implementation(conv_tma.build_conv_tma, EACH_CONFIG_CONV[name], dtype, "NHWC", "cuda",
                                  seed=seed_of(name))
    assert result.ok, f"{name} {dtype} {config}: {result.message}"


# The persistent TMA GEMM (the registered build keeps it only where it is faster): square,
# ragged against every tile, a matrix-vector product and the AlexNet FC shapes.
TMA_FC = {"square-2048": Linear(2048, 2048, 2048), "ragged": Linear(300, 1032, 776),
          "matrix-vector": Linear(1, 4096, 4096), "large": FC["large"], "small": FC["small"]}


def linear_tma_only(spec: Linear, dtype, layout: str, tensors, out: torch.Tensor):
    return linear_tma.build_persistent(spec, dtype, tensors, out)


# Each TMA path alone: (its builder, the spec, the layout).
TMA_CASES = {**{f"conv-{n}": (conv_tma.build_conv_tma, spec, "NHWC") for n, spec in CONV_TMA.items()},
             **{f"conv-nchw-{n}": (conv_tma.build_conv_tma, CONV_TMA[n], "NCHW")
                for n in ("resnet-3x3-64", "resnet-3x3-512-7x7", "vgg-3x3-512-14x14", "L5-13x13", "dilated-2",
                          "resnet-3x3-128/2")},
             **{f"linear-{n}": (linear_tma_only, spec, "NCHW") for n, spec in TMA_FC.items()}}


@pytest.mark.parametrize("dtype", ("tf32", "fp16", "bf16"))
@pytest.mark.parametrize("name", TMA_CASES)
def test_tma_path(name: str, dtype: str) -> None:
    skip_before_hopper()
    build, spec, layout = TMA_CASES[name]
    result = check_implementation(build, spec, dtype, layout, "cuda", seed=seed_of(name))
    assert result.ok, f"{name} {dtype}: {result.message}"


@pytest.mark.parametrize("dtype, index", [(dtype, i) for dtype in ("tf32", "bf16")
                                          for i in range(len(linear_tma.CONFIGS[DOT_MODE[dtype]]))])
def test_linear_tma_every_config(dtype: str, index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each config of the persistent TMA GEMM forced alone (the timing keeps one a problem), on a
    GEMM ragged against every tile whose 64-256 tiles leave a partial wave, so that the stream-K
    configs run too."""
    skip_before_hopper()
    mode = DOT_MODE[dtype]
    config = linear_tma.CONFIGS[mode][index]
    monkeypatch.setitem(linear_tma.CONFIGS, mode, [config])
    result = check_implementation(linear_tma_only, Linear(1000, 1000, 1000), dtype, "NCHW", "cuda",
                                  seed=seed_of(repr(config)))
    assert result.ok, f"{config} {dtype}: {result.message}"


def one_step_tiled(spec: Linear, dtype, layout: str, tensors, out: torch.Tensor):
    return linear._plan(spec, dtype, tensors["x"], tensors["weight"], tensors.get("bias"), out, 1,
                        linear.EVEN_K_QUANTUM)


@pytest.mark.parametrize("dtype, index", [(dtype, i) for dtype in ("fp32", "tf32", "bf16")
                                          for i in range(len(linear._ONE_STEP_TILES))])
def test_linear_one_step_every_tile(dtype: str, index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each one-step tile of the tiled GEMM forced alone, on reductions shorter than its step (24)
    and as long (64), with rows and columns ragged against it."""
    tile = linear._ONE_STEP_TILES[index]
    monkeypatch.setitem(linear._CONFIGS, DOT_MODE[dtype], [])
    monkeypatch.setattr(linear, "_ONE_STEP_TILES", (tile,))
    for spec in (Linear(1000, 24, 144), Linear(333, 64, 200)):
        result = check_implementation(one_step_tiled, spec, dtype, "NCHW", "cuda", seed=seed_of(repr((tile, spec))))
        assert result.ok, f"{tile} {spec} {dtype}: {result.message}"


# Stream-K alone (only its configs compete) on GEMMs whose tiles leave a partial wave: fewer tiles
# than SMs (ResNet-50's conv5_a as a GEMM), a wave and a half, ragged M, N and K.
STREAM_K_FC = {"conv5_a": Linear(3136, 2048, 512), "wave-and-a-half": Linear(12544, 1024, 256),
               "ragged": Linear(1000, 1000, 1000)}


def stream_k_only(spec: Linear, dtype, layout: str, tensors, out: torch.Tensor):
    built = linear_tma.build_persistent(spec, dtype, tensors, out, stream_k_only=True)
    assert built.details["stream_k"], built.details
    return built


@pytest.mark.parametrize("dtype", ("tf32", "fp16", "bf16"))
@pytest.mark.parametrize("name", STREAM_K_FC)
def test_linear_stream_k(name: str, dtype: str) -> None:
    skip_before_hopper()
    result = check_implementation(stream_k_only, STREAM_K_FC[name], dtype, "NCHW", "cuda", seed=seed_of(name))
    assert result.ok, f"{name} {dtype}: {result.message}"


# The im2col + GEMM path alone on first layers of real networks (batch cut), every dtype.
LOWERED = {"vgg-conv1_1": Conv2d(4, 3, 64, 224, 224, 3, 3, padding=1),
           "resnet-stem": Conv2d(4, 3, 64, 224, 224, 7, 7, stride=2, padding=3, bias=False),
           "alexnet-conv1": Conv2d(8, 3, 96, 227, 227, 11, 11, stride=4),
           "grey-dilated": Conv2d(2, 1, 24, 61, 59, 5, 3, stride_h=2, padding_w=2, dilation=2)}


@pytest.mark.parametrize("dtype", ("fp32", "tf32", "fp16", "bf16"))
@pytest.mark.parametrize("name", LOWERED)
def test_lowered_convolution(name: str, dtype: str) -> None:
    result = check_implementation(lowered_conv.build_lowered, LOWERED[name], dtype, "NHWC", "cuda",
                                  seed=seed_of(name))
    assert result.ok, f"{name} {dtype}: {result.message}"


def test_lowered_convolution_is_timed_beside_the_others() -> None:
    details = conv_details(LOWERED["vgg-conv1_1"])
    assert details["im2col_gemm_ms"] > 0 and details["implicit_gemm_ms"] > 0, details


# The width unfold + TMA convolution alone: first layers whose height the vertical stride divides,
# and a narrow, dilated one with per-axis stride and padding; both layouts.
UNFOLDED = {"vgg-conv1_1": LOWERED["vgg-conv1_1"], "resnet-stem": LOWERED["resnet-stem"],
            "grey-dilated": Conv2d(2, 2, 40, 62, 59, 5, 3, stride_h=2, stride_w=3, padding_w=2, dilation=2)}


@pytest.mark.parametrize("layout", ("NHWC", "NCHW"))
@pytest.mark.parametrize("dtype", ("tf32", "fp16", "bf16"))
@pytest.mark.parametrize("name", UNFOLDED)
def test_unfolded_convolution(name: str, dtype: str, layout: str) -> None:
    skip_before_hopper()
    result = check_implementation(lowered_conv.build_unfolded, UNFOLDED[name], dtype, layout, "cuda",
                                  seed=seed_of(name))
    assert result.ok, f"{name} {dtype} {layout}: {result.message}"


@pytest.mark.parametrize("layout", ("NHWC", "NCHW"))
def test_unfolded_convolution_is_timed_beside_the_others(layout: str) -> None:
    skip_before_hopper()
    details = conv_details(UNFOLDED["resnet-stem"], layout)
    assert details["unfolded_tma_ms"] > 0 and details["implicit_gemm_ms"] > 0, details


@pytest.mark.parametrize("dtype", ("tf32", "bf16"))
def test_linear_times_both_paths(dtype: str) -> None:
    """On Hopper the build times the tiled and the TMA GEMM on a large GEMM and records both;
    neither failed (a failed path is recorded, not raised: only this test sees it)."""
    skip_before_hopper()
    spec = Linear(2048, 1024, 4096)  # 512 output tiles of 128 x 128
    tensors = make_tensors(spec, dtype, "NCHW", "cuda")
    built = as_built(get("linear", "triton").build(spec, get_dtype(dtype), "NCHW", tensors,
                                                   make_output(spec, tensors)))
    assert built.details["path"] in ("tiled", "tma_persistent"), built.details
    assert built.details["tiled_ms"] > 0 and built.details["tma_persistent_ms"] > 0, built.details


# The batch-1 matrix-vector kernel alone: a transformer's GEMV (K split), a classifier head with N
# ragged against every tile, K ragged against the quantum, no bias.
GEMV = {"4096x4096": Linear(1, 4096, 4096), "head-2048-1000": Linear(1, 2048, 1000),
        "ragged-k": Linear(1, 1001, 77, bias=False)}


def gemv_only(spec: Linear, dtype, layout: str, tensors, out: torch.Tensor):
    return gemv.build_gemv(spec, dtype, tensors, out)


@pytest.mark.parametrize("dtype", Linear.dtypes)
@pytest.mark.parametrize("name", GEMV)
def test_gemv(name: str, dtype: str) -> None:
    result = check_implementation(gemv_only, GEMV[name], dtype, "NCHW", "cuda", seed=seed_of(name))
    assert result.ok, f"{name} {dtype}: {result.message}"


def test_linear_times_the_gemv_at_batch_1() -> None:
    spec = GEMV["4096x4096"]
    tensors = make_tensors(spec, "fp32", "NCHW", "cuda")
    built = as_built(get("linear", "triton").build(spec, get_dtype("fp32"), "NCHW", tensors,
                                                   make_output(spec, tensors)))
    assert built.details["gemv_ms"] > 0 and built.details["tiled_ms"] > 0, built.details


# 1x1 NHWC convolutions on the linear layer's GEMM (ResNet-50's bottleneck ends, a MobileNetV2
# projection and an expansion at odd sizes), alone and through the build, which times it beside the
# implicit GEMM.
POINTWISE = {"resnet-1024-256": Conv2d(8, 1024, 256, 14, 14, 1, 1, bias=False),
             "resnet-64-256": Conv2d(8, 64, 256, 56, 56, 1, 1),
             "mobilenet-odd": Conv2d(3, 96, 24, 29, 31, 1, 1),
             "mobilenet-expand-odd": Conv2d(3, 24, 144, 29, 31, 1, 1)}


def pointwise_only(spec: Conv2d, dtype, layout: str, tensors, out: torch.Tensor):
    return pointwise_conv.build_pointwise(spec, dtype, layout, tensors, out)


@pytest.mark.parametrize("dtype", Conv2d.dtypes)
@pytest.mark.parametrize("name", POINTWISE)
def test_conv2d_pointwise_gemm(name: str, dtype: str) -> None:
    result = check_implementation(pointwise_only, POINTWISE[name], dtype, "NHWC", "cuda", seed=seed_of(name))
    assert result.ok, f"{name} {dtype}: {result.message}"


def test_conv2d_pointwise_is_timed_beside_the_implicit_gemm() -> None:
    details = conv_details(POINTWISE["resnet-64-256"])
    assert details["pointwise_gemm_ms"] > 0 and details["implicit_gemm_ms"] > 0, details


@pytest.mark.parametrize("dtype", Conv2d.dtypes)
@pytest.mark.parametrize("name", POINTWISE)
def test_conv2d_nchw_pointwise_gemm(name: str, dtype: str) -> None:
    result = check_implementation(pointwise_conv.build_nchw_pointwise, POINTWISE[name], dtype, "NCHW", "cuda",
                                  seed=seed_of(name))
    assert result.ok, f"{name} {dtype}: {result.message}"


# Planes whose pixels are a multiple of 4, 2 and 8 but not 16, in odd batches: the GEMM's column
# runs (the power of two dividing H*W) and its hints on them decide the accesses' widths there,
# and a run's mask must hold for the whole run where the batch's pixels are no multiple of 16.
NCHW_RUNS = {"run-4": Conv2d(3, 40, 72, 14, 14, 1, 1), "run-2": Conv2d(5, 24, 48, 6, 9, 1, 1),
             "run-8": Conv2d(3, 32, 40, 12, 10, 1, 1, bias=False)}
NCHW_EVERY_TILE = {"mobilenet-odd": POINTWISE["mobilenet-odd"],
                   "mobilenet-expand-odd": POINTWISE["mobilenet-expand-odd"], **NCHW_RUNS}


@pytest.mark.parametrize("name", NCHW_EVERY_TILE)
def test_conv2d_nchw_pointwise_every_tile(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each tile of each arithmetic mode forced in turn (the build keeps one per shape), on ragged
    pixels and channels, with a reduction of several steps and one of a single step (two stages
    at most), and on the column runs above."""
    tiles = dict(pointwise_conv._NCHW_TILES)  # every mode's tiles, before one is forced
    for dtype in ("bf16", "tf32", "fp32"):
        mode = DOT_MODE[dtype]
        for tile in tiles[mode]:
            monkeypatch.setitem(pointwise_conv._NCHW_TILES, mode, (tile,))
            result = check_implementation(pointwise_conv.build_nchw_pointwise, NCHW_EVERY_TILE[name], dtype, "NCHW",
                                          "cuda", seed=seed_of(name))
            assert result.ok, f"{name} {tile} {dtype}: {result.message}"


def test_conv2d_nchw_pointwise_is_timed_beside_the_implicit_gemm() -> None:
    details = conv_details(POINTWISE["resnet-64-256"], "NCHW")
    assert details["nchw_pointwise_gemm_ms"] > 0 and details["implicit_gemm_ms"] > 0, details


# ResNet-50's projections (batch cut) and a ragged one with per-axis strides.
STRIDED_POINTWISE = {"resnet-256-512/2": Conv2d(8, 256, 512, 56, 56, 1, 1, stride=2, bias=False),
                     "resnet-1024-2048/2": Conv2d(8, 1024, 2048, 14, 14, 1, 1, stride=2),
                     "ragged-2x3": Conv2d(3, 40, 24, 29, 31, 1, 1, stride_h=2, stride_w=3)}


@pytest.mark.parametrize("dtype", Conv2d.dtypes)
@pytest.mark.parametrize("name", STRIDED_POINTWISE)
@pytest.mark.parametrize("path", ["copy", "gather"])
def test_conv2d_strided_pointwise_gemm(path: str, name: str, dtype: str) -> None:
    builder = pointwise_conv.build_strided_pointwise if path == "copy" else pointwise_conv.build_strided_gather
    result = check_implementation(builder, STRIDED_POINTWISE[name], dtype, "NHWC", "cuda", seed=seed_of(name))
    assert result.ok, f"{path} {name} {dtype}: {result.message}"


def test_conv2d_strided_gather_every_tile(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each tile of the gathering GEMM forced in turn (the build keeps one per shape), on ragged
    pixels and 40 channels (off every channel step: the masked loop)."""
    spec = STRIDED_POINTWISE["ragged-2x3"]
    tiles = dict(pointwise_conv._GATHER_TILES)
    for dtype in ("bf16", "tf32", "fp32"):
        mode = DOT_MODE[dtype]
        for tile in tiles[mode]:
            monkeypatch.setattr(pointwise_conv, "_GATHER_TILES", {**tiles, mode: (tile,)})
            result = check_implementation(pointwise_conv.build_strided_gather, spec, dtype, "NHWC", "cuda",
                                          seed=seed_of("ragged-2x3"))
            assert result.ok, f"{tile} {dtype}: {result.message}"


def test_conv2d_strided_pointwise_every_copy_tile(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each tile of the subsampling copy forced in turn (the build keeps one per shape), on ragged
    pixels and channels (40 channels: blocks of 64 and wider hang past them)."""
    spec = STRIDED_POINTWISE["ragged-2x3"]
    try:
        for tile in list(pointwise_conv._SUBSAMPLE_TILES):
            monkeypatch.setattr(pointwise_conv, "_SUBSAMPLE_TILES", (tile,))
            pointwise_conv._subsample_tiles.cache_clear()
            for dtype in ("bf16", "fp32"):
                result = check_implementation(pointwise_conv.build_strided_pointwise, spec, dtype, "NHWC", "cuda",
                                              seed=seed_of("ragged-2x3"))
                assert result.ok, f"{tile} {dtype}: {result.message}"
    finally:
        pointwise_conv._subsample_tiles.cache_clear()


def test_conv2d_strided_pointwise_is_timed_beside_the_implicit_gemm() -> None:
    details = conv_details(STRIDED_POINTWISE["resnet-256-512/2"])
    assert min(details["strided_pointwise_gemm_ms"], details["strided_gather_gemm_ms"], details["implicit_gemm_ms"]) > 0, \
        details


# ------------------------------------------------------------------------- hypothesis draws
# Fewer examples than the "gpu" profile: each new dtype/layout/divisibility pattern compiles.

@settings(max_examples=10)
@given(spec=specs("conv2d", max_batch=4, max_channels=70, max_hw=40, max_kernel=7, max_stride=4,
                  max_padding=3),
       dtype=st.sampled_from(Conv2d.dtypes), layout=st.sampled_from(Conv2d.layouts), seed=SEEDS)
def test_conv2d_drawn(spec: Conv2d, dtype: str, layout: str, seed: int) -> None:
    check("conv2d", spec, dtype, layout, seed)


@settings(max_examples=15)
@given(spec=specs("conv2d", max_batch=4, max_channels=70, max_hw=40, max_kernel=7, max_stride=3,
                  max_padding=3, max_dilation=2, max_groups=4, per_axis=True),
       dtype=st.sampled_from(Conv2d.dtypes), layout=st.sampled_from(Conv2d.layouts), seed=SEEDS)
def test_conv2d_drawn_fields(spec: Conv2d, dtype: str, layout: str, seed: int) -> None:
    check("conv2d", spec, dtype, layout, seed)


@settings(max_examples=15)
@given(spec=specs("pool2d", max_batch=8, max_channels=300, max_hw=64, max_kernel=5, max_stride=3),
       dtype=st.sampled_from(Pool2d.dtypes), layout=st.sampled_from(Pool2d.layouts), seed=SEEDS)
def test_pool2d_drawn(spec: Pool2d, dtype: str, layout: str, seed: int) -> None:
    check("pool2d", spec, dtype, layout, seed)


@settings(max_examples=15)
@given(spec=specs("relu", max_batch=16, max_channels=256, max_hw=64),
       dtype=st.sampled_from(ReLU.dtypes), seed=SEEDS)
def test_relu_drawn(spec: ReLU, dtype: str, seed: int) -> None:
    check("relu", spec, dtype, "NCHW", seed)


@settings(max_examples=15)
@given(spec=specs("linear", max_batch=300, max_features=3000), dtype=st.sampled_from(Linear.dtypes),
       seed=SEEDS)
def test_linear_drawn(spec: Linear, dtype: str, seed: int) -> None:
    check("linear", spec, dtype, "NCHW", seed)


# ------------------------------------------------------------------------- behaviour on the GPU

def test_cpu_tensors_are_refused_when_compiled() -> None:
    spec = ReLU(1, 2, 3, 4)
    tensors = make_tensors(spec, "fp32", "NCHW", "cpu")
    with pytest.raises(Unsupported, match="CUDA"):
        get("relu", "triton").build(spec, get_dtype("fp32"), "NCHW", tensors, make_output(spec, tensors))


@pytest.mark.parametrize("layer,spec,layout", [
    ("linear", Linear(128, 4096, 1000), "NCHW"),  # split-K: two launches and a workspace
    ("conv2d", Conv2d(4, 64, 64, 28, 28, 3, 3, padding=1), "NHWC"),
    ("conv2d", Conv2d(4, 64, 64, 28, 28, 3, 3, padding=1, groups=64), "NCHW"),  # depthwise
    ("conv2d", Conv2d(4, 64, 64, 28, 28, 3, 3, padding=1, groups=8), "NCHW"),  # grouped, NHWC copies
    ("pool2d", Pool2d(8, 64, 27, 27, 3, 2), "NCHW"),
    ("relu", ReLU(8, 64, 27, 27, inplace=True), "NCHW"),
])
def test_kernel_is_capturable_in_a_cuda_graph(layer: str, spec, layout: str) -> None:
    # Capture fails if a launch goes to any stream but the current one, or if it synchronises,
    # allocates or reads back; the harness relies on graph replay for short kernels.
    kernel = get(layer, "triton").build

    def build(spec, dtype, layout, tensors, out):
        eager = kernel(spec, dtype, layout, tensors, out)
        eager()
        # The harness's own capture, so its replay (and what it keeps alive) is what gets checked.
        replay, mode, error = make_batch(eager, 1, out.device)
        assert mode == "cuda-graph", error
        return replay

    result = check_implementation(build, spec, "fp16", layout, "cuda", seed=11)
    assert result.ok, result.message

