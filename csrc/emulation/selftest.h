// Kernels with planted bugs, one per check of the SIMT emulator, run by the driver's `selftest` command
// (tests/test_cuda_sanitizers.py): each must be caught, by the emulator itself or by the sanitizer the
// driver was built with, or the emulator's checks are not worth the tests that rely on them.
#pragma once

#include <cstring>
#include <map>
#include <string>

#include "../cuda/grid_barrier.cuh"
#include "../cuda/platform.cuh"
#include "simt.h"

namespace fastrnn_selftest {

using fastrnn::cuda::GridBarrierState;
using fastrnn::cuda::grid_barrier;

// Half the block waits at one __syncthreads, the other half at another: divergent.
__global__ void divergent_syncthreads(float* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.0f;
}

// Thread 0 returns early, the rest wait at a barrier it will never reach.
__global__ void early_return(float* out) {
  if (threadIdx.x == 0) return;
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}

// Block 0 skips the grid barrier the others wait at.
__global__ void missing_block_at_grid_barrier(GridBarrierState* barrier) {
  if (blockIdx.x == 0) return;
  grid_barrier(barrier, 1);
}

// A warp-collective op reached by only half of a warp.
__global__ void divergent_warp_collective(float* out) {
  if (threadIdx.x % 32 < 16) __syncwarp();
  out[threadIdx.x] = 1.0f;
}

// A wmma load from a pointer 16 bytes past a 256-bit boundary.
__global__ void misaligned_wmma(float* out) {
  FASTRNN_DYNAMIC_SHARED(shared);
  namespace wmma = nvcuda::wmma;
  __half* tile = reinterpret_cast<__half*>(shared);
  for (int i = threadIdx.x; i < 16 * 24; i += blockDim.x) tile[i] = __float2half_rn(1.0f);
  __syncthreads();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
  wmma::load_matrix_sync(a, tile + 8, 16);
  out[threadIdx.x] = __half2float(a.x[0]);
}

// A wmma load whose tile ends past the dynamic shared memory (16 rows of 16 with ldm 16 need 512 bytes).
__global__ void wmma_past_shared_memory(float* out) {
  FASTRNN_DYNAMIC_SHARED(shared);
  namespace wmma = nvcuda::wmma;
  __half* tile = reinterpret_cast<__half*>(shared);
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
  wmma::load_matrix_sync(a, tile, 16);
  out[threadIdx.x] = __half2float(a.x[0]);
}

// One float written past the end of the dynamic shared memory.
__global__ void shared_overflow(float* out) {
  FASTRNN_DYNAMIC_SHARED(shared);
  float* buffer = reinterpret_cast<float*>(shared);
  buffer[threadIdx.x + 1] = 1.0f;  // launched with blockDim.x floats of shared memory
  __syncthreads();
  out[threadIdx.x] = buffer[threadIdx.x];
}

// Each thread reads its neighbour's shared-memory slot with no __syncthreads between write and read.
__global__ void missing_syncthreads(float* out) {
  FASTRNN_DYNAMIC_SHARED(shared);
  float* buffer = reinterpret_cast<float*>(shared);
  buffer[threadIdx.x] = static_cast<float>(threadIdx.x);
  out[threadIdx.x] = buffer[(threadIdx.x + 1) % blockDim.x];
}

// Block 1 reads what block 0 wrote, with no grid barrier between.
__global__ void missing_grid_barrier(float* data) {
  if (blockIdx.x == 0) data[threadIdx.x] = 1.0f;
  if (blockIdx.x == 1) data[blockDim.x + threadIdx.x] = data[threadIdx.x];
}

// The same exchange behind the grid barrier: must run clean everywhere (the barrier's own test).
__global__ void exchange_behind_grid_barrier(float* data, GridBarrierState* barrier) {
  for (unsigned round = 0; round < 3; ++round) {
    if (blockIdx.x == 0) data[threadIdx.x] = static_cast<float>(round);
    grid_barrier(barrier, 2 * round + 1);
    if (blockIdx.x == 1 && data[threadIdx.x] != static_cast<float>(round))
      ::fastrnn_simt::fail_here("grid barrier let a read overtake the write before it");
    grid_barrier(barrier, 2 * round + 2);
  }
}

// Stages 16 bytes per thread with asynchronous copies and publishes them at a barrier without waiting.
__global__ void async_copy_not_waited(float* data) {
  FASTRNN_DYNAMIC_SHARED(shared);
  float* tile = reinterpret_cast<float*>(shared);
  fastrnn::cuda::copy_async<16>(tile + 4 * threadIdx.x, data + 4 * threadIdx.x);
  __syncthreads();
  data[threadIdx.x] = tile[(4 * threadIdx.x + 4) % (4 * blockDim.x)];
}

// Reads its own copy's destination before the wait that lands it.
__global__ void async_copy_read_before_wait(float* data) {
  FASTRNN_DYNAMIC_SHARED(shared);
  float* tile = reinterpret_cast<float*>(shared);
  fastrnn::cuda::copy_async<16>(tile + 4 * threadIdx.x, data + 4 * threadIdx.x);
  const float early = tile[4 * threadIdx.x];
  fastrnn::cuda::wait_async_copies();
  if (early != data[4 * threadIdx.x]) ::fastrnn_simt::fail_here("read an asynchronous copy's destination before its wait");
}

// Prefetches across a barrier (allowed), then reads a neighbour's prefetched slot without the wait that
// lands it.
__global__ void prefetch_read_before_wait(float* data) {
  FASTRNN_DYNAMIC_SHARED(shared);
  float* tile = reinterpret_cast<float*>(shared);
  fastrnn::cuda::prefetch_async<16>(tile + 4 * threadIdx.x, data + 4 * threadIdx.x);
  __syncthreads();
  const float early = tile[(4 * threadIdx.x + 4) % (4 * blockDim.x)];
  fastrnn::cuda::wait_async_copies();
  if (early != data[(4 * threadIdx.x + 4) % (4 * blockDim.x)])
    ::fastrnn_simt::fail_here("read a prefetch's destination before its wait");
}

// Two copies in flight to one destination: which lands last is undefined.
__global__ void two_copies_to_one_address(float* data) {
  FASTRNN_DYNAMIC_SHARED(shared);
  fastrnn::cuda::prefetch_async<16>(shared, data);
  fastrnn::cuda::prefetch_async<16>(shared, data + 4);
  fastrnn::cuda::wait_async_copies();
}

// A 16-byte copy from an address 8 bytes past a 16-byte boundary.
__global__ void misaligned_async_copy(float* data) {
  FASTRNN_DYNAMIC_SHARED(shared);
  fastrnn::cuda::copy_async<16>(shared, data + 2);
  fastrnn::cuda::wait_async_copies();
}

// Runs the planted bug `name`; returns false if there is no such test. Throws what the emulator throws.
inline bool run(const std::string& name) {
  using fastrnn_simt::launch;
  alignas(16) float data[256] = {};
  for (int i = 0; i < 256; ++i) data[i] = 1.0f + static_cast<float>(i);
  GridBarrierState barrier{0};
  const dim3 one(1), two(2), warp(32), warps(64);
  if (name == "divergent_syncthreads") {
    launch({one, warp, 0}, divergent_syncthreads, data);
  } else if (name == "early_return") {
    launch({one, warps, 0}, early_return, data);
  } else if (name == "missing_block_at_grid_barrier") {
    launch({two, warp, 0}, missing_block_at_grid_barrier, &barrier);
  } else if (name == "divergent_warp_collective") {
    launch({one, warp, 0}, divergent_warp_collective, data);
  } else if (name == "misaligned_wmma") {
    launch({one, warp, 16 * 24 * sizeof(__half)}, misaligned_wmma, data);
  } else if (name == "wmma_past_shared_memory") {
    launch({one, warp, 256}, wmma_past_shared_memory, data);
  } else if (name == "shared_overflow") {
    launch({one, warp, 32 * sizeof(float)}, shared_overflow, data);
  } else if (name == "missing_syncthreads") {
    launch({one, warps, 64 * sizeof(float)}, missing_syncthreads, data);
  } else if (name == "missing_grid_barrier") {
    launch({two, warp, 0}, missing_grid_barrier, data);
  } else if (name == "async_copy_not_waited") {
    launch({one, warp, 32 * 16}, async_copy_not_waited, data);
  } else if (name == "async_copy_read_before_wait") {
    launch({one, warp, 32 * 16}, async_copy_read_before_wait, data);
  } else if (name == "prefetch_read_before_wait") {
    launch({one, warp, 32 * 16}, prefetch_read_before_wait, data);
  } else if (name == "two_copies_to_one_address") {
    launch({one, warp, 16}, two_copies_to_one_address, data);
  } else if (name == "misaligned_async_copy") {
    launch({one, warp, 16}, misaligned_async_copy, data);
  } else if (name == "exchange_behind_grid_barrier") {
    launch({two, warp, 0}, exchange_behind_grid_barrier, data, &barrier);
  } else {
    return false;
  }
  return true;
}

}  // namespace fastrnn_selftest
