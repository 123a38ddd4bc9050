// depthwise.cu's NCHW rows kernel (depthwise_nchw_rows<T, K, S>, fp32 and bf16) compiled as host
// C++ and run on the CPU: each block's 256 threads as host threads meeting at __syncthreads, the
// blocks in turn, against a float64 direct convolution.  Windows 3, 5 and 7 unrolled (strides 1
// and 2) and the loops (dilation 2, stride 3); a multiplier of 1 or 2; chunks of one plane's band
// (bands of one strip or the whole plane) or of groups of whole planes; one block walking every
// chunk or a block a chunk; two to four staging buffers; x on a 16-byte boundary or one element
// short of the next; cp.async copies landing at once (a buffer overwritten too early shows) or at
// the wait that must see them (a buffer read too early shows).  Infinite taps where the padding
// holds them must leave the output finite (no 0 * inf); each output must be written (out is
// poisoned with NaN), each cp.async granule aligned and waited for.  The CUDA keywords and
// intrinsics are shimmed in cuda_shim.h; BODY is depthwise.cu without its #include of
// layerbench_common.cuh.  Prints "N cases, M bad" and exits 1 if any case is bad.
#include <random>

#include "cuda_shim.h"
#include "reference_check.h"
namespace lb {
void prefetch_l2(const void*) {}  // the flat kernels' (not run here)
void bulk_prefetch_l2(const void*, unsigned) {}
}  // namespace lb
alignas(16) unsigned char staged_bytes[1 << 20];  // the kernel's extern shared memory
#include BODY
long unwaited_granules = 0;  // cp.async copies a block's threads issued and never waited for

struct Case {
    int N, C, mult, H, W, K, S, pad, dil;
};

// Output rows (or columns) of n input rows (columns); 0 where the window does not fit the padded
// input (C++ division would round a negative span up to 0 and give 1 at stride 2 or more).
int out_size(int n, const Case& c) {
    const int span = c.dil * (c.K - 1) + 1;
    return n + 2 * c.pad < span ? 0 : (n + 2 * c.pad - span) / c.S + 1;
}

template <typename T> T stored(float v);  // v as the kernel's input holds it
template <> float stored<float>(float v) { return v; }
template <> __nv_bfloat16 stored<__nv_bfloat16>(float v) { return lb::from_float<__nv_bfloat16>(v); }

// The kernel on one case, chunks of `group` planes (group > 1: whole planes) or bands of `band`
// output rows, `grid` blocks (0: a block a chunk), `stages` buffers a block, x `offset` elements
// past a 16-byte boundary, cp.async copies landing `late` or at once.  Returns the outputs that are
// wrong.
template <typename T, int KU, int SU>
int run(const Case& c, int group, int band, int grid, int stages, int offset, bool late, bool has_bias,
        std::mt19937& g) {
    const int K = c.K, S = c.S, CO = c.C * c.mult, planes = c.N * c.C;
    const int OH = out_size(c.H, c), OW = out_size(c.W, c);
    constexpr int VE = 16 / sizeof(T);
    std::normal_distribution<float> d;
    std::vector<T> x_store(planes * c.H * c.W + VE);
    T* x = x_store.data() + offset;  // vector storage is 16-byte aligned
    std::vector<float> wt(CO * K * K), b(CO);
    for (int i = 0; i < planes * c.H * c.W; ++i) x[i] = stored<T>(d(g));
    for (auto& v : wt) v = d(g);
    for (auto& v : b) v = d(g);
    wt[0] = INFINITY;                       // channel 0, top-left tap
    if (CO > 1) wt[K * K + K * K - 1] = -INFINITY;  // channel 1, bottom-right tap
    if (CO > 2) wt[2 * K * K + K * (K / 2)] = INFINITY;  // channel 2, middle-left tap
    std::vector<T> out(size_t(c.N) * CO * OH * OW, lb::from_float<T>(NAN));
    const int bands = (OH + band - 1) / band, chunks = (planes + group - 1) / group * bands;
    const int buffer = (group * c.H * c.W + 2 * VE) / VE * VE;
    if (stages * buffer * int(sizeof(T)) > int(sizeof(staged_bytes))) return printf("case too large\n"), 1;
    shared_base = staged_bytes;
    cp_async_late = late;
    gridDim = {unsigned(grid > 0 ? min(grid, chunks) : chunks), 1, 1};
    blockDim = {ROWS_THREADS, 1, 1};
    for (unsigned blk = 0; blk < gridDim.x; ++blk) {
        blockIdx = {blk, 0, 0};
        memset(staged_bytes, 0xff, stages * buffer * sizeof(T));  // NaN: what a block did not stage
        BlockThreads::run(ROWS_THREADS, [&] {
            depthwise_nchw_rows<T, KU, SU>(x, wt.data(), has_bias ? b.data() : nullptr, out.data(), planes, c.H, c.W, CO,
                                           OH, OW, K, K, S, S, c.pad, c.pad, c.dil, c.dil, c.mult, group, band, bands,
                                           chunks, buffer, stages);
            __atomic_add_fetch(&unwaited_granules, long(cp_async_queue::unlanded()), __ATOMIC_RELAXED);
        });
    }
    int bad = 0;
    const double tolerance = sizeof(T) == 4 ? 1e-4 : 1e-2;
    for (int n = 0; n < c.N; ++n)
        for (int co = 0; co < CO; ++co)
            for (int p = 0; p < OH; ++p)
                for (int q = 0; q < OW; ++q) {
                    double ref = has_bias ? b[co] : 0.0;
                    const T* plane = x + (size_t(n) * c.C + co / c.mult) * c.H * c.W;
                    for (int r = 0; r < K; ++r)
                        for (int s = 0; s < K; ++s) {
                            const int ih = p * S - c.pad + r * c.dil, iw = q * S - c.pad + s * c.dil;
                            if (ih >= 0 && ih < c.H && iw >= 0 && iw < c.W)
                                ref += double(lb::to_float(plane[ih * c.W + iw])) * wt[co * K * K + r * K + s];
                        }
                    bad += !matches(ref, lb::to_float(out[((size_t(n) * CO + co) * OH + p) * OW + q]), tolerance);
                }
    if (bad)
        printf("BAD %s K=%d S=%d dil=%d N=%d C=%d mult=%d H=%d W=%d pad=%d group=%d band=%d grid=%d stages=%d "
               "offset=%d late=%d: %d wrong\n", sizeof(T) == 4 ? "fp32" : "bf16", K, S, c.dil, c.N, c.C, c.mult, c.H,
               c.W, c.pad, group, band, grid, stages, offset, int(late), bad);
    return bad;
}

