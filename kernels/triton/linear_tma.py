"""Fully connected layer on Hopper's tensor-memory accelerator: a persistent GEMM fed by TMA.

y = x @ W^T + b with x (B, in), W (out, in) and y (B, out) row-major.  Each operand is described
once on the host (``TensorDescriptor``); the kernel asks the copy engine for whole tiles
(``desc.load``), which it fetches into shared memory asynchronously and zero-fills past the
edges, so no address arithmetic, no masks and no registers go to loads.  One program per SM
walks the output tiles in grouped order (GROUP_M row tiles down a column of W tiles, so the W
tiles are reused from L2), and the loop over tiles is flattened with the loop over K so that
the next tile's loads are in flight while a tile's epilogue (bias, store) runs.  The store goes
out through a descriptor too, clipped at the edges.

Why beside the tiled kernel (``linear.py``): on large GEMMs (M, N, K of 1,024-8,192) the tiled
kernel's per-tile prologue and epilogue and its pointer loads held it at 0.77-0.89x cuBLAS in
bf16 on an H200.  At batch 128 the tiled kernel's split-K stays the better schedule (too few
output tiles to fill the SMs); ``linear.build`` times both and keeps the faster.

Stream-K configs: where the tiles do not fill whole waves (100 tiles on 132 SMs leave 32 idle; 200
leave 64 idle in the second wave), the last partial wave and the full one before it are cut into
their reduction steps, shared out evenly, and a tile whose steps span several programs is summed
from their fp32 parts by the last to arrive (as the tiled kernel's split-K), so every SM works
to the end.

Limits: the copy engine needs 16-byte aligned base addresses and row strides (in_features and
out_features a multiple of 8 in fp16/bf16, of 4 in tf32), and runs the tensor-core dtypes only
(fp32 stays on the FMA units in the tiled kernel); elsewhere ``Unsupported`` says which.  Configs
are timed at build (every config compiled at once on a thread pool, then each timed); the choice
is kept in the build cache like the autotuner's.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from layerbench.builders import Built, Tensors
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.layers import Linear

from kernels.triton.support import DOT_MODE, DOT_PRECISION, grouped_tile, interpreting
from kernels.triton.tma import TensorDescriptor, Launch, check_tma, choose_config


def _config(block_m: int, block_n: int, block_k: int, warps: int, stages: int,
            subtile: bool = False, stream_k: bool = False) -> dict[str, int]:
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": 8, "SUBTILE": subtile,
            "STREAM_K": stream_k, "num_warps": warps, "num_stages": stages}


# Shared memory per stage is (BLOCK_M + BLOCK_N) * BLOCK_K elements, plus the output tile staged
# for its TMA store, within Hopper's 227 KB a block (sm_90, Triton 3.6 and 3.9: 139-229 KB
# here); 128 x 256 tiles (half the operand re-reads of 128 x 128) fit three stages in bf16.
# SUBTILE stores a tile as two halves of its columns: half the staging buffer (room for a fourth
# stage of 128 x 256 tiles: 230 KB), and the first half's store is in flight while the second is
# converted (where K is short, as in a tall-skinny GEMM, the epilogue is a large share of a tile).
CONFIGS = {
    "mma16": [_config(128, 256, 64, 8, 3), _config(256, 128, 64, 8, 3), _config(128, 128, 64, 8, 4),
              _config(128, 128, 64, 4, 4), _config(128, 128, 128, 8, 3), _config(128, 64, 64, 4, 5),
              _config(64, 128, 64, 4, 5),
              *[_config(bm, bn, 64, 8, stages, subtile=True) for bm, bn in ((128, 256), (256, 128))
                for stages in (3, 4)],
              _config(128, 128, 64, 8, 4, stream_k=True), _config(128, 256, 64, 8, 3, stream_k=True)],
    "tf32": [_config(128, 128, 32, 8, 4), _config(128, 128, 32, 8, 3), _config(128, 128, 64, 8, 2),
             _config(128, 64, 32, 4, 5), _config(64, 128, 32, 4, 5), _config(128, 128, 32, 8, 4, subtile=True),
             *[_config(bm, bn, 32, 8, 3, subtile=True) for bm, bn in ((128, 256), (256, 128))],
             _config(128, 128, 32, 8, 4, stream_k=True)],
}
# Under the interpreter: small tiles and few programs, so that each program walks several tiles.
INTERPRETER_CONFIG = _config(16, 16, 16, 4, 1)
INTERPRETER_PROGRAMS = 3


@triton.jit
def _store_tile(y_desc, b_ptr, acc, row, col, N, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, SUBTILE: tl.constexpr):
    if HAS_BIAS:  # b_ptr is the output itself when there is no bias (never read then)
        cols = col + tl.arange(0, BLOCK_N)
        acc += tl.load(b_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    if SUBTILE:  # y_desc's box is BLOCK_M x BLOCK_N / 2
        left, right = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
        y_desc.store([row, col], left.to(b_ptr.dtype.element_ty))
        y_desc.store([row, col + BLOCK_N // 2], right.to(b_ptr.dtype.element_ty))
    else:
        y_desc.store([row, col], acc.to(b_ptr.dtype.element_ty))


@triton.jit
def _owner(it, total, PROGRAMS: tl.constexpr):
    """The program whose share of the stream-K iterations holds iteration ``it`` (program p has
    [p * total // PROGRAMS, (p + 1) * total // PROGRAMS))."""
    return ((it + 1) * PROGRAMS - 1) // total


@triton.jit(do_not_specialize=["M"])
def _linear_tma_kernel(x_desc, w_desc, y_desc, b_ptr, ws_ptr, sem_ptr, M, N, K, HAS_BIAS: tl.constexpr,
                       PRECISION: tl.constexpr, PROGRAMS: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                       SUBTILE: tl.constexpr, STREAM_K: tl.constexpr):
    tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    steps = tl.cdiv(K, BLOCK_K)
    # Stream-K: the tiles of the last, partial wave and of the full wave before it are cut into
    # their reduction steps and shared out evenly, so no SM idles while others finish a wave;
    # the tiles before them go a whole tile a program.
    whole = tiles
    if STREAM_K:
        whole = tl.maximum(tiles // PROGRAMS - 1, 0) * PROGRAMS
    for tile in tl.range(tl.program_id(0), whole, PROGRAMS, flatten=True):
        pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        row = pid_m * BLOCK_M
        col = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for step in range(steps):
            a = x_desc.load([row, step * BLOCK_K])
            b = w_desc.load([col, step * BLOCK_K])
            acc = tl.dot(a, b.T, acc, input_precision=PRECISION)
        _store_tile(y_desc, b_ptr, acc, row, col, N, HAS_BIAS, BLOCK_M, BLOCK_N, SUBTILE)
    if STREAM_K:
        # A tile whose steps span several programs: each stores its part in its fp32 workspace
        # slot (0: the part its share starts in, 1: the part its share ends in) and counts itself
        # in at the tile's semaphore; the last to arrive adds the parts, stores the tile and
        # resets the semaphore for the next launch.  Nobody waits for anybody.
        pid = tl.program_id(0)
        total = (tiles - whole) * steps
        start = pid * total // PROGRAMS
        end = (pid + 1) * total // PROGRAMS
        offs = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        it = start
        while it < end:
            t = it // steps
            k_lo = it - t * steps
            k_hi = tl.minimum(steps, k_lo + end - it)
            pid_m, pid_n = grouped_tile(whole + t, M, N, BLOCK_M, BLOCK_N, GROUP_M)
            row = pid_m * BLOCK_M
            col = pid_n * BLOCK_N
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for step in range(k_lo, k_hi):
                a = x_desc.load([row, step * BLOCK_K])
                b = w_desc.load([col, step * BLOCK_K])
                acc = tl.dot(a, b.T, acc, input_precision=PRECISION)
            if k_lo == 0 and k_hi == steps:
                _store_tile(y_desc, b_ptr, acc, row, col, N, HAS_BIAS, BLOCK_M, BLOCK_N, SUBTILE)
            else:
                first = _owner(t * steps, total, PROGRAMS)
                last = _owner(t * steps + steps - 1, total, PROGRAMS)
                slot = pid * 2 + (start < t * steps).to(tl.int32)
                tl.store(ws_ptr + slot.to(tl.int64) * (BLOCK_M * BLOCK_N) + offs, acc)
                tl.debug_barrier()
                arrived = tl.atomic_add(sem_ptr + t, 1, sem="acq_rel", scope="gpu")
                if arrived == last - first:
                    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                    for q in range(first, last + 1):
                        q_slot = q * 2 + (q * total // PROGRAMS < t * steps).to(tl.int32)
                        acc += tl.load(ws_ptr + q_slot.to(tl.int64) * (BLOCK_M * BLOCK_N) + offs,
                                       cache_modifier=".cg")
                    _store_tile(y_desc, b_ptr, acc, row, col, N, HAS_BIAS, BLOCK_M, BLOCK_N, SUBTILE)
                    tl.atomic_xchg(sem_ptr + t, 0)
            it = t * steps + k_hi


def check_linear(spec: Linear, dtype: DType, tensors: Tensors, out: torch.Tensor) -> None:
    """Raise Unsupported unless the copy engine can address these tensors and dtype."""
    if DOT_MODE[dtype.name] not in CONFIGS:
        raise Unsupported(f"the TMA GEMM runs fp16, bf16 and tf32 on the tensor cores, not {dtype.name}")
    size = tensors["x"].element_size()
    for name, count in (("in_features", spec.in_features), ("out_features", spec.out_features)):
        if count * size % 16:
            raise Unsupported(f"the copy engine needs rows of a multiple of 16 bytes: {name} "
                              f"{count} in {dtype.name} is {count * size} bytes")
    check_tma(_linear_tma_kernel, out.device, {"x": tensors["x"], "weight": tensors["weight"], "out": out})


def stream_k_fits(spec: Linear, config: dict[str, Any], programs: int) -> bool:
    """Whether stream-K has a partial wave to even out here and gives every program at least one
    reduction step."""
    tiles = triton.cdiv(spec.batch, config["BLOCK_M"]) * triton.cdiv(spec.out_features, config["BLOCK_N"])
    whole = max(tiles // programs - 1, 0) * programs
    return tiles % programs != 0 and (tiles - whole) * triton.cdiv(spec.in_features, config["BLOCK_K"]) >= programs


def _launch(spec: Linear, dtype: DType, tensors: Tensors, out: torch.Tensor, config: dict[str, Any],
            programs: int) -> Launch:
    """The kernel's launch with ``config`` (descriptors made for its tiles; stream-K's fp32
    workspace, two tiles a program, and its semaphores, zero between launches)."""
    x, w, bias = tensors["x"], tensors["weight"], tensors.get("bias")
    bm, bn, bk = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]
    descs = (TensorDescriptor.from_tensor(x, [bm, bk]), TensorDescriptor.from_tensor(w, [bn, bk]),
             TensorDescriptor.from_tensor(out, [bm, bn // 2 if config["SUBTILE"] else bn]))
    tiles = triton.cdiv(spec.batch, bm) * triton.cdiv(spec.out_features, bn)
    stream_k = config["STREAM_K"]
    workspace = torch.empty(programs * 2 * bm * bn if stream_k else 1, dtype=torch.float32, device=out.device)
    semaphores = torch.zeros(2 * programs if stream_k else 1, dtype=torch.int32, device=out.device)
    args = (*descs, bias if bias is not None else out, workspace, semaphores, spec.batch, spec.out_features,
            spec.in_features)
    meta = {"HAS_BIAS": bias is not None, "PRECISION": DOT_PRECISION[dtype.name], "PROGRAMS": programs, **config}
    return Launch(_linear_tma_kernel, (programs if stream_k else min(programs, tiles),), args, meta, out.device)


def build_persistent(spec: Linear, dtype: DType, tensors: Tensors, out: torch.Tensor,
                     stream_k_only: bool = False) -> Built:
    """The persistent TMA GEMM for this layer (``Unsupported`` where the copy engine cannot run it);
    ``stream_k_only``: only the stream-K configs compete (too few tiles for a wave of whole ones)."""
    check_linear(spec, dtype, tensors, out)
    if interpreting(_linear_tma_kernel):
        config, programs = dict(INTERPRETER_CONFIG), INTERPRETER_PROGRAMS
        if config["STREAM_K"] and not stream_k_fits(spec, config, programs):
            raise Unsupported("stream-K has no partial wave to even out here")
    else:
        programs = torch.cuda.get_device_properties(out.device).multi_processor_count
        configs = [c for c in CONFIGS[DOT_MODE[dtype.name]]
                   if (not c["STREAM_K"] and not stream_k_only) or (c["STREAM_K"] and stream_k_fits(spec, c, programs))]
        if not configs:
            raise Unsupported(f"too few output tiles for {programs} SMs, and no stream-K split of them "
                              f"gives every SM a reduction step")
        config = choose_config(f"{__name__}._linear_tma_kernel",
                               [tensors["x"], tensors["weight"], out, tensors.get("bias")],
                               {"programs": programs, "precision": DOT_PRECISION[dtype.name]}, configs,
                               lambda c: _launch(spec, dtype, tensors, out, c, programs))
    tile = f"{config['BLOCK_M']}x{config['BLOCK_N']}x{config['BLOCK_K']}"
    return Built(_launch(spec, dtype, tensors, out, config, programs),
                 {"tile": tile, "warps": config["num_warps"], "stages": config["num_stages"],
                  "subtiled_store": config["SUBTILE"], "stream_k": config["STREAM_K"], "programs": programs})
