// The GRU recurrence on the CPU, forward and backward; the same plan as lstm.h (threads own unit blocks,
// the cell in the GEMM's epilogue, one barrier per step, storage type S computed in T). Included by each
// isa_*.cpp; see api.h.
#pragma once

#include "common.h"

namespace fastrnn {
namespace cpu {
namespace {

template <class S, int N, int REGISTERS>
struct GruKernels {
  using T = typename ComputeOf<S>::type;
  using GemmT = typename GemmOf<S>::type;  // what the GEMMs read (gemm.h)
  using V = Vec<T, N>;
  static constexpr bool kGemmReadsStorage = std::is_same_v<S, GemmT>;
  static constexpr int kGateRows = rows_per_tile(REGISTERS, 3);

  struct Forward {
    const GruForward<S>& a;
    const GemmT* w_packed;   // W_hh^T, r, z, n interleaved per unit block (depth H)
    const GemmT* wi_packed;  // W_ih^T like W_hh^T (depth I) where the projection runs in the steps, or null
    GemmT* h_buffers[2];
    Barrier barrier;

    void run(int thread, int threads) {
      const Shape& s = a.shape;
      const int64_t H = s.hidden, B = s.batch, G = 3 * H, I = a.in_steps.input;
      const Range my_units = share(ceil_div(H, N), thread, threads);
      const PanelGeometry<N, GemmT> panels{H, 3}, input_panels{I, 3};
      int parity = 0;
      for (int64_t step = 0; step < s.steps; ++step) {
        const int64_t t = step_at(s, step), rows = live_rows(s, t);
        if (rows == 0) continue;
        const GemmT* h_in = h_buffers[parity];
        GemmT* h_out = h_buffers[parity ^ 1];
        const S* xp = a.xp ? a.xp + t * B * G : nullptr;
        const GemmT* x_t = step_projection_rows(a.in_steps, wi_packed, t, B);
        const S* x_bias = x_t ? a.in_steps.bias : nullptr;
        S* saved = a.saved ? a.saved + t * B * 4 * H : nullptr;  // null: an inference call keeps nothing
        S* y = a.y + t * B * H;
        for (int64_t index = 0; index < my_units.end - my_units.begin; ++index) {
          const int64_t block = serpentine(my_units, index, parity);
          const int64_t u0 = block * N;
          const int width = block_width<N>(H, u0);
          const V b_hn = a.b_hn ? load_n<V>(a.b_hn + u0, width) : V(T(0));
          V bias[3];  // the projection's bias where it runs here (xp has it otherwise)
          for (int q = 0; q < 3; ++q) bias[q] = x_bias ? load_n<V>(x_bias + q * H + u0, width) : V(T(0));
          for_row_tiles<kGateRows>(rows, [&](auto tile, int64_t r0) {
            constexpr int MR = decltype(tile)::value;
            // The input parts (xr, xz, xn): the projection's own accumulators, since n keeps xn and hn apart.
            V from_x[MR][3];
            if (x_t) {
              for (int m = 0; m < MR; ++m)
                for (int q = 0; q < 3; ++q) from_x[m][q] = bias[q];
              accumulate(from_x, x_t + r0 * I, I, I, wi_packed + input_panels.block_offset(block),
                         input_panels.k_stride(), input_panels.gate_stride());
            } else {
              for (int m = 0; m < MR; ++m)
                for (int q = 0; q < 3; ++q) __builtin_prefetch(xp + (r0 + m) * G + q * H + u0);
            }
            V acc[MR][3];
            zero(acc);
            accumulate(acc, h_in + r0 * H, H, H, w_packed + panels.block_offset(block), panels.k_stride(),
                       panels.gate_stride());
#pragma GCC unroll 8
            for (int m = 0; m < MR; ++m) {
              const int64_t b = r0 + m;
              if (!x_t)
                for (int q = 0; q < 3; ++q) from_x[m][q] = load_n<V>(xp + b * G + q * H + u0, width);
              const V hn = acc[m][2] + b_hn;
              V r, z, n, h;
              gru_cell_forward(from_x[m][0], from_x[m][1], from_x[m][2], acc[m][0], acc[m][1], hn,
                               load_n<V>(h_in + b * H + u0, width), r, z, n, h);
              if (saved) {
                S* out = saved + b * 4 * H + u0;
                store_n(r, out, width);
                store_n(z, out + H, width);
                store_n(n, out + 2 * H, width);
                store_n(hn, out + 3 * H, width);
              }
              store_n(h, h_out + b * H + u0, width);
              store_n(h, y + b * H + u0, width);
            }
          });
        }
        barrier_wait(&barrier, threads);
        parity ^= 1;
      }
    }
  };

  static void forward(const GruForward<S>& a) {
    const Shape& s = a.shape;
    const int64_t H = s.hidden, B = s.batch;
    const auto w_packed = PackedPanels<GemmT, N>::from_rows(a.w_hh, H, 3, H, a.w_hh_panels);
    const bool project_here = projects_here<GemmT>(a.in_steps);
    const auto wi_packed = step_projection_panels<GemmT, N>(a.in_steps, 3, H);
    const HiddenBuffers<GemmT> h(a.h0, B * H);
    Forward job{a, w_packed.get(), project_here ? wi_packed.get() : nullptr, {h[0], h[1]}, {}};
    run_job(job, choose_threads(s, B * 3 * H * (H + (project_here ? a.in_steps.input : 0)), ceil_div(H, N)));
    gather_final_state(s, a.y, a.h0, a.h_n, H);
  }

