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
  failing one is skipped and counted), screened hot, the fastest few timed again with the
  project's build timer (``hot_median_ms``) on torch's current stream, and the fastest is kept.
  nvmath's own ``autotune`` is not used: it flushes the L2 cache and synchronises, which is not the
  hot timing the two paths are compared by.

These calls were written from nvmath-python's source (1.0) and the H200 probe's use of them; the
GPU tests say what happened.
"""

from __future__ import annotations

from typing import Any

import torch

from layerbench.builders import Built, Kernel, Tensors, hot_median_ms
from layerbench.check.correctness import TOLERANCES
from layerbench.dtypes import DType
from layerbench.errors import Unavailable, Unsupported
from layerbench.layers import Linear

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


def build_linear_cublaslt(spec: Linear, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    """linear by the fastest of cuBLASLt's algorithms (see the module docstring)."""
    Matmul, MatmulEpilog, ComputeType = load_nvmath()
    x, w, b = tensors["x"], tensors["weight"], tensors.get("bias")
    if x.device.type != "cuda":
        raise Unsupported(f"cuBLASLt runs on CUDA tensors; x is on {x.device}")
    if not (x.is_contiguous() and w.is_contiguous() and out.is_contiguous()):
        raise Unsupported("the cuBLASLt path takes row-major x, weight and out")
    device = x.device
    current_stream = torch.cuda.current_stream
    # torch's result under the harness's precision: what every algorithm must agree with.
    expected = torch.addmm(b, x, w.t()) if b is not None else torch.mm(x, w.t())
    bound = 2 * TOLERANCES[dtype.name].rel_norm

    options: dict[str, object] = {"inplace": True}
    if dtype.name in COMPUTE_TYPES:
        options["compute_type"] = getattr(ComputeType, COMPUTE_TYPES[dtype.name])
    mm = Matmul(w, x.t(), c=out.t(), beta=0.0, options=options, stream=current_stream(device))
    try:
        if b is not None:
            algorithms = list(mm.plan(preferences={"limit": LIMIT}, epilog=MatmulEpilog.BIAS,
                                      epilog_inputs={"bias": b}, stream=current_stream(device)))
        else:
            algorithms = list(mm.plan(preferences={"limit": LIMIT}, stream=current_stream(device)))
        if not algorithms:
            raise Unsupported("cuBLASLt's heuristics returned no algorithm for this GEMM")

        def launcher(a: Any) -> Kernel:
            def launch(_alive: tuple = (mm, x, w, b, out)) -> None:
                mm.execute(algorithm=a, stream=current_stream(device))

            return launch

        failed = wrong = 0
        failures: list[str] = []
        screened: list[tuple[float, int]] = []
        for i, a in enumerate(algorithms):
            try:
                out.fill_(float("nan"))
                launcher(a)()
                torch.cuda.synchronize(device)
                err = _rel_norm(out, expected)
                if not err <= bound:
                    wrong += 1
                    failures.append(f"algorithm {describe(a)}: rel_norm {err:.3g} against torch's result")
                    continue
                screened.append((hot_median_ms(launcher(a), device, **SCREEN), i))
            except Exception as exc:  # noqa: BLE001 - one algorithm's failure is counted, the search goes on
                torch.cuda.synchronize(device)  # raises where the failure was a sticky CUDA error
                failed += 1
                failures.append(f"algorithm {i}: {type(exc).__name__}: {exc}"[:300])
        if not screened:
            raise Unsupported(f"none of cuBLASLt's {len(algorithms)} algorithms ran this GEMM correctly "
                              f"({failed} failed, {wrong} wrong): {' | '.join(failures[:3])}")
        finals = sorted((hot_median_ms(launcher(algorithms[i]), device, **FINAL), i)
                        for _, i in sorted(screened)[:FINALISTS])
        best_ms, best = finals[0]
    except BaseException:
        _free(mm)
        raise
    launch = launcher(algorithms[best])
    launch()
    details: dict[str, object] = {
        "path": "cublaslt", **describe(algorithms[best]), "heuristic_rank": best, "ms": best_ms,
        "algorithms": len(algorithms), "timed": len(screened), "failed": failed, "wrong": wrong,
        "compute_type": str(getattr(mm, "compute_type", options.get("compute_type", "default"))),
        "epilog": "BIAS" if b is not None else "none",
    }
    if failures:
        details["first_failures"] = " | ".join(failures[:3])
    return Built(launch, details)


def _free(mm: Any) -> None:
    try:
        mm.free()
    except Exception:  # noqa: BLE001 - releasing is best effort
        pass
