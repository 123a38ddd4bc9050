// 2-D max and average pooling backward (dx from dy), square window, NCHW and NHWC, as a gather:
// one thread per dx element visits the windows that contain it, adds up their share in fp32 and
// writes dx once (no atomics, no zero-fill pass, a fixed order: deterministic).  Where windows do
// not overlap a max-pooling dx element is 0 + dy, exact (but for a subnormal fp32 or bf16 dy,
// which CuPy's -ftz=true flushes).
//
// Average: every window divides by kernel * kernel (count_include_pad=True), so dx is the sum of
// the windows' dy times inv_area.
// Max: a window's gradient goes to its winner, which each thread finds again by scanning the
// window in row-major order over its real taps (padding never wins), as torch's max_pool2d picks
// it: a tap replaces the best so far when it is larger or NaN, so the first maximum wins, and the
// last NaN where there are NaNs.  The compare runs on integer order keys of the bit patterns,
// exact whatever -ftz says.
#include "layerbench_common.cuh"

namespace {

constexpr int MAX = 0;
constexpr int AVG = 1;
constexpr int BELOW_EVERY_KEY = -0x7fffffff - 1;  // order_key is never this small

// A key that orders bit patterns as their (non-NaN) values: -0 and +0 share key 0.
template <typename T>
__device__ __forceinline__ int order_key(typename lb::Bits<T>::U u) {
    const int magnitude = static_cast<int>(u & static_cast<typename lb::Bits<T>::U>(~lb::Bits<T>::SIGN));
    return (u & lb::Bits<T>::SIGN) ? -magnitude : magnitude;
}

// The first and last output index (along one axis) of the windows that contain input index i;
// first > last when none does.  Window o covers inputs o * s - p .. o * s - p + k - 1, so it holds
// i when (i + p - k + 1) / s <= o <= (i + p) / s.
__device__ __forceinline__ void windows_over(int i, int k, int s, int p, int out, int& first, int& last) {
    const int lo = i + p - k + 1;
    first = lo <= 0 ? 0 : (lo + s - 1) / s;  // ceil; i + p >= 0, so the floor below needs no care
    last = min((i + p) / s, out - 1);
}

}  // namespace

// Thread per dx element in memory order (grid-stride): consecutive threads take consecutive w
// (NCHW) or c (NHWC), so loads of x and dy and the store of dx are coalesced.  The element's x
// (and dx) offset is its index; x offsets fit in int32 (the spec caps the input at 2^31 - 1
// elements), dy's are 64-bit (padding can make the output larger).
template <typename T, int METHOD, bool NHWC>
__global__ void __launch_bounds__(256) pool2d_backward(const T* x, const T* dy, T* dx, int batch,
                                                       int C, int H, int W, int OH, int OW, int k,
                                                       int s, int p, float inv_area) {
    static_assert(METHOD == MAX || METHOD == AVG, "max or average pooling");
    typedef typename lb::Bits<T>::U U;
    const U* xs = reinterpret_cast<const U*>(x);
    const int col_step = NHWC ? C : 1;  // elements between neighbours along w, in x and in dy
    const int x_row = W * col_step;  // ... and along h
    const long long y_row = static_cast<long long>(OW) * col_step;
    const long long total = static_cast<long long>(batch) * C * H * W;
    for (long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
         idx += static_cast<long long>(gridDim.x) * blockDim.x) {
        int t = static_cast<int>(idx);
        int n, c, h, w;
        if constexpr (NHWC) {
            c = t % C;
            t /= C;
            w = t % W;
            t /= W;
            h = t % H;
            n = t / H;
        } else {
            w = t % W;
            t /= W;
            h = t % H;
            t /= H;
            c = t % C;
            n = t / C;
        }
        // Offsets of (n, c, 0, 0) in x and in dy.
        const int x_plane = NHWC ? n * H * W * C + c : (n * C + c) * H * W;
        const long long y_plane = NHWC ? static_cast<long long>(n) * OH * OW * C + c
                                       : (static_cast<long long>(n) * C + c) * OH * OW;
        int oh0, oh1, ow0, ow1;
        windows_over(h, k, s, p, OH, oh0, oh1);
        windows_over(w, k, s, p, OW, ow0, ow1);
        float sum = 0.0f;
        for (int oh = oh0; oh <= oh1; ++oh) {
            for (int ow = ow0; ow <= ow1; ++ow) {
                const float g = lb::to_float(dy[y_plane + oh * y_row + static_cast<long long>(ow) * col_step]);
                if constexpr (METHOD == AVG) {
                    sum += g;
                } else {
                    // The window's winner: its x offset, over the real taps in row-major order.
                    const int h0 = oh * s - p, w0 = ow * s - p;
                    int best_key = BELOW_EVERY_KEY;  // the first real tap always replaces it
                    bool best_nan = false;
                    int winner = -1;
                    for (int hh = max(h0, 0); hh < min(h0 + k, H); ++hh) {
                        for (int ww = max(w0, 0); ww < min(w0 + k, W); ++ww) {
                            const int at = x_plane + hh * x_row + ww * col_step;
                            const U u = xs[at];
                            const bool nan = lb::is_nan_bits<T>(u);
                            const int key = order_key<T>(u);
                            if (nan || (!best_nan && key > best_key)) {
                                best_key = key;
                                best_nan = nan;
                                winner = at;
                            }
                        }
                    }
                    if (winner == static_cast<int>(idx)) sum += g;
                }
            }
        }
        if constexpr (METHOD == AVG) sum *= inv_area;
        dx[idx] = lb::from_float<T>(sum);
    }
}
