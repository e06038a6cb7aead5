// The LSTM recurrence on the CPU, forward and backward, for one storage type S (float, double or
// bfloat16, computed in T = float or double), one vector width N (an instruction set) and one register
// budget. Included by each isa_*.cpp; see api.h for the contract.
//
// Threads own hidden units: each holds a share of the unit blocks (N units with all four gates), and
// per step computes h_{t-1} W_hh^T for its units with the cell applied in the GEMM's epilogue, then
// meets the others at one barrier (h is double-buffered, so the next step's reads never race this
// step's writes). With proj_size a second phase projects the new units through W_hr^T, split over the
// state's columns, behind a second barrier.
//
// The backward walks the steps in reverse: phase A turns the incoming gradient into the gate gradients
// of the thread's own units (the cell backward), a barrier, then phase B carries them into the previous
// step's hidden gradient, dG_t W_hh, for the thread's own state columns. The next phase A reads only its
// own columns, so one barrier per step suffices (two with proj_size, whose dh W_hr needs every column).
//
// Everything a GEMM reads (weights, h, the carried gradients) is kept in GemmT = GemmOf<S> (T, or bfloat16
// pairs where the variant multiplies them, gemm.h); the cell state and the carried gradients' sums stay
// in T, and what is stored for the caller is rounded to S only on the way out.
#pragma once

#include "common.h"

namespace fastrnn {
namespace cpu {
namespace {

template <class S, int N, int REGISTERS>
struct LstmKernels {
  using T = typename ComputeOf<S>::type;
  using GemmT = typename GemmOf<S>::type;
  using V = Vec<T, N>;
  static constexpr bool kGemmReadsStorage = std::is_same_v<S, GemmT>;
  static constexpr int kGateRows = rows_per_tile(REGISTERS, 4);

  // --- forward ---------------------------------------------------------------------------------

  struct Forward {
    const LstmForward<S>& a;
    const GemmT* w_packed;   // W_hh^T, 4 gates interleaved per unit block (depth R)
    const GemmT* wr_packed;  // W_hr^T in column panels (depth H), or null
    const GemmT* wi_packed;  // W_ih^T like W_hh^T (depth I) where the projection runs in the steps, or null
    GemmT* h_buffers[2];     // [B, R] each
    GemmT* units;            // [B, H] the unprojected o * tanh(c) (with proj_size)
    T* c;                // [B, H] the carried cell state
    Barrier barrier;

