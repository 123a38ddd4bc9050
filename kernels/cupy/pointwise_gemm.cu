// A 1x1 convolution (stride 1, no padding, one group) as mma.sync GEMMs on the tensors as they
// are, nothing copied:
//
//   y[m][j] = sum_r a[m][r] * b[r][j] (+ bias[m] or bias[j])
//
// with a row-major (rows k contiguous) and b's rows j contiguous.  NCHW: one product per image,
// a the weight as the (K, C) matrix it is in memory, b = x[n] and y[n] image n's (C, H*W) and
// (K, H*W) matrices, bias by row; the implicit GEMMs would copy the input to channels_last
// first.  NHWC: one product, a = x as the (N*H*W, C) matrix, b the weight transposed once at
// build to (C, K), y the (N*H*W, K) output, bias by column: on layers of few channels (K or C of
// 16 to 32) this small tile streams where a wgmma GEMM's 64-deep k tiles and wide epilogues idle.
//
// Block tile: BM rows (128, 64 or 32, timed at build) x 128 columns, reduction in stages of 32,
// three stages in flight (cp.async; chunks past the edges are zero-filled, never read).  4 warps,
// as 2 x 2 (BM 128) or 1 x 4, each BM / WM rows x 128 / WN columns through mma.sync m16n8k16
// (fp16, bf16) with fp32 accumulators; the tile is staged in shared memory for whole-chunk stores.
//   A stage: BM rows of 64 bytes, k contiguous, swizzled as igemm.cu's tiles; ldmatrix gives the
//            A fragments.
//   B stage: 32 rows (k) of 256 bytes, columns contiguous, as b holds them; 16-byte granule c of
//            row r sits in slot c ^ (r % 8), so the eight rows one ldmatrix.trans reads land in
//            eight different bank groups.  The transposed load gives the B fragments (k pairs of
//            one column) straight from rows of k.
// Columns j = n * HW + p number the columns of every image in turn (NCHW: the batch's pixels;
// NHWC: one image of HW = K columns), so that a tile may span two images (H*W need not be a
// multiple of 128: 28 x 28 planes would leave a seventh of the tiles' columns idle).  Columns
// move in chunks of VEC (8: 16 bytes, or 4: 8 bytes, where HW is a multiple of 4 only, as 14 x 14
// planes are); a chunk lies in one image.
// The launcher guarantees R % 8 == 0 and HW % VEC == 0 (whole chunks, aligned to their size),
// fp16 or bf16, fewer than 2^31 - 128 rows and columns, and a grid of (columns / 128) x (M / BM)
// blocks (both rounded up) on x.
#include "layerbench_common.cuh"

namespace {

constexpr int PW_THREADS = 128;
constexpr int PW_BN = 128;  // columns a block
constexpr int PW_BK = 32;   // k (input channels) a stage
constexpr int PW_STAGES = 3;
constexpr int A_ROW = 64;   // bytes of an A row: PW_BK 16-bit values
constexpr int B_ROW = 256;  // bytes of a B row: PW_BN 16-bit values
constexpr int B_BYTES = PW_BK * B_ROW;

// The block's shape for BM rows: warps along m and n, and each warp's 16-row A fragments (MI)
// and 8-column B blocks (NJ).  A stage is 16 KiB at BM 128: three fit the default 48 KiB, and the
// staged output tile (BM rows of B_ROW bytes) fits in them at every BM.
template <int BM>
struct Tile {
    static_assert(BM == 128 || BM == 64 || BM == 32, "BM is 128, 64 or 32");
    static constexpr int WM = BM == 128 ? 2 : 1, WN = 4 / WM;
    static constexpr int MI = BM / (16 * WM), NJ = PW_BN / (8 * WN);
    static constexpr int A_BYTES = BM * A_ROW, STAGE_BYTES = A_BYTES + B_BYTES;
};

__device__ __forceinline__ int a_at(int row, int byte) {
    return row * A_ROW + ((byte & ~15) ^ (((row >> 1) & 3) << 4)) + (byte & 15);
}

__device__ __forceinline__ int b_at(int row, int byte) {
    return row * B_ROW + ((byte & ~15) ^ ((row & 7) << 4)) + (byte & 15);
}

template <typename T>
__device__ __forceinline__ unsigned pack_pair(float lo, float hi) {
    const T l = lb::from_float<T>(lo), h = lb::from_float<T>(hi);
    return static_cast<unsigned>(*reinterpret_cast<const unsigned short*>(&l)) |
           (static_cast<unsigned>(*reinterpret_cast<const unsigned short*>(&h)) << 16);
}

// A chunk of VEC 16-bit values: its copy from global to shared memory (zeros where !valid) and
// the type that stores it.
template <int VEC> struct Chunk;
template <> struct Chunk<8> {
    using Store = uint4;
    static __device__ __forceinline__ void copy(unsigned dst, const void* src, bool valid) {
        lb::cp_async16(dst, src, valid);
    }
};
template <> struct Chunk<4> {
    using Store = uint2;
    static __device__ __forceinline__ void copy(unsigned dst, const void* src, bool valid) {
        lb::cp_async8(dst, src, valid);
    }
};

}  // namespace

