"""Pooling backward launcher: pool2d_backward.cu, one thread per dx element gathering from the
windows that contain it (average: its share; max: the winner's dy).  Max pooling's winners are
found again by every thread, or first, once a window, by pool2d_winners (kernels/pool_winners.py
says how the faster is kept)."""

from __future__ import annotations

import torch

from kernels import pool_winners
from kernels.cupy import sources, support
from layerbench.builders import Built, Kernel, Tensors, in_order
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.layers import Pool2d
from layerbench.registry import register

THREADS = 256  # the kernels' __launch_bounds__
BLOCKS_PER_SM = 32  # grid-stride beyond this, as the forward


def _in_layout(t: torch.Tensor, layout: str) -> bool:
    if layout == "NCHW":
        return t.is_contiguous()
    return t.is_contiguous(memory_format=torch.channels_last)


@register("pool2d", "cupy", backend="cupy", direction="backward_data",
          description="CUDA C (CuPy): gather, one thread per dx element over the windows holding it; "
                      "max finds each window's first maximum again or reads it from a first pass, the "
                      "faster (exact, no saved indices), fp32 sums, one write, no atomics")
def build(spec: Pool2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Kernel | Built:
    return pool_winners.keep_faster(spec, out.device, build_recompute(spec, dtype, layout, tensors, out),
                                    lambda: build_winners_first(spec, dtype, layout, tensors, out))


def build_recompute(spec: Pool2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Kernel:
    """One kernel; max pooling finds each window's winner again in every thread."""
    return _build(spec, dtype, layout, tensors, out, winners=None)


def build_winners_first(spec: Pool2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Kernel:
    """Max pooling in two kernels: each window's winner once, then the gather reading them."""
    return _build(spec, dtype, layout, tensors, out, pool_winners.winner_array(spec, out.device))


def _build(spec: Pool2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor,
           winners: torch.Tensor | None) -> Kernel:
    support.check_dtype("pool2d", dtype, spec.dtypes)
    support.check_layout("pool2d", layout, spec.layouts)
    x, dy = tensors["x"], tensors["dy"]
    index = support.check_tensors(dtype, {"x": x, "dy": dy, "out": out})
    if not all(_in_layout(t, layout) for t in (x, dy, out)):
        raise Unsupported(f"cupy pool2d backward {layout} needs x, dy and dx in {layout} memory order")
    s = spec
    ctype = support.ctype_of(dtype)
    i32 = support.i32
    shape = [i32(s.batch), i32(s.channels), i32(s.height), i32(s.width), i32(s.out_height), i32(s.out_width),
             i32(s.kernel), i32(s.stride), i32(s.padding)]
    launches = []
    if winners is not None:
        fn = support.function("pool2d_backward", sources.pool_winners_name(ctype, layout), index)
        launches.append(support.Launch(fn, (_grid(winners.numel(), index), 1, 1), (THREADS, 1, 1),
                                       [support.ptr(x), support.ptr(winners), *shape], index, keep=(x, winners)))
    fn = support.function("pool2d_backward", sources.pool_backward_name(ctype, s.method, layout, winners is not None),
                          index)
    args = [support.ptr(x), support.ptr(dy), support.ptr(out), *shape, support.f32(1.0 / (s.kernel * s.kernel)),
            support.ptr(winners)]  # a null pointer without winners: the kernel does not read it
    launches.append(support.Launch(fn, (_grid(out.numel(), index), 1, 1), (THREADS, 1, 1), args, index,
                                   keep=(x, dy, out, winners)))
    return in_order(*launches)


def _grid(work: int, index: int) -> int:
    return max(1, min(-(-work // THREADS), support.sm_count(index) * BLOCKS_PER_SM))
