// Layout copies the convolution runs inside its timed call.
//
// to_channels_last: NCHW -> NHWC, dst[n][hw][c] = src[n][c][hw], through a shared-memory tile so
// that the reads (along hw) and the writes (along c) are both coalesced.  Run on NCHW input and
// OIHW weights, as cuDNN does with its nchwToNhwc kernels, so that the implicit GEMM can move the
// input in 16-byte chunks of channels.
//
// subsample_nhwc: the pixels on a stride's grid, dst[n][p][q][:] = src[n][p * SH][q * SW][:], for a
// strided 1x1 convolution, which is then a plain GEMM over the copy.
#include "layerbench_common.cuh"

namespace {
constexpr int TILE = 32;  // a TILE x TILE block of (c, hw) per thread block
constexpr int ROWS = 8;   // blockDim = (TILE, ROWS): each thread moves TILE / ROWS elements
}  // namespace

// Elements move as their bit patterns (Bits<T>::U), so every storage type copies exactly.
// Grid: (ceil(HW / TILE), ceil(C / TILE), N).
template <typename T>
__global__ void __launch_bounds__(TILE * ROWS) to_channels_last(const T* src, T* dst, int C, int HW) {
    typedef typename lb::Bits<T>::U U;
    __shared__ U tile[TILE][TILE + 1];  // +1 column: the transposed reads hit distinct banks
    const U* s = reinterpret_cast<const U*>(src) + static_cast<long long>(blockIdx.z) * C * HW;
    U* d = reinterpret_cast<U*>(dst) + static_cast<long long>(blockIdx.z) * C * HW;
    const int hw0 = blockIdx.x * TILE;
    const int c0 = blockIdx.y * TILE;
    for (int r = threadIdx.y; r < TILE; r += ROWS) {
        const int c = c0 + r, hw = hw0 + threadIdx.x;
        if (c < C && hw < HW) tile[r][threadIdx.x] = s[static_cast<long long>(c) * HW + hw];
    }
    __syncthreads();
    for (int r = threadIdx.y; r < TILE; r += ROWS) {
        const int hw = hw0 + r, c = c0 + threadIdx.x;
        if (c < C && hw < HW) d[static_cast<long long>(hw) * C + c] = tile[threadIdx.x][r];
    }
}

// One thread a 16-byte chunk of a pixel's channels (a pixel is `chunks` of them: C * sizeof(T) is a
// multiple of 16 and both buffers are 16-byte aligned), dst's chunks in order: reads and writes
// are runs of whole pixels.  `total` = N * P * Q * chunks.
__global__ void __launch_bounds__(256) subsample_nhwc(const uint4* src, uint4* dst, long long total, int chunks,
                                                      int P, int Q, int H, int W, int SH, int SW) {
    const long long i = static_cast<long long>(blockIdx.x) * 256 + threadIdx.x;
    if (i >= total) return;
    long long pixel = i / chunks;
    const int chunk = static_cast<int>(i - pixel * chunks);
    const int q = static_cast<int>(pixel % Q);
    pixel /= Q;
    const int p = static_cast<int>(pixel % P);
    const long long n = pixel / P;
    dst[i] = src[((n * H + static_cast<long long>(p) * SH) * W + static_cast<long long>(q) * SW) * chunks + chunk];
}

// im2col: the column matrix of a convolution lowered to one GEMM (kernels/lowering.py):
// col[m][k] for output pixel m = (n, p, q) and reduction index k = (r, s, c) is the input value
// tap (r, s) of channel c reads there, zero past the image's edges and for k past C * R * S (the
// row is KP long, a multiple of 8).  One block writes a segment of QB pixels of one output row
// (n, p).  It first stages the input those pixels read in shared memory: for each filter row r
// the input row's WS columns from the segment's first tap on, zero outside the image; x is dense
// NHWC, so each is one contiguous run of WS * C elements, read with coalesced loads.  With it, a
// table of each column's offset into the staged window (-1 past C * R * S), so the copy itself
// needs no division but the one placing a thread's 8 elements: col[m][k] is
// window[offset[k] + q_in_segment * SW * C].  A thread stores its 8 elements at once (16 or 32
// bytes), a warp one contiguous run.  U: the element's bit pattern (a 2- or 4-byte type).  The
// launcher sizes QB so that the window and the table fit the dynamic shared memory it passes.
// int32 offsets: the input and the column matrix have fewer than 2^31 elements (the spec's bounds
// and kernels/lowering.py's size limit keep them there).
template <typename U>
__global__ void __launch_bounds__(256) im2col(const U* __restrict__ x, U* __restrict__ col, int segments, int QB,
                                              int WS, int KP, int C, int R, int S, int P, int Q, int H, int W,
                                              int SH, int SW, int PH, int PW, int DH, int DW) {
    constexpr int VEC = 8;
    extern __shared__ __align__(16) unsigned char staged[];
    const int span = WS * C;  // elements of one staged input row
    int* offset = reinterpret_cast<int*>(staged);
    U* window = reinterpret_cast<U*>(staged + KP * sizeof(int));
    const int segment = blockIdx.x % segments, row = blockIdx.x / segments;  // row = n * P + p
    const int p = row % P, n = row / P, q0 = segment * QB;
    const int first = (q0 * SW - PW) * C;  // the window's first element within an input row
    for (int k = threadIdx.x; k < KP; k += blockDim.x) {
        const int c = k % C, s = (k / C) % S, r = k / (C * S);
        offset[k] = r < R ? r * span + s * DW * C + c : -1;
    }
    for (int r = 0; r < R; ++r) {
        const int ih = p * SH - PH + r * DH;
        const bool row_inside = ih >= 0 && ih < H;
        const U* source = x + (static_cast<long long>(n) * H + (row_inside ? ih : 0)) * W * C;
        for (int f = threadIdx.x; f < span; f += blockDim.x) {
            const int g = first + f;
            window[r * span + f] = row_inside && g >= 0 && g < W * C ? source[g] : U(0);
        }
    }
    __syncthreads();
    const int chunks = KP / VEC, pixels = min(QB, Q - q0);
    U* out = col + (static_cast<long long>(row) * Q + q0) * KP;
    for (int i = threadIdx.x; i < pixels * chunks; i += blockDim.x) {
        const int pixel = i / chunks, k0 = (i - pixel * chunks) * VEC;
        const int shift = pixel * SW * C;
        alignas(16) U v[VEC];
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
            const int o = offset[k0 + e];
            v[e] = o >= 0 ? window[o + shift] : U(0);
        }
        uint4* dst = reinterpret_cast<uint4*>(out + static_cast<long long>(pixel) * KP + k0);
#pragma unroll
        for (int h = 0; h < static_cast<int>(sizeof(v) / sizeof(uint4)); ++h) dst[h] = reinterpret_cast<const uint4*>(v)[h];
    }
}
