"""Implementation "cublas": the linear layer's library reference, run by cuBLAS / cuBLASLt.

=========  ================  ===============================================================
layer      library that runs how
=========  ================  ===============================================================
linear     cuBLAS / cuBLASLt the faster, timed in build, of (1) torch's call:
                             ``torch.addmm(bias, x, W.t(), out=out)`` (``torch.mm`` without a
                             bias), written into the harness's ``out``, and (2) the fastest of
                             cuBLASLt's candidate algorithms, bias in the epilogue, searched
                             with the optional ``nvmath-python`` (``kernels.reference.cublaslt``)
=========  ================  ===============================================================

The backward passes, registered under the same name, choose the same way between torch's call
written into ``out`` and the cuBLASLt search: dx = dy @ W (``torch.mm(dy, W, out=dx)``); dW =
dy^T @ x (``torch.mm(dy.t(), x, out=dW)``) with, where the spec has a bias, dbias = the sum of dy
over the batch (``torch.sum``, an ATen reduction, on torch's path; cuBLASLt's ``BGRADB`` epilogue,
fused into the GEMM, on the other).  The training pass is the three single passes in a row.

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
from layerbench.builders import Built, Kernel, Tensors, fastest_path, selection_ms
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.registry import register
from layerbench.layers import Linear
from layerbench.layers.passes import split_output


@register("linear", "cublas", backend="cublas", reference=True,
          description="cuBLAS: the faster of torch.addmm(bias, x, W.t(), out=out) and cuBLASLt's fastest "
                      "algorithm (nvmath-python, bias epilogue)")
def build_linear(spec: Linear, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    return _faster_of_torch_and_cublaslt(
        _cuda_device(tensors), lambda: build_linear_torch(spec, dtype, layout, tensors, out),
        lambda: cublaslt.build_linear_cublaslt(spec, dtype, layout, tensors, out))


def _faster_of_torch_and_cublaslt(device: torch.device, torch_path: Callable[[], Kernel | Built],
                                  cublaslt_path: Callable[[], Built]) -> Built:
    return fastest_path(
        ("torch", torch_path), [("cublaslt", cublaslt_path)],
        time_ms=lambda kernel: selection_ms(kernel, device, warmup=2, reps=10),
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


# The backward passes: dx = dy @ W; dW = dy^T @ x and dbias = the sum of dy over the batch.


@register("linear", "cublas", backend="cublas", reference=True, direction="backward_data",
          description="cuBLAS: the faster of torch.mm(dy, W, out=dx) and cuBLASLt's fastest algorithm "
                      "(nvmath-python)")
def build_linear_backward_data(spec: Linear, dtype: DType, layout: str, tensors: Tensors,
                               out: torch.Tensor) -> Built:
    return _faster_of_torch_and_cublaslt(
        _cuda_device(tensors), lambda: build_linear_backward_data_torch(spec, dtype, layout, tensors, out),
        lambda: cublaslt.build_linear_backward_data_cublaslt(spec, dtype, layout, tensors, out))


def build_linear_backward_data_torch(spec: Linear, dtype: DType, layout: str, tensors: Tensors,
                                     out: torch.Tensor) -> Callable[[], None]:
    """torch's cuBLAS call for dx = dy @ W (reads dy and the weight), written into ``out``."""
    w, dy = tensors["weight"], tensors["dy"]

    def kernel() -> None:
        torch.mm(dy, w, out=out)

    kernel()
    return kernel


@register("linear", "cublas", backend="cublas", reference=True, direction="backward_weight",
          description="cuBLAS: the faster of torch.mm(dy.t(), x, out=dW) (+ torch.sum of dy for dbias) and "
                      "cuBLASLt's fastest algorithm (nvmath-python, BGRADB epilogue for dbias)")
def build_linear_backward_weight(spec: Linear, dtype: DType, layout: str, tensors: Tensors,
                                 out: torch.Tensor) -> Built:
    return _faster_of_torch_and_cublaslt(
        _cuda_device(tensors), lambda: build_linear_backward_weight_torch(spec, dtype, layout, tensors, out),
        lambda: cublaslt.build_linear_backward_weight_cublaslt(spec, dtype, layout, tensors, out))


def build_linear_backward_weight_torch(spec: Linear, dtype: DType, layout: str, tensors: Tensors,
                                       out: torch.Tensor) -> Callable[[], None]:
    """torch's cuBLAS call for dW = dy^T @ x (reads dy and x) and, with a bias, ATen's reduction
    of dy over the batch for dbias, each written into its view of ``out``."""
    x, dy = tensors["x"], tensors["dy"]
    views = split_output(spec, out, layout)
    dw, db = views["dweight"], views.get("dbias")
    dyt = dy.t()  # a view: cuBLAS reads dy transposed, no copy

    if db is None:
        def kernel() -> None:
            torch.mm(dyt, x, out=dw)
    else:
        def kernel() -> None:
            torch.mm(dyt, x, out=dw)
            torch.sum(dy, 0, out=db)

    kernel()
    return kernel