// bias_by: 0 no bias, 1 bias[m] (by row: NCHW's output channels), 2 bias[j] (by column, one image
// only: NHWC's).
template <typename T, int BM, int VEC>
__global__ void __launch_bounds__(PW_THREADS) pointwise_gemm(const T* __restrict__ a, const T* __restrict__ b,
                                                             const T* __restrict__ bias, T* __restrict__ y,
                                                             int M, int R, int HW, int columns, int bias_by) {
    using S = Tile<BM>;
    constexpr int CHUNK = 2 * VEC;             // bytes of a chunk of columns
    constexpr int ROW_CHUNKS = B_ROW / CHUNK;  // chunks of a B row (16 or 32)
    constexpr int ROW_STEP = PW_THREADS / ROW_CHUNKS;  // rows the threads cover at once
    using Store = typename Chunk<VEC>::Store;
    extern __shared__ __align__(128) unsigned char stages[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / S::WN, wn = warp % S::WN;
    // Blocks in launch order walk the fewer tiles first (a column tile's row tiles, or a row
    // tile's column tiles), so that each tile of the larger operand is read from DRAM once and
    // from L2 by its neighbours.
    const int m_tiles = (M + BM - 1) / BM, n_tiles = (columns + PW_BN - 1) / PW_BN;
    const int block = static_cast<int>(blockIdx.x);
    const bool rows_inner = m_tiles <= n_tiles;
    const int j0 = (rows_inner ? block / m_tiles : block % n_tiles) * PW_BN;
    const int m0 = (rows_inner ? block % m_tiles : block / n_tiles) * BM;
    // Each thread loads and stores one chunk (tid % ROW_CHUNKS) of the tile's B and output rows:
    // its image, and its column in that image.
    const int chunk = tid % ROW_CHUNKS;
    const int col = j0 + chunk * VEC;
    const bool col_ok = col < columns;
    const long long image = col_ok ? col / HW : 0;
    const int p = col_ok ? col - static_cast<int>(image) * HW : 0;
    const T* bi = b + image * R * HW + p;
    T* yi = y + image * M * HW + p;

    // One stage: A BM rows x 4 chunks of 16 bytes, BM / 32 a thread; B 32 rows x ROW_CHUNKS chunks.
    auto issue = [&](int r0, unsigned char* s) {
        const int ac = tid & 3, r = r0 + ac * 8;
#pragma unroll
        for (int j = 0; j < BM / 32; ++j) {
            const int row = (tid >> 2) + 32 * j, m = m0 + row;
            const bool ok = m < M && r < R;
            lb::cp_async16(lb::smem_addr(s + a_at(row, ac * 16)), ok ? a + static_cast<long long>(m) * R + r : a, ok);
        }
#pragma unroll
        for (int k = 0; k < PW_BK / ROW_STEP; ++k) {
            const int row = tid / ROW_CHUNKS + ROW_STEP * k;
            const bool ok = r0 + row < R && col_ok;
            Chunk<VEC>::copy(lb::smem_addr(s + S::A_BYTES + b_at(row, chunk * CHUNK)),
                             ok ? bi + static_cast<long long>(r0 + row) * HW : b, ok);
        }
    };

    float acc[S::MI][S::NJ][4];
#pragma unroll
    for (int i = 0; i < S::MI; ++i)
#pragma unroll
        for (int j = 0; j < S::NJ; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    // Stage t % PW_STAGES holds tile t; every iteration commits one group (empty past the last
    // tile), so at most PW_STAGES - 2 pending groups means tile t has landed.
    const int tiles = (R + PW_BK - 1) / PW_BK;
#pragma unroll
    for (int t = 0; t < PW_STAGES - 1; ++t) {
        if (t < tiles) issue(t * PW_BK, stages + t * S::STAGE_BYTES);
        lb::cp_async_commit();
    }
    for (int t = 0; t < tiles; ++t) {
        lb::cp_async_wait_group<PW_STAGES - 2>();
        __syncthreads();  // tile t is in for every thread, and every warp is done with tile t - 1
        const int next = t + PW_STAGES - 1;
        if (next < tiles) issue(next * PW_BK, stages + (next % PW_STAGES) * S::STAGE_BYTES);
        lb::cp_async_commit();
        const unsigned sa = lb::smem_addr(stages + (t % PW_STAGES) * S::STAGE_BYTES);
        const unsigned sb = sa + S::A_BYTES;
#pragma unroll
        for (int ks = 0; ks < 2; ++ks) {  // two k16 steps a stage
            unsigned af[S::MI][4], bf[S::NJ / 2][4];
            // A: lanes 0-15 address rows 0-15 at k 0-7, lanes 16-31 the same rows at k 8-15.
#pragma unroll
            for (int i = 0; i < S::MI; ++i)
                lb::ldmatrix_x4(af[i], sa + a_at(wm * 16 * S::MI + 16 * i + (lane & 15), 32 * ks + (lane >> 4) * 16));
            // B: lanes 0-15 address rows k 0-15 at columns 0-7 of a 16-column pair of n8 blocks,
            // lanes 16-31 the same rows at columns 8-15; regs 0, 1 are the first block's fragment.
#pragma unroll
            for (int j = 0; j < S::NJ / 2; ++j)
                lb::ldmatrix_x4_trans(bf[j], sb + b_at(16 * ks + (lane & 15),
                                                        2 * (wn * 8 * S::NJ + 16 * j + ((lane >> 4) << 3))));
#pragma unroll
            for (int i = 0; i < S::MI; ++i) {
#pragma unroll
                for (int j = 0; j < S::NJ; ++j) {
                    const unsigned pair[2] = {bf[j >> 1][2 * (j & 1)], bf[j >> 1][2 * (j & 1) + 1]};
                    lb::Mma<T>::run(acc[i][j], af[i], pair);
                }
            }
        }
    }

    // The tile goes out through shared memory, so that each row leaves as whole-chunk stores of
    // consecutive columns (a fragment holds column pairs of eight rows: 16 bytes a row per warp
    // store).  acc[i][j][0..1]: row g, columns 2c and 2c + 1 of the 16 x 8 tile (i, j); [2..3]:
    // row g + 8.  The tile's rows are 256 bytes (BM / 4 KiB in all), swizzled by b_at: a warp's
    // pair stores (eight rows at one granule) and the chunk reads of a row each hit eight bank groups.
    lb::cp_async_wait_group<0>();
    __syncthreads();  // every warp is done with the last stage: its memory takes the tile
    const int g = lane >> 2, c = lane & 3;
    float col_bias[S::NJ][2];  // bias by column (one image: a column is its output channel)
#pragma unroll
    for (int j = 0; j < S::NJ; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int col = j0 + wn * 8 * S::NJ + 8 * j + 2 * c + e;
            col_bias[j][e] = bias_by == 2 && col < columns ? lb::to_float(bias[col]) : 0.0f;
        }
#pragma unroll
    for (int i = 0; i < S::MI; ++i) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int row = wm * 16 * S::MI + 16 * i + g + 8 * half, m = m0 + row;
            const float row_bias = bias_by == 1 && m < M ? lb::to_float(bias[m]) : 0.0f;
#pragma unroll
            for (int j = 0; j < S::NJ; ++j)
                *reinterpret_cast<unsigned*>(stages + b_at(row, 2 * (wn * 8 * S::NJ + 8 * j + 2 * c))) =
                    pack_pair<T>(acc[i][j][2 * half] + row_bias + col_bias[j][0],
                                 acc[i][j][2 * half + 1] + row_bias + col_bias[j][1]);
        }
    }
    __syncthreads();
    // BM rows x ROW_CHUNKS chunks: chunk tid % ROW_CHUNKS of rows tid / ROW_CHUNKS + ROW_STEP k.
    // HW is a multiple of VEC, so a chunk is whole or past the edge.
#pragma unroll
    for (int k = 0; k < BM / ROW_STEP; ++k) {
        const int row = tid / ROW_CHUNKS + ROW_STEP * k, m = m0 + row;
        if (m < M && col_ok)
            *reinterpret_cast<Store*>(yi + static_cast<long long>(m) * HW) =
                *reinterpret_cast<const Store*>(stages + b_at(row, chunk * CHUNK));
    }
}
