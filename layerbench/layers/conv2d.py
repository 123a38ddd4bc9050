"""2-D convolution: the spec, its costs, the float64 reference and the sweep shorthands."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from layerbench.layers.common import (
    LAYOUTS_4D,
    check_bool,
    check_fits_int32,
    check_int,
    out_size,
)

# Sweep-file shorthands for square shapes: one key sets two spec fields.
SHORTHANDS: dict[str, tuple[str, ...]] = {"size": ("height", "width"), "kernel": ("kernel_h", "kernel_w")}


@dataclass(frozen=True)
class Conv2d:
    """2-D convolution (cross-correlation, as cuDNN and torch compute it), square stride/padding."""

    batch: int
    in_channels: int
    out_channels: int
    height: int
    width: int
    kernel_h: int
    kernel_w: int
    stride: int = 1
    padding: int = 0
    bias: bool = True

    layer: ClassVar[str] = "conv2d"
    dtypes: ClassVar[tuple[str, ...]] = ("fp32", "tf32", "fp16", "bf16")
    layouts: ClassVar[tuple[str, ...]] = LAYOUTS_4D

    def __post_init__(self) -> None:
        for f in ("batch", "in_channels", "out_channels", "height", "width", "stride"):
            check_int(self, f)
        check_int(self, "padding", lower=0)
        check_bool(self, "bias")
        check_int(self, "kernel_h", upper=self.height + 2 * self.padding)
        check_int(self, "kernel_w", upper=self.width + 2 * self.padding)
        for what, shape in (("input", self.input_shape), ("weight", self.weight_shape),
                            ("output", self.output_shape)):
            check_fits_int32(self, what, shape)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.in_channels, self.height, self.width)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels, self.kernel_h, self.kernel_w)

    @property
    def out_height(self) -> int:
        return out_size(self.height, self.kernel_h, self.stride, self.padding)

    @property
    def out_width(self) -> int:
        return out_size(self.width, self.kernel_w, self.stride, self.padding)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.out_channels, self.out_height, self.out_width)

    @property
    def flops(self) -> int:
        """Multiply-adds counted as 2 FLOPs, plus one add per output for the bias."""
        out = math.prod(self.output_shape)
        macs = out * self.in_channels * self.kernel_h * self.kernel_w
        return 2 * macs + (out if self.bias else 0)

    @property
    def parameters(self) -> int:
        return math.prod(self.weight_shape) + (self.out_channels if self.bias else 0)

    def min_bytes(self, itemsize: int) -> int:
        """Each input and parameter read once, the output written once."""
        return itemsize * (math.prod(self.input_shape) + self.parameters + math.prod(self.output_shape))

    # The thesis's workload figures (docs/thesis-experiments.md, convolution layers).
    @property
    def thesis_parameters(self) -> int:
        return (self.kernel_w * self.kernel_h + 1) * self.in_channels * self.out_channels

    @property
    def thesis_input_size(self) -> int:
        return self.width * self.height * self.batch * self.out_channels

    @property
    def thesis_connections(self) -> int:
        return self.thesis_parameters * self.out_width * self.out_height

    def reference(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The float64 result (inputs upcast exactly from their dtype)."""
        return F.conv2d(tensors["x"], tensors["weight"], tensors.get("bias"), stride=self.stride,
                        padding=self.padding)
