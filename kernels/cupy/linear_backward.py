"""Fully connected backward launchers on igemm.cu's GEMM, out[m][n] = sum_k A[m][k] B[n][k]:
A is gathered through any strides, B must be row-major [N][K], out is written through its strides.

* backward_data, dx = dy W, runs as dx^T = W^T dy^T: A = W^T (a view of W), B = dy, out = dx^T
  (a view of dx); nothing is copied.
* backward_weight, dW = dy^T x: A = dy^T and B = x^T, both written row-major by layout.cu's
  transpose inside every launch (dy and x change between them), so that the GEMM can read both
  along the batch in 16-byte runs (through transposed strides, A would be gathered element by
  element); out = dW itself; dbias, the column sums of dy, comes from linear_backward.cu.

fp32 runs the FFMA kernel (no tensor cores), tf32/fp16/bf16 mma.sync; fp32 accumulation.
"""

from __future__ import annotations

import torch

from kernels.cupy import igemm, sources, support
from kernels.cupy.igemm_plan import Geometry
from layerbench.builders import Kernel, Tensors, in_order
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.layers import Linear, passes
from layerbench.registry import register

TILE, ROWS = 32, 8  # layout.cu's transpose block
SUM_COLS, SUM_ROWS = 32, 8  # linear_backward.cu's block


def gemm_nt_geometry(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> Geometry:
    """igemm's geometry of out (M, N) = a (M, K) @ b (N, K)^T: a linear layer of batch M, K inputs
    and N outputs (a batch of 1x1 images), each operand through its own strides."""
    (m, k), (n, _) = a.shape, b.shape
    return Geometry(batch=m, channels=k, height=1, width=1, out_channels=n, out_h=1, out_w=1,
                    kernel_h=1, kernel_w=1,
                    x_strides=(a.stride(0), a.stride(1), 0, 0), w_strides=(b.stride(0), b.stride(1), 0, 0),
                    out_strides=(out.stride(0), out.stride(1), 0, 0))


def _gemm_nt(dtype: DType, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> Kernel:
    # igemm would copy a B that is not row-major once, at build: B changes between launches.
    if not b.is_contiguous():
        raise Unsupported("cupy linear backward needs its GEMM's B operand row-major")
    return igemm.build(dtype, a, b, None, out, gemm_nt_geometry(a, b, out))


def _checked(spec: Linear, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> int:
    support.check_dtype("linear", dtype, spec.dtypes)
    support.check_layout("linear", layout, spec.layouts)
    dy = tensors["dy"]
    index = support.check_tensors(dtype, {"x": tensors["x"], "weight": tensors["weight"], "dy": dy,
                                          "out": out})
    if not dy.is_contiguous():
        raise Unsupported("cupy linear backward needs dy row-major")
    return index


@register("linear", "cupy", backend="cupy", direction="backward_data",
          description="CUDA C (CuPy): dx^T = W^T dy^T on the forward's tiled GEMM (W read through "
                      "transposed strides, no copy); FFMA for fp32, mma.sync for tf32/fp16/bf16")
def build_data(spec: Linear, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Kernel:
    _checked(spec, dtype, layout, tensors, out)
    # m: input feature, n: batch row, k: output feature.
    return _gemm_nt(dtype, tensors["weight"].t(), tensors["dy"], out.t())


def transpose_grid(rows: int, cols: int) -> tuple[int, int, int]:
    """layout.cu's grid for the transpose of a rows x cols matrix: one image, C = rows, H * W = cols."""
    return (-(-cols // TILE), -(-rows // TILE), 1)


def _transpose(t: torch.Tensor, ctype: str, index: int) -> tuple[torch.Tensor, support.Launch]:
    """A row-major buffer for t^T (t row-major, 2-D) and the launch that fills it: layout.cu's
    NCHW -> NHWC copy of one image with C = t's rows and H * W = its columns."""
    rows, cols = t.shape
    dst = torch.empty((cols, rows), dtype=t.dtype, device=t.device)
    fn = support.function("layout", sources.to_channels_last_name(ctype), index)
    launch = support.Launch(fn, transpose_grid(rows, cols), (TILE, ROWS, 1),
                            [support.ptr(t), support.ptr(dst), support.i32(rows), support.i32(cols)],
                            index, keep=(t, dst))
    return dst, launch


def _column_sums(t: torch.Tensor, sums: torch.Tensor, ctype: str, index: int) -> support.Launch:
    rows, cols = t.shape
    fn = support.function("linear_backward", sources.column_sums_name(ctype), index)
    return support.Launch(fn, (-(-cols // SUM_COLS), 1, 1), (SUM_COLS, SUM_ROWS, 1),
                          [support.ptr(t), support.ptr(sums), support.i32(rows), support.i32(cols)],
                          index, keep=(t, sums))


@register("linear", "cupy", backend="cupy", direction="backward_weight",
          description="CUDA C (CuPy): dW = dy^T x on the forward's tiled GEMM (dy and x transposed "
                      "in the timed call, so both are read in 16-byte runs); dbias as deterministic "
                      "column sums of dy; FFMA for fp32, mma.sync for tf32/fp16/bf16")
def build_weight(spec: Linear, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Kernel:
    index = _checked(spec, dtype, layout, tensors, out)
    ctype = support.ctype_of(dtype)
    x, dy = tensors["x"], tensors["dy"]
    if not x.is_contiguous():
        raise Unsupported("cupy linear backward needs x row-major")
    parts = passes.split_output(spec, out, layout)
    dy_t, transpose_dy = _transpose(dy, ctype, index)
    x_t, transpose_x = _transpose(x, ctype, index)
    # m: output feature, n: input feature, k: batch row.
    launches = [transpose_dy, transpose_x, _gemm_nt(dtype, dy_t, x_t, parts["dweight"])]
    if spec.bias:
        launches.append(_column_sums(dy, parts["dbias"], ctype, index))
    return in_order(*launches)
