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
constexpr int NCHW_MAX_THREADS = 256;
constexpr int FILL_BATCH = 8;  // loads a thread has in flight while an NCHW block fills its tile

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
        // Vectors of a row in flight at once: what the 128 registers of two blocks an SM leave
        // beside the accumulators, the row's taps and about 24 for addresses.
        constexpr int FREE = (128 - 24 - (PIX + K) * VEC) / VEC;
        constexpr int CHUNK = FREE < 1 ? 1 : (FREE > SPAN ? SPAN : FREE);
#pragma unroll
        for (int kh = 0; kh < K; ++kh) {
            const int ih = ih0 + kh;
            if (ih < 0 || ih >= H) continue;
            const T* row = xn + ih * W * C;
            float w[K][VEC];
#pragma unroll
            for (int kw = 0; kw < K; ++kw) load_vec<float, VEC>(wt + (kh * K + kw) * CO + co, w[kw]);
            // The row's vectors are loaded CHUNK at a time before any of them is used: loaded and
            // used one at a time, the compiled loop kept one load in flight a thread.
#pragma unroll
            for (int j0 = 0; j0 < SPAN; j0 += CHUNK) {
                float v[CHUNK][VEC];
#pragma unroll
                for (int c = 0; c < CHUNK; ++c) {
                    const int iw = iw0 + j0 + c;
                    if (j0 + c < SPAN && iw >= 0 && iw < W) {
                        load_vec<T, VEC>(row + iw * C, v[c]);
                    } else {
#pragma unroll
                        for (int i = 0; i < VEC; ++i) v[c][i] = 0.0f;
                    }
                }
#pragma unroll
                for (int c = 0; c < CHUNK; ++c) {
                    const int j = j0 + c, iw = iw0 + j;
                    if (j >= SPAN || iw < 0 || iw >= W) continue;  // padding adds nothing (not even 0 * inf)
#pragma unroll
                    for (int p = 0; p < PIX; ++p) {
                        const int kw = j - p * S;  // the tap of pixel p on column j
                        if (kw >= 0 && kw < K) fma_vec<VEC>(acc[p], w[kw], v[c]);
                    }
                }
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
