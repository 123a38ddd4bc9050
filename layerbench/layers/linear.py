"""Fully connected layer: the spec, its costs, the float64 reference and the thesis's workload formula."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from layerbench.layers.common import check_bool, check_fits_int32, check_int
from layerbench.layers.passes import check_direction, total_elements, total_flops, weighted_pass_cost

SHORTHANDS: dict[str, tuple[str, ...]] = {}


@dataclass(frozen=True)
class Linear:
    """y = x @ W^T + b with x (batch, in_features), W (out_features, in_features)."""

    batch: int
    in_features: int
    out_features: int
    bias: bool = True
    direction: str = "forward"

    layer: ClassVar[str] = "linear"
    dtypes: ClassVar[tuple[str, ...]] = ("fp32", "tf32", "fp16", "bf16")
    layouts: ClassVar[tuple[str, ...]] = ("NCHW",)  # row-major; kept as one name for all layers

    def __post_init__(self) -> None:
        for f in ("batch", "in_features", "out_features"):
            check_int(self, f)
        check_bool(self, "bias")
        for what, shape in (("input", self.input_shape), ("weight", self.weight_shape),
                            ("output", self.output_shape)):
            check_fits_int32(self, what, shape)
        check_direction(self)

    @property
    def input_shape(self) -> tuple[int, int]:
        return (self.batch, self.in_features)

    @property
    def weight_shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def output_shape(self) -> tuple[int, int]:
        return (self.batch, self.out_features)

    @property
    def flops(self) -> int:
        """Multiply-adds as 2 FLOPs plus the bias adds, summed over the passes of ``direction``."""
        return total_flops(self)

    def pass_cost(self, single: str) -> tuple[int, int]:
        """(FLOPs, elements read or written at least once) of one pass."""
        return weighted_pass_cost(self, single, self.batch * self.out_features * self.in_features)

    @property
    def parameters(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)

    def min_bytes(self, itemsize: int) -> int:
        return itemsize * total_elements(self)

    @property
    def thesis_parameters(self) -> int:
        """(in + 1) * out, the thesis's formula for fully connected layers.

        The thesis's table prints 4,100,096 for 4096 -> 1000, which is (out + 1) * in; its formula,
        which matches its Large and Median rows, gives 4,097,000.
        """
        return (self.in_features + 1) * self.out_features

    def reference(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The float64 result (inputs upcast exactly from their dtype)."""
        return F.linear(tensors["x"], tensors["weight"], tensors.get("bias"))
