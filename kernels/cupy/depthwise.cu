// Depthwise convolution: groups == in_channels, out_channels = multiplier * in_channels.  Output
// channel co reads input channel co / multiplier only, through its own KH x KW filter, so nothing
// is shared across channels and the layer is memory-bound: direct kernels, no GEMM, no tensor cores
// (fp32 FMA for every dtype, tf32 included), fp32 accumulation, the bias fused.
//
// The launcher hands over the filter and the bias once, at build, as fp32 (inference prepares its
// weights once too): wt[tap][channel] for NHWC (a thread's channels are one vector per tap),
// wt[channel][tap] for NCHW, tap = kh * KW + kw.  x and out are dense in their layout; every
// element offset fits in int32 (the spec caps each tensor at 2^31 - 1 elements).
#include "layerbench_common.cuh"

namespace {

constexpr int NHWC_THREADS = 256;
constexpr int PIX = 4;  // output pixels of one row per NHWC thread
constexpr int FLAT_THREADS = 128;
constexpr int FLAT_BLOCKS = 3;  // resident a SM: at most 168 registers a thread
// Input rows the flat kernel asks L2 for ahead of its loads (its own loads keep one row in flight).
constexpr int FLAT_PREFETCH = 3;
constexpr int NCHW_MAX_THREADS = 256;
constexpr int FILL_BATCH = 8;  // loads a thread has in flight while an NCHW block fills its tile
constexpr int ROWS_THREADS = 256;
// Staging buffers of a rows block at most: stages - 1 chunks in flight while one is computed.
constexpr int ROWS_MAX_STAGES = 4;
// Output rows a thread of the NCHW rows kernel computes down a column (unrolled windows), at
// stride 1 and at stride 2.
constexpr int ROWS_STRIP_1 = 8;
constexpr int ROWS_STRIP_2 = 4;
// Output columns side by side in a thread's strip, for windows up to ROWS_COLS_MAX_K (a filter
// copy each column: two 7 x 7 copies would not fit the registers of two blocks an SM).
constexpr int ROWS_COLS = 2;
constexpr int ROWS_COLS_MAX_K = 5;
// Blocks of the rows kernel an SM that the compiler keeps registers for: three (at most 80 a
// thread: 24 warps, three blocks' chunks in flight) for 3x3 at stride 1 and 5x5, where the bound
// of two gives 16-bit types 83-96 (two blocks) and three fits with no spills (sm_90); two for the
// rest, which fit three blocks already (3x3 at stride 2, the loops: the bound of three costs them
// 9-21 % more instructions an item) or would spill (7x7).
constexpr int rows_min_blocks(int k, int s) { return (k == 3 && s == 1) || k == 5 ? 3 : 2; }

// VEC consecutive elements, moved as one load or store of sizeof(T) * VEC bytes.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
    T e[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ void load_vec(const T* p, float (&v)[VEC]) {
    const Pack<T, VEC> pk = *reinterpret_cast<const Pack<T, VEC>*>(p);
#pragma unroll
    for (int i = 0; i < VEC; ++i) v[i] = lb::to_float(pk.e[i]);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* p, const float (&v)[VEC]) {
    Pack<T, VEC> pk;
#pragma unroll
    for (int i = 0; i < VEC; ++i) pk.e[i] = lb::from_float<T>(v[i]);
    *reinterpret_cast<Pack<T, VEC>*>(p) = pk;
}

template <int VEC>
__device__ __forceinline__ void fma_vec(float (&acc)[VEC], const float (&w)[VEC], const float (&v)[VEC]) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc[i] = fmaf(w[i], v[i], acc[i]);
}

// VEC values of T as raw 32-bit words: a 16-bit vector of 8 holds 4 registers until it is used
// (as T[VEC] the compiler gives each 16-bit value a register of its own).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Raw {
    unsigned w[sizeof(T) * VEC / 4];
};

__device__ __forceinline__ void unpack_word(unsigned u, float* f, float) { f[0] = __uint_as_float(u); }
__device__ __forceinline__ void unpack_word(unsigned u, float* f, __nv_bfloat16) {
    f[0] = __uint_as_float(u << 16);  // bf16 is the upper half of an fp32
    f[1] = __uint_as_float(u & 0xffff0000u);
}
__device__ __forceinline__ void unpack_word(unsigned u, float* f, __half) {
    __half2 h;
    memcpy(&h, &u, 4);
    const float2 t = __half22float2(h);
    f[0] = t.x;
    f[1] = t.y;
}

template <typename T, int VEC>
__device__ __forceinline__ void unpack(const Raw<T, VEC>& r, float (&f)[VEC]) {
    constexpr int PER_WORD = 4 / static_cast<int>(sizeof(T));
#pragma unroll
    for (int i = 0; i < VEC / PER_WORD; ++i) unpack_word(r.w[i], f + i * PER_WORD, T());
}

// N input vectors of one row, columns iw0 + j0 + c, raw; the ones past `span` or the image's
// edges are not loaded, and their taps are skipped.
template <typename T, int VEC, int N>
__device__ __forceinline__ void load_row(const T* row, int iw0, int j0, int span, int W, int C, Raw<T, VEC> (&v)[N]) {
#pragma unroll
    for (int c = 0; c < N; ++c) {
        const int iw = iw0 + j0 + c;
        if (j0 + c < span && iw >= 0 && iw < W) v[c] = *reinterpret_cast<const Raw<T, VEC>*>(row + iw * C);
    }
}

