"""The CuPy backward kernels' index math, modelled on the CPU (kernels/cupy/backward_models.py and
models.model_igemm), against float64 autograd (the harness's own references): ReLU's bit select,
the pooling gather (ties, padding, overlapping windows, NaN and -inf), the linear layer's GEMM
geometries, the transpose and the bias gradient's column sums.  No GPU."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from host_cuda_build import assert_constants_match
from kernels.cupy import linear_backward, pool2d_backward, relu_backward, sources
from kernels.cupy.backward_models import (
    model_column_sums,
    model_pool_backward,
    model_pool_winners,
    model_to_channels_last,
    relu_backward_bits,
    unsigned_bits,
)
from kernels.cupy.models import BITS, model_igemm
from layerbench.layers import Linear, Pool2d, ReLU, passes
from layerbench.testing import linear_specs, pool2d_specs

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _values(u: np.ndarray, name: str) -> torch.Tensor:
    """Unsigned bit patterns as a tensor of dtype ``name``."""
    _, _, tdt, idt, bits = BITS[name]
    signed = np.where(u >= (1 << (bits - 1)), u - (1 << bits), u)
    return torch.from_numpy(signed).to(idt).view(tdt)


def _autograd(spec: object, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The harness's float64 reference parts of ``spec``'s pass."""
    return passes.reference_parts(spec, {k: v.double().contiguous() for k, v in tensors.items()})


# ---------------------------------------------------------------- ReLU backward


@pytest.mark.parametrize("name", sorted(BITS))
def test_relu_backward_bits_match_threshold_backward(name: str) -> None:
    """Every 16-bit x pattern (random and special fp32 ones) against torch's threshold_backward,
    bit for bit: -0, +0 and negatives give +0; positives and NaN pass dy."""
    sign, inf, tdt, _, bits = BITS[name]
    if bits == 16:
        xu = np.arange(1 << 16, dtype=np.int64)
    else:
        rng = np.random.default_rng(0)
        special = [0, sign, inf, inf | sign, inf + 1, 0x7FFFFFFF, 1, sign | 1, 0x3F800000, 0xBF800000]
        xu = np.concatenate([rng.integers(0, 1 << 32, 100_000, dtype=np.int64), np.array(special, dtype=np.int64)])
    dy = torch.randn(len(xu), generator=torch.Generator().manual_seed(1)).to(tdt)
    got = relu_backward_bits(xu, unsigned_bits(dy), name)
    want = unsigned_bits(torch.ops.aten.threshold_backward(dy, _values(xu, name), 0))
    assert np.array_equal(got, want)
    assert (got == 0).sum() > len(xu) // 3 and (got != 0).sum() > len(xu) // 3


def test_relu_reference_gradient_is_zero_at_zero() -> None:
    """The harness's float64 reference gives dx = 0 at x = +-0, as the kernel (and torch's own
    backward) does; dy passes only where x > 0."""
    spec = ReLU(1, 1, 1, 6, direction="backward_data")
    x = torch.tensor([-1.0, -0.0, 0.0, 1e-30, 2.0, -math.inf]).view(spec.input_shape)
    dy = torch.full(spec.input_shape, 3.0)
    dx = _autograd(spec, {"x": x, "dy": dy})["dx"]
    assert dx.flatten().tolist() == [0.0, 0.0, 0.0, 3.0, 3.0, 0.0]
    got = relu_backward_bits(unsigned_bits(x), unsigned_bits(dy), "fp32")
    assert _values(got, "fp32").tolist() == dx.flatten().tolist()


# ---------------------------------------------------------------- pooling backward


