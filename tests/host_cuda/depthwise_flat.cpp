// depthwise.cu's flat-run kernels (depthwise_nhwc_flat<float, 4, S>, depthwise_nchw_flat<float, S,
// COLS>) compiled as host C++ and run on the CPU, every block and thread in turn, against a float64
// direct convolution; each output element must be written exactly once, and every L2 prefetch must
// name a part of x.  The CUDA keywords and intrinsics are shimmed in cuda_shim.h; BODY is
// depthwise.cu without its #include of layerbench_common.cuh.
// Prints "N cases, M bad, P prefetches" and exits 1 if any case is bad.
#include <initializer_list>
#include <random>

#include "cuda_shim.h"
#include "reference_check.h"
// An L2 prefetch must name a whole vector of x (prefetch_vec elements); a bulk one (built with
// __CUDA_ARCH__ 900) whole 16-byte units of x, from the block's first thread.  Count those that do
// not, and all.
static const float *x_lo, *x_hi;
static long stray_prefetches, prefetches;
static int prefetch_vec;
namespace lb {
void prefetch_l2(const void* p) {
    const float* f = static_cast<const float*>(p);
    ++prefetches;
    if (f < x_lo || f + prefetch_vec > x_hi) ++stray_prefetches;
}
void bulk_prefetch_l2(const void* p, unsigned bytes) {
    const float* f = static_cast<const float*>(p);
    ++prefetches;
    if (threadIdx.x != 0 || bytes == 0 || bytes % 16 || (f - x_lo) % 4 || f < x_lo || f + bytes / 4 > x_hi)
        ++stray_prefetches;
}
}  // namespace lb
#include BODY

void fill_normal(std::initializer_list<std::vector<float>*> buffers, std::mt19937& g) {
    std::normal_distribution<float> d;
    for (auto* buffer : buffers)
        for (auto& v : *buffer) v = d(g);
}

template <int S>
int check(int N, int C, int H, int W, int ph, int pw, int band, bool has_bias, std::mt19937& g) {
    const int OH = (H + 2 * ph - 3) / S + 1, OW = (W + 2 * pw - 3) / S + 1;
    if (OH < 1 || OW < 1) return 0;
    std::vector<float> x(N * H * W * C), wt(9 * C), b(C), out(N * OH * OW * C, NAN);
    fill_normal({&x, &wt, &b}, g);
    // Infinite taps (two corners, the middle of the left column): where the padding holds them, the
    // output stays finite (no 0 * inf).
    wt[0] = INFINITY;           // channel 0, top-left tap
    wt[8 * C + 1] = -INFINITY;  // channel 1, bottom-right tap
    wt[3 * C + 2] = INFINITY;   // channel 2, middle-left tap
    const int VEC = 4, run = OW * C;
    const int segments = (run + FLAT_THREADS * VEC - 1) / (FLAT_THREADS * VEC), bands = (OH + band - 1) / band;
    std::vector<int> writes(out.size(), 0);
    x_lo = x.data();
    x_hi = x.data() + x.size();
    stray_prefetches = 0;
    prefetch_vec = VEC;
    for (int blk = 0; blk < N * bands * segments; ++blk)
        for (int t = 0; t < FLAT_THREADS; ++t) {
            blockIdx = {unsigned(blk), 0, 0};
            threadIdx = {unsigned(t), 0, 0};
            std::vector<float> before(out);
            depthwise_nhwc_flat<float, 4, S>(x.data(), wt.data(), has_bias ? b.data() : nullptr, out.data(), C, H, W,
                                             OH, OW, ph, pw, band, segments, bands);
            for (size_t i = 0; i < out.size(); ++i)
                if (memcmp(&before[i], &out[i], 4) != 0) ++writes[i];
        }
    int bad = 0;
    for (int n = 0; n < N; ++n)
        for (int p = 0; p < OH; ++p)
            for (int q = 0; q < OW; ++q)
                for (int c = 0; c < C; ++c) {
                    double ref = has_bias ? b[c] : 0.0;
                    for (int r = 0; r < 3; ++r)
                        for (int s = 0; s < 3; ++s) {
                            int ih = p * S - ph + r, iw = q * S - pw + s;
                            if (ih >= 0 && ih < H && iw >= 0 && iw < W)
                                ref += double(x[((n * H + ih) * W + iw) * C + c]) * wt[(r * 3 + s) * C + c];
                        }
                    size_t i = ((size_t(n) * OH + p) * OW + q) * C + c;
                    if (writes[i] != 1 || !matches(ref, out[i], 1e-4)) ++bad;
                }
    if (stray_prefetches) printf("BAD S=%d N=%d C=%d H=%d W=%d pad=(%d,%d) band=%d: %ld prefetches off x\n", S, N, C,
                                 H, W, ph, pw, band, stray_prefetches);
    bad += stray_prefetches != 0;
    if (bad) printf("BAD S=%d N=%d C=%d H=%d W=%d pad=(%d,%d) band=%d bias=%d: %d wrong\n", S, N, C, H, W, ph, pw, band, has_bias, bad);
    return bad;
}

