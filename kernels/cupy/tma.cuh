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

}  // namespace lb
