"""The CuPy backward kernels (ReLU, pooling, linear) on a GPU, every pass they run (backward_data,
backward_weight, and training: forward and backward in a row), through check_implementation
against float64 autograd; small drawn shapes, the thesis's layers, awkward shapes and special
values.  The registration and the refusals run anywhere."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from kernels.cupy import pool2d_backward
from layerbench import registry
from layerbench.dtypes import get_dtype
from layerbench.errors import Unsupported
from layerbench.layers import Linear, Pool2d, ReLU
from layerbench.testing import check_implementation, linear_specs, make_output, make_tensors, pool2d_specs, relu_specs

pytest.importorskip("cupy", reason="the CuPy kernels need CuPy")

gpu = pytest.mark.gpu
DEVICE = "cuda"
DIRECTIONS = {"relu": ("backward_data", "training"), "pool2d": ("backward_data", "training"),
              "linear": ("backward_data", "backward_weight", "training")}


def impl(layer: str) -> registry.Implementation:
    errors = registry.load_errors()
    assert "cupy" not in errors, errors["cupy"]
    return registry.get(layer, "cupy")


def assert_ok(layer: str, spec: object, dtype: str, layout: str) -> None:
    result = check_implementation(impl(layer), spec, dtype, layout, DEVICE, runs=2)
    assert result.ok, f"{spec} {dtype} {layout}: {result.message}"


def test_every_pass_is_registered() -> None:
    for layer, directions in DIRECTIONS.items():
        i = impl(layer)
        assert set(directions) <= set(i.directions), (layer, i.directions)
        for d in directions:
            entry = i.for_direction(d)
            assert entry is not None and entry.backend == "cupy" and entry.description


@pytest.mark.parametrize("layer, spec", [
    ("relu", ReLU(2, 3, 4, 5, direction="backward_data")),
    ("pool2d", Pool2d(2, 3, 8, 8, 2, 2, direction="backward_data")),
    ("linear", Linear(4, 8, 6, direction="backward_data")),
    ("linear", Linear(4, 8, 6, direction="backward_weight")),
])
def test_cpu_tensors_are_unsupported(layer: str, spec: object) -> None:
    """Refused before anything is compiled or launched (CPU tensors here)."""
    tensors = make_tensors(spec, "fp32", "NCHW", "cpu")
    with pytest.raises(Unsupported, match="CUDA tensors"):
        impl(layer).build(spec, get_dtype("fp32"), "NCHW", tensors, make_output(spec, tensors, "NCHW"))


# ---------------------------------------------------------------- relu


@gpu
@given(spec=relu_specs(max_batch=4, max_channels=9, max_hw=33), dtype=st.sampled_from(ReLU.dtypes),
       direction=st.sampled_from(DIRECTIONS["relu"]))
def test_relu_backward_drawn(spec: ReLU, dtype: str, direction: str) -> None:
    assert_ok("relu", dataclasses.replace(spec, inplace=False, direction=direction), dtype, "NCHW")


@gpu
@pytest.mark.parametrize("direction", DIRECTIONS["relu"])
@pytest.mark.parametrize("dtype", ReLU.dtypes)
@pytest.mark.parametrize("shape", [(128, 96, 55, 55), (128, 256, 13, 13), (3, 5, 7, 11), (1, 1, 1, 1)])
def test_relu_backward_shapes(shape: tuple[int, int, int, int], dtype: str, direction: str) -> None:
    assert_ok("relu", ReLU(*shape, direction=direction), dtype, "NCHW")


@gpu
@pytest.mark.parametrize("dtype", ReLU.dtypes)
@pytest.mark.parametrize("offsets", [(0, 0, 0), (1, 2, 3)], ids=["aligned", "misaligned"])
def test_relu_backward_special_values(dtype: str, offsets: tuple[int, int, int]) -> None:
    """Bit for bit as threshold_backward: -0, +0, negatives and -inf give 0; positives, +inf and
    NaN pass dy; pointers off the 16-byte grid take the scalar path."""
    spec = ReLU(1, 1, 1, 1000, direction="backward_data")
    dt = get_dtype(dtype)

    def view(offset: int, values: torch.Tensor) -> torch.Tensor:
        base = torch.full((1003,), math.nan, device=DEVICE, dtype=dt.torch_dtype)
        base[offset:offset + 1000] = values
        return base[offset:offset + 1000].view(spec.input_shape)

    x = torch.randn(1000, device=DEVICE)
    x[5:13] = torch.tensor([math.nan, -math.inf, math.inf, -0.0, 0.0, 1e-30, -1e-30, 2.0])
    x, dy = view(offsets[0], x), view(offsets[1], torch.randn(1000, device=DEVICE))
    out = view(offsets[2], torch.full((1000,), math.nan, device=DEVICE))
    impl("relu").build(spec, dt, "NCHW", {"x": x, "dy": dy}, out)()
    torch.cuda.synchronize()
    want = torch.ops.aten.threshold_backward(dy, x, 0)
    assert torch.equal(out, want)
    assert bool((out[0, 0, 0, [5, 7]] == dy[0, 0, 0, [5, 7]]).all()) and bool((out[0, 0, 0, 6:10:3] == 0).all())


# ---------------------------------------------------------------- pooling


@gpu
@given(spec=pool2d_specs(max_batch=3, max_channels=20, max_hw=20, max_kernel=5),
       dtype=st.sampled_from(Pool2d.dtypes), layout=st.sampled_from(Pool2d.layouts),
       direction=st.sampled_from(DIRECTIONS["pool2d"]))
def test_pool2d_backward_drawn(spec: Pool2d, dtype: str, layout: str, direction: str) -> None:
    assert_ok("pool2d", dataclasses.replace(spec, direction=direction), dtype, layout)


ALEXNET_MAPS = [(64, 55), (192, 27), (256, 13)]  # (channels, height = width), batch 128


@gpu
@pytest.mark.parametrize("direction", DIRECTIONS["pool2d"])
@pytest.mark.parametrize("layout", Pool2d.layouts)
@pytest.mark.parametrize("dtype", Pool2d.dtypes)
@pytest.mark.parametrize("method", ["max", "avg"])
@pytest.mark.parametrize("window", [(3, 2), (2, 2)], ids=["3x3s2", "2x2s2"])
@pytest.mark.parametrize("maps", ALEXNET_MAPS, ids=[f"{h}x{h}x{c}" for c, h in ALEXNET_MAPS])
def test_pool2d_backward_alexnet(maps: tuple[int, int], window: tuple[int, int], method: str, dtype: str,
                                 layout: str, direction: str) -> None:
    c, hw = maps
    kernel, stride = window
    assert_ok("pool2d", Pool2d(128, c, hw, hw, kernel, stride, method=method, direction=direction), dtype, layout)


@gpu
@pytest.mark.parametrize("direction", DIRECTIONS["pool2d"])
@pytest.mark.parametrize("layout", Pool2d.layouts)
@pytest.mark.parametrize("dtype", Pool2d.dtypes)
@pytest.mark.parametrize("spec", [
    Pool2d(3, 5, 17, 11, 3, 2, padding=1, method="avg"),
    Pool2d(2, 7, 9, 30, 4, 3, padding=2, method="max"),
    Pool2d(4, 24, 13, 13, 3, 1, padding=1, method="max"),
    Pool2d(4, 24, 13, 13, 3, 1, padding=1, method="avg"),
    Pool2d(2, 16, 8, 8, 8, 8, method="avg"),
    Pool2d(2, 3, 9, 8, 1, 3, method="max"),
    Pool2d(2, 3, 5, 7000, 3, 2, padding=1, method="max"),
], ids=["odd-avg-pad", "odd-max-pad", "s1-max", "s1-avg", "global", "1x1s3-gaps", "wide-rows"])
def test_pool2d_backward_awkward_shapes(spec: Pool2d, dtype: str, layout: str, direction: str) -> None:
    assert_ok("pool2d", dataclasses.replace(spec, direction=direction), dtype, layout)


@gpu
@pytest.mark.parametrize("layout", Pool2d.layouts)
@pytest.mark.parametrize("dtype", Pool2d.dtypes)
@pytest.mark.parametrize("stride", [2, 1], ids=["overlap-s2", "overlap-s1"])
@pytest.mark.parametrize("path", ["recompute", "winners_first"])
def test_max_pool_backward_ties_and_special_values(path: str, dtype: str, layout: str, stride: int) -> None:
    """Winners as torch picks them: the first of tied maxima, the last NaN, the first of a window of
    -inf; -0 and +0 tie.  Against float64 autograd on the same values, and exactly where each
    element wins at most one window.  Both ways of knowing the winners."""
    spec = Pool2d(2, 16, 9, 9, 3, stride, padding=1, method="max", direction="backward_data")
    dt = get_dtype(dtype)
    x = torch.randint(-2, 3, spec.input_shape, device=DEVICE).float()  # ties in most windows
    x[0, 0, 0, 0] = math.nan
    x[0, 0, 1, 1] = math.nan
    x[1, 2] = -math.inf
    x[1, 3] = 0.0
    x[1, 3, ::2, 1::2] = -0.0
    x[1, 4, 4, 4] = math.inf
    fmt = torch.channels_last if layout == "NHWC" else torch.contiguous_format
    x = x.to(dt.torch_dtype).contiguous(memory_format=fmt)
    dy = torch.randn(spec.output_shape, device=DEVICE).to(dt.torch_dtype).contiguous(memory_format=fmt)
    out = torch.full(spec.input_shape, math.nan, device=DEVICE, dtype=dt.torch_dtype).contiguous(memory_format=fmt)
    build = {"recompute": pool2d_backward.build_recompute, "winners_first": pool2d_backward.build_winners_first}[path]
    build(spec, dt, layout, {"x": x, "dy": dy}, out)()
    torch.cuda.synchronize()
    # NCHW float64, as the harness's reference: torch's channels-last CUDA kernel can give a window
    # of -inf the plane's element 0 rather than the window's first tap.
    leaf = x.double().contiguous().requires_grad_(True)
    want, = torch.autograd.grad(F.max_pool2d(leaf, 3, stride, 1), leaf, dy.double().contiguous())
    assert not torch.isnan(out).any()
    single = torch.ones_like(dy, dtype=torch.float64)
    wins, = torch.autograd.grad(F.max_pool2d(leaf, 3, stride, 1), leaf, single)
    once = wins <= 1  # elements that win at most one window: dx is dy, exact
    assert bool((out.double()[once] == want.to(dt.torch_dtype).double()[once]).all())
    torch.testing.assert_close(out.double(), want, rtol=2e-2, atol=2e-2)
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 1, 1] != 0


# ---------------------------------------------------------------- linear


@gpu
@given(spec=linear_specs(max_batch=300, max_features=300), dtype=st.sampled_from(Linear.dtypes),
       direction=st.sampled_from(DIRECTIONS["linear"]))
def test_linear_backward_drawn(spec: Linear, dtype: str, direction: str) -> None:
    assert_ok("linear", dataclasses.replace(spec, direction=direction), dtype, "NCHW")


FC = {"fc6": (9216, 4096), "fc7": (4096, 4096), "fc8": (4096, 1000)}  # thesis Tables 6-9..6-11


@gpu
@pytest.mark.parametrize("direction", DIRECTIONS["linear"])
@pytest.mark.parametrize("dtype", Linear.dtypes)
@pytest.mark.parametrize("name", sorted(FC))
def test_linear_backward_thesis_layers(name: str, dtype: str, direction: str) -> None:
    assert_ok("linear", Linear(128, *FC[name], direction=direction), dtype, "NCHW")


@gpu
@pytest.mark.parametrize("direction", DIRECTIONS["linear"])
@pytest.mark.parametrize("dtype", Linear.dtypes)
@pytest.mark.parametrize("spec", [
    Linear(7, 33, 65), Linear(1, 4096, 1000), Linear(129, 130, 3, bias=False), Linear(1000, 1, 1),
    Linear(4096, 64, 48), Linear(3, 1, 700, bias=False),
], ids=["odd", "batch1", "odd-nobias", "k1", "long-batch", "in1-nobias"])
def test_linear_backward_awkward_shapes(spec: Linear, dtype: str, direction: str) -> None:
    assert_ok("linear", dataclasses.replace(spec, direction=direction), dtype, "NCHW")
