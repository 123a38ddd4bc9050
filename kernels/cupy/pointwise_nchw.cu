// A 1x1 NCHW convolution (stride 1, no padding, one group) as one GEMM per image, on the tensors
// as they are:
//
//   y[n][m][p] = sum_r a[m][r] * x[n][r][p] (+ bias[m])
//
// a is the weight as the (K, C) matrix it is in memory (m an output channel, r an input channel);
// x[n] and y[n] are image n's (C, H*W) and (K, H*W) matrices, pixels contiguous.  The implicit
// GEMMs copy an NCHW input to channels_last first; here nothing is copied.
//
// Block tile: 128 output channels x 128 columns (below), reduction in stages of 32 input
// channels, three stages in flight (cp.async, 16-byte chunks; chunks past the edges are
// zero-filled, never read).  4 warps as 2 x 2, each 64 x 64 through mma.sync m16n8k16 (fp16,
// bf16) with fp32 accumulators; the tile is staged in shared memory for 16-byte stores.
//   A stage: 128 rows (output channels) of 64 bytes, k contiguous, swizzled as igemm.cu's tiles;
//            ldmatrix gives the A fragments.
//   B stage: 32 rows (input channels) of 256 bytes, pixels contiguous, as x holds them; chunk c
//            of row r sits in slot c ^ (r % 8), so the eight rows one ldmatrix.trans reads land
//            in eight different bank groups.  The transposed load gives the B fragments (k
//            pairs of one pixel) straight from rows of k.
// The columns j = n * HW + p number the batch's pixels through its images, so that a tile may
// span two images (H*W need not be a multiple of 128: 28 x 28 planes would leave a seventh of the
// tiles' columns idle); a 16-byte chunk of 8 columns lies in one image.
// The launcher guarantees C % 8 == 0 and H*W % 8 == 0 (whole 16-byte chunks, 16-byte aligned),
// fp16 or bf16, and fewer than 2^31 - 128 columns.
#include "layerbench_common.cuh"

namespace {

constexpr int PW_THREADS = 128;
constexpr int PW_BM = 128;  // output channels a block
constexpr int PW_BN = 128;  // columns (pixels of the batch) a block
constexpr int PW_BK = 32;   // input channels a stage
constexpr int PW_STAGES = 3;
constexpr int A_ROW = 64;   // bytes of an A row: PW_BK 16-bit values
constexpr int B_ROW = 256;  // bytes of a B row: PW_BN 16-bit values
constexpr int A_BYTES = PW_BM * A_ROW;
constexpr int STAGE_BYTES = A_BYTES + PW_BK * B_ROW;  // 16 KiB; three stages fit the default 48 KiB

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

}  // namespace