// NCHW: x [N * C planes][H][W], wt [C][9], out [N * C][OH][OW]; COLS output columns a thread,
// threads along a plane's row 2^tq_log2 (fewer than the row needs cut it into segments).
template <int S, int COLS>
int check_nchw(int N, int C, int H, int W, int ph, int pw, int band, int tq_log2, bool has_bias, std::mt19937& g) {
    const int OH = (H + 2 * ph - 3) / S + 1, OW = (W + 2 * pw - 3) / S + 1;
    if (OH < 1 || OW < 1) return 0;
    std::vector<float> x(N * C * H * W), wt(9 * C), b(C), out(N * C * OH * OW, NAN);
    fill_normal({&x, &wt, &b}, g);
    wt[0] = INFINITY;           // channel 0, top-left tap
    wt[9 + 8] = -INFINITY;      // channel 1, bottom-right tap
    wt[2 * 9 + 3] = INFINITY;   // channel 2, middle-left tap
    const int planes = N * C, columns = 1 << tq_log2;
    const int segments = (OW + columns * COLS - 1) / (columns * COLS), bands = (OH + band - 1) / band;
    const int groups = (planes + FLAT_THREADS / columns - 1) / (FLAT_THREADS / columns);
    std::vector<int> writes(out.size(), 0);
    x_lo = x.data();
    x_hi = x.data() + x.size();
    stray_prefetches = 0;
    prefetch_vec = 1;
    for (int blk = 0; blk < groups * bands * segments; ++blk)
        for (int t = 0; t < FLAT_THREADS; ++t) {
            blockIdx = {unsigned(blk), 0, 0};
            threadIdx = {unsigned(t), 0, 0};
            std::vector<float> before(out);
            depthwise_nchw_flat<float, S, COLS>(x.data(), wt.data(), has_bias ? b.data() : nullptr, out.data(), planes, C,
                                          H, W, OH, OW, ph, pw, band, segments, bands, tq_log2);
            for (size_t i = 0; i < out.size(); ++i)
                if (memcmp(&before[i], &out[i], 4) != 0) ++writes[i];
        }
    int bad = 0;
    for (int pl = 0; pl < planes; ++pl)
        for (int p = 0; p < OH; ++p)
            for (int q = 0; q < OW; ++q) {
                const int c = pl % C;
                double ref = has_bias ? b[c] : 0.0;
                for (int r = 0; r < 3; ++r)
                    for (int s = 0; s < 3; ++s) {
                        int ih = p * S - ph + r, iw = q * S - pw + s;
                        if (ih >= 0 && ih < H && iw >= 0 && iw < W)
                            ref += double(x[(size_t(pl) * H + ih) * W + iw]) * wt[c * 9 + r * 3 + s];
                    }
                size_t i = (size_t(pl) * OH + p) * OW + q;
                if (writes[i] != 1 || !matches(ref, out[i], 1e-4)) ++bad;
            }
    bad += stray_prefetches != 0;
    if (bad)
        printf("BAD NCHW S=%d COLS=%d N=%d C=%d H=%d W=%d pad=(%d,%d) band=%d threads a row=%d bias=%d: %d wrong, %ld "
               "prefetches off x\n", S, COLS, N, C, H, W, ph, pw, band, columns, has_bias, bad, stray_prefetches);
    return bad;
}

int main() {
    std::mt19937 g(1);
    int cases = 0, bad = 0;
    for (int S = 1; S <= 2; ++S)
        for (int C : {4, 8, 12, 36})
            for (int H : {1, 2, 3, 5, 8, 13})
                for (int W : {1, 3, 4, 9, 40})
                    for (int ph = 0; ph <= 2; ++ph)
                        for (int pw = 0; pw <= 2; ++pw)
                            for (int band : {1, 4, 32}) {
                                const bool bias = (C + H + W + band) % 2;
                                int r = S == 1 ? check<1>(2, C, H, W, ph, pw, band, bias, g)
                                               : check<2>(2, C, H, W, ph, pw, band, bias, g);
                                bad += r != 0;
                                ++cases;
                            }
    for (int S = 1; S <= 2; ++S)
        for (int C : {3, 5})
            for (int H : {1, 2, 3, 5, 8, 13})
                for (int W : {1, 3, 4, 9, 40})
                    for (int ph = 0; ph <= 2; ++ph)
                        for (int pw = 0; pw <= 2; ++pw)
                            for (int band : {1, 4, 32})
                                for (int tq_log2 : {1, 6}) {  // rows cut in segments, or one segment
                                    const bool bias = (C + H + W + band) % 2;
                                    int r = S == 1 ? check_nchw<1, 1>(2, C, H, W, ph, pw, band, tq_log2, bias, g) +
                                                         check_nchw<1, 2>(2, C, H, W, ph, pw, band, tq_log2, bias, g) +
                                                         check_nchw<1, 4>(2, C, H, W, ph, pw, band, tq_log2, bias, g)
                                                   : check_nchw<2, 1>(2, C, H, W, ph, pw, band, tq_log2, bias, g) +
                                                         check_nchw<2, 2>(2, C, H, W, ph, pw, band, tq_log2, bias, g) +
                                                         check_nchw<2, 4>(2, C, H, W, ph, pw, band, tq_log2, bias, g);
                                    bad += r != 0;
                                    ++cases;
                                }
    printf("%d cases, %d bad, %ld prefetches\n", cases, bad, prefetches);
    return bad != 0;
}
