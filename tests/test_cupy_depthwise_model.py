"""The depthwise kernels (depthwise.cu), modelled on the CPU (kernels/cupy/depthwise_models.py): the
NHWC threads (channel vectors, several pixels per thread, unrolled rows or loops), the flat-run
NHWC threads (bands of rows, rolling accumulators), the NCHW blocks (a staged tile with its halo)
and the NCHW rows blocks (staged whole-width rows of several planes or of a band, x at every
alignment), against torch's conv2d in float64; and the plans' choices."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from host_cuda_build import assert_constants_match
from kernels import depthwise_scope
from kernels.cupy import depthwise_plan, sources
from kernels.cupy.depthwise import prepared_filter
from kernels.cupy.depthwise_models import (model_depthwise_nchw, model_depthwise_nchw_rows, model_depthwise_nhwc,
                                           model_depthwise_nhwc_flat)
from kernels.cupy.depthwise_plan import flat_plan, plan_depthwise, rows_plan
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d

CTYPE = {torch.float32: "float", torch.float16: "__half", torch.bfloat16: "__nv_bfloat16"}


def run_model(spec: Conv2d, layout: str, dtype: torch.dtype, seed: int, x_ptr: int = 0
              ) -> tuple[depthwise_plan.DepthwisePlan, torch.Tensor, torch.Tensor]:
    """(plan, model output, float64 reference) on fresh random inputs; ``x_ptr`` stands for x's
    address in the plan (0: 16-byte aligned)."""
    gen = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if layout == "NHWC" else torch.contiguous_format
    x = torch.randn(spec.input_shape, generator=gen).to(dtype).contiguous(memory_format=fmt)
    w = torch.randn(spec.weight_shape, generator=gen).to(dtype).contiguous(memory_format=fmt)
    b = torch.randn(spec.out_channels, generator=gen).to(dtype) if spec.bias else None
    plan = plan_depthwise(spec, layout, CTYPE[dtype], x_ptr, 0)
    model = model_depthwise_nhwc if layout == "NHWC" else model_depthwise_nchw
    got = model(spec, plan, x, prepared_filter(spec, w, layout), b.float() if b is not None else None)
    ref = spec.reference({"x": x.double(), "weight": w.double(), "bias": b.double() if b is not None else None})
    return plan, got, ref


def assert_matches(got: torch.Tensor, ref: torch.Tensor) -> None:
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


def dw(batch: int, channels: int, mult: int, h: int, w: int, kh: int, kw: int, **fields: object) -> Conv2d:
    return Conv2d(batch, channels, mult * channels, h, w, kh, kw, groups=channels, **fields)


CASES = {
    "3x3-s1": dw(2, 16, 1, 9, 10, 3, 3, padding=1),
    "3x3-s2": dw(2, 24, 1, 11, 9, 3, 3, stride=2, padding=1),
    "5x5-odd": dw(1, 8, 1, 13, 7, 5, 5, padding=2, bias=False),
    "7x7-s2": dw(1, 8, 1, 15, 17, 7, 7, stride=2, padding=3),
    "3x3-s3": dw(1, 16, 1, 10, 11, 3, 3, stride=3, padding=1),
    "dilation-2": dw(2, 8, 1, 9, 9, 3, 3, padding=2, dilation=2),
    "multiplier-2": dw(2, 4, 2, 7, 9, 3, 3, padding=1),
    "1x7-stride-2-1-pad-3-0-odd": dw(2, 5, 1, 8, 11, 1, 7, stride_h=2, stride_w=1, padding_h=3, padding_w=0),
    "7x1-pad-3-0-mult-2": dw(1, 8, 2, 12, 6, 7, 1, padding_h=3, padding_w=0),
    "several-tiles": dw(1, 2, 1, 40, 70, 3, 3, padding=1),
    "tile-shrunk-for-shared-memory": dw(1, 2, 1, 100, 120, 3, 3, stride=2, dilation=40),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_model_depthwise_cases(name: str, layout: str, dtype: torch.dtype) -> None:
    plan, got, ref = run_model(CASES[name], layout, dtype, seed=7)
    assert_matches(got, ref)


@st.composite
def depthwise_specs(draw: st.DrawFn) -> Conv2d:
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    pad_h, pad_w = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    dil_h, dil_w = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    square = draw(st.booleans())  # the unrolled windows are square
    kh = draw(st.sampled_from([1, 3, 5, 7]) if square else st.integers(1, 7))
    kh = min(kh, (h + 2 * pad_h - 1) // dil_h + 1)
    kw = kh if square else draw(st.integers(1, 7))
    kw = min(kw, (w + 2 * pad_w - 1) // dil_w + 1)
    return dw(draw(st.integers(1, 2)), draw(st.integers(2, 12)), draw(st.sampled_from([1, 1, 2])), h, w, kh, kw,
              stride_h=draw(st.integers(1, 3)), stride_w=draw(st.integers(1, 3)), padding_h=pad_h, padding_w=pad_w,
              dilation_h=dil_h, dilation_w=dil_w, bias=draw(st.booleans()))


@given(spec=depthwise_specs(), layout=st.sampled_from(["NHWC", "NCHW"]),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), aligned=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_model_depthwise_matches_torch(spec: Conv2d, layout: str, dtype: torch.dtype, aligned: bool,
                                       seed: int) -> None:
    plan, got, ref = run_model(spec, layout, dtype, seed, x_ptr=0 if aligned else 2)
    assert_matches(got, ref)


def run_rows_model(spec: Conv2d, dtype: torch.dtype, seed: int, x_offset: int, sms: int = 132, stages: int = 2
                   ) -> tuple[depthwise_plan.DepthwisePlan, torch.Tensor, torch.Tensor]:
    """(plan, rows model output, float64 reference) on fresh random inputs, x ``x_offset`` bytes
    past a 16-byte boundary, ``stages`` staging buffers a block."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(spec.input_shape, generator=gen).to(dtype)
    w = torch.randn(spec.weight_shape, generator=gen).to(dtype)
    b = torch.randn(spec.out_channels, generator=gen).to(dtype) if spec.bias else None
    plan = rows_plan(spec, CTYPE[dtype], sms, stages=stages)
    got = model_depthwise_nchw_rows(spec, plan, x, prepared_filter(spec, w, "NCHW"),
                                    b.float() if b is not None else None, x_offset)
    ref = spec.reference({"x": x.double(), "weight": w.double(), "bias": b.double() if b is not None else None})
    return plan, got, ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_model_rows_cases(name: str, dtype: torch.dtype) -> None:
    if name == "tile-shrunk-for-shared-memory" and dtype == torch.float32:  # dilation 40: 81 rows under a strip
        with pytest.raises(Unsupported, match="2 buffers of 81 rows of 120 values"):
            rows_plan(CASES[name], CTYPE[dtype], 132)
        return
    for x_offset in (0, 4, 12):  # every 16-byte alignment an fp32 or bf16 x can have, in part
        plan, got, ref = run_rows_model(CASES[name], dtype, seed=5, x_offset=x_offset)
        assert_matches(got, ref)


