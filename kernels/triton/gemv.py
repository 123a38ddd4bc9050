"""Batch-1 fully connected layer in Triton: y = W x + b as a matrix-vector product on the FMA units.

At batch 1 the layer reads each weight once for two flops: its speed is the rate at which W
streams from memory, and a tensor-core tile wastes every row but one of each MMA (the tiled
GEMM's smallest tiles have 16 rows in fp16/bf16, 32 in fp32).  Each program takes BLOCK_N rows of
W and one slice of the reduction, multiplies them element-wise with x into fp32 registers
(BLOCK_N x BLOCK_K) and reduces across K once, after its loop.  The reduction is split so that
the programs cover the SMs several times (N / BLOCK_N programs alone are a few hundred for N of
1,000-16,384); the last program of each row block adds the slices in order (``split_sum``:
deterministic).  Every dtype accumulates in fp32: fp32 exactly as its FMA, and tf32 more
precisely than its tensor-core rounding would.

``linear.build`` times it beside the tiled and persistent GEMMs at batch 1 and keeps the fastest;
the split and the tile are chosen by timing (each split autotuned), as the tiled kernel's are.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from layerbench.builders import Built, Kernel, Tensors
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.layers import Linear

from kernels.triton.support import (bind, check_inputs, check_linear_tensors, fastest_split,
                                    interpreting, split_sum)

# Every BLOCK_K divides QUANTUM: a split's slice starts on a multiple of it, and where K is a
# multiple of it no step needs a mask.
QUANTUM = 512
# About 4,096 products a step (16-32 registers of them a thread): 8-16 KB of W in flight a program.
_CONFIGS = [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)
            for bn, bk, warps, stages in ((16, 256, 4, 2), (8, 512, 4, 2), (32, 128, 4, 2), (32, 256, 8, 2),
                                          (64, 128, 8, 2), (16, 512, 8, 3), (4, 512, 4, 3))]
_INTERPRETER_CONFIG = {"BLOCK_N": 16, "BLOCK_K": 32}
_INTERPRETER_QUANTUM = 32
MIN_BLOCK_N = min(c.kwargs["BLOCK_N"] for c in _CONFIGS)
SPLIT_CANDIDATES = (1, 2, 4, 8, 16)


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, ws_ptr, sem_ptr, N, K, k_per_split,
                 HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr, EVEN_K: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    rows = tl.where(n_ok, offs_n, 0).to(tl.int64)  # rows past N read row 0, masked on store
    rk = tl.arange(0, BLOCK_K)
    k_lo = split * k_per_split
    k_hi = tl.minimum(K, k_lo + k_per_split)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        ks = k0 + rk
        if EVEN_K:
            xv = tl.load(x_ptr + ks)
            wv = tl.load(w_ptr + rows[:, None] * K + ks[None, :])
        else:
            k_ok = ks < k_hi
            xv = tl.load(x_ptr + ks, mask=k_ok, other=0.0)
            wv = tl.load(w_ptr + rows[:, None] * K + ks[None, :], mask=k_ok[None, :], other=0.0)
        acc += wv.to(tl.float32) * xv.to(tl.float32)[None, :]
    y = tl.sum(acc, axis=1)
    if PARTIAL:  # ws_ptr is the fp32 workspace (SPLITS, N)
        y, last = split_sum(y, ws_ptr, sem_ptr, pid, split, tl.num_programs(1), offs_n, n_ok, N)
        if last:
            if HAS_BIAS:
                y += tl.load(b_ptr + rows).to(tl.float32)
            tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=n_ok)
    else:
        if HAS_BIAS:
            y += tl.load(b_ptr + rows).to(tl.float32)
        tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=n_ok)


def _plan(spec: Linear, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor,
          splits: int, quantum: int) -> Kernel:
    """A launcher that cuts the reduction into ``splits`` slices of whole quanta (fewer if K is short)."""
    k, n = spec.in_features, spec.out_features
    k_per_split = triton.cdiv(triton.cdiv(k, splits), quantum) * quantum
    splits = triton.cdiv(k, k_per_split)
    partial = splits > 1
    workspace = torch.empty((splits, n) if partial else (1,), dtype=torch.float32, device=x.device)
    # One semaphore a row block of the smallest tile; the last program of each resets it to zero.
    semaphores = torch.zeros(triton.cdiv(n, MIN_BLOCK_N) if partial else 1, dtype=torch.int32, device=x.device)
    args = (x, w, bias if bias is not None else out, out, workspace, semaphores, n, k, k_per_split)
    meta = {"HAS_BIAS": bias is not None, "PARTIAL": partial, "EVEN_K": k % quantum == 0}

    def grid(config: dict) -> tuple[int, int]:
        return (triton.cdiv(n, config["BLOCK_N"]), splits)

    return bind(_gemv_kernel, _CONFIGS, grid, args, meta, _INTERPRETER_CONFIG)


def build_gemv(spec: Linear, dtype: DType, tensors: Tensors, out: torch.Tensor) -> Built:
    """The matrix-vector product for a batch-1 layer (``Unsupported`` at other batches)."""
    check_inputs(_gemv_kernel, dtype, Linear.dtypes, tensors, out)
    if spec.batch != 1:
        raise Unsupported(f"the matrix-vector kernel runs batch 1, this point has batch {spec.batch}")
    check_linear_tensors(spec, tensors, out)
    x, w, bias = tensors["x"], tensors["weight"], tensors.get("bias")
    k = spec.in_features
    if interpreting(_gemv_kernel):
        splits = 2 if k > 2 * _INTERPRETER_QUANTUM else 1  # both paths checked on the CPU
        return Built(_plan(spec, x, w, bias, out, splits, _INTERPRETER_QUANTUM), {"splits": splits})
    candidates = [s for s in SPLIT_CANDIDATES if s == 1 or k >= s * QUANTUM]
    best, splits = fastest_split(candidates, lambda s: _plan(spec, x, w, bias, out, s, QUANTUM))
    return Built(best, {"splits": splits})
