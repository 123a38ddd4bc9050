"""Correctness tools for any implementation, exported for users' own tests.

* ``make_tensors`` / ``make_output``: fresh random inputs (never zeros) and the output buffer.
* ``reference``: the float64 torch result of a spec on given inputs.
* ``check_kernel`` / ``check_implementation``: poison the output with NaN, run, compare with the
  float64 reference by relative norm and normalised max error, with tolerances by dtype.
* Hypothesis strategies (``conv2d_specs``, ``pool2d_specs``, ``relu_specs``, ``linear_specs``,
  ``specs``) that draw valid specs within size bounds.

A user validates a kernel with::

    from layerbench.testing import check_implementation
    result = check_implementation(my_build, spec, "fp16", "NHWC", "cuda")
    assert result.ok, result.message
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from hypothesis import strategies as st

from layerbench.dtypes import DType, get_dtype, precision
from layerbench.registry import Builder, Implementation, Kernel, Tensors
from layerbench.specs import Conv2d, LayerSpec, Linear, Pool2d, ReLU


@dataclass(frozen=True)
class Tolerance:
    rel_norm: float  # ||out - ref|| / ||ref||
    max_err: float  # max |out - ref| / max |ref|


# Products accumulate in fp32 in every kernel; the bound is set by how the inputs and the output
# are rounded: fp32 ~1e-7 per op, tf32 keeps 10 mantissa bits, fp16 10 bits, bf16 7 bits.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(rel_norm=1e-5, max_err=1e-4),
    "tf32": Tolerance(rel_norm=3e-3, max_err=1e-2),
    "fp16": Tolerance(rel_norm=2e-3, max_err=5e-3),
    "bf16": Tolerance(rel_norm=1.5e-2, max_err=3e-2),
}


def is_exact(spec: LayerSpec) -> bool:
    """ReLU and max pooling select input values: their output must equal the reference bit for bit."""
    return isinstance(spec, ReLU) or (isinstance(spec, Pool2d) and spec.method == "max")


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
    """Fresh random inputs: x ~ N(0, 1); weights ~ N(0, 1/fan_in) so outputs stay O(1) in fp16."""
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
    return tensors


def make_output(spec: LayerSpec, tensors: Tensors, layout: str | None = None) -> torch.Tensor:
    """The output buffer for ``tensors`` in ``layout`` (the input itself for an in-place ReLU).

    Without ``layout`` it is read off the input's strides; pass it where the input is ambiguous
    (one channel, or 1x1 maps, is contiguous in both layouts).
    """
    x = tensors["x"]
    if isinstance(spec, ReLU) and spec.inplace:
        return x
    if layout is None:
        layout = "NHWC" if x.dim() == 4 and not x.is_contiguous() else "NCHW"
    out = torch.empty(spec.output_shape, dtype=x.dtype, device=x.device)
    return out.contiguous(memory_format=memory_format(layout)) if out.dim() == 4 else out


def reference(spec: LayerSpec, tensors: Tensors) -> torch.Tensor:
    """The float64 result on the inputs' device (inputs upcast exactly from their dtype)."""
    t = {k: v.to(torch.float64).contiguous() for k, v in tensors.items()}
    x = t["x"]
    if isinstance(spec, Conv2d):
        return F.conv2d(x, t["weight"], t.get("bias"), stride=spec.stride, padding=spec.padding)
    if isinstance(spec, Pool2d):
        if spec.method == "max":
            return F.max_pool2d(x, spec.kernel, spec.stride, spec.padding)
        return F.avg_pool2d(x, spec.kernel, spec.stride, spec.padding, count_include_pad=True)
    if isinstance(spec, ReLU):
        return torch.clamp_min(x, 0.0)
    if isinstance(spec, Linear):
        return F.linear(x, t["weight"], t.get("bias"))
    raise TypeError(f"unknown spec type {type(spec).__name__}")


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    rel_norm: float
    max_abs: float
    max_err: float  # max |out - ref| / max |ref|
    nonfinite: int  # output elements that are NaN/inf (unwritten elements stay NaN)
    tolerance: Tolerance | None  # None: exact comparison
    message: str


