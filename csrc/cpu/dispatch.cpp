// Picks the instruction-set variant of the CPU kernels this CPU can run: never an illegal instruction
// on an older CPU. By default ("auto") float and double run the widest variant; bfloat16 layer calls run
// the AVX512_BF16 one (its GEMMs multiply bfloat16 pairs) where a model fed by this core's measured
// rates expects it to win, else the same widest variant.
#include <unistd.h>

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
FASTRNN_DECLARE_VARIANT(avx512_bf16)  // defines the bfloat16 entry points only
namespace avx512_bf16 {
double pair_products_per_fma();
}
#endif

namespace {

enum class Isa { generic, avx2, avx512, avx512_bf16, automatic };

bool cpu_has(Isa isa) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  switch (isa) {
    case Isa::avx512_bf16:
      return __builtin_cpu_supports("avx512bf16") && cpu_has(Isa::avx512);
    case Isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && cpu_has(Isa::avx2);
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::generic:
    case Isa::automatic:
      return true;
  }
  return false;
#else
  return isa == Isa::generic || isa == Isa::automatic;
#endif
}

const char* name_of(Isa isa) {
  switch (isa) {
    case Isa::avx512_bf16: return "avx512_bf16";
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    case Isa::automatic: return "auto";
    default: return "generic";
  }
}

// The widest variant without the bfloat16 pair products: what "auto" runs unless they pay.
Isa widest_isa() {
  for (Isa isa : {Isa::avx512, Isa::avx2})
    if (cpu_has(isa)) return isa;
  return Isa::generic;
}

const Isa widest = widest_isa();
const bool has_pair_products = cpu_has(Isa::avx512_bf16);
std::atomic<Isa> current_isa{Isa::automatic};

int64_t read_l2_bytes() {
  const long bytes = sysconf(_SC_LEVEL2_CACHE_SIZE);
  return bytes > 0 ? bytes : int64_t(1) << 20;
}

// Whether a bfloat16 layer call with `weights` recurrent weight elements and this shape runs faster on
// the pair products. They read half the bytes of the fp32 panels, at `ratio` times the FMA's
// multiply-add rate (measured once): where the ratio is at least 1 they always win; where it is lower
// (0.5 on a Xeon here) they win only while the step is bound by moving the weights rather than by
// multiply-adds, that is for few rows: a few from L2, more once each thread's fp32 panels spill out of
// it. (Crossovers measured on that Xeon, B = 1-16, H = 128-1024: 2 rows in L2, 8 beyond.)
bool pair_products_pay(const Shape& shape, int64_t weights) {
  static const int64_t l2_bytes = read_l2_bytes();  // asked once, not on every call
  const double ratio = cpu::pair_products_per_fma();
  if (ratio >= 1.0) return true;
  const int64_t threads = shape.max_threads > 1 ? shape.max_threads : 1;
  const bool beyond_l2 = weights * int64_t(sizeof(float)) / threads > l2_bytes;
  return shape.batch <= (beyond_l2 ? 16 : 4) * ratio;
}

}  // namespace

// Measured once, so that the rule above and what explain() reports see the same ratio.
double pair_products_per_fma() {
#if defined(__x86_64__)
  static const double ratio = has_pair_products ? avx512_bf16::pair_products_per_fma() : 0.0;
  return ratio;
#else
  return 0.0;
#endif
}

