// Fully connected layer on Hopper's TMA and wgmma (sm_90a), warp-specialised:
// y = x W^T + b, x (M, K) and W (N, K) row-major, fp16 or bf16, fp32 accumulators.
//
// A persistent block of 288 threads (BLOCKS per SM: one, or two whose stores and multiplies
// overlap) computes 128 x BN tiles of y one after another:
// one producer warp, whose first thread starts the TMA copies of the x and W tiles into a ring of
// STAGES buffers, and two consumer warpgroups of 64 rows each that multiply them with
// wgmma.mma_async, both operands read from shared memory through matrix descriptors.  The TMA
// unit writes each tile row (64 elements of k, 128 bytes) in the 128-byte swizzle the descriptors
// name and zero-fills what lies past M, N or K, so no thread spends instructions on addresses or
// bounds (linear_wgmma.cu's cp.async loads are issued by the warps that multiply).  Each buffer
// has two barriers: `full` completes when the TMA unit has written the buffer's bytes, `empty`
// when all eight consumer warps have finished reading it (their wgmma batch retired), after which
// the producer refills it.  The ring runs on across tiles: while the consumers store one tile,
// the producer already loads the next one's first k tiles (short-K GEMMs are mostly that).
// Each consumer warpgroup writes its 64 x BN outputs (bias added, rounded) into its own
// shared-memory buffer in the 128-byte swizzle, as 64-column boxes, and one thread hands them to
// the TMA unit, which writes whole lines to y (and nothing past M or N) while the warpgroup goes
// on to the next tile; where y's rows are not 16-byte aligned (N not a multiple of 8), threads
// store straight from registers instead.
//
// Split-K: work item w is tile w % tiles of split w / tiles, which multiplies k tiles
// [split * per, (split + 1) * per) only and, when ws is not null, writes fp32 partial sums to
// ws[split][m][n]; igemm.cu's splitk_reduce adds them and the bias.  Tiles go out in groups of
// GROUP_M row tiles down each column of W tiles, so that the W tiles are reused from L2.
#include "layerbench_common.cuh"
#include "wgmma.cuh"
#include "tma.cuh"

namespace wt {

constexpr int BM = 128;               // rows of y per block: two warpgroups of 64
constexpr int BK = 64;                // elements of k per tile row
constexpr int LINE = 128;             // bytes of one tile row
constexpr int CONSUMERS = 256;        // two warpgroups: warps 0-7 (a warpgroup is 4 aligned warps)
constexpr int THREADS = CONSUMERS + 32;  // and the producer warp, warp 8
constexpr int OUT_BOX = 64;  // columns of y a TMA store box holds: one 128-byte line of 16-bit values

// This warpgroup's 64 x BN outputs (+ bias), rounded to T, into `out`: BN / 64 boxes of 64 lines,
// 16-byte chunk c of line r at chunk c ^ (r % 8) (the 128-byte swizzle the y map names).  A pair
// of columns is one 4-byte store; the 8 rows a warp's store covers fall in 8 different chunks.
template <typename T, int BN>
__device__ __forceinline__ void stage_tile(const float (&d)[BN / 2], unsigned out, const T* __restrict__ bias, int N,
                                           int col0) {
    const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
        const int col = col0 + j * 8 + 2 * (lane % 4);
        const float b0 = bias && col < N ? lb::to_float(bias[col]) : 0.f;
        const float b1 = bias && col + 1 < N ? lb::to_float(bias[col + 1]) : 0.f;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = warp * 16 + lane / 4 + 8 * h;
            const typename wg::Pair<T>::V v = wg::Pair<T>::make(d[4 * j + 2 * h] + b0, d[4 * j + 2 * h + 1] + b1);
            unsigned bits;
            memcpy(&bits, &v, 4);
            const unsigned at = out + (j / 8) * (64 * LINE) + row * LINE + (((j % 8) ^ (row % 8)) << 4) + (lane % 4) * 4;
            asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(at), "r"(bits) : "memory");
        }
    }
}

