// What the CUDA kernels need from their platform, stated once for both of the places they are built:
// nvcc for a GPU, or g++ against the project's SIMT emulator (csrc/emulation/simt.h, when
// FASTRNN_SIMT_EMULATION is defined) so that the same sources run on the CPU in the tests.
//
// Kernel code uses only: the CUDA built-ins and the wmma API (real or emulated), dynamic shared memory
// through FASTRNN_DYNAMIC_SHARED, and SpinWait in spin loops. Host code launches kernels, asks for the
// device's limits and zeroes memory only through the functions below.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

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
// Backs off inside a spin loop so the waiting thread does not steal issue slots from the work it waits for.
class SpinWait {
 public:
  __device__ void pause(const char*, unsigned, unsigned) {
    __nanosleep(nanoseconds_);
    if (nanoseconds_ < 256) nanoseconds_ *= 2;
  }

 private:
  unsigned nanoseconds_ = 16;
};
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

inline DeviceLimits device_limits() {
  int device = 0, multiprocessors = 0, shared = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&shared, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "cudaDeviceGetAttribute");
  return {multiprocessors, static_cast<size_t>(shared)};
}

// Past 48 KB a kernel must opt in to its dynamic shared memory before it is launched or measured.
template <class Params>
void allow_shared(void (*kernel)(Params), size_t shared_bytes) {
  if (shared_bytes > 48 * 1024)
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared_bytes)),
          "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
}

template <class Params>
int resident_blocks_per_multiprocessor(void (*kernel)(Params), int threads, size_t shared_bytes) {
  allow_shared(kernel, shared_bytes);
  int blocks = 0;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, shared_bytes),
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
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
