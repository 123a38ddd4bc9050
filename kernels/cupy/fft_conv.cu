// FFT convolution, fp32 on FFMA, stride 1:
//
//   out[b][k] = crop( IFFT2( sum_c FFT2(x[b][c]) * conj(FFT2(w[k][c])) ) ) + bias[k]
//
// (cross-correlation is a product with the conjugate).  Every plane, zero-padded to N x N with N
// a power of two >= its padded size, makes N x (N/2 + 1) complex values: the real input's
// half spectrum, stored plane after plane, frequencies f = u * (N/2 + 1) + v contiguous.  An
// N x N circular correlation equals the linear one on every output the crop keeps, since
// no output window reaches past row or column N - 1.  A plane larger than the largest N is cut
// into overlap-save tiles: tile (ty, tx) transforms the N x N input from (ty, tx) * step and keeps
// its step x step outputs (step = N - kernel + 1); each tile is one more image to fft_cgemm.
//
// fft_forward: a block takes one plane, or several small ones (Transform); rows two at a time as
//              one complex FFT (row 2r the real part, row 2r + 1 the imaginary part), split
//              into the two half spectra, then N-point column FFTs over the N/2 + 1 kept
//              columns.  Each thread runs 16-point FFTs in registers (Fft: two passes for
//              N > 16), data in shared memory between passes.
// fft_weight:  the weight's spectra straight from its taps, for windows of at most 16 a side:
//              W[u][v] = sum_r e^(-2 pi i u r / N) sum_c w[r][c] e^(-2 pi i v c / N), the inner
//              sums first (kh x (N/2 + 1) values a plane, in shared memory), then the outer
//              (N x (N/2 + 1)).  The same half spectrum as fft_forward's, without transforming the
//              N x N grid that is zero past the window.
// fft_cgemm:   per frequency, Y[b][k] = sum_c X[b][c] * conj(W[k][c]): a block takes 4
//              consecutive frequencies x 64 images x 32 output channels, c in stages of 8.
// fft_inverse: a block takes output planes as fft_forward does: column inverse FFTs, then the
//              rows the crop keeps, two at a time (the Hermitian half spectra as one complex
//              FFT), scaled by 1 / N^2, bias added, written through the output's strides.
#include "layerbench_common.cuh"

