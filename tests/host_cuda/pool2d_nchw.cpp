// pool2d.cu's NCHW band kernel (pool2d_nchw<T, METHOD, K, PADDED>, fp32 and bf16) compiled as
// host C++ and run on the CPU: each block's 256 threads as host threads meeting at
// __syncthreads, the blocks in turn, against a float64 pooling.  Max and average; windows 2 and 3
// unrolled and 4 through the loop; strides 1-3 and paddings up to k / 2 (unpadded maps also
// through the padded kernel); bands of one output row up to several planes, cut across planes;
// x on a 16-byte boundary or some elements past it.  The shared band is poisoned (NaN) before each
// block and the output before each case, so a window read from the wrong place or an output left
// unpooled fails; each cp.async granule must be aligned.  BODY is pool2d.cu without its #include
// of layerbench_common.cuh.  Prints "N cases, M bad, P misaligned granules" and exits 1 if any is
// non-zero.
#include <random>

#include "cuda_shim.h"
#include "reference_check.h"
namespace lb {
// The bits of layerbench_common.cuh that pool2d.cu uses for fp32 and bf16.
template <typename T> struct Bits;
template <> struct Bits<float> {
    typedef unsigned int U;
    static constexpr U SIGN = 0x80000000u, INF = 0x7f800000u;
};
template <> struct Bits<__nv_bfloat16> {
    typedef unsigned short U;
    static constexpr U SIGN = 0x8000u, INF = 0x7f80u;
};
template <typename T> typename Bits<T>::U max_nan(typename Bits<T>::U a, typename Bits<T>::U b) {
    T ta, tb;
    memcpy(&ta, &a, sizeof a);
    memcpy(&tb, &b, sizeof b);
    const float fa = to_float(ta), fb = to_float(tb);
    if (std::isnan(fa)) return a;
    if (std::isnan(fb)) return b;
    return fa >= fb ? a : b;
}
}  // namespace lb
#include BODY

template <typename T> T stored(float v) { return lb::from_float<T>(v); }

struct Case {
    int N, C, H, W, k, s, p, method;
};

// The kernel on one case with `band_rows` output rows a band (a block each), x `offset` elements
// past a 16-byte boundary.  Returns the outputs that are wrong.
template <typename T, int METHOD, int K, bool PADDED>
int run(const Case& c, int band_rows, int offset, std::mt19937& g) {
    constexpr int VE = 16 / sizeof(T);
    const int OH = (c.H + 2 * c.p - c.k) / c.s + 1, OW = (c.W + 2 * c.p - c.k) / c.s + 1;
    const int planes = c.N * c.C, rows = planes * OH;
    std::normal_distribution<float> d;
    std::vector<T> x_store(size_t(planes) * c.H * c.W + 2 * VE, stored<T>(NAN));  // NaN around x
    T* x = x_store.data() + VE + offset;  // vector storage is 16-byte aligned
    for (int i = 0; i < planes * c.H * c.W; ++i) x[i] = stored<T>(d(g));
    std::vector<T> y(size_t(rows) * OW, stored<T>(NAN));
    const int bands = (rows + band_rows - 1) / band_rows;
    for (int b = 0; b < bands; ++b) {  // each band's input, in whole vectors, fits a buffer
        const int r0 = b * band_rows, r1 = min(r0 + band_rows, rows);
        const int lo = (r0 / OH * c.H + max(r0 % OH * c.s - c.p, 0)) * c.W;
        const int hi = ((r1 - 1) / OH * c.H + min((r1 - 1) % OH * c.s - c.p + c.k, c.H)) * c.W;
        if ((hi - lo + 2 * VE) * int(sizeof(T)) > BAND_BYTES) return printf("case too large\n"), 1;
    }
    shared_base = reinterpret_cast<unsigned char*>(pool_band);
    gridDim = {unsigned(bands), 1, 1};
    blockDim = {256, 1, 1};
    for (unsigned b = 0; b < gridDim.x; ++b) {
        blockIdx = {b, 0, 0};
        memset(pool_band, 0xff, sizeof pool_band);  // NaN in fp32 and bf16
        BlockThreads::run(256, [&] {
            pool2d_nchw<T, METHOD, K, PADDED>(x, y.data(), rows, c.H, c.W, OH, OW, c.k, c.s, c.p,
                                              1.0f / (c.k * c.k), band_rows);
        });
    }
    int bad = 0;
    for (int plane = 0; plane < planes; ++plane)
        for (int oh = 0; oh < OH; ++oh)
            for (int ow = 0; ow < OW; ++ow) {
                double ref = METHOD == 0 ? -INFINITY : 0.0;
                for (int a = 0; a < c.k; ++a)
                    for (int b = 0; b < c.k; ++b) {
                        const int h = oh * c.s - c.p + a, w = ow * c.s - c.p + b;
                        if (h < 0 || h >= c.H || w < 0 || w >= c.W) continue;
                        const double v = lb::to_float(x[(size_t(plane) * c.H + h) * c.W + w]);
                        ref = METHOD == 0 ? std::max(ref, v) : ref + v;
                    }
                if (METHOD == 1) ref /= c.k * c.k;
                const float got = lb::to_float(y[(size_t(plane) * OH + oh) * OW + ow]);
                if (!matches(ref, got, sizeof(T) == 2 ? 1e-2 : 1e-6) && bad++ < 3)
                    printf("N %d C %d %dx%d k %d s %d p %d bands of %d, padded kernel %d: y[%d][%d][%d] = %g, "
                           "expected %g\n", c.N, c.C, c.H, c.W, c.k, c.s, c.p, band_rows, int(PADDED), plane, oh, ow,
                           got, ref);
            }
    return bad;
}

