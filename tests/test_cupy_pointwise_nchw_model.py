"""The per-image GEMM's shared-memory addressing (pointwise_nchw.cu), without a GPU: the loaders
fill each stage exactly once, ldmatrix and ldmatrix.trans hand each lane the mma.sync m16n8k16
fragments the PTX ISA lays out, the output tile is staged once and read back whole, and every
phase of shared accesses is free of bank conflicts.  Addresses are transcribed from the kernel;
its constants and swizzles are checked against its text.  And the kernel's own source, run on
the CPU against a float64 product."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from host_cuda_build import assert_constants_match, built
from kernels.cupy import pointwise_nchw, sources
from kernels.cupy.models import ldmatrix_x4

TEXT = (sources.KERNEL_DIR / "pointwise_nchw.cu").read_text()
A_ROW, B_ROW, BM, BN, BK, THREADS = 64, 256, 128, 128, 32, 128


def a_at(row: np.ndarray, byte: np.ndarray) -> np.ndarray:
    return row * A_ROW + ((byte & ~15) ^ (((row >> 1) & 3) << 4)) + (byte & 15)


def b_at(row: np.ndarray, byte: np.ndarray) -> np.ndarray:
    return row * B_ROW + ((byte & ~15) ^ ((row & 7) << 4)) + (byte & 15)


def ldmatrix_x4_trans(lane_addr: np.ndarray) -> np.ndarray:
    """PTX ldmatrix .x4 .trans .b16: register q of lane L holds, as its low and high halves, the
    elements in rows 2 (L % 4) and 2 (L % 4) + 1 of matrix q, at column L // 4; row i of matrix
    q comes from lane 8 q + i.  Returns byte addresses [lane][q][half]."""
    lanes = np.arange(32)
    return np.stack([np.stack([lane_addr[8 * q + 2 * (lanes % 4) + h] + 2 * (lanes // 4) for h in range(2)], axis=1)
                     for q in range(4)], axis=1)


def b_element(byte_addr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(k row, pixel) of the 16-bit element at ``byte_addr`` of a B stage: the inverse of b_at."""
    row, col = np.divmod(byte_addr, B_ROW)
    col = col ^ ((row & 7) << 4)
    assert np.array_equal(b_at(row, col), byte_addr)
    return row, col // 2


