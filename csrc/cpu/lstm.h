// The LSTM recurrence on the CPU, forward and backward, for one vector width N (an instruction set) and
// one register budget. Included by each isa_*.cpp; see api.h for the contract.
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
#pragma once

#include "common.h"

namespace fastrnn {
namespace cpu {
namespace {

template <class T, int N, int REGISTERS>
struct LstmKernels {
  using V = Vec<T, N>;
  static constexpr int kGateRows = rows_per_tile(REGISTERS, 4);

  // --- forward ---------------------------------------------------------------------------------

  struct Forward {
    const LstmForward<T>& a;
    const T* w_packed;   // W_hh^T, 4 gates interleaved per unit block (depth R)
    const T* wr_packed;  // W_hr^T in column panels (depth H), or null
    T* h_buffers[2];     // [B, R] each
    T* units;            // [B, H] the unprojected o * tanh(c) (with proj_size)
    T* c;                // [B, H] the carried cell state
    Barrier barrier;

    void run(int thread, int threads) {
      const Shape& s = a.shape;
      const int64_t H = s.hidden, R = s.state, B = s.batch, G = 4 * H;
      const Range my_units = share(ceil_div(H, N), thread, threads);
      const Range my_columns = share(ceil_div(R, N), thread, threads);
      const PanelGeometry<N> gate_panels{R, 4}, proj_panels{H, 1};
      int parity = 0;
      for (int64_t step = 0; step < s.steps; ++step) {
        const int64_t t = step_at(s, step), rows = live_rows(s, t);
        if (rows == 0) continue;  // every thread skips the same steps
        const T* h_in = h_buffers[parity];
        T* h_out = h_buffers[parity ^ 1];
        const T* xp = a.xp + t * B * G;
        T* gates = a.gates ? a.gates + t * B * G : nullptr;
        T* c_all = a.c_all ? a.c_all + t * B * H : nullptr;
        T* y = a.y + t * B * R;
        for (int64_t block = my_units.begin; block < my_units.end; ++block) {
          const int64_t u0 = block * N;
          const int width = static_cast<int>(H - u0 < N ? H - u0 : N);
          const T* panel = w_packed + gate_panels.block_offset(block);
          for_row_tiles<kGateRows>(rows, [&](auto tile, int64_t r0) {
            constexpr int MR = decltype(tile)::value;
            // The epilogue's inputs are cold (xp was written long ago): fetch them during the GEMM.
            for (int m = 0; m < MR; ++m)
              for (int q = 0; q < 4; ++q) __builtin_prefetch(xp + (r0 + m) * G + q * H + u0);
            V acc[MR][4];
            zero(acc);
            accumulate(acc, h_in + r0 * R, R, R, panel, gate_panels.k_stride(), N);
#pragma GCC unroll 8
            for (int m = 0; m < MR; ++m) {
              const int64_t b = r0 + m;
              const T* x = xp + b * G + u0;
              V i, f, g, o, c_new, h;
              lstm_cell_forward(acc[m][0] + V::load_n(x, width), acc[m][1] + V::load_n(x + H, width),
                                acc[m][2] + V::load_n(x + 2 * H, width), acc[m][3] + V::load_n(x + 3 * H, width),
                                V::load_n(c + b * H + u0, width), i, f, g, o, c_new, h);
              if (gates) {  // kept for the backward; an inference call (no gates) skips the stores
                T* gate_out = gates + b * G + u0;
                i.store_n(gate_out, width);
                f.store_n(gate_out + H, width);
                g.store_n(gate_out + 2 * H, width);
                o.store_n(gate_out + 3 * H, width);
                c_new.store_n(c_all + b * H + u0, width);
              }
              c_new.store_n(c + b * H + u0, width);
              if (a.w_hr) {
                h.store_n(units + b * H + u0, width);
              } else {
                h.store_n(h_out + b * R + u0, width);
                h.store_n(y + b * R + u0, width);
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
    void project(int64_t rows, Range columns, PanelGeometry<N> panels, T* h_out, T* y) {
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
              const int width = static_cast<int>(R - col < N ? R - col : N);
              acc[m][q].store_n(h_out + (r0 + m) * R + col, width);
              acc[m][q].store_n(y + (r0 + m) * R + col, width);
            }
          }
        });
      });
    }
  };

