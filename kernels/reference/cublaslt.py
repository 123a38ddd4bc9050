"""linear through cuBLASLt's candidate algorithms, searched with nvmath-python (optional).

``nvmath-python`` (extra ``layerbench[cudnn]``, GPU only) is imported on first use; where it is
missing, ``build_linear_cublaslt`` raises ``Unavailable`` and implementation "cublas" keeps
torch's cuBLAS call, saying so in the record.

torch's ``addmm`` asks cuBLASLt's heuristics for one algorithm and runs it; nothing searches the
others, so on some GEMMs the reference may be short of cuBLASLt's best.  Here:

* ``Matmul(W, x^T, c=out^T, beta=0, options={"inplace": True, "compute_type": ...})``: the
  column-major view of the row-major ``out`` (batch x out_features) is
  ``out^T = W @ x^T`` (out_features x batch), written in place into the harness's ``out``;
* compute type: ``COMPUTE_32F`` for fp32 (no TF32), ``COMPUTE_32F_FAST_TF32`` for tf32, nvmath's
  default (fp32 accumulation) for fp16 and bf16;
* ``plan(preferences={"limit": 64})`` with the ``BIAS`` epilogue (the bias vector of length
  out_features, added along the rows of ``out^T``) where the spec has a bias;
* every algorithm returned is run once (synchronised) and compared with torch's result (a wrong or
  failing one is skipped and counted), screened, the fastest few timed again with the
  project's build timer (``selection_ms``) on torch's current stream, and the fastest is kept.
  nvmath's own ``autotune`` is not used: it is not the timer the two paths are compared by.

The backward passes search the same way, each GEMM on column-major views of the row-major
tensors, written in place: dx = dy @ W as ``dx^T = W^T @ dy^T``; dW = dy^T @ x as
``dW^T = x^T @ dy``, with the bias gradient (dy summed over the batch, the GEMM's k) from the
``BGRADB`` epilogue where the spec has a bias.  nvmath allocates that epilogue's output at each
``execute`` and returns it; the kernel returns it as the ``dbias`` part (the builder contract lets a
library path return a part it allocates), so no copy kernel runs.

These calls were written from nvmath-python's source (1.0) and the H200 probe's use of them; the
GPU tests say what happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from layerbench.builders import Built, Kernel, Tensors, selection_ms
from layerbench.check.correctness import TOLERANCES
from layerbench.dtypes import DType
from layerbench.errors import Unavailable, Unsupported
from layerbench.layers import Linear
from layerbench.layers.passes import split_output

PACKAGE = "nvmath-python"
LIMIT = 64  # algorithms asked of cuBLASLt's heuristics
FINALISTS = 4
SCREEN = {"warmup": 1, "reps": 3}
FINAL = {"warmup": 2, "reps": 10}
COMPUTE_TYPES = {"fp32": "COMPUTE_32F", "tf32": "COMPUTE_32F_FAST_TF32"}  # fp16, bf16: nvmath's default


def load_nvmath() -> tuple[Any, Any, Any]:
    """(Matmul, MatmulEpilog, ComputeType) from nvmath-python, or ``Unavailable`` saying why."""
    try:
        from nvmath.linalg.advanced import Matmul, MatmulEpilog  # lazy: optional dependency (nvmath-python)
    except Exception as exc:  # noqa: BLE001 - ImportError, or a CUDA library it failed to load
        raise Unavailable(f"{PACKAGE} is not importable ({type(exc).__name__}: {exc}); "
                          "it comes with `pip install 'layerbench[cudnn]'`") from exc
    try:
        from nvmath.bindings.cublas import ComputeType  # lazy: optional dependency (nvmath-python)
    except Exception as exc:  # noqa: BLE001
        raise Unavailable(f"{PACKAGE} has no cublas.ComputeType ({type(exc).__name__}: {exc})") from exc
    return Matmul, MatmulEpilog, ComputeType


def describe(algorithm: Any) -> dict[str, object]:
    """What the record says of a cuBLASLt algorithm (attributes that cannot be read are left out)."""
    out: dict[str, object] = {}
    for attr in ("algorithm_id", "tile", "stages", "split_k"):
        try:
            value = getattr(algorithm, attr)
        except Exception:  # noqa: BLE001 - informative only
            continue
        out[attr] = value if isinstance(value, (int, float, str)) else str(value)
    return out


def _rel_norm(y: torch.Tensor, expected: torch.Tensor) -> float:
    e = expected.double()
    return float((y.double() - e).norm() / e.norm().clamp_min(1e-30))


def _cuda_row_major(what: str, **named: torch.Tensor) -> torch.device:
    """The device of the tensors, or ``Unsupported`` unless all are row-major on CUDA."""
    if any(t.device.type != "cuda" for t in named.values()):
        raise Unsupported(f"cuBLASLt runs on CUDA tensors; x is on {named['x'].device}")
    if not all(t.is_contiguous() for t in named.values()):
        raise Unsupported(f"the cuBLASLt path takes row-major {what}")
    return named["x"].device


def _options(dtype: DType, ComputeType: Any) -> dict[str, object]:
    options: dict[str, object] = {"inplace": True}
    if dtype.name in COMPUTE_TYPES:
        options["compute_type"] = getattr(ComputeType, COMPUTE_TYPES[dtype.name])
    return options


@dataclass(frozen=True)
class Gemm:
    """One GEMM to search: nvmath's ``Matmul``, its options, and how its results are checked.

    ``read(r)`` gives the result parts from what ``execute`` returned (``r``), to be compared with
    torch's ``expected``; ``poison`` are the outputs filled with NaN before each checked run;
    ``returns(r)`` is what the kernel returns; ``details`` go into the record.
    """

    mm: Any
    options: dict[str, object]
    plan: dict[str, Any]
    expected: dict[str, torch.Tensor]
    read: Callable[[object], dict[str, torch.Tensor]]
    poison: tuple[torch.Tensor, ...]
    returns: Callable[[object], object]
    details: dict[str, object]


def _fastest_algorithm(gemm: Gemm, dtype: DType, device: torch.device) -> Built:
    """Run every algorithm of ``mm.plan(**gemm.plan)`` once and check each result part against
    torch's; screen the good ones, time the fastest few again and keep the fastest.  ``mm`` is
    freed on failure."""
    mm, returns = gemm.mm, gemm.returns  # the launch holds these, not torch's results in ``gemm``
    current_stream = torch.cuda.current_stream
    bound = 2 * TOLERANCES[dtype.name].rel_norm
    try:
        algorithms = list(mm.plan(preferences={"limit": LIMIT}, stream=current_stream(device), **gemm.plan))
        if not algorithms:
            raise Unsupported("cuBLASLt's heuristics returned no algorithm for this GEMM")

        def launcher(a: Any) -> Kernel:
            def launch(_alive: tuple = (mm,)) -> object:
                return returns(mm.execute(algorithm=a, stream=current_stream(device)))

            return launch

        failed = wrong = 0
        failures: list[str] = []
        screened: list[tuple[float, int]] = []
        for i, a in enumerate(algorithms):
            try:
                for t in gemm.poison:
                    t.fill_(float("nan"))
                result = mm.execute(algorithm=a, stream=current_stream(device))
                torch.cuda.synchronize(device)
                errors = {k: _rel_norm(t, gemm.expected[k]) for k, t in gemm.read(result).items()}
                if not all(e <= bound for e in errors.values()):
                    wrong += 1
                    failures.append(f"algorithm {describe(a)}: rel_norm {errors} against torch's result")
                    continue
                screened.append((selection_ms(launcher(a), device, **SCREEN), i))
            except Exception as exc:  # noqa: BLE001 - one algorithm's failure is counted, the search goes on
                torch.cuda.synchronize(device)  # raises where the failure was a sticky CUDA error
                failed += 1
                failures.append(f"algorithm {i}: {type(exc).__name__}: {exc}"[:300])
        if not screened:
            raise Unsupported(f"none of cuBLASLt's {len(algorithms)} algorithms ran this GEMM correctly "
                              f"({failed} failed, {wrong} wrong): {' | '.join(failures[:3])}")
        finals = sorted((selection_ms(launcher(algorithms[i]), device, **FINAL), i)
                        for _, i in sorted(screened)[:FINALISTS])
        best_ms, best = finals[0]
    except BaseException:
        _free(mm)
        raise
    launch = launcher(algorithms[best])
    launch()
    out: dict[str, object] = {
        "path": "cublaslt", **describe(algorithms[best]), "heuristic_rank": best, "search_ms": best_ms,
        "algorithms": len(algorithms), "timed": len(screened), "failed": failed, "wrong": wrong,
        "compute_type": str(getattr(mm, "compute_type", gemm.options.get("compute_type", "default"))),
        **gemm.details,
    }
    if failures:
        out["first_failures"] = " | ".join(failures[:3])
    return Built(launch, out)


def build_linear_cublaslt(spec: Linear, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    """linear by the fastest of cuBLASLt's algorithms (see the module docstring)."""
    Matmul, MatmulEpilog, ComputeType = load_nvmath()
    x, w, b = tensors["x"], tensors["weight"], tensors.get("bias")
    device = _cuda_row_major("x, weight and out", x=x, weight=w, out=out)
    # torch's result under the harness's precision: what every algorithm must agree with.
    expected = torch.addmm(b, x, w.t()) if b is not None else torch.mm(x, w.t())
    options = _options(dtype, ComputeType)
    mm = Matmul(w, x.t(), c=out.t(), beta=0.0, options=options, stream=torch.cuda.current_stream(device))
    plan = {"epilog": MatmulEpilog.BIAS, "epilog_inputs": {"bias": b}} if b is not None else {}
    return _fastest_algorithm(Gemm(mm, options, plan, {"out": expected}, lambda _: {"out": out}, (out,),
                                   lambda _: None, {"epilog": "BIAS" if b is not None else "none"}), dtype, device)


