// The backward passes of conv2d, as implicit GEMMs C[i][j] = sum_k A[i][k] * B[j][k], one per
// group g (conv_backward_plan.py has the math and builds the tables):
//
//   conv_dgrad:   i = input pixel (n, h, w), j = input channel of the group, k = (co, kh, kw) with
//                 co an output channel of the group: A = dy at (oh, ow) where h + pad_h - kh dil_h
//                 = oh stride_h (and likewise along w), else 0; B = the weight.  C is dx.
//   conv_wgrad:   i = output channel of the group, j = (ci, kh, kw) and, with a bias, one more
//                 column of ones (its C column is dbias); k = output pixel (n, oh, ow), split over
//                 blockIdx.z: A = dy, B = x under the window, 0 in the padding.  C goes to an fp32
//                 workspace, ws[split][output channel][column].
//   wgrad_reduce: sums the splits in split order (deterministic), rounds once, and writes dweight
//                 and dbias through their strides.
//
// Block tile 64 x 64, 256 threads, k in tiles of 16 32-bit words (16 fp32 or 32 16-bit values),
// staged in shared memory as [row][word] for A and B alike.  Thread tid loads row tid % 64 of both
// tiles, words tid / 64 + 4 e (e < 4), element by element through the pass's table of k, with zeros
// wherever nothing is read (padding, stride gaps, rows and k past the end).  The next tile's loads
// are in flight, in registers, while the current tile is multiplied.  x, dy and the outputs are
// addressed through their strides: the same code runs NCHW and NHWC.
//
// MMA = false: fp32 FFMA (no tensor cores).  MMA = true: mma.sync with fp32 accumulators (tf32 for
// fp32 storage, fp16, bf16).  See multiply() and acc_position() for who holds which element.
#include "layerbench_common.cuh"

