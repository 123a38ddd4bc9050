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

Limits: the copy engine needs 16-byte aligned base addresses and row strides (in_features and
out_features a multiple of 8 in fp16/bf16, of 4 in tf32), and runs the tensor-core dtypes only
(fp32 stays on the FMA units in the tiled kernel); elsewhere ``Unsupported`` says which.  Configs
are timed at build (every config compiled at once on a thread pool, then each timed); the choice
is kept in the build cache like the autotuner's.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import triton
import triton.language as tl

from layerbench.build_cache import autotune_choices, choice_key
from layerbench.builders import Built, Tensors
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.layers import Linear

from kernels.triton.support import DOT_MODE, DOT_PRECISION, grouped_tile, interpreting, quick_bench

try:  # host-side descriptors: Triton 3.4 and later
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older Triton: the tiled kernel alone
    TensorDescriptor = None


def _config(block_m: int, block_n: int, block_k: int, warps: int, stages: int) -> dict[str, int]:
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": 8,
            "num_warps": warps, "num_stages": stages}


# Shared memory per stage is (BLOCK_M + BLOCK_N) * BLOCK_K elements, plus the output tile staged
# for its TMA store, within Hopper's 227 KB a block (sm_90, Triton 3.6 and 3.9: 139-229 KB
# here); 128 x 256 tiles (half the operand re-reads of 128 x 128) fit three stages in bf16.
CONFIGS = {
    "mma16": [_config(128, 256, 64, 8, 3), _config(256, 128, 64, 8, 3), _config(128, 128, 64, 8, 4),
              _config(128, 128, 64, 4, 4), _config(128, 128, 128, 8, 3), _config(128, 64, 64, 4, 5),
              _config(64, 128, 64, 4, 5)],
    "tf32": [_config(128, 128, 32, 8, 4), _config(128, 128, 32, 8, 3), _config(128, 128, 64, 8, 2),
             _config(128, 64, 32, 4, 5), _config(64, 128, 32, 4, 5)],
}
# Under the interpreter: small tiles and few programs, so that each program walks several tiles.
INTERPRETER_CONFIG = _config(16, 16, 16, 4, 1)
INTERPRETER_PROGRAMS = 3
ALIGN_BYTES = 16  # the copy engine's alignment of base addresses and row strides


