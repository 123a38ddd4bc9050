// Helpers shared by the layerbench CUDA kernels: element types, bit tricks, and the sm_80+
// asynchronous-copy / ldmatrix / mma.sync wrappers (inline PTX, so no <mma.h> under NVRTC).
//
// The Python side pastes this file in place of its #include line before compiling (see
// _build.py), so CuPy's kernel cache, which hashes the source text, sees every edit here.
#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>

namespace lb {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

// Bit patterns of the storage types.  ReLU and max pooling work on these integers (and on
// instructions without .ftz), which makes them exact whatever the compiler's flush-to-zero
// setting (CuPy always adds -ftz=true).
template <typename T> struct Bits;
template <> struct Bits<float> {
    typedef unsigned int U;
    static constexpr U SIGN = 0x80000000u;
    static constexpr U INF = 0x7f800000u;  // exponent all ones, mantissa zero
};
template <> struct Bits<__half> {
    typedef unsigned short U;
    static constexpr U SIGN = 0x8000u;
    static constexpr U INF = 0x7c00u;
};
template <> struct Bits<__nv_bfloat16> {
    typedef unsigned short U;
    static constexpr U SIGN = 0x8000u;
    static constexpr U INF = 0x7f80u;
};

template <typename T>
__device__ __forceinline__ bool is_nan_bits(typename Bits<T>::U u) {
    return (u & static_cast<typename Bits<T>::U>(~Bits<T>::SIGN)) > Bits<T>::INF;
}

// Larger of a and b (bit patterns of T) as the hardware's max.NaN computes it (sm_80+): NaN if
// either is NaN, otherwise the larger value, bit for bit (no flush of subnormals: no .ftz).
template <typename T> __device__ __forceinline__ typename Bits<T>::U max_nan(typename Bits<T>::U a,
                                                                           typename Bits<T>::U b);
template <> __device__ __forceinline__ unsigned int max_nan<float>(unsigned int a, unsigned int b) {
    float r;
    asm("max.NaN.f32 %0, %1, %2;\n" : "=f"(r) : "f"(__uint_as_float(a)), "f"(__uint_as_float(b)));
    return __float_as_uint(r);
}
template <> __device__ __forceinline__ unsigned short max_nan<__half>(unsigned short a, unsigned short b) {
    unsigned short r;
    asm("max.NaN.f16 %0, %1, %2;\n" : "=h"(r) : "h"(a), "h"(b));
    return r;
}
template <> __device__ __forceinline__ unsigned short max_nan<__nv_bfloat16>(unsigned short a,
                                                                            unsigned short b) {
    unsigned short r;
    asm("max.NaN.bf16 %0, %1, %2;\n" : "=h"(r) : "h"(a), "h"(b));
    return r;
}

// ---------------------------------------------------------------- sm_80+ data movement

__device__ __forceinline__ unsigned smem_addr(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// Ask L2 for the line holding p, with no register and no wait: a memory-bound kernel keeps more
// bytes in flight than its loads' registers allow.
__device__ __forceinline__ void prefetch_l2(const void* p) {
    asm volatile("prefetch.global.L2 [%0];\n" :: "l"(p));
}

// Ask the copy engine to bring `bytes` (a multiple of 16) from p (16-byte aligned) into L2: one
// instruction for a whole span, no register, no wait.  Hopper on.
__device__ __forceinline__ void bulk_prefetch_l2(const void* p, unsigned bytes) {
#if __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" :: "l"(p), "r"(bytes) : "memory");
#endif
}

// 16-byte global->shared copy that bypasses L1; src_bytes 0 writes zeros without reading.
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, bool valid) {
    const int src_bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(dst), "l"(src), "r"(src_bytes) : "memory");
}

// 16-byte global->shared copy kept in L1: for data that neighbouring reads take again soon
// (an implicit GEMM reads each input pixel once per filter tap).
__device__ __forceinline__ void cp_async16_l1(unsigned dst, const void* src, bool valid) {
    const int src_bytes = valid ? 16 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(dst), "l"(src), "r"(src_bytes) : "memory");
}

// 8-byte global->shared copy (through L1: cp.async takes only 16-byte copies past it), for rows
// aligned to 8 bytes only.
__device__ __forceinline__ void cp_async8(unsigned dst, const void* src, bool valid) {
    const int src_bytes = valid ? 8 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n"
                 :: "r"(dst), "l"(src), "r"(src_bytes) : "memory");
}

// 4-byte global->shared copy (through L1), for element-wise gathers of fp32 data.
__device__ __forceinline__ void cp_async4(unsigned dst, const void* src, bool valid) {
    const int src_bytes = valid ? 4 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n"
                 :: "r"(dst), "l"(src), "r"(src_bytes) : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait_group() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void cp_async_wait_all() {
    asm volatile("cp.async.wait_all;\n" ::: "memory");
}

// Four 8x8 matrices of 16-bit elements (or 8x4 of 32-bit ones); lane i gives the address of
// row i % 8 of matrix i / 8.
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}

// As ldmatrix_x4, each matrix transposed: lane i gets elements 2 (i % 4) and 2 (i % 4) + 1 of
// column i / 4 of its matrix.  From rows of k (pixels or channels contiguous), that is the B
// fragment of mma.sync.
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}

// D = A * B + D for one 16x8 tile, fp32 accumulators.  A is 16 x 32 bytes (row), B is
// 32 bytes x 8 (col): k = 16 for 16-bit inputs, k = 8 for tf32.
template <typename T> struct Mma;

template <> struct Mma<__half> {
    static __device__ __forceinline__ void run(float (&d)[4], const unsigned (&a)[4],
                                               const unsigned (&b)[2]) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
            "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
    static __device__ __forceinline__ unsigned prepare(unsigned v) { return v; }
};

template <> struct Mma<__nv_bfloat16> {
    static __device__ __forceinline__ void run(float (&d)[4], const unsigned (&a)[4],
                                               const unsigned (&b)[2]) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
            "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
    static __device__ __forceinline__ unsigned prepare(unsigned v) { return v; }
};

// fp32 storage, TensorFloat-32 products: inputs are rounded to tf32 (nearest, ties away) first,
// which halves the error of letting the tensor core truncate them.
template <> struct Mma<float> {
    static __device__ __forceinline__ void run(float (&d)[4], const unsigned (&a)[4],
                                               const unsigned (&b)[2]) {
        asm volatile(
            "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
            "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
    static __device__ __forceinline__ unsigned prepare(unsigned v) {
        unsigned r;
        asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(__uint_as_float(v)));
        return r;
    }
};

}  // namespace lb
