// Device code every kernel family shares: storage types and their conversions, the block GEMM on
// tensor cores or FMA, and the phase runner that stages A (and streamed W) through shared memory row
// tile by row tile and hands the accumulators to a kernel's pointwise epilogue (see plan.h).
#pragma once

#include <type_traits>

#include "plan.h"
#include "platform.cuh"

namespace fastrnn {
namespace cuda {

// --- storage types ------------------------------------------------------------------------------------

template <class T>
struct Accumulator {
  using type = float;  // float32 accumulation and carried states for float32, float16 and bfloat16 data
};
template <>
struct Accumulator<double> {
  using type = double;
};
template <class T>
using Acc = typename Accumulator<T>::type;

FASTRNN_HD double to_acc(double x) { return x; }
FASTRNN_HD float to_acc(float x) { return x; }
FASTRNN_HD float to_acc(__half x) { return __half2float(x); }
FASTRNN_HD float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T>
struct Store;
template <>
struct Store<double> {
  static FASTRNN_HD double from(double x) { return x; }
};
template <>
struct Store<float> {
  static FASTRNN_HD float from(float x) { return x; }
};
template <>
struct Store<__half> {
  static FASTRNN_HD __half from(float x) { return __float2half_rn(x); }
};
template <>
struct Store<__nv_bfloat16> {
  static FASTRNN_HD __nv_bfloat16 from(float x) { return __float2bfloat16_rn(x); }
};

// x rounded to the storage type T (round to nearest even).
template <class T>
FASTRNN_HD T store(Acc<T> x) {
  return Store<T>::from(x);
}

template <class T>
FASTRNN_HD T zero() {
  return Store<T>::from(Acc<T>(0));
}

FASTRNN_HD int min_int(int a, int b) { return a < b ? a : b; }

// Row b takes part in step t (lengths null: every row runs every step).
FASTRNN_HD bool row_runs(const int32_t* lengths, int b, int t) { return lengths == nullptr || t < lengths[b]; }

// Whether any row of [row, row + rows) runs step t. Every thread computes it alike, so a block can
// branch on it around its barriers.
__device__ inline bool any_row_runs(const int32_t* lengths, int row, int rows, int t) {
  if (lengths == nullptr) return true;
  for (int i = 0; i < rows; ++i)
    if (t < lengths[row + i]) return true;
  return false;
}

// The step processed at position s of a forward pass, and of a backward pass (its reverse).
FASTRNN_HD int forward_step(const Geometry& g, int s) { return g.reverse ? g.steps - 1 - s : s; }
FASTRNN_HD int backward_step(const Geometry& g, int s) { return g.reverse ? s : g.steps - 1 - s; }

// --- the block GEMM -----------------------------------------------------------------------------------

// acc[split] (+)= A W^T for a row tile: A is rows x kc (ld_a), W is n_padded x kc (ld_w), both in shared
// memory; acc is rows x n_padded (ld_acc) per partial sum, split_stride elements apart. The reduction is
// cut into `splits` ranges, each summed by its own warp (tensor cores) or thread (FMA) into its own
// partial sum, so that a tile count below the warp count still keeps every warp busy.
template <class T, Math M>
struct BlockGemm;

template <class T>
struct BlockGemm<T, Math::tensor16> {
  __device__ static void run(Acc<T>* acc, int ld_acc, size_t split_stride, const T* a, int ld_a, const T* w, int ld_w,
                             int rows, int n_padded, int kc, int splits, bool accumulate) {
    namespace wmma = nvcuda::wmma;
    const int warp = static_cast<int>(threadIdx.x) / 32, warps = static_cast<int>(blockDim.x) / 32;
    const int tiles_n = n_padded / kTile, tiles = (rows / kTile) * tiles_n;
    const int per_split = (kc / kTile + splits - 1) / splits * kTile;
    for (int item = warp; item < tiles * splits; item += warps) {
      const int tile = item % tiles, split = item / tiles;
      const int m0 = tile / tiles_n * kTile, n0 = tile % tiles_n * kTile;
      float* out = acc + split * split_stride + m0 * ld_acc + n0;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
      if (accumulate) {
        wmma::load_matrix_sync(c, out, ld_acc, wmma::mem_row_major);
      } else {
        wmma::fill_fragment(c, 0.0f);
      }
      const int k_end = min_int(kc, (split + 1) * per_split);
      for (int k = split * per_split; k < k_end; k += kTile) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
        wmma::load_matrix_sync(fa, a + m0 * ld_a + k, ld_a);
        wmma::load_matrix_sync(fb, w + n0 * ld_w + k, ld_w);  // W's rows are B's columns
        wmma::mma_sync(c, fa, fb, c);
      }
      wmma::store_matrix_sync(out, c, ld_acc, wmma::mem_row_major);
    }
  }
};

template <>
struct BlockGemm<float, Math::tf32> {
  __device__ static void run(float* acc, int ld_acc, size_t split_stride, const float* a, int ld_a, const float* w,
                             int ld_w, int rows, int n_padded, int kc, int splits, bool accumulate) {
    namespace wmma = nvcuda::wmma;
    constexpr int kStep = 8;
    const int warp = static_cast<int>(threadIdx.x) / 32, warps = static_cast<int>(blockDim.x) / 32;
    const int tiles_n = n_padded / kTile, tiles = (rows / kTile) * tiles_n;
    const int per_split = (kc / kStep + splits - 1) / splits * kStep;
    for (int item = warp; item < tiles * splits; item += warps) {
      const int tile = item % tiles, split = item / tiles;
      const int m0 = tile / tiles_n * kTile, n0 = tile % tiles_n * kTile;
      float* out = acc + split * split_stride + m0 * ld_acc + n0;
      wmma::fragment<wmma::accumulator, 16, 16, 8, float> c;
      if (accumulate) {
        wmma::load_matrix_sync(c, out, ld_acc, wmma::mem_row_major);
      } else {
        wmma::fill_fragment(c, 0.0f);
      }
      const int k_end = min_int(kc, (split + 1) * per_split);
      for (int k = split * per_split; k < k_end; k += kStep) {
        wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> fb;
        wmma::load_matrix_sync(fa, a + m0 * ld_a + k, ld_a);
        wmma::load_matrix_sync(fb, w + n0 * ld_w + k, ld_w);
        // The tensor cores read TF32: round every element (uniformly, whatever the fragment layout).
        for (int e = 0; e < fa.num_elements; ++e) fa.x[e] = wmma::__float_to_tf32(fa.x[e]);
        for (int e = 0; e < fb.num_elements; ++e) fb.x[e] = wmma::__float_to_tf32(fb.x[e]);
        wmma::mma_sync(c, fa, fb, c);
      }
      wmma::store_matrix_sync(out, c, ld_acc, wmma::mem_row_major);
    }
  }
};

template <class T>
struct BlockGemm<T, Math::fma> {
  __device__ static void run(Acc<T>* acc, int ld_acc, size_t split_stride, const T* a, int ld_a, const T* w, int ld_w,
                             int rows, int n_padded, int kc, int splits, bool accumulate) {
    const int outputs = rows * n_padded;
    const int per_split = (kc + splits - 1) / splits;
    for (int item = static_cast<int>(threadIdx.x); item < outputs * splits; item += static_cast<int>(blockDim.x)) {
      const int output = item % outputs, split = item / outputs;
      const int i = output / n_padded, n = output % n_padded;
      Acc<T>* out = acc + split * split_stride + i * ld_acc + n;
      Acc<T> sum = accumulate ? *out : Acc<T>(0);
      const T* a_row = a + i * ld_a;
      const T* w_row = w + n * ld_w;
      const int k_end = min_int(kc, (split + 1) * per_split);
      for (int k = split * per_split; k < k_end; ++k) sum += to_acc(a_row[k]) * to_acc(w_row[k]);
      *out = sum;
    }
  }
};

// The accumulator (i, n) of a row tile: the sum of its partial sums.
template <class A>
struct TileResult {
  const A* acc;
  int ld;
  size_t split_stride;
  int splits;

