"""The fully connected layer on Hopper's wgmma instructions (``linear_wgmma.cu``, ``linear_tma.cu``).

Built beside the mma.sync GEMM of ``igemm.cu`` (``linear.build`` times both and keeps the
faster): on an H200 the mma.sync GEMM held CuPy at 0.33-0.41x cuBLAS in bf16 and fp16 on large
GEMMs, since mma.sync cannot reach the rate of Hopper's warpgroup instructions.

Two kernels feed the same multiply: ``linear_wgmma.cu`` loads its tiles with cp.async from the
warps that multiply, ``linear_tma.cu`` has one producer warp start TMA copies (tensor maps from
``tensor_map``) while two warpgroups only multiply, and splits K over more blocks when the
output tiles leave SMs idle (partial sums added by igemm.cu's splitk_reduce).  Every variant
(loader, tile shape, split) is timed at build; the fastest whose output on the layer's own
tensors passes the float64 check is kept (a wrong one is recorded in the details, never a
result).  Runs fp16 and bf16 on compute capability 9.0 only (sm_90a code: wgmma does not exist
before Hopper, and sm_90a binaries do not run after it), with x, W and y contiguous, in_features
a multiple of 8 (16-byte rows) and 16-byte aligned pointers; elsewhere ``Unsupported`` says which.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from kernels.cupy import igemm, sources, support, tensor_map
from kernels.cupy.igemm_plan import choose_split
from layerbench.builders import Built, Kernel, Tensors, in_order
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.layers import Linear

if TYPE_CHECKING:
    import cupy

THREADS = 256
TMA_THREADS = THREADS + 32  # two consumer warpgroups and the producer warp
BLOCK_M = 128
BLOCK_K = 64  # one tile row: 64 16-bit elements of k, one 128-byte swizzle line
GROUP_M = 8  # row tiles walked down each column of W tiles (W tiles reused from L2)
LINE_BYTES = 128
ALIGN_SLACK = 1024  # the kernels align their ring of buffers to the 1024-byte swizzle period
SPLIT_BLOCK_N = (64, 128)  # split-K runs the narrower tiles: more of them to spread
OUT_BOX_ROWS, OUT_BOX_COLS = 64, 64  # a TMA store: one warpgroup's rows, one 128-byte line of columns


def shared_bytes(block_n: int, stages: int) -> int:
    return stages * (BLOCK_M + block_n) * LINE_BYTES + ALIGN_SLACK


def tma_shared_bytes(block_n: int, stages: int) -> int:
    """The ring, and each tile's outputs staged for the TMA stores (16-bit values)."""
    return shared_bytes(block_n, stages) + BLOCK_M * block_n * 2


def tma_variant(block_n: int, blocks: int) -> str:
    """A TMA configuration's name: its tile, and its blocks an SM where more than one."""
    return f"{BLOCK_M}x{block_n}" + ("" if blocks == 1 else f"_{blocks}_per_sm")


def one_block_stages(block_n: int) -> int:
    """The stages of the one-block-an-SM TMA configuration of ``block_n`` columns."""
    return next(s for n, s, b in sources.TMA_CONFIGS if n == block_n and b == 1)


def check_dtype(dtype: DType) -> None:
    if dtype.name not in ("fp16", "bf16"):
        raise Unsupported(f"the wgmma GEMM runs fp16 and bf16, not {dtype.name}")


def check_gpu(index: int) -> None:
    cc = support.capability(index)
    if cc != (9, 0):
        raise Unsupported(f"the wgmma GEMM is sm_90a code (compute capability 9.0); this GPU has {cc[0]}.{cc[1]}")


def check_layer(spec: Linear, dtype: DType, tensors: Tensors, out: torch.Tensor, index: int) -> None:
    """Raise Unsupported unless the wgmma GEMM can run this layer on GPU ``index``."""
    check_dtype(dtype)
    if spec.in_features % 8:
        raise Unsupported(f"the wgmma GEMM needs in_features a multiple of 8 (16-byte rows), got {spec.in_features}")
    for name, t in _operands(spec, tensors, out).items():
        if t is None:
            continue
        if not t.is_contiguous():
            raise Unsupported(f"the wgmma GEMM needs a contiguous {name}")
        if t.data_ptr() % 16:
            raise Unsupported(f"the wgmma GEMM needs {name} 16-byte aligned (cp.async, TMA)")
    check_gpu(index)


def _operands(spec: Linear, tensors: Tensors, out: torch.Tensor) -> dict[str, torch.Tensor | None]:
    return {"x": tensors["x"], "weight": tensors["weight"], "bias": tensors.get("bias") if spec.bias else None,
            "out": out}


