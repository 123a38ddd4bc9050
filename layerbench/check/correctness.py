"""Correctness of one kernel: poison the output, run, compare with the float64 reference under a
tolerance by dtype (bit-exact for results that select input values).  A pass with several results
(``layers.passes``) is compared part by part, each under its own tolerance."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch

from layerbench.check.inputs import activation_names, magnitude, make_output, make_tensors, new_input, reference
from layerbench.dtypes import DType, get_dtype, precision
from layerbench.layers import LayerSpec, is_exact, passes
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


# Every accumulation is in fp32: the error of a sum of L products grows as sqrt(L) fp32 roundings
# (a random walk) in the norm, and the largest element's by a few times that.  Weight gradients sum
# over the batch and every output position (L up to ~10^6), forward and data gradients over at most
# a few thousand products, which the table's bounds already hold.
FP32_UNIT = 2.0**-24


def part_tolerance(spec: LayerSpec, part: str, dtype: DType) -> Tolerance:
    """The tolerance of one result part: the dtype's, widened for long weight-gradient sums."""
    base = TOLERANCES[dtype.name]
    grow = math.sqrt(passes.reduction_length(spec, part)) * FP32_UNIT
    if grow * 4 <= base.rel_norm / 10:
        return base
    return Tolerance(rel_norm=base.rel_norm + 4 * grow, max_err=base.max_err + 16 * grow)


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    rel_norm: float
    max_abs: float
    max_err: float  # max |out - ref| / max |ref|
    nonfinite: int  # output elements that are NaN/inf (unwritten elements stay NaN)
    tolerance: Tolerance | None  # None: exact comparison
    message: str


def compare_output(out: torch.Tensor, ref: torch.Tensor, spec: LayerSpec, dtype: DType | str,
                   scale: torch.Tensor | None = None) -> CheckResult:
    """Compare an output with the float64 reference under the tolerance of ``dtype``; a flat buffer
    of several results part by part (the worst part is reported, by name).

    ``scale``: the reference on the inputs' absolute values (``check.inputs.magnitude``); a small
    weight gradient is then judged against the size its sums have, not only their value.
    """
    dtype = get_dtype(dtype) if isinstance(dtype, str) else dtype
    parts = passes.result_parts(spec)
    if tuple(out.shape) != tuple(ref.shape):
        return CheckResult(False, math.inf, math.inf, math.inf, -1, None,
                           f"output shape {tuple(out.shape)} != expected {tuple(ref.shape)}")
    if len(parts) == 1:
        return _compare_part(out, ref, spec, parts[0][0], dtype, scale)
    results = [(name, _compare_part(out[sl], ref[sl], spec, name, dtype,
                                    None if scale is None else scale[sl]))
               for name, sl in passes.part_slices(spec).items()]
    failed = [(name, r) for name, r in results if not r.ok]
    name, worst = failed[0] if failed else max(results, key=lambda nr: nr[1].rel_norm)
    nonfinite = sum(max(r.nonfinite, 0) for _, r in results)
    message = "; ".join(f"{n}: {r.message}" for n, r in (failed or results))
    return dataclasses.replace(worst, ok=not failed, nonfinite=nonfinite, message=message)


# A weight gradient of few elements can cancel to near zero by chance: each element sums L
# random-signed products, whose typical size is ||sum of |products| || / sqrt(L).  Its error is
# measured against that size where the value came out smaller.
SMALL_PART = 64


def _has_small_weight_part(spec: LayerSpec) -> bool:
    return any(name in ("dweight", "dbias") and math.prod(shape) <= SMALL_PART
               for name, shape in passes.result_parts(spec))


def _norm_of_reference(r: torch.Tensor, spec: LayerSpec, part: str, scale: torch.Tensor | None) -> float:
    norm = float(torch.linalg.vector_norm(r))
    if scale is None or part not in ("dweight", "dbias"):
        return norm
    typical = float(torch.linalg.vector_norm(scale.to(r.device))) / math.sqrt(passes.reduction_length(spec, part))
    return max(norm, typical)


