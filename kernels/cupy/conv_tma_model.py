"""A CPU model of conv_tma.cu, transcribed from the kernel (models.py's style): its work items in
order, each k tile's box coordinates from the geometry it is passed, the TMA unit's loads
(zeros past a view's ends) and stores (nothing written past them) over the tensor maps' views,
its im2col copies (as the CUDA driver's and PTX's documentation describe them: a window of filter
origins walked at the traversal strides, each origin shifted by the tap), and the two
warpgroups' halves of each tile.  float64, NumPy only: no CuPy, no GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

BLOCK_K = 64  # the kernel's BK
OUT_BOX = 64  # the kernel's OUT_BOX: output channels a store box holds


@dataclass(frozen=True)
class MapView:
    """What a tensor map tells the TMA unit: the memory, its dims and box (innermost first) and the
    element strides of every dimension but the innermost."""

    memory: np.ndarray
    dims: tuple[int, ...]
    strides: tuple[int, ...]
    box: tuple[int, ...]


@dataclass(frozen=True)
class Im2colView:
    """What an im2col tensor map tells the TMA unit: the NHWC memory, its dims (C, W, H, N) and the
    element strides of W, H and N; the window of filter origins, (h, w) corners from the image's
    (0, 0) and (H - 1, W - 1), its traversal strides (h, w); a box of ``pixels`` origins x
    ``channels`` channels."""

    memory: np.ndarray
    dims: tuple[int, int, int, int]
    strides: tuple[int, int, int]
    lower: tuple[int, int]
    upper: tuple[int, int]
    traversal: tuple[int, int]
    pixels: int
    channels: int


def load_im2col(view: Im2colView, coords: tuple[int, int, int, int], offsets: tuple[int, int]) -> np.ndarray:
    """An im2col copy at ``coords`` (c, w, h, n) with tap ``offsets`` (w, h): [pixels, channels],
    row i the channels from c of origin i shifted by the tap, zeros where that lies past the
    tensor.  The origins start at (n, h, w) and step by the traversal stride along the window's
    columns, then its rows, then the images."""
    cs, ws, hs, ns = view.dims
    c, w, h, n = coords
    hi_h, hi_w = hs - 1 + view.upper[0], ws - 1 + view.upper[1]
    # PTX leaves a start outside the window undefined: the kernel must never ask for one
    assert view.lower[0] <= h <= hi_h and view.lower[1] <= w <= hi_w, f"origin ({h}, {w}) outside the window"
    chans = c + np.arange(view.channels)
    rows = np.zeros((view.pixels, view.channels))
    for i in range(view.pixels):
        ih, iw = h + offsets[1], w + offsets[0]
        if 0 <= ih < hs and 0 <= iw < ws and 0 <= n < ns:
            ok = chans < cs
            at = n * view.strides[2] + ih * view.strides[1] + iw * view.strides[0] + chans[ok]
            rows[i, ok] = view.memory[at]
        w += view.traversal[1]
        if w > hi_w:
            w, h = view.lower[1], h + view.traversal[0]
            if h > hi_h:
                h, n = view.lower[0], n + 1
    return rows


def _offsets(view: MapView, coords: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The element offset of each box element at ``coords`` (shape box[::-1]) and whether it lies
    inside the view."""
    shape = view.box[::-1]
    grids = np.indices(shape)[::-1]  # grids[d]: the index along dimension d
    inside = np.ones(shape, dtype=bool)
    offset = np.zeros(shape, dtype=np.int64)
    for d, (c, g) in enumerate(zip(coords, grids)):
        inside &= (c + g >= 0) & (c + g < view.dims[d])
        offset += (c + g) * (1 if d == 0 else view.strides[d - 1])
    return offset, inside


def load_box(view: MapView, coords: tuple[int, ...]) -> np.ndarray:
    """A TMA load: the box at ``coords`` (shape box[::-1]), zeros wherever it lies past the view."""
    offset, inside = _offsets(view, coords)
    assert np.all(offset[inside] < view.memory.size), "a view reaches past its tensor"
    return np.where(inside, view.memory[np.where(inside, offset, 0)], 0.0)


def store_box(view: MapView, coords: tuple[int, ...], values: np.ndarray) -> None:
    """A TMA store of ``values`` (shape box[::-1]) at ``coords``: nothing written past the view,
    and no element written twice."""
    offset, inside = _offsets(view, coords)
    targets = offset[inside]
    assert np.all(targets < view.memory.size), "a view reaches past its tensor"
    assert np.isnan(view.memory[targets]).all(), "an output element is written twice"
    view.memory[targets] = values[inside]


def _floor_split(offset: int, stride: int) -> tuple[int, int]:
    q = offset // stride if offset >= 0 else -((-offset + stride - 1) // stride)
    return q, offset - q * stride


class TapWalk:
    """conv_tma.cu's TapWalk, transcribed: an item's k tiles, taps outer and channel blocks inner,
    advanced by additions."""

    def __init__(self, g: Mapping[str, int]) -> None:
        self.g = g
        self.block = self.r = self.c = self.tap = 0
        self.qh = (0, 0) if g["im2col"] else _floor_split(-g["padding_h"], g["stride_h"])
        self.qw = (0, 0) if g["im2col"] else _floor_split(-g["padding_w"], g["stride_w"])

    def next(self) -> None:
        g = self.g
        self.block += 1
        if self.block < g["channel_tiles"]:
            return
        self.block = 0
        self.tap += 1
        self.c += 1
        if self.c == g["kernel_w"]:
            self.c = 0
            self.r += 1
            if not g["im2col"]:
                self.qh = _floor_split(self.r * g["dilation_h"] - g["padding_h"], g["stride_h"])
        if not g["im2col"]:
            self.qw = _floor_split(self.c * g["dilation_w"] - g["padding_w"], g["stride_w"])


