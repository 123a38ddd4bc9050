"""The wgmma GEMMs' index math (linear_wgmma.cu, igemm_wgmma.cu), transcribed and checked on the
CPU: the tile layouts against the swizzles the descriptors name, the accumulator layouts against
the output tiles, and the shared memory against Hopper's limit."""

from __future__ import annotations

import pytest

from kernels.cupy import igemm_plan, linear_wgmma, sources

THREADS, LINE, CHUNKS = linear_wgmma.THREADS, linear_wgmma.LINE_BYTES, 8
HOPPER_SHARED_OPTIN = 227 * 1024


def swizzle_128b(offset: int) -> int:
    """Where the 128-byte swizzle puts byte ``offset`` of a 1024-byte aligned tile (PTX ISA,
    shared memory matrix layouts): address bits 4-6 XOR bits 7-9."""
    return offset ^ (((offset >> 7) & 7) << 4)


def swizzle_64b(offset: int) -> int:
    """The 64-byte swizzle of a 512-byte aligned tile: address bits 4-5 XOR bits 7-8."""
    return offset ^ (((offset >> 7) & 3) << 4)


def test_the_implicit_gemms_rows_are_the_64_byte_swizzle() -> None:
    """igemm.cu stages its tiles with smem_at; igemm_wgmma.cu hands them to wgmma as the 64-byte
    swizzle (512-byte aligned stages): the two must be one layout."""
    assert igemm_plan.ROW_BYTES == 64 and (igemm_plan.BM + igemm_plan.BN) * igemm_plan.ROW_BYTES % 512 == 0
    for row in range(igemm_plan.BM + igemm_plan.BN):
        for byte in range(0, igemm_plan.ROW_BYTES, 16):
            assert igemm_plan.smem_at(row, byte) == swizzle_64b(row * igemm_plan.ROW_BYTES + byte)


def test_implicit_gemm_accumulators_cover_the_tile_once() -> None:
    seen = set()
    for tid in range(igemm_plan.MMA_THREADS):  # one warpgroup, two 64-row halves
        warp, lane = tid // 32, tid % 32
        for i in range(2):
            for j in range(igemm_plan.BN // 8):
                for h in range(2):
                    for e in range(2):  # acc[i][4j + 2h + e]
                        seen.add((64 * i + 16 * warp + lane // 4 + 8 * h, 8 * j + 2 * (lane % 4) + e))
    assert seen == {(r, c) for r in range(igemm_plan.BM) for c in range(igemm_plan.BN)}


@pytest.mark.parametrize("rows", [linear_wgmma.BLOCK_M] + [n for n, _ in sources.WGMMA_CONFIGS])
def test_tile_loads_put_every_chunk_once_where_the_swizzle_expects_it(rows: int) -> None:
    placed = {}
    for tid in range(THREADS):
        for i in range(rows * CHUNKS // THREADS):  # load_tile's loop
            c = tid + i * THREADS
            r, chunk = c // CHUNKS, c % CHUNKS
            placed[(r, chunk)] = r * LINE + ((chunk ^ (r & 7)) << 4)
    assert len(placed) == rows * CHUNKS
    assert sorted(placed.values()) == list(range(0, rows * LINE, 16))
    for (r, chunk), offset in placed.items():
        assert offset == swizzle_128b(r * LINE + chunk * 16)


@pytest.mark.parametrize("block_n", [n for n, _ in sources.WGMMA_CONFIGS])
def test_accumulators_cover_the_output_tile_once(block_n: int) -> None:
    seen = set()
    for tid in range(THREADS):
        group, warp, lane = tid // 128, (tid // 32) % 4, tid % 32
        for j in range(block_n // 8):
            for h in range(2):
                for e in range(2):  # register 4j + 2h + e
                    seen.add((group * 64 + warp * 16 + lane // 4 + 8 * h, j * 8 + 2 * (lane % 4) + e))
    assert seen == {(r, c) for r in range(linear_wgmma.BLOCK_M) for c in range(block_n)}


@pytest.mark.parametrize(("block_n", "stages"), sources.WGMMA_CONFIGS)
def test_ring_of_buffers_fits_and_leaves_two_tiles_in_flight(block_n: int, stages: int) -> None:
    assert linear_wgmma.shared_bytes(block_n, stages) <= HOPPER_SHARED_OPTIN
    assert stages >= 4  # a buffer is refilled two iterations after it was read: two loads in flight