def compare(out: torch.Tensor, ref: torch.Tensor, spec: LayerSpec, dtype: DType | str) -> CheckResult:
    """Compare an output with the float64 reference under the tolerance of ``dtype``."""
    dtype = get_dtype(dtype) if isinstance(dtype, str) else dtype
    if tuple(out.shape) != tuple(ref.shape):
        return CheckResult(False, math.inf, math.inf, math.inf, -1, None,
                           f"output shape {tuple(out.shape)} != expected {tuple(ref.shape)}")
    o = out.detach().to(torch.float64)
    r = ref.to(o.device)
    nonfinite = int((~torch.isfinite(o)).sum())
    diff = (o - r).abs()
    ref_norm = float(torch.linalg.vector_norm(r))
    rel_norm = float(torch.linalg.vector_norm(o - r)) / ref_norm if ref_norm > 0 else float(diff.max())
    max_abs = float(diff.max()) if diff.numel() else 0.0
    ref_max = float(r.abs().max()) if r.numel() else 0.0
    max_err = max_abs / ref_max if ref_max > 0 else max_abs
    if nonfinite:
        return CheckResult(False, rel_norm, max_abs, max_err, nonfinite, None,
                           f"{nonfinite} of {o.numel()} output elements are NaN/inf (unwritten or overflow)")
    if is_exact(spec):
        expected = ref.to(out.dtype).to(torch.float64).to(o.device)
        wrong = int((o != expected).sum())
        msg = "exact match" if not wrong else f"{wrong} of {o.numel()} elements differ from the exact result"
        return CheckResult(wrong == 0, rel_norm, max_abs, max_err, 0, None, msg)
    tol = TOLERANCES[dtype.name]
    ok = rel_norm <= tol.rel_norm and max_err <= tol.max_err
    msg = (f"rel_norm {rel_norm:.3g} (tol {tol.rel_norm:g}), max_err {max_err:.3g} "
           f"(tol {tol.max_err:g}) for {dtype.name}")
    return CheckResult(ok, rel_norm, max_abs, max_err, 0, tol, msg)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_kernel(kernel: Kernel, out: torch.Tensor, spec: LayerSpec, dtype: DType | str,
                 tensors: Tensors, x_fresh: torch.Tensor | None = None,
                 ref: torch.Tensor | None = None) -> CheckResult:
    """Poison ``out``, run ``kernel`` once, compare with the float64 reference of ``tensors``.

    For an in-place ReLU (``out is tensors["x"]``) pass ``x_fresh``, the input values to restore
    before the run; the reference is computed from them.  ``ref``, when given, is that float64
    reference computed beforehand (a sweep checks several implementations on the same inputs).
    """
    dtype = get_dtype(dtype) if isinstance(dtype, str) else dtype
    if out is tensors["x"]:
        if x_fresh is None:
            raise ValueError("x_fresh is required when the kernel writes its input in place")
        out.copy_(x_fresh)
        ref = reference(spec, {"x": x_fresh}) if ref is None else ref
    else:
        ref = reference(spec, tensors) if ref is None else ref
        out.fill_(math.nan)
    _sync(out.device)
    with precision(dtype):
        returned = kernel()
    _sync(out.device)
    return compare(returned if isinstance(returned, torch.Tensor) else out, ref, spec, dtype)