def grouped_tile(t: int, tiles_m: int, tiles_n: int, group_m: int) -> tuple[int, int]:
    """wgmma.cuh's grouped_tile, transcribed: output tile t's (row tile, column tile)."""
    width = group_m * tiles_n
    first_m = (t // width) * group_m
    height = min(tiles_m - first_m, group_m)
    return first_m + (t % width) % height, (t % width) // height


def store_pixels(g: Mapping[str, int], out: np.ndarray, values: np.ndarray, origin: tuple[int, int, int, int],
                 first: int, col0: int) -> None:
    """store_pixels: row r of ``values`` is the tile's pixel first + r (``origin``: m0, n0, h0, w0;
    im2col mode: the output's pixel m0 + first + r), column j output channel col0 + j, written
    through the output's strides where both lie inside the output."""
    m0, n0, h0, w0 = origin
    for r, row in enumerate(values):
        p = first + r
        if g["im2col"]:
            m = m0 + p
            n, h, w = m // (g["out_h"] * g["out_w"]), (m // g["out_w"]) % g["out_h"], m % g["out_w"]
        else:
            n, h = n0 + p // (g["patch_h"] * g["patch_w"]), h0 + (p // g["patch_w"]) % g["patch_h"]
            w = w0 + p % g["patch_w"]
        if n >= g["batch"] or h >= g["out_h"] or w >= g["out_w"]:
            continue
        cols = np.arange(col0, min(col0 + len(row), g["out_channels"]))
        at = n * g["os_n"] + cols * g["os_c"] + h * g["os_h"] + w * g["os_w"]
        assert np.all((at >= 0) & (at < out.size)), "a store leaves the output"
        assert np.isnan(out[at]).all(), "an output element is written twice"
        out[at] = row[:len(cols)]


def model_conv_tma(g: Mapping[str, int], x: MapView | Im2colView, w: MapView, out: np.ndarray, y: MapView | None,
                   bias: np.ndarray | None, block_n: int, blocks: int) -> None:
    """conv_tma<T, block_n, ...> on ``blocks`` persistent blocks: writes ``out``, the output's memory
    (poisoned with NaN by the caller, so that an output the kernel misses shows), through the map
    ``y`` (over ``out``) where the geometry says so, else through its strides; ``x`` is an im2col
    map in im2col mode."""
    assert isinstance(x, Im2colView) == bool(g["im2col"])
    assert (y is not None and y.memory is out) == bool(g["store_by_tma"])
    tiles_m = g["tiles_i"] * g["tiles_h"] * g["tiles_w"]
    tiles_n = -(-g["out_channels"] // block_n)
    k_tiles = g["kernel_h"] * g["kernel_w"] * g["channel_tiles"]
    half_i = g["patch_i"] // 2 if g["patch_i"] > 1 else 0
    half_h = 0 if g["patch_i"] > 1 else g["patch_h"] // 2
    rows = x.pixels if g["im2col"] else x.box[1] * x.box[2] * x.box[3] * x.box[4]  # a box row a pixel
    for block in range(blocks):
        for item in range(block, tiles_m * tiles_n, blocks):
            tm, tn = grouped_tile(item, tiles_m, tiles_n, g["group_m"])
            col0 = tn * block_n
            if g["im2col"]:
                m0 = tm * rows
                n0, h0, w0 = m0 // (g["out_h"] * g["out_w"]), (m0 // g["out_w"]) % g["out_h"], m0 % g["out_w"]
            else:
                tw, th = tm % g["tiles_w"], (tm // g["tiles_w"]) % g["tiles_h"]
                ti = tm // (g["tiles_w"] * g["tiles_h"])
                m0, n0, h0, w0 = 0, ti * g["patch_i"], th * g["patch_h"], tw * g["patch_w"]
            acc = np.zeros((rows, block_n))
            k = TapWalk(g)
            for _ in range(k_tiles):
                if isinstance(x, Im2colView):
                    a = load_im2col(x, (k.block * BLOCK_K, w0 * g["stride_w"] - g["padding_w"],
                                        h0 * g["stride_h"] - g["padding_h"], n0),
                                    (k.c * g["dilation_w"], k.r * g["dilation_h"]))
                else:
                    (qh, ph), (qw, pw) = k.qh, k.qw
                    a = load_box(x, (pw * g["channels"] + k.block * BLOCK_K, w0 + qw, ph, h0 + qh, n0))
                b = load_box(w, (k.block * BLOCK_K, k.tap, col0))
                acc += a.reshape(rows, BLOCK_K) @ b.reshape(block_n, BLOCK_K).T
                k.next()
            if bias is not None:  # stage_tile: the bias of the columns that exist
                cols = col0 + np.arange(block_n)
                acc += np.where(cols < len(bias), bias[np.minimum(cols, len(bias) - 1)], 0.0)
            for group in range(2):
                half = acc[group * 64:(group + 1) * 64]
                if y is None:
                    store_pixels(g, out, half, (m0, n0, h0, w0), group * 64, col0)
                    continue
                for j in range(block_n // OUT_BOX):
                    if col0 + j * OUT_BOX >= g["out_channels"]:
                        break
                    part = half[:, j * OUT_BOX:(j + 1) * OUT_BOX].reshape(y.box[::-1])
                    at = ((col0 + j * OUT_BOX, m0 + group * 64) if g["im2col"]
                          else (col0 + j * OUT_BOX, w0, h0 + group * half_h, n0 + group * half_i))
                    store_box(y, at, part)
