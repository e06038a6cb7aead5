// The grid-wide barrier of the persistent kernels: every CTA of a cooperative launch meets here between
// two phases, and whatever any CTA wrote before it is visible to every CTA after it.
//
// A counter and a generation in global memory (zeroed before the launch). Thread 0 of each CTA arrives
// with an acquire-release increment; the last to arrive resets the counter and publishes a new
// generation with a release store; the others spin on an acquire load of the generation. The block
// barriers on both sides extend the ordering to every thread of the CTA: a thread's writes happen
// before its CTA's arrival, and a waiter's acquire happens before its CTA's reads. Acquire/release
// atomics at device scope, not volatile accesses and fences: that is what the CUDA memory model
// guarantees, and what ThreadSanitizer can check when the emulator runs it.
#pragma once

#include "platform.cuh"

namespace fastrnn {
namespace cuda {

struct GridBarrierState {
  unsigned int arrived;
  unsigned int generation;
};

__device__ inline void grid_barrier(GridBarrierState* state) {
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned int blocks = gridDim.x;
    ::cuda::atomic_ref<unsigned int, ::cuda::thread_scope_device> arrived(state->arrived);
    ::cuda::atomic_ref<unsigned int, ::cuda::thread_scope_device> generation(state->generation);
    __threadfence();  // belt and braces for the CTA's writes (what cooperative groups' grid.sync does too)
    // Read before arriving: the generation cannot move on until this CTA has arrived.
    const unsigned int current = generation.load(::cuda::memory_order_acquire);
    if (arrived.fetch_add(1, ::cuda::memory_order_acq_rel) == blocks - 1) {
      arrived.store(0, ::cuda::memory_order_relaxed);  // ordered before the release below
      generation.store(current + 1, ::cuda::memory_order_release);
    } else {
      SpinWait wait;
      while (generation.load(::cuda::memory_order_acquire) == current)
        wait.pause("grid barrier", arrived.load(::cuda::memory_order_relaxed), blocks);
    }
    __threadfence();
  }
  __syncthreads();
}

}  // namespace cuda
}  // namespace fastrnn
