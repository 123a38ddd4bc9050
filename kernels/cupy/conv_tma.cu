// Convolution on Hopper's TMA and wgmma (sm_90a), NHWC input, fp16 or bf16, fp32 accumulators: the
// warp-specialised pipeline of linear_tma.cu with the input's tiles cut out of the image by the
// TMA unit itself, so no thread computes an im2col address.
//
// A tile of the output is a patch of 128 pixels, images x rows x columns (powers of two: 2 x 8 x 8,
// 1 x 8 x 16, ...), times BN output channels.  Its k loop runs over the taps of the window and,
// in each, over blocks of 64 input channels: k tile (tap, block) is one box of the input, the
// patch's pixels shifted by the tap, and one box of the weight (KRSC: the tap's BN x 64 slice).
// The input is seen through a 5-D view (channels of one stride phase, columns / stride_w,
// row phase, rows / stride_h, images), so that a strided convolution's pixels are a box too
// (the row phase and the column phase are fixed by the tap); the TMA unit zero-fills whatever
// lies past the view's ends, which is the padding, and the channels past C.  Each warpgroup
// writes its half of the patch through a 4-D map of an NHWC output (pixels past its edges are not
// written), or, where the output is NCHW or its pixel rows are not 16-byte aligned, from
// registers through the output's strides.
//
// In im2col mode (g.im2col) a tile is instead 128 consecutive output pixels in (image, row,
// column) order, whatever the plane's shape, and the TMA unit's im2col copy gathers their windows'
// pixels for a tap from the NHWC input itself (padding and strides included): no pixel of a tile
// lies past the plane's edge, where a patch of a 7 x 7 or 28 x 28 plane computes up to a quarter
// of its pixels for nothing.  The output is then a [pixels, K] matrix, stored by a 2-D map.
// conv_tma_plan.py chooses the mode, the patch and the views; conv_tma_model.py is this kernel
// transcribed for the CPU tests.
#include "layerbench_common.cuh"
#include "wgmma.cuh"
#include "tma.cuh"
#include "linear_tma.cu"

namespace ct {

// The problem, as the launcher passes it: the view's geometry and the patch grid.
struct Geometry {
    int channels, out_channels;      // C and K
    int kernel_h, kernel_w;          // R, S
    int stride_h, stride_w, padding_h, padding_w, dilation_h, dilation_w;
    int channel_tiles;               // ceil(C / 64)
    int patch_i, patch_h, patch_w;   // the patch: images, rows, columns (product 128)
    int tiles_i, tiles_h, tiles_w;   // patches along images, output rows, output columns
    int group_m;                     // patches walked down each column of weight tiles
    int batch, out_h, out_w;         // the output's images, rows and columns
    int store_by_tma;                // 1: through y_map; 0: from registers through the strides below
    int os_n, os_c, os_h, os_w;      // the output's element strides
    int im2col;                      // 1: tiles of 128 consecutive pixels through an im2col map of x
};

// A work item: its first pixel (im2col mode: m0 in the flattened output; else the patch's first
// image, row and column) and its first output channel.
struct Item {
    int m0, n0, h0, w0, col0;
};

// floor(off / stride) and the remainder in [0, stride): where a tap's offset lands in the view.
__device__ __forceinline__ int2 floor_split(int off, int stride) {
    if (stride == 1) return make_int2(off, 0);  // no division on the common path
    const int q = off >= 0 ? off / stride : -((-off + stride - 1) / stride);
    return make_int2(q, off - q * stride);
}

// The producer's walk over a work item's k tiles: taps (r, c) outer, blocks of 64 channels inner,
// advanced by additions.  One thread issues every copy, and a division per k tile (runtime
// divisors: kt / channel_tiles, tap / kernel_w, the strides) costs it about as long as the
// tensor cores take for a 128 x 128 k tile, which then wait for their data.
struct TapWalk {
    int block, r, c, tap;  // channel block, filter row and column, tap r * kernel_w + c
    int2 qh, qw;           // floor_split of the tap's row and column offsets

