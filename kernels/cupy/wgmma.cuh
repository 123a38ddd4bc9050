// Hopper's warpgroup MMA (wgmma, sm_90a) for the CuPy GEMMs: shared-memory matrix descriptors,
// the fence / commit / wait instructions, and D += A * B for 64 x N tiles with both operands in
// shared memory, K-major (fp32 accumulators, fp16 or bf16 operands).
#include "layerbench_common.cuh"

namespace wg {

// Shared-memory matrix descriptor of a K-major tile whose rows are one swizzle line each: start
// address in 16-byte units (bits 0-13), leading byte offset 16 B (bits 16-29; unused by these
// layouts), the bytes between groups of 8 rows (bits 32-45), the swizzle mode (bits 62-63).
// 128-byte rows, 128-byte swizzle (16-byte chunk c of row r at chunk c ^ (r % 8)): 1024 B a group.
__device__ __forceinline__ unsigned long long descriptor_128b(unsigned addr) {
    return static_cast<unsigned long long>((addr & 0x3FFFF) >> 4) | (1ull << 16) | (64ull << 32) | (1ull << 62);
}
// 64-byte rows, 64-byte swizzle (chunk c of row r at chunk c ^ ((r / 2) % 4)): 512 B a group.
__device__ __forceinline__ unsigned long long descriptor_64b(unsigned addr) {
    return static_cast<unsigned long long>((addr & 0x3FFFF) >> 4) | (1ull << 16) | (32ull << 32) | (2ull << 62);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
// cp.async and st.shared write shared memory through the generic proxy; wgmma and TMA stores read
// it through the async proxy: each writing thread fences before the barrier that hands it over.
__device__ __forceinline__ void fence_async_proxy() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// D (64 x N, fp32, N / 2 registers a thread) += A (64 x 16) * B (16 x N); both from descriptors,
// both K-major (no transpose), scale 1.  The accumulator's placeholders and operands come in
// halves of 64 registers, which the n128 form takes once and the n256 form twice; the n64 form
// takes the first 32 (its own lists below).
#define LB_WGMMA_REGS_LO                                                              \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"           \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31," \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47," \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"

#define LB_WGMMA_REGS_HI                                                                             \
    "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79,"                \
    "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95,"                \
    "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111,"    \
    "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"

#define LB_WGMMA_ACC_LO                                                                                     \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),         \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),   \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
    "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
    "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
    "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

#define LB_WGMMA_ACC_HI                                                                                             \
    "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),         \
    "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),         \
    "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),         \
    "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),         \
    "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),     \
    "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), \
    "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), \
    "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])

#define LB_WGMMA_REGS_32                                                    \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15," \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"

#define LB_WGMMA_ACC_32                                                                                     \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),         \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),   \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])

#define LB_WGMMA_N64(TY)                                        \
asm volatile(                                                   \
    "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                \
    "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " " \
    "{" LB_WGMMA_REGS_32 "}, %32, %33, p, 1, 1, 0, 0;\n}\n"     \
    : LB_WGMMA_ACC_32                                           \
    : "l"(a), "l"(b), "n"(1))

#define LB_WGMMA_N128(TY)                                        \
asm volatile(                                                    \
    "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                 \
    "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " " \
    "{" LB_WGMMA_REGS_LO "}, %64, %65, p, 1, 1, 0, 0;\n}\n"      \
    : LB_WGMMA_ACC_LO                                            \
    : "l"(a), "l"(b), "n"(1))

#define LB_WGMMA_N256(TY)                                                           \
asm volatile(                                                                       \
    "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"                                   \
    "wgmma.mma_async.sync.aligned.m64n256k16.f32." TY "." TY " "                    \
    "{" LB_WGMMA_REGS_LO ", " LB_WGMMA_REGS_HI "}, %128, %129, p, 1, 1, 0, 0;\n}\n" \
    : LB_WGMMA_ACC_LO, LB_WGMMA_ACC_HI                                              \
    : "l"(a), "l"(b), "n"(1))

// The operand type's name in the instruction: fp16 or bf16.
template <typename T> constexpr bool is_bf16 = false;
template <> constexpr bool is_bf16<__nv_bfloat16> = true;