namespace {

// fft_cgemm's tiles; must match _fft_plan.
constexpr int GEMM_THREADS = 256;
constexpr int FT = 4;   // frequencies per block: 32 bytes of each (plane, c) row
constexpr int BT = 64;  // images per block: 8 a thread
constexpr int KT = 32;  // output channels per block
constexpr int CT = 8;   // input channels per stage
constexpr int GEMM_STAGES = 3;
constexpr int WEIGHT_THREADS = 256;  // fft_weight's block; must match fft_plan
constexpr int LOAD_BATCH = 8;        // elements a thread loads before storing any while fft_forward fills

__device__ __forceinline__ float2 cadd(float2 a, float2 b) { return make_float2(a.x + b.x, a.y + b.y); }
__device__ __forceinline__ float2 csub(float2 a, float2 b) { return make_float2(a.x - b.x, a.y - b.y); }
__device__ __forceinline__ float2 cmul(float2 a, float2 b) {
    return make_float2(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
}
__device__ __forceinline__ float2 conj(float2 a) { return make_float2(a.x, -a.y); }

constexpr int bitrev(int v, int bits) { return bits == 0 ? 0 : ((v & 1) << (bits - 1)) | bitrev(v >> 1, bits - 1); }

// tw[j] = exp(sign * 2 pi i j / N), j < N.  sincospif of a dyadic argument is exact to an ulp.
template <int LOGN>
__device__ __forceinline__ void make_twiddles(float2* tw, float sign) {
    constexpr int N = 1 << LOGN;
    for (int j = threadIdx.x; j < N; j += blockDim.x) {
        float s, c;
        sincospif(sign * 2.0f * j / N, &s, &c);
        tw[j] = make_float2(c, s);
    }
}

// An R-point FFT (R = 2^LOGR) in registers: v in bit-reversed order in, natural order out.
// Fully unrolled; W_R^j is tw[j * N / R], an immediate offset into the twiddle table.
template <int LOGR, int LOGN>
__device__ __forceinline__ void fft_registers(float2 (&v)[1 << LOGR], const float2* tw) {
#pragma unroll
    for (int s = 0; s < LOGR; ++s) {
        const int half = 1 << s;
#pragma unroll
        for (int j = 0; j < (1 << (LOGR - 1)); ++j) {
            const int pos = j & (half - 1);
            const int i0 = ((j - pos) << 1) + pos;
            const float2 t = pos == 0 ? v[i0 + half] : cmul(v[i0 + half], tw[pos << (LOGN - 1 - s)]);
            v[i0 + half] = csub(v[i0], t);
            v[i0] = cadd(v[i0], t);
        }
    }
}

// N-point FFTs of the sequences q < COUNT with ok(q), N = R1 x R2 (R1 = 16 or N): element n of
// sequence q is data[base(q) + n * es], natural order in.  Step 1: R1-point FFTs over the
// elements R2 apart, times the twiddles W_N^(n2 k1); step 2: R2-point FFTs over runs of R2.
// Each thread holds one short FFT in registers; consecutive threads take consecutive sequences.
// Output X[k] at position at(k) = (k % R1) * R2 + k / R1 (natural when R2 = 1).  Ends with
// __syncthreads.
template <int LOGN>
struct Fft {
    static constexpr int N = 1 << LOGN;
    static constexpr int LOG_R1 = LOGN < 4 ? LOGN : 4;
    static constexpr int R1 = 1 << LOG_R1, R2 = N / R1;
    __device__ __forceinline__ static int at(int k) { return (k & (R1 - 1)) * R2 + (k >> LOG_R1); }

    template <int COUNT, typename Base, typename Ok>
    __device__ __forceinline__ static void run(float2* data, int es, const float2* tw, Base base, Ok ok) {
        for (int t = threadIdx.x; t < COUNT * R2; t += blockDim.x) {
            const int n2 = t / COUNT, q = t - n2 * COUNT;
            if (!ok(q)) continue;
            float2* d = data + base(q);
            float2 v[R1];
#pragma unroll
            for (int n1 = 0; n1 < R1; ++n1) v[bitrev(n1, LOG_R1)] = d[(n1 * R2 + n2) * es];
            fft_registers<LOG_R1, LOGN>(v, tw);
#pragma unroll
            for (int k1 = 0; k1 < R1; ++k1)
                d[(k1 * R2 + n2) * es] = R2 == 1 || k1 == 0 ? v[k1] : cmul(v[k1], tw[n2 * k1]);
        }
        __syncthreads();
        if constexpr (R2 > 1) {
            constexpr int LOG_R2 = LOGN - LOG_R1;
            for (int t = threadIdx.x; t < COUNT * R1; t += blockDim.x) {
                const int k1 = t / COUNT, q = t - k1 * COUNT;
                if (!ok(q)) continue;
                float2* d = data + base(q) + k1 * R2 * es;
                float2 v[R2];
#pragma unroll
                for (int n2 = 0; n2 < R2; ++n2) v[bitrev(n2, LOG_R2)] = d[n2 * es];
                fft_registers<LOG_R2, LOGN>(v, tw);
#pragma unroll
                for (int k2 = 0; k2 < R2; ++k2) d[k2 * es] = v[k2];
            }
            __syncthreads();
        }
    }
};

// Moves every item e < PER_PLANE of planes i < count from one form to the other through
// registers, a group of planes at a time (about 4 items a thread): all of a group is read
// (read(i, e) -> V) before any of it is written (write(i, e, v)), since the forms share space.
template <int PER_PLANE, int THREADS, typename V, typename Read, typename Write>
__device__ __forceinline__ void restage(int count, Read read, Write write) {
    constexpr int GROUP = 4 * THREADS >= PER_PLANE ? 4 * THREADS / PER_PLANE : 1;
    constexpr int ITEMS = (GROUP * PER_PLANE + THREADS - 1) / THREADS;
    for (int g = 0; g < count; g += GROUP) {
        V v[ITEMS];
#pragma unroll
        for (int k = 0; k < ITEMS; ++k) {
            const int t = threadIdx.x + k * THREADS, i = g + t / PER_PLANE;
            if (t < GROUP * PER_PLANE && i < count) v[k] = read(i, t - (i - g) * PER_PLANE);
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < ITEMS; ++k) {
            const int t = threadIdx.x + k * THREADS, i = g + t / PER_PLANE;
            if (t < GROUP * PER_PLANE && i < count) write(i, t - (i - g) * PER_PLANE, v[k]);
        }
        __syncthreads();
    }
}

struct Split {
    float2 a, b;
};

// A transform block: PLANES planes of N x N (about 256 rows of pairs a block, in <= 70 KB) and
// THREADS threads.  Shared memory: twiddles [N], the planes' offsets in the tensor, then a half
// spectrum [N][P] per plane; a plane's pairs of rows (N/2 of N values, PITCH apart: odd, so
// that row-wise access is conflict-free) live in the same space (restage moves between the
// two).  Must match _fft_plan.
template <int LOGN>
struct Transform {
    static constexpr int N = 1 << LOGN;
    static constexpr int P = N / 2 + 1;  // kept columns
    static constexpr int THREADS = LOGN >= 7 ? 512 : 256;
    // At N = 128 ptxas takes 76-98 registers a thread unless capped, and one 512-thread block then
    // fills an SM's register file (16 warps to hide every phase's latency); capped at 64 (two
    // blocks, as the shared memory allows) it spills 20-48 bytes a thread.  0: no cap.
    static constexpr int MIN_BLOCKS = LOGN >= 7 ? 2 : 0;
    static constexpr int PLANES = LOGN <= 5 ? 512 >> LOGN : (LOGN == 6 ? 4 : 1);
    static constexpr int SPEC = N * P;    // a plane's half spectrum
    static constexpr int PITCH = N + 1;   // between pairs of rows
    static constexpr int OFFSETS = (PLANES + 1) & ~1;  // entries of offset: keeps spec 16-byte aligned
    float2* tw;
    long long* offset;  // of each plane in the tensor
    float2* spec;
    int first;  // the block's first plane
    int count;  // its planes
    // Also fills the twiddles, of exp(sign * 2 pi i j / N), and the planes' offsets: plane
    // p = (image * tiles + tile) * inner + in at image * s_outer + in * s_inner.
    __device__ __forceinline__ Transform(unsigned char* smem, int planes, float sign, int inner, int tiles,
                                         long long s_outer, long long s_inner)
        : tw(reinterpret_cast<float2*>(smem)), offset(reinterpret_cast<long long*>(tw + N)),
          spec(reinterpret_cast<float2*>(offset + OFFSETS)), first(blockIdx.x * PLANES),
          count(min(PLANES, planes - first)) {
        make_twiddles<LOGN>(tw, sign);
        for (int i = threadIdx.x; i < count; i += THREADS) {
            const int p = first + i, outer = p / inner;
            offset[i] = (outer / tiles) * s_outer + (p - outer * inner) * s_inner;
        }
        __syncthreads();
    }
    __device__ __forceinline__ float2* pair(int i, int r) { return spec + i * SPEC + r * PITCH; }
    // Where tile `tile` of plane i (of tiles_w a row, `step` apart) starts in its image.
    __device__ __forceinline__ int2 origin(int i, int inner, int tiles, int tiles_w, int step) const {
        if (tiles == 1) return make_int2(0, 0);
        const int tile = ((first + i) / inner) % tiles;
        return make_int2((tile / tiles_w) * step, (tile % tiles_w) * step);
    }
    // Row FFTs of pairs r < pairs of the block's planes; value c of a row lands at Fft::at(c).
    __device__ __forceinline__ void rows(int pairs) {
        const int n = count;
        Fft<LOGN>::template run<PLANES * (N / 2)>(
            spec, 1, tw, [](int q) { return (q >> (LOGN - 1)) * SPEC + (q & (N / 2 - 1)) * PITCH; },
            [n, pairs](int q) { return (q >> (LOGN - 1)) < n && (q & (N / 2 - 1)) < pairs; });
    }
    // Column FFTs of the block's spectra; row u lands at Fft::at(u).
    __device__ __forceinline__ void columns() {
        const int n = count;
        Fft<LOGN>::template run<PLANES * P>(spec, P, tw, [](int q) { return (q / P) * SPEC + q % P; },
                                            [n](int q) { return q < n * P; });
    }
};

}  // namespace

// Planes first * PLANES .. of src: plane p = (image * tiles + tile) * inner + in starts at
// src + image * s_outer + in * s_inner; its element (r, c) at r * s_row + c * s_col, placed at
// (r + pad - oy, c + pad - ox) of the N x N grid, where tile (ty, tx) = (tile / tiles_w,
// tile % tiles_w) starts at (oy, ox) = (ty * step, tx * step): overlap-save tiles of planes
// larger than N (one tile, step N, otherwise).  Spectra written plane after plane, natural order.
template <int LOGN>
__global__ void __launch_bounds__(Transform<LOGN>::THREADS, Transform<LOGN>::MIN_BLOCKS) fft_forward(
        const float* src, float2* dst, int planes, int inner, long long s_outer, long long s_inner,
        long long s_row, long long s_col, int rows, int cols, int pad, int tiles, int tiles_w, int step) {
    typedef Transform<LOGN> T;
    constexpr int N = T::N, P = T::P;
    extern __shared__ __align__(16) unsigned char smem[];
    T sm(smem, planes, -1.0f, inner, tiles, s_outer, s_inner);
    const int count = sm.count;
    // LOAD_BATCH elements a thread are loaded before any is stored, so that many loads are in
    // flight at once (with a store to shared memory after each, the compiled loop waited for each
    // pair of loads in turn).
    const int total = count * (N / 2) * N;
    for (int t0 = threadIdx.x; t0 < total; t0 += LOAD_BATCH * T::THREADS) {
        float2 v[LOAD_BATCH];
#pragma unroll
        for (int b = 0; b < LOAD_BATCH; ++b) {
            const int t = t0 + b * T::THREADS;
            v[b] = make_float2(0.0f, 0.0f);
            if (t >= total) continue;
            const int i = t >> (2 * LOGN - 1), r = (t >> LOGN) & (N / 2 - 1), c = t & (N - 1);
            const float* x = src + sm.offset[i];
            const int2 o = sm.origin(i, inner, tiles, tiles_w, step);
            const int h = o.x + 2 * r - pad, w = o.y + c - pad;
            if (static_cast<unsigned>(w) < static_cast<unsigned>(cols)) {
                if (static_cast<unsigned>(h) < static_cast<unsigned>(rows)) v[b].x = x[h * s_row + w * s_col];
                if (static_cast<unsigned>(h + 1) < static_cast<unsigned>(rows)) v[b].y = x[(h + 1) * s_row + w * s_col];
            }
        }
#pragma unroll
        for (int b = 0; b < LOAD_BATCH; ++b) {
            const int t = t0 + b * T::THREADS;
            if (t < total) sm.pair(t >> (2 * LOGN - 1), (t >> LOGN) & (N / 2 - 1))[t & (N - 1)] = v[b];
        }
    }
    __syncthreads();
    sm.rows(N / 2);
    // Z = FFT(a + i b) of real rows a, b: A[v] = (Z[v] + conj Z[-v]) / 2, B[v] = (Z[v] - conj Z[-v]) / 2i:
    // item e = (pair r, column v) of a plane becomes spectrum rows 2r and 2r + 1 at column v.
    restage<(N / 2) * P, T::THREADS, Split>(
        count,
        [&](int i, int e) {
            const int r = e / P, v = e - r * P;
            const float2* row = sm.pair(i, r);
            const float2 z = row[Fft<LOGN>::at(v)], zc = conj(row[Fft<LOGN>::at((N - v) & (N - 1))]);
            const float2 d = csub(z, zc);
            return Split{make_float2(0.5f * (z.x + zc.x), 0.5f * (z.y + zc.y)), make_float2(0.5f * d.y, -0.5f * d.x)};
        },
        [&](int i, int e, Split ab) {
            const int r = e / P, v = e - r * P;
            float2* spec = sm.spec + i * T::SPEC;
            spec[2 * r * P + v] = ab.a;
            spec[(2 * r + 1) * P + v] = ab.b;
        });
    sm.columns();
    float2* out = dst + static_cast<long long>(sm.first) * T::SPEC;
    for (int t = threadIdx.x; t < count * T::SPEC; t += T::THREADS) {
        const int i = t / T::SPEC, uv = t - i * T::SPEC;
        const int u = uv / P, v = uv - u * P;
        out[t] = sm.spec[i * T::SPEC + Fft<LOGN>::at(u) * P + v];
    }
}

// Output planes first * PLANES ..: plane p = (image * tiles + tile) * inner + in (in: the
// channel) at dst + image * o_outer + in * o_inner; tile (ty, tx) of a rows x cols output plane
// holds its elements (oy + r, ox + c) at (oy + r) * o_row + (ox + c) * o_col, (oy, ox) =
// (ty * step, tx * step), r and c < step; bias indexed by in.
template <int LOGN>
__global__ void __launch_bounds__(Transform<LOGN>::THREADS, Transform<LOGN>::MIN_BLOCKS) fft_inverse(
        const float2* src, float* dst, const float* bias, int planes, int inner, long long o_outer,
        long long o_inner, long long o_row, long long o_col, int rows, int cols, int tiles, int tiles_w,
        int step) {
    typedef Transform<LOGN> T;
    constexpr int N = T::N, P = T::P;
    extern __shared__ __align__(16) unsigned char smem[];
    T sm(smem, planes, 1.0f, inner, tiles, o_outer, o_inner);
    const int count = sm.count;
    // The block's spectra are contiguous in src, and N * P is even: they move in 16-byte pairs.
    const float4* s = reinterpret_cast<const float4*>(src + static_cast<long long>(sm.first) * T::SPEC);
    float4* d = reinterpret_cast<float4*>(sm.spec);
    for (int t = threadIdx.x; t < count * T::SPEC / 2; t += T::THREADS) d[t] = s[t];  // unrolled: 16 loads in flight
    __syncthreads();
    sm.columns();
    // Row u of a spectrum (at Fft::at(u)) is now the half spectrum of output row u.  Rows 2r and
    // 2r + 1 as one complex inverse FFT: Z = A + i B with A, B extended by Hermitian symmetry;
    // the imaginary parts at v = 0 and N/2 are dropped, as a complex-to-real transform does.
    const int pairs = (min(rows, step) + 1) / 2;
    restage<(N / 2) * N, T::THREADS, float2>(
        count,
        [&](int i, int e) {
            const int r = e >> LOGN, c = e & (N - 1);
            const bool mirrored = c > N / 2;
            const int v = mirrored ? N - c : c;
            const float2* spec = sm.spec + i * T::SPEC;
            const int ra = Fft<LOGN>::at(r < pairs ? 2 * r : 0), rb = Fft<LOGN>::at(r < pairs ? 2 * r + 1 : 1);
            float2 a = spec[ra * P + v], b = spec[rb * P + v];
            if (mirrored) {
                a = conj(a);
                b = conj(b);
            } else if (v == 0 || v == N / 2) {
                a.y = 0.0f;
                b.y = 0.0f;
            }
            return make_float2(a.x - b.y, a.y + b.x);
        },
        [&](int i, int e, float2 z) {
            const int r = e >> LOGN;
            if (r < pairs) sm.pair(i, r)[e & (N - 1)] = z;
        });
    sm.rows(pairs);
    constexpr float scale = 1.0f / (N * N);
    for (int i = 0; i < count; ++i) {
        const float add = bias != nullptr ? bias[(sm.first + i) % inner] : 0.0f;
        const int2 o = sm.origin(i, inner, tiles, tiles_w, step);
        const int kept_rows = min(rows - o.x, step), kept_cols = min(cols - o.y, step);
        float* out = dst + sm.offset[i] + o.x * o_row + o.y * o_col;
        for (int t = threadIdx.x; t < kept_rows << LOGN; t += T::THREADS) {
            const int r = t >> LOGN, c = t & (N - 1);
            if (c < kept_cols) {
                const float2 v = sm.pair(i, r >> 1)[Fft<LOGN>::at(c)];
                out[r * o_row + c * o_col] = fmaf((r & 1) ? v.y : v.x, scale, add);
            }
        }
    }
}

// Planes first .. first + per_block - 1 of w (plane p = k * inner + c at w + k * s_outer + c * s_inner,
// tap (r, c) at r * s_row + c * s_col, r < kh, c < kw): their half spectra, plane after plane,
// as fft_forward writes them.  Shared memory: twiddles [N], then the inner sums [per_block][kh][P].
template <int LOGN>
__global__ void __launch_bounds__(WEIGHT_THREADS) fft_weight(
        const float* w, float2* dst, int planes, int per_block, int inner, long long s_outer, long long s_inner,
        long long s_row, long long s_col, int kh, int kw) {
    constexpr int N = 1 << LOGN, P = N / 2 + 1, SPEC = N * P;
    extern __shared__ __align__(16) unsigned char smem[];
    float2* tw = reinterpret_cast<float2*>(smem);
    float2* g = tw + N;
    const int first = blockIdx.x * per_block, count = min(per_block, planes - first);
    make_twiddles<LOGN>(tw, -1.0f);
    __syncthreads();
    const int row_items = kh * P;
    for (int t = threadIdx.x; t < count * row_items; t += WEIGHT_THREADS) {
        const int i = t / row_items, rv = t - i * row_items, r = rv / P, v = rv - r * P, p = first + i;
        const float* row = w + (p / inner) * s_outer + (p % inner) * s_inner + r * s_row;
        float2 sum = make_float2(0.0f, 0.0f);
        for (int c = 0; c < kw; ++c) {
            const float x = row[c * s_col];
            const float2 e = tw[(v * c) & (N - 1)];
            sum.x = fmaf(x, e.x, sum.x);
            sum.y = fmaf(x, e.y, sum.y);
        }
        g[t] = sum;  // [i][r][v]
    }
    __syncthreads();
    float2* out = dst + static_cast<long long>(first) * SPEC;
    for (int t = threadIdx.x; t < count * SPEC; t += WEIGHT_THREADS) {
        const int i = t / SPEC, uv = t - i * SPEC, u = uv / P, v = uv - u * P;
        const float2* gi = g + i * row_items + v;
        float2 sum = make_float2(0.0f, 0.0f);
        for (int r = 0; r < kh; ++r) {
            const float2 e = tw[(u * r) & (N - 1)], a = gi[r * P];
            sum.x = fmaf(a.x, e.x, fmaf(-a.y, e.y, sum.x));
            sum.y = fmaf(a.x, e.y, fmaf(a.y, e.x, sum.y));
        }
        out[t] = sum;
    }
}

// fft_cgemm's staging of one operand: CT * ROWS rows (row = c * ROWS + n: plane first + n,
// channel c0 + c) of FT frequencies from f0, two 16-byte halves a row; zeros past the planes
// (count) and the channels (C).
template <int ROWS>
__device__ __forceinline__ void stage_rows(float2* dst, const float2* src, int first, int count, int C, int c0,
                                           int F, int f0, int tid) {
#pragma unroll
    for (int q = 0; q < 2 * CT * ROWS / GEMM_THREADS; ++q) {
        const int idx = tid + GEMM_THREADS * q;
        const int half = idx & 1, row = idx >> 1;
        const int c = row / ROWS, n = row % ROWS;
        const bool ok = c0 + c < C && first + n < count;
        const float2* from = ok ? src + (static_cast<long long>(first + n) * C + c0 + c) * F + f0 + 2 * half : src;
        lb::cp_async16(lb::smem_addr(dst + row * FT + 2 * half), from, ok);
    }
}

// y[(b * K + k) * F + f] = sum_c x[(b * C + c) * F + f] * conj(w[(k * C + c) * F + f]).
// Warp wb holds images 8 wb .. 8 wb + 7 of the tile; lane = 4 kg + fl: frequency fl, channels
// kg + 8 j.  Eight images by four channels a thread: 12 shared-memory reads (8 of them broadcasts)
// feed 128 FMAs.  A warp's reads of one A row are 4 frequencies broadcast to 8 lanes each, of B
// 256 contiguous bytes: no shared-memory conflicts.  cp.async moves 16-byte halves of each
// 32-byte (plane, c) row; F is a multiple of 4, so rows never straddle a tile.
__global__ void __launch_bounds__(GEMM_THREADS) fft_cgemm(const float2* x, const float2* w, float2* y,
                                                         int B, int C, int K, int F) {
    extern __shared__ __align__(16) unsigned char smem[];
    constexpr int A_ELEMS = CT * BT * FT, B_ELEMS = CT * KT * FT;
    constexpr int IMAGES = BT / (GEMM_THREADS / 32);  // a warp's images
    float2* sa = reinterpret_cast<float2*>(smem);           // [GEMM_STAGES][CT][BT][FT]
    float2* sb = sa + GEMM_STAGES * A_ELEMS;                 // [GEMM_STAGES][CT][KT][FT]
    const int k0 = blockIdx.x * KT, b0 = blockIdx.y * BT, f0 = blockIdx.z * FT;
    const int tid = threadIdx.x, lane = tid & 31, wb = tid >> 5;
    const int fl = lane & 3, kg = lane >> 2;

    auto issue = [&](int stage, int c0) {
        stage_rows<BT>(sa + stage * A_ELEMS, x, b0, B, C, c0, F, f0, tid);
        stage_rows<KT>(sb + stage * B_ELEMS, w, k0, K, C, c0, F, f0, tid);
    };

    float2 acc[IMAGES][4];
#pragma unroll
    for (int i = 0; i < IMAGES; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = make_float2(0.0f, 0.0f);

    const int ntiles = (C + CT - 1) / CT;
#pragma unroll
    for (int t = 0; t < GEMM_STAGES - 1; ++t) {
        if (t < ntiles) issue(t, t * CT);
        lb::cp_async_commit();
    }
    for (int t = 0; t < ntiles; ++t) {
        lb::cp_async_wait_group<GEMM_STAGES - 2>();
        __syncthreads();
        const int next = t + GEMM_STAGES - 1;
        if (next < ntiles) issue(next % GEMM_STAGES, next * CT);
        lb::cp_async_commit();
        const float2* as = sa + (t % GEMM_STAGES) * A_ELEMS + (IMAGES * wb) * FT + fl;
        const float2* bs = sb + (t % GEMM_STAGES) * B_ELEMS + kg * FT + fl;
#pragma unroll
        for (int c = 0; c < CT; ++c) {
            float2 a[IMAGES], b[4];
#pragma unroll
            for (int i = 0; i < IMAGES; ++i) a[i] = as[(c * BT + i) * FT];
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = bs[(c * KT + 8 * j) * FT];
#pragma unroll
            for (int i = 0; i < IMAGES; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    // a * conj(b)
                    acc[i][j].x = fmaf(a[i].x, b[j].x, fmaf(a[i].y, b[j].y, acc[i][j].x));
                    acc[i][j].y = fmaf(a[i].y, b[j].x, fmaf(-a[i].x, b[j].y, acc[i][j].y));
                }
        }
    }

#pragma unroll
    for (int i = 0; i < IMAGES; ++i) {
        const int b = b0 + IMAGES * wb + i;
        if (b >= B) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int k = k0 + kg + 8 * j;
            if (k < K) y[(static_cast<long long>(b) * K + k) * F + f0 + fl] = acc[i][j];
        }
    }
}
