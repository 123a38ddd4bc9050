"""A pointwise (1x1) NHWC convolution run as the linear layer's GEMMs, on views of its tensors.

With a 1x1 filter, stride 1, no padding and one group, an NHWC convolution is exactly a fully
connected layer: the input is an (N*H*W, C) row-major matrix, the weight a (K, C) one and the
output (N*H*W, K), so out = x @ W^T + b with no gather at all; its gradients are the linear
layer's too: dx = dy @ W, dW = dy^T @ x, db = the column sums of dy.  The linear layer's builds
(``linear.py``: the tiled GEMM with split-K, on Hopper also the persistent TMA GEMM;
``linear_backward.py``) then run on views of the same memory; nothing is copied.  ResNet-50's
bottleneck ends and MobileNetV2's expansions and projections are such layers.  The convolution's
builds (forward, data and weight gradients) time this beside their implicit GEMM and keep the
faster.
"""

from __future__ import annotations

import torch

from layerbench.builders import Built, Tensors, as_built
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d, Linear
from layerbench.layers.passes import at_direction, direction_of

from kernels.triton import linear, linear_backward


def pointwise_refusal(spec: Conv2d, layout: str) -> str | None:
    """Why this point is no plain GEMM (None where it is one)."""
    if layout != "NHWC":
        return f"the GEMM view needs the NHWC layout, this point is {layout}"
    if (spec.kernel_h, spec.kernel_w) != (1, 1):
        return f"the GEMM view needs a 1x1 filter, this point has {spec.kernel_h}x{spec.kernel_w}"
    if (spec.stride_h, spec.stride_w, spec.padding_h, spec.padding_w) != (1, 1, 0, 0):
        return (f"the GEMM view needs stride 1 and no padding, this point has stride "
                f"{spec.stride_h}x{spec.stride_w} and padding {spec.padding_h}x{spec.padding_w}")
    if spec.groups != 1:
        return f"the GEMM view needs one group, this point has {spec.groups}"
    return None


def _matrix(t: torch.Tensor, rows: int, cols: int, name: str) -> torch.Tensor:
    """``t``'s memory as a row-major (rows, cols) matrix, or Unsupported where it is not one."""
    view = t.permute(0, 2, 3, 1) if t.dim() == 4 else t
    if not view.is_contiguous():
        raise Unsupported(f"the GEMM view needs {name} dense in NHWC order, got strides {tuple(t.stride())}")
    return view.reshape(rows, cols)  # a view: contiguous, so nothing is copied


def _weight_matrix(weight: torch.Tensor, k: int, c: int, name: str = "the 1x1 weight") -> torch.Tensor:
    """A (K, C, 1, 1) weight (or its gradient) as the (K, C) matrix it is in memory in either format."""
    view = weight.reshape(k, c)
    if view.data_ptr() != weight.data_ptr() or not view.is_contiguous():
        raise Unsupported(f"the GEMM view needs {name} dense (K, C) in memory")
    return view


def build_pointwise(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    """The linear layer's GEMM on views of this 1x1 convolution's tensors."""
    reason = pointwise_refusal(spec, layout)
    if reason:
        raise Unsupported(reason)
    n, c, h, w = spec.input_shape
    k = spec.out_channels
    gemm = Linear(n * h * w, c, k, bias=spec.bias)
    views = {"x": _matrix(tensors["x"], n * h * w, c, "x"), "weight": _weight_matrix(tensors["weight"], k, c)}
    if "bias" in tensors:
        views["bias"] = tensors["bias"]
    built = as_built(linear.build(gemm, dtype, "NCHW", views, _matrix(out, n * h * w, k, "out")))
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
    views = {"x": _matrix(tensors["x"], rows, c, "x"), "weight": _weight_matrix(tensors["weight"], k, c),
             "dy": _matrix(tensors["dy"], rows, k, "dy")}
    if direction == "backward_data":
        built = linear_backward.build_linear_backward_data(gemm, dtype, "NCHW", views, _matrix(out, rows, c, "dx"))
    elif direction == "backward_weight":
        # With a bias, out is the flat buffer of dweight then dbias: the linear layer's own order.
        target = _weight_matrix(out, k, c, "dweight") if out.dim() == 4 else out
        built = linear_backward.build_linear_backward_weight(gemm, dtype, "NCHW", views, target)
    else:
        raise Unsupported(f"the backward GEMM view runs backward_data or backward_weight, not {direction}")
    built = as_built(built)
    return Built(built.launch, {"gemm": dict(built.details)})
