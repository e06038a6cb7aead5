// What the CUDA kernels need from their platform, stated once for both of the places they are built:
// nvcc for a GPU, or g++ against the project's SIMT emulator (csrc/emulation/simt.h, when
// FASTRNN_SIMT_EMULATION is defined) so that the same sources run on the CPU in the tests.
//
// Kernel code uses only: the CUDA built-ins and the wmma API (real or emulated), dynamic shared memory
// through FASTRNN_DYNAMIC_SHARED, SpinWait in spin loops, and copy_async / wait_async_copies to stage
// global memory into shared memory. Host code launches kernels, asks for the device's limits and zeroes
// memory only through the functions below.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>

#if defined(FASTRNN_SIMT_EMULATION)
#include "../emulation/simt.h"
#else
#include <cuda/atomic>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>
#endif

#include "../cell.h"

#if defined(FASTRNN_SIMT_EMULATION)
// The calling block's dynamic shared memory (128-byte aligned, like the GPU's).
#define FASTRNN_DYNAMIC_SHARED(name) unsigned char* name = ::fastrnn_simt::dynamic_shared_memory()
#else
#define FASTRNN_DYNAMIC_SHARED(name) extern __shared__ __align__(128) unsigned char name[]
#endif

namespace fastrnn {
namespace cuda {

// --- in kernels ---------------------------------------------------------------------------------------

#if defined(FASTRNN_SIMT_EMULATION)
using SpinWait = ::fastrnn_simt::SpinWait;
#else
// Backs off inside a spin loop so the waiting thread does not steal issue slots from the work it waits for,
// briefly: each poll is an L2 round trip already, and a longer sleep only delays the wake-up past the
// moment the wait is over (the grid barrier is on every step's critical path).
class SpinWait {
 public:
  __device__ void pause(const char*, unsigned, unsigned) { __nanosleep(32); }
};
#endif

// Asynchronous copies of `Bytes` (4, 8 or 16) bytes from global to shared memory, both addresses aligned to
// the size: cp.async on sm_80 and later (16 bytes bypass L1: .cg), a load and a store before. A copy may
// land any time up to the issuing thread's next wait_async_copies(), which must come before the barrier
// that lets other threads read it (the emulator checks both).
#if defined(FASTRNN_SIMT_EMULATION)
template <int Bytes>
inline void copy_async(void* shared, const void* global, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::fastrnn_simt::copy_async(shared, global, Bytes, file, line);
}
template <int Bytes>
inline void prefetch_async(void* shared, const void* global, const char* file = __builtin_FILE(),
                           int line = __builtin_LINE()) {
  ::fastrnn_simt::copy_async(shared, global, Bytes, file, line, true);
}
inline void wait_async_copies() { ::fastrnn_simt::wait_async_copies(); }
#else
template <int Bytes>
__device__ inline void copy_async(void* shared, const void* global) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async copies 4, 8 or 16 bytes");
#if __CUDA_ARCH__ >= 800
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  if constexpr (Bytes == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(address), "l"(global) : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(address), "l"(global), "n"(Bytes) : "memory");
  }
#else
  if constexpr (Bytes == 16) {
    *static_cast<uint4*>(shared) = *static_cast<const uint4*>(global);
  } else if constexpr (Bytes == 8) {
    *static_cast<uint2*>(shared) = *static_cast<const uint2*>(global);
  } else {
    *static_cast<unsigned*>(shared) = *static_cast<const unsigned*>(global);
  }
#endif
}
// A copy_async that may stay in flight across block barriers: its destination is read only after a later
// wait_async_copies() and a barrier (the emulator exempts it from the barrier check, nothing else).
template <int Bytes>
__device__ inline void prefetch_async(void* shared, const void* global) {
  copy_async<Bytes>(shared, global);
}
__device__ inline void wait_async_copies() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}
#endif

// --- on the host --------------------------------------------------------------------------------------

