// The threads and the step barrier the CPU kernels run on: one parallel region per layer-direction
// (OpenMP, torch's own thread pool where torch uses OpenMP; plain threads in a build without it).
#include <thread>
#include <vector>

#include "api.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace fastrnn {
namespace cpu {

// Centralised barrier: the last thread to arrive opens the next generation. Spins (the wait is usually
// well under a microsecond), then yields, so an oversubscribed machine still makes progress.
void barrier_wait(Barrier* barrier, int threads) {
  if (threads <= 1) return;
  const int generation = __atomic_load_n(&barrier->generation, __ATOMIC_ACQUIRE);
  if (__atomic_add_fetch(&barrier->arrived, 1, __ATOMIC_ACQ_REL) == threads) {
    __atomic_store_n(&barrier->arrived, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&barrier->generation, generation + 1, __ATOMIC_RELEASE);
    return;
  }
  for (unsigned spins = 0; __atomic_load_n(&barrier->generation, __ATOMIC_ACQUIRE) == generation; ++spins) {
    if (spins < 4000) {  // a few microseconds: longer only burns a core another thread may need
#if defined(__x86_64__)
      __builtin_ia32_pause();
#endif
    } else {
      std::this_thread::yield();
    }
  }
}

void run_parallel(int threads, void (*body)(void*, int, int), void* context) {
#if defined(_OPENMP)
  if (threads > 1 && !omp_in_parallel()) {
#pragma omp parallel num_threads(threads)
    body(context, omp_get_thread_num(), omp_get_num_threads());
    return;
  }
#else
  if (threads > 1) {
    std::vector<std::thread> team;
    for (int thread = 1; thread < threads; ++thread) team.emplace_back(body, context, thread, threads);
    body(context, 0, threads);
    for (std::thread& member : team) member.join();
    return;
  }
#endif
  body(context, 0, 1);
}

}  // namespace cpu
}  // namespace fastrnn
