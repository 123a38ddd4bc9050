// The CUDA keywords, types and intrinsics kernels/cupy/depthwise.cu, pointwise_gemm.cu and
// pool2d.cu use, shimmed so that the file compiles as host C++ and its kernels run on the CPU: a
// block's threads one at a time (a kernel with no barrier), or as host threads that meet at
// __syncthreads (BlockThreads).  Shared memory is what the harness defines under the kernel's
// extern name; cp.async checks that each copy (16 or 8 bytes) is aligned to its size at both ends
// (misaligned_granules) and copies at once or, where the harness sets cp_async_late, only at the
// wait that must see it (a read before its wait then reads what the buffer held); ldmatrix and
// mma.sync run warp-collectively on BlockThreads (below).  The L2 prefetches are declared here
// and defined by the harness that runs the kernels using them.
#pragma once
#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>
using std::max;
using std::min;
struct float2 { float x, y; };
struct float4 { float x, y, z, w; };
struct uint4 { unsigned x, y, z, w; };
struct uint2 { unsigned x, y; };
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
struct __half { unsigned short x; };
struct __half2 { unsigned int x; };
struct __nv_bfloat16 { unsigned short x; };
inline float2 __half22float2(__half2) { return {0, 0}; }
inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
#define __device__
#define __global__
#define __shared__
#define __align__(n) __attribute__((aligned(n)))
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
struct Dim3 { unsigned x, y, z; };
inline Dim3 blockIdx, blockDim, gridDim;
inline thread_local Dim3 threadIdx;

// One block's threads as host threads, meeting at __syncthreads.  The threads are made once and
// kept for every block after (making 256 threads a block took most of a harness's time).
class BlockThreads {
  public:
    // Runs body() on `threads` host threads, threadIdx.x 0 .. threads - 1, and waits for them all.
    static void run(int threads, const std::function<void()>& body) {
        static BlockThreads* pool = new BlockThreads(threads);  // never destroyed: its threads wait to the end
        if (threads != pool->threads_) {
            fprintf(stderr, "BlockThreads: one block size a harness (%d, then %d)\n", pool->threads_, threads);
            std::abort();
        }
        std::unique_lock<std::mutex> lock(pool->mutex_);
        pool->body_ = &body;
        pool->running_ = threads;
        ++pool->block_;
        pool->start_.notify_all();
        pool->done_.wait(lock, [&] { return pool->running_ == 0; });
    }
    static void sync() {
        BlockThreads* const pool = current;
        if (pool == nullptr) return;  // one thread at a time: no barrier to meet
        std::unique_lock<std::mutex> lock(pool->barrier_mutex_);
        const long generation = pool->generation_;
        if (++pool->arrived_ == pool->threads_) {
            pool->arrived_ = 0;
            ++pool->generation_;
            pool->all_.notify_all();
        } else {
            pool->all_.wait(lock, [&] { return pool->generation_ != generation; });
        }
    }

  private:
    explicit BlockThreads(int threads) : threads_(threads) {
        current = this;
        for (int t = 0; t < threads; ++t) std::thread([this, t] { work(t); }).detach();
    }
    void work(int t) {
        threadIdx = {unsigned(t), 0, 0};
        long seen = 0;
        for (;;) {
            const std::function<void()>* body;
            {
                std::unique_lock<std::mutex> lock(mutex_);
                start_.wait(lock, [&] { return block_ != seen; });
                seen = block_;
                body = body_;
            }
            (*body)();
            std::lock_guard<std::mutex> lock(mutex_);
            if (--running_ == 0) done_.notify_all();
        }
    }
    static inline BlockThreads* current = nullptr;
    const int threads_;
    std::mutex mutex_, barrier_mutex_;
    std::condition_variable start_, done_, all_;
    const std::function<void()>* body_ = nullptr;
    int running_ = 0, arrived_ = 0;
    long block_ = 0, generation_ = 0;
};
inline void __syncthreads() { BlockThreads::sync(); }

