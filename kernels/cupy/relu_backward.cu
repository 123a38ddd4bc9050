// ReLU backward, dx = (x <= 0) ? 0 : dy, on the bit patterns, as torch's threshold_backward
// computes it: -0, +0 and negative x give +0, positive x (and NaN x, which the forward passes
// through) pass dy on unchanged.  Selecting bits keeps it exact whatever -ftz says.
//
// When x, dy and dx are all 16-byte aligned each thread moves UNROLL 16-byte vectors of each per
// step of a grid-stride loop, every load issued before any store; block 0 does the last n % VEC
// elements.  Otherwise (a part of a training pass's flat buffer may start anywhere) a scalar
// grid-stride loop.
#include "layerbench_common.cuh"

namespace {

// True where the gradient passes: x > 0 or x is NaN (everything but -0, +0 and negatives).
template <typename T>
__device__ __forceinline__ bool passes_gradient(typename lb::Bits<T>::U x) {
    const bool below_or_zero = x == 0 || ((x & lb::Bits<T>::SIGN) && !lb::is_nan_bits<T>(x));
    return !below_or_zero;
}

template <typename T>
__device__ __forceinline__ typename lb::Bits<T>::U grad_bits(typename lb::Bits<T>::U x,
                                                             typename lb::Bits<T>::U dy) {
    return passes_gradient<T>(x) ? dy : 0;
}

template <typename T>
__device__ __forceinline__ uint4 grad_vec(uint4 x, uint4 dy) {
    typedef typename lb::Bits<T>::U U;
    constexpr int LANES = 16 / sizeof(U);
    union Pack {
        uint4 v;
        U u[LANES];
    };
    Pack px, pd;
    px.v = x;
    pd.v = dy;
#pragma unroll
    for (int i = 0; i < LANES; ++i) pd.u[i] = grad_bits<T>(px.u[i], pd.u[i]);
    return pd.v;
}

}  // namespace

constexpr int UNROLL = 4;  // must match relu_backward.py

template <typename T>
__global__ void __launch_bounds__(256) relu_backward(const T* x, const T* dy, T* dx, long long n) {
    typedef typename lb::Bits<T>::U U;
    constexpr int VEC = 16 / sizeof(T);
    const U* xs = reinterpret_cast<const U*>(x);
    const U* ds = reinterpret_cast<const U*>(dy);
    U* out = reinterpret_cast<U*>(dx);
    const bool aligned = ((reinterpret_cast<unsigned long long>(x) | reinterpret_cast<unsigned long long>(dy) |
                           reinterpret_cast<unsigned long long>(dx)) & 15) == 0;
    if (aligned) {
        const long long nvec = n / VEC;
        const uint4* xv = reinterpret_cast<const uint4*>(x);
        const uint4* dv = reinterpret_cast<const uint4*>(dy);
        uint4* ov = reinterpret_cast<uint4*>(dx);
        const long long step = static_cast<long long>(gridDim.x) * blockDim.x * UNROLL;
        for (long long first = static_cast<long long>(blockIdx.x) * blockDim.x * UNROLL + threadIdx.x;
             first < nvec; first += step) {
            uint4 a[UNROLL], b[UNROLL];
#pragma unroll
            for (int j = 0; j < UNROLL; ++j) {
                const long long i = first + static_cast<long long>(j) * blockDim.x;
                if (i < nvec) {
                    a[j] = xv[i];
                    b[j] = dv[i];
                }
            }
#pragma unroll
            for (int j = 0; j < UNROLL; ++j) {
                const long long i = first + static_cast<long long>(j) * blockDim.x;
                if (i < nvec) ov[i] = grad_vec<T>(a[j], b[j]);
            }
        }
        const long long tail = nvec * VEC + threadIdx.x;
        if (blockIdx.x == 0 && tail < n) out[tail] = grad_bits<T>(xs[tail], ds[tail]);
        return;
    }
    const long long nthreads = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += nthreads)
        out[i] = grad_bits<T>(xs[i], ds[i]);
}