// The FMAs of N loaded vectors (columns j0 + c of a row) into the PIX pixels whose taps read them.
template <typename T, int VEC, int K, int S, int N>
__device__ __forceinline__ void fma_row(float (&acc)[PIX][VEC], const float (&w)[K][VEC],
                                        const Raw<T, VEC> (&v)[N], int iw0, int j0, int W) {
    constexpr int SPAN = (PIX - 1) * S + K;
#pragma unroll
    for (int c = 0; c < N; ++c) {
        const int j = j0 + c, iw = iw0 + j;
        if (j >= SPAN || iw < 0 || iw >= W) continue;  // padding adds nothing (not even 0 * inf)
        float f[VEC];
        unpack<T, VEC>(v[c], f);
#pragma unroll
        for (int p = 0; p < PIX; ++p) {
            const int kw = j - p * S;  // the tap of pixel p on column j
            if (kw >= 0 && kw < K) fma_vec<VEC>(acc[p], w[kw], f);
        }
    }
}

// Input row ih under a flat run's three horizontal taps, raw: the vectors at element offsets
// off, off + C and off + 2 * C of the row (columns iw, iw + 1, iw + 2); zero off the image and
// where `live` is false.
template <typename T, int VEC>
__device__ __forceinline__ void load_taps(const T* xn, int ih, int H, int W, int C, int off, const bool (&col)[3],
                                          bool live, Raw<T, VEC> (&v)[3]) {
    const bool row = live && ih >= 0 && ih < H;
#pragma unroll
    for (int j = 0; j < 3; ++j) {
        v[j] = Raw<T, VEC>{};
        if (row && col[j]) v[j] = *reinterpret_cast<const Raw<T, VEC>*>(xn + ih * W * C + off + j * C);
    }
}

// A row's three taps as fp32, unpacked once for the three filter rows that use them.
template <typename T, int VEC>
__device__ __forceinline__ void unpack_taps(const Raw<T, VEC> (&v)[3], float (&f)[3][VEC]) {
#pragma unroll
    for (int j = 0; j < 3; ++j) unpack<T, VEC>(v[j], f[j]);
}

// acc += a row's three taps times one filter row, with no branch: a tap off the image holds zeros
// times a zeroed weight (see the kernel), so it adds +0, never 0 * inf.
template <int VEC>
__device__ __forceinline__ void fma_taps(float (&acc)[VEC], const float (&f)[3][VEC], const float (&w)[3][VEC]) {
#pragma unroll
    for (int j = 0; j < 3; ++j) fma_vec<VEC>(acc, w[j], f[j]);
}

// Elements [lo, hi) of input row ih (clipped to the row; nothing off the image) asked of L2 ahead
// of the loads: on Hopper one bulk request by the block's first thread (one from every thread
// was slower in the Triton twin of this kernel), before Hopper a request a thread and vector.
template <typename T, int VEC>
__device__ __forceinline__ void prefetch_span(const T* xn, int ih, int H, int W, int C, int lo, int hi) {
    if (ih < 0 || ih >= H) return;
    lo = max(lo, 0);
    hi = min(hi, W * C);
    const T* row = xn + ih * W * C;
#if __CUDA_ARCH__ >= 900
    if (threadIdx.x == 0 && hi > lo) lb::bulk_prefetch_l2(row + lo, unsigned(hi - lo) * sizeof(T));
#else
    for (int i = lo + int(threadIdx.x) * VEC; i < hi; i += FLAT_THREADS * VEC) lb::prefetch_l2(row + i);
#endif
}

// The stride-1 walk's rolling accumulators one input row on: the oldest output row is done, the
// other two move up, and a fresh one starts.
template <int N>
__device__ __forceinline__ void roll_rows(float (&done)[N], float (&acc1)[N], float (&acc2)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
        done[i] = acc1[i];
        acc1[i] = acc2[i];
        acc2[i] = 0.0f;
    }
}

// A finished output vector plus the bias, stored.
template <typename T, int VEC>
__device__ __forceinline__ void store_biased(T* p, float (&done)[VEC], const float (&b)[VEC]) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) done[i] += b[i];
    store_vec<T, VEC>(p, done);
}

}  // namespace

