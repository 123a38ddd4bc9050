"""2-D convolution in Triton as an implicit GEMM, for tf32 also as an FFT convolution, and
depthwise as a direct kernel (depthwise.py).

Algorithm (recorded in ``kernel.details``): for a plain tf32 convolution with stride 1 (one
stride and padding for both axes, no dilation, one group), the FFT convolution of fft_conv.py is
built as well, both are timed on the real buffers and the faster is kept, as cudnnFind does for
cuDNN (which itself runs FFT or Winograd on the thesis's NCHW layers).  Depthwise convolutions
(groups == in_channels) go to the direct kernel: one multiply-add per loaded element is no GEMM.
A pointwise NHWC convolution (1x1, stride 1, no padding, one group) is a plain GEMM: the linear
layer's GEMM on views of its tensors (pointwise_conv.py) is timed beside the implicit GEMM, a
strided one (no padding) the same GEMM over a copy of the pixels on the stride's grid, or one
GEMM that gathers those pixels as it loads them.  A pointwise NCHW one is one GEMM per image on
the tensors as they are (the same module).  On Hopper an NHWC convolution of one group (strided
ones where the stride divides the input's sides) is also built as an implicit GEMM fed by the
tensor-memory accelerator (conv_tma.py).  An NHWC
convolution whose input pixels are narrower than 16 bytes (RGB first layers) is also built as an
explicit im2col followed by the linear layer's GEMM (lowered_conv.py, kernels/lowering.py), and
on Hopper as its input unfolded along the width followed by the TMA convolution of an R x 1
filter over it (the same modules).  All are timed beside each other and the fastest is kept.

GEMM view: M = N*P*Q output pixels, N = K output channels, reduction over C*R*S.  A program owns
a BLOCK_M x BLOCK_N tile of the output and walks the reduction in BLOCK_K steps; A tiles are
gathered from the input on the fly (padding and ragged edges are masked loads of zero), B tiles
come straight from the weight, products accumulate in fp32, bias is added in the epilogue and
the result is written in the output's dtype.  Stride, padding and dilation are per axis, in the
index maps from output pixel and tap to input pixel.  A grouped convolution is one GEMM per
group (program axis 1), each over its group's C / groups input and K / groups output channels.
Input and output are dense NCHW or NHWC, each specialised at compile time (addresses follow from
the sizes, so only the channel counts and C*R*S need compiling per divisibility pattern); the
weight is walked in its own memory order.

Two walks of the reduction, chosen per problem:

* channel-blocked (NHWC only): loop over (r, s) taps and blocks of BLOCK_K channels.  Each A row
  is a contiguous run of channels of one input pixel and each B column a contiguous run of the
  channels_last weight, so loads vectorise.  BLOCK_K is the largest of 64/32/16 (32/16 for 4-byte
  dtypes) that pads the channel loop by at most 1/8; channel counts that no block fits that well
  (C = 3, 5, 17, ...) take the flat walk instead.
* flat: BLOCK_K consecutive indices of the reduction, in the weight's memory order (c, r, s for
  NCHW weights, r, s, c for channels_last), decomposed into (c, r, s) per step.  Nothing is
  wasted on padding the channel loop; loads are gathers.

NCHW input whose channel count fits the channel-blocked walk is first copied to NHWC (and the
weight to channels_last) by a Triton transpose kernel inside the timed call, as cuDNN does with
its nchwToNhwc kernels; the GEMM then writes the NCHW output directly.  The flat walk gathers
NCHW several times slower than the NHWC walk runs, while the copy costs one read and write of
the input.

Output channels past a multiple of 128 (L6's 192) run as two launches, the multiple and the rest,
each with its own tile (channel_parts): one launch of 128-wide tiles would compute 256 channels
for 192.

Autotuning (GPU): a few tile shapes per arithmetic mode (tensor-core fp16/bf16, tf32, fp32 FMA),
keyed on every size of the problem, the layout and the mode; narrow groups get tiles as narrow
as their channels (at least 16).  Under the interpreter one small fixed tile is used.  Program
ids are grouped along M so neighbouring programs share B tiles in L2.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import triton
import triton.language as tl

from layerbench.builders import Built, Kernel, Tensors, check_workspace, choice_of, fastest_of, in_order
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.registry import register
from layerbench.layers import Conv2d

from kernels.lowering import lowered_refusal, unfolded_refusal
from kernels.pointwise_views import nchw_pointwise_refusal, pointwise_refusal, strided_refusal
from kernels.triton import fft_conv
from kernels.triton.conv_tma import build_conv_tma
from kernels.triton.depthwise import build_depthwise
from kernels.triton.depthwise_pairs import build_depthwise_pairs, pairs_refusal
from kernels.triton.depthwise_rows import build_depthwise_flat_rows, build_depthwise_rows, flat_refusal, rows_refusal
from kernels.triton.lowered_conv import build_lowered, build_unfolded
from kernels.triton.fft_plan import INT32_LIMIT, fft_plan
from kernels.triton.layout import channels_last_copy
from kernels.triton.pointwise_conv import (build_nchw_pointwise, build_pointwise, build_strided_gather,
                                            build_strided_pointwise)
from kernels.triton.support import (DOT_MODE, DOT_PRECISION, MAX_GRID_Y, bind, check_conv_tensors,
                                    check_inputs, dense_layout, grouped_tile, interpreting, next_pow2,
                                    pixel_of, pixel_run, quick_bench, tile_config)


def _tile(block_m: int, block_n: int, block_k: int, warps: int, stages: int,
          swap: bool = False) -> triton.Config:
    """tile_config plus SWAP: compute the tile transposed, C^T = B^T A^T.

    A Hopper warpgroup's MMA is 64 rows tall and up to 256 columns wide; swapped, the output
    channels are the 64-row side and the pixels the wide one (the gain: notes/perf.md).
    """
    config = tile_config(block_m, block_n, block_k, warps, stages)
    config.kwargs["SWAP"] = swap
    return config


# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) per arithmetic mode; BLOCK_K is an upper bound that
# the channel-blocked walk may lower to fit C.
_CONFIGS = {
    "mma16": [_tile(128, 128, 64, 8, 3), _tile(128, 64, 64, 4, 4),
              _tile(64, 128, 64, 4, 4), _tile(64, 64, 64, 4, 4),
              _tile(256, 128, 64, 8, 3), _tile(128, 256, 64, 8, 3),
              _tile(256, 128, 64, 8, 3, swap=True), _tile(128, 128, 64, 8, 3, swap=True)],
    "tf32": [_tile(128, 128, 32, 8, 3), _tile(128, 64, 32, 4, 4),
             _tile(64, 128, 32, 4, 4), _tile(64, 64, 32, 4, 4),
             _tile(256, 128, 32, 8, 3), _tile(128, 128, 64, 8, 3),
             _tile(256, 128, 32, 8, 3, swap=True), _tile(128, 128, 32, 4, 3, swap=True)],
    "fma32": [_tile(64, 64, 32, 4, 2), _tile(128, 64, 32, 8, 2),
              _tile(64, 128, 32, 8, 2), _tile(128, 128, 32, 8, 2)],
}
_INTERPRETER_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 4, "SWAP": False}


@triton.jit
def _mma(a, b, acc, SWAP: tl.constexpr, PRECISION: tl.constexpr):
    """acc + a @ b, or with SWAP its transpose acc + (a @ b)^T = acc + b^T @ a^T (acc transposed)."""
    if SWAP:
        return tl.dot(tl.trans(b), tl.trans(a), acc, input_precision=PRECISION)
    else:
        return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _mma_result(acc, SWAP: tl.constexpr):
    """The (BLOCK_M, BLOCK_N) tile from an accumulator ``_mma`` filled."""
    if SWAP:
        return tl.trans(acc)
    else:
        return acc


# Only C, CX, K, KY, KG and C*R*S are specialised on: their divisibility by 16 is what lets loads
# and stores vectorise.  Every other size would only multiply the compiles (one per divisibility
# pattern).  K is the number of output channels this launch computes per group, KY the output's: a
# launch may own a run of channels (w_ptr, b_ptr and y_ptr then point at its first one).
# Groups: program axis 1 is the group g, an independent GEMM over C = CX / groups input channels
# from channel g*C of x, writing KG output channels from channel g*KG (weight rows g*KG...).
# One group (CX == C, GROUPED false) is the plain convolution.
@triton.jit(do_not_specialize=["N", "H", "W", "P", "Q", "R", "S", "stride_h", "stride_w", "pad_h", "pad_w",
                               "dil_h", "dil_w"])
def _conv2d_kernel(x_ptr, w_ptr, b_ptr, y_ptr,
                   N, C, CX, H, W, K, KY, KG, P, Q, R, S, CRS, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                   X_NHWC: tl.constexpr, Y_NHWC: tl.constexpr, PIX_RUN: tl.constexpr,
                   CHANNEL_BLOCK: tl.constexpr, WEIGHT_RSC: tl.constexpr, GROUPED: tl.constexpr,
                   HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   GROUP_M: tl.constexpr, SWAP: tl.constexpr):
    # Dense tensors: strides follow from the sizes and the layout.
    if X_NHWC:
        sxc = 1
        sxw = CX
        sxh = W * CX
    else:
        sxw = 1
        sxh = W
        sxc = H * W
    sxn = CX * H * W
    if GROUPED:  # a compile-time switch, so that plain convolutions keep their pointers' alignment
        if Y_NHWC:
            syc = 1
        else:
            syc = P * Q
        g = tl.program_id(1)
        x_ptr += g * C * sxc
        w_ptr += g * KG * CRS
        b_ptr += g * KG
        y_ptr += g * KG * syc
    M = N * P * Q
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, K, BLOCK_M, BLOCK_N, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < K
    # Rows/columns past the edge read row/column 0 (valid addresses) and are never stored.
    m = tl.where(m_ok, offs_m, 0)
    k_out = tl.where(n_ok, offs_n, 0)
    n, p, q = pixel_of(m, P, Q)
    ih0 = p * stride_h - pad_h
    iw0 = q * stride_w - pad_w
    x_rows = x_ptr + n * sxn
    w_cols = w_ptr + k_out * CRS

    acc = tl.zeros((BLOCK_N, BLOCK_M) if SWAP else (BLOCK_M, BLOCK_N), dtype=tl.float32)
    if CHANNEL_BLOCK:
        # x is NHWC and the weight channels_last: (k, c, r, s) sits at k*CRS + (r*S + s)*C + c.
        c_blocks = tl.cdiv(C, BLOCK_K)
        for step in range(0, R * S * c_blocks):
            rs = step // c_blocks
            cs = (step % c_blocks) * BLOCK_K + tl.arange(0, BLOCK_K)
            c_ok = cs < C
            ih = ih0 + (rs // S) * dil_h
            iw = iw0 + (rs % S) * dil_w
            pix_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a_ptrs = (x_rows + ih * sxh + iw * sxw)[:, None] + cs[None, :]
            a = tl.load(a_ptrs, mask=pix_ok[:, None] & c_ok[None, :], other=0.0)
            b = tl.load(w_cols[None, :] + (rs * C + cs)[:, None], mask=c_ok[:, None], other=0.0)
            acc = _mma(a, b, acc, SWAP, PRECISION)
    else:
        for k0 in range(0, CRS, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            k_ok = kk < CRS
            if WEIGHT_RSC:
                c = kk % C
                rs = kk // C
            else:
                c = kk // (R * S)
                rs = kk % (R * S)
            ih = ih0[:, None] + ((rs // S) * dil_h)[None, :]
            iw = iw0[:, None] + ((rs % S) * dil_w)[None, :]
            ok = (m_ok[:, None] & k_ok[None, :]) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a = tl.load(x_rows[:, None] + (c * sxc)[None, :] + ih * sxh + iw * sxw, mask=ok, other=0.0)
            b = tl.load(w_cols[None, :] + kk[:, None], mask=k_ok[:, None], other=0.0)
            acc = _mma(a, b, acc, SWAP, PRECISION)
    acc = _mma_result(acc, SWAP)

    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    # offs_n (not the clamped k_out) keeps the channel run provably contiguous: vector stores.
    if Y_NHWC:
        y_ptrs = y_ptr + (m * KY)[:, None] + offs_n[None, :]
    else:
        # From offs_m, not the clamped m: tl.where would hide that the pixels run contiguously.
        n_y = offs_m // (P * Q)
        pix = n_y * KY * P * Q + (offs_m - n_y * P * Q)
        planes = offs_n * (P * Q)
        if PIX_RUN > 1:  # see support.pixel_run
            pix = tl.max_contiguous(tl.multiple_of(pix, PIX_RUN), PIX_RUN)
            planes = tl.multiple_of(planes, PIX_RUN)
            # m_ok's lanes (M is a multiple of PIX_RUN), provably constant over each run: one vector a run.
            m_ok = (offs_m // PIX_RUN) * PIX_RUN < M
        y_ptrs = y_ptr + pix[:, None] + planes[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@functools.cache
def _tiles(mode: str, max_block_k: int, max_block_n: int | None = None) -> list[triton.Config]:
    """``mode``'s tiles with BLOCK_K (and BLOCK_N, where given) capped.

    The BLOCK_N cap is for narrow groups (ResNeXt's 4 to 32 channels a group): tiles as narrow as
    16 instead of 64-256 channels computed for a few.  A swapped tile is kept only while its
    channel side stays 64 wide, the rows of a warpgroup MMA.
    """
    configs = []
    for c in _CONFIGS[mode]:
        block_n = min(c.kwargs["BLOCK_N"], max_block_n or c.kwargs["BLOCK_N"])
        if c.kwargs["SWAP"] and block_n < 64:
            continue
        configs.append(_tile(c.kwargs["BLOCK_M"], block_n, min(c.kwargs["BLOCK_K"], max_block_k),
                             c.num_warps, c.num_stages, c.kwargs["SWAP"]))
    unique = list({str(c): c for c in configs}.values())
    return unique


# The tile width most configs use along the output channels; see channel_parts.
_WIDE_N = 128


def channel_parts(k: int, wide: int) -> list[tuple[int, int]]:
    """Output-channel runs [lo, hi) launched one after another, each autotuned on its own.

    k channels that overrun a multiple of ``wide`` are split into that multiple and the rest, so
    the rest gets tiles of its own width instead of padding every tile: 192 channels in 128-wide
    tiles compute 256, a quarter of the work wasted.
    """
    rest = k % wide
    if k < wide or rest == 0:
        return [(0, k)]
    return [(0, k - rest), (k - rest, k)]


def channel_block(c: int, max_block_k: int) -> int:
    """BLOCK_K for the channel-blocked walk: the largest block padding C by <= 1/8; 0 if none."""
    for bk in (64, 32, 16):
        if bk <= max_block_k and (-c % bk) * 8 <= c:
            return bk
    return 0


def build_igemm(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Kernel:
    """The implicit GEMM, one per group (after a layout copy where NCHW data fits the
    channel-blocked walk)."""
    check_inputs(_conv2d_kernel, dtype, Conv2d.dtypes, tensors, out, uses_dot=True)
    check_conv_tensors(spec, tensors, out)
    x, w = tensors["x"], tensors["weight"]
    bias = tensors.get("bias")
    # The reduction walks a channels_last weight in (r, s, c) order, a contiguous one in (c, r, s).
    x_nhwc, weight_rsc, y_nhwc = (dense_layout(t, layout) for t in (x, w, out))
    if x_nhwc is None or weight_rsc is None or y_nhwc is None:
        raise Unsupported("conv2d needs x, weight and out dense in NCHW or NHWC (channels_last)")

    n, cx, h, wd = spec.input_shape
    groups = spec.groups
    c, k_group = cx // groups, spec.out_channels // groups  # one group's GEMM: C by K_group channels
    p, q = spec.out_height, spec.out_width
    mode = DOT_MODE[dtype.name]
    # Under the interpreter the tile is fixed, so the channel block must fit its BLOCK_K.
    cap = _INTERPRETER_CONFIG["BLOCK_K"] if interpreting(_conv2d_kernel) else max(
        cfg.kwargs["BLOCK_K"] for cfg in _CONFIGS[mode])
    block_k = channel_block(c, cap)
    copies: list[Kernel] = []
    if block_k and not (x_nhwc and weight_rsc):
        # NCHW input (or weight): copy to NHWC in the timed call, then take the channel-blocked walk.
        if not x_nhwc:
            x, copy_x = channels_last_copy(x)
            copies.append(copy_x)
        if not weight_rsc:
            w, copy_w = channels_last_copy(w)
            copies.append(copy_w)
        x_nhwc = weight_rsc = True
    for copy in copies:
        copy()  # the buffers must hold the data before autotuning runs the GEMM on them
    fixed = dict(_INTERPRETER_CONFIG, BLOCK_K=block_k or _INTERPRETER_CONFIG["BLOCK_K"])
    meta = {"X_NHWC": x_nhwc, "Y_NHWC": y_nhwc, "CHANNEL_BLOCK": bool(block_k),
            "PIX_RUN": 1 if y_nhwc else pixel_run(p * q, out.element_size()),
            "WEIGHT_RSC": weight_rsc, "GROUPED": groups > 1, "HAS_BIAS": bias is not None,
            "PRECISION": DOT_PRECISION[dtype.name]}

    m_total = n * p * q
    crs = c * spec.kernel_h * spec.kernel_w
    wide = fixed["BLOCK_N"] if interpreting(_conv2d_kernel) else _WIDE_N
    narrow = max(16, next_pow2(k_group)) if groups > 1 else None
    configs = _tiles(mode, block_k or cap, narrow)  # bind tunes each part for its own K and KY
    launches = []
    for lo, hi in channel_parts(k_group, wide):
        # A run of each group's output channels: the weight's rows, the bias and the output's
        # channels lo..hi (of group 0; the kernel moves to its group's).
        w_part, y_part = w[lo:hi], out[:, lo:hi]
        b_part = bias[lo:hi] if bias is not None else y_part
        args = (x, w_part, b_part, y_part, n, c, cx, h, wd, hi - lo, spec.out_channels, k_group, p, q,
                spec.kernel_h, spec.kernel_w, crs, spec.stride_h, spec.stride_w, spec.padding_h, spec.padding_w,
                spec.dilation_h, spec.dilation_w)

        def grid(config: dict, channels: int = hi - lo) -> tuple[int, int]:
            tiles = triton.cdiv(m_total, config["BLOCK_M"]) * triton.cdiv(channels, config["BLOCK_N"])
            return (tiles, groups)

        launches.append(bind(_conv2d_kernel, configs, grid, args, meta, fixed))
    return in_order(*copies, *launches)


def build_fft(spec: Conv2d, dtype: DType, tensors: Tensors, out: torch.Tensor) -> Kernel:
    """The FFT convolution of fft_conv.py; Unsupported, with the reason, where it cannot run."""
    check_inputs(fft_conv._strided_gemm_kernel, dtype, Conv2d.dtypes, tensors, out, uses_dot=True)
    if dtype.name != "tf32":
        raise Unsupported(f"the FFT convolution runs tf32 only, not {dtype.name}")
    if spec.beyond_plain():
        raise Unsupported(f"the FFT convolution runs one stride and padding for both axes, dilation 1 and "
                          f"groups 1 only; this point has {spec.beyond_plain()}")
    plan = fft_plan(spec)
    x, w = tensors["x"], tensors["weight"]
    for name, t in (("x", x), ("weight", w), ("out", out)):
        if sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())) >= INT32_LIMIT:
            raise Unsupported(f"the FFT convolution indexes in int32; tensor {name} spans more")
    if out.is_cuda:
        check_workspace(plan.workspace_bytes, out.device, "the FFT convolution")
    return fft_conv.build(plan, x, w, tensors.get("bias") if spec.bias else None, out)


def _within_grid(spec: Conv2d, dtype: str, layout: str) -> str | None:
    """Refuse what the kernels cannot launch (declared to the registry, so ``plan`` shows it): the
    implicit GEMM puts a grouped convolution's groups on grid axis 1, which holds 65535 programs.
    Depthwise convolutions take their own kernel, whose grid is one axis."""
    if spec.depthwise or spec.groups <= MAX_GRID_Y:
        return None
    return (f"the Triton implicit GEMM runs at most {MAX_GRID_Y} groups (one grid axis); this point has "
            f"groups {spec.groups}")


@register("conv2d", "triton", backend="triton", devices=("cuda", "cpu"), supports=_within_grid,
          description="Triton convolution: implicit GEMM (fp32 accumulation, channel-blocked NHWC walk; "
                      "per-axis stride, padding and dilation, one GEMM per group), for plain tf32 "
                      "convolutions an FFT convolution on the tensor cores instead where it times faster "
                      "at build, for 1x1 NHWC ones the linear layer's GEMM (strided ones after a copy of "
                      "the pixels they read, or as a GEMM gathering them), for 1x1 NCHW ones a GEMM per image, on Hopper a TMA-fed "
                      "implicit GEMM (NCHW inputs after a copy to channels_last), for inputs of few "
                      "channels an explicit im2col and the linear layer's GEMM, or on Hopper unfolded "
                      "along the width into a TMA convolution of an R x 1 filter; depthwise a direct kernel "
                      "of its own, and for 3x3 ones also one that streams input rows through registers, "
                      "the faster kept")
def build(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Kernel:
    reason = _within_grid(spec, dtype.name, layout)
    if reason:
        raise Unsupported(reason)

    def on_gpu(build_path: Callable[[], Kernel | Built]) -> Callable[[], Kernel | Built]:
        def build_it() -> Kernel | Built:
            if interpreting(_conv2d_kernel):
                raise Unsupported("no timing under the Triton interpreter to choose it by")
            return build_path()  # refuses what it cannot run, with the reason
        return build_it

    if spec.depthwise:
        # The row-streaming kernels are timed beside the direct one where they apply (3x3; the 2-D one
        # at vertical stride 1, the flat one and the word-pair one (16-bit NCHW) at stride 1 or 2
        # both ways).
        rows = [("depthwise_rows", build_depthwise_rows, rows_refusal),
                ("depthwise_flat_rows", build_depthwise_flat_rows, flat_refusal),
                ("depthwise_pairs", build_depthwise_pairs, pairs_refusal)]
        others = [(name, on_gpu(functools.partial(builder, spec, dtype, layout, tensors, out)))
                  for name, builder, refusal in rows if refusal(spec, layout) is None]
        return fastest_of("depthwise", build_depthwise(spec, dtype, layout, tensors, out), others, quick_bench,
                          after_failure=lambda: torch.cuda.synchronize(out.device),
                          remember=choice_of("triton depthwise", spec, dtype.name, layout, tensors, out, "triton"))

    def fft() -> Kernel:
        if dtype.name == "tf32" and interpreting(_conv2d_kernel):
            raise Unsupported("no timing under the Triton interpreter to choose it by")
        return build_fft(spec, dtype, tensors, out)  # refuses other dtypes and fields, with the reason

    tma = on_gpu(lambda: build_conv_tma(spec, dtype, layout, tensors, out))
    # A 1x1 convolution is a plain GEMM (in NCHW one per image), a strided one after a copy of the
    # pixels it reads: no FFT for any of them.
    if pointwise_refusal(spec, layout) is None:
        first = ("pointwise_gemm", on_gpu(lambda: build_pointwise(spec, dtype, layout, tensors, out)))
    elif nchw_pointwise_refusal(spec, layout) is None:
        first = ("nchw_pointwise_gemm", on_gpu(lambda: build_nchw_pointwise(spec, dtype, layout, tensors, out)))
    elif strided_refusal(spec, layout) is None:
        first = ("strided_pointwise_gemm", on_gpu(lambda: build_strided_pointwise(spec, dtype, layout, tensors, out)))
    else:
        first = ("fft", fft)
    others = [first, ("tma_implicit_gemm", tma)]
    if strided_refusal(spec, layout) is None:
        others.append(("strided_gather_gemm", on_gpu(lambda: build_strided_gather(spec, dtype, layout, tensors, out))))
    # The narrow-input paths only where they apply: no reason on every other point.
    if lowered_refusal(spec, dtype, layout) is None:
        others.append(("im2col_gemm", on_gpu(lambda: build_lowered(spec, dtype, layout, tensors, out))))
    if unfolded_refusal(spec, dtype) is None:
        others.append(("unfolded_tma", on_gpu(lambda: build_unfolded(spec, dtype, layout, tensors, out))))
    return fastest_of("implicit_gemm", build_igemm(spec, dtype, layout, tensors, out), others, quick_bench,
                      after_failure=lambda: torch.cuda.synchronize(out.device),  # a sticky error is no fallback
                      remember=choice_of("triton conv2d", spec, dtype.name, layout, tensors, out, "triton"))
