"""FFT convolution in Triton for tf32: every transform a matrix product on the tensor cores.

Seven launches in one timed call (layouts and matrices in fft_plan.py):

1. the input's rows to row spectra, T = x @ rows_forward (x read through its strides);
2. per column frequency v, those to the input's spectrum, X_v = columns_forward @ T_v;
3.-4. the same for the weight, conjugated;
5. per frequency f, the complex product Y_f = X_f W_f^T over the input channels (_complex_kernel);
6. per v, the product's columns back to output rows, Z_v = columns_inverse @ Y_v;
7. the rows back to the output, y = Z @ rows_inverse + bias, cropped, through y's strides.

Steps 1-4, 6 and 7 are one kernel, _strided_gemm_kernel: out[m, n] = sum_k A[m, k] B[k, n], where
each of A, B and out reads its row and column indices through an index map, either linear,
i -> i * s0, or of three levels, i -> (i % d0) * s0 + ((i // d0) % d1) * s1 + (i // (d0 d1)) * s2.
That is how a product walks an NCHW or NHWC tensor, or a spectrum's (frequency, part, channel) layout, without
a copy.  A map whose inner run d0 is a multiple of every tile edge is affine inside a tile; the
kernel then builds the offsets as start + arange (level 0), which lets Triton see contiguous runs
and vectorise.

Intermediates are rounded to tf32 where they are stored (see fft_plan.py on why).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.triton.fft_plan import FftPlan
from kernels.triton.support import bind, grouped_tile, tile_config
from layerbench.builders import Kernel, in_order

# Transforms: one side of a product is a DFT matrix of 2 x 16 to 2 x 128 rows, the other the
# data; tall tiles read the matrix fewer times per byte of data.
_GEMM_CONFIGS = [tile_config(128, 128, 32, 8, 3), tile_config(128, 64, 32, 4, 3),
                 tile_config(64, 128, 32, 4, 3), tile_config(64, 64, 32, 4, 4),
                 tile_config(128, 256, 32, 8, 3), tile_config(256, 128, 32, 8, 3),
                 tile_config(256, 64, 32, 8, 3)]
_COMPLEX_CONFIGS = [tile_config(128, 128, 32, 8, 3), tile_config(128, 64, 32, 4, 3),
                    tile_config(64, 128, 32, 4, 3), tile_config(64, 64, 32, 4, 4),
                    tile_config(128, 128, 16, 8, 3)]
_INTERPRETER_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 4}
# Level-0 (affine) maps must hold for every tile the autotuner may pick.
_LARGEST_TILE = max(max(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in _GEMM_CONFIGS)


@triton.jit
def _round_tf32(x):
    """fp32 rounded to the nearest tf32 value (ties away from zero), so that a later tensor-core
    product, which truncates, reads it exactly."""
    bits = x.to(tl.uint32, bitcast=True)
    return ((bits + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)


@triton.jit
def _offsets(start, BLOCK: tl.constexpr, d0, d1, s0, s1, s2, LEVELS: tl.constexpr):
    """Element offsets of indices start .. start + BLOCK - 1 under a map (module docstring).

    LEVELS 0: the map is affine over the block (its start decomposes, the rest steps by s0).
    """
    if LEVELS == 0:
        base = (start % d0) * s0 + ((start // d0) % d1) * s1 + (start // (d0 * d1)) * s2
        return base + tl.arange(0, BLOCK) * s0
    idx = start + tl.arange(0, BLOCK)
    if LEVELS == 1:
        return idx * s0
    return (idx % d0) * s0 + ((idx // d0) % d1) * s1 + (idx // (d0 * d1)) * s2


@triton.jit
def _strided_gemm_kernel(a_ptr, b_ptr, out_ptr, bias_ptr, M, N, K,
                         a_batch, am_d0, am_d1, am_s0, am_s1, am_s2, ak_d0, ak_d1, ak_s0, ak_s1, ak_s2,
                         b_batch, bk_d0, bk_d1, bk_s0, bk_s1, bk_s2, bn_d0, bn_d1, bn_s0, bn_s1, bn_s2,
                         o_batch, om_d0, om_d1, om_s0, om_s1, om_s2, on_d0, on_d1, on_s0, on_s1, on_s2,
                         bias_period,
                         AM: tl.constexpr, AK: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr,
                         OM: tl.constexpr, ON: tl.constexpr, HAS_BIAS: tl.constexpr,
                         ROUND: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """out[batch, m, n] = sum_k A[batch, m, k] B[batch, k, n] (+ bias[m % bias_period]), tf32.

    AM, AK, BK, BN, OM, ON: the LEVELS of each index map (see _offsets).  Program axis 1 is the
    batch; axis 0 the (m, n) tiles in grouped order (grouped_tile).
    """
    batch = tl.program_id(1)
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    m0 = pid_m * BLOCK_M
    n0 = pid_n * BLOCK_N
    m_ok = m0 + tl.arange(0, BLOCK_M) < M
    n_ok = n0 + tl.arange(0, BLOCK_N) < N
    a_rows = a_ptr + batch * a_batch + _offsets(m0, BLOCK_M, am_d0, am_d1, am_s0, am_s1, am_s2, AM)
    b_cols = b_ptr + batch * b_batch + _offsets(n0, BLOCK_N, bn_d0, bn_d1, bn_s0, bn_s1, bn_s2, BN)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = k0 + tl.arange(0, BLOCK_K) < K
        a_k = _offsets(k0, BLOCK_K, ak_d0, ak_d1, ak_s0, ak_s1, ak_s2, AK)
        b_k = _offsets(k0, BLOCK_K, bk_d0, bk_d1, bk_s0, bk_s1, bk_s2, BK)
        a = tl.load(a_rows[:, None] + a_k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_cols[None, :] + b_k[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision="tf32")

    if HAS_BIAS:
        rows = (m0 + tl.arange(0, BLOCK_M)) % bias_period
        acc += tl.load(bias_ptr + rows, mask=m_ok, other=0.0)[:, None]
    if ROUND:
        acc = _round_tf32(acc)
    o_rows = _offsets(m0, BLOCK_M, om_d0, om_d1, om_s0, om_s1, om_s2, OM)
    o_cols = _offsets(n0, BLOCK_N, on_d0, on_d1, on_s0, on_s1, on_s2, ON)
    tl.store(out_ptr + batch * o_batch + o_rows[:, None] + o_cols[None, :], acc,
             mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _complex_kernel(x_ptr, w_ptr, y_ptr, B, K, C,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    GROUP_M: tl.constexpr):
    """Y[f][ri][b K + k] = sum_c X[f][ri][b C + c] W[f][ri][k C + c], complex, for frequency f =
    program axis 1: four real tf32 products per step."""
    f = tl.program_id(1)
    pid_m, pid_n = grouped_tile(tl.program_id(0), B, K, BLOCK_M, BLOCK_N, GROUP_M)
    bs = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ks = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    b_ok = bs < B
    k_ok = ks < K
    x_real = x_ptr + f * 2 * B * C + bs * C
    w_real = w_ptr + f * 2 * K * C + ks * C
    acc_re = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_im = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_K):
        cs = c0 + tl.arange(0, BLOCK_K)
        c_ok = cs < C
        x_mask = b_ok[:, None] & c_ok[None, :]
        w_mask = c_ok[:, None] & k_ok[None, :]
        xr = tl.load(x_real[:, None] + cs[None, :], mask=x_mask, other=0.0)
        xi = tl.load(x_real[:, None] + B * C + cs[None, :], mask=x_mask, other=0.0)
        wr = tl.load(w_real[None, :] + cs[:, None], mask=w_mask, other=0.0)
        wi = tl.load(w_real[None, :] + K * C + cs[:, None], mask=w_mask, other=0.0)
        acc_re = tl.dot(xr, wr, acc_re, input_precision="tf32")
        acc_re = tl.dot(xi, -wi, acc_re, input_precision="tf32")
        acc_im = tl.dot(xr, wi, acc_im, input_precision="tf32")
        acc_im = tl.dot(xi, wr, acc_im, input_precision="tf32")
    y_real = y_ptr + f * 2 * B * K + bs[:, None] * K + ks[None, :]
    mask = b_ok[:, None] & k_ok[None, :]
    tl.store(y_real, _round_tf32(acc_re), mask=mask)
    tl.store(y_real + B * K, _round_tf32(acc_im), mask=mask)


@dataclass(frozen=True)
class IndexMap:
    """i -> (i % d0) * s0 + ((i // d0) % d1) * s1 + (i // (d0 d1)) * s2, or i * s0 (``levels`` 1)."""
    d0: int = 1
    d1: int = 1
    s0: int = 1
    s1: int = 0
    s2: int = 0
    levels: int = 1

    def args(self) -> tuple[int, int, int, int, int]:
        return self.d0, self.d1, self.s0, self.s1, self.s2

    def kernel_levels(self) -> int:
        """LEVELS for _offsets: 0 (affine in a tile) where no tile can cross a run of d0."""
        return 0 if self.levels > 1 and self.d0 % _LARGEST_TILE == 0 else self.levels


def linear(stride: int) -> IndexMap:
    return IndexMap(s0=stride)


def three_level(d0: int, d1: int, s0: int, s1: int, s2: int) -> IndexMap:
    return IndexMap(d0, d1, s0, s1, s2, levels=3)


@dataclass(frozen=True)
class Operand:
    """A tensor seen as [batch][rows][cols] through two index maps."""
    tensor: torch.Tensor
    rows: IndexMap
    cols: IndexMap
    batch_stride: int = 0


def strided_gemm(a: Operand, b: Operand, out: Operand, m: int, n: int, k: int, batches: int = 1,
                 bias: torch.Tensor | None = None, bias_period: int = 1, round_tf32: bool = True) -> Kernel:
    """A launcher of _strided_gemm_kernel (autotuned now on the GPU)."""
    args = (a.tensor, b.tensor, out.tensor, bias if bias is not None else out.tensor, m, n, k,
            a.batch_stride, *a.rows.args(), *a.cols.args(),
            b.batch_stride, *b.rows.args(), *b.cols.args(),
            out.batch_stride, *out.rows.args(), *out.cols.args(), bias_period)
    meta = {"AM": a.rows.kernel_levels(), "AK": a.cols.kernel_levels(), "BK": b.rows.kernel_levels(),
            "BN": b.cols.kernel_levels(), "OM": out.rows.kernel_levels(), "ON": out.cols.kernel_levels(),
            "HAS_BIAS": bias is not None, "ROUND": round_tf32}

    def grid(config: dict) -> tuple[int, int]:
        return triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"]), batches

    return bind(_strided_gemm_kernel, _GEMM_CONFIGS, grid, args, meta, _INTERPRETER_CONFIG)


def complex_product(xs: torch.Tensor, ws: torch.Tensor, ys: torch.Tensor, batch: int,
                    out_channels: int, in_channels: int, freqs: int) -> Kernel:
    args = (xs, ws, ys, batch, out_channels, in_channels)

    def grid(config: dict) -> tuple[int, int]:
        return triton.cdiv(batch, config["BLOCK_M"]) * triton.cdiv(out_channels, config["BLOCK_N"]), freqs

    return bind(_complex_kernel, _COMPLEX_CONFIGS, grid, args, {}, _INTERPRETER_CONFIG)


def _forward(plan: FftPlan, t: torch.Tensor, rows: torch.Tensor, spectrum: torch.Tensor,
             offset: int, sign: int) -> list[Kernel]:
    """Launchers of steps 1-2 (or 3-4) for a 4-D tensor t [P, C, H, W] (P images or P output
    channels) with any strides, into ``rows`` and ``spectrum``."""
    p, c, h, w = t.shape
    sp, sc, sh, sw = t.stride()
    n, v, pc = plan.n, plan.v, p * c
    device = t.device
    row_matrix = torch.from_numpy(plan.rows_forward(w, offset, sign)).to(device)
    col_matrix = torch.from_numpy(plan.columns_forward(h, offset, sign)).to(device)
    # Rows m = h * PC + p * C + c of t, columns n = 2v + ri: T[n][h][pc] sits at n * H * PC + m.
    to_rows = strided_gemm(
        Operand(t, three_level(c, p, sc, sp, sh), linear(sw)),
        Operand(row_matrix, linear(1), linear(w)),
        Operand(rows, linear(1), linear(h * pc)),
        m=h * pc, n=2 * v, k=w)
    # Per v, rows pc, columns 2u + ri: the spectrum at f = v N + u, v * 2N * PC + (2u + ri) * PC + pc.
    to_spectrum = strided_gemm(
        Operand(rows, linear(1), linear(pc), batch_stride=2 * h * pc),
        Operand(col_matrix, linear(1), linear(2 * h)),
        Operand(spectrum, linear(1), linear(pc), batch_stride=2 * n * pc),
        m=pc, n=2 * n, k=2 * h, batches=v)
    return [to_rows, to_spectrum]


def build(plan: FftPlan, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
          out: torch.Tensor) -> Kernel:
    """The seven launches for fp32 tensors of any strides; the buffers are allocated here."""
    s = plan.spec
    sizes = plan.buffer_sizes()
    buf = {name: torch.empty(size, dtype=torch.float32, device=x.device) for name, size in sizes.items()}
    bk, oh = s.batch * s.out_channels, s.out_height
    n, v = plan.n, plan.v
    device = x.device
    col_inverse = torch.from_numpy(plan.columns_inverse()).to(device)
    row_inverse = torch.from_numpy(plan.rows_inverse()).to(device)
    so_b, so_k, so_h, so_w = out.stride()
    launches = [
        *_forward(plan, x, buf["x_rows"], buf["x_spectrum"], s.padding, -1),
        *_forward(plan, weight, buf["w_rows"], buf["w_spectrum"], 0, +1),
        complex_product(buf["x_spectrum"], buf["w_spectrum"], buf["product"], s.batch,
                        s.out_channels, s.in_channels, plan.freqs),
        # Per v, rows bk, columns ri * OH + oh: Z[v][ri][oh][bk] from the product's 2u + ri (f = v N + u).
        strided_gemm(Operand(buf["product"], linear(1), linear(bk), batch_stride=2 * n * bk),
                     Operand(col_inverse, linear(1), linear(2 * n)),
                     Operand(buf["y_columns"], linear(1), linear(bk), batch_stride=2 * oh * bk),
                     m=bk, n=2 * oh, k=2 * n, batches=v),
        # Rows m = oh * BK + b * K + k of Z, columns 2v + ri; out at (b, k, oh, ow) by its strides.
        strided_gemm(Operand(buf["y_columns"], linear(1), linear(oh * bk)),
                     Operand(row_inverse, linear(1), linear(2 * v)),
                     Operand(out, three_level(s.out_channels, s.batch, so_k, so_b, so_h), linear(so_w)),
                     m=oh * bk, n=s.out_width, k=2 * v, bias=bias, bias_period=s.out_channels,
                     round_tf32=False),
    ]
    return in_order(*launches)
