"""The Triton backward passes of ReLU, pooling and linear, and their training compositions.

Interpreter tests (tiny shapes, CPU tensors under TRITON_INTERPRET) and GPU tests (realistic
shapes, every dtype and layout) share the cases; every check goes through check_implementation:
fresh random x and dy, outputs poisoned with NaN, the float64 autograd reference, exact where the
pass selects (ReLU, max pooling without overlap).  Values chosen so that every sum is exact check
the first-maximum rule, NaN and -inf against torch's own backward bit for bit.
"""

from __future__ import annotations

import dataclasses
import zlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels.triton  # noqa: F401 - registers the kernels
from kernels import pool_winners
from kernels.triton import linear_backward, pool2d_backward
from kernels.triton.linear import EVEN_K_QUANTUM
from kernels.triton.support import DOT_MODE
from layerbench.builders import as_built
from layerbench.dtypes import get_dtype
from layerbench.errors import Unsupported
from layerbench.registry import get
from layerbench.layers import Linear, Pool2d, ReLU
from layerbench.layers.passes import reference_parts
from layerbench.testing import check_implementation, make_output, make_tensors, specs

interpreter = pytest.mark.interpreter
gpu = pytest.mark.gpu

SEEDS = st.integers(0, 2**32 - 1)
LAYOUTS = ("NCHW", "NHWC")
DATA_PASSES = ("backward_data", "training")
LINEAR_PASSES = ("backward_data", "backward_weight", "training")
# The interpreter's tl.dot is wrong for bf16 (kernels/triton/support.py): linear runs bf16 on a GPU.
DOT_DTYPES = ("fp32", "tf32", "fp16")


def check(layer: str, spec, dtype: str, layout: str, seed: int, device: str = "cpu", impl=None) -> None:
    result = check_implementation(impl or get(layer, "triton"), spec, dtype, layout, device, seed=seed)
    assert result.ok, f"{spec} {dtype} {layout} seed={seed}: {result.message}"


def seed_of(name: str) -> int:
    return zlib.crc32(name.encode())


def at(spec, direction: str):
    return dataclasses.replace(spec, direction=direction)


# ------------------------------------------------------------------------- ReLU

@interpreter
@given(spec=st.sampled_from(DATA_PASSES).flatmap(
           lambda d: specs("relu", max_batch=3, max_channels=8, max_hw=24, direction=d)),
       dtype=st.sampled_from(ReLU.dtypes), seed=SEEDS)
def test_relu_backward_drawn(spec: ReLU, dtype: str, seed: int) -> None:
    check("relu", spec, dtype, "NCHW", seed)


@interpreter
@pytest.mark.parametrize("dtype", ReLU.dtypes)
def test_relu_backward_blocks_and_tail(dtype: str) -> None:
    # 8214 elements: two full fp32 blocks (one fp16/bf16 block) plus a masked tail.
    check("relu", ReLU(2, 3, 37, 37, direction="backward_data"), dtype, "NCHW", seed=7)


SPECIAL = [float("nan"), float("-inf"), float("inf"), -0.0, 0.0, -1.5, 2.5, 1e-30]