namespace {

constexpr int BM = 64;
constexpr int BN = 64;
constexpr int THREADS = 256;
constexpr int KWORDS = 16;
constexpr int LOAD_STEP = THREADS / BM;         // a thread's words in a tile are this far apart
constexpr int LOAD_WORDS = KWORDS / LOAD_STEP;  // words of each operand a thread loads per tile

// Row pitch of the shared tiles, in words.  mma.sync fragments read rows g (< 8), words c (< 4):
// 20 g + c hits 32 distinct banks; the FFMA loop reads rows tx (< 16) of B: 17 tx does.
template <bool MMA>
struct Tiles {
    static constexpr int PITCH = MMA ? 20 : 17;
    unsigned a[BM][PITCH];
    unsigned b[BN][PITCH];
};

template <typename T> __device__ __forceinline__ unsigned bits_at(const T* p);
template <> __device__ __forceinline__ unsigned bits_at<float>(const float* p) {
    return __float_as_uint(__ldg(p));
}
template <> __device__ __forceinline__ unsigned bits_at<__half>(const __half* p) {
    return __ldg(reinterpret_cast<const unsigned short*>(p));
}
template <> __device__ __forceinline__ unsigned bits_at<__nv_bfloat16>(const __nv_bfloat16* p) {
    return __ldg(reinterpret_cast<const unsigned short*>(p));
}

// 1.0 in T's bits: the B values of wgrad's bias column.
template <typename T> __device__ __forceinline__ unsigned one_bits();
template <> __device__ __forceinline__ unsigned one_bits<float>() { return 0x3f800000u; }
template <> __device__ __forceinline__ unsigned one_bits<__half>() { return 0x3c00u; }
template <> __device__ __forceinline__ unsigned one_bits<__nv_bfloat16>() { return 0x3f80u; }

// Where acc[u][v] of thread tid sits in the block tile.
// FFMA: thread (tx, ty) = (tid % 16, tid / 16) holds row ty + 16 u, column tx + 16 v.
// MMA: warp (wm, wn) = (warp / 4, warp % 4) holds rows wm * 32 + [0, 32), columns wn * 16 + [0, 16)
// as 2 x 2 tiles of 16 x 8; acc[u] is tile (u / 2, u % 2), and acc[u][v] is PTX's c_v there: row
// g + 8 (v / 2), column 2 c + v % 2, with g = lane / 4, c = lane % 4.
template <bool MMA>
__device__ __forceinline__ void acc_position(int tid, int u, int v, int& row, int& col) {
    if constexpr (MMA) {
        const int lane = tid & 31, warp = tid >> 5;
        row = (warp >> 2) * 32 + 16 * (u >> 1) + (lane >> 2) + 8 * (v >> 1);
        col = (warp & 3) * 16 + 8 * (u & 1) + 2 * (lane & 3) + (v & 1);
    } else {
        row = (tid >> 4) + 16 * u;
        col = (tid & 15) + 16 * v;
    }
}

// acc += the staged tiles' product.  MMA: a 32-bit word holds one tf32 or two 16-bit k values, so
// both take the same words of each 8-word k step: A {(g, c), (g + 8, c), (g, c + 4), (g + 8, c + 4)}
// of the 16-row tile, B {(g, c), (g, c + 4)} of the 8-column tile (rows, words), as PTX lays out
// m16n8k8 .tf32 and m16n8k16 .f16 / .bf16 fragments.
template <typename T, bool MMA>
__device__ __forceinline__ void multiply(float (&acc)[4][4], const Tiles<MMA>& s, int tid) {
    if constexpr (MMA) {
        const int lane = tid & 31, warp = tid >> 5;
        const int g = lane >> 2, c = lane & 3;
        const int row0 = (warp >> 2) * 32 + g, col0 = (warp & 3) * 16 + g;
#pragma unroll
        for (int ks = 0; ks < KWORDS; ks += 8) {
            unsigned b[2][2];
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                b[j][0] = lb::Mma<T>::prepare(s.b[col0 + 8 * j][ks + c]);
                b[j][1] = lb::Mma<T>::prepare(s.b[col0 + 8 * j][ks + c + 4]);
            }
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int r = row0 + 16 * i;
                unsigned a[4] = {s.a[r][ks + c], s.a[r + 8][ks + c], s.a[r][ks + c + 4], s.a[r + 8][ks + c + 4]};
#pragma unroll
                for (int q = 0; q < 4; ++q) a[q] = lb::Mma<T>::prepare(a[q]);
#pragma unroll
                for (int j = 0; j < 2; ++j) lb::Mma<T>::run(acc[2 * i + j], a, b[j]);
            }
        }
    } else {
        static_assert(sizeof(T) == 4, "the FFMA path is fp32 only");
        const int tx = tid & 15, ty = tid >> 4;
#pragma unroll
        for (int q = 0; q < KWORDS; ++q) {
            float a[4], b[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                a[u] = __uint_as_float(s.a[ty + 16 * u][q]);
                b[u] = __uint_as_float(s.b[tx + 16 * u][q]);
            }
#pragma unroll
            for (int u = 0; u < 4; ++u)
#pragma unroll
                for (int v = 0; v < 4; ++v) acc[u][v] = fmaf(a[u], b[v], acc[u][v]);
        }
    }
}

// acc = sum over k in [kbeg, kend) of the block's A and B tiles.  load(k0, ra, rb) fetches this
// thread's words of the tile that starts at k0 into registers (both operands, zeros where nothing
// is read); a thread stores them at row tid % 64, words tid / 64 + LOAD_STEP e.
template <typename T, bool MMA, typename Load>
__device__ __forceinline__ void k_loop(Tiles<MMA>& s, float (&acc)[4][4], int kbeg, int kend, Load&& load) {
    constexpr int KT = KWORDS * 4 / sizeof(T);  // k values per tile
    const int tid = threadIdx.x, row = tid % BM, word0 = tid / BM;
#pragma unroll
    for (int u = 0; u < 4; ++u)
#pragma unroll
        for (int v = 0; v < 4; ++v) acc[u][v] = 0.0f;
    unsigned ra[LOAD_WORDS], rb[LOAD_WORDS];
    if (kbeg < kend) load(kbeg, ra, rb);
    for (int k0 = kbeg; k0 < kend; k0 += KT) {
        __syncthreads();  // every warp is done with the previous tile
#pragma unroll
        for (int e = 0; e < LOAD_WORDS; ++e) {
            s.a[row][word0 + LOAD_STEP * e] = ra[e];
            s.b[row][word0 + LOAD_STEP * e] = rb[e];
        }
        __syncthreads();
        if (k0 + KT < kend) load(k0 + KT, ra, rb);
        multiply<T, MMA>(acc, s, tid);
    }
}

