// ReLU, y = max(x, 0), on the bit patterns: a set sign bit becomes +0 unless the value is NaN,
// which passes through as torch.relu passes it.  Works in place (y == x).
//
// When both pointers are 16-byte aligned each thread moves UNROLL 16-byte vectors per step of
// a grid-stride loop, all loaded before any is stored (64 bytes in flight per thread, 16 KiB
// per block of 256); block 0 does the last n % VEC elements.  Otherwise a scalar grid-stride
// loop.
#include "layerbench_common.cuh"

namespace {

template <typename T>
__device__ __forceinline__ typename lb::Bits<T>::U relu_bits(typename lb::Bits<T>::U u) {
    return ((u & lb::Bits<T>::SIGN) && !lb::is_nan_bits<T>(u)) ? 0 : u;
}

template <typename T>
__device__ __forceinline__ uint4 relu_vec(uint4 v) {
    typedef typename lb::Bits<T>::U U;
    constexpr int LANES = 16 / sizeof(U);
    union {
        uint4 v;
        U u[LANES];
    } p;
    p.v = v;
#pragma unroll
    for (int i = 0; i < LANES; ++i) p.u[i] = relu_bits<T>(p.u[i]);
    return p.v;
}

}  // namespace

constexpr int UNROLL = 4;  // must match relu.py

template <typename T>
__global__ void __launch_bounds__(256) relu(const T* x, T* y, long long n) {
    typedef typename lb::Bits<T>::U U;
    constexpr int VEC = 16 / sizeof(T);
    const U* xs = reinterpret_cast<const U*>(x);
    U* ys = reinterpret_cast<U*>(y);
    const bool aligned = ((reinterpret_cast<unsigned long long>(x) |
                           reinterpret_cast<unsigned long long>(y)) & 15) == 0;
    if (aligned) {
        const long long nvec = n / VEC;
        const uint4* xv = reinterpret_cast<const uint4*>(x);
        uint4* yv = reinterpret_cast<uint4*>(y);
        // Grid-stride over chunks of blockDim * UNROLL vectors; the launcher sizes the grid so
        // that one pass covers the tensor (each block then moves 16 KiB once).
        const long long step = static_cast<long long>(gridDim.x) * blockDim.x * UNROLL;
        for (long long first = static_cast<long long>(blockIdx.x) * blockDim.x * UNROLL + threadIdx.x;
             first < nvec; first += step) {
            uint4 v[UNROLL];
#pragma unroll
            for (int j = 0; j < UNROLL; ++j) {
                const long long i = first + static_cast<long long>(j) * blockDim.x;
                if (i < nvec) v[j] = xv[i];
            }
            // Each index is read and written by the same thread, read first: safe in place.
#pragma unroll
            for (int j = 0; j < UNROLL; ++j) {
                const long long i = first + static_cast<long long>(j) * blockDim.x;
                if (i < nvec) yv[i] = relu_vec<T>(v[j]);
            }
        }
        const long long tail = nvec * VEC + threadIdx.x;
        if (blockIdx.x == 0 && tail < n) ys[tail] = relu_bits<T>(xs[tail]);
        return;
    }
    const long long nthreads = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += nthreads)
        ys[i] = relu_bits<T>(xs[i]);
}
