"""A pointwise (1x1) convolution seen as GEMMs on its own memory, for both backends.

With a 1x1 filter, stride 1, no padding and one group, an NHWC convolution is exactly a fully
connected layer: the input is an (N*H*W, C) row-major matrix, the weight a (K, C) one and the
output (N*H*W, K), so out = x @ W^T + b with no gather at all; its gradients are the linear
layer's too.  These are the views of the convolution's own memory that the linear builds run on
(nothing is copied), and the reason a point is no such GEMM.  A strided 1x1 convolution is the
same GEMM over the input's pixels on the stride's grid (``subsampled``), once they are copied out.

In NCHW the same layer is one product per image, out[n] (K, H*W) = W (K, C) @ x[n] (C, H*W) + b:
the image's channels are the rows of a row-major (C, H*W) matrix, so again nothing needs copying
(``nchw_pointwise_refusal`` says where this applies; the kernels that run it read x[n] with the
pixels contiguous).
"""

from __future__ import annotations

import dataclasses

import torch

from layerbench.builders import Tensors
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d, Linear


def pointwise_refusal(spec: Conv2d, layout: str) -> str | None:
    """Why this point is no plain GEMM (None where it is one)."""
    if layout != "NHWC":
        return f"the GEMM view needs the NHWC layout, this point is {layout}"
    return _filter_refusal(spec)


def nchw_pointwise_refusal(spec: Conv2d, layout: str) -> str | None:
    """Why this point is no product per image of the weight and the image's (C, H*W) matrix
    (None where it is one)."""
    if layout != "NCHW":
        return f"the per-image GEMM needs the NCHW layout, this point is {layout}"
    return _filter_refusal(spec)


def _filter_refusal(spec: Conv2d) -> str | None:
    """Why this layer's filter is no plain matrix product over its channels (None where it is one)."""
    if (spec.kernel_h, spec.kernel_w) != (1, 1):
        return f"the GEMM view needs a 1x1 filter, this point has {spec.kernel_h}x{spec.kernel_w}"
    if (spec.stride_h, spec.stride_w, spec.padding_h, spec.padding_w) != (1, 1, 0, 0):
        return (f"the GEMM view needs stride 1 and no padding, this point has stride "
                f"{spec.stride_h}x{spec.stride_w} and padding {spec.padding_h}x{spec.padding_w}")
    if spec.groups != 1:
        return f"the GEMM view needs one group, this point has {spec.groups}"
    return None


def strided_refusal(spec: Conv2d, layout: str) -> str | None:
    """Why this point is no strided 1x1 convolution that ``subsampled`` makes a plain GEMM (None
    where it is one)."""
    if (spec.kernel_h, spec.kernel_w) != (1, 1):
        return f"the GEMM view needs a 1x1 filter, this point has {spec.kernel_h}x{spec.kernel_w}"
    if (spec.padding_h, spec.padding_w) != (0, 0):
        return f"the strided GEMM view needs no padding, this point has padding {spec.padding_h}x{spec.padding_w}"
    if (spec.stride_h, spec.stride_w) == (1, 1):
        return "stride 1: the pointwise GEMM runs it on the input itself"
    return pointwise_refusal(subsampled(spec), layout)


def subsampled(spec: Conv2d) -> Conv2d:
    """A strided 1x1 convolution without padding reads only the input's pixels on the stride's grid:
    it is the stride-1 convolution of the same filter over those pixels (a P x Q plane)."""
    if (spec.kernel_h, spec.kernel_w, spec.padding_h, spec.padding_w) != (1, 1, 0, 0):
        raise ValueError(f"subsampled takes unpadded 1x1 convolutions, not {spec}")
    return dataclasses.replace(spec, height=spec.out_height, width=spec.out_width, stride=1, stride_h=1, stride_w=1)


def matrix(t: torch.Tensor, rows: int, cols: int, name: str) -> torch.Tensor:
    """``t``'s memory as a row-major (rows, cols) matrix, or Unsupported where it is not one."""
    view = t.permute(0, 2, 3, 1) if t.dim() == 4 else t
    if not view.is_contiguous():
        raise Unsupported(f"the GEMM view needs {name} dense in NHWC order, got strides {tuple(t.stride())}")
    return view.reshape(rows, cols)  # a view: contiguous, so nothing is copied


def weight_matrix(weight: torch.Tensor, k: int, c: int, name: str = "the 1x1 weight") -> torch.Tensor:
    """A (K, C, 1, 1) weight (or its gradient) as the (K, C) matrix it is in memory in either format."""
    view = weight.reshape(k, c)
    if view.data_ptr() != weight.data_ptr() or not view.is_contiguous():
        raise Unsupported(f"the GEMM view needs {name} dense (K, C) in memory")
    return view


def forward_views(spec: Conv2d, layout: str, tensors: Tensors,
                  out: torch.Tensor) -> tuple[Linear, Tensors, torch.Tensor]:
    """(the linear layer, its tensors, its output) that this 1x1 convolution's forward pass is."""
    reason = pointwise_refusal(spec, layout)
    if reason:
        raise Unsupported(reason)
    n, c, h, w = spec.input_shape
    k = spec.out_channels
    views = {"x": matrix(tensors["x"], n * h * w, c, "x"), "weight": weight_matrix(tensors["weight"], k, c)}
    if "bias" in tensors:
        views["bias"] = tensors["bias"]
    return Linear(n * h * w, c, k, bias=spec.bias), views, matrix(out, n * h * w, k, "out")