namespace {

// Under "auto", whether a call runs the avx512_bf16 variant: bfloat16 layer calls where the model says so.
template <class Args>
bool prefers_pair_products(const Args&) {
  return false;  // float and double; the cells (whose packings are the widest variant's)
}
bool prefers_pair_products(const LstmForward<bfloat16>& a) {
  return pair_products_pay(a.shape, 4 * a.shape.hidden * a.shape.state);
}
bool prefers_pair_products(const LstmBackward<bfloat16>& a) {
  return pair_products_pay(a.shape, 4 * a.shape.hidden * a.shape.state);
}
bool prefers_pair_products(const GruForward<bfloat16>& a) {
  return pair_products_pay(a.shape, 3 * a.shape.hidden * a.shape.hidden);
}
bool prefers_pair_products(const GruBackward<bfloat16>& a) {
  return pair_products_pay(a.shape, 3 * a.shape.hidden * a.shape.hidden);
}
bool prefers_pair_products(const RnnForward<bfloat16>& a) {
  return pair_products_pay(a.shape, a.shape.hidden * a.shape.hidden);
}
bool prefers_pair_products(const RnnBackward<bfloat16>& a) {
  return pair_products_pay(a.shape, a.shape.hidden * a.shape.hidden);
}

// avx512_bf16: that variant's function where it has one (bfloat16), else avx512's.
template <class R, class... Args>
R dispatch(R (*generic)(Args...), R (*avx2)(Args...), R (*avx512)(Args...), R (*avx512_bf16)(Args...),
           Args... args) {
  Isa isa = current_isa.load(std::memory_order_relaxed);
  if (isa == Isa::automatic) {
    isa = widest;
    if constexpr (sizeof...(Args) == 1) {
      if (has_pair_products && prefers_pair_products(args...)) isa = Isa::avx512_bf16;
    }
  }
  switch (isa) {
    case Isa::avx512_bf16: return avx512_bf16(args...);
    case Isa::avx512: return avx512(args...);
    case Isa::avx2: return avx2(args...);
    default: return generic(args...);
  }
}

}  // namespace

#if defined(__x86_64__)
#define FASTRNN_DISPATCH(R, fn, Args, bf16)                                                        \
  R fn(const Args& args) {                                                                         \
    return dispatch<R, const Args&>(&generic::fn, &avx2::fn, &avx512::fn, &bf16::fn, args);      \
  }
#else
#define FASTRNN_DISPATCH(R, fn, Args, bf16) \
  R fn(const Args& args) { return generic::fn(args); }
#endif

// bf16: the namespace whose kernels the avx512_bf16 variant runs for storage T.
#define FASTRNN_DISPATCH_ALL(T, bf16)                          \
  FASTRNN_DISPATCH(void, lstm_forward, LstmForward<T>, bf16)   \
  FASTRNN_DISPATCH(void, lstm_backward, LstmBackward<T>, bf16) \
  FASTRNN_DISPATCH(void, gru_forward, GruForward<T>, bf16)     \
  FASTRNN_DISPATCH(void, gru_backward, GruBackward<T>, bf16)   \
  FASTRNN_DISPATCH(void, rnn_forward, RnnForward<T>, bf16)     \
  FASTRNN_DISPATCH(void, rnn_backward, RnnBackward<T>, bf16)   \
  FASTRNN_DISPATCH(bool, cell_pack, CellPack<T>, bf16)         \
  FASTRNN_DISPATCH(bool, cell_forward, CellForward<T>, bf16)   \
  FASTRNN_DISPATCH(void, cell_backward, CellBackward<T>, bf16)

FASTRNN_DISPATCH_ALL(float, avx512)
FASTRNN_DISPATCH_ALL(double, avx512)
FASTRNN_DISPATCH_ALL(bfloat16, avx512_bf16)
FASTRNN_DISPATCH(void, transpose, Transpose, avx512)
FASTRNN_DISPATCH(void, linear, Linear, avx512)

#if defined(__x86_64__)
int vector_bytes() {
  return dispatch<int>(&generic::vector_bytes, &avx2::vector_bytes, &avx512::vector_bytes, &avx512_bf16::vector_bytes);
}
#else
int vector_bytes() { return generic::vector_bytes(); }
#endif

const char* instruction_set() { return name_of(current_isa.load()); }

const char* supported_instruction_sets() {
  static const std::string names = [] {
    std::string joined;
    for (Isa isa : {Isa::avx512_bf16, Isa::avx512, Isa::avx2, Isa::generic})
      if (cpu_has(isa)) joined += (joined.empty() ? "" : ",") + std::string(name_of(isa));
    return joined;
  }();
  return names.c_str();
}

bool set_instruction_set(const char* name) {
  for (Isa isa : {Isa::automatic, Isa::avx512_bf16, Isa::avx512, Isa::avx2, Isa::generic}) {
    if (std::strcmp(name, name_of(isa)) == 0 && cpu_has(isa)) {
      current_isa.store(isa);
      return true;
    }
  }
  return false;
}

}  // namespace cpu
}  // namespace fastrnn
