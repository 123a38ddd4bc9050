"""Implementation "cublas": the linear layer's library reference, run by cuBLAS.

=========  ================  ===============================================================
layer      library that runs how
=========  ================  ===============================================================
linear     cuBLAS / cuBLASLt ``torch.addmm(bias, x, W.t(), out=out)`` (``torch.mm`` without a
                             bias), written into the harness's ``out``
=========  ================  ===============================================================

cuDNN's legacy API has no matrix product, so no "cudnn" linear exists; this is the honest name
for the library that torch's CUDA matmul calls.  torch picks the cuBLAS entry point: cuBLASLt with
the bias fused into the GEMM epilogue where it can, else a copy of the bias into ``out`` (an ATen
kernel) followed by a GEMM with beta = 1.  TF32 follows ``torch.backends.cuda.matmul.allow_tf32``,
which the harness's ``precision(dtype)`` sets; torch's default
``allow_fp16_reduced_precision_reduction`` is left as it is.
"""

from __future__ import annotations

from typing import Callable

import torch

from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.builders import Tensors
from layerbench.registry import register
from layerbench.layers import Linear


@register("linear", "cublas", backend="cublas", reference=True,
          description="cuBLAS through torch.addmm(bias, x, W.t(), out=out)")
def build_linear(spec: Linear, dtype: DType, layout: str, tensors: Tensors,
                 out: torch.Tensor) -> Callable[[], None]:
    x, w, b = tensors["x"], tensors["weight"], tensors.get("bias")
    if x.device.type != "cuda":
        raise Unsupported(f"cuBLAS runs on CUDA tensors; x is on {x.device}")
    wt = w.t()  # a view: cuBLAS reads W transposed, no copy

    if b is None:
        def kernel() -> None:
            torch.mm(x, wt, out=out)
    else:
        def kernel() -> None:
            torch.addmm(b, x, wt, out=out)

    kernel()  # cuBLAS handle, workspace and heuristics are set up on the first call
    return kernel
