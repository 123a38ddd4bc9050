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
// row is KP long, a multiple of 8).  One thread 8 consecutive elements of the dense matrix, stored
// at once (16 or 32 bytes), so a warp writes one contiguous run; the divisions that place them
// are done once for the 8, which then step (c, s, r) by additions.  x is read through its element
// strides, so either memory format works; U: the element's bit pattern (a 2- or 4-byte type).
// int32 offsets: the input and the column matrix have fewer than 2^31 elements (the spec's bounds
// and kernels/lowering.py's size limit keep them there).
template <typename U>
__global__ void __launch_bounds__(256) im2col(const U* __restrict__ x, U* __restrict__ col, int chunks, int KP, int C,
                                              int R, int S, int P, int Q, int H, int W, int sn, int sc, int sh,
                                              int sw, int SH, int SW, int PH, int PW, int DH, int DW) {
    constexpr int VEC = 8;
    const int j = blockIdx.x * 256 + threadIdx.x;
    if (j >= chunks) return;
    const int m = j * VEC / KP, k0 = j * VEC - m * KP;
    const int q = m % Q, p = (m / Q) % P, n = m / (P * Q);
    int c = k0 % C, s = (k0 / C) % S, r = k0 / (C * S);
    const int reduction = C * R * S;
    alignas(16) U v[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
        const int ih = p * SH - PH + r * DH, iw = q * SW - PW + s * DW;
        const bool inside = k0 + e < reduction && ih >= 0 && ih < H && iw >= 0 && iw < W;
        v[e] = inside ? x[n * sn + c * sc + ih * sh + iw * sw] : U(0);
        if (++c == C) {
            c = 0;
            if (++s == S) {
                s = 0;
                ++r;
            }
        }
    }
    uint4* dst = reinterpret_cast<uint4*>(col + static_cast<long long>(j) * VEC);
#pragma unroll
    for (int h = 0; h < static_cast<int>(sizeof(v) / sizeof(uint4)); ++h) dst[h] = reinterpret_cast<const uint4*>(v)[h];
}
