"""Implementation "cublas": the linear layer's library reference, run by cuBLAS / cuBLASLt.

=========  ================  ===============================================================
layer      library that runs how
=========  ================  ===============================================================
linear     cuBLAS / cuBLASLt the faster, timed hot in build, of (1) torch's call:
                             ``torch.addmm(bias, x, W.t(), out=out)`` (``torch.mm`` without a
                             bias), written into the harness's ``out``, and (2) the fastest of
                             cuBLASLt's candidate algorithms, bias in the epilogue, searched
                             with the optional ``nvmath-python`` (``kernels.reference.cublaslt``)
=========  ================  ===============================================================

cuDNN's legacy API has no matrix product, so no "cudnn" linear exists; this is the honest name
for the library that torch's CUDA matmul calls.  torch picks the cuBLAS entry point: cuBLASLt with
the bias fused into the GEMM epilogue where it can, else a copy of the bias into ``out`` (an ATen
kernel) followed by a GEMM with beta = 1.  TF32 follows ``torch.backends.cuda.matmul.allow_tf32``,
which the harness's ``precision(dtype)`` sets; torch's default
``allow_fp16_reduced_precision_reduction`` is left as it is.  The cuBLASLt search sets its compute
type from the dtype (fp32 without TF32).

The record's ``detail_path`` says which won (``torch`` or ``cublaslt``), ``detail_torch_ms`` and
``detail_cublaslt_ms`` their times, ``detail_cublaslt_*`` the algorithm (id, tile, stages,
split-k); where nvmath-python is missing or its search fails, torch's call runs and
``detail_cublaslt`` holds the reason.
"""

from __future__ import annotations

from typing import Callable

import torch

from kernels.reference import cublaslt
from layerbench.builders import Built, Tensors, fastest_path, hot_median_ms
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.registry import register
from layerbench.layers import Linear


@register("linear", "cublas", backend="cublas", reference=True,
          description="cuBLAS: the faster of torch.addmm(bias, x, W.t(), out=out) and cuBLASLt's fastest "
                      "algorithm (nvmath-python, bias epilogue)")
def build_linear(spec: Linear, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    device = _cuda_device(tensors)
    return fastest_path(
        ("torch", lambda: build_linear_torch(spec, dtype, layout, tensors, out)),
        [("cublaslt", lambda: cublaslt.build_linear_cublaslt(spec, dtype, layout, tensors, out))],
        time_ms=lambda kernel: hot_median_ms(kernel, device, warmup=2, reps=10),
        after_failure=lambda: torch.cuda.synchronize(device))  # a sticky CUDA error is not a fallback


def _cuda_device(tensors: Tensors) -> torch.device:
    x = tensors["x"]
    if x.device.type != "cuda":
        raise Unsupported(f"cuBLAS runs on CUDA tensors; x is on {x.device}")
    return x.device


def build_linear_torch(spec: Linear, dtype: DType, layout: str, tensors: Tensors,
                       out: torch.Tensor) -> Callable[[], None]:
    """torch's cuBLAS call, written into ``out``."""
    x, w, b = tensors["x"], tensors["weight"], tensors.get("bias")
    wt = w.t()  # a view: cuBLAS reads W transposed, no copy

    if b is None:
        def kernel() -> None:
            torch.mm(x, wt, out=out)
    else:
        def kernel() -> None:
            torch.addmm(b, x, wt, out=out)

    kernel()  # cuBLAS handle, workspace and heuristics are set up on the first call
    return kernel