// The k value of element h of this thread's word e in the tile starting at k0.
template <typename T>
__device__ __forceinline__ int k_of(int k0, int e, int h) {
    constexpr int PER_WORD = 4 / sizeof(T);
    return k0 + (static_cast<int>(threadIdx.x) / BM + LOAD_STEP * e) * PER_WORD + h;
}

}  // namespace

// Grid: (ceil(M / 64), ceil(CPI / 64), groups); M = batch * H * W, K = CPO * KH * KW.
// ktab[k] = {co, kh * dil_h, kw * dil_w, weight offset of (co, 0, kh, kw)}.
template <typename T, bool MMA>
__global__ void __launch_bounds__(THREADS) conv_dgrad(
    const T* dy, const T* w, T* dx, const int4* ktab, int M, int CPI, int CPO, int K, int H, int W,
    int OH, int OW, int stride_h, int stride_w, int pad_h, int pad_w, long long dyN, long long dyC,
    long long dyH, long long dyW, long long wO, long long wI, long long dxN, long long dxC,
    long long dxH, long long dxW) {
    constexpr int PER_WORD = 4 / sizeof(T);
    __shared__ Tiles<MMA> s;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN, g = blockIdx.z;
    const int tid = threadIdx.x;

    // This thread's A row (input pixel m) and B row (input channel j).
    const int m = m0 + tid % BM, j = n0 + tid % BM;
    const bool a_ok = m < M, b_ok = j < CPI;
    int hp = 0, wp = 0;  // (h + pad_h, w + pad_w)
    long long a_base = 0;
    if (a_ok) {
        const int n = m / (H * W), r = m - n * (H * W);
        const int h = r / W;
        hp = h + pad_h;
        wp = r - h * W + pad_w;
        a_base = n * dyN + static_cast<long long>(g) * CPO * dyC;
    }
    const long long b_base = static_cast<long long>(g) * CPO * wO + static_cast<long long>(j) * wI;

    float acc[4][4];
    k_loop<T, MMA>(s, acc, 0, K, [&](int k0, unsigned (&ra)[LOAD_WORDS], unsigned (&rb)[LOAD_WORDS]) {
#pragma unroll
        for (int e = 0; e < LOAD_WORDS; ++e) {
            unsigned wa = 0, wb = 0;
#pragma unroll
            for (int h = 0; h < PER_WORD; ++h) {
                const int k = k_of<T>(k0, e, h);
                if (k >= K) continue;
                const int4 t = __ldg(ktab + k);
                const int th = hp - t.y, tw = wp - t.z;
                if (a_ok && th >= 0 && tw >= 0) {
                    const int oh = th / stride_h, ow = tw / stride_w;
                    if (oh * stride_h == th && ow * stride_w == tw && oh < OH && ow < OW)
                        wa |= bits_at(dy + (a_base + t.x * dyC + oh * dyH + ow * dyW)) << (16 * h);
                }
                if (b_ok) wb |= bits_at(w + (b_base + t.w)) << (16 * h);
            }
            ra[e] = wa;
            rb[e] = wb;
        }
    });

#pragma unroll
    for (int u = 0; u < 4; ++u) {
#pragma unroll
        for (int v = 0; v < 4; ++v) {
            int row, col;
            acc_position<MMA>(tid, u, v, row, col);
            const int mm = m0 + row, jj = n0 + col;
            if (mm >= M || jj >= CPI) continue;
            const int n = mm / (H * W), r = mm - n * (H * W);
            const int h = r / W;
            dx[n * dxN + (static_cast<long long>(g) * CPI + jj) * dxC + h * dxH + (r - h * W) * dxW] =
                lb::from_float<T>(acc[u][v]);
        }
    }
}

