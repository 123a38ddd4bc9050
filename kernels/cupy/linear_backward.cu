// Column sums of a row-major rows x cols matrix, for a linear layer's bias gradient
// (dbias[o] = sum over the batch of dy[b][o]).  The weight gradients themselves run on igemm.cu.
//
// A block of COLS x ROWS threads sums COLS columns: thread (tx, ty) adds rows ty, ty + ROWS, ...
// of column tx in fp32 (consecutive tx read consecutive addresses), then row 0 of the block adds
// the ROWS partial sums in a fixed order and rounds once: deterministic, no atomics.
#include "layerbench_common.cuh"

namespace {
constexpr int COLS = 32;  // must match linear_backward.py
constexpr int ROWS = 8;
}  // namespace

template <typename T>
__global__ void __launch_bounds__(COLS * ROWS) column_sums(const T* a, T* sums, int rows, int cols) {
    __shared__ float partial[ROWS][COLS];
    const int col = blockIdx.x * COLS + threadIdx.x;
    float s = 0.0f;
    if (col < cols)
        for (int r = threadIdx.y; r < rows; r += ROWS) s += lb::to_float(a[static_cast<long long>(r) * cols + col]);
    partial[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
        float total = 0.0f;
#pragma unroll
        for (int j = 0; j < ROWS; ++j) total += partial[j][threadIdx.x];
        sums[col] = lb::from_float<T>(total);
    }
}
