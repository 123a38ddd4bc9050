"""The pointwise GEMM's shared-memory addressing (pointwise_gemm.cu), without a GPU: the loaders
fill each stage exactly once, ldmatrix and ldmatrix.trans hand each lane the mma.sync m16n8k16
fragments the PTX ISA lays out, the output tile is staged once and read back whole, and every
phase of shared accesses is free of bank conflicts, for each block shape (128, 64 and 32 rows)
and column chunk (8 and 4).  Addresses are transcribed from the kernel; its constants
and swizzles are checked against its text.  And the kernel's own source, run on the CPU against
a float64 product; and the block shapes and chunk the launcher takes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from host_cuda_build import assert_constants_match, built
from kernels.cupy import pointwise_gemm, sources
from kernels.cupy.models import ldmatrix_x4

TEXT = (sources.KERNEL_DIR / "pointwise_gemm.cu").read_text()
A_ROW, B_ROW, BN, BK, THREADS = 64, 256, 128, 32, 128
BLOCKS_M = (128, 64, 32)


def warps(bm: int) -> tuple[int, int, int, int]:
    """(WM, WN, MI, NJ) of pointwise_gemm.cu's Tile<BM>: warps along m and n, each warp's 16-row A
    fragments and 8-column B blocks."""
    wm = 2 if bm == 128 else 1
    wn = 4 // wm
    return wm, wn, bm // (16 * wm), BN // (8 * wn)


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
    """(k row, column) of the 16-bit element at ``byte_addr`` of a B stage: the inverse of b_at."""
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
    assert_constants_match("pointwise_gemm.cu", {"PW_THREADS": THREADS, "PW_BN": BN, "PW_BK": BK,
                                                 "PW_STAGES": pointwise_gemm.STAGES, "A_ROW": A_ROW, "B_ROW": B_ROW})
    assert (THREADS, BN) == (pointwise_gemm.THREADS, pointwise_gemm.BLOCK_N)
    assert sources.POINTWISE_GEMM_BLOCKS_M == BLOCKS_M and sources.POINTWISE_GEMM_CHUNKS == (8, 4)
    assert "static constexpr int WM = BM == 128 ? 2 : 1, WN = 4 / WM;" in TEXT
    assert "static constexpr int MI = BM / (16 * WM), NJ = PW_BN / (8 * WN);" in TEXT
    for bm in BLOCKS_M:
        shared = pointwise_gemm.shared_bytes(bm)
        assert shared == pointwise_gemm.STAGES * (bm * A_ROW + BK * B_ROW) <= 48 * 1024
        assert bm * B_ROW <= shared  # the staged output tile fits the stages' memory
    assert "return row * A_ROW + ((byte & ~15) ^ (((row >> 1) & 3) << 4)) + (byte & 15);" in TEXT
    assert "return row * B_ROW + ((byte & ~15) ^ ((row & 7) << 4)) + (byte & 15);" in TEXT


def b_chunks(vec: int, rows: int) -> list[np.ndarray]:
    """Byte addresses of the chunks of ``vec`` columns a B loader (``rows`` = 32) or the output
    store (``rows`` = BM) takes: chunk tid % (256 / 2 vec) of rows tid / chunks + (128 / chunks) k."""
    tid, chunks = np.arange(THREADS), B_ROW // (2 * vec)
    step = THREADS // chunks
    return [b_at(tid // chunks + step * k, (tid % chunks) * 2 * vec) for k in range(rows // step)]


def test_loaders_fill_each_stage_once() -> None:
    """A: chunk tid % 4 of rows tid / 4 + 32 j (j < BM / 32); B: each chunk of each row once."""
    tid = np.arange(THREADS)
    for bm in BLOCKS_M:
        a = np.concatenate([a_at((tid >> 2) + 32 * j, (tid & 3) * 16) for j in range(bm // 32)])
        assert sorted(a) == list(range(0, bm * A_ROW, 16))
    for vec in (8, 4):
        assert sorted(np.concatenate(b_chunks(vec, BK))) == list(range(0, BK * B_ROW, 2 * vec))


def test_fragments_match_the_ptx_layout() -> None:
    """For each block shape, warp and k16 step: the A fragments (ldmatrix) and the B fragments
    (ldmatrix.trans of rows of k) hold the elements mma.sync m16n8k16 expects, and the warps'
    fragments cover the block's tile once."""
    lanes = np.arange(32)
    for bm in BLOCKS_M:
        n_wm, n_wn, mi, nj = warps(bm)
        rows_seen, columns_seen = set(), set()
        for warp in range(THREADS // 32):
            wm, wn = warp // n_wn, warp % n_wn
            for ks in range(2):
                for i in range(mi):  # A: a0 (g, 2t..), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..)
                    base = wm * 16 * mi + 16 * i
                    regs = ldmatrix_x4(a_at(base + (lanes & 15), 32 * ks + (lanes >> 4) * 16))
                    for r in range(16):
                        for c in range(16):
                            lane, q, part = (r % 8) * 4 + (c % 8) // 2, r // 8 + 2 * (c // 8), c % 2
                            row, k = a_element(regs[lane, q] + 2 * part)
                            assert (row, k) == (base + r, 16 * ks + c)
                            rows_seen.add(row)
                for j in range(nj // 2):  # B: regs 0, 1 the n8 block 2 j (b0: k 2t.., b1: k 2t+8..), 2, 3 block 2 j + 1
                    first = wn * 8 * nj + 16 * j
                    addr = ldmatrix_x4_trans(b_at(16 * ks + (lanes & 15), 2 * (first + ((lanes >> 4) << 3))))
                    for block in range(2):
                        for k in range(16):
                            for n in range(8):
                                lane, q, part = n * 4 + (k % 8) // 2, 2 * block + k // 8, k % 2
                                row, col = b_element(addr[lane, q, part])
                                assert (row, col) == (16 * ks + k, first + 8 * block + n)
                                columns_seen.add(col)
        assert rows_seen == set(range(bm)) and columns_seen == set(range(BN)), bm


def _slots(byte_addr: np.ndarray) -> int:
    return len(np.unique((np.asarray(byte_addr) % 128) // 16))


def _banks(byte_addr: np.ndarray) -> int:
    return len(np.unique((np.asarray(byte_addr) % 128) // 4))


def test_shared_accesses_are_conflict_free() -> None:
    """Every phase of eight 16-byte accesses hits eight distinct bank groups: the ldmatrix and
    ldmatrix.trans row reads and both loaders' cp.async writes; the 8-byte chunks of a B row, a
    phase of sixteen, hit all 32 banks."""
    lanes = np.arange(32)
    for ks in range(2):
        for base in range(0, max(BLOCKS_M), 16):
            addr = a_at(base + (lanes & 15), 32 * ks + (lanes >> 4) * 16)
            assert all(_slots(addr[q:q + 8]) == 8 for q in range(0, 32, 8))
        for n0 in range(0, BN, 16):
            addr = b_at(16 * ks + (lanes & 15), 2 * (n0 + ((lanes >> 4) << 3)))
            assert all(_slots(addr[q:q + 8]) == 8 for q in range(0, 32, 8))
    tid = np.arange(THREADS)
    for j in range(max(BLOCKS_M) // 32):
        addr = a_at((tid >> 2) + 32 * j, (tid & 3) * 16)
        assert all(_slots(addr[q:q + 8]) == 8 for q in range(0, THREADS, 8))
    for addr in b_chunks(8, BK):
        assert all(_slots(addr[q:q + 8]) == 8 for q in range(0, THREADS, 8))
    for addr in b_chunks(4, BK):
        assert all(_banks(np.concatenate([addr[q:q + 16], addr[q:q + 16] + 4])) == 32
                   for q in range(0, THREADS, 16))


def test_kernel_source_on_the_cpu(tmp_path: Path) -> None:
    """pointwise_gemm.cu itself, each block's threads as host threads that meet at its barriers
    and at every ldmatrix and mma.sync (tests/host_cuda/pointwise_gemm.cpp)."""
    result = subprocess.run([str(built(tmp_path, "pointwise_gemm", "pointwise_gemm.cu"))], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0 and " 0 bad, 0 misaligned" in result.stdout, result.stdout + result.stderr


def test_output_tile_is_staged_once_and_read_back_whole() -> None:
    """For each block shape: the epilogue's pair stores (D fragments: row g (+8), columns 2c, 2c + 1)
    cover the BM x 128 tile once, each warp store conflict-free; the chunk reads take every chunk
    once, each phase conflict-free (eight 16-byte chunks, or sixteen 8-byte ones)."""
    lanes = np.arange(32)
    g, c = lanes >> 2, lanes & 3
    for bm in BLOCKS_M:
        n_wm, n_wn, mi, nj = warps(bm)
        written = []
        for warp in range(THREADS // 32):
            wm, wn = warp // n_wn, warp % n_wn
            for i in range(mi):
                for half in range(2):
                    for j in range(nj):
                        addr = b_at(wm * 16 * mi + 16 * i + g + 8 * half, 2 * (wn * 8 * nj + 8 * j + 2 * c))
                        assert _banks(addr) == 32
                        written.extend(addr)
        assert sorted(written) == list(range(0, bm * B_ROW, 4)), bm
        for vec in (8, 4):
            read = b_chunks(vec, bm)
            assert sorted(np.concatenate(read)) == list(range(0, bm * B_ROW, 2 * vec))
        assert all(_slots(addr[q:q + 8]) == 8 for addr in b_chunks(8, bm) for q in range(0, THREADS, 8))
        assert all(_banks(np.concatenate([addr[q:q + 16], addr[q:q + 16] + 4])) == 32
                   for addr in b_chunks(4, bm) for q in range(0, THREADS, 16))


def test_block_shapes_and_chunk_follow_the_layer() -> None:
    """The block shapes timed: each whose tiles are more than half full, 32 always; 16-byte chunks
    where the second operand's rows allow, else 8-byte; none for odd ones."""
    assert [pointwise_gemm.blocks_m(m) for m in (16, 32, 33, 64, 65, 200704)] == \
        [(32,), (32,), (64, 32), (64, 32), (128, 64, 32), (128, 64, 32)]
    assert [pointwise_gemm.column_chunk(n) for n in (3136, 784, 196, 49, 36, 12)] == [8, 8, 4, None, 4, 4]