    void run(int thread, int threads) {
      const Shape& s = a.shape;
      const int64_t H = s.hidden, R = s.state, B = s.batch, G = 4 * H, I = a.in_steps.input;
      const Range my_units = share(ceil_div(H, N), thread, threads);
      const Range my_columns = share(ceil_div(R, N), thread, threads);
      const PanelGeometry<N, GemmT> gate_panels{R, 4}, proj_panels{H, 1}, input_panels{I, 4};
      int parity = 0;
      for (int64_t step = 0; step < s.steps; ++step) {
        const int64_t t = step_at(s, step), rows = live_rows(s, t);
        if (rows == 0) continue;  // every thread skips the same steps
        const GemmT* h_in = h_buffers[parity];
        GemmT* h_out = h_buffers[parity ^ 1];
        const S* xp = a.xp ? a.xp + t * B * G : nullptr;
        const GemmT* x_t = step_projection_rows(a.in_steps, wi_packed, t, B);
        const S* x_bias = x_t ? a.in_steps.bias : nullptr;
        S* gates = a.gates ? a.gates + t * B * G : nullptr;
        S* c_all = a.c_all ? a.c_all + t * B * H : nullptr;
        S* y = a.y + t * B * R;
        for (int64_t index = 0; index < my_units.end - my_units.begin; ++index) {
          const int64_t block = serpentine(my_units, index, parity);
          const int64_t u0 = block * N;
          const int width = block_width<N>(H, u0);
          const GemmT* panel = w_packed + gate_panels.block_offset(block);
          V bias[4];  // the projection's bias where it runs here (xp has it otherwise)
          for (int q = 0; q < 4; ++q) bias[q] = x_bias ? load_n<V>(x_bias + q * H + u0, width) : V(T(0));
          for_row_tiles<kGateRows>(rows, [&](auto tile, int64_t r0) {
            constexpr int MR = decltype(tile)::value;
            V acc[MR][4];
            if (x_t) {
              for (int m = 0; m < MR; ++m)
                for (int q = 0; q < 4; ++q) acc[m][q] = bias[q];
              accumulate(acc, x_t + r0 * I, I, I, wi_packed + input_panels.block_offset(block),
                         input_panels.k_stride(), input_panels.gate_stride());
            } else {
              // The epilogue's inputs are cold (xp was written long ago): fetch them during the GEMM.
              for (int m = 0; m < MR; ++m)
                for (int q = 0; q < 4; ++q) __builtin_prefetch(xp + (r0 + m) * G + q * H + u0);
              zero(acc);
            }
            accumulate(acc, h_in + r0 * R, R, R, panel, gate_panels.k_stride(), gate_panels.gate_stride());
#pragma GCC unroll 8
            for (int m = 0; m < MR; ++m) {
              const int64_t b = r0 + m;
              V pre[4] = {acc[m][0], acc[m][1], acc[m][2], acc[m][3]};
              if (xp)
                for (int q = 0; q < 4; ++q) pre[q] += load_n<V>(xp + b * G + q * H + u0, width);
              V i, f, g, o, c_new, h;
              lstm_cell_forward(pre[0], pre[1], pre[2], pre[3], load_n<V>(c + b * H + u0, width), i, f, g, o, c_new, h);
              if (gates) {  // kept for the backward; an inference call (no gates) skips the stores
                S* gate_out = gates + b * G + u0;
                store_n(i, gate_out, width);
                store_n(f, gate_out + H, width);
                store_n(g, gate_out + 2 * H, width);
                store_n(o, gate_out + 3 * H, width);
                store_n(c_new, c_all + b * H + u0, width);
              }
              store_n(c_new, c + b * H + u0, width);
              if (a.w_hr) {
                store_n(h, units + b * H + u0, width);
              } else {
                store_n(h, h_out + b * R + u0, width);
                store_n(h, y + b * R + u0, width);
              }
            }
          });
        }
        if (a.w_hr) {
          barrier_wait(&barrier, threads);
          project(rows, my_columns, proj_panels, h_out, y);
        }
        barrier_wait(&barrier, threads);
        parity ^= 1;
      }
    }

    // h_t = units W_hr^T for the thread's own state columns.
    void project(int64_t rows, Range columns, PanelGeometry<N, GemmT> panels, GemmT* h_out, S* y) {
      const int64_t H = a.shape.hidden, R = a.shape.state;
      for_block_groups(columns.begin, columns.end, [&](auto group, int64_t first) {
        constexpr int NP = decltype(group)::value;
        for_row_tiles<rows_per_tile(REGISTERS, NP)>(rows, [&](auto tile, int64_t r0) {
          constexpr int MR = decltype(tile)::value;
          V acc[MR][NP];
          zero(acc);
          accumulate(acc, units + r0 * H, H, H, wr_packed + panels.block_offset(first), panels.k_stride(),
                     panels.block_offset(1));
#pragma GCC unroll 8
          for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 4
            for (int q = 0; q < NP; ++q) {
              const int64_t col = (first + q) * N;
              const int width = block_width<N>(R, col);
              store_n(acc[m][q], h_out + (r0 + m) * R + col, width);
              store_n(acc[m][q], y + (r0 + m) * R + col, width);
            }
          }
        });
      });
    }
  };

  static void forward(const LstmForward<S>& a) {
    const Shape& s = a.shape;
    const int64_t H = s.hidden, R = s.state, B = s.batch;
    const int64_t unit_blocks = ceil_div(H, N);
    const auto w_packed = PackedPanels<GemmT, N>::from_rows(a.w_hh, R, 4, H, a.w_hh_panels);
    const auto wr_packed = PackedPanels<GemmT, N>::from_rows(a.w_hr, H, 1, a.w_hr ? R : 0, a.w_hr_panels);
    const bool project_here = projects_here<GemmT>(a.in_steps);
    const auto wi_packed = step_projection_panels<GemmT, N>(a.in_steps, 4, H);
    const HiddenBuffers<GemmT> h(a.h0, B * R);
    Scratch<GemmT> units(a.w_hr ? B * H : 0);
    Scratch<T> c(B * H);
    convert(c.get(), a.c0, B * H);
    Forward job{a, w_packed.get(), a.w_hr ? wr_packed.get() : nullptr, project_here ? wi_packed.get() : nullptr,
                {h[0], h[1]}, units.get(), c.get(), {}};
    const int64_t blocks = a.w_hr ? (unit_blocks < ceil_div(R, N) ? unit_blocks : ceil_div(R, N)) : unit_blocks;
    const int64_t depth = R + (project_here ? a.in_steps.input : 0);  // of each step's gate GEMMs
    run_job(job, choose_threads(s, B * 4 * H * depth + (a.w_hr ? B * H * R : 0), blocks));
    gather_final_state(s, a.y, a.h0, a.h_n, R);
    convert(a.c_n, c.get(), B * H);  // rows keep their cell state once they stop, so c is final
  }