// Every (group, band, grid, offset) for one case and input type; one block walking every chunk
// with two and with four buffers, a block a chunk with three, each way of landing cp.async on
// one of the two offsets.
template <typename T, int KU, int SU>
int sweep(const Case& c, std::mt19937& g, int& cases) {
    const int strip = KU == 0 ? 1 : SU == 1 ? ROWS_STRIP_1 : ROWS_STRIP_2;
    const int OH = out_size(c.H, c);
    if (OH == 0 || out_size(c.W, c) == 0) return 0;  // the window does not fit the padded input
    const int whole = (OH + strip - 1) / strip * strip;
    int bad = 0;
    for (int group : {1, 3})
        for (int band : {strip, whole}) {
            if (group > 1 && band != whole) continue;
            for (int offset : {0, int(16 / sizeof(T)) - 1})
                for (auto [grid, stages] : {std::pair{1, 2}, std::pair{1, 4}, std::pair{0, 3}}) {
                    const bool late = (offset == 0) == (stages != 4);
                    bad += run<T, KU, SU>(c, group, band, grid, stages, offset, late, (c.H + c.W + band + offset) % 2,
                                          g) != 0;
                    ++cases;
                }
        }
    return bad;
}

template <typename T>
int every_window(std::mt19937& g, int& cases) {
    int bad = 0;
    for (auto [H, W] : {std::pair{5, 7}, std::pair{12, 20}, std::pair{9, 3}})
        for (int mult : {1, 2}) {
            const Case base{2, 3, mult, H, W, 3, 1, 1, 1};
            auto with = [&](int K, int S, int pad, int dil) {
                Case c = base;
                c.K = K, c.S = S, c.pad = pad, c.dil = dil;
                return c;
            };
            bad += sweep<T, 3, 1>(with(3, 1, 1, 1), g, cases) + sweep<T, 3, 2>(with(3, 2, 1, 1), g, cases);
            bad += sweep<T, 0, 0>(with(3, 1, 2, 2), g, cases);
            if (mult > 1) continue;  // the multiplier's indexing is the same for every window
            bad += sweep<T, 3, 1>(with(3, 1, 0, 1), g, cases);
            bad += sweep<T, 5, 1>(with(5, 1, 2, 1), g, cases) + sweep<T, 5, 2>(with(5, 2, 2, 1), g, cases);
            bad += sweep<T, 7, 1>(with(7, 1, 3, 1), g, cases) + sweep<T, 0, 0>(with(3, 3, 1, 1), g, cases);
        }
    return bad;
}

int main() {
    std::mt19937 g(1);
    int cases = 0;
    const int bad = every_window<float>(g, cases) + every_window<__nv_bfloat16>(g, cases);
    printf("%d cases, %d bad, %ld misaligned granules, %ld unwaited granules\n", cases, bad, misaligned_granules,
           unwaited_granules);
    return bad != 0 || misaligned_granules != 0 || unwaited_granules != 0;
}
