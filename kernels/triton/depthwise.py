"""Depthwise 2-D convolution in Triton (groups == in_channels): a direct, memory-bound kernel.

Output channel k reads input channel k // MULT (MULT = out_channels / in_channels, the channel
multiplier, 1 in MobileNets) through its own kh x kw filter, weight[k, 0].  There is no reduction
over channels, so a GEMM would do one multiply-add per loaded element; instead each program
computes a tile of outputs directly: it walks the kh*kw taps (unrolled: the kernel size is a
compile-time constant), loads the input under masks (padding and edges read zero; stride,
padding and dilation are per axis), accumulates in fp32 (fp32 and tf32 alike: true fp32 FMAs),
adds the bias and stores in the output's dtype.  Neighbouring taps and outputs read the same
input lines, which L1 and L2 serve; DRAM sees about one read of x and one write of y.

* NHWC: a tile is (output pixels, flat over n, p, q) x (a block of channels).  Each tap loads a
  contiguous run of channels of every pixel, which vectorises for MULT = 1 and C a multiple of
  16.  The filter is read as fp32 [tap][output channel], prepared once at build (the weights stay
  between launches, as in inference), so a tap's weights for a thread's channels are one vector
  load, not one 2-byte gather a channel (eight times the input's loads in bf16, and a conversion
  each).
* NCHW: a tile is (channel planes, flat over n, k) x (output pixels of each plane, p*Q + q).
  A large plane takes one plane a program, in blocks of pixels; small planes (7x7, 14x14) are
  packed several a program so lanes do not idle.  The filter taps are then per plane.

Program ids run along the pixels first, so programs at work together share input rows in L2.
On the GPU the tile and warp count are autotuned per problem (support.bind); the
interpreter uses one small tile.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.builders import Kernel, Tensors
from layerbench.layers import Conv2d

from kernels.triton.support import (bind, check_conv_tensors, check_inputs, dense_layout, next_pow2,
                                    pixel_of)


# NHWC: (pixels, channels, warps) of a tile.  Wide channel blocks keep loads long; more pixels a
# thread amortise its filter loads (each thread loads the taps of its own channels).  A block
# wider than the channels is narrowed (to the next power of two) and its pixels multiplied to
# keep the tile's size.
_NHWC_TILES = [(32, 64, 4), (64, 64, 4), (128, 64, 8), (16, 128, 4), (32, 128, 8),
               (128, 32, 4), (256, 32, 8), (256, 16, 4)]
# NCHW: (outputs, warps) of a tile; its pixel side is the plane's size rounded up to a power of
# two, at most the whole tile.
_NCHW_TILES = [(256, 4), (512, 4), (512, 8), (1024, 4), (1024, 8), (2048, 8)]
_INTERPRETER_NHWC = {"BLOCK_P": 16, "BLOCK_C": 16}
_INTERPRETER_NCHW_TILE = 64


@triton.jit(do_not_specialize=["ROWS", "H", "W", "P", "Q", "stride_h", "stride_w", "pad_h", "pad_w",
                               "dil_h", "dil_w"])
def _depthwise_nhwc_kernel(x_ptr, w_ptr, b_ptr, y_ptr, ROWS, C, K, H, W, P, Q,
                           stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                           KH: tl.constexpr, KW: tl.constexpr, MULT: tl.constexpr, HAS_BIAS: tl.constexpr,
                           BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pixel_tiles = tl.cdiv(ROWS, BLOCK_P)
    pid = tl.program_id(0)
    rows = (pid % pixel_tiles) * BLOCK_P + tl.arange(0, BLOCK_P)  # flat (n, p, q)
    ks = (pid // pixel_tiles) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < ROWS
    k_ok = ks < K
    r = tl.where(row_ok, rows, 0)
    n, p, q = pixel_of(r, P, Q)
    ih0 = p * stride_h - pad_h
    iw0 = q * stride_w - pad_w
    x_img = x_ptr + n * (H * W * C)
    # Unclamped (masked) channels, undivided for MULT = 1: the run stays provably contiguous.
    if MULT == 1:
        cin = ks
    else:
        cin = ks // MULT
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for i in tl.static_range(KH):
        ih = ih0 + i * dil_h
        h_ok = row_ok & (ih >= 0) & (ih < H)
        for j in tl.static_range(KW):
            iw = iw0 + j * dil_w
            ok = h_ok & (iw >= 0) & (iw < W)
            xs = tl.load((x_img + (ih * W + iw) * C)[:, None] + cin[None, :],
                         mask=ok[:, None] & k_ok[None, :], other=0.0)
            tap = tl.load(w_ptr + (i * KW + j) * K + ks, mask=k_ok, other=0.0)  # fp32 [tap][k]
            acc += xs.to(tl.float32) * tap[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + (r * K)[:, None] + ks[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & k_ok[None, :])


@triton.jit(do_not_specialize=["PLANES", "H", "W", "P", "Q", "stride_h", "stride_w", "pad_h", "pad_w",
                               "dil_h", "dil_w"])
def _depthwise_nchw_kernel(x_ptr, w_ptr, b_ptr, y_ptr, PLANES, C, K, H, W, P, Q,
                           stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                           KH: tl.constexpr, KW: tl.constexpr, MULT: tl.constexpr, HAS_BIAS: tl.constexpr,
                           BLOCK_PL: tl.constexpr, BLOCK_PIX: tl.constexpr):
    PQ = P * Q
    pixel_tiles = tl.cdiv(PQ, BLOCK_PIX)
    pid = tl.program_id(0)
    planes = (pid // pixel_tiles) * BLOCK_PL + tl.arange(0, BLOCK_PL)  # flat (n, k)
    pix = (pid % pixel_tiles) * BLOCK_PIX + tl.arange(0, BLOCK_PIX)  # p * Q + q
    pl_ok = planes < PLANES
    pix_ok = pix < PQ
    pl = tl.where(pl_ok, planes, 0)
    px = tl.where(pix_ok, pix, 0)
    k = pl % K
    n = pl // K
    q = px % Q
    p = px // Q
    ih0 = p * stride_h - pad_h
    iw0 = q * stride_w - pad_w
    x_planes = x_ptr + (n * C + k // MULT) * (H * W)
    w_rows = w_ptr + k * (KH * KW)
    acc = tl.zeros((BLOCK_PL, BLOCK_PIX), dtype=tl.float32)
    for i in tl.static_range(KH):
        ih = ih0 + i * dil_h
        h_ok = pix_ok & (ih >= 0) & (ih < H)
        for j in tl.static_range(KW):
            iw = iw0 + j * dil_w
            ok = h_ok & (iw >= 0) & (iw < W)
            xs = tl.load(x_planes[:, None] + (ih * W + iw)[None, :], mask=pl_ok[:, None] & ok[None, :], other=0.0)
            tap = tl.load(w_rows + (i * KW + j))  # k is clamped: always a valid address
            acc += xs.to(tl.float32) * tap.to(tl.float32)[:, None]
    if HAS_BIAS:
        acc += tl.load(b_ptr + k).to(tl.float32)[:, None]
    y_ptrs = y_ptr + (pl * PQ)[:, None] + pix[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=pl_ok[:, None] & pix_ok[None, :])


@functools.cache
def _nhwc_tiles(max_block_c: int) -> list[triton.Config]:
    """The NHWC tiles, channel blocks narrowed to ``max_block_c`` (pixels widened to match)."""
    configs = {}
    for pixels, channels, warps in _NHWC_TILES:
        block_c = min(channels, max_block_c)
        config = triton.Config({"BLOCK_P": pixels * channels // block_c, "BLOCK_C": block_c}, num_warps=warps)
        configs[str(config)] = config
    return list(configs.values())


@functools.cache
def _nchw_tiles(max_block_pix: int) -> list[triton.Config]:
    """The NCHW tiles, pixel sides at most ``max_block_pix`` (the plane rounded up) and planes to
    fill the tile."""
    configs = {}
    for tile, warps in _NCHW_TILES:
        block_pix = min(tile, max_block_pix)
        config = triton.Config({"BLOCK_PL": tile // block_pix, "BLOCK_PIX": block_pix}, num_warps=warps)
        configs[str(config)] = config
    return list(configs.values())


def tap_major_filter(spec: Conv2d, weight: torch.Tensor) -> torch.Tensor:
    """The filter as a fresh dense fp32 [tap][output channel] tensor, tap = r * kernel_w + s."""
    taps = weight.reshape(spec.out_channels, spec.kernel_h * spec.kernel_w).t()
    return torch.empty(taps.shape, dtype=torch.float32, device=weight.device).copy_(taps)


def build_depthwise(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Kernel:
    """The direct depthwise kernel for ``spec`` (groups == in_channels, any channel multiplier)."""
    if not spec.depthwise:
        raise Unsupported(f"the depthwise kernel runs groups == in_channels only; this point has groups "
                          f"{spec.groups} of {spec.in_channels} channels")
    check_inputs(_depthwise_nhwc_kernel, dtype, Conv2d.dtypes, tensors, out)
    check_conv_tensors(spec, tensors, out)
    x, w, bias = tensors["x"], tensors["weight"], tensors.get("bias")
    x_nhwc, y_nhwc = dense_layout(x, layout), dense_layout(out, layout)
    # weight (K, 1, kh, kw): both memory formats put (k, r, s) at k*kh*kw + r*kw + s.
    if x_nhwc is None or x_nhwc != y_nhwc or dense_layout(w, layout) is None:
        raise Unsupported("depthwise conv2d needs x and out both dense NCHW or both dense NHWC, and a "
                          "dense weight")

    n, c, h, wd = spec.input_shape
    k, p, q = spec.out_channels, spec.out_height, spec.out_width
    b = bias if bias is not None else out  # never read without HAS_BIAS
    sizes = (c, k, h, wd, p, q, spec.stride_h, spec.stride_w, spec.padding_h, spec.padding_w,
             spec.dilation_h, spec.dilation_w)
    meta = {"KH": spec.kernel_h, "KW": spec.kernel_w, "MULT": k // c, "HAS_BIAS": bias is not None}
    if x_nhwc:
        rows = n * p * q

        def grid(config: dict) -> tuple[int]:
            return (triton.cdiv(rows, config["BLOCK_P"]) * triton.cdiv(k, config["BLOCK_C"]),)

        block_c = next_pow2(k)
        fixed = {"BLOCK_P": _INTERPRETER_NHWC["BLOCK_P"], "BLOCK_C": min(_INTERPRETER_NHWC["BLOCK_C"], block_c)}
        return bind(_depthwise_nhwc_kernel, _nhwc_tiles(block_c), grid,
                    (x, tap_major_filter(spec, w), b, out, rows, *sizes), meta, fixed)

    planes = n * k

    def plane_grid(config: dict) -> tuple[int]:
        return (triton.cdiv(planes, config["BLOCK_PL"]) * triton.cdiv(p * q, config["BLOCK_PIX"]),)

    block_pix = next_pow2(p * q)
    pix = min(_INTERPRETER_NCHW_TILE, block_pix)
    fixed = {"BLOCK_PL": _INTERPRETER_NCHW_TILE // pix, "BLOCK_PIX": pix}
    return bind(_depthwise_nchw_kernel, _nchw_tiles(block_pix), plane_grid, (x, w, b, out, planes, *sizes),
                meta, fixed)
