// FFT convolution, fp32 on FFMA, stride 1:
//
//   out[b][k] = crop( IFFT2( sum_c FFT2(x[b][c]) * conj(FFT2(w[k][c])) ) ) + bias[k]
//
// (cross-correlation is a product with the conjugate).  Every plane, zero-padded to N x N with N
// a power of two >= its padded size, makes N x (N/2 + 1) complex values: the real input's
// half spectrum, stored plane after plane, frequencies f = u * (N/2 + 1) + v contiguous.  An
// N x N circular correlation equals the linear one on every output the crop keeps, since
// no output window reaches past row or column N - 1.
//
// fft_forward: a block takes one plane, or several small ones (Transform); rows two at a time as
//              one complex FFT (row 2r the real part, row 2r + 1 the imaginary part), split
//              into the two half spectra, then N-point column FFTs over the N/2 + 1 kept
//              columns.  Radix-2, in shared memory.
// fft_cgemm:   per frequency, Y[b][k] = sum_c X[b][c] * conj(W[k][c]): a block takes 4
//              consecutive frequencies x 32 images x 32 output channels, c in stages of 8.
// fft_inverse: a block takes output planes as fft_forward does: column inverse FFTs, then the rows the crop keeps,
//              two at a time (the Hermitian half spectra as one complex FFT), scaled by 1 / N^2,
//              bias added, written through the output's strides.
#include "layerbench_common.cuh"

