// Implicit GEMM for convolution and fully connected layers.
//
//   out[m][n] = sum_k A[m][k] * B[n][k] (+ bias[n])
//
// m is an output pixel (image, oh, ow), n an output channel, k a weight element in the weight's
// memory order; B is the weight itself ([N][K], row-major), and A is gathered from the input on
// the fly.  A table built once per layer (ktab[k] = {input offset of k, kh * dilation_h,
// kw * dilation_w, 0}) turns k into an input address without divisions, dilation included; x's
// strides make the same code serve NCHW and NHWC.  A linear layer is the 1x1 case on a 1x1 image.
//
// Grouped convolution (GROUPED = true; the plain instantiation has none of this): one GEMM per
// group, blockIdx.z = split * groups + group.  N and K are one group's; the group's input
// channels, weight rows, output channels and bias are fixed offsets from the first group's, set
// once per block (enter_group), so the k loop is the plain one.
//
// Block tile 128 x 128, k in tiles of 64 bytes (16 fp32 or 32 fp16/bf16 values).
// Both operands sit in shared memory as [row][k], 64-byte rows with the four 16-byte chunks of a
// row swizzled (smem_at): eight rows of one chunk, as ldmatrix and the FFMA kernel's 16-byte loads
// read them, and two whole rows, as the 16-byte cp.async writes fill them, each hit all 32 banks
// once.  (Padded 80-byte rows kept the reads conflict-free but not the writes.)  Stages in
// dynamic shared memory: while one tile is multiplied the next ones are in flight (cp.async for
// 16-byte chunks and for fp32 elements, registers for 16-bit elements).
//
// igemm_simt: fp32 FFMA, 256 threads, each an 8 x 8 block of the tile.
// igemm_mma : tensor cores through mma.sync (fp16, bf16, and fp32 data as tf32), fp32
//             accumulators; 4 warps as 2 x 2, each warp 64 x 64 (8 fragment loads per 32 MMAs),
//             the layout of cuDNN's own mma.sync kernel for L2 fp16 on the H100.
// Split-K: split z takes k in [z * k_split, (z + 1) * k_split) and writes fp32 partial sums
// to ws[z][m][n] (n over all output channels); splitk_reduce adds them up in a fixed order
// (deterministic).
#include "layerbench_common.cuh"

