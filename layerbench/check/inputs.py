"""Inputs of a correctness check or a benchmark: fresh random tensors (never zeros), the output buffer
in the point's layout, and the float64 reference.

A backward or training pass also gets ``dy``, the upstream gradient (N(0, 1), the forward output's
shape, in the point's layout); its results are laid out as ``layers.passes`` describes."""

from __future__ import annotations

import math
import os

import torch

from layerbench.dtypes import DType, get_dtype
from layerbench.layers import Conv2d, LayerSpec, Linear, ReLU, passes
from layerbench.registry import Tensors


def memory_format(layout: str) -> torch.memory_format:
    if layout == "NCHW":
        return torch.contiguous_format
    if layout == "NHWC":
        return torch.channels_last
    raise ValueError(f"layout must be NCHW or NHWC, got {layout!r}")


def _check_layout(spec: LayerSpec, layout: str) -> None:
    if layout not in spec.layouts:
        raise ValueError(f"layout for {spec.layer} must be one of {', '.join(spec.layouts)}, got {layout!r}")


def make_tensors(spec: LayerSpec, dtype: DType | str, layout: str, device: str | torch.device,
                 generator: torch.Generator | None = None) -> Tensors:
    """Fresh random inputs: x ~ N(0, 1); weights ~ N(0, 1/fan_in) so outputs stay O(1) in fp16;
    dy ~ N(0, 1) for the passes that take an upstream gradient."""
    dtype = get_dtype(dtype) if isinstance(dtype, str) else dtype
    _check_layout(spec, layout)
    if generator is None:
        generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)

    def randn(shape: tuple[int, ...], scale: float = 1.0) -> torch.Tensor:
        # Drawn on the CPU so a seed gives the same data on every device.
        t = torch.randn(shape, generator=generator, dtype=torch.float32) * scale
        t = t.to(device=device, dtype=dtype.torch_dtype)
        return t.contiguous(memory_format=memory_format(layout)) if t.dim() == 4 else t

    tensors: Tensors = {"x": randn(spec.input_shape)}
    if isinstance(spec, (Conv2d, Linear)):
        fan_in = math.prod(spec.weight_shape[1:])
        tensors["weight"] = randn(spec.weight_shape, 1.0 / math.sqrt(fan_in))
        if spec.bias:
            tensors["bias"] = randn((spec.weight_shape[0],), 0.5)
    if passes.direction_of(spec) != "forward":
        tensors["dy"] = randn(spec.output_shape)
    return tensors


def activation_names(spec: LayerSpec) -> tuple[str, ...]:
    """The tensors that change from one launch to the next (x, and dy for a backward pass);
    the weights and bias stay, as a builder may prepare them once."""
    return ("x",) if passes.direction_of(spec) == "forward" else ("x", "dy")


def new_input(spec: LayerSpec, dtype: DType | str, device: str | torch.device,
              generator: torch.Generator | None = None, name: str = "x") -> torch.Tensor:
    """New values for ``x`` (or ``dy``) alone (N(0, 1), drawn as ``make_tensors`` draws them), in NCHW."""
    dtype = get_dtype(dtype) if isinstance(dtype, str) else dtype
    if generator is None:
        generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
    shape = spec.input_shape if name == "x" else spec.output_shape
    t = torch.randn(shape, generator=generator, dtype=torch.float32)
    return t.to(device=device, dtype=dtype.torch_dtype)


def make_output(spec: LayerSpec, tensors: Tensors, layout: str | None = None) -> torch.Tensor:
    """The output buffer for ``tensors`` in ``layout`` (the input itself for an in-place ReLU): the
    pass's one result in its shape, or one flat buffer for several (``layers.passes``).

    Without ``layout`` it is read off the input's strides; pass it where the input is ambiguous
    (one channel, or 1x1 maps, is contiguous in both layouts).
    """
    x = tensors["x"]
    if isinstance(spec, ReLU) and spec.inplace:
        return x
    if layout is None:
        layout = "NHWC" if x.dim() == 4 and not x.is_contiguous() else "NCHW"
    parts = passes.result_parts(spec)
    if len(parts) > 1:
        return torch.empty(passes.output_numel(spec), dtype=x.dtype, device=x.device)
    out = torch.empty(parts[0][1], dtype=x.dtype, device=x.device)
    return out.contiguous(memory_format=memory_format(layout)) if out.dim() == 4 else out


def reference(spec: LayerSpec, tensors: Tensors) -> torch.Tensor:
    """The float64 result on the inputs' device (inputs upcast exactly from their dtype), laid out
    as the kernel's output is (several parts: one flat buffer, see ``layers.passes``)."""
    f64 = {k: v.to(torch.float64).contiguous() for k, v in tensors.items()}
    if passes.direction_of(spec) == "forward":
        return spec.reference(f64)
    return passes.pack_like(spec, passes.reference_parts(spec, f64), tensors)


def magnitude(spec: LayerSpec, tensors: Tensors) -> torch.Tensor:
    """The float64 result on the inputs' absolute values: for a sum of products (a weight
    gradient), each element's sum of |terms|, the scale its rounding error has."""
    return reference(spec, {k: v.abs() if v.is_floating_point() else v for k, v in tensors.items()})
