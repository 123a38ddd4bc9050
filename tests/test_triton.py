"""Triton kernels under the Triton interpreter (CPU tensors, tiny shapes); GPU tests: test_triton_gpu.py.

Every check goes through layerbench.testing.check_implementation: fresh random inputs from a
hypothesis-drawn seed, outputs poisoned with NaN, float64 reference, tolerance by dtype (exact for
ReLU and max pooling).
"""

from __future__ import annotations

import dataclasses
import re
import zlib

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from hypothesis import assume, given
from hypothesis import strategies as st

import kernels.triton  # noqa: F401 - registers the kernels
from kernels.triton import conv2d as triton_conv
from kernels.triton import linear as triton_linear
from kernels.triton import conv_tma as triton_conv_tma
from kernels.triton import depthwise_pairs as triton_depthwise_pairs
from kernels.triton import depthwise_rows as triton_depthwise_rows
from kernels.triton import gemv as triton_gemv
from kernels.triton import linear_tma as triton_linear_tma
from kernels import lowering
from kernels.triton import lowered_conv as triton_lowered
from kernels.triton import pointwise_conv as triton_pointwise
from kernels.triton import pool2d as triton_pool2d
from kernels.triton import relu as triton_relu
from kernels.triton import support as triton_support
from kernels.triton.copy import COPY_BLOCK, copy_launcher
from layerbench.dtypes import get_dtype
from layerbench.errors import Unsupported
from layerbench.registry import get
from layerbench.layers import Conv2d, Linear, Pool2d, ReLU
from layerbench.testing import check_implementation, make_output, make_tensors, specs

pytestmark = pytest.mark.interpreter

SEEDS = st.integers(0, 2**32 - 1)
LAYOUTS = ("NCHW", "NHWC")
# The interpreter's tl.dot is wrong for bf16 (see kernels/triton/support.py): the convolution's
# implicit GEMM and linear refuse bf16 there (tested below) and are checked in bf16 on the GPU only.
DOT_DTYPES = ("fp32", "tf32", "fp16")


def check(layer: str, spec, dtype: str, layout: str, seed: int) -> None:
    result = check_implementation(get(layer, "triton"), spec, dtype, layout, "cpu", seed=seed)
    assert result.ok, f"{spec} {dtype} {layout} seed={seed}: {result.message}"


# ------------------------------------------------------------------------- hypothesis draws

# Up to 20 channels so that NHWC draws reach the channel-blocked walk (C = 16) as well.
@given(spec=specs("conv2d", max_batch=2, max_channels=20, max_hw=10, max_kernel=5, max_stride=4,
                  max_padding=2),
       dtype=st.sampled_from(DOT_DTYPES), layout=st.sampled_from(LAYOUTS), seed=SEEDS)
def test_conv2d_drawn(spec: Conv2d, dtype: str, layout: str, seed: int) -> None:
    check("conv2d", spec, dtype, layout, seed)


# Per-axis stride and padding, dilation and groups (depthwise where in_channels == groups) on small
# odd shapes.  bf16 runs here only where no tl.dot is involved: the depthwise kernel.
@given(spec=specs("conv2d", max_batch=2, max_channels=20, max_hw=11, max_kernel=4, max_stride=3,
                  max_padding=2, max_dilation=2, max_groups=4, per_axis=True),
       dtype=st.sampled_from(Conv2d.dtypes), layout=st.sampled_from(LAYOUTS), seed=SEEDS)
def test_conv2d_drawn_fields(spec: Conv2d, dtype: str, layout: str, seed: int) -> None:
    assume(spec.depthwise or dtype != "bf16")
    check("conv2d", spec, dtype, layout, seed)


