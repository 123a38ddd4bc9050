"""The plans of conv2d_backward.cu's two GEMMs, worked out on the CPU before any launch.

Both passes are implicit GEMMs C[i][j] = sum_k A[i][k] * B[j][k], one per group:

* dgrad: i = input pixel (n, h, w), j = input channel of the group, k = (output channel of the
  group, kh, kw); A is dy gathered where the window tap lands on an output pixel, B the weight.
* wgrad: i = output channel of the group, j = (input channel of the group, kh, kw), plus one
  column of ones when there is a bias (its C column is dbias); k = output pixel (n, oh, ow),
  split over blocks; A is dy, B is x gathered under the window.

A table per pass turns k into offsets without divisions in the kernel: dgrad's ``dgrad_table``
(K rows), wgrad's ``wgrad_table`` (one row per output pixel).  Needs neither CuPy nor a GPU, so
that tests can check the index math on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.cupy.igemm_plan import choose_split
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d

# Must match conv2d_backward.cu.
BM = 64  # block tile rows (i)
BN = 64  # block tile columns (j)
THREADS = 256
KWORDS = 16  # 32-bit words of k per tile: 16 fp32 or 32 16-bit values
MAX_GRID_Z = 65535
INT32_MAX = 2**31 - 1


def k_per_tile(itemsize: int) -> int:
    return KWORDS * 4 // itemsize


def _fits_int32(t: torch.Tensor, what: str) -> torch.Tensor:
    if t.numel() and int(t.abs().max()) > INT32_MAX:
        raise Unsupported(f"conv2d backward: {what} exceed int32")
    return t.to(torch.int32)


def dgrad_table(spec: Conv2d, w_strides: tuple[int, ...]) -> torch.Tensor:
    """int32 [K][4]: {co, kh * dilation_h, kw * dilation_w, weight offset of (co, 0, kh, kw)} for
    k = (co, kh, kw), co within the group."""
    cpo = spec.out_channels // spec.groups
    co = torch.arange(cpo, dtype=torch.int64).view(-1, 1, 1)
    kh = torch.arange(spec.kernel_h, dtype=torch.int64).view(1, -1, 1)
    kw = torch.arange(spec.kernel_w, dtype=torch.int64).view(1, 1, -1)
    so, _, sh, sw = w_strides
    shape = (cpo, spec.kernel_h, spec.kernel_w)
    table = torch.stack([co.expand(shape), (kh * spec.dilation_h).expand(shape),
                         (kw * spec.dilation_w).expand(shape), co * so + kh * sh + kw * sw], dim=-1)
    return _fits_int32(table.reshape(-1, 4), "weight offsets")


def wgrad_table(spec: Conv2d, dy_strides: tuple[int, ...], x_strides: tuple[int, ...]) -> torch.Tensor:
    """int32 [R][4] for output pixel r = (n, oh, ow): {dy offset of (n, 0, oh, ow), x offset of
    (n, 0, ih0, iw0), ih0, iw0}, where (ih0, iw0) = (oh * stride_h - padding_h, ...) is where the
    window starts (possibly outside the image: the offset is then only ever used past a check)."""
    n = torch.arange(spec.batch, dtype=torch.int64).view(-1, 1, 1)
    oh = torch.arange(spec.out_height, dtype=torch.int64).view(1, -1, 1)
    ow = torch.arange(spec.out_width, dtype=torch.int64).view(1, 1, -1)
    ih0, iw0 = oh * spec.stride_h - spec.padding_h, ow * spec.stride_w - spec.padding_w
    dn, _, dh, dw = dy_strides
    xn, _, xh, xw = x_strides
    shape = (spec.batch, spec.out_height, spec.out_width)
    table = torch.stack([(n * dn + oh * dh + ow * dw).expand(shape), (n * xn + ih0 * xh + iw0 * xw).expand(shape),
                         ih0.expand(shape), iw0.expand(shape)], dim=-1)
    return _fits_int32(table.reshape(-1, 4), "input offsets")


@dataclass(frozen=True)
class DgradPlan:
    table: torch.Tensor  # dgrad_table, on the CPU
    M: int  # input pixels
    N: int  # input channels per group
    K: int  # (output channel per group, kh, kw)
    grid: tuple[int, int, int]  # (M tiles, N tiles, groups)


def plan_dgrad(spec: Conv2d, w_strides: tuple[int, ...]) -> DgradPlan:
    if spec.groups > MAX_GRID_Z:
        raise Unsupported(f"conv2d backward runs at most {MAX_GRID_Z} groups (one grid layer each)")
    M = spec.batch * spec.height * spec.width
    N = spec.in_channels // spec.groups
    K = spec.out_channels // spec.groups * spec.kernel_h * spec.kernel_w
    return DgradPlan(dgrad_table(spec, w_strides), M, N, K, (-(-M // BM), -(-N // BN), spec.groups))


@dataclass(frozen=True)
class WgradPlan:
    table: torch.Tensor  # wgrad_table, on the CPU
    M: int  # output channels per group
    J: int  # weight elements per output channel: (input channel per group, kh, kw)
    columns: int  # J, plus the bias column
    R: int  # output pixels: the reduction
    groups: int
    splits: int
    r_split: int  # output pixels per split, a multiple of the k tile
    grid: tuple[int, int, int]  # (M tiles, column tiles, splits * groups): z = split * groups + group

    @property
    def workspace_floats(self) -> int:
        """ws[split][output channel][column], fp32 partial sums."""
        return self.splits * self.groups * self.M * self.columns


def plan_wgrad(spec: Conv2d, dy_strides: tuple[int, ...], x_strides: tuple[int, ...], itemsize: int,
               slots: int) -> WgradPlan:
    """Split the reduction over output pixels only while the output tiles leave some of the
    ``slots`` (blocks resident on the whole GPU at once) idle (as the forward's split-K)."""
    if spec.groups > MAX_GRID_Z:
        raise Unsupported(f"conv2d backward runs at most {MAX_GRID_Z} groups (one grid layer each)")
    M = spec.out_channels // spec.groups
    J = spec.in_channels // spec.groups * spec.kernel_h * spec.kernel_w
    columns = J + int(spec.bias)
    R = spec.batch * spec.out_height * spec.out_width
    kt = k_per_tile(itemsize)
    tiles = -(-M // BM) * -(-columns // BN) * spec.groups
    splits, per = choose_split(tiles, -(-R // kt), min(slots, tiles * (MAX_GRID_Z // spec.groups)))
    return WgradPlan(wgrad_table(spec, dy_strides, x_strides), M, J, columns, R, spec.groups, splits, per * kt,
                     (-(-M // BM), -(-columns // BN), splits * spec.groups))