@triton.jit(do_not_specialize=["M"])
def _linear_tma_kernel(x_desc, w_desc, y_desc, b_ptr, M, N, K, HAS_BIAS: tl.constexpr,
                       PRECISION: tl.constexpr, PROGRAMS: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    steps = tl.cdiv(K, BLOCK_K)
    for tile in tl.range(tl.program_id(0), tiles, PROGRAMS, flatten=True):
        pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        row = pid_m * BLOCK_M
        col = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for step in range(steps):
            a = x_desc.load([row, step * BLOCK_K])
            b = w_desc.load([col, step * BLOCK_K])
            acc = tl.dot(a, b.T, acc, input_precision=PRECISION)
        if HAS_BIAS:  # b_ptr is the output itself when there is no bias (never read then)
            cols = col + tl.arange(0, BLOCK_N)
            acc += tl.load(b_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        y_desc.store([row, col], acc.to(b_ptr.dtype.element_ty))


def check_tma(spec: Linear, dtype: DType, tensors: Tensors, out: torch.Tensor) -> None:
    """Raise Unsupported unless the copy engine can address these tensors and dtype."""
    if TensorDescriptor is None:
        raise Unsupported(f"Triton {triton.__version__} has no host tensor descriptors (3.4 or later)")
    if DOT_MODE[dtype.name] not in CONFIGS:
        raise Unsupported(f"the TMA GEMM runs fp16, bf16 and tf32 on the tensor cores, not {dtype.name}")
    x, w = tensors["x"], tensors["weight"]
    if not interpreting(_linear_tma_kernel) and (
            x.device.type != "cuda" or torch.cuda.get_device_capability(x.device) < (9, 0)):
        raise Unsupported("the TMA GEMM needs a Hopper or later GPU (compute capability 9.0+)")
    size = x.element_size()
    for name, count in (("in_features", spec.in_features), ("out_features", spec.out_features)):
        if count * size % ALIGN_BYTES:
            raise Unsupported(f"the copy engine needs rows of a multiple of {ALIGN_BYTES} bytes: {name} "
                              f"{count} in {dtype.name} is {count * size} bytes")
    for name, t in (("x", x), ("weight", w), ("out", out)):
        if t.data_ptr() % ALIGN_BYTES or not t.is_contiguous():
            raise Unsupported(f"the copy engine needs {name} contiguous and {ALIGN_BYTES}-byte aligned")


class _Launch:
    """A zero-argument launch of the kernel with one config (descriptors made for its tiles)."""

    def __init__(self, spec: Linear, dtype: DType, tensors: Tensors, out: torch.Tensor,
                 config: dict[str, int], programs: int):
        x, w, bias = tensors["x"], tensors["weight"], tensors.get("bias")
        bm, bn, bk = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]
        descs = (TensorDescriptor.from_tensor(x, [bm, bk]), TensorDescriptor.from_tensor(w, [bn, bk]),
                 TensorDescriptor.from_tensor(out, [bm, bn]))
        tiles = triton.cdiv(spec.batch, bm) * triton.cdiv(spec.out_features, bn)
        self.device = out.device
        self.grid = (min(programs, tiles),)
        self.args = (*descs, bias if bias is not None else out, spec.batch, spec.out_features,
                     spec.in_features)
        self.meta = {"HAS_BIAS": bias is not None, "PRECISION": DOT_PRECISION[dtype.name],
                     "PROGRAMS": programs, **config}
        self.launch = _linear_tma_kernel[self.grid]

    def __call__(self) -> None:
        self.launch(*self.args, **self.meta)

    def compile(self) -> None:
        """Compile without running; an error is left for the timing, which skips the config."""
        with torch.cuda.device(self.device):
            try:
                _linear_tma_kernel.warmup(*self.args, grid=self.grid, **self.meta)
            except Exception:  # noqa: BLE001, S110 - see the docstring
                pass


def _choose(spec: Linear, dtype: DType, tensors: Tensors, out: torch.Tensor, programs: int) -> dict[str, Any]:
    """The fastest config on this GPU: every config compiled at once, then each timed; the choice
    is kept in the build cache (keyed by the shapes, dtype and candidates) like the autotuner's."""
    configs = CONFIGS[DOT_MODE[dtype.name]]
    name = f"{__name__}._linear_tma_kernel"
    probe = [tensors["x"], tensors["weight"], out, tensors.get("bias")]
    key = choice_key(name, probe, {"programs": programs, "precision": DOT_PRECISION[dtype.name],
                                   "candidates": repr(configs)})
    choices = autotune_choices()
    chosen = choices.get(key)
    if chosen is not None:
        return chosen
    launches = [_Launch(spec, dtype, tensors, out, c, programs) for c in configs]
    launches[0].compile()  # alone first: it sets up Triton's per-device state
    with ThreadPoolExecutor(max_workers=max(1, min(len(configs) - 1, os.cpu_count() or 1))) as pool:
        list(pool.map(_Launch.compile, launches[1:]))
    best, best_ms, errors = None, float("inf"), []
    for config, launch in zip(configs, launches):
        try:
            ms = quick_bench(launch)
        except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory: that config is skipped
            errors.append(f"{config}: {type(exc).__name__}")
            continue
        if ms < best_ms:
            best, best_ms = config, ms
    if best is None:
        raise Unsupported(f"no TMA GEMM config compiled and ran: {'; '.join(errors[:3])}")
    choices.put(key, best, {"kernel": name, "ms": best_ms})
    return best


def build_persistent(spec: Linear, dtype: DType, tensors: Tensors, out: torch.Tensor) -> Built:
    """The persistent TMA GEMM for this layer (``Unsupported`` where the copy engine cannot run it)."""
    check_tma(spec, dtype, tensors, out)
    if interpreting(_linear_tma_kernel):
        config, programs = dict(INTERPRETER_CONFIG), INTERPRETER_PROGRAMS
    else:
        programs = torch.cuda.get_device_properties(out.device).multi_processor_count
        config = _choose(spec, dtype, tensors, out, programs)
    tile = f"{config['BLOCK_M']}x{config['BLOCK_N']}x{config['BLOCK_K']}"
    return Built(_Launch(spec, dtype, tensors, out, config, programs),
                 {"tile": tile, "warps": config["num_warps"], "stages": config["num_stages"],
                  "programs": programs})
