// ReLU, y = max(x, 0), on the bit patterns: a set sign bit becomes +0 unless the value is NaN,
// which passes through as torch.relu passes it.  Works in place (y == x).
//
// 16-byte vector loads and stores when both pointers are 16-byte aligned, a scalar tail, and a
// grid-stride loop that keeps two vectors in flight per thread.
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

template <typename T>
__global__ void __launch_bounds__(256) relu(const T* x, T* y, long long n) {
    typedef typename lb::Bits<T>::U U;
    constexpr int VEC = 16 / sizeof(T);
    const long long tid = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    const long long nthreads = static_cast<long long>(gridDim.x) * blockDim.x;
    const U* xs = reinterpret_cast<const U*>(x);
    U* ys = reinterpret_cast<U*>(y);

    long long done = 0;  // elements handled by the vector loop
    const bool aligned = ((reinterpret_cast<unsigned long long>(x) |
                           reinterpret_cast<unsigned long long>(y)) & 15) == 0;
    if (aligned) {
        const long long nvec = n / VEC;
        const uint4* xv = reinterpret_cast<const uint4*>(x);
        uint4* yv = reinterpret_cast<uint4*>(y);
        // Both loads are issued before either store; in place, the two indices differ, so
        // the order is still safe.
        for (long long i = tid; i < nvec; i += 2 * nthreads) {
            const long long j = i + nthreads;
            const uint4 a = xv[i];
            uint4 b;
            if (j < nvec) b = xv[j];
            yv[i] = relu_vec<T>(a);
            if (j < nvec) yv[j] = relu_vec<T>(b);
        }
        done = nvec * VEC;
    }
    for (long long i = done + tid; i < n; i += nthreads) ys[i] = relu_bits<T>(xs[i]);
}
