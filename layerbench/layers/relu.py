"""ReLU: the spec, its costs, the float64 reference and the sweep shorthands."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from layerbench.layers.common import check_bool, check_fits_int32, check_int

SHORTHANDS: dict[str, tuple[str, ...]] = {"size": ("height", "width")}


@dataclass(frozen=True)
class ReLU:
    """max(x, 0) over an NCHW-shaped tensor, out of place or in place."""

    batch: int
    channels: int
    height: int = 1
    width: int = 1
    inplace: bool = False

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
        return self.numel

    @property
    def parameters(self) -> int:
        return 0

    def min_bytes(self, itemsize: int) -> int:
        return 2 * itemsize * self.numel

    def reference(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The float64 result (inputs upcast exactly from their dtype)."""
        return torch.clamp_min(tensors["x"], 0.0)
