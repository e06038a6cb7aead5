// The host side every kernel family shares: plan a call for the current device, then run the plan —
// one cooperative launch (persistent) or one launch per phase (stepwise), in stream order.
#pragma once

#include "grid_barrier.cuh"
#include "plan.h"
#include "platform.cuh"

namespace fastrnn {
namespace cuda {

template <class Params>
Plan plan_for(void (*kernel)(Params), Kernel which, const Problem& problem, const Options& options) {
  const platform::DeviceLimits limits = platform::device_limits();
  return make_plan(which, problem, options, limits.multiprocessors, limits.shared_per_block,
                   [kernel](int threads, size_t shared_bytes) {
                     return platform::resident_blocks_per_multiprocessor(kernel, threads, shared_bytes);
                   });
}

// Kernels read their Geometry (params.g) and run phases [phase_begin, phase_end). `barrier`: the grid
// barrier's state in device memory (persistent plans; a stepwise-only caller may pass null).
template <class Params>
void run_plan(void (*kernel)(Params), Params params, const Geometry& geometry, GridBarrierState* barrier, void* stream) {
  params.g = geometry;
  if (geometry.persistent) {
    if (barrier == nullptr) throw std::logic_error("fastrnn cuda backend: a persistent plan without a grid barrier");
    // The barrier's counter holds every CTA's arrival at every phase boundary of the launch.
    if (static_cast<uint64_t>(geometry.phases) * static_cast<uint64_t>(geometry.grid) >= (uint64_t{1} << 32))
      throw std::invalid_argument("fastrnn cuda backend: " + std::to_string(geometry.phases) + " phases x " +
                                  std::to_string(geometry.grid) + " CTAs exceed the grid barrier's 2^32 arrivals in "
                                  "one launch; split the sequence into shorter calls");
    platform::zero_async(barrier, sizeof(GridBarrierState), stream);
    params.g.phase_begin = 0;
    params.g.phase_end = geometry.phases;
    platform::launch(kernel, geometry.grid, geometry.threads, geometry.shared_bytes, stream, true, params);
    return;
  }
  for (int phase = 0; phase < geometry.phases; ++phase) {
    params.g.phase_begin = phase;
    params.g.phase_end = phase + 1;
    platform::launch(kernel, stepwise_grid(geometry, phase % geometry.kinds), geometry.threads, geometry.shared_bytes,
                     stream, false, params);
  }
}

// The storage type and math of a call, as one value: dispatch() hands it to a generic lambda, which reads
// them back as typename decltype(k)::type and decltype(k)::math.
template <class T, Math M>
struct KernelTypes {
  using type = T;
  static constexpr Math math = M;
};

// Calls f(KernelTypes<T, M>{}) for the storage type and math of (dtype, allow_tf32).
template <class F>
auto dispatch(DType dtype, bool allow_tf32, const F& f) {
  switch (dtype) {
    case DType::float64: return f(KernelTypes<double, Math::fma>{});
    case DType::float32:
      return allow_tf32 ? f(KernelTypes<float, Math::tf32>{}) : f(KernelTypes<float, Math::fma>{});
    case DType::float16: return f(KernelTypes<__half, Math::tensor16>{});
    default: return f(KernelTypes<__nv_bfloat16, Math::tensor16>{});
  }
}

template <class X>
X* at_offset(void* base, size_t offset) {
  return reinterpret_cast<X*>(static_cast<unsigned char*>(base) + offset);
}

}  // namespace cuda
}  // namespace fastrnn
