"""A 1x1 NCHW convolution as one GEMM per image (``pointwise_nchw.cu``), on the tensors as they are.

y[n] = W @ x[n] + b, with x[n] and y[n] the (C, H*W) and (K, H*W) matrices the images are in
memory and W the (K, C) matrix the 1x1 weight is.  The implicit GEMMs copy an NCHW input to
channels_last inside the timed call; on layers of few channels and large planes (ResNet-50's
56 x 56 bottleneck ends) that copy costs more than the product, and cuDNN runs such a layer as
one GEMM.  fp16 and bf16 on mma.sync (sm_80 on); the kernel moves weight rows in 16-byte chunks
and pixels in chunks of 8 or, where an image's pixels are a multiple of 4 only (14 x 14 planes),
of 4, so the input channels must be a multiple of 8 and the pixels of an image of 4.  A block
takes 128, 64 or 32 output channels: as few as leave the fewest rows of zeros.
``conv2d.build`` times it beside the other paths, after a check of its output on the layer's own
tensors.
"""

from __future__ import annotations

import torch

from kernels.cupy import sources, support
from kernels.pointwise_views import nchw_pointwise_refusal, weight_matrix
from layerbench.builders import Built, Tensors
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d

THREADS = 128
BLOCK_N = 128  # pixels a block (PW_BN)
STAGES = 3
WEIGHT_CHUNK = 8  # 16-bit weights a 16-byte copy moves
INT32_MAX = 2**31 - 1


def shared_bytes(block_m: int) -> int:
    """Three stages of an A tile (block_m rows of 64 bytes) and a B tile (32 rows of 256 bytes)."""
    return STAGES * (block_m * 64 + 32 * 256)


def block_m(out_channels: int) -> int:
    """Output channels a block: 32 or 64 where they hold the layer's, else the one of 128 and 64
    that pads the fewest rows (128 where even: a larger tile reads its input rows fewer times)."""
    if out_channels <= 32:
        return 32
    return min((128, 64), key=lambda bm: -(-out_channels // bm) * bm)


def pixel_chunk(pixels: int) -> int | None:
    """Pixels a copy moves (8: 16 bytes, 4: 8 bytes) for images of ``pixels``; None where neither
    divides them."""
    return next((v for v in sources.POINTWISE_NCHW_CHUNKS if pixels % v == 0), None)


def refusal(spec: Conv2d, dtype: DType, layout: str) -> str | None:
    """Why the per-image GEMM cannot run this point (None where it can)."""
    reason = nchw_pointwise_refusal(spec, layout)
    if reason:
        return reason
    if dtype.name not in ("fp16", "bf16"):
        return f"the per-image GEMM runs fp16 and bf16 on mma.sync, not {dtype.name}"
    if spec.in_channels % WEIGHT_CHUNK:
        return (f"the per-image GEMM moves 16-byte chunks of weight rows: in_channels must be a multiple of "
                f"{WEIGHT_CHUNK}, got {spec.in_channels}")
    pixels = spec.height * spec.width
    if pixel_chunk(pixels) is None:
        return (f"the per-image GEMM moves 8- or 16-byte chunks of pixel rows: height x width must be a "
                f"multiple of {min(sources.POINTWISE_NCHW_CHUNKS)}, got {spec.height} x {spec.width} = {pixels}")
    return None


def build(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
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
    bm, chunk = block_m(spec.out_channels), pixel_chunk(hw)
    blocks = -(-columns // BLOCK_N) * -(-spec.out_channels // bm)  # on x: a column tile's row tiles in a run
    if blocks > INT32_MAX:
        raise Unsupported(f"the per-image GEMM's {blocks} blocks exceed a grid's {INT32_MAX}")
    fn = support.function("pointwise_nchw", sources.pointwise_nchw_name(support.ctype_of(dtype), bm, chunk), index)
    i32 = support.i32
    launch = support.Launch(fn, (blocks, 1, 1), (THREADS, 1, 1),
                            [support.ptr(weight), support.ptr(x), support.ptr(bias if bias is not None else out),
                             support.ptr(out), i32(spec.out_channels), i32(spec.in_channels), i32(hw),
                             i32(columns), i32(int(bias is not None))],
                            index, keep=(weight, x, bias, out), shared_bytes=shared_bytes(bm))
    return Built(launch, {"block_m": bm, "pixel_chunk": chunk})
