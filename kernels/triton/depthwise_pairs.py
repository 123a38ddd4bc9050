"""Depthwise 3x3 convolution on 16-bit NCHW planes, two output columns an element, read as words.

The flat row-streaming kernel (``depthwise_rows.py``) loads each NCHW input row one 16-bit value
per tap: three 2-byte loads an output and row, each masked where its column lies in the padding.
Those loads, their masks and the unpacking around them, not DRAM, bound it (about 40 SASS
instructions an output on sm_90, under half a same-size copy's rate on MobileNetV2's layers).

Here an element computes two neighbouring outputs of a row, columns q and q + 1 (q even), whose
windows cover input columns iw = q * stride - pad_w to iw + 3 at stride 1, to iw + 4 at stride 2.
Those four or five 16-bit values lie in three aligned 32-bit words whatever the parity of iw: a
row costs three 4-byte loads for two outputs instead of six 2-byte ones, and funnel shifts line
the values up.  Columns in the padding are zeroed by masking their 16 bits with a per-element
constant worked out once (not with a predicate per load and row, of which a thread holding
several elements has too few registers): a zeroed tap adds +0 whatever its neighbour holds, inf
included.  A row above or below the image is one branch for the whole program; only a program
whose rows could reach before the tensor's first word or past its last (the first and last rows
of the first and last planes) masks its word loads.

As the flat kernel, a program walks a band of ``ROWS`` output rows down its elements (``BLOCK_E``
consecutive (plane, column pair) elements), each input row loaded once and added into the output
rows it belongs to (three at stride 1, two at stride 2), held as rolling fp32 accumulators; the
filter's nine taps are fp32 registers of each element (its plane's), fp32 fused multiply-adds,
the bias fused.  A row's words are loaded two steps before their arithmetic and unpacked one step
before it (software pipelined by hand).  Where every output row starts on a 4-byte boundary (an
even number of columns), an element's two outputs leave as one 32-bit store.

Scope: NCHW, 16-bit dtypes, 3x3 filters at strides (1, 1) and (2, 2) without dilation, one output
channel per input channel, any padding, an input that starts on a 4-byte boundary with an even
number of values.  The conv builder times it beside the other depthwise kernels where it applies.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from layerbench.builders import Kernel, Tensors
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d

from kernels import depthwise_scope
from kernels.triton.depthwise import tap_major_filter
from kernels.triton.depthwise_rows import element_filter
from kernels.triton.support import INT32_MAX, bind, dense_layout, divmod_magic, funnel, half_value, interpreting, magic

# (BLOCK_E, warps): 1, 2 or 4 elements (2, 4 or 8 outputs) a thread, each with bands of every ROWS
# (8 elements a thread take all 255 registers).  Fewer elements a thread take fewer registers, so
# more warps an SM hide the loads' latency: on 14 x 14 and 7 x 7 planes 4 elements a thread (128
# registers, 16 warps an SM) leave each warp waiting on its loads most of the time.
_TILES = [(32, 1), (64, 2), (128, 4), (64, 1), (128, 2), (256, 4), (128, 1), (256, 2), (512, 4)]
_ROWS = (8, 32)
_INTERPRETER = {"BLOCK_E": 16, "ROWS": 3}


@triton.jit
def _words(x_words, at, GUARD: tl.constexpr, WORDS):
    """Words at, at + 1 and at + 2 of x; with GUARD, zero those before x or past its end."""
    if GUARD:
        w0 = tl.load(x_words + at, mask=(at >= 0) & (at < WORDS), other=0)
        w1 = tl.load(x_words + at + 1, mask=(at + 1 >= 0) & (at + 1 < WORDS), other=0)
        w2 = tl.load(x_words + at + 2, mask=(at + 2 >= 0) & (at + 2 < WORDS), other=0)
    else:
        w0 = tl.load(x_words + at)
        w1 = tl.load(x_words + at + 1)
        w2 = tl.load(x_words + at + 2)
    return w0, w1, w2


@triton.jit
def _row_words(x_words, v0, ih, H, W, guarded, live, WORDS):
    """The three words holding input row ``ih``'s values under each element's two windows (from
    column iw on; ``v0``: value index of column iw in row 0 of the element's plane); zero off the
    image and where ``live`` is false."""
    w0 = tl.zeros(v0.shape, tl.uint32)
    w1 = w0
    w2 = w0
    if live & (ih >= 0) & (ih < H):
        at = (v0 + ih * W) >> 1
        if guarded:
            w0, w1, w2 = _words(x_words, at, True, WORDS)
        else:
            w0, w1, w2 = _words(x_words, at, False, WORDS)
    return w0, w1, w2


@triton.jit
def _row_values(w0, w1, w2, v0, ih, W, keep_lo, keep_hi, keep_4, dtype: tl.constexpr, STRIDE: tl.constexpr):
    """Row ``ih``'s values from its words (``_row_words``), in fp32: columns iw to iw + 3 (and iw + 4
    at stride 2), zero in the padding."""
    shift = (((v0 + ih * W) & 1) * 16).to(tl.uint64)  # column iw's half of its word
    # Funnel shifts: values iw, iw + 1 in lo and iw + 2, iw + 3 in hi, low half first.
    lo = funnel(w0, w1, shift).to(tl.uint32) & keep_lo
    hi = funnel(w1, w2, shift).to(tl.uint32) & keep_hi
    c4 = tl.zeros(v0.shape, tl.float32)
    if STRIDE == 2:  # value iw + 4: the third word's low half, or its high one where iw is odd
        c4 = half_value((w2 >> shift.to(tl.uint32)) & keep_4, 0, dtype)
    return half_value(lo, 0, dtype), half_value(lo, 1, dtype), half_value(hi, 0, dtype), half_value(hi, 1, dtype), c4


@triton.jit
def _times(acc, a, b, c, t0, t1, t2):
    """acc + a * t0 + b * t1 + c * t2, one chain of fused multiply-adds in fp32."""
    return tl.fma(c, t2, tl.fma(b, t1, tl.fma(a, t0, acc)))


@triton.jit
def _store_pair(y_ptr, y_row, done_a, done_b, e_ok, ok_b, PACKED: tl.constexpr):
    """Store an element's two outputs at ``y_row`` (its first column's place in an output row):
    one 32-bit word where PACKED (every row's pairs on 4-byte boundaries), else two 16-bit values."""
    ty = y_ptr.dtype.element_ty
    if PACKED:
        bits_a = done_a.to(ty).to(tl.uint16, bitcast=True).to(tl.uint32)
        bits_b = done_b.to(ty).to(tl.uint16, bitcast=True).to(tl.uint32)
        tl.store(y_row.to(tl.pointer_type(tl.uint32)), bits_a | (bits_b << 16), mask=e_ok)
    else:
        tl.store(y_row, done_a.to(ty), mask=e_ok)
        tl.store(y_row + 1, done_b.to(ty), mask=ok_b)


@triton.jit
def _keep(ok_low, ok_high):
    """The 32-bit mask that keeps the low 16 bits where ok_low and the high ones where ok_high."""
    return tl.where(ok_low, 0xFFFF, 0).to(tl.uint32) | tl.where(ok_high, 0xFFFF0000, 0).to(tl.uint32)


@triton.jit(do_not_specialize=["ELEMS", "WORDS", "H", "W", "P", "Q", "QE", "MQE", "pad_h", "pad_w"])
def _depthwise_nchw_pairs_kernel(x_ptr, w_ptr, b_ptr, y_ptr, ELEMS, WORDS, C, H, W, P, Q, QE, MQE,
                                 pad_h, pad_w, HAS_BIAS: tl.constexpr, STRIDE: tl.constexpr, PACKED: tl.constexpr,
                                 ROWS: tl.constexpr, BLOCK_E: tl.constexpr):
    pid = tl.program_id(0)
    bands = tl.cdiv(P, ROWS)
    p0 = (pid % bands) * ROWS  # bands run fastest: neighbours share their halo rows in L2
    first = (pid // bands) * BLOCK_E
    e = first + tl.arange(0, BLOCK_E)
    e_ok = e < ELEMS
    # Elements past the end take the last one's place (their stores are masked), so every element
    # of the program lies in the planes of its first and last.
    last = tl.minimum(first + BLOCK_E, ELEMS) - 1
    plane, qe = divmod_magic(tl.where(e_ok, e, last), QE, MQE)  # plane = n * C + c
    q = 2 * qe
    iw = q * STRIDE - pad_w
    v0 = plane * (H * W) + iw  # value index of column iw in row 0 (negative in the padding)
    keep_lo = _keep(e_ok & (iw >= 0) & (iw < W), e_ok & (iw + 1 >= 0) & (iw + 1 < W))
    keep_hi = _keep(e_ok & (iw + 2 >= 0) & (iw + 2 < W), e_ok & (iw + 3 >= 0) & (iw + 3 < W))
    keep_4 = _keep(e_ok & (iw + 4 >= 0) & (iw + 4 < W), False)
    # Every element's channel is a real one (past the end, the last element's).
    w00, w01, w02, w10, w11, w12, w20, w21, w22, bias = element_filter(w_ptr, b_ptr, C, plane % C, True, HAS_BIAS)
    dtype: tl.constexpr = x_ptr.dtype.element_ty
    x_words = x_ptr.to(tl.pointer_type(tl.uint32))
    y0 = y_ptr + plane * (P * Q) + q
    ok_b = e_ok & (q + 1 < Q)  # the second output exists (not past an odd row's end)

    rows = tl.minimum(ROWS, P - p0)
    top = p0 * STRIDE - pad_h
    # A row's words span values v - 1 to v + 5: only a program whose lowest or highest row and plane
    # reach past x's ends (the first and last planes' edge rows) masks its word loads.
    # (In 64 bits: the last plane's bound may pass int32's range.)
    lowest = (first // QE).to(tl.int64) * (H * W) + tl.maximum(top, 0) * W - pad_w - 1
    highest = ((last // QE).to(tl.int64) * (H * W) + tl.minimum(top + STRIDE * ROWS + 1, H - 1) * W
               + STRIDE * (Q - 1) - pad_w + 5)
    guarded = (lowest < 0) | (highest >= 2 * WORDS)
    # Software pipelined: each step issues the loads of the rows it will need two steps on and
    # unpacks the words loaded a step before, after its own arithmetic, so a thread waits with two
    # steps' loads in flight (unpacked as they arrived, every step waited on its own loads).
    a0, a1, a2, a3, a4 = _row_values(*_row_words(x_words, v0, top, H, W, guarded, True, WORDS), v0, top, W,
                                     keep_lo, keep_hi, keep_4, dtype, STRIDE)
    zeros = tl.zeros(v0.shape, tl.float32)  # rows not started (the first steps store nothing)
    if STRIDE == 1:
        r0, r1, r2 = _row_words(x_words, v0, top + 1, H, W, guarded, True, WORDS)
        # Output rows (s - 2, s - 1, s) of the band, partly summed, for the element's two columns
        # (taps a0-a2 and a1-a3).
        acc1a = zeros
        acc2a = zeros
        acc1b = zeros
        acc2b = zeros
        for s in range(0, rows + 2):
            n0, n1, n2 = _row_words(x_words, v0, top + s + 2, H, W, guarded, s + 2 < rows + 2, WORDS)
            done_a = _times(acc1a, a0, a1, a2, w20, w21, w22)
            done_b = _times(acc1b, a1, a2, a3, w20, w21, w22)
            acc1a = _times(acc2a, a0, a1, a2, w10, w11, w12)
            acc1b = _times(acc2b, a1, a2, a3, w10, w11, w12)
            acc2a = _times(bias, a0, a1, a2, w00, w01, w02)  # a row starts from the bias
            acc2b = _times(bias, a1, a2, a3, w00, w01, w02)
            if s >= 2:
                _store_pair(y_ptr, y0 + (p0 + s - 2) * Q, done_a, done_b, e_ok, ok_b, PACKED)
            a0, a1, a2, a3, a4 = _row_values(r0, r1, r2, v0, top + s + 1, W, keep_lo, keep_hi, keep_4, dtype,
                                             STRIDE)
            r0, r1, r2 = n0, n1, n2
    else:
        # Output row r reads input rows 2r, 2r + 1 and 2r + 2 from the top (taps a0-a2 and a2-a4):
        # step r finishes row r - 1 with even row 2r and starts row r with it and odd row 2r + 1.
        o0, o1, o2, o3, o4 = _row_values(*_row_words(x_words, v0, top + 1, H, W, guarded, True, WORDS), v0,
                                         top + 1, W, keep_lo, keep_hi, keep_4, dtype, STRIDE)
        e0, e1, e2 = _row_words(x_words, v0, top + 2, H, W, guarded, 0 < rows, WORDS)
        d0, d1, d2 = _row_words(x_words, v0, top + 3, H, W, guarded, 1 < rows, WORDS)
        acc_a = zeros
        acc_b = zeros
        for r in range(0, rows + 1):
            n0, n1, n2 = _row_words(x_words, v0, top + 2 * r + 4, H, W, guarded, r + 1 < rows, WORDS)
            m0, m1, m2 = _row_words(x_words, v0, top + 2 * r + 5, H, W, guarded, r + 2 < rows, WORDS)
            done_a = _times(acc_a, a0, a1, a2, w20, w21, w22)
            done_b = _times(acc_b, a2, a3, a4, w20, w21, w22)
            acc_a = _times(_times(bias, a0, a1, a2, w00, w01, w02), o0, o1, o2, w10, w11, w12)
            acc_b = _times(_times(bias, a2, a3, a4, w00, w01, w02), o2, o3, o4, w10, w11, w12)
            if r >= 1:
                _store_pair(y_ptr, y0 + (p0 + r - 1) * Q, done_a, done_b, e_ok, ok_b, PACKED)
            a0, a1, a2, a3, a4 = _row_values(e0, e1, e2, v0, top + 2 * r + 2, W, keep_lo, keep_hi, keep_4, dtype,
                                             STRIDE)
            o0, o1, o2, o3, o4 = _row_values(d0, d1, d2, v0, top + 2 * r + 3, W, keep_lo, keep_hi, keep_4, dtype,
                                             STRIDE)
            e0, e1, e2 = n0, n1, n2
            d0, d1, d2 = m0, m1, m2


def pairs_refusal(spec: Conv2d, layout: str) -> str | None:
    """Why the word-pair kernel does not run ``spec`` in ``layout`` (whatever the dtype), or None."""
    kernel = "the word-pair depthwise kernel"
    reason = depthwise_scope.streaming_refusal(spec, layout, kernel, ("NCHW",))
    if reason is None and not (spec.stride_h == spec.stride_w and spec.stride_h in (1, 2)):
        reason = f"{kernel} runs strides (1, 1) and (2, 2), got ({spec.stride_h}, {spec.stride_w})"
    return reason


def _configs() -> list[triton.Config]:
    """Every tile with bands of every ROWS."""
    return [triton.Config({"BLOCK_E": block_e, "ROWS": rows}, num_warps=warps) for block_e, warps in _TILES
            for rows in _ROWS]


def build_depthwise_pairs(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Kernel:
    """The word-pair kernel for ``spec`` (see the module's scope); ``Unsupported`` says why not."""
    reason = pairs_refusal(spec, layout)
    x, w, bias = tensors["x"], tensors["weight"], tensors.get("bias")
    if reason is None and x.element_size() != 2:
        reason = f"the word-pair depthwise kernel reads 16-bit values, not {dtype.name}"
    if reason is None and x.numel() > INT32_MAX - 8:
        reason = (f"the word-pair depthwise kernel indexes x in int32 up to 8 values past its end: x has "
                  f"{x.numel()} elements, at most {INT32_MAX - 8}")
    if reason is None and (x.data_ptr() % 4 or x.numel() % 2):
        reason = "the word-pair depthwise kernel needs x to start and end on a 4-byte boundary"
    if reason is None and not (dense_layout(x, "NCHW") is False and dense_layout(out, "NCHW") is False):
        reason = "the word-pair depthwise kernel needs x and out both dense NCHW"
    if reason:
        raise Unsupported(reason)
    c, p, q = spec.in_channels, spec.out_height, spec.out_width
    planes = spec.batch * c
    qe = -(-q // 2)
    configs = [] if interpreting(_depthwise_nchw_pairs_kernel) else _configs()

    def grid(config: dict) -> tuple[int]:
        return (triton.cdiv(planes * qe, config["BLOCK_E"]) * triton.cdiv(p, config["ROWS"]),)

    args = (x, tap_major_filter(spec, w), bias if bias is not None else out, out, planes * qe, x.numel() // 2, c,
            spec.height, spec.width, p, q, qe, magic(qe), spec.padding_h, spec.padding_w)
    constants = {"HAS_BIAS": bias is not None, "STRIDE": spec.stride_h,
                 "PACKED": q % 2 == 0 and out.data_ptr() % 4 == 0}
    return bind(_depthwise_nchw_pairs_kernel, configs, grid, args, constants, _INTERPRETER)