// NHWC.  A thread computes VEC channels (co = VEC * cv, VEC > 1 only with multiplier 1) of PIX
// neighbouring output pixels of one row; threads run along the channels first, so that a warp's
// loads and stores are consecutive vectors of one pixel.  Thread index, fastest first:
// (cv < CO / VEC, column group < ceil(OW / PIX), oh, image); `items` threads in all.
// K > 0: a K x K window, stride S along w, no dilation (any stride along h): the taps unroll, and
// each input row under the thread's PIX windows is loaded once, (PIX - 1) * S + K vectors, every
// vector feeding each (pixel, tap) that reads it.  K == 0: any window, stride and dilation, in
// loops; each tap loaded per pixel (its neighbours' loads bring it into L1).
template <typename T, int VEC, int K, int S>
__global__ void __launch_bounds__(NHWC_THREADS) depthwise_nhwc(
    const T* __restrict__ x, const float* __restrict__ wt, const float* __restrict__ bias,
    T* __restrict__ out, int items, int C, int H, int W, int CO, int OH, int OW, int KH, int KW,
    int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int mult) {
    const int item = blockIdx.x * NHWC_THREADS + threadIdx.x;
    if (item >= items) return;
    const int vectors = CO / VEC, groups = (OW + PIX - 1) / PIX;
    int t = item;
    const int co = (t % vectors) * VEC;
    t /= vectors;
    const int ow0 = (t % groups) * PIX;
    t /= groups;
    const int oh = t % OH;
    const int n = t / OH;
    const int ih0 = oh * stride_h - pad_h, iw0 = ow0 * stride_w - pad_w;
    const T* xn = x + n * H * W * C + co / mult;

    float acc[PIX][VEC];
    {
        float b[VEC];
#pragma unroll
        for (int i = 0; i < VEC; ++i) b[i] = 0.0f;
        if (bias != nullptr) load_vec<float, VEC>(bias + co, b);
#pragma unroll
        for (int p = 0; p < PIX; ++p)
#pragma unroll
            for (int i = 0; i < VEC; ++i) acc[p][i] = b[i];
    }

    if constexpr (K > 0) {
        constexpr int SPAN = (PIX - 1) * S + K;  // input columns under the PIX windows
        // Packed vectors in flight: what the 128 registers of two blocks an SM leave beside the
        // accumulators, the row's taps, one unpacked vector and about 16 for addresses.  Where two
        // whole rows fit, the next row is loaded before this row's FMAs, so a thread waits for
        // memory once a row less; else one row at a time, CHUNK vectors loaded before any is used
        // (loaded and used one at a time, the compiled loop kept one load in flight a thread).
        constexpr int PACK_REGS = static_cast<int>(sizeof(Raw<T, VEC>)) / 4;
        constexpr int FREE = (128 - 16 - (PIX + K + 1) * VEC) / PACK_REGS;
        constexpr bool NEXT_ROW = 2 * SPAN <= FREE;
        constexpr int CHUNK = NEXT_ROW ? SPAN : (FREE < 1 ? 1 : (FREE > SPAN ? SPAN : FREE));
        const auto row_of = [&](int kh) { return xn + (ih0 + kh) * W * C; };
        const auto inside = [&](int kh) { return ih0 + kh >= 0 && ih0 + kh < H; };
        Raw<T, VEC> v[CHUNK];
        if constexpr (NEXT_ROW) {
            if (inside(0)) load_row<T, VEC, CHUNK>(row_of(0), iw0, 0, SPAN, W, C, v);
        }
#pragma unroll
        for (int kh = 0; kh < K; ++kh) {
            Raw<T, VEC> next[NEXT_ROW ? CHUNK : 1];
            if constexpr (NEXT_ROW) {
                if (kh + 1 < K && inside(kh + 1)) load_row<T, VEC, CHUNK>(row_of(kh + 1), iw0, 0, SPAN, W, C, next);
            }
            if (inside(kh)) {
                float w[K][VEC];
#pragma unroll
                for (int kw = 0; kw < K; ++kw) load_vec<float, VEC>(wt + (kh * K + kw) * CO + co, w[kw]);
                if constexpr (NEXT_ROW) {
                    fma_row<T, VEC, K, S, CHUNK>(acc, w, v, iw0, 0, W);
                } else {
#pragma unroll
                    for (int j0 = 0; j0 < SPAN; j0 += CHUNK) {
                        load_row<T, VEC, CHUNK>(row_of(kh), iw0, j0, SPAN, W, C, v);
                        fma_row<T, VEC, K, S, CHUNK>(acc, w, v, iw0, j0, W);
                    }
                }
            }
            if constexpr (NEXT_ROW) {
#pragma unroll
                for (int c = 0; c < CHUNK; ++c) v[c] = next[c];
            }
        }
    } else {
        for (int kh = 0; kh < KH; ++kh) {
            const int ih = ih0 + kh * dil_h;
            if (ih < 0 || ih >= H) continue;
            const T* row = xn + ih * W * C;
            for (int kw = 0; kw < KW; ++kw) {
                float w[VEC];
                load_vec<float, VEC>(wt + (kh * KW + kw) * CO + co, w);
#pragma unroll
                for (int p = 0; p < PIX; ++p) {
                    const int iw = iw0 + p * stride_w + kw * dil_w;
                    if (iw < 0 || iw >= W) continue;
                    float v[VEC];
                    load_vec<T, VEC>(row + iw * C, v);
                    fma_vec<VEC>(acc[p], w, v);
                }
            }
        }
    }

    T* o = out + (n * OH + oh) * OW * CO + co;
#pragma unroll
    for (int p = 0; p < PIX; ++p)
        if (ow0 + p < OW) store_vec<T, VEC>(o + (ow0 + p) * CO, acc[p]);
}