def _tiles(spec: Linear, block_n: int) -> int:
    return -(-spec.batch // BLOCK_M) * -(-spec.out_features // block_n)


def _loaded(source: str, name: str, smem: int, index: int, blocks: int = 1) -> cupy.RawKernel:
    """Kernel ``name`` of ``source``, allowed ``smem`` bytes of shared memory, ``blocks`` blocks an SM."""
    fn = support.function(source, name, index)
    support.allow_shared(fn, smem, index, blocks)
    return fn


def _cp_async_launch(spec: Linear, dtype: DType, tensors: Tensors, out: torch.Tensor, index: int, block_n: int,
                     stages: int) -> support.Launch:
    smem = shared_bytes(block_n, stages)
    fn = _loaded("linear_wgmma", sources.linear_wgmma_name(support.ctype_of(dtype), block_n, stages), smem, index)
    x, w, bias, _ = _operands(spec, tensors, out).values()
    i32, ptr = support.i32, support.ptr
    return support.Launch(
        fn, (_tiles(spec, block_n), 1, 1), (THREADS, 1, 1),
        [ptr(x), ptr(w), ptr(bias), ptr(out), i32(spec.batch), i32(spec.out_features), i32(spec.in_features),
         i32(GROUP_M)],
        index, keep=(x, w, bias, out), shared_bytes=smem)


def _tma_kernel(spec: Linear, dtype: DType, tensors: Tensors, out: torch.Tensor, index: int, block_n: int,
                stages: int, blocks: int, splits: int, per: int) -> Kernel:
    """linear_tma.cu with ``blocks`` blocks an SM and K in ``splits`` parts of ``per`` k tiles
    each (then splitk_reduce)."""
    ctype = support.ctype_of(dtype)
    smem = tma_shared_bytes(block_n, stages)
    fn = _loaded("linear_tma", sources.linear_tma_name(ctype, block_n, stages, blocks), smem, index, blocks)
    x, w, bias, _ = _operands(spec, tensors, out).values()
    try:  # the outputs by TMA stores where y's rows allow a tensor map, else from registers
        y_map, by_tma = tensor_map.encode_2d(out, OUT_BOX_ROWS, OUT_BOX_COLS), 1
    except Unsupported:
        y_map, by_tma = tensor_map.TensorMap(), 0
    m, n = spec.batch, spec.out_features
    ws = torch.empty(splits * m * n, dtype=torch.float32, device=out.device) if splits > 1 else None
    i32, ptr = support.i32, support.ptr
    slots = blocks * support.sm_count(index)
    gemm = support.Launch(  # persistent: `blocks` blocks an SM, each taking work items (tile, split) in turn
        fn, (min(_tiles(spec, block_n) * splits, slots), 1, 1), (TMA_THREADS, 1, 1),
        [tensor_map.encode_2d(x, BLOCK_M, BLOCK_K), tensor_map.encode_2d(w, block_n, BLOCK_K), y_map, ptr(bias),
         ptr(out), ptr(ws), i32(m), i32(n), i32(spec.in_features), i32(GROUP_M), i32(per), i32(by_tma)],
        index, keep=(x, w, bias, out, ws), shared_bytes=smem)
    if ws is None:
        return gemm
    return in_order(gemm, igemm.splitk_reduce(ctype, ws, splits, m, n, bias, out, (1, 1), (n, 1, 0, 0), index))


def variants(spec: Linear, dtype: DType, tensors: Tensors, out: torch.Tensor,
             index: int) -> tuple[dict[str, Kernel], str | None]:
    """Every wgmma GEMM this layer can run, by name: the cp.async and TMA loaders on each tile
    shape, and the TMA kernel split along K where the output tiles leave SMs idle; and why the
    TMA kernels cannot run here (None where they can)."""
    found: dict[str, Kernel] = {f"cp_async_{BLOCK_M}x{n}": _cp_async_launch(spec, dtype, tensors, out, index, n, s)
                                for n, s in sources.WGMMA_CONFIGS}
    k_tiles = -(-spec.in_features // BLOCK_K)
    try:
        for n, s, b in sources.TMA_CONFIGS:
            found[f"tma_{tma_variant(n, b)}"] = _tma_kernel(spec, dtype, tensors, out, index, n, s, b, 1, k_tiles)
        for n in SPLIT_BLOCK_N:
            splits, per = choose_split(_tiles(spec, n), k_tiles, support.sm_count(index))
            if splits > 1:
                found[f"tma_{BLOCK_M}x{n}_split{splits}"] = _tma_kernel(
                    spec, dtype, tensors, out, index, n, one_block_stages(n), 1, splits, per)
    except Unsupported as e:  # a driver without tensor maps, say: the cp.async kernel still runs
        return found, str(e)
    return found, None


def build_wgmma(spec: Linear, dtype: DType, tensors: Tensors, out: torch.Tensor) -> Built:
    """The fastest wgmma GEMM variant for this layer whose output passes the float64 check."""
    index = support.check_tensors(dtype, _operands(spec, tensors, out))
    check_layer(spec, dtype, tensors, out, index)
    found, no_tma = variants(spec, dtype, tensors, out, index)
    # A GEMM's operands are matrices: "matrix" stands for the layout in the kept choice's key.
    built = support.fastest_right_variant(found, spec, dtype, "matrix", tensors, out, "the wgmma GEMM")
    return Built(built.launch, {**built.details, **({"tma": no_tma} if no_tma else {})})