    // The phase view's offsets; the im2col copy takes the tap itself (no divisions).
    __device__ __forceinline__ explicit TapWalk(const Geometry& g)
        : block(0), r(0), c(0), tap(0), qh(g.im2col ? int2{} : floor_split(-g.padding_h, g.stride_h)),
          qw(g.im2col ? int2{} : floor_split(-g.padding_w, g.stride_w)) {}

    __device__ __forceinline__ void next(const Geometry& g) {
        if (++block < g.channel_tiles) return;
        block = 0;
        ++tap;
        if (++c == g.kernel_w) {
            c = 0;
            ++r;
            if (!g.im2col) qh = floor_split(r * g.dilation_h - g.padding_h, g.stride_h);
        }
        if (!g.im2col) qw = floor_split(c * g.dilation_w - g.padding_w, g.stride_w);
    }
};

// This warpgroup's outputs (+ bias), rounded to T, stored from registers through the output's
// strides.  Accumulator layout as wgmma.cuh's for_each_pair: register 4j + 2h + e holds row
// 16 warp + lane / 4 + 8h, column 8j + 2 (lane % 4) + e; row r is the tile's pixel first + r (im2col
// mode: the output's pixel m0 + first + r), written where it lies inside the output.
template <typename T, int BN>
__device__ __forceinline__ void store_pixels(const float (&d)[BN / 2], T* __restrict__ y, const T* __restrict__ bias,
                                             const Geometry& g, const Item& job, int first) {
    const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
    const int col0 = job.col0;
    int base[2];
    bool inside[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int p = first + warp * 16 + lane / 4 + 8 * h;
        int n, oh, ow;
        if (g.im2col) {
            const int m = job.m0 + p;
            n = m / (g.out_h * g.out_w), oh = (m / g.out_w) % g.out_h, ow = m % g.out_w;
        } else {
            n = job.n0 + p / (g.patch_h * g.patch_w), oh = job.h0 + (p / g.patch_w) % g.patch_h;
            ow = job.w0 + p % g.patch_w;
        }
        inside[h] = n < g.batch && oh < g.out_h && ow < g.out_w;
        base[h] = inside[h] ? n * g.os_n + oh * g.os_h + ow * g.os_w : 0;  // no offset past the tensor
    }
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
        const int col = col0 + j * 8 + 2 * (lane % 4);
        if (col >= g.out_channels) continue;
        const bool both = col + 1 < g.out_channels;
        const float b0 = bias ? lb::to_float(bias[col]) : 0.f, b1 = bias && both ? lb::to_float(bias[col + 1]) : 0.f;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            if (!inside[h]) continue;
            T* out = y + base[h] + col * g.os_c;
            out[0] = lb::from_float<T>(d[4 * j + 2 * h] + b0);
            if (both) out[g.os_c] = lb::from_float<T>(d[4 * j + 2 * h + 1] + b1);
        }
    }
}

}  // namespace ct

