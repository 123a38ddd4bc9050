"""Max and average pooling in Triton, one kernel per memory layout.

Pooling is memory-bound, so each kernel tiles its output along the dimension that is contiguous
in memory, which keeps loads and stores coalesced:

* NHWC: a tile is (output pixels) x (channels); every window tap loads a contiguous run of
  channels, which the compiler turns into 16-byte vector loads when C is a multiple of 8 (fp16)
  or 4 (fp32).  The run is the power of two covering C, or one dividing C (``channel_blocks``).
* NCHW: a tile is a run of consecutive outputs in their flat (n, c, p, q) order, so stores are
  contiguous and no lane idles past the end of a narrow output row (AlexNet's are 27, 13 and 6
  wide); the window taps of neighbouring outputs share cache lines.  A window row of 16-bit values
  read one value at a time moves 2 bytes a load at a stride (AlexNet's rows are odd, so no wider
  load is aligned): for 2- and 3-wide windows the PAIRS configs read each window row as the two
  aligned 32-bit words that hold it, whatever its parity, and take its values from their halves
  (2 loads a row instead of 3), timed beside the others.  A 16-bit output moves so few bytes
  that instructions, not memory, limited this kernel: the flat index is split into (plane, row,
  column) by multiplying with reciprocals worked out on the host, not by dividing, and windows
  that cannot touch padding skip the bounds checks.  With stride 2, the OUTS=2 configs pool two
  neighbours of a row an element: their windows share the middle word (3 loads a row for two
  outputs instead of 4), which eases L1, the next limit.

Window taps are unrolled (the window size is a compile-time constant).  Max compares in fp32,
which is exact for fp16/bf16/fp32 inputs, treats padding as -inf and propagates NaN like torch;
average sums in fp32 and divides by kernel*kernel (count_include_pad=True).
On the GPU the tile size and warp count are autotuned per problem; the interpreter uses one tile.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.builders import Kernel, Tensors
from layerbench.registry import register
from layerbench.layers import Pool2d

from kernels.triton.support import (INT32_MAX, bind, check_inputs, dense_layout, divmod_magic, funnel, half_value,
                                    magic, next_pow2, pixel_of)

# TILE output elements per program.  NHWC: the tile's channel side is fixed per problem (below).
# Small tiles over many warps: strided window taps load narrow values that wait on L1, and large
# tiles take so many registers a thread that too few warps are resident to hide that wait.
_NHWC_CONFIGS = [triton.Config({"TILE": 256}, num_warps=4),
                 triton.Config({"TILE": 512}, num_warps=4),
                 triton.Config({"TILE": 512}, num_warps=8),
                 triton.Config({"TILE": 1024}, num_warps=4),
                 triton.Config({"TILE": 1024}, num_warps=8),
                 triton.Config({"TILE": 2048}, num_warps=8),
                 triton.Config({"TILE": 4096}, num_warps=8)]
# NCHW: one or two outputs a thread, in flat output order (2-D tiles of rows x columns leave
# lanes idle past Q); 1024 outputs a program and more run slower (notes/perf.md).
_NCHW_TILES = ((128, 4), (256, 4), (256, 8), (512, 8))  # (outputs, warps)
_INTERPRETER_CONFIG = {"TILE": 256}
PAIR_WINDOWS = (2, 3)  # window widths whose rows two aligned 32-bit words always hold
PAIRED_READS = (False, True)  # NCHW row reads timed where word pairs apply (the interpreter runs the last)
# NCHW outputs an element timed where word pairs and stride 2 allow two (the interpreter runs the last).
PAIR_OUTPUTS = (1, 2)

# Widest channel run of an NHWC tile.
MAX_INNER = 128


@triton.jit
def _window_update(acc, v, IS_MAX: tl.constexpr):
    if IS_MAX:  # NaN wins and stays, as in torch (one max.NaN instruction)
        return tl.maximum(acc, v, propagate_nan=tl.PropagateNan.ALL)
    return acc + v


# Dense tensors: addresses follow from the sizes.  Only C (NHWC) and Q (NCHW) are specialised on,
# since their divisibility by 16 decides whether loads and stores vectorise; more specialisation
# would only multiply the compiles.
@triton.jit(do_not_specialize=["ROWS", "H", "W", "P", "Q", "stride", "pad"])
def _pool_nhwc_kernel(x_ptr, y_ptr, ROWS, C, H, W, P, Q, stride, pad,
                      KSIZE: tl.constexpr, IS_MAX: tl.constexpr, BLOCK_C: tl.constexpr,
                      TILE: tl.constexpr):
    BLOCK_R: tl.constexpr = TILE // BLOCK_C
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # flat (n, p, q)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < ROWS
    c_ok = cs < C
    r = tl.where(row_ok, rows, 0)
    n, p, q = pixel_of(r, P, Q)
    ih0 = p * stride - pad
    iw0 = q * stride - pad
    if IS_MAX:
        fill = float("-inf")
    else:
        fill = 0.0
    acc = tl.full((BLOCK_R, BLOCK_C), fill, tl.float32)
    for i in tl.static_range(KSIZE):
        ih = ih0 + i
        h_ok = row_ok & (ih >= 0) & (ih < H)
        for j in tl.static_range(KSIZE):
            iw = iw0 + j
            ok = h_ok & (iw >= 0) & (iw < W)
            ptrs = x_ptr + (((n * H + ih) * W + iw) * C)[:, None] + cs[None, :]
            v = tl.load(ptrs, mask=ok[:, None] & c_ok[None, :], other=fill).to(tl.float32)
            acc = _window_update(acc, v, IS_MAX)
    if not IS_MAX:
        acc = acc / (KSIZE * KSIZE)
    y_ptrs = y_ptr + (r * C)[:, None] + cs[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & c_ok[None, :])


@triton.jit
def _word(x_ptr, at, ok, WORDS, PADDED: tl.constexpr, FIRST: tl.constexpr):
    """32-bit word ``at`` of x (4-byte aligned, WORDS words), 0 where ok is false, where it lies
    past x (a word after the window's first: the window may end on x's last value) or, with
    padding, outside x."""
    if PADDED or not FIRST:
        ok = ok & (at < WORDS)
    if PADDED:
        ok = ok & (at >= 0)
    return tl.load(x_ptr.to(tl.pointer_type(tl.uint32)) + at, mask=ok, other=0)


@triton.jit
def _tap(bits, j: tl.constexpr, ok, fill, dtype: tl.constexpr):
    return tl.where(ok, half_value(bits, j, dtype), fill)


@triton.jit(do_not_specialize=["ROWS", "WORDS", "H", "W", "P", "Q", "MP", "MQ1", "MQ2", "stride", "pad"])
def _pool_nchw_kernel(x_ptr, y_ptr, ROWS, WORDS, H, W, P, Q, MP, MQ1, MQ2, stride, pad,
                      KSIZE: tl.constexpr, IS_MAX: tl.constexpr, PADDED: tl.constexpr,
                      TILE: tl.constexpr, PAIRS: tl.constexpr, OUTS: tl.constexpr):
    # Element t: OUTS neighbouring outputs of one output row, in flat (n, c, p, q) order; with
    # OUTS == 2 (word pairs, stride 2) the two windows of a row share their middle word.
    # MQ1, MQ2: magic(Q), magic(ceil(Q / 2)); MP: magic(P).
    if OUTS == 2:
        QE, MQE = (Q + 1) // 2, MQ2
    else:
        QE, MQE = Q, MQ1
    t = tl.program_id(0) * TILE + tl.arange(0, TILE)
    t_ok = t < ROWS * QE
    r, qe = divmod_magic(tl.where(t_ok, t, 0), QE, MQE)
    plane, p = divmod_magic(r, P, MP)  # plane = n * C + c
    q = qe * OUTS
    ok1 = t_ok & (q + 1 < Q)  # the second output exists (an odd row's last element has one)
    ih0 = p * stride - pad
    iw0 = q * stride - pad
    if IS_MAX:
        fill = float("-inf")
    else:
        fill = 0.0
    acc0 = tl.full((TILE,), fill, tl.float32)
    acc1 = tl.full((TILE,), fill, tl.float32)
    dtype: tl.constexpr = x_ptr.dtype.element_ty
    for i in tl.static_range(KSIZE):
        ih = ih0 + i
        h_ok = t_ok
        if PADDED:  # without padding every window lies inside its plane
            h_ok = h_ok & (ih >= 0) & (ih < H)
        e = (plane * H + ih) * W + iw0
        if PAIRS:
            first = e >> 1  # floor, also for the -1 of a padded first row
            shift = ((e & 1) * 16).to(tl.uint64)
            w0 = _word(x_ptr, first, h_ok, WORDS, PADDED, True)
            w1 = _word(x_ptr, first + 1, h_ok, WORDS, PADDED, False)
            bits0 = funnel(w0, w1, shift)
            if OUTS == 2:  # the second window starts two values (one word) later
                bits1 = funnel(w1, _word(x_ptr, first + 2, h_ok, WORDS, PADDED, False), shift)
        for j in tl.static_range(KSIZE):
            ok = h_ok
            if PADDED:
                ok = ok & (iw0 + j >= 0) & (iw0 + j < W)
            if PAIRS:
                v = _tap(bits0, j, ok, fill, dtype)
            else:
                v = tl.load(x_ptr + e + j, mask=ok, other=fill).to(tl.float32)
            acc0 = _window_update(acc0, v, IS_MAX)
            if OUTS == 2:
                ok = h_ok & ok1
                if PADDED:
                    ok = ok & (iw0 + 2 + j < W)
                acc1 = _window_update(acc1, _tap(bits1, j, ok, fill, dtype), IS_MAX)
    if not IS_MAX:
        acc0 = acc0 / (KSIZE * KSIZE)
        acc1 = acc1 / (KSIZE * KSIZE)
    if OUTS == 2:
        y = y_ptr + r * Q + q
        tl.store(y, acc0.to(y_ptr.dtype.element_ty), mask=t_ok)
        tl.store(y + 1, acc1.to(y_ptr.dtype.element_ty), mask=ok1)
    else:  # t is the output's own flat index
        tl.store(y_ptr + t, acc0.to(y_ptr.dtype.element_ty), mask=t_ok)


@register("pool2d", "triton", backend="triton", devices=("cuda", "cpu"),
          description="Triton max/avg pooling; NHWC tiles over contiguous channels, NCHW over the flat output")
def build(spec: Pool2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Kernel:
    check_inputs(_pool_nhwc_kernel, dtype, Pool2d.dtypes, tensors, out)
    x = tensors["x"]
    if tuple(x.shape) != spec.input_shape or tuple(out.shape) != spec.output_shape:
        raise Unsupported(f"tensor shapes {tuple(x.shape)} -> {tuple(out.shape)} do not match {spec}")
    if out.numel() > INT32_MAX:
        raise Unsupported(f"output has {out.numel()} elements; kernels index with int32")
    x_nhwc, y_nhwc = dense_layout(x, layout), dense_layout(out, layout)
    if x_nhwc is None or x_nhwc != y_nhwc:
        raise Unsupported("pool2d needs x and out both dense NCHW or both dense NHWC (channels_last)")

    n, c, h, w = spec.input_shape
    p, q = spec.out_height, spec.out_width
    meta = {"KSIZE": spec.kernel, "IS_MAX": spec.method == "max"}
    if x_nhwc:
        rows = n * p * q
        blocks = channel_blocks(c)
        configs = [triton.Config({**cfg.kwargs, "BLOCK_C": inner}, num_warps=cfg.num_warps)
                   for inner in blocks for cfg in _NHWC_CONFIGS]

        def grid(config: dict) -> tuple[int, ...]:
            return (triton.cdiv(rows, config["TILE"] // config["BLOCK_C"]), triton.cdiv(c, config["BLOCK_C"]))

        args = (x, out, rows, c, h, w, p, q, spec.stride, spec.padding)
        return bind(_pool_nhwc_kernel, configs, grid, args, meta, {**_INTERPRETER_CONFIG, "BLOCK_C": blocks[-1]})

    rows = n * c * p  # (plane, output row) pairs

    def flat_grid(config: dict) -> tuple[int, ...]:
        return (triton.cdiv(rows * triton.cdiv(q, config["OUTS"]), config["TILE"]),)

    reads = PAIRED_READS if pairs_refusal(spec, x) is None else (False,)
    outputs = PAIR_OUTPUTS if spec.stride == 2 else (1,)
    configs = [triton.Config({"TILE": tile, "PAIRS": pairs, "OUTS": outs}, num_warps=warps)
               for pairs in reads for outs in (outputs if pairs else (1,)) for tile, warps in _NCHW_TILES]
    args = (x, out, rows, x.numel() // 2, h, w, p, q, magic(p), magic(q), magic(-(-q // 2)), spec.stride, spec.padding)
    meta["PADDED"] = spec.padding > 0
    fixed = {**_INTERPRETER_CONFIG, "PAIRS": reads[-1], "OUTS": outputs[-1] if reads[-1] else 1}
    return bind(_pool_nchw_kernel, configs, flat_grid, args, meta, fixed)


def channel_blocks(channels: int) -> tuple[int, ...]:
    """The channel runs of an NHWC tile to time: the power of two that covers the channels (up to
    MAX_INNER), and where they are no power of two, the widest power of two that divides them (8 or
    more), whose tiles leave no lane idle past the last channel: 192 channels as three runs of 64
    rather than 128 and 64 of 128.  The interpreter runs the last."""
    cover = min(next_pow2(channels), MAX_INNER)
    divides = min(channels & -channels, MAX_INNER)
    return (cover,) if divides == cover or divides < 8 else (cover, divides)


def pairs_refusal(spec: Pool2d, x: torch.Tensor) -> str | None:
    """Why the NCHW kernel cannot read this input's window rows as aligned 32-bit word pairs (None
    where it can)."""
    if x.element_size() != 2:
        return f"word pairs hold 16-bit values, not {x.dtype}"
    if spec.kernel not in PAIR_WINDOWS:
        return f"two words hold a window row of {' or '.join(map(str, PAIR_WINDOWS))} values, not {spec.kernel}"
    if x.data_ptr() % 4 or x.numel() % 2:
        return "the input must start on a 4-byte boundary and end on one (an even number of values)"
    return None
