// The Elman recurrence (nn.RNN, tanh or relu) on the CPU, forward and backward; the plan of gru.h
// (threads own unit blocks, the cell in the GEMM's epilogue, one barrier per step, storage type S
// computed in T). One gate per unit, so a microkernel call covers up to four unit blocks to fill its
// registers. Included by each isa_*.cpp; see api.h.
#pragma once

#include "common.h"

namespace fastrnn {
namespace cpu {
namespace {

template <class S, int N, int REGISTERS>
struct RnnKernels {
  using T = typename ComputeOf<S>::type;
  using GemmT = typename GemmOf<S>::type;  // what the GEMMs read (gemm.h)
  using V = Vec<T, N>;
  static constexpr bool kGemmReadsStorage = std::is_same_v<S, GemmT>;

  struct Forward {
    const RnnForward<S>& a;
    const GemmT* w_packed;   // W_hh^T in column panels (depth H)
    const GemmT* wi_packed;  // W_ih^T in column panels (depth I) where the projection runs in the steps, or null
    GemmT* h_buffers[2];
    Barrier barrier;

    void run(int thread, int threads) {
      const Shape& s = a.shape;
      const int64_t H = s.hidden, B = s.batch, I = a.in_steps.input;
      const Range mine = share(ceil_div(H, N), thread, threads);
      const PanelGeometry<N, GemmT> panels{H, 1}, input_panels{I, 1};
      int parity = 0;
      for (int64_t step = 0; step < s.steps; ++step) {
        const int64_t t = step_at(s, step), rows = live_rows(s, t);
        if (rows == 0) continue;
        const GemmT* h_in = h_buffers[parity];
        GemmT* h_out = h_buffers[parity ^ 1];
        const S* xp = a.xp ? a.xp + t * B * H : nullptr;
        const GemmT* x_t = step_projection_rows(a.in_steps, wi_packed, t, B);
        const S* x_bias = x_t ? a.in_steps.bias : nullptr;
        S* y = a.y + t * B * H;
        for_block_groups(mine.begin, mine.end, [&](auto group, int64_t first) {
          constexpr int NP = decltype(group)::value;
          V bias[NP];  // the projection's bias where it runs here (xp has it otherwise)
          for (int q = 0; q < NP; ++q) {
            const int64_t u0 = (first + q) * N;
            bias[q] = x_bias ? load_n<V>(x_bias + u0, block_width<N>(H, u0)) : V(T(0));
          }
          for_row_tiles<rows_per_tile(REGISTERS, NP)>(rows, [&](auto tile, int64_t r0) {
            constexpr int MR = decltype(tile)::value;
            V acc[MR][NP];
            if (x_t) {
              for (int m = 0; m < MR; ++m)
                for (int q = 0; q < NP; ++q) acc[m][q] = bias[q];
              accumulate(acc, x_t + r0 * I, I, I, wi_packed + input_panels.block_offset(first),
                         input_panels.k_stride(), input_panels.block_offset(1));
            } else {
              for (int m = 0; m < MR; ++m)
                for (int q = 0; q < NP; ++q) __builtin_prefetch(xp + (r0 + m) * H + (first + q) * N);
              zero(acc);
            }
            accumulate(acc, h_in + r0 * H, H, H, w_packed + panels.block_offset(first), panels.k_stride(),
                       panels.block_offset(1));
            // Not unrolled: a tanh per vector is all of this epilogue, and a copy of it per element of
            // every tile shape doubled the build time.
            for (int m = 0; m < MR; ++m)
              for (int q = 0; q < NP; ++q) {
                const int64_t at = (r0 + m) * H + (first + q) * N;
                const int width = block_width<N>(H, (first + q) * N);
                const V h = rnn_cell_forward(xp ? acc[m][q] + load_n<V>(xp + at, width) : acc[m][q], a.relu);
                store_n(h, h_out + at, width);
                store_n(h, y + at, width);
              }
          });
        }, parity);
        barrier_wait(&barrier, threads);
        parity ^= 1;
      }
    }
  };