// The ring's barriers, by the block's first thread before the block's first __syncthreads: full[s]
// completes when the TMA unit has written buffer s, empty[s] when every consumer warp has released it.
template <int STAGES>
__device__ __forceinline__ void init_ring(unsigned full, unsigned empty) {
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; ++s) {
            lb::mbar_init(full + 8 * s, 1);                 // the producer's arrival with the byte count
            lb::mbar_init(empty + 8 * s, CONSUMERS / 32);  // one arrival per consumer warp
        }
        lb::fence_mbar_init();
    }
}

// The producer: wait until buffer it % STAGES is free and announce the bytes its two boxes will
// bring (whole boxes, zero-filled parts included); returns the buffer's address.  A fresh
// barrier counts as having completed the phase before its first, so the first pass over the
// ring does not wait.
template <int BN, int STAGES>
__device__ __forceinline__ unsigned claim_stage(unsigned base, unsigned full, unsigned empty, int it) {
    constexpr int STAGE_BYTES = (BM + BN) * LINE;
    const int s = it % STAGES;
    lb::mbar_wait(empty + 8 * s, ((it / STAGES) & 1) ^ 1);
    lb::mbar_expect_tx(full + 8 * s, STAGE_BYTES);
    return base + s * STAGE_BYTES;
}

// A consumer warpgroup: one work item's `count` k tiles from the ring into its 64 x BN
// accumulators `d` (zeroed first); `it` counts k tiles through the ring across work items
// (buffer it % STAGES, pass it / STAGES).  A warpgroup that does not `multiply` only keeps the
// ring turning.
template <typename T, int BN, int STAGES>
__device__ __forceinline__ void multiply_item(float (&d)[BN / 2], unsigned base, unsigned full, unsigned empty,
                                              int& it, int count, bool multiplies) {
    using namespace wg;
    constexpr int A_BYTES = BM * LINE, STAGE_BYTES = (BM + BN) * LINE;
    const int group = threadIdx.x / 128;  // this warpgroup's 64 rows of each tile
    const bool releases = threadIdx.x % 32 == 0;  // one arrival per warp on `empty`
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) d[i] = 0.f;
    for (int i = 0; i < count; ++i, ++it) {
        const int s = it % STAGES;
        lb::mbar_wait(full + 8 * s, (it / STAGES) & 1);
        if (multiplies) {
            const unsigned a = base + s * STAGE_BYTES + group * 64 * LINE;
            const unsigned b = base + s * STAGE_BYTES + A_BYTES;
            wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < BK / 16; ++ks)  // 16 elements of k are 32 bytes along the line
                Wgmma<T, BN>::run(d, descriptor_128b(a + ks * 32), descriptor_128b(b + ks * 32));
            wgmma_commit();
            wgmma_wait<1>();  // batch it - 1 has retired: its buffer goes back to the producer
        }
        if (i > 0 && releases) lb::mbar_arrive(empty + 8 * ((it - 1) % STAGES));
    }
    wgmma_wait<0>();
    if (releases) lb::mbar_arrive(empty + 8 * ((it - 1) % STAGES));  // the item's last buffer
}

// A consumer warpgroup's 64 x BN outputs (+ bias) staged at `staged` and handed to the TMA unit
// by its leader thread, `store(src, col)` starting the copy of the 64-column box of column col;
// first waits until the previous tile's stores have read the buffer.
template <typename T, int BN, typename Store>
__device__ __forceinline__ void store_tile_by_tma(const float (&d)[BN / 2], unsigned staged,
                                                  const T* __restrict__ bias, int N, int col0, Store store) {
    const int group = threadIdx.x / 128;
    const bool leader = threadIdx.x % 128 == 0;  // issues and waits for the warpgroup's TMA stores
    // One barrier per warpgroup (ids 1 and 2): the other warpgroup is on its own schedule.
    auto warpgroup_barrier = [group] {
        if (group == 0) lb::named_barrier<1, 128>();
        else lb::named_barrier<2, 128>();
    };
    if (leader) lb::bulk_wait_all<true>();
    warpgroup_barrier();
    stage_tile<T, BN>(d, staged, bias, N, col0);
    wg::fence_async_proxy();
    warpgroup_barrier();
    if (leader) {
        for (int j = 0; j < BN / OUT_BOX && col0 + j * OUT_BOX < N; ++j)
            store(staged + j * 64 * LINE, col0 + j * OUT_BOX);
        lb::bulk_commit();
    }
}

}  // namespace wt

