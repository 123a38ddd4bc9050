"""CPU models of the CUDA kernels' index math, transcribed from the .cu files beside this module.

The tests run each model against torch or NumPy in float64, so that the index math of a kernel
(which loads and stores where, which thread owns which element, what each stage computes) is
checked on any machine, without a GPU:

* ReLU's bit trick (``relu_bits``, relu.cu);
* the ldmatrix / mma.sync fragment addressing (``ldmatrix_x4``, ``fragment_element``) and the
  whole implicit GEMM (``model_igemm``: loaders, tiles, split-K, groups, epilogue; igemm.cu);
* the pooling loops (``model_pool_nhwc``, ``model_pool_nchw_band``; pool2d.cu);
* the FFT convolution's transforms (``model_fft_forward``, ``model_fft_inverse``,
  ``model_fft_weight``; fft_conv.cu);
* the backward GEMMs of conv2d (``model_dgrad``, ``model_wgrad``: tables, loaders, tiles, the
  mma.sync fragments by the PTX layouts (``ptx_fragments``), splits and the reduce;
  conv2d_backward.cu).

A model asserts where the kernel would read or write outside its buffers.  NumPy and torch
only: no CuPy, no GPU.  A change to a kernel's index math changes its model here too.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np
import torch

from kernels.cupy import conv_backward_plan, igemm_plan, pool_plan
from kernels.cupy.igemm_plan import BM, BN, ROW_BYTES, Geometry, Plan, smem_at
from layerbench.layers import Conv2d, Pool2d

# ---------------------------------------------------------------- ReLU (relu.cu)

# (sign bit, +inf bit pattern, torch dtype, integer view, bits) per storage type, as in
# layerbench_common.cuh
BITS = {
    "fp32": (0x80000000, 0x7F800000, torch.float32, torch.int32, 32),
    "fp16": (0x8000, 0x7C00, torch.float16, torch.int16, 16),
    "bf16": (0x8000, 0x7F80, torch.bfloat16, torch.int16, 16),
}


def is_nan_bits(u: np.ndarray, sign: int, inf: int) -> np.ndarray:
    """layerbench_common.cuh is_nan on unsigned bit patterns ``u``."""
    return (u & ~sign & (sign | (sign - 1))) > inf


def relu_bits(u: np.ndarray, name: str) -> np.ndarray:
    """relu.cu on unsigned bit patterns ``u`` of dtype ``name``: ((u & SIGN) && !is_nan(u)) ? 0 : u."""
    sign, inf = BITS[name][:2]
    return np.where(((u & sign) != 0) & ~is_nan_bits(u, sign, inf), 0, u)


# ---------------------------------------------------------------- ldmatrix / mma.sync (igemm_mma)


def ldmatrix_x4(lane_addr: np.ndarray) -> np.ndarray:
    """PTX ldmatrix .x4 .b16: register q of lane L holds 4 bytes from row L // 4 of matrix q,
    whose row address comes from lane 8 q + L // 4, at byte 4 (L % 4).  Returns byte addresses
    [lane][q]."""
    lanes = np.arange(32)
    return np.stack([lane_addr[8 * q + lanes // 4] + 4 * (lanes % 4) for q in range(4)], axis=1)


def fragment_element(byte_addr: np.ndarray, es: int, part: int) -> tuple[np.ndarray, np.ndarray]:
    """(tile row, k index) of element ``part`` of a 4-byte register read at ``byte_addr``: the
    inverse of smem_at."""
    row, col = np.divmod(byte_addr + part * es, ROW_BYTES)
    col = col ^ (((row >> 1) & 3) << 4)
    assert np.array_equal(smem_at(row, col), byte_addr + part * es)
    return row, col // es


# ---------------------------------------------------------------- the implicit GEMM (igemm.cu)

def _memory(t: torch.Tensor) -> np.ndarray:
    """The elements of a dense tensor in memory order, as float64."""
    flat = torch.as_strided(t, (t.numel(),), (1,), t.storage_offset())
    return flat.double().numpy()


def _pixel_origin(g: Geometry, m: np.ndarray, x_off: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """igemm.cu pixel_origin: (base offset, ih0, iw0) of output pixel m in the group starting
    ``x_off`` into x; FAR when m >= M."""
    img, r = np.divmod(m, g.out_h * g.out_w)
    oh, ow = np.divmod(r, g.out_w)
    ih0 = oh * g.stride_h - g.padding_h
    iw0 = ow * g.stride_w - g.padding_w
    sn, _, sh, sw = g.x_strides
    base = x_off + img * sn + ih0 * sh + iw0 * sw
    valid = m < g.M
    far = igemm_plan.FAR
    return np.where(valid, base, 0), np.where(valid, ih0, far), np.where(valid, iw0, far)


def _in_image(g: Geometry, ih: np.ndarray, iw: np.ndarray) -> np.ndarray:
    return (ih >= 0) & (ih < g.height) & (iw >= 0) & (iw < g.width)


def _gather(mem: np.ndarray, index: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """mem[index] where ok, else 0 (a zero-filled cp.async); every address read is in bounds."""
    read = index[ok]
    assert np.all((read >= 0) & (read < len(mem))), "a kernel load leaves its tensor"
    return np.where(ok, mem[np.where(ok, index, 0)], 0.0)


def _in_bounds(index: np.ndarray, mem: np.ndarray) -> np.ndarray:
    assert np.all((index >= 0) & (index < len(mem))), "a kernel store leaves its tensor"
    return index


def _fill_stage(p: Plan, xs: np.ndarray, ws_: np.ndarray, m0: int, n0: int, k0: int,
                itemsize: int, threads: int, group: int) -> tuple[np.ndarray, np.ndarray]:
    """One k tile of A and B of group ``group`` in shared memory ([row][k]), as TileLoader
    writes it with ``threads`` threads; NaN where no thread writes (which would then reach the
    output).  The group's weight rows start N rows into the weight (the kernel's moved w)."""
    g, table = p.geometry, p.table.numpy().astype(np.int64)
    kt, vec = p.ktile, 16 // itemsize
    tid = np.arange(threads)
    chunks = igemm_plan.TILE_BYTES // 16
    vrows = threads // chunks  # rows one 16-byte pass covers
    sa = np.full((BM, kt), np.nan)
    sb = np.full((BN, kt), np.nan)
    x_off, w_off = group * g.x_group, group * g.N * g.K
    if p.a_vec:  # BM / vrows rows per thread, chunk tid % chunks, cp.async 16 bytes or zeros
        chunk = tid % chunks
        e = table[k0 + chunk * vec]
        assert k0 + kt + (chunks - 1) * vec < len(table), "the next tile's table read leaves the table"
        for j in range(BM // vrows):
            row = tid // chunks + vrows * j
            base, ih0, iw0 = _pixel_origin(g, m0 + row, x_off)
            ok = _in_image(g, ih0 + e[:, 1], iw0 + e[:, 2])
            for v in range(vec):
                sa[row, chunk * vec + v] = _gather(xs, base + e[:, 0] + v, ok)
    else:  # row tid % BM, k pairs 2 (tid / BM) + 2 lanes j
        row = tid & (BM - 1)
        lanes = threads // BM
        base, ih0, iw0 = _pixel_origin(g, m0 + row, x_off)
        for j in range(kt // 2 // lanes):
            for h in range(2):
                kk = 2 * lanes * j + 2 * (tid // BM) + h
                e = table[k0 + kk]
                ok = _in_image(g, ih0 + e[:, 1], iw0 + e[:, 2])
                sa[row, kk] = _gather(xs, base + e[:, 0], ok)
    if p.b_vec:
        chunk = tid % chunks
        k = k0 + chunk * vec
        for j in range(BN // vrows):
            row = tid // chunks + vrows * j
            n = n0 + row
            ok = (n < g.N) & (k < g.K)
            for v in range(vec):
                sb[row, chunk * vec + v] = _gather(ws_, w_off + n * g.K + k + v, ok)
    else:
        pairs = kt // 2
        per_pass = threads // pairs
        k = k0 + 2 * (tid % pairs)
        for j in range(BN // per_pass):
            row = tid // pairs + per_pass * j
            n = n0 + row
            for h in range(2):
                ok = (n < g.N) & (k + h < g.K)
                sb[row, k - k0 + h] = _gather(ws_, w_off + n * g.K + k + h, ok)
    return sa, sb


def _threads(tensor_cores: bool) -> int:
    return igemm_plan.MMA_THREADS if tensor_cores else igemm_plan.SIMT_THREADS


@functools.lru_cache(maxsize=None)
def epilogue_map(tensor_cores: bool) -> tuple[np.ndarray, np.ndarray]:
    """(tile row, tile column) of every accumulator the epilogue writes, over all threads."""
    rows, cols = [], []
    for tid in range(_threads(tensor_cores)):
        if tensor_cores:  # igemm_mma
            lane, warp = tid & 31, tid >> 5
            wm, wn, g, c = warp >> 1, warp & 1, lane >> 2, lane & 3
            for i in range(4):
                for half in range(2):
                    for j in range(8):
                        for e in range(2):
                            rows.append(wm * 64 + i * 16 + g + half * 8)
                            cols.append(wn * 64 + j * 8 + 2 * c + e)
        else:  # igemm_simt
            tx, ty = tid & 15, tid >> 4
            for i in range(8):
                for j in range(8):
                    rows.append(ty + 16 * i)
                    cols.append(tx + 16 * j)
    return np.array(rows), np.array(cols)



def model_igemm(g: Geometry, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                out: torch.Tensor, itemsize: int, tensor_cores: bool, slots: int) -> Plan:
    """Run igemm.cu's algorithm on the CPU (float64 arithmetic), one GEMM per group; writes
    ``out`` through its strides and returns the plan."""
    p = igemm_plan.make_plan(g, itemsize, x.data_ptr(), weight.data_ptr(), lambda a_vec: slots)
    if p.copy_weight:
        weight = weight.contiguous()
    g = p.geometry
    xs, ws_ = _memory(x), _memory(weight)
    b = bias.double().numpy() if bias is not None else None
    M, N, K = g.M, g.N, g.K  # one group's
    er, ec = epilogue_map(tensor_cores)
    part = np.full((p.splits, M, g.out_channels), np.nan) if p.splits > 1 else None  # ws
    o_flat = np.full(out.untyped_storage().nbytes() // out.element_size(), np.nan)
    on, oc, oh, ow = g.out_strides

    def out_base(m: np.ndarray) -> np.ndarray:
        img, r = np.divmod(m, g.out_h * g.out_w)
        y, x_ = np.divmod(r, g.out_w)
        return img * on + y * oh + x_ * ow

    bx_, by_, bz_ = p.grid
    assert bz_ <= igemm_plan.MAX_GRID_Z
    for bz in range(bz_):
        z, group = divmod(bz, g.groups)  # blockIdx.z = split * groups + group
        kbeg = z * p.k_split
        kend = min(K, kbeg + p.k_split)
        ntiles = -(-(kend - kbeg) // p.ktile)
        for bx in range(bx_):
            for by in range(by_):
                m0, n0 = bx * BM, by * BN
                acc = np.zeros((BM, BN))
                for t in range(max(ntiles, 0)):
                    sa, sb = _fill_stage(p, xs, ws_, m0, n0, kbeg + t * p.ktile, itemsize,
                                         _threads(tensor_cores), group)
                    acc += sa @ sb.T
                m, n = m0 + er, n0 + ec
                keep = (m < M) & (n < N)
                m, n, v = m[keep], group * N + n[keep], acc[er[keep], ec[keep]]
                if part is not None:
                    assert np.isnan(part[z, m, n]).all(), "two blocks write the same partial"
                    part[z, m, n] = v
                else:
                    o_flat[_in_bounds(out_base(m) + n * oc, o_flat)] = v + (b[n] if b is not None else 0.0)
    if part is not None:  # splitk_reduce: sum in split order, bias, store through the strides
        N = g.out_channels  # the reduce runs over every group's channels
        i = np.arange(M * N)
        m, n = (np.divmod(i, N) if oc == 1 else np.divmod(i, M)[::-1])
        s = np.zeros(M * N)
        for z in range(p.splits):
            s += part[z, m, n]
        o_flat[_in_bounds(out_base(m) + n * oc, o_flat)] = s + (b[n] if b is not None else 0.0)
    out.copy_(torch.as_strided(torch.from_numpy(o_flat), out.shape, out.stride()).to(out.dtype))
    return p


# ---------------------------------------------------------------- pooling (pool2d.cu)


def _window_reduce(spec: Pool2d, vals: np.ndarray) -> np.ndarray:
    return vals.max(axis=1) if spec.method == "max" else vals.sum(axis=1) / (spec.kernel * spec.kernel)


def model_pool_nhwc(spec: Pool2d, x: torch.Tensor) -> torch.Tensor:
    """pool2d.cu's NHWC loops (one thread per output pixel and channel, VEC = 1) on the CPU."""
    s = spec
    xs = _memory(x)
    idx = np.arange(s.batch * s.out_height * s.out_width * s.channels)
    t, c = np.divmod(idx, s.channels)
    t, ow = np.divmod(t, s.out_width)
    n, oh = np.divmod(t, s.out_height)
    base = n * s.height * s.width * s.channels + c
    h0, w0 = oh * s.stride - s.padding, ow * s.stride - s.padding
    fill = -np.inf if s.method == "max" else 0.0  # padding: never the max, zero in the sum
    vals = np.full((len(idx), s.kernel * s.kernel), fill)
    for dh in range(s.kernel):
        for dw in range(s.kernel):
            h, w = h0 + dh, w0 + dw
            ok = (h >= 0) & (h < s.height) & (w >= 0) & (w < s.width)
            off = base + (h * s.width + w) * s.channels
            vals[:, dh * s.kernel + dw] = np.where(ok, xs[np.where(ok, off, 0)], fill)
    out = torch.from_numpy(_window_reduce(s, vals))
    return out.view(s.batch, s.out_height, s.out_width, s.channels).permute(0, 3, 1, 2)


