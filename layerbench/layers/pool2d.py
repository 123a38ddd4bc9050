"""2-D max and average pooling: the spec, its costs, the float64 reference and the sweep shorthands."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from layerbench.layers.common import LAYOUTS_4D, check_fits_int32, check_int, out_size
from layerbench.layers.passes import check_direction, total_elements, total_flops

SHORTHANDS: dict[str, tuple[str, ...]] = {"size": ("height", "width")}

POOL_METHODS = ("max", "avg")


@dataclass(frozen=True)
class Pool2d:
    """2-D max or average pooling, square window, floor output size.

    Average pooling counts padded zeros in the divisor (torch's default
    ``count_include_pad=True``): every window divides by ``kernel * kernel``.
    """

    batch: int
    channels: int
    height: int
    width: int
    kernel: int
    stride: int
    padding: int = 0
    method: str = "max"
    direction: str = "forward"

    layer: ClassVar[str] = "pool2d"
    dtypes: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "bf16")
    layouts: ClassVar[tuple[str, ...]] = LAYOUTS_4D

    def __post_init__(self) -> None:
        for f in ("batch", "channels", "height", "width", "stride"):
            check_int(self, f)
        if self.method not in POOL_METHODS:
            raise ValueError(f"Pool2d.method must be one of {', '.join(POOL_METHODS)}, got {self.method!r}")
        check_int(self, "kernel", upper=min(self.height, self.width) + 2 * max(self.padding, 0))
        # torch (and cuDNN) require each window to hold at least one real element.
        check_int(self, "padding", upper=self.kernel // 2, lower=0)
        check_fits_int32(self, "input", self.input_shape)
        check_direction(self)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, self.height, self.width)

    @property
    def out_height(self) -> int:
        return out_size(self.height, self.kernel, self.stride, self.padding)

    @property
    def out_width(self) -> int:
        return out_size(self.width, self.kernel, self.stride, self.padding)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, self.out_height, self.out_width)

    @property
    def flops(self) -> int:
        """Forward: one compare (max) or add (avg) per window element, plus the divide for avg;
        backward: max finds each window's winner again and adds its gradient, avg adds each window's
        share to every element.  Summed over the passes of ``direction``."""
        return total_flops(self)

    def pass_cost(self, single: str) -> tuple[int, int]:
        """(FLOPs, elements read or written at least once) of one pass."""
        out = math.prod(self.output_shape)
        x = math.prod(self.input_shape)
        window = self.kernel * self.kernel
        if single == "forward":
            return out * (window if self.method == "avg" else window - 1), x + out
        if self.method == "max":  # x again (to find the winners), dy, dx
            return out * window, x + out + x
        return out * window, out + x  # dy, dx

    @property
    def parameters(self) -> int:
        return 0

    def min_bytes(self, itemsize: int) -> int:
        return itemsize * total_elements(self)

    @property
    def exact(self) -> bool:
        """Max pooling selects input values: its output must equal the reference bit for bit."""
        return self.method == "max" and self.direction == "forward"

    def reference(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The float64 result (inputs upcast exactly from their dtype)."""
        x = tensors["x"]
        if self.method == "max":
            return F.max_pool2d(x, self.kernel, self.stride, self.padding)
        return F.avg_pool2d(x, self.kernel, self.stride, self.padding, count_include_pad=True)
