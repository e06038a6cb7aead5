// A SIMD vector of N floats or doubles, written once with GCC/Clang vector extensions: the same source
// becomes AVX-512, AVX2 or SSE/NEON code depending on the instruction set its translation unit is
// compiled for (see isa_*.cpp). It supplies what csrc/cell.h asks of a value type, plus loads and stores.
//
// exp is vectorised here (Cephes-style range reduction and polynomials): float to a few ulp, double to
// ~1e-15 relative, which the fp64 conformance bound (1e-10) needs with room to spare; tanh is built on it.
// Internal linkage throughout, as in cell.h: each ISA's translation unit gets its own copy.
#pragma once

#include <cstdint>
#include <type_traits>

#include "../cell.h"
#include "api.h"

namespace fastrnn {
namespace cpu {
namespace {

template <class T>
struct IntOf;
template <>
struct IntOf<float> {
  using type = int32_t;
};
template <>
struct IntOf<double> {
  using type = int64_t;
};

template <class T, int N>
struct Vec {
  using I = typename IntOf<T>::type;
  using scalar = T;
  typedef T native __attribute__((vector_size(sizeof(T) * N)));
  typedef I mask __attribute__((vector_size(sizeof(T) * N)));
  // Unaligned, aliasing access to T arrays.
  typedef T unaligned __attribute__((vector_size(sizeof(T) * N), aligned(alignof(T)), may_alias));
  static constexpr int lanes = N;

  native v;

  Vec() = default;
  FASTRNN_HD Vec(T scalar) {  // a broadcast (native{} + scalar would add a real 0.0: -0.0 must stay -0.0)
    for (int l = 0; l < N; ++l) v[l] = scalar;
  }
  FASTRNN_HD static Vec of(native n) {
    Vec r;
    r.v = n;
    return r;
  }

  FASTRNN_HD static Vec load(const T* p) { return of(*reinterpret_cast<const unaligned*>(p)); }
  FASTRNN_HD void store(T* p) const { *reinterpret_cast<unaligned*>(p) = v; }
  // The first `count` lanes from p, the rest zero (count < N: a tile's ragged edge).
  FASTRNN_HD static Vec load_first(const T* p, int count) {
    Vec r(T(0));
    for (int l = 0; l < count; ++l) r.v[l] = p[l];
    return r;
  }
  FASTRNN_HD void store_first(T* p, int count) const {
    for (int l = 0; l < count; ++l) p[l] = v[l];
  }
  FASTRNN_HD static Vec load_n(const T* p, int count) { return count == N ? load(p) : load_first(p, count); }
  FASTRNN_HD void store_n(T* p, int count) const {
    if (count == N)
      store(p);
    else
      store_first(p, count);
  }

