"""A 1x1 NCHW convolution as one GEMM per image (``pointwise_nchw.cu``), on the tensors as they are.

y[n] = W @ x[n] + b, with x[n] and y[n] the (C, H*W) and (K, H*W) matrices the images are in
memory and W the (K, C) matrix the 1x1 weight is.  The implicit GEMMs copy an NCHW input to
channels_last inside the timed call; on layers of few channels and large planes (ResNet-50's
56 x 56 bottleneck ends) that copy costs more than the product, and cuDNN runs such a layer as
one GEMM.  fp16 and bf16 on mma.sync (sm_80 on); the kernel moves 16-byte chunks, so the input
channels and the pixels of an image must be multiples of 8.  ``conv2d.build`` times it beside
the other paths, after a check of its output on the layer's own tensors.
"""

from __future__ import annotations

import torch

from kernels.cupy import sources, support
from kernels.pointwise_views import nchw_pointwise_refusal, weight_matrix
from layerbench.builders import Kernel, Tensors
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d

THREADS = 128
BLOCK_M = 128  # output channels a block (pointwise_nchw.cu's PW_BM)
BLOCK_N = 128  # pixels a block (PW_BN)
STAGES = 3
SHARED_BYTES = STAGES * (BLOCK_M * 64 + 32 * 256)  # three stages of an A and a B tile: 48 KiB
CHUNK = 8  # 16-bit values in a 16-byte chunk


def refusal(spec: Conv2d, dtype: DType, layout: str) -> str | None:
    """Why the per-image GEMM cannot run this point (None where it can)."""
    reason = nchw_pointwise_refusal(spec, layout)
    if reason:
        return reason
    if dtype.name not in ("fp16", "bf16"):
        return f"the per-image GEMM runs fp16 and bf16 on mma.sync, not {dtype.name}"
    if spec.in_channels % CHUNK:
        return (f"the per-image GEMM moves 16-byte chunks of weight rows: in_channels must be a multiple of "
                f"{CHUNK}, got {spec.in_channels}")
    pixels = spec.height * spec.width
    if pixels % CHUNK:
        return (f"the per-image GEMM moves 16-byte chunks of pixel rows: height x width must be a multiple of "
                f"{CHUNK}, got {spec.height} x {spec.width} = {pixels}")
    return None


def build(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Kernel:
    """The launch of y[n] = W @ x[n] (+ b) for every image; Unsupported, with the reason, where it
    cannot run."""
    reason = refusal(spec, dtype, layout)
    if reason:
        raise Unsupported(reason)
    x, bias = tensors["x"], tensors.get("bias")
    index = support.check_tensors(dtype, {"x": x, "weight": tensors["weight"], "bias": bias, "out": out})
    support.check_cc(index, 8, "the per-image GEMM runs mma.sync m16n8k16")
    weight = weight_matrix(tensors["weight"], spec.out_channels, spec.in_channels)
    if not (x.is_contiguous() and out.is_contiguous()):
        raise Unsupported(f"the per-image GEMM needs x and out dense in NCHW order, got strides "
                          f"{tuple(x.stride())} and {tuple(out.stride())}")
    if bias is not None and not bias.is_contiguous():
        raise Unsupported("the per-image GEMM needs a contiguous bias")
    if any(t.data_ptr() % 16 for t in (x, weight, out)):
        raise Unsupported("the per-image GEMM moves 16-byte chunks: x, weight and out must be 16-byte aligned")
    hw = spec.height * spec.width
    # The batch's pixels, numbered through its images: with 8 channels at least, fewer than 2^28
    # (a layer's tensors hold fewer than 2^31 values), so int32 holds every column and tile end.
    columns = spec.batch * hw
    grid = (-(-columns // BLOCK_N), -(-spec.out_channels // BLOCK_M), 1)
    fn = support.function("pointwise_nchw", sources.pointwise_nchw_name(support.ctype_of(dtype)), index)
    i32 = support.i32
    return support.Launch(fn, grid, (THREADS, 1, 1),
                          [support.ptr(weight), support.ptr(x), support.ptr(bias if bias is not None else out),
                           support.ptr(out), i32(spec.out_channels), i32(spec.in_channels), i32(hw),
                           i32(columns), i32(int(bias is not None))],
                          index, keep=(weight, x, bias, out), shared_bytes=SHARED_BYTES)