// NCHW.  Block (plane, tile row, tile column), plane = image * CO + co, computes a TH x TW tile
// of that output plane.  First its threads stage the input the tile reads, IH x IW values from
// (oh0 * stride_h - pad_h, ow0 * stride_w - pad_w) on, halo included, as fp32 in shared memory
// (zeros in the padding); then thread (tx, ty) = (tid % TW, tid / TW) computes the tile's pixels
// (ty + r * blockDim.x / TW, tx) from there.  K > 0: a K x K window (any stride and dilation),
// the taps unrolled with the filter in registers; K == 0: any window, in loops.
template <typename T, int K>
__global__ void __launch_bounds__(NCHW_MAX_THREADS, 1) depthwise_nchw(
    const T* __restrict__ x, const float* __restrict__ wt, const float* __restrict__ bias,
    T* __restrict__ out, int C, int H, int W, int CO, int OH, int OW, int KH, int KW,
    int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int mult, int TH,
    int TW, int IH, int IW) {
    extern __shared__ float tile[];  // [IH][IW]
    const int plane = blockIdx.x;
    const int n = plane / CO, co = plane - n * CO;
    const int oh0 = blockIdx.y * TH, ow0 = blockIdx.z * TW;
    const int ih0 = oh0 * stride_h - pad_h, iw0 = ow0 * stride_w - pad_w;
    const T* xp = x + (n * C + co / mult) * H * W;
    const int tid = threadIdx.x, threads = blockDim.x;

    // FILL_BATCH elements a thread are loaded before any is stored: with a store after each load,
    // the compiled loop kept one load in flight a thread (fp16/bf16).
    for (int e0 = tid; e0 < IH * IW; e0 += FILL_BATCH * threads) {
        float v[FILL_BATCH];
#pragma unroll
        for (int b = 0; b < FILL_BATCH; ++b) {
            const int e = e0 + b * threads, r = e / IW, c = e - r * IW;
            const int ih = ih0 + r, iw = iw0 + c;
            v[b] = (e < IH * IW && ih >= 0 && ih < H && iw >= 0 && iw < W) ? lb::to_float(xp[ih * W + iw]) : 0.0f;
        }
#pragma unroll
        for (int b = 0; b < FILL_BATCH; ++b)
            if (e0 + b * threads < IH * IW) tile[e0 + b * threads] = v[b];
    }
    constexpr int TAPS = K > 0 ? K * K : 1;
    float f[TAPS];
    if constexpr (K > 0) {
#pragma unroll
        for (int i = 0; i < TAPS; ++i) f[i] = wt[co * TAPS + i];
    }
    const float b = bias != nullptr ? bias[co] : 0.0f;
    __syncthreads();

    const int tx = tid % TW, rows = threads / TW;
    const int ow = ow0 + tx;
    T* op = out + plane * OH * OW;
    for (int ty = tid / TW; ty < TH; ty += rows) {
        const int oh = oh0 + ty;
        if (oh >= OH || ow >= OW) continue;
        const float* src = tile + ty * stride_h * IW + tx * stride_w;  // the window's first tap
        float acc = b;
        if constexpr (K > 0) {
#pragma unroll
            for (int kh = 0; kh < K; ++kh)
#pragma unroll
                for (int kw = 0; kw < K; ++kw)
                    acc = fmaf(f[kh * K + kw], src[kh * dil_h * IW + kw * dil_w], acc);
        } else {
            const float* fw = wt + co * KH * KW;
            for (int kh = 0; kh < KH; ++kh)
                for (int kw = 0; kw < KW; ++kw)
                    acc = fmaf(fw[kh * KW + kw], src[kh * dil_h * IW + kw * dil_w], acc);
        }
        op[oh * OW + ow] = lb::from_float<T>(acc);
    }
}

// Waits until at most `n` (1 to ROWS_MAX_STAGES - 1) of this thread's cp.async groups are in flight
// (the instruction takes the count as an immediate).
__device__ __forceinline__ void wait_all_but(int n) {
    static_assert(ROWS_MAX_STAGES == 4, "a wait for each count below");
    if (n == 1) lb::cp_async_wait_group<1>();
    else if (n == 2) lb::cp_async_wait_group<2>();
    else lb::cp_async_wait_group<3>();
}