template <typename T>
__global__ void __launch_bounds__(PW_THREADS) pointwise_nchw(const T* __restrict__ a, const T* __restrict__ x,
                                                              const T* __restrict__ bias, T* __restrict__ y,
                                                              int M, int R, int HW, int columns, int has_bias) {
    extern __shared__ __align__(128) unsigned char stages[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp >> 1, wn = warp & 1;
    const int j0 = blockIdx.x * PW_BN, m0 = blockIdx.y * PW_BM;
    // Each thread loads and stores one chunk column (tid % 16) of the tile: its image and pixel.
    const int col = j0 + (tid & 15) * 8;
    const bool col_ok = col < columns;
    const long long image = col_ok ? col / HW : 0;
    const int p = col_ok ? col - static_cast<int>(image) * HW : 0;
    const T* xi = x + image * R * HW + p;
    T* yi = y + image * M * HW + p;

    // One stage: A 128 rows x 4 chunks and B 32 rows x 16 chunks, four of each a thread.
    auto issue = [&](int r0, unsigned char* s) {
        const int ac = tid & 3, r = r0 + ac * 8;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int row = (tid >> 2) + 32 * j, m = m0 + row;
            const bool ok = m < M && r < R;
            lb::cp_async16(lb::smem_addr(s + a_at(row, ac * 16)), ok ? a + static_cast<long long>(m) * R + r : a, ok);
        }
        const int bc = tid & 15;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const int row = (tid >> 4) + 8 * k;
            const bool ok = r0 + row < R && col_ok;
            lb::cp_async16(lb::smem_addr(s + A_BYTES + b_at(row, bc * 16)),
                           ok ? xi + static_cast<long long>(r0 + row) * HW : x, ok);
        }
    };

    float acc[4][8][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    // Stage t % PW_STAGES holds tile t; every iteration commits one group (empty past the last
    // tile), so at most PW_STAGES - 2 pending groups means tile t has landed.
    const int tiles = (R + PW_BK - 1) / PW_BK;
#pragma unroll
    for (int t = 0; t < PW_STAGES - 1; ++t) {
        if (t < tiles) issue(t * PW_BK, stages + t * STAGE_BYTES);
        lb::cp_async_commit();
    }
    for (int t = 0; t < tiles; ++t) {
        lb::cp_async_wait_group<PW_STAGES - 2>();
        __syncthreads();  // tile t is in for every thread, and every warp is done with tile t - 1
        const int next = t + PW_STAGES - 1;
        if (next < tiles) issue(next * PW_BK, stages + (next % PW_STAGES) * STAGE_BYTES);
        lb::cp_async_commit();
        const unsigned sa = lb::smem_addr(stages + (t % PW_STAGES) * STAGE_BYTES);
        const unsigned sb = sa + A_BYTES;
#pragma unroll
        for (int ks = 0; ks < 2; ++ks) {  // two k16 steps a stage
            unsigned af[4][4], bf[4][4];
            // A: lanes 0-15 address rows 0-15 at k 0-7, lanes 16-31 the same rows at k 8-15.
#pragma unroll
            for (int i = 0; i < 4; ++i)
                lb::ldmatrix_x4(af[i], sa + a_at(wm * 64 + 16 * i + (lane & 15), 32 * ks + (lane >> 4) * 16));
            // B: lanes 0-15 address rows k 0-15 at pixels 0-7 of a 16-pixel pair of n8 blocks,
            // lanes 16-31 the same rows at pixels 8-15; regs 0, 1 are the first block's fragment.
#pragma unroll
            for (int j = 0; j < 4; ++j)
                lb::ldmatrix_x4_trans(bf[j], sb + b_at(16 * ks + (lane & 15),
                                                        2 * (wn * 64 + 16 * j + ((lane >> 4) << 3))));
#pragma unroll
            for (int i = 0; i < 4; ++i) {
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    const unsigned b[2] = {bf[j >> 1][2 * (j & 1)], bf[j >> 1][2 * (j & 1) + 1]};
                    lb::Mma<T>::run(acc[i][j], af[i], b);
                }
            }
        }
    }

    // The tile goes out through shared memory, so that each row leaves as 16-byte stores of
    // consecutive pixels (a fragment holds pixel pairs of eight rows: 16 bytes a row per warp
    // store).  acc[i][j][0..1]: row g, pixels 2c and 2c + 1 of the 16 x 8 tile (i, j); [2..3]:
    // row g + 8.  The tile's rows are 256 bytes (32 KiB in all), swizzled by b_at: a warp's pair
    // stores (eight rows at one chunk) and the 16-byte reads of a row each hit eight bank groups.
    lb::cp_async_wait_group<0>();
    __syncthreads();  // every warp is done with the last stage: its memory takes the tile
    const int g = lane >> 2, c = lane & 3;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int row = wm * 64 + 16 * i + g + 8 * half, m = m0 + row;
            const float b = has_bias && m < M ? lb::to_float(bias[m]) : 0.0f;
#pragma unroll
            for (int j = 0; j < 8; ++j)
                *reinterpret_cast<unsigned*>(stages + b_at(row, 2 * (wn * 64 + 8 * j + 2 * c))) =
                    pack_pair<T>(acc[i][j][2 * half] + b, acc[i][j][2 * half + 1] + b);
        }
    }
    __syncthreads();
    // 128 rows x 16 chunks, 16 a thread: chunk tid % 16 of rows tid / 16 + 8 k.  H*W is a
    // multiple of 8, so a chunk is whole or past the edge.
    const int oc = tid & 15;
#pragma unroll
    for (int k = 0; k < 16; ++k) {
        const int row = (tid >> 4) + 8 * k, m = m0 + row;
        if (m < M && col_ok)
            *reinterpret_cast<uint4*>(yi + static_cast<long long>(m) * HW) =
                *reinterpret_cast<const uint4*>(stages + b_at(row, oc * 16));
    }
}
