"""Pooling launcher: pool2d.cu, a kernel per layout (NCHW, NHWC), max and average.

NCHW runs the band kernel (windows from shared memory, see pool_plan) unless a single output
row's windows overflow its shared band; then the direct kernel, which reads global memory.
"""

from __future__ import annotations

import torch

from kernels.cupy import pool_plan, sources, support
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.builders import Kernel, Tensors
from layerbench.registry import register
from layerbench.layers import Pool2d

THREADS = pool_plan.THREADS
BLOCKS_PER_SM = 32  # grid-stride beyond this; enough blocks to fill every SM several times


def _in_layout(t: torch.Tensor, layout: str) -> bool:
    if layout == "NCHW":
        return t.is_contiguous()
    return t.is_contiguous(memory_format=torch.channels_last)


@register("pool2d", "cupy", backend="cupy",
          description="CUDA C (CuPy): NCHW row bands staged in shared memory, NHWC one thread per 16-byte "
                      "channel group; exact max (max.NaN), fp32-accumulated average")
def build(spec: Pool2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Kernel:
    support.check_dtype("pool2d", dtype, spec.dtypes)
    support.check_layout("pool2d", layout, spec.layouts)
    x = tensors["x"]
    index = support.check_tensors(dtype, {"x": x, "out": out})
    if not (_in_layout(x, layout) and _in_layout(out, layout)):
        raise Unsupported(f"cupy pool2d {layout} needs x and out in {layout} memory order")
    ctype = support.ctype_of(dtype)
    s = spec
    common = [support.i32(s.height), support.i32(s.width), support.i32(s.out_height),
              support.i32(s.out_width), support.i32(s.kernel), support.i32(s.stride),
              support.i32(s.padding), support.f32(1.0 / (s.kernel * s.kernel))]
    if layout == "NCHW":
        rows = pool_plan.band_rows(s, sources.ITEMSIZE[ctype], support.sm_count(index))
        if rows is not None:
            out_rows = s.batch * s.channels * s.out_height  # (plane, output row) pairs
            fn = support.function("pool2d", sources.pool_nchw_name(ctype, s.method, s.kernel, s.padding > 0), index)
            args = [support.ptr(x), support.ptr(out), support.i32(out_rows)] + common + [support.i32(rows)]
            blocks = -(-out_rows // rows)
            return support.Launch(fn, (blocks, 1, 1), (THREADS, 1, 1), args, index, keep=(x, out))
        name = sources.pool_nchw_direct_name(ctype, s.method)
        work = s.batch * s.channels * s.out_height * s.out_width
        args = [support.ptr(x), support.ptr(out), support.i32(s.batch * s.channels)] + common
    else:
        vec = sources.vector_width(ctype)
        aligned = x.data_ptr() % 16 == 0 and out.data_ptr() % 16 == 0
        if s.channels % vec or not aligned:
            vec = 1
        name = sources.pool_nhwc_name(ctype, s.method, vec, s.kernel)
        work = s.batch * s.out_height * s.out_width * (s.channels // vec)
        args = [support.ptr(x), support.ptr(out), support.i32(s.batch), support.i32(s.channels)] + common
    grid = max(1, min(-(-work // THREADS), support.sm_count(index) * BLOCKS_PER_SM))
    fn = support.function("pool2d", name, index)
    return support.Launch(fn, (grid, 1, 1), (THREADS, 1, 1), args, index, keep=(x, out))