// NCHW, whole-width rows.  The work comes in chunks: `group` whole input planes where a plane's
// outputs are few (then bands == 1), else (group == 1) a band of `band` output rows of one plane.
// A chunk's input rows are one run of x: all rows of its planes, or those under its band.  A block
// stays resident and walks chunks blockIdx.x, + gridDim.x, ..., each staged raw in shared memory
// by cp.async, into the next of `stages` buffers (2 to ROWS_MAX_STAGES), stages - 1 chunks ahead
// of the one the block computes: DRAM sees long runs with many bytes in flight, and no thread
// waits on them.  The run's 16-byte granules go by cp.async, its unaligned ends (fewer than 16
// bytes each) by a register a thread, stored one chunk later (the buffer is free by then).  Each
// thread then computes items in the order (column group, strip, output plane), fastest first, so
// that a warp reads and stores neighbouring columns.  K > 0: a K x K window, stride S both ways,
// no dilation: an item is a strip of STRIP output rows of COLS neighbouring columns; each input
// row under the strip is read once (the SPAN values under the COLS windows) and multiplied into
// every output of the strip whose window holds it, so the item's index arithmetic, filter loads
// and shared-memory reads are shared by STRIP * COLS outputs.  K == 0: any window, stride and
// dilation, one output an item, in loops.  Taps off the image add nothing (not even 0 * inf):
// rows off it are skipped and, for each column, the weights of taps off it zeroed.  A chunk's
// index: plane group * bands + band.  `buffer`: the T elements of a buffer (a multiple of 16
// bytes).
template <typename T, int K, int S>
__global__ void __launch_bounds__(ROWS_THREADS, rows_min_blocks(K, S)) depthwise_nchw_rows(
    const T* __restrict__ x, const float* __restrict__ wt, const float* __restrict__ bias,
    T* __restrict__ out, int planes, int H, int W, int CO, int OH, int OW, int KH, int KW,
    int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int mult, int group, int band,
    int bands, int chunks, int buffer, int stages) {
    extern __shared__ __align__(16) unsigned char staged_bytes[];
    T* const staged = reinterpret_cast<T*>(staged_bytes);
    constexpr int STRIP = K == 0 ? 1 : S == 1 ? ROWS_STRIP_1 : ROWS_STRIP_2;
    constexpr int COLS = K == 0 || K > ROWS_COLS_MAX_K ? 1 : ROWS_COLS;
    constexpr int VE = 16 / static_cast<int>(sizeof(T));  // elements of a 16-byte granule
    const int tid = threadIdx.x;
    // Chunk c's band, first plane, planes, staged rows [lo, hi) of each plane, and where its run
    // starts in x and in its buffer (`lead` puts x's 16-byte granules on the buffer's).
    struct Chunk {
        int b, p0, np, lo, hi, start, count, lead;
    };
    auto chunk = [&](int c) {
        Chunk g;
        g.b = c % bands;
        g.p0 = (c / bands) * group;
        g.np = min(group, planes - g.p0);
        g.lo = 0;
        g.hi = H;
        if (group == 1) {
            g.lo = max(0, g.b * band * stride_h - pad_h);
            g.hi = max(g.lo, min(H, ((g.b + 1) * band - 1) * stride_h - pad_h + (KH - 1) * dil_h + 1));
        }
        g.start = g.p0 * H * W + g.lo * W;
        g.count = (g.np - 1) * H * W + (g.hi - g.lo) * W;
        g.lead = static_cast<int>(reinterpret_cast<size_t>(x + g.start) % 16) / static_cast<int>(sizeof(T));
        return g;
    };
    // Thread tid's end element of a run: the first VE threads take the head, the next VE the tail.
    T edge{};
    T* edge_to = nullptr;
    auto stage = [&](int c, T* buf) {
        const Chunk g = chunk(c);
        const T* src = x + g.start;
        T* s = buf + g.lead;
        const int head = min(g.count, (VE - g.lead) % VE), granules = (g.count - head) / VE;
        const int tail = head + granules * VE;
        for (int v = tid; v < granules; v += ROWS_THREADS)
            lb::cp_async16(lb::smem_addr(s + head + v * VE), src + head + v * VE, true);
        const int e = tid < VE ? tid : tail + tid - VE;
        edge_to = (tid < VE ? tid < head : tid < 2 * VE && e < g.count) ? s + e : nullptr;
        if (edge_to != nullptr) edge = src[e];
    };

    // A thread's items lie ROWS_THREADS apart in every chunk: split its first into (column group
    // cg, strip st, output plane po) once, then step, since a division an item cost about as much
    // as its FMAs.
    const int strips = band / STRIP, groups = (OW + COLS - 1) / COLS;
    const int step_g = ROWS_THREADS % groups, step_t = ROWS_THREADS / groups;
    const int step_s = step_t % strips, step_p = step_t / strips;
    const int g0 = tid % groups, s0 = tid / groups % strips, p0 = tid / groups / strips;

    // The first stages - 1 chunks, a cp.async group each (their ends stored at once: the buffers
    // are fresh); then each step stages the chunk stages - 1 ahead and waits for its own group.
    for (int i = 0; i < stages - 1; ++i) {
        const int c = blockIdx.x + i * int(gridDim.x);
        if (c < chunks) {
            stage(c, staged + i * buffer);
            if (edge_to != nullptr) *edge_to = edge;
        }
        lb::cp_async_commit();
    }
    edge_to = nullptr;
    int now = 0;  // the buffer of chunk c; the one before it takes chunk c + (stages - 1) * gridDim.x
    for (int c = blockIdx.x; c < chunks; c += gridDim.x, now = now + 1 == stages ? 0 : now + 1) {
        T* const cur = staged + now * buffer;
        const T edge_before = edge;  // the ends of the chunk staged last step
        T* const edge_before_to = edge_to;
        edge_to = nullptr;
        const int ahead = c + (stages - 1) * int(gridDim.x);
        if (ahead < chunks) stage(ahead, staged + (now == 0 ? stages - 1 : now - 1) * buffer);
        lb::cp_async_commit();
        if (edge_before_to != nullptr) *edge_before_to = edge_before;
        wait_all_but(stages - 1);  // this chunk's granules are in; the chunks after it may not be
        __syncthreads();

        const Chunk g = chunk(c);
        const int items = g.np * mult * strips * groups;
        int cg = g0, st = s0, po = p0;
        for (int item = tid; item < items; item += ROWS_THREADS) {
            const int ow0 = cg * COLS, oh0 = g.b * band + st * STRIP;
            const unsigned plane = g.p0 * mult + po;  // the output plane, n * CO + co
            const int co = plane % unsigned(CO), pi = mult == 1 ? po : unsigned(po) / unsigned(mult);
            cg += step_g;
            st += step_s + (cg >= groups);
            cg -= cg >= groups ? groups : 0;
            po += step_p + (st >= strips);
            st -= st >= strips ? strips : 0;
            const float* f = wt + co * KH * KW;
            const T* sp = cur + g.lead + pi * H * W;  // sp[(ih - lo) * W + iw]: input (ih, iw)
            float acc[STRIP][COLS];
#pragma unroll
            for (int o = 0; o < STRIP; ++o)
#pragma unroll
                for (int q = 0; q < COLS; ++q) acc[o][q] = 0.0f;
            if constexpr (K > 0) {
                constexpr int SPAN = (COLS - 1) * S + K;  // input columns under the COLS windows
                const int ih0 = oh0 * S - pad_h, iw0 = ow0 * S - pad_w;
                bool col[SPAN];
#pragma unroll
                for (int j = 0; j < SPAN; ++j) col[j] = iw0 + j >= 0 && iw0 + j < W;
                float w[COLS][K][K];  // column q's filter, its taps off the image zeroed
#pragma unroll
                for (int r = 0; r < K; ++r)
#pragma unroll
                    for (int j = 0; j < K; ++j) {
                        const float fj = f[r * K + j];
#pragma unroll
                        for (int q = 0; q < COLS; ++q) w[q][r][j] = col[q * S + j] ? fj : 0.0f;
                    }
                const T* row = sp + (ih0 - g.lo) * W + iw0;  // input row ih0, column iw0; a row on each step
#pragma unroll
                for (int i = 0; i < (STRIP - 1) * S + K; ++i, row += W) {
                    const int ih = ih0 + i;
                    if (ih < 0 || ih >= H) continue;
                    float v[SPAN];
#pragma unroll
                    for (int j = 0; j < SPAN; ++j) v[j] = col[j] ? lb::to_float(row[j]) : 0.0f;
#pragma unroll
                    for (int o = 0; o < STRIP; ++o) {
                        const int r = i - o * S;  // the filter row of output row oh0 + o on this input row
                        if (r < 0 || r >= K) continue;
#pragma unroll
                        for (int q = 0; q < COLS; ++q)
#pragma unroll
                            for (int j = 0; j < K; ++j) acc[o][q] = fmaf(w[q][r][j], v[q * S + j], acc[o][q]);
                    }
                }
            } else {
                for (int kh = 0; kh < KH; ++kh) {
                    const int ih = oh0 * stride_h - pad_h + kh * dil_h;
                    if (ih < 0 || ih >= H) continue;
                    for (int kw = 0; kw < KW; ++kw) {
                        const int iw = ow0 * stride_w - pad_w + kw * dil_w;
                        if (iw >= 0 && iw < W)
                            acc[0][0] = fmaf(f[kh * KW + kw], lb::to_float(sp[(ih - g.lo) * W + iw]), acc[0][0]);
                    }
                }
            }
            const float bv = bias != nullptr ? bias[co] : 0.0f;
            T* o = out + (plane * OH + oh0) * OW + ow0;  // a row on each step
#pragma unroll
            for (int v = 0; v < STRIP; ++v, o += OW)
#pragma unroll
                for (int q = 0; q < COLS; ++q)
                    if (oh0 + v < OH && ow0 + q < OW) o[q] = lb::from_float<T>(acc[v][q] + bv);
        }
        __syncthreads();  // the buffer is free for the chunk stages - 1 ahead
    }
}

