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
