// The LSTM recurrence on CUDA, forward and backward: the contract of fastrnn/backends/reference.py,
// run as the phases of plan.h (persistent: one cooperative launch; stepwise: one launch per phase).
//
// Forward, per step: each CTA computes h_{t-1} W_hh^T for its slice of units with all four gates (W's
// slice in shared memory), adds xp_t, applies the cell (csrc/cell.h) with the cell state carried in the
// accumulator type, and publishes its units of h_t to a double-buffered exchange buffer; with a
// projection a second phase turns the units into state columns through W_hr^T. Rows whose sequence has
// ended copy their state forward and write zeros.
//
// Backward, per step in reverse: each CTA first carries the previous step's gate gradients into dh for
// its columns, dG W_hh (the column slice of W_hh in shared memory), then applies the cell backward for
// its units and publishes their gate gradients (the dgates output itself, read by every CTA next step).
// With a projection the carry (over state columns) and the cell (over units, through W_hr) are two
// phases. A last phase carries the first step's gradients into dh0.
#include "api.h"
#include "launch.cuh"
#include "tile.cuh"

namespace fastrnn {
namespace cuda {
namespace {

template <class T>
struct LstmForwardParams {
  Geometry g;
  const T* xp;
  const T* h0;
  const T* c0;
  const T* w_hh;
  const T* w_hr;  // null without a projection
  const int32_t* lengths;
  T* y;
  T* h_n;
  T* c_n;
  T* gates;  // null (with c_all) in an inference call
  T* c_all;
  T* h_even;  // the exchange buffers: step s reads h_{s & 1} (h0 at s = 0) and writes the other
  T* h_odd;
  Acc<T>* c_state;
  T* units;  // with a projection: o * tanh(c) of every unit, the projection phase's A
  GridBarrierState* barrier;
};

template <class T, Math M>
__global__ void __launch_bounds__(kMaxThreads, 1) lstm_forward_kernel(const __grid_constant__ LstmForwardParams<T> p) {
  FASTRNN_DYNAMIC_SHARED(shared);
  const Geometry& g = p.g;
  const SharedTiles<T> smem{shared, g};
  const int H = g.hidden, R = g.state, B = g.batch;
  const int64_t G = 4 * static_cast<int64_t>(H);
  const bool projection = p.w_hr != nullptr;
  const bool saving = p.gates != nullptr;  // an inference call keeps nothing for a backward

  // A CTA's slices of W: its units' rows of the four gates of W_hh; with a projection its state
  // columns' rows of W_hr.
  auto hh_rows = [&](int slice) { return gate_rows(p.w_hh, g.phase[0], R, slice); };
  auto projection_rows = [&](int slice) { return gate_rows(p.w_hr, g.phase[1], H, slice); };
  if (g.persistent) {  // the CTA's slices of W stay in shared memory for every step
    stage_resident(g, smem, 0, hh_rows);
    if (g.kinds > 1) stage_resident(g, smem, 1, projection_rows);
    __syncthreads();
  }

  // Without a projection a persistent plan may keep the step's pointwise inputs on chip (g.inputs, as
  // single_state.cuh does): the CTA's units of xp_t prefetched across the barrier, the lengths, and its
  // own units of h and c, which no other CTA writes.
  const Assignment owner = assignment(g, 0);
  const int U0 = g.phase[0].slice, first = (owner.slice < 0 ? 0 : owner.slice) * U0, owned = min_int(U0, H - first);
  const bool on_chip = g.persistent && g.inputs && owner.slice >= 0;
  const InputsOnChip<T> inputs{g, smem, p.xp, p.lengths, first, owned};
  const int32_t* lengths = on_chip ? inputs.lengths() : p.lengths;
  if (on_chip) {
    inputs.start();
    for (int index = static_cast<int>(threadIdx.x); index < B * owned; index += static_cast<int>(blockDim.x)) {
      const int b = index / owned, j = index % owned;
      smem.own()[b * U0 + j] = p.h0[static_cast<int64_t>(b) * R + first + j];
      smem.cell()[b * U0 + j] = to_acc(p.c0[static_cast<int64_t>(b) * H + first + j]);
    }
    __syncthreads();
  }

  for (int phase = g.phase_begin; phase < g.phase_end; ++phase) {
    if (phase > g.phase_begin) grid_barrier(p.barrier, phase - g.phase_begin);
    const int s = phase / g.kinds, kind = phase % g.kinds;
    const int t = forward_step(g, s);
    const bool last = s == g.steps - 1;
    const T* h_in = s == 0 ? p.h0 : (s & 1 ? p.h_odd : p.h_even);
    T* h_out = s & 1 ? p.h_even : p.h_odd;
    const Assignment mine = assignment(g, kind);
    if (mine.slice < 0) continue;
    auto runs_here = [&](int row, int rows) { return any_row_runs(lengths, row, rows, t); };

    if (kind == 0) {  // gates and cell for units [u0, u0 + units)
      const int U = g.phase[0].slice, u0 = mine.slice * U, units = min_int(U, H - u0);
      const RowSource<T> a_rows = rows_of(h_in, R, R);
      const T* xp_now = on_chip ? smem.xp(s & 1) : nullptr;
      auto epilogue = [&](int row, int rows, bool work, const TileResult<Acc<T>>& acc) {
        for (int index = static_cast<int>(threadIdx.x); index < rows * units; index += static_cast<int>(blockDim.x)) {
          const int i = index / units, j = index % units, b = row + i, u = u0 + j;
          const int64_t bu = static_cast<int64_t>(b) * H + u, tb = static_cast<int64_t>(t) * B + b;
          const int64_t bq = static_cast<int64_t>(b) * R + u;  // without a projection R == H: unit u is column u
          T* gate_out = saving ? p.gates + tb * G + u : nullptr;
          Acc<T>* c_state = on_chip ? smem.cell() + b * U + j : p.c_state + bu;
          const Acc<T> c_prev = s == 0 && !on_chip ? to_acc(p.c0[bu]) : *c_state;
          if (work && row_runs(lengths, b, t)) {
            const T* x = on_chip ? xp_now + b * 4 * U + j : p.xp + tb * G + u;
            const int64_t stride = on_chip ? U : H;
            Acc<T> gi, gf, gg, go, c, h;
            lstm_cell_forward(acc(i, j) + to_acc(x[0]), acc(i, U + j) + to_acc(x[stride]),
                              acc(i, 2 * U + j) + to_acc(x[2 * stride]), acc(i, 3 * U + j) + to_acc(x[3 * stride]), c_prev,
                              gi, gf, gg, go, c, h);
            if (saving) {
              gate_out[0] = store<T>(gi);
              gate_out[H] = store<T>(gf);
              gate_out[2 * H] = store<T>(gg);
              gate_out[3 * H] = store<T>(go);
              p.c_all[tb * H + u] = store<T>(c);
            }
            *c_state = c;
            if (last) p.c_n[bu] = store<T>(c);
            const T h_value = store<T>(h);
            if (projection) {
              p.units[bu] = h_value;
            } else {
              p.y[tb * R + u] = h_value;
              h_out[bq] = h_value;
              if (on_chip) smem.own()[b * U + j] = h_value;
              if (last) p.h_n[bq] = h_value;
            }
          } else {  // this row's sequence has ended (or not begun, in reverse): carry the state over
            if (saving) {
              gate_out[0] = gate_out[H] = gate_out[2 * H] = gate_out[3 * H] = zero<T>();
              p.c_all[tb * H + u] = zero<T>();
            }
            *c_state = c_prev;
            if (last) p.c_n[bu] = store<T>(c_prev);
            if (projection) {
              p.units[bu] = zero<T>();
            } else {
              const T h_prev = on_chip ? smem.own()[b * U + j] : h_in[bq];
              p.y[tb * R + u] = zero<T>();
              h_out[bq] = h_prev;
              if (last) p.h_n[bq] = h_prev;
            }
          }
        }
      };
      run_phase<T, M>(g, smem, 0, mine.row_begin, mine.row_end, a_rows, hh_rows(mine.slice), runs_here, epilogue);
      if (on_chip) inputs.after_step(s);
    } else {  // the projection onto state columns [q0, q0 + columns)
      const int Q = g.phase[1].slice, q0 = mine.slice * Q, columns = min_int(Q, R - q0);
      const RowSource<T> a_rows = rows_of(p.units, H, H);
      auto epilogue = [&](int row, int rows, bool work, const TileResult<Acc<T>>& acc) {
        for (int index = static_cast<int>(threadIdx.x); index < rows * columns; index += static_cast<int>(blockDim.x)) {
          const int i = index / columns, j = index % columns, b = row + i, q = q0 + j;
          const int64_t bq = static_cast<int64_t>(b) * R + q, tq = (static_cast<int64_t>(t) * B + b) * R + q;
          if (work && row_runs(lengths, b, t)) {
            const T h_value = store<T>(acc(i, j));
            p.y[tq] = h_value;
            h_out[bq] = h_value;
            if (last) p.h_n[bq] = h_value;
          } else {
            p.y[tq] = zero<T>();
            h_out[bq] = h_in[bq];
            if (last) p.h_n[bq] = h_in[bq];
          }
        }
      };
      run_phase<T, M>(g, smem, 1, mine.row_begin, mine.row_end, a_rows, projection_rows(mine.slice), runs_here, epilogue);
    }
  }
}

template <class T>
struct LstmBackwardParams {
  Geometry g;
  const T* dy;
  const T* dh_n;
  const T* dc_n;
  const T* c_prev;
  const T* w_hh;
  const T* w_hr;
  const T* gates;
  const T* c_all;
  const int32_t* lengths;
  T* dgates;
  T* dh_all;
  T* dh0;
  T* dc0;
  Acc<T>* carry;     // [B, R] dh not yet consumed by a step (rows not running; 0 once consumed)
  Acc<T>* dc_state;  // [B, H]
  GridBarrierState* barrier;
};

template <class T, Math M>
__global__ void __launch_bounds__(kMaxThreads, 1) lstm_backward_kernel(const __grid_constant__ LstmBackwardParams<T> p) {
  FASTRNN_DYNAMIC_SHARED(shared);
  const Geometry& g = p.g;
  const SharedTiles<T> smem{shared, g};
  const int H = g.hidden, R = g.state, B = g.batch;
  const int64_t G = 4 * static_cast<int64_t>(H);
  const bool projection = p.w_hr != nullptr;

  // A CTA's slices of W: the carry's columns of W_hh (its 4H rows are the reduction); with a projection
  // the cell phase's columns of W_hr.
  auto hh_columns = [&](int slice) { return weight_columns(p.w_hh, g.phase[0], slice); };
  auto hr_columns = [&](int slice) { return weight_columns(p.w_hr, g.phase[1], slice); };
  if (g.persistent) {
    stage_resident(g, smem, 0, hh_columns);
    if (g.kinds > 1) stage_resident(g, smem, 1, hr_columns);
    __syncthreads();
  }

  // The cell backward of unit u in row b at step t, given dh (through W_hr with a projection) and the
  // carried dc; writes the gate gradients and returns dc for the step before.
  auto cell = [&](int b, int u, int t, Acc<T> dh, Acc<T> dc) {
    const int64_t tb = static_cast<int64_t>(t) * B + b;
    const T* gate = p.gates + tb * G + u;
    Acc<T> di, df, dg, d_o, dc_prev;
    lstm_cell_backward(dh, dc, to_acc(gate[0]), to_acc(gate[H]), to_acc(gate[2 * H]), to_acc(gate[3 * H]),
                       to_acc(p.c_all[tb * H + u]), to_acc(p.c_prev[tb * H + u]), di, df, dg, d_o, dc_prev);
    T* out = p.dgates + tb * G + u;
    out[0] = store<T>(di);
    out[H] = store<T>(df);
    out[2 * H] = store<T>(dg);
    out[3 * H] = store<T>(d_o);
    return dc_prev;
  };
  auto no_cell = [&](int b, int u, int t) {
    T* out = p.dgates + (static_cast<int64_t>(t) * B + b) * G + u;
    out[0] = out[H] = out[2 * H] = out[3 * H] = zero<T>();
  };

  for (int phase = g.phase_begin; phase < g.phase_end; ++phase) {
    if (phase > g.phase_begin) grid_barrier(p.barrier, phase - g.phase_begin);
    const int s = phase / g.kinds, kind = phase % g.kinds;
    const bool final_carry = s == g.steps;  // the last phase: carry into dh0
    const int t = final_carry ? -1 : backward_step(g, s);
    const int t_prev = s > 0 ? backward_step(g, s - 1) : -1;
    const bool last = s == g.steps - 1;
    const Assignment mine = assignment(g, kind);
    if (mine.slice < 0) continue;

    if (kind == 0) {  // carry dG_{t_prev} W_hh into dh for columns [c0, c0 + columns); without a projection also the cell
      const int C = g.phase[0].slice, c0 = mine.slice * C, columns = min_int(C, R - c0);
      // (At s = 0 no row ran before: nothing is read, and step 0 stands in for the missing one.)
      const int64_t tb0 = static_cast<int64_t>(t_prev < 0 ? 0 : t_prev) * B;
      const RowSource<T> a_rows = rows_of(p.dgates + tb0 * G, G, static_cast<int>(G));
      auto ran_before = [&](int row, int rows) { return s > 0 && any_row_runs(p.lengths, row, rows, t_prev); };
      auto epilogue = [&](int row, int rows, bool work, const TileResult<Acc<T>>& acc) {
        for (int index = static_cast<int>(threadIdx.x); index < rows * columns; index += static_cast<int>(blockDim.x)) {
          const int i = index / columns, j = index % columns, b = row + i, col = c0 + j;
          const int64_t bc = static_cast<int64_t>(b) * R + col;
          const Acc<T> carried = s == 0 ? to_acc(p.dh_n[bc]) : p.carry[bc];
          const Acc<T> dh_carry = work && row_runs(p.lengths, b, t_prev) ? acc(i, j) + carried : carried;
          if (final_carry) {
            p.dh0[bc] = store<T>(dh_carry);
            continue;
          }
          const bool runs = row_runs(p.lengths, b, t);
          const int64_t tc = (static_cast<int64_t>(t) * B + b) * R + col;
          p.carry[bc] = runs ? Acc<T>(0) : dh_carry;
          if (projection) {  // publish dh_t; the cell phase takes it through W_hr
            p.dh_all[tc] = runs ? store<T>(to_acc(p.dy[tc]) + dh_carry) : zero<T>();
            continue;
          }
          const int64_t bu = static_cast<int64_t>(b) * H + col;
          const Acc<T> dc = s == 0 ? to_acc(p.dc_n[bu]) : p.dc_state[bu];
          Acc<T> dc_next = dc;
          if (runs) {
            dc_next = cell(b, col, t, to_acc(p.dy[tc]) + dh_carry, dc);
          } else {
            no_cell(b, col, t);
          }
          p.dc_state[bu] = dc_next;
          if (last) p.dc0[bu] = store<T>(dc_next);
        }
      };
      run_phase<T, M>(g, smem, 0, mine.row_begin, mine.row_end, a_rows, hh_columns(mine.slice), ran_before, epilogue);
    } else {  // with a projection: dh_t W_hr for units [u0, u0 + units), then their cell
      const int U = g.phase[1].slice, u0 = mine.slice * U, units = min_int(U, H - u0);
      const RowSource<T> a_rows = rows_of(p.dh_all + static_cast<int64_t>(t) * B * R, R, R);
      auto runs_now = [&](int row, int rows) { return any_row_runs(p.lengths, row, rows, t); };
      auto epilogue = [&](int row, int rows, bool work, const TileResult<Acc<T>>& acc) {
        for (int index = static_cast<int>(threadIdx.x); index < rows * units; index += static_cast<int>(blockDim.x)) {
          const int i = index / units, j = index % units, b = row + i, u = u0 + j;
          const int64_t bu = static_cast<int64_t>(b) * H + u;
          const Acc<T> dc = s == 0 ? to_acc(p.dc_n[bu]) : p.dc_state[bu];
          Acc<T> dc_next = dc;
          if (work && row_runs(p.lengths, b, t)) {
            dc_next = cell(b, u, t, acc(i, j), dc);
          } else {
            no_cell(b, u, t);
          }
          p.dc_state[bu] = dc_next;
          if (last) p.dc0[bu] = store<T>(dc_next);
        }
      };
      run_phase<T, M>(g, smem, 1, mine.row_begin, mine.row_end, a_rows, hr_columns(mine.slice), runs_now, epilogue);
    }
  }
}

// --- host ---------------------------------------------------------------------------------------------

template <class T, Math M>
Plan plan_lstm(Kernel which, const Problem& problem, const Options& options) {
  if (which == Kernel::lstm_forward) return plan_for(&lstm_forward_kernel<T, M>, which, problem, options);
  return plan_for(&lstm_backward_kernel<T, M>, which, problem, options);
}

template <class T, Math M>
void run_forward(const LstmForward& a, const Options& o) {
  const Problem& problem = a.problem;
  const WorkspaceLayout w = workspace_layout(Kernel::lstm_forward, problem);
  LstmForwardParams<T> p{};
  p.xp = static_cast<const T*>(a.xp);
  p.h0 = static_cast<const T*>(a.h0);
  p.c0 = static_cast<const T*>(a.c0);
  p.w_hh = static_cast<const T*>(a.w_hh);
  p.w_hr = static_cast<const T*>(a.w_hr);
  p.lengths = problem.lengths;
  p.y = static_cast<T*>(a.y);
  p.h_n = static_cast<T*>(a.h_n);
  p.c_n = static_cast<T*>(a.c_n);
  p.gates = static_cast<T*>(a.gates);
  p.c_all = static_cast<T*>(a.c_all);
  p.h_even = at_offset<T>(a.workspace, w.h_even);
  p.h_odd = at_offset<T>(a.workspace, w.h_odd);
  p.c_state = at_offset<Acc<T>>(a.workspace, w.c_state);
  p.units = problem.projection ? at_offset<T>(a.workspace, w.units) : nullptr;
  p.barrier = at_offset<GridBarrierState>(a.workspace, w.barrier);
  const Plan plan = plan_lstm<T, M>(Kernel::lstm_forward, problem, o);
  run_plan(&lstm_forward_kernel<T, M>, p, plan.geometry, p.barrier, o.stream);
}

template <class T, Math M>
void run_backward(const LstmBackward& a, const Options& o) {
  const Problem& problem = a.problem;
  const WorkspaceLayout w = workspace_layout(Kernel::lstm_backward, problem);
  LstmBackwardParams<T> p{};
  p.dy = static_cast<const T*>(a.dy);
  p.dh_n = static_cast<const T*>(a.dh_n);
  p.dc_n = static_cast<const T*>(a.dc_n);
  p.c_prev = static_cast<const T*>(a.c_prev);
  p.w_hh = static_cast<const T*>(a.w_hh);
  p.w_hr = static_cast<const T*>(a.w_hr);
  p.gates = static_cast<const T*>(a.gates);
  p.c_all = static_cast<const T*>(a.c_all);
  p.lengths = problem.lengths;
  p.dgates = static_cast<T*>(a.dgates);
  p.dh_all = static_cast<T*>(a.dh_all);
  p.dh0 = static_cast<T*>(a.dh0);
  p.dc0 = static_cast<T*>(a.dc0);
  p.carry = at_offset<Acc<T>>(a.workspace, w.carry);
  p.dc_state = at_offset<Acc<T>>(a.workspace, w.dc_state);
  p.barrier = at_offset<GridBarrierState>(a.workspace, w.barrier);
  const Plan plan = plan_lstm<T, M>(Kernel::lstm_backward, problem, o);
  run_plan(&lstm_backward_kernel<T, M>, p, plan.geometry, p.barrier, o.stream);
}

}  // namespace

void lstm_forward(const LstmForward& args, const Options& options) {
  dispatch(args.problem.dtype, options.allow_tf32, [&](auto k) {
    run_forward<typename decltype(k)::type, decltype(k)::math>(args, options);
  });
}

void lstm_backward(const LstmBackward& args, const Options& options) {
  dispatch(args.problem.dtype, options.allow_tf32, [&](auto k) {
    run_backward<typename decltype(k)::type, decltype(k)::math>(args, options);
  });
}

Plan lstm_plan(Kernel kernel, const Problem& problem, const Options& options) {
  return dispatch(problem.dtype, options.allow_tf32, [&](auto k) {
    return plan_lstm<typename decltype(k)::type, decltype(k)::math>(kernel, problem, options);
  });
}

}  // namespace cuda
}  // namespace fastrnn