// NHWC, 3x3, one output channel per input channel, no dilation, stride S both ways (1 or 2): flat
// runs of output rows.  An output row's OW * C elements are one run in memory; a thread computes
// VEC consecutive ones (one pixel's channels: C is a multiple of VEC) for a band of `band` output
// rows, walking the band's input rows once, each loaded as the three vectors under its horizontal
// taps (at element offsets off + j * C: the same run shifted by whole pixels) and multiplied into
// the output rows it belongs to, held as rolling fp32 accumulators; the next row is loaded
// before this row's FMAs, and the rows FLAT_PREFETCH ahead are asked of L2.  The nine taps stay
// in registers.  Block index, fastest first:
// (segment of FLAT_THREADS * VEC elements of the run, band, image).
template <typename T, int VEC, int S>
__global__ void __launch_bounds__(FLAT_THREADS, FLAT_BLOCKS) depthwise_nhwc_flat(
    const T* __restrict__ x, const float* __restrict__ wt, const float* __restrict__ bias,
    T* __restrict__ out, int C, int H, int W, int OH, int OW, int pad_h, int pad_w, int band, int segments,
    int bands) {
    const int run = OW * C;
    int block = blockIdx.x;
    const int segment = block % segments;
    block /= segments;
    const int p0 = (block % bands) * band;
    const int n = block / bands;
    const int e = (segment * FLAT_THREADS + threadIdx.x) * VEC;
    if (e >= run) return;
    const int q = e / C, c = e - q * C;
    const int iw = q * S - pad_w;
    const int off = iw * C + c;  // the left tap's element in an input row
    bool col[3];
#pragma unroll
    for (int j = 0; j < 3; ++j) col[j] = iw + j >= 0 && iw + j < W;
    float w[3][3][VEC];
#pragma unroll
    for (int r = 0; r < 3; ++r)
#pragma unroll
        for (int j = 0; j < 3; ++j) load_vec<float, VEC>(wt + (r * 3 + j) * C + c, w[r][j]);
    // The taps of a column off the image get weight 0 (their loads give 0): no branch a tap in the
    // loop.  Rows off the image are skipped whole (the same for the whole block).
#pragma unroll
    for (int j = 0; j < 3; ++j)
#pragma unroll
        for (int r = 0; r < 3; ++r)
#pragma unroll
            for (int i = 0; i < VEC; ++i) w[r][j][i] = col[j] ? w[r][j][i] : 0.0f;
    float b[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) b[i] = 0.0f;
    if (bias != nullptr) load_vec<float, VEC>(bias + c, b);
    const T* xn = x + n * H * W * C;
    T* o = out + n * OH * run + e;
    const int rows = min(band, OH - p0);
    const int top = p0 * S - pad_h;
    // The input elements of a row that the block's taps read: from its first element's left tap
    // to its last element's right tap.
    const int start = segment * FLAT_THREADS * VEC, end = min(start + FLAT_THREADS * VEC, run);
    const int lo = start + (S - 1) * (start / C) * C - pad_w * C;
    const int hi = end + (S - 1) * ((end - 1) / C) * C + (2 - pad_w) * C;

    Raw<T, VEC> cur[3], next[3];
    load_taps<T, VEC>(xn, top, H, W, C, off, col, true, cur);
    if constexpr (S == 1) {
        // Output rows (s - 2, s - 1, s) of the band, partly summed: input row s adds to all three.
        float acc1[VEC], acc2[VEC];
#pragma unroll
        for (int i = 0; i < VEC; ++i) acc1[i] = acc2[i] = 0.0f;
        for (int s = 0; s < rows + 2; ++s) {
            load_taps<T, VEC>(xn, top + s + 1, H, W, C, off, col, s + 1 < rows + 2, next);
            const int ahead = s + 1 + FLAT_PREFETCH;
            if (ahead < rows + 2) prefetch_span<T, VEC>(xn, top + ahead, H, W, C, lo, hi);
            const bool in = top + s >= 0 && top + s < H;
            float done[VEC];
            roll_rows<VEC>(done, acc1, acc2);
            if (in) {
                float f[3][VEC];
                unpack_taps<T, VEC>(cur, f);
                fma_taps<VEC>(done, f, w[2]);
                fma_taps<VEC>(acc1, f, w[1]);
                fma_taps<VEC>(acc2, f, w[0]);
            }
            if (s >= 2) store_biased<T, VEC>(o + (p0 + s - 2) * run, done, b);
#pragma unroll
            for (int j = 0; j < 3; ++j) cur[j] = next[j];
        }
    } else {
        // Output row r of the band reads input rows 2r, 2r + 1 and 2r + 2 from the top: step r
        // finishes row r - 1 with the even row 2r and starts row r with it and the odd row 2r + 1.
        Raw<T, VEC> odd[3], next_odd[3];
        load_taps<T, VEC>(xn, top + 1, H, W, C, off, col, true, odd);
        float acc[VEC];
#pragma unroll
        for (int i = 0; i < VEC; ++i) acc[i] = 0.0f;
        for (int r = 0; r <= rows; ++r) {
            load_taps<T, VEC>(xn, top + 2 * r + 2, H, W, C, off, col, r < rows, next);
            load_taps<T, VEC>(xn, top + 2 * r + 3, H, W, C, off, col, r + 1 < rows, next_odd);
            // Input rows 2r + 2 .. 2 * rows of the band are read; ask for two of them FLAT_PREFETCH ahead.
            const int ahead = 2 * r + 2 + FLAT_PREFETCH;
            if (ahead <= 2 * rows) prefetch_span<T, VEC>(xn, top + ahead, H, W, C, lo, hi);
            if (ahead + 1 <= 2 * rows) prefetch_span<T, VEC>(xn, top + ahead + 1, H, W, C, lo, hi);
            const bool even_in = top + 2 * r >= 0 && top + 2 * r < H;
            const bool odd_in = top + 2 * r + 1 >= 0 && top + 2 * r + 1 < H;
            float done[VEC];
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                done[i] = acc[i];
                acc[i] = 0.0f;
            }
            float f[3][VEC];
            if (even_in) {
                unpack_taps<T, VEC>(cur, f);
                fma_taps<VEC>(done, f, w[2]);
                fma_taps<VEC>(acc, f, w[0]);
            }
            if (odd_in) {
                unpack_taps<T, VEC>(odd, f);
                fma_taps<VEC>(acc, f, w[1]);
            }
            if (r >= 1) store_biased<T, VEC>(o + (p0 + r - 1) * run, done, b);
#pragma unroll
            for (int j = 0; j < 3; ++j) {
                cur[j] = next[j];
                odd[j] = next_odd[j];
            }
        }
    }
}