# The implicit GEMM with the fields real networks use (fp32 and fp16: bf16 needs the GPU's tl.dot).
FIELD_CASES = {
    "per-axis-stride-padding-dilation": Conv2d(1, 3, 5, 9, 11, 3, 3, stride_h=2, stride_w=3, padding_h=2,
                                               padding_w=1, dilation_h=2, dilation_w=3),
    "inception-1x7-c17-flat": Conv2d(2, 17, 3, 7, 13, 1, 7, padding_w=3),
    "7x1-pad-h3-stride-2x1-no-bias": Conv2d(1, 6, 4, 11, 5, 7, 1, stride_h=2, stride_w=1, padding_h=3,
                                            bias=False),
    "atrous-3x3-dilation2-channel-blocked": Conv2d(1, 16, 4, 13, 13, 3, 3, padding=2, dilation=2),
    "groups2-stride-2x1": Conv2d(2, 6, 10, 7, 9, 3, 3, stride_h=2, stride_w=1, padding=1, groups=2),
    "groups4-dilation2-no-bias": Conv2d(1, 8, 12, 9, 7, 3, 3, padding_h=2, padding_w=1, dilation_h=2,
                                        groups=4, bias=False),
    "groups4-1x7": Conv2d(1, 8, 8, 5, 9, 1, 7, padding_w=3, groups=4),
    # 16 channels a group: the channel-blocked walk (NCHW through the NHWC copy); 20 output channels
    # a group: two channel parts of each group (16 + 4 under the interpreter's tile).
    "groups2-channel-blocked-two-parts": Conv2d(1, 32, 40, 5, 6, 3, 3, padding=1, groups=2),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("name", FIELD_CASES)
def test_conv2d_fields(name: str, dtype: str, layout: str) -> None:
    check("conv2d", FIELD_CASES[name], dtype, layout, zlib.crc32(name.encode()))


# The depthwise kernel: channel multipliers 1 and 2, per-axis fields, odd sizes.
DEPTHWISE_CASES = {
    "mult1-3x3-stride2": Conv2d(2, 6, 6, 9, 11, 3, 3, stride=2, padding=1, groups=6),
    "mult2-5x5-no-bias": Conv2d(1, 3, 6, 8, 7, 5, 5, padding=2, groups=3, bias=False),
    "mult1-dilation2-stride-2x1": Conv2d(1, 5, 5, 9, 8, 3, 3, stride_h=2, stride_w=1, padding=2, dilation=2,
                                         groups=5),
    "mult1-1x7": Conv2d(1, 4, 4, 5, 9, 1, 7, padding_w=3, groups=4),
    # NHWC: three channel blocks, the last ragged; NCHW: 27-pixel planes, two a program.
    "mult2-7x1-many-channels": Conv2d(1, 20, 40, 9, 3, 7, 1, padding_h=3, groups=20),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("name", DEPTHWISE_CASES)
def test_conv2d_depthwise(name: str, dtype: str, layout: str) -> None:
    check("conv2d", DEPTHWISE_CASES[name], dtype, layout, zlib.crc32(name.encode()))


def depthwise_rows_only(spec: Conv2d, dtype, layout: str, tensors, out: torch.Tensor):
    """The row-streaming depthwise kernel alone."""
    return triton_depthwise_rows.build_depthwise_rows(spec, dtype, layout, tensors, out)


# Planes cut the interpreter's 3-row bands and 4-column blocks raggedly; 2-24 channels span up to
# two 16-channel blocks (one channel is a plain convolution); padding 0-2 a side, horizontal stride 1-2.
@given(batch=st.integers(1, 2), channels=st.integers(2, 24), height=st.integers(1, 9), width=st.integers(1, 9),
       padding_h=st.integers(0, 2), padding_w=st.integers(0, 2), stride_w=st.integers(1, 2), bias=st.booleans(),
       dtype=st.sampled_from(["fp32", "fp16", "bf16"]), seed=SEEDS)
def test_conv2d_depthwise_rows_drawn(batch: int, channels: int, height: int, width: int, padding_h: int,
                                     padding_w: int, stride_w: int, bias: bool, dtype: str, seed: int) -> None:
    assume(height + 2 * padding_h >= 3 and width + 2 * padding_w >= 3)
    spec = Conv2d(batch, channels, channels, height, width, 3, 3, stride_w=stride_w, padding_h=padding_h,
                  padding_w=padding_w, groups=channels, bias=bias)
    result = check_implementation(depthwise_rows_only, spec, dtype, "NHWC", "cpu", seed=seed)
    assert result.ok, f"{spec} {dtype} seed={seed}: {result.message}"


def depthwise_flat_rows_only(spec: Conv2d, dtype, layout: str, tensors, out: torch.Tensor):
    """The row-streaming depthwise kernel on flat runs of output rows, alone."""
    return triton_depthwise_rows.build_depthwise_flat_rows(spec, dtype, layout, tensors, out)


# NHWC: flat runs of 32 elements, a pixel's channels split across runs (5-24 channels), runs that
# start inside the left or right padding, rows shorter than a run.  NCHW: tiles of 32 (plane,
# column) pairs, or of 4 planes x 8 columns (rows wider cut across column blocks), planes and
# their rows cut across tiles (2-24 planes an image, widths 1-11).  Stride 1 or 2 both ways (at
# stride 2, planes whose last output row reads the bottom padding or not, bands of 1-3 rows).
@given(batch=st.integers(1, 2), channels=st.integers(2, 24), height=st.integers(1, 11), width=st.integers(1, 11),
       padding_h=st.integers(0, 2), padding_w=st.integers(0, 2), stride=st.integers(1, 2), bias=st.booleans(),
       dtype=st.sampled_from(["fp32", "fp16", "bf16"]), layout=st.sampled_from(["NHWC", "NCHW"]),
       plane_columns=st.sampled_from([0, 8]), seed=SEEDS)
def test_conv2d_depthwise_flat_rows_drawn(batch: int, channels: int, height: int, width: int, padding_h: int,
                                          padding_w: int, stride: int, bias: bool, dtype: str, layout: str,
                                          plane_columns: int, seed: int) -> None:
    assume(height + 2 * padding_h >= 3 and width + 2 * padding_w >= 3)
    spec = Conv2d(batch, channels, channels, height, width, 3, 3, stride=stride, padding_h=padding_h,
                  padding_w=padding_w, groups=channels, bias=bias)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(triton_depthwise_rows, "_INTERPRETER_PLANE_COLUMNS", plane_columns)
        result = check_implementation(depthwise_flat_rows_only, spec, dtype, layout, "cpu", seed=seed)
    assert result.ok, f"{spec} {dtype} {layout} plane_columns={plane_columns} seed={seed}: {result.message}"


def test_conv2d_depthwise_rows_mobilenet_layer() -> None:
    spec = Conv2d(2, 40, 40, 11, 14, 3, 3, padding=1, groups=40)  # a MobileNetV2 depthwise layer, small
    for build in (depthwise_rows_only, depthwise_flat_rows_only):
        result = check_implementation(build, spec, "bf16", "NHWC", "cpu", seed=11)
        assert result.ok, f"{build.__name__}: {result.message}"


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_conv2d_depthwise_flat_rows_mobilenet_stride_2_layer(layout: str) -> None:
    spec = Conv2d(2, 48, 48, 13, 10, 3, 3, stride=2, padding=1, groups=48)  # MobileNetV2's downsampling, small
    result = check_implementation(depthwise_flat_rows_only, spec, "bf16", layout, "cpu", seed=12)
    assert result.ok, result.message


def test_conv2d_depthwise_flat_rows_nchw_mobilenet_layer() -> None:
    spec = Conv2d(2, 40, 40, 11, 14, 3, 3, padding=1, groups=40)  # a MobileNetV2 depthwise layer, small
    result = check_implementation(depthwise_flat_rows_only, spec, "bf16", "NCHW", "cpu", seed=13)
    assert result.ok, result.message


# The word-pair kernel (16-bit NCHW, stride 1 or 2 both ways): output rows odd and even (an odd row
# ends on a pair of one output), inputs 1-11 wide; planes and their rows cut across the
# interpreter's 16 pairs and 3-row bands; paddings 0-2 a side, so pairs start in the padding and
# windows start on either half of a word (the first and last planes' rows guarded).
@given(batch=st.integers(1, 2), channels=st.integers(2, 12), height=st.integers(1, 11), width=st.integers(1, 11),
       padding_h=st.integers(0, 2), padding_w=st.integers(0, 2), stride=st.integers(1, 2), bias=st.booleans(),
       dtype=st.sampled_from(["fp16", "bf16"]), seed=SEEDS)
def test_conv2d_depthwise_pairs_drawn(batch: int, channels: int, height: int, width: int, padding_h: int,
                                      padding_w: int, stride: int, bias: bool, dtype: str, seed: int) -> None:
    assume(height + 2 * padding_h >= 3 and width + 2 * padding_w >= 3 and batch * channels * height * width % 2 == 0)
    spec = Conv2d(batch, channels, channels, height, width, 3, 3, stride=stride, padding_h=padding_h,
                  padding_w=padding_w, groups=channels, bias=bias)
    result = check_implementation(triton_depthwise_pairs.build_depthwise_pairs, spec, dtype, "NCHW", "cpu", seed=seed)
    assert result.ok, f"{spec} {dtype} seed={seed}: {result.message}"


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_conv2d_depthwise_pairs_zero_the_padding_next_to_special_values(dtype: str, stride: int) -> None:
    """A tap in the padding adds +0 even where the word it shares holds inf or NaN (a zeroed weight
    would give NaN): both edge columns, the first and last values of the tensor, both halves."""
    spec = Conv2d(1, 2, 2, 4, 6, 3, 3, stride=stride, padding=1, groups=2, bias=False)
    tensors = make_tensors(spec, dtype, "NCHW", "cpu", torch.Generator().manual_seed(6))
    x = tensors["x"]
    x[0, 0, :, 0] = float("inf")  # the first value of each row: its left neighbour is padding
    x[0, 1, :, 5] = -float("inf")  # the last, whose right neighbour is padding
    x[0, 0, 1, 5] = float("nan")
    x[0, 1, 0, 0] = float("nan")
    out = make_output(spec, tensors, "NCHW")
    out.fill_(1.0)
    triton_depthwise_pairs.build_depthwise_pairs(spec, get_dtype(dtype), "NCHW", tensors, out)()
    expected = F.conv2d(x.double(), tensors["weight"].double(), stride=stride, padding=1, groups=2)
    assert expected.isinf().any() and expected.isnan().any()
    torch.testing.assert_close(out.double(), expected, rtol=2e-2, atol=2e-2, equal_nan=True)


@pytest.mark.parametrize("spec,dtype,reason", [
    (Conv2d(1, 4, 4, 6, 6, 3, 3, padding=1, groups=4), "fp32", "16-bit"),
    (Conv2d(1, 4, 4, 6, 6, 3, 3, stride_h=1, stride_w=2, padding=1, groups=4), "bf16", "strides"),
    (Conv2d(1, 3, 3, 5, 5, 3, 3, padding=1, groups=3), "bf16", "4-byte boundary"),
    (Conv2d(1, 4, 4, 6, 6, 5, 5, padding=2, groups=4), "bf16", "3x3")])
def test_conv2d_depthwise_pairs_refuses(spec: Conv2d, dtype: str, reason: str) -> None:
    tensors = make_tensors(spec, dtype, "NCHW", "cpu")
    with pytest.raises(Unsupported, match=reason):
        triton_depthwise_pairs.build_depthwise_pairs(spec, get_dtype(dtype), "NCHW", tensors,
                                                     make_output(spec, tensors, "NCHW"))


def test_conv2d_depthwise_pairs_refuses_inputs_near_int32s_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its word indices run up to 8 values past x's end in int32 (a limit shrunk to a small input)."""
    spec = Conv2d(1, 4, 4, 6, 6, 3, 3, padding=1, groups=4)
    tensors = make_tensors(spec, "bf16", "NCHW", "cpu")
    monkeypatch.setattr(triton_depthwise_pairs, "INT32_MAX", 4 * 6 * 6 + 7)
    with pytest.raises(Unsupported, match="int32"):
        triton_depthwise_pairs.build_depthwise_pairs(spec, get_dtype("bf16"), "NCHW", tensors,
                                                     make_output(spec, tensors, "NCHW"))


@pytest.mark.parametrize("stride", [(1, 2), (2, 1), (3, 3)])
def test_conv2d_flat_rows_refuses_other_strides(stride: tuple[int, int]) -> None:
    spec = Conv2d(1, 4, 4, 9, 9, 3, 3, stride_h=stride[0], stride_w=stride[1], padding=1, groups=4)
    tensors = make_tensors(spec, "fp16", "NHWC", "cpu")
    with pytest.raises(Unsupported, match=r"strides \(1, 1\) and \(2, 2\)"):
        depthwise_flat_rows_only(spec, get_dtype("fp16"), "NHWC", tensors, make_output(spec, tensors, "NHWC"))


@pytest.mark.parametrize("layout, spec, reason", [
    ("NCHW", Conv2d(1, 4, 4, 6, 6, 3, 3, padding=1, groups=4), "NHWC only"),
    ("NHWC", Conv2d(1, 4, 8, 6, 6, 3, 3, padding=1, groups=4), "one output channel per input channel"),
    ("NHWC", Conv2d(1, 4, 4, 6, 6, 5, 5, padding=2, groups=4), "3x3 filters"),
    ("NHWC", Conv2d(1, 4, 4, 9, 9, 3, 3, padding=2, dilation=2, groups=4), "without dilation"),
    ("NHWC", Conv2d(1, 4, 4, 6, 6, 3, 3, stride=2, padding=1, groups=4), "vertical stride 1"),
])
def test_conv2d_depthwise_rows_refuses(layout: str, spec: Conv2d, reason: str) -> None:
    tensors = make_tensors(spec, "fp16", layout, "cpu")
    with pytest.raises(Unsupported, match=reason):
        depthwise_rows_only(spec, get_dtype("fp16"), layout, tensors, make_output(spec, tensors, layout))


def test_conv2d_depthwise_records_its_kernel() -> None:
    spec = DEPTHWISE_CASES["mult1-1x7"]
    tensors = make_tensors(spec, "fp16", "NHWC", "cpu")
    kernel = get("conv2d", "triton").build(spec, get_dtype("fp16"), "NHWC", tensors, make_output(spec, tensors))
    assert kernel.details == {"algorithm": "depthwise"}


@given(spec=specs("pool2d", max_batch=2, max_channels=10, max_hw=16, max_kernel=4, max_stride=3),
       dtype=st.sampled_from(Pool2d.dtypes), layout=st.sampled_from(LAYOUTS), seed=SEEDS)
def test_pool2d_drawn(spec: Pool2d, dtype: str, layout: str, seed: int) -> None:
    check("pool2d", spec, dtype, layout, seed)


@given(spec=specs("relu", max_batch=3, max_channels=8, max_hw=24),
       dtype=st.sampled_from(ReLU.dtypes), seed=SEEDS)
def test_relu_drawn(spec: ReLU, dtype: str, seed: int) -> None:
    check("relu", spec, dtype, "NCHW", seed)


@given(spec=specs("linear", max_batch=9, max_features=70), dtype=st.sampled_from(DOT_DTYPES),
       seed=SEEDS)
def test_linear_drawn(spec: Linear, dtype: str, seed: int) -> None:
    check("linear", spec, dtype, "NCHW", seed)


# ------------------------------------------------------------------------- explicit cases

CONV_CASES = {
    "stride2-pad1": Conv2d(2, 3, 4, 9, 11, 3, 3, stride=2, padding=1),
    "stride4-11x11": Conv2d(1, 3, 5, 23, 23, 11, 11, stride=4, padding=2),
    "odd-channels-5to7": Conv2d(2, 5, 7, 6, 6, 3, 3, padding=1),
    "non-square-input-kernel": Conv2d(1, 2, 3, 7, 13, 3, 5, stride=2),
    "no-bias": Conv2d(2, 4, 6, 8, 8, 3, 3, padding=1, bias=False),
    "1x1": Conv2d(2, 6, 5, 5, 4, 1, 1),
    "one-channel": Conv2d(1, 1, 4, 6, 6, 2, 2),
    # C a multiple of the channel block, and one padded by a single channel, take the
    # channel-blocked walk (NCHW through the NHWC copy); C = 17 is padded too much: the flat walk.
    "channels-16": Conv2d(1, 16, 5, 5, 6, 3, 3, padding=1),
    "channels-31": Conv2d(1, 31, 4, 4, 5, 2, 3, stride=2, padding=1),
    "channels-17": Conv2d(1, 17, 3, 4, 4, 3, 3),
    # Output channels past a multiple of the tile width run as two launches (channel_parts).
    "out-channels-past-tile": Conv2d(1, 2, 37, 4, 4, 3, 3),
    "out-channels-past-tile-no-bias": Conv2d(2, 16, 20, 5, 6, 3, 3, padding=1, bias=False),
    "output-pixels-past-tile": Conv2d(3, 2, 3, 7, 9, 2, 2),
}


@pytest.mark.parametrize("swap", [False, True], ids=["tile", "swapped-tile"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("name", CONV_CASES)
def test_conv2d_case(name: str, dtype: str, layout: str, swap: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(triton_conv._INTERPRETER_CONFIG, "SWAP", swap)
    check("conv2d", CONV_CASES[name], dtype, layout, seed=zlib.crc32(name.encode()))


def test_conv2d_channel_block_choice() -> None:
    from kernels.triton.conv2d import channel_block
    assert [channel_block(c, 64) for c in (3, 16, 17, 31, 64, 96, 192, 65)] == [0, 16, 0, 32, 64, 32, 64, 0]
    assert (channel_block(64, 16), channel_block(31, 16)) == (16, 16)


def test_conv2d_channel_parts() -> None:
    from kernels.triton.conv2d import channel_parts
    assert channel_parts(192, 128) == [(0, 128), (128, 192)]
    assert channel_parts(37, 16) == [(0, 32), (32, 37)]
    assert [channel_parts(k, 128) for k in (96, 128, 384)] == [[(0, 96)], [(0, 128)], [(0, 384)]]


# ------------------------------------------------------------------------- FFT convolution (tf32)

def fft_only(spec: Conv2d, dtype, layout: str, tensors, out: torch.Tensor):
    """The FFT path alone (the registered build would choose by timing, which needs a GPU)."""
    return triton_conv.build_fft(spec, dtype, tensors, out)


FFT_CASES = {
    "bias": Conv2d(2, 3, 5, 9, 9, 3, 3),
    "pad1-non-square": Conv2d(2, 4, 6, 8, 11, 3, 5, padding=1),
    "pad2-odd-transform-no-bias": Conv2d(1, 5, 3, 11, 11, 5, 5, padding=2, bias=False),  # N = 15
    "1x1-one-channel": Conv2d(3, 1, 4, 6, 6, 1, 1),
    # 256 channels: the input's row map is affine in every tile (level 0 in _offsets).
    "256-channels-affine-map": Conv2d(1, 256, 3, 5, 5, 3, 3, padding=1),
}


def test_conv2d_fft_affine_maps() -> None:
    from kernels.triton.fft_conv import linear, three_level
    assert three_level(256, 1, 1, 0, 0).kernel_levels() == 0
    assert three_level(192, 1, 1, 0, 0).kernel_levels() == 3  # a 256-wide tile would cross a run
    assert linear(7).kernel_levels() == 1


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", FFT_CASES)
def test_conv2d_fft_case(name: str, layout: str) -> None:
    result = check_implementation(fft_only, FFT_CASES[name], "tf32", layout, "cpu",
                                  seed=zlib.crc32(name.encode()))
    assert result.ok, f"{name} {layout}: {result.message}"


@given(spec=specs("conv2d", max_batch=2, max_channels=6, max_hw=9, max_kernel=5, max_stride=1,
                  max_padding=2),
       layout=st.sampled_from(LAYOUTS), seed=SEEDS)
def test_conv2d_fft_drawn(spec: Conv2d, layout: str, seed: int) -> None:
    result = check_implementation(fft_only, spec, "tf32", layout, "cpu", seed=seed)
    assert result.ok, f"{spec} {layout} seed={seed}: {result.message}"


@pytest.mark.parametrize("dtype, spec, reason", [
    ("fp16", Conv2d(1, 2, 2, 6, 6, 3, 3), "tf32 only"),
    ("tf32", Conv2d(1, 2, 2, 6, 6, 3, 3, stride=2), "stride 1"),
    ("tf32", Conv2d(1, 2, 2, 6, 6, 3, 3, dilation=2), "dilation_h 2, dilation_w 2"),
    ("tf32", Conv2d(1, 2, 2, 6, 6, 3, 3, padding_h=1), "padding_h 1 != padding_w 0"),
    ("tf32", Conv2d(1, 4, 4, 6, 6, 3, 3, groups=2), "groups 2"),
])
def test_conv2d_fft_refuses(dtype: str, spec: Conv2d, reason: str) -> None:
    tensors = make_tensors(spec, dtype, "NCHW", "cpu")
    with pytest.raises(Unsupported, match=reason):
        triton_conv.build_fft(spec, get_dtype(dtype), tensors, make_output(spec, tensors))


def test_conv2d_records_why_no_fft() -> None:
    """Under the interpreter the implicit GEMM runs, and the record says why no FFT was tried."""
    spec = Conv2d(1, 2, 2, 6, 6, 3, 3)
    for dtype, reason in (("tf32", "interpreter"), ("fp32", "tf32 only")):
        tensors = make_tensors(spec, dtype, "NCHW", "cpu")
        kernel = get("conv2d", "triton").build(spec, get_dtype(dtype), "NCHW", tensors,
                                               make_output(spec, tensors))
        assert kernel.details["algorithm"] == "implicit_gemm"
        assert reason in kernel.details["fft"]


POOL_CASES = {
    "alexnet-3x3-s2": Pool2d(2, 3, 13, 13, 3, 2),
    "2x2-s2": Pool2d(2, 3, 8, 8, 2, 2),
    "pad1-odd-channels": Pool2d(1, 5, 9, 7, 3, 2, padding=1),
    "non-square": Pool2d(1, 3, 6, 15, 3, 3, padding=1),
    "kernel4-pad2-s1": Pool2d(1, 2, 5, 6, 4, 1, padding=2),
    "channels-past-tile": Pool2d(1, 130, 4, 4, 2, 2),
    "width-past-tile": Pool2d(1, 1, 3, 300, 2, 2),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", Pool2d.dtypes)
@pytest.mark.parametrize("method", ["max", "avg"])
@pytest.mark.parametrize("name", POOL_CASES)
def test_pool2d_case(name: str, method: str, dtype: str, layout: str) -> None:
    spec = dataclasses.replace(POOL_CASES[name], method=method)
    check("pool2d", spec, dtype, layout, seed=zlib.crc32(name.encode()))


@pytest.mark.parametrize("dtype", ReLU.dtypes)
@pytest.mark.parametrize("inplace", [False, True])
def test_relu_blocks_and_tail(inplace: bool, dtype: str) -> None:
    # 8214 elements: two full fp32 blocks (one fp16/bf16 block) plus a masked tail.
    check("relu", ReLU(2, 3, 37, 37, inplace=inplace), dtype, "NCHW", seed=5)


LINEAR_CASES = {
    "ragged-split": Linear(3, 40, 37),  # K split in two slices, the second ragged
    "even-k-split": Linear(5, 64, 19),  # K a multiple of 64: unmasked reduction
    "single-slice": Linear(4, 20, 10),
    "no-bias": Linear(6, 48, 33, bias=False),
    "batch-1": Linear(1, 17, 1),
}


@pytest.mark.parametrize("dtype", DOT_DTYPES)
@pytest.mark.parametrize("name", LINEAR_CASES)
def test_linear_case(name: str, dtype: str) -> None:
    check("linear", LINEAR_CASES[name], dtype, "NCHW", seed=zlib.crc32(name.encode()))


# ------------------------------------------------------------------------- pointwise conv as a GEMM

def pointwise_only(spec: Conv2d, dtype, layout: str, tensors, out: torch.Tensor):
    """The 1x1 NHWC convolution on the linear layer's GEMM alone (the build times it on a GPU)."""
    return triton_pointwise.build_pointwise(spec, dtype, layout, tensors, out)


@given(batch=st.integers(1, 3), channels=st.integers(1, 40), out_channels=st.integers(1, 40),
       height=st.integers(1, 6), width=st.integers(1, 6), bias=st.booleans(),
       dtype=st.sampled_from(DOT_DTYPES), seed=SEEDS)
def test_conv2d_pointwise_drawn(batch: int, channels: int, out_channels: int, height: int, width: int,
                                bias: bool, dtype: str, seed: int) -> None:
    spec = Conv2d(batch, channels, out_channels, height, width, 1, 1, bias=bias)
    result = check_implementation(pointwise_only, spec, dtype, "NHWC", "cpu", seed=seed)
    assert result.ok, f"{spec} {dtype} seed={seed}: {result.message}"


@pytest.mark.parametrize("layout, spec, reason", [
    ("NCHW", Conv2d(1, 4, 4, 5, 5, 1, 1), "NHWC layout"),
    ("NHWC", Conv2d(1, 4, 4, 5, 5, 3, 3), "1x1 filter"),
    ("NHWC", Conv2d(1, 4, 4, 5, 5, 1, 1, stride=2), "stride 2x2"),
    ("NHWC", Conv2d(1, 4, 4, 5, 5, 1, 1, padding=1), "padding 1x1"),
    ("NHWC", Conv2d(1, 4, 4, 5, 5, 1, 1, groups=2), "one group"),
])
def test_conv2d_pointwise_refuses(layout: str, spec: Conv2d, reason: str) -> None:
    tensors = make_tensors(spec, "fp16", layout, "cpu")
    with pytest.raises(Unsupported, match=reason):
        triton_pointwise.build_pointwise(spec, get_dtype("fp16"), layout, tensors, make_output(spec, tensors, layout))


def nchw_pointwise_only(spec: Conv2d, dtype, layout: str, tensors, out: torch.Tensor):
    """The 1x1 NCHW convolution as one GEMM per image, alone."""
    return triton_pointwise.build_nchw_pointwise(spec, dtype, layout, tensors, out)


# Channel and pixel counts across the interpreter's 16-wide tiles, ragged; several images, so a
# wrong image offset reads or writes another image's values.
@given(batch=st.integers(1, 3), channels=st.integers(1, 40), out_channels=st.integers(1, 40),
       height=st.integers(1, 7), width=st.integers(1, 7), bias=st.booleans(),
       dtype=st.sampled_from(DOT_DTYPES), seed=SEEDS)
def test_conv2d_nchw_pointwise_drawn(batch: int, channels: int, out_channels: int, height: int, width: int,
                                     bias: bool, dtype: str, seed: int) -> None:
    spec = Conv2d(batch, channels, out_channels, height, width, 1, 1, bias=bias)
    result = check_implementation(nchw_pointwise_only, spec, dtype, "NCHW", "cpu", seed=seed)
    assert result.ok, f"{spec} {dtype} seed={seed}: {result.message}"


def test_conv2d_nchw_pointwise_refuses_columns_past_int32() -> None:
    """The GEMM numbers the batch's pixels in int32: a batch whose pixels (one channel) nearly fill
    int32 is refused before any launch, naming the limit (meta tensors: nothing is allocated)."""
    spec = Conv2d(536_870_887, 1, 1, 2, 2, 1, 1, bias=False)
    x, y = (torch.empty(shape, device="meta", dtype=torch.float16) for shape in (spec.input_shape, spec.output_shape))
    weight = torch.empty((1, 1), device="meta", dtype=torch.float16)
    with pytest.raises(Unsupported, match="numbers the batch's pixels in int32"):
        triton_pointwise._per_image_gemm(spec, get_dtype("fp16"), weight, (1, 1), x, None, y)


def test_conv2d_nchw_pointwise_bottleneck() -> None:
    spec = Conv2d(2, 48, 24, 9, 7, 1, 1)  # a ResNet-50 bottleneck's reduction, small
    result = check_implementation(nchw_pointwise_only, spec, "fp16", "NCHW", "cpu", seed=11)
    assert result.ok, result.message


@pytest.mark.parametrize("layout, spec, reason", [
    ("NHWC", Conv2d(1, 4, 4, 5, 5, 1, 1), "NCHW layout"),
    ("NCHW", Conv2d(1, 4, 4, 5, 5, 3, 3), "1x1 filter"),
    ("NCHW", Conv2d(1, 4, 4, 5, 5, 1, 1, stride=2), "stride 2x2"),
    ("NCHW", Conv2d(1, 4, 4, 5, 5, 1, 1, groups=2), "one group"),
])
def test_conv2d_nchw_pointwise_refuses(layout: str, spec: Conv2d, reason: str) -> None:
    tensors = make_tensors(spec, "fp16", layout, "cpu")
    with pytest.raises(Unsupported, match=reason):
        nchw_pointwise_only(spec, get_dtype("fp16"), layout, tensors, make_output(spec, tensors, layout))


def test_conv2d_nchw_pointwise_refuses_channels_last_input() -> None:
    spec = Conv2d(1, 4, 4, 5, 5, 1, 1)
    tensors = make_tensors(spec, "fp16", "NCHW", "cpu")
    tensors["x"] = tensors["x"].contiguous(memory_format=torch.channels_last)
    with pytest.raises(Unsupported, match="dense in NCHW order"):
        nchw_pointwise_only(spec, get_dtype("fp16"), "NCHW", tensors, make_output(spec, tensors, "NCHW"))


def strided_pointwise_only(spec: Conv2d, dtype, layout: str, tensors, out: torch.Tensor):
    """The strided 1x1 convolution as a subsampling copy and the GEMM, alone."""
    return triton_pointwise.build_strided_pointwise(spec, dtype, layout, tensors, out)


# Strides per axis (ragged sides: the last pixels past the grid are never read), channel counts
# across the copy's 64-channel blocks.
@given(batch=st.integers(1, 2), channels=st.integers(1, 80), out_channels=st.integers(1, 24),
       height=st.integers(1, 9), width=st.integers(1, 9), stride_h=st.integers(1, 3), stride_w=st.integers(1, 3),
       bias=st.booleans(), dtype=st.sampled_from(DOT_DTYPES), seed=SEEDS)
def test_conv2d_strided_pointwise_drawn(batch: int, channels: int, out_channels: int, height: int, width: int,
                                        stride_h: int, stride_w: int, bias: bool, dtype: str, seed: int) -> None:
    assume((stride_h, stride_w) != (1, 1))
    spec = Conv2d(batch, channels, out_channels, height, width, 1, 1, stride_h=stride_h, stride_w=stride_w, bias=bias)
    result = check_implementation(strided_pointwise_only, spec, dtype, "NHWC", "cpu", seed=seed)
    assert result.ok, f"{spec} {dtype} seed={seed}: {result.message}"


def test_conv2d_strided_pointwise_resnet_projection() -> None:
    spec = Conv2d(2, 96, 40, 14, 14, 1, 1, stride=2, bias=False)  # conv4_proj's shape, small
    result = check_implementation(strided_pointwise_only, spec, "fp16", "NHWC", "cpu", seed=7)
    assert result.ok, result.message


# The gathering GEMM: channel counts on and off its 16-channel steps (masked and unmasked loads),
# ragged pixel and output-channel tiles (their loads read pixel 0 and channel row 0).
@given(batch=st.integers(1, 2), channels=st.integers(1, 40), out_channels=st.integers(1, 24),
       height=st.integers(1, 9), width=st.integers(1, 9), stride_h=st.integers(1, 3), stride_w=st.integers(1, 3),
       bias=st.booleans(), dtype=st.sampled_from(DOT_DTYPES), seed=SEEDS)
def test_conv2d_strided_gather_drawn(batch: int, channels: int, out_channels: int, height: int, width: int,
                                     stride_h: int, stride_w: int, bias: bool, dtype: str, seed: int) -> None:
    assume((stride_h, stride_w) != (1, 1))
    spec = Conv2d(batch, channels, out_channels, height, width, 1, 1, stride_h=stride_h, stride_w=stride_w, bias=bias)
    result = check_implementation(triton_pointwise.build_strided_gather, spec, dtype, "NHWC", "cpu", seed=seed)
    assert result.ok, f"{spec} {dtype} seed={seed}: {result.message}"


@pytest.mark.parametrize("channels", [32, 40])
def test_conv2d_strided_gather_resnet_projection(channels: int) -> None:
    spec = Conv2d(2, channels, 40, 14, 14, 1, 1, stride=2)  # conv4_proj's shape, small; 40: the masked loop
    result = check_implementation(triton_pointwise.build_strided_gather, spec, "fp16", "NHWC", "cpu", seed=7)
    assert result.ok, result.message


@pytest.mark.parametrize("layout, spec, reason", [
    ("NCHW", Conv2d(1, 4, 4, 6, 6, 1, 1, stride=2), "NHWC layout"),
    ("NHWC", Conv2d(1, 4, 4, 6, 6, 1, 1), "stride 1"),
    ("NHWC", Conv2d(1, 4, 4, 6, 6, 1, 1, stride=2, padding=1), "no padding"),
    ("NHWC", Conv2d(1, 4, 4, 6, 6, 3, 3, stride=2), "1x1 filter"),
])
@pytest.mark.parametrize("builder", [strided_pointwise_only, triton_pointwise.build_strided_gather])
def test_conv2d_strided_pointwise_refuses(layout: str, spec: Conv2d, reason: str, builder) -> None:
    tensors = make_tensors(spec, "fp16", layout, "cpu")
    with pytest.raises(Unsupported, match=reason):
        builder(spec, get_dtype("fp16"), layout, tensors, make_output(spec, tensors, layout))


def test_conv2d_strided_gather_refuses_nchw_strided_input() -> None:
    spec = Conv2d(1, 8, 4, 6, 6, 1, 1, stride=2)
    tensors = make_tensors(spec, "fp16", "NHWC", "cpu")
    tensors["x"] = tensors["x"].contiguous()
    with pytest.raises(Unsupported, match="dense in NHWC order"):
        triton_pointwise.build_strided_gather(spec, get_dtype("fp16"), "NHWC", tensors,
                                              make_output(spec, tensors, "NHWC"))


# ------------------------------------------------------------------------- TMA implicit GEMM (NHWC)

def conv_tma_only(spec: Conv2d, dtype, layout: str, tensors, out: torch.Tensor):
    """The TMA-fed convolution alone (the build times it on a Hopper GPU)."""
    return triton_conv_tma.build_conv_tma(spec, dtype, layout, tensors, out)


# Channels a multiple of 8 (16-byte rows in fp16); padding past the edges and per axis, dilation,
# output widths on both sides of the 8-wide patch.
@given(batch=st.integers(1, 2), channel_units=st.integers(1, 4), out_units=st.integers(1, 4),
       height=st.integers(1, 11), width=st.integers(1, 11), kernel_h=st.integers(1, 3), kernel_w=st.integers(1, 3),
       padding_h=st.integers(0, 2), padding_w=st.integers(0, 2), dilation=st.integers(1, 2), bias=st.booleans(),
       dtype=st.sampled_from(("tf32", "fp16")), layout=st.sampled_from(("NHWC", "NCHW")), seed=SEEDS)
def test_conv2d_tma_drawn(batch: int, channel_units: int, out_units: int, height: int, width: int, kernel_h: int,
                          kernel_w: int, padding_h: int, padding_w: int, dilation: int, bias: bool, dtype: str,
                          layout: str, seed: int) -> None:
    assume(height + 2 * padding_h > dilation * (kernel_h - 1) and width + 2 * padding_w > dilation * (kernel_w - 1))
    spec = Conv2d(batch, 8 * channel_units, 8 * out_units, height, width, kernel_h, kernel_w, padding_h=padding_h,
                  padding_w=padding_w, dilation=dilation, bias=bias)
    result = check_implementation(conv_tma_only, spec, dtype, layout, "cpu", seed=seed)
    assert result.ok, f"{spec} {dtype} seed={seed}: {result.message}"


# Strides through the phase view: height and width multiples of the stride, channels of 16, the
# padding past a phase's first row, dilation.
@given(batch=st.integers(1, 2), channel_units=st.integers(1, 3), out_units=st.integers(1, 3),
       stride_h=st.integers(1, 3), stride_w=st.integers(1, 3), rows=st.integers(1, 5), cols=st.integers(1, 5),
       kernel_h=st.integers(1, 3), kernel_w=st.integers(1, 3), padding_h=st.integers(0, 2),
       padding_w=st.integers(0, 2), dilation=st.integers(1, 2), bias=st.booleans(),
       dtype=st.sampled_from(("tf32", "fp16")), layout=st.sampled_from(("NHWC", "NCHW")), seed=SEEDS)
def test_conv2d_tma_strided_drawn(batch: int, channel_units: int, out_units: int, stride_h: int, stride_w: int,
                                  rows: int, cols: int, kernel_h: int, kernel_w: int, padding_h: int, padding_w: int,
                                  dilation: int, bias: bool, dtype: str, layout: str, seed: int) -> None:
    height, width = stride_h * rows, stride_w * cols
    assume(height + 2 * padding_h > dilation * (kernel_h - 1) and width + 2 * padding_w > dilation * (kernel_w - 1))
    spec = Conv2d(batch, 16 * channel_units, 8 * out_units, height, width, kernel_h, kernel_w, stride_h=stride_h,
                  stride_w=stride_w, padding_h=padding_h, padding_w=padding_w, dilation=dilation, bias=bias)
    result = check_implementation(conv_tma_only, spec, dtype, layout, "cpu", seed=seed)
    assert result.ok, f"{spec} {dtype} seed={seed}: {result.message}"


@pytest.mark.parametrize("spec", [
    Conv2d(2, 32, 24, 8, 6, 1, 1, stride=2, bias=False),  # a ResNet projection: 1x1, stride 2
    Conv2d(2, 16, 16, 8, 8, 3, 3, stride=2, padding=1),  # a ResNet stage's first 3x3
    Conv2d(1, 16, 8, 9, 12, 7, 7, stride=3, padding=3),  # stride 3, a window wider than the stride
], ids=str)
def test_conv2d_tma_strided_cases(spec: Conv2d) -> None:
    result = check_implementation(conv_tma_only, spec, "fp16", "NHWC", "cpu", seed=7)
    assert result.ok, f"{spec}: {result.message}"


# Persistent programs: INTERPRETER_SMS programs walk every tile (more tiles than programs, ragged
# ones included), at stride 1 and through the phase view.
@pytest.mark.parametrize("spec", [
    Conv2d(2, 16, 24, 9, 10, 3, 3, padding=1),
    Conv2d(2, 16, 32, 8, 12, 3, 3, stride=2, padding=1),
], ids=str)
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_conv2d_tma_persistent_programs(spec: Conv2d, layout: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton_conv_tma, "INTERPRETER_CONFIG", {**triton_conv_tma.INTERPRETER_CONFIG, "PER_SM": 1})
    tensors = make_tensors(spec, "fp16", layout, "cpu")
    built = conv_tma_only(spec, get_dtype("fp16"), layout, tensors, make_output(spec, tensors, layout))
    assert built.details["persistent_programs"] == triton_conv_tma.INTERPRETER_SMS, built.details
    assert built.details.get("input_copy") == ("channels_last" if layout == "NCHW" else None), built.details
    result = check_implementation(conv_tma_only, spec, "fp16", layout, "cpu", seed=11)
    assert result.ok, f"{spec}: {result.message}"


# Patches stacked over consecutive images where that covers the planes with less waste (a ragged
# last block of images included), both layouts, one tile a program and persistent programs: 1 x 6
# planes in 2 images of 1 x 8, and 6 x 6 planes in 4 images of 2 x 2 (NHWC; an NCHW output keeps
# patches 8 wide).
@pytest.mark.parametrize("per_sm", [0, 1])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("spec, patches", [
    (Conv2d(5, 16, 24, 1, 6, 1, 3, padding_w=1), {"NHWC": "2x1x8", "NCHW": "2x1x8"}),
    (Conv2d(8, 16, 24, 6, 6, 3, 3, padding=1), {"NHWC": "4x2x2", "NCHW": "2x8"}),
], ids=str)
def test_conv2d_tma_stacks_images_of_small_planes(spec: Conv2d, patches: dict[str, str], layout: str, per_sm: int,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton_conv_tma, "INTERPRETER_CONFIG", {**triton_conv_tma.INTERPRETER_CONFIG, "PER_SM": per_sm})
    tensors = make_tensors(spec, "fp16", layout, "cpu")
    built = conv_tma_only(spec, get_dtype("fp16"), layout, tensors, make_output(spec, tensors, layout))
    assert built.details["patch"] == patches[layout], built.details
    result = check_implementation(conv_tma_only, spec, "fp16", layout, "cpu", seed=17)
    assert result.ok, f"{spec} {layout}: {result.message}"


def test_conv2d_tma_patches_cover_the_planes_with_the_least_waste() -> None:
    def patch(batch: int, side: int, block_m: int, layout: str = "NHWC") -> tuple[int, int, int]:
        return triton_conv_tma.patch_shape(Conv2d(batch, 16, 16, side, side, 3, 3, padding=1), block_m, layout)

    assert patch(64, 14, 128) == (32, 2, 2)  # 14 x 14 planes whole (8 x 16 patches would keep 77 %)
    assert patch(64, 14, 128, "NCHW") == (4, 2, 16)  # 87.5 %, 16-pixel store runs
    assert patch(64, 56, 128) == (2, 8, 8) and patch(64, 28, 128) == (8, 4, 4)  # 100 %, not 87.5 %
    assert patch(64, 7, 128) == (16, 1, 8)  # 87.5 %, not 2 x 8 x 8 (77 %)
    assert patch(64, 224, 128) == (1, 4, 32)  # wide planes: one image, the widest patch that divides them
    assert patch(1, 14, 128) == (1, 8, 16)  # one image: nothing to stack


# Inputs whose pixel rows the copy engine cannot take as they are, run on zero-padded rows: RGB
# images (3 channels: 6 bytes in fp16, 12 in tf32) at stride 1 and 2 (VGG's first layer, ResNet's
# stem), channels the column stride's blocks cannot divide, an odd count past a block.
@pytest.mark.parametrize("dtype, spec, channels", [
    ("fp16", Conv2d(2, 3, 16, 9, 10, 3, 3, padding=1), 8),
    ("tf32", Conv2d(1, 3, 8, 7, 6, 3, 3, padding=1, bias=False), 4),
    ("fp16", Conv2d(1, 3, 16, 12, 10, 7, 7, stride=2, padding=3), 16),
    ("fp16", Conv2d(2, 8, 8, 6, 6, 3, 3, stride=2, padding=1), 16),
    ("fp16", Conv2d(1, 21, 24, 5, 7, 3, 1, padding_h=1), 24),
], ids=str)
def test_conv2d_tma_pads_narrow_inputs(dtype: str, spec: Conv2d, channels: int) -> None:
    assert triton_conv_tma.padded_channels(spec, get_dtype(dtype)) == channels
    tensors = make_tensors(spec, dtype, "NHWC", "cpu")
    built = conv_tma_only(spec, get_dtype(dtype), "NHWC", tensors, make_output(spec, tensors, "NHWC"))
    assert built.details["padded_channels"] == channels, built.details
    result = check_implementation(conv_tma_only, spec, dtype, "NHWC", "cpu", seed=11)
    assert result.ok, f"{spec}: {result.message}"


@pytest.mark.parametrize("dtype, layout, spec, reason", [
    ("fp16", "NCHW", Conv2d(1, 3, 8, 5, 5, 3, 3), "pads narrow pixel rows of NHWC inputs only"),
    ("fp16", "NHWC", Conv2d(1, 8, 8, 5, 5, 3, 3, stride=2), "divisible by the stride"),
    ("fp16", "NHWC", Conv2d(1, 8, 8, 5, 5, 3, 3, groups=2), "one group"),
    ("fp32", "NHWC", Conv2d(1, 8, 8, 5, 5, 3, 3), "not fp32"),
    ("fp16", "NHWC", Conv2d(1, 8, 3, 5, 5, 3, 3), "out_channels 3 in fp16"),
])
def test_conv2d_tma_refuses(dtype: str, layout: str, spec: Conv2d, reason: str) -> None:
    tensors = make_tensors(spec, dtype, layout, "cpu")
    with pytest.raises(Unsupported, match=reason):
        triton_conv_tma.build_conv_tma(spec, get_dtype(dtype), layout, tensors, make_output(spec, tensors, layout))


# ------------------------------------------------------------------------- lowered convolution (im2col + GEMM)

def lowered_only(spec: Conv2d, dtype, layout: str, tensors, out: torch.Tensor):
    """The im2col copy and GEMM alone (the build times it beside the other paths on a GPU)."""
    return triton_lowered.build_lowered(spec, dtype, layout, tensors, out)


# Narrow inputs (RGB and fewer channels); the column matrix's padding past C*R*S, per-axis stride
# and padding, dilation, taps past every edge.
@given(batch=st.integers(1, 2), channels=st.integers(1, 3), out_channels=st.integers(1, 12),
       height=st.integers(1, 10), width=st.integers(1, 10), kernel_h=st.integers(1, 5), kernel_w=st.integers(1, 5),
       stride_h=st.integers(1, 3), stride_w=st.integers(1, 3), padding_h=st.integers(0, 2),
       padding_w=st.integers(0, 2), dilation=st.integers(1, 2), bias=st.booleans(),
       dtype=st.sampled_from(("fp32", "tf32", "fp16")), seed=SEEDS)
def test_conv2d_lowered_drawn(batch: int, channels: int, out_channels: int, height: int, width: int, kernel_h: int,
                              kernel_w: int, stride_h: int, stride_w: int, padding_h: int, padding_w: int,
                              dilation: int, bias: bool, dtype: str, seed: int) -> None:
    assume(height + 2 * padding_h > dilation * (kernel_h - 1) and width + 2 * padding_w > dilation * (kernel_w - 1))
    spec = Conv2d(batch, channels, out_channels, height, width, kernel_h, kernel_w, stride_h=stride_h,
                  stride_w=stride_w, padding_h=padding_h, padding_w=padding_w, dilation=dilation, bias=bias)
    result = check_implementation(lowered_only, spec, dtype, "NHWC", "cpu", seed=seed)
    assert result.ok, f"{spec} {dtype} seed={seed}: {result.message}"


@pytest.mark.parametrize("dtype, spec, columns", [
    ("fp16", Conv2d(2, 3, 16, 9, 8, 3, 3, padding=1), 32),                # VGG-16's first layer, small
    ("fp32", Conv2d(1, 3, 8, 14, 13, 7, 7, stride=2, padding=3), 160),     # ResNet-50's stem, small
    ("tf32", Conv2d(1, 3, 12, 23, 23, 11, 11, stride=4, padding=2), 368),  # AlexNet's first layer, small
    ("fp32", Conv2d(1, 1, 4, 3, 150, 3, 3, padding=1), 16),              # a row over three programs
], ids=str)
def test_conv2d_lowered_first_layers(dtype: str, spec: Conv2d, columns: int) -> None:
    assert lowering.column_count(spec) == columns
    tensors = make_tensors(spec, dtype, "NHWC", "cpu")
    built = lowered_only(spec, get_dtype(dtype), "NHWC", tensors, make_output(spec, tensors, "NHWC"))
    assert built.details["columns"] == columns, built.details
    result = check_implementation(lowered_only, spec, dtype, "NHWC", "cpu", seed=zlib.crc32(repr(spec).encode()))
    assert result.ok, f"{spec}: {result.message}"


@pytest.mark.parametrize("dtype, layout, spec, reason", [
    ("fp16", "NCHW", Conv2d(1, 3, 8, 5, 5, 3, 3), "writes an NHWC output"),
    ("fp16", "NHWC", Conv2d(1, 2, 4, 5, 5, 3, 3, groups=2), "one group"),
    ("fp16", "NHWC", Conv2d(1, 8, 8, 5, 5, 3, 3), "in_channels 8 in fp16 is 16 bytes"),
    ("fp32", "NHWC", Conv2d(1, 4, 8, 5, 5, 3, 3), "in_channels 4 in fp32 is 16 bytes"),
    ("fp32", "NHWC", Conv2d(256, 3, 8, 224, 224, 11, 11, padding=5), "would take"),
])
def test_conv2d_lowered_refuses(dtype: str, layout: str, spec: Conv2d, reason: str) -> None:
    assert reason in (lowering.lowered_refusal(spec, get_dtype(dtype), layout) or "")


# ------------------------------------------------------------------------- unfolded convolution (width unfold + TMA)

def unfolded_only(spec: Conv2d, dtype, layout: str, tensors, out: torch.Tensor):
    """The width unfold and the TMA convolution of the R x 1 layer alone (the build times it on a GPU)."""
    return triton_lowered.build_unfolded(spec, dtype, layout, tensors, out)


# Narrow inputs; unfolded channels past S*C, per-axis stride (rows divisible by the vertical one,
# as the TMA convolution's phase view needs) and padding, dilation, taps past every edge, both layouts.
@given(batch=st.integers(1, 2), channels=st.integers(1, 3), out_units=st.integers(1, 2),
       rows=st.integers(1, 5), width=st.integers(2, 10), kernel_h=st.integers(1, 4), kernel_w=st.integers(2, 5),
       stride_h=st.integers(1, 2), stride_w=st.integers(1, 3), padding_h=st.integers(0, 2),
       padding_w=st.integers(0, 2), dilation=st.integers(1, 2), bias=st.booleans(),
       dtype=st.sampled_from(("tf32", "fp16")), layout=st.sampled_from(("NHWC", "NCHW")), seed=SEEDS)
def test_conv2d_unfolded_drawn(batch: int, channels: int, out_units: int, rows: int, width: int, kernel_h: int,
                               kernel_w: int, stride_h: int, stride_w: int, padding_h: int, padding_w: int,
                               dilation: int, bias: bool, dtype: str, layout: str, seed: int) -> None:
    height = rows * stride_h
    assume(height + 2 * padding_h > dilation * (kernel_h - 1) and width + 2 * padding_w > dilation * (kernel_w - 1))
    spec = Conv2d(batch, channels, 8 * out_units, height, width, kernel_h, kernel_w, stride_h=stride_h,
                  stride_w=stride_w, padding_h=padding_h, padding_w=padding_w, dilation=dilation, bias=bias)
    result = check_implementation(unfolded_only, spec, dtype, layout, "cpu", seed=seed)
    assert result.ok, f"{spec} {dtype} {layout} seed={seed}: {result.message}"


@pytest.mark.parametrize("dtype, spec, channels", [
    ("fp16", Conv2d(2, 3, 16, 9, 8, 3, 3, padding=1), 16),                  # VGG-16's first layer, small
    ("fp16", Conv2d(1, 3, 8, 14, 13, 7, 7, stride=2, padding=3), 24),       # ResNet-50's stem, small
    ("tf32", Conv2d(1, 3, 12, 24, 23, 11, 11, stride=4, padding=2), 36),    # AlexNet's first layer, small
    ("fp16", Conv2d(1, 1, 8, 12, 11, 5, 3, stride_h=2, padding_w=2, dilation=2), 8),  # grey, dilated
], ids=str)
@pytest.mark.parametrize("layout", ("NHWC", "NCHW"))
def test_conv2d_unfolded_first_layers(dtype: str, spec: Conv2d, channels: int, layout: str) -> None:
    assert lowering.unfolded_channels(spec, get_dtype(dtype)) == channels
    tensors = make_tensors(spec, dtype, layout, "cpu")
    built = unfolded_only(spec, get_dtype(dtype), layout, tensors, make_output(spec, tensors, layout))
    assert built.details["unfolded_channels"] == channels, built.details
    result = check_implementation(unfolded_only, spec, dtype, layout, "cpu", seed=zlib.crc32(repr(spec).encode()))
    assert result.ok, f"{spec} {layout}: {result.message}"


@pytest.mark.parametrize("dtype, spec, reason", [
    ("fp16", Conv2d(1, 2, 8, 5, 5, 3, 3, groups=2), "one group"),
    ("fp16", Conv2d(1, 3, 8, 5, 5, 3, 1), "1 wide"),
    ("fp16", Conv2d(1, 8, 8, 5, 5, 3, 3), "in_channels 8 in fp16 is 16 bytes"),
    ("fp32", Conv2d(512, 3, 8, 224, 224, 11, 11, padding=5), "would take"),
], ids=str)
def test_conv2d_unfolded_refuses(dtype: str, spec: Conv2d, reason: str) -> None:
    assert reason in (lowering.unfolded_refusal(spec, get_dtype(dtype)) or "")


@pytest.mark.parametrize("dtype, spec, reason", [
    ("fp16", Conv2d(1, 3, 8, 15, 15, 7, 7, stride=2, padding=3), "7 x 1 layer: the TMA convolution's phase view"),
    ("fp32", Conv2d(1, 3, 8, 14, 14, 7, 7, stride=2, padding=3), "7 x 1 layer: the TMA convolution runs fp16"),
], ids=str)
def test_conv2d_unfolded_refuses_what_the_tma_convolution_cannot_run(dtype: str, spec: Conv2d, reason: str) -> None:
    tensors = make_tensors(spec, dtype, "NHWC", "cpu")
    with pytest.raises(Unsupported, match=re.escape(reason)):
        unfolded_only(spec, get_dtype(dtype), "NHWC", tensors, make_output(spec, tensors, "NHWC"))


# ------------------------------------------------------------------------- persistent TMA GEMM

def tma_only(spec: Linear, dtype, layout: str, tensors, out: torch.Tensor):
    """The persistent TMA GEMM alone (the registered build would choose by timing, on a GPU)."""
    return triton_linear_tma.build_persistent(spec, dtype, tensors, out)


# Features a multiple of 8 (16-byte rows in fp16); ragged against the 16 x 16 x 16 tiles, with
# more tiles than the interpreter's three programs, so each program walks several.
TMA_CASES = {
    "ragged-m-n-k": Linear(37, 72, 48),
    "no-bias": Linear(20, 40, 56, bias=False),
    "batch-1": Linear(1, 24, 8),
    "one-tile": Linear(16, 16, 16),
}


@pytest.mark.parametrize("dtype", ("tf32", "fp16"))
@pytest.mark.parametrize("name", TMA_CASES)
def test_linear_tma_case(name: str, dtype: str) -> None:
    result = check_implementation(tma_only, TMA_CASES[name], dtype, "NCHW", "cpu", seed=zlib.crc32(name.encode()))
    assert result.ok, f"{name} {dtype}: {result.message}"


@pytest.mark.parametrize("dtype", ("tf32", "fp16"))
@pytest.mark.parametrize("name", ("ragged-m-n-k", "batch-1"))
def test_linear_tma_subtiled_store(name: str, dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each tile stored as two halves of its columns (the configs with SUBTILE)."""
    monkeypatch.setitem(triton_linear_tma.INTERPRETER_CONFIG, "SUBTILE", True)
    result = check_implementation(tma_only, TMA_CASES[name], dtype, "NCHW", "cpu", seed=zlib.crc32(name.encode()))
    assert result.ok, f"{name} {dtype}: {result.message}"


# Stream-K over the interpreter's three programs and 16 x 16 x 16 tiles: fewer tiles than programs
# (a tile's steps over two programs, or over all three), whole tiles before the shared ones, ragged
# M, N and K, no bias.
STREAM_K_CASES = {
    "ten-tiles-ragged-k": Linear(20, 24, 80),
    "two-tiles-three-programs": Linear(16, 48, 32),
    "one-tile-three-parts": Linear(16, 160, 16),
    "whole-tiles-first": Linear(112, 48, 16),
    "ragged-no-bias": Linear(100, 40, 24, bias=False),
}


@pytest.mark.parametrize("dtype", ("tf32", "fp16"))
@pytest.mark.parametrize("name", STREAM_K_CASES)
def test_linear_tma_stream_k(name: str, dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(triton_linear_tma.INTERPRETER_CONFIG, "STREAM_K", True)
    spec = STREAM_K_CASES[name]
    tensors = make_tensors(spec, dtype, "NCHW", "cpu")
    built = tma_only(spec, get_dtype(dtype), "NCHW", tensors, make_output(spec, tensors))
    assert built.details["stream_k"], built.details
    result = check_implementation(tma_only, spec, dtype, "NCHW", "cpu", seed=zlib.crc32(name.encode()), runs=2)
    assert result.ok, f"{name} {dtype}: {result.message}"


def test_linear_tma_stream_k_refuses_whole_waves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(triton_linear_tma.INTERPRETER_CONFIG, "STREAM_K", True)
    spec = Linear(37, 48, 72)  # 3 x 5 tiles: whole waves of the interpreter's three programs
    tensors = make_tensors(spec, "fp16", "NCHW", "cpu")
    with pytest.raises(Unsupported, match="no partial wave"):
        tma_only(spec, get_dtype("fp16"), "NCHW", tensors, make_output(spec, tensors))


@given(batch=st.integers(1, 40), in_units=st.integers(1, 9), out_units=st.integers(1, 9),
       bias=st.booleans(), dtype=st.sampled_from(("tf32", "fp16")), seed=SEEDS)
def test_linear_tma_drawn(batch: int, in_units: int, out_units: int, bias: bool, dtype: str, seed: int) -> None:
    spec = Linear(batch, 8 * in_units, 8 * out_units, bias=bias)
    result = check_implementation(tma_only, spec, dtype, "NCHW", "cpu", seed=seed)
    assert result.ok, f"{spec} {dtype} seed={seed}: {result.message}"


@pytest.mark.parametrize("dtype, spec, reason", [
    ("fp32", Linear(4, 16, 16), "not fp32"),
    ("fp16", Linear(4, 37, 16), "in_features 37 in fp16 is 74 bytes"),
    ("tf32", Linear(4, 16, 6), "out_features 6 in tf32 is 24 bytes"),
])
def test_linear_tma_refuses(dtype: str, spec: Linear, reason: str) -> None:
    tensors = make_tensors(spec, dtype, "NCHW", "cpu")
    with pytest.raises(Unsupported, match=reason):
        triton_linear_tma.build_persistent(spec, get_dtype(dtype), tensors, make_output(spec, tensors))


# ------------------------------------------------------------------------- batch-1 matrix-vector product

def gemv_only(spec: Linear, dtype, layout: str, tensors, out: torch.Tensor):
    """The matrix-vector kernel alone (the registered build would choose by timing, on a GPU)."""
    return triton_gemv.build_gemv(spec, dtype, tensors, out)


# Against the interpreter's 16 x 32 tile: N ragged and under one tile, K split in two slices with
# the second ragged, K a multiple of the quantum (unmasked steps), one slice.
GEMV_CASES = {
    "ragged-split": Linear(1, 75, 37),
    "even-k-split": Linear(1, 128, 19),
    "one-slice": Linear(1, 40, 16),
    "no-bias": Linear(1, 96, 33, bias=False),
    "one-output": Linear(1, 17, 1),
}


@pytest.mark.parametrize("dtype", Linear.dtypes)
@pytest.mark.parametrize("name", GEMV_CASES)
def test_gemv_case(name: str, dtype: str) -> None:
    result = check_implementation(gemv_only, GEMV_CASES[name], dtype, "NCHW", "cpu", seed=zlib.crc32(name.encode()))
    assert result.ok, f"{name} {dtype}: {result.message}"


@given(in_features=st.integers(1, 200), out_features=st.integers(1, 40), bias=st.booleans(),
       dtype=st.sampled_from(Linear.dtypes), seed=SEEDS)
def test_gemv_drawn(in_features: int, out_features: int, bias: bool, dtype: str, seed: int) -> None:
    spec = Linear(1, in_features, out_features, bias=bias)
    result = check_implementation(gemv_only, spec, dtype, "NCHW", "cpu", seed=seed)
    assert result.ok, f"{spec} {dtype} seed={seed}: {result.message}"


def test_gemv_refuses_a_batch_over_one() -> None:
    spec = Linear(2, 16, 8)
    tensors = make_tensors(spec, "fp16", "NCHW", "cpu")
    with pytest.raises(Unsupported, match="batch 1, this point has batch 2"):
        triton_gemv.build_gemv(spec, get_dtype("fp16"), tensors, make_output(spec, tensors))


def test_gemv_block_k_divides_its_quantum() -> None:
    for cfg in triton_gemv._CONFIGS:
        assert triton_gemv.QUANTUM % cfg.kwargs["BLOCK_K"] == 0, cfg
        assert cfg.kwargs["BLOCK_N"] >= triton_gemv.MIN_BLOCK_N, cfg
    assert triton_gemv._INTERPRETER_QUANTUM % triton_gemv._INTERPRETER_CONFIG["BLOCK_K"] == 0


def test_fastest_split_keeps_the_fastest_plan_and_the_first_of_equals(monkeypatch: pytest.MonkeyPatch) -> None:
    times = {1: 3.0, 2: 1.0, 4: 1.0, 8: 2.0}
    monkeypatch.setattr(triton_support, "quick_bench", lambda kernel: times[kernel()])
    kernel, splits = triton_support.fastest_split([1, 2, 4, 8], lambda s: lambda: s)
    assert (kernel(), splits) == (2, 2)


def test_linear_block_k_divides_the_even_k_quantum() -> None:
    """Unmasked reduction steps (EVEN_K) and split-K slices assume every BLOCK_K divides the
    quantum; a longer BLOCK_K would read into the next slice and count it twice."""
    for configs in triton_linear._CONFIGS.values():
        for cfg in configs:
            assert triton_linear.EVEN_K_QUANTUM % cfg.kwargs["BLOCK_K"] == 0, cfg


def test_linear_one_step_tiles_only_where_the_reduction_is_one_step() -> None:
    """Reductions of one k-step get tiles of that step with at most two stages, beside the
    general configs; longer ones get the general configs alone."""
    for mode, general in triton_linear._CONFIGS.items():
        assert triton_linear._configs(mode, triton_linear.ONE_STEP_MAX_K + 1) == general
        for k, step in ((8, 16), (24, 32), (64, 64)):
            extra = triton_linear._configs(mode, k)[len(general):]
            assert len(extra) == len(triton_linear._ONE_STEP_TILES)
            assert {c.kwargs["BLOCK_K"] for c in extra} == {step}
            assert max(c.num_stages for c in extra) <= 2


@pytest.mark.parametrize("k", (24, 64, 200))
def test_linear_plan_offers_one_step_tiles_by_the_real_reduction(k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiled GEMM's plan rounds a slice up to the quantum (128): the configs it times must
    follow the reduction itself, so that K of 24 gets its one-step tiles."""
    offered = []
    monkeypatch.setattr(triton_linear, "bind", lambda fn, configs, *rest: offered.extend(configs))
    spec = Linear(40, k, 48)
    tensors = make_tensors(spec, get_dtype("bf16"), "NCHW", "cpu")
    out = make_output(spec, tensors, "NCHW")
    triton_linear._plan(spec, get_dtype("bf16"), tensors["x"], tensors["weight"], tensors.get("bias"), out, 1,
                        triton_linear.EVEN_K_QUANTUM)
    assert offered == triton_linear._configs("mma16", k)
    assert (len(offered) > len(triton_linear._CONFIGS["mma16"])) == (k <= triton_linear.ONE_STEP_MAX_K)


def test_pointwise_tiles_keep_two_stages_where_one_step_spans_the_reduction() -> None:
    tiles = ((128, 128, 64, 8, 3), (64, 64, 32, 4, 4))
    one_step = triton_pointwise._cut_tiles(tiles, 144, 24, 3136)
    assert [(c.kwargs["BLOCK_K"], c.num_stages) for c in one_step] == [(32, 2), (32, 2)]
    several = triton_pointwise._cut_tiles(tiles, 144, 96, 3136)
    assert [(c.kwargs["BLOCK_K"], c.num_stages) for c in several] == [(64, 3), (32, 4)]


# ------------------------------------------------------------------------- special values

SPECIAL = [float("nan"), float("-inf"), float("inf"), -0.0, 0.0, -1.5, 2.5, float("nan")]


@pytest.mark.parametrize("dtype", ReLU.dtypes)
@pytest.mark.parametrize("inplace", [False, True])
def test_relu_matches_torch_on_nan_inf_and_zero(inplace: bool, dtype: str) -> None:
    spec = ReLU(1, 1, 1, len(SPECIAL), inplace=inplace)
    torch_dtype = get_dtype(dtype).torch_dtype
    x = torch.tensor(SPECIAL, dtype=torch_dtype).reshape(spec.input_shape)
    expected = torch.relu(x)
    tensors = {"x": x}
    out = make_output(spec, tensors)
    get("relu", "triton").build(spec, get_dtype(dtype), "NCHW", tensors, out)()
    torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)


# NCHW 16-bit window rows read a value at a time or as aligned word pairs, one or two outputs an
# element, each forced: odd widths (rows of both parities; an odd count of outputs, so a row's last
# element has one), a padded first row (word -1), windows ending on the last word, stride 1.
PAIRED_POOLS = [Pool2d(2, 3, 13, 13, 3, 2), Pool2d(1, 2, 7, 9, 3, 2, padding=1), Pool2d(2, 1, 5, 7, 2, 2),
                Pool2d(1, 2, 5, 5, 3, 1, padding=1, method="avg")]


@pytest.mark.parametrize("pairs,outputs", [(False, 1), (True, 1), (True, 2)])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("spec", PAIRED_POOLS, ids=str)
def test_pool2d_nchw_16bit_row_reads(spec: Pool2d, dtype: str, pairs: bool, outputs: int,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert triton_pool2d.pairs_refusal(spec, make_tensors(spec, dtype, "NCHW", "cpu")["x"]) is None
    monkeypatch.setattr(triton_pool2d, "PAIRED_READS", (pairs,))
    monkeypatch.setattr(triton_pool2d, "PAIR_OUTPUTS", (outputs,))
    check("pool2d", spec, dtype, "NCHW", seed=zlib.crc32(str(spec).encode()))


# NHWC channel runs, each forced: 96 channels as one run of 128 (32 lanes idle past them) or three
# of 32; the chooser's runs for other counts.
@pytest.mark.parametrize("run", [128, 32])
@pytest.mark.parametrize("method", ["max", "avg"])
def test_pool2d_nhwc_channel_runs(run: int, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert triton_pool2d.channel_blocks(96) == (128, 32)
    assert triton_pool2d.channel_blocks(192) == (128, 64) and triton_pool2d.channel_blocks(256) == (128,)
    assert triton_pool2d.channel_blocks(64) == (64,) and triton_pool2d.channel_blocks(12) == (16,)
    monkeypatch.setattr(triton_pool2d, "channel_blocks", lambda channels: (run,))
    spec = Pool2d(1, 96, 7, 9, 3, 2, padding=1, method=method)
    for dtype in ("fp16", "fp32"):
        check("pool2d", spec, dtype, "NHWC", seed=run)


def test_pool2d_word_pairs_refusals() -> None:
    spec = Pool2d(1, 3, 5, 5, 3, 2)  # 75 values: the last word would hang past the tensor
    assert "even number" in triton_pool2d.pairs_refusal(spec, make_tensors(spec, "bf16", "NCHW", "cpu")["x"])
    x = torch.zeros(101, dtype=torch.bfloat16)[1:].view(1, 4, 5, 5)  # 2 bytes past a 4-byte boundary
    assert "4-byte boundary" in triton_pool2d.pairs_refusal(Pool2d(1, 4, 5, 5, 3, 2), x)
    assert "16-bit" in triton_pool2d.pairs_refusal(Pool2d(1, 4, 4, 4, 3, 2), torch.zeros(1, 4, 4, 4))
    assert "not 4" in triton_pool2d.pairs_refusal(Pool2d(1, 4, 8, 8, 4, 2), torch.zeros(1, 4, 8, 8).bfloat16())


@triton.jit
def _divmod_probe(n_ptr, q_ptr, r_ptr, d, m, SIZE: tl.constexpr):
    i = tl.arange(0, SIZE)
    q, r = triton_support.divmod_magic(tl.load(n_ptr + i), d, m)
    tl.store(q_ptr + i, q)
    tl.store(r_ptr + i, r)


@pytest.mark.parametrize("d", [1, 2, 3, 6, 7, 13, 27, 55, 224, 4093, 65535, 2**30 + 3, 2**31 - 1])
def test_nchw_pool_divides_by_multiplying_exactly(d: int) -> None:
    """The kernels' division by multiplying (pooling's by a row's outputs and P, depthwise's by Q):
    exact from 0 to the int32 limit, also at and just below multiples of the divisor (where a
    quotient one too large would show)."""
    n = [v for v in (0, 1, d - 1, d, d + 1, 2**31 - 1, 2**31 - 2, 2**30, 12345678) if v < 2**31]
    n += [k * d - e for k in (2, 1000, (2**31 - 1) // d) for e in (0, 1) if 0 <= k * d - e < 2**31]
    n += [int(v) for v in torch.randint(0, 2**31 - 1, (64 - len(n),), generator=torch.Generator().manual_seed(d))]
    n_t = torch.tensor(n, dtype=torch.int32)
    q, r = torch.empty_like(n_t), torch.empty_like(n_t)
    _divmod_probe[(1,)](n_t, q, r, d, triton_support.magic(d), SIZE=64)
    assert q.tolist() == [v // d for v in n] and r.tolist() == [v % d for v in n]


@pytest.mark.parametrize("pairs", [False, True])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_max_pool_keeps_special_values_of_16_bit_rows(dtype: str, pairs: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """NaN, -inf and -0 at both halves of a word come out of the window max exactly as torch's."""
    monkeypatch.setattr(triton_pool2d, "PAIRED_READS", (pairs,))
    spec = Pool2d(1, 2, 7, 7, 3, 2, method="max")
    tensors = make_tensors(spec, dtype, "NCHW", "cpu", torch.Generator().manual_seed(5))
    x = tensors["x"]
    x[0, 0, 0, 3], x[0, 0, 0, 4] = float("nan"), float("nan")  # an odd and an even element of row 0
    x[0, 1] = -float("inf")
    x[0, 1, 2, 2:5] = -0.0
    x[0, 1, 6, 6] = 1.0
    out = make_output(spec, tensors)
    get("pool2d", "triton").build(spec, get_dtype(dtype), "NCHW", tensors, out)()
    expected = F.max_pool2d(x.float(), 3, 2).to(x.dtype)
    assert expected.isnan().any() and (expected == -float("inf")).any()
    torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)
    numbers = ~expected.isnan()  # a NaN's sign says nothing
    assert torch.equal(out.signbit()[numbers], expected.signbit()[numbers])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_pool_propagates_nan_like_torch(layout: str) -> None:
    spec = Pool2d(1, 2, 6, 6, 3, 2, padding=1, method="max")
    tensors = make_tensors(spec, "fp32", layout, "cpu", torch.Generator().manual_seed(4))
    tensors["x"][0, 1, 2, 3] = float("nan")
    out = make_output(spec, tensors)
    get("pool2d", "triton").build(spec, get_dtype("fp32"), layout, tensors, out)()
    expected = F.max_pool2d(tensors["x"], 3, 2, 1)
    assert expected.isnan().any()
    torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)


# ------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("layer,spec", [("conv2d", Conv2d(1, 2, 2, 4, 4, 3, 3)),
                                        ("linear", Linear(2, 8, 4))])
def test_bf16_dot_is_refused_under_the_interpreter(layer: str, spec) -> None:
    tensors = make_tensors(spec, "bf16", "NCHW", "cpu")
    with pytest.raises(Unsupported, match="interpreter"):
        get(layer, "triton").build(spec, get_dtype("bf16"), "NCHW", tensors, make_output(spec, tensors))


def test_unsupported_dtype_and_strides_are_refused() -> None:
    pool = Pool2d(1, 2, 4, 4, 2, 2)
    tensors = make_tensors(pool, "fp32", "NCHW", "cpu")
    with pytest.raises(Unsupported, match="tf32"):
        get("pool2d", "triton").build(pool, get_dtype("tf32"), "NCHW", tensors, make_output(pool, tensors))
    relu = ReLU(1, 2, 4, 4)
    x = torch.randn(1, 2, 4, 8)[..., ::2]  # not dense
    with pytest.raises(Unsupported, match="dense"):
        get("relu", "triton").build(relu, get_dtype("fp32"), "NCHW", {"x": x}, torch.empty(relu.output_shape))


# ------------------------------------------------------------------------- the checks can fail

def test_checker_catches_unwritten_last_element() -> None:
    def build(spec, dtype, layout, tensors, out):
        x, n = tensors["x"], tensors["x"].numel()

        def kernel():
            triton_relu._relu_kernel[(1,)](x, out, n - 1, BLOCK=triton_relu.BYTES_PER_PROGRAM // 4)
        return kernel

    result = check_implementation(build, ReLU(1, 2, 3, 5), "fp32", "NCHW", "cpu", seed=1)
    assert not result.ok and result.nonfinite == 1


def test_checker_catches_flipped_conv_kernel() -> None:
    triton_conv = get("conv2d", "triton").build

    def build(spec, dtype, layout, tensors, out):
        # Cross-correlation with the kernel mirrored: right shape, wrong values.
        flipped = dict(tensors, weight=tensors["weight"].flip(2, 3).contiguous())
        return triton_conv(spec, dtype, layout, flipped, out)

    result = check_implementation(build, Conv2d(1, 3, 4, 7, 7, 3, 3, padding=1), "fp32", "NCHW", "cpu", seed=2)
    assert not result.ok and result.nonfinite == 0


def test_checker_catches_avg_in_place_of_max() -> None:
    triton_pool = get("pool2d", "triton").build

    def build(spec, dtype, layout, tensors, out):
        return triton_pool(dataclasses.replace(spec, method="avg"), dtype, layout, tensors, out)

    result = check_implementation(build, Pool2d(1, 2, 6, 6, 2, 2, method="max"), "fp16", "NHWC", "cpu", seed=3)
    assert not result.ok


# ------------------------------------------------------------------------- the copy ceiling's kernel


def test_copy_kernel_copies_whole_blocks() -> None:
    src = torch.randn(2 * COPY_BLOCK)
    dst = torch.full_like(src, float("nan"))
    copy_launcher(src, dst)()
    assert torch.equal(dst, src)
    with pytest.raises(ValueError, match="whole blocks"):
        copy_launcher(src[:-1], dst[:-1])
    with pytest.raises(ValueError, match="fp32"):
        copy_launcher(src.half(), dst.half())
