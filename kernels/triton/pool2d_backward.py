"""The data gradient of max and average pooling in Triton, one kernel per memory layout.

Gather, not scatter: each program owns a tile of dx and visits, for every element, the output
windows that hold it (at most ceil(kernel / stride) per axis), so every dx element is written
once, accumulated in fp32, without atomics or a zero-fill pass.

* Average: each window adds dy / (kernel * kernel) (padding counts in the divisor, as forward).
* Max: a window's winner is the first maximum in scan order (row-major over the window, padding
  excluded), with the forward's rule for NaN (kernels/triton/pool2d.py): a NaN beats anything,
  and a later NaN beats an earlier one, as in torch's max_pool2d, whose argmax this reproduces;
  the element adds dy where it wins.  Where windows do not overlap (stride >= kernel) each element
  takes at most one dy, so dx is exact.  Two ways to know the winners, the faster kept at build
  on the GPU (``selection_ms``; the ``path`` detail says which):

  - ``recompute``: every dx element finds again the winner of each window that holds it
    (kernel**2 loads of x a window, up to ceil(kernel / stride)**2 windows an element);
  - ``winners_first``: a first kernel finds each window's winner once and stores its tap number
    (int8, one per dy element), the gather then reads it: fewer loads and compares where windows
    overlap, for one more launch and a tap array a quarter of dx's elements at stride 2.

Tiles follow dx's contiguous dimension, as the forward's follow y's: NHWC tiles (dx pixels) x
(channels), NCHW a run of dx elements in flat order.  Tile and warps are autotuned on the GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.builders import Built, Kernel, Tensors, in_order
from layerbench.registry import register
from layerbench.layers import Pool2d

from kernels import pool_winners
from kernels.triton.pool2d import MAX_INNER
from kernels.triton.support import (INT32_MAX, bind, check_inputs, dense_layout, interpreting,
                                    next_pow2)

# Each dx element reads ceil(kernel / stride)**2 dy values (and, for max, kernel**2 x values per
# window), so tiles are kept to a few elements a thread.
_NHWC_CONFIGS = [triton.Config({"TILE": 256}, num_warps=4),
                 triton.Config({"TILE": 512}, num_warps=4),
                 triton.Config({"TILE": 512}, num_warps=8),
                 triton.Config({"TILE": 1024}, num_warps=4),
                 triton.Config({"TILE": 1024}, num_warps=8),
                 triton.Config({"TILE": 2048}, num_warps=8)]
_NCHW_CONFIGS = [triton.Config({"TILE": 128}, num_warps=4),
                 triton.Config({"TILE": 256}, num_warps=4),
                 triton.Config({"TILE": 256}, num_warps=8),
                 triton.Config({"TILE": 512}, num_warps=8),
                 triton.Config({"TILE": 1024}, num_warps=8)]
_WINNER_CONFIGS = [triton.Config({"TILE": 256}, num_warps=4),
                   triton.Config({"TILE": 512}, num_warps=4),
                   triton.Config({"TILE": 1024}, num_warps=4),
                   triton.Config({"TILE": 1024}, num_warps=8)]
_INTERPRETER_CONFIG = {"TILE": 256}


@triton.jit
def _window_winner(x_base, row_stride, col_stride, ih0, iw0, ok, H, W, KSIZE: tl.constexpr):
    """The tap number (i * KSIZE + j) of the winner of the window whose top-left tap is (ih0, iw0).

    ``x_base`` points at tap (0, 0) of each element's plane; taps are masked by ``ok`` and the
    window's bounds.  Before any tap is taken the winner is the first tap inside the input, as in
    torch (a window of -inf gives its gradient there).
    """
    best = tl.full(ok.shape, float("-inf"), tl.float32)
    # The winner as a tap number i * KSIZE + j: one integer a lane.
    tap = (tl.maximum(ih0, 0) - ih0) * KSIZE + (tl.maximum(iw0, 0) - iw0) + tl.zeros(ok.shape, tl.int32)
    for i in tl.static_range(KSIZE):
        ih = ih0 + i
        h_ok = ok & (ih >= 0) & (ih < H)
        for j in tl.static_range(KSIZE):
            iw = iw0 + j
            v = tl.load(x_base + ih * row_stride + iw * col_stride, mask=h_ok & (iw >= 0) & (iw < W),
                        other=float("-inf")).to(tl.float32)
            # The forward's update: larger, or NaN (NaN compares false, so a NaN best stays NaN
            # until a later NaN takes its place).
            take = (v > best) | (v != v)
            best = tl.where(take, v, best)
            tap = tl.where(take, i * KSIZE + j, tap)
    return tap


@triton.jit(do_not_specialize=["TOTAL", "C", "H", "W", "P", "Q", "stride", "pad"])
def _window_winners_kernel(x_ptr, win_ptr, TOTAL, C, H, W, P, Q, stride, pad, KSIZE: tl.constexpr,
                           CHANNELS_LAST: tl.constexpr, TILE: tl.constexpr):
    """win[e] = the winner's tap number of window e, e flat over dy in its own memory order."""
    e = tl.program_id(0) * TILE + tl.arange(0, TILE)
    ok = e < TOTAL
    ec = tl.where(ok, e, 0)
    if CHANNELS_LAST:
        c = ec % C
        r = ec // C
        q = r % Q
        r = r // Q
        p = r % P
        n = r // P
        x_base = x_ptr + n * H * W * C + c
        row_stride = W * C
        col_stride = C
    else:
        q = ec % Q
        r = ec // Q
        p = r % P
        x_base = x_ptr + (r // P) * H * W  # the (n, c) plane
        row_stride = W
        col_stride = 1
    tap = _window_winner(x_base, row_stride, col_stride, p * stride - pad, q * stride - pad, ok, H, W, KSIZE)
    tl.store(win_ptr + e, tap.to(tl.int8), mask=ok)


@triton.jit
def _wins(x_base, win_ptr, dy_index, row_stride, col_stride, ih0, iw0, h, w, ok, H, W,
          KSIZE: tl.constexpr, WINNERS: tl.constexpr):
    """Whether (h, w) wins the window at dy_index (top-left tap (ih0, iw0)): read from the winner
    array, or found again."""
    if WINNERS:
        tap = tl.load(win_ptr + dy_index, mask=ok, other=-1).to(tl.int32)
    else:
        tap = _window_winner(x_base, row_stride, col_stride, ih0, iw0, ok, H, W, KSIZE)
    return tap == (h - ih0) * KSIZE + (w - iw0)


@triton.jit(do_not_specialize=["ROWS", "H", "W", "P", "Q", "stride", "pad"])
def _pool_backward_nhwc_kernel(x_ptr, dy_ptr, win_ptr, dx_ptr, ROWS, C, H, W, P, Q, stride, pad,
                               KSIZE: tl.constexpr, WINDOWS: tl.constexpr, IS_MAX: tl.constexpr,
                               WINNERS: tl.constexpr, BLOCK_C: tl.constexpr, TILE: tl.constexpr):
    BLOCK_R: tl.constexpr = TILE // BLOCK_C
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # flat (n, h, w)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < ROWS
    c_ok = cs < C
    r = tl.where(row_ok, rows, 0)
    w = r % W
    h = (r // W) % H
    n = r // (W * H)
    # The windows holding (h, w) are p in (ph - WINDOWS, ph] and q in (pq - WINDOWS, pq].
    ph = (h + pad) // stride
    pq = (w + pad) // stride
    x_base = x_ptr + (n * H * W * C)[:, None] + cs[None, :]
    acc = tl.zeros((BLOCK_R, BLOCK_C), tl.float32)
    for a in range(WINDOWS):
        p = ph - a
        p_ok = row_ok & (p >= 0) & (p < P) & (p * stride - pad + KSIZE > h)
        for b in range(WINDOWS):
            q = pq - b
            ok = (p_ok & (q >= 0) & (q < Q) & (q * stride - pad + KSIZE > w))[:, None] & c_ok[None, :]
            dy_index = (((n * P + p) * Q + q) * C)[:, None] + cs[None, :]
            g = tl.load(dy_ptr + dy_index, mask=ok, other=0.0).to(tl.float32)
            if IS_MAX:
                won = _wins(x_base, win_ptr, dy_index, W * C, C, (p * stride - pad)[:, None],
                            (q * stride - pad)[:, None], h[:, None], w[:, None], ok, H, W, KSIZE, WINNERS)
                g = tl.where(won, g, 0.0)
            acc += g
    if not IS_MAX:
        acc = acc / (KSIZE * KSIZE)
    dx_ptrs = dx_ptr + (r * C)[:, None] + cs[None, :]
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=row_ok[:, None] & c_ok[None, :])


@triton.jit(do_not_specialize=["TOTAL", "H", "W", "P", "Q", "stride", "pad"])
def _pool_backward_nchw_kernel(x_ptr, dy_ptr, win_ptr, dx_ptr, TOTAL, H, W, P, Q, stride, pad,
                               KSIZE: tl.constexpr, WINDOWS: tl.constexpr, IS_MAX: tl.constexpr,
                               WINNERS: tl.constexpr, TILE: tl.constexpr):
    e = tl.program_id(0) * TILE + tl.arange(0, TILE)  # flat (n, c, h, w): dx's own order
    e_ok = e < TOTAL
    ec = tl.where(e_ok, e, 0)
    w = ec % W
    r = ec // W
    h = r % H
    plane = r // H  # n * C + c
    ph = (h + pad) // stride
    pq = (w + pad) // stride
    x_base = x_ptr + plane * H * W
    acc = tl.zeros((TILE,), tl.float32)
    for a in range(WINDOWS):
        p = ph - a
        p_ok = e_ok & (p >= 0) & (p < P) & (p * stride - pad + KSIZE > h)
        for b in range(WINDOWS):
            q = pq - b
            ok = p_ok & (q >= 0) & (q < Q) & (q * stride - pad + KSIZE > w)
            dy_index = (plane * P + p) * Q + q
            g = tl.load(dy_ptr + dy_index, mask=ok, other=0.0).to(tl.float32)
            if IS_MAX:
                won = _wins(x_base, win_ptr, dy_index, W, 1, p * stride - pad, q * stride - pad, h, w, ok,
                            H, W, KSIZE, WINNERS)
                g = tl.where(won, g, 0.0)
            acc += g
    if not IS_MAX:
        acc = acc / (KSIZE * KSIZE)
    tl.store(dx_ptr + e, acc.to(dx_ptr.dtype.element_ty), mask=e_ok)


@register("pool2d", "triton", backend="triton", devices=("cuda", "cpu"), direction="backward_data",
          description="Triton max/avg pooling dx, gathered per element from the windows that hold it "
                      "(max: window winners found again per element, or first, once a window: the faster)")
def build_pool2d_backward_data(spec: Pool2d, dtype: DType, layout: str, tensors: Tensors,
                               out: torch.Tensor) -> Kernel | Built:
    recompute = build_pool2d_backward_recompute(spec, dtype, layout, tensors, out)
    if interpreting(_pool_backward_nchw_kernel):
        return recompute
    return pool_winners.keep_faster(
        spec, out.device, recompute, lambda: build_pool2d_backward_winners_first(spec, dtype, layout, tensors, out))


def build_pool2d_backward_recompute(spec: Pool2d, dtype: DType, layout: str, tensors: Tensors,
                                 out: torch.Tensor) -> Kernel:
    """dx in one kernel; max pooling finds each window's winner again per element."""
    return _build(spec, dtype, layout, tensors, out, winners=None)


def build_pool2d_backward_winners_first(spec: Pool2d, dtype: DType, layout: str, tensors: Tensors,
                                        out: torch.Tensor) -> Kernel:
    """Max pooling's dx in two kernels: each window's winner once, then the gather reading them."""
    return _build(spec, dtype, layout, tensors, out, pool_winners.winner_array(spec, out.device))


def _build(spec: Pool2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor,
           winners: torch.Tensor | None) -> Kernel:
    check_inputs(_pool_backward_nchw_kernel, dtype, Pool2d.dtypes, tensors, out)
    x, dy = tensors["x"], tensors["dy"]
    if (tuple(x.shape), tuple(dy.shape), tuple(out.shape)) != (spec.input_shape, spec.output_shape,
                                                               spec.input_shape):
        raise Unsupported(f"tensor shapes x {tuple(x.shape)}, dy {tuple(dy.shape)}, dx {tuple(out.shape)} "
                          f"do not match {spec}")
    if out.numel() > INT32_MAX:
        raise Unsupported(f"dx has {out.numel()} elements; kernels index with int32")
    nhwc = {dense_layout(t, layout) for t in (x, dy, out)}
    if len(nhwc) != 1 or None in nhwc:
        raise Unsupported("pool2d backward needs x, dy and dx all dense NCHW or all dense NHWC (channels_last)")
    channels_last = nhwc.pop()

    n, c, h, w = spec.input_shape
    p, q = spec.out_height, spec.out_width
    meta = {"KSIZE": spec.kernel, "WINDOWS": triton.cdiv(spec.kernel, spec.stride),
            "IS_MAX": spec.method == "max", "WINNERS": winners is not None}
    first: list[Kernel] = []
    if winners is not None:
        # A flat array in dy's own memory order: the gather reads a window's winner at dy's index.
        args = (x, winners, dy.numel(), c, h, w, p, q, spec.stride, spec.padding)
        first.append(bind(_window_winners_kernel, _WINNER_CONFIGS,
                          lambda config: (triton.cdiv(dy.numel(), config["TILE"]),), args,
                          {"KSIZE": spec.kernel, "CHANNELS_LAST": channels_last}, _INTERPRETER_CONFIG))
    win = winners if winners is not None else dy  # never read without winners
    if channels_last:
        inner = min(next_pow2(c), MAX_INNER)
        rows = n * h * w
        meta["BLOCK_C"] = inner

        def grid(config: dict) -> tuple[int, ...]:
            return (triton.cdiv(rows, config["TILE"] // inner), triton.cdiv(c, inner))

        args = (x, dy, win, out, rows, c, h, w, p, q, spec.stride, spec.padding)
        return in_order(*first, bind(_pool_backward_nhwc_kernel, _NHWC_CONFIGS, grid, args, meta, _INTERPRETER_CONFIG))

    def flat_grid(config: dict) -> tuple[int, ...]:
        return (triton.cdiv(out.numel(), config["TILE"]),)

    args = (x, dy, win, out, out.numel(), h, w, p, q, spec.stride, spec.padding)
    return in_order(*first, bind(_pool_backward_nchw_kernel, _NCHW_CONFIGS, flat_grid, args, meta, _INTERPRETER_CONFIG))
