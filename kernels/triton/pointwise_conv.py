"""A pointwise (1x1) NHWC convolution run as the Triton linear layer's GEMMs, on views of its
tensors (``kernels/pointwise_views.py``): out = x @ W^T + b, dx = dy @ W, dW = dy^T @ x, db = the
column sums of dy, through ``linear.py`` (the tiled GEMM with split-K, on Hopper also the
persistent TMA GEMM) and ``linear_backward.py``; nothing is copied.  ResNet-50's bottleneck ends
and MobileNetV2's expansions and projections are such layers.  The convolution's builds (forward,
data and weight gradients) time this beside their implicit GEMM and keep the faster.
"""

from __future__ import annotations

import torch

from layerbench.builders import Built, Tensors, as_built
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d, Linear
from layerbench.layers.passes import at_direction, direction_of

from kernels.pointwise_views import forward_views, matrix, pointwise_refusal, weight_matrix
from kernels.triton import linear, linear_backward


def build_pointwise(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    """The linear layer's GEMM on views of this 1x1 convolution's tensors."""
    gemm, views, out_matrix = forward_views(spec, layout, tensors, out)
    built = as_built(linear.build(gemm, dtype, "NCHW", views, out_matrix))
    return Built(built.launch, {"gemm": dict(built.details)})


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
