// Hopper's tensor memory accelerator (TMA, sm_90) and the shared-memory barriers (mbarrier) that
// count its bytes: a producer thread starts 2-D tile copies global -> shared, consumers wait on
// the barrier of the stage they read and release it back to the producer.
#include "layerbench_common.cuh"

namespace lb {

// cuTensorMapEncodeTiled's opaque 128-byte descriptor (CUtensorMap, which NVRTC's headers lack),
// passed by value as a __grid_constant__ kernel parameter.
struct alignas(64) TensorMap {
    unsigned long long words[16];
};

__device__ __forceinline__ void mbar_init(unsigned bar, unsigned arrivals) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(arrivals) : "memory");
}
// Makes the initialised barriers visible to the async proxy (the TMA unit) before first use.
__device__ __forceinline__ void fence_mbar_init() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// One arrival that also announces `bytes` of TMA traffic the phase must wait for.
__device__ __forceinline__ void mbar_expect_tx(unsigned bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(unsigned bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(unsigned bar, unsigned parity) {
    unsigned done;
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
    return done != 0;
}
// Wait until the barrier's phase of parity `parity` has completed.  A pipeline that never fills
// (a wrong byte count, a copy the TMA unit refused) traps after about 2^26 tries, seconds,
// instead of hanging the GPU until the sweep's point timeout.
__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity) {
    for (unsigned tries = 0; !mbar_try_wait(bar, parity);)
        if (++tries == (1u << 26)) __trap();
}

// Copy the box of `map` at element coordinates (c0 innermost, c1) into shared memory at `dst`
// (aligned to the map's swizzle period); the barrier counts the box's bytes when they land.
// Coordinates past the tensor's end read as zeros.
__device__ __forceinline__ void tma_load_2d(unsigned dst, const TensorMap* map, int c0, int c1, unsigned bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], "
        "[%4];\n" ::"r"(dst),
        "l"(reinterpret_cast<unsigned long long>(map)), "r"(c0), "r"(c1), "r"(bar)
        : "memory");
}

// The same for the 3-D and 5-D maps of a convolution's weight and input (coordinates innermost first).
__device__ __forceinline__ void tma_load_3d(unsigned dst, const TensorMap* map, int c0, int c1, int c2, unsigned bar) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
        "[%5];\n" ::"r"(dst),
        "l"(reinterpret_cast<unsigned long long>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
        : "memory");
}
__device__ __forceinline__ void tma_load_5d(unsigned dst, const TensorMap* map, int c0, int c1, int c2, int c3, int c4,
                                            unsigned bar) {
    asm volatile(
        "cp.async.bulk.tensor.5d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, "
        "%5, %6}], [%7];\n" ::"r"(dst),
        "l"(reinterpret_cast<unsigned long long>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(c4), "r"(bar)
        : "memory");
}

// An im2col map's box (cuTensorMapEncodeIm2col): the map's pixels-per-column filter origins from
// (c, w, h, n) on, walked as the output's pixels are, each shifted by the tap (off_w, off_h) and
// giving the map's channels-per-pixel channels from c: one row of the box a pixel, zeros where
// the shifted pixel lies past the image.
__device__ __forceinline__ void tma_load_im2col_4d(unsigned dst, const TensorMap* map, int c, int w, int h, int n,
                                                   unsigned short off_w, unsigned short off_h, unsigned bar) {
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.im2col.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, "
        "%4, %5}], [%6], {%7, %8};\n" ::"r"(dst),
        "l"(reinterpret_cast<unsigned long long>(map)), "r"(c), "r"(w), "r"(h), "r"(n), "r"(bar), "h"(off_w),
        "h"(off_h)
        : "memory");
}

// Copy the box of `map` at (c0, c1) from shared memory at `src` (laid out as tma_load_2d writes
// it) to global memory; elements past the tensor's end are not written.  Tracked per thread in
// bulk groups: commit after the copies, wait before `src` is written again.
__device__ __forceinline__ void tma_store_2d(const TensorMap* map, unsigned src, int c0, int c1) {
    asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];\n" ::"l"(
                     reinterpret_cast<unsigned long long>(map)),
                 "r"(src), "r"(c0), "r"(c1)
                 : "memory");
}
// The same for the 4-D map of a convolution's NHWC output (coordinates innermost first).
__device__ __forceinline__ void tma_store_4d(const TensorMap* map, unsigned src, int c0, int c1, int c2, int c3) {
    asm volatile("cp.async.bulk.tensor.4d.global.shared::cta.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(
                     reinterpret_cast<unsigned long long>(map)),
                 "r"(src), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
                 : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// Until this thread's committed bulk copies have read their shared memory (READ) or completed.
template <bool READ>
__device__ __forceinline__ void bulk_wait_all() {
    if (READ) {
        asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
    } else {
        asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
    }
}
// Barrier ID (1-15; 0 is __syncthreads) over THREADS threads, whole warps.
template <int ID, int THREADS>
__device__ __forceinline__ void named_barrier() {
    asm volatile("bar.sync %0, %1;\n" ::"n"(ID), "n"(THREADS) : "memory");
}

}  // namespace lb