template <typename T, int METHOD, bool PADDED>
int run_any(const Case& c, int band_rows, int offset, std::mt19937& g) {
    if (c.k == 2) return run<T, METHOD, 2, PADDED>(c, band_rows, offset, g);
    if (c.k == 3) return run<T, METHOD, 3, PADDED>(c, band_rows, offset, g);
    return run<T, METHOD, 0, PADDED>(c, band_rows, offset, g);
}

// The kernel a launch takes (PADDED where the map has padding), and for unpadded maps the padded
// one too.
template <typename T>
int run_method(const Case& c, int band_rows, int offset, std::mt19937& g) {
    int bad = c.method == 0 ? run_any<T, 0, true>(c, band_rows, offset, g)
                            : run_any<T, 1, true>(c, band_rows, offset, g);
    if (c.p == 0)
        bad += c.method == 0 ? run_any<T, 0, false>(c, band_rows, offset, g)
                             : run_any<T, 1, false>(c, band_rows, offset, g);
    return bad;
}

int main() {
    std::mt19937 g(11);
    // AlexNet's odd maps (3x3 and 2x2, stride 2), padded and strided odd ones, stride 1, a
    // 4-wide window through the loop.
    const Case cases[] = {{2, 3, 13, 13, 3, 2, 0, 0}, {1, 4, 27, 27, 3, 2, 0, 1}, {2, 2, 11, 9, 2, 2, 0, 0},
                          {1, 3, 7, 9, 3, 2, 1, 0},   {2, 2, 10, 7, 3, 1, 1, 1},  {1, 2, 9, 30, 4, 3, 2, 0}};
    // Output rows a band: one, 6 and 5 (cut across planes), everything in one band.
    const int plans[] = {1, 6, 5, 1 << 20};
    int n = 0, bad = 0;
    for (const Case& c : cases)
        for (int band_rows : plans)
            for (int offset : {0, 1}) {
                n += 2;
                bad += run_method<float>(c, band_rows, offset, g) != 0;
                bad += run_method<__nv_bfloat16>(c, band_rows, 3 * offset, g) != 0;
            }
    printf("%d cases, %d bad, %ld misaligned granules\n", n, bad, misaligned_granules);
    return bad != 0 || misaligned_granules != 0;
}
