"""Fully connected layer in Triton: y = x @ W^T + b as a tiled GEMM with fp32 accumulation.

x is (B, in) and W (out, in), both row-major, so A and B tiles are contiguous along the
reduction.  Tiles are autotuned on the GPU (fixed under the interpreter); rows and columns past
the edge (out = 1000, odd batch) read row/column 0 and are masked on store; the reduction is
masked unless K is a multiple of 64 (every BLOCK_K divides 64).

Split-K: at batch 128 an FC layer has only M*N/(BLOCK_M*BLOCK_N) ~ 8..64 output tiles, far
fewer than the H100's 132 SMs, and streaming W is the cost.  The reduction can therefore be cut
into SPLITS slices whose fp32 partial tiles go to a workspace, summed (plus bias, cast to the
output dtype) by a second small kernel; deterministic, no atomics.  On the GPU, build times the
whole launch (both kernels) for 1, 2, 4 and 8 slices, each autotuned, and keeps the fastest.
Under the interpreter (correctness only) K is split in two whenever it spans more than two
BLOCK_Ks, so both paths get checked.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.registry import Kernel, Tensors, register
from layerbench.specs import Linear

from kernels.triton.support import (DOT_MODE, DOT_PRECISION, autotuned, bind, check_inputs,
                                    interpreting, quick_bench, tile_config)

_KEY = ["M", "N", "K", "k_per_split", "HAS_BIAS", "PARTIAL", "EVEN_K", "PRECISION"]


# Small-BLOCK_M shapes are for small batches.  Every BLOCK_K divides EVEN_K_QUANTUM.
_CONFIGS = {
    "mma16": [tile_config(128, 128, 64, 8, 3), tile_config(128, 64, 64, 4, 4),
              tile_config(64, 64, 64, 4, 4), tile_config(32, 128, 64, 4, 4)],
    "tf32": [tile_config(128, 128, 32, 8, 3), tile_config(128, 64, 32, 4, 4),
             tile_config(64, 64, 32, 4, 4), tile_config(32, 128, 32, 4, 4)],
    "fma32": [tile_config(64, 64, 32, 4, 2), tile_config(128, 64, 32, 8, 2),
              tile_config(64, 128, 32, 8, 2), tile_config(32, 64, 32, 4, 2)],
}
_INTERPRETER_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 4}
EVEN_K_QUANTUM = 64
# Split-K on the GPU: slices of at least this many reduction steps, workspace at most this big.
MIN_SLICE = 512
MAX_WORKSPACE_BYTES = 64 * 2**20
SPLIT_CANDIDATES = (1, 2, 4, 8)
REDUCE_BLOCK = 1024


# x, W and y are dense row-major: K is the row stride of x and W, N that of y.  Their divisibility
# by 16 lets rows load and store as vectors, so they are specialised on; M is not (it would only
# multiply the compiles).
@triton.jit(do_not_specialize=["M"])
def _linear_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, k_per_split,
                   HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr, EVEN_K: tl.constexpr,
                   PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    rows = tl.where(m_ok, offs_m, 0)
    cols = tl.where(n_ok, offs_n, 0)
    rk = tl.arange(0, BLOCK_K)
    k_lo = split * k_per_split
    k_hi = tl.minimum(K, k_lo + k_per_split)
    a_ptrs = x_ptr + rows[:, None] * K + (k_lo + rk)[None, :]
    b_ptrs = w_ptr + cols[None, :] * K + (k_lo + rk)[:, None]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_ok = k0 + rk < k_hi
            a = tl.load(a_ptrs, mask=k_ok[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=k_ok[:, None], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K

    mask = m_ok[:, None] & n_ok[None, :]
    if PARTIAL:
        # y_ptr is the fp32 workspace (SPLITS, M, N); the reduce kernel adds bias and casts.
        slab = y_ptr + split.to(tl.int64) * M * N
        tl.store(slab + offs_m[:, None] * N + offs_n[None, :], acc, mask=mask)
    else:
        if HAS_BIAS:
            acc += tl.load(b_ptr + cols).to(tl.float32)[None, :]
        y_ptrs = y_ptr + offs_m[:, None] * N + offs_n[None, :]
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["M", "N"])
def _split_sum_kernel(ws_ptr, b_ptr, y_ptr, M, N, SPLITS,
                      HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < M * N
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(SPLITS):
        acc += tl.load(ws_ptr + s * M * N + offs, mask=ok, other=0.0)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs % N, mask=ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=ok)


_TUNED = {mode: autotuned(_linear_kernel, configs, _KEY) for mode, configs in _CONFIGS.items()}


def _plan(spec: Linear, dtype: DType, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
          out: torch.Tensor, splits: int, quantum: int) -> Kernel:
    """A launcher that cuts the reduction into ``splits`` slices (fewer if K is short)."""
    m, k, n = spec.batch, spec.in_features, spec.out_features
    # Slices start on a multiple of `quantum` (a multiple of every BLOCK_K) to keep loads aligned.
    k_per_split = triton.cdiv(triton.cdiv(k, splits), quantum) * quantum
    splits = triton.cdiv(k, k_per_split)
    partial = splits > 1
    workspace = torch.empty((splits, m, n), dtype=torch.float32, device=x.device) if partial else out
    b_arg = bias if bias is not None else out
    args = (x, w, b_arg, workspace, m, n, k, k_per_split)
    meta = {"HAS_BIAS": bias is not None, "PARTIAL": partial, "EVEN_K": k % EVEN_K_QUANTUM == 0,
            "PRECISION": DOT_PRECISION[dtype.name]}

    def grid(config: dict) -> tuple[int, int]:
        return (triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"]), splits)

    gemm = bind(_linear_kernel, _TUNED[DOT_MODE[dtype.name]], grid, args, meta, _INTERPRETER_CONFIG)
    if not partial:
        return gemm
    reduce = _split_sum_kernel[(triton.cdiv(m * n, REDUCE_BLOCK),)]
    has_bias = bias is not None

    def kernel() -> None:
        gemm()
        reduce(workspace, b_arg, out, m, n, splits, HAS_BIAS=has_bias,
               BLOCK=REDUCE_BLOCK)

    return kernel


@register("linear", "triton", backend="triton", devices=("cuda", "cpu"),
          description="Triton tiled GEMM x @ W^T + b, fp32 accumulation, timed split-K for small batches")
def build(spec: Linear, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Kernel:
    check_inputs(_linear_kernel, dtype, Linear.dtypes, tensors, out, uses_dot=True)
    x, w = tensors["x"], tensors["weight"]
    bias = tensors.get("bias")
    if spec.bias != (bias is not None):
        raise Unsupported(f"spec.bias is {spec.bias} but tensors {'lack' if bias is None else 'have'} a bias")
    if (tuple(x.shape), tuple(w.shape), tuple(out.shape)) != (spec.input_shape, spec.weight_shape,
                                                              spec.output_shape):
        raise Unsupported(f"tensor shapes do not match {spec}")
    if not all(t.is_contiguous() for t in (x, w, out, *([bias] if bias is not None else []))):
        raise Unsupported("linear needs x, weight, bias and out contiguous (row-major)")

    m, k, n = spec.batch, spec.in_features, spec.out_features
    if interpreting(_linear_kernel):
        quantum = _INTERPRETER_CONFIG["BLOCK_K"]
        return _plan(spec, dtype, x, w, bias, out, 2 if k > 2 * quantum else 1, quantum)

    candidates = [s for s in SPLIT_CANDIDATES
                  if s == 1 or (k >= s * MIN_SLICE and s * m * n * 4 <= MAX_WORKSPACE_BYTES)]
    best, best_ms = None, float("inf")
    for splits in candidates:
        kernel = _plan(spec, dtype, x, w, bias, out, splits, EVEN_K_QUANTUM)
        ms = quick_bench(kernel)
        if ms < best_ms:
            best, best_ms = kernel, ms
    assert best is not None
    return best