def _compare_part(out: torch.Tensor, ref: torch.Tensor, spec: LayerSpec, part: str, dtype: DType,
                  scale: torch.Tensor | None = None) -> CheckResult:
    if tuple(out.shape) != tuple(ref.shape):
        return CheckResult(False, math.inf, math.inf, math.inf, -1, None,
                           f"output shape {tuple(out.shape)} != expected {tuple(ref.shape)}")
    o = out.detach().to(torch.float64)
    r = ref.to(o.device)
    nonfinite = int((~torch.isfinite(o)).sum())
    diff = (o - r).abs()
    ref_norm = _norm_of_reference(r, spec, part, scale)
    rel_norm = float(torch.linalg.vector_norm(o - r)) / ref_norm if ref_norm > 0 else float(diff.max())
    max_abs = float(diff.max()) if diff.numel() else 0.0
    ref_max = float(r.abs().max()) if r.numel() else 0.0
    if scale is not None and part in ("dweight", "dbias"):
        ref_max = max(ref_max, ref_norm / math.sqrt(max(r.numel(), 1)))
    max_err = max_abs / ref_max if ref_max > 0 else max_abs
    if nonfinite:
        return CheckResult(False, rel_norm, max_abs, max_err, nonfinite, None,
                           f"{nonfinite} of {o.numel()} output elements are NaN/inf (unwritten or overflow)")
    if is_exact(spec) or passes.exact_part(spec, part):
        expected = ref.to(out.dtype).to(torch.float64).to(o.device)
        wrong = int((o != expected).sum())
        msg = "exact match" if not wrong else f"{wrong} of {o.numel()} elements differ from the exact result"
        return CheckResult(wrong == 0, rel_norm, max_abs, max_err, 0, None, msg)
    tol = part_tolerance(spec, part, dtype)
    ok = rel_norm <= tol.rel_norm and max_err <= tol.max_err
    msg = (f"rel_norm {rel_norm:.3g} (tol {tol.rel_norm:g}), max_err {max_err:.3g} "
           f"(tol {tol.max_err:g}) for {dtype.name}")
    return CheckResult(ok, rel_norm, max_abs, max_err, 0, tol, msg)


class ResultCheck:
    """Results computed from fixed ``tensors`` against their float64 reference (computed once, when
    first needed), as the harness judges a kernel's output: the relaunch checks use one per input
    set, and a builder may use one to check its candidates before it keeps one."""

    def __init__(self, spec: LayerSpec, dtype: DType | str, tensors: Tensors):
        self.spec, self.tensors = spec, tensors
        self.dtype = get_dtype(dtype) if isinstance(dtype, str) else dtype
        self._expected: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def expected(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the float64 reference, the magnitude reference where a weight-gradient part is small:
        see ``compare_output``; None elsewhere, which saves a second float64 pass)."""
        if self._expected is None:
            scale = magnitude(self.spec, self.tensors) if _has_small_weight_part(self.spec) else None
            self._expected = reference(self.spec, self.tensors), scale
        return self._expected

    def __call__(self, result: torch.Tensor | dict[str, torch.Tensor]) -> CheckResult:
        """``result``: as the kernel wrote it, or each part of the spec's pass by name (``y``, ``dx``, ...)."""
        got = passes.pack_like(self.spec, result, self.tensors) if isinstance(result, dict) else result
        ref, scale = self.expected()
        return compare_output(got, ref, self.spec, self.dtype, scale)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _returned(returned: object, out: torch.Tensor, spec: LayerSpec | None, tensors: Tensors | None) -> torch.Tensor:
    """What a launch computed: ``out``, or the tensor it returned, or its returned parts laid into
    a copy of ``out`` as the kernels lay them out."""
    if isinstance(returned, torch.Tensor):
        return returned
    if isinstance(returned, dict) and spec is not None and tensors is not None:
        result = out.clone()
        parts = passes.result_parts(spec)
        if len(parts) == 1:
            return returned.get(parts[0][0], result)
        slices = passes.part_slices(spec)
        for name, t in returned.items():
            result[slices[name]] = passes.pack_part(name, t, tensors)
        return result
    return out


def _launch_once(kernel: Kernel | Built, out: torch.Tensor, dtype: DType, spec: LayerSpec | None = None,
                 tensors: Tensors | None = None) -> torch.Tensor:
    """Launch once and return what it computed, as seen by the next work on the current stream.

    Only the current stream is synchronised before the output is copied: work that a kernel
    left running on a stream of its own is not waited for, so an output it has not written yet
    reads as unwritten (the timing events on the current stream would miss that work too).
    """
    launch = as_built(kernel).launch
    with precision(dtype):
        returned = launch()
    result = _returned(returned, out, spec, tensors)
    if result.device.type == "cuda":
        torch.cuda.current_stream(result.device).synchronize()
        result = result.clone()
        torch.cuda.synchronize(result.device)
    return result


def _unwritten(result: torch.Tensor) -> int:
    return int(torch.isnan(result).sum()) if result.is_floating_point() else 0


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
    result = _launch_once(kernel, out, dtype, spec, tensors)
    checked = compare_output(result, ref, spec, dtype)
    if not checked.ok and out is not tensors["x"] and result is not None:
        return _explain_unwritten(checked, result, "")
    return checked


def _explain_unwritten(checked: CheckResult, result: torch.Tensor, when: str) -> CheckResult:
    """Name an output left (partly) unwritten: its elements still hold the NaN poison."""
    nan = _unwritten(result)
    if not nan or checked.nonfinite < 0:  # nonfinite < 0: a wrong shape, said as such
        return checked
    total = result.numel()
    if nan == total:
        what = f"output not written{when}: all {total} elements still hold the NaN it was filled with"
    else:
        what = (f"output only partly written{when}: {nan} of {total} elements still hold the NaN "
                "it was filled with (or were computed as NaN)")
    return dataclasses.replace(checked, message=what)