# One SM: its two resident blocks walk several chunks each, the buffers in turn; 132 SMs: one chunk a block.
@given(spec=depthwise_specs(), dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
       x_offset=st.integers(0, 7), sms=st.sampled_from([1, 132]), stages=st.integers(2, depthwise_plan.ROWS_MAX_STAGES),
       seed=st.integers(0, 2**31 - 1))
def test_model_rows_matches_torch(spec: Conv2d, dtype: torch.dtype, x_offset: int, sms: int, stages: int,
                                  seed: int) -> None:
    size = torch.tensor([], dtype=dtype).element_size()
    plan, got, ref = run_rows_model(spec, dtype, seed, x_offset * size % 16, sms, stages)
    assert plan.stages == stages and plan.shared_bytes == stages * plan.buffer * size
    assert_matches(got, ref)


def test_rows_constants_match_the_kernel() -> None:
    assert_constants_match("depthwise.cu", {
        "ROWS_THREADS": depthwise_plan.ROWS_THREADS, "ROWS_STRIP_1": depthwise_plan.ROWS_STRIPS[1],
        "ROWS_STRIP_2": depthwise_plan.ROWS_STRIPS[2], "ROWS_COLS": depthwise_plan.ROWS_COLUMNS,
        "ROWS_COLS_MAX_K": depthwise_plan.ROWS_COLUMNS_MAX_K, "ROWS_MAX_STAGES": depthwise_plan.ROWS_MAX_STAGES})


