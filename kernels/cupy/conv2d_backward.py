"""Convolution backward launcher: conv2d_backward.cu's data gradient (dx) and weight gradient
(dweight, and dbias with a bias), for any stride, padding, dilation and groups, NCHW or NHWC.

Both are implicit GEMMs (conv_backward_plan), fp32 on FFMA (no tensor cores), tf32, fp16 and
bf16 on tensor cores (mma.sync), all with fp32 accumulation.  Every tensor is addressed through
its strides, so both layouts run the same kernels.  The weight gradient sums over every output
pixel: that sum is split over blocks into an fp32 workspace, and wgrad_reduce adds the partials
in split order and rounds once (deterministic), writing dweight (channels last for NHWC) and
dbias into their views of ``out`` (``layers.passes.split_output``).
"""

from __future__ import annotations

import torch

from kernels.cupy import conv_backward_plan, sources, support
from layerbench.builders import Built, Kernel, Tensors, check_workspace, in_order
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d, passes
from layerbench.registry import register

THREADS = conv_backward_plan.THREADS
REDUCE_THREADS = 256  # wgrad_reduce's __launch_bounds__
REDUCE_BLOCKS_PER_SM = 32


def _within_grid(spec: Conv2d, dtype: str, layout: str) -> str | None:
    """Refuse what the grid cannot hold (declared to the registry, so ``plan`` shows it)."""
    if spec.groups > conv_backward_plan.MAX_GRID_Z:
        return (f"the CuPy conv2d backward runs at most {conv_backward_plan.MAX_GRID_Z} groups, "
                f"this point has {spec.groups}")
    return None


def _checked(spec: Conv2d, dtype: DType, layout: str, tensors: dict[str, torch.Tensor | None]) -> int:
    """The checks both passes make; returns the device index."""
    reason = _within_grid(spec, dtype.name, layout)
    if reason:
        raise Unsupported(reason)
    support.check_dtype("conv2d", dtype, spec.dtypes)
    support.check_layout("conv2d", layout, spec.layouts)
    index = support.check_tensors(dtype, tensors)
    support.check_cc(index, 8, "the CuPy conv2d backward kernels (mma.sync)")
    return index


@register("conv2d", "cupy", backend="cupy", direction="backward_data", supports=_within_grid,
          description="CUDA C (CuPy): dx as an implicit GEMM per group over (output channel, kh, kw), "
                      "64x64 tiles (FFMA for fp32, mma.sync tensor cores for tf32/fp16/bf16)")
def build_backward_data(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Kernel:
    dy, weight = tensors["dy"], tensors["weight"]
    index = _checked(spec, dtype, layout, {"x": tensors["x"], "dy": dy, "weight": weight, "out": out})
    ctype = support.ctype_of(dtype)
    plan = conv_backward_plan.plan_dgrad(spec, tuple(weight.stride()))
    table = plan.table.to(dy.device)
    fn = support.function("conv2d_backward", sources.conv_dgrad_name(ctype, dtype.name != "fp32"), index)
    i32, i64, ptr = support.i32, support.i64, support.ptr
    s = spec
    return support.Launch(
        fn, plan.grid, (THREADS, 1, 1),
        [ptr(dy), ptr(weight), ptr(out), ptr(table), i32(plan.M), i32(plan.N),
         i32(s.out_channels // s.groups), i32(plan.K), i32(s.height), i32(s.width), i32(s.out_height),
         i32(s.out_width), i32(s.stride_h), i32(s.stride_w), i32(s.padding_h), i32(s.padding_w),
         *[i64(v) for v in dy.stride()], *[i64(v) for v in weight.stride()[:2]],
         *[i64(v) for v in out.stride()]],
        index, keep=(dy, weight, out, table))


@register("conv2d", "cupy", backend="cupy", direction="backward_weight", supports=_within_grid,
          description="CUDA C (CuPy): dweight (and dbias as one more GEMM column) as an implicit GEMM per "
                      "group over the output pixels, split over blocks into an fp32 workspace and reduced "
                      "in a fixed order; FFMA for fp32, mma.sync tensor cores for tf32/fp16/bf16")
def build_backward_weight(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    x, dy = tensors["x"], tensors["dy"]
    views = passes.split_output(spec, out, layout)
    dweight, dbias = views["dweight"], views.get("dbias")
    index = _checked(spec, dtype, layout, {"x": x, "dy": dy, "dweight": dweight, "dbias": dbias})
    ctype = support.ctype_of(dtype)
    gemm_fn = support.function("conv2d_backward", sources.conv_wgrad_name(ctype, dtype.name != "fp32"), index)
    sms = support.sm_count(index)
    slots = sms * max(1, support.occupancy(gemm_fn, THREADS, index))
    plan = conv_backward_plan.plan_wgrad(spec, tuple(dy.stride()), tuple(x.stride()), sources.ITEMSIZE[ctype],
                                         slots)
    check_workspace(4 * plan.workspace_floats + plan.table.numel() * 4, x.device, "the CuPy weight gradient")
    ws = torch.empty(plan.workspace_floats, dtype=torch.float32, device=x.device)
    table = plan.table.to(x.device)
    i32, i64, ptr = support.i32, support.i64, support.ptr
    s = spec
    _, dy_c, _, _ = dy.stride()
    _, x_c, x_h, x_w = x.stride()
    gemm = support.Launch(
        gemm_fn, plan.grid, (THREADS, 1, 1),
        [ptr(dy), ptr(x), ptr(ws), ptr(table), i32(plan.M), i32(s.in_channels // s.groups), i32(s.groups),
         i32(plan.J), i32(plan.columns), i32(s.kernel_h), i32(s.kernel_w), i32(plan.R), i32(plan.r_split),
         i32(s.height), i32(s.width), i32(s.dilation_h), i32(s.dilation_w),
         i64(dy_c), i64(x_c), i64(x_h), i64(x_w)],
        index, keep=(dy, x, ws, table))
    total = s.out_channels * plan.columns
    grid = max(1, min(-(-total // REDUCE_THREADS), sms * REDUCE_BLOCKS_PER_SM))
    reduce = support.Launch(
        support.function("conv2d_backward", sources.wgrad_reduce_name(ctype), index), (grid, 1, 1),
        (REDUCE_THREADS, 1, 1),
        [ptr(ws), i32(plan.splits), i32(s.out_channels), i32(plan.columns), i32(plan.J), i32(s.kernel_h),
         i32(s.kernel_w), ptr(dweight), *[i64(v) for v in dweight.stride()], ptr(dbias)],
        index, keep=(ws, dweight, dbias))
    return Built(in_order(gemm, reduce), {"splits": plan.splits})
