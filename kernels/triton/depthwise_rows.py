"""Depthwise 3x3 convolution that streams input rows through registers (NHWC; NCHW on flat runs).

The direct kernel (``depthwise.py``) loads each input element once per tap, nine times for a
3x3 filter, from L1 or L2; on large planes (MobileNetV2's 144 channels at 56 x 56) that holds it
near 0.4 of a same-size copy's bandwidth.  Here a program owns a band of ``ROWS`` output rows
of one segment of ``BLOCK_Q`` output columns and ``BLOCK_C`` channels, and walks down the band
one input row at a time: each row is loaded once per horizontal tap (three times, from L1), is
multiplied by the filter's three rows, and adds into the three output rows it belongs to, held
as rolling fp32 accumulators; the row finished by the bottom filter row is stored.  The next
input row is loaded before this row's multiply-adds, so its latency hides behind them, and on
Hopper one thread of the first channel block asks the copy engine to bring the rows ``PREFETCH``
ahead into L2 for all channel blocks (``cp.async.bulk.prefetch.L2``).  Programs run channel
blocks fastest, so those sharing a pixel's 16-byte lines run together.

Where both strides are 1, or both 2, a second kernel takes its tile as one flat run of an output
row (``BLOCK_E`` consecutive elements of its Q * C, pixels and channels together): in NHWC the
input under the row's three horizontal taps is the same run (at stride 2, each pixel's channels
taken from every other input pixel) shifted by -pad_w, 1 - pad_w and 2 - pad_w pixels, so every
load is a contiguous, fully used stretch of each pixel's channels whatever the channel count (the
2-D tile leaves lanes idle where its channel block does not divide the channels, and a warp's
load there spans one line a pixel).  Its nine filter taps are gathered once per element and kept
in registers.  At stride 2 it walks the band's input rows in pairs: an even row finishes the
output row above and starts its own, the odd row below adds the middle filter row, so each input
row is loaded once (the direct kernel loads the rows shared by two output rows twice).

The flat kernel also runs NCHW: there each plane's output row is a run of its own, and its three
horizontal taps are the run shifted by one input column.  A tile is ``BLOCK_E // BLOCK_Q`` planes
x ``BLOCK_Q`` columns (the plane's width rounded up to a power of two: 1 lane in 8 idles on 7 x 7
to 112 x 112 planes), or ``BLOCK_E`` consecutive (plane, output column) pairs (``BLOCK_Q`` 0: no
lane idles, but each element loads its plane's nine taps); both are timed.  Its loads are
coalesced runs of each plane's row, with no L2 prefetch.

Scope: 3x3 filters, dilation 1, one output channel per input channel; the 2-D kernel vertical
stride 1 (any horizontal stride and padding), NHWC; the flat kernel strides (1, 1) and (2, 2),
NHWC and NCHW: the depthwise layers of MobileNets and most others.  The direct kernel runs the
rest, and is timed beside these where they can (``conv2d.build``).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from layerbench.builders import Kernel, Tensors
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d

from kernels import depthwise_scope
from kernels.triton.support import bind, dense_layout, divmod_magic, interpreting, magic, next_pow2

# (BLOCK_Q, BLOCK_C, warps) of a tile, each with bands of ROWS output rows and, on Hopper, rows
# prefetched PREFETCH ahead.  Narrow channel blocks that divide the channels waste no lanes
# (16 for 144 channels); more columns a block keep each load long.
_TILES = [(32, 16, 2), (16, 16, 1), (64, 16, 4), (32, 32, 4), (16, 64, 4), (8, 64, 2), (8, 128, 4)]
_ROWS = (8, 32)
_PREFETCH = 3
_INTERPRETER = {"BLOCK_Q": 4, "BLOCK_C": 16, "ROWS": 3, "PREFETCH": 0}
# The flat kernel: (BLOCK_E, warps), 8-16 elements a thread (its nine taps a thread's elements
# take 72-144 registers).
_FLAT_TILES = [(1024, 4), (2048, 8), (1024, 8), (512, 4)]
_FLAT_INTERPRETER = {"BLOCK_E": 32, "ROWS": 3, "PREFETCH": 0}
# NCHW: (BLOCK_E, warps), 1-8 elements a thread: its loads are one element wide, and each element
# holds the nine taps of its own plane.  1 and 2 elements a thread (32-56 registers on sm_90, against
# 108-121 at 4) keep more warps an SM waiting on loads where a band is short (7 x 7, 14 x 14 planes).
_PLANE_TILES = [(256, 8), (256, 4), (512, 8), (256, 2), (512, 4), (1024, 8), (1024, 4), (2048, 8)]
# NCHW in the interpreter: flat (plane, column) pairs (0), or tiles of planes x this many columns.
_INTERPRETER_PLANE_COLUMNS = 0
# A thread holds at least one 16-byte vector of a tile (smaller tiles leave lanes idle).
_MIN_TILE_BYTES_PER_THREAD = 16


@triton.jit
def _tap(row, iw, W, C, cs, cols_ok, row_ok):
    """One horizontal tap: pixels ``iw`` of an input row x channels ``cs``, zero off the image."""
    # A scalar condition joins a vector mask through tl.where (`&` would make an int mask).
    ok = tl.where(row_ok, cols_ok & (iw >= 0) & (iw < W), False)
    return tl.load(row + (iw * C)[:, None] + cs[None, :], mask=ok[:, None] & (cs < C)[None, :], other=0.0)


@triton.jit
def _input_row(x_img, ih, iw, H, W, C, cs, cols_ok, live):
    """Input row ``ih`` under the three horizontal taps (columns iw, iw + 1, iw + 2); zero above
    and below the image, and where ``live`` is false (past the band)."""
    row = x_img + ih * (W * C)
    row_ok = live & (ih >= 0) & (ih < H)
    return (_tap(row, iw, W, C, cs, cols_ok, row_ok), _tap(row, iw + 1, W, C, cs, cols_ok, row_ok),
            _tap(row, iw + 2, W, C, cs, cols_ok, row_ok))


@triton.jit
def _times_filter_row(left, mid, right, taps, C, cs):
    """A row's three taps times one filter row (``taps``: its three taps, each C channels), fp32."""
    c_ok = cs < C
    t0 = tl.load(taps + cs, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    t1 = tl.load(taps + C + cs, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    t2 = tl.load(taps + 2 * C + cs, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    return left.to(tl.float32) * t0 + mid.to(tl.float32) * t1 + right.to(tl.float32) * t2


@triton.jit
def _prefetch_span(x_img, ih, start, end, H, W, C):
    """Ask the copy engine to bring elements [start, end) of input row ``ih`` (clipped to the row)
    into L2: no registers, no wait.  The program's first thread asks: the same request from every
    thread made the flat kernel up to 19 % slower on the H100."""
    if (ih >= 0) & (ih < H):
        lo = tl.maximum(start, 0)
        hi = tl.minimum(end, W * C)
        if hi > lo:  # a span wholly in the padding reads nothing of the row
            size = (hi - lo) * (x_img.dtype.element_ty.primitive_bitwidth // 8)
            tl.inline_asm_elementwise("{ .reg .pred first; .reg .b32 t; mov.u32 t, %tid.x; setp.eq.u32 first, t, 0; "
                                      "@first cp.async.bulk.prefetch.L2.global [$1], $2; } mov.u32 $0, 0;", "=r,l,r",
                                      [x_img + ih * (W * C) + lo, size], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit(do_not_specialize=["H", "W", "P", "Q", "stride_w", "pad_h", "pad_w", "zero"])
def _depthwise_rows_kernel(x_ptr, w_ptr, b_ptr, y_ptr, C, H, W, P, Q, stride_w, pad_h, pad_w, zero,
                           HAS_BIAS: tl.constexpr, ROWS: tl.constexpr, BLOCK_Q: tl.constexpr,
                           BLOCK_C: tl.constexpr, PREFETCH: tl.constexpr):
    pid = tl.program_id(0)
    c_blocks = tl.cdiv(C, BLOCK_C)
    q_blocks = tl.cdiv(Q, BLOCK_Q)
    bands = tl.cdiv(P, ROWS)
    cb = pid % c_blocks
    rest = pid // c_blocks
    qb = rest % q_blocks
    rest = rest // q_blocks
    p0 = (rest % bands) * ROWS
    n = rest // bands
    cs = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    qs = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    cols_ok = qs < Q
    iw = qs * stride_w - pad_w
    x_img = x_ptr + n * (H * W * C)
    # Prefetched span of an input row: the pixels this column block's three taps read, all channels.
    span_lo = (qb * BLOCK_Q * stride_w - pad_w) * C
    span_hi = ((qb * BLOCK_Q + BLOCK_Q - 1) * stride_w - pad_w + 3) * C
    y_tile = y_ptr + n * (P * Q * C) + (qs * C)[:, None] + cs[None, :]
    y_ok = cols_ok[:, None] & (cs < C)[None, :]
    if HAS_BIAS:
        bias = tl.load(b_ptr + cs, mask=cs < C, other=0.0).to(tl.float32)[None, :]
    else:
        bias = tl.zeros((1, BLOCK_C), dtype=tl.float32)

    steps = tl.minimum(ROWS, P - p0) + 2  # input rows the band reads
    top = p0 - pad_h
    left, mid, right = _input_row(x_img, top, iw, H, W, C, cs, cols_ok, True)
    # Output rows (s - 2, s - 1, s) of the band, partly summed: each input row s adds to all three.
    acc1 = tl.zeros((BLOCK_Q, BLOCK_C), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_Q, BLOCK_C), dtype=tl.float32)
    for s in range(0, steps):
        next_left, next_mid, next_right = _input_row(x_img, top + s + 1, iw, H, W, C, cs, cols_ok, s + 1 < steps)
        if PREFETCH > 0:
            if cb == 0:
                _prefetch_span(x_img, top + s + 1 + PREFETCH, span_lo, span_hi, H, W, C)
        # `zero` is 0: offsetting the filter by it each row keeps the compiler from hoisting the
        # nine taps out of the loop into registers (72 a thread); their reloads hit L1.
        taps = w_ptr + tl.multiple_of(s * zero, 16)
        done = acc1 + _times_filter_row(left, mid, right, taps + 6 * C, C, cs)
        acc1 = acc2 + _times_filter_row(left, mid, right, taps + 3 * C, C, cs)
        acc2 = _times_filter_row(left, mid, right, taps, C, cs)
        if s >= 2:
            tl.store(y_tile + (p0 + s - 2) * (Q * C), (done + bias).to(y_ptr.dtype.element_ty), mask=y_ok)
        left, mid, right = next_left, next_mid, next_right


@triton.jit
def element_filter(w_ptr, b_ptr, C, c, c_ok, HAS_BIAS: tl.constexpr):
    """Channel ``c``'s nine filter taps (of a [tap][channel] filter, row by row) and its bias (zero
    without one), in fp32, per element; zero where ``c_ok`` is false."""
    w00 = tl.load(w_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    w01 = tl.load(w_ptr + C + c, mask=c_ok, other=0.0).to(tl.float32)
    w02 = tl.load(w_ptr + 2 * C + c, mask=c_ok, other=0.0).to(tl.float32)
    w10 = tl.load(w_ptr + 3 * C + c, mask=c_ok, other=0.0).to(tl.float32)
    w11 = tl.load(w_ptr + 4 * C + c, mask=c_ok, other=0.0).to(tl.float32)
    w12 = tl.load(w_ptr + 5 * C + c, mask=c_ok, other=0.0).to(tl.float32)
    w20 = tl.load(w_ptr + 6 * C + c, mask=c_ok, other=0.0).to(tl.float32)
    w21 = tl.load(w_ptr + 7 * C + c, mask=c_ok, other=0.0).to(tl.float32)
    w22 = tl.load(w_ptr + 8 * C + c, mask=c_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros(c.shape, dtype=tl.float32)
    return w00, w01, w02, w10, w11, w12, w20, w21, w22, bias


@triton.jit
def _flat_input_row(x_img, ih, H, row_len, step, off, ok0, ok1, ok2, live):
    """Input row ``ih`` (``row_len`` elements apart) under the three horizontal taps of a flat run
    (``off``: the left tap's offsets, the others ``step`` and 2 * ``step`` on; ``ok0-2``: each
    tap's columns inside the image)."""
    row = x_img + ih * row_len
    row_ok = live & (ih >= 0) & (ih < H)
    left = tl.load(row + off, mask=tl.where(row_ok, ok0, False), other=0.0)
    mid = tl.load(row + off + step, mask=tl.where(row_ok, ok1, False), other=0.0)
    right = tl.load(row + off + 2 * step, mask=tl.where(row_ok, ok2, False), other=0.0)
    return left, mid, right


@triton.jit
def _flat_times(left, mid, right, t0, t1, t2):
    """A row's three taps times one filter row's (each tap's weight per element), in fp32."""
    return left.to(tl.float32) * t0 + mid.to(tl.float32) * t1 + right.to(tl.float32) * t2


@triton.jit(do_not_specialize=["PLANES", "H", "W", "P", "Q", "MQ", "pad_h", "pad_w"])
def _depthwise_flat_rows_kernel(x_ptr, w_ptr, b_ptr, y_ptr, PLANES, C, H, W, P, Q, MQ, pad_h, pad_w,
                                HAS_BIAS: tl.constexpr, STRIDE: tl.constexpr, ROWS: tl.constexpr,
                                BLOCK_E: tl.constexpr, NCHW: tl.constexpr, BLOCK_Q: tl.constexpr,
                                PREFETCH: tl.constexpr):
    pid = tl.program_id(0)
    bands = tl.cdiv(P, ROWS)
    if NCHW:
        # Each plane's output row (plane = n * C + c) is a run of its own, its taps the run shifted
        # by one input column.
        if BLOCK_Q > 0:
            # A tile of BLOCK_E // BLOCK_Q planes x BLOCK_Q output columns: a plane's taps are
            # loaded once for its columns, but columns past Q idle.
            segments = tl.cdiv(Q, BLOCK_Q)
            start = (pid % segments) * BLOCK_Q
            rest = pid // segments
            p0 = (rest % bands) * ROWS
            planes = (rest // bands) * (BLOCK_E // BLOCK_Q) + tl.arange(0, BLOCK_E // BLOCK_Q)[:, None]
            c_ok = planes < PLANES
            plane = tl.where(c_ok, planes, 0)
            q = start + tl.arange(0, BLOCK_Q)[None, :]
            e_ok = c_ok & (q < Q)
        else:
            # A tile of BLOCK_E consecutive (plane, output column) pairs, split once by a multiply
            # (MQ = magic(Q)): no lane idles, but each element loads its plane's taps.  Bands run
            # fastest, so neighbours share their halo rows in L2.
            p0 = (pid % bands) * ROWS
            e = (pid // bands) * BLOCK_E + tl.arange(0, BLOCK_E)
            e_ok = e < PLANES * Q
            plane, q = divmod_magic(tl.where(e_ok, e, 0), Q, MQ)
            c_ok = e_ok
        c = plane % C
        iw = q * STRIDE - pad_w
        off = plane * (H * W) + iw
        step = 1
        x_row = W
        x_img = x_ptr
        y_row = Q
        y_run = y_ptr + plane * (P * Q) + q
        span_lo = 0  # no L2 prefetch in NCHW (its configs never ask)
        span_hi = 0
    else:
        run = Q * C  # an output row's elements, contiguous in NHWC
        segments = tl.cdiv(run, BLOCK_E)
        start = (pid % segments) * BLOCK_E
        rest = pid // segments
        p0 = (rest % bands) * ROWS
        n = rest // bands
        e = start + tl.arange(0, BLOCK_E)
        e_ok = e < run
        c_ok = e_ok
        q = e // C
        c = e - q * C
        # Horizontal tap j reads input column q * STRIDE - pad_w + j, element off + j * C of the row.
        iw = q * STRIDE - pad_w
        off = e + (STRIDE - 1) * (q * C) - pad_w * C  # (q * STRIDE - pad_w) * C + c
        step = C
        x_row = W * C
        x_img = x_ptr + n * (H * W * C)
        y_row = run
        y_run = y_ptr + n * (P * run) + e
        # Prefetched span of an input row: what the run's three taps read, from its first element's
        # left tap to its last element's right tap (at stride 1, the run shifted by -pad_w pixels
        # and widened by two).
        last = start + BLOCK_E - 1
        span_lo = start + (STRIDE - 1) * ((start // C) * C) - pad_w * C
        span_hi = last + 1 + (STRIDE - 1) * ((last // C) * C) + (2 - pad_w) * C
    ok0 = e_ok & (iw >= 0) & (iw < W)
    ok1 = e_ok & (iw + 1 >= 0) & (iw + 1 < W)
    ok2 = e_ok & (iw + 2 >= 0) & (iw + 2 < W)
    # The taps, per element (NHWC) or per plane (NCHW).
    w00, w01, w02, w10, w11, w12, w20, w21, w22, bias = element_filter(w_ptr, b_ptr, C, c, c_ok, HAS_BIAS)
    zeros = tl.zeros(off.shape, dtype=tl.float32)

    rows = tl.minimum(ROWS, P - p0)  # output rows of the band
    top = p0 * STRIDE - pad_h
    left, mid, right = _flat_input_row(x_img, top, H, x_row, step, off, ok0, ok1, ok2, True)
    if STRIDE == 1:
        # As the 2-D kernel: output rows (s - 2, s - 1, s) of the band, partly summed.
        acc1 = zeros
        acc2 = zeros
        for s in range(0, rows + 2):
            next_left, next_mid, next_right = _flat_input_row(x_img, top + s + 1, H, x_row, step, off, ok0, ok1,
                                                              ok2, s + 1 < rows + 2)
            if PREFETCH > 0:
                _prefetch_span(x_img, top + s + 1 + PREFETCH, span_lo, span_hi, H, W, C)
            done = acc1 + _flat_times(left, mid, right, w20, w21, w22)
            acc1 = acc2 + _flat_times(left, mid, right, w10, w11, w12)
            acc2 = _flat_times(left, mid, right, w00, w01, w02)
            if s >= 2:
                tl.store(y_run + (p0 + s - 2) * y_row, (done + bias).to(y_ptr.dtype.element_ty), mask=e_ok)
            left, mid, right = next_left, next_mid, next_right
    else:
        # Output row r of the band reads input rows 2r, 2r + 1 and 2r + 2 from the top: step r
        # finishes row r - 1 with even row 2r and starts row r with it and odd row 2r + 1.
        odd_left, odd_mid, odd_right = _flat_input_row(x_img, top + 1, H, x_row, step, off, ok0, ok1, ok2, True)
        acc = zeros
        for r in range(0, rows + 1):
            next_left, next_mid, next_right = _flat_input_row(x_img, top + 2 * r + 2, H, x_row, step, off, ok0, ok1,
                                                              ok2, r < rows)
            next_odd_left, next_odd_mid, next_odd_right = _flat_input_row(x_img, top + 2 * r + 3, H, x_row, step,
                                                                          off, ok0, ok1, ok2, r + 1 < rows)
            if PREFETCH > 0:
                _prefetch_span(x_img, top + 2 * (r + 1 + PREFETCH), span_lo, span_hi, H, W, C)
                _prefetch_span(x_img, top + 2 * (r + 1 + PREFETCH) + 1, span_lo, span_hi, H, W, C)
            done = acc + _flat_times(left, mid, right, w20, w21, w22)
            acc = (_flat_times(left, mid, right, w00, w01, w02)
                   + _flat_times(odd_left, odd_mid, odd_right, w10, w11, w12))
            if r >= 1:
                tl.store(y_run + (p0 + r - 1) * y_row, (done + bias).to(y_ptr.dtype.element_ty), mask=e_ok)
            left, mid, right = next_left, next_mid, next_right
            odd_left, odd_mid, odd_right = next_odd_left, next_odd_mid, next_odd_right


def rows_refusal(spec: Conv2d, layout: str) -> str | None:
    """Why the row-streaming kernel on 2-D tiles does not run ``spec`` in ``layout``, or None."""
    reason = depthwise_scope.streaming_refusal(spec, layout, "the row-streaming depthwise kernel on 2-D tiles")
    if reason is None and spec.stride_h != 1:
        reason = f"the row-streaming depthwise kernel on 2-D tiles runs vertical stride 1, got {spec.stride_h}"
    return reason


def flat_refusal(spec: Conv2d, layout: str) -> str | None:
    """Why the flat row-streaming kernel does not run ``spec`` in ``layout``, or None."""
    return depthwise_scope.flat_refusal(spec, layout, "the flat row-streaming depthwise kernel")


@functools.cache
def _configs(channels: int, columns: int, itemsize: int, prefetch: bool) -> list[triton.Config]:
    """The tiles that fit ``channels`` and ``columns`` (rounded up to powers of two) and give each
    thread a 16-byte vector at least; each with bands of every ROWS, prefetching where allowed."""
    configs = []
    for block_q, block_c, warps in _TILES:
        if block_c > next_pow2(channels) or block_q > next_pow2(columns):
            continue
        if block_q * block_c * itemsize < _MIN_TILE_BYTES_PER_THREAD * 32 * warps:
            continue
        for rows in _ROWS:
            for ahead in ((0, _PREFETCH) if prefetch else (0,)):
                configs.append(triton.Config({"BLOCK_Q": block_q, "BLOCK_C": block_c, "ROWS": rows,
                                              "PREFETCH": ahead}, num_warps=warps))
    return configs


@functools.cache
def _flat_configs(run: int, prefetch: bool) -> list[triton.Config]:
    """NHWC: the flat runs no longer than an output row's ``run`` of elements rounded up to a power
    of two (the shortest where none is), each with bands of every ROWS, prefetching where allowed."""
    tiles = [t for t in _FLAT_TILES if t[0] <= next_pow2(run)] or [min(_FLAT_TILES)]
    return [triton.Config({"BLOCK_E": block_e, "ROWS": rows, "PREFETCH": ahead}, num_warps=warps)
            for block_e, warps in tiles for rows in _ROWS for ahead in ((0, _PREFETCH) if prefetch else (0,))]


@functools.cache
def _plane_configs(columns: int) -> list[triton.Config]:
    """NCHW: each tile as planes x ``columns`` (rounded up to a power of two, at most the tile) and
    as flat (plane, column) pairs (BLOCK_Q 0), each with bands of every ROWS.  Neither wins every
    layer: the flat tile leaves no lane idle, the other loads a plane's taps once for its columns."""
    return [triton.Config({"BLOCK_E": block_e, "BLOCK_Q": block_q, "ROWS": rows, "PREFETCH": 0}, num_warps=warps)
            for block_e, warps in _PLANE_TILES for block_q in (min(next_pow2(columns), block_e), 0)
            for rows in _ROWS]


def _filter_and_prefetch(spec: Conv2d, layout: str, tensors: Tensors, out: torch.Tensor,
                         kernel: object) -> tuple[torch.Tensor, bool]:
    """The filter as a fresh [tap][channel] tensor in x's dtype (a reordering, exact: a tap's
    channels are one vector), and whether ``kernel`` may prefetch rows into L2 (NHWC on Hopper's
    copy engine, rows 16-byte aligned and whole 16-byte units)."""
    x, w = tensors["x"], tensors["weight"]
    nhwc = layout == "NHWC"
    if not (dense_layout(x, layout) is nhwc and dense_layout(out, layout) is nhwc):
        raise Unsupported(f"the row-streaming depthwise kernels need x and out both dense {layout}")
    c = spec.in_channels
    taps = torch.empty((9, c), dtype=w.dtype, device=w.device).copy_(w.reshape(c, 9).t())
    prefetch = (nhwc and not interpreting(kernel) and torch.cuda.get_device_capability(x.device) >= (9, 0)
                and (c * x.element_size()) % 16 == 0 and x.data_ptr() % 16 == 0)
    return taps, prefetch


def build_depthwise_rows(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Kernel:
    """The row-streaming kernel on 2-D tiles for ``spec`` (see the module's scope); ``Unsupported``
    says why not."""
    reason = rows_refusal(spec, layout)
    if reason:
        raise Unsupported(reason)
    taps, prefetch = _filter_and_prefetch(spec, layout, tensors, out, _depthwise_rows_kernel)
    x, bias = tensors["x"], tensors.get("bias")
    c, p, q = spec.in_channels, spec.out_height, spec.out_width
    configs = [] if interpreting(_depthwise_rows_kernel) else _configs(c, q, x.element_size(), prefetch)
    if not configs and not interpreting(_depthwise_rows_kernel):
        raise Unsupported(f"no row-streaming tile fits {c} channels x {q} columns")

    def grid(config: dict) -> tuple[int]:
        return (spec.batch * triton.cdiv(p, config["ROWS"]) * triton.cdiv(q, config["BLOCK_Q"])
                * triton.cdiv(c, config["BLOCK_C"]),)

    args = (x, taps, bias if bias is not None else out, out, c, spec.height, spec.width, p, q, spec.stride_w,
            spec.padding_h, spec.padding_w, 0)
    return bind(_depthwise_rows_kernel, configs, grid, args, {"HAS_BIAS": bias is not None}, _INTERPRETER)


def build_depthwise_flat_rows(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors,
                              out: torch.Tensor) -> Kernel:
    """The row-streaming kernel on flat runs of output rows for ``spec`` (strides (1, 1) or (2, 2),
    NHWC or NCHW, see the module's scope); ``Unsupported`` says why not."""
    reason = flat_refusal(spec, layout)
    if reason:
        raise Unsupported(reason)
    taps, prefetch = _filter_and_prefetch(spec, layout, tensors, out, _depthwise_flat_rows_kernel)
    x, bias = tensors["x"], tensors.get("bias")
    c, p, q = spec.in_channels, spec.out_height, spec.out_width
    planes = spec.batch * c
    on_gpu = not interpreting(_depthwise_flat_rows_kernel)
    if layout == "NCHW":
        configs = _plane_configs(q) if on_gpu else []
        meta = {"NCHW": True}
        columns = _INTERPRETER_PLANE_COLUMNS
        fixed = {**_FLAT_INTERPRETER, "BLOCK_Q": min(columns, next_pow2(q)) if columns else 0}

        def grid(config: dict) -> tuple[int]:
            if config["BLOCK_Q"] == 0:
                return (triton.cdiv(planes * q, config["BLOCK_E"]) * triton.cdiv(p, config["ROWS"]),)
            return (triton.cdiv(planes, config["BLOCK_E"] // config["BLOCK_Q"]) * triton.cdiv(p, config["ROWS"])
                    * triton.cdiv(q, config["BLOCK_Q"]),)
    else:
        configs = _flat_configs(q * c, prefetch) if on_gpu else []
        meta = {"NCHW": False, "BLOCK_Q": 0}
        fixed = _FLAT_INTERPRETER

        def grid(config: dict) -> tuple[int]:
            return (spec.batch * triton.cdiv(p, config["ROWS"]) * triton.cdiv(q * c, config["BLOCK_E"]),)

    args = (x, taps, bias if bias is not None else out, out, planes, c, spec.height, spec.width, p, q, magic(q),
            spec.padding_h, spec.padding_w)
    return bind(_depthwise_flat_rows_kernel, configs, grid, args,
                {"HAS_BIAS": bias is not None, "STRIDE": spec.stride_h, **meta}, fixed)