def test_rows_plan_refuses_a_stage_count() -> None:
    for stages in (1, depthwise_plan.ROWS_MAX_STAGES + 1):
        with pytest.raises(ValueError, match=f"stages must be 2 to {depthwise_plan.ROWS_MAX_STAGES}, got {stages}"):
            rows_plan(dw(1, 2, 1, 14, 14, 3, 3, padding=1), "float", 132, stages=stages)


def test_model_rows_bands_and_groups() -> None:
    # A plane of 200 x 50 outputs in bands of 160 rows (the last one short); 7 x 7 planes in groups
    # of ten, eight chunks a block (two resident on each of 2 SMs), each chunk in the other buffer.
    banded, got, ref = run_rows_model(dw(1, 2, 1, 200, 50, 3, 3, padding=1), torch.bfloat16, 1, 2)
    assert (banded.group, banded.band, banded.chunks, banded.grid[0]) == (1, 160, 4, 4)
    assert_matches(got, ref)
    grouped, got, ref = run_rows_model(dw(8, 40, 1, 7, 7, 3, 3, padding=1), torch.float16, 2, 6, sms=2)
    assert (grouped.group, grouped.band, grouped.chunks, grouped.grid[0]) == (10, 8, 32, 4)
    assert_matches(got, ref)


def test_nhwc_plan_choices() -> None:
    def plan(spec: Conv2d, ctype: str = "__half", x_ptr: int = 0) -> depthwise_plan.DepthwisePlan:
        return plan_depthwise(spec, "NHWC", ctype, x_ptr, 0)

    mobilenet = dw(64, 96, 1, 112, 112, 3, 3, stride=2, padding=1)
    assert (plan(mobilenet).vec, plan(mobilenet).kernel) == (8, 3)
    assert plan(mobilenet).name == sources.depthwise_nhwc_name("__half", 8, 3, 2)
    assert plan(mobilenet, "float").name == sources.depthwise_nhwc_name("float", 4, 3, 2)
    # Vectors without unrolled rows: dilation, stride 3 along w, a window that is not square.
    for other in (dw(2, 16, 1, 9, 9, 3, 3, dilation=2), dw(2, 16, 1, 9, 9, 3, 3, stride=3),
                  dw(2, 16, 1, 9, 9, 1, 7, padding_w=3)):
        assert plan(other).name == sources.depthwise_nhwc_name("__half", 8, 0, 0)
    # One channel per thread: a multiplier, channels off the vector, x off the 16-byte grid.
    for other, x_ptr in ((dw(2, 16, 2, 9, 9, 3, 3), 0), (dw(2, 12, 1, 9, 9, 3, 3), 0),
                         (dw(2, 16, 1, 9, 9, 3, 3), 2)):
        assert plan(other, x_ptr=x_ptr).name == sources.depthwise_nhwc_name("__half", 1, 0, 0)
    every = set(sources.SOURCES["depthwise"].name_expressions)
    assert {plan(s).name for s in CASES.values()} <= every


