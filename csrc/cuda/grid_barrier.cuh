// The grid-wide barrier of the persistent kernels: every CTA of a cooperative launch meets here between
// two phases, and whatever any CTA wrote before it is visible to every CTA after it.
//
// One monotonic counter in global memory, zeroed before the launch: at its n-th barrier of the launch,
// thread 0 of each CTA adds 1 with a release increment and spins, with acquire loads, until the counter
// reaches n x gridDim.x. No CTA can add for barrier n + 1 before every CTA has added for barrier n, so
// that count means all of them have arrived; every add is a read-modify-write, so each CTA's release
// heads a release sequence that the waiters' acquire reads belong to. Nothing is reset, so there is no
// generation to publish and no second round trip for the last CTA to arrive. The block barriers on both
// sides extend the ordering to every thread of the CTA (PTX release is cumulative: it orders the writes
// the block barrier made visible to thread 0), so no further fence is needed. Acquire/release atomics at
// device scope, not volatile accesses and fences: that is what the CUDA memory model guarantees, and
// what ThreadSanitizer can check when the emulator runs it.
#pragma once

#include "platform.cuh"

namespace fastrnn {
namespace cuda {

struct GridBarrierState {
  unsigned int arrived;  // CTA arrivals so far in this launch
};

// The launch's barrier number `round` (1 for the first). A launch may hold at most 2^32 - 1 arrivals
// (run_plan checks phases x CTAs).
__device__ inline void grid_barrier(GridBarrierState* state, unsigned int round) {
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned int blocks = gridDim.x, everyone = round * blocks;
    ::cuda::atomic_ref<unsigned int, ::cuda::thread_scope_device> arrived(state->arrived);
    arrived.fetch_add(1, ::cuda::memory_order_release);
    SpinWait wait;
    for (unsigned int seen = arrived.load(::cuda::memory_order_acquire); seen < everyone;
         seen = arrived.load(::cuda::memory_order_acquire))
      wait.pause("grid barrier", seen - (round - 1) * blocks, blocks);
  }
  __syncthreads();
}

}  // namespace cuda
}  // namespace fastrnn