  static void forward(const RnnForward<S>& a) {
    const Shape& s = a.shape;
    const int64_t H = s.hidden, B = s.batch;
    const auto w_packed = PackedPanels<GemmT, N>::from_rows(a.w_hh, H, 1, H, a.w_hh_panels);
    const bool project_here = projects_here<GemmT>(a.in_steps);
    const auto wi_packed = step_projection_panels<GemmT, N>(a.in_steps, 1, H);
    const HiddenBuffers<GemmT> h(a.h0, B * H);
    Forward job{a, w_packed.get(), project_here ? wi_packed.get() : nullptr, {h[0], h[1]}, {}};
    run_job(job, choose_threads(s, B * H * (H + (project_here ? a.in_steps.input : 0)), ceil_div(H, N)));
    gather_final_state(s, a.y, a.h0, a.h_n, H);
  }

  struct Backward {
    const RnnBackward<S>& a;
    const GemmT* w_packed;  // W_hh in column panels over its H columns (depth H)
    T* dh;              // [B, H] the carried hidden gradient
    // [2][B, H] this step's d pre in GemmT for the carry GEMM, or null: read from a.dxp. Two buffers: a
    // thread may start the next step's phase A while another still reads this step's in phase B.
    GemmT* d_pre_steps;
    Barrier barrier;

    void run(int thread, int threads) {
      const Shape& s = a.shape;
      const int64_t H = s.hidden, B = s.batch;
      const Range mine = share(ceil_div(H, N), thread, threads);  // units and state columns alike
      int parity = 0;
      for (int64_t step = s.steps - 1; step >= 0; --step) {
        const int64_t t = step_at(s, step), rows = live_rows(s, t);
        if (rows == 0) continue;
        GemmT* d_pre_step = d_pre_steps ? d_pre_steps + parity * B * H : nullptr;
        parity ^= 1;
        S* dxp = a.dxp + t * B * H;
        // Phase A: d pre = (dy + dh) act'(y) for the own units.
        for (int64_t block = mine.begin; block < mine.end; ++block) {
          const int64_t u0 = block * N;
          const int width = block_width<N>(H, u0);
          for (int64_t b = 0; b < rows; ++b) {
            const int64_t at = (t * B + b) * H + u0;
            const V d_pre = rnn_cell_backward(load_n<V>(a.dy + at, width) + load_n<V>(dh + b * H + u0, width),
                                              load_n<V>(a.y + at, width), a.relu);
            store_n(d_pre, dxp + b * H + u0, width);
            if (d_pre_step) store_n(d_pre, d_pre_step + b * H + u0, width);
          }
        }
        barrier_wait(&barrier, threads);
        // Phase B: dh_{t-1} = d pre W_hh for the own columns.
        const GemmT* d_pre = d_pre_step;
        if constexpr (kGemmReadsStorage) {
          if (!d_pre) d_pre = dxp;
        }
        store_product<REGISTERS, N>(dh, H, rows, mine.begin, mine.end, d_pre, H, w_packed, parity);
      }
    }
  };

  static void backward(const RnnBackward<S>& a) {
    const Shape& s = a.shape;
    const int64_t H = s.hidden, B = s.batch;
    const auto w_packed = PackedPanels<GemmT, N>::from_columns(a.w_hh, H, H, a.w_hh_panels);
    Scratch<T> dh(B * H);
    convert(dh.get(), a.dh_n, B * H);
    // Storage the carry GEMM cannot read (bfloat16 without the pair products): it reads GemmT copies of it.
    Scratch<GemmT> d_pre(kGemmReadsStorage ? 0 : 2 * B * H);
    Backward job{a, w_packed.get(), dh.get(), kGemmReadsStorage ? nullptr : d_pre.get(), {}};
    run_job(job, choose_threads(s, B * H * H, ceil_div(H, N)));
    convert(a.dh0, dh.get(), B * H);
  }
};

}  // namespace
}  // namespace cpu
}  // namespace fastrnn