def build_linear_backward_data_cublaslt(spec: Linear, dtype: DType, layout: str, tensors: Tensors,
                                        out: torch.Tensor) -> Built:
    """dx = dy @ W by the fastest of cuBLASLt's algorithms: ``dx^T = W^T @ dy^T`` in column-major
    views of the row-major tensors, written in place into ``out``."""
    Matmul, _, ComputeType = load_nvmath()
    x, w, dy = tensors["x"], tensors["weight"], tensors["dy"]
    device = _cuda_row_major("x, weight, dy and out", x=x, weight=w, dy=dy, out=out)
    expected = torch.mm(dy, w)
    options = _options(dtype, ComputeType)
    mm = Matmul(w.t(), dy.t(), c=out.t(), beta=0.0, options=options, stream=torch.cuda.current_stream(device))
    return _fastest_algorithm(Gemm(mm, options, {}, {"dx": expected}, lambda _: {"dx": out}, (out,), lambda _: None,
                                   {"epilog": "none"}), dtype, device)


def build_linear_backward_weight_cublaslt(spec: Linear, dtype: DType, layout: str, tensors: Tensors,
                                          out: torch.Tensor) -> Built:
    """dW = dy^T @ x by the fastest of cuBLASLt's algorithms: ``dW^T = x^T @ dy`` in column-major
    views, written in place into out's dweight; with a bias, the ``BGRADB`` epilogue sums dy (the B
    operand) over the GEMM's k (the batch) into dbias, in a vector that nvmath allocates at each
    execute and the kernel returns (``{"dbias": ...}``, as the builder contract allows)."""
    Matmul, MatmulEpilog, ComputeType = load_nvmath()
    x, dy = tensors["x"], tensors["dy"]
    views = split_output(spec, out, layout)
    dw = views["dweight"]
    device = _cuda_row_major("x, dy and dweight", x=x, dy=dy, dweight=dw)
    expected = {"dweight": torch.mm(dy.t(), x)}
    options = _options(dtype, ComputeType)
    mm = Matmul(x.t(), dy, c=dw.t(), beta=0.0, options=options, stream=torch.cuda.current_stream(device))
    if not spec.bias:
        return _fastest_algorithm(Gemm(mm, options, {}, expected, lambda _: {"dweight": dw}, (dw,), lambda _: None,
                                       {"epilog": "none"}), dtype, device)
    expected["dbias"] = dy.sum(0)
    return _fastest_algorithm(Gemm(mm, options, {"epilog": MatmulEpilog.BGRADB}, expected,
                                   lambda r: {"dweight": dw, "dbias": _bgrad(r)}, (dw,),
                                   lambda r: {"dbias": _bgrad(r)}, {"epilog": "BGRADB"}), dtype, device)


def _bgrad(result: object) -> torch.Tensor:
    """The bias gradient among the outputs of ``execute`` with the BGRADB epilogue: (result, aux)."""
    _, aux = result  # type: ignore[misc]
    return aux["bgradb"]


def _free(mm: Any) -> None:
    try:
        mm.free()
    except Exception:  # noqa: BLE001 - releasing is best effort
        pass