def test_nchw_tiles() -> None:
    big = plan_depthwise(dw(64, 96, 1, 112, 112, 3, 3, padding=1), "NCHW", "float")
    assert big.tile == (32, 32, 34, 34) and big.threads == 256 and big.grid == (64 * 96, 4, 4)
    small = plan_depthwise(dw(64, 960, 1, 7, 7, 3, 3, padding=1), "NCHW", "float")
    assert small.tile[:2] == (7, 8) and small.threads == 64 and small.kernel == 3
    shrunk = plan_depthwise(CASES["tile-shrunk-for-shared-memory"], "NCHW", "float")
    assert shrunk.tile[:2] == (3, 32) and shrunk.shared_bytes <= depthwise_plan.SHARED_LIMIT
    for th in range(1, 40):
        for tw in (8, 16, 32):
            threads = depthwise_plan.nchw_threads(th, tw)
            assert threads % 32 == 0 and threads <= 256 and threads // tw >= min(th, 256 // tw)


def test_nchw_refuses_a_window_past_shared_memory() -> None:
    with pytest.raises(Unsupported, match="shared memory"):
        plan_depthwise(dw(1, 2, 1, 130, 130, 5, 5, dilation=30), "NCHW", "float")
    assert plan_depthwise(dw(1, 2, 1, 130, 130, 5, 5, dilation=30), "NHWC", "float").kernel == 0


