"""A convolution of narrow input pixels lowered to one GEMM (explicit im2col), for both backends.

A first layer reads 3 RGB channels: 6 bytes a pixel in fp16/bf16, which neither a copy engine
(16-byte rows) nor a channel-blocked walk (blocks of 16 or more channels) can feed, while its
reduction C*R*S is short (27 for a 3x3 filter, 147 for ResNet-50's 7x7 stem).  Lowered, the timed
call first writes the column matrix: row m = (n, p, q) is output pixel (p, q) of image n, column
k = (r, s, c) the input value tap (r, s) of channel c reads there (zero past the image's edges),
zero-padded to a multiple of 16 columns (aligned rows for the GEMM's loads); then the backend's
linear layer multiplies it by the weight as a [K, R*S*C] matrix, zero-padded alike once at build,
straight into the NHWC output, bias included.  The column matrix costs one write and one read of
M x KP values, which a layer with few input channels and many output channels can afford: VGG-16's
conv1_1 writes 64 output channels for the 32 columns of each row.

Where it applies: one group, an NHWC output (the GEMM's rows are its pixels), input pixels
narrower than 16 bytes, any stride, padding and dilation.  The builds time it beside their other
paths and keep the fastest.

Unfolded along the width only (``unfolded_specs``): the same copy with a 1 x S filter writes, for
every input row h and output column q, the S*C values the filter's row reads there, as the C'
channels of a new input [N, H, Q, C'] (S*C rounded up to 16-byte pixel rows, the rest zeros).
The layer is then an R x 1 convolution over it (stride, padding and dilation kept along the
height), which the TMA convolution feeds with whole pixel rows: ResNet-50's 7 x 7 stem reads 7
taps of 24 channels instead of 49 taps of 3 padded to 16, and the copy writes S*C/(R*S*C) of the
column matrix (a seventh) and no GEMM reads it back from DRAM.  The R x 1 convolution's weight is
[K, C', R, 1], tap (r, s) channel c of the filter at channel s*C + c.
"""

from __future__ import annotations

import torch

from layerbench.builders import Tensors
from layerbench.dtypes import DType
from layerbench.layers import Conv2d, Linear

from kernels.pointwise_views import matrix

COLUMN_QUANTUM = 16  # columns of the matrix: a multiple of 16 (32-byte rows in 16-bit types)
# Bytes: past this the column matrix is no fair price for a layer.  It also keeps the matrix under
# 2^31 elements (its elements are at least 2 bytes), which the im2col kernels' int32 offsets need.
COLUMN_BUFFER_LIMIT = 2 << 30