namespace {

// fft_cgemm's tiles; must match _fft_plan.
constexpr int GEMM_THREADS = 256;
constexpr int FT = 4;   // frequencies per block: 32 bytes of each (plane, c) row
constexpr int BT = 32;  // images per block
constexpr int KT = 32;  // output channels per block
constexpr int CT = 8;   // input channels per stage
constexpr int GEMM_STAGES = 3;

__device__ __forceinline__ float2 cadd(float2 a, float2 b) { return make_float2(a.x + b.x, a.y + b.y); }
__device__ __forceinline__ float2 csub(float2 a, float2 b) { return make_float2(a.x - b.x, a.y - b.y); }
__device__ __forceinline__ float2 cmul(float2 a, float2 b) {
    return make_float2(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
}
__device__ __forceinline__ float2 conj(float2 a) { return make_float2(a.x, -a.y); }

template <int LOGN>
__device__ __forceinline__ int bitrev(int v) {
    return static_cast<int>(__brev(static_cast<unsigned>(v)) >> (32 - LOGN));
}

// tw[j] = exp(sign * 2 pi i j / N), j < N / 2.  sincospif of a dyadic argument is exact to an ulp.
template <int LOGN>
__device__ __forceinline__ void make_twiddles(float2* tw, float sign) {
    constexpr int N = 1 << LOGN;
    for (int j = threadIdx.x; j < N / 2; j += blockDim.x) {
        float s, c;
        sincospif(sign * 2.0f * j / N, &s, &c);
        tw[j] = make_float2(c, s);
    }
}

// In-place radix-2 decimation-in-time FFTs of N points over sequences q < count for which
// ok(q), each given in bit-reversed order and left in natural order.  Element i of sequence q
// is data[base(q) + i * es].  QFAST: consecutive threads take consecutive sequences (columns,
// for conflict-free access; count should be a compile-time constant, it divides), else
// consecutive butterflies of one sequence (rows).  Ends with __syncthreads.
template <int LOGN, bool QFAST, typename Base, typename Ok>
__device__ __forceinline__ void fft_stages(float2* data, int count, int es, const float2* tw,
                                           Base base, Ok ok) {
    constexpr int HALF_N = 1 << (LOGN - 1);
    const int total = count * HALF_N;
#pragma unroll
    for (int s = 0; s < LOGN; ++s) {
        const int half = 1 << s;
        for (int t = threadIdx.x; t < total; t += blockDim.x) {
            int q, j;
            if constexpr (QFAST) {
                j = t / count;
                q = t - j * count;
            } else {
                q = t >> (LOGN - 1);
                j = t & (HALF_N - 1);
            }
            if (!ok(q)) continue;
            const int pos = j & (half - 1);
            const int i0 = ((j - pos) << 1) + pos;
            float2* d = data + base(q);
            const float2 u = d[i0 * es];
            const float2 v = cmul(d[(i0 + half) * es], tw[pos << (LOGN - 1 - s)]);
            d[i0 * es] = cadd(u, v);
            d[(i0 + half) * es] = csub(u, v);
        }
        __syncthreads();
    }
}

// A transform block: PLANES planes of N x N (about 4096 values: small planes go many to a
// block) and THREADS threads.  Shared memory: twiddles [N/2], then a half spectrum [N][P] per
// plane; a plane's pairs of rows (N/2 of N values) live in the same space, pair r over
// spectrum rows 2r and 2r + 1, so steps that move data between the two forms go through
// registers.  Must match _fft_plan.
template <int LOGN>
struct Transform {
    static constexpr int N = 1 << LOGN;
    static constexpr int P = N / 2 + 1;  // kept columns
    static constexpr int THREADS = LOGN >= 7 ? 1024 : 256;
    static constexpr int PLANES = LOGN >= 6 ? 1 : 1 << (12 - 2 * LOGN);
    static constexpr int SPEC = N * P;  // a plane's half spectrum
    static constexpr int ITEMS = PLANES * (N / 2) * N / THREADS;  // pairs-of-rows values a thread moves
    float2* tw;
    float2* spec;
    int first;  // the block's first plane
    int count;  // its planes
    // Also fills the twiddles, of exp(sign * 2 pi i j / N).
    __device__ __forceinline__ Transform(unsigned char* smem, int planes, float sign)
        : tw(reinterpret_cast<float2*>(smem)), spec(tw + N / 2), first(blockIdx.x * PLANES),
          count(min(PLANES, planes - first)) {
        make_twiddles<LOGN>(tw, sign);
    }
    __device__ __forceinline__ float2* pair(int i, int r) { return spec + i * SPEC + r * 2 * P; }
    // Column FFTs of the first `count` spectra: sequence q is column q % P of plane q / P.
    __device__ __forceinline__ void columns(int count) {
        fft_stages<LOGN, true>(spec, PLANES * P, P, tw, [](int q) { return (q / P) * SPEC + q % P; },
                               [count](int q) { return q < count * P; });
    }
    // Row FFTs of pairs r < pairs of the first `count` planes.
    __device__ __forceinline__ void rows(int count, int pairs) {
        fft_stages<LOGN, false>(spec, count * (N / 2), 1, tw,
                                [](int q) { return (q >> (LOGN - 1)) * SPEC + (q & (N / 2 - 1)) * 2 * P; },
                                [pairs](int q) { return (q & (N / 2 - 1)) < pairs; });
    }
};

}  // namespace

// Planes first * PLANES .. of src: plane p = outer * inner + in starts at
// src + outer * s_outer + in * s_inner; its element (r, c) at r * s_row + c * s_col, placed at
// (r + pad, c + pad) of the N x N grid.  Spectra written plane after plane.
template <int LOGN>
__global__ void __launch_bounds__(Transform<LOGN>::THREADS) fft_forward(
        const float* src, float2* dst, int planes, int inner, long long s_outer, long long s_inner,
        long long s_row, long long s_col, int rows, int cols, int pad) {
    typedef Transform<LOGN> T;
    constexpr int N = T::N, P = T::P;
    extern __shared__ __align__(16) unsigned char smem[];
    T sm(smem, planes, -1.0f);
    const int first = sm.first, count = sm.count;
#pragma unroll
    for (int i = 0; i < T::PLANES; ++i) {
        if (i >= count) break;
        const int plane = first + i, outer = plane / inner;
        const float* x = src + outer * s_outer + (plane - outer * inner) * s_inner;
        for (int t = threadIdx.x; t < (N / 2) * N; t += T::THREADS) {
            const int r = t >> LOGN, c = t & (N - 1);
            const int h = 2 * r - pad, w = c - pad;
            float re = 0.0f, im = 0.0f;
            if (static_cast<unsigned>(w) < static_cast<unsigned>(cols)) {
                if (static_cast<unsigned>(h) < static_cast<unsigned>(rows)) re = x[h * s_row + w * s_col];
                if (static_cast<unsigned>(h + 1) < static_cast<unsigned>(rows)) im = x[(h + 1) * s_row + w * s_col];
            }
            sm.pair(i, r)[bitrev<LOGN>(c)] = make_float2(re, im);
        }
    }
    __syncthreads();
    sm.rows(count, N / 2);
    // Z = FFT(a + i b) of real rows a, b: A[v] = (Z[v] + conj Z[-v]) / 2, B[v] = (Z[v] - conj Z[-v]) / 2i.
    // Spectrum rows go in bit-reversed order for the column FFTs.
    constexpr int SPLITS = T::PLANES * (N / 2) * P;
    constexpr int ITEMS = (SPLITS + T::THREADS - 1) / T::THREADS;
    // Item k of this thread: column v of pair r of plane i, if there is one.
    auto item = [&](int k, int& i, int& r, int& v) {
        const int t = threadIdx.x + k * T::THREADS;
        i = t / ((N / 2) * P);
        const int rv = t - i * ((N / 2) * P);
        r = rv / P;
        v = rv - r * P;
        return t < SPLITS && i < count;
    };
    float2 a[ITEMS], b[ITEMS];
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
        int i, r, v;
        if (item(k, i, r, v)) {
            const float2* row = sm.pair(i, r);
            const float2 z = row[v], zc = conj(row[(N - v) & (N - 1)]);
            const float2 d = csub(z, zc);
            a[k] = make_float2(0.5f * (z.x + zc.x), 0.5f * (z.y + zc.y));
            b[k] = make_float2(0.5f * d.y, -0.5f * d.x);
        }
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
        int i, r, v;
        if (item(k, i, r, v)) {
            float2* spec = sm.spec + i * T::SPEC;
            spec[bitrev<LOGN>(2 * r) * P + v] = a[k];
            spec[bitrev<LOGN>(2 * r + 1) * P + v] = b[k];
        }
    }
    __syncthreads();
    sm.columns(count);
    // The block's spectra are contiguous in dst, and N * P is even: they move in 16-byte pairs.
    float4* out = reinterpret_cast<float4*>(dst + static_cast<long long>(first) * T::SPEC);
    const float4* s = reinterpret_cast<const float4*>(sm.spec);
    for (int t = threadIdx.x; t < count * T::SPEC / 2; t += T::THREADS) out[t] = s[t];
}

