"""The plan of an implicit GEMM (igemm.cu), worked out on the CPU before any launch.

out[m][n] = sum_k A[m][k] * W[n][k] + bias[n], with m an output pixel, n an output channel and
k a weight element in the weight's own memory order; a grouped convolution is one such GEMM per
group, over the group's channels.  Planned once per layer: the k table (input offset, kh *
dilation_h, kw * dilation_w of every k), whether A can move in 16-byte chunks, and the split of
K over several blocks when there are too few output tiles to fill the GPU.

Needs neither CuPy nor a GPU, so that tests can check the index math on any machine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from layerbench.errors import Unsupported

# Must match igemm.cu.
BM = 128
BN = 128
SIMT_THREADS = 256  # igemm_simt's block
MMA_THREADS = 128  # igemm_mma's block: 4 warps of 64 x 64
TILE_BYTES = 64
ROW_BYTES = 64  # a shared-memory row: TILE_BYTES of data, chunks swizzled (smem_at)
STAGES = 4
SHARED_BYTES = STAGES * (BM + BN) * ROW_BYTES  # dynamic shared memory of a block
FAR = -(1 << 29)
MAX_GRID_Z = 65535  # blockIdx.z holds split * groups + group
TABLE_MULTIPLE = 32  # the largest k tile (16-bit data): loads never index past the table

MIN_KTILES_PER_SPLIT = 4  # a split shorter than this costs more in partial sums than it gains


@dataclass(frozen=True)
class Geometry:
    """The convolution behind the GEMM (a linear layer is a 1x1 convolution of a 1x1 image).

    Strides are in elements, in logical (N, C, H, W) order; the weight's in (O, C / groups, KH, KW).
    ``channels`` and ``out_channels`` count all groups.
    """

    batch: int
    channels: int
    height: int
    width: int
    out_channels: int
    out_h: int
    out_w: int
    kernel_h: int
    kernel_w: int
    x_strides: tuple[int, int, int, int]
    w_strides: tuple[int, int, int, int]
    out_strides: tuple[int, int, int, int]
    stride_h: int = 1
    stride_w: int = 1
    padding_h: int = 0
    padding_w: int = 0
    dilation_h: int = 1
    dilation_w: int = 1
    groups: int = 1

    @property
    def group_channels(self) -> int:
        """Input channels of one group: the channels of a k."""
        return self.channels // self.groups

    @property
    def N(self) -> int:
        """Output channels of one group: the GEMM's n."""
        return self.out_channels // self.groups

    @property
    def M(self) -> int:
        return self.batch * self.out_h * self.out_w

    @property
    def K(self) -> int:
        return self.group_channels * self.kernel_h * self.kernel_w

    @property
    def x_group(self) -> int:
        """Elements between the first input channels of two neighbouring groups."""
        return self.group_channels * self.x_strides[1]


def _window_indices(g: Geometry) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    c = torch.arange(g.group_channels, dtype=torch.int64).view(-1, 1, 1)
    kh = torch.arange(g.kernel_h, dtype=torch.int64).view(1, -1, 1)
    kw = torch.arange(g.kernel_w, dtype=torch.int64).view(1, 1, -1)
    return c, kh, kw


def weight_positions(g: Geometry) -> torch.Tensor | None:
    """Offset of each (c, kh, kw) inside a weight row, flattened; None unless the weight is
    [O][K] with every row a dense permutation of its K elements (OIHW, OHWI, ...)."""
    c, kh, kw = _window_indices(g)
    so, sc, sh, sw = g.w_strides
    pos = (c * sc + kh * sh + kw * sw).flatten()
    if (g.out_channels > 1 and so != g.K) or not torch.equal(torch.sort(pos).values, torch.arange(g.K)):
        return None
    return pos


def smem_at(row: int | np.ndarray, byte: int | np.ndarray) -> int | np.ndarray:
    """igemm.cu smem_at: where byte ``byte`` (< 64) of tile row ``row`` sits in a stage's operand.

    The kernel spells the same map as chunk start ^ swizzle + byte in chunk."""
    return row * ROW_BYTES + (byte ^ (((row >> 1) & 3) << 4))