def run_flat_model(spec: Conv2d, dtype: torch.dtype, seed: int, sms: int) -> tuple[depthwise_plan.DepthwisePlan,
                                                                                   torch.Tensor, torch.Tensor]:
    """(plan, flat-run model output, float64 reference) on fresh random inputs, planned for ``sms`` SMs."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(spec.input_shape, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(spec.weight_shape, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    b = torch.randn(spec.out_channels, generator=gen).to(dtype) if spec.bias else None
    plan = flat_plan(spec, "NHWC", CTYPE[dtype], 0, 0, sms)
    got = model_depthwise_nhwc_flat(spec, plan, x, prepared_filter(spec, w, "NHWC"), b.float() if b is not None else None)
    ref = spec.reference({"x": x.double(), "weight": w.double(), "bias": b.double() if b is not None else None})
    return plan, got, ref


# Planes that cut bands of 4-32 rows raggedly (1 SM: tall bands; 132: bands of 4), paddings 0-2,
# stride 1 or 2 both ways, one to three 16-byte vectors of channels.
@given(batch=st.integers(1, 2), vectors=st.integers(1, 3), h=st.integers(1, 40), w=st.integers(1, 12),
       pad_h=st.integers(0, 2), pad_w=st.integers(0, 2), stride=st.integers(1, 2), bias=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), sms=st.sampled_from([1, 132]),
       seed=st.integers(0, 2**31 - 1))
def test_model_flat_matches_torch(batch: int, vectors: int, h: int, w: int, pad_h: int, pad_w: int, stride: int,
                                  bias: bool, dtype: torch.dtype, sms: int, seed: int) -> None:
    assume(h + 2 * pad_h >= 3 and w + 2 * pad_w >= 3)
    channels = vectors * sources.vector_width(CTYPE[dtype])
    spec = dw(batch, channels, 1, h, w, 3, 3, stride=stride, padding_h=pad_h, padding_w=pad_w, bias=bias)
    plan, got, ref = run_flat_model(spec, dtype, seed, sms)
    assert_matches(got, ref)


def test_model_flat_run_over_several_segments() -> None:
    # 24 x 96 fp16 elements a row: three segments of 1,024, the last partly idle.
    for stride in (1, 2):
        spec = dw(1, 96, 1, 7, 24 * stride, 3, 3, stride=stride, padding=1)
        plan, got, ref = run_flat_model(spec, torch.float16, seed=3, sms=1)
        assert plan.segments == 3
        assert_matches(got, ref)


def test_flat_plan_choices() -> None:
    def plan(spec: Conv2d, ctype: str = "__nv_bfloat16") -> depthwise_plan.DepthwisePlan:
        return flat_plan(spec, "NHWC", ctype, 0, 0, 132)

    # MobileNetV2, batch 64, on 132 SMs: the tallest band that leaves 12 blocks an SM.
    assert plan(dw(64, 144, 1, 56, 56, 3, 3, padding=1)).band == 16  # 8 segments x 4 bands x 64
    assert plan(dw(64, 960, 1, 7, 7, 3, 3, padding=1)).band == 4  # too few blocks at any height
    # A band given is taken as it is.
    assert flat_plan(dw(64, 960, 1, 7, 7, 3, 3, padding=1), "NHWC", "float", 0, 0, 132, 32).band == 32
    with pytest.raises(ValueError, match="band must be at least 1"):
        flat_plan(dw(1, 16, 1, 9, 9, 3, 3), "NHWC", "__half", 0, 0, 132, 0)
    assert plan(dw(64, 96, 1, 112, 112, 3, 3, stride=2, padding=1)).name == sources.depthwise_flat_name(
        "__nv_bfloat16", 8, 2)
    assert plan(dw(64, 96, 1, 112, 112, 3, 3, stride=2, padding=1), "float").vec == 4
    refusals = [(dw(1, 16, 2, 9, 9, 3, 3), "one output channel"), (dw(1, 16, 1, 9, 9, 5, 5), "3x3 filters"),
                (dw(1, 16, 1, 9, 9, 3, 3, dilation=2), "without dilation"),
                (dw(1, 16, 1, 9, 9, 3, 3, stride_h=1, stride_w=2), r"strides \(1, 1\) and \(2, 2\)"),
                (dw(1, 12, 1, 9, 9, 3, 3), "multiple of 8")]
    for spec, reason in refusals:
        with pytest.raises(Unsupported, match=reason):
            plan(spec)
    with pytest.raises(Unsupported, match="16-byte aligned"):
        flat_plan(dw(1, 16, 1, 9, 9, 3, 3), "NHWC", "__half", 2, 0, 132)
    # NCHW: four (or one) columns a thread, the row's threads rounded up to a power of two (at most
    # a block's 128), the rest of the block more planes; the tallest band that leaves 64 blocks an
    # SM.  Four columns a thread: 14 columns take 4 threads, a block 32 planes.
    nchw = flat_plan(dw(64, 576, 1, 14, 14, 3, 3, padding=1), "NCHW", "__nv_bfloat16", 0, 0, 132)
    assert (nchw.vec, nchw.row_threads, nchw.segments, nchw.band, nchw.grid[0]) == (4, 4, 1, 4, 1152 * 4)
    assert nchw.name == sources.depthwise_nchw_flat_name("__nv_bfloat16", 1, 4)
    single = flat_plan(dw(64, 576, 1, 14, 14, 3, 3, padding=1), "NCHW", "__nv_bfloat16", 0, 0, 132, 32, 1)
    assert (single.vec, single.row_threads, single.band, single.grid[0]) == (1, 16, 32, 36864 // 8)
    wide = flat_plan(dw(2, 3, 1, 300, 300, 3, 3, stride=2, padding=1), "NCHW", "float", 0, 0, 132, columns=1)
    assert (wide.row_threads, wide.segments, wide.band) == (128, 2, 4)  # 150 columns in two segments
    assert flat_plan(dw(1, 12, 1, 9, 9, 3, 3), "NCHW", "__half", 2, 0, 132).name.endswith(", 1, 4>")  # no alignment
    with pytest.raises(ValueError, match="columns must be one of"):
        flat_plan(dw(1, 12, 1, 9, 9, 3, 3), "NCHW", "__half", 0, 0, 132, columns=3)
    assert "runs NHWC and NCHW only" in depthwise_plan.flat_refusal(dw(1, 16, 1, 9, 9, 3, 3), "NCDHW")
    # The kernels compiled are the strides the scope admits.
    assert sources.DEPTHWISE_FLAT_STRIDES == depthwise_scope.FLAT_STRIDES
