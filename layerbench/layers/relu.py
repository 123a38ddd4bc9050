"""ReLU: the spec, its costs, the float64 reference and the sweep shorthands."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from layerbench.layers.common import check_bool, check_fits_int32, check_int
from layerbench.layers.passes import check_direction, total_elements, total_flops

SHORTHANDS: dict[str, tuple[str, ...]] = {"size": ("height", "width")}


@dataclass(frozen=True)
class ReLU:
    """max(x, 0) over an NCHW-shaped tensor, out of place or in place."""

    batch: int
    channels: int
    height: int = 1
    width: int = 1
    inplace: bool = False
    direction: str = "forward"

    layer: ClassVar[str] = "relu"
    dtypes: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "bf16")
    # Elementwise over a dense tensor: the memory layout does not change the work.
    layouts: ClassVar[tuple[str, ...]] = ("NCHW",)
    exact: ClassVar[bool] = True  # selects input values: bit-for-bit equal to the reference

    def __post_init__(self) -> None:
        for f in ("batch", "channels", "height", "width"):
            check_int(self, f)
        check_bool(self, "inplace")
        check_fits_int32(self, "input", self.input_shape)
        check_direction(self)
        if self.inplace and self.direction != "forward":
            raise ValueError(f"ReLU.inplace applies to the forward pass only; direction {self.direction} "
                             "writes a new tensor (set inplace to false)")

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, self.height, self.width)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return self.input_shape

    @property
    def numel(self) -> int:
        return math.prod(self.input_shape)

    @property
    def flops(self) -> int:
        """One compare (or select) per element and pass."""
        return total_flops(self)

    def pass_cost(self, single: str) -> tuple[int, int]:
        """(FLOPs, elements read or written at least once) of one pass: the backward reads x and dy."""
        return self.numel, (2 if single == "forward" else 3) * self.numel

    @property
    def parameters(self) -> int:
        return 0

    def min_bytes(self, itemsize: int) -> int:
        return itemsize * total_elements(self)

    def reference(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The float64 result (inputs upcast exactly from their dtype).  torch.relu, not clamp_min:
        the same values, but autograd differentiates it as torch does (dx = 0 at x = 0, dy at NaN),
        where clamp_min passes dy at x = 0."""
        return torch.relu(tensors["x"])
