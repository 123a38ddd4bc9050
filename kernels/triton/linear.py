"""Fully connected layer in Triton: y = x @ W^T + b as a tiled GEMM with fp32 accumulation.

x is (B, in) and W (out, in), both row-major, so A and B tiles are contiguous along the
reduction.  Tiles are autotuned on the GPU (fixed under the interpreter); rows and columns past
the edge (out = 1000, odd batch) read row/column 0 and are masked on store; the reduction is
masked unless K is a multiple of 128 (every BLOCK_K divides 128).

Split-K: at batch 128 an FC layer has only M*N/(BLOCK_M*BLOCK_N) ~ 8..64 output tiles, far
fewer than the H100's 132 SMs, and streaming W is the cost.  The reduction can therefore be cut
into SPLITS slices whose fp32 partial tiles go to a workspace.  Each program then counts itself
in on its tile's semaphore; the last of a tile's SPLITS programs sums the partials in slice order
(deterministic, whichever program comes last), adds the bias, writes the output tile and resets
the semaphore for the next launch.  One launch: a separate summing kernel cost a launch and a
tail, 2-3 us of a 13 us layer.  On the GPU, build times 1, 2, 4 and 8 slices, each autotuned, and
keeps the fastest.  Under the interpreter (correctness only) K is split in two whenever it spans
more than two BLOCK_Ks, so both paths get checked.

On Hopper, build also times the persistent GEMM fed by the tensor-memory accelerator
(``linear_tma.py``) against the tiled kernel and keeps the faster (where the output has fewer 128 x
128 tiles than the GPU has SMs, only its stream-K configs); at batch 1 it also times the
matrix-vector kernel (``gemv.py``).  The record's ``detail_path`` says which won (``tiled`` with its ``splits``,
``tma_persistent`` with its tile, ``gemv`` with its splits) and ``detail_<path>`` why a path did not run.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from layerbench.dtypes import DType
from layerbench.builders import Built, Kernel, Tensors, choice_of, fastest_path
from layerbench.registry import register
from layerbench.layers import Linear

from kernels.triton.gemv import build_gemv
from kernels.triton.linear_tma import build_persistent
from kernels.triton.support import (DOT_MODE, DOT_PRECISION, bind, check_inputs, check_linear_tensors,
                                    dot_slice, fastest_split, grouped_tile, interpreting, next_pow2, quick_bench,
                                    split_sum, tile_config)


# Small-BLOCK_M shapes are for small batches.  Every BLOCK_K divides EVEN_K_QUANTUM.  At batch
# 128 the layer streams W (75 MB for FC6 in bf16): long BLOCK_K steps with deep pipelines keep
# more of it in flight per SM.  64 x 64 tiles 10-12 stages deep (~200 KB of shared memory, as
# cuBLAS's own kernel for FC6 on the H100) were the fastest for FC6 and FC7 without split-K.
_CONFIGS = {
    "mma16": [tile_config(128, 128, 64, 8, 3), tile_config(128, 64, 64, 4, 4),
              tile_config(64, 64, 64, 4, 4), tile_config(32, 128, 64, 4, 4),
              tile_config(128, 64, 128, 4, 4), tile_config(128, 128, 128, 8, 3),
              tile_config(128, 32, 128, 4, 5), tile_config(128, 32, 64, 4, 8),
              tile_config(64, 32, 128, 4, 6), tile_config(64, 32, 128, 4, 8),
              tile_config(64, 64, 64, 4, 10), tile_config(64, 64, 64, 4, 12),
              tile_config(64, 64, 64, 8, 10), tile_config(64, 64, 128, 4, 6),
              tile_config(128, 256, 64, 8, 3)],  # large GEMMs: half the operand re-reads of 128 x 128
    "tf32": [tile_config(128, 128, 32, 8, 3), tile_config(128, 64, 32, 4, 4),
             tile_config(64, 64, 32, 4, 4), tile_config(32, 128, 32, 4, 4),
             tile_config(128, 64, 64, 4, 4), tile_config(128, 32, 64, 4, 5)],
    "fma32": [tile_config(64, 64, 32, 4, 2), tile_config(128, 64, 32, 8, 2),
              tile_config(64, 128, 32, 8, 2), tile_config(32, 64, 32, 4, 2)],
}
# Where the whole reduction is one k-step (MobileNet's expansions: K of 16 to 64), stages pipeline
# nothing and their shared memory only caps the programs an SM holds: these tiles keep one or two,
# so that many programs overlap one's loads with another's stores.  (rows, columns, warps, stages)
_ONE_STEP_TILES = ((64, 64, 4, 1), (64, 128, 4, 1), (128, 64, 4, 2), (128, 128, 8, 1), (128, 128, 4, 2),
                   (64, 256, 8, 1), (32, 128, 4, 2))
ONE_STEP_MAX_K = 64
_INTERPRETER_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 4}
EVEN_K_QUANTUM = 128
# Split-K on the GPU: slices of at least this many reduction steps, workspace at most this big.
MIN_SLICE = 512
MAX_WORKSPACE_BYTES = 64 * 2**20
SPLIT_CANDIDATES = (1, 2, 4, 8)


# x, W and y are dense row-major: K is the row stride of x and W, N that of y.  Their divisibility
# by 16 lets rows load and store as vectors, so they are specialised on; M is not (it would only
# multiply the compiles).
@triton.jit(do_not_specialize=["M"])
def _linear_kernel(x_ptr, w_ptr, b_ptr, y_ptr, ws_ptr, sem_ptr, M, N, K, k_per_split,
                   HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr, EVEN_K: tl.constexpr,
                   PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    pid_m, pid_n = grouped_tile(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)

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

    acc = dot_slice(a_ptrs, b_ptrs, k_lo, k_hi, 1, 1, m_ok, n_ok, False, EVEN_K, PRECISION, BLOCK_M, BLOCK_N,
                    BLOCK_K, None)

    mask = m_ok[:, None] & n_ok[None, :]
    tile = offs_m[:, None] * N + offs_n[None, :]
    if PARTIAL:  # ws_ptr is the fp32 workspace (SPLITS, M, N)
        acc, last = split_sum(acc, ws_ptr, sem_ptr, pid, split, tl.num_programs(1), tile, mask, M * N)
        if last:
            if HAS_BIAS:
                acc += tl.load(b_ptr + cols).to(tl.float32)[None, :]
            tl.store(y_ptr + tile, acc.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        if HAS_BIAS:
            acc += tl.load(b_ptr + cols).to(tl.float32)[None, :]
        tl.store(y_ptr + tile, acc.to(y_ptr.dtype.element_ty), mask=mask)


def _configs(mode: str, k: int) -> list[triton.Config]:
    """The tiled GEMM's configs for a reduction of ``k``: the general ones, and where ``k`` is one
    k-step, tiles of that step with one or two stages."""
    configs = _CONFIGS[mode]
    if k > ONE_STEP_MAX_K:
        return configs
    step = max(16, next_pow2(k))
    return configs + [tile_config(bm, bn, step, warps, stages) for bm, bn, warps, stages in _ONE_STEP_TILES]


def _plan(spec: Linear, dtype: DType, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
          out: torch.Tensor, splits: int, quantum: int) -> Kernel:
    """A launcher that cuts the reduction into ``splits`` slices (fewer if K is short)."""
    m, k, n = spec.batch, spec.in_features, spec.out_features
    # Slices start on a multiple of `quantum` (a multiple of every BLOCK_K) to keep loads aligned.
    k_per_split = triton.cdiv(triton.cdiv(k, splits), quantum) * quantum
    splits = triton.cdiv(k, k_per_split)
    partial = splits > 1
    # fp32 partial tiles and one semaphore per output tile (every config's tiling fits: BLOCK_M,
    # BLOCK_N >= 16); the last program of each tile resets its semaphore to zero.
    workspace = torch.empty((splits, m, n) if partial else (1,), dtype=torch.float32, device=x.device)
    semaphores = torch.zeros(triton.cdiv(m, 16) * triton.cdiv(n, 16) if partial else 1,
                             dtype=torch.int32, device=x.device)
    b_arg = bias if bias is not None else out
    args = (x, w, b_arg, out, workspace, semaphores, m, n, k, k_per_split)
    meta = {"HAS_BIAS": bias is not None, "PARTIAL": partial, "EVEN_K": k % EVEN_K_QUANTUM == 0,
            "PRECISION": DOT_PRECISION[dtype.name]}

    def grid(config: dict) -> tuple[int, int]:
        return (triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"]), splits)

    # Configs by the reduction a program runs: the slice, rounded up to the quantum, can exceed K
    # (K of 24 as 128), which would hide the one-step tiles.
    configs = _configs(DOT_MODE[dtype.name], min(k, k_per_split))
    return bind(_linear_kernel, configs, grid, args, meta, _INTERPRETER_CONFIG)


@register("linear", "triton", backend="triton", devices=("cuda", "cpu"),
          description="Triton GEMM x @ W^T + b, fp32 accumulation: tiled with timed split-K, persistent on TMA "
                      "(Hopper), or at batch 1 a matrix-vector product on the FMA units; the fastest kept")
def build(spec: Linear, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Kernel | Built:
    check_inputs(_linear_kernel, dtype, Linear.dtypes, tensors, out, uses_dot=True)
    check_linear_tensors(spec, tensors, out)
    x, w, bias = tensors["x"], tensors["weight"], tensors.get("bias")

    m, k, n = spec.batch, spec.in_features, spec.out_features
    if interpreting(_linear_kernel):
        quantum = _INTERPRETER_CONFIG["BLOCK_K"]
        return _plan(spec, dtype, x, w, bias, out, 2 if k > 2 * quantum else 1, quantum)

    def tiled() -> Built:
        candidates = [s for s in SPLIT_CANDIDATES
                      if s == 1 or (k >= s * MIN_SLICE and s * m * n * 4 <= MAX_WORKSPACE_BYTES)]
        best, splits = fastest_split(candidates, lambda s: _plan(spec, dtype, x, w, bias, out, s, EVEN_K_QUANTUM))
        return Built(best, {"splits": splits})

    def persistent() -> Built:
        # Persistence pays where programs walk several tiles; with fewer 128 x 128 output tiles
        # than SMs only stream-K, which shares the tiles' reduction steps out over the SMs, does.
        sms = torch.cuda.get_device_properties(out.device).multi_processor_count
        few_tiles = triton.cdiv(m, 128) * triton.cdiv(n, 128) < sms
        return build_persistent(spec, dtype, tensors, out, stream_k_only=few_tiles)

    def gemv() -> Built:
        return build_gemv(spec, dtype, tensors, out)

    # A failed TMA build must not hide a broken CUDA context: synchronising raises if it is one.
    return fastest_path(("tiled", tiled), [("tma_persistent", persistent), ("gemv", gemv)], quick_bench,
                        after_failure=torch.cuda.synchronize,
                        remember=choice_of("triton linear", spec, dtype.name, layout, tensors, out, "triton"))
