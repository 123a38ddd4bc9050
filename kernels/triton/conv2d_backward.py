"""The backward passes of 2-D convolution in Triton, as implicit GEMMs with fp32 accumulation.

Data gradient (``backward_data``): dx[n, c, h, w] sums dy[n, k, oh, ow] * W[k, c, r, s] over the
output channels k of c's group and the taps (r, s) with oh = (h + pad_h - r*dil_h) / stride_h a
whole number in [0, P) (the same along w).  GEMM view: M = N*H*W pixels of dx, N = the group's
C/groups input channels, reduction over its K/groups output channels and the taps.  dx's pixels
are split by stride phase (grad_support): each program takes pixels of one phase and walks only
the taps that reach them, so no product is spent on a tap that misses (at stride 2 three in four
would) and no load needs a divisibility test; a phase no tap reaches (1x1 stride 2 at odd rows)
gets zeros.

Weight gradient (``backward_weight``): dW[k, c, r, s] sums dy[n, k, p, q] * x[n, c, p*stride_h -
pad_h + r*dil_h, ...] over n, p, q.  GEMM view: M = the group's output channels, N = its input
channels times the taps, reduction over N*P*Q, long and with few output tiles: it is cut into
slices (split-K) whose fp32 partial tiles go to a workspace, summed slice by slice in a second
kernel (deterministic).  dbias sums dy over n, p, q: partial sums per chunk of rows, summed the
same way.  With a bias, ``out`` is one flat buffer (``layers.passes.split_output``).

Layouts: the GEMMs read dy and x in NHWC and the dgrad weight channels_last, so that channel runs
are contiguous and load as vectors through the async-copy pipeline; NCHW inputs (and a contiguous
weight) are copied so first, inside the timed call, as the forward copies NCHW input.  Gathered
from NCHW, the same GEMMs compile to scalar loads without pipelining and spill registers (Triton
3.9, sm_90).  Results are written in their own layout, dW in its memory order.  NCHW dx is
written from the tiles transposed, pixels along the store; with one stride phase and an image
size of whole 16-byte runs the compiler is told so and stores vectors (support.pixel_run).
Elsewhere it may spread a warp's store over the channels, one element per 32-byte sector
(Triton 3.6 does): there the GPU build also times the GEMM into an NHWC buffer followed by a
layout copy, and keeps the faster (``algorithm`` detail).

Walks of the reduction:

* dgrad channel-blocked: taps, then blocks of BLOCK_K output channels (BLOCK_K fitted to the
  group's channels as in the forward), so A rows are contiguous channel runs of one dy pixel and
  B rows contiguous runs of the weight; otherwise (channel counts no block fits) the flat walk:
  BLOCK_K consecutive (k, tap) indices, gathered.
* wgrad tap-blocked: each output tile lies in one tap (r, s), its columns a block of input
  channels, so the x gather needs one row offset per reduction index; flat otherwise (the first
  layer's 3 channels), columns in (tap, channel) order.

1x1 convolutions (stride 1, no padding, one group): in NHWC the linear layer's backward GEMMs on
views of the tensors; in NCHW the data gradient as one GEMM per image, dx[n] = W^T @ dy[n], and
the weight gradient as the sum over images of dy[n] @ x[n]^T, on the tensors as they are
(pointwise_conv.py); the GPU build times these beside the implicit GEMM, the faster kept.

Depthwise convolutions, whose every group would be a one-column GEMM, run the direct kernels of
depthwise_backward.py instead (recorded as the ``algorithm`` detail).  Groups run on their own
grid axis.  Tiles are autotuned on the GPU per arithmetic mode (the forward's families); on the
GPU the number of wgrad slices is chosen by timing.  Under the interpreter one small tile is used,
the wgrad reduction is split in two where it is long enough and the dbias rows in two chunks, so
the partial paths are checked too; bf16 products are taken in fp32 there (exact for bf16 inputs),
because the interpreter's bf16 tl.dot is wrong.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from layerbench.builders import Built, Kernel, Tensors, check_workspace, faster_of, in_order, selection_ms
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d
from layerbench.layers.passes import split_output
from layerbench.registry import register

from kernels.pointwise_views import nchw_pointwise_refusal, pointwise_refusal
from kernels.triton import depthwise_backward
from kernels.triton.conv2d import channel_block
from kernels.triton.layout import channels_last_copy, layout_copy
from kernels.triton.grad_support import MAX_GRID_YZ, first_tap, row_chunks, sum_slices, tap_count, tap_period
from kernels.triton.pointwise_conv import (build_nchw_pointwise_dgrad, build_nchw_pointwise_wgrad,
                                          build_pointwise_backward)
from kernels.triton.support import (DOT_MODE, DOT_PRECISION, INT32_MAX, bind, check_inputs,
                                    dense_layout, grouped_tile, interpreting, pixel_run, quick_bench,
                                    tile_config)

# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) per arithmetic mode.  dgrad's BLOCK_K is an upper
# bound the channel-blocked walk may lower to fit K/groups; wgrad's BLOCK_N one the tap-blocked
# walk may lower to fit C/groups.  Compiled for sm_90 with Triton 3.9, the blocked walks' tiles
# pipeline their loads without spilling registers; the flat dgrad walk spills in tiles over 64x64
# (its gather keeps 2-D index maps), which the autotuner then passes over; tf32 256x128 spilled
# on the blocked walk too and is left out.
_DGRAD_CONFIGS = {
    "mma16": [tile_config(128, 128, 64, 8, 3), tile_config(128, 64, 64, 4, 4),
              tile_config(64, 128, 64, 4, 4), tile_config(64, 64, 64, 4, 4),
              tile_config(256, 128, 64, 8, 3), tile_config(128, 256, 64, 8, 3)],
    "tf32": [tile_config(128, 128, 32, 8, 3), tile_config(128, 64, 32, 4, 4),
             tile_config(64, 128, 32, 4, 4), tile_config(64, 64, 32, 4, 4)],
    "fma32": [tile_config(64, 64, 32, 4, 2), tile_config(128, 64, 32, 8, 2),
              tile_config(64, 128, 32, 8, 2), tile_config(128, 128, 32, 8, 2)],
}
_WGRAD_CONFIGS = {
    "mma16": [tile_config(128, 128, 64, 8, 3), tile_config(128, 64, 64, 4, 4),
              tile_config(64, 128, 64, 4, 4), tile_config(64, 64, 64, 4, 4),
              tile_config(64, 64, 128, 4, 3), tile_config(128, 128, 128, 8, 2)],
    "tf32": [tile_config(128, 128, 32, 8, 3), tile_config(128, 64, 32, 4, 4),
             tile_config(64, 128, 32, 4, 4), tile_config(64, 64, 32, 4, 4),
             tile_config(64, 64, 64, 4, 3)],
    "fma32": [tile_config(64, 64, 32, 4, 2), tile_config(128, 64, 32, 8, 2),
              tile_config(64, 128, 32, 8, 2), tile_config(32, 64, 32, 4, 2)],
}
_INTERPRETER_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 4}


# wgrad split-K on the GPU: the slice counts tried, slices of at least MIN_SLICE reduction indices
# starting on a multiple of SLICE_QUANTUM (every BLOCK_K divides it), workspace at most this big.
SPLIT_CANDIDATES = (1, 2, 4, 8, 16, 32, 64)
MIN_SLICE = 1024
SLICE_QUANTUM = 256
MAX_WORKSPACE_BYTES = 256 * 2**20
# The dbias reduction's tile (rows x channels) and the rows each of its programs sums at least.
_BIAS_TILE = {"gpu": (64, 64), "interpreter": (16, 16)}
_BIAS_MIN_ROWS = 4096


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b; UPCAST (the interpreter's bf16) takes the products in fp32, exactly."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=PRECISION)


# Only the channel counts are specialised on: their divisibility by 16 lets loads and stores
# vectorise; every other size would only multiply the compiles.
@triton.jit(do_not_specialize=["N", "H", "W", "P", "Q", "R", "S", "stride_h", "stride_w", "pad_h", "pad_w",
                               "dil_h", "dil_w", "period_h", "period_w", "HP", "WP"])
def _dgrad_kernel(dy_ptr, w_ptr, dx_ptr,
                  N, C, H, W, K, P, Q, R, S, CPG, KPG,
                  stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, period_h, period_w, HP, WP,
                  DX_NHWC: tl.constexpr, CHANNEL_BLOCK: tl.constexpr, PIX_RUN: tl.constexpr,
                  PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  GROUP_M: tl.constexpr):
    # dy is NHWC and the weight channels_last: W[k, c, r, s] at k*R*S*CPG + (r*S + s)*CPG + c.
    # Program axis 0: phase-major tiles of (pixels of one phase) x (input channels); axis 1: group.
    # A phase's pixels are h = phase_h + stride_h*i for i < HP = cdiv(H, stride_h) (same along w).
    g = tl.program_id(1)
    MP = N * HP * WP
    tiles = tl.cdiv(MP, BLOCK_M) * tl.cdiv(CPG, BLOCK_N)
    phase = tl.program_id(0) // tiles
    pid_m, pid_n = grouped_tile(tl.program_id(0) % tiles, MP, CPG, BLOCK_M, BLOCK_N, GROUP_M)
    phase_h = phase // stride_w
    phase_w = phase % stride_w
    r0 = first_tap(phase_h, pad_h, dil_h, stride_h, period_h)
    s0 = first_tap(phase_w, pad_w, dil_w, stride_w, period_w)
    n_s = tap_count(s0, period_w, S)
    taps = tap_count(r0, period_h, R) * n_s

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < CPG
    # Lanes past an edge are masked, never read, and left unclamped: tl.where would hide from
    # the compiler that channel runs are contiguous, and with it vector loads and async copies.
    ci = offs_n
    jw = offs_m % WP
    i = (offs_m // WP) % HP
    n = offs_m // (WP * HP)
    h = phase_h + stride_h * i
    w = phase_w + stride_w * jw
    m_ok = (offs_m < MP) & (h < H) & (w < W)
    k_base = g * KPG  # the group's first output channel
    dy_rows = dy_ptr + n * (P * Q * K) + k_base

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if CHANNEL_BLOCK:
        # Steps run over the hitting taps (r, s), then blocks kb of BLOCK_K channels.  The tap and
        # dy's row offset (oh - i, exact: the tap hits this phase) are carried from step to step:
        # scalar divisions every step would cost more than the index math of the tile.
        k_blocks = tl.cdiv(KPG, BLOCK_K)
        off_h = (phase_h + pad_h - r0 * dil_h) // stride_h
        off_w0 = (phase_w + pad_w - s0 * dil_w) // stride_w
        shift_h = period_h * dil_h // stride_h  # oh - i falls by this from one hitting tap to the next
        shift_w = period_w * dil_w // stride_w
        r = r0
        s = s0
        off_w = off_w0
        kb = 0
        for step in range(0, taps * k_blocks):
            ks = kb * BLOCK_K + tl.arange(0, BLOCK_K)
            k_ok = ks < KPG
            oh = i + off_h
            ow = jw + off_w
            pix_ok = m_ok & (oh >= 0) & (oh < P) & (ow >= 0) & (ow < Q)
            a = tl.load((dy_rows + (oh * Q + ow) * K)[:, None] + ks[None, :],
                        mask=pix_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(w_ptr + ((k_base + ks) * (R * S * CPG) + (r * S + s) * CPG)[:, None] + ci[None, :],
                        mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            acc = _dot(a, b, acc, PRECISION, UPCAST)
            kb += 1
            next_tap = kb == k_blocks
            kb = tl.where(next_tap, 0, kb)
            s = tl.where(next_tap, s + period_w, s)
            off_w = tl.where(next_tap, off_w - shift_w, off_w)
            next_row = s >= S
            s = tl.where(next_row, s0, s)
            off_w = tl.where(next_row, off_w0, off_w)
            r = tl.where(next_row, r + period_h, r)
            off_h = tl.where(next_row, off_h - shift_h, off_h)
    else:
        # Reduction index kk = k * taps + tap over the group's output channels and the hitting taps.
        for k0 in range(0, KPG * taps, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            kk_ok = kk < KPG * taps
            k = kk // taps
            tap = kk % taps
            r = r0 + (tap // n_s) * period_h
            s = s0 + (tap % n_s) * period_w
            oh = i[:, None] + ((phase_h + pad_h - r * dil_h) // stride_h)[None, :]
            ow = jw[:, None] + ((phase_w + pad_w - s * dil_w) // stride_w)[None, :]
            ok = (m_ok[:, None] & kk_ok[None, :]) & (oh >= 0) & (oh < P) & (ow >= 0) & (ow < Q)
            a = tl.load(dy_rows[:, None] + (oh * Q + ow) * K + k[None, :], mask=ok, other=0.0)
            w_off = (k_base + k) * (R * S * CPG) + (r * S + s) * CPG
            b = tl.load(w_ptr + w_off[:, None] + ci[None, :], mask=kk_ok[:, None] & n_ok[None, :], other=0.0)
            acc = _dot(a, b, acc, PRECISION, UPCAST)

    c = g * CPG + offs_n
    out = acc.to(dx_ptr.dtype.element_ty)
    if DX_NHWC:
        dx_ptrs = dx_ptr + (((n * H + h) * W + w) * C)[:, None] + c[None, :]
        tl.store(dx_ptrs, out, mask=m_ok[:, None] & n_ok[None, :])
    else:
        pix = n * C * H * W + h * W + w
        planes = c * (H * W)
        pix_ok = m_ok
        if PIX_RUN > 1:  # stride 1 (one phase): see support.pixel_run
            pix = tl.max_contiguous(tl.multiple_of(pix, PIX_RUN), PIX_RUN)
            planes = tl.multiple_of(planes, PIX_RUN)
            # The same lanes as m_ok (MP is a multiple of PIX_RUN, every h and w in range), but
            # provably constant over each run, so that a run is stored as one vector.
            pix_ok = (offs_m // PIX_RUN) * PIX_RUN < MP
        dx_ptrs = dx_ptr + planes[:, None] + pix[None, :]
        tl.store(dx_ptrs, tl.trans(out), mask=n_ok[:, None] & pix_ok[None, :])


@triton.jit(do_not_specialize=["N", "H", "W", "P", "Q", "R", "S", "stride_h", "stride_w", "pad_h", "pad_w",
                               "dil_h", "dil_w", "k_per_split"])
def _wgrad_kernel(x_ptr, dy_ptr, dw_ptr,
                  N, C, H, W, K, P, Q, R, S, CPG, KPG,
                  stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, k_per_split,
                  WEIGHT_RSC: tl.constexpr, TAP_BLOCK: tl.constexpr, PARTIAL: tl.constexpr,
                  PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  GROUP_M: tl.constexpr):
    # x and dy are NHWC.  Program axes: 0 the output tile, 1 the slice of the reduction, 2 the
    # group.  With PARTIAL, dw_ptr is the fp32 workspace (slices, dW in its memory order), else dW.
    split = tl.program_id(1)
    g = tl.program_id(2)
    RS = R * S
    if TAP_BLOCK:
        c_blocks = tl.cdiv(CPG, BLOCK_N)
        pid_m, pid_n = grouped_tile(tl.program_id(0), KPG, RS * c_blocks * BLOCK_N, BLOCK_M, BLOCK_N, GROUP_M)
        tap = pid_n // c_blocks
        ci = (pid_n % c_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = ci < CPG
    else:
        pid_m, pid_n = grouped_tile(tl.program_id(0), KPG, CPG * RS, BLOCK_M, BLOCK_N, GROUP_M)
        col = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (tap, channel), channels fastest
        col_ok = col < CPG * RS
        tap = col // CPG
        ci = col % CPG
    r = tap // S
    s = tap % S

    # As in dgrad, lanes past an edge are masked, not clamped, so channel runs stay contiguous.
    co = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    co_ok = co < KPG
    k = g * KPG + co
    c = g * CPG + ci
    PQ = P * Q
    L = N * PQ
    k_lo = split * k_per_split
    k_hi = tl.minimum(L, k_lo + k_per_split)

    # The reduction index kk is (n, p, q) flattened, dy's NHWC pixel index.  Its digits are
    # divided out once and then carried along by BLOCK_K = (dn, dp, dq) in mixed radix (N, P, Q)
    # each step: divisions by runtime sizes would cost more than the step's tensor-core work.
    kk = k_lo + tl.arange(0, BLOCK_K)
    nb = kk // PQ
    p = (kk % PQ) // Q
    q = kk % Q
    dq = BLOCK_K % Q
    dp = (BLOCK_K // Q) % P
    dn = BLOCK_K // PQ
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        kk_ok = kk < k_hi
        a = tl.load(dy_ptr + (kk * K)[None, :] + k[:, None], mask=co_ok[:, None] & kk_ok[None, :], other=0.0)
        ih0 = p * stride_h - pad_h
        iw0 = q * stride_w - pad_w
        if TAP_BLOCK:
            ih = ih0 + r * dil_h
            iw = iw0 + s * dil_w
            ok = (kk_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))[:, None] & col_ok[None, :]
            b_ptrs = x_ptr + (((nb * H + ih) * W + iw) * C)[:, None] + c[None, :]
        else:
            ih = ih0[:, None] + (r * dil_h)[None, :]
            iw = iw0[:, None] + (s * dil_w)[None, :]
            ok = (kk_ok[:, None] & col_ok[None, :]) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            b_ptrs = x_ptr + ((nb[:, None] * H + ih) * W + iw) * C + c[None, :]
        b = tl.load(b_ptrs, mask=ok, other=0.0)
        acc = _dot(a, b, acc, PRECISION, UPCAST)
        kk += BLOCK_K
        q += dq
        carry = q >= Q
        q = tl.where(carry, q - Q, q)
        p += dp + carry.to(tl.int32)
        carry = p >= P
        p = tl.where(carry, p - P, p)
        nb += dn + carry.to(tl.int32)

    if WEIGHT_RSC:
        offs = (k * (RS * CPG))[:, None] + (tap * CPG + ci)[None, :]
    else:
        offs = (k * (CPG * RS))[:, None] + (ci * RS + tap)[None, :]
    mask = co_ok[:, None] & col_ok[None, :]
    if PARTIAL:
        tl.store(dw_ptr + split * (K * CPG * RS) + offs, acc, mask=mask)
    else:
        tl.store(dw_ptr + offs, acc.to(dw_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bias_grad_kernel(dy_ptr, out_ptr, K, PQ, L, rows_per_chunk,
                      DY_NHWC: tl.constexpr, PARTIAL: tl.constexpr,
                      BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Sums of dy over one chunk of its N*P*Q rows for BLOCK_C channels (program axes: channel
    block, chunk); PARTIAL: fp32 into row ``chunk`` of the workspace, else the sums themselves.

    Tiles are channels x rows, rows last: where no axis is provably contiguous (NCHW rows cross
    images) the compiler lays loads out along the last one, so a warp reads neighbouring pixels;
    NHWC channel runs are provably contiguous and taken as such.
    """
    chunk = tl.program_id(1)
    ks = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    k_ok = ks < K
    lo = chunk * rows_per_chunk
    hi = tl.minimum(L, lo + rows_per_chunk)
    acc = tl.zeros((BLOCK_C, BLOCK_R), dtype=tl.float32)
    for row0 in range(lo, hi, BLOCK_R):
        rows = row0 + tl.arange(0, BLOCK_R)
        if DY_NHWC:
            ptrs = dy_ptr + ks[:, None] + (rows * K)[None, :]
        else:
            ptrs = dy_ptr + (ks * PQ)[:, None] + ((rows // PQ) * (K * PQ) + rows % PQ)[None, :]
        acc += tl.load(ptrs, mask=k_ok[:, None] & (rows < hi)[None, :], other=0.0).to(tl.float32)
    total = tl.sum(acc, axis=1)
    if PARTIAL:
        tl.store(out_ptr + chunk * K + ks, total, mask=k_ok)
    else:
        tl.store(out_ptr + ks, total.to(out_ptr.dtype.element_ty), mask=k_ok)


def _capped(configs: list[triton.Config], key: str, cap: int) -> list[triton.Config]:
    """The configs with ``key`` lowered to at most ``cap``, duplicates dropped."""
    capped = []
    for cfg in configs:
        kwargs = dict(cfg.kwargs, **{key: min(cfg.kwargs[key], cap)})
        capped.append(tile_config(kwargs["BLOCK_M"], kwargs["BLOCK_N"], kwargs["BLOCK_K"], cfg.num_warps,
                                  cfg.num_stages))
    return list({str(c): c for c in capped}.values())


@functools.cache
def _dgrad_tiles(mode: str, max_block_k: int) -> list[triton.Config]:
    return _capped(_DGRAD_CONFIGS[mode], "BLOCK_K", max_block_k)


@functools.cache
def _wgrad_tiles(mode: str, max_block_n: int) -> list[triton.Config]:
    return _capped(_WGRAD_CONFIGS[mode], "BLOCK_N", max_block_n)


def tap_block(c: int, max_block: int) -> int:
    """BLOCK_N for the tap-blocked wgrad walk: the largest block of 128/64/32/16 input channels
    that is at most ``max_block`` and pads C/groups by at most 1/8; 0 if none."""
    for block in (128, 64, 32, 16):
        if block <= max_block and (-c % block) * 8 <= c:
            return block
    return 0


def _layouts(layout: str, **named: torch.Tensor) -> list[bool]:
    """Whether each tensor is dense NHWC (True) or NCHW (False); Unsupported if neither."""
    found = [dense_layout(t, layout) for t in named.values()]
    if any(f is None for f in found):
        raise Unsupported(f"conv2d backward needs {', '.join(named)} dense in NCHW or NHWC (channels_last)")
    return found  # type: ignore[return-value]


def _check(spec: Conv2d, dtype: DType, tensors: Tensors, out: torch.Tensor) -> None:
    """Refuse inputs this pass cannot read (the kernels take bf16 products in fp32 under the
    interpreter, so bf16 runs there too)."""
    check_inputs(_dgrad_kernel, dtype, Conv2d.dtypes, tensors, out)
    if spec.bias != ("bias" in tensors):
        raise Unsupported(f"spec.bias is {spec.bias} but tensors {'have' if 'bias' in tensors else 'lack'} a bias")
    for name, shape in (("x", spec.input_shape), ("weight", spec.weight_shape), ("dy", spec.output_shape)):
        if tuple(tensors[name].shape) != shape:
            raise Unsupported(f"tensor {name} has shape {tuple(tensors[name].shape)}, expected {shape} for {spec}")
    reason = _grid_limit(spec, dtype.name, "")
    if reason:
        raise Unsupported(reason)


def _runs_direct(spec: Conv2d) -> bool:
    """Whether the pass runs depthwise_backward's direct kernels (else the GEMM)."""
    return spec.depthwise and (spec.direction == "backward_data" or depthwise_backward.wgrad_taps_fit(spec))


def _grid_limit(spec: Conv2d, dtype: str, layout: str) -> str | None:
    """The GEMMs run the groups on a grid axis of at most MAX_GRID_YZ programs."""
    if spec.groups > MAX_GRID_YZ and not _runs_direct(spec):
        return (f"the Triton convolution's backward GEMMs run at most {MAX_GRID_YZ} groups (one grid axis); "
                f"this point has {spec.groups}")
    return None


def _common_args(spec: Conv2d) -> tuple[int, ...]:
    """The GEMM kernels' size arguments N, C, H, W, K, P, Q, R, S, CPG, KPG and the per-axis
    stride, padding and dilation."""
    n, c, h, w = spec.input_shape
    return (n, c, h, w, spec.out_channels, spec.out_height, spec.out_width, spec.kernel_h, spec.kernel_w,
            c // spec.groups, spec.out_channels // spec.groups, spec.stride_h, spec.stride_w, spec.padding_h,
            spec.padding_w, spec.dilation_h, spec.dilation_w)


def _upcast(fn: object, dtype: DType) -> bool:
    return interpreting(fn) and dtype.name == "bf16"


@register("conv2d", "triton", backend="triton", devices=("cuda", "cpu"), direction="backward_data",
          supports=_grid_limit,
          description="Triton implicit-GEMM data gradient: dx pixels split by stride phase, only the "
                      "taps that hit walked, fp32 accumulation")
def build_dgrad(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    return dgrad_with_store(spec, dtype, layout, tensors, out, "choose")


def dgrad_with_store(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor,
                     store: str) -> Built:
    """The dgrad GEMM writing NCHW dx ``direct`` from its tiles, or ``via_nhwc``: into an NHWC
    buffer, then a layout copy.  ``choose`` keeps the faster on the GPU where the direct store
    cannot be vectorised (strided convolutions, odd image sizes: see support.pixel_run)."""
    _check(spec, dtype, tensors, out)
    if tuple(out.shape) != spec.input_shape:
        raise Unsupported(f"dx has shape {tuple(out.shape)}, expected {spec.input_shape}")
    w, dy = tensors["weight"], tensors["dy"]
    dy_nhwc, _, dx_nhwc = _layouts(layout, dy=dy, weight=w, dx=out)
    if _runs_direct(spec):
        return Built(depthwise_backward.dgrad(spec, dy, w, out, dy_nhwc, dx_nhwc), {"algorithm": "depthwise"})
    dy, dy_copy = _channels_last(dy)
    w, w_copy = _channels_last(w)
    copies = dy_copy + w_copy
    for copy in copies:
        copy()  # the buffers must hold the data before autotuning runs the GEMM on them
    mode = DOT_MODE[dtype.name]
    cpg, kpg = spec.in_channels // spec.groups, spec.out_channels // spec.groups
    cap = (_INTERPRETER_CONFIG["BLOCK_K"] if interpreting(_dgrad_kernel)
           else max(cfg.kwargs["BLOCK_K"] for cfg in _DGRAD_CONFIGS[mode]))
    block_k = channel_block(kpg, cap)
    periods = (tap_period(spec.stride_h, spec.dilation_h), tap_period(spec.stride_w, spec.dilation_w))
    hp, wp = triton.cdiv(spec.height, spec.stride_h), triton.cdiv(spec.width, spec.stride_w)
    phases = spec.stride_h * spec.stride_w
    run = pixel_run(spec.height * spec.width, out.element_size()) if phases == 1 else 1
    fixed = dict(_INTERPRETER_CONFIG, BLOCK_K=block_k or _INTERPRETER_CONFIG["BLOCK_K"])
    m_phase = spec.batch * hp * wp
    configs = _dgrad_tiles(mode, block_k or cap)

    def grid(config: dict) -> tuple[int, int]:
        tiles = triton.cdiv(m_phase, config["BLOCK_M"]) * triton.cdiv(cpg, config["BLOCK_N"])
        return (phases * tiles, spec.groups)

    def gemm_into(dx: torch.Tensor, nhwc: bool) -> Kernel:
        meta = {"DX_NHWC": nhwc, "CHANNEL_BLOCK": bool(block_k), "PRECISION": DOT_PRECISION[dtype.name],
                "PIX_RUN": 1 if nhwc else run, "UPCAST": _upcast(_dgrad_kernel, dtype)}
        return bind(_dgrad_kernel, configs, grid, (dy, w, dx, *_common_args(spec), *periods, hp, wp), meta, fixed)

    def via_nhwc() -> Kernel:
        if out.is_cuda:
            check_workspace(out.numel() * out.element_size(), out.device, "the NHWC buffer for dx")
        buffer = torch.empty_like(out, memory_format=torch.channels_last)
        return in_order(*copies, gemm_into(buffer, True), layout_copy(buffer, out, to_nhwc=False))

    if store == "via_nhwc" and not dx_nhwc:
        return Built(via_nhwc(), {"algorithm": "implicit_gemm_via_nhwc"})
    direct = in_order(*copies, gemm_into(out, dx_nhwc))
    if pointwise_refusal(spec, layout) is None and not interpreting(_dgrad_kernel):
        return _or_pointwise_gemm(spec, dtype, layout, tensors, out, Built(direct, {"algorithm": "implicit_gemm"}))
    if nchw_pointwise_refusal(spec, layout) is None and not interpreting(_dgrad_kernel):
        # A 1x1 NCHW layer: W^T @ dy[n] per image, on dy as it is (the implicit GEMM copies it first).
        return faster_of("implicit_gemm", direct, "nchw_pointwise_gemm",
                         lambda: build_nchw_pointwise_dgrad(spec, dtype, layout, tensors, out),
                         lambda kernel: selection_ms(kernel, out.device))
    if store == "direct" or dx_nhwc or run > 1 or interpreting(_dgrad_kernel):
        return Built(direct, {"algorithm": "implicit_gemm"})
    return faster_of("implicit_gemm", direct, "implicit_gemm_via_nhwc", via_nhwc,
                     lambda kernel: selection_ms(kernel, out.device))


def _channels_last(t: torch.Tensor) -> tuple[torch.Tensor, list[Kernel]]:
    """Dense 4-D ``t`` where its memory is in channels_last order already, else a channels_last
    buffer and the copy that fills it from ``t`` (inside the timed call, as the forward copies
    NCHW input)."""
    if t.is_contiguous(memory_format=torch.channels_last):
        return t, []
    copy, launch = channels_last_copy(t)
    return copy, [launch]


def _wgrad_launch(spec: Conv2d, dtype: DType, x: torch.Tensor, dy: torch.Tensor, dw: torch.Tensor,
                  weight_rsc: bool, slices: int, quantum: int) -> Kernel:
    """dW from NHWC ``x`` and ``dy`` in ``slices`` slices of the reduction (fewer if it is short):
    the GEMM, then, for more than one, the sum of its fp32 partials into ``dw``."""
    mode = DOT_MODE[dtype.name]
    cpg, kpg = spec.in_channels // spec.groups, spec.out_channels // spec.groups
    reduction = spec.batch * spec.out_height * spec.out_width
    k_per_split = triton.cdiv(triton.cdiv(reduction, slices), quantum) * quantum
    slices = triton.cdiv(reduction, k_per_split)
    partial = slices > 1
    size = dw.numel()
    target = torch.empty((slices, size) if partial else (1,), dtype=torch.float32, device=dw.device)
    interp = interpreting(_wgrad_kernel)
    cap = _INTERPRETER_CONFIG["BLOCK_N"] if interp else max(c.kwargs["BLOCK_N"] for c in _WGRAD_CONFIGS[mode])
    block_n = tap_block(cpg, cap)
    meta = {"WEIGHT_RSC": weight_rsc, "TAP_BLOCK": bool(block_n),
            "PARTIAL": partial, "PRECISION": DOT_PRECISION[dtype.name], "UPCAST": _upcast(_wgrad_kernel, dtype)}
    fixed = dict(_INTERPRETER_CONFIG, BLOCK_N=block_n or _INTERPRETER_CONFIG["BLOCK_N"])
    taps = spec.kernel_h * spec.kernel_w

    def grid(config: dict) -> tuple[int, int, int]:
        if block_n:
            cols = taps * triton.cdiv(cpg, config["BLOCK_N"])
        else:
            cols = triton.cdiv(cpg * taps, config["BLOCK_N"])
        return (triton.cdiv(kpg, config["BLOCK_M"]) * cols, slices, spec.groups)

    gemm = bind(_wgrad_kernel, _wgrad_tiles(mode, block_n or cap), grid,
                (x, dy, target if partial else dw, *_common_args(spec), k_per_split), meta, fixed)
    if not partial:
        return gemm
    return in_order(gemm, sum_slices(target, dw, slices))


def _bias_launch(spec: Conv2d, dy: torch.Tensor, dy_nhwc: bool, dbias: torch.Tensor) -> Kernel:
    """dbias: dy summed over chunks of its N*P*Q rows, then (for several chunks) over the chunks."""
    k = spec.out_channels
    pq = spec.out_height * spec.out_width
    rows = spec.batch * pq
    block_r, block_c = _BIAS_TILE["interpreter" if interpreting(_bias_grad_kernel) else "gpu"]
    c_blocks = triton.cdiv(k, block_c)
    rows_per_chunk, chunks = row_chunks(rows, c_blocks, block_r, _BIAS_MIN_ROWS, k, dy.device, _bias_grad_kernel)
    partial = chunks > 1
    ws = torch.empty((chunks, k) if partial else (1,), dtype=torch.float32, device=dy.device)
    launch = _bias_grad_kernel[(c_blocks, chunks)]

    def kernel() -> None:
        launch(dy, ws if partial else dbias, k, pq, rows, rows_per_chunk,
               DY_NHWC=dy_nhwc, PARTIAL=partial, BLOCK_R=block_r, BLOCK_C=block_c)

    return in_order(kernel, sum_slices(ws, dbias, chunks)) if partial else kernel


def _slice_candidates(spec: Conv2d, interp: bool, block_k: int) -> list[tuple[int, int]]:
    """(slices, quantum) to build: on the GPU every count whose slices are long enough and whose
    workspace fits; under the interpreter two slices where the reduction spans more than two
    BLOCK_Ks (so the partial path is checked), else one."""
    reduction = spec.batch * spec.out_height * spec.out_width
    size = spec.out_channels * spec.weight_shape[1] * spec.kernel_h * spec.kernel_w
    if interp:
        return [(2 if reduction > 2 * block_k else 1, block_k)]
    return [(s, SLICE_QUANTUM) for s in SPLIT_CANDIDATES
            if s == 1 or (reduction >= s * MIN_SLICE and s * size * 4 <= MAX_WORKSPACE_BYTES
                          and s * size <= INT32_MAX and s <= MAX_GRID_YZ)]


@register("conv2d", "triton", backend="triton", devices=("cuda", "cpu"), direction="backward_weight",
          supports=_grid_limit,
          description="Triton implicit-GEMM weight gradient, split-K timed at build with a deterministic "
                      "sum of fp32 partials; dbias as a two-stage sum of dy")
def build_wgrad(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    _check(spec, dtype, tensors, out)
    views = split_output(spec, out, layout)
    dw, dbias = views["dweight"], views.get("dbias")
    if tuple(dw.shape) != spec.weight_shape:
        raise Unsupported(f"dweight has shape {tuple(dw.shape)}, expected {spec.weight_shape}")
    x, dy = tensors["x"], tensors["dy"]
    x_nhwc, dy_nhwc, weight_rsc = _layouts(layout, x=x, dy=dy, dweight=dw)
    bias = [] if dbias is None else [_bias_launch(spec, dy, dy_nhwc, dbias)]
    if _runs_direct(spec):
        return Built(in_order(depthwise_backward.wgrad(spec, x, dy, dw, x_nhwc, dy_nhwc), *bias),
                     {"algorithm": "depthwise"})
    x, x_copy = _channels_last(x)
    dy, dy_copy = _channels_last(dy)
    copies = x_copy + dy_copy
    for copy in copies:
        copy()  # the buffers must hold the data before autotuning runs the GEMM on them
    interp = interpreting(_wgrad_kernel)
    candidates = _slice_candidates(spec, interp, _INTERPRETER_CONFIG["BLOCK_K"])
    details: dict[str, object] = {"algorithm": "implicit_gemm"}
    best, best_ms = None, float("inf")
    for slices, quantum in candidates:
        kernel = _wgrad_launch(spec, dtype, x, dy, dw, weight_rsc, slices, quantum)
        if interp:  # one candidate, no timing
            best = kernel
            details["slices"] = slices
            break
        ms = quick_bench(kernel)
        if ms < best_ms:
            best, best_ms = kernel, ms
            details.update(slices=slices, wgrad_ms=ms)
    assert best is not None
    implicit = Built(in_order(*copies, best, *bias), details)
    if pointwise_refusal(spec, layout) is None and not interp:
        return _or_pointwise_gemm(spec, dtype, layout, tensors, out, implicit)
    if nchw_pointwise_refusal(spec, layout) is None and not interp:
        # A 1x1 NCHW layer: dy[n] @ x[n]^T summed over the images, on x and dy as they are.
        return faster_of("implicit_gemm", implicit, "nchw_pointwise_gemm",
                         lambda: in_order(build_nchw_pointwise_wgrad(spec, dtype, layout, tensors["x"], tensors["dy"],
                                                                     dw), *bias),
                         lambda kernel: selection_ms(kernel, out.device))
    return implicit


def _or_pointwise_gemm(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor,
                       implicit: Built) -> Built:
    """The implicit GEMM or, where it times faster, the linear layer's backward GEMM on views of a 1x1
    NHWC convolution's tensors (pointwise_conv.py); the details say which, and both times."""
    return faster_of("implicit_gemm", implicit, "pointwise_gemm",
                     lambda: build_pointwise_backward(spec, dtype, layout, tensors, out),
                     lambda kernel: selection_ms(kernel, out.device))
