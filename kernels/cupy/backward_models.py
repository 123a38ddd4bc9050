"""CPU models of the backward kernels' index math, transcribed from the .cu files beside this
module (as ``models`` does for the forward kernels), for the tests to run against float64 autograd:

* ReLU backward's bit select (``relu_backward_bits``; relu_backward.cu);
* the pooling gather (``model_pool_backward``; pool2d_backward.cu): the windows over each dx
  element, each max window's winner found again on order keys of the bit patterns, or read from
  the winners that ``model_pool_winners`` (pool2d_winners) found first;
* the linear backward's helpers: layout.cu's tiled transpose as the launcher grids it
  (``model_to_channels_last``) and the bias gradient's column sums (``model_column_sums``;
  linear_backward.cu).  The GEMMs are ``models.model_igemm`` on the launcher's geometries.

NumPy and torch only: no CuPy, no GPU.  A model asserts where its kernel would read or write
outside its buffers.
"""

from __future__ import annotations

import numpy as np
import torch

from kernels.cupy.models import BITS, is_nan_bits
from layerbench.layers import Pool2d

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}  # the keys of models.BITS

# ---------------------------------------------------------------- ReLU backward (relu_backward.cu)


def relu_backward_bits(x: np.ndarray, dy: np.ndarray, name: str) -> np.ndarray:
    """relu_backward.cu on unsigned bit patterns: dy where x is neither -0, +0, negative, else 0."""
    sign, inf = BITS[name][:2]
    below_or_zero = (x == 0) | (((x & sign) != 0) & ~is_nan_bits(x, sign, inf))
    return np.where(below_or_zero, 0, dy)


# ---------------------------------------------------------------- pooling backward (pool2d_backward.cu)


def unsigned_bits(t: torch.Tensor) -> np.ndarray:
    """The bit patterns of a float32/16 or bfloat16 tensor's elements in memory order, as unsigned int64."""
    name = DTYPE_NAMES[t.dtype]
    _, _, _, idt, bits = BITS[name]
    flat = torch.as_strided(t, (t.numel(),), (1,), t.storage_offset())
    u = flat.view(idt).to(torch.int64).numpy()
    return np.where(u < 0, u + (1 << bits), u)


def order_key(u: np.ndarray, name: str) -> np.ndarray:
    """pool2d_backward.cu order_key: +-magnitude of the bit pattern, -0 and +0 both 0."""
    sign = BITS[name][0]
    magnitude = u & (sign - 1)
    return np.where((u & sign) != 0, -magnitude, magnitude)