template <typename T, int N> struct Wgmma;
template <typename T> struct Wgmma<T, 64> {
    static __device__ __forceinline__ void run(float (&d)[32], unsigned long long a, unsigned long long b) {
        if constexpr (is_bf16<T>) LB_WGMMA_N64("bf16"); else LB_WGMMA_N64("f16");
    }
};
template <typename T> struct Wgmma<T, 128> {
    static __device__ __forceinline__ void run(float (&d)[64], unsigned long long a, unsigned long long b) {
        if constexpr (is_bf16<T>) LB_WGMMA_N128("bf16"); else LB_WGMMA_N128("f16");
    }
};
template <typename T> struct Wgmma<T, 256> {
    static __device__ __forceinline__ void run(float (&d)[128], unsigned long long a, unsigned long long b) {
        if constexpr (is_bf16<T>) LB_WGMMA_N256("bf16"); else LB_WGMMA_N256("f16");
    }
};

// Output tile t of a tiles_m x tiles_n grid, in groups of group_m row tiles walked down each
// column of W tiles (so that the W tiles are reused from L2): its (row tile, column tile).
__device__ __forceinline__ int2 grouped_tile(int t, int tiles_m, int tiles_n, int group_m) {
    const int width = group_m * tiles_n;
    const int first_m = (t / width) * group_m;
    const int height = min(tiles_m - first_m, group_m);
    return make_int2(first_m + (t % width) % height, (t % width) / height);
}

template <typename T> struct Pair;
template <> struct Pair<__half> {
    using V = __half2;
    static __device__ __forceinline__ V make(float a, float b) { return __floats2half2_rn(a, b); }
};
template <> struct Pair<__nv_bfloat16> {
    using V = __nv_bfloat162;
    static __device__ __forceinline__ V make(float a, float b) { return __floats2bfloat162_rn(a, b); }
};

// Accumulator layout (per warp, as mma.sync's m16n8 tiles side by side): register 4j + 2h + e of
// the warpgroup whose 64 rows start at `row0` holds row row0 + 16 * warp + lane / 4 + 8h, column
// col0 + 8j + 2 * (lane % 4) + e.  Calls f(register, row, column) for each in-bounds pair's first
// element; `both`: the second column exists too.
template <int BN, typename F>
__device__ __forceinline__ void for_each_pair(int M, int N, int row0, int col0, F f) {
    const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
    const int row = row0 + warp * 16 + lane / 4;
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
        const int col = col0 + j * 8 + 2 * (lane % 4);
        if (col >= N) continue;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            if (row + 8 * h < M) f(4 * j + 2 * h, row + 8 * h, col, col + 1 < N);
        }
    }
}

// y (M x N, row-major) = accumulators + bias (may be null), rounded to T.
template <typename T, int BN>
__device__ __forceinline__ void store_tile(const float (&d)[BN / 2], T* __restrict__ y, const T* __restrict__ bias,
                                           int M, int N, int row0, int col0) {
    const bool pairs = (N % 2) == 0;  // two columns as one aligned 4-byte store
    for_each_pair<BN>(M, N, row0, col0, [&](int i, int r, int col, bool both) {
        const float v0 = d[i] + (bias ? lb::to_float(bias[col]) : 0.f);
        const float v1 = d[i + 1] + (bias && both ? lb::to_float(bias[col + 1]) : 0.f);
        T* out = y + static_cast<long long>(r) * N + col;
        if (pairs && both) {
            *reinterpret_cast<typename Pair<T>::V*>(out) = Pair<T>::make(v0, v1);
        } else {
            out[0] = lb::from_float<T>(v0);
            if (both) out[1] = lb::from_float<T>(v1);
        }
    });
}

// One split's fp32 partial sums (no bias) into its M x N slice of the split-K workspace.
template <int BN>
__device__ __forceinline__ void store_partials(const float (&d)[BN / 2], float* __restrict__ ws, int M, int N,
                                               int row0, int col0) {
    const bool pairs = (N % 2) == 0;  // two columns as one aligned 8-byte store
    for_each_pair<BN>(M, N, row0, col0, [&](int i, int r, int col, bool both) {
        float* out = ws + static_cast<long long>(r) * N + col;
        if (pairs && both) {
            *reinterpret_cast<float2*>(out) = make_float2(d[i], d[i + 1]);
        } else {
            out[0] = d[i];
            if (both) out[1] = d[i + 1];
        }
    });
}

}  // namespace wg