  static void forward(const LstmForward<T>& a) {
    const Shape& s = a.shape;
    const int64_t H = s.hidden, R = s.state, B = s.batch;
    const int64_t unit_blocks = ceil_div(H, N);
    Scratch<T> w_packed(unit_blocks * R * 4 * N);
    pack_panels<T, N>(w_packed.get(), a.w_hh, 1, R, R, 4, H);
    Scratch<T> wr_packed(a.w_hr ? ceil_div(R, N) * H * N : 0);
    if (a.w_hr) pack_panels<T, N>(wr_packed.get(), a.w_hr, 1, H, H, 1, R);
    Scratch<T> h_buffers(2 * B * R), units(a.w_hr ? B * H : 0);
    copy(h_buffers.get(), a.h0, B * R);
    copy(h_buffers.get() + B * R, a.h0, B * R);  // rows that start late (reverse, lengths) find h0 in both
    copy(a.c_n, a.c0, B * H);                    // c_n is the carried cell state
    Forward job{a, w_packed.get(), a.w_hr ? wr_packed.get() : nullptr, {h_buffers.get(), h_buffers.get() + B * R},
                units.get(), a.c_n, {}};
    const int64_t blocks = a.w_hr ? (unit_blocks < ceil_div(R, N) ? unit_blocks : ceil_div(R, N)) : unit_blocks;
    run_job(job, choose_threads(s, B * 4 * H * R + (a.w_hr ? B * H * R : 0), blocks));
    gather_final_state(s, a.y, a.h0, a.h_n, R);
  }

  // --- backward --------------------------------------------------------------------------------

  struct Backward {
    const LstmBackward<T>& a;
    const T* w_packed;   // W_hh in column panels over its R columns (depth 4H)
    const T* wr_packed;  // W_hr in column panels over its H columns (depth R), or null
    T* dh;               // [B, R] the carried hidden gradient (a.dh0)
    T* dc;               // [B, H] the carried cell gradient (a.dc0)
    Barrier barrier;

    void run(int thread, int threads) {
      const Shape& s = a.shape;
      const int64_t H = s.hidden, R = s.state, B = s.batch, G = 4 * H;
      const Range my_units = share(ceil_div(H, N), thread, threads);
      const Range my_columns = share(ceil_div(R, N), thread, threads);
      const PanelGeometry<N> carry_panels{G, 1}, proj_panels{R, 1};
      for (int64_t step = s.steps - 1; step >= 0; --step) {
        const int64_t t = step_at(s, step), rows = live_rows(s, t);
        if (rows == 0) continue;
        const T* dy = a.dy + t * B * R;
        T* dgates = a.dgates + t * B * G;
        if (a.w_hr) {
          // dh_t = dy_t + carry, for the own state columns; kept in dh_all for the W_hr product and dW_hr.
          T* dh_all = a.dh_all + t * B * R;
          for (int64_t row = 0; row < rows; ++row)
            for (int64_t col = my_columns.begin * N; col < my_columns.end * N && col < R; ++col)
              dh_all[row * R + col] = dy[row * R + col] + dh[row * R + col];
          barrier_wait(&barrier, threads);
          cell_backward_projected(t, rows, my_units, proj_panels, dh_all, dgates);
        } else {
          cell_backward(t, rows, my_units, dy, dgates);
        }
        barrier_wait(&barrier, threads);
        carry(rows, my_columns, carry_panels, dgates);
      }
    }

    // The cell backward of one (row, unit block) with the hidden gradient dh_units.
    FASTRNN_HD void cell(int64_t t, int64_t b, int64_t u0, int width, V dh_units, T* dgates) {
      const int64_t H = a.shape.hidden, B = a.shape.batch, G = 4 * H;
      const T* gate = a.gates + (t * B + b) * G + u0;
      const int64_t at = (t * B + b) * H + u0;
      V d_i, d_f, d_g, d_o, dc_prev;
      lstm_cell_backward(dh_units, V::load_n(dc + b * H + u0, width), V::load_n(gate, width),
                         V::load_n(gate + H, width), V::load_n(gate + 2 * H, width), V::load_n(gate + 3 * H, width),
                         V::load_n(a.c_all + at, width), V::load_n(a.c_prev + at, width), d_i, d_f, d_g, d_o, dc_prev);
      T* out = dgates + b * G + u0;
      d_i.store_n(out, width);
      d_f.store_n(out + H, width);
      d_g.store_n(out + 2 * H, width);
      d_o.store_n(out + 3 * H, width);
      dc_prev.store_n(dc + b * H + u0, width);
    }

