"""Validation and shape arithmetic shared by the layer specs.

Every check raises ``ValueError`` naming the spec's field and its allowed range.
"""

from __future__ import annotations

import math

# Our kernels index with 32-bit integers; a tensor must stay below this many elements.
MAX_ELEMENTS = 2**31 - 1

LAYOUTS_4D = ("NCHW", "NHWC")


def check_int(spec: object, field: str, upper: int | None = None, lower: int = 1) -> None:
    value = getattr(spec, field)
    name = f"{type(spec).__name__}.{field}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < lower or (upper is not None and value > upper):
        allowed = f"{lower}..{upper}" if upper is not None else f">= {lower}"
        raise ValueError(f"{name} must be in {allowed}, got {value}")


def check_bool(spec: object, field: str) -> None:
    value = getattr(spec, field)
    if not isinstance(value, bool):
        raise ValueError(f"{type(spec).__name__}.{field} must be true or false, got {value!r}")


def check_fits_int32(spec: object, what: str, shape: tuple[int, ...]) -> None:
    n = math.prod(shape)
    if n > MAX_ELEMENTS:
        raise ValueError(
            f"{type(spec).__name__}: the {what} tensor {shape} has {n} elements; "
            f"at most {MAX_ELEMENTS} are allowed (kernels index with int32)"
        )


def out_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