template <typename T, int BN, int STAGES, int BLOCKS>
__global__ void __launch_bounds__(wt::THREADS, BLOCKS) linear_tma(const __grid_constant__ lb::TensorMap x_map,
                                                             const __grid_constant__ lb::TensorMap w_map,
                                                             const __grid_constant__ lb::TensorMap y_map,
                                                             const T* __restrict__ bias, T* __restrict__ y,
                                                             float* __restrict__ ws, int M, int N, int K,
                                                             int group_m, int k_tiles_per_split, int store_by_tma) {
    using namespace wt;
    using namespace wg;
    constexpr int A_BYTES = BM * LINE, STAGE_BYTES = (BM + BN) * LINE, OUT_BYTES = 64 * BN * 2;
    extern __shared__ unsigned char smem[];
    __shared__ unsigned long long barriers[2 * STAGES];  // full[s], then empty[s]
    // The swizzle pattern repeats every 8 lines (1024 B); TMA and the descriptors assume it starts there.
    const unsigned base = (lb::smem_addr(smem) + 1023u) & ~1023u;
    const unsigned full = lb::smem_addr(barriers), empty = full + 8 * STAGES;

    const int tiles_m = (M + BM - 1) / BM, tiles_n = (N + BN - 1) / BN, tiles = tiles_m * tiles_n;
    const int k_tiles = (K + BK - 1) / BK;
    const int work = tiles * ((k_tiles + k_tiles_per_split - 1) / k_tiles_per_split);
    // Where work item w starts: first output row and column, first k tile, k tiles.
    struct Item {
        int row0, col0, kt0, count;
    };
    auto item = [&](int w) {
        const int2 tile = grouped_tile(w % tiles, tiles_m, tiles_n, group_m);
        const int kt0 = (w / tiles) * k_tiles_per_split;
        return Item{tile.x * BM, tile.y * BN, kt0,
                    min(kt0 + k_tiles_per_split, k_tiles) - kt0};  // count >= 1: the launcher's split
    };

    init_ring<STAGES>(full, empty);
    __syncthreads();  // the last block-wide barrier: the producer warp leaves when its copies are started

    if (threadIdx.x >= CONSUMERS) {
        if (threadIdx.x == CONSUMERS) {
            for (int w = blockIdx.x, it = 0; w < work; w += gridDim.x) {
                const Item job = item(w);
                for (int i = 0; i < job.count; ++i, ++it) {
                    const unsigned stage = claim_stage<BN, STAGES>(base, full, empty, it);
                    const unsigned bar = full + 8 * (it % STAGES);
                    lb::tma_load_2d(stage, &x_map, (job.kt0 + i) * BK, job.row0, bar);
                    lb::tma_load_2d(stage + A_BYTES, &w_map, (job.kt0 + i) * BK, job.col0, bar);
                }
            }
        }
        return;
    }

    const int group = threadIdx.x / 128;  // this warpgroup's 64 rows of each tile
    const bool leader = threadIdx.x % 128 == 0;
    const unsigned staged = base + STAGES * STAGE_BYTES + group * OUT_BYTES;
    float d[BN / 2];
    for (int w = blockIdx.x, it = 0; w < work; w += gridDim.x) {
        const Item job = item(w);
        // A warpgroup whose 64 rows all lie past M (a GEMV, the last row tile) only keeps the
        // ring turning: the tensor cores spend nothing on its zero-filled rows.
        const bool multiplies = job.row0 + group * 64 < M;
        multiply_item<T, BN, STAGES>(d, base, full, empty, it, job.count, multiplies);

        const int row0 = job.row0 + group * 64;
        if (ws != nullptr) {
            store_partials<BN>(d, ws + static_cast<long long>(job.kt0 / k_tiles_per_split) * M * N, M, N, row0,
                               job.col0);
        } else if (!store_by_tma) {
            store_tile<T, BN>(d, y, bias, M, N, row0, job.col0);
        } else if (multiplies) {
            store_tile_by_tma<T, BN>(d, staged, bias, N, job.col0,
                                     [&](unsigned src, int col) { lb::tma_store_2d(&y_map, src, col, row0); });
        }
    }
    if (leader) lb::bulk_wait_all<false>();  // the block's shared memory lives until its stores are done
}
