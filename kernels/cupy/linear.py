"""Fully connected launcher: y = x W^T + b as the 1x1 case of igemm.cu's implicit GEMM.

fp32: register-blocked FFMA GEMM (8x8 outputs per thread); tf32/fp16/bf16: mma.sync tensor
cores; fp32 accumulation.  Split-K fills the GPU when the batch gives few output tiles.  On
Hopper, fp16 and bf16 also build the wgmma GEMM (``linear_wgmma``: cp.async or TMA loaders, split-K);
both are timed and the faster kept (details: ``path``, each path's time, and why a path is missing).
"""

from __future__ import annotations

import torch

from kernels.cupy import igemm, linear_wgmma, support
from layerbench.dtypes import DType
from layerbench.builders import Built, Kernel, Tensors, choice_of, fastest_path, selection_ms
from layerbench.errors import Unsupported
from layerbench.registry import register
from layerbench.layers import Linear


@register("linear", "cupy", backend="cupy",
          description="CUDA C (CuPy): tiled GEMM, 128x128 tiles; FFMA for fp32, mma.sync tensor cores "
                      "for tf32/fp16/bf16; split-K for small batches; on Hopper also a wgmma GEMM "
                      "for fp16/bf16, the faster kept")
def build(spec: Linear, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Kernel | Built:
    support.check_dtype("linear", dtype, spec.dtypes)
    support.check_layout("linear", layout, spec.layouts)
    x, weight = tensors["x"], tensors["weight"]
    # A (batch, in) matrix is a batch of 1x1 images with `in` channels; W (out, in) a 1x1 kernel.
    g = igemm.Geometry(
        batch=spec.batch, channels=spec.in_features, height=1, width=1,
        out_channels=spec.out_features, out_h=1, out_w=1, kernel_h=1, kernel_w=1,
        x_strides=(x.stride(0), x.stride(1), 0, 0),
        w_strides=(weight.stride(0), weight.stride(1), 0, 0),
        out_strides=(out.stride(0), out.stride(1), 0, 0))
    mma_sync = igemm.build(dtype, x, weight, tensors.get("bias") if spec.bias else None, out, g)
    try:
        linear_wgmma.check_layer(spec, dtype, tensors, out, support.device_index(x))
    except Unsupported:
        return mma_sync  # no second path to time here
    return fastest_path(("mma_sync", lambda: mma_sync),
                        [("wgmma", lambda: linear_wgmma.build_wgmma(spec, dtype, tensors, out))],
                        lambda kernel: selection_ms(kernel, out.device),
                        after_failure=lambda: torch.cuda.synchronize(out.device),  # a sticky error is no fallback
                        remember=choice_of("cupy linear", spec, dtype.name, layout, tensors, out, "cupy"))
