"""A pointwise (1x1) NHWC convolution run as the Triton linear layer's GEMMs, on views of its
tensors (``kernels/pointwise_views.py``): out = x @ W^T + b, dx = dy @ W, dW = dy^T @ x, db = the
column sums of dy, through ``linear.py`` (the tiled GEMM with split-K, on Hopper also the
persistent TMA GEMM) and ``linear_backward.py``; nothing is copied.  ResNet-50's bottleneck ends
and MobileNetV2's expansions and projections are such layers.  A strided 1x1 convolution without
padding (ResNet-50's projections) reads only the pixels on the stride's grid: they are copied to a
dense buffer inside the timed call (``_subsample_kernel``, whole channel rows, its tile timed at
build) and the forward GEMM runs over them.  The convolution's builds (forward, data and weight
gradients) time this beside their implicit GEMM and keep the faster.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from layerbench.builders import Built, Kernel, Tensors, as_built, in_order
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d, Linear
from layerbench.layers.passes import at_direction, direction_of

from kernels.pointwise_views import forward_views, matrix, pointwise_refusal, strided_refusal, subsampled, weight_matrix
from kernels.triton import linear, linear_backward
from kernels.triton.support import bind, next_pow2, pixel_of

# The subsampling copy's tiles (pixels x channels, warps), timed at build: its time is the
# strided layer's overhead over the GEMM, and the best tile depends on the channel count (a
# program moving 4 KB runs far from the copy bandwidth where the rows are 1-2 KB long).
_SUBSAMPLE_TILES = ((32, 64, 4), (16, 128, 4), (64, 128, 8), (32, 256, 8), (16, 512, 8), (128, 64, 8))
_INTERPRETER_SUBSAMPLE = {"BLOCK_P": 32, "BLOCK_C": 64}


@triton.jit
def _subsample_kernel(x_ptr, dst_ptr, pixels, P, Q, H, W, C, SH, SW,
                      BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # dst[n, p, q, :] = x[n, p * SH, q * SW, :], NHWC both; int32 offsets (x has < 2^31 elements).
    pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    n, p, q = pixel_of(pix, P, Q)
    src = ((n * H + p * SH) * W + q * SW) * C
    ok = (pix < pixels)[:, None] & (ch < C)[None, :]
    row = tl.load(x_ptr + src[:, None] + ch[None, :], mask=ok)
    tl.store(dst_ptr + pix[:, None] * C + ch[None, :], row, mask=ok)


@functools.cache
def _subsample_tiles(max_block_c: int) -> list[triton.Config]:
    """The copy's tiles whose channel block is no wider than a row of ``max_block_c`` channels (a
    power of two), the narrowest always."""
    narrowest = min(c for _, c, _ in _SUBSAMPLE_TILES)
    tiles = [(p, c, w) for p, c, w in _SUBSAMPLE_TILES if c <= max(max_block_c, narrowest)]
    return [triton.Config({"BLOCK_P": p, "BLOCK_C": c}, num_warps=w) for p, c, w in tiles]


def build_pointwise(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    """The linear layer's GEMM on views of this 1x1 convolution's tensors."""
    gemm, views, out_matrix = forward_views(spec, layout, tensors, out)
    built = as_built(linear.build(gemm, dtype, "NCHW", views, out_matrix))
    return Built(built.launch, {"gemm": dict(built.details)})


def build_strided_pointwise(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    """A strided 1x1 NHWC convolution without padding: the pixels on the stride's grid copied to a
    dense buffer inside the timed call, then the stride-1 convolution's GEMM over them."""
    reason = strided_refusal(spec, layout)
    if reason:
        raise Unsupported(reason)
    x = tensors["x"]
    if not x.permute(0, 2, 3, 1).is_contiguous():
        raise Unsupported(f"the subsampling copy reads x dense in NHWC order, got strides {tuple(x.stride())}")
    dense = subsampled(spec)
    pixels = torch.empty((spec.batch, spec.in_channels, dense.height, dense.width), dtype=x.dtype, device=x.device,
                         memory_format=torch.channels_last)
    count = spec.batch * dense.height * dense.width

    def grid(config: dict) -> tuple[int, int]:
        return triton.cdiv(count, config["BLOCK_P"]), triton.cdiv(spec.in_channels, config["BLOCK_C"])

    args = (x, pixels, count, dense.height, dense.width, spec.height, spec.width, spec.in_channels,
            spec.stride_h, spec.stride_w)
    copy = bind(_subsample_kernel, _subsample_tiles(next_pow2(spec.in_channels)), grid, args, {},
                _INTERPRETER_SUBSAMPLE)
    copy()  # the GEMM's build times itself on the copied pixels
    gemm = build_pointwise(dense, dtype, layout, {**tensors, "x": pixels}, out)
    launch: Kernel = in_order(copy, gemm.launch)
    return Built(launch, dict(gemm.details))


def build_pointwise_backward(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    """The linear layer's backward GEMM (the spec's direction: ``backward_data`` or
    ``backward_weight``) on views of this 1x1 convolution's tensors."""
    reason = pointwise_refusal(spec, layout)
    if reason:
        raise Unsupported(reason)
    direction = direction_of(spec)
    n, c, h, w = spec.input_shape
    k, rows = spec.out_channels, n * h * w
    gemm = at_direction(Linear(rows, c, k, bias=spec.bias), direction)
    views = {"x": matrix(tensors["x"], rows, c, "x"), "weight": weight_matrix(tensors["weight"], k, c),
             "dy": matrix(tensors["dy"], rows, k, "dy")}
    if direction == "backward_data":
        built = linear_backward.build_linear_backward_data(gemm, dtype, "NCHW", views, matrix(out, rows, c, "dx"))
    elif direction == "backward_weight":
        # With a bias, out is the flat buffer of dweight then dbias: the linear layer's own order.
        target = weight_matrix(out, k, c, "dweight") if out.dim() == 4 else out
        built = linear_backward.build_linear_backward_weight(gemm, dtype, "NCHW", views, target)
    else:
        raise Unsupported(f"the backward GEMM view runs backward_data or backward_weight, not {direction}")
    built = as_built(built)
    return Built(built.launch, {"gemm": dict(built.details)})