// NCHW, 3x3, one output channel per input channel, no dilation, stride S both ways (1 or 2): each
// plane's output rows are runs of their own, and the input under a row's three horizontal taps is
// the run shifted by one input column.  A block takes FLAT_THREADS >> tq_log2 planes x 2^tq_log2
// threads along their rows (the row's COLS-column groups rounded up to a power of two, at most
// FLAT_THREADS) of a band of `band` output rows; a thread computes COLS consecutive output
// columns of one plane, walking the band's input rows once, as the NHWC kernel above does with
// vectors: the (COLS - 1) * S + 3 elements of a row under its columns' taps loaded once each (a
// warp's loads cover consecutive elements of the plane's row), the next row loaded before this
// row's FMAs, and the row FLAT_PREFETCH ahead asked of L2 (a thread's few elements in flight are
// too little to keep DRAM busy).  More columns a thread load fewer elements per output: 3 at
// COLS 1, 1.5 at COLS 4 (stride 1).  Block index, fastest first: (segment of the row, band, plane
// group).
template <typename T, int S, int COLS>
__global__ void __launch_bounds__(FLAT_THREADS) depthwise_nchw_flat(
    const T* __restrict__ x, const float* __restrict__ wt, const float* __restrict__ bias,
    T* __restrict__ out, int planes, int C, int H, int W, int OH, int OW, int pad_h, int pad_w, int band,
    int segments, int bands, int tq_log2) {
    constexpr int SPAN = (COLS - 1) * S + 3;  // input columns under a thread's COLS outputs
    int block = blockIdx.x;
    const int segment = block % segments;
    block /= segments;
    const int p0 = (block % bands) * band;
    const int plane = (block / bands) * (FLAT_THREADS >> tq_log2) + (int(threadIdx.x) >> tq_log2);
    const int q0 = ((segment << tq_log2) + (int(threadIdx.x) & ((1 << tq_log2) - 1))) * COLS;
    if (plane >= planes || q0 >= OW) return;
    const int iw = q0 * S - pad_w;  // the first output's left tap's input column
    bool col[SPAN];
#pragma unroll
    for (int i = 0; i < SPAN; ++i) col[i] = iw + i >= 0 && iw + i < W;
    // Each output's taps on a column off the image get weight 0 (their loads give 0): no branch a
    // tap in the loop.  Rows off the image are skipped whole (the same for the whole block).
    const int c = plane % C;
    const float* f = wt + c * 9;
    float w[COLS][3][3];
#pragma unroll
    for (int k = 0; k < COLS; ++k)
#pragma unroll
        for (int r = 0; r < 3; ++r)
#pragma unroll
            for (int j = 0; j < 3; ++j) w[k][r][j] = col[k * S + j] ? f[r * 3 + j] : 0.0f;
    const float b = bias != nullptr ? bias[c] : 0.0f;
    const T* xp = x + plane * H * W + iw;
    T* o = out + plane * OH * OW + q0;
    const int rows = min(band, OH - p0);
    const int top = p0 * S - pad_h;
    const int mid = min(max(iw + 1, 0), W - 1) - iw;  // the prefetched element, in the row

    // Rows stay in x's type until their FMAs: widened as loaded, a row's loads would be waited on
    // at once, before this step's FMAs, leaving a thread one row in flight instead of two.
    const T zero = lb::from_float<T>(0.0f);
    auto load = [&](int ih, bool live, T (&v)[SPAN]) {
        const bool row = live && ih >= 0 && ih < H;
#pragma unroll
        for (int i = 0; i < SPAN; ++i) v[i] = row && col[i] ? xp[ih * W + i] : zero;
    };
    auto prefetch = [&](int ih) {
        if (ih >= 0 && ih < H) lb::prefetch_l2(xp + ih * W + mid);
    };
    auto times = [&](const T (&v)[SPAN], int r, float (&acc)[COLS]) {
#pragma unroll
        for (int k = 0; k < COLS; ++k)
#pragma unroll
            for (int j = 0; j < 3; ++j) acc[k] = fmaf(w[k][r][j], lb::to_float(v[k * S + j]), acc[k]);
    };
    auto store = [&](int p, float (&done)[COLS]) {
#pragma unroll
        for (int k = 0; k < COLS; ++k)
            if (q0 + k < OW) o[p * OW + k] = lb::from_float<T>(done[k] + b);
    };

    T cur[SPAN], next[SPAN];
    load(top, true, cur);
    if constexpr (S == 1) {
        // Output rows (s - 2, s - 1, s) of the band, partly summed: input row s adds to all three.
        float acc1[COLS], acc2[COLS];
#pragma unroll
        for (int k = 0; k < COLS; ++k) acc1[k] = acc2[k] = 0.0f;
        for (int s = 0; s < rows + 2; ++s) {
            load(top + s + 1, s + 1 < rows + 2, next);
            if (s + 1 + FLAT_PREFETCH < rows + 2) prefetch(top + s + 1 + FLAT_PREFETCH);
            float done[COLS];
            roll_rows<COLS>(done, acc1, acc2);
            if (top + s >= 0 && top + s < H) {
                times(cur, 2, done);
                times(cur, 1, acc1);
                times(cur, 0, acc2);
            }
            if (s >= 2) store(p0 + s - 2, done);
#pragma unroll
            for (int i = 0; i < SPAN; ++i) cur[i] = next[i];
        }
    } else {
        // As the NHWC kernel: step r finishes output row r - 1 with the even input row 2r and
        // starts row r with it and the odd row 2r + 1.
        T odd[SPAN], next_odd[SPAN];
        load(top + 1, true, odd);
        float acc[COLS];
#pragma unroll
        for (int k = 0; k < COLS; ++k) acc[k] = 0.0f;
        for (int r = 0; r <= rows; ++r) {
            load(top + 2 * r + 2, r < rows, next);
            load(top + 2 * r + 3, r + 1 < rows, next_odd);
            const int ahead = 2 * r + 2 + FLAT_PREFETCH;
            if (ahead <= 2 * rows) prefetch(top + ahead);
            if (ahead + 1 <= 2 * rows) prefetch(top + ahead + 1);
            float done[COLS];
#pragma unroll
            for (int k = 0; k < COLS; ++k) {
                done[k] = acc[k];
                acc[k] = 0.0f;
            }
            if (top + 2 * r >= 0 && top + 2 * r < H) {
                times(cur, 2, done);
                times(cur, 0, acc);
            }
            if (top + 2 * r + 1 >= 0 && top + 2 * r + 1 < H) times(odd, 1, acc);
            if (r >= 1) store(p0 + r - 1, done);
#pragma unroll
            for (int i = 0; i < SPAN; ++i) {
                cur[i] = next[i];
                odd[i] = next_odd[i];
            }
        }
    }
}
