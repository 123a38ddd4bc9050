"""ReLU's data gradient in Triton: dx = dy where x > 0, else 0, in one flat pass.

Bandwidth-bound like the forward (kernels/triton/relu.py), and tiled the same way: 16 KiB of each
tensor a program, full blocks unmasked so that every access is a 16-byte vector.  NaN in x takes
dy, as torch's threshold_backward does (its test is x <= 0, false for NaN).
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

from kernels.triton.relu import BYTES_PER_PROGRAM, NUM_WARPS
from kernels.triton.support import check_inputs, dense_layout


@triton.jit
def _relu_backward_kernel(x_ptr, dy_ptr, dx_ptr, n, BLOCK: tl.constexpr):
    # 64-bit start: pid * BLOCK can pass 2**31 on the last program of a near-limit tensor.
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offs = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n:
        x = tl.load(x_ptr + offs)
        dy = tl.load(dy_ptr + offs)
    else:
        x = tl.load(x_ptr + offs, mask=offs < n)
        dy = tl.load(dy_ptr + offs, mask=offs < n)
    # Compared and selected in fp32: exact for every dtype, and the interpreter mis-compares bf16.
    dx = tl.where(x.to(tl.float32) <= 0.0, 0.0, dy.to(tl.float32)).to(dx_ptr.dtype.element_ty)
    if start + BLOCK <= n:
        tl.store(dx_ptr + offs, dx)
    else:
        tl.store(dx_ptr + offs, dx, mask=offs < n)


@register("relu", "triton", backend="triton", devices=("cuda", "cpu"), direction="backward_data",
          description="Triton dx = dy where x > 0, flat over the dense tensors")
def build_relu_backward_data(spec: ReLU, dtype: DType, layout: str, tensors: Tensors,
                             out: torch.Tensor) -> Kernel:
    check_inputs(_relu_backward_kernel, dtype, ReLU.dtypes, tensors, out)
    x, dy = tensors["x"], tensors["dy"]
    if not tuple(x.shape) == tuple(dy.shape) == tuple(out.shape) == spec.input_shape:
        raise Unsupported(f"tensor shapes x {tuple(x.shape)}, dy {tuple(dy.shape)}, dx {tuple(out.shape)} "
                          f"do not match {spec}")
    # A flat pass needs the three tensors dense with identical strides (any memory format).
    if dense_layout(x, layout) is None or not x.stride() == dy.stride() == out.stride():
        raise Unsupported("relu backward needs x, dy and dx dense with the same strides")
    n = x.numel()
    block = BYTES_PER_PROGRAM // x.element_size()
    launch = _relu_backward_kernel[(triton.cdiv(n, block),)]

    def kernel() -> None:
        launch(x, dy, out, n, BLOCK=block, num_warps=NUM_WARPS)

    return kernel
