"""The backward passes of a depthwise convolution (groups == in_channels, any channel multiplier)
in Triton, computed directly: as a GEMM each group would be a 1-column product.

A program owns BLOCK_C channels x BLOCK_P pixels and multiplies elementwise in fp32 (FMA units):
each input channel meets only its own output channels, so there is nothing for tensor cores to
share.  Tiles keep the pixels on their last axis: NHWC channel runs are provably contiguous and
the compiler lays loads out along them; in NCHW no axis is provably contiguous (pixel runs break
at rows and images) and it lays them out along the last, so a warp reads neighbouring pixels.
The tile shapes autotuned on the GPU span wide and narrow channel blocks for both.

* dgrad: dx[n, c, h, w] sums dy[n, k, oh, ow] * W[k, 0, r, s] over c's output channels
  k = c*KPG + j and the taps that hit; pixels are split by stride phase as in the GEMM
  (grad_support), so only hitting taps are walked.
* wgrad: dW[k, 0, r, s] sums dy[n, k, p, q] * x[n, k // KPG, ...] over n, p, q.  A program sums
  one chunk of the N*P*Q rows for every tap at once (an accumulator of TAPS x BLOCK_C x BLOCK_P,
  TAPS the taps padded to a power of two): each dy tile is loaded once and the x tiles of the taps
  overlap in cache.  Chunks write fp32 partials summed in order by a second kernel.

The weight (K, 1, R, S) has the same memory order in both layouts: k*R*S + r*S + s.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from layerbench.builders import Kernel, in_order
from layerbench.layers import Conv2d

from kernels.triton.grad_support import (first_tap, row_chunks, sum_slices, tap_count, tap_period)
from kernels.triton.support import bind, next_pow2


def _config(block_p: int, block_c: int, warps: int = 4) -> triton.Config:
    return triton.Config({"BLOCK_P": block_p, "BLOCK_C": block_c}, num_warps=warps)


_DGRAD_CONFIGS = [_config(16, 64), _config(32, 32), _config(64, 16), _config(128, 8), _config(8, 128),
                  _config(32, 64), _config(64, 32), _config(128, 16)]
_INTERPRETER_CONFIG = {"BLOCK_P": 16, "BLOCK_C": 8}
# The wgrad accumulator holds TAPS x BLOCK_C x BLOCK_P fp32 values: at most 8192 over 8 warps
# (32 a thread; with the x tile and its addresses ~180 registers on sm_90: one block an SM), or
# at most 2048 (~60 registers: four blocks an SM).
_WGRAD_ACC = (8192, 2048)
_WGRAD_WARPS = 8
_WGRAD_MIN_ROWS = 1024
_ROW_QUANTUM = 128  # chunks start on a multiple of every BLOCK_P


@triton.jit(do_not_specialize=["N", "H", "W", "P", "Q", "R", "S", "stride_h", "stride_w", "pad_h", "pad_w",
                               "dil_h", "dil_w", "period_h", "period_w", "HP", "WP"])
def _dw_dgrad_kernel(dy_ptr, w_ptr, dx_ptr, N, C, H, W, K, P, Q, R, S, KPG,
                     stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, period_h, period_w, HP, WP,
                     DY_NHWC: tl.constexpr, DX_NHWC: tl.constexpr,
                     BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # Program axis 0: phase-major tiles of one phase's pixels; axis 1: blocks of channels.
    MP = N * HP * WP
    tiles = tl.cdiv(MP, BLOCK_P)
    phase = tl.program_id(0) // tiles
    phase_h = phase // stride_w
    phase_w = phase % stride_w
    r0 = first_tap(phase_h, pad_h, dil_h, stride_h, period_h)
    s0 = first_tap(phase_w, pad_w, dil_w, stride_w, period_w)
    n_s = tap_count(s0, period_w, S)
    taps = tap_count(r0, period_h, R) * n_s

    offs = (tl.program_id(0) % tiles) * BLOCK_P + tl.arange(0, BLOCK_P)
    jw = offs % WP
    i = (offs // WP) % HP
    n = offs // (WP * HP)
    h = phase_h + stride_h * i
    w = phase_w + stride_w * jw
    p_ok = (offs < MP) & (h < H) & (w < W)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C

    acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    for step in range(0, taps * KPG):
        tap = step // KPG
        k = c * KPG + step % KPG
        r = r0 + (tap // n_s) * period_h
        s = s0 + (tap % n_s) * period_w
        oh = i + (phase_h + pad_h - r * dil_h) // stride_h  # exact: the tap hits this phase
        ow = jw + (phase_w + pad_w - s * dil_w) // stride_w
        ok = p_ok & (oh >= 0) & (oh < P) & (ow >= 0) & (ow < Q)
        if DY_NHWC:
            dy_ptrs = dy_ptr + k[:, None] + (((n * P + oh) * Q + ow) * K)[None, :]
        else:
            dy_ptrs = dy_ptr + (k * (P * Q))[:, None] + (n * (K * P * Q) + oh * Q + ow)[None, :]
        g = tl.load(dy_ptrs, mask=c_ok[:, None] & ok[None, :], other=0.0)
        wt = tl.load(w_ptr + k * (R * S) + r * S + s, mask=c_ok, other=0.0)
        acc += g.to(tl.float32) * wt.to(tl.float32)[:, None]

    if DX_NHWC:
        dx_ptrs = dx_ptr + c[:, None] + (((n * H + h) * W + w) * C)[None, :]
    else:
        dx_ptrs = dx_ptr + (c * (H * W))[:, None] + (n * (C * H * W) + h * W + w)[None, :]
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=c_ok[:, None] & p_ok[None, :])


@triton.jit(do_not_specialize=["N", "H", "W", "P", "Q", "R", "S", "stride_h", "stride_w", "pad_h", "pad_w",
                               "dil_h", "dil_w", "rows_per_chunk"])
def _dw_wgrad_kernel(x_ptr, dy_ptr, out_ptr, N, C, H, W, K, P, Q, R, S, KPG,
                     stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, rows_per_chunk,
                     X_NHWC: tl.constexpr, DY_NHWC: tl.constexpr, PARTIAL: tl.constexpr,
                     TAPS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # Program axes: 0 the block of output channels, 1 the chunk of dy's N*P*Q rows.  With PARTIAL,
    # out_ptr is the fp32 workspace (chunks, K*R*S), else dW.
    chunk = tl.program_id(1)
    k = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    k_ok = k < K
    c = k // KPG
    t = tl.arange(0, TAPS)
    t_ok = t < R * S
    dh = (t // S) * dil_h
    dw = (t % S) * dil_w
    PQ = P * Q
    lo = chunk * rows_per_chunk
    hi = tl.minimum(N * PQ, lo + rows_per_chunk)

    acc = tl.zeros((TAPS, BLOCK_C, BLOCK_P), dtype=tl.float32)
    for row0 in range(lo, hi, BLOCK_P):
        rows = row0 + tl.arange(0, BLOCK_P)
        row_ok = rows < hi
        n = rows // PQ
        pq = rows % PQ
        if DY_NHWC:
            dy_ptrs = dy_ptr + k[:, None] + (rows * K)[None, :]
        else:
            dy_ptrs = dy_ptr + (k * PQ)[:, None] + (n * (K * PQ) + pq)[None, :]
        g = tl.load(dy_ptrs, mask=k_ok[:, None] & row_ok[None, :], other=0.0).to(tl.float32)
        ih = ((pq // Q) * stride_h - pad_h)[None, :] + dh[:, None]  # (TAPS, BLOCK_P)
        iw = ((pq % Q) * stride_w - pad_w)[None, :] + dw[:, None]
        ok = t_ok[:, None] & row_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        if X_NHWC:
            x_ptrs = x_ptr + c[None, :, None] + (((n[None, :] * H + ih) * W + iw) * C)[:, None, :]
        else:
            x_ptrs = x_ptr + (c * (H * W))[None, :, None] + ((n * (C * H * W))[None, :] + ih * W + iw)[:, None, :]
        xv = tl.load(x_ptrs, mask=k_ok[None, :, None] & ok[:, None, :], other=0.0)
        acc += xv.to(tl.float32) * g[None, :, :]

    total = tl.sum(acc, axis=2)  # (TAPS, BLOCK_C)
    offs = (k * (R * S))[None, :] + t[:, None]
    mask = t_ok[:, None] & k_ok[None, :]
    if PARTIAL:
        tl.store(out_ptr + chunk * (K * R * S) + offs, total, mask=mask)
    else:
        tl.store(out_ptr + offs, total.to(out_ptr.dtype.element_ty), mask=mask)


def _args(spec: Conv2d) -> tuple[int, ...]:
    n, c, h, w = spec.input_shape
    return (n, c, h, w, spec.out_channels, spec.out_height, spec.out_width, spec.kernel_h, spec.kernel_w,
            spec.out_channels // spec.groups, spec.stride_h, spec.stride_w, spec.padding_h, spec.padding_w,
            spec.dilation_h, spec.dilation_w)


def _wgrad_configs(taps: int) -> list[triton.Config]:
    """Tiles whose accumulator of ``taps`` x BLOCK_C x BLOCK_P stays within each budget of
    _WGRAD_ACC values (BLOCK_P at least 1, at most _ROW_QUANTUM)."""
    tiles = {(max(acc // taps // bc, 1), bc) for acc in _WGRAD_ACC for bc in (128, 64, 32, 16, 8)
             if acc // taps // bc <= _ROW_QUANTUM}
    return [_config(p, c, _WGRAD_WARPS) for p, c in sorted(tiles)]


def dgrad(spec: Conv2d, dy: torch.Tensor, w: torch.Tensor, dx: torch.Tensor, dy_nhwc: bool,
          dx_nhwc: bool) -> Kernel:
    """The launcher of the depthwise data gradient."""
    hp, wp = triton.cdiv(spec.height, spec.stride_h), triton.cdiv(spec.width, spec.stride_w)
    periods = (tap_period(spec.stride_h, spec.dilation_h), tap_period(spec.stride_w, spec.dilation_w))
    phase_pixels = spec.batch * hp * wp

    def grid(config: dict) -> tuple[int, int]:
        return (spec.stride_h * spec.stride_w * triton.cdiv(phase_pixels, config["BLOCK_P"]),
                triton.cdiv(spec.in_channels, config["BLOCK_C"]))

    return bind(_dw_dgrad_kernel, _DGRAD_CONFIGS, grid, (dy, w, dx, *_args(spec), *periods, hp, wp),
                {"DY_NHWC": dy_nhwc, "DX_NHWC": dx_nhwc}, _INTERPRETER_CONFIG)


def wgrad_taps_fit(spec: Conv2d) -> bool:
    """Whether the kernel's taps fit the wgrad accumulator with a tile of at least 8 channels."""
    return next_pow2(spec.kernel_h * spec.kernel_w) * 8 <= max(_WGRAD_ACC)