  // --- backward --------------------------------------------------------------------------------

  struct Backward {
    const LstmBackward<S>& a;
    const GemmT* w_packed;   // W_hh in column panels over its R columns (depth 4H)
    const GemmT* wr_packed;  // W_hr in column panels over its H columns (depth R), or null
    T* dh;               // [B, R] the carried hidden gradient
    T* dc;               // [B, H] the carried cell gradient
    // [2][B, 4H] this step's gate gradients in GemmT (the carry GEMM reads them), or null: a.dgates. Two
    // buffers: a thread may start the next step's cell backward while another still reads this one's.
    GemmT* dgates_steps;
    GemmT* dh_step;          // [B, R] this step's dh_t in GemmT (the W_hr GEMM reads it), or null: a.dh_all
    Barrier barrier;

    void run(int thread, int threads) {
      const Shape& s = a.shape;
      const int64_t H = s.hidden, R = s.state, B = s.batch, G = 4 * H;
      const Range my_units = share(ceil_div(H, N), thread, threads);
      const Range my_columns = share(ceil_div(R, N), thread, threads);
      const PanelGeometry<N, GemmT> proj_panels{R, 1};
      int parity = 0;
      for (int64_t step = s.steps - 1; step >= 0; --step) {
        const int64_t t = step_at(s, step), rows = live_rows(s, t);
        if (rows == 0) continue;
        GemmT* dgates_step = dgates_steps ? dgates_steps + parity * B * 4 * H : nullptr;
        parity ^= 1;
        const S* dy = a.dy + t * B * R;
        S* dgates = a.dgates + t * B * G;
        GemmT* dgates_gemm = stored_or(dgates_step, dgates);
        if (a.w_hr) {
          // dh_t = dy_t + carry for the own state columns, kept (as dh_all) for dh_t W_hr and for dW_hr.
          S* dh_all = a.dh_all + t * B * R;
          GemmT* dh_gemm = stored_or(dh_step, dh_all);
          for (int64_t block = my_columns.begin; block < my_columns.end; ++block) {
            const int64_t col = block * N;
            const int width = block_width<N>(R, col);
            for (int64_t b = 0; b < rows; ++b) {
              const V sum = load_n<V>(dy + b * R + col, width) + load_n<V>(dh + b * R + col, width);
              store_n(sum, dh_all + b * R + col, width);
              if (dh_step) store_n(sum, dh_step + b * R + col, width);
            }
          }
          barrier_wait(&barrier, threads);
          cell_backward_projected(t, rows, my_units, proj_panels, dh_gemm, dgates, dgates_step);
        } else {
          cell_backward(t, rows, my_units, dy, dgates, dgates_step);
        }
        barrier_wait(&barrier, threads);
        carry(rows, my_columns, dgates_gemm, parity);
      }
    }

    // The GEMM operand: a scratch copy in GemmT, or (when S is GemmT) the stored output itself.
    static GemmT* stored_or(GemmT* scratch, S* stored) {
      if constexpr (kGemmReadsStorage) return scratch ? scratch : stored;
      else return scratch;
    }

    // The cell backward of one (row, unit block) with the hidden gradient dh_units; the gate gradients go
    // to dgates (stored) and, if not null, to dgates_step (their GemmT copy for the carry GEMM).
    FASTRNN_HD void cell(int64_t t, int64_t b, int64_t u0, int width, V dh_units, S* dgates, GemmT* dgates_step) {
      const int64_t H = a.shape.hidden, B = a.shape.batch, G = 4 * H;
      const S* gate = a.gates + (t * B + b) * G + u0;
      const int64_t at = (t * B + b) * H + u0;
      V d_i, d_f, d_g, d_o, dc_prev;
      lstm_cell_backward(dh_units, load_n<V>(dc + b * H + u0, width), load_n<V>(gate, width),
                         load_n<V>(gate + H, width), load_n<V>(gate + 2 * H, width), load_n<V>(gate + 3 * H, width),
                         load_n<V>(a.c_all + at, width), load_n<V>(a.c_prev + at, width), d_i, d_f, d_g, d_o, dc_prev);
      S* out = dgates + b * G + u0;
      store_n(d_i, out, width);
      store_n(d_f, out + H, width);
      store_n(d_g, out + 2 * H, width);
      store_n(d_o, out + 3 * H, width);
      if (dgates_step) {
        GemmT* copy = dgates_step + b * G + u0;
        store_n(d_i, copy, width);
        store_n(d_f, copy + H, width);
        store_n(d_g, copy + 2 * H, width);
        store_n(d_o, copy + 3 * H, width);
      }
      store_n(dc_prev, dc + b * H + u0, width);
    }