def _windows_over(i: np.ndarray, k: int, s: int, p: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """pool2d_backward.cu windows_over: first and last window (along one axis) holding input i."""
    lo = i + p - k + 1
    first = np.where(lo <= 0, 0, (lo + s - 1) // s)  # C's division, as lo > 0 where it is taken
    assert np.all(i + p >= 0)
    return first, np.minimum((i + p) // s, out - 1)


def _position(flat: np.ndarray, nhwc: bool, C: int, rows: int, cols: int) -> tuple[np.ndarray, ...]:
    """(n, c, row, col) of flat indices into a (batch, C, rows, cols) tensor laid out NHWC or NCHW."""
    if nhwc:
        t, c = np.divmod(flat, C)
        t, col = np.divmod(t, cols)
        n, row = np.divmod(t, rows)
    else:
        t, col = np.divmod(flat, cols)
        t, row = np.divmod(t, rows)
        n, c = np.divmod(t, C)
    return n, c, row, col


def _model_window_winner(xs: np.ndarray, name: str, live: np.ndarray, x_plane: np.ndarray, x_row: int,
                         col_step: int, h0: np.ndarray, w0: np.ndarray, k: int, H: int, W: int) -> np.ndarray:
    """pool2d_backward.cu window_winner: each window's winner as its tap number (row * k + column,
    padding counted), -1 where ``live`` is false or no tap is real."""
    best_key = np.full(len(live), -(1 << 40))  # below every key
    best_nan = np.zeros(len(live), bool)
    winner = np.full(len(live), -1)
    for a in range(k):  # row-major over the window, real taps only
        for b in range(k):
            hh, ww = h0 + a, w0 + b
            real = live & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
            at = np.where(real, x_plane + hh * x_row + ww * col_step, 0)
            assert np.all((at >= 0) & (at < len(xs))), "an x load leaves x"
            u = xs[at]
            nan = is_nan_bits(u, *BITS[name][:2])
            key = order_key(u, name)
            take = real & (nan | (~best_nan & (key > best_key)))
            best_key = np.where(take, key, best_key)
            best_nan = np.where(take, nan, best_nan)
            winner = np.where(take, a * k + b, winner)
    return winner


def model_pool_winners(spec: Pool2d, x: torch.Tensor, layout: str) -> np.ndarray:
    """pool2d_winners on the CPU: every window's winner (tap number), in dy's memory order for
    ``layout``.  ``x`` (fp32, fp16 or bf16) is dense in ``layout``."""
    s = spec
    nhwc = layout == "NHWC"
    name = DTYPE_NAMES[x.dtype]
    C, H, W, OH, OW, k = s.channels, s.height, s.width, s.out_height, s.out_width, s.kernel
    t = np.arange(s.batch * C * OH * OW)
    n, c, oh, ow = _position(t, nhwc, C, OH, OW)
    col_step = C if nhwc else 1
    x_plane = n * H * W * C + c if nhwc else (n * C + c) * H * W
    winners = _model_window_winner(unsigned_bits(x), name, np.ones(len(t), bool), x_plane, W * col_step,
                                   col_step, oh * s.stride - s.padding, ow * s.stride - s.padding, k, H, W)
    assert np.all((winners >= 0) & (winners < 128)), "a winner that does not fit a signed char"
    return winners


def model_pool_backward(spec: Pool2d, x: torch.Tensor, dy: torch.Tensor, layout: str,
                        winners: np.ndarray | None = None) -> torch.Tensor:
    """pool2d_backward.cu on the CPU: every dx element (in ``layout``'s memory order) gathers from
    the windows that contain it; float64 sums of the exact dy values.  ``x`` (fp32, fp16 or bf16)
    and ``dy`` are dense in ``layout``; ``winners`` (max pooling, as ``model_pool_winners`` gives
    them) are read instead of finding each window's winner again.  Returns dx (float64, NCHW
    logical order)."""
    s = spec
    nhwc = layout == "NHWC"
    name = DTYPE_NAMES[x.dtype]
    xs = unsigned_bits(x)
    ys = torch.as_strided(dy, (dy.numel(),), (1,), dy.storage_offset()).double().numpy()
    C, H, W, OH, OW, k = s.channels, s.height, s.width, s.out_height, s.out_width, s.kernel
    idx = np.arange(s.batch * C * H * W)
    n, c, h, w = _position(idx, nhwc, C, H, W)
    col_step = C if nhwc else 1
    x_row, y_row = W * col_step, OW * col_step
    x_plane = n * H * W * C + c if nhwc else (n * C + c) * H * W
    y_plane = n * OH * OW * C + c if nhwc else (n * C + c) * OH * OW
    oh0, oh1 = _windows_over(h, k, s.stride, s.padding, OH)
    ow0, ow1 = _windows_over(w, k, s.stride, s.padding, OW)
    span = -(-k // s.stride)  # the most windows along one axis that can hold an element
    assert np.all(oh1 - oh0 < span) and np.all(ow1 - ow0 < span)
    total = np.zeros(len(idx))
    for j in range(span):
        for i in range(span):
            oh, ow = oh0 + j, ow0 + i
            live = (oh <= oh1) & (ow <= ow1)
            at_y = np.where(live, y_plane + oh * y_row + ow * col_step, 0)
            assert np.all((at_y >= 0) & (at_y < len(ys))), "a dy load leaves dy"
            g = np.where(live, ys[at_y], 0.0)
            if s.method == "avg":
                total += g
                continue
            h0, w0 = oh * s.stride - s.padding, ow * s.stride - s.padding
            if winners is None:
                winner = _model_window_winner(xs, name, live, x_plane, x_row, col_step, h0, w0, k, H, W)
            else:
                winner = np.where(live, winners[at_y], -1)
            total += np.where(live & (winner == (h - h0) * k + (w - w0)), g, 0.0)
    if s.method == "avg":
        total /= k * k
    shape = (s.batch, H, W, C) if nhwc else (s.batch, C, H, W)
    dx = torch.from_numpy(total).view(shape)
    return dx.permute(0, 3, 1, 2) if nhwc else dx


# ---------------------------------------------------------------- linear backward helpers


def model_to_channels_last(src: np.ndarray, C: int, HW: int, grid: tuple[int, int, int], tile: int,
                           rows: int) -> np.ndarray:
    """layout.cu to_channels_last's blocks and threads on the CPU (the trip through the shared tile
    left out): block (bx, by, z) moves its tile x tile piece of image z, dst[z][hw][c] =
    src[z][c][hw]; NaN where no block writes."""
    dst = np.full(len(src), np.nan)
    for z in range(grid[2]):
        for by in range(grid[1]):
            for bx in range(grid[0]):
                for ty in range(rows):
                    for r in range(ty, tile, rows):
                        c, hw = by * tile + r, bx * tile + np.arange(tile)
                        ok = (c < C) & (hw < HW)
                        at = z * C * HW + c * HW + hw[ok]
                        assert np.all(at < len(src)), "a load leaves the source"
                        dst[z * C * HW + hw[ok] * C + c] = src[at]
    return dst


def model_column_sums(a: np.ndarray, cols_per_block: int, rows_per_block: int) -> np.ndarray:
    """linear_backward.cu column_sums on a row-major matrix: per column, the partial sums of rows
    ty, ty + rows_per_block, ..., then those partials in order of ty."""
    rows, cols = a.shape
    blocks = -(-cols // cols_per_block)
    sums = np.full(cols, np.nan)
    for block in range(blocks):
        col = block * cols_per_block + np.arange(cols_per_block)
        live = col < cols
        partial = np.zeros((rows_per_block, cols_per_block))
        for ty in range(rows_per_block):
            for r in range(ty, rows, rows_per_block):
                partial[ty, live] += a[r, col[live]]
        sums[col[live]] = partial[:, live].sum(axis=0)
    return sums