namespace {

constexpr int BM = 128;
constexpr int BN = 128;
constexpr int SIMT_THREADS = 256;
constexpr int MMA_THREADS = 128;
constexpr int TILE_BYTES = 64;
constexpr int ROW_BYTES = 64;
constexpr int STAGE_BYTES = (BM + BN) * ROW_BYTES;
// k tiles in shared memory at once: 64 KiB a block, two blocks an SM.  (igemm_simt: with 3, 5
// or 6, ptxas spilled at its 128 registers.)
constexpr int STAGES = 4;
constexpr int FAR = -(1 << 29);  // an (ih, iw) origin that no kernel offset brings in bounds

// Byte offset of byte `byte` of row `row` in a stage's operand: 16-byte chunk c of the row sits
// in slot c ^ ((row / 2) % 4), so 8 consecutive rows use all 8 slots of two 128-byte bank lines,
// and rows 8 apart share the swizzle (loops over such rows take one smem_at plus a stride).
// Written as chunk start + byte in chunk so that a constant byte folds into an immediate offset.
__device__ __forceinline__ int smem_at(int row, int byte) {
    return row * ROW_BYTES + ((byte & ~15) ^ (((row >> 1) & 3) << 4)) + (byte & 15);
}

template <typename T>
struct Problem {
    const T* x;
    const T* w;
    const int4* ktab;  // {input offset, kh * dil_h, kw * dil_w, 0}; padded (kh = FAR) to a multiple of 32, plus 32
    int M, N, K;
    int OHW, OW, H, W, stride_h, stride_w, pad_h, pad_w;
    long long xsN, xsH, xsW;
    long long x_off;  // where the block's group of input channels starts (0 but when grouped)
    bool b_vec;  // weight rows can be moved in 16-byte chunks
};

// Where output pixel m reads its window: input offset of (ih0, iw0) and the origin itself.
template <typename T>
__device__ __forceinline__ void pixel_origin(const Problem<T>& p, int m, long long& base,
                                             int& ih0, int& iw0) {
    if (m < p.M) {
        const int img = m / p.OHW;
        const int r = m - img * p.OHW;
        const int oh = r / p.OW;
        const int ow = r - oh * p.OW;
        ih0 = oh * p.stride_h - p.pad_h;
        iw0 = ow * p.stride_w - p.pad_w;
        base = p.x_off + img * p.xsN + ih0 * p.xsH + iw0 * p.xsW;
    } else {
        ih0 = FAR;
        iw0 = FAR;
        base = 0;
    }
}

template <typename T>
__device__ __forceinline__ bool in_image(const Problem<T>& p, int ih, int iw) {
    return static_cast<unsigned>(ih) < static_cast<unsigned>(p.H) &&
           static_cast<unsigned>(iw) < static_cast<unsigned>(p.W);
}

template <typename T>
__device__ __forceinline__ unsigned short raw16(const T* ptr) {
    return __ldg(reinterpret_cast<const unsigned short*>(ptr));
}

// Moves one k-tile of A and B into a shared-memory stage with NT threads.  issue() starts the
// global reads (cp.async, or loads into registers), store() puts the register part into shared
// memory.
template <typename T, bool AVEC, int NT>
struct TileLoader {
    static constexpr int ES = sizeof(T);
    static constexpr int KT = TILE_BYTES / ES;  // k values per tile
    static constexpr int VEC = 16 / ES;         // k values per 16-byte chunk
    static constexpr int CHUNKS = TILE_BYTES / 16;  // 16-byte chunks per row
    static constexpr int VROWS = NT / CHUNKS;       // rows one vector pass covers
    // Element-wise paths take pairs of k values.  fp32 elements go by 4-byte cp.async; 16-bit
    // ones are staged in registers, packed in pairs.
    static constexpr int A_LANES = NT / BM;            // threads per A row
    static constexpr int A_WORDS = KT / 2 / A_LANES;   // k pairs per thread
    static constexpr int PAIRS = KT / 2;               // k pairs per B row
    static constexpr int B_ROWS_PER_PASS = NT / PAIRS;
    static constexpr int B_PASSES = BN / B_ROWS_PER_PASS;
    static_assert(NT % BM == 0 && BM % VROWS == 0 && BN % VROWS == 0 && NT % PAIRS == 0, "tiling");
    static_assert(VROWS % 8 == 0 && B_ROWS_PER_PASS % 8 == 0, "a thread's rows share the swizzle");

    // A, vector path: BM / VROWS rows per thread, chunk column tid % CHUNKS.
    // A, element path: row tid % BM, k pairs 2 * (tid / BM) + 2 * A_LANES * j.
    static constexpr int AROWS = AVEC ? BM / VROWS : 1;
    long long a_base[AROWS];
    int a_ih0[AROWS], a_iw0[AROWS];
    unsigned a_stage[A_WORDS];
    unsigned b_stage[B_PASSES];
    // Vector path: the k-table entry of the next tile's chunk, loaded one tile ahead so that its
    // latency hides behind a multiply instead of stalling the address computation.  Tiles are
    // issued in order, and the table has a spare tile of rows for the read past the last one.
    // Not in the 256-thread FFMA kernel: at its 128 registers the extra entry spills.
    static constexpr bool PREFETCH = AVEC && NT <= 128;
    int4 e_next;

    __device__ __forceinline__ void init(const Problem<T>& p, int m0, int kbeg, int tid) {
#pragma unroll
        for (int j = 0; j < AROWS; ++j) {
            const int row = AVEC ? tid / CHUNKS + VROWS * j : (tid & (BM - 1));
            pixel_origin(p, m0 + row, a_base[j], a_ih0[j], a_iw0[j]);
        }
        if constexpr (PREFETCH) e_next = __ldg(p.ktab + kbeg + (tid % CHUNKS) * VEC);
    }

