// pointwise_gemm.cu's GEMMs (bf16) compiled as host C++ and run on the CPU, each block's 128
// threads as host threads that meet at its barriers and at every ldmatrix and mma.sync
// (cuda_shim.h emulates those from the PTX ISA's fragment layouts), against a float64 product.
// Shared memory is poisoned (NaN) before each block; the output is poisoned too, so a part the
// kernel skips, reads unstaged or writes twice with a wrong value fails.  Every block shape (128,
// 64 and 32 rows) and column chunk (8 and 4) runs, per image with bias by row (NCHW) and as one
// product with bias by column (NHWC); on half the cases cp.async copies
// land only at the wait that must see them, so a wait too short reads the poison.  BODY is
// pointwise_gemm.cu without its #include of layerbench_common.cuh.
// Prints "N cases, M bad, P misaligned granules, U copies never waited for" and exits 1 if any
// is non-zero.
#include <random>
#include <type_traits>

#include "cuda_shim.h"
#include "reference_check.h"
alignas(128) unsigned char stages[48 * 1024];  // the kernel's extern shared memory
#include BODY

using bf16 = __nv_bfloat16;

static std::vector<bf16> random_bf16(size_t n, std::mt19937& g) {
    std::normal_distribution<float> d;
    std::vector<bf16> v(n);
    for (auto& e : v) e = lb::from_float<bf16>(d(g));
    return v;
}

// y[n] = a @ b[n] (+ bias) for an M x R matrix a over N images of HW columns, bias by row
// (bias_by 1) or by column (2), in blocks of BM rows moving VEC columns a copy; 1 if any value is off.
template <int BM, int VEC>
static int check(int M, int R, int HW, int N, int bias_by, std::mt19937& g, long& unlanded) {
    const std::vector<bf16> a = random_bf16(size_t(M) * R, g), b = random_bf16(size_t(N) * R * HW, g),
                            bias = random_bf16(std::max(M, HW), g);
    std::vector<bf16> y(size_t(N) * M * HW, bf16{0x7fc0});  // NaN
    shared_base = stages;
    const int columns = N * HW, tiles_j = (columns + PW_BN - 1) / PW_BN, tiles_m = (M + BM - 1) / BM;
    gridDim = {unsigned(tiles_j * tiles_m), 1, 1};
    blockDim = {PW_THREADS, 1, 1};
    for (int block = 0; block < tiles_j * tiles_m; ++block) {
        blockIdx = {unsigned(block), 0, 0};
        memset(stages, 0xff, sizeof stages);  // NaN in bf16: what a block did not stage
        BlockThreads::run(PW_THREADS, [&] {
            pointwise_gemm<bf16, BM, VEC>(a.data(), b.data(), bias.data(), y.data(), M, R, HW, columns, bias_by);
            unlanded += cp_async_queue::unlanded();
        });
    }
    int bad = 0;
    for (int n = 0; n < N; ++n)
        for (int m = 0; m < M; ++m)
            for (int p = 0; p < HW; ++p) {
                double ref = bias_by == 1 ? lb::to_float(bias[m]) : bias_by == 2 ? lb::to_float(bias[p]) : 0.0;
                for (int r = 0; r < R; ++r)
                    ref += double(lb::to_float(a[size_t(m) * R + r])) * lb::to_float(b[(size_t(n) * R + r) * HW + p]);
                const float got = lb::to_float(y[(size_t(n) * M + m) * HW + p]);
                if (!matches(ref, got, 1e-2) && bad++ < 5)
                    printf("BM %d VEC %d M %d R %d HW %d N %d bias by %d: y[%d][%d][%d] = %g, expected %g\n", BM, VEC,
                           M, R, HW, N, bias_by, n, m, p, got, ref);
            }
    return bad != 0;
}

int main() {
    std::mt19937 g(7);
    int cases = 0, bad = 0;
    long unlanded = 0;
    // (M, R, HW, N, bias by): row tiles past a block's and ragged (136, 40, 300), a reduction
    // that ends inside a stage (48, 24) or walks the three-stage ring twice over (256), column
    // tiles ragged (40 x 2, 200, 144) and spanning images (40 x 2, 8 x 3, 136 x 2, 56 x 5, 36 x 5),
    // one chunk of everything (8, 8, 8), columns a multiple of 4 only (36, 12 x 11, 20, 20 x 1),
    // one image with bias by column (NHWC: rows are pixels, columns output channels).
    const int wide[][5] = {{136, 48, 40, 2, 1}, {64, 256, 200, 1, 0}, {8, 8, 8, 3, 1}, {24, 96, 136, 2, 0},
                           {16, 32, 56, 5, 1}, {300, 24, 144, 1, 2}};
    const int narrow[][5] = {{40, 48, 36, 5, 1}, {72, 24, 12, 11, 0}, {24, 64, 20, 3, 1}, {136, 16, 20, 1, 2}};
    auto each_block = [&](auto vec, const int (&s)[5]) {
        constexpr int VEC = decltype(vec)::value;
        cp_async_late = cases % 2 == 1;
        bad += check<128, VEC>(s[0], s[1], s[2], s[3], s[4], g, unlanded);
        bad += check<64, VEC>(s[0], s[1], s[2], s[3], s[4], g, unlanded);
        bad += check<32, VEC>(s[0], s[1], s[2], s[3], s[4], g, unlanded);
        cases += 3;
    };
    for (const auto& s : wide) {
        each_block(std::integral_constant<int, 8>{}, s);
        each_block(std::integral_constant<int, 4>{}, s);
    }
    for (const auto& s : narrow) each_block(std::integral_constant<int, 4>{}, s);
    printf("%d cases, %d bad, %ld misaligned granules, %ld copies never waited for\n", cases, bad,
           misaligned_granules, unlanded);
    return bad != 0 || misaligned_granules != 0 || unlanded != 0;
}
