// The cells on the CPU: one step of LSTM, GRU or Elman (tanh, relu) from x and h, both gate GEMMs and
// the cell in their epilogue, for a decoder that calls the cell once per step with the same weights.
// So the weights are packed once (pack, into the caller's tensor) and every step only reads them:
// W_ih as panels of depth I and W_hh as panels of depth H, each with the cell's gates interleaved per
// unit block as the layer forward packs W_hh (gemm.h). For a unit block and a tile of batch rows the
// two products accumulate into the same registers (LSTM, Elman: the cell adds them anyway) or into two
// sets (GRU: n = tanh(xn + r * hn) needs hn apart). The backward is the pointwise part only; the
// caller's GEMMs take it from there. Threads own unit blocks; a call's work is too small for more than
// one thread below a threshold (kMinCellWorkPerThread). Included by each isa_*.cpp; see api.h.
#pragma once

#include "common.h"

namespace fastrnn {
namespace cpu {
namespace {

template <class S, int N, int REGISTERS>
struct CellKernels {
  using T = typename ComputeOf<S>::type;
  using V = Vec<T, N>;
  static constexpr bool kStoredAsComputed = std::is_same_v<S, T>;

  static int gates_of(CellMode mode) { return mode == CellMode::lstm ? 4 : mode == CellMode::gru ? 3 : 1; }

  static bool pack(const CellPack<S>& a) {
    if (a.lanes != N) return false;
    pack_panels<T, N>(a.packed, a.w, 1, a.depth, a.depth, a.gates, a.units);
    return true;
  }

  // --- forward ---------------------------------------------------------------------------------

  struct Forward {
    const CellForward<S>& a;
    const T* x;  // [B, I] in T: a.x itself or a converted copy
    const T* h;  // [B, H] likewise
    int parity;  // the direction this call walks the unit blocks (serpentine, common.h): alternate calls alternate

    void run(int thread, int threads) {
      const Range mine = share(ceil_div(a.hidden, N), thread, threads);
      switch (a.mode) {
        case CellMode::lstm: return lstm(mine);
        case CellMode::gru: return gru(mine);
        default: return elman(mine, a.mode == CellMode::rnn_relu);
      }
    }

    V bias(const S* b, int64_t at, int width) const { return b ? load_n<V>(b + at, width) : V(T(0)); }

    void lstm(Range units) {
      const int64_t B = a.batch, I = a.input, H = a.hidden;
      const PanelGeometry<N, T> ih{I, 4}, hh{H, 4};
      for (int64_t index = 0; index < units.end - units.begin; ++index) {
        const int64_t block = serpentine(units, index, parity);
        const int64_t u0 = block * N;
        const int width = block_width<N>(H, u0);
        V b[4];
        for (int q = 0; q < 4; ++q) b[q] = bias(a.b_ih, q * H + u0, width) + bias(a.b_hh, q * H + u0, width);
        for_row_tiles<rows_per_tile(REGISTERS, 4)>(B, [&](auto tile, int64_t r0) {
          constexpr int MR = decltype(tile)::value;
          V acc[MR][4];
          zero(acc);
          accumulate(acc, x + r0 * I, I, I, a.packed_ih + ih.block_offset(block), ih.k_stride(), N);
          accumulate(acc, h + r0 * H, H, H, a.packed_hh + hh.block_offset(block), hh.k_stride(), N);
#pragma GCC unroll 8
          for (int m = 0; m < MR; ++m) {
            const int64_t at = (r0 + m) * H + u0;
            V i, f, g, o, c, h_new;
            lstm_cell_forward(acc[m][0] + b[0], acc[m][1] + b[1], acc[m][2] + b[2], acc[m][3] + b[3],
                              load_n<V>(a.c + at, width), i, f, g, o, c, h_new);
            store_n(h_new, a.h_new + at, width);
            store_n(c, a.c_new + at, width);
            if (a.saved) {
              S* out = a.saved + (r0 + m) * 4 * H + u0;
              store_n(i, out, width);
              store_n(f, out + H, width);
              store_n(g, out + 2 * H, width);
              store_n(o, out + 3 * H, width);
            }
          }
        });
      }
    }