  friend FASTRNN_HD Vec operator+(Vec a, Vec b) { return of(a.v + b.v); }
  friend FASTRNN_HD Vec operator-(Vec a, Vec b) { return of(a.v - b.v); }
  friend FASTRNN_HD Vec operator*(Vec a, Vec b) { return of(a.v * b.v); }
  friend FASTRNN_HD Vec operator/(Vec a, Vec b) { return of(a.v / b.v); }
  friend FASTRNN_HD Vec operator-(Vec a) { return of(-a.v); }
  FASTRNN_HD Vec& operator+=(Vec b) {
    v += b.v;
    return *this;
  }
};

template <class T, int N>
FASTRNN_HD Vec<T, N> clamp(Vec<T, N> x, T lo, T hi) {
  return Vec<T, N>::of(x.v < lo ? Vec<T, N>(lo).v : (x.v > hi ? Vec<T, N>(hi).v : x.v));
}

template <class T, int N>
FASTRNN_HD Vec<T, N> bit_cast_to_float(typename Vec<T, N>::mask bits) {
  return Vec<T, N>::of((typename Vec<T, N>::native)bits);  // a vector cast reinterprets the bits
}

template <class T, int N>
FASTRNN_HD typename Vec<T, N>::mask bit_cast_to_int(Vec<T, N> x) {
  return (typename Vec<T, N>::mask)x.v;
}

// --- exp ------------------------------------------------------------------------------------------
// exp(x) = 2^n exp(r), n = round(x / ln 2), |r| <= ln2 / 2. n is found with the "add 1.5 * 2^mantissa"
// trick, which also leaves n in the low bits of the sum (no float-to-int conversion instruction needed,
// AVX2 has none for doubles), and 2^n is built directly in the exponent field.

template <int N>
FASTRNN_HD Vec<float, N> fastrnn_exp(Vec<float, N> x) {
  using V = Vec<float, N>;
  x = clamp(x, -87.0f, 88.0f);  // keeps 2^n a normal float
  const V magic(12582912.0f);   // 1.5 * 2^23
  const V shifted = x * V(1.44269504088896341f) + magic;
  const V n = shifted - magic;
  const V r = x - n * V(0.693359375f) - n * V(-2.12194440e-4f);
  V p(1.9875691500e-4f);
  p = p * r + V(1.3981999507e-3f);
  p = p * r + V(8.3334519073e-3f);
  p = p * r + V(4.1665795894e-2f);
  p = p * r + V(1.6666665459e-1f);
  p = p * r + V(5.0000001201e-1f);
  p = p * r * r + r + V(1.0f);
  const auto exponent = (bit_cast_to_int(shifted) - bit_cast_to_int(magic) + 127) << 23;
  return p * bit_cast_to_float<float, N>(exponent);
}

template <int N>
FASTRNN_HD Vec<double, N> fastrnn_exp(Vec<double, N> x) {
  using V = Vec<double, N>;
  x = clamp(x, -708.0, 709.0);
  const V magic(6755399441055744.0);  // 1.5 * 2^52
  const V shifted = x * V(1.4426950408889634073599) + magic;
  const V n = shifted - magic;
  const V r = x - n * V(6.93145751953125E-1) - n * V(1.42860682030941723212E-6);
  // Cephes exp: e^r = 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2))
  const V rr = r * r;
  const V p = r * ((V(1.26177193074810590878E-4) * rr + V(3.02994407707441961300E-2)) * rr + V(9.99999999999999999910E-1));
  const V q = ((V(3.00198505138664455042E-6) * rr + V(2.52448340349684104192E-3)) * rr + V(2.27265548208155028766E-1)) * rr +
              V(2.00000000000000000009E0);
  const V e = V(1.0) + V(2.0) * p / (q - p);
  const auto exponent = (bit_cast_to_int(shifted) - bit_cast_to_int(magic) + 1023) << 52;
  return e * bit_cast_to_float<double, N>(exponent);
}

// --- tanh ---------------------------------------------------------------------------------------
// tanh(x) = 1 - 2 / (e^2x + 1): one exp and one division, the same cost as a sigmoid (the cell takes
// five of them per unit, so they are a visible part of a step). Near zero the absolute error stays at
// the ulp of 1 (about 1e-7 in float, 1e-16 in double), which is what the kernels are held to: errors
// measured over whole tensors against float64.

template <class T, int N>
FASTRNN_HD Vec<T, N> fastrnn_tanh(Vec<T, N> x) {
  using V = Vec<T, N>;
  return V(T(1)) - V(T(2)) / (fastrnn_exp(x + x) + V(T(1)));
}

// --- relu ---------------------------------------------------------------------------------------
// Selects, not max: a NaN input stays NaN, as torch's relu keeps it.

template <class T, int N>
FASTRNN_HD Vec<T, N> fastrnn_relu(Vec<T, N> x) {
  return Vec<T, N>::of(x.v < T(0) ? Vec<T, N>(T(0)).v : x.v);
}

// 1 where x > 0, else 0: relu's derivative read off its output.
template <class T, int N>
FASTRNN_HD Vec<T, N> fastrnn_positive(Vec<T, N> x) {
  return Vec<T, N>::of(x.v > T(0) ? Vec<T, N>(T(1)).v : Vec<T, N>(T(0)).v);
}

// --- storage ------------------------------------------------------------------------------------
// Loads and stores between a vector of the compute type and `count` (<= N) elements of a storage type:
// the same type, or bfloat16 (widened by a shift; rounded to nearest even on the way back).

FASTRNN_HD float to_compute(bfloat16 value) {
  uint32_t bits = static_cast<uint32_t>(value.bits) << 16;
  float result;
  __builtin_memcpy(&result, &bits, sizeof(result));
  return result;
}
template <class T>
FASTRNN_HD T to_compute(T value) {
  return value;
}

FASTRNN_HD bfloat16 to_storage(float value, bfloat16*) {
  uint32_t bits;
  __builtin_memcpy(&bits, &value, sizeof(bits));
  if (value != value) return {static_cast<uint16_t>((bits >> 16) | 0x40)};  // NaN stays a (quiet) NaN
  return {static_cast<uint16_t>((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16)};
}
template <class T>
FASTRNN_HD T to_storage(T value, T*) {
  return value;
}

// N bfloat16 as stored (unaligned, aliasing), and the same widened to 32-bit integers.
template <int N>
struct Bfloat16Lanes {
  typedef uint16_t narrow __attribute__((vector_size(2 * N), aligned(2), may_alias));
  typedef uint32_t wide __attribute__((vector_size(4 * N)));
};

template <class V, class S>
FASTRNN_HD V load_n(const S* p, int count) {
  if constexpr (std::is_same_v<S, bfloat16>) {
    using narrow = typename Bfloat16Lanes<V::lanes>::narrow;
    using wide = typename Bfloat16Lanes<V::lanes>::wide;
    if (count == V::lanes) {
      const wide bits = __builtin_convertvector(*reinterpret_cast<const narrow*>(p), wide) << 16;
      return V::of((typename V::native)bits);
    }
    V r(0.0f);
    for (int l = 0; l < count; ++l) r.v[l] = to_compute(p[l]);
    return r;
  } else {
    return V::load_n(p, count);
  }
}

template <class V, class S>
FASTRNN_HD void store_n(V value, S* p, int count) {
  if constexpr (std::is_same_v<S, bfloat16>) {
    if (count == V::lanes) {
      using narrow = typename Bfloat16Lanes<V::lanes>::narrow;
      using wide = typename Bfloat16Lanes<V::lanes>::wide;
      const wide bits = (wide)value.v;
      const wide rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16;
      const wide quiet_nan = (bits >> 16) | 0x40;
      *reinterpret_cast<narrow*>(p) = __builtin_convertvector(value.v != value.v ? quiet_nan : rounded, narrow);
      return;
    }
    for (int l = 0; l < count; ++l) p[l] = to_storage(value.v[l], p);
  } else {
    value.store_n(p, count);
  }
}

// dst[i] = src[i] across storage types.
template <class D, class S>
void convert(D* dst, const S* src, int64_t count) {
  for (int64_t i = 0; i < count; ++i) dst[i] = to_storage(to_compute(src[i]), dst);
}

}  // namespace
}  // namespace cpu
}  // namespace fastrnn