inline unsigned char* shared_base = nullptr;  // the harness's shared memory, for cp.async
inline long misaligned_granules = 0;
inline bool cp_async_late = false;
namespace cp_async_queue {
struct Copy {
    unsigned to, size;
    unsigned char bytes[16];
};
// This thread's committed groups, oldest first, then the open one.
inline thread_local std::vector<std::vector<Copy>> groups(1);
inline void land(size_t count) {  // the oldest `count` committed groups
    for (size_t g = 0; g < count; ++g)
        for (const Copy& c : groups[g]) memcpy(shared_base + c.to, c.bytes, c.size);
    groups.erase(groups.begin(), groups.begin() + count);
}
// Copies this thread issued and no wait landed (forgotten, so that the next block starts clean).
inline size_t unlanded() {
    size_t n = 0;
    for (const auto& g : groups) n += g.size();
    groups.assign(1, {});
    return n;
}
}  // namespace cp_async_queue
namespace lb {
void prefetch_l2(const void* p);
void bulk_prefetch_l2(const void* p, unsigned bytes);
inline float to_float(float v) { return v; }
inline float to_float(__nv_bfloat16 v) { return __uint_as_float(unsigned(v.x) << 16); }
template <typename T> T from_float(float);
template <> inline float from_float<float>(float v) { return v; }
template <> inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) {  // round to nearest even
    const unsigned u = __float_as_uint(v);
    if (std::isnan(v)) return {0x7fc0};
    return {static_cast<unsigned short>((u + 0x7fff + ((u >> 16) & 1)) >> 16)};
}
inline unsigned smem_addr(const void* p) { return unsigned(static_cast<const unsigned char*>(p) - shared_base); }
// As the hardware: an invalid copy (source size 0) writes zeros and reads nothing.  A copy of
// `size` bytes must be aligned to its size at both ends.
inline void cp_async(unsigned to, const void* from, bool valid, unsigned size) {
    if (to % size || reinterpret_cast<std::uintptr_t>(from) % size)
        __atomic_add_fetch(&misaligned_granules, 1, __ATOMIC_RELAXED);  // the block's threads count at once
    cp_async_queue::Copy c{to, size, {}};
    if (valid) memcpy(c.bytes, from, size);
    if (!cp_async_late) return (void)memcpy(shared_base + to, c.bytes, size);
    cp_async_queue::groups.back().push_back(c);
}
inline void cp_async16(unsigned to, const void* from, bool valid) { cp_async(to, from, valid, 16); }
inline void cp_async8(unsigned to, const void* from, bool valid) { cp_async(to, from, valid, 8); }
inline void cp_async_commit() {
    if (cp_async_late) cp_async_queue::groups.emplace_back();
}
inline void cp_async_wait_all() { cp_async_queue::land(cp_async_queue::groups.size() - 1); }
// All but the newest N committed groups land.
template <int N> void cp_async_wait_group() {
    const size_t committed = cp_async_queue::groups.size() - 1;
    if (committed > N) cp_async_queue::land(committed - N);
}
}  // namespace lb

// Warp-collective instructions (ldmatrix, mma.sync m16n8k16) for kernels whose every thread of a
// block issues the same sequence of them: each thread publishes its operands, the block meets,
// each lane computes its result from its warp's operands (the PTX ISA's fragment layouts), and
// the block meets again before the next.  16-bit elements are bf16 here.
namespace warp_operands {
inline unsigned address[1024], a[1024][4], b[1024][2];
inline float element(unsigned reg, int high) {
    return lb::to_float(__nv_bfloat16{static_cast<unsigned short>(high ? reg >> 16 : reg & 0xffff)});
}
inline unsigned short at(unsigned byte) {
    unsigned short v;
    memcpy(&v, shared_base + byte, 2);
    return v;
}
}  // namespace warp_operands
namespace lb {
// Register q of lane L: 4 bytes of row L / 4 of matrix q, whose address lane 8 q + L / 4 gave.
inline void ldmatrix_x4(unsigned (&r)[4], unsigned addr) {
    const int t = threadIdx.x, warp = t & ~31, lane = t & 31;
    warp_operands::address[t] = addr;
    __syncthreads();
    for (int q = 0; q < 4; ++q)
        memcpy(&r[q], shared_base + warp_operands::address[warp + 8 * q + lane / 4] + 4 * (lane % 4), 4);
    __syncthreads();
}
// Transposed: register q of lane L holds element L / 4 of rows 2 (L % 4) and 2 (L % 4) + 1.
inline void ldmatrix_x4_trans(unsigned (&r)[4], unsigned addr) {
    const int t = threadIdx.x, warp = t & ~31, lane = t & 31;
    warp_operands::address[t] = addr;
    __syncthreads();
    for (int q = 0; q < 4; ++q) {
        const unsigned* rows = warp_operands::address + warp + 8 * q + 2 * (lane % 4);
        const unsigned column = 2 * (lane / 4);
        r[q] = warp_operands::at(rows[0] + column) | (unsigned(warp_operands::at(rows[1] + column)) << 16);
    }
    __syncthreads();
}
// A (16 x 16): element (r, k) in lane (r % 8) * 4 + (k % 8) / 2, register r / 8 + 2 (k / 8), half
// k % 2; B (16 x 8): element (k, n) in lane n * 4 + (k % 8) / 2, register k / 8, half k % 2; D:
// d[i] of lane L at row L / 4 + 8 (i / 2), column 2 (L % 4) + i % 2.
template <typename T> struct Mma {
    static void run(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
        const int t = threadIdx.x, warp = t & ~31, lane = t & 31;
        memcpy(warp_operands::a[t], a, sizeof a);
        memcpy(warp_operands::b[t], b, sizeof b);
        __syncthreads();
        for (int i = 0; i < 4; ++i) {
            const int row = lane / 4 + 8 * (i / 2), col = 2 * (lane % 4) + i % 2;
            for (int k = 0; k < 16; ++k) {
                const unsigned a_reg = warp_operands::a[warp + (row % 8) * 4 + (k % 8) / 2][row / 8 + 2 * (k / 8)];
                const unsigned b_reg = warp_operands::b[warp + col * 4 + (k % 8) / 2][k / 8];
                d[i] += warp_operands::element(a_reg, k % 2) * warp_operands::element(b_reg, k % 2);
            }
        }
        __syncthreads();
    }
};
}  // namespace lb
