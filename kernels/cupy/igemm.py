"""Build and launch the implicit GEMM of igemm.cu (shared by the conv2d and linear launchers)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from kernels.cupy import sources, support
from kernels.cupy.igemm_plan import MMA_THREADS, SHARED_BYTES, SIMT_THREADS, Geometry, make_plan
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.builders import Kernel, in_order

if TYPE_CHECKING:
    import cupy

REDUCE_BLOCKS_PER_SM = 32
WGMMA_ALIGN_SLACK = 512  # igemm_wgmma starts its stages on the 64-byte swizzle's 512-byte period
REDUCE_THREADS = 256  # splitk_reduce's __launch_bounds__


def check_wgmma(dtype: DType, index: int) -> None:
    """Raise Unsupported unless the wgmma implicit GEMM can run ``dtype`` on GPU ``index``."""
    if dtype.name not in ("fp16", "bf16"):
        raise Unsupported(f"the wgmma implicit GEMM runs fp16 and bf16, not {dtype.name}")
    cc = support.capability(index)
    if cc != (9, 0):
        raise Unsupported(f"the wgmma implicit GEMM is sm_90a code (compute capability 9.0); this GPU has "
                          f"{cc[0]}.{cc[1]}")


def build(dtype: DType, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
          out: torch.Tensor, g: Geometry, wgmma: bool = False) -> Kernel:
    """The implicit GEMM's launches for geometry ``g``; ``wgmma``: the multiply on Hopper's
    warpgroup MMA (igemm_wgmma.cu: fp16 and bf16, compute capability 9.0 only) instead of mma.sync."""
    index = support.check_tensors(dtype, {"x": x, "weight": weight, "bias": bias, "out": out})
    support.check_cc(index, 8, "the CuPy implicit GEMM (cp.async, ldmatrix, mma.sync)")
    if wgmma:
        check_wgmma(dtype, index)
    if bias is not None and not bias.is_contiguous():
        raise Unsupported("cupy conv2d/linear needs a contiguous bias")
    ctype = support.ctype_of(dtype)
    tensor_cores = dtype.name != "fp32"
    threads = MMA_THREADS if tensor_cores else SIMT_THREADS
    sms = support.sm_count(index)

    grouped = g.groups > 1

    shared = SHARED_BYTES + WGMMA_ALIGN_SLACK if wgmma else SHARED_BYTES

    def gemm_function(a_vec: bool) -> cupy.RawKernel:
        if wgmma:
            fn = support.function("igemm_wgmma", sources.igemm_wgmma_name(ctype, a_vec, grouped), index)
        else:
            fn = support.function("igemm", sources.igemm_name(ctype, tensor_cores, a_vec, grouped), index)
        support.allow_shared(fn, shared, index)
        return fn

    def slots(a_vec: bool) -> int:
        return sms * max(1, support.occupancy(gemm_function(a_vec), threads, index, shared))

    plan = make_plan(g, sources.ITEMSIZE[ctype], x.data_ptr(), weight.data_ptr(), slots)
    if plan.copy_weight:
        weight = weight.contiguous()  # setup-time copy of the weight only, never of the input
    g = plan.geometry
    fn = gemm_function(plan.a_vec)
    table = plan.table.to(x.device)
    ws = (torch.empty(plan.splits * g.M * g.out_channels, dtype=torch.float32, device=x.device)
          if plan.splits > 1 else None)
    i32, i64, ptr = support.i32, support.i64, support.ptr
    sn, _, sh, sw = g.x_strides
    on, oc, oh, ow = g.out_strides
    gemm = support.Launch(
        fn, plan.grid, (threads, 1, 1),
        [ptr(x), ptr(weight), ptr(bias), ptr(out), ptr(ws), ptr(table),
         i32(g.M), i32(g.N), i32(g.K), i32(g.out_h * g.out_w), i32(g.out_w),
         i32(g.height), i32(g.width), i32(g.stride_h), i32(g.stride_w), i32(g.padding_h), i32(g.padding_w),
         i64(sn), i64(sh), i64(sw), i64(on), i64(oc), i64(oh), i64(ow),
         i32(plan.k_split), i32(int(plan.b_vec)), i32(g.groups), i64(g.x_group)],
        index, keep=(x, weight, bias, out, ws, table), shared_bytes=shared)
    if ws is None:
        return gemm

    return in_order(gemm, splitk_reduce(ctype, ws, plan.splits, g.M, g.out_channels, bias, out,
                                        (g.out_h, g.out_w), g.out_strides, index))


def splitk_reduce(ctype: str, ws: torch.Tensor, splits: int, m: int, n: int, bias: torch.Tensor | None,
                  out: torch.Tensor, out_hw: tuple[int, int], out_strides: tuple[int, int, int, int],
                  index: int) -> support.Launch:
    """igemm.cu's splitk_reduce: out = the sum of the ``splits`` (m x n) fp32 partial sums in
    ``ws`` (in a fixed order) + bias; row m of the GEMM is output pixel m of ``out_hw`` planes."""
    total = m * n
    grid = max(1, min(-(-total // REDUCE_THREADS), support.sm_count(index) * REDUCE_BLOCKS_PER_SM))
    i32, i64, ptr = support.i32, support.i64, support.ptr
    on, oc, oh, ow = out_strides
    return support.Launch(
        support.function("igemm", sources.reduce_name(ctype), index), (grid, 1, 1), (REDUCE_THREADS, 1, 1),
        [ptr(ws), i32(splits), i32(m), i32(n), ptr(bias), ptr(out),
         i32(out_hw[0] * out_hw[1]), i32(out_hw[1]), i64(on), i64(oc), i64(oh), i64(ow)],
        index, keep=(ws, bias, out))