    __device__ __forceinline__ void issue(const Problem<T>& p, int n0, int k0,
                                          unsigned char* sa, unsigned char* sb, int tid) {
        // ---- A
        if constexpr (AVEC) {
            const int chunk = tid % CHUNKS;
            int4 e;
            if constexpr (PREFETCH) {
                e = e_next;
                e_next = __ldg(p.ktab + k0 + KT + chunk * VEC);
            } else {
                e = __ldg(p.ktab + k0 + chunk * VEC);
            }
            const unsigned dst = lb::smem_addr(sa + smem_at(tid / CHUNKS, chunk * 16));
#pragma unroll
            for (int j = 0; j < AROWS; ++j) {
                const bool ok = in_image(p, a_ih0[j] + e.y, a_iw0[j] + e.z);
                const T* src = ok ? p.x + (a_base[j] + e.x) : p.x;
                lb::cp_async16_l1(dst + j * VROWS * ROW_BYTES, src, ok);
            }
        } else {
            const int q = tid / BM;
#pragma unroll
            for (int j = 0; j < A_WORDS; ++j) {
                const int kk = 2 * A_LANES * j + 2 * q;
                unsigned v[2];
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int4 e = __ldg(p.ktab + k0 + kk + h);
                    const bool ok = in_image(p, a_ih0[0] + e.y, a_iw0[0] + e.z);
                    const T* src = p.x + (a_base[0] + e.x);
                    if constexpr (ES == 4) {
                        lb::cp_async4(lb::smem_addr(sa + smem_at(tid & (BM - 1), (kk + h) * 4)),
                                      ok ? src : p.x, ok);
                    } else {
                        v[h] = ok ? raw16(src) : 0u;
                    }
                }
                if constexpr (ES == 2) a_stage[j] = v[0] | (v[1] << 16);
            }
        }
        // ---- B
        if (p.b_vec) {
            const int chunk = tid % CHUNKS;
            const int k = k0 + chunk * VEC;
            const unsigned dst = lb::smem_addr(sb + smem_at(tid / CHUNKS, chunk * 16));
#pragma unroll
            for (int j = 0; j < BN / VROWS; ++j) {
                const int n = n0 + tid / CHUNKS + VROWS * j;
                const bool ok = n < p.N && k < p.K;
                const T* src = ok ? p.w + (static_cast<long long>(n) * p.K + k) : p.w;
                lb::cp_async16(dst + j * VROWS * ROW_BYTES, src, ok);
            }
        } else {
            const int k = k0 + 2 * (tid % PAIRS);
            const unsigned dst = lb::smem_addr(sb + smem_at(tid / PAIRS, (k - k0) * 4));
#pragma unroll
            for (int j = 0; j < B_PASSES; ++j) {
                const int n = n0 + tid / PAIRS + B_ROWS_PER_PASS * j;
                const T* src = p.w + (static_cast<long long>(n) * p.K + k);
                unsigned v[2];
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const bool ok = n < p.N && k + h < p.K;
                    if constexpr (ES == 4) {
                        lb::cp_async4(dst + j * B_ROWS_PER_PASS * ROW_BYTES + h * 4, ok ? src + h : p.w, ok);
                    } else {
                        v[h] = ok ? raw16(src + h) : 0u;
                    }
                }
                if constexpr (ES == 2) b_stage[j] = v[0] | (v[1] << 16);
            }
        }
    }

    __device__ __forceinline__ void store(const Problem<T>& p, unsigned char* sa,
                                          unsigned char* sb, int tid) {
        if constexpr (ES == 2) {
            if constexpr (!AVEC) {
                const int row = tid & (BM - 1);
                const int q = tid / BM;
#pragma unroll
                for (int j = 0; j < A_WORDS; ++j) {
                    const int kk = 2 * A_LANES * j + 2 * q;
                    *reinterpret_cast<unsigned*>(sa + smem_at(row, kk * 2)) = a_stage[j];
                }
            }
            if (!p.b_vec) {
                unsigned char* dst = sb + smem_at(tid / PAIRS, 4 * (tid % PAIRS));
#pragma unroll
                for (int j = 0; j < B_PASSES; ++j)
                    *reinterpret_cast<unsigned*>(dst + j * B_ROWS_PER_PASS * ROW_BYTES) = b_stage[j];
            }
        }
    }
};

// Output offset of pixel m (image, oh, ow) for channel 0.
__device__ __forceinline__ long long out_base(int m, int OHW, int OW, long long osN,
                                              long long osH, long long osW) {
    const int img = m / OHW;
    const int r = m - img * OHW;
    const int oh = r / OW;
    const int ow = r - oh * OW;
    return img * osN + oh * osH + ow * osW;
}

