"""The fully connected layer on Hopper's wgmma instructions (``linear_wgmma.cu``).

Built beside the mma.sync GEMM of ``igemm.cu`` (``linear.build`` times both and keeps the
faster): on an H200 the mma.sync GEMM held CuPy at 0.33-0.41x cuBLAS in bf16 and fp16 on large
GEMMs, since mma.sync cannot reach the rate of Hopper's warpgroup instructions.

Runs fp16 and bf16 on compute capability 9.0 only (sm_90a code: wgmma does not exist before
Hopper, and sm_90a binaries do not run after it), with x, W and y contiguous, in_features a
multiple of 8 (16-byte rows for cp.async) and 16-byte aligned pointers; elsewhere ``Unsupported``
says which.  Each tile shape of ``sources.WGMMA_CONFIGS`` is timed at build and the faster
kept; before it may be kept, its output on the layer's own tensors is judged against float64
(a wrong result is a reason recorded in the build's details, never a result).
"""

from __future__ import annotations

import torch

from kernels.cupy import sources, support
from layerbench.builders import Built, Tensors, selection_ms
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.layers import Linear

THREADS = 256
BLOCK_M = 128
GROUP_M = 8  # row tiles walked down each column of W tiles (W tiles reused from L2)
LINE_BYTES = 128  # one tile row: 64 16-bit elements of k, one 128-byte swizzle line
ALIGN_SLACK = 1024  # the kernel aligns its ring of buffers to the 1024-byte swizzle period


def shared_bytes(block_n: int, stages: int) -> int:
    return stages * (BLOCK_M + block_n) * LINE_BYTES + ALIGN_SLACK


def check_layer(spec: Linear, dtype: DType, tensors: Tensors, out: torch.Tensor, index: int) -> None:
    """Raise Unsupported unless the wgmma GEMM can run this layer on GPU ``index``."""
    if dtype.name not in ("fp16", "bf16"):
        raise Unsupported(f"the wgmma GEMM runs fp16 and bf16, not {dtype.name}")
    if spec.in_features % 8:
        raise Unsupported(f"the wgmma GEMM needs in_features a multiple of 8 (16-byte rows), got {spec.in_features}")
    for name, t in _operands(spec, tensors, out).items():
        if t is None:
            continue
        if not t.is_contiguous():
            raise Unsupported(f"the wgmma GEMM needs a contiguous {name}")
        if t.data_ptr() % 16:
            raise Unsupported(f"the wgmma GEMM needs {name} 16-byte aligned (cp.async)")
    cc = support.capability(index)
    if cc != (9, 0):
        raise Unsupported(f"the wgmma GEMM is sm_90a code (compute capability 9.0); this GPU has {cc[0]}.{cc[1]}")


def _operands(spec: Linear, tensors: Tensors, out: torch.Tensor) -> dict[str, torch.Tensor | None]:
    return {"x": tensors["x"], "weight": tensors["weight"], "bias": tensors.get("bias") if spec.bias else None,
            "out": out}


def _launch(spec: Linear, dtype: DType, tensors: Tensors, out: torch.Tensor, index: int, block_n: int,
            stages: int) -> support.Launch:
    ctype = support.ctype_of(dtype)
    fn = support.function("linear_wgmma", sources.linear_wgmma_name(ctype, block_n, stages), index)
    smem = shared_bytes(block_n, stages)
    support.allow_shared(fn, smem, index)
    x, w, bias, _ = _operands(spec, tensors, out).values()
    tiles = -(-spec.batch // BLOCK_M) * -(-spec.out_features // block_n)
    i32, ptr = support.i32, support.ptr
    return support.Launch(
        fn, (tiles, 1, 1), (THREADS, 1, 1),
        [ptr(x), ptr(w), ptr(bias), ptr(out), i32(spec.batch), i32(spec.out_features), i32(spec.in_features),
         i32(GROUP_M)],
        index, keep=(x, w, bias, out), shared_bytes=smem)


def build_wgmma(spec: Linear, dtype: DType, tensors: Tensors, out: torch.Tensor) -> Built:
    """The fastest wgmma tile shape for this layer, checked against float64 on its tensors."""
    index = support.check_tensors(dtype, _operands(spec, tensors, out))
    check_layer(spec, dtype, tensors, out, index)
    timed = []
    for block_n, stages in sources.WGMMA_CONFIGS:
        launch = _launch(spec, dtype, tensors, out, index, block_n, stages)
        timed.append((selection_ms(launch, out.device), block_n, stages, launch))
    _, block_n, stages, launch = min(timed, key=lambda t: t[0])
    support.check_result(launch, spec, dtype, tensors, out, f"the wgmma GEMM, {BLOCK_M}x{block_n} tiles")
    return Built(launch, {"tile": f"{BLOCK_M}x{block_n}x64", "stages": stages,
                          **{f"tile_{BLOCK_M}x{n}_ms": t for t, n, _, _ in timed}})
