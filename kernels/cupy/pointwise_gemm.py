"""A 1x1 convolution as mma.sync GEMMs on its tensors as they are (``pointwise_gemm.cu``).

NCHW: y[n] = W @ x[n] + b for every image, with x[n] and y[n] the (C, H*W) and (K, H*W)
matrices the images are in memory and W the (K, C) matrix the 1x1 weight is.  The implicit GEMMs
copy an NCHW input to channels_last inside the timed call; on layers of few channels and large
planes (ResNet-50's 56 x 56 bottleneck ends) that copy costs more than the product, and cuDNN
runs such a layer as one GEMM.

NHWC: y = x @ W^T + b as one product, x the (N*H*W, C) matrix it is in memory and W^T the (C, K)
weight transposed once at build (as a builder may prepare its weights).  On layers of few
channels (MobileNetV2's expansions from 16 to 32 channels, its projections to 16 to 32) the wgmma
GEMM's 64-deep k tiles and wide tiles leave most of each step idle; this kernel's 32-deep stages
and 128 x 128 tiles stream them.

fp16 and bf16 on mma.sync (sm_80 on).  The kernel moves rows of k in 16-byte chunks, so the input
channels must be a multiple of 8, and the rows of its second operand (an image's pixels in NCHW,
the output channels in NHWC) in chunks of 8 or 4 values, so those must be a multiple of 4.  Each
block shape (128, 64 or 32 rows of output) that leaves no block mostly empty is timed at build,
and the fastest whose output passes the float64 check is kept.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kernels.cupy import sources, support
from kernels.pointwise_views import forward_views, nchw_pointwise_refusal, pointwise_refusal, weight_matrix
from layerbench.builders import Built, Tensors
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d

THREADS = 128
BLOCK_N = 128  # columns a block (PW_BN)
STAGES = 3
K_CHUNK = 8  # 16-bit values of a row of k a 16-byte copy moves
INT32_MAX = 2**31 - 1


def shared_bytes(block_m: int) -> int:
    """Three stages of an A tile (block_m rows of 64 bytes) and a B tile (32 rows of 256 bytes)."""
    return STAGES * (block_m * 64 + 32 * 256)


def blocks_m(rows: int) -> tuple[int, ...]:
    """The block shapes worth timing for ``rows`` rows of output: each of 128, 64 and 32 whose
    tiles are more than half full (32 always)."""
    return tuple(bm for bm in sources.POINTWISE_GEMM_BLOCKS_M if bm == 32 or rows > bm // 2)


def column_chunk(columns: int) -> int | None:
    """Values a copy of the second operand moves (8: 16 bytes, 4: 8 bytes) for rows of
    ``columns``; None where neither divides them."""
    return next((v for v in sources.POINTWISE_GEMM_CHUNKS if columns % v == 0), None)


def refusal(spec: Conv2d, dtype: DType, layout: str) -> str | None:
    """Why the pointwise GEMM cannot run this point (None where it can)."""
    reason = nchw_pointwise_refusal(spec, layout) if layout == "NCHW" else pointwise_refusal(spec, layout)
    if reason:
        return reason
    if dtype.name not in ("fp16", "bf16"):
        return f"the pointwise GEMM runs fp16 and bf16 on mma.sync, not {dtype.name}"
    if spec.in_channels % K_CHUNK:
        return (f"the pointwise GEMM moves 16-byte chunks of channels: in_channels must be a multiple of "
                f"{K_CHUNK}, got {spec.in_channels}")
    least = min(sources.POINTWISE_GEMM_CHUNKS)
    if layout == "NCHW" and column_chunk(spec.height * spec.width) is None:
        return (f"the pointwise GEMM moves 8- or 16-byte chunks of pixel rows: height x width must be a "
                f"multiple of {least}, got {spec.height} x {spec.width} = {spec.height * spec.width}")
    if layout == "NHWC" and column_chunk(spec.out_channels) is None:
        return (f"the pointwise GEMM moves 8- or 16-byte chunks of output pixels: out_channels must be a "
                f"multiple of {least}, got {spec.out_channels}")
    return None


def _operands(spec: Conv2d, layout: str, tensors: Tensors,
              out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int, int, int]:
    """(a, b, y, rows, columns an image, images, bias_by) of y[n] = a @ b[n] (+ bias) for this layer."""
    k, c = spec.out_channels, spec.in_channels
    if layout == "NCHW":
        x = tensors["x"]
        if not (x.is_contiguous() and out.is_contiguous()):
            raise Unsupported(f"the pointwise GEMM needs x and out dense in NCHW order, got strides "
                              f"{tuple(x.stride())} and {tuple(out.stride())}")
        return weight_matrix(tensors["weight"], k, c), x, out, k, spec.height * spec.width, spec.batch, 1
    gemm, views, y = forward_views(spec, layout, tensors, out)
    transposed = views["weight"].t().contiguous()  # (C, K): rows of k, output channels contiguous
    return views["x"], transposed, y, gemm.batch, k, 1, 2


def build(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    """The fastest right launch of the layer's GEMMs over the block shapes worth timing;
    Unsupported, with the reason, where the kernel cannot run it."""
    reason = refusal(spec, dtype, layout)
    if reason:
        raise Unsupported(reason)
    bias = tensors.get("bias")
    index = support.check_tensors(dtype, {"x": tensors["x"], "weight": tensors["weight"], "bias": bias, "out": out})
    support.check_cc(index, 8, "the pointwise GEMM runs mma.sync m16n8k16")
    if bias is not None and not bias.is_contiguous():
        raise Unsupported("the pointwise GEMM needs a contiguous bias")
    a, b, y, rows, per_image, images, bias_by = _operands(spec, layout, tensors, out)
    if any(t.data_ptr() % 16 for t in (a, b, y)):
        raise Unsupported("the pointwise GEMM moves 16-byte chunks: x, weight and out must be 16-byte aligned")
    # Columns numbered through the images: a layer's tensors hold fewer than 2^31 values and have
    # 8 channels at least, so int32 holds every column, row and tile end.
    columns = images * per_image
    chunk = column_chunk(per_image)
    ctype = support.ctype_of(dtype)

    def launch(bm: int) -> support.Launch:
        blocks = -(-columns // BLOCK_N) * -(-rows // bm)
        if blocks > INT32_MAX:
            raise Unsupported(f"the pointwise GEMM's {blocks} blocks exceed a grid's {INT32_MAX}")
        fn = support.function("pointwise_gemm", sources.pointwise_gemm_name(ctype, bm, chunk), index)
        i32 = support.i32
        return support.Launch(fn, (blocks, 1, 1), (THREADS, 1, 1),
                              [support.ptr(a), support.ptr(b), support.ptr(bias if bias is not None else y),
                               support.ptr(y), i32(rows), i32(spec.in_channels), i32(per_image), i32(columns),
                               i32(bias_by if bias is not None else 0)],
                              index, keep=(a, b, bias, y, out), shared_bytes=shared_bytes(bm))

    found: dict[str, Callable[[], object]] = {f"{bm}x{BLOCK_N}": launch(bm) for bm in blocks_m(rows)}
    built = support.fastest_right_variant(found, spec, dtype, layout, tensors, out, "the pointwise GEMM")
    return Built(built.launch, {**built.details, "column_chunk": chunk})
