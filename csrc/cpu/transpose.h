// A float32 matrix transposed into fresh contiguous memory: the operands of the backward's weight-gradient
// GEMMs, sum_t dG_t^T X_t, whose reduction runs over the rows of both (oneDNN's linear reads both with that
// dimension contiguous). torch's strided copy moves such a matrix at ~9 GB/s on a Zen 5 core; this runs N x N
// tiles through registers (gemm.h's transpose), so each source row is read in whole cache lines and each
// destination row is written in sequence.
#pragma once

#include "gemm.h"

namespace fastrnn {
namespace cpu {
namespace {

// dst[c * rows + r] = src[r * ld + c] for the source's column blocks [first, last) of N columns: down all
// rows per block, N rows at a time, so that the destination rows are written in sequence. (Wider panels of
// columns per sweep measured no faster on a Zen 5 core: 5.9 ms for a 16384 x 1024 matrix, 20+ GB/s.)
template <int N>
void transpose_blocks(const Transpose& a, int64_t first, int64_t last) {
  using V = Vec<float, N>;
  for (int64_t block = first; block < last; ++block) {
    const int64_t c = block * N;
    const int live = block_width<N>(a.columns, c);
    int64_t r = 0;
    for (; r + N <= a.rows; r += N) {
      V tile[N];
#pragma GCC unroll 16
      for (int l = 0; l < N; ++l) tile[l] = V::load_n(a.src + (r + l) * a.ld + c, live);
      transpose(tile);
      for (int l = 0; l < live; ++l) tile[l].store(a.dst + (c + l) * a.rows + r);
    }
    for (; r < a.rows; ++r)
      for (int l = 0; l < live; ++l) a.dst[(c + l) * a.rows + r] = a.src[r * a.ld + c + l];
  }
}

// Each thread transposes its own range of column blocks.
template <int N>
void transpose_matrix(const Transpose& a) {
  const int64_t blocks = ceil_div(a.columns, N);
  // Below 2^18 elements (1 MB) a second thread costs more to wake than it saves.
  const int wanted = a.rows * a.columns < (int64_t(1) << 18) ? 1 : a.max_threads;
  const int threads = static_cast<int>(blocks < wanted ? blocks : wanted);
  if (threads <= 1) return transpose_blocks<N>(a, 0, blocks);
  run_parallel(
      threads,
      [](void* context, int thread, int count) {
        const Transpose& args = *static_cast<const Transpose*>(context);
        const int64_t all = ceil_div(args.columns, N);
        transpose_blocks<N>(args, all * thread / count, all * (thread + 1) / count);
      },
      const_cast<Transpose*>(&a));
}

}  // namespace
}  // namespace cpu
}  // namespace fastrnn