@interpreter
@pytest.mark.parametrize("dtype", ReLU.dtypes)
def test_relu_backward_matches_torch_on_nan_inf_and_zero(dtype: str) -> None:
    """torch passes dy where x is NaN and blocks it at x = +-0 (threshold_backward: x <= 0)."""
    spec = ReLU(1, 1, 1, len(SPECIAL), direction="backward_data")
    torch_dtype = get_dtype(dtype).torch_dtype
    x = torch.tensor(SPECIAL, dtype=torch_dtype).reshape(spec.input_shape)
    dy = torch.arange(1, len(SPECIAL) + 1, dtype=torch_dtype).reshape(spec.output_shape)
    out = torch.full(spec.input_shape, float("nan"), dtype=torch_dtype)
    get("relu", "triton").build(spec, get_dtype(dtype), "NCHW", {"x": x, "dy": dy}, out)()
    expected = torch.ops.aten.threshold_backward(dy, x, 0)
    assert expected[0, 0, 0, 0] == 1 and expected[0, 0, 0, 3] == 0  # NaN passes, -0 blocks
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_relu_reference_gradient_is_torch_s() -> None:
    """fp16 rounds one N(0, 1) draw in ~4e7 to zero: at x = 0 the reference must block dy."""
    x = torch.tensor(SPECIAL, dtype=torch.float64).reshape(1, 1, 1, -1)
    dy = torch.arange(1.0, len(SPECIAL) + 1, dtype=torch.float64).reshape(x.shape)
    dx = reference_parts(ReLU(1, 1, 1, len(SPECIAL), direction="backward_data"), {"x": x, "dy": dy})["dx"]
    torch.testing.assert_close(dx, torch.ops.aten.threshold_backward(dy, x, 0), rtol=0, atol=0)


# ------------------------------------------------------------------------- pooling

POOL_CASES = {
    "3x3-s2-overlap": Pool2d(2, 3, 9, 9, 3, 2),
    "2x2-s2-disjoint": Pool2d(2, 3, 8, 8, 2, 2),
    "3x3-s3-pad1-disjoint-odd": Pool2d(1, 5, 10, 7, 3, 3, padding=1),
    "3x3-s2-pad1-odd-channels": Pool2d(1, 5, 9, 7, 3, 2, padding=1),
    "kernel4-pad2-s1": Pool2d(1, 2, 5, 6, 4, 1, padding=2),  # four windows a row per element
    "stride-past-kernel": Pool2d(1, 3, 11, 9, 2, 3),  # rows and columns in no window
    "channels-past-tile": Pool2d(1, 130, 4, 4, 2, 2),  # two NHWC channel tiles
    "width-past-tile": Pool2d(1, 1, 3, 130, 3, 2),  # two tiles in either layout
}


@interpreter
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("method", ["max", "avg"])
@pytest.mark.parametrize("name", POOL_CASES)
def test_pool2d_backward_case(name: str, method: str, dtype: str, layout: str) -> None:
    spec = dataclasses.replace(POOL_CASES[name], method=method, direction="backward_data")
    check("pool2d", spec, dtype, layout, seed=seed_of(name))


@interpreter
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("name", POOL_CASES)
def test_max_pool_backward_winners_first_case(name: str, dtype: str, layout: str) -> None:
    """The two-kernel path (each window's winner once, then the gather), which the GPU may choose."""
    spec = dataclasses.replace(POOL_CASES[name], method="max", direction="backward_data")
    check("pool2d", spec, dtype, layout, seed=seed_of(name), impl=pool2d_backward.build_pool2d_backward_winners_first)


@interpreter
def test_max_pool_backward_winners_first_refuses() -> None:
    avg = Pool2d(1, 2, 6, 6, 2, 2, method="avg", direction="backward_data")
    big = Pool2d(1, 1, 14, 14, pool_winners.MAX_WINNER_KERNEL + 1, 1, method="max", direction="backward_data")
    for spec, match in ((avg, "for max pooling"), (big, "kernel must be <= 11")):
        tensors = make_tensors(spec, "fp32", "NCHW", "cpu")
        with pytest.raises(Unsupported, match=match):
            pool2d_backward.build_pool2d_backward_winners_first(spec, get_dtype("fp32"), "NCHW", tensors,
                                                                make_output(spec, tensors, "NCHW"))


@interpreter
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("method", ["max", "avg"])
def test_pool2d_training(method: str, layout: str) -> None:
    spec = Pool2d(2, 3, 9, 7, 3, 2, padding=1, method=method, direction="training")
    check("pool2d", spec, "fp16", layout, seed=seed_of(method + layout))


