"""The backward passes of the fully connected layer in Triton: dx = dy @ W, dW = dy^T @ x, db = sum dy.

The forward kernel (kernels/triton/linear.py) reads both operands along contiguous rows; here one
operand is read transposed (W as (out, in) for dx, dy as (out, batch) for dW), so this module has
its own GEMM over strided operands, C = A @ B with C dense row-major, and the forward's machinery
otherwise: the tile-config families per dtype, autotuning at build, and split-K with the fp32
workspace and per-tile semaphore (the last of a tile's programs sums the slices in order, so the
result does not depend on which comes last), which both passes need where the output has few
tiles: dx at small batch, dW when the batch is long and the layer small.

dbias is a column sum of dy (batch, out) by a small kernel of its own, after the GEMM; a long
batch is cut into row slices summed the same way as split-K's (fp32 partials, the last program of
a column block adds them in order), so that a narrow layer still has programs for every SM.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.builders import Kernel, Tensors, in_order
from layerbench.registry import register
from layerbench.layers import Linear
from layerbench.layers.passes import split_output

from kernels.triton.linear import EVEN_K_QUANTUM, MAX_WORKSPACE_BYTES, MIN_SLICE, SPLIT_CANDIDATES
from kernels.triton.support import (DOT_MODE, DOT_PRECISION, bind, check_inputs, dot_slice,
                                    fastest_split, grouped_tile, interpreting, split_sum, tile_config)


# The forward's families (every BLOCK_K divides EVEN_K_QUANTUM), with the deep 64 x 64 pipelines
# for streaming W at small batch, plus 128 x 128 and 128 x 256 tiles for dW, whose output is the
# weight's size and whose K (the batch) is short: each tile is mostly prologue and store.
_CONFIGS = {
    "mma16": [tile_config(128, 128, 64, 8, 3), tile_config(128, 64, 64, 4, 4),
              tile_config(64, 128, 64, 4, 4), tile_config(64, 64, 64, 4, 4),
              tile_config(128, 128, 32, 8, 4), tile_config(128, 64, 128, 4, 4),
              tile_config(64, 64, 64, 4, 10), tile_config(64, 64, 128, 4, 6),
              tile_config(64, 32, 128, 4, 6), tile_config(32, 128, 64, 4, 4),
              tile_config(128, 256, 64, 8, 3)],
    "tf32": [tile_config(128, 128, 32, 8, 3), tile_config(128, 64, 32, 4, 4),
             tile_config(64, 128, 32, 4, 4), tile_config(64, 64, 32, 4, 4),
             tile_config(32, 128, 32, 4, 4), tile_config(128, 32, 64, 4, 5)],
    "fma32": [tile_config(64, 64, 32, 4, 2), tile_config(128, 64, 32, 8, 2),
              tile_config(64, 128, 32, 8, 2), tile_config(32, 64, 32, 4, 2)],
}
_INTERPRETER_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 4}

# The column sum: BLOCK_N columns a program, BLOCK_B rows a step; row slices of at least
# SUM_MIN_ROWS rows (a multiple of every BLOCK_B), at most SUM_MAX_SLICES of them.
_SUM_CONFIGS = [triton.Config({"BLOCK_N": 32, "BLOCK_B": 64}, num_warps=4),
                triton.Config({"BLOCK_N": 64, "BLOCK_B": 32}, num_warps=4),
                triton.Config({"BLOCK_N": 128, "BLOCK_B": 32}, num_warps=4),
                triton.Config({"BLOCK_N": 256, "BLOCK_B": 16}, num_warps=8)]
_SUM_INTERPRETER_CONFIG = {"BLOCK_N": 16, "BLOCK_B": 4}
SUM_MIN_ROWS = 512
SUM_MAX_SLICES = 64


# Strides of 1 are specialised on (Triton does so by default): they tell the compiler which
# operand dimension is contiguous, so tiles load as vectors.  M is not (it would only multiply the
# compiles).
@triton.jit(do_not_specialize=["M"])
def _strided_gemm_kernel(a_ptr, b_ptr, c_ptr, ws_ptr, sem_ptr, M, N, K, k_per_split,
                         stride_am, stride_ak, stride_bk, stride_bn,
                         PARTIAL: tl.constexpr, EVEN_K: tl.constexpr, PRECISION: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    pid_m, pid_n = grouped_tile(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    rk = tl.arange(0, BLOCK_K)
    k_lo = split * k_per_split
    k_hi = tl.minimum(K, k_lo + k_per_split)
    a_k = (k_lo + rk)[None, :] * stride_ak
    b_k = (k_lo + rk)[:, None] * stride_bk
    # M or N is the contiguous dimension of an operand here (the forward's are both along K).
    # Tiles inside the matrix load without masks, so the compiler sees the contiguous runs (vector
    # loads, asynchronous copies); edge tiles mask the rows and columns past the edge, in a loop
    # of their own, unpipelined: a second pipeline's buffers would double the shared memory of
    # every program.  Masks, not indices clamped to row 0: a clamped gather along the contiguous
    # dimension (A's M in dW) cost the whole kernel registers (notes/perf.md).
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + a_k
    b_ptrs = b_ptr + b_k + offs_n[None, :] * stride_bn
    if ((pid_m + 1) * BLOCK_M <= M) & ((pid_n + 1) * BLOCK_N <= N):
        acc = dot_slice(a_ptrs, b_ptrs, k_lo, k_hi, stride_ak, stride_bk, m_ok, n_ok, False, EVEN_K, PRECISION,
                        BLOCK_M, BLOCK_N, BLOCK_K, None)
    else:
        acc = dot_slice(a_ptrs, b_ptrs, k_lo, k_hi, stride_ak, stride_bk, m_ok, n_ok, True, EVEN_K, PRECISION,
                        BLOCK_M, BLOCK_N, BLOCK_K, 1)

    mask = m_ok[:, None] & n_ok[None, :]
    tile = offs_m[:, None] * N + offs_n[None, :]
    if PARTIAL:  # ws_ptr is the fp32 workspace (SPLITS, M, N)
        acc, last = split_sum(acc, ws_ptr, sem_ptr, pid, split, tl.num_programs(1), tile, mask, M * N)
        if last:
            tl.store(c_ptr + tile, acc.to(c_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(c_ptr + tile, acc.to(c_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["B", "rows_per_slice"])
def _column_sum_kernel(x_ptr, out_ptr, ws_ptr, sem_ptr, B, N, rows_per_slice, PARTIAL: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr):
    """out[j] = sum over i of x[i, j] for row-major x (B, N), in fp32; program (p, s) sums the
    columns of block p over row slice s."""
    pid = tl.program_id(0)
    piece = tl.program_id(1)
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = cols < N
    rb = tl.arange(0, BLOCK_B)
    r_lo = piece * rows_per_slice
    r_hi = tl.minimum(B, r_lo + rows_per_slice)
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    for b0 in range(r_lo, r_hi, BLOCK_B):
        rows = b0 + rb
        v = tl.load(x_ptr + rows[:, None] * N + cols[None, :], mask=(rows < r_hi)[:, None] & n_ok[None, :],
                    other=0.0)
        acc += v.to(tl.float32)
    total = tl.sum(acc, axis=0)
    if PARTIAL:  # partials to ws_ptr (slices, N), summed in slice order as the GEMM's split-K
        total, last = split_sum(total, ws_ptr, sem_ptr, pid, piece, tl.num_programs(1), cols, n_ok, N)
        if last:
            tl.store(out_ptr + cols, total.to(out_ptr.dtype.element_ty), mask=n_ok)
    else:
        tl.store(out_ptr + cols, total.to(out_ptr.dtype.element_ty), mask=n_ok)


def _gemm_plan(dtype: DType, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, splits: int,
               quantum: int) -> Kernel:
    """A launcher of c = a @ b for 2-D views of any strides (c dense row-major), the reduction cut
    into ``splits`` slices (fewer if K is short)."""
    (m, k), n = a.shape, b.shape[1]
    # Slices start on a multiple of `quantum` (a multiple of every BLOCK_K) to keep loads aligned.
    k_per_split = triton.cdiv(triton.cdiv(k, splits), quantum) * quantum
    splits = triton.cdiv(k, k_per_split)
    partial = splits > 1
    # fp32 partial tiles and one semaphore per output tile (every config's tiling fits: BLOCK_M,
    # BLOCK_N >= 16); the last program of each tile resets its semaphore to zero.
    workspace = torch.empty((splits, m, n) if partial else (1,), dtype=torch.float32, device=a.device)
    semaphores = torch.zeros(triton.cdiv(m, 16) * triton.cdiv(n, 16) if partial else 1,
                             dtype=torch.int32, device=a.device)
    args = (a, b, c, workspace, semaphores, m, n, k, k_per_split, *a.stride(), *b.stride())
    meta = {"PARTIAL": partial, "EVEN_K": k % EVEN_K_QUANTUM == 0, "PRECISION": DOT_PRECISION[dtype.name]}

    def grid(config: dict) -> tuple[int, int]:
        return (triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"]), splits)

    return bind(_strided_gemm_kernel, _CONFIGS[DOT_MODE[dtype.name]], grid, args, meta, _INTERPRETER_CONFIG)


def _gemm(dtype: DType, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> Kernel:
    """c = a @ b: on the GPU the fastest of the split-K candidates, each autotuned; under the
    interpreter K is split in two whenever it spans more than two BLOCK_Ks, so both paths run."""
    (m, k), n = a.shape, b.shape[1]
    if interpreting(_strided_gemm_kernel):
        quantum = _INTERPRETER_CONFIG["BLOCK_K"]
        return _gemm_plan(dtype, a, b, c, 2 if k > 2 * quantum else 1, quantum)
    candidates = [s for s in SPLIT_CANDIDATES
                  if s == 1 or (k >= s * MIN_SLICE and s * m * n * 4 <= MAX_WORKSPACE_BYTES)]
    return fastest_split(candidates, lambda s: _gemm_plan(dtype, a, b, c, s, EVEN_K_QUANTUM))[0]


def _column_sum(x: torch.Tensor, out: torch.Tensor) -> Kernel:
    """A launcher of out = x.sum(0); under the interpreter the rows are cut in two whenever they
    span more than two BLOCK_Bs, so both paths run."""
    rows, cols = x.shape
    if interpreting(_column_sum_kernel):
        quantum = _SUM_INTERPRETER_CONFIG["BLOCK_B"]
        slices = 2 if rows > 2 * quantum else 1
    else:
        quantum = SUM_MIN_ROWS
        slices = min(SUM_MAX_SLICES, triton.cdiv(rows, SUM_MIN_ROWS))
    rows_per_slice = triton.cdiv(triton.cdiv(rows, slices), quantum) * quantum
    slices = triton.cdiv(rows, rows_per_slice)
    partial = slices > 1
    # fp32 partials and a semaphore per column block (every config's BLOCK_N >= 16).
    workspace = torch.empty((slices, cols) if partial else (1,), dtype=torch.float32, device=x.device)
    semaphores = torch.zeros(triton.cdiv(cols, 16) if partial else 1, dtype=torch.int32, device=x.device)

    def grid(config: dict) -> tuple[int, int]:
        return (triton.cdiv(cols, config["BLOCK_N"]), slices)

    args = (x, out, workspace, semaphores, rows, cols, rows_per_slice)
    return bind(_column_sum_kernel, _SUM_CONFIGS, grid, args, {"PARTIAL": partial}, _SUM_INTERPRETER_CONFIG)


def _checked(spec: Linear, dtype: DType, tensors: Tensors, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """x, weight and dy after the checks both passes share."""
    check_inputs(_strided_gemm_kernel, dtype, Linear.dtypes, tensors, out, uses_dot=True)
    x, w, dy = tensors["x"], tensors["weight"], tensors["dy"]
    if (tuple(x.shape), tuple(w.shape), tuple(dy.shape)) != (spec.input_shape, spec.weight_shape,
                                                             spec.output_shape):
        raise Unsupported(f"tensor shapes do not match {spec}")
    if not all(t.is_contiguous() for t in (x, w, dy, out)):
        raise Unsupported("linear backward needs x, weight, dy and its output contiguous (row-major)")
    return x, w, dy


@register("linear", "triton", backend="triton", devices=("cuda", "cpu"), direction="backward_data",
          description="Triton strided GEMM dx = dy @ W, fp32 accumulation, timed split-K")
def build_linear_backward_data(spec: Linear, dtype: DType, layout: str, tensors: Tensors,
                               out: torch.Tensor) -> Kernel:
    _, w, dy = _checked(spec, dtype, tensors, out)
    if tuple(out.shape) != spec.input_shape:
        raise Unsupported(f"dx has shape {tuple(out.shape)}, expected {spec.input_shape}")
    return _gemm(dtype, dy, w, out)


@register("linear", "triton", backend="triton", devices=("cuda", "cpu"), direction="backward_weight",
          description="Triton strided GEMM dW = dy^T @ x, timed split-K; dbias by a column-sum kernel")
def build_linear_backward_weight(spec: Linear, dtype: DType, layout: str, tensors: Tensors,
                                 out: torch.Tensor) -> Kernel:
    x, _, dy = _checked(spec, dtype, tensors, out)
    views = split_output(spec, out, layout)
    dweight = views["dweight"]
    if tuple(dweight.shape) != spec.weight_shape or not dweight.is_contiguous():
        raise Unsupported(f"dweight must be a contiguous {spec.weight_shape}, got {tuple(dweight.shape)}")
    gemm = _gemm(dtype, dy.t(), x, dweight)
    if "dbias" not in views:
        return gemm
    return in_order(gemm, _column_sum(dy, views["dbias"]))
