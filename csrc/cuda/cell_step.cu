// The cells on CUDA (LSTMCell, GRUCell, RNNCell): one step, the contract of
// fastrnn/backends/reference.py's cell_forward and cell_backward.
//
// Forward, one launch: each CTA owns a slice of units with all their gates and a block of batch rows,
// and computes [x | h] [W_ih | W_hh]^T for them as one block GEMM over I + H (plan.h's stepwise phase,
// W streamed through shared memory), then the cell (csrc/cell.h) with both biases in its epilogue.
// The GRU's candidate takes two rows per unit, its input part and its hidden part apart, because its
// reset gate multiplies only the hidden part. Backward: the pointwise part only, one thread per
// (row, unit); the gradient GEMMs run in torch (fastrnn/cell_step.py).
#include "api.h"
#include "launch.cuh"
#include "tile.cuh"

namespace fastrnn {
namespace cuda {
namespace {

template <class T>
struct CellForwardParams {
  Geometry g;
  CellMode mode;
  int input;
  const T* x;
  const T* h;
  const T* c;
  const T* w_ih;
  const T* w_hh;
  const T* b_ih;  // null without biases
  const T* b_hh;
  T* h_new;
  T* c_new;
  T* saved;  // null: nothing kept
};

// Row n of a CTA's slice of [W_ih | W_hh]: GEMM gate n / U of unit u0 + n % U. Each GEMM gate reads one
// gate row of W_ih and one of W_hh (-1: none, zeros): the GRU's 2 is its candidate's input part, 3 the
// hidden part.
template <class T>
struct StackedRows {
  static constexpr bool kAlongSlice = false;  // rows of W_ih and W_hh, contiguous along k
  const T* w_ih;
  const T* w_hh;
  int gates, hidden, input, per_slice, first;
  bool gru;
  __device__ T operator()(int n, int k) const {
    const int gate = n / per_slice, u = first + n % per_slice;
    if (gate >= gates || u >= hidden) return zero<T>();
    const int ih_gate = gru && gate == 3 ? -1 : gate;
    const int hh_gate = gru ? (gate == 2 ? -1 : gate == 3 ? 2 : gate) : gate;
    if (k < input) return ih_gate < 0 ? zero<T>() : w_ih[(ih_gate * static_cast<int64_t>(hidden) + u) * input + k];
    return hh_gate < 0 ? zero<T>() : w_hh[(hh_gate * static_cast<int64_t>(hidden) + u) * hidden + k - input];
  }
};

template <class T, Math M>
__global__ void __launch_bounds__(kMaxThreads, 1) cell_forward_kernel(const __grid_constant__ CellForwardParams<T> p) {
  FASTRNN_DYNAMIC_SHARED(shared);
  const Geometry& g = p.g;
  const SharedTiles<T> smem{shared, g};
  const int H = g.hidden, I = p.input;
  const bool gru = p.mode == CellMode::gru, lstm = p.mode == CellMode::lstm;
  const Assignment mine = assignment(g, 0);
  const PhaseGeometry& ph = g.phase[0];
  const int U = ph.slice, u0 = mine.slice * U, units = min_int(U, H - u0);
  const StackedRows<T> rows_of_w{p.w_ih, p.w_hh, ph.gates, H, I, U, u0, gru};
  const RowSource<T> a_rows{p.x, I, I, p.h, H};
  auto every_row = [](int, int) { return true; };
  // Both biases of gate `gate` of unit u (0 without biases).
  auto bias = [&](int gate, int u) {
    const int64_t at = gate * static_cast<int64_t>(H) + u;
    return p.b_ih ? to_acc(p.b_ih[at]) + to_acc(p.b_hh[at]) : Acc<T>(0);
  };
  auto epilogue = [&](int row, int rows, bool, const TileResult<Acc<T>>& acc) {
    for (int index = static_cast<int>(threadIdx.x); index < rows * units; index += static_cast<int>(blockDim.x)) {
      const int i = index / units, j = index % units, b = row + i, u = u0 + j;
      const int64_t bu = static_cast<int64_t>(b) * H + u;
      T* saved = p.saved ? p.saved + static_cast<int64_t>(b) * 4 * H + u : nullptr;
      if (lstm) {
        Acc<T> gi, gf, gg, go, c, h;
        lstm_cell_forward(acc(i, j) + bias(0, u), acc(i, U + j) + bias(1, u), acc(i, 2 * U + j) + bias(2, u),
                          acc(i, 3 * U + j) + bias(3, u), to_acc(p.c[bu]), gi, gf, gg, go, c, h);
        p.h_new[bu] = store<T>(h);
        p.c_new[bu] = store<T>(c);
        if (saved) {
          saved[0] = store<T>(gi);
          saved[H] = store<T>(gf);
          saved[2 * H] = store<T>(gg);
          saved[3 * H] = store<T>(go);
        }
      } else if (gru) {
        const int64_t n_at = 2 * static_cast<int64_t>(H) + u;
        const Acc<T> xn = acc(i, 2 * U + j) + (p.b_ih ? to_acc(p.b_ih[n_at]) : Acc<T>(0));
        const Acc<T> hn = acc(i, 3 * U + j) + (p.b_hh ? to_acc(p.b_hh[n_at]) : Acc<T>(0));
        Acc<T> r, z, n, h;
        gru_cell_forward(acc(i, j) + bias(0, u), acc(i, U + j) + bias(1, u), xn, Acc<T>(0), Acc<T>(0), hn,
                         to_acc(p.h[bu]), r, z, n, h);
        p.h_new[bu] = store<T>(h);
        if (saved) {
          saved[0] = store<T>(r);
          saved[H] = store<T>(z);
          saved[2 * H] = store<T>(n);
          saved[3 * H] = store<T>(hn);
        }
      } else {
        p.h_new[bu] = store<T>(rnn_cell_forward(acc(i, j) + bias(0, u), p.mode == CellMode::rnn_relu));
      }
    }
  };
  run_phase<T, M>(g, smem, 0, mine.row_begin, mine.row_end, a_rows, rows_of_w, every_row, epilogue);
}

template <class T>
struct CellBackwardParams {
  CellMode mode;
  int batch, hidden;
  const T* dh;
  const T* dc;  // null: zero
  const T* h;
  const T* c;
  const T* h_new;
  const T* c_new;
  const T* saved;
  T* dgx;
  T* dgh;
  T* direct;
  T* dc_prev;
};

template <class T>
__global__ void __launch_bounds__(kMaxThreads, 1) cell_backward_kernel(const __grid_constant__ CellBackwardParams<T> p) {
  const int H = p.hidden;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= static_cast<int64_t>(p.batch) * H) return;  // no block barrier follows
  const int64_t b = index / H, u = index % H;
  const Acc<T> dh = to_acc(p.dh[index]);
  if (p.mode == CellMode::lstm) {
    const T* gate = p.saved + b * 4 * H + u;
    Acc<T> di, df, dg, d_o, dc_prev;
    lstm_cell_backward(dh, p.dc ? to_acc(p.dc[index]) : Acc<T>(0), to_acc(gate[0]), to_acc(gate[H]),
                       to_acc(gate[2 * H]), to_acc(gate[3 * H]), to_acc(p.c_new[index]), to_acc(p.c[index]), di, df,
                       dg, d_o, dc_prev);
    T* out = p.dgx + b * 4 * H + u;
    out[0] = store<T>(di);
    out[H] = store<T>(df);
    out[2 * H] = store<T>(dg);
    out[3 * H] = store<T>(d_o);
    p.dc_prev[index] = store<T>(dc_prev);
  } else if (p.mode == CellMode::gru) {
    const T* sv = p.saved + b * 4 * H + u;
    Acc<T> dr, dz, dn, d_hn, direct;
    gru_cell_backward(dh, to_acc(sv[0]), to_acc(sv[H]), to_acc(sv[2 * H]), to_acc(sv[3 * H]), to_acc(p.h[index]), dr,
                      dz, dn, d_hn, direct);
    T* dx = p.dgx + b * 3 * H + u;
    T* dhh = p.dgh + b * 3 * H + u;
    dx[0] = dhh[0] = store<T>(dr);
    dx[H] = dhh[H] = store<T>(dz);
    dx[2 * H] = store<T>(dn);
    dhh[2 * H] = store<T>(d_hn);
    p.direct[index] = store<T>(direct);
  } else {
    p.dgx[index] = store<T>(rnn_cell_backward(dh, to_acc(p.h_new[index]), p.mode == CellMode::rnn_relu));
  }
}

// --- host ---------------------------------------------------------------------------------------------

Kernel kernel_of(CellMode mode) {
  return mode == CellMode::lstm ? Kernel::lstm_cell : mode == CellMode::gru ? Kernel::gru_cell : Kernel::rnn_cell;
}

// A step is one launch: the stepwise plan, whatever strategy was asked for the layers.
Options stepwise(Options options) {
  options.strategy = Strategy::stepwise;
  return options;
}

template <class T, Math M>
Plan plan_cell(Kernel which, const Problem& problem, const Options& options) {
  return plan_for(&cell_forward_kernel<T, M>, which, problem, stepwise(options));
}

template <class T, Math M>
void run_forward(const CellForward& a, const Options& o) {
  Problem problem{1, a.batch, a.hidden, a.hidden, false, false, a.dtype, nullptr, a.input};
  CellForwardParams<T> p{};
  p.mode = a.mode;
  p.input = static_cast<int>(a.input);
  p.x = static_cast<const T*>(a.x);
  p.h = static_cast<const T*>(a.h);
  p.c = static_cast<const T*>(a.c);
  p.w_ih = static_cast<const T*>(a.w_ih);
  p.w_hh = static_cast<const T*>(a.w_hh);
  p.b_ih = static_cast<const T*>(a.b_ih);
  p.b_hh = static_cast<const T*>(a.b_hh);
  p.h_new = static_cast<T*>(a.h_new);
  p.c_new = static_cast<T*>(a.c_new);
  p.saved = static_cast<T*>(a.saved);
  const Plan plan = plan_cell<T, M>(kernel_of(a.mode), problem, o);
  run_plan(&cell_forward_kernel<T, M>, p, plan.geometry, nullptr, o.stream);
}

template <class T>
void run_backward(const CellBackward& a, const Options& o) {
  CellBackwardParams<T> p{};
  p.mode = a.mode;
  p.batch = static_cast<int>(a.batch);
  p.hidden = static_cast<int>(a.hidden);
  p.dh = static_cast<const T*>(a.dh);
  p.dc = static_cast<const T*>(a.dc);
  p.h = static_cast<const T*>(a.h);
  p.c = static_cast<const T*>(a.c);
  p.h_new = static_cast<const T*>(a.h_new);
  p.c_new = static_cast<const T*>(a.c_new);
  p.saved = static_cast<const T*>(a.saved);
  p.dgx = static_cast<T*>(a.dgx);
  p.dgh = static_cast<T*>(a.dgh);
  p.direct = static_cast<T*>(a.direct);
  p.dc_prev = static_cast<T*>(a.dc_prev);
  const int64_t elements = a.batch * a.hidden;
  const int threads = static_cast<int>(std::min<int64_t>(o.threads ? o.threads : kMaxThreads, round_up(elements, 32)));
  platform::launch(&cell_backward_kernel<T>, ceil_div(elements, threads), threads, 0, o.stream, false, p);
}

}  // namespace

void cell_forward(const CellForward& args, const Options& options) {
  dispatch(args.dtype, options.allow_tf32, [&](auto k) {
    run_forward<typename decltype(k)::type, decltype(k)::math>(args, options);
  });
}

void cell_backward(const CellBackward& args, const Options& options) {
  dispatch(args.dtype, false, [&](auto k) { run_backward<typename decltype(k)::type>(args, options); });
}

Plan cell_plan(Kernel kernel, const Problem& problem, const Options& options) {
  return dispatch(problem.dtype, options.allow_tf32, [&](auto k) {
    return plan_cell<typename decltype(k)::type, decltype(k)::math>(kernel, problem, options);
  });
}

}  // namespace cuda
}  // namespace fastrnn