def _pool_inputs(spec: Pool2d, layout: str, dtype: torch.dtype, seed: int, ties: bool
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    if ties:  # few distinct values: windows hold several maxima, the first must win
        x = torch.randint(-2, 3, spec.input_shape, generator=gen).float()
    else:
        x = torch.randn(spec.input_shape, generator=gen)
    dy = torch.randn(spec.output_shape, generator=gen)
    fmt = torch.channels_last if layout == "NHWC" else torch.contiguous_format
    return x.to(dtype).contiguous(memory_format=fmt), dy.to(dtype).contiguous(memory_format=fmt)


def _check_pool(spec: Pool2d, layout: str, x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """The gather's model against autograd; for max pooling both ways: each window's winner found
    again, and read from the winners found first."""
    spec = dataclasses.replace(spec, direction="backward_data")
    got = model_pool_backward(spec, x, dy, layout)
    want = _autograd(spec, {"x": x, "dy": dy})["dx"]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    if spec.method == "max":
        from_winners = model_pool_backward(spec, x, dy, layout, model_pool_winners(spec, x, layout))
        torch.testing.assert_close(from_winners, want, rtol=1e-12, atol=1e-12, msg=lambda m: f"winners first: {m}")
    return got


@given(spec=pool2d_specs(max_channels=5, max_hw=11, max_kernel=5), layout=st.sampled_from(["NCHW", "NHWC"]),
       dtype=st.sampled_from(sorted(DTYPES)), ties=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_model_pool_backward_matches_autograd(spec, layout, dtype, ties, seed) -> None:
    x, dy = _pool_inputs(spec, layout, DTYPES[dtype], seed, ties)
    _check_pool(spec, layout, x, dy)


POOL_CASES = {
    "3x3s2-alexnet-like": Pool2d(2, 3, 13, 13, 3, 2, method="max"),
    "3x3s1-pad1": Pool2d(2, 3, 7, 9, 3, 1, padding=1, method="max"),
    "4x4s3-pad2-odd": Pool2d(1, 4, 10, 11, 4, 3, padding=2, method="max"),
    "global": Pool2d(2, 3, 6, 6, 6, 6, method="avg"),
    "1x1s3-skips-elements": Pool2d(1, 2, 8, 7, 1, 3, method="max"),
    "2x2s2-avg-pad1": Pool2d(2, 5, 7, 6, 2, 2, padding=1, method="avg"),
    "5x5s1-pad2-avg": Pool2d(1, 3, 6, 8, 5, 1, padding=2, method="avg"),
}


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("ties", [False, True], ids=["randn", "ties"])
@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_model_pool_backward_cases(case: str, ties: bool, layout: str) -> None:
    spec = POOL_CASES[case]
    x, dy = _pool_inputs(spec, layout, torch.float16, seed=3, ties=ties)
    got = _check_pool(spec, layout, x, dy)
    if case == "1x1s3-skips-elements":  # rows and columns no window reaches get 0
        assert bool((got[:, :, 1::3] == 0).all()) and bool((got[:, :, ::3, ::3] != 0).all())


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_model_max_pool_backward_special_values(dtype: str, layout: str) -> None:
    """torch's winner: a NaN replaces the best so far (the last NaN wins), -inf loses to any number
    but wins a window of -inf, -0 and +0 tie (the first wins)."""
    spec = Pool2d(1, 4, 6, 6, 3, 2, padding=1, method="max")
    x = torch.randn(spec.input_shape, generator=torch.Generator().manual_seed(5))
    x[0, 0, 0, 1] = math.nan
    x[0, 0, 1, 1] = math.nan  # same windows, later in scan order: it takes their gradients
    x[0, 1] = -math.inf
    x[0, 2] = 0.0
    x[0, 2, 1::2, ::2] = -0.0
    x[0, 3, 2, 2] = math.inf
    dy = torch.randn(spec.output_shape, generator=torch.Generator().manual_seed(6))
    fmt = torch.channels_last if layout == "NHWC" else torch.contiguous_format
    x = x.to(DTYPES[dtype]).contiguous(memory_format=fmt)
    dy = dy.to(DTYPES[dtype]).contiguous(memory_format=fmt)
    got = _check_pool(spec, layout, x, dy)
    assert got[0, 0, 0, 1] == 0 and got[0, 0, 1, 1] != 0
    assert int((got[0, 1] != 0).sum()) == spec.out_height * spec.out_width  # one -inf wins each window


# ---------------------------------------------------------------- linear backward


def _linear_inputs(spec: Linear, dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    t = {"x": torch.randn(spec.input_shape, generator=gen).to(dtype),
         "weight": torch.randn(spec.weight_shape, generator=gen).to(dtype),
         "dy": torch.randn(spec.output_shape, generator=gen).to(dtype)}
    if spec.bias:
        t["bias"] = torch.randn(spec.out_features, generator=gen).to(dtype)
    return t


def _output(spec: Linear, offset: int) -> torch.Tensor:
    """The pass's output buffer (float64 for the model) starting ``offset`` elements into a larger
    one, as a part of a training pass's flat buffer does."""
    flat = torch.full((offset + passes.output_numel(spec),), math.nan, dtype=torch.float64)[offset:]
    parts = passes.result_parts(spec)
    return flat if len(parts) > 1 else flat.view(parts[0][1])


@given(spec=linear_specs(max_batch=140, max_features=80), dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       tensor_cores=st.booleans(), slots=st.sampled_from([1, 264]), offset=st.integers(0, 3),
       seed=st.integers(0, 2**31 - 1))
def test_model_linear_backward_data(spec, dtype, tensor_cores, slots, offset, seed) -> None:
    """dx^T = W^T dy^T: A is W read through transposed strides, B is dy; no weight copy."""
    spec = dataclasses.replace(spec, direction="backward_data")
    t = _linear_inputs(spec, dtype, seed)
    dx = _output(spec, offset)
    a, b, out = t["weight"].t(), t["dy"], dx.t()
    p = model_igemm(linear_backward.gemm_nt_geometry(a, b, out), a, b, None, out, a.element_size(),
                    tensor_cores or dtype != torch.float32, slots)
    assert not p.copy_weight, "B must be read in place: it changes between launches"
    assert not torch.isnan(dx).any(), "a dx element was never written"
    torch.testing.assert_close(dx, _autograd(spec, t)["dx"], rtol=1e-9, atol=1e-9)


@given(spec=linear_specs(max_batch=140, max_features=80), dtype=st.sampled_from([torch.float32, torch.float16]),
       tensor_cores=st.booleans(), slots=st.sampled_from([1, 264]), offset=st.integers(0, 3),
       seed=st.integers(0, 2**31 - 1))
def test_model_linear_backward_weight(spec, dtype, tensor_cores, slots, offset, seed) -> None:
    """dW = dy^T x with dy^T and x^T by the transpose kernel; dbias as column sums of dy; each part
    into its view of the pass's buffer."""
    spec = dataclasses.replace(spec, direction="backward_weight")
    t = _linear_inputs(spec, dtype, seed)
    out = _output(spec, offset)
    parts = passes.split_output(spec, out, "NCHW")
    batch, outs = spec.output_shape
    ins = spec.in_features
    dy_mem = t["dy"].double().flatten().numpy()

    def transposed(mem: np.ndarray, cols: int) -> torch.Tensor:
        grid = linear_backward.transpose_grid(batch, cols)
        m_t = model_to_channels_last(mem, batch, cols, grid, linear_backward.TILE, linear_backward.ROWS)
        assert not np.isnan(m_t).any(), "the transpose left an element unwritten"
        return torch.from_numpy(m_t).view(cols, batch).to(dtype)

    dy_t, x_t = transposed(dy_mem, outs), transposed(t["x"].double().flatten().numpy(), ins)
    o = parts["dweight"]
    p = model_igemm(linear_backward.gemm_nt_geometry(dy_t, x_t, o), dy_t, x_t, None, o, dy_t.element_size(),
                    tensor_cores or dtype != torch.float32, slots)
    assert not p.copy_weight and (p.a_vec == p.b_vec)  # both operands are read the same way
    if spec.bias:
        sums = model_column_sums(dy_mem.reshape(batch, outs), linear_backward.SUM_COLS, linear_backward.SUM_ROWS)
        parts["dbias"].copy_(torch.from_numpy(sums))
    assert not torch.isnan(out).any(), "an element of the pass's buffer was never written"
    want = _autograd(spec, t)
    for name, view in parts.items():
        torch.testing.assert_close(view, want[name], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (33, 1), (1, 70), (40, 65), (128, 100)])
def test_model_column_sums(rows: int, cols: int) -> None:
    a = np.random.default_rng(rows * cols).standard_normal((rows, cols))
    got = model_column_sums(a, linear_backward.SUM_COLS, linear_backward.SUM_ROWS)
    np.testing.assert_allclose(got, a.sum(axis=0), rtol=1e-12, atol=1e-12)


@given(rows=st.integers(1, 70), cols=st.integers(1, 70))
def test_model_transpose_grid(rows: int, cols: int) -> None:
    src = np.arange(rows * cols, dtype=np.float64)
    got = model_to_channels_last(src, rows, cols, linear_backward.transpose_grid(rows, cols),
                                 linear_backward.TILE, linear_backward.ROWS)
    assert np.array_equal(got, src.reshape(rows, cols).T.flatten())


# ---------------------------------------------------------------- constants shared with the kernels


def _cu(name: str) -> str:
    return (sources.KERNEL_DIR / name).read_text()


def test_launcher_constants_match_the_kernels() -> None:
    assert_constants_match("relu_backward.cu", {"UNROLL": relu_backward.UNROLL})
    assert "__launch_bounds__(256) relu_backward" in _cu("relu_backward.cu") and relu_backward.THREADS == 256
    assert f"__launch_bounds__({pool2d_backward.THREADS}) pool2d_backward" in _cu("pool2d_backward.cu")
    assert_constants_match("linear_backward.cu", {"COLS": linear_backward.SUM_COLS, "ROWS": linear_backward.SUM_ROWS})
    assert_constants_match("layout.cu", {"TILE": linear_backward.TILE, "ROWS": linear_backward.ROWS})


def test_every_backward_instantiation_is_named() -> None:
    """Each dtype, method and layout the launchers ask for is compiled."""
    for t in sources.STORAGE_TYPES:
        assert sources.relu_backward_name(t) in sources.SOURCES["relu_backward"].name_expressions
        assert sources.column_sums_name(t) in sources.SOURCES["linear_backward"].name_expressions
        for layout in ("NCHW", "NHWC"):
            names = [sources.pool_backward_name(t, method, layout) for method in ("max", "avg")]
            names += [sources.pool_backward_name(t, "max", layout, winners=True), sources.pool_winners_name(t, layout)]
            for name in names:
                assert name in sources.SOURCES["pool2d_backward"].name_expressions
