"""Correctness of one kernel: poison the output, run, compare with the float64 reference under a
tolerance by dtype (bit-exact for layers that select input values)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from layerbench.check.inputs import make_output, make_tensors, reference
from layerbench.dtypes import DType, get_dtype, precision
from layerbench.layers import LayerSpec, ReLU, is_exact
from layerbench.builders import Built, Kernel, Tensors, as_built
from layerbench.registry import Builder, Implementation


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


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    rel_norm: float
    max_abs: float
    max_err: float  # max |out - ref| / max |ref|
    nonfinite: int  # output elements that are NaN/inf (unwritten elements stay NaN)
    tolerance: Tolerance | None  # None: exact comparison
    message: str


def compare_output(out: torch.Tensor, ref: torch.Tensor, spec: LayerSpec, dtype: DType | str) -> CheckResult:
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


def check_kernel(kernel: Kernel | Built, out: torch.Tensor, spec: LayerSpec, dtype: DType | str,
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
    launch = as_built(kernel).launch
    with precision(dtype):
        returned = launch()
    _sync(out.device)
    return compare_output(returned if isinstance(returned, torch.Tensor) else out, ref, spec, dtype)


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
        kernel = as_built(build(spec, dtype, layout, tensors, out)).launch
    result = None
    for _ in range(runs):
        r = check_kernel(kernel, out, spec, dtype, tensors, x_fresh)
        if result is None or not r.ok or r.rel_norm > result.rel_norm:
            result = r
        if not r.ok:
            break
    assert result is not None
    return result
