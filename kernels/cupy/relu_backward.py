"""ReLU backward launcher: relu_backward.cu over x, dy and dx as flat arrays of one memory order."""

from __future__ import annotations

import torch

from kernels.cupy import sources, support
from layerbench.builders import Kernel, Tensors
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.layers import ReLU
from layerbench.registry import register

THREADS = 256
UNROLL = 4  # 16-byte vectors of each tensor per thread; must match relu_backward.cu


def _dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)


@register("relu", "cupy", backend="cupy", direction="backward_data",
          description="CUDA C (CuPy): dx = dy where x > 0 else 0 on the bit patterns, 16-byte vectors, "
                      "4 in flight per thread")
def build(spec: ReLU, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Kernel:
    support.check_dtype("relu", dtype, spec.dtypes)
    support.check_layout("relu", layout, spec.layouts)
    x, dy = tensors["x"], tensors["dy"]
    index = support.check_tensors(dtype, {"x": x, "dy": dy, "out": out})
    if not (_dense(x) and dy.stride() == x.stride() and out.stride() == x.stride()):
        raise Unsupported("cupy relu backward needs x, dy and dx dense with the same strides")
    ctype = support.ctype_of(dtype)
    n = x.numel()
    # One pass of the grid-stride loop, as in the forward; misaligned pointers take the scalar loop.
    grid = max(1, -(-(n // sources.vector_width(ctype)) // (THREADS * UNROLL)))
    fn = support.function("relu_backward", sources.relu_backward_name(ctype), index)
    return support.Launch(fn, (grid, 1, 1), (THREADS, 1, 1),
                          [support.ptr(x), support.ptr(dy), support.ptr(out), support.i64(n)], index,
                          keep=(x, dy, out))
