"""The CuPy backward launchers, and the convolution's forward on the conv fields (per-axis stride
and padding, dilation, groups, depthwise), end to end on the CPU: check_implementation builds every
pass (training included) through the registry, and each launch runs a CPU emulation of its kernel,
which takes the launcher's arguments in the order of the kernel's .cu signature and computes
with the kernels' models (backward_models, models, depthwise_models; igemm.build's GEMM is
models.model_igemm on the launcher's geometry).  Catches arguments out of order, wrong views,
strides or template arguments, and parts of the output left unwritten, without a GPU."""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kernels import pool_winners
from kernels.cupy import conv2d as cupy_conv2d
from kernels.cupy import (conv_tma, depthwise, depthwise_plan, fft_plan, igemm, linear_backward, linear_wgmma,
                          lowered_conv, pointwise_gemm, pool2d_backward, sources, support, tensor_map)
from kernels.cupy import linear as cupy_linear
from kernels.cupy.backward_models import (
    DTYPE_NAMES,
    model_column_sums,
    model_pool_backward,
    model_pool_winners,
    model_to_channels_last,
    relu_backward_bits,
    unsigned_bits,
)
from kernels.cupy.conv_tma_model import Im2colView, MapView, grouped_tile, model_conv_tma
from kernels.cupy.depthwise_models import (model_depthwise_nchw, model_depthwise_nchw_flat, model_depthwise_nchw_rows,
                                           model_depthwise_nhwc, model_depthwise_nhwc_flat)
from kernels.cupy.depthwise_plan import NCHW_FLAT_COLUMNS, PIX, DepthwisePlan
from kernels.cupy.models import BITS, model_fft_forward, model_fft_inverse, model_fft_weight, model_igemm, relu_bits
from layerbench import build_cache, registry
from layerbench.build_cache import CACHE_DIR_ENV
from layerbench.builders import Built, remembering_choices
from layerbench.check.correctness import check_implementation
from layerbench.check.inputs import make_output, make_tensors
from layerbench.dtypes import DType, get_dtype
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d, Linear, Pool2d, ReLU

CTYPES = {"float": torch.float32, "__half": torch.float16, "__nv_bfloat16": torch.bfloat16}


