// Fully connected layer on Hopper's warpgroup tensor-core instructions (wgmma, sm_90a):
// y = x W^T + b, x (M, K) and W (N, K) row-major, fp16 or bf16, fp32 accumulators.
//
// A block of 256 threads (two warpgroups) computes a 128 x BN tile of y; each warpgroup owns 64
// rows and issues wgmma.mma_async m64nBNk16 with both operands read from shared memory through
// matrix descriptors, so no operand passes through registers (the mma.sync kernel of igemm.cu
// loads every fragment with ldmatrix first).  Tiles of x and W arrive by 16-byte cp.async into a
// ring of STAGES buffers; each tile row is one 128-byte line (64 elements of k) stored with the
// 128-byte swizzle the descriptors name (16-byte chunk c of row r at chunk c ^ (r % 8)), so the
// tensor cores read without bank conflicts.  One batch of wgmma stays in flight while the next
// is issued: a buffer is refilled two iterations after it was read.
//
// Tiles go out in groups of GROUP_M row tiles down each column of W tiles, so that the W tiles
// are reused from L2.  Rows past M or N and chunks past K are zero-filled by cp.async; K must be
// a multiple of 8 and the pointers 16-byte aligned (the launcher checks).
#include "layerbench_common.cuh"
#include "wgmma.cuh"

namespace wg {

constexpr int BM = 128;          // rows of y per block: two warpgroups of 64
constexpr int LINE = 128;        // bytes of one tile row: 64 16-bit elements of k
constexpr int BK = 64;
constexpr int THREADS = 256;
constexpr int CHUNKS = LINE / 16;  // 16-byte cp.async chunks per tile row

// ROWS rows of a row-major (rows x K) matrix from row `first`, k from k0, into one swizzled buffer.
template <typename T, int ROWS>
__device__ __forceinline__ void load_tile(unsigned dst, const T* __restrict__ src, int first, int rows, int K,
                                          int k0) {
#pragma unroll
    for (int i = 0; i < ROWS * CHUNKS / THREADS; ++i) {
        const int c = threadIdx.x + i * THREADS;
        const int r = c / CHUNKS, chunk = c % CHUNKS;
        const int k = k0 + chunk * 8;
        const bool ok = first + r < rows && k < K;
        const T* from = ok ? src + static_cast<long long>(first + r) * K + k : src;
        lb::cp_async16(dst + r * LINE + ((chunk ^ (r & 7)) << 4), from, ok);
    }
}

}  // namespace wg

template <typename T, int BN, int STAGES>
__global__ void __launch_bounds__(wg::THREADS, 1) linear_wgmma(const T* __restrict__ x, const T* __restrict__ w,
                                                               const T* __restrict__ bias, T* __restrict__ y,
                                                               int M, int N, int K, int group_m) {
    using namespace wg;
    constexpr int A_BYTES = BM * LINE, STAGE_BYTES = (BM + BN) * LINE;
    extern __shared__ unsigned char smem[];
    // The swizzle pattern repeats every 8 lines (1024 B); the descriptors assume it starts there.
    const unsigned base = (lb::smem_addr(smem) + 1023u) & ~1023u;

    const int2 tile = grouped_tile(blockIdx.x, (M + BM - 1) / BM, (N + BN - 1) / BN, group_m);
    const int row0 = tile.x * BM, col0 = tile.y * BN;
    const int k_tiles = (K + BK - 1) / BK;

    auto load = [&](int kt) {
        const unsigned stage = base + (kt % STAGES) * STAGE_BYTES;
        load_tile<T, BM>(stage, x, row0, M, K, kt * BK);
        load_tile<T, BN>(stage + A_BYTES, w, col0, N, K, kt * BK);
    };

    float d[BN / 2];
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) d[i] = 0.f;
    const int group = threadIdx.x / 128;  // this warpgroup's 64 rows of the tile

    // Tiles kt + 1 .. kt + STAGES - 2 are in flight while tile kt is multiplied; the buffer that
    // tile kt + STAGES - 2 goes to was read by batch kt - 2, which every warpgroup has finished
    // (it waits until at most one batch is in flight) before the barrier of iteration kt.
    for (int kt = 0; kt < STAGES - 2; ++kt) {
        if (kt < k_tiles) load(kt);
        lb::cp_async_commit();
    }
    for (int kt = 0; kt < k_tiles; ++kt) {
        lb::cp_async_wait_group<STAGES - 3>();
        fence_async_proxy();
        __syncthreads();
        const unsigned a = base + (kt % STAGES) * STAGE_BYTES + group * 64 * LINE;
        const unsigned b = base + (kt % STAGES) * STAGE_BYTES + A_BYTES;
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < BK / 16; ++ks)  // 16 elements of k are 32 bytes along the line
            Wgmma<T, BN>::run(d, descriptor_128b(a + ks * 32), descriptor_128b(b + ks * 32));
        wgmma_commit();
        if (kt + STAGES - 2 < k_tiles) load(kt + STAGES - 2);
        lb::cp_async_commit();
        wgmma_wait<1>();
    }
    wgmma_wait<0>();

    store_tile<T, BN>(d, y, bias, M, N, row0 + group * 64, col0);
}
