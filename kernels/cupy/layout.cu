// NCHW -> NHWC copy, dst[n][hw][c] = src[n][c][hw], through a shared-memory tile so that the
// reads (along hw) and the writes (along c) are both coalesced.  The convolution runs it on NCHW
// input and OIHW weights inside the timed call, as cuDNN does with its nchwToNhwc kernels, so
// that its implicit GEMM can move the input in 16-byte chunks of channels.
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