def _from_bits(u: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    _, _, tdt, idt, bits = BITS[DTYPE_NAMES[dtype]]
    return torch.from_numpy(np.where(u >= (1 << (bits - 1)), u - (1 << bits), u)).to(idt).view(tdt)


class EmulatedLaunch:
    """support.Launch's signature; calling it runs the kernel named by ``fn`` on the CPU."""

    def __init__(self, fn: SimpleNamespace, grid: tuple[int, int, int], block: tuple[int, int, int],
                 args: Sequence[object], index: int, keep: Sequence[object] = (), shared_bytes: int = 0) -> None:
        assert all(g >= 1 for g in grid), grid
        self.kernel, targs = re.fullmatch(r"(\w+)(?:<(.*)>)?", fn.name).groups()
        self.targs = [a.strip() for a in targs.split(",")] if targs else []
        self.grid, self.block, self.args, self.keep = grid, block, list(args), keep
        self.name, self.shared_bytes = fn.name, shared_bytes

    def value(self, i: int) -> int | float:
        return self.args[i].value

    def memory(self, i: int, count: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``count`` elements from pointer argument ``i``, which must point into a kept tensor of
        ``dtype`` (default: the kernel's first template argument)."""
        t = self.kept(i)
        assert t.dtype == (dtype or CTYPES[self.targs[0]]), "a tensor of the wrong dtype"
        return torch.as_strided(t, (count,), (1,))

    def kept(self, i: int) -> torch.Tensor:
        """The kept tensor that pointer argument ``i`` points to the start of."""
        assert isinstance(self.args[i], ctypes.c_void_p), f"argument {i} is not a pointer"
        for t in self.keep:
            if t is not None and t.data_ptr() == self.args[i].value:
                return t
        raise AssertionError(f"{self.kernel}: pointer argument {i} is none of the kept tensors")

    def __call__(self) -> None:
        getattr(self, f"_{self.kernel}")()

    def _relu(self) -> None:  # relu(x, y, n)
        n = self.value(2)
        x, y = self.memory(0, n), self.memory(1, n)
        y.copy_(_from_bits(relu_bits(unsigned_bits(x), DTYPE_NAMES[x.dtype]), x.dtype))

    def _relu_backward(self) -> None:  # relu_backward(x, dy, dx, n)
        n = self.value(3)
        x, dy, dx = (self.memory(i, n) for i in range(3))
        dx.copy_(_from_bits(relu_backward_bits(unsigned_bits(x), unsigned_bits(dy), DTYPE_NAMES[x.dtype]), x.dtype))

    def _pool_spec(self, first: int, method: str, nhwc: bool) -> tuple[Pool2d, Callable[[int, int, int], torch.Tensor]]:
        """The spec from the shape arguments from ``first`` on (batch, C, H, W, OH, OW, k, s, p), and
        a view of pointer argument i as a (batch, C, rows, cols) tensor in the layout."""
        batch, c, h, w, oh, ow, k, s, p = (self.value(first + i) for i in range(9))
        spec = Pool2d(batch, c, h, w, k, s, p, method=method)
        assert (spec.out_height, spec.out_width) == (oh, ow)

        def tensor(i: int, rows: int, cols: int) -> torch.Tensor:
            flat = self.memory(i, batch * c * rows * cols)
            return flat.view(batch, rows, cols, c).permute(0, 3, 1, 2) if nhwc else flat.view(batch, c, rows, cols)

        return spec, tensor

    def _pool2d_backward(self) -> None:  # (x, dy, dx, batch, C, H, W, OH, OW, k, s, p, inv_area, win)
        nhwc, winners = ({"false": False, "true": True}[a] for a in self.targs[2:4])
        spec, tensor = self._pool_spec(3, ["max", "avg"][int(self.targs[1])], nhwc)
        assert self.value(12) == pytest.approx(1 / (spec.kernel * spec.kernel))
        h, w, oh, ow = spec.height, spec.width, spec.out_height, spec.out_width
        layout = "NHWC" if nhwc else "NCHW"
        win = self.memory(13, math.prod(spec.output_shape), torch.int8).numpy() if winners else None
        assert winners or self.args[13].value is None, "a winner array passed to the gather that finds them again"
        tensor(2, h, w).copy_(model_pool_backward(spec, tensor(0, h, w), tensor(1, oh, ow), layout, win))

    def _pool2d_winners(self) -> None:  # (x, win, batch, C, H, W, OH, OW, k, s, p)
        nhwc = {"false": False, "true": True}[self.targs[1]]
        spec, tensor = self._pool_spec(2, "max", nhwc)
        win = self.memory(1, math.prod(spec.output_shape), torch.int8)
        win.copy_(torch.from_numpy(model_pool_winners(spec, tensor(0, spec.height, spec.width),
                                                      "NHWC" if nhwc else "NCHW")))

    def _pool_forward(self, x: torch.Tensor, y: torch.Tensor, k: int, s: int, p: int) -> None:
        xd = x.double()  # the forward kernels have models of their own (test_cupy_pool_model)
        y.copy_(F.max_pool2d(xd, k, s, p) if self.targs[1] == "0" else F.avg_pool2d(xd, k, s, p))

    def _pool2d_nchw(self) -> None:  # (x, y, rows, H, W, OH, OW, k, s, p, inv_area, band_rows)
        rows, h, w, oh, ow, k, s, p = (self.value(i) for i in range(2, 10))
        planes = rows // oh
        self._pool_forward(self.memory(0, planes * h * w).view(planes, 1, h, w),
                           self.memory(1, planes * oh * ow).view(planes, 1, oh, ow), k, s, p)

    def _pool2d_nhwc(self) -> None:  # (x, y, batch, C, H, W, OH, OW, k, s, p, inv_area)
        batch, c, h, w, oh, ow, k, s, p = (self.value(i) for i in range(2, 11))
        self._pool_forward(self.memory(0, batch * h * w * c).view(batch, h, w, c).permute(0, 3, 1, 2),
                           self.memory(1, batch * oh * ow * c).view(batch, oh, ow, c).permute(0, 3, 1, 2), k, s, p)

    def _to_channels_last(self) -> None:  # (src, dst, C, HW), grid (.., .., N)
        c, hw, n = self.value(2), self.value(3), self.grid[2]
        assert self.block == (linear_backward.TILE, linear_backward.ROWS, 1)
        src, dst = self.memory(0, n * c * hw), self.memory(1, n * c * hw)
        moved = model_to_channels_last(src.double().numpy(), c, hw, self.grid, *self.block[:2])
        dst.copy_(torch.from_numpy(moved))

    def _im2col(self) -> None:  # (x, col, segments, QB, WS, KP, C, R, S, P, Q, H, W, SH, SW, PH, PW, DH, DW); <U>
        segments, qb, ws, kp, c, r, s, p, q, h, w, sth, stw, ph, pw, dh, dw = (self.value(i) for i in range(2, 19))
        x, col = self.kept(0), self.kept(1)
        assert {"unsigned short": 2, "unsigned int": 4}[self.targs[0]] == x.element_size() == col.element_size()
        assert x.permute(0, 2, 3, 1).is_contiguous(), "the kernel reads x as dense NHWC"
        n_images = x.shape[0]
        assert self.block == (lowered_conv.THREADS, 1, 1) and self.grid == (n_images * p * segments, 1, 1)
        assert kp % lowered_conv.VEC == 0 and col.numel() == n_images * p * q * kp
        span = ws * c
        assert self.shared_bytes >= kp * 4 + r * span * x.element_size() and self.shared_bytes <= 48 * 1024
        memory = torch.as_strided(x, (x.numel(),), (1,))
        out = torch.as_strided(col, (col.numel(),), (1,))
        k = np.arange(kp)
        offset = np.where(k < c * r * s, (k // (c * s)) * span + ((k // c) % s) * dw * c + k % c, -1)
        for block in range(self.grid[0]):  # as the kernel: stage the window, then copy out of it
            segment, row = block % segments, block // segments
            pp, n, q0 = row % p, row // p, segment * qb
            window = torch.zeros(r * span, dtype=x.dtype)
            g = (q0 * stw - pw) * c + np.arange(span)
            for rr in range(r):
                ih = pp * sth - ph + rr * dh
                ok = (g >= 0) & (g < w * c)
                if 0 <= ih < h and ok.any():
                    window[rr * span + np.flatnonzero(ok)] = memory[(n * h + ih) * w * c + g[ok]]
            pixels = min(qb, q - q0)
            shift = np.arange(pixels)[:, None] * stw * c
            values = window[torch.from_numpy(np.where(offset >= 0, offset + shift, 0))]
            values[torch.from_numpy(np.broadcast_to(offset < 0, values.shape).copy())] = 0
            first = (row * q + q0) * kp
            out[first:first + pixels * kp] = values.reshape(-1)

    def _shape(self, first: int) -> tuple[int, ...]:
        """The 15 shape arguments from ``first`` on, as ``_depthwise`` takes them."""
        return tuple(self.value(first + i) for i in range(15))

    def _depthwise(self, shape: tuple[int, ...], batch: int,
                   nhwc: bool) -> tuple[Conv2d, dict[str, torch.Tensor | None]]:
        """The spec from the shape arguments (C, H, W, CO, OH, OW, KH, KW, stride_h, stride_w, pad_h,
        pad_w, dil_h, dil_w, multiplier) and the buffers x, wt, bias, out."""
        c, h, w, co, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, mult = shape
        spec = Conv2d(batch, c, co, h, w, kh, kw, stride_h=sh, stride_w=sw, padding_h=ph, padding_w=pw,
                      dilation_h=dh, dilation_w=dw, groups=c)
        assert (spec.out_height, spec.out_width, co // c) == (oh, ow, mult)

        def tensor(i: int, channels: int, rows: int, cols: int) -> torch.Tensor:
            flat = self.memory(i, batch * channels * rows * cols)
            if nhwc:
                return flat.view(batch, rows, cols, channels).permute(0, 3, 1, 2)
            return flat.view(batch, channels, rows, cols)

        bias = self.memory(2, co, torch.float32) if self.args[2].value is not None else None
        return spec, {"x": tensor(0, c, h, w), "wt": self.memory(1, co * kh * kw, torch.float32), "bias": bias,
                      "out": tensor(3, co, oh, ow)}

    def _depthwise_nhwc(self) -> None:  # (x, wt, bias, out, items, C, H, W, CO, ..., multiplier)
        items, vec, k, s = self.value(4), *(int(a) for a in self.targs[1:])
        oh, ow, co = self.value(9), self.value(10), self.value(8)
        batch, rest = divmod(items, oh * -(-ow // PIX) * (co // vec))
        assert rest == 0 and batch >= 1
        spec, t = self._depthwise(self._shape(5), batch, nhwc=True)
        assert s == (spec.stride_w if k else 0), "the template's stride is not the spec's"
        plan = DepthwisePlan(self.name, self.grid, self.block[0], self.shared_bytes, vec, k, items, (0, 0, 0, 0))
        t["out"].copy_(model_depthwise_nhwc(spec, plan, t["x"], t["wt"], t["bias"]))

    def _depthwise_nhwc_flat(self) -> None:  # (x, wt, bias, out, C, H, W, OH, OW, pad_h, pad_w, band, segments,
        # bands); <T, VEC, S>
        c, h, w, oh, ow, ph, pw, band, segments, bands = (self.value(i) for i in range(4, 14))
        vec, stride = (int(a) for a in self.targs[1:])
        batch, rest = divmod(self.grid[0], segments * bands)
        assert rest == 0 and batch >= 1 and bands == -(-oh // band)
        spec = Conv2d(batch, c, c, h, w, 3, 3, stride=stride, padding_h=ph, padding_w=pw, groups=c)
        assert (spec.out_height, spec.out_width) == (oh, ow)
        x = self.memory(0, batch * h * w * c).view(batch, h, w, c).permute(0, 3, 1, 2)
        out = self.memory(3, batch * oh * ow * c).view(batch, oh, ow, c).permute(0, 3, 1, 2)
        bias = self.memory(2, c, torch.float32) if self.args[2].value is not None else None
        plan = DepthwisePlan(self.name, self.grid, self.block[0], self.shared_bytes, vec, 3, 0, (0, 0, 0, 0), band,
                             segments)
        out.copy_(model_depthwise_nhwc_flat(spec, plan, x, self.memory(1, 9 * c, torch.float32), bias))

    def _depthwise_nchw_flat(self) -> None:  # (x, wt, bias, out, planes, C, H, W, OH, OW, pad_h, pad_w, band,
        # segments, bands, tq_log2); <T, S, COLS>
        planes, c, h, w, oh, ow, ph, pw, band, segments, bands, tq_log2 = (self.value(i) for i in range(4, 16))
        stride, cols = (int(a) for a in self.targs[1:])
        batch, rest = divmod(planes, c)
        assert rest == 0 and batch >= 1 and bands == -(-oh // band)
        spec = Conv2d(batch, c, c, h, w, 3, 3, stride=stride, padding_h=ph, padding_w=pw, groups=c)
        assert (spec.out_height, spec.out_width) == (oh, ow)
        x = self.memory(0, planes * h * w).view(batch, c, h, w)
        out = self.memory(3, planes * oh * ow).view(batch, c, oh, ow)
        bias = self.memory(2, c, torch.float32) if self.args[2].value is not None else None
        plan = DepthwisePlan(self.name, self.grid, self.block[0], self.shared_bytes, cols, 3, 0, (0, 0, 0, 0), band,
                             segments, 1 << tq_log2)
        out.copy_(model_depthwise_nchw_flat(spec, plan, x, self.memory(1, 9 * c, torch.float32), bias))

    def _depthwise_nchw(self) -> None:  # (x, wt, bias, out, C, ..., multiplier, TH, TW, IH, IW)
        co = self.value(7)
        batch, rest = divmod(self.grid[0], co)
        assert rest == 0 and batch >= 1
        spec, t = self._depthwise(self._shape(4), batch, nhwc=False)
        tile = tuple(self.value(i) for i in range(19, 23))
        plan = DepthwisePlan(self.name, self.grid, self.block[0], self.shared_bytes, 1, int(self.targs[1]), 0, tile)
        t["out"].copy_(model_depthwise_nchw(spec, plan, t["x"], t["wt"], t["bias"]))

    def _depthwise_nchw_rows(self) -> None:  # (x, wt, bias, out, planes, H, W, CO, ..., multiplier, group,
        # band, bands, chunks, buffer, stages); <T, K, S>
        planes, co, mult = self.value(4), self.value(7), self.value(18)
        group, band, bands, chunks, buffer, stages = (self.value(i) for i in range(19, 25))
        batch, rest = divmod(planes, co // mult)
        assert rest == 0 and batch >= 1 and bands == -(-self.value(8) // band)
        spec, t = self._depthwise((planes // batch, *self._shape(5)[:14]), batch, nhwc=False)
        k, stride = (int(a) for a in self.targs[1:])
        assert stride == (spec.stride_h if k else 0), "the template's stride is not the spec's"
        strip = depthwise_plan.ROWS_STRIPS[stride] if k else 1
        plan = DepthwisePlan(self.name, self.grid, self.block[0], self.shared_bytes, strip, k, 0, (0, 0, 0, 0), band,
                             group=group, chunks=chunks, buffer=buffer, stages=stages)
        t["out"].copy_(model_depthwise_nchw_rows(spec, plan, t["x"], t["wt"], t["bias"], t["x"].data_ptr() % 16))

    def _linear_wgmma(self) -> None:  # (x, w, bias, y, M, N, K, group_m); <T, BN, STAGES>
        m, n, k, group_m = (self.value(i) for i in range(4, 8))
        block_n, stages = int(self.targs[1]), int(self.targs[2])
        bm = linear_wgmma.BLOCK_M
        assert self.block == (linear_wgmma.THREADS, 1, 1)
        assert self.shared_bytes == linear_wgmma.shared_bytes(block_n, stages)
        tiles_m, tiles_n = -(-m // bm), -(-n // block_n)
        assert self.grid == (tiles_m * tiles_n, 1, 1)
        # The grouped tile order: every tile exactly once.
        seen = {grouped_tile(pid, tiles_m, tiles_n, group_m) for pid in range(self.grid[0])}
        assert seen == {(i, j) for i in range(tiles_m) for j in range(tiles_n)}
        x, w, y = self.memory(0, m * k).view(m, k), self.memory(1, n * k).view(n, k), self.memory(3, m * n).view(m, n)
        acc = x.float() @ w.float().T
        if self.args[2].value is not None:
            acc += self.memory(2, n).float()
        y.copy_(acc)

    def _pointwise_gemm(self) -> None:  # (a, b, bias, y, M, R, HW, columns, bias_by); <T, BM, VEC>,
        # grid (column tiles x row tiles)
        m, r, hw, columns, bias_by = (self.value(i) for i in range(4, 9))
        bm, vec = int(self.targs[1]), int(self.targs[2])
        n = columns // hw
        assert self.block == (pointwise_gemm.THREADS, 1, 1) and self.shared_bytes == pointwise_gemm.shared_bytes(bm)
        assert columns % hw == 0 and self.grid == (-(-columns // pointwise_gemm.BLOCK_N) * -(-m // bm), 1, 1), \
            self.grid
        assert r % 8 == 0 and hw % vec == 0, "the kernel moves whole chunks"
        assert bias_by in (0, 1) or (bias_by == 2 and n == 1), "bias by column in one image only"
        a = self.memory(0, m * r).view(m, r)
        b, y = self.memory(1, n * r * hw).view(n, r, hw), self.memory(3, n * m * hw).view(n, m, hw)
        acc = a.double() @ b.double()
        if bias_by == 1:
            acc += self.memory(2, m).double()[:, None]
        elif bias_by == 2:
            acc += self.memory(2, hw).double()[None, :]
        y.copy_(acc)

    def _linear_tma(self) -> None:  # (x_map, w_map, y_map, bias, y, ws, M, N, K, group_m, per, store_by_tma);
        # <T, BN, STAGES, BLOCKS>
        m, n, k, group_m, per, by_tma = (self.value(i) for i in range(6, 12))
        block_n, stages, blocks = int(self.targs[1]), int(self.targs[2]), int(self.targs[3])
        bm, bk = linear_wgmma.BLOCK_M, linear_wgmma.BLOCK_K
        assert self.block == (linear_wgmma.TMA_THREADS, 1, 1)
        assert self.shared_bytes == linear_wgmma.tma_shared_bytes(block_n, stages)
        # The outputs by TMA stores exactly where y's rows take a tensor map (16-byte aligned).
        assert by_tma == (n % 8 == 0), (by_tma, n)
        if by_tma:
            y_map = self.args[2]
            assert y_map.box == (linear_wgmma.OUT_BOX_ROWS, linear_wgmma.OUT_BOX_COLS)
            assert y_map.tensor.data_ptr() == self.args[4].value and y_map.tensor.shape == (m, n)
        x_map, w_map = self.args[0], self.args[1]
        assert (x_map.box, w_map.box) == ((bm, bk), (block_n, bk))
        x, w = x_map.tensor, w_map.tensor
        assert x.shape == (m, k) and w.shape == (n, k)
        k_tiles = -(-k // bk)
        splits = -(-k_tiles // per)
        # Persistent: `blocks` blocks an SM (at most), the work items (tile, split) dealt out in turn.
        tiles_m, tiles_n = -(-m // bm), -(-n // block_n)
        assert self.grid == (min(tiles_m * tiles_n * splits, 132 * blocks), 1, 1), self.grid
        # The work items' order (tile w % tiles of split w / tiles): every (tile, split) exactly once.
        tiles = tiles_m * tiles_n
        seen = {(*grouped_tile(w % tiles, tiles_m, tiles_n, group_m), w // tiles) for w in range(tiles * splits)}
        assert seen == {(i, j, z) for i in range(tiles_m) for j in range(tiles_n) for z in range(splits)}
        if self.args[5].value is None:
            assert splits == 1
            acc = x.float() @ w.float().T
            if self.args[3].value is not None:
                acc += self.memory(3, n).float()
            self.memory(4, m * n).view(m, n).copy_(acc)
            return
        ws = self.memory(5, splits * m * n, torch.float32).view(splits, m, n)
        for z in range(splits):  # each split's k tiles, no bias
            ks = slice(z * per * bk, (z + 1) * per * bk)
            ws[z] = x[:, ks].float() @ w[:, ks].float().T

    def _conv_tma(self) -> None:  # (x_map, w_map, y_map, bias, y, g); <T, BN, STAGES, BLOCKS>
        block_n, stages, blocks = int(self.targs[1]), int(self.targs[2]), int(self.targs[3])
        assert self.block == (linear_wgmma.TMA_THREADS, 1, 1)
        assert self.shared_bytes == linear_wgmma.tma_shared_bytes(block_n, stages)
        g = {name: getattr(self.args[5], name) for name, _ in conv_tma.Geometry._fields_}
        tiles = g["tiles_i"] * g["tiles_h"] * g["tiles_w"] * -(-g["out_channels"] // block_n)
        assert self.grid == (min(tiles, 132 * blocks), 1, 1), self.grid
        x_map, w_map, y_map = self.args[0], self.args[1], self.args[2]
        assert (x_map.box[0], w_map.box) == (64, (64, 1, block_n))
        assert math.prod(x_map.box[1:]) == 128, "a tile of 128 pixels"
        assert hasattr(x_map, "im2col") == bool(g["im2col"])
        y = self.kept(4)
        assert y.stride() == (g["os_n"], g["os_c"], g["os_h"], g["os_w"])
        if g["store_by_tma"]:
            assert y_map.tensor is y and y_map.box[0] == conv_tma.OUT_BOX_COLS

        def view(m: SimpleNamespace, memory: np.ndarray) -> MapView:
            size = m.tensor.element_size()
            assert all(s % size == 0 for s in m.strides)
            return MapView(memory, m.dims, tuple(s // size for s in m.strides), m.box)

        def flat(t: torch.Tensor) -> torch.Tensor:
            assert t.dtype == CTYPES[self.targs[0]]
            return torch.as_strided(t, (t.numel(),), (1,), t.storage_offset())

        out = np.full(y.numel(), np.nan)
        bias = self.memory(3, g["out_channels"]).double().numpy() if self.args[3].value is not None else None
        x = flat(x_map.tensor).double().numpy()
        if g["im2col"]:
            size, geo = x_map.tensor.element_size(), x_map.im2col
            x_view: MapView | Im2colView = Im2colView(
                x, x_map.dims, tuple(s // size for s in x_map.strides), geo.lower, geo.upper, geo.strides,
                geo.pixels, geo.channels)
        else:
            x_view = view(x_map, x)
        model_conv_tma(g, x_view,
                       view(w_map, flat(w_map.tensor).double().numpy()), out,
                       view(y_map, out) if g["store_by_tma"] else None, bias, block_n, self.grid[0])
        written = ~np.isnan(out)  # the kernel leaves the rest as it was
        flat(y)[torch.from_numpy(written)] = torch.from_numpy(out[written]).to(y.dtype)

    def _splitk_reduce(self) -> None:  # (ws, splits, M, N, bias, out, OHW, OW, osN, osC, osH, osW)
        splits, m, n = self.value(1), self.value(2), self.value(3)
        assert (self.value(6), self.value(7), self.value(8), self.value(9)) == (1, 1, n, 1), "a matrix output"
        acc = self.memory(0, splits * m * n, torch.float32).view(splits, m, n).sum(0)
        if self.args[4].value is not None:
            acc += self.memory(4, n).float()
        self.memory(5, m * n).view(m, n).copy_(acc)

    def _fft_geometry(self, planes: int, inner: int, tiles: int, tiles_w: int, step: int
                      ) -> list[tuple[int, int, tuple[int, int]]]:
        """(image, channel, tile origin) of each plane, transcribed from fft_conv.cu's Transform."""
        n = 1 << int(self.targs[0])
        assert self.block == (fft_plan.transform_threads(n), 1, 1)
        assert self.shared_bytes == fft_plan.transform_shared_bytes(n)
        assert self.grid == (-(-planes // fft_plan.planes_per_block(n)), 1, 1)
        out = []
        for p in range(planes):
            outer = p // inner
            tile = outer % tiles
            out.append((outer // tiles, p - outer * inner, ((tile // tiles_w) * step, (tile % tiles_w) * step)))
        return out

    def _fft_forward(self) -> None:  # (src, dst, planes, inner, s_outer, s_inner, s_row, s_col, rows, cols, pad,
        # tiles, tiles_w, step); <LOGN>
        log_n = int(self.targs[0])
        planes, inner, s_outer, s_inner, s_row, s_col, rows, cols, pad, tiles, tiles_w, step = (
            self.value(i) for i in range(2, 14))
        src = self.kept(0)
        freqs = (1 << log_n) * ((1 << log_n) // 2 + 1)
        dst = self.memory(1, 2 * planes * freqs, torch.float32).view(planes, freqs, 2)
        for p, (image, c, origin) in enumerate(self._fft_geometry(planes, inner, tiles, tiles_w, step)):
            plane = torch.as_strided(src, (rows, cols), (s_row, s_col),
                                     src.storage_offset() + image * s_outer + c * s_inner)
            spec = model_fft_forward(plane.double().numpy(), pad, log_n, origin).reshape(-1)
            dst[p] = torch.from_numpy(np.stack([spec.real, spec.imag], axis=1))

    def _fft_weight(self) -> None:  # (w, dst, planes, per_block, inner, s_outer, s_inner, s_row, s_col, kh, kw);
        # <LOGN>
        log_n = int(self.targs[0])
        n = 1 << log_n
        planes, per_block, inner, s_outer, s_inner, s_row, s_col, kh, kw = (self.value(i) for i in range(2, 11))
        assert max(kh, kw) <= fft_plan.PRUNED_TAPS
        assert per_block == fft_plan.weight_planes_per_block(n)
        assert (self.block, self.shared_bytes) == ((fft_plan.WEIGHT_THREADS, 1, 1), fft_plan.weight_shared_bytes(n, kh))
        assert self.grid == (-(-planes // per_block), 1, 1)
        src = self.kept(0)
        dst = self.memory(1, 2 * planes * n * (n // 2 + 1), torch.float32).view(planes, n * (n // 2 + 1), 2)
        for p in range(planes):
            taps = torch.as_strided(src, (kh, kw), (s_row, s_col),
                                    src.storage_offset() + (p // inner) * s_outer + (p % inner) * s_inner)
            spec = model_fft_weight(taps.double().numpy(), log_n).reshape(-1)
            dst[p] = torch.from_numpy(np.stack([spec.real, spec.imag], axis=1))

    def _fft_cgemm(self) -> None:  # (x, w, y, B, C, K, F)
        b, c, k, f = (self.value(i) for i in range(3, 7))
        assert self.grid == (-(-k // fft_plan.KT), -(-b // fft_plan.BT), f // fft_plan.FT)
        assert (self.block, self.shared_bytes) == ((fft_plan.GEMM_THREADS, 1, 1), fft_plan.GEMM_SHARED_BYTES)

        def spectra(i: int, planes: int) -> torch.Tensor:
            v = self.memory(i, 2 * planes * f, torch.float32).view(planes, f, 2).double()
            return torch.complex(v[..., 0], v[..., 1])

        x, w = spectra(0, b * c).view(b, c, f), spectra(1, k * c).view(k, c, f)
        y = torch.einsum("bcf,kcf->bkf", x, w.conj())
        self.memory(2, 2 * b * k * f, torch.float32).view(b, k, f, 2).copy_(torch.stack([y.real, y.imag], -1))

    def _fft_inverse(self) -> None:  # (src, dst, bias, planes, inner, o_outer, o_inner, o_row, o_col, rows, cols,
        # tiles, tiles_w, step); <LOGN>
        log_n = int(self.targs[0])
        n = 1 << log_n
        planes, inner, o_outer, o_inner, o_row, o_col, rows, cols, tiles, tiles_w, step = (
            self.value(i) for i in range(3, 14))
        src = self.memory(0, 2 * planes * n * (n // 2 + 1), torch.float32).view(planes, n, n // 2 + 1, 2).double()
        dst = self.kept(1)
        bias = self.memory(2, inner, torch.float32) if self.args[2].value is not None else None
        for p, (image, k, (oy, ox)) in enumerate(self._fft_geometry(planes, inner, tiles, tiles_w, step)):
            kept_rows, kept_cols = min(rows - oy, step), min(cols - ox, step)
            plane = model_fft_inverse(torch.complex(src[p, ..., 0], src[p, ..., 1]).numpy(), kept_rows, kept_cols,
                                      log_n)
            view = torch.as_strided(dst, (kept_rows, kept_cols), (o_row, o_col),
                                    dst.storage_offset() + image * o_outer + k * o_inner + oy * o_row + ox * o_col)
            view.copy_(torch.from_numpy(plane) + (bias[k] if bias is not None else 0.0))

    def _column_sums(self) -> None:  # (a, sums, rows, cols)
        rows, cols = self.value(2), self.value(3)
        assert self.block == (linear_backward.SUM_COLS, linear_backward.SUM_ROWS, 1)
        assert self.grid == (-(-cols // linear_backward.SUM_COLS), 1, 1)
        a, sums = self.memory(0, rows * cols), self.memory(1, cols)
        sums.copy_(torch.from_numpy(model_column_sums(a.double().numpy().reshape(rows, cols), *self.block[:2])))


def _emulated_igemm(dtype: DType, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    out: torch.Tensor, g: igemm.Geometry, wgmma: bool = False) -> Callable[[], None]:
    support.check_tensors(dtype, {"x": x, "weight": weight, "bias": bias, "out": out})
    if wgmma:  # the same GEMM on other instructions: the model stands for both
        igemm.check_wgmma(dtype, 0)
    return lambda: model_igemm(g, x, weight, bias, out, x.element_size(), dtype.name != "fp32", 264)


def _emulated_tensor_map(t: torch.Tensor, box_rows: int, box_cols: int) -> SimpleNamespace:
    """The tensor map as the emulated kernel reads it: the tensor and the box."""
    tensor_map.check_2d(t, box_rows, box_cols)
    return SimpleNamespace(tensor=t, box=(box_rows, box_cols))


def _emulated_view_map(t: torch.Tensor, dims: Sequence[int], strides: Sequence[int],
                       box: Sequence[int]) -> SimpleNamespace:
    """An N-D tensor map as the emulated kernel reads it: the tensor, its view and the box."""
    tensor_map.check_view(t, dims, strides, box)
    return SimpleNamespace(tensor=t, dims=tuple(dims), strides=tuple(strides), box=tuple(box))


def _emulated_im2col_map(t: torch.Tensor, geometry: tensor_map.Im2col) -> SimpleNamespace:
    """An im2col tensor map as the emulated kernel reads it: the tensor, its view, the geometry."""
    dims, strides = tensor_map.check_im2col(t, geometry)
    return SimpleNamespace(tensor=t, dims=dims, strides=strides, box=(geometry.channels, geometry.pixels),
                           im2col=geometry)


@pytest.fixture
def emulated(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU tensors accepted as device 0; kernels and launches emulated; igemm on its model."""
    monkeypatch.setattr(support, "device_index", lambda t: 0)
    monkeypatch.setattr(support, "sm_count", lambda index: 132)
    monkeypatch.setattr(support, "function", lambda source, name, index: SimpleNamespace(name=name))
    monkeypatch.setattr(support, "Launch", EmulatedLaunch)
    monkeypatch.setattr(igemm, "build", _emulated_igemm)
    # A build that times its paths runs each once and finds them equally fast: the first is kept.
    monkeypatch.setattr(pool_winners, "selection_ms", lambda kernel, device, warmup=3, reps=10: (kernel(), 1.0)[1])
    # A Hopper: the builds also make the wgmma GEMM, whose launch is emulated and checked like the others.
    monkeypatch.setattr(support, "capability", lambda index: (9, 0))
    monkeypatch.setattr(support, "allow_shared", lambda fn, shared_bytes, index, blocks=1: None)
    monkeypatch.setattr(support, "occupancy", lambda fn, threads, index, shared_bytes=0: 2)
    monkeypatch.setattr(tensor_map, "encode_2d", _emulated_tensor_map)
    monkeypatch.setattr(tensor_map, "encode", _emulated_view_map)
    monkeypatch.setattr(tensor_map, "encode_im2col", _emulated_im2col_map)
    for module in (cupy_linear, cupy_conv2d, support):
        monkeypatch.setattr(module, "selection_ms", lambda kernel, device, warmup=3, reps=10: (kernel(), 1.0)[1])


def _check(layer: str, spec: object, dtype: str, layout: str) -> None:
    result = check_implementation(registry.get(layer, "cupy"), spec, dtype, layout, "cpu", runs=3)
    assert result.ok, f"{spec} {dtype} {layout}: {result.message}"


@pytest.mark.parametrize("direction", ["backward_data", "training"])
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_relu_launchers(emulated: None, dtype: str, direction: str) -> None:
    _check("relu", ReLU(2, 3, 5, 7, direction=direction), dtype, "NCHW")


@pytest.mark.parametrize("direction", ["backward_data", "training"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize(("spec", "dtype"), [
    (Pool2d(2, 3, 9, 8, 3, 1, padding=1, method="max"), "bf16"),
    (Pool2d(2, 8, 7, 6, 2, 2, padding=1, method="avg"), "fp16"),
    (Pool2d(1, 4, 9, 7, 3, 2, method="max"), "fp32"),
], ids=["max-s1-bf16", "avg-pad-fp16", "max-s2-fp32"])
def test_pool2d_launchers(emulated: None, spec: Pool2d, dtype: str, layout: str, direction: str) -> None:
    _check("pool2d", dataclasses.replace(spec, direction=direction), dtype, layout)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("build", [pool2d_backward.build_recompute, pool2d_backward.build_winners_first],
                         ids=["recompute", "winners_first"])
def test_max_pool_backward_paths(emulated: None, build: Callable, layout: str) -> None:
    """Each way of knowing max pooling's winners, whichever the registered build keeps."""
    spec = Pool2d(2, 5, 11, 9, 3, 2, padding=1, method="max", direction="backward_data")
    result = check_implementation(build, spec, "bf16", layout, "cpu", runs=3)
    assert result.ok, f"{build.__name__} {layout}: {result.message}"


@pytest.mark.parametrize("direction", ["backward_data", "backward_weight", "training"])
@pytest.mark.parametrize(("spec", "dtype"), [
    (Linear(7, 33, 65), "fp32"), (Linear(13, 20, 9), "tf32"), (Linear(5, 8, 16, bias=False), "fp16"),
    (Linear(1, 9, 1), "bf16"),
], ids=["odd-fp32", "tf32", "nobias-fp16", "batch1-out1-bf16"])
def test_linear_launchers(emulated: None, spec: Linear, dtype: str, direction: str) -> None:
    _check("linear", dataclasses.replace(spec, direction=direction), dtype, "NCHW")


def test_the_wgmma_gemm_is_built_checked_and_timed_beside_mma_sync(emulated: None) -> None:
    """On a Hopper, in fp16/bf16: the linear build and a pointwise NHWC conv's build each make the
    wgmma GEMM, whose emulated launch passes its float64 check and is timed (a tie keeps mma.sync);
    the conv build also the wgmma implicit GEMM, and says why not in fp32."""
    spec = Linear(37, 24, 40)
    tensors = make_tensors(spec, "fp16", "NCHW", "cpu")
    details = registry.get("linear", "cupy").build(spec, get_dtype("fp16"), "NCHW", tensors,
                                                   make_output(spec, tensors)).details
    assert (details["path"], details["wgmma_ms"], details["mma_sync_ms"]) == ("mma_sync", 1.0, 1.0), details
    conv = Conv2d(2, 16, 24, 5, 7, 1, 1)
    tensors = make_tensors(conv, "bf16", "NHWC", "cpu")
    details = registry.get("conv2d", "cupy").build(conv, get_dtype("bf16"), "NHWC", tensors,
                                                   make_output(conv, tensors, "NHWC")).details
    assert details["wgmma_gemm_ms"] == 1.0 and details["algorithm"] == "implicit_gemm", details
    assert details["wgmma_implicit_gemm_ms"] == 1.0 and details["tma_implicit_gemm_ms"] == 1.0, details
    assert details["nhwc_pointwise_gemm_ms"] == 1.0, details
    conv = Conv2d(2, 8, 6, 9, 7, 3, 3, stride=2, padding=1)
    tensors = make_tensors(conv, "fp32", "NCHW", "cpu")
    details = registry.get("conv2d", "cupy").build(conv, get_dtype("fp32"), "NCHW", tensors,
                                                   make_output(conv, tensors)).details
    assert "fp16 and bf16" in details["wgmma_implicit_gemm"], details
    assert "fp16 and bf16" in details["tma_implicit_gemm"], details


TMA_CONV = {"3x3-odd": Conv2d(2, 24, 16, 9, 11, 3, 3, padding=1),
            "channels-past-a-block-nobias": Conv2d(1, 72, 136, 6, 5, 3, 3, padding=1, bias=False),
            "resnet-3x3/2": Conv2d(2, 64, 24, 8, 10, 3, 3, stride=2, padding=1),
            "resnet-1x1/2": Conv2d(3, 128, 72, 6, 6, 1, 1, stride=2),
            "dilated-1x7": Conv2d(2, 8, 8, 7, 13, 1, 7, padding_h=0, padding_w=6, dilation=2),
            "batch-patch": Conv2d(5, 16, 8, 3, 3, 3, 3, padding=1),
            "odd-out-channels": Conv2d(2, 16, 10, 7, 9, 3, 3, padding=1),
            "im2col-only-odd-sides/2": Conv2d(2, 40, 24, 9, 11, 3, 3, stride=2, padding=1)}


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("name", sorted(TMA_CONV))
def test_tma_convolution_alone(emulated: None, name: str, layout: str) -> None:
    """The TMA convolution's every tile width, launched as conv_tma.cu's signature reads it: the
    geometry struct, the tensor maps' views and boxes, the output's strides, the persistent grid;
    NCHW after the layout copy."""
    result = check_implementation(conv_tma.build, TMA_CONV[name], "bf16", layout, "cpu", runs=2)
    assert result.ok, result.message


def test_tma_convolution_keeps_its_variant_choice(emulated: None, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness's builds keep the variant chosen in the build cache: a later build checks that
    one and times nothing; a kept variant the build no longer offers is chosen anew."""
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    timed: list[object] = []
    monkeypatch.setattr(support, "selection_ms", lambda kernel, device, warmup=3, reps=10: (timed.append(kernel), 1.0)[1])
    spec, dt = TMA_CONV["3x3-odd"], get_dtype("bf16")
    tensors = make_tensors(spec, dt, "NHWC", "cpu")
    out = make_output(spec, tensors)

    def build() -> object:
        timed.clear()
        with remembering_choices():
            return conv_tma.build(spec, dt, "NHWC", tensors, out)

    first = build()
    assert len(timed) == 2 * len(sources.TMA_CONFIGS) and "reused_choice" not in first.details
    again = build()
    assert timed == [] and again.details["reused_choice"] and again.details["variant"] == first.details["variant"]
    for kept in tmp_path.rglob("*.json"):
        kept.write_text(json.dumps({"config": {"name": "tma_conv_gone"}}))
    monkeypatch.setattr(build_cache, "_CHOICES", {})  # a new process reads the cache from disk
    anew = build()
    assert len(timed) == 2 * len(sources.TMA_CONFIGS) and "reused_choice" not in anew.details


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("name", sorted(TMA_CONV))
def test_tma_convolution_im2col_mode_alone(emulated: None, name: str, layout: str) -> None:
    """The im2col mode's first configuration alone (the build above keeps the first of equal
    times, a patch mode's): the im2col map's view and window, runs of pixels, the 2-D output map."""
    def im2col_only(spec: Conv2d, dt: DType, layout: str, tensors: dict, out: torch.Tensor) -> object:
        found, _ = conv_tma.variants(spec, dt, layout, tensors, out)
        return next(kernel for variant, kernel in found.items() if variant.startswith("tma_im2col"))

    result = check_implementation(im2col_only, TMA_CONV[name], "bf16", layout, "cpu", runs=2)
    assert result.ok, result.message


@pytest.mark.parametrize("spec", [Linear(37, 24, 40), Linear(5, 520, 24, bias=False), Linear(1, 1000, 4096),
                                  Linear(130, 64, 203)],
                         ids=["one-tile", "split-nobias", "one-row", "odd-n"])
def test_every_wgmma_gemm_variant(emulated: None, spec: Linear) -> None:
    """Each loader, tile shape and split of the wgmma GEMM, alone: launched as the kernels' .cu
    signatures read them (tensor maps with their boxes, split-K partial sums and their reduction)."""
    dt = get_dtype("bf16")
    tensors = make_tensors(spec, dt, "NCHW", "cpu")
    found, no_tma = linear_wgmma.variants(spec, dt, tensors, make_output(spec, tensors), 0)
    assert no_tma is None
    split = spec.in_features >= 4 * 2 * linear_wgmma.BLOCK_K  # two splits of at least four k tiles
    assert any("split" in name for name in found) == split, sorted(found)
    for name in found:
        def only(spec: Linear, dt: DType, layout: str, tensors: dict, out: torch.Tensor, name: str = name):
            return linear_wgmma.variants(spec, dt, tensors, out, 0)[0][name]

        result = check_implementation(only, spec, "bf16", "NCHW", "cpu", runs=2)
        assert result.ok, f"{name}: {result.message}"


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("spec", [Conv2d(2, 3, 4, 13, 9, 3, 5, padding=2), Conv2d(1, 2, 3, 131, 140, 3, 3, padding=1),
                                  Conv2d(1, 1, 2, 120, 132, 11, 11, bias=False), Conv2d(2, 2, 3, 20, 20, 17, 17)],
                         ids=["one-tile", "tiled-padded", "tiled-k11-nobias", "window-17-transformed"])
def test_fft_conv_launchers(emulated: None, monkeypatch: pytest.MonkeyPatch, spec: Conv2d, layout: str) -> None:
    """The FFT convolution's launches as fft_conv.cu reads them: planes, strides, the overlap-save
    tiles of planes larger than 128 (each tile's origin, the outputs it keeps), and the product."""
    monkeypatch.setattr(cupy_conv2d, "check_workspace", lambda nbytes, device, what: None)  # host memory
    def fft_only(spec: Conv2d, dt: DType, layout: str, tensors: dict, out: torch.Tensor):
        return cupy_conv2d.build_fft(spec, dt, tensors, out)

    result = check_implementation(fft_only, spec, "fp32", layout, "cpu", runs=2)
    assert result.ok, result.message


def test_tma_refusals_name_the_cause() -> None:
    """A tensor the TMA unit cannot copy, or a box it cannot move, is Unsupported with the reason."""
    ok = torch.zeros(64, 72, dtype=torch.float16)
    tensor_map.check_2d(ok, 128, 64)
    cases = [(ok.float(), 128, 64, "fp16 or bf16"), (ok[:, 1:], 128, 64, "16-byte aligned"),
             (torch.zeros(64, 68, dtype=torch.float16), 128, 64, "row stride"), (ok, 512, 64, "1 to 256"),
             (ok, 128, 128, "at most 128 bytes"), (ok.t(), 128, 64, "unit column stride")]
    for t, rows, cols, reason in cases:
        with pytest.raises(Unsupported, match=reason):
            tensor_map.check_2d(t, rows, cols)
    # One row: whatever stride torch reports for it (1 here), the row steps by its length.
    one_row = torch.zeros(1, 200, dtype=torch.bfloat16).as_strided((1, 200), (1, 1))
    tensor_map.check_2d(one_row, 128, 64)
    assert tensor_map._row_bytes(one_row) == 400


@pytest.mark.parametrize(("spec", "dtype", "layout"), [
    (Conv2d(2, 8, 6, 9, 7, 3, 3, stride_h=2, stride_w=1, padding_h=1, padding_w=0, dilation=2, groups=2), "fp16",
     "NCHW"),
    (Conv2d(2, 8, 6, 9, 7, 3, 3, stride_h=2, stride_w=1, padding_h=1, padding_w=0, dilation=2, groups=2), "fp32",
     "NHWC"),
    (Conv2d(2, 16, 8, 6, 5, 3, 3, padding=1, groups=2, bias=False), "bf16", "NCHW"),  # copied to NHWC first
    (Conv2d(1, 4, 6, 5, 9, 1, 7, padding_h=0, padding_w=3), "tf32", "NHWC"),  # an Inception 1x7
    (Conv2d(2, 8, 8, 9, 10, 3, 3, stride=2, padding=1, groups=8), "fp32", "NHWC"),  # depthwise: rows, flat runs
    (Conv2d(2, 8, 8, 9, 10, 5, 5, padding=4, dilation=2, groups=8), "fp16", "NHWC"),  # depthwise, loops
    (Conv2d(2, 4, 8, 7, 6, 3, 3, padding=1, groups=4), "bf16", "NHWC"),  # depthwise, multiplier 2
    (Conv2d(2, 8, 16, 11, 9, 3, 3, stride_h=1, stride_w=2, padding=1, groups=8), "tf32", "NCHW"),
    (Conv2d(1, 6, 6, 40, 37, 4, 2, stride=2, padding=1, groups=6, bias=False), "fp16", "NCHW"),
    (Conv2d(2, 16, 24, 5, 7, 1, 1), "bf16", "NHWC"),  # pointwise: the wgmma GEMM on views too
    (Conv2d(3, 16, 136, 4, 6, 1, 1), "fp16", "NCHW"),  # pointwise NCHW: the per-image GEMM, two row tiles
    (Conv2d(3, 24, 144, 4, 6, 1, 1), "fp16", "NHWC"),  # pointwise NHWC: the small-tile GEMM too
], ids=["grouped-fp16-nchw", "grouped-fp32-nhwc", "grouped-copied-bf16", "1x7-tf32", "dw-3x3-s2-fp32",
        "dw-dilated-fp16", "dw-mult2-bf16", "dw-nchw-tf32", "dw-nchw-tiles-fp16", "pointwise-bf16",
        "pointwise-nchw-fp16", "pointwise-nhwc-fp16"])
def test_conv2d_forward_launchers(emulated: None, spec: Conv2d, dtype: str, layout: str) -> None:
    _check("conv2d", spec, dtype, layout)


# The flat-run depthwise kernels alone (the registered build above keeps the direct kernel on a tie,
# after timing both): strides 1 and 2, a run over several blocks (NHWC) or a row over two segments
# (NCHW, 150 columns at one a thread), planes of a block past the last one and rows that end inside
# a thread's four columns (NCHW), bias or not.
@pytest.mark.parametrize(("spec", "dtype", "layout"), [
    (Conv2d(2, 16, 16, 9, 10, 3, 3, padding=1, groups=16), "bf16", "NHWC"),
    (Conv2d(1, 96, 96, 11, 24, 3, 3, stride=2, padding=1, groups=96, bias=False), "fp16", "NHWC"),
    (Conv2d(2, 8, 8, 7, 9, 3, 3, stride=2, padding_h=0, padding_w=2, groups=8), "fp32", "NHWC"),
    (Conv2d(2, 5, 5, 9, 10, 3, 3, padding=1, groups=5), "bf16", "NCHW"),
    (Conv2d(1, 3, 3, 5, 150, 3, 3, padding_h=2, padding_w=1, groups=3, bias=False), "fp32", "NCHW"),
    (Conv2d(2, 7, 7, 11, 8, 3, 3, stride=2, padding_h=0, padding_w=2, groups=7), "fp16", "NCHW"),
], ids=["s1-bf16", "s2-segments-fp16", "s2-pad-0-2-fp32", "nchw-s1-bf16", "nchw-segments-fp32",
        "nchw-s2-pad-0-2-fp16"])
def test_depthwise_flat_launcher(emulated: None, spec: Conv2d, dtype: str, layout: str) -> None:
    # NHWC takes no columns a thread: the default is passed and ignored.
    for columns in sources.DEPTHWISE_NCHW_FLAT_COLUMNS if layout == "NCHW" else (NCHW_FLAT_COLUMNS,):
        def build(*args: object) -> Built:
            return depthwise.build_flat(*args, columns=columns)

        result = check_implementation(build, spec, dtype, layout, "cpu", runs=2)
        assert result.ok, f"{spec} {dtype} {layout} columns={columns}: {result.message}"


# The NCHW rows kernel alone: groups of whole planes (the last group short), bands of one plane's
# rows (the last band short), unrolled strips at stride 1 and 2 and 5x5, the loops (dilation,
# stride 3, a non-square window), multiplier 2, bias or not.
@pytest.mark.parametrize(("spec", "dtype"), [
    (Conv2d(3, 7, 7, 7, 7, 3, 3, padding=1, groups=7), "bf16"),
    (Conv2d(1, 2, 2, 90, 50, 3, 3, padding=1, groups=2, bias=False), "fp16"),
    (Conv2d(2, 3, 3, 45, 61, 3, 3, stride=2, padding_h=0, padding_w=2, groups=3), "fp32"),
    (Conv2d(2, 5, 5, 13, 11, 5, 5, padding=2, groups=5), "tf32"),
    (Conv2d(2, 4, 4, 20, 20, 3, 3, stride=3, padding=4, dilation=4, groups=4), "bf16"),
    (Conv2d(2, 3, 6, 9, 11, 1, 7, padding_h=0, padding_w=3, groups=3), "fp16"),
    (Conv2d(2, 4, 8, 10, 9, 3, 3, padding=1, groups=4), "fp32"),
], ids=["planes-bf16", "bands-fp16", "bands-s2-fp32", "5x5-tf32", "loops-dilated-s3-bf16", "loops-1x7-mult2-fp16",
        "mult2-fp32"])
def test_depthwise_rows_launcher(emulated: None, spec: Conv2d, dtype: str) -> None:
    result = check_implementation(depthwise.build_rows, spec, dtype, "NCHW", "cpu", runs=2)
    assert result.ok, f"{spec} {dtype}: {result.message}"


@pytest.mark.parametrize("spec,dtype", [
    (Conv2d(64, 24, 24, 14, 14, 3, 3, padding=1, groups=24), "bf16"),
    (Conv2d(2, 3, 3, 45, 61, 3, 3, stride=2, padding_h=0, padding_w=2, groups=3), "fp32"),
], ids=["planes-bf16", "bands-s2-fp32"])
def test_depthwise_rows_deep_launcher(emulated: None, spec: Conv2d, dtype: str) -> None:
    def deep(*args: object) -> object:
        built = depthwise.build_rows(*args, stages=depthwise.DEEP_STAGES)
        assert built.details["stages"] == depthwise.DEEP_STAGES
        return built

    result = check_implementation(deep, spec, dtype, "NCHW", "cpu", runs=2)
    assert result.ok, f"{spec} {dtype}: {result.message}"


def test_depthwise_rows_plans() -> None:
    def plan(spec: Conv2d) -> depthwise_plan.DepthwisePlan:
        return depthwise_plan.rows_plan(spec, "__nv_bfloat16", 132)

    assert (plan(Conv2d(3, 7, 7, 7, 7, 3, 3, padding=1, groups=7)).group, plan(
        Conv2d(1, 2, 2, 90, 50, 3, 3, padding=1, groups=2)).group) == (1, 1)  # few planes: one a chunk
    # 30 planes of 7 x 7 a chunk (16 chunks an SM), strips of 8 rows; two blocks resident an SM.
    mobilenet = plan(Conv2d(64, 960, 960, 7, 7, 3, 3, padding=1, groups=960))
    assert (mobilenet.group, mobilenet.band, mobilenet.vec, mobilenet.chunks, mobilenet.grid[0]) == (30, 8, 8, 2048,
                                                                                                     264)
    # Bands of 72 output rows (512 items of 8 rows x 2 columns) under 74 input rows, two buffers of
    # whole 16-byte granules.
    wide = plan(Conv2d(64, 32, 32, 112, 112, 3, 3, padding=1, groups=32))
    assert (wide.group, wide.band, wide.buffer, wide.shared_bytes) == (1, 72, 74 * 112 + 8, 2 * 2 * (74 * 112 + 8))
    # Stride 2: strips of four rows of 2 columns, 4,096 outputs (36 rows of 112) a chunk, the band
    # then shortened to 24 rows until two buffers of their 49 input rows fit.
    strided = plan(Conv2d(64, 96, 96, 224, 224, 3, 3, stride=2, padding=1, groups=96))
    assert (strided.vec, strided.band) == (4, 24)
    # 7 x 7: one column an item, 4,096 outputs (32 rows of 112) a chunk; 5 x 5 two columns, 72 rows.
    assert [plan(Conv2d(64, 8, 8, 112, 112, k, k, padding=k // 2, groups=8)).band for k in (7, 5)] == [32, 72]
    assert plan(Conv2d(1, 2, 2, 20, 20, 3, 3, dilation=2, padding=2, groups=2)).kernel == 0  # the loops
    with pytest.raises(Unsupported, match="more than 49152 bytes"):
        plan(Conv2d(1, 2, 2, 8, 13000, 1, 1, groups=2))
    # Four buffers: the same chunks of whole planes; bands shortened until four fit (37 input rows).
    deep = depthwise_plan.rows_plan(Conv2d(64, 960, 960, 7, 7, 3, 3, padding=1, groups=960), "__nv_bfloat16", 132,
                                    stages=4)
    assert (deep.group, deep.chunks, deep.stages, deep.shared_bytes) == (30, 2048, 4, 4 * 2 * deep.buffer)
    wide_deep = depthwise_plan.rows_plan(Conv2d(64, 32, 32, 112, 112, 3, 3, padding=1, groups=32), "__nv_bfloat16",
                                         132, stages=4)
    assert (wide_deep.band, wide_deep.buffer) == (48, 50 * 112 + 8)


def test_depthwise_flat_is_timed_beside_the_direct_kernel(emulated: None) -> None:
    def details(spec: Conv2d, layout: str) -> dict:
        tensors = make_tensors(spec, "bf16", layout, "cpu")
        built = registry.get("conv2d", "cupy").build(spec, get_dtype("bf16"), layout, tensors,
                                                     make_output(spec, tensors, layout))
        return built.details

    for layout in ("NHWC", "NCHW"):
        both = details(Conv2d(2, 16, 16, 9, 10, 3, 3, stride=2, padding=1, groups=16), layout)
        assert {"depthwise_ms", "depthwise_flat_ms"} <= set(both), both
        assert ("depthwise_rows_ms" in both) == (layout == "NCHW"), both
    for spec, layout in ((Conv2d(2, 16, 16, 9, 10, 3, 3, stride_h=1, stride_w=2, padding=1, groups=16), "NCHW"),
                         (Conv2d(2, 16, 16, 9, 10, 5, 5, padding=2, groups=16), "NHWC")):
        assert "depthwise_flat" not in str(details(spec, layout))  # not tried, no reason recorded
    assert "depthwise_rows_ms" in details(Conv2d(2, 16, 16, 9, 10, 5, 5, padding=2, groups=16), "NCHW")


# The lowered convolution: its im2col launch and the linear layer's GEMMs (mma.sync, wgmma) behind it.
@pytest.mark.parametrize(("spec", "dtype"), [
    (Conv2d(2, 3, 8, 9, 8, 3, 3, padding=1), "bf16"),
    (Conv2d(1, 3, 16, 13, 14, 7, 7, stride=2, padding=3, bias=False), "fp16"),
    (Conv2d(2, 1, 6, 11, 9, 3, 2, stride_h=2, padding_w=1, dilation=2), "fp32"),
    (Conv2d(1, 3, 8, 23, 23, 11, 11, stride=4, padding=2), "tf32"),
    (Conv2d(1, 1, 8, 3, 3000, 3, 3, padding_w=1), "fp32"),
], ids=["vgg-first-bf16", "resnet-stem-fp16", "grey-dilated-fp32", "alexnet-first-tf32", "row-in-two-segments-fp32"])
def test_lowered_convolution_launchers(emulated: None, spec: Conv2d, dtype: str) -> None:
    result = check_implementation(lowered_conv.build_lowered, spec, dtype, "NHWC", "cpu", runs=2)
    assert result.ok, f"{spec} {dtype}: {result.message}"
    _check("conv2d", spec, dtype, "NHWC")  # the registered build with it among its paths


@pytest.mark.parametrize("dtype", ("fp32", "tf32"))
def test_unfolded_convolution_refuses_before_any_copy(emulated: None, dtype: str) -> None:
    """The unfolded path runs on the TMA convolution (fp16, bf16): other dtypes are refused before
    its im2col copy, whose rows of 4-byte types need not be a multiple of 8 columns."""
    spec = Conv2d(2, 1, 6, 12, 9, 3, 2, stride_h=2, padding_w=1, dilation=2)
    tensors = make_tensors(spec, dtype, "NHWC", "cpu")
    with pytest.raises(Unsupported, match="3 x 1 layer: the TMA convolution runs fp16 and bf16"):
        lowered_conv.build_unfolded(spec, get_dtype(dtype), "NHWC", tensors, make_output(spec, tensors, "NHWC"))


@pytest.mark.parametrize(("spec", "columns", "itemsize", "pixels"), [
    (Conv2d(64, 3, 64, 224, 224, 7, 7, stride=2, padding=3), 160, 2, 112),
    (Conv2d(64, 3, 64, 224, 224, 3, 3, padding=1), 32, 2, 224),
    (Conv2d(128, 3, 64, 224, 224, 11, 11, stride=4, padding=2), 368, 4, 55),
    (Conv2d(1, 1, 8, 9, 4000, 3, 3), 16, 4, 2723),
], ids=["resnet-stem-bf16", "vgg-first-bf16", "alexnet-first-fp32", "wide-row"])
def test_im2col_segments(spec: Conv2d, columns: int, itemsize: int, pixels: int) -> None:
    """First layers stage a whole output row's input a block; a row too wide for the shared-memory
    budget is split into segments that fit it."""
    qb = lowered_conv.segment_pixels(spec, columns, itemsize)
    window = (qb - 1) * spec.stride_w + (spec.kernel_w - 1) * spec.dilation_w + 1
    assert qb == pixels
    assert columns * 4 + spec.kernel_h * window * spec.in_channels * itemsize <= lowered_conv.SHARED_BUDGET


def test_im2col_refuses_a_filter_too_wide_to_stage() -> None:
    spec = Conv2d(1, 3, 8, 300, 300, 31, 31, dilation=4)
    with pytest.raises(Unsupported, match="31 input rows of 121 pixels"):
        lowered_conv.segment_pixels(spec, 2896, 2)


def test_nchw_pointwise_gemm_is_built_checked_and_timed(emulated: None) -> None:
    """A 1x1 NCHW conv's build makes the per-image GEMM, whose emulated launch passes its float64
    check and is timed (a tie keeps the implicit GEMM); in fp32 it says why not."""
    conv = Conv2d(2, 16, 24, 4, 6, 1, 1)
    for dtype, expected in (("bf16", 1.0), ("fp32", None)):
        tensors = make_tensors(conv, dtype, "NCHW", "cpu")
        details = registry.get("conv2d", "cupy").build(conv, get_dtype(dtype), "NCHW", tensors,
                                                       make_output(conv, tensors, "NCHW")).details
        if expected:
            assert details["nchw_pointwise_gemm_ms"] == expected and details["algorithm"] == "implicit_gemm", details
        else:
            assert "fp16 and bf16" in details["nchw_pointwise_gemm"], details


@pytest.mark.parametrize(("spec", "layout", "shapes", "chunk"), [
    (Conv2d(2, 24, 20, 12, 12, 1, 1), "NCHW", ("32x128",), 8),  # pixels spanning two column tiles
    (Conv2d(3, 16, 40, 6, 6, 1, 1), "NCHW", ("64x128", "32x128"), 4),  # pixels a multiple of 4 only
    (Conv2d(1, 8, 200, 4, 4, 1, 1), "NCHW", ("128x128", "64x128", "32x128"), 8),  # row tiles, one ragged
    (Conv2d(3, 24, 144, 7, 5, 1, 1), "NHWC", ("128x128", "64x128", "32x128"), 8),  # 105 pixels by 144 channels
    (Conv2d(2, 32, 20, 3, 3, 1, 1, bias=False), "NHWC", ("32x128",), 4),  # output channels a multiple of 4 only
], ids=str)
def test_pointwise_gemm_alone(emulated: None, spec: Conv2d, layout: str, shapes: tuple[str, ...], chunk: int) -> None:
    """The pointwise GEMM alone, in each block shape worth timing for the layer and the column
    chunk it takes: per image in NCHW, one product in NHWC."""
    result = check_implementation(pointwise_gemm.build, spec, "bf16", layout, "cpu", runs=2)
    assert result.ok, result.message
    tensors = make_tensors(spec, "bf16", layout, "cpu")
    details = pointwise_gemm.build(spec, get_dtype("bf16"), layout, tensors, make_output(spec, tensors, layout)).details
    assert details["column_chunk"] == chunk and details["variant"] in shapes, details
    assert sorted(k[:-3] for k in details if k.endswith("_ms")) == sorted(shapes), details


@pytest.mark.parametrize(("spec", "dtype", "reason"), [
    (Conv2d(1, 12, 8, 4, 4, 1, 1), "fp16", "in_channels must be a multiple of 8"),
    (Conv2d(1, 16, 8, 7, 7, 1, 1), "fp16", "height x width must be a multiple of 4, got 7 x 7 = 49"),
    (Conv2d(1, 16, 8, 4, 4, 1, 1), "fp32", "fp16 and bf16"),
    (Conv2d(1, 16, 8, 4, 4, 3, 3, padding=1), "fp16", "1x1 filter"),
], ids=str)
def test_nchw_pointwise_gemm_refusals_name_the_field(spec: Conv2d, dtype: str, reason: str) -> None:
    assert reason in (pointwise_gemm.refusal(spec, get_dtype(dtype), "NCHW") or "")


def test_nhwc_pointwise_gemm_refusals_name_the_field() -> None:
    assert "out_channels must be a multiple of 4, got 10" in pointwise_gemm.refusal(
        Conv2d(1, 16, 10, 4, 4, 1, 1), get_dtype("bf16"), "NHWC")
    assert "stride 1" in pointwise_gemm.refusal(Conv2d(1, 16, 8, 4, 4, 1, 1, stride=2), get_dtype("bf16"), "NHWC")
