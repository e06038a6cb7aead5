// The per-step GEMM of the CPU kernels: a right-hand matrix packed once per call into column panels,
// and a register-blocked microkernel whose accumulators the caller reads while they are still in
// registers (the cell math is its epilogue; nothing of the product goes back to memory first).
//
// Packed layout: the output columns are cut into blocks of N (one vector), and `gates` blocks at the
// same position of `gates` equal-sized column ranges are stored interleaved, k-major:
//     packed[block][k][gate][lane] = B(k, gate * units + block * N + lane)     (0 past the edge)
// For the LSTM forward (gates = 4) one block holds the i, f, g, o columns of the same N hidden units, so
// one microkernel call produces all four gates of those units for MR batch rows. With gates = 1 this
// is plain column panels, used for the carries of the backward and for the projections. bfloat16
// panels for vdpbf16ps (the avx512_bf16 variant) hold k in pairs instead: packed[block][k / 2][gate][lane][k % 2].
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

#if defined(FASTRNN_BF16_DOT)
#include <immintrin.h>
#endif

#include "simd.h"

namespace fastrnn {
namespace cpu {
namespace {

FASTRNN_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// How many of the N lanes of the block starting at column `first` lie inside `columns` (N but at the edge).
template <int N>
FASTRNN_HD int block_width(int64_t columns, int64_t first) {
  return static_cast<int>(columns - first < N ? columns - first : N);
}

// The element type the step GEMMs read for storage S (their weight panels and left-hand rows): the
// compute type, except bfloat16 where the variant has AVX512_BF16 (FASTRNN_BF16_DOT): vdpbf16ps multiplies
// bfloat16 pairs into float32 sums, twice the multiply-adds of an fp32 FMA per instruction from half the
// bytes. (The GEMM's inputs are then rounded to bfloat16 as the storage already is; sums and the cell
// state stay float32.)
template <class S>
struct GemmOf {
  using type = typename ComputeOf<S>::type;
};
#if defined(FASTRNN_BF16_DOT)
template <>
struct GemmOf<bfloat16> {
  using type = bfloat16;
};
#endif

// Where block `block` of a packing of P elements starts, and the strides inside it. bfloat16 panels hold
// k in pairs, (k, k + 1) side by side in each lane, as vdpbf16ps reads them (an odd depth is padded
// with a zero k): one step of the GEMM's k loop is then a pair.
template <int N, class P>
struct PanelGeometry {
  static constexpr int kPair = std::is_same_v<P, bfloat16> ? 2 : 1;
  int64_t depth;
  int64_t gates;
  FASTRNN_HD int64_t padded_depth() const { return ceil_div(depth, kPair) * kPair; }
  FASTRNN_HD int64_t block_offset(int64_t block) const { return block * padded_depth() * gates * N; }
  FASTRNN_HD int64_t k_stride() const { return gates * N * kPair; }  // one k (or pair) to the next
  FASTRNN_HD int64_t gate_stride() const { return N * kPair; }       // one gate to the next in a block
  FASTRNN_HD int64_t k_offset(int64_t k) const { return k / kPair * k_stride(); }  // k: a multiple of kPair
  FASTRNN_HD int64_t size(int64_t blocks) const { return block_offset(blocks); }
};

// Interleaves the lanes of a and b, [a0, b0, a1, b1, ...]: from their first halves (OFFSET 0) or their
// second halves (OFFSET N / 2).
template <int OFFSET, class V, int... Is>
FASTRNN_HD V interleave(V a, V b, std::integer_sequence<int, Is...>) {
#if defined(__clang__)
  return V::of(__builtin_shufflevector(a.v, b.v, ((Is % 2) * V::lanes + OFFSET + Is / 2)...));
#else
  return V::of(__builtin_shuffle(a.v, b.v, typename V::mask{((Is % 2) * V::lanes + OFFSET + Is / 2)...}));
#endif
}

// Transposes N vectors of N lanes in registers (lane l of vector i becomes lane i of vector l): log2 N rounds,
// each pairing vector i with vector i + N/2 and interleaving them, a perfect shuffle of both indices.
template <class T, int N>
FASTRNN_HD void transpose(Vec<T, N> (&v)[N]) {
  static_assert((N & (N - 1)) == 0, "vector lanes are a power of two");
  constexpr auto lanes = std::make_integer_sequence<int, N>{};
#pragma GCC unroll 4
  for (int round = 1; round < N; round *= 2) {
    Vec<T, N> next[N];
#pragma GCC unroll 16
    for (int i = 0; i < N / 2; ++i) {
      next[2 * i] = interleave<0>(v[i], v[i + N / 2], lanes);
      next[2 * i + 1] = interleave<N / 2>(v[i], v[i + N / 2], lanes);
    }
#pragma GCC unroll 16
    for (int i = 0; i < N; ++i) v[i] = next[i];
  }
}

// pack_panels for bfloat16 panels (PanelGeometry's pair layout) of a bfloat16 source:
//     packed[block][k / 2][gate][lane][k % 2] = B(k, gate * units + block * N + lane)    (0 past either edge)
// Where B's columns are the source's rows (k_stride 1) each lane's pairs are one 32-bit word of its row,
// so N rows of N words are transposed in registers as floats (the bits move, nothing is converted);
// where they are its columns (c_stride 1) two rows' N values are interleaved as 32-bit words.
template <int N>
void pack_pair_panels(bfloat16* packed, const bfloat16* src, int64_t k_stride, int64_t c_stride, int64_t depth,
                      int64_t gates, int64_t units) {
  using Words = Vec<float, N>;  // N bfloat16 pairs, moved as float bit patterns
  // N pairs as a row holds them: 2-byte aligned only where the row length is odd.
  typedef float RowWords __attribute__((vector_size(4 * N), aligned(2), may_alias));
  using Narrow = typename Bfloat16Lanes<N>::narrow;
  using Wide = typename Bfloat16Lanes<N>::wide;
  const PanelGeometry<N, bfloat16> panels{depth, gates};
  const int64_t blocks = ceil_div(units, N), pairs = panels.padded_depth() / 2, whole_pairs = depth / 2;
  auto at = [&](int64_t k, int64_t column) {
    return k < depth ? src[k * k_stride + column * c_stride] : bfloat16{0};
  };
  for (int64_t block = 0; block < blocks; ++block) {
    const int live = block_width<N>(units, block * N);
    for (int64_t gate = 0; gate < gates; ++gate) {
      const int64_t column0 = gate * units + block * N;
      bfloat16* out = packed + panels.block_offset(block) + gate * panels.gate_stride();
      int64_t pair = 0;
      if (k_stride == 1 && live == N) {
        for (; pair + N <= whole_pairs; pair += N) {
          Words tile[N];
#pragma GCC unroll 16
          for (int lane = 0; lane < N; ++lane)
            tile[lane] = Words::of(*reinterpret_cast<const RowWords*>(src + (column0 + lane) * c_stride + 2 * pair));
          transpose(tile);
#pragma GCC unroll 16
          for (int p = 0; p < N; ++p) tile[p].store(reinterpret_cast<float*>(out + (pair + p) * panels.k_stride()));
        }
      } else if (c_stride == 1 && live == N) {
        for (; pair < whole_pairs; ++pair) {
          const bfloat16* even = src + 2 * pair * k_stride + column0;
          const Wide low = __builtin_convertvector(*reinterpret_cast<const Narrow*>(even), Wide);
          const Wide high = __builtin_convertvector(*reinterpret_cast<const Narrow*>(even + k_stride), Wide);
          Words::of((typename Words::native)(low | (high << 16)))
              .store(reinterpret_cast<float*>(out + pair * panels.k_stride()));
        }
      }
      for (; pair < pairs; ++pair)
        for (int lane = 0; lane < N; ++lane)
          for (int half = 0; half < 2; ++half)
            out[pair * panels.k_stride() + 2 * lane + half] =
                lane < live ? at(2 * pair + half, column0 + lane) : bfloat16{0};
    }
  }
}

// B(k, c) = src[k * k_stride + c * c_stride], c in [0, gates * units), converted from the storage type S
// to the compute type T. Packing runs on every call, so it is written for bandwidth: where B's columns are
// the source's rows (k_stride 1: the forward's W_hh^T) N rows are read along k and transposed in registers,
// N x N at a time; where they are its columns (c_stride 1) each panel row is one vector load.
template <class T, int N, class S>
void pack_compute_panels(T* packed, const S* src, int64_t k_stride, int64_t c_stride, int64_t depth, int64_t gates,
                         int64_t units) {
  using V = Vec<T, N>;
  const int64_t blocks = ceil_div(units, N), out_k = gates * N;
  for (int64_t block = 0; block < blocks; ++block) {
    const int live = block_width<N>(units, block * N);
    for (int64_t gate = 0; gate < gates; ++gate) {
      const S* first = src + (gate * units + block * N) * c_stride;  // B(0, first column of this panel)
      T* out = packed + (block * depth * gates + gate) * N;
      int64_t k = 0;
      if (k_stride == 1) {
        for (; k + N <= depth; k += N) {
          V tile[N];
#pragma GCC unroll 16
          for (int lane = 0; lane < N; ++lane)
            tile[lane] = lane < live ? load_n<V>(first + lane * c_stride + k, N) : V(T(0));
          transpose(tile);
#pragma GCC unroll 16
          for (int kk = 0; kk < N; ++kk) tile[kk].store(out + (k + kk) * out_k);
        }
      } else if (c_stride == 1) {
        for (; k < depth; ++k) load_n<V>(first + k * k_stride, live).store(out + k * out_k);
      }
      for (; k < depth; ++k)
        for (int lane = 0; lane < N; ++lane)
          out[k * out_k + lane] = lane < live ? T(to_compute(first[k * k_stride + lane * c_stride])) : T(0);
    }
  }
}

// Packs B into panels of P, the GEMM's element type (gemm.h, GemmOf): compute-type panels, or bfloat16 pairs.
template <class P, int N, class S>
void pack_panels(P* packed, const S* src, int64_t k_stride, int64_t c_stride, int64_t depth, int64_t gates,
                 int64_t units) {
  if constexpr (std::is_same_v<P, bfloat16>) pack_pair_panels<N>(packed, src, k_stride, c_stride, depth, gates, units);
  else pack_compute_panels<P, N>(packed, src, k_stride, c_stride, depth, gates, units);
}

// v, held in a register from here on. GCC otherwise folds a panel load into each row's FMA as a memory operand
// where a tile has 2 rows (and loads every panel vector twice): measured on an Ice Lake core, 1 thread, an LSTM
// step at B = 2 cost twice the B = 1 step (H = 64 to 256), and at H = 128 and 256 more than a B = 4 step.
template <class V>
V in_register(V v) {
#if defined(__x86_64__) || defined(__i386__)
  asm("" : "+v"(v.v));
#endif
  return v;
}

// acc[m][q] += sum_k a[m * lda + k] * panel[k * k_stride + q * q_stride .. + N]
// for MR rows of `a` and NP vectors of columns.
//
// Out of line on purpose: inlined into a kernel's step loop, the MR row pointers competed with the
// loop's own live values for general-purpose registers and GCC spilled them inside the k loop. The
// accumulators are copied into locals (whose address is never taken, so they live in registers: the
// caller's array could alias `a` as far as the compiler knows) and back once per call.
template <int MR, int NP, class T, int N>
__attribute__((noinline)) void accumulate(Vec<T, N> (&acc)[MR][NP], const T* a, int64_t lda, int64_t depth,
                                          const T* panel, int64_t k_stride, int64_t q_stride) {
  using V = Vec<T, N>;
  V sum[MR][NP];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int q = 0; q < NP; ++q) sum[m][q] = acc[m][q];
  for (int64_t k = 0; k < depth; ++k) {
    V b[NP];
#pragma GCC unroll 8
    for (int q = 0; q < NP; ++q) b[q] = in_register(V::load(panel + k * k_stride + q * q_stride));
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const V am(a[m * lda + k]);
#pragma GCC unroll 8
      for (int q = 0; q < NP; ++q) sum[m][q] += am * b[q];
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int q = 0; q < NP; ++q) acc[m][q] = sum[m][q];
}

#if defined(FASTRNN_BF16_DOT)
// accumulate for bfloat16 rows of `a` and a bfloat16 pair panel (k_stride: one pair to the next):
// vdpbf16ps adds a[k] B(k) + a[k + 1] B(k + 1) into each float32 lane; an odd depth's last k is paired
// with a zero (the panel holds a zero there too).
template <int MR, int NP, int N>
__attribute__((noinline)) void accumulate(Vec<float, N> (&acc)[MR][NP], const bfloat16* a, int64_t lda,
                                          int64_t depth, const bfloat16* panel, int64_t k_stride, int64_t q_stride) {
  static_assert(N == 16, "vdpbf16ps on 512-bit vectors");
  typedef uint32_t pair_bits __attribute__((aligned(2), may_alias));
  __m512 sum[MR][NP];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int q = 0; q < NP; ++q) sum[m][q] = acc[m][q].v;
  const int64_t pairs = depth / 2;
  auto step = [&](int64_t pair, auto a_pair) {
    __m512bh b[NP];
#pragma GCC unroll 8
    for (int q = 0; q < NP; ++q) b[q] = (__m512bh)_mm512_loadu_si512(panel + pair * k_stride + q * q_stride);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const __m512bh am = (__m512bh)_mm512_set1_epi32(static_cast<int>(a_pair(m)));
#pragma GCC unroll 8
      for (int q = 0; q < NP; ++q) sum[m][q] = _mm512_dpbf16_ps(sum[m][q], am, b[q]);
    }
  };
  for (int64_t pair = 0; pair < pairs; ++pair)
    step(pair, [&](int m) { return *reinterpret_cast<const pair_bits*>(a + m * lda + 2 * pair); });
  if (depth % 2) step(pairs, [&](int m) { return static_cast<uint32_t>(a[m * lda + depth - 1].bits); });
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int q = 0; q < NP; ++q) acc[m][q].v = sum[m][q];
}
#endif