    void gru(Range units) {
      const int64_t B = a.batch, I = a.input, H = a.hidden;
      const PanelGeometry<N, T> ih{I, 3}, hh{H, 3};
      for (int64_t index = 0; index < units.end - units.begin; ++index) {
        const int64_t block = serpentine(units, index, parity);
        const int64_t u0 = block * N;
        const int width = block_width<N>(H, u0);
        V bx[3], bh[3];
        for (int q = 0; q < 3; ++q) bx[q] = bias(a.b_ih, q * H + u0, width), bh[q] = bias(a.b_hh, q * H + u0, width);
        for_row_tiles<rows_per_tile(REGISTERS, 3)>(B, [&](auto tile, int64_t r0) {
          constexpr int MR = decltype(tile)::value;
          V gx[MR][3], gh[MR][3];
          zero(gx);
          zero(gh);
          accumulate(gx, x + r0 * I, I, I, a.packed_ih + ih.block_offset(block), ih.k_stride(), N);
          accumulate(gh, h + r0 * H, H, H, a.packed_hh + hh.block_offset(block), hh.k_stride(), N);
#pragma GCC unroll 8
          for (int m = 0; m < MR; ++m) {
            const int64_t at = (r0 + m) * H + u0;
            const V hn = gh[m][2] + bh[2];
            V r, z, n, h_new;
            gru_cell_forward(gx[m][0] + bx[0], gx[m][1] + bx[1], gx[m][2] + bx[2], gh[m][0] + bh[0],
                             gh[m][1] + bh[1], hn, load_n<V>(a.h + at, width), r, z, n, h_new);
            store_n(h_new, a.h_new + at, width);
            if (a.saved) {
              S* out = a.saved + (r0 + m) * 4 * H + u0;
              store_n(r, out, width);
              store_n(z, out + H, width);
              store_n(n, out + 2 * H, width);
              store_n(hn, out + 3 * H, width);
            }
          }
        });
      }
    }

    void elman(Range units, bool relu) {
      const int64_t B = a.batch, I = a.input, H = a.hidden;
      const PanelGeometry<N, T> ih{I, 1}, hh{H, 1};
      for_block_groups(units.begin, units.end, [&](auto group, int64_t first) {
        constexpr int NP = decltype(group)::value;
        V b[NP];  // b_ih + b_hh of the group's units, once for all its row tiles
        for (int q = 0; q < NP; ++q) {
          const int64_t u0 = (first + q) * N;
          b[q] = bias(a.b_ih, u0, block_width<N>(H, u0)) + bias(a.b_hh, u0, block_width<N>(H, u0));
        }
        for_row_tiles<rows_per_tile(REGISTERS, NP)>(B, [&](auto tile, int64_t r0) {
          constexpr int MR = decltype(tile)::value;
          V acc[MR][NP];
          zero(acc);
          accumulate(acc, x + r0 * I, I, I, a.packed_ih + ih.block_offset(first), ih.k_stride(), ih.block_offset(1));
          accumulate(acc, h + r0 * H, H, H, a.packed_hh + hh.block_offset(first), hh.k_stride(), hh.block_offset(1));
          // Not unrolled: a tanh per vector is all of this epilogue, and a copy of it per element of
          // every tile shape doubled the build time.
          for (int m = 0; m < MR; ++m)
            for (int q = 0; q < NP; ++q) {
              const int64_t u0 = (first + q) * N;
              store_n(rnn_cell_forward(acc[m][q] + b[q], relu), a.h_new + (r0 + m) * H + u0, block_width<N>(H, u0));
            }
        });
      }, parity);
    }
  };

  static bool forward(const CellForward<S>& a) {
    if (a.lanes != N) return false;
    const int64_t B = a.batch, I = a.input, H = a.hidden;
    const int threads = threads_for(a.max_threads, B * gates_of(a.mode) * H * (I + H), kMinCellWorkPerThread,
                                    ceil_div(H, N));
    // A decoder calls the cell with the same weights step after step: walked back and forth, the panels the
    // last call read last (still in cache) are this call's first. The order changes no result.
    // (A builtin, not std::atomic: no inline library code in an instruction-set translation unit.)
    static unsigned calls = 0;
    const int parity = static_cast<int>(__atomic_fetch_add(&calls, 1u, __ATOMIC_RELAXED) & 1);
    if constexpr (kStoredAsComputed) {
      Forward job{a, a.x, a.h, parity};
      run_job(job, threads);
    } else {  // low-precision storage: the GEMMs read T copies of x and h
      Scratch<T> copies(B * (I + H));
      convert(copies.get(), a.x, B * I);
      convert(copies.get() + B * I, a.h, B * H);
      Forward job{a, copies.get(), copies.get() + B * I, parity};
      run_job(job, threads);
    }
    return true;
  }

