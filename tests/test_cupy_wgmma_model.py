"""The wgmma GEMM's index math (linear_wgmma.cu), transcribed and checked on the CPU: the tile
loads against the 128-byte swizzle the descriptors name, the accumulator layout against the
output tile, and the shared memory against Hopper's limit."""

from __future__ import annotations

import pytest

from kernels.cupy import linear_wgmma, sources

THREADS, LINE, CHUNKS = linear_wgmma.THREADS, linear_wgmma.LINE_BYTES, 8
HOPPER_SHARED_OPTIN = 227 * 1024


def swizzle_128b(offset: int) -> int:
    """Where the 128-byte swizzle puts byte ``offset`` of a 1024-byte aligned tile (PTX ISA,
    shared memory matrix layouts): address bits 4-6 XOR bits 7-9."""
    return offset ^ (((offset >> 7) & 7) << 4)


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
