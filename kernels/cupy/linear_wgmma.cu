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

namespace wg {

constexpr int BM = 128;          // rows of y per block: two warpgroups of 64
constexpr int LINE = 128;        // bytes of one tile row: 64 16-bit elements of k
constexpr int BK = 64;
constexpr int THREADS = 256;
constexpr int CHUNKS = LINE / 16;  // 16-byte cp.async chunks per tile row

// Shared-memory matrix descriptor of a K-major tile with the 128-byte swizzle: start address in
// 16-byte units (bits 0-13), leading byte offset 16 B (bits 16-29; unused by this layout), 1024 B
// between groups of 8 rows (bits 32-45), swizzle mode 1 = 128 B (bits 62-63).
__device__ __forceinline__ unsigned long long descriptor(unsigned addr) {
    return static_cast<unsigned long long>((addr & 0x3FFFF) >> 4) | (1ull << 16) | (64ull << 32) | (1ull << 62);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
// cp.async writes shared memory through the generic proxy, wgmma reads it through the async proxy.
__device__ __forceinline__ void fence_async_proxy() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// D (64 x N, fp32, BN / 2 registers a thread) += A (64 x 16) * B (16 x N); both from descriptors,
// both K-major (no transpose), scale 1.
#define LB_WGMMA_N128(TY)                                                                                      \
asm volatile(                                                                                                  \
    "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                                               \
    "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " "                                               \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"                                   \
    " %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"                         \
    " %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"                         \
    " %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "                       \
    "%64, %65, p, 1, 1, 0, 0;\n}\n"                                                                            \
    : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),          \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),    \
      "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),  \
      "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),  \
      "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),  \
      "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),  \
      "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),  \
      "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])   \
    : "l"(a), "l"(b), "n"(1))

#define LB_WGMMA_N256(TY)                                                                                              \
asm volatile(                                                                                                          \
    "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"                                                                      \
    "wgmma.mma_async.sync.aligned.m64n256k16.f32." TY "." TY " "                                                       \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"                                           \
    " %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"                                 \
    " %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"                                 \
    " %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63,"                                 \
    " %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79,"                                 \
    " %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95,"                                 \
    " %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111,"                     \
    " %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, "               \
    "%128, %129, p, 1, 1, 0, 0;\n}\n"                                                                                  \
    : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),                  \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),            \
      "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),          \
      "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),          \
      "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),          \
      "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),          \
      "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),          \
      "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),          \
      "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),          \
      "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),          \
      "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),          \
      "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),          \
      "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),      \
      "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),  \
      "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),  \
      "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])   \
    : "l"(a), "l"(b), "n"(1))

template <typename T, int N> struct Wgmma;
template <> struct Wgmma<__half, 128> {
    static __device__ __forceinline__ void run(float (&d)[64], unsigned long long a, unsigned long long b) {
        LB_WGMMA_N128("f16");
    }
};
template <> struct Wgmma<__nv_bfloat16, 128> {
    static __device__ __forceinline__ void run(float (&d)[64], unsigned long long a, unsigned long long b) {
        LB_WGMMA_N128("bf16");
    }
};
template <> struct Wgmma<__half, 256> {
    static __device__ __forceinline__ void run(float (&d)[128], unsigned long long a, unsigned long long b) {
        LB_WGMMA_N256("f16");
    }
};
template <> struct Wgmma<__nv_bfloat16, 256> {
    static __device__ __forceinline__ void run(float (&d)[128], unsigned long long a, unsigned long long b) {
        LB_WGMMA_N256("bf16");
    }
};

template <typename T> struct Pair;
template <> struct Pair<__half> {
    using V = __half2;
    static __device__ __forceinline__ V make(float a, float b) { return __floats2half2_rn(a, b); }
};
template <> struct Pair<__nv_bfloat16> {
    using V = __nv_bfloat162;
    static __device__ __forceinline__ V make(float a, float b) { return __floats2bfloat162_rn(a, b); }
};

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
__global__ void __launch_bounds__(wg::THREADS, 1) linear_wgmma(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y,
             int M, int N, int K, int group_m) {
    using namespace wg;
    constexpr int A_BYTES = BM * LINE, STAGE_BYTES = (BM + BN) * LINE;
    extern __shared__ unsigned char smem[];
    // The swizzle pattern repeats every 8 lines (1024 B); the descriptors assume it starts there.
    const unsigned base = (lb::smem_addr(smem) + 1023u) & ~1023u;

    const int tiles_m = (M + BM - 1) / BM, tiles_n = (N + BN - 1) / BN;
    const int width = group_m * tiles_n;
    const int first_m = (blockIdx.x / width) * group_m;
    const int height = min(tiles_m - first_m, group_m);
    const int row0 = (first_m + (blockIdx.x % width) % height) * BM;
    const int col0 = ((blockIdx.x % width) / height) * BN;
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
            Wgmma<T, BN>::run(d, descriptor(a + ks * 32), descriptor(b + ks * 32));
        wgmma_commit();
        if (kt + STAGES - 2 < k_tiles) load(kt + STAGES - 2);
        lb::cp_async_commit();
        wgmma_wait<1>();
    }
    wgmma_wait<0>();

    // Accumulator layout (per warp, as mma.sync's m16n8 tiles side by side): register 4j + 2h + e
    // holds row 16 * warp + lane / 4 + 8h, column 8j + 2 * (lane % 4) + e.
    const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
    const int row = row0 + group * 64 + warp * 16 + lane / 4;
    const bool pairs = (N % 2) == 0;  // two columns as one aligned 4-byte store
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
        const int col = col0 + j * 8 + 2 * (lane % 4);
        if (col >= N) continue;
        const bool both = col + 1 < N;
        const float b0 = bias ? lb::to_float(bias[col]) : 0.f;
        const float b1 = bias && both ? lb::to_float(bias[col + 1]) : 0.f;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = row + 8 * h;
            if (r >= M) continue;
            T* out = y + static_cast<long long>(r) * N + col;
            const float v0 = d[4 * j + 2 * h] + b0, v1 = d[4 * j + 2 * h + 1] + b1;
            if (pairs && both) {
                *reinterpret_cast<typename Pair<T>::V*>(out) = Pair<T>::make(v0, v1);
            } else {
                out[0] = lb::from_float<T>(v0);
                if (both) out[1] = lb::from_float<T>(v1);
            }
        }
    }
}