  // --- backward (pointwise) --------------------------------------------------------------------

  struct Backward {
    const CellBackward<S>& a;

    void run(int thread, int threads) {
      const Range mine = share(ceil_div(a.hidden, N), thread, threads);
      switch (a.mode) {
        case CellMode::lstm: return each(mine, [&](int64_t b, int64_t u0, int width) { lstm(b, u0, width); });
        case CellMode::gru: return each(mine, [&](int64_t b, int64_t u0, int width) { gru(b, u0, width); });
        default: {
          const bool relu = a.mode == CellMode::rnn_relu;
          const int64_t H = a.hidden;
          return each(mine, [&](int64_t b, int64_t u0, int width) {
            const int64_t at = b * H + u0;
            store_n(rnn_cell_backward(load_n<V>(a.dh + at, width), load_n<V>(a.h_new + at, width), relu),
                    a.dgx + at, width);
          });
        }
      }
    }

    template <class F>
    void each(Range blocks, F&& f) {
      for (int64_t block = blocks.begin; block < blocks.end; ++block) {
        const int64_t u0 = block * N;
        const int width = block_width<N>(a.hidden, u0);
        for (int64_t b = 0; b < a.batch; ++b) f(b, u0, width);
      }
    }

    void lstm(int64_t b, int64_t u0, int width) {
      const int64_t H = a.hidden, at = b * H + u0;
      const S* gate = a.saved + b * 4 * H + u0;
      V d_i, d_f, d_g, d_o, dc_prev;
      lstm_cell_backward(load_n<V>(a.dh + at, width), a.dc ? load_n<V>(a.dc + at, width) : V(T(0)),
                         load_n<V>(gate, width), load_n<V>(gate + H, width), load_n<V>(gate + 2 * H, width),
                         load_n<V>(gate + 3 * H, width), load_n<V>(a.c_new + at, width), load_n<V>(a.c + at, width),
                         d_i, d_f, d_g, d_o, dc_prev);
      S* out = a.dgx + b * 4 * H + u0;
      store_n(d_i, out, width);
      store_n(d_f, out + H, width);
      store_n(d_g, out + 2 * H, width);
      store_n(d_o, out + 3 * H, width);
      store_n(dc_prev, a.dc_prev + at, width);
    }

    void gru(int64_t b, int64_t u0, int width) {
      const int64_t H = a.hidden, at = b * H + u0;
      const S* saved = a.saved + b * 4 * H + u0;
      V d_r, d_z, d_n, d_hn, direct;
      gru_cell_backward(load_n<V>(a.dh + at, width), load_n<V>(saved, width), load_n<V>(saved + H, width),
                        load_n<V>(saved + 2 * H, width), load_n<V>(saved + 3 * H, width), load_n<V>(a.h + at, width),
                        d_r, d_z, d_n, d_hn, direct);
      S* gx = a.dgx + b * 3 * H + u0;
      S* gh = a.dgh + b * 3 * H + u0;
      store_n(d_r, gx, width);
      store_n(d_z, gx + H, width);
      store_n(d_n, gx + 2 * H, width);
      store_n(d_r, gh, width);
      store_n(d_z, gh + H, width);
      store_n(d_hn, gh + 2 * H, width);
      store_n(direct, a.dh_direct + at, width);
    }
  };

  static void backward(const CellBackward<S>& a) {
    // Pointwise: about as much work per unit as a few dozen multiply-adds.
    Backward job{a};
    run_job(job, threads_for(a.max_threads, a.batch * a.hidden * 32, kMinCellWorkPerThread, ceil_div(a.hidden, N)));
  }
};

}  // namespace
}  // namespace cpu
}  // namespace fastrnn