@interpreter
@given(spec=specs("pool2d", max_batch=2, max_channels=10, max_hw=12, max_kernel=4, max_stride=3,
                  direction="backward_data"),
       dtype=st.sampled_from(Pool2d.dtypes), layout=st.sampled_from(LAYOUTS), seed=SEEDS)
def test_pool2d_backward_drawn(spec: Pool2d, dtype: str, layout: str, seed: int) -> None:
    check("pool2d", spec, dtype, layout, seed)


def tie_heavy_input(spec: Pool2d, dtype: str, layout: str, seed: int) -> dict[str, torch.Tensor]:
    """x of the values 0, 1, 2 (ties in most windows), some NaN and a block of -inf; dy of small
    integers: every sum of dy is exact in every dtype, so dx must match torch bit for bit."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 3, spec.input_shape, generator=gen).double()
    x[..., : spec.height // 2, : spec.width // 2] = float("-inf")
    x[torch.rand(spec.input_shape, generator=gen) < 0.05] = float("nan")
    dy = torch.randint(-4, 5, spec.output_shape, generator=gen).double()
    fmt = torch.channels_last if layout == "NHWC" else torch.contiguous_format
    torch_dtype = get_dtype(dtype).torch_dtype
    return {"x": x.to(torch_dtype).contiguous(memory_format=fmt),
            "dy": dy.to(torch_dtype).contiguous(memory_format=fmt)}


def torch_pool_dx(spec: Pool2d, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """torch's dx by its CPU kernel, on the inputs' device.  The CPU kernels (and CUDA's NCHW one)
    start a window's argmax at the window's first element; CUDA's channels-last kernel starts it at
    the plane's element 0, so a window of -inf only sends its gradient elsewhere there."""
    x = tensors["x"].cpu().double().requires_grad_(True)
    y = F.max_pool2d(x, spec.kernel, spec.stride, spec.padding)
    return torch.autograd.grad(y, x, tensors["dy"].cpu().double())[0].to(tensors["x"].device)


TIE_CASES = {"overlap-pad": Pool2d(2, 3, 9, 8, 3, 2, padding=1, method="max", direction="backward_data"),
             "disjoint": Pool2d(1, 4, 8, 6, 2, 2, method="max", direction="backward_data"),
             "s1-pad2": Pool2d(1, 2, 6, 7, 4, 1, padding=2, method="max", direction="backward_data")}


def assert_ties_nan_inf_like_torch(name: str, dtype: str, layout: str, device: str) -> None:
    spec = TIE_CASES[name]
    tensors = {k: v.to(device) for k, v in tie_heavy_input(spec, dtype, layout, seed_of(name)).items()}
    assert tensors["x"].isnan().any()
    expected = torch_pool_dx(spec, tensors)
    for build in (pool2d_backward.build_pool2d_backward_recompute, pool2d_backward.build_pool2d_backward_winners_first):
        out = make_output(spec, tensors, layout).fill_(float("nan"))
        build(spec, get_dtype(dtype), layout, tensors, out)()
        torch.testing.assert_close(out.double(), expected, rtol=0, atol=0, msg=lambda m: f"{build.__name__}: {m}")


@interpreter
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("name", TIE_CASES)
def test_max_pool_backward_ties_nan_inf_like_torch(name: str, dtype: str, layout: str) -> None:
    assert_ties_nan_inf_like_torch(name, dtype, layout, "cpu")


@interpreter
def test_pool2d_backward_refuses_mixed_layouts() -> None:
    spec = Pool2d(1, 3, 6, 6, 2, 2, direction="backward_data")
    tensors = make_tensors(spec, "fp32", "NCHW", "cpu")
    out = torch.empty(spec.input_shape).contiguous(memory_format=torch.channels_last)
    with pytest.raises(Unsupported, match="all dense NCHW or all dense NHWC"):
        get("pool2d", "triton").build(spec, get_dtype("fp32"), "NCHW", tensors, out)


# ------------------------------------------------------------------------- linear

LINEAR_CASES = {
    "ragged-split": Linear(3, 40, 37),  # dx: K = 37 split in two, the second slice ragged
    "long-batch-split": Linear(37, 20, 10),  # dW: K = batch = 37 split
    # K a multiple of 128: the unmasked reduction, in dx (K = out) and in dW (K = batch).
    "even-k-data": Linear(5, 12, 128),
    "even-k-weight": Linear(128, 12, 9),
    "no-bias": Linear(6, 48, 33, bias=False),
    "batch-1": Linear(1, 17, 1),
    "interior-and-edge-tiles": Linear(20, 24, 18),  # whole tiles and edge tiles in both GEMMs
}


@interpreter
@pytest.mark.parametrize("dtype", DOT_DTYPES)
@pytest.mark.parametrize("direction", ["backward_data", "backward_weight"])
@pytest.mark.parametrize("name", LINEAR_CASES)
def test_linear_backward_case(name: str, direction: str, dtype: str) -> None:
    check("linear", at(LINEAR_CASES[name], direction), dtype, "NCHW", seed=seed_of(name))


@interpreter
@pytest.mark.parametrize("dtype", DOT_DTYPES)
@pytest.mark.parametrize("name", ["ragged-split", "no-bias"])
def test_linear_training(name: str, dtype: str) -> None:
    check("linear", at(LINEAR_CASES[name], "training"), dtype, "NCHW", seed=seed_of(name))


@interpreter
@given(spec=st.sampled_from(LINEAR_PASSES).flatmap(
           lambda d: specs("linear", max_batch=40, max_features=40, direction=d)),
       dtype=st.sampled_from(DOT_DTYPES), seed=SEEDS)
def test_linear_backward_drawn(spec: Linear, dtype: str, seed: int) -> None:
    check("linear", spec, dtype, "NCHW", seed)


def forced_splits(splits: int, quantum: int):
    """A builder of the strided GEMM with the reduction cut into ``splits`` slices (no bias)."""
    def build(spec: Linear, dtype, layout: str, tensors, out: torch.Tensor):
        x, w, dy = tensors["x"], tensors["weight"], tensors["dy"]
        a, b = (dy, w) if spec.direction == "backward_data" else (dy.t(), x)
        return linear_backward._gemm_plan(dtype, a, b, out, splits, quantum)
    return build


@interpreter
@pytest.mark.parametrize("direction", ["backward_data", "backward_weight"])
def test_linear_backward_three_ragged_slices(direction: str) -> None:
    # K = 53 in both passes: slices of 32, 16 (a quantum each) and a ragged 5.
    spec = Linear(53, 19, 53, bias=False, direction=direction)
    check("linear", spec, "fp32", "NCHW", seed=3, impl=forced_splits(3, 16))


@interpreter
def test_linear_backward_block_k_divides_the_even_k_quantum() -> None:
    """Split-K slices and the unmasked reduction (EVEN_K) assume every BLOCK_K divides the
    quantum; a longer BLOCK_K would read into the next slice and count it twice."""
    for configs in linear_backward._CONFIGS.values():
        for cfg in configs:
            assert EVEN_K_QUANTUM % cfg.kwargs["BLOCK_K"] == 0, cfg


@interpreter
@pytest.mark.parametrize("direction", ["backward_data", "backward_weight"])
def test_linear_backward_bf16_is_refused_under_the_interpreter(direction: str) -> None:
    spec = Linear(2, 8, 4, direction=direction)
    tensors = make_tensors(spec, "bf16", "NCHW", "cpu")
    with pytest.raises(Unsupported, match="interpreter"):
        get("linear", "triton").build(spec, get_dtype("bf16"), "NCHW", tensors, make_output(spec, tensors))


# ------------------------------------------------------------------------- GPU: real shapes

RELU_SHAPES = {"alexnet-conv1": ReLU(32, 64, 55, 55), "tail": ReLU(8, 256, 13, 13)}


@gpu
@pytest.mark.parametrize("direction", DATA_PASSES)
@pytest.mark.parametrize("dtype", ReLU.dtypes)
@pytest.mark.parametrize("name", RELU_SHAPES)
def test_gpu_relu_backward(name: str, dtype: str, direction: str) -> None:
    check("relu", at(RELU_SHAPES[name], direction), dtype, "NCHW", seed_of(name), "cuda")


@gpu
@settings(max_examples=25)
@given(spec=specs("relu", max_batch=16, max_channels=256, max_hw=64, direction="backward_data"),
       dtype=st.sampled_from(ReLU.dtypes), seed=SEEDS)
def test_gpu_relu_backward_drawn(spec: ReLU, dtype: str, seed: int) -> None:
    check("relu", spec, dtype, "NCHW", seed, "cuda")


# AlexNet feature maps with 3x3 and 2x2 windows, stride 2, batch 32 (as the forward's GPU tests).
ALEXNET_MAPS = {"55x55x64": (64, 55), "13x13x256": (256, 13)}
POOL_WINDOWS = {"3x3-max": (3, "max"), "3x3-avg": (3, "avg"), "2x2-max": (2, "max")}


@gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", Pool2d.dtypes)
@pytest.mark.parametrize("window", POOL_WINDOWS)
@pytest.mark.parametrize("fmap", ALEXNET_MAPS)
def test_gpu_pool2d_backward_alexnet(fmap: str, window: str, dtype: str, layout: str) -> None:
    channels, size = ALEXNET_MAPS[fmap]
    kernel, method = POOL_WINDOWS[window]
    spec = Pool2d(32, channels, size, size, kernel, 2, method=method, direction="backward_data")
    check("pool2d", spec, dtype, layout, seed_of(fmap + window), "cuda")


# Seven windows a row per element (the window loop is not unrolled), VGG's 2x2, ResNet's 3x3 pad 1.
POOL_OTHER = {"7x7-s1-pad3": Pool2d(4, 32, 28, 28, 7, 1, padding=3),
              "vgg-2x2": Pool2d(8, 128, 112, 112, 2, 2),
              "resnet-3x3-s2-pad1": Pool2d(16, 64, 112, 112, 3, 2, padding=1)}


@gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", Pool2d.dtypes)
@pytest.mark.parametrize("method", ["max", "avg"])
@pytest.mark.parametrize("name", POOL_OTHER)
def test_gpu_pool2d_backward_other(name: str, method: str, dtype: str, layout: str) -> None:
    spec = dataclasses.replace(POOL_OTHER[name], method=method, direction="backward_data")
    check("pool2d", spec, dtype, layout, seed_of(name), "cuda")


@gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", POOL_OTHER)
def test_gpu_max_pool_backward_both_paths(name: str, layout: str) -> None:
    """Each way of finding the winners is right, whichever the build keeps, and the build says
    which it kept and how long each took."""
    spec = dataclasses.replace(POOL_OTHER[name], method="max", direction="backward_data")
    for build in (pool2d_backward.build_pool2d_backward_recompute, pool2d_backward.build_pool2d_backward_winners_first):
        check("pool2d", spec, "fp16", layout, seed_of(name), "cuda", impl=build)
    tensors = make_tensors(spec, "fp16", layout, "cuda")
    details = as_built(get("pool2d", "triton").build(spec, get_dtype("fp16"), layout, tensors,
                                                     make_output(spec, tensors, layout))).details
    assert details["path"] in ("recompute", "winners_first")
    assert details["recompute_ms"] > 0 and details["winners_first_ms"] > 0


@gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", Pool2d.dtypes)
@pytest.mark.parametrize("method", ["max", "avg"])
def test_gpu_pool2d_training(method: str, dtype: str, layout: str) -> None:
    spec = Pool2d(32, 64, 55, 55, 3, 2, method=method, direction="training")
    check("pool2d", spec, dtype, layout, seed_of(method), "cuda")


@gpu
@settings(max_examples=15)  # most draws compile a new window size
@given(spec=specs("pool2d", max_batch=8, max_channels=300, max_hw=64, max_kernel=5, max_stride=3,
                  direction="backward_data"),
       dtype=st.sampled_from(Pool2d.dtypes), layout=st.sampled_from(LAYOUTS), seed=SEEDS)
def test_gpu_pool2d_backward_drawn(spec: Pool2d, dtype: str, layout: str, seed: int) -> None:
    check("pool2d", spec, dtype, layout, seed, "cuda")


@gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", Pool2d.dtypes)
@pytest.mark.parametrize("name", TIE_CASES)
def test_gpu_max_pool_backward_ties_nan_inf_like_torch(name: str, dtype: str, layout: str) -> None:
    assert_ties_nan_inf_like_torch(name, dtype, layout, "cuda")


# AlexNet's classifier at batch 128, the batch-1 case, a long batch on a small layer (dW split-K),
# and odd sizes past every tile edge.
LINEAR_SHAPES = {"fc6": Linear(128, 9216, 4096), "fc8": Linear(128, 4096, 1000),
                 "batch-1": Linear(1, 4096, 1000), "long-batch": Linear(8192, 256, 128),
                 "odd-no-bias": Linear(77, 1000, 333, bias=False)}


@gpu
@pytest.mark.parametrize("direction", ["backward_data", "backward_weight"])
@pytest.mark.parametrize("dtype", Linear.dtypes)
@pytest.mark.parametrize("name", LINEAR_SHAPES)
def test_gpu_linear_backward(name: str, dtype: str, direction: str) -> None:
    check("linear", at(LINEAR_SHAPES[name], direction), dtype, "NCHW", seed_of(name), "cuda")


@gpu
@pytest.mark.parametrize("dtype", Linear.dtypes)
@pytest.mark.parametrize("name", ["fc8", "odd-no-bias"])
def test_gpu_linear_training(name: str, dtype: str) -> None:
    check("linear", at(LINEAR_SHAPES[name], "training"), dtype, "NCHW", seed_of(name), "cuda")


@gpu
@settings(max_examples=10)  # each new shape autotunes (~9 s on an H200)
@given(spec=st.sampled_from(LINEAR_PASSES).flatmap(
           lambda d: specs("linear", max_batch=300, max_features=3000, direction=d)),
       dtype=st.sampled_from(Linear.dtypes), seed=SEEDS)
def test_gpu_linear_backward_drawn(spec: Linear, dtype: str, seed: int) -> None:
    check("linear", spec, dtype, "NCHW", seed, "cuda")


@gpu
@pytest.mark.parametrize("dtype, index", [(dtype, i) for dtype in ("fp16", "tf32", "fp32")
                                          for i in range(len(linear_backward._CONFIGS[DOT_MODE[dtype]]))])
def test_gpu_linear_backward_every_tile_config(dtype: str, index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The autotuner keeps one config per problem: each is forced here (one test a config, so that
    parallel workers share them out), with whole tiles and edge tiles and a masked reduction, dx in
    three slices (K = 1100), dW whole (K = 600)."""
    mode = DOT_MODE[dtype]
    cases = {"backward_data": (Linear(300, 150, 1100, bias=False, direction="backward_data"), 3),
             "backward_weight": (Linear(600, 150, 300, bias=False, direction="backward_weight"), 1)}
    config = linear_backward._CONFIGS[mode][index]
    monkeypatch.setitem(linear_backward._CONFIGS, mode, [config])
    for name, (spec, splits) in cases.items():
        result = check_implementation(forced_splits(splits, EVEN_K_QUANTUM), spec, dtype, "NCHW", "cuda",
                                      seed=seed_of(name))
        assert result.ok, f"{config} splits={splits} {name} {dtype}: {result.message}"