class CheckInputs:
    """The input sets a point's implementations are checked on, shared by all of them.

    Set 0 is the tensors the builders were given; set 1 has a new ``x`` (and ``dy`` for a backward
    pass; weights and bias stay: a builder may prepare them once, as inference does).  ``load(i)``
    writes set ``i`` into the same input tensors, so a kernel that does not read its input again is
    caught.  The float64 references are computed once, when first needed.
    """

    def __init__(self, spec: LayerSpec, dtype: DType | str, tensors: Tensors, out: torch.Tensor | None = None,
                 generator: torch.Generator | None = None):
        self.spec = spec
        self.dtype = get_dtype(dtype) if isinstance(dtype, str) else dtype
        self.tensors = tensors
        self.sets: list[dict[str, torch.Tensor]] = [{}, {}]
        for name in activation_names(spec):
            t = tensors[name]
            self.sets[0][name] = t.clone()
            self.sets[1][name] = torch.empty_like(t).copy_(new_input(spec, self.dtype, t.device, generator, name))
        self.xs = [s["x"] for s in self.sets]
        self.judges = [ResultCheck(spec, self.dtype, tensors | s) for s in self.sets]

    def load(self, i: int) -> None:
        for name, t in self.sets[i].items():
            self.tensors[name].copy_(t)

    def ref(self, i: int) -> torch.Tensor:
        return self.judges[i].expected()[0]


def check_launch(kernel: Kernel | Built, out: torch.Tensor, inputs: CheckInputs, i: int,
                 previous: int | None = None, when: str = "") -> CheckResult:
    """Load input set ``i``, poison ``out``, launch once, compare with the reference of set ``i``.

    ``previous``: the set the kernel saw before; an output that is still that set's result is
    named as not recomputed.  ``when`` says which launch this is in a message ("on launch 2").
    """
    spec, dtype = inputs.spec, inputs.dtype
    inputs.load(i)
    inplace = out is inputs.tensors["x"]
    if not inplace:
        out.fill_(math.nan)
    _sync(out.device)
    result = _launch_once(kernel, out, dtype, spec, inputs.tensors)
    checked = inputs.judges[i](result)
    if checked.ok or tuple(result.shape) != tuple(inputs.ref(i).shape):
        return checked
    if previous is not None and inputs.judges[previous](result).ok:
        return dataclasses.replace(checked, message=(
            f"output not recomputed{when}: the input changed but the output did not (it is still "
            "the result of the previous input: a cached result?)"))
    if not inplace and _unwritten(result):
        explained = _explain_unwritten(checked, result, when)
        if previous is not None and _unwritten(result) == result.numel():
            return dataclasses.replace(explained, message=(
                f"output not recomputed{when}: the input changed and the launch wrote nothing "
                f"(all {result.numel()} elements still hold the NaN the output was filled with)"))
        return explained
    return dataclasses.replace(checked, message=f"wrong{when}: {checked.message}" if when else checked.message)


def check_relaunches(kernel: Kernel | Built, out: torch.Tensor, inputs: CheckInputs) -> CheckResult:
    """Two launches: input set 0, then set 1 written into the same tensors (output poisoned
    before each).  Catches partial writes, cached results and kernels correct only once."""
    first = check_launch(kernel, out, inputs, 0)
    if not first.ok:
        return first
    second = check_launch(kernel, out, inputs, 1, previous=0,
                          when=" on launch 2 (same tensors, new input values)")
    if not second.ok and second.message.startswith("wrong"):
        return dataclasses.replace(second, message=f"correct on the first launch only: {second.message}")
    if not second.ok:
        return second
    return second if second.rel_norm > first.rel_norm else first


def check_implementation(impl: Implementation | Builder, spec: LayerSpec, dtype: DType | str,
                         layout: str, device: str | torch.device, seed: int | None = None,
                         runs: int = 2) -> CheckResult:
    """Build ``impl`` for ``spec`` on fresh random inputs and check ``runs`` launches.

    Each launch gets a freshly poisoned output, and every launch after the first new input values
    in the same input tensors: a kernel that only works on a clean buffer, leaves state behind or
    returns a stale result is caught.  Returns the worst result.
    """
    dtype = get_dtype(dtype) if isinstance(dtype, str) else dtype
    build: Callable[..., Kernel] = impl.build if isinstance(impl, Implementation) else impl
    device = torch.device(device)
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    tensors = make_tensors(spec, dtype, layout, device, gen)
    out = make_output(spec, tensors, layout)
    inputs = CheckInputs(spec, dtype, tensors, generator=gen)
    with precision(dtype):
        kernel = as_built(build(spec, dtype, layout, tensors, out)).launch
    result = check_relaunches(kernel, out, inputs) if runs >= 2 else check_launch(kernel, out, inputs, 0)
    for run in range(2, runs):
        if not result.ok:
            break
        r = check_launch(kernel, out, inputs, run % 2, previous=(run - 1) % 2,
                         when=f" on launch {run + 1} (same tensors, new input values)")
        if not r.ok or r.rel_norm > result.rel_norm:
            result = r
    assert result is not None
    return result
