// 2-D max and average pooling, square window, NCHW and NHWC.
//
// Max compares order keys of the bit patterns and stores the winning input unchanged, so it is
// exact; NaN propagates as in torch.  Average sums in fp32 and divides by kernel * kernel
// (padding counts as zeros: count_include_pad=True).  Each window holds at least one real
// element (padding <= kernel / 2, checked by the spec).
#include "layerbench_common.cuh"

namespace {

constexpr int MAX = 0;
constexpr int AVG = 1;

// One output channel's running state.
template <typename T, int METHOD> struct Acc;

template <typename T> struct Acc<T, MAX> {
    typedef typename lb::Bits<T>::U U;
    int key;
    U best;
    bool nan;
    __device__ __forceinline__ void init() {
        key = -2147483647 - 1;
        best = 0;
        nan = false;
    }
    // Branch-free (selects, no divergence): with 8 channels per thread in 16-bit NHWC, the
    // branching version ran max pooling at half the speed of average pooling on an H100.
    __device__ __forceinline__ void add(U u) {
        const bool is_nan = lb::is_nan_bits<T>(u);
        const int k = lb::order_key<T>(u);
        const bool take = !nan && (is_nan || k > key);  // the first NaN wins and stays
        key = take ? k : key;
        best = take ? u : best;
        nan = nan || is_nan;
    }
    __device__ __forceinline__ U result(float) const { return best; }
};

template <typename T> struct Acc<T, AVG> {
    typedef typename lb::Bits<T>::U U;
    float sum;
    __device__ __forceinline__ void init() { sum = 0.0f; }
    __device__ __forceinline__ void add(U u) {
        T v;
        memcpy(&v, &u, sizeof(U));
        sum += lb::to_float(v);
    }
    __device__ __forceinline__ U result(float inv_area) const {
        const T v = lb::from_float<T>(sum * inv_area);
        U u;
        memcpy(&u, &v, sizeof(U));
        return u;
    }
};

}  // namespace

// NCHW: one thread per output element; consecutive threads take consecutive output columns.
// Indices fit in int32 (the spec caps tensors at 2^31 - 1 elements); the loop counter is
// int64 so that the grid stride cannot overflow it.
template <typename T, int METHOD>
__global__ void __launch_bounds__(256) pool2d_nchw(const T* x, T* y, int planes, int H, int W,
                                                   int OH, int OW, int k, int s, int p,
                                                   float inv_area) {
    typedef typename lb::Bits<T>::U U;
    const U* xs = reinterpret_cast<const U*>(x);
    U* ys = reinterpret_cast<U*>(y);
    const long long total = static_cast<long long>(planes) * OH * OW;
    for (long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
         idx < total; idx += static_cast<long long>(gridDim.x) * blockDim.x) {
        const int i = static_cast<int>(idx);
        const int ow = i % OW;
        const int t = i / OW;
        const int oh = t % OH;
        const int plane = t / OH;
        const int h0 = oh * s - p, w0 = ow * s - p;
        const int hb = max(h0, 0), he = min(h0 + k, H);
        const int wb = max(w0, 0), we = min(w0 + k, W);
        const U* src = xs + static_cast<long long>(plane) * H * W;
        Acc<T, METHOD> acc;
        acc.init();
        for (int h = hb; h < he; ++h)
            for (int w = wb; w < we; ++w) acc.add(src[h * W + w]);
        ys[i] = acc.result(inv_area);
    }
}

// NHWC: one thread per (output pixel, group of VEC channels); VEC = 16 / sizeof(T) moves the
// group with one 16-byte load (needs C % VEC == 0 and 16-byte aligned tensors), VEC = 1 is the
// scalar path for any C.
template <typename T, int METHOD, int VEC>
__global__ void __launch_bounds__(256) pool2d_nhwc(const T* x, T* y, int batch, int C, int H,
                                                   int W, int OH, int OW, int k, int s, int p,
                                                   float inv_area) {
    typedef typename lb::Bits<T>::U U;
    static_assert(VEC == 1 || VEC * sizeof(T) == 16, "VEC is 1 or one 16-byte vector");
    union Pack {
        uint4 v;
        U u[VEC > 1 ? VEC : 2];
    };
    const int groups = C / VEC;
    const long long total = static_cast<long long>(batch) * OH * OW * groups;
    for (long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
         idx < total; idx += static_cast<long long>(gridDim.x) * blockDim.x) {
        const int i = static_cast<int>(idx);
        const int g = i % groups;
        int t = i / groups;
        const int ow = t % OW;
        t /= OW;
        const int oh = t % OH;
        const int n = t / OH;
        const int h0 = oh * s - p, w0 = ow * s - p;
        const int hb = max(h0, 0), he = min(h0 + k, H);
        const int wb = max(w0, 0), we = min(w0 + k, W);
        const long long img = static_cast<long long>(n) * H * W * C + g * VEC;
        Acc<T, METHOD> acc[VEC];
#pragma unroll
        for (int v = 0; v < VEC; ++v) acc[v].init();
        for (int h = hb; h < he; ++h) {
            for (int w = wb; w < we; ++w) {
                const long long off = img + static_cast<long long>(h * W + w) * C;
                if constexpr (VEC == 1) {
                    acc[0].add(reinterpret_cast<const U*>(x)[off]);
                } else {
                    Pack pk;
                    pk.v = *reinterpret_cast<const uint4*>(x + off);
#pragma unroll
                    for (int v = 0; v < VEC; ++v) acc[v].add(pk.u[v]);
                }
            }
        }
        const long long out = static_cast<long long>(i) * VEC;
        if constexpr (VEC == 1) {
            reinterpret_cast<U*>(y)[out] = acc[0].result(inv_area);
        } else {
            Pack pk;
#pragma unroll
            for (int v = 0; v < VEC; ++v) pk.u[v] = acc[v].result(inv_area);
            *reinterpret_cast<uint4*>(y + out) = pk.v;
        }
    }
}
