"""Layer specifications: the shape of one layer invocation, and what it costs.

Each spec is a frozen dataclass that validates itself on construction and raises
``ValueError`` naming the field and its allowed range.  Shapes are logical NCHW
(the memory layout is a separate axis of a benchmark point, see ``layouts``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Union

# Our kernels index with 32-bit integers; a tensor must stay below this many elements.
MAX_ELEMENTS = 2**31 - 1

LAYOUTS_4D = ("NCHW", "NHWC")


def _positive(spec: object, field: str, upper: int | None = None, lower: int = 1) -> None:
    value = getattr(spec, field)
    name = f"{type(spec).__name__}.{field}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < lower or (upper is not None and value > upper):
        allowed = f"{lower}..{upper}" if upper is not None else f">= {lower}"
        raise ValueError(f"{name} must be in {allowed}, got {value}")


def _bool(spec: object, field: str) -> None:
    value = getattr(spec, field)
    if not isinstance(value, bool):
        raise ValueError(f"{type(spec).__name__}.{field} must be true or false, got {value!r}")


def _fits_int32(spec: object, what: str, shape: tuple[int, ...]) -> None:
    n = 1
    for d in shape:
        n *= d
    if n > MAX_ELEMENTS:
        raise ValueError(
            f"{type(spec).__name__}: the {what} tensor {shape} has {n} elements; "
            f"at most {MAX_ELEMENTS} are allowed (kernels index with int32)"
        )


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


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
            _positive(self, f)
        _positive(self, "padding", lower=0)
        _bool(self, "bias")
        _positive(self, "kernel_h", upper=self.height + 2 * self.padding)
        _positive(self, "kernel_w", upper=self.width + 2 * self.padding)
        for what, shape in (("input", self.input_shape), ("weight", self.weight_shape),
                            ("output", self.output_shape)):
            _fits_int32(self, what, shape)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.in_channels, self.height, self.width)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels, self.kernel_h, self.kernel_w)

    @property
    def out_height(self) -> int:
        return _out_size(self.height, self.kernel_h, self.stride, self.padding)

    @property
    def out_width(self) -> int:
        return _out_size(self.width, self.kernel_w, self.stride, self.padding)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.out_channels, self.out_height, self.out_width)

    @property
    def flops(self) -> int:
        """Multiply-adds counted as 2 FLOPs, plus one add per output for the bias."""
        out = _numel(self.output_shape)
        macs = out * self.in_channels * self.kernel_h * self.kernel_w
        return 2 * macs + (out if self.bias else 0)

    @property
    def parameters(self) -> int:
        return _numel(self.weight_shape) + (self.out_channels if self.bias else 0)

    def min_bytes(self, itemsize: int) -> int:
        """Each input and parameter read once, the output written once."""
        return itemsize * (_numel(self.input_shape) + self.parameters + _numel(self.output_shape))

    # The 2016 thesis's workload figures (section A4 of shared/thesis-experiments.md).
    @property
    def thesis_parameters(self) -> int:
        return (self.kernel_w * self.kernel_h + 1) * self.in_channels * self.out_channels

    @property
    def thesis_input_size(self) -> int:
        return self.width * self.height * self.batch * self.out_channels

    @property
    def thesis_connections(self) -> int:
        return self.thesis_parameters * self.out_width * self.out_height


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

    layer: ClassVar[str] = "pool2d"
    dtypes: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "bf16")
    layouts: ClassVar[tuple[str, ...]] = LAYOUTS_4D

    def __post_init__(self) -> None:
        for f in ("batch", "channels", "height", "width", "stride"):
            _positive(self, f)
        if self.method not in POOL_METHODS:
            raise ValueError(f"Pool2d.method must be one of {', '.join(POOL_METHODS)}, got {self.method!r}")
        _positive(self, "kernel", upper=min(self.height, self.width) + 2 * max(self.padding, 0))
        # torch (and cuDNN) require each window to hold at least one real element.
        _positive(self, "padding", upper=self.kernel // 2, lower=0)
        _fits_int32(self, "input", self.input_shape)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, self.height, self.width)

    @property
    def out_height(self) -> int:
        return _out_size(self.height, self.kernel, self.stride, self.padding)

    @property
    def out_width(self) -> int:
        return _out_size(self.width, self.kernel, self.stride, self.padding)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, self.out_height, self.out_width)

    @property
    def flops(self) -> int:
        """One compare (max) or add (avg) per window element, plus the divide for avg."""
        out = _numel(self.output_shape)
        window = self.kernel * self.kernel
        return out * (window if self.method == "avg" else window - 1)

    @property
    def parameters(self) -> int:
        return 0

    def min_bytes(self, itemsize: int) -> int:
        return itemsize * (_numel(self.input_shape) + _numel(self.output_shape))


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

    def __post_init__(self) -> None:
        for f in ("batch", "channels", "height", "width"):
            _positive(self, f)
        _bool(self, "inplace")
        _fits_int32(self, "input", self.input_shape)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, self.height, self.width)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return self.input_shape

    @property
    def numel(self) -> int:
        return _numel(self.input_shape)

    @property
    def flops(self) -> int:
        return self.numel

    @property
    def parameters(self) -> int:
        return 0

    def min_bytes(self, itemsize: int) -> int:
        return 2 * itemsize * self.numel


@dataclass(frozen=True)
class Linear:
    """y = x @ W^T + b with x (batch, in_features), W (out_features, in_features)."""

    batch: int
    in_features: int
    out_features: int
    bias: bool = True

    layer: ClassVar[str] = "linear"
    dtypes: ClassVar[tuple[str, ...]] = ("fp32", "tf32", "fp16", "bf16")
    layouts: ClassVar[tuple[str, ...]] = ("NCHW",)  # row-major; kept as one name for all layers

    def __post_init__(self) -> None:
        for f in ("batch", "in_features", "out_features"):
            _positive(self, f)
        _bool(self, "bias")
        for what, shape in (("input", self.input_shape), ("weight", self.weight_shape),
                            ("output", self.output_shape)):
            _fits_int32(self, what, shape)

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
        out = self.batch * self.out_features
        return 2 * out * self.in_features + (out if self.bias else 0)

    @property
    def parameters(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)

    def min_bytes(self, itemsize: int) -> int:
        return itemsize * (_numel(self.input_shape) + self.parameters + _numel(self.output_shape))

    @property
    def thesis_parameters(self) -> int:
        """(in + 1) * out, the thesis's formula (Tables 6-9..6-11).

        The thesis's table prints 4,100,096 for 4096 -> 1000, which is (out + 1) * in; its formula,
        which matches its Large and Median rows, gives 4,097,000.
        """
        return (self.in_features + 1) * self.out_features


LayerSpec = Union[Conv2d, Pool2d, ReLU, Linear]

LAYERS: dict[str, type] = {cls.layer: cls for cls in (Conv2d, Pool2d, ReLU, Linear)}


def spec_from_dict(layer: str, params: dict[str, Any]) -> LayerSpec:
    """Build a spec from plain values (sweep files, CLI); unknown or missing keys name the field."""
    if layer not in LAYERS:
        raise ValueError(f"layer must be one of {', '.join(LAYERS)}, got {layer!r}")
    cls = LAYERS[layer]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field {', '.join(unknown)}; fields are {', '.join(sorted(fields))}")
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(params))
    if missing:
        raise ValueError(f"{cls.__name__} needs {', '.join(missing)}")
    return cls(**params)


def spec_to_dict(spec: LayerSpec) -> dict[str, Any]:
    return dataclasses.asdict(spec)
