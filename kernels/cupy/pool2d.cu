// 2-D max and average pooling, square window, NCHW and NHWC.
//
// Max takes the hardware's max.NaN of the bit patterns and stores the winner unchanged, so it is
// exact; NaN propagates as in torch (as the canonical NaN).  Average sums in fp32 and divides by
// kernel * kernel (padding counts as zeros: count_include_pad=True).  Each window holds at least
// one real element (padding <= kernel / 2, checked by the spec).
#include "layerbench_common.cuh"

namespace {

constexpr int MAX = 0;
constexpr int AVG = 1;

// Shared memory of one NCHW band (_pool_plan.py sizes bands to fit it; keep the two equal), at
// file scope so that the host-side check of the kernel (tests/host_cuda) shares it between threads.
constexpr int BAND_BYTES = 24576;
__shared__ uint4 pool_band[BAND_BYTES / 16];

// One output channel's running state.
template <typename T, int METHOD> struct Acc;

template <typename T> struct Acc<T, MAX> {
    typedef typename lb::Bits<T>::U U;
    U best;
    // -inf loses to every number and to NaN.  (With a branching order-key compare instead, 16-bit
    // NHWC max pooling ran at half the speed of average pooling on an H100.)
    __device__ __forceinline__ void init() { best = static_cast<U>(lb::Bits<T>::SIGN | lb::Bits<T>::INF); }
    __device__ __forceinline__ void add(U u) { best = lb::max_nan<T>(best, u); }
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

// Calls tap(a, b) for each tap (a, b) of the kk x kk window whose top-left corner is (h0, w0) in
// an H x W map: every tap for a window inside the map, only those on the map for a window on the
// padding.  The taps unroll where kk is a compile-time constant (the kernels' K > 0).  PADDED
// false: the map has no padding, so every window lies inside it and nothing is checked.
template <bool PADDED = true, typename Tap>
__device__ __forceinline__ void for_each_tap(int h0, int w0, int kk, int H, int W, Tap&& tap) {
    if (!PADDED || (h0 >= 0 && w0 >= 0 && h0 + kk <= H && w0 + kk <= W)) {
#pragma unroll
        for (int a = 0; a < kk; ++a)
#pragma unroll
            for (int b = 0; b < kk; ++b) tap(a, b);
    } else {
        for (int a = max(-h0, 0); a < min(kk, H - h0); ++a)
            for (int b = max(-w0, 0); b < min(kk, W - w0); ++b) tap(a, b);
    }
}

}  // namespace

// NCHW, windows served from shared memory.  A block pools `band_rows` consecutive rows of the
// flattened (plane, output row) space.  The input rows they read form one contiguous range of x
// (planes are dense and follow each other), which the block first copies into shared memory in
// aligned 16-byte pieces: NCHW rows of odd width (AlexNet's 55, 27, 13) are never aligned, and
// reading the windows straight from global memory moved 2 bytes per load instruction and left
// the kernel waiting on L1.  The 16-byte vectors may reach up to 15 bytes before or after the
// range, never outside the 16-byte granules that hold x's own elements (x is element-aligned).
// K > 0 fixes the window size at compile time (the taps unroll); K == 0 reads it from k.
// PADDED is p > 0: without padding every window lies inside its plane, and no tap is checked.
// Indices fit in int32 (the spec caps tensors at 2^31 - 1 elements).
template <typename T, int METHOD, int K, bool PADDED>
__global__ void __launch_bounds__(256) pool2d_nchw(const T* x, T* y, int rows, int H, int W,
                                                   int OH, int OW, int k, int s, int p,
                                                   float inv_area, int band_rows) {
    typedef typename lb::Bits<T>::U U;
    constexpr int VE = 16 / sizeof(T);  // elements per 16-byte vector
    const U* sb = reinterpret_cast<const U*>(pool_band);
    const int kk = K > 0 ? K : k;

    const int r0 = blockIdx.x * band_rows;
    const int r1 = min(r0 + band_rows, rows);
    const int plane0 = r0 / OH, oh0 = r0 - plane0 * OH;
    const int plane1 = (r1 - 1) / OH, oh1 = r1 - 1 - plane1 * OH;
    const int lo = (plane0 * H + max(oh0 * s - p, 0)) * W;      // first element read
    const int hi = (plane1 * H + min(oh1 * s - p + kk, H)) * W;  // one past the last
    // x + base is 16-byte aligned: x itself starts `mis` elements past a 16-byte boundary.
    const int mis = static_cast<int>((reinterpret_cast<size_t>(x) % 16) / sizeof(T));
    const int base = ((lo + mis) & ~(VE - 1)) - mis;
    const uint4* src = reinterpret_cast<const uint4*>(x + base);
    const int vectors = (hi - base + VE - 1) / VE;
    // Asynchronous copies: every vector of the band in flight at once, none through registers
    // (a plain load-then-store loop waits out one memory latency per iteration).
    for (int i = threadIdx.x; i < vectors; i += blockDim.x)
        lb::cp_async16(lb::smem_addr(pool_band + i), src + i, true);
    lb::cp_async_commit();
    lb::cp_async_wait_all();
    __syncthreads();

    // Thread t pools outputs t, t + blockDim.x, ... of the band.  (row, column) and the window's
    // offset in the band advance by fixed steps rather than being divided out of the index and
    // multiplied back each time: a 16-bit output leaves room for few instructions.
    const int count = (r1 - r0) * OW;
    const int step_rows = blockDim.x / OW, step_cols = blockDim.x - step_rows * OW;
    int ow = threadIdx.x % OW;
    int oh = oh0 + threadIdx.x / OW, plane = plane0;
    while (oh >= OH) {
        oh -= OH;
        ++plane;
    }
    int at = (plane * H + oh * s - p) * W + ow * s - p - base;  // the window's top left, in the band
    const int step = step_rows * s * W + step_cols * s;
    const int next_row = s * W - OW * s;     // a column past OW: the next output row's start
    const int next_plane = (H - OH * s) * W;  // a row past OH: the next plane's first row
    U* out = reinterpret_cast<U*>(y) + static_cast<long long>(r0) * OW + threadIdx.x;
    for (int i = threadIdx.x; i < count; i += blockDim.x, out += blockDim.x) {
        const U* win = sb + at;  // may point at padding
        Acc<T, METHOD> acc;
        acc.init();
        for_each_tap<PADDED>(oh * s - p, ow * s - p, kk, H, W, [&](int a, int b) { acc.add(win[a * W + b]); });
        *out = acc.result(inv_area);
        ow += step_cols;
        oh += step_rows;
        at += step;
        if (ow >= OW) {
            ow -= OW;
            ++oh;
            at += next_row;
        }
        while (oh >= OH) {
            oh -= OH;
            at += next_plane;
        }
    }
}

// NCHW where even one window's rows do not fit in shared memory (very wide maps): one thread per
// output element, windows read from global memory; consecutive threads take consecutive columns.
template <typename T, int METHOD>
__global__ void __launch_bounds__(256) pool2d_nchw_direct(const T* x, T* y, int planes, int H,
                                                          int W, int OH, int OW, int k, int s,
                                                          int p, float inv_area) {
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
// scalar path for any C.  K as in pool2d_nchw: a fixed K unrolls the taps, so a thread has all
// of a window's loads in flight at once (a run-time loop waited for each in turn).
template <typename T, int METHOD, int VEC, int K>
__global__ void __launch_bounds__(256) pool2d_nhwc(const T* x, T* y, int batch, int C, int H,
                                                   int W, int OH, int OW, int k, int s, int p,
                                                   float inv_area) {
    typedef typename lb::Bits<T>::U U;
    static_assert(VEC == 1 || VEC * sizeof(T) == 16, "VEC is 1 or one 16-byte vector");
    union Pack {
        uint4 v;
        U u[VEC > 1 ? VEC : 2];
    };
    const int kk = K > 0 ? K : k;
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
        // The window's top-left group (it may lie on the padding; only real taps are read).
        const T* win = x + static_cast<long long>(n) * H * W * C + g * VEC +
                       (static_cast<long long>(h0) * W + w0) * C;
        Acc<T, METHOD> acc[VEC];
#pragma unroll
        for (int v = 0; v < VEC; ++v) acc[v].init();
        auto add = [&](int a, int b) {
            const T* at = win + static_cast<long long>(a * W + b) * C;
            if constexpr (VEC == 1) {
                acc[0].add(*reinterpret_cast<const U*>(at));
            } else {
                Pack pk;
                pk.v = *reinterpret_cast<const uint4*>(at);
#pragma unroll
                for (int v = 0; v < VEC; ++v) acc[v].add(pk.u[v]);
            }
        };
        for_each_tap(h0, w0, kk, H, W, add);
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
