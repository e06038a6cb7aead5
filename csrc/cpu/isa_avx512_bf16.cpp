// The bfloat16 CPU kernels for AVX-512 with AVX512_BF16: the step GEMMs multiply bfloat16 pairs with
// vdpbf16ps (gemm.h, GemmOf) instead of widening them to float32 first. Only the bfloat16 entry points
// are built here; for float32 and float64 this variant runs isa_avx512.cpp's (dispatch.cpp).
#if defined(__x86_64__)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma"))), \
                             apply_to = function)
#else
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma")
#endif
#define FASTRNN_ISA avx512_bf16
#define FASTRNN_VECTOR_BYTES 64
#define FASTRNN_REGISTERS 32
#define FASTRNN_BF16_DOT 1
#define FASTRNN_ONLY_BFLOAT16 1
#include "instantiate.h"

#include <time.h>

namespace fastrnn {
namespace cpu {
namespace avx512_bf16 {
namespace {

double thread_seconds() {
  timespec now;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return now.tv_sec + 1e-9 * now.tv_nsec;
}

// Seconds for `rounds` of 12 independent multiply-add chains, each step one vfmadd231ps (16 multiply-adds)
// or, with PAIRS, one vdpbf16ps (32): enough chains to cover either's latency, so this is issue rate.
template <bool PAIRS>
double chain_seconds(int rounds, float* sink) {
  constexpr int kChains = 12;
  __m512 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(0.0f);
  const __m512 a = _mm512_set1_ps(1.0f), b = _mm512_set1_ps(1e-7f);
  const __m512bh pa = (__m512bh)_mm512_set1_epi32(0x3f803f80), pb = (__m512bh)_mm512_set1_epi32(0x33d633d6);
  const double start = thread_seconds();
  for (int round = 0; round < rounds; ++round) {
#pragma GCC unroll 12
    for (int i = 0; i < kChains; ++i) {
      if constexpr (PAIRS) acc[i] = _mm512_dpbf16_ps(acc[i], pa, pb);
      else acc[i] = _mm512_fmadd_ps(a, b, acc[i]);
    }
  }
  const double seconds = thread_seconds() - start;
  for (int i = 0; i < kChains; ++i) *sink += acc[i][0];
  return seconds;
}

}  // namespace

// Multiply-adds per second of vdpbf16ps over those of fp32 FMAs on this core, measured (about a
// millisecond, best of three interleaved rounds): 0.5 on a Xeon whose vdpbf16ps issues every other cycle,
// 2 where it issues at the FMA rate.
double pair_products_per_fma() {
  float sink = 0.0f;
  double fma = 1e30, pairs = 1e30;
  for (int round = 0; round < 3; ++round) {
    const double f = chain_seconds<false>(20000, &sink), p = chain_seconds<true>(20000, &sink);
    fma = f < fma ? f : fma;
    pairs = p < pairs ? p : pairs;
  }
  __asm__ volatile("" : : "r"(&sink) : "memory");  // the sums are used
  return (32.0 / pairs) / (16.0 / fma);
}

}  // namespace avx512_bf16
}  // namespace cpu
}  // namespace fastrnn

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
