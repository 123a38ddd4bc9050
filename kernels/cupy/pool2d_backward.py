"""Pooling backward launcher: pool2d_backward.cu, one thread per dx element gathering from the
windows that contain it (max: each window's first maximum found again; average: its share)."""

from __future__ import annotations

import torch

from kernels.cupy import sources, support
from layerbench.builders import Kernel, Tensors
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.layers import Pool2d
from layerbench.registry import register

THREADS = 256  # pool2d_backward's __launch_bounds__
BLOCKS_PER_SM = 32  # grid-stride beyond this, as the forward


def _in_layout(t: torch.Tensor, layout: str) -> bool:
    if layout == "NCHW":
        return t.is_contiguous()
    return t.is_contiguous(memory_format=torch.channels_last)


@register("pool2d", "cupy", backend="cupy", direction="backward_data",
          description="CUDA C (CuPy): gather, one thread per dx element over the windows holding it; "
                      "max finds each window's first maximum again (exact, no saved indices), "
                      "fp32 sums, one write, no atomics")
def build(spec: Pool2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Kernel:
    support.check_dtype("pool2d", dtype, spec.dtypes)
    support.check_layout("pool2d", layout, spec.layouts)
    x, dy = tensors["x"], tensors["dy"]
    index = support.check_tensors(dtype, {"x": x, "dy": dy, "out": out})
    if not all(_in_layout(t, layout) for t in (x, dy, out)):
        raise Unsupported(f"cupy pool2d backward {layout} needs x, dy and dx in {layout} memory order")
    s = spec
    ctype = support.ctype_of(dtype)
    fn = support.function("pool2d_backward", sources.pool_backward_name(ctype, s.method, layout), index)
    i32 = support.i32
    args = [support.ptr(x), support.ptr(dy), support.ptr(out), i32(s.batch), i32(s.channels),
            i32(s.height), i32(s.width), i32(s.out_height), i32(s.out_width), i32(s.kernel),
            i32(s.stride), i32(s.padding), support.f32(1.0 / (s.kernel * s.kernel))]
    work = s.batch * s.channels * s.height * s.width
    grid = max(1, min(-(-work // THREADS), support.sm_count(index) * BLOCKS_PER_SM))
    return support.Launch(fn, (grid, 1, 1), (THREADS, 1, 1), args, index, keep=(x, dy, out))