template <int MR, int NP, class T, int N>
FASTRNN_HD void zero(Vec<T, N> (&acc)[MR][NP]) {
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int q = 0; q < NP; ++q) acc[m][q] = Vec<T, N>(T(0));
}

template <int V>
struct Const {
  static constexpr int value = V;
};

// Batch rows per microkernel call for NP vectors of columns, within `registers` vector registers
// (NP for the right-hand side, one broadcast, the rest accumulators), at most 8.
constexpr int rows_per_tile(int registers, int np) {
  return (registers - np - 2) / np < 1 ? 1 : ((registers - np - 2) / np > 8 ? 8 : (registers - np - 2) / np);
}

// Calls f(Const<MR>, first_row) over rows [0, rows): tiles of MRMAX rows, then the remainder in tiles of
// 4, 2 and 1 rows (fewer instantiations of every tile function than one per remainder size, which is
// most of the build time, for at most two extra calls per step).
template <int MRMAX, class F>
FASTRNN_HD void for_row_tiles(int64_t rows, F&& f) {
  int64_t row = 0;
  // A remainder of 2 after tiles of 6 (LSTM gates: 6 rows of 4 vectors): the last 8 rows as 4 + 4, whose 16
  // accumulators each hide the FMA latency that a 2-row tile's 8 barely cover.
  const int64_t full = MRMAX == 6 && rows >= 8 && rows % 6 == 2 ? rows - 8 : rows;
  for (; row + MRMAX <= full; row += MRMAX) f(Const<MRMAX>{}, row);
  if constexpr (MRMAX > 4) {
    if (full != rows) { f(Const<4>{}, row); row += 4; }  // the first of those two (the second follows)
    if (row + 4 <= rows) { f(Const<4>{}, row); row += 4; }
  }
  if constexpr (MRMAX > 2) {
    if (row + 2 <= rows) { f(Const<2>{}, row); row += 2; }
  }
  if constexpr (MRMAX > 1) {
    if (row < rows) f(Const<1>{}, row);
  }
}

