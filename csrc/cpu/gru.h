// The GRU recurrence on the CPU, forward and backward; the same plan as lstm.h (threads own unit blocks,
// the cell in the GEMM's epilogue, one barrier per step). Included by each isa_*.cpp; see api.h.
#pragma once

#include "common.h"

namespace fastrnn {
namespace cpu {
namespace {

template <class T, int N, int REGISTERS>
struct GruKernels {
  using V = Vec<T, N>;
  static constexpr int kGateRows = rows_per_tile(REGISTERS, 3);

  struct Forward {
    const GruForward<T>& a;
    const T* w_packed;  // W_hh^T, r, z, n interleaved per unit block (depth H)
    T* h_buffers[2];
    Barrier barrier;

    void run(int thread, int threads) {
      const Shape& s = a.shape;
      const int64_t H = s.hidden, B = s.batch, G = 3 * H;
      const Range my_units = share(ceil_div(H, N), thread, threads);
      const PanelGeometry<N> panels{H, 3};
      int parity = 0;
      for (int64_t step = 0; step < s.steps; ++step) {
        const int64_t t = step_at(s, step), rows = live_rows(s, t);
        if (rows == 0) continue;
        const T* h_in = h_buffers[parity];
        T* h_out = h_buffers[parity ^ 1];
        const T* xp = a.xp + t * B * G;
        T* saved = a.saved ? a.saved + t * B * 4 * H : nullptr;  // null: an inference call keeps nothing
        T* y = a.y + t * B * H;
        for (int64_t block = my_units.begin; block < my_units.end; ++block) {
          const int64_t u0 = block * N;
          const int width = static_cast<int>(H - u0 < N ? H - u0 : N);
          const V b_hn = a.b_hn ? V::load_n(a.b_hn + u0, width) : V(T(0));
          for_row_tiles<kGateRows>(rows, [&](auto tile, int64_t r0) {
            constexpr int MR = decltype(tile)::value;
            V acc[MR][3];
            zero(acc);
            accumulate(acc, h_in + r0 * H, H, H, w_packed + panels.block_offset(block), panels.k_stride(), N);
#pragma GCC unroll 8
            for (int m = 0; m < MR; ++m) {
              const int64_t b = r0 + m;
              const T* x = xp + b * G + u0;
              const V hn = acc[m][2] + b_hn;
              V r, z, n, h;
              gru_cell_forward(V::load_n(x, width), V::load_n(x + H, width), V::load_n(x + 2 * H, width), acc[m][0],
                               acc[m][1], hn, V::load_n(h_in + b * H + u0, width), r, z, n, h);
              if (saved) {
                T* out = saved + b * 4 * H + u0;
                r.store_n(out, width);
                z.store_n(out + H, width);
                n.store_n(out + 2 * H, width);
                hn.store_n(out + 3 * H, width);
              }
              h.store_n(h_out + b * H + u0, width);
              h.store_n(y + b * H + u0, width);
            }
          });
        }
        barrier_wait(&barrier, threads);
        parity ^= 1;
      }
    }
  };

  static void forward(const GruForward<T>& a) {
    const Shape& s = a.shape;
    const int64_t H = s.hidden, B = s.batch;
    Scratch<T> w_packed(ceil_div(H, N) * H * 3 * N);
    pack_panels<T, N>(w_packed.get(), a.w_hh, 1, H, H, 3, H);
    Scratch<T> h_buffers(2 * B * H);
    copy(h_buffers.get(), a.h0, B * H);
    copy(h_buffers.get() + B * H, a.h0, B * H);
    Forward job{a, w_packed.get(), {h_buffers.get(), h_buffers.get() + B * H}, {}};
    run_job(job, choose_threads(s, B * 3 * H * H, ceil_div(H, N)));
    gather_final_state(s, a.y, a.h0, a.h_n, H);
  }