    void cell_backward(int64_t t, int64_t rows, Range units, const S* dy, S* dgates, GemmT* dgates_step) {
      const int64_t H = a.shape.hidden;  // R == H here
      for (int64_t block = units.begin; block < units.end; ++block) {
        const int64_t u0 = block * N;
        const int width = block_width<N>(H, u0);
        for (int64_t b = 0; b < rows; ++b)
          cell(t, b, u0, width, load_n<V>(dy + b * H + u0, width) + load_n<V>(dh + b * H + u0, width), dgates,
               dgates_step);
      }
    }

    // With proj_size: the units' gradient is dh_t W_hr, computed here for the own units.
    void cell_backward_projected(int64_t t, int64_t rows, Range units, PanelGeometry<N, GemmT> panels, const GemmT* dh_t,
                                 S* dgates, GemmT* dgates_step) {
      const int64_t H = a.shape.hidden, R = a.shape.state;
      for_block_groups(units.begin, units.end, [&](auto group, int64_t first) {
        constexpr int NP = decltype(group)::value;
        for_row_tiles<rows_per_tile(REGISTERS, NP)>(rows, [&](auto tile, int64_t r0) {
          constexpr int MR = decltype(tile)::value;
          V acc[MR][NP];
          zero(acc);
          accumulate(acc, dh_t + r0 * R, R, R, wr_packed + panels.block_offset(first), panels.k_stride(),
                     panels.block_offset(1));
#pragma GCC unroll 8
          for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
            for (int q = 0; q < NP; ++q) {
              const int64_t u0 = (first + q) * N;
              cell(t, r0 + m, u0, block_width<N>(H, u0), acc[m][q], dgates, dgates_step);
            }
        });
      });
    }

    // dh_{t-1} = dG_t W_hh for the own state columns.
    void carry(int64_t rows, Range columns, const GemmT* dgates, int parity) {
      store_product<REGISTERS, N>(dh, a.shape.state, rows, columns.begin, columns.end, dgates, 4 * a.shape.hidden,
                                  w_packed, parity);
    }
  };

  static void backward(const LstmBackward<S>& a) {
    const Shape& s = a.shape;
    const int64_t H = s.hidden, R = s.state, B = s.batch;
    const auto w_packed = PackedPanels<GemmT, N>::from_columns(a.w_hh, 4 * H, R, a.w_hh_panels);
    const auto wr_packed = PackedPanels<GemmT, N>::from_columns(a.w_hr, R, a.w_hr ? H : 0, a.w_hr_panels);
    Scratch<T> dh(B * R), dc(B * H);
    convert(dh.get(), a.dh_n, B * R);
    convert(dc.get(), a.dc_n, B * H);
    // Storage the GEMMs cannot read (bfloat16 without the pair products): they read GemmT copies of it.
    Scratch<GemmT> dgates_steps(kGemmReadsStorage ? 0 : 2 * B * 4 * H), dh_step(kGemmReadsStorage || !a.w_hr ? 0 : B * R);
    Backward job{a,
                 w_packed.get(),
                 a.w_hr ? wr_packed.get() : nullptr,
                 dh.get(),
                 dc.get(),
                 kGemmReadsStorage ? nullptr : dgates_steps.get(),
                 kGemmReadsStorage || !a.w_hr ? nullptr : dh_step.get(),
                 {}};
    const int64_t blocks = ceil_div(H, N) < ceil_div(R, N) ? ceil_div(H, N) : ceil_div(R, N);
    run_job(job, choose_threads(s, B * 4 * H * R + (a.w_hr ? B * H * R : 0), blocks));
    convert(a.dh0, dh.get(), B * R);
    convert(a.dc0, dc.get(), B * H);
  }
};

}  // namespace
}  // namespace cpu
}  // namespace fastrnn