// The k loop shared by the kernels: compute(stage) multiplies one staged tile.  Tile t lives in
// stage t % STAGES.  Every iteration commits one cp.async group (empty past the last tile), so
// waiting until at most STAGES - 2 - LAG groups are pending means tile t has landed.  ASYNC_READS:
// the tensor cores read the tiles through the async proxy (wgmma), so each thread fences its own
// writes to that proxy before the barrier that hands the tile over.  LAG: how many tiles'
// multiplies compute may leave running when it returns (asynchronous wgmma batches, waited for
// down to LAG); the loads then run STAGES - 1 - LAG tiles ahead, so that the stage an iteration
// refills is one whose multiply has finished.
template <typename T, bool AVEC, int NT, bool ASYNC_READS = false, int LAG = 0, typename Compute>
__device__ __forceinline__ void k_loop(const Problem<T>& p, unsigned char* smem, int m0, int n0,
                                       int kbeg, int kend, Compute&& compute) {
    static_assert(LAG >= 0 && STAGES - 1 - LAG >= 1, "the loads must run at least one tile ahead");
    constexpr int AHEAD = STAGES - 1 - LAG;
    typedef TileLoader<T, AVEC, NT> Loader;
    const int tid = threadIdx.x;
    Loader ld;
    ld.init(p, m0, kbeg, tid);
    const int ntiles = (kend - kbeg + Loader::KT - 1) / Loader::KT;
    if (ntiles <= 0) return;
    auto stage = [smem](int t) { return smem + (t % STAGES) * STAGE_BYTES; };
#pragma unroll
    for (int t = 0; t < AHEAD; ++t) {
        if (t < ntiles) {
            unsigned char* s = stage(t);
            ld.issue(p, n0, kbeg + t * Loader::KT, s, s + BM * ROW_BYTES, tid);
            ld.store(p, s, s + BM * ROW_BYTES, tid);
        }
        lb::cp_async_commit();
    }
    for (int t = 0; t < ntiles; ++t) {
        lb::cp_async_wait_group<AHEAD - 1>();
        if constexpr (ASYNC_READS) asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        // Tile t is complete for every thread, and every warp is done with tile t - 1 - LAG, whose
        // stage the next issue refills.
        __syncthreads();
        const int next = t + AHEAD;
        unsigned char* s = stage(next);
        const bool more = next < ntiles;
        if (more) ld.issue(p, n0, kbeg + next * Loader::KT, s, s + BM * ROW_BYTES, tid);
        lb::cp_async_commit();
        unsigned char* cur = stage(t);
        compute(cur, cur + BM * ROW_BYTES);
        // Register-staged parts land after the multiply: their loads had it to complete.
        if (more) ld.store(p, s, s + BM * ROW_BYTES, tid);
    }
}

// Grouped convolution: the block's group starts x_off into x (added to each row's base, which
// is in a register anyway), and the pointers are moved to it in two steps, the weight before
// the k loop and the outputs after it, so that no moved pointer is live across the loop (where
// the plain kernels already use every register).

// The split of K this block sums.
template <bool GROUPED>
__device__ __forceinline__ int split_of(int groups) {
    return GROUPED ? blockIdx.z / groups : blockIdx.z;
}

// x_off: x_group elements per group; the weight moves by N rows of K.
template <bool GROUPED, typename T>
__device__ __forceinline__ long long group_inputs(const T*& w, int N, int K, int groups,
                                                  long long x_group) {
    if constexpr (GROUPED) {
        const int g = blockIdx.z % groups;
        w += static_cast<long long>(g) * N * K;
        return g * x_group;
    } else {
        return 0;
    }
}

// The output by N channels, the bias by N, ws by N columns (its rows hold groups * N: ws_ld).
template <bool GROUPED, typename T>
__device__ __forceinline__ void group_outputs(const T*& bias, T*& out, float*& ws, int N, int groups,
                                              long long osC) {
    if constexpr (GROUPED) {
        const int g = blockIdx.z % groups;
        out += static_cast<long long>(g) * N * osC;
        if (bias != nullptr) bias += g * N;
        if (ws != nullptr) ws += g * N;
    }
}

}  // namespace