// Output planes first * PLANES ..: plane p = outer * inner + in (image, channel) at
// dst + outer * o_outer + in * o_inner, element (r, c) at r * o_row + c * o_col for r < rows,
// c < cols; bias indexed by in.
template <int LOGN>
__global__ void __launch_bounds__(Transform<LOGN>::THREADS) fft_inverse(
        const float2* src, float* dst, const float* bias, int planes, int inner, long long o_outer,
        long long o_inner, long long o_row, long long o_col, int rows, int cols) {
    typedef Transform<LOGN> T;
    constexpr int N = T::N, P = T::P;
    extern __shared__ __align__(16) unsigned char smem[];
    T sm(smem, planes, 1.0f);
    const int first = sm.first, count = sm.count;
    const float2* s = src + static_cast<long long>(first) * T::SPEC;
    for (int t = threadIdx.x; t < count * T::SPEC; t += T::THREADS) {
        const int i = t / T::SPEC, uv = t - i * T::SPEC;
        const int u = uv / P, v = uv - u * P;
        sm.spec[i * T::SPEC + bitrev<LOGN>(u) * P + v] = s[t];
    }
    __syncthreads();
    sm.columns(count);
    // Row u of a spectrum is now the half spectrum of output row u.  Rows 2r and 2r + 1 as one
    // complex inverse FFT: Z = A + i B with A, B extended by Hermitian symmetry; the imaginary
    // parts at v = 0 and N/2 are dropped, as a complex-to-real transform does.
    const int pairs = (rows + 1) / 2;
    float2 z[T::ITEMS];
#pragma unroll
    for (int k = 0; k < T::ITEMS; ++k) {
        const int t = threadIdx.x + k * T::THREADS;
        const int i = t >> (2 * LOGN - 1), r = (t >> LOGN) & (N / 2 - 1), c = t & (N - 1);
        if (i < count && r < pairs) {
            const bool mirrored = c > N / 2;
            const int v = mirrored ? N - c : c;
            const float2* spec = sm.spec + i * T::SPEC;
            float2 a = spec[2 * r * P + v], b = spec[(2 * r + 1) * P + v];
            if (mirrored) {
                a = conj(a);
                b = conj(b);
            } else if (v == 0 || v == N / 2) {
                a.y = 0.0f;
                b.y = 0.0f;
            }
            z[k] = make_float2(a.x - b.y, a.y + b.x);
        }
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < T::ITEMS; ++k) {
        const int t = threadIdx.x + k * T::THREADS;
        const int i = t >> (2 * LOGN - 1), r = (t >> LOGN) & (N / 2 - 1), c = t & (N - 1);
        if (i < count && r < pairs) sm.pair(i, r)[bitrev<LOGN>(c)] = z[k];
    }
    __syncthreads();
    sm.rows(count, pairs);
    constexpr float scale = 1.0f / (N * N);
#pragma unroll
    for (int i = 0; i < T::PLANES; ++i) {
        if (i >= count) break;
        const int plane = first + i, outer = plane / inner, in = plane - outer * inner;
        const float add = bias != nullptr ? bias[in] : 0.0f;
        float* out = dst + outer * o_outer + in * o_inner;
        for (int t = threadIdx.x; t < rows << LOGN; t += T::THREADS) {
            const int r = t >> LOGN, c = t & (N - 1);
            if (c < cols) {
                const float2 v = sm.pair(i, r >> 1)[c];
                out[r * o_row + c * o_col] = fmaf((r & 1) ? v.y : v.x, scale, add);
            }
        }
    }
}