// Calls f(Const<NP>, first_block) over column blocks [first, last) in groups of up to 4: the groups of 4
// from `first`, then the rest; `backwards`: the same groups in the opposite order (see common.h, serpentine).
template <class F>
FASTRNN_HD void for_block_groups(int64_t first, int64_t last, F&& f, bool backwards = false) {
  const int64_t rest = first + (last - first) / 4 * 4;
  auto remainder = [&] {
    switch (last - rest) {
      case 3: f(Const<3>{}, rest); break;
      case 2: f(Const<2>{}, rest); break;
      case 1: f(Const<1>{}, rest); break;
      default: break;
    }
  };
  if (backwards) {
    remainder();
    for (int64_t block = rest - 4; block >= first; block -= 4) f(Const<4>{}, block);
  } else {
    for (int64_t block = first; block < rest; block += 4) f(Const<4>{}, block);
    remainder();
  }
}

// out[r * columns + c] = sum_k a[r * depth + k] B(k, c) for rows [0, rows) and the column blocks [first, last)
// of a plain panel packing of B (gates 1, `columns` columns, depth `depth`): the backward's carry of a step's
// gate gradients into the previous step's hidden gradient, each thread over its own state columns.
template <int REGISTERS, int N, class T, class P>
void store_product(T* out, int64_t columns, int64_t rows, int64_t first, int64_t last, const P* a, int64_t depth,
                   const P* packed, bool backwards = false) {
  const PanelGeometry<N, P> panels{depth, 1};
  for_block_groups(first, last, [&](auto group, int64_t block) {
    constexpr int NP = decltype(group)::value;
    for_row_tiles<rows_per_tile(REGISTERS, NP)>(rows, [&](auto tile, int64_t r0) {
      constexpr int MR = decltype(tile)::value;
      Vec<T, N> acc[MR][NP];
      zero(acc);
      accumulate(acc, a + r0 * depth, depth, depth, packed + panels.block_offset(block), panels.k_stride(),
                 panels.block_offset(1));
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
        for (int q = 0; q < NP; ++q) {
          const int64_t col = (block + q) * N;
          store_n(acc[m][q], out + (r0 + m) * columns + col, block_width<N>(columns, col));
        }
    });
  }, backwards);
}

}  // namespace
}  // namespace cpu
}  // namespace fastrnn
