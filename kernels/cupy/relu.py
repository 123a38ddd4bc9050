"""ReLU launcher: relu.cu over the tensor as one flat array (in place when out is x)."""

from __future__ import annotations

import torch

from kernels.cupy import sources, support
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.builders import Kernel, Tensors
from layerbench.registry import register
from layerbench.layers import ReLU

THREADS = 256
UNROLL = 4  # 16-byte vectors per thread; must match relu.cu


def _dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)


@register("relu", "cupy", backend="cupy",
          description="CUDA C (CuPy): 16-byte vector loads/stores, grid-stride, 4 in flight per thread, bitwise max(x, 0)")
def build(spec: ReLU, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Kernel:
    support.check_dtype("relu", dtype, spec.dtypes)
    support.check_layout("relu", layout, spec.layouts)
    x = tensors["x"]
    index = support.check_tensors(dtype, {"x": x, "out": out})
    if not (_dense(x) and out.stride() == x.stride()):
        raise Unsupported("cupy relu needs x and out dense with the same strides")
    ctype = support.ctype_of(dtype)
    n = x.numel()
    # One pass of the grid-stride loop: every block moves THREADS * UNROLL vectors (16 KiB) once,
    # as the Triton kernel does.  The scalar fallback (misaligned pointers) strides over the grid.
    vectors = n // sources.vector_width(ctype)
    grid = max(1, -(-vectors // (THREADS * UNROLL)))
    fn = support.function("relu", sources.relu_name(ctype), index)
    return support.Launch(fn, (grid, 1, 1), (THREADS, 1, 1),
                          [support.ptr(x), support.ptr(out), support.i64(n)], index, keep=(x, out))