    void cell_backward(int64_t t, int64_t rows, Range units, const T* dy, T* dgates) {
      const int64_t H = a.shape.hidden;  // R == H here
      for (int64_t block = units.begin; block < units.end; ++block) {
        const int64_t u0 = block * N;
        const int width = static_cast<int>(H - u0 < N ? H - u0 : N);
        for (int64_t b = 0; b < rows; ++b)
          cell(t, b, u0, width, V::load_n(dy + b * H + u0, width) + V::load_n(dh + b * H + u0, width), dgates);
      }
    }

    // With proj_size: the units' gradient is dh_t W_hr, computed here for the own units.
    void cell_backward_projected(int64_t t, int64_t rows, Range units, PanelGeometry<N> panels, const T* dh_all,
                                 T* dgates) {
      const int64_t H = a.shape.hidden, R = a.shape.state;
      for_block_groups(units.begin, units.end, [&](auto group, int64_t first) {
        constexpr int NP = decltype(group)::value;
        for_row_tiles<rows_per_tile(REGISTERS, NP)>(rows, [&](auto tile, int64_t r0) {
          constexpr int MR = decltype(tile)::value;
          V acc[MR][NP];
          zero(acc);
          accumulate(acc, dh_all + r0 * R, R, R, wr_packed + panels.block_offset(first), panels.k_stride(),
                     panels.block_offset(1));
#pragma GCC unroll 8
          for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
            for (int q = 0; q < NP; ++q) {
              const int64_t u0 = (first + q) * N;
              cell(t, r0 + m, u0, static_cast<int>(H - u0 < N ? H - u0 : N), acc[m][q], dgates);
            }
        });
      });
    }

    // dh_{t-1} = dG_t W_hh for the own state columns.
    void carry(int64_t rows, Range columns, PanelGeometry<N> panels, const T* dgates) {
      const int64_t R = a.shape.state, G = 4 * a.shape.hidden;
      for_block_groups(columns.begin, columns.end, [&](auto group, int64_t first) {
        constexpr int NP = decltype(group)::value;
        for_row_tiles<rows_per_tile(REGISTERS, NP)>(rows, [&](auto tile, int64_t r0) {
          constexpr int MR = decltype(tile)::value;
          V acc[MR][NP];
          zero(acc);
          accumulate(acc, dgates + r0 * G, G, G, w_packed + panels.block_offset(first), panels.k_stride(),
                     panels.block_offset(1));
#pragma GCC unroll 8
          for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
            for (int q = 0; q < NP; ++q) {
              const int64_t col = (first + q) * N;
              acc[m][q].store_n(dh + (r0 + m) * R + col, static_cast<int>(R - col < N ? R - col : N));
            }
        });
      });
    }
  };

  static void backward(const LstmBackward<T>& a) {
    const Shape& s = a.shape;
    const int64_t H = s.hidden, R = s.state, B = s.batch;
    Scratch<T> w_packed(ceil_div(R, N) * 4 * H * N);
    pack_panels<T, N>(w_packed.get(), a.w_hh, R, 1, 4 * H, 1, R);
    Scratch<T> wr_packed(a.w_hr ? ceil_div(H, N) * R * N : 0);
    if (a.w_hr) pack_panels<T, N>(wr_packed.get(), a.w_hr, H, 1, R, 1, H);
    copy(a.dh0, a.dh_n, B * R);
    copy(a.dc0, a.dc_n, B * H);
    Backward job{a, w_packed.get(), a.w_hr ? wr_packed.get() : nullptr, a.dh0, a.dc0, {}};
    const int64_t blocks = ceil_div(H, N) < ceil_div(R, N) ? ceil_div(H, N) : ceil_div(R, N);
    run_job(job, choose_threads(s, B * 4 * H * R + (a.w_hr ? B * H * R : 0), blocks));
  }
};

}  // namespace
}  // namespace cpu
}  // namespace fastrnn