  struct Backward {
    const GruBackward<T>& a;
    const T* w_packed;  // W_hh in column panels over its H columns (depth 3H)
    T* dh;              // [B, H] the carried hidden gradient (a.dh0)
    Barrier barrier;

    void run(int thread, int threads) {
      const Shape& s = a.shape;
      const int64_t H = s.hidden, B = s.batch;
      const Range mine = share(ceil_div(H, N), thread, threads);  // units and state columns alike
      const PanelGeometry<N> panels{3 * H, 1};
      for (int64_t step = s.steps - 1; step >= 0; --step) {
        const int64_t t = step_at(s, step), rows = live_rows(s, t);
        if (rows == 0) continue;
        T* dxp = a.dxp + t * B * 3 * H;
        T* dhn = a.dhn + t * B * H;
        // Phase A: the cell backward of the own units; dh keeps the direct part dh * z.
        for (int64_t block = mine.begin; block < mine.end; ++block) {
          const int64_t u0 = block * N;
          const int width = static_cast<int>(H - u0 < N ? H - u0 : N);
          for (int64_t b = 0; b < rows; ++b) {
            const T* saved = a.saved + (t * B + b) * 4 * H + u0;
            const int64_t at = (t * B + b) * H + u0;
            V d_r, d_z, d_n, d_hn, direct;
            gru_cell_backward(V::load_n(a.dy + at, width) + V::load_n(dh + b * H + u0, width), V::load_n(saved, width),
                              V::load_n(saved + H, width), V::load_n(saved + 2 * H, width),
                              V::load_n(saved + 3 * H, width), V::load_n(a.h_prev + at, width), d_r, d_z, d_n, d_hn,
                              direct);
            T* out = dxp + b * 3 * H + u0;
            d_r.store_n(out, width);
            d_z.store_n(out + H, width);
            d_n.store_n(out + 2 * H, width);
            d_hn.store_n(dhn + b * H + u0, width);
            direct.store_n(dh + b * H + u0, width);
          }
        }
        barrier_wait(&barrier, threads);
        // Phase B: dh_{t-1} = dh * z + (d_r, d_z) W_h{r,z} + d_hn W_hn, for the own columns.
        for_block_groups(mine.begin, mine.end, [&](auto group, int64_t first) {
          constexpr int NP = decltype(group)::value;
          const T* panel = w_packed + panels.block_offset(first);
          for_row_tiles<rows_per_tile(REGISTERS, NP)>(rows, [&](auto tile, int64_t r0) {
            constexpr int MR = decltype(tile)::value;
            V acc[MR][NP];
            zero(acc);
            accumulate(acc, dxp + r0 * 3 * H, 3 * H, 2 * H, panel, panels.k_stride(), panels.block_offset(1));
            accumulate(acc, dhn + r0 * H, H, H, panel + 2 * H * panels.k_stride(), panels.k_stride(),
                       panels.block_offset(1));
#pragma GCC unroll 8
            for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
              for (int q = 0; q < NP; ++q) {
                const int64_t col = (first + q) * N;
                const int width = static_cast<int>(H - col < N ? H - col : N);
                T* out = dh + (r0 + m) * H + col;
                (acc[m][q] + V::load_n(out, width)).store_n(out, width);
              }
          });
        });
      }
    }
  };

  static void backward(const GruBackward<T>& a) {
    const Shape& s = a.shape;
    const int64_t H = s.hidden, B = s.batch;
    Scratch<T> w_packed(ceil_div(H, N) * 3 * H * N);
    pack_panels<T, N>(w_packed.get(), a.w_hh, H, 1, 3 * H, 1, H);
    copy(a.dh0, a.dh_n, B * H);
    Backward job{a, w_packed.get(), a.dh0, {}};
    run_job(job, choose_threads(s, B * 3 * H * H, ceil_div(H, N)));
  }
};

}  // namespace
}  // namespace cpu
}  // namespace fastrnn