namespace platform {

struct DeviceLimits {
  int multiprocessors;
  size_t shared_per_block;  // dynamic shared memory a block may opt in to
};

#if defined(FASTRNN_SIMT_EMULATION)

inline DeviceLimits device_limits() {
  const auto& model = ::fastrnn_simt::device_model();
  return {model.multiprocessors, model.shared_per_block_optin};
}

template <class Params>
int resident_blocks_per_multiprocessor(void (*)(Params), int threads, size_t shared_bytes) {
  return ::fastrnn_simt::blocks_per_multiprocessor(threads, shared_bytes);
}

template <class Params>
void launch(void (*kernel)(Params), int blocks, int threads, size_t shared_bytes, void* /*stream*/,
            bool /*cooperative*/, const Params& params) {
  ::fastrnn_simt::launch({dim3(blocks), dim3(threads), shared_bytes}, kernel, params);
}

inline void zero_async(void* pointer, size_t bytes, void* /*stream*/) { std::memset(pointer, 0, bytes); }

#else

inline void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    (void)cudaGetLastError();  // clear a sticky launch-configuration error so the next call is not blamed
    throw std::runtime_error(std::string("fastrnn cuda backend: ") + what + " failed: " + cudaGetErrorString(status));
  }
}

inline int current_device() {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  return device;
}

// What a call asks of the runtime but does not change between calls is asked once, per device (and per
// kernel and size): the device's limits, the shared-memory opt-in and the occupancy query. A stepwise
// plan launches a kernel per phase, and each of these costs microseconds; the opt-in on every launch did.
struct HostCache {
  std::mutex mutex;
  std::map<int, DeviceLimits> limits;
  std::map<std::pair<const void*, int>, size_t> allowed_shared;  // (kernel, device) -> bytes opted in to
  std::map<std::tuple<const void*, int, int, size_t>, int> occupancy;  // (kernel, device, threads, bytes)
};

inline HostCache& host_cache() {
  static HostCache cache;
  return cache;
}

inline DeviceLimits device_limits() {
  const int device = current_device();
  HostCache& cache = host_cache();
  {
    std::lock_guard<std::mutex> lock(cache.mutex);
    const auto found = cache.limits.find(device);
    if (found != cache.limits.end()) return found->second;
  }
  int multiprocessors = 0, shared = 0;
  check(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&shared, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "cudaDeviceGetAttribute");
  const DeviceLimits limits{multiprocessors, static_cast<size_t>(shared)};
  std::lock_guard<std::mutex> lock(cache.mutex);
  cache.limits[device] = limits;
  return limits;
}

// Past 48 KB a kernel must opt in to its dynamic shared memory before it is launched or measured; once
// per kernel and device for the largest size asked so far (an opt-in covers every smaller size).
template <class Params>
void allow_shared(void (*kernel)(Params), size_t shared_bytes) {
  if (shared_bytes <= 48 * 1024) return;
  const auto key = std::make_pair(reinterpret_cast<const void*>(kernel), current_device());
  HostCache& cache = host_cache();
  std::lock_guard<std::mutex> lock(cache.mutex);
  size_t& allowed = cache.allowed_shared[key];
  if (shared_bytes <= allowed) return;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared_bytes)),
        "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
  allowed = shared_bytes;
}

template <class Params>
int resident_blocks_per_multiprocessor(void (*kernel)(Params), int threads, size_t shared_bytes) {
  const auto key = std::make_tuple(reinterpret_cast<const void*>(kernel), current_device(), threads, shared_bytes);
  HostCache& cache = host_cache();
  {
    std::lock_guard<std::mutex> lock(cache.mutex);
    const auto found = cache.occupancy.find(key);
    if (found != cache.occupancy.end()) return found->second;
  }
  allow_shared(kernel, shared_bytes);
  int blocks = 0;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, shared_bytes),
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  std::lock_guard<std::mutex> lock(cache.mutex);
  cache.occupancy[key] = blocks;
  return blocks;
}

// A cooperative launch fails, rather than deadlocks, when its blocks cannot all be resident at once.
template <class Params>
void launch(void (*kernel)(Params), int blocks, int threads, size_t shared_bytes, void* stream, bool cooperative,
            const Params& params) {
  allow_shared(kernel, shared_bytes);
  void* arguments[] = {const_cast<Params*>(&params)};
  const auto function = reinterpret_cast<const void*>(kernel);
  const auto s = static_cast<cudaStream_t>(stream);
  check(cooperative ? cudaLaunchCooperativeKernel(function, dim3(blocks), dim3(threads), arguments, shared_bytes, s)
                    : cudaLaunchKernel(function, dim3(blocks), dim3(threads), arguments, shared_bytes, s),
        cooperative ? "cudaLaunchCooperativeKernel" : "cudaLaunchKernel");
}

inline void zero_async(void* pointer, size_t bytes, void* stream) {
  check(cudaMemsetAsync(pointer, 0, bytes, static_cast<cudaStream_t>(stream)), "cudaMemsetAsync");
}

#endif

}  // namespace platform
}  // namespace cuda
}  // namespace fastrnn