#define IGEMM_PARAMS(T)                                                                       \
    const T *x, const T *w, const T *bias, T *out, float *ws, const int4 *ktab, int M, int N, \
        int K, int OHW, int OW, int H, int W, int stride_h, int stride_w, int pad_h,          \
        int pad_w, long long xsN, long long xsH, long long xsW, long long osN, long long osC, \
        long long osH, long long osW, int k_split, int b_vec, int groups, long long x_group

#define IGEMM_PROBLEM(T)                                                                        \
    const long long x_off = group_inputs<GROUPED>(w, N, K, groups, x_group);                   \
    Problem<T> p{x, w, ktab, M, N, K, OHW, OW, H, W, stride_h, stride_w, pad_h, pad_w, xsN, xsH, \
                 xsW, x_off, b_vec != 0}

#define IGEMM_GROUP_OUTPUTS                                   \
    group_outputs<GROUPED>(bias, out, ws, N, groups, osC);    \
    const int split = split_of<GROUPED>(groups);              \
    const int ws_ld = GROUPED ? groups * N : N; /* ws's row pitch */

template <bool AVEC, bool GROUPED>
__global__ void __launch_bounds__(SIMT_THREADS, 2) igemm_simt(IGEMM_PARAMS(float)) {
    extern __shared__ __align__(128) unsigned char smem[];  // STAGES * STAGE_BYTES
    IGEMM_PROBLEM(float);
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int kbeg = split_of<GROUPED>(groups) * k_split;
    const int kend = min(K, kbeg + k_split);
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;

    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

    // Rows ty + 16 i (tx + 16 j) share the swizzle of row ty (tx): one smem_at per chunk, and
    // the rows are immediate offsets.
    k_loop<float, AVEC, SIMT_THREADS>(p, smem, m0, n0, kbeg, kend, [&](unsigned char* sa, unsigned char* sb) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {  // four 4-value chunks of k
            const unsigned char* as = sa + smem_at(ty, 16 * c);
            const unsigned char* bs = sb + smem_at(tx, 16 * c);
            float4 b[8];
#pragma unroll
            for (int j = 0; j < 8; ++j)
                b[j] = *reinterpret_cast<const float4*>(bs + 16 * j * ROW_BYTES);
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const float4 a = *reinterpret_cast<const float4*>(as + 16 * i * ROW_BYTES);
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    acc[i][j] = fmaf(a.x, b[j].x, acc[i][j]);
                    acc[i][j] = fmaf(a.y, b[j].y, acc[i][j]);
                    acc[i][j] = fmaf(a.z, b[j].z, acc[i][j]);
                    acc[i][j] = fmaf(a.w, b[j].w, acc[i][j]);
                }
            }
        }
    });

    IGEMM_GROUP_OUTPUTS
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int m = m0 + ty + 16 * i;
        if (m >= M) continue;
        if (ws != nullptr) {
            float* dst = ws + (static_cast<long long>(split) * M + m) * ws_ld;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const int n = n0 + tx + 16 * j;
                if (n < N) dst[n] = acc[i][j];
            }
        } else {
            const long long ob = out_base(m, OHW, OW, osN, osH, osW);
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const int n = n0 + tx + 16 * j;
                if (n < N) out[ob + n * osC] = acc[i][j] + (bias != nullptr ? bias[n] : 0.0f);
            }
        }
    }
}

