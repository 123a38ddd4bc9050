"""2-D convolution: the spec, its costs, the float64 reference and the sweep shorthands."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from layerbench.layers.common import (
    LAYOUTS_4D,
    check_bool,
    check_fits_int32,
    check_int,
    out_size,
)
from layerbench.layers.passes import check_direction, total_elements, total_flops, weighted_pass_cost

# Sweep-file shorthands for square shapes: one key sets two spec fields.  ``stride``, ``padding`` and
# ``dilation`` need none: they are fields of their own that set both axes (see Conv2d).
SHORTHANDS: dict[str, tuple[str, ...]] = {"size": ("height", "width"), "kernel": ("kernel_h", "kernel_w")}

# The per-axis fields, each with the scalar field that sets both axes and the default.
AXIS_FIELDS: dict[str, tuple[str, str, int]] = {
    "stride": ("stride_h", "stride_w", 1), "padding": ("padding_h", "padding_w", 0),
    "dilation": ("dilation_h", "dilation_w", 1)}
# Fields added after the first release: a point hashes as before while they add nothing to the
# scalar fields (equal axes, no dilation, one group), see identity_params.
NEW_FIELDS = ("stride_h", "stride_w", "padding_h", "padding_w", "dilation", "dilation_h", "dilation_w",
              "groups")


@dataclass(frozen=True)
class Conv2d:
    """2-D convolution (cross-correlation, as cuDNN and torch compute it).

    Stride, padding and dilation are per axis (``stride_h``, ``stride_w``, ...); the scalar field
    (``stride``) sets both axes and, once built, holds the common value, or None where the axes differ.
    Giving a scalar and a per-axis field that disagree is an error.  ``groups`` splits the channels
    into independent convolutions (depthwise is groups == in_channels); the weight is then
    (out_channels, in_channels / groups, kernel_h, kernel_w).
    """

    batch: int
    in_channels: int
    out_channels: int
    height: int
    width: int
    kernel_h: int
    kernel_w: int
    stride: int | None = None
    padding: int | None = None
    bias: bool = True
    stride_h: int | None = None
    stride_w: int | None = None
    padding_h: int | None = None
    padding_w: int | None = None
    dilation: int | None = None
    dilation_h: int | None = None
    dilation_w: int | None = None
    groups: int = 1
    direction: str = "forward"

    layer: ClassVar[str] = "conv2d"
    dtypes: ClassVar[tuple[str, ...]] = ("fp32", "tf32", "fp16", "bf16")
    layouts: ClassVar[tuple[str, ...]] = LAYOUTS_4D
    # How ``layerbench list layers`` shows the defaults that are None in the dataclass.
    default_text: ClassVar[dict[str, str]] = {
        "stride": "1 (both axes)", "padding": "0 (both axes)", "dilation": "1 (both axes)",
        **{f: scalar for scalar, (fh, fw, _) in AXIS_FIELDS.items() for f in (fh, fw)}}

    def __post_init__(self) -> None:
        for f in ("batch", "in_channels", "out_channels", "height", "width"):
            check_int(self, f)
        for scalar, (fh, fw, default) in AXIS_FIELDS.items():
            self._resolve_axes(scalar, fh, fw, default)
        check_bool(self, "bias")
        check_int(self, "groups")
        for f in ("in_channels", "out_channels"):
            if getattr(self, f) % self.groups:
                raise ValueError(f"Conv2d.groups must divide in_channels and out_channels, got groups "
                                 f"{self.groups} and {f} {getattr(self, f)}")
        for k, size, pad, dil in (("kernel_h", "height", "padding_h", "dilation_h"),
                                  ("kernel_w", "width", "padding_w", "dilation_w")):
            padded = getattr(self, size) + 2 * getattr(self, pad)
            d = getattr(self, dil)
            if d == 1:
                check_int(self, k, upper=padded)
            else:  # the dilated kernel, d * (k - 1) + 1 taps wide, must fit the padded input
                check_int(self, k, upper=(padded - 1) // d + 1)
        for what, shape in (("input", self.input_shape), ("weight", self.weight_shape),
                            ("output", self.output_shape)):
            check_fits_int32(self, what, shape)
        check_direction(self)

    def _resolve_axes(self, scalar: str, fh: str, fw: str, default: int) -> None:
        """Fill the per-axis fields from the scalar (or the default); the scalar becomes their common
        value, None where they differ."""
        lower = 0 if scalar == "padding" else 1
        value = getattr(self, scalar)
        if value is not None:
            check_int(self, scalar, lower=lower)
        for f in (fh, fw):
            given = getattr(self, f)
            if given is None:
                object.__setattr__(self, f, default if value is None else value)
            else:
                check_int(self, f, lower=lower)
                if value is not None and given != value:
                    raise ValueError(f"Conv2d.{f} is {given} but {scalar} (both axes) is {value}; give one")
        h, w = getattr(self, fh), getattr(self, fw)
        object.__setattr__(self, scalar, h if h == w else None)

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels

    def beyond_plain(self) -> str | None:
        """The fields that make this more than a plain convolution (one stride and one padding for
        both axes, no dilation, one group), for kernels that run only those; None when it is plain."""
        parts = []
        if self.stride is None:
            parts.append(f"stride_h {self.stride_h} != stride_w {self.stride_w}")
        if self.padding is None:
            parts.append(f"padding_h {self.padding_h} != padding_w {self.padding_w}")
        if (self.dilation_h, self.dilation_w) != (1, 1):
            parts.append(f"dilation_h {self.dilation_h}, dilation_w {self.dilation_w}")
        if self.groups != 1:
            parts.append(f"groups {self.groups}{' (depthwise)' if self.depthwise else ''}")
        return "; ".join(parts) or None

    def identity_params(self) -> dict[str, Any]:
        """The fields that identify a result (results/identity.py): all of them, less the fields added
        later while they say nothing the scalar fields do not, so that earlier points hash as before."""
        params = dataclasses.asdict(self)
        plain = (self.stride is not None and self.padding is not None and self.dilation_h == 1
                 and self.dilation_w == 1 and self.groups == 1)
        if plain:
            for f in NEW_FIELDS:
                del params[f]
        if self.direction == "forward":
            del params["direction"]
        return params

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.in_channels, self.height, self.width)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels // self.groups, self.kernel_h, self.kernel_w)

    @property
    def out_height(self) -> int:
        return out_size(self.height, self.kernel_h, self.stride_h, self.padding_h, self.dilation_h)

    @property
    def out_width(self) -> int:
        return out_size(self.width, self.kernel_w, self.stride_w, self.padding_w, self.dilation_w)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.out_channels, self.out_height, self.out_width)

    @property
    def flops(self) -> int:
        """Multiply-adds counted as 2 FLOPs, plus one add per output for the bias (forward) or
        per dy element for dbias; each output sums over its group's in_channels / groups channels.
        Summed over the passes of ``direction``."""
        return total_flops(self)

    def pass_cost(self, single: str) -> tuple[int, int]:
        """(FLOPs, elements read or written at least once) of one pass."""
        macs = math.prod(self.output_shape) * (self.in_channels // self.groups) * self.kernel_h * self.kernel_w
        return weighted_pass_cost(self, single, macs)

    @property
    def parameters(self) -> int:
        return math.prod(self.weight_shape) + (self.out_channels if self.bias else 0)

    def min_bytes(self, itemsize: int) -> int:
        """Each input, gradient and parameter read once, each result written once, per pass."""
        return itemsize * total_elements(self)

    # The thesis's workload figures (docs/thesis-experiments.md, convolution layers), as published for
    # groups == 1.  With groups, each output channel connects to in_channels / groups input channels,
    # so thesis_parameters (and thesis_connections with it) counts in_channels / groups in place of
    # in_channels; stride, padding and dilation enter through the output size only.
    @property
    def thesis_parameters(self) -> int:
        return (self.kernel_w * self.kernel_h + 1) * (self.in_channels // self.groups) * self.out_channels

    @property
    def thesis_input_size(self) -> int:
        return self.width * self.height * self.batch * self.out_channels

    @property
    def thesis_connections(self) -> int:
        return self.thesis_parameters * self.out_width * self.out_height

    def reference(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The float64 result (inputs upcast exactly from their dtype)."""
        return F.conv2d(tensors["x"], tensors["weight"], tensors.get("bias"), stride=(self.stride_h, self.stride_w),
                        padding=(self.padding_h, self.padding_w),
                        dilation=(self.dilation_h, self.dilation_w), groups=self.groups)