def k_table(g: Geometry, pos: torch.Tensor) -> torch.Tensor:
    """int32 [K rounded up to 32, plus 32][4]: {input offset, kh * dilation_h, kw * dilation_w, 0}
    of each k (c within the group); padding rows have kh = FAR so that every load from them is
    out of the image (zero).  The spare 32 rows serve the loader's read one tile ahead of the
    last tile."""
    c, kh, kw = _window_indices(g)
    kh, kw = kh * g.dilation_h, kw * g.dilation_w
    sn, sc, sh, sw = g.x_strides
    delta = (c * sc + kh * sh + kw * sw).flatten()
    if delta.numel() and int(delta.abs().max()) >= 2**31:
        raise Unsupported("conv2d window offsets exceed int32")
    rows = -(-g.K // TABLE_MULTIPLE) * TABLE_MULTIPLE + TABLE_MULTIPLE
    table = torch.zeros(rows, 4, dtype=torch.int64)
    table[:, 1] = FAR
    table[pos, 0] = delta
    table[pos, 1] = kh.expand(g.group_channels, -1, g.kernel_w).flatten()
    table[pos, 2] = kw.expand(g.group_channels, g.kernel_h, -1).flatten()
    return table.to(torch.int32)


def a_vectorizable(g: Geometry, table: torch.Tensor, x_ptr: int, vec: int) -> bool:
    """Can A move in 16-byte chunks: every aligned run of ``vec`` k values is ``vec``
    consecutive input elements of one (kh, kw), at 16-byte aligned addresses (in every group)?"""
    sn, _, sh, sw = g.x_strides
    if g.K % vec or x_ptr % 16 or any(s % vec for s in (sn, sh, sw, g.x_group)):
        return False
    t = table[: g.K].view(g.K // vec, vec, 4).to(torch.int64)
    steps = t[:, :, 0] - t[:, :1, 0]
    return bool(torch.equal(steps, torch.arange(vec).expand_as(steps))
                and torch.equal(t[:, :, 1:3], t[:, :1, 1:3].expand_as(t[:, :, 1:3]))
                and (t[:, 0, 0] % vec == 0).all())


def choose_split(tiles: int, ktiles: int, slots: int) -> tuple[int, int]:
    """(splits, k tiles per split): split K only when the output tiles leave resident block
    slots idle, into at most as many parts as fit in one wave, each >= MIN_KTILES_PER_SPLIT."""
    splits = max(1, min(slots // tiles, ktiles // MIN_KTILES_PER_SPLIT))
    per = -(-ktiles // splits)
    return -(-ktiles // per), per


@dataclass(frozen=True)
class Plan:
    geometry: Geometry  # with the strides of the weight the kernel reads
    copy_weight: bool  # the weight must first be copied into OIHW order (setup time only)
    table: torch.Tensor  # k_table, on the CPU
    a_vec: bool
    b_vec: bool
    ktile: int  # k values per tile: 64 bytes of them
    m_tiles: int
    n_tiles: int  # of one group
    splits: int
    k_split: int  # k values per split, a multiple of ktile

    @property
    def grid(self) -> tuple[int, int, int]:
        """(M tiles, N tiles, splits * groups): blockIdx.z = split * groups + group."""
        return self.m_tiles, self.n_tiles, self.splits * self.geometry.groups


def make_plan(g: Geometry, itemsize: int, x_ptr: int, w_ptr: int,
              slots: Callable[[bool], int]) -> Plan:
    """Plan the GEMM for data of ``itemsize`` bytes at addresses ``x_ptr`` and ``w_ptr`` (a
    copied weight is freshly allocated, hence aligned); ``slots(a_vec)`` is the number of
    blocks of that kernel resident on the whole GPU at once."""
    if g.groups > MAX_GRID_Z:
        raise Unsupported(f"the implicit GEMM runs at most {MAX_GRID_Z} groups (one grid layer each), "
                          f"got {g.groups}")
    pos = weight_positions(g)
    copy_weight = pos is None
    if copy_weight:
        c, kh, kw = g.group_channels, g.kernel_h, g.kernel_w
        g = dataclasses.replace(g, w_strides=(c * kh * kw, kh * kw, kw, 1))
        pos = weight_positions(g)
        assert pos is not None
    table = k_table(g, pos)
    vec = 16 // itemsize
    a_vec = a_vectorizable(g, table, x_ptr, vec)
    b_vec = g.K % vec == 0 and (copy_weight or w_ptr % 16 == 0)
    ktile = TILE_BYTES // itemsize
    m_tiles, n_tiles = -(-g.M // BM), -(-g.N // BN)
    tiles = m_tiles * n_tiles * g.groups
    # At most MAX_GRID_Z // groups splits, so that splits * groups fits blockIdx.z.
    splits, per = choose_split(tiles, -(-g.K // ktile), min(slots(a_vec), tiles * (MAX_GRID_Z // g.groups)))
    return Plan(g, copy_weight, table, a_vec, b_vec, ktile, m_tiles, n_tiles, splits, per * ktile)