def check_implementation(impl: Implementation | Builder, spec: LayerSpec, dtype: DType | str,
                         layout: str, device: str | torch.device, seed: int | None = None,
                         runs: int = 2) -> CheckResult:
    """Build ``impl`` for ``spec`` on fresh random inputs and check ``runs`` launches.

    Each launch gets a freshly poisoned output; the second one catches kernels that only work
    on a clean buffer or leave state behind.  Returns the worst result.
    """
    dtype = get_dtype(dtype) if isinstance(dtype, str) else dtype
    build: Callable[..., Kernel] = impl.build if isinstance(impl, Implementation) else impl
    device = torch.device(device)
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    tensors = make_tensors(spec, dtype, layout, device, gen)
    x_fresh = tensors["x"].clone() if isinstance(spec, ReLU) and spec.inplace else None
    out = make_output(spec, tensors, layout)
    with precision(dtype):
        kernel = build(spec, dtype, layout, tensors, out)
    result = None
    for _ in range(runs):
        r = check_kernel(kernel, out, spec, dtype, tensors, x_fresh)
        if result is None or not r.ok or r.rel_norm > result.rel_norm:
            result = r
        if not r.ok:
            break
    assert result is not None
    return result


# ---------------------------------------------------------------- hypothesis strategies


@st.composite
def conv2d_specs(draw: st.DrawFn, max_batch: int = 2, max_channels: int = 8, max_hw: int = 12,
                 max_kernel: int = 5, max_stride: int = 4, max_padding: int = 2) -> Conv2d:
    h = draw(st.integers(1, max_hw))
    w = draw(st.integers(1, max_hw))
    padding = draw(st.integers(0, max_padding))
    kh = draw(st.integers(1, min(max_kernel, h + 2 * padding)))
    kw = draw(st.integers(1, min(max_kernel, w + 2 * padding)))
    return Conv2d(batch=draw(st.integers(1, max_batch)),
                  in_channels=draw(st.integers(1, max_channels)),
                  out_channels=draw(st.integers(1, max_channels)),
                  height=h, width=w, kernel_h=kh, kernel_w=kw,
                  stride=draw(st.integers(1, max_stride)), padding=padding,
                  bias=draw(st.booleans()))


@st.composite
def pool2d_specs(draw: st.DrawFn, max_batch: int = 2, max_channels: int = 8, max_hw: int = 16,
                 max_kernel: int = 4, max_stride: int = 3) -> Pool2d:
    h = draw(st.integers(1, max_hw))
    w = draw(st.integers(1, max_hw))
    kernel = draw(st.integers(1, max_kernel))
    padding = draw(st.integers(0, kernel // 2))
    if kernel > min(h, w) + 2 * padding:
        kernel = min(h, w) + 2 * padding
        padding = min(padding, kernel // 2)
    return Pool2d(batch=draw(st.integers(1, max_batch)), channels=draw(st.integers(1, max_channels)),
                  height=h, width=w, kernel=kernel, stride=draw(st.integers(1, max_stride)),
                  padding=padding, method=draw(st.sampled_from(["max", "avg"])))


@st.composite
def relu_specs(draw: st.DrawFn, max_batch: int = 3, max_channels: int = 8, max_hw: int = 16) -> ReLU:
    return ReLU(batch=draw(st.integers(1, max_batch)), channels=draw(st.integers(1, max_channels)),
                height=draw(st.integers(1, max_hw)), width=draw(st.integers(1, max_hw)),
                inplace=draw(st.booleans()))


@st.composite
def linear_specs(draw: st.DrawFn, max_batch: int = 8, max_features: int = 48) -> Linear:
    return Linear(batch=draw(st.integers(1, max_batch)),
                  in_features=draw(st.integers(1, max_features)),
                  out_features=draw(st.integers(1, max_features)), bias=draw(st.booleans()))


SPEC_STRATEGIES = {"conv2d": conv2d_specs, "pool2d": pool2d_specs, "relu": relu_specs,
                   "linear": linear_specs}


def specs(layer: str, **bounds: int) -> st.SearchStrategy:
    """A strategy of valid specs for ``layer`` within the given size bounds."""
    if layer not in SPEC_STRATEGIES:
        raise ValueError(f"layer must be one of {', '.join(SPEC_STRATEGIES)}, got {layer!r}")
    return SPEC_STRATEGIES[layer](**bounds)