// Grid: (ceil(CPO / 64), ceil(columns / 64), splits * groups), blockIdx.z = split * groups + group.
// J = CPI * KH * KW weight columns, then (columns == J + 1) the bias column; R output pixels, the
// split z summing [z * r_split, min(R, (z + 1) * r_split)).
// rtab[r] = {dy offset of (n, 0, oh, ow), x offset of (n, 0, ih0, iw0), ih0, iw0}.
template <typename T, bool MMA>
__global__ void __launch_bounds__(THREADS) conv_wgrad(
    const T* dy, const T* x, float* ws, const int4* rtab, int CPO, int CPI, int groups, int J,
    int columns, int KH, int KW, int R, int r_split, int H, int W, int dil_h, int dil_w,
    long long dyC, long long xC, long long xH, long long xW) {
    constexpr int PER_WORD = 4 / sizeof(T);
    __shared__ Tiles<MMA> s;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int z = blockIdx.z / groups, g = blockIdx.z - z * groups;
    const int tid = threadIdx.x;

    // This thread's A row (output channel i of the group) and B row (column j).
    const int i = m0 + tid % BM, j = n0 + tid % BM;
    const bool a_ok = i < CPO, b_x = j < J, b_one = j == J && columns > J;
    const long long a_base = (static_cast<long long>(g) * CPO + i) * dyC;
    int dh = 0, dw = 0;
    long long b_base = 0;
    if (b_x) {
        const int ci = j / (KH * KW), t = j - ci * (KH * KW);
        const int kh = t / KW;
        dh = kh * dil_h;
        dw = (t - kh * KW) * dil_w;
        b_base = (static_cast<long long>(g) * CPI + ci) * xC + dh * xH + dw * xW;
    }
    const int rbeg = z * r_split, rend = min(R, rbeg + r_split);

    float acc[4][4];
    k_loop<T, MMA>(s, acc, rbeg, rend, [&](int k0, unsigned (&ra)[LOAD_WORDS], unsigned (&rb)[LOAD_WORDS]) {
#pragma unroll
        for (int e = 0; e < LOAD_WORDS; ++e) {
            unsigned wa = 0, wb = 0;
#pragma unroll
            for (int h = 0; h < PER_WORD; ++h) {
                const int r = k_of<T>(k0, e, h);
                if (r >= rend) continue;
                const int4 t = __ldg(rtab + r);
                if (a_ok) wa |= bits_at(dy + (a_base + t.x)) << (16 * h);
                const int ih = t.z + dh, iw = t.w + dw;
                if (b_x && ih >= 0 && ih < H && iw >= 0 && iw < W)
                    wb |= bits_at(x + (b_base + t.y)) << (16 * h);
                else if (b_one)
                    wb |= one_bits<T>() << (16 * h);
            }
            ra[e] = wa;
            rb[e] = wb;
        }
    });

    const long long cout = static_cast<long long>(groups) * CPO;
#pragma unroll
    for (int u = 0; u < 4; ++u) {
#pragma unroll
        for (int v = 0; v < 4; ++v) {
            int row, col;
            acc_position<MMA>(tid, u, v, row, col);
            const int ii = m0 + row, jj = n0 + col;
            if (ii < CPO && jj < columns)
                ws[(z * cout + static_cast<long long>(g) * CPO + ii) * columns + jj] = acc[u][v];
        }
    }
}

// dweight[co][ci][kh][kw] (through its strides) and dbias[co]: the sum of the splits' partials
// of (co, column), in split order.  Grid-stride over the Cout x columns partials of one split.
template <typename T>
__global__ void __launch_bounds__(256) wgrad_reduce(const float* ws, int splits, int cout, int columns,
                                                    int J, int KH, int KW, T* dw, long long wO, long long wI,
                                                    long long wH, long long wW, T* dbias) {
    const long long total = static_cast<long long>(cout) * columns;
    for (long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
         idx += static_cast<long long>(gridDim.x) * blockDim.x) {
        const int co = static_cast<int>(idx / columns), j = static_cast<int>(idx - static_cast<long long>(co) * columns);
        float sum = 0.0f;
        for (int z = 0; z < splits; ++z) sum += ws[z * total + idx];
        if (j < J) {
            const int ci = j / (KH * KW), t = j - ci * (KH * KW);
            const int kh = t / KW;
            dw[co * wO + ci * wI + kh * wH + (t - kh * KW) * wW] = lb::from_float<T>(sum);
        } else {
            dbias[co] = lb::from_float<T>(sum);
        }
    }
}
