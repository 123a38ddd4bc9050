// 2-D max and average pooling backward (dx from dy), square window, NCHW and NHWC, as a gather:
// one thread per dx element visits the windows that contain it, adds up their share in fp32 and
// writes dx once (no atomics, no zero-fill pass, a fixed order: deterministic).  Where windows do
// not overlap a max-pooling dx element is 0 + dy, exact (but for a subnormal fp32 or bf16 dy,
// which CuPy's -ftz=true flushes).
//
// Average: every window divides by kernel * kernel (count_include_pad=True), so dx is the sum of
// the windows' dy times inv_area.
// Max: a window's gradient goes to its winner, found by scanning the window in row-major order
// over its real taps (padding never wins), as torch's max_pool2d picks it: a tap replaces the best
// so far when it is larger or NaN, so the first maximum wins, and the last NaN where there are
// NaNs.  The compare runs on integer order keys of the bit patterns, exact whatever -ftz says.
// Either each thread finds the winners of its windows again (WINNERS false), or pool2d_winners
// has stored every window's winner as a tap number first (one thread a window) and the gather
// reads it (WINNERS true): fewer loads and compares where windows overlap.
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

// (n, c, row, col) of flat index t into a (batch, C, rows, cols) tensor laid out NHWC or NCHW; I is
// int where the tensor's offsets fit in int32 (cheaper divisions), else long long.
template <bool NHWC, typename I>
__device__ __forceinline__ void position(I t, int C, int rows, int cols, int& n, int& c, int& row, int& col) {
    if constexpr (NHWC) {
        c = static_cast<int>(t % C);
        t /= C;
        col = static_cast<int>(t % cols);
        t /= cols;
        row = static_cast<int>(t % rows);
        n = static_cast<int>(t / rows);
    } else {
        col = static_cast<int>(t % cols);
        t /= cols;
        row = static_cast<int>(t % rows);
        t /= rows;
        c = static_cast<int>(t % C);
        n = static_cast<int>(t / C);
    }
}

// The winner of the window whose top-left tap is (h0, w0), as its tap number (row * k + column,
// padding counted); x_plane is the offset of (n, c, 0, 0).
template <typename T>
__device__ __forceinline__ int window_winner(const typename lb::Bits<T>::U* xs, int x_plane, int x_row,
                                             int col_step, int h0, int w0, int k, int H, int W) {
    int best_key = BELOW_EVERY_KEY;  // the first real tap always replaces it
    bool best_nan = false;
    int winner = -1;
    for (int hh = max(h0, 0); hh < min(h0 + k, H); ++hh) {
        for (int ww = max(w0, 0); ww < min(w0 + k, W); ++ww) {
            const typename lb::Bits<T>::U u = xs[x_plane + hh * x_row + ww * col_step];
            const bool nan = lb::is_nan_bits<T>(u);
            const int key = order_key<T>(u);
            if (nan || (!best_nan && key > best_key)) {
                best_key = key;
                best_nan = nan;
                winner = (hh - h0) * k + (ww - w0);
            }
        }
    }
    return winner;
}

}  // namespace

// Thread per window (dy element) in dy's memory order: win[i] = the winner's tap number of window
// i (k <= 11, so it fits a signed char).
template <typename T, bool NHWC>
__global__ void __launch_bounds__(256) pool2d_winners(const T* x, signed char* win, int batch, int C, int H,
                                                      int W, int OH, int OW, int k, int s, int p) {
    typedef typename lb::Bits<T>::U U;
    const U* xs = reinterpret_cast<const U*>(x);
    const int col_step = NHWC ? C : 1;
    const long long total = static_cast<long long>(batch) * C * OH * OW;
    for (long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
         idx += static_cast<long long>(gridDim.x) * blockDim.x) {
        int n, c, oh, ow;
        position<NHWC>(idx, C, OH, OW, n, c, oh, ow);
        const int x_plane = NHWC ? n * H * W * C + c : (n * C + c) * H * W;
        win[idx] = static_cast<signed char>(
            window_winner<T>(xs, x_plane, W * col_step, col_step, oh * s - p, ow * s - p, k, H, W));
    }
}

// Thread per dx element in memory order (grid-stride): consecutive threads take consecutive w
// (NCHW) or c (NHWC), so loads of x and dy and the store of dx are coalesced.  The element's x
// (and dx) offset is its index; x offsets fit in int32 (the spec caps the input at 2^31 - 1
// elements), dy's are 64-bit (padding can make the output larger).
// win: pool2d_winners' output where WINNERS, else unused.
template <typename T, int METHOD, bool NHWC, bool WINNERS>
__global__ void __launch_bounds__(256) pool2d_backward(const T* x, const T* dy, T* dx, int batch,
                                                       int C, int H, int W, int OH, int OW, int k,
                                                       int s, int p, float inv_area, const signed char* win) {
    static_assert(METHOD == MAX || METHOD == AVG, "max or average pooling");
    static_assert(METHOD == MAX || !WINNERS, "winners are max pooling's");
    typedef typename lb::Bits<T>::U U;
    const U* xs = reinterpret_cast<const U*>(x);
    const int col_step = NHWC ? C : 1;  // elements between neighbours along w, in x and in dy
    const int x_row = W * col_step;  // ... and along h
    const long long y_row = static_cast<long long>(OW) * col_step;
    const long long total = static_cast<long long>(batch) * C * H * W;
    for (long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
         idx += static_cast<long long>(gridDim.x) * blockDim.x) {
        int n, c, h, w;
        position<NHWC>(static_cast<int>(idx), C, H, W, n, c, h, w);  // x's offsets fit in int32
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
                const long long at_y = y_plane + oh * y_row + static_cast<long long>(ow) * col_step;
                const float g = lb::to_float(dy[at_y]);
                if constexpr (METHOD == AVG) {
                    sum += g;
                } else {
                    const int h0 = oh * s - p, w0 = ow * s - p;
                    const int winner = WINNERS ? static_cast<int>(win[at_y])
                                               : window_winner<T>(xs, x_plane, x_row, col_step, h0, w0, k, H, W);
                    if (winner == (h - h0) * k + (w - w0)) sum += g;
                }
            }
        }
        if constexpr (METHOD == AVG) sum *= inv_area;
        dx[idx] = lb::from_float<T>(sum);
    }
}