// y[(b * K + k) * F + f] = sum_c x[(b * C + c) * F + f] * conj(w[(k * C + c) * F + f]).
// Warp wb holds images 4 wb .. 4 wb + 3 of the tile; lane = 4 kg + fl: frequency fl, channels
// kg + 8 j.  A warp's reads of one A row are 4 frequencies broadcast to 8 lanes each, of B 256
// contiguous bytes: no shared-memory conflicts.  cp.async moves 16-byte halves of each
// 32-byte (plane, c) row; F is a multiple of 4, so rows never straddle a tile.
__global__ void __launch_bounds__(GEMM_THREADS) fft_cgemm(const float2* x, const float2* w, float2* y,
                                                         int B, int C, int K, int F) {
    extern __shared__ __align__(16) unsigned char smem[];
    constexpr int A_ELEMS = CT * BT * FT, B_ELEMS = CT * KT * FT;
    float2* sa = reinterpret_cast<float2*>(smem);           // [GEMM_STAGES][CT][BT][FT]
    float2* sb = sa + GEMM_STAGES * A_ELEMS;                 // [GEMM_STAGES][CT][KT][FT]
    const int k0 = blockIdx.x * KT, b0 = blockIdx.y * BT, f0 = blockIdx.z * FT;
    const int tid = threadIdx.x, lane = tid & 31, wb = tid >> 5;
    const int fl = lane & 3, kg = lane >> 2;

    auto issue = [&](int stage, int c0) {
        // A and B each: CT * 32 rows of 2 chunks = 512 chunks, two per thread.
#pragma unroll
        for (int q = 0; q < 2; ++q) {
            const int idx = tid + GEMM_THREADS * q;
            const int half = idx & 1, row = idx >> 1;  // row = c * 32 + (b or k)
            const int c = row >> 5, n = row & 31;
            const bool c_ok = c0 + c < C;
            const bool a_ok = c_ok && b0 + n < B;
            const float2* a_src = a_ok ? x + (static_cast<long long>(b0 + n) * C + c0 + c) * F + f0 + 2 * half : x;
            lb::cp_async16(lb::smem_addr(sa + stage * A_ELEMS + row * FT + 2 * half), a_src, a_ok);
            const bool b_ok = c_ok && k0 + n < K;
            const float2* b_src = b_ok ? w + (static_cast<long long>(k0 + n) * C + c0 + c) * F + f0 + 2 * half : w;
            lb::cp_async16(lb::smem_addr(sb + stage * B_ELEMS + row * FT + 2 * half), b_src, b_ok);
        }
    };

    float2 acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
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
        const float2* as = sa + (t % GEMM_STAGES) * A_ELEMS + (4 * wb) * FT + fl;
        const float2* bs = sb + (t % GEMM_STAGES) * B_ELEMS + kg * FT + fl;
#pragma unroll
        for (int c = 0; c < CT; ++c) {
            float2 a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = as[(c * BT + i) * FT];
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = bs[(c * KT + 8 * j) * FT];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    // a * conj(b)
                    acc[i][j].x = fmaf(a[i].x, b[j].x, fmaf(a[i].y, b[j].y, acc[i][j].x));
                    acc[i][j].y = fmaf(a[i].y, b[j].x, fmaf(-a[i].x, b[j].y, acc[i][j].y));
                }
        }
    }

#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int b = b0 + 4 * wb + i;
        if (b >= B) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int k = k0 + kg + 8 * j;
            if (k < K) y[(static_cast<long long>(b) * K + k) * F + f0 + fl] = acc[i][j];
        }
    }
}
