// Picks the instruction-set variant of the CPU kernels this CPU can run: never an illegal instruction
// on an older CPU.
#include <atomic>
#include <cstring>
#include <string>

#include "api.h"

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

template <class R, class... Args>
R dispatch(R (*generic)(Args...), R (*avx2)(Args...), R (*avx512)(Args...), Args... args) {
  switch (current_isa.load(std::memory_order_relaxed)) {
    case Isa::avx512: return avx512(args...);
    case Isa::avx2: return avx2(args...);
    default: return generic(args...);
  }
}

}  // namespace

#if defined(__x86_64__)
#define FASTRNN_DISPATCH(R, fn, Args)                                               \
  R fn(const Args& args) {                                                          \
    return dispatch<R, const Args&>(&generic::fn, &avx2::fn, &avx512::fn, args);  \
  }
#else
#define FASTRNN_DISPATCH(R, fn, Args) \
  R fn(const Args& args) { return generic::fn(args); }
#endif

#define FASTRNN_DISPATCH_ALL(T)                          \
  FASTRNN_DISPATCH(void, lstm_forward, LstmForward<T>)   \
  FASTRNN_DISPATCH(void, lstm_backward, LstmBackward<T>) \
  FASTRNN_DISPATCH(void, gru_forward, GruForward<T>)     \
  FASTRNN_DISPATCH(void, gru_backward, GruBackward<T>)   \
  FASTRNN_DISPATCH(void, rnn_forward, RnnForward<T>)     \
  FASTRNN_DISPATCH(void, rnn_backward, RnnBackward<T>)   \
  FASTRNN_DISPATCH(bool, cell_pack, CellPack<T>)         \
  FASTRNN_DISPATCH(bool, cell_forward, CellForward<T>)   \
  FASTRNN_DISPATCH(void, cell_backward, CellBackward<T>)

FASTRNN_DISPATCH_ALL(float)
FASTRNN_DISPATCH_ALL(double)
FASTRNN_DISPATCH_ALL(bfloat16)

#if defined(__x86_64__)
int vector_bytes() { return dispatch<int>(&generic::vector_bytes, &avx2::vector_bytes, &avx512::vector_bytes); }
#else
int vector_bytes() { return generic::vector_bytes(); }
#endif

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

}  // namespace cpu
}  // namespace fastrnn