  struct Backward {
    const GruBackward<S>& a;
    const GemmT* w_packed;  // W_hh in column panels over its H columns (depth 3H)
    T* dh;              // [B, H] the carried hidden gradient
    // [2][B, 2H] and [2][B, H]: this step's (d_r, d_z) and d_hn in GemmT for the carry GEMM, or null: read
    // from a.dxp, a.dhn. Two buffers each: a thread may start the next step's phase A while another
    // still reads this step's in phase B.
    GemmT* d_rz_steps;
    GemmT* d_hn_steps;
    Barrier barrier;

    void run(int thread, int threads) {
      const Shape& s = a.shape;
      const int64_t H = s.hidden, B = s.batch;
      const Range mine = share(ceil_div(H, N), thread, threads);  // units and state columns alike
      const PanelGeometry<N, GemmT> panels{3 * H, 1};
      int parity = 0;
      for (int64_t step = s.steps - 1; step >= 0; --step) {
        const int64_t t = step_at(s, step), rows = live_rows(s, t);
        if (rows == 0) continue;
        GemmT* d_rz_step = d_rz_steps ? d_rz_steps + parity * B * 2 * H : nullptr;
        GemmT* d_hn_step = d_hn_steps ? d_hn_steps + parity * B * H : nullptr;
        parity ^= 1;
        S* dxp = a.dxp + t * B * 3 * H;
        S* dhn = a.dhn + t * B * H;
        // Phase A: the cell backward of the own units; dh keeps the direct part dh * z.
        for (int64_t block = mine.begin; block < mine.end; ++block) {
          const int64_t u0 = block * N;
          const int width = block_width<N>(H, u0);
          for (int64_t b = 0; b < rows; ++b) {
            const S* saved = a.saved + (t * B + b) * 4 * H + u0;
            const int64_t at = (t * B + b) * H + u0;
            V d_r, d_z, d_n, d_hn, direct;
            gru_cell_backward(load_n<V>(a.dy + at, width) + load_n<V>(dh + b * H + u0, width),
                              load_n<V>(saved, width), load_n<V>(saved + H, width), load_n<V>(saved + 2 * H, width),
                              load_n<V>(saved + 3 * H, width), load_n<V>(a.h_prev + at, width), d_r, d_z, d_n, d_hn,
                              direct);
            S* out = dxp + b * 3 * H + u0;
            store_n(d_r, out, width);
            store_n(d_z, out + H, width);
            store_n(d_n, out + 2 * H, width);
            store_n(d_hn, dhn + b * H + u0, width);
            if (d_rz_step) {
              store_n(d_r, d_rz_step + b * 2 * H + u0, width);
              store_n(d_z, d_rz_step + b * 2 * H + H + u0, width);
              store_n(d_hn, d_hn_step + b * H + u0, width);
            }
            store_n(direct, dh + b * H + u0, width);
          }
        }
        barrier_wait(&barrier, threads);
        // Phase B: dh_{t-1} = dh * z + (d_r, d_z) W_h{r,z} + d_hn W_hn, for the own columns.
        const GemmT* d_rz = d_rz_step;
        const GemmT* d_hn = d_hn_step;
        int64_t rz_stride = 2 * H;
        if constexpr (kGemmReadsStorage) {
          if (!d_rz) d_rz = dxp, d_hn = dhn, rz_stride = 3 * H;
        }
        for_block_groups(mine.begin, mine.end, [&](auto group, int64_t first) {
          constexpr int NP = decltype(group)::value;
          const GemmT* panel = w_packed + panels.block_offset(first);
          for_row_tiles<rows_per_tile(REGISTERS, NP)>(rows, [&](auto tile, int64_t r0) {
            constexpr int MR = decltype(tile)::value;
            V acc[MR][NP];
            zero(acc);
            accumulate(acc, d_rz + r0 * rz_stride, rz_stride, 2 * H, panel, panels.k_stride(), panels.block_offset(1));
            accumulate(acc, d_hn + r0 * H, H, H, panel + panels.k_offset(2 * H), panels.k_stride(),
                       panels.block_offset(1));
#pragma GCC unroll 8
            for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
              for (int q = 0; q < NP; ++q) {
                const int64_t col = (first + q) * N;
                const int width = block_width<N>(H, col);
                T* out = dh + (r0 + m) * H + col;
                store_n(acc[m][q] + load_n<V>(out, width), out, width);
              }
          });
        }, parity);
      }
    }
  };

  static void backward(const GruBackward<S>& a) {
    const Shape& s = a.shape;
    const int64_t H = s.hidden, B = s.batch;
    const auto w_packed = PackedPanels<GemmT, N>::from_columns(a.w_hh, 3 * H, H, a.w_hh_panels);
    Scratch<T> dh(B * H);
    convert(dh.get(), a.dh_n, B * H);
    // Storage the carry GEMM cannot read (bfloat16 without the pair products): it reads GemmT copies of it.
    Scratch<GemmT> d_rz(kGemmReadsStorage ? 0 : 2 * B * 2 * H), d_hn(kGemmReadsStorage ? 0 : 2 * B * H);
    Backward job{a, w_packed.get(), dh.get(), kGemmReadsStorage ? nullptr : d_rz.get(),
                 kGemmReadsStorage ? nullptr : d_hn.get(), {}};
    run_job(job, choose_threads(s, B * 3 * H * H, ceil_div(H, N)));
    convert(a.dh0, dh.get(), B * H);
  }
};

}  // namespace
}  // namespace cpu
}  // namespace fastrnn
