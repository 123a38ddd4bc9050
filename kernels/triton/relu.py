"""ReLU in Triton: one flat pass over the dense tensor, out of place or in place.

Memory-bound: each program moves 16 KiB in and out (4096 fp32 or 8192 fp16/bf16 elements, four
16-byte vectors per thread with 8 warps), enough bytes in flight per SM to reach HBM bandwidth.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.builders import Kernel, Tensors
from layerbench.registry import register
from layerbench.layers import ReLU

from kernels.triton.support import check_inputs

BYTES_PER_PROGRAM = 16384
NUM_WARPS = 8


@triton.jit
def _relu_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    # 64-bit start: pid * BLOCK can pass 2**31 on the last program of a near-limit tensor.
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offs = start + tl.arange(0, BLOCK)
    # Full blocks load without a mask: a mask against an n not divisible by 16 would stop the
    # compiler from using 16-byte vector accesses.  Only the last block is masked.
    if start + BLOCK <= n:
        x = tl.load(x_ptr + offs)
    else:
        x = tl.load(x_ptr + offs, mask=offs < n)
    # Compared in fp32: exact for every input dtype, and the interpreter mis-compares bf16.
    # `x < 0` is false for NaN, so NaN passes through as torch.relu does (x > 0 would zero it).
    y = tl.where(x.to(tl.float32) < 0.0, 0.0, x.to(tl.float32)).to(y_ptr.dtype.element_ty)
    if start + BLOCK <= n:
        tl.store(y_ptr + offs, y)
    else:
        tl.store(y_ptr + offs, y, mask=offs < n)


def _dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)


@register("relu", "triton", backend="triton", devices=("cuda", "cpu"),
          description="Triton elementwise max(x, 0), flat over the dense tensor, in or out of place")
def build(spec: ReLU, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Kernel:
    check_inputs(_relu_kernel, dtype, ReLU.dtypes, tensors, out)
    x = tensors["x"]
    if tuple(x.shape) != spec.input_shape or tuple(out.shape) != spec.output_shape:
        raise Unsupported(f"tensor shapes {tuple(x.shape)} -> {tuple(out.shape)} do not match {spec}")
    # A flat pass needs x and out dense with identical strides (any memory format).
    if not _dense(x) or out.stride() != x.stride():
        raise Unsupported("relu needs x and out dense with the same strides")
    n = x.numel()
    block = BYTES_PER_PROGRAM // x.element_size()
    launch = _relu_kernel[(triton.cdiv(n, block),)]

    def kernel() -> None:
        launch(x, out, n, BLOCK=block, num_warps=NUM_WARPS)

    return kernel