def column_count(spec: Conv2d) -> int:
    """KP: the column matrix's width, C*R*S rounded up to the quantum."""
    reduction = spec.in_channels * spec.kernel_h * spec.kernel_w
    return -(-reduction // COLUMN_QUANTUM) * COLUMN_QUANTUM


def lowered_refusal(spec: Conv2d, dtype: DType, layout: str) -> str | None:
    """Why the lowered convolution does not run this point (None where it does)."""
    if spec.groups != 1:
        return f"the lowered convolution runs one group, this point has {spec.groups}"
    if layout != "NHWC":
        return f"the lowered convolution writes an NHWC output (its GEMM's rows are pixels), this point is {layout}"
    row_bytes = spec.in_channels * dtype.torch_dtype.itemsize
    if row_bytes >= 16:
        return (f"the lowered convolution is for input pixels narrower than 16 bytes; in_channels "
                f"{spec.in_channels} in {dtype.name} is {row_bytes} bytes, which the other paths feed directly")
    rows, columns = spec.batch * spec.out_height * spec.out_width, column_count(spec)
    size = rows * columns * dtype.torch_dtype.itemsize
    if size > COLUMN_BUFFER_LIMIT:
        return (f"the lowered convolution's column matrix ({rows} x {columns}) would take {size / 2**30:.1f} GiB, "
                f"more than its limit of {COLUMN_BUFFER_LIMIT / 2**30:.0f} GiB")
    return None


def unfolded_channels(spec: Conv2d, dtype: DType) -> int:
    """C': S*C rounded up to pixel rows of a multiple of 16 bytes."""
    unit = 16 // dtype.torch_dtype.itemsize
    return -(-spec.in_channels * spec.kernel_w // unit) * unit


def unfolded_specs(spec: Conv2d, dtype: DType) -> tuple[Conv2d, Conv2d]:
    """(the 1 x S convolution whose column matrix is the unfolded input, the R x 1 convolution
    over that input that computes the layer)."""
    channels = unfolded_channels(spec, dtype)
    unfold = Conv2d(spec.batch, spec.in_channels, channels, spec.height, spec.width, 1, spec.kernel_w,
                    stride_h=1, stride_w=spec.stride_w, padding_h=0, padding_w=spec.padding_w,
                    dilation_h=1, dilation_w=spec.dilation_w, bias=False)
    rows = Conv2d(spec.batch, channels, spec.out_channels, spec.height, spec.out_width, spec.kernel_h, 1,
                  stride_h=spec.stride_h, stride_w=1, padding_h=spec.padding_h, padding_w=0,
                  dilation_h=spec.dilation_h, dilation_w=1, bias=spec.bias)
    return unfold, rows


def unfolded_refusal(spec: Conv2d, dtype: DType) -> str | None:
    """Why the width-unfolded convolution does not run this point (None where it does)."""
    if spec.groups != 1:
        return f"the unfolded convolution runs one group, this point has {spec.groups}"
    if spec.kernel_w == 1:
        return "the unfolded convolution folds the filter's width into channels; this filter is 1 wide"
    row_bytes = spec.in_channels * dtype.torch_dtype.itemsize
    if row_bytes >= 16:
        return (f"the unfolded convolution is for input pixels narrower than 16 bytes; in_channels "
                f"{spec.in_channels} in {dtype.name} is {row_bytes} bytes")
    size = spec.batch * spec.height * spec.out_width * unfolded_channels(spec, dtype) * dtype.torch_dtype.itemsize
    if size > COLUMN_BUFFER_LIMIT:
        return (f"the unfolded convolution's input would take {size / 2**30:.1f} GiB, more than its limit "
                f"of {COLUMN_BUFFER_LIMIT / 2**30:.0f} GiB")
    return None


def unfolded_tensors(rows: Conv2d, tensors: Tensors) -> Tensors:
    """The tensors of ``rows`` (the R x 1 convolution of ``unfolded_specs``) from the layer's: an
    empty channels_last input for the unfold to fill, the weight [K, C', R, 1] (zero past S*C),
    the bias."""
    x, weight = tensors["x"], tensors["weight"]
    k, c, r, s = weight.shape
    folded = torch.zeros((k, rows.in_channels, r, 1), dtype=weight.dtype, device=weight.device)
    folded[:, :s * c, :, 0] = weight.permute(0, 3, 1, 2).reshape(k, s * c, r)
    out: Tensors = {"x": torch.empty(rows.input_shape, dtype=x.dtype, device=x.device,
                                     memory_format=torch.channels_last), "weight": folded}
    if "bias" in tensors:
        out["bias"] = tensors["bias"]
    return out


def gemm_operands(spec: Conv2d, tensors: Tensors, out: torch.Tensor) -> tuple[Linear, Tensors, torch.Tensor]:
    """(the linear layer, its tensors, its output) of the lowered convolution: an empty column
    matrix for the im2col copy to fill, the weight as the dense zero-padded [K, KP] matrix of its
    (r, s, c) order, the bias, and the NHWC output as a [pixels, K] matrix."""
    x, weight = tensors["x"], tensors["weight"]
    rows, columns = spec.batch * spec.out_height * spec.out_width, column_count(spec)
    flat = weight.permute(0, 2, 3, 1).reshape(spec.out_channels, -1)
    padded = torch.zeros((spec.out_channels, columns), dtype=weight.dtype, device=weight.device)
    padded[:, :flat.shape[1]] = flat
    operands: Tensors = {"x": torch.empty((rows, columns), dtype=x.dtype, device=x.device), "weight": padded}
    if "bias" in tensors:
        operands["bias"] = tensors["bias"]
    gemm = Linear(rows, columns, spec.out_channels, bias=spec.bias)
    return gemm, operands, matrix(out, rows, spec.out_channels, "out")
