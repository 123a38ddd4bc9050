"""A convolution as an implicit GEMM fed by Hopper's tensor-memory accelerator.

A program owns a BH x BW patch of output pixels of one image, or the same patch in BI consecutive
images where that wastes less past the planes' edges (BLOCK_M = BI * BH * BW rows of the GEMM;
``patch_shape``), and BLOCK_N output channels.  For each filter tap (r, s) the input pixels that
patch needs are again a BH x BW patch, shifted by (r * dilation - padding) rows and columns: one
box of the input, which the copy engine fetches for a BLOCK_K run of channels, filling zeros where
the box hangs over the image's edge (the padding, negative coordinates included) or past the last
channel.  The weight, copied once at build to tap-major [R, S, K, C] (it stays between launches,
as in inference), gives its (r, s) slice the same way, so the reduction over taps and channel
blocks needs no index math, no masks and no gathers; an NHWC output patch goes out through a
descriptor too, clipped at the edges.

Strides: with stride (SH, SW) the pixels a tap reads are every SH-th row and SW-th column, which
is no box of [N, H, W, C].  They are a box of its phase view [N, H / SH, SH, W / SW, SW * C]:
input row SH * j + a is (j, a), so tap (r, s) reads phase a = (r * dilation - padding) mod SH at
rows j shifted by the floor of (r * dilation - padding) / SH (columns alike, phase b selecting
channels b * C to b * C + C of the last dimension).  Past-the-edge j is again zero-filled.  The
view needs H and W divisible by the stride and the channel block dividing C (else a box would
read the next phase's channels); stride 1 is the same view with SH = SW = 1.

Narrow inputs: a pixel row the copy engine cannot address (3 RGB channels are 6 bytes in bf16)
or, at a column stride, one the channel blocks cannot divide, is first copied into zero-padded
pixel rows inside the timed call (``_pad_channels_kernel``: 8 channels for 16-bit stride-1
inputs, 16 at a column stride; the weight padded alike once, at build).  The copy moves little
next to such a layer's output (VGG-16's conv1_1 writes 21 times its padded input), and the
zero channels cost only multiplies, which a first layer has to spare.

NCHW: the input is first copied to channels_last inside the timed call (``layout.py``, as the
implicit GEMM does; an input already channels_last, as the unfolded convolution's, is read as it
is); the output needs no copy, since the accumulator is already laid out as an
NCHW tile (channels by pixels): it is stored through pointers, each patch row a contiguous run
of pixels.

Where it applies: NHWC or NCHW, one group, any padding and dilation, fp16/bf16/tf32 (fp32 stays on
the FMA units); NHWC outputs need rows of a multiple of 16 bytes, NCHW inputs no channel padding
(RGB first layers run lowered).  ``conv2d.build`` times it beside the implicit GEMM and keeps the
faster.  The patches waste the rows and columns past the image's edge where no box of powers of two
tiles the planes (7 x 7 planes at best in 1 x 8 patches: 87.5 % of the tile used), which the
pointer-based implicit GEMM does not.

Operand order: the tile is computed transposed, out^T [BLOCK_N, BLOCK_M] = W [BLOCK_N, BLOCK_K] x
patch^T, so that the warpgroup MMA reads both operands from shared memory where the copy engine
put them.  The compiler views a [1, BH, 1, BW, BLOCK_K] box as the [BLOCK_M, BLOCK_K] tile it is
only as the second operand; as the first it copied the patch into registers every step (Triton
3.6 and 3.9).  The weight's [1, 1, BLOCK_N, BLOCK_K] box, its unit dimensions leading, is the
first operand as it lands.  The accumulator is transposed back once a tile, in the epilogue.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import triton
import triton.language as tl

from layerbench.builders import Built, Kernel, Tensors, in_order
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d

from kernels.triton.layout import channels_last_copy
from kernels.triton.support import DOT_MODE, DOT_PRECISION, interpreting, next_pow2
from kernels.triton.tma import TensorDescriptor, Launch, check_tma, choose_config


def _config(block_m: int, block_n: int, block_k: int, warps: int, stages: int, per_sm: int = 0) -> dict[str, int]:
    """A tile config (BLOCK_M pixels, BLOCK_N output channels); ``per_sm`` > 0: that many
    persistent programs an SM walk the tiles."""
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "num_warps": warps, "num_stages": stages,
            "PER_SM": per_sm}


CONFIGS = {
    "mma16": [_config(128, 128, 64, 8, 3), _config(128, 128, 64, 4, 4), _config(128, 256, 64, 8, 3),
              _config(64, 128, 64, 4, 4), _config(128, 64, 64, 4, 4), _config(256, 128, 64, 8, 3),
              _config(128, 128, 64, 8, 3, per_sm=1), _config(128, 64, 64, 4, 4, per_sm=2)],
    "tf32": [_config(128, 128, 32, 8, 3), _config(128, 128, 32, 4, 4), _config(64, 128, 32, 4, 4),
             _config(128, 64, 32, 4, 4), _config(128, 128, 32, 8, 3, per_sm=1)],
}
INTERPRETER_CONFIG = _config(16, 16, 16, 4, 1)
INTERPRETER_SMS = 3  # under the interpreter persistent programs walk several tiles each
MIN_BLOCK_K = 16  # tl.dot's least reduction
NCHW_PATCH_WIDTH = 8  # the narrowest patch of a tile stored through pointers (see patch_shape)
PAD_PIXELS = 256  # pixels a program of the channel-padding copy moves


@triton.jit
def _tile_origin(tile, P, Q, K, BI: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, BLOCK_N: tl.constexpr):
    """(first image, first row, first column, first channel) of output tile ``tile``."""
    # Channel tiles fastest: neighbouring programs read the same input patch while it is in L2.
    tiles_n = tl.cdiv(K, BLOCK_N)
    tiles_w = tl.cdiv(Q, BW)
    tiles_h = tl.cdiv(P, BH)
    k0 = (tile % tiles_n) * BLOCK_N
    rest = tile // tiles_n
    w0 = (rest % tiles_w) * BW
    rest = rest // tiles_w
    h0 = (rest % tiles_h) * BH
    return (rest // tiles_h) * BI, h0, w0, k0


@triton.jit
def _conv_tile(x_desc, w_desc, n, h0, w0, k0, C, PAD_H, PAD_W, DIL_H, DIL_W,
               R: tl.constexpr, S: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PRECISION: tl.constexpr,
               BI: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr):
    """The tile's fp32 accumulators, [BLOCK_N, BLOCK_M]: the reduction over taps and channel blocks."""
    BLOCK_M: tl.constexpr = BI * BH * BW
    steps_c = tl.cdiv(C, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)  # transposed: see the module docstring
    # Whole strides covering the padding: a tap's offset lifted by them is never negative.
    lift_h = (PAD_H + SH - 1) // SH
    lift_w = (PAD_W + SW - 1) // SW
    for i in range(R * S * steps_c):
        tap = i // steps_c
        c0 = (i - tap * steps_c) * BLOCK_K
        r = tap // S
        s = tap - r * S
        # The tap's offset, lifted so that % and // see no negative numbers: its phase and its
        # shift in phase rows (columns).
        off_h = r * DIL_H - PAD_H + lift_h * SH
        off_w = s * DIL_W - PAD_W + lift_w * SW
        a = off_h % SH
        b = off_w % SW
        a_box = x_desc.load([n, h0 + off_h // SH - lift_h, a, w0 + off_w // SW - lift_w, b * C + c0])
        w_box = w_desc.load([r, s, k0, c0])
        acc = tl.dot(w_box.reshape(BLOCK_N, BLOCK_K), a_box.reshape(BLOCK_M, BLOCK_K).T, acc,
                     input_precision=PRECISION)
    return acc


@triton.jit
def _store_tile(y, b_ptr, acc, n, h0, w0, k0, N, K, P, Q, HAS_BIAS: tl.constexpr, Y_NCHW: tl.constexpr,
                BI: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, BLOCK_N: tl.constexpr):
    """The tile plus bias into the output: ``y`` is its descriptor (NHWC), or with Y_NCHW the
    output tensor itself, written through pointers."""
    ks = k0 + tl.arange(0, BLOCK_N)
    if HAS_BIAS:  # b_ptr is the output itself when there is no bias (never read then)
        acc += tl.load(b_ptr + ks, mask=ks < K, other=0.0).to(tl.float32)[:, None]
    if Y_NCHW:  # acc is [channels, pixels]: an NCHW tile, each patch row a run of pixels
        m = tl.arange(0, BI * BH * BW)
        pi = m // (BH * BW)
        ph = h0 + (m // BW) % BH
        pw = w0 + m % BW
        tile = y + (n.to(tl.int64) * K + k0) * P * Q  # 32-bit offsets within the tile's planes
        offs = (tl.arange(0, BLOCK_N) * P)[:, None] * Q + ((pi * K * P + ph) * Q + pw)[None, :]
        ok = (ks < K)[:, None] & ((n + pi < N) & (ph < P) & (pw < Q))[None, :]
        tl.store(tile + offs, acc.to(y.dtype.element_ty), mask=ok)
    else:
        tile = acc.T.to(b_ptr.dtype.element_ty)  # [pixels, channels], as the output lies
        y.store([n, h0, w0, k0], tile.reshape(BI, BH, BW, BLOCK_N))


@triton.jit(do_not_specialize=["N"])
def _conv_tma_kernel(x_desc, w_desc, y, b_ptr, N, P, Q, K, C, PAD_H, PAD_W, DIL_H, DIL_W,
                     R: tl.constexpr, S: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                     HAS_BIAS: tl.constexpr, Y_NCHW: tl.constexpr, PRECISION: tl.constexpr, BI: tl.constexpr,
                     BH: tl.constexpr, BW: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     PROGRAMS: tl.constexpr):
    # PROGRAMS == 0: one tile a program.  Else PROGRAMS programs (one or two an SM) walk the tiles,
    # the loop over tiles flattened with the reduction's, so the next tile's loads are in flight
    # while a tile's epilogue runs: short reductions (3x3 over 64 channels: 9 steps) lose a large
    # share of a one-tile program to filling and draining its pipeline.
    if PROGRAMS == 0:
        n, h0, w0, k0 = _tile_origin(tl.program_id(0), P, Q, K, BI, BH, BW, BLOCK_N)
        acc = _conv_tile(x_desc, w_desc, n, h0, w0, k0, C, PAD_H, PAD_W, DIL_H, DIL_W, R, S, SH, SW, PRECISION,
                         BI, BH, BW, BLOCK_N, BLOCK_K)
        _store_tile(y, b_ptr, acc, n, h0, w0, k0, N, K, P, Q, HAS_BIAS, Y_NCHW, BI, BH, BW, BLOCK_N)
    else:
        tiles = tl.cdiv(N, BI) * tl.cdiv(P, BH) * tl.cdiv(Q, BW) * tl.cdiv(K, BLOCK_N)
        for tile in tl.range(tl.program_id(0), tiles, PROGRAMS, flatten=True):
            n, h0, w0, k0 = _tile_origin(tile, P, Q, K, BI, BH, BW, BLOCK_N)
            acc = _conv_tile(x_desc, w_desc, n, h0, w0, k0, C, PAD_H, PAD_W, DIL_H, DIL_W, R, S, SH, SW,
                             PRECISION, BI, BH, BW, BLOCK_N, BLOCK_K)
            _store_tile(y, b_ptr, acc, n, h0, w0, k0, N, K, P, Q, HAS_BIAS, Y_NCHW, BI, BH, BW, BLOCK_N)


@triton.jit
def _pad_channels_kernel(src_ptr, dst_ptr, pixels, C: tl.constexpr, P: tl.constexpr, P_POW2: tl.constexpr,
                         BLOCK: tl.constexpr):
    # Pixel rows of C channels into rows of P (C < P), the channels past C written as zeros.
    pix = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ch = tl.arange(0, P_POW2)
    inside = pix[:, None] < pixels
    row = tl.load(src_ptr + pix[:, None] * C + ch[None, :], mask=inside & (ch[None, :] < C), other=0.0)
    tl.store(dst_ptr + pix[:, None] * P + ch[None, :], row, mask=inside & (ch[None, :] < P))


def padded_channels(spec: Conv2d, dtype: DType) -> int:
    """The input channels the kernel reads: ``in_channels``, or the fewest above it whose pixel
    row is a multiple of 16 bytes and, at a column stride, of the least channel block."""
    unit = 16 // dtype.torch_dtype.itemsize
    if spec.stride_w > 1:
        unit = max(unit, MIN_BLOCK_K)  # both are powers of two
    return -(-spec.in_channels // unit) * unit


def tma_refusal(spec: Conv2d, dtype: DType, layout: str) -> str | None:
    """Why the TMA convolution cannot run this point (None where it can, tensors permitting)."""
    if spec.height % spec.stride_h or spec.width % spec.stride_w:
        return (f"the TMA convolution's phase view needs the input's height and width divisible by the stride: "
                f"{spec.height}x{spec.width} at stride {spec.stride_h}x{spec.stride_w}")
    if spec.groups != 1:
        return f"the TMA convolution runs one group, this point has {spec.groups}"
    if DOT_MODE[dtype.name] not in CONFIGS:
        return f"the TMA convolution runs fp16, bf16 and tf32 on the tensor cores, not {dtype.name}"
    if layout == "NCHW" and padded_channels(spec, dtype) != spec.in_channels:
        return (f"the TMA convolution pads narrow pixel rows of NHWC inputs only: in_channels "
                f"{spec.in_channels} in {dtype.name} NCHW")
    if layout == "NHWC" and spec.out_channels * dtype.torch_dtype.itemsize % 16:
        return (f"the copy engine needs rows of a multiple of 16 bytes: out_channels {spec.out_channels} "
                f"in {dtype.name}")
    return None


def channel_block(spec: Conv2d, cap: int) -> int:
    """BLOCK_K up to ``cap`` (a power of two): at stride 1 along the width the smallest power of two
    holding C (at least MIN_BLOCK_K, the tail zero-filled), past it the largest dividing C, since a
    box past C would read the next phase's channels (``padded_channels`` has made 16 divide C)."""
    c = spec.in_channels
    if spec.stride_w == 1:
        return min(cap, max(MIN_BLOCK_K, next_pow2(c)))
    block = cap
    while c % block:
        block //= 2
    return block


def tap_major(weight: torch.Tensor) -> torch.Tensor:
    """The weight [K, C, R, S] (either memory format) as a fresh dense tap-major [R, S, K, C]."""
    taps = weight.permute(2, 3, 0, 1)
    # A new allocation, never a view: packed strides for the size-1 dimensions of a 1x1 filter too.
    return torch.empty(taps.shape, dtype=weight.dtype, device=weight.device).copy_(taps)


def _views(spec: Conv2d, layout: str, tensors: Tensors, out: torch.Tensor) -> dict[str, torch.Tensor]:
    """x as its phase view [N, H / SH, SH, W / SW, SW * C] (see the module docstring) and an NHWC
    output as the dense [N, H, W, C]-ordered tensor it is in memory, both with packed strides (torch
    leaves a size-1 dimension's stride arbitrary; a descriptor needs every stride a multiple of
    16 bytes), and the tap-major weight ``tensors["weight_taps"]``.  An NCHW output is written
    through pointers: no view."""
    views = {"weight": tensors["weight_taps"]}
    for name, t in (("x", tensors["x"]), ("out", out)) if layout == "NHWC" else (("x", tensors["x"]),):
        view = t.permute(0, 2, 3, 1)
        if not view.is_contiguous():
            raise Unsupported(f"the TMA convolution needs {name} dense in channels_last order")
        _, h, w, c = view.shape
        views[name] = view.as_strided(view.shape, (h * w * c, w * c, c, 1))
    n, h, w, c = views["x"].shape
    sh, sw = spec.stride_h, spec.stride_w
    views["x"] = views["x"].as_strided((n, h // sh, sh, w // sw, sw * c), (h * w * c, sh * w * c, w * c, sw * c, 1))
    return views


def patch_shape(spec: Conv2d, block_m: int, layout: str) -> tuple[int, int, int]:
    """(images, rows, columns) of a tile's BLOCK_M output pixels, each a power of two: the box that
    covers the batch's output planes with the least work past their edges, counted over images,
    rows and columns alike (the MMA computes every pixel of the box).  A 14 x 14 plane is 32
    images of 2 x 2 patches (all of the work on the planes) rather than 8 x 16 patches (77 %), a 56
    x 56 plane two images of 8 x 8 rather than 16 x 8 patches (87.5 %).  On a tie the widest patch
    (longer runs of pixels), then the tallest (fewer images a tile).  An NCHW output is stored
    through pointers, a run of BW pixels a patch row, so its patches are at least 8 wide (16-byte
    runs in 16-bit), whatever they waste."""
    least = min(NCHW_PATCH_WIDTH, block_m) if layout == "NCHW" else 1

    def share(size: int, block: int) -> float:
        return size / (triton.cdiv(size, block) * block)

    shapes = []
    for bw in _powers_of_two(least, max(least, min(block_m, next_pow2(spec.out_width)))):
        for bh in _powers_of_two(1, min(block_m // bw, next_pow2(spec.out_height))):
            bi = block_m // (bw * bh)
            covered = share(spec.batch, bi) * share(spec.out_height, bh) * share(spec.out_width, bw)
            shapes.append(((covered, bw, bh), (bi, bh, bw)))
    return max(shapes)[1]


def _powers_of_two(low: int, high: int) -> list[int]:
    """The powers of two from ``low`` to ``high`` (both powers of two), ascending."""
    return [1 << e for e in range(low.bit_length() - 1, high.bit_length())]


def _launch(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor,
            config: dict[str, Any]) -> Launch:
    """The kernel's launch with ``config`` (its patch shape from the batch's output planes)."""
    views = _views(spec, layout, tensors, out)
    bias = tensors.get("bias")
    bi, bh, bw = patch_shape(spec, config["BLOCK_M"], layout)
    bn = config["BLOCK_N"]
    bk = channel_block(spec, config["BLOCK_K"])
    y = TensorDescriptor.from_tensor(views["out"], [bi, bh, bw, bn]) if "out" in views else out
    descs = (TensorDescriptor.from_tensor(views["x"], [bi, bh, 1, bw, bk]),
             TensorDescriptor.from_tensor(views["weight"], [1, 1, bn, bk]), y)
    p, q, k = spec.out_height, spec.out_width, spec.out_channels
    tiles = triton.cdiv(spec.batch, bi) * triton.cdiv(p, bh) * triton.cdiv(q, bw) * triton.cdiv(k, bn)
    sms = INTERPRETER_SMS if interpreting(_conv_tma_kernel) else \
        torch.cuda.get_device_properties(out.device).multi_processor_count
    programs = config["PER_SM"] * sms
    grid = (min(programs, tiles) if programs else tiles,)
    args = (*descs, bias if bias is not None else out, spec.batch, p, q, k, spec.in_channels,
            spec.padding_h, spec.padding_w, spec.dilation_h, spec.dilation_w)
    meta = {"R": spec.kernel_h, "S": spec.kernel_w, "SH": spec.stride_h, "SW": spec.stride_w,
            "HAS_BIAS": bias is not None, "Y_NCHW": "out" not in views,
            "PRECISION": DOT_PRECISION[dtype.name], "BI": bi, "BH": bh, "BW": bw, "BLOCK_N": bn, "BLOCK_K": bk,
            "PROGRAMS": programs, "num_warps": config["num_warps"], "num_stages": config["num_stages"]}
    return Launch(_conv_tma_kernel, grid, args, meta, out.device)


def _padded_input(spec: Conv2d, tensors: Tensors, channels: int) -> tuple[Conv2d, Tensors, Kernel]:
    """The layer as the kernel runs it with ``channels`` input channels: its spec, tensors (the
    weight zero-padded now, the input's padded buffer) and the copy that fills that buffer."""
    x, weight = tensors["x"], tensors["weight"]
    if not x.permute(0, 2, 3, 1).is_contiguous():
        raise Unsupported("the TMA convolution needs x dense in channels_last order")
    n, c, h, w = x.shape
    wide = torch.empty((n, channels, h, w), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    padded_weight = torch.zeros((weight.shape[0], channels, *weight.shape[2:]), dtype=weight.dtype,
                                device=weight.device)
    padded_weight[:, :c] = weight
    pixels = n * h * w
    copy = _pad_channels_kernel[(triton.cdiv(pixels, PAD_PIXELS),)]
    meta = {"C": c, "P": channels, "P_POW2": next_pow2(channels), "BLOCK": PAD_PIXELS}

    def pad() -> None:
        copy(x, wide, pixels, **meta)

    padded = {**tensors, "x": wide, "weight": padded_weight}
    return dataclasses.replace(spec, in_channels=channels), padded, pad


def build_conv_tma(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    """The TMA implicit GEMM for this point (``Unsupported`` with the reason where it cannot run)."""
    reason = tma_refusal(spec, dtype, layout)
    if reason:
        raise Unsupported(reason)
    channels = padded_channels(spec, dtype)
    pad: Kernel | None = None
    if channels != spec.in_channels:
        spec, tensors, pad = _padded_input(spec, tensors, channels)
    elif layout == "NCHW":
        if not out.is_contiguous():
            raise Unsupported("the TMA convolution needs an NCHW out dense (contiguous)")
        # The input copied to channels_last in the timed call; one already channels_last (the
        # unfolded convolution's) is read as it is.
        if not tensors["x"].permute(0, 2, 3, 1).is_contiguous():
            if not tensors["x"].is_contiguous():
                raise Unsupported("the TMA convolution needs an NCHW x dense (contiguous)")
            x_nhwc, pad = channels_last_copy(tensors["x"])
            pad()  # the buffer must hold the input before the configs are timed on it
            tensors = {**tensors, "x": x_nhwc}
    tensors = {**tensors, "weight_taps": tap_major(tensors["weight"])}  # once: the weight is a constant
    views = _views(spec, layout, tensors, out)
    check_tma(_conv_tma_kernel, out.device, views)
    if interpreting(_conv_tma_kernel):
        config = dict(INTERPRETER_CONFIG)
    else:
        config = choose_config(f"{__name__}._conv_tma_kernel",
                               [tensors["x"], tensors["weight"], out, tensors.get("bias")],
                               {"spec": repr(spec), "precision": DOT_PRECISION[dtype.name]},
                               CONFIGS[DOT_MODE[dtype.name]], lambda c: _launch(spec, dtype, layout, tensors, out, c))
    launch = _launch(spec, dtype, layout, tensors, out, config)
    patch = "x".join(str(launch.meta[d]) for d in ("BI", "BH", "BW") if d != "BI" or launch.meta["BI"] > 1)
    details: dict[str, object] = {"patch": patch, "block_n": launch.meta["BLOCK_N"],
                                  "block_k": launch.meta["BLOCK_K"], "warps": config["num_warps"],
                                  "stages": config["num_stages"]}
    if launch.meta["PROGRAMS"]:
        details["persistent_programs"] = launch.meta["PROGRAMS"]
    if pad is None:
        return Built(launch, details)
    copied = {"input_copy": "channels_last"} if layout == "NCHW" else {"padded_channels": channels}
    return Built(in_order(pad, launch), {**details, **copied})