def a_element(byte_addr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    row, col = np.divmod(byte_addr, A_ROW)
    col = col ^ (((row >> 1) & 3) << 4)
    assert np.array_equal(a_at(row, col), byte_addr)
    return row, col // 2


def test_constants_and_swizzles_match_the_kernel() -> None:
    assert_constants_match("pointwise_nchw.cu", {"PW_THREADS": THREADS, "PW_BM": BM, "PW_BN": BN, "PW_BK": BK,
                                                 "PW_STAGES": pointwise_nchw.STAGES, "A_ROW": A_ROW, "B_ROW": B_ROW})
    assert (THREADS, BM, BN) == (pointwise_nchw.THREADS, pointwise_nchw.BLOCK_M, pointwise_nchw.BLOCK_N)
    assert pointwise_nchw.SHARED_BYTES == pointwise_nchw.STAGES * (BM * A_ROW + BK * B_ROW) <= 48 * 1024
    assert "return row * A_ROW + ((byte & ~15) ^ (((row >> 1) & 3) << 4)) + (byte & 15);" in TEXT
    assert "return row * B_ROW + ((byte & ~15) ^ ((row & 7) << 4)) + (byte & 15);" in TEXT


def test_loaders_fill_each_stage_once() -> None:
    """A: chunk tid % 4 of rows tid / 4 + 32 j; B: chunk tid % 16 of rows tid / 16 + 8 j (j < 4)."""
    tid = np.arange(THREADS)
    a = np.concatenate([a_at((tid >> 2) + 32 * j, (tid & 3) * 16) for j in range(4)])
    b = np.concatenate([b_at((tid >> 4) + 8 * j, (tid & 15) * 16) for j in range(4)])
    assert sorted(a) == list(range(0, BM * A_ROW, 16))
    assert sorted(b) == list(range(0, BK * B_ROW, 16))


def test_fragments_match_the_ptx_layout() -> None:
    """For each warp (2 x 2, 64 x 64 each) and k16 step: the A fragments (ldmatrix) and the B
    fragments (ldmatrix.trans of rows of k) hold the elements mma.sync m16n8k16 expects."""
    lanes = np.arange(32)
    for warp in range(THREADS // 32):
        wm, wn = warp >> 1, warp & 1
        for ks in range(2):
            for i in range(4):  # A: a0 (g, 2t..), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..)
                regs = ldmatrix_x4(a_at(wm * 64 + 16 * i + (lanes & 15), 32 * ks + (lanes >> 4) * 16))
                for r in range(16):
                    for c in range(16):
                        lane, q, part = (r % 8) * 4 + (c % 8) // 2, r // 8 + 2 * (c // 8), c % 2
                        row, k = a_element(regs[lane, q] + 2 * part)
                        assert (row, k) == (wm * 64 + 16 * i + r, 16 * ks + c)
            for j in range(4):  # B: regs 0, 1 the n8 block 2 j (b0: k 2t.., b1: k 2t+8..), 2, 3 block 2 j + 1
                addr = ldmatrix_x4_trans(b_at(16 * ks + (lanes & 15), 2 * (wn * 64 + 16 * j + ((lanes >> 4) << 3))))
                for block in range(2):
                    for k in range(16):
                        for n in range(8):
                            lane, q, part = n * 4 + (k % 8) // 2, 2 * block + k // 8, k % 2
                            row, pixel = b_element(addr[lane, q, part])
                            assert (row, pixel) == (16 * ks + k, wn * 64 + 16 * j + 8 * block + n)


def _slots(byte_addr: np.ndarray) -> int:
    return len(np.unique((np.asarray(byte_addr) % 128) // 16))


def test_shared_accesses_are_conflict_free() -> None:
    """Every phase of eight 16-byte accesses hits eight distinct bank groups: the ldmatrix and
    ldmatrix.trans row reads and both loaders' cp.async writes."""
    lanes = np.arange(32)
    for ks in range(2):
        for base in range(0, BM, 16):
            addr = a_at(base + (lanes & 15), 32 * ks + (lanes >> 4) * 16)
            assert all(_slots(addr[q:q + 8]) == 8 for q in range(0, 32, 8))
        for n0 in range(0, BN, 16):
            addr = b_at(16 * ks + (lanes & 15), 2 * (n0 + ((lanes >> 4) << 3)))
            assert all(_slots(addr[q:q + 8]) == 8 for q in range(0, 32, 8))
    tid = np.arange(THREADS)
    for j in range(4):
        for addr in (a_at((tid >> 2) + 32 * j, (tid & 3) * 16), b_at((tid >> 4) + 8 * j, (tid & 15) * 16)):
            assert all(_slots(addr[q:q + 8]) == 8 for q in range(0, THREADS, 8))


def test_kernel_source_on_the_cpu(tmp_path: Path) -> None:
    """pointwise_nchw.cu itself, each block's threads as host threads that meet at its barriers
    and at every ldmatrix and mma.sync (tests/host_cuda/pointwise_nchw.cpp)."""
    result = subprocess.run([str(built(tmp_path, "pointwise_nchw", "pointwise_nchw.cu"))], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0 and " 0 bad, 0 misaligned" in result.stdout, result.stdout + result.stderr


def test_output_tile_is_staged_once_and_read_back_whole() -> None:
    """The epilogue's pair stores (D fragments: row g (+8), pixels 2c, 2c + 1) cover the 128 x 128
    tile once, each warp store conflict-free; the 16-byte reads (chunk tid % 16 of rows tid / 16 +
    8 k) take every chunk once, each phase of eight conflict-free."""
    lanes = np.arange(32)
    g, c = lanes >> 2, lanes & 3
    written = []
    for warp in range(THREADS // 32):
        wm, wn = warp >> 1, warp & 1
        for i in range(4):
            for half in range(2):
                for j in range(8):
                    addr = b_at(wm * 64 + 16 * i + g + 8 * half, 2 * (wn * 64 + 8 * j + 2 * c))
                    assert len(np.unique((addr % 128) // 4)) == 32  # 32 distinct banks
                    written.extend(addr)
    assert sorted(written) == list(range(0, BM * B_ROW, 4))
    tid = np.arange(THREADS)
    read = [b_at((tid >> 4) + 8 * k, (tid & 15) * 16) for k in range(16)]
    assert sorted(np.concatenate(read)) == list(range(0, BM * B_ROW, 16))
    assert all(_slots(addr[q:q + 8]) == 8 for addr in read for q in range(0, THREADS, 8))