  __device__ A operator()(int i, int n) const {
    A sum = acc[i * ld + n];
    for (int s = 1; s < splits; ++s) sum += acc[s * split_stride + i * ld + n];
    return sum;
  }
};

// --- the A operand ------------------------------------------------------------------------------------

// A phase's A operand: row b, reduction column k. Columns [0, split) come from the row-major matrix
// `first` (leading dimension ld_first), columns [split, k) from `second` (unused when split is all of k):
// h_{t-1} alone in the layers' forwards, [x | h] in the cell step, (dr, dz | dhn) in the GRU backward.
template <class T>
struct RowSource {
  const T* first;
  int64_t ld_first;
  int split;
  const T* second;
  int64_t ld_second;

  __device__ const T* at(int b, int k) const {
    return k < split ? first + b * ld_first + k : second + b * ld_second + (k - split);
  }

  // The widest copy (16, 8 or 4 bytes; 0: none) that keeps every vector of a row aligned and inside one
  // of the two matrices and the reduction's k columns (the tile's rows are 16-byte aligned: plan.h).
  __device__ int copy_bytes(int k) const;
};

// The rows of one row-major matrix (leading dimension ld) as a phase's A over its first k columns.
template <class T>
__device__ RowSource<T> rows_of(const T* matrix, int64_t ld, int k) {
  return {matrix, ld, k, nullptr, 0};
}

// The widest copy (16, 8 or 4 bytes; 0: none) a staging of T elements may use: allows(bytes, e) says whether
// copies of `bytes` bytes (e elements) keep every vector aligned and whole.
template <class T, class Allows>
__device__ int widest_copy(Allows allows) {
  for (int bytes = 16; bytes >= 4 && bytes >= static_cast<int>(sizeof(T)); bytes /= 2)
    if (allows(bytes, bytes / static_cast<int>(sizeof(T)))) return bytes;
  return 0;
}

// Calls copy(std::integral_constant<int, Bytes>{}) for a width widest_copy chose, false for 0 (none).
template <class T, class Copy>
__device__ bool with_copy_width(int bytes, Copy copy) {
  switch (bytes) {
    case 16:
      copy(std::integral_constant<int, 16>{});
      return true;
    case 8:
      if constexpr (sizeof(T) <= 8) copy(std::integral_constant<int, 8>{});
      return true;
    case 4:
      if constexpr (sizeof(T) <= 4) copy(std::integral_constant<int, 4>{});
      return true;
    default:
      return false;
  }
}

template <class T>
__device__ int RowSource<T>::copy_bytes(int k) const {
  return widest_copy<T>([&](int bytes, int e) {
    const bool second_ok = split >= k || (ld_second % e == 0 && reinterpret_cast<uintptr_t>(second) % bytes == 0);
    return split % e == 0 && k % e == 0 && ld_first % e == 0 && reinterpret_cast<uintptr_t>(first) % bytes == 0 &&
           second_ok;
  });
}

// Stages A rows [row, row + rows) x columns [k0, k0 + kc) into the tile (ld_a), zeros past the rows and
// past k, in copies of Bytes bytes: each thread walks its vectors with a carried (row, vector) position,
// no division per element, and issues one asynchronous copy per real vector.
template <class T, int Bytes>
__device__ void stage_a_vectors(T* a, int ld_a, const RowSource<T>& src, int row, int rows, int row_tile, int k0,
                                int kc, int k) {
  constexpr int E = Bytes / static_cast<int>(sizeof(T));
  const int per_row = kc / E, count = row_tile * per_row, stride = static_cast<int>(blockDim.x);
  const int first = static_cast<int>(threadIdx.x), di = stride / per_row, dv = stride % per_row;
  int i = first / per_row, v = first % per_row;
  for (int index = first; index < count; index += stride) {
    T* to = a + i * ld_a + v * E;
    const int column = k0 + v * E;
    if (i < rows && column < k) {
      copy_async<Bytes>(to, src.at(row + i, column));
    } else {
      for (int e = 0; e < E; ++e) to[e] = zero<T>();
    }
    v += dv;
    i += di;
    if (v >= per_row) {
      v -= per_row;
      ++i;
    }
  }
}

// Stages A's tile for reduction columns [k0, k0 + kc) (see stage_a_vectors), in the widest copies the
// source allows, one element at a time where it allows none; returns once this thread's copies have
// landed, so the caller's block barrier publishes the tile.
template <class T>
__device__ void stage_a(T* a, int ld_a, const RowSource<T>& src, int row, int rows, int row_tile, int k0, int kc,
                        int k) {
  const bool vectors = with_copy_width<T>(src.copy_bytes(k), [&](auto bytes) {
    stage_a_vectors<T, decltype(bytes)::value>(a, ld_a, src, row, rows, row_tile, k0, kc, k);
  });
  if (!vectors) {
    for (int index = static_cast<int>(threadIdx.x); index < row_tile * kc; index += static_cast<int>(blockDim.x)) {
      const int i = index / kc, column = k0 + index % kc;
      a[i * ld_a + index % kc] = i < rows && column < k ? *src.at(row + i, column) : zero<T>();
    }
  }
  wait_async_copies();
}

// --- the phase runner ---------------------------------------------------------------------------------

// Shared memory of a CTA, carved as the plan laid it out.
template <class T>
struct SharedTiles {
  unsigned char* base;
  const Geometry& g;

