// Portable part of the CPU kernels: picks the instruction-set variant this CPU can run (never an
// illegal instruction on an older CPU), and provides the threads and the barrier the variants use.
#include <atomic>
#include <cstring>
#include <string>
#include <thread>

#include "api.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace fastrnn {
namespace cpu {

#define FASTRNN_DECLARE_VARIANT(isa) \
  namespace isa {                    \
  FASTRNN_CPU_ALL_ENTRY_POINTS       \
  }

FASTRNN_DECLARE_VARIANT(generic)
#if defined(__x86_64__)
FASTRNN_DECLARE_VARIANT(avx2)
FASTRNN_DECLARE_VARIANT(avx512)
#endif

namespace {

enum class Isa { generic, avx2, avx512 };

bool cpu_has(Isa isa) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  switch (isa) {
    case Isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && cpu_has(Isa::avx2);
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::generic:
      return true;
  }
  return false;
#else
  return isa == Isa::generic;
#endif
}

const char* name_of(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "generic";
  }
}

Isa best_isa() {
  for (Isa isa : {Isa::avx512, Isa::avx2})
    if (cpu_has(isa)) return isa;
  return Isa::generic;
}

std::atomic<Isa> current_isa{best_isa()};

template <class Args>
void dispatch(const Args& args, void (*generic)(const Args&), void (*avx2)(const Args&), void (*avx512)(const Args&)) {
  switch (current_isa.load(std::memory_order_relaxed)) {
    case Isa::avx512: return avx512(args);
    case Isa::avx2: return avx2(args);
    default: return generic(args);
  }
}

}  // namespace

#if defined(__x86_64__)
#define FASTRNN_DISPATCH(fn, Args)                                                                   \
  void fn(const Args& args) {                                                                        \
    dispatch<Args>(args, &generic::fn, &avx2::fn, &avx512::fn);                                      \
  }
#else
#define FASTRNN_DISPATCH(fn, Args) \
  void fn(const Args& args) { generic::fn(args); }
#endif

#define FASTRNN_DISPATCH_ALL(T)               \
  FASTRNN_DISPATCH(lstm_forward, LstmForward<T>)   \
  FASTRNN_DISPATCH(lstm_backward, LstmBackward<T>) \
  FASTRNN_DISPATCH(gru_forward, GruForward<T>)     \
  FASTRNN_DISPATCH(gru_backward, GruBackward<T>)

FASTRNN_DISPATCH_ALL(float)
FASTRNN_DISPATCH_ALL(double)
FASTRNN_DISPATCH_ALL(bfloat16)

const char* instruction_set() { return name_of(current_isa.load()); }

const char* supported_instruction_sets() {
  static const std::string names = [] {
    std::string joined;
    for (Isa isa : {Isa::avx512, Isa::avx2, Isa::generic})
      if (cpu_has(isa)) joined += (joined.empty() ? "" : ",") + std::string(name_of(isa));
    return joined;
  }();
  return names.c_str();
}

bool set_instruction_set(const char* name) {
  for (Isa isa : {Isa::avx512, Isa::avx2, Isa::generic}) {
    if (std::strcmp(name, name_of(isa)) == 0 && cpu_has(isa)) {
      current_isa.store(isa);
      return true;
    }
  }
  return false;
}

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
#endif
  body(context, 0, 1);
}

}  // namespace cpu
}  // namespace fastrnn