def model_pool_nchw_band(spec: Pool2d, x: torch.Tensor, itemsize: int, mis: int, band_rows: int,
                         threads: int) -> torch.Tensor:
    """pool2d.cu's NCHW band kernel on the CPU: per block, the aligned copy of its input range
    into the band (x starting `mis` elements past a 16-byte boundary; elements outside x read as
    NaN, so a window that touched them would show), then every thread's stepped (row, column)
    walk over the band's outputs, windows read from the band.  The launcher uses 256 threads;
    fewer make the small test maps take several steps."""
    s = spec
    ve = 16 // itemsize
    xs = _memory(x)
    # Memory around x: the vectors may reach ve - 1 elements before and after it.
    pad = np.full(ve, np.nan)
    mem, origin = np.concatenate([pad, xs, pad]), ve
    rows = s.batch * s.channels * s.out_height
    out = np.full(rows * s.out_width, np.nan)
    los, his = pool_plan.band_ranges(s, band_rows)
    tid = np.arange(threads)
    step_rows, step_cols = divmod(threads, s.out_width)
    fill = -np.inf if s.method == "max" else 0.0
    for blk, (lo, hi) in enumerate(zip(los.tolist(), his.tolist())):
        r0 = blk * band_rows
        r1 = min(r0 + band_rows, rows)
        plane0, oh0 = divmod(r0, s.out_height)
        base = ((lo + mis) & ~(ve - 1)) - mis
        vectors = -(-(hi - base) // ve)
        assert vectors * ve * itemsize <= pool_plan.BAND_BYTES, "the band overflows shared memory"
        assert -ve < base and base + vectors * ve <= x.numel() + ve, "a vector leaves x's granules"
        band = mem[origin + base: origin + base + vectors * ve]
        count = (r1 - r0) * s.out_width
        ow = tid % s.out_width
        oh, plane = oh0 + tid // s.out_width, np.full(len(tid), plane0)
        plane, oh = plane + oh // s.out_height, oh % s.out_height
        for i in range(0, count, threads):
            live = tid + i < count
            h0, w0 = oh * s.stride - s.padding, ow * s.stride - s.padding
            win = (plane * s.height + h0) * s.width + w0 - base
            vals = np.full((len(tid), s.kernel * s.kernel), fill)
            for a in range(s.kernel):
                for b in range(s.kernel):
                    ok = live & (h0 + a >= 0) & (h0 + a < s.height) & (w0 + b >= 0) & (w0 + b < s.width)
                    at = np.where(ok, win + a * s.width + b, 0)
                    assert np.all((at >= 0) & (at < len(band))), "a tap outside the band"
                    vals[:, a * s.kernel + b] = np.where(ok, band[at], fill)
            res = _window_reduce(s, vals)
            out[r0 * s.out_width + (tid + i)[live]] = res[live]
            ow, oh = ow + step_cols, oh + step_rows
            oh, ow = oh + (ow >= s.out_width), np.where(ow >= s.out_width, ow - s.out_width, ow)
            plane, oh = plane + oh // s.out_height, oh % s.out_height
    return torch.from_numpy(out).view(s.output_shape)



# ---------------------------------------------------------------- FFT convolution (fft_conv.cu)


def _bitrev(v: np.ndarray, log_n: int) -> np.ndarray:
    out = np.zeros_like(v)
    for b in range(log_n):
        out |= ((v >> b) & 1) << (log_n - 1 - b)
    return out


def _twiddles(log_n: int, sign: float) -> np.ndarray:
    n = 1 << log_n
    return np.exp(sign * 2j * np.pi * np.arange(n) / n)


def _fft_registers(v: np.ndarray, log_r: int, log_n: int, tw: np.ndarray) -> np.ndarray:
    """fft_registers along the last axis: loaded in bit-reversed order, radix-2 stages."""
    w = v[..., _bitrev(np.arange(1 << log_r), log_r)].copy()
    for s in range(log_r):
        half = 1 << s
        j = np.arange(1 << (log_r - 1))
        pos = j & (half - 1)
        i0 = ((j - pos) << 1) + pos
        t = w[..., i0 + half] * tw[pos << (log_n - 1 - s)]
        w[..., i0 + half], w[..., i0] = w[..., i0] - t, w[..., i0] + t
    return w


def _log_r1(log_n: int) -> int:
    return min(log_n, 4)


def _at(k: np.ndarray, log_n: int) -> np.ndarray:
    """Fft::at: where X[k] lands, (k % R1) * R2 + k / R1."""
    log_r1 = _log_r1(log_n)
    return (k & ((1 << log_r1) - 1)) * (1 << (log_n - log_r1)) + (k >> log_r1)


def _fft_run(x: np.ndarray, log_n: int, tw: np.ndarray) -> np.ndarray:
    """Fft::run along the last axis: R1-point FFTs over elements R2 apart, twiddles W_N^(n2 k1),
    R2-point FFTs over runs of R2; X[k] left at position at(k)."""
    log_r1 = _log_r1(log_n)
    r1, r2 = 1 << log_r1, 1 << (log_n - log_r1)
    d = x.reshape(x.shape[:-1] + (r1, r2))  # [n1][n2]
    y = _fft_registers(np.swapaxes(d, -1, -2), log_r1, log_n, tw)  # [n2][k1]
    y = np.swapaxes(y * tw[np.arange(r2)[:, None] * np.arange(r1)[None, :]], -1, -2)  # [k1][n2]
    if r2 > 1:
        y = _fft_registers(y, log_n - log_r1, log_n, tw)  # [k1][k2]
    return y.reshape(x.shape)


def model_fft_forward(x: np.ndarray, pad: int, log_n: int, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """fft_forward on one real plane: its half spectrum [N][N/2+1] on the N x N grid, the grid's
    (0, 0) at (origin - pad) of the plane (an overlap-save tile's origin)."""
    n, p = 1 << log_n, (1 << log_n) // 2 + 1
    tw = _twiddles(log_n, -1.0)
    r, c = np.meshgrid(np.arange(n // 2), np.arange(n), indexing="ij")
    h, w = origin[0] + 2 * r - pad, origin[1] + c - pad

    def at(hh: np.ndarray) -> np.ndarray:
        ok = (hh >= 0) & (hh < x.shape[0]) & (w >= 0) & (w < x.shape[1])
        return np.where(ok, x[np.clip(hh, 0, x.shape[0] - 1), np.clip(w, 0, x.shape[1] - 1)], 0.0)

    rows = _fft_run(at(h) + 1j * at(h + 1), log_n, tw)
    v = np.arange(p)
    z, zc = rows[:, _at(v, log_n)], np.conj(rows[:, _at((n - v) & (n - 1), log_n)])
    d = z - zc
    spec = np.zeros((n, p), complex)
    spec[0::2], spec[1::2] = 0.5 * (z + zc), 0.5 * d.imag - 0.5j * d.real
    cols = _fft_run(spec.T.copy(), log_n, tw)
    return cols.T[_at(np.arange(n), log_n)]  # the write-out puts row u back in place


def model_fft_weight(w: np.ndarray, log_n: int) -> np.ndarray:
    """fft_weight on one kh x kw window: its half spectrum [N][N/2+1], the inner sums over the
    window's columns first, then the outer over its rows, with the twiddle table's indices."""
    n, p = 1 << log_n, (1 << log_n) // 2 + 1
    tw = _twiddles(log_n, -1.0)
    kh, kw = w.shape
    g = w @ tw[(np.arange(kw)[:, None] * np.arange(p)[None, :]) & (n - 1)]  # [r][v]
    return tw[(np.arange(n)[:, None] * np.arange(kh)[None, :]) & (n - 1)] @ g  # [u][v]


def model_fft_inverse(spec: np.ndarray, rows: int, cols: int, log_n: int) -> np.ndarray:
    """fft_inverse on one half spectrum: output rows x cols, scaled, before the bias."""
    n = 1 << log_n
    tw = _twiddles(log_n, 1.0)
    s = _fft_run(spec.T.copy(), log_n, tw).T  # row u at at(u)
    pairs = (rows + 1) // 2
    r2 = np.arange(pairs)
    c = np.arange(n)
    mirrored = c > n // 2
    v = np.where(mirrored, n - c, c)
    a, b = s[_at(2 * r2, log_n)][:, v], s[_at(2 * r2 + 1, log_n)][:, v]
    a, b = np.where(mirrored, np.conj(a), a), np.where(mirrored, np.conj(b), b)
    edge = (v == 0) | (v == n // 2)
    a, b = np.where(edge, a.real, a), np.where(edge, b.real, b)
    z = _fft_run((a.real - b.imag) + 1j * (a.imag + b.real), log_n, tw)[:, _at(c, log_n)]
    out = np.stack([z.real, z.imag], axis=1).reshape(2 * pairs, n)
    return out[:rows, :cols] / (n * n)



# ---------------------------------------------------------------- conv2d backward (conv2d_backward.cu)


@functools.lru_cache(maxsize=None)
def ptx_fragments(es: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The PTX ISA's fragment layouts of mma.sync m16n8k16 (16-bit, ``es`` 2) and m16n8k8 (tf32,
    ``es`` 4), element i of each lane: "a" -> (row, k) of the 16-row A, "b" -> (k, column) of the
    8-column B, "c" -> (row, column) of the accumulators; [lane][i] arrays."""
    lane = np.arange(32)[:, None]
    g, t = lane >> 2, lane & 3
    if es == 2:  # a0 a1 (g, 2t + 0/1), a2 a3 (g + 8, ..), a4 a5 (g, 2t + 8 + 0/1), a6 a7 (g + 8, ..)
        i = np.arange(8)[None, :]
        a = (g + 8 * ((i >> 1) & 1), 2 * t + (i & 1) + 8 * (i >> 2))
        i = np.arange(4)[None, :]  # b0 b1 (2t + 0/1, g), b2 b3 (2t + 8 + 0/1, g)
        b = (2 * t + (i & 1) + 8 * (i >> 1), g + 0 * i)
    else:  # a0 (g, t), a1 (g + 8, t), a2 (g, t + 4), a3 (g + 8, t + 4); b0 (t, g), b1 (t + 4, g)
        i = np.arange(4)[None, :]
        a = (g + 8 * (i & 1), t + 4 * (i >> 1))
        i = np.arange(2)[None, :]
        b = (t + 4 * i, g + 0 * i)
    i = np.arange(4)[None, :]  # c0 c1 (g, 2t + 0/1), c2 c3 (g + 8, ..)
    return {"a": a, "b": b, "c": (g + 8 * (i >> 1), 2 * t + (i & 1))}


def backward_acc_positions(mma: bool) -> tuple[np.ndarray, np.ndarray]:
    """conv2d_backward.cu acc_position: (row, column) in the block tile of acc[u][v] of every
    thread, as [thread][u][v] arrays."""
    tid, u, v = np.meshgrid(np.arange(conv_backward_plan.THREADS), np.arange(4), np.arange(4), indexing="ij")
    if mma:
        lane, warp = tid & 31, tid >> 5
        row = (warp >> 2) * 32 + 16 * (u >> 1) + (lane >> 2) + 8 * (v >> 1)
        col = (warp & 3) * 16 + 8 * (u & 1) + 2 * (lane & 3) + (v & 1)
        return row, col
    return (tid >> 4) + 16 * u, (tid & 15) + 16 * v


def _place(dst: np.ndarray, at: tuple[np.ndarray, np.ndarray], values: np.ndarray) -> None:
    """dst[at] = values, where no element of ``at`` was written before or is written twice."""
    flat = np.ravel_multi_index(at, dst.shape)
    assert len(np.unique(flat)) == flat.size and np.isnan(dst[at]).all(), "an element is written twice"
    dst[at] = values


def model_backward_multiply(sa: np.ndarray, sb: np.ndarray, es: int, mma: bool) -> np.ndarray:
    """conv2d_backward.cu multiply() on one staged tile pair (elements [row][k], k < 64 / es):
    the accumulators acc[thread][u][v] it adds.  MMA: each lane's registers are read from the
    words the kernel names, placed where the PTX layout says they belong, multiplied, and
    handed back to the lanes by the PTX accumulator layout."""
    threads = conv_backward_plan.THREADS
    acc = np.zeros((threads, 4, 4))
    if not mma:
        tid = np.arange(threads)
        tx, ty = tid & 15, tid >> 4
        for u in range(4):
            for v in range(4):
                acc[:, u, v] = (sa[ty + 16 * u] * sb[tx + 16 * v]).sum(axis=1)
        return acc
    epw = 4 // es
    frag = ptx_fragments(es)
    lane = np.arange(32)
    g, c = lane >> 2, lane & 3
    a_words = [(0, 0), (8, 0), (0, 4), (8, 4)]  # (row, word) of registers a[0..3] past (r, ks + c)
    b_words = [0, 4]  # word of registers b[j][0..1] past ks + c
    for warp in range(threads // 32):
        row0, col0 = (warp >> 2) * 32 + g, (warp & 3) * 16 + g
        for ks in range(0, conv_backward_plan.KWORDS, 8):
            for i in range(2):
                A = np.full((16, 8 * epw), np.nan)
                for q, (dr, dw) in enumerate(a_words):
                    for p in range(epw):
                        values = sa[row0 + 16 * i + dr, (ks + c + dw) * epw + p]
                        _place(A, (frag["a"][0][:, q * epw + p], frag["a"][1][:, q * epw + p]), values)
                for j in range(2):
                    B = np.full((8 * epw, 8), np.nan)
                    for q, dw in enumerate(b_words):
                        for p in range(epw):
                            values = sb[col0 + 8 * j, (ks + c + dw) * epw + p]
                            _place(B, (frag["b"][0][:, q * epw + p], frag["b"][1][:, q * epw + p]), values)
                    assert not np.isnan(A).any() and not np.isnan(B).any(), "a fragment element is unread"
                    D = A @ B
                    acc[warp * 32 + lane, 2 * i + j, :] += D[frag["c"][0], frag["c"][1]]
    return acc


def _load_slots(itemsize: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each (k offset in the tile, tile row) a thread's loads fill: row tid % 64, words
    tid / 64 + LOAD_STEP e, elements h of each word; [thread] arrays."""
    p = conv_backward_plan
    tid = np.arange(p.THREADS)
    step, epw = p.THREADS // p.BM, 4 // itemsize
    return [((tid // p.BM + step * e) * epw + h, tid % p.BM)
            for e in range(p.KWORDS // step) for h in range(epw)]


def _tile_gemm(itemsize: int, mma: bool, kbeg: int, kend: int,
               gather: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """k_loop: acc of every thread over [kbeg, kend); gather(k, valid) gives the A and B values of
    each thread's row at k (per thread), with valid = k < kend."""
    kt = conv_backward_plan.k_per_tile(itemsize)
    acc = np.zeros((conv_backward_plan.THREADS, 4, 4))
    for k0 in range(kbeg, kend, kt):
        sa = np.full((conv_backward_plan.BM, kt), np.nan)
        sb = np.full((conv_backward_plan.BN, kt), np.nan)
        for col, row in _load_slots(itemsize):
            va, vb = gather(k0 + col, k0 + col < kend)
            _place(sa, (row, col), va)
            _place(sb, (row, col), vb)
        assert not np.isnan(sa).any() and not np.isnan(sb).any(), "a tile element is never loaded"
        acc += model_backward_multiply(sa, sb, itemsize, mma)
    return acc


def _write_dense(t: torch.Tensor, flat: np.ndarray) -> None:
    """Store ``flat`` (the elements in memory order) into dense tensor (or view) ``t``."""
    assert not np.isnan(flat).any(), "an output element was never written"
    torch.as_strided(t, (t.numel(),), (1,), t.storage_offset()).copy_(torch.from_numpy(flat))


def model_dgrad(spec: Conv2d, dy: torch.Tensor, weight: torch.Tensor, dx: torch.Tensor, itemsize: int,
                mma: bool) -> None:
    """conv_dgrad on the CPU (float64 arithmetic): writes ``dx`` through its strides."""
    s, p = spec, conv_backward_plan.plan_dgrad(spec, tuple(weight.stride()))
    table = p.table.numpy().astype(np.int64)
    dys, ws_ = _memory(dy), _memory(weight)
    dyN, dyC, dyH, dyW = dy.stride()
    wO, wI = weight.stride()[:2]
    dxN, dxC, dxH, dxW = dx.stride()
    cpo, hw = s.out_channels // s.groups, s.height * s.width
    out = np.full(dx.numel(), np.nan)
    rows, cols = backward_acc_positions(mma)
    lrow = np.arange(conv_backward_plan.THREADS) % conv_backward_plan.BM
    for bx, by, g in np.ndindex(*p.grid):
        m0, n0 = bx * conv_backward_plan.BM, by * conv_backward_plan.BN
        m, j = m0 + lrow, n0 + lrow
        a_ok, b_ok = m < p.M, j < p.N
        n, r = np.divmod(m, hw)
        h, w = np.divmod(r, s.width)
        hp, wp = h + s.padding_h, w + s.padding_w
        a_base = n * dyN + g * cpo * dyC
        b_base = g * cpo * wO + j * wI

        def gather(k: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            t = table[np.where(valid, k, 0)]
            th, tw = hp - t[:, 1], wp - t[:, 2]
            oh, ow = np.maximum(th, 0) // s.stride_h, np.maximum(tw, 0) // s.stride_w
            ok = (valid & a_ok & (th >= 0) & (tw >= 0) & (oh * s.stride_h == th) & (ow * s.stride_w == tw)
                  & (oh < s.out_height) & (ow < s.out_width))
            va = _gather(dys, a_base + t[:, 0] * dyC + oh * dyH + ow * dyW, ok)
            return va, _gather(ws_, b_base + t[:, 3], valid & b_ok)

        acc = _tile_gemm(itemsize, mma, 0, p.K, gather)
        mm, jj = m0 + rows, n0 + cols
        keep = (mm < p.M) & (jj < p.N)
        n, r = np.divmod(mm[keep], hw)
        h, w = np.divmod(r, s.width)
        at = _in_bounds(n * dxN + (g * p.N + jj[keep]) * dxC + h * dxH + w * dxW, out)
        assert np.isnan(out[at]).all(), "two threads write the same dx element"
        out[at] = acc[keep]
    _write_dense(dx, out)


def model_wgrad(spec: Conv2d, x: torch.Tensor, dy: torch.Tensor, dweight: torch.Tensor,
                dbias: torch.Tensor | None, itemsize: int, mma: bool, slots: int) -> conv_backward_plan.WgradPlan:
    """conv_wgrad then wgrad_reduce on the CPU (float64 arithmetic): writes ``dweight`` (and
    ``dbias``) through their strides; returns the plan."""
    s = spec
    p = conv_backward_plan.plan_wgrad(spec, tuple(dy.stride()), tuple(x.stride()), itemsize, slots)
    table = p.table.numpy().astype(np.int64)
    dys, xs = _memory(dy), _memory(x)
    dyC = dy.stride(1)
    _, xC, xH, xW = x.stride()
    cpi, khw = s.in_channels // s.groups, s.kernel_h * s.kernel_w
    part = np.full((p.splits, s.out_channels, p.columns), np.nan)  # ws
    rows, cols = backward_acc_positions(mma)
    lrow = np.arange(conv_backward_plan.THREADS) % conv_backward_plan.BM
    for bx, by, bz in np.ndindex(*p.grid):
        z, g = divmod(bz, s.groups)
        m0, n0 = bx * conv_backward_plan.BM, by * conv_backward_plan.BN
        i, j = m0 + lrow, n0 + lrow
        a_ok, b_x, b_one = i < p.M, j < p.J, (j == p.J) & (p.columns > p.J)
        a_base = (g * p.M + i) * dyC
        ci, t = np.divmod(j, khw)
        kh, kw = np.divmod(t, s.kernel_w)
        dh, dw = kh * s.dilation_h, kw * s.dilation_w
        b_base = (g * cpi + ci) * xC + dh * xH + dw * xW
        rbeg = z * p.r_split
        rend = min(p.R, rbeg + p.r_split)

        def gather(r: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            t = table[np.where(valid, r, 0)]
            va = _gather(dys, a_base + t[:, 0], valid & a_ok)
            ih, iw = t[:, 2] + dh, t[:, 3] + dw
            ok = valid & b_x & (ih >= 0) & (ih < s.height) & (iw >= 0) & (iw < s.width)
            vb = np.where(valid & b_one, 1.0, _gather(xs, b_base + t[:, 1], ok))
            return va, vb

        acc = _tile_gemm(itemsize, mma, rbeg, rend, gather)
        ii, jj = m0 + rows, n0 + cols
        keep = (ii < p.M) & (jj < p.columns)
        at = (z, g * p.M + ii[keep], jj[keep])
        assert np.isnan(part[at]).all(), "two threads write the same partial"
        part[at] = acc[keep]
    assert not np.isnan(part).any(), "a partial sum is never written"
    # wgrad_reduce: the splits in order, then dweight through its strides or dbias.
    total = np.zeros((s.out_channels, p.columns))
    for z in range(p.splits):
        total += part[z]
    co, j = np.divmod(np.arange(s.out_channels * p.columns), p.columns)
    w_flat = np.full(dweight.numel(), np.nan)
    wO, wI, wH, wW = dweight.stride()
    ci, t = np.divmod(j, khw)
    kh, kw = np.divmod(t, s.kernel_w)
    weight_part = j < p.J
    at = _in_bounds((co * wO + ci * wI + kh * wH + kw * wW)[weight_part], w_flat)
    assert len(np.unique(at)) == len(at) == dweight.numel(), "dweight elements are not each written once"
    w_flat[at] = total[co[weight_part], j[weight_part]]
    _write_dense(dweight, w_flat)
    assert (dbias is None) == (p.columns == p.J)
    if dbias is not None:
        _write_dense(dbias, total[:, p.J].copy())
    return p