  __device__ T* w(int kind) const { return reinterpret_cast<T*>(base + g.phase[kind].w_offset); }
  __device__ T* a() const { return reinterpret_cast<T*>(base + g.a_offset); }
  __device__ Acc<T>* acc() const { return reinterpret_cast<Acc<T>*>(base + g.acc_offset); }
  // The step inputs of a plan with g.inputs (plan.h): xp's two stages, the lengths, the CTA's own h and c.
  __device__ T* xp(int stage) const { return reinterpret_cast<T*>(base + g.xp_offset + stage * g.xp_stage_bytes); }
  __device__ int32_t* lengths() const { return reinterpret_cast<int32_t*>(base + g.lengths_offset); }
  __device__ T* own() const { return reinterpret_cast<T*>(base + g.own_offset); }
  __device__ T* own_b_hn() const { return own() + g.batch * g.phase[0].slice; }  // GRU: after the B rows of h
  __device__ Acc<T>* cell() const { return reinterpret_cast<Acc<T>*>(base + g.cell_offset); }
};

// Copies `rows` rows of `width` elements, row r from src + r * ld in global memory to dst + r * dst_ld in
// shared memory, as prefetches (copies that may fly across block barriers, landing at the thread's next
// wait_async_copies) in the widest vectors alignment allows; element by element, at once, where it allows
// none.
template <class T, int Bytes>
__device__ void prefetch_vectors(T* dst, int dst_ld, const T* src, int64_t ld, int rows, int width) {
  constexpr int E = Bytes / static_cast<int>(sizeof(T));
  const int per_row = width / E;
  for (int index = static_cast<int>(threadIdx.x); index < rows * per_row; index += static_cast<int>(blockDim.x)) {
    const int r = index / per_row, v = index % per_row;
    prefetch_async<Bytes>(dst + r * dst_ld + v * E, src + r * ld + v * E);
  }
}

template <class T>
__device__ void prefetch_rows(T* dst, int dst_ld, const T* src, int64_t ld, int rows, int width) {
  const int bytes = widest_copy<T>([&](int b, int e) {
    return width % e == 0 && ld % e == 0 && dst_ld % e == 0 && reinterpret_cast<uintptr_t>(src) % b == 0 &&
           reinterpret_cast<uintptr_t>(dst) % b == 0;
  });
  const bool vectors = with_copy_width<T>(bytes, [&](auto width_bytes) {
    prefetch_vectors<T, decltype(width_bytes)::value>(dst, dst_ld, src, ld, rows, width);
  });
  if (!vectors) {
    for (int index = static_cast<int>(threadIdx.x); index < rows * width; index += static_cast<int>(blockDim.x))
      dst[index / width * dst_ld + index % width] = src[index / width * ld + index % width];
  }
}

// A persistent forward whose plan keeps its step's pointwise inputs on chip (plan.h's g.inputs), for the
// CTA owning units [first, first + owned): lengths() are where to read the lengths from (shared memory
// after start(), which copies them there and sends step 0's xp on its way), prefetch(s) sends step s's xp
// rows of those units into stage s & 1, and after_step(s) follows a step's epilogue: this thread's copies
// have landed (a step whose tiles all had no work staged nothing, so waited for nothing), and step s + 1's
// are on their way. The caller fills the CTA's own states and publishes all of it with a block barrier.
template <class T>
struct InputsOnChip {
  const Geometry& g;
  const SharedTiles<T>& smem;
  const T* xp;  // [T, B, input_gates * H]
  const int32_t* global_lengths;
  int first, owned;

