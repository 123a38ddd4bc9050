"""The implicit GEMM's shared-memory addressing (igemm.cu): ldmatrix / mma.sync fragments
against the PTX ISA's layouts, the swizzle against the kernel's spelling, bank conflicts."""

from __future__ import annotations


import numpy as np
import pytest

from host_cuda_build import assert_constants_match
from kernels.cupy import igemm_plan, sources
from kernels.cupy.igemm_plan import BM, ROW_BYTES, smem_at
from kernels.cupy.models import fragment_element, ldmatrix_x4

assert igemm_plan.TILE_BYTES == ROW_BYTES == 64


@pytest.mark.parametrize("es", [2, 4], ids=["fp16-bf16", "tf32"])
def test_mma_fragments_match_ptx_layout(es: int) -> None:
    """The kernel's ldmatrix addresses give each lane the A, B fragments that PTX mma.sync
    m16n8k16 (16-bit) / m16n8k8 (tf32) expects, and the epilogue's (row, column) of each
    accumulator is the PTX D layout.  Transcribed from igemm.cu (igemm_mma)."""
    ks_len = 32 // es  # k per mma step: 16 or 8
    lanes = np.arange(32)
    g, t = lanes // 4, lanes % 4
    for warp in range(igemm_plan.MMA_THREADS // 32):
        wm, wn = warp >> 1, warp & 1
        a_row, a_chunk = wm * 64 + (lanes & 15), lanes >> 4
        b_row, b_chunk = wn * 64 + ((lanes >> 4) << 3) + (lanes & 7), (lanes >> 3) & 1
        for ks in range(2):
            a_off = smem_at(a_row, 32 * ks + a_chunk * 16)
            b_off = smem_at(b_row, 32 * ks + b_chunk * 16)
            # A: for each (r, c) of the 16 x ks_len fragment, where PTX puts it.
            for i in range(4):
                regs = ldmatrix_x4(a_off + i * 16 * ROW_BYTES)
                for r in range(16):
                    for c in range(ks_len):
                        if es == 2:  # a_i: row g (+8 for regs 1, 3), cols 2t, 2t+1 (+8 for regs 2, 3)
                            lane, q, part = (r % 8) * 4 + (c % 8) // 2, r // 8 + 2 * (c // 8), c % 2
                        else:  # tf32: a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4)
                            lane, q, part = (r % 8) * 4 + c % 4, r // 8 + 2 * (c // 4), 0
                        row, k = fragment_element(regs[lane, q], es, part)
                        assert (row, k) == (wm * 64 + i * 16 + r, ks * ks_len + c)
            # B: ldmatrix pair pr feeds n-tiles 2 pr (regs 0, 1) and 2 pr + 1 (regs 2, 3).
            for pr in range(4):
                regs = ldmatrix_x4(b_off + pr * 16 * ROW_BYTES)
                for half in range(2):
                    j = 2 * pr + half
                    for k in range(ks_len):
                        for n in range(8):
                            if es == 2:  # b0: k 2t, 2t+1; b1: k 2t+8, 2t+9; column n = g
                                lane, q, part = n * 4 + (k % 8) // 2, k // 8, k % 2
                            else:  # tf32: b0 (k t, n g), b1 (k t+4, n g)
                                lane, q, part = n * 4 + k % 4, k // 4, 0
                            row, kk = fragment_element(regs[lane, 2 * half + q], es, part)
                            assert (row, kk) == (wn * 64 + j * 8 + n, ks * ks_len + k)
    # D: PTX c0, c1 at (g, 2t), (g, 2t+1); c2, c3 at (g+8, ...).  The epilogue writes
    # acc[..][2 * half + e] to row g + 8 half, column 2 t + e.
    for reg in range(4):
        half, e = reg // 2, reg % 2
        ptx_row, ptx_col = g + 8 * (reg // 2), 2 * t + (reg % 2)
        assert np.array_equal(g + 8 * half, ptx_row) and np.array_equal(2 * t + e, ptx_col)


def test_igemm_constants_match_the_kernel() -> None:
    """The launcher sizes blocks and dynamic shared memory from igemm_plan; igemm.cu must agree."""
    text = (sources.KERNEL_DIR / "igemm.cu").read_text()
    assert_constants_match("igemm.cu", {name: getattr(igemm_plan, name) for name in
                                        ("BM", "BN", "SIMT_THREADS", "MMA_THREADS", "TILE_BYTES", "ROW_BYTES", "STAGES")})
    assert "return row * ROW_BYTES + ((byte & ~15) ^ (((row >> 1) & 3) << 4)) + (byte & 15);" in text, \
        "smem_at changed: change igemm_plan.smem_at with it"
    row, byte = np.meshgrid(np.arange(BM), np.arange(ROW_BYTES))
    kernel_form = row * ROW_BYTES + ((byte & ~15) ^ (((row >> 1) & 3) << 4)) + (byte & 15)
    assert np.array_equal(smem_at(row, byte), kernel_form)


def _slots(byte_addr: np.ndarray) -> int:
    """Distinct 16-byte bank groups that one phase of 16-byte shared accesses touches."""
    return len(np.unique((np.asarray(byte_addr) % 128) // 16))


def test_shared_accesses_are_conflict_free() -> None:
    """Every phase of 16-byte shared accesses (8 lanes) hits 8 distinct 16-byte bank groups:
    ldmatrix (8 rows of one chunk), the FFMA kernel's A and B reads, and the loaders' cp.async
    writes (threads 8 q .. 8 q + 7 fill two whole rows)."""
    assert smem_at(3, 4) == 3 * ROW_BYTES + 20  # row 3's chunk 0 sits in slot 1
    for first in range(0, BM, 8):
        for chunk in range(4):
            assert _slots(smem_at(first + np.arange(8), 16 * chunk)) == 8
    tx = np.arange(8)  # igemm_simt: lanes 0-7 read B rows tx + 16 j; A rows ty + 16 i are broadcasts
    for j in range(8):
        for chunk in range(4):
            assert _slots(smem_at(tx + 16 * j, 16 * chunk)) == 8
    for threads in (igemm_plan.MMA_THREADS, igemm_plan.SIMT_THREADS):
        tid = np.arange(threads)
        chunks = igemm_plan.TILE_BYTES // 16
        vrows = threads // chunks
        for j in range(BM // vrows):
            addr = smem_at(tid // chunks + vrows * j, 16 * (tid % chunks))
            assert all(_slots(addr[q:q + 8]) == 8 for q in range(0, threads, 8))
