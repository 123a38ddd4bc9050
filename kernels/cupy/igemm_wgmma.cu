// The implicit GEMM of igemm.cu on Hopper's warpgroup MMA (wgmma, sm_90a), fp16 and bf16.
//
// The same problem, tiles, loaders, k loop, split-K and grouping as igemm_mma (igemm.cu, pasted
// below); only the multiply differs.  igemm.cu's shared-memory rows are 64 bytes with the
// 16-byte chunks swizzled as chunk c ^ ((row / 2) % 4): exactly the 64-byte swizzle that wgmma's
// descriptors name, so the tensor cores read the staged tiles in place, with no ldmatrix and no
// fragment in registers.  One warpgroup (the block's 128 threads) computes the 128 x 128 tile as
// two 64 x 128 halves, two k steps of 16 a tile (four wgmma).  A tile's batch keeps running while
// the loop waits for the next tile and issues its loads (k_loop's LAG = 1: each batch waits only
// for the one before it, and the loads run two tiles ahead instead of three, so that the stage
// refilled is never one a batch still reads).  The stages start on a 512-byte boundary, the
// swizzle's period.
#include "layerbench_common.cuh"
#include "wgmma.cuh"
#include "igemm.cu"

constexpr int SWIZZLE_PERIOD = 512;

template <typename T, bool AVEC, bool GROUPED>
__global__ void __launch_bounds__(MMA_THREADS, 2) igemm_wgmma(IGEMM_PARAMS(T)) {
    extern __shared__ __align__(128) unsigned char smem_raw[];  // STAGES * STAGE_BYTES + SWIZZLE_PERIOD
    unsigned char* smem = smem_raw + ((SWIZZLE_PERIOD - (lb::smem_addr(smem_raw) % SWIZZLE_PERIOD)) % SWIZZLE_PERIOD);
    IGEMM_PROBLEM(T);
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int kbeg = split_of<GROUPED>(groups) * k_split;
    const int kend = min(K, kbeg + k_split);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

    float acc[2][BN / 2];  // rows 0-63 and 64-127 of the tile
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int r = 0; r < BN / 2; ++r) acc[i][r] = 0.0f;

    k_loop<T, AVEC, MMA_THREADS, true, 1>(p, smem, m0, n0, kbeg, kend, [&](unsigned char* sa, unsigned char* sb) {
        const unsigned a = lb::smem_addr(sa), b = lb::smem_addr(sb);
        wg::wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < 2; ++ks)  // two 32-byte k steps per 64-byte row
#pragma unroll
            for (int i = 0; i < 2; ++i)
                wg::Wgmma<T, BN>::run(acc[i], wg::descriptor_64b(a + i * 64 * ROW_BYTES + ks * 32),
                                      wg::descriptor_64b(b + ks * 32));
        wg::wgmma_commit();
        wg::wgmma_wait<1>();  // the previous tile's batch: its stage is refilled next
    });
    wg::wgmma_wait<0>();

    // Accumulator layout (per warp, as mma.sync's m16n8 tiles side by side): acc[i][4j + 2h + e]
    // holds row 64 i + 16 warp + lane / 4 + 8 h, column 8 j + 2 (lane % 4) + e.
    IGEMM_GROUP_OUTPUTS
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int m = m0 + i * 64 + warp * 16 + (lane >> 2) + 8 * h;
            if (m >= M) continue;
            if (ws != nullptr) {
                float* dst = ws + (static_cast<long long>(split) * M + m) * ws_ld;
#pragma unroll
                for (int j = 0; j < BN / 8; ++j) {
                    const int n = n0 + j * 8 + 2 * (lane & 3);
                    if (n < N) dst[n] = acc[i][4 * j + 2 * h];
                    if (n + 1 < N) dst[n + 1] = acc[i][4 * j + 2 * h + 1];
                }
            } else {
                const long long ob = out_base(m, OHW, OW, osN, osH, osW);
#pragma unroll
                for (int j = 0; j < BN / 8; ++j) {
                    const int n = n0 + j * 8 + 2 * (lane & 3);
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        if (n + e < N) {
                            float v = acc[i][4 * j + 2 * h + e];
                            if (bias != nullptr) v += lb::to_float(bias[n + e]);
                            out[ob + (n + e) * osC] = lb::from_float<T>(v);
                        }
                    }
                }
            }
        }
    }
}