template <typename T, int BN, int STAGES, int BLOCKS>
__global__ void __launch_bounds__(wt::THREADS, BLOCKS) conv_tma(const __grid_constant__ lb::TensorMap x_map,
                                                           const __grid_constant__ lb::TensorMap w_map,
                                                           const __grid_constant__ lb::TensorMap y_map,
                                                           const T* __restrict__ bias, T* __restrict__ y,
                                                           const ct::Geometry g) {
    using namespace wt;
    using namespace wg;
    constexpr int A_BYTES = BM * LINE, STAGE_BYTES = (BM + BN) * LINE, OUT_BYTES = 64 * BN * 2;
    extern __shared__ unsigned char smem[];
    __shared__ unsigned long long barriers[2 * STAGES];  // full[s], then empty[s]
    const unsigned base = (lb::smem_addr(smem) + 1023u) & ~1023u;  // the swizzle's 1024-byte period
    const unsigned full = lb::smem_addr(barriers), empty = full + 8 * STAGES;

    const int tiles_m = g.tiles_i * g.tiles_h * g.tiles_w, tiles_n = (g.out_channels + BN - 1) / BN;
    const int tiles = tiles_m * tiles_n;
    const int k_tiles = g.kernel_h * g.kernel_w * g.channel_tiles;
    auto item = [&](int w) {
        const int2 tile = grouped_tile(w, tiles_m, tiles_n, g.group_m);
        if (g.im2col) {  // tiles_i = tiles_h = 1: tile.x counts runs of BM pixels
            const int m0 = tile.x * BM;
            return ct::Item{m0, m0 / (g.out_h * g.out_w), (m0 / g.out_w) % g.out_h, m0 % g.out_w, tile.y * BN};
        }
        const int tw = tile.x % g.tiles_w, th = (tile.x / g.tiles_w) % g.tiles_h, ti = tile.x / (g.tiles_w * g.tiles_h);
        return ct::Item{0, ti * g.patch_i, th * g.patch_h, tw * g.patch_w, tile.y * BN};
    };

    init_ring<STAGES>(full, empty);
    __syncthreads();

    if (threadIdx.x >= CONSUMERS) {  // the producer warp's first thread starts every copy
        if (threadIdx.x == CONSUMERS) {
            for (int w = blockIdx.x, it = 0; w < tiles; w += gridDim.x) {
                const ct::Item job = item(w);
                ct::TapWalk k(g);
                for (int kt = 0; kt < k_tiles; ++kt, ++it, k.next(g)) {
                    // Input row ho * stride_h + r * dilation_h - padding_h is view row ho + qh.x, phase qh.y.
                    const unsigned stage = claim_stage<BN, STAGES>(base, full, empty, it);
                    const unsigned bar = full + 8 * (it % STAGES);
                    if (g.im2col) {  // the windows' origins, shifted by the tap
                        lb::tma_load_im2col_4d(stage, &x_map, k.block * BK, job.w0 * g.stride_w - g.padding_w,
                                               job.h0 * g.stride_h - g.padding_h, job.n0, k.c * g.dilation_w,
                                               k.r * g.dilation_h, bar);
                    } else {
                        lb::tma_load_5d(stage, &x_map, k.qw.y * g.channels + k.block * BK, job.w0 + k.qw.x, k.qh.y,
                                        job.h0 + k.qh.x, job.n0, bar);
                    }
                    lb::tma_load_3d(stage + A_BYTES, &w_map, k.block * BK, k.tap, job.col0, bar);
                }
            }
        }
        return;
    }

    const int group = threadIdx.x / 128;  // this warpgroup's 64 pixels: the patch's first or second half
    const bool leader = threadIdx.x % 128 == 0;
    const unsigned staged = base + STAGES * STAGE_BYTES + group * OUT_BYTES;
    // The halves split the patch's outermost dimension longer than one: images, else rows.
    const int half_i = g.patch_i > 1 ? g.patch_i / 2 : 0, half_h = g.patch_i > 1 ? 0 : g.patch_h / 2;
    float d[BN / 2];
    for (int w = blockIdx.x, it = 0; w < tiles; w += gridDim.x) {
        const ct::Item job = item(w);
        multiply_item<T, BN, STAGES>(d, base, full, empty, it, k_tiles, true);
        if (g.store_by_tma) {
            store_tile_by_tma<T, BN>(d, staged, bias, g.out_channels, job.col0, [&](unsigned src, int col) {
                if (g.im2col) {  // y_map: the output as a [pixels, K] matrix
                    lb::tma_store_2d(&y_map, src, col, job.m0 + group * 64);
                } else {
                    lb::tma_store_4d(&y_map, src, col, job.w0, job.h0 + group * half_h, job.n0 + group * half_i);
                }
            });
        } else {
            ct::store_pixels<T, BN>(d, y, bias, g, job, group * 64);
        }
    }
    if (leader) lb::bulk_wait_all<false>();
}