template <typename T, bool AVEC, bool GROUPED>
__global__ void __launch_bounds__(MMA_THREADS, 2) igemm_mma(IGEMM_PARAMS(T)) {
    extern __shared__ __align__(128) unsigned char smem[];  // STAGES * STAGE_BYTES
    IGEMM_PROBLEM(T);
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int kbeg = split_of<GROUPED>(groups) * k_split;
    const int kend = min(K, kbeg + k_split);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = warp >> 1, wn = warp & 1;  // warp tile: rows wm * 64, columns wn * 64

    float acc[4][8][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

    // ldmatrix row addresses (bytes within a stage) for this lane, per 32-byte k step ks; rows
    // 16 further on share the swizzle, so fragment i (pair pr) is 16 i (16 pr) rows further.
    // A: matrices (rows 0-7, k-chunk 0), (rows 8-15, chunk 0), (rows 0-7, chunk 1), (8-15, 1).
    const int a_row = wm * 64 + (lane & 15), a_chunk = lane >> 4;
    const int a_off[2] = {smem_at(a_row, a_chunk * 16), smem_at(a_row, 32 + a_chunk * 16)};
    // B: matrices (n 0-7, chunk 0), (n 0-7, chunk 1), (n 8-15, chunk 0), (n 8-15, chunk 1).
    const int b_row = wn * 64 + ((lane >> 4) << 3) + (lane & 7), b_chunk = (lane >> 3) & 1;
    const int b_off[2] = {smem_at(b_row, b_chunk * 16), smem_at(b_row, 32 + b_chunk * 16)};

    k_loop<T, AVEC, MMA_THREADS>(p, smem, m0, n0, kbeg, kend, [&](unsigned char* sa, unsigned char* sb) {
        const unsigned a_addr = lb::smem_addr(sa), b_addr = lb::smem_addr(sb);
#pragma unroll
        for (int ks = 0; ks < 2; ++ks) {  // two 32-byte k steps per tile
            unsigned b[8][2];
#pragma unroll
            for (int pr = 0; pr < 4; ++pr) {
                unsigned r[4];
                lb::ldmatrix_x4(r, b_addr + b_off[ks] + pr * 16 * ROW_BYTES);
                b[2 * pr][0] = lb::Mma<T>::prepare(r[0]);
                b[2 * pr][1] = lb::Mma<T>::prepare(r[1]);
                b[2 * pr + 1][0] = lb::Mma<T>::prepare(r[2]);
                b[2 * pr + 1][1] = lb::Mma<T>::prepare(r[3]);
            }
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                unsigned a[4];
                lb::ldmatrix_x4(a, a_addr + a_off[ks] + i * 16 * ROW_BYTES);
#pragma unroll
                for (int r = 0; r < 4; ++r) a[r] = lb::Mma<T>::prepare(a[r]);
#pragma unroll
                for (int j = 0; j < 8; ++j) lb::Mma<T>::run(acc[i][j], a, b[j]);
            }
        }
    });

    // Accumulator layout: acc[i][j][0..1] at (row g, columns 2c, 2c+1), [2..3] at row g + 8,
    // with g = lane / 4, c = lane % 4, inside the 16 x 8 tile (i, j).
    IGEMM_GROUP_OUTPUTS
    const int g = lane >> 2, c = lane & 3;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int m = m0 + wm * 64 + i * 16 + g + half * 8;
            if (m >= M) continue;
            if (ws != nullptr) {
                float* dst = ws + (static_cast<long long>(split) * M + m) * ws_ld;
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    const int n = n0 + wn * 64 + j * 8 + 2 * c;
                    if (n < N) dst[n] = acc[i][j][2 * half];
                    if (n + 1 < N) dst[n + 1] = acc[i][j][2 * half + 1];
                }
            } else {
                const long long ob = out_base(m, OHW, OW, osN, osH, osW);
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    const int n = n0 + wn * 64 + j * 8 + 2 * c;
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        if (n + e < N) {
                            float v = acc[i][j][2 * half + e];
                            if (bias != nullptr) v += lb::to_float(bias[n + e]);
                            out[ob + (n + e) * osC] = lb::from_float<T>(v);
                        }
                    }
                }
            }
        }
    }
}

// Sums the split-K partials in split order, adds the bias, rounds once to T.  Walks the output
// in the order of its fastest dimension: channels when osC == 1 (NHWC, linear), else pixels.
template <typename T>
__global__ void __launch_bounds__(256) splitk_reduce(const float* ws, int splits, int M, int N,
                                                     const T* bias, T* out, int OHW, int OW,
                                                     long long osN, long long osC, long long osH,
                                                     long long osW) {
    const long long total = static_cast<long long>(M) * N;
    const bool n_fastest = osC == 1;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
         i += static_cast<long long>(gridDim.x) * blockDim.x) {
        int m, n;
        if (n_fastest) {
            m = static_cast<int>(i / N);
            n = static_cast<int>(i - static_cast<long long>(m) * N);
        } else {
            n = static_cast<int>(i / M);
            m = static_cast<int>(i - static_cast<long long>(n) * M);
        }
        const long long at = static_cast<long long>(m) * N + n;
        float s = 0.0f;
        for (int z = 0; z < splits; ++z) s += ws[z * total + at];
        if (bias != nullptr) s += lb::to_float(bias[n]);
        out[out_base(m, OHW, OW, osN, osH, osW) + n * osC] = lb::from_float<T>(s);
    }
}
