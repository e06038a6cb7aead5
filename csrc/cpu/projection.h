// A float32 product out = x W^T + bias on W packed once and kept (api.h, Linear): a layer's input
// projection where it is too small for oneDNN's linear, whose fixed cost per call (about 12 us on a Zen 5
// core) is as much as the product itself up to a few million multiply-adds. The step GEMM's microkernel
// (gemm.h) on W in plain column panels, as the Elman forward packs W_hh.
#pragma once

#include "common.h"

namespace fastrnn {
namespace cpu {
namespace {

template <int N, int REGISTERS>
struct LinearKernel {
  using V = Vec<float, N>;
  // Rows per pass over the column panels: a pass's rows of x stay in L1 (about 16 KB of them) while the
  // panels of a chunk stream past them once.
  static constexpr int64_t kRowBytes = 16 * 1024;
  // Column panels per chunk: every pass of rows reads the chunk's panels, which stay in L2 (about 512 KB of
  // them) across the passes; W read whole by each pass came from L3 once it outgrew L2 (a 2048 x 512 W:
  // 78 against 130 GFLOP/s on an Ice Lake core).
  static constexpr int64_t kChunkBytes = 512 * 1024;
  static constexpr int64_t kDepthBlock = 128;  // (see add_product)

  const Linear& a;
  const float* packed;

  // acc += x_rows (MR rows of x, K deep) times the NP column blocks of W at w_block. Depth beyond
  // kDepthBlock is summed in blocks, each apart and then added: one chain of K rounded adds would err about
  // sqrt(K / kDepthBlock) times more (at K = 512, 5.7x torch's matmul's error against float64).
  template <int MR, int NP>
  void add_product(V (&acc)[MR][NP], const float* x_rows, const float* w_block,
                   const PanelGeometry<N, float>& panels) const {
    const int64_t K = a.depth;
    if (K <= kDepthBlock) return accumulate(acc, x_rows, K, K, w_block, panels.k_stride(), panels.block_offset(1));
    for (int64_t k0 = 0; k0 < K; k0 += kDepthBlock) {
      V part[MR][NP];
      zero(part);
      accumulate(part, x_rows + k0, K, K - k0 < kDepthBlock ? K - k0 : kDepthBlock, w_block + k0 * panels.k_stride(),
                 panels.k_stride(), panels.block_offset(1));
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
        for (int q = 0; q < NP; ++q) acc[m][q] += part[m][q];
    }
  }

  void rows(int64_t first, int64_t last) const {
    const int64_t K = a.depth, C = a.columns, blocks = ceil_div(C, N);
    const PanelGeometry<N, float> panels{K, 1};
    constexpr int kTile = rows_per_tile(REGISTERS, 4);
    int64_t pass = (kRowBytes / (K * int64_t(sizeof(float)))) / kTile * kTile;
    if (pass < kTile) pass = kTile;
    int64_t chunk = kChunkBytes / (K * N * int64_t(sizeof(float))) / 4 * 4;
    if (chunk < 4) chunk = 4;
    for (int64_t b0 = 0; b0 < blocks; b0 += chunk) {
      const int64_t chunk_end = b0 + chunk < blocks ? b0 + chunk : blocks;
      for (int64_t r = first; r < last; r += pass) {
        const int64_t count = last - r < pass ? last - r : pass;
        for_block_groups(b0, chunk_end, [&](auto group, int64_t block) {
          constexpr int NP = decltype(group)::value;
          V bias[NP];
          for (int q = 0; q < NP; ++q) {
            const int64_t c = (block + q) * N;
            const int width = block_width<N>(C, c);
            bias[q] = a.bias ? load_n<V>(a.bias + c, width) : V(0.f);
            if (a.bias2) bias[q] += load_n<V>(a.bias2 + c, width);
          }
          for_row_tiles<rows_per_tile(REGISTERS, NP)>(count, [&](auto tile, int64_t r0) {
            constexpr int MR = decltype(tile)::value;
            V acc[MR][NP];
#pragma GCC unroll 8
            for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
              for (int q = 0; q < NP; ++q) acc[m][q] = bias[q];
            add_product(acc, a.x + (r + r0) * K, packed + panels.block_offset(block), panels);
#pragma GCC unroll 8
            for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
              for (int q = 0; q < NP; ++q) {
                const int64_t c = (block + q) * N;
                store_n(acc[m][q], a.out + (r + r0 + m) * C + c, block_width<N>(C, c));
              }
          });
        });
      }
    }
  }

  void run(int thread, int threads) const {
    const Range mine = share(a.rows, thread, threads);
    rows(mine.begin, mine.end);
  }

  static void project(const Linear& a) {
    const auto w_packed = PackedPanels<float, N>::from_rows(a.w, a.depth, 1, a.columns, a.w_panels);
    LinearKernel job{a, w_packed.get()};
    // Threads share the rows, each reading all of W: a second one pays where the rows are many.
    const int threads = threads_for(a.max_threads, a.rows * a.depth * a.columns, kMinCellWorkPerThread * 8,
                                    ceil_div(a.rows, 8));
    if (threads <= 1) return job.rows(0, a.rows);
    run_job(job, threads);
  }
};

}  // namespace
}  // namespace cpu
}  // namespace fastrnn