def wgrad(spec: Conv2d, x: torch.Tensor, dy: torch.Tensor, dw: torch.Tensor, x_nhwc: bool,
          dy_nhwc: bool) -> Kernel:
    """The launcher of the depthwise weight gradient (and the sum of its chunks' partials)."""
    taps = next_pow2(spec.kernel_h * spec.kernel_w)
    rows = spec.batch * spec.out_height * spec.out_width
    k = spec.out_channels
    per_chunk, chunks = row_chunks(rows, triton.cdiv(k, 32), _ROW_QUANTUM, _WGRAD_MIN_ROWS, dw.numel(),
                                   dy.device, _dw_wgrad_kernel)
    partial = chunks > 1
    ws = torch.empty((chunks, dw.numel()) if partial else (1,), dtype=torch.float32, device=dy.device)

    def grid(config: dict) -> tuple[int, int]:
        return (triton.cdiv(k, config["BLOCK_C"]), chunks)

    meta = {"X_NHWC": x_nhwc, "DY_NHWC": dy_nhwc, "PARTIAL": partial, "TAPS": taps}
    launch = bind(_dw_wgrad_kernel, _wgrad_configs(taps), grid,
                  (x, dy, ws if partial else dw, *_args(spec), per_chunk), meta, _INTERPRETER_CONFIG)
    return in_order(launch, sum_slices(ws, dw, chunks)) if partial else launch