  __device__ void start() const {
    int32_t* shared = smem.lengths();
    if (global_lengths)
      for (int b = static_cast<int>(threadIdx.x); b < g.batch; b += static_cast<int>(blockDim.x))
        shared[b] = global_lengths[b];
    prefetch(0);
  }
  __device__ const int32_t* lengths() const { return global_lengths ? smem.lengths() : nullptr; }
  __device__ void prefetch(int s) const {
    const int64_t row = static_cast<int64_t>(g.hidden), rows = static_cast<int64_t>(g.batch) * g.input_gates;
    prefetch_rows(smem.xp(s & 1), g.phase[0].slice, xp + forward_step(g, s) * rows * row + first, row,
                  static_cast<int>(rows), owned);
  }
  __device__ void after_step(int s) const {
    wait_async_copies();
    if (s + 1 < g.steps) prefetch(s + 1);
  }
};

// Fills W's slice for phase kind `kind`, columns [k0, k0 + columns) of the reduction, into shared
// memory: load_w(n, k) gives the slice's row n (zero past the slice), zero past k. Consecutive threads
// take consecutive addresses of global memory (coalesced): along k for a loader whose rows are W's rows,
// along the slice for one whose slice members are W's columns (LoadW::kAlongSlice).
template <class T, class LoadW>
__device__ void stage_w(T* w, int ld_w, const PhaseGeometry& ph, int k0, int columns, LoadW load_w) {
  for (int index = static_cast<int>(threadIdx.x); index < ph.n_padded * columns; index += static_cast<int>(blockDim.x)) {
    const int n = LoadW::kAlongSlice ? index % ph.n_padded : index / columns;
    const int k = LoadW::kAlongSlice ? index / ph.n_padded : index % columns;
    w[n * ld_w + k] = k0 + k < ph.k ? load_w(n, k0 + k) : zero<T>();
  }
}

// The loaders of a CTA's slice of W (stage_w's load_w): slice member n of slice `slice` (U members each).
// A gate-stacked weight [gates * extent, depth] gives the slice its rows: gate n / U of member
// u0 + n % U (the forwards' W_hh, and W_hr with gates = 1). A weight [rows, extent] gives the slice its
// columns u0 + n, its rows being the reduction (the backwards' transposed products dG W).
template <class T>
struct GateRows {
  static constexpr bool kAlongSlice = false;  // a slice member's row is contiguous along k
  const T* w;
  int gates, extent, depth, per_slice, first;
  __device__ T operator()(int n, int k) const {
    const int gate = n / per_slice, u = first + n % per_slice;
    return gate < gates && u < extent ? w[(gate * static_cast<int64_t>(extent) + u) * depth + k] : zero<T>();
  }
};

template <class T>
struct WeightColumns {
  static constexpr bool kAlongSlice = true;  // the slice's members are adjacent columns of each row k
  const T* w;
  int extent, per_slice, first;
  __device__ T operator()(int n, int k) const {
    return n < per_slice && first + n < extent ? w[static_cast<int64_t>(k) * extent + first + n] : zero<T>();
  }
};

template <class T>
__device__ GateRows<T> gate_rows(const T* w, const PhaseGeometry& ph, int depth, int slice) {
  return {w, ph.gates, ph.extent, depth, ph.slice, slice * ph.slice};
}

template <class T>
__device__ WeightColumns<T> weight_columns(const T* w, const PhaseGeometry& ph, int slice) {
  return {w, ph.extent, ph.slice, slice * ph.slice};
}

// One phase of kind `kind` over rows [row_begin, row_end), in row tiles: for each tile with work
// (has_work(row, rows)), acc = A W^T with A read from a_rows, then epilogue(row, rows, result) with
// result(i, n) the accumulator of row row + i and slice column n. A tile without work skips the GEMM
// and gets an epilogue with work == false (it still writes its outputs). W is resident in persistent
// plans (staged by the kernel at its start), streamed chunk by chunk in stepwise ones.
template <class T, Math M, class LoadW, class HasWork, class Epilogue>
__device__ void run_phase(const Geometry& g, const SharedTiles<T>& smem, int kind, int row_begin, int row_end,
                          const RowSource<T>& a_rows, LoadW load_w, HasWork has_work, Epilogue epilogue) {
  const PhaseGeometry& ph = g.phase[kind];
  T* a = smem.a();
  T* w = smem.w(kind);
  Acc<T>* acc = smem.acc();
  const TileResult<Acc<T>> result{acc, g.ld_acc, g.split_stride, ph.splits};
  for (int row = row_begin; row < row_end; row += g.row_tile) {
    const int rows = min_int(g.row_tile, row_end - row);
    const bool work = has_work(row, rows);
    if (work) {
      for (int k0 = 0; k0 < ph.k_padded; k0 += ph.k_chunk) {
        stage_a(a, g.ld_a, a_rows, row, rows, g.row_tile, k0, ph.k_chunk, ph.k);
        if (!g.persistent) stage_w(w, ph.ld_w, ph, k0, ph.k_chunk, load_w);
        __syncthreads();
        BlockGemm<T, M>::run(acc, g.ld_acc, g.split_stride, a, g.ld_a, g.persistent ? w + k0 : w, ph.ld_w,
                             g.row_tile, ph.n_padded, ph.k_chunk, ph.splits, k0 > 0);
        __syncthreads();
      }
    }
    // The next tile's staging writes only A and W, never the accumulators this reads; its GEMM starts
    // after a barrier every thread reaches only once done here.
    epilogue(row, rows, work, result);
  }
}

// The rows a CTA covers and its slice, for phase kind `kind` (persistent: every row, slice = the CTA;
// stepwise: the CTA's (slice, row block) pair).
struct Assignment {
  int slice;  // -1: this CTA owns nothing in this phase kind (more CTAs than slices)
  int row_begin, row_end;
};

__device__ inline Assignment assignment(const Geometry& g, int kind) {
  const int block = static_cast<int>(blockIdx.x);
  const PhaseGeometry& ph = g.phase[kind];
  if (g.persistent) return {block < ph.slices ? block : -1, 0, g.batch};
  const int slice = block % ph.slices, row_block = block / ph.slices;
  const int row_begin = row_block * g.row_tile;
  return {slice, row_begin, min_int(g.batch, row_begin + g.row_tile)};
}

// Persistent plans: the CTA's slice of W for phase kind `kind` goes to shared memory once, before the
// first step (loader(slice) as run_phase's load_w); the caller's block barrier publishes it.
template <class T, class Loader>
__device__ void stage_resident(const Geometry& g, const SharedTiles<T>& smem, int kind, Loader loader) {
  const int slice = assignment(g, kind).slice;
  const PhaseGeometry& ph = g.phase[kind];
  if (slice >= 0) stage_w(smem.w(kind), ph.ld_w, ph, 0, ph.k_padded, loader(slice));
}

}  // namespace cuda
}  // namespace fastrnn
