// The Elman recurrence (nn.RNN, tanh or relu) on CUDA, forward and backward: the contract of
// fastrnn/backends/reference.py, run as the phases of plan.h (persistent: one cooperative launch;
// stepwise: one launch per step).
//
// Forward, per step: each CTA computes h_{t-1} W_hh^T for its slice of units (W's slice in shared
// memory), adds xp_t, applies act (csrc/cell.h) and publishes its units of h_t to a double-buffered
// exchange buffer. Nothing but y is kept: the backward reads act' off it.
//
// Backward, per step in reverse: each CTA carries the previous step's dpre into dh for its units,
// dpre W_hh with the column slice of W_hh in shared memory, and applies the cell backward,
// dpre = (dy + dh) act'(y), whose output (the dxp output itself) every CTA reads next step. A last
// phase carries the first step's dpre into dh0.
#include "api.h"
#include "launch.cuh"
#include "tile.cuh"

namespace fastrnn {
namespace cuda {
namespace {

template <class T>
struct RnnForwardParams {
  Geometry g;
  bool relu;
  const T* xp;
  const T* h0;
  const T* w_hh;
  const int32_t* lengths;
  T* y;
  T* h_n;
  T* h_even;  // the exchange buffers: step s reads h_{s & 1} (h0 at s = 0) and writes the other
  T* h_odd;
  GridBarrierState* barrier;
};

template <class T, Math M>
__global__ void __launch_bounds__(kMaxThreads, 1) rnn_forward_kernel(const __grid_constant__ RnnForwardParams<T> p) {
  FASTRNN_DYNAMIC_SHARED(shared);
  const Geometry& g = p.g;
  const SharedTiles<T> smem{shared, g};
  const int H = g.hidden, B = g.batch;

  // A CTA's slice of W_hh: its units' rows.
  auto hh_rows = [&](int slice) { return gate_rows(p.w_hh, g.phase[0], H, slice); };
  if (g.persistent) {
    stage_resident(g, smem, 0, hh_rows);
    __syncthreads();
  }

  for (int phase = g.phase_begin; phase < g.phase_end; ++phase) {
    if (phase > g.phase_begin) grid_barrier(p.barrier);
    const int s = phase;
    const int t = forward_step(g, s);
    const bool last = s == g.steps - 1;
    const T* h_in = s == 0 ? p.h0 : (s & 1 ? p.h_odd : p.h_even);
    T* h_out = s & 1 ? p.h_even : p.h_odd;
    const Assignment mine = assignment(g, 0);
    if (mine.slice < 0) continue;
    const int U = g.phase[0].slice, u0 = mine.slice * U, units = min_int(U, H - u0);
    auto load_a = [&](int b, int k) { return h_in[static_cast<int64_t>(b) * H + k]; };
    auto runs_here = [&](int row, int rows) { return any_row_runs(p.lengths, row, rows, t); };
    auto epilogue = [&](int row, int rows, bool work, const TileResult<Acc<T>>& acc) {
      for (int index = static_cast<int>(threadIdx.x); index < rows * units; index += static_cast<int>(blockDim.x)) {
        const int i = index / units, j = index % units, b = row + i, u = u0 + j;
        const int64_t bu = static_cast<int64_t>(b) * H + u, tu = (static_cast<int64_t>(t) * B + b) * H + u;
        // A row whose sequence has ended (or not begun, in reverse) carries its state over and outputs 0.
        const bool runs = work && row_runs(p.lengths, b, t);
        const T h_value = runs ? store<T>(rnn_cell_forward(acc(i, j) + to_acc(p.xp[tu]), p.relu)) : h_in[bu];
        p.y[tu] = runs ? h_value : zero<T>();
        h_out[bu] = h_value;
        if (last) p.h_n[bu] = h_value;
      }
    };
    run_phase<T, M>(g, smem, 0, mine.row_begin, mine.row_end, load_a, hh_rows(mine.slice), runs_here, epilogue);
  }
}

template <class T>
struct RnnBackwardParams {
  Geometry g;
  bool relu;
  const T* dy;
  const T* dh_n;
  const T* y;
  const T* w_hh;
  const int32_t* lengths;
  T* dxp;
  T* dh0;
  Acc<T>* carry;  // [B, H] dh not yet consumed by a step (rows not running; 0 once consumed)
  GridBarrierState* barrier;
};

template <class T, Math M>
__global__ void __launch_bounds__(kMaxThreads, 1) rnn_backward_kernel(const __grid_constant__ RnnBackwardParams<T> p) {
  FASTRNN_DYNAMIC_SHARED(shared);
  const Geometry& g = p.g;
  const SharedTiles<T> smem{shared, g};
  const int H = g.hidden, B = g.batch;

  // A CTA's slice of W_hh: its units' columns (the H rows are the reduction).
  auto hh_columns = [&](int slice) { return weight_columns(p.w_hh, g.phase[0], slice); };
  if (g.persistent) {
    stage_resident(g, smem, 0, hh_columns);
    __syncthreads();
  }

  for (int phase = g.phase_begin; phase < g.phase_end; ++phase) {
    if (phase > g.phase_begin) grid_barrier(p.barrier);
    const int s = phase;
    const bool final_carry = s == g.steps;  // the last phase: carry into dh0
    const int t = final_carry ? -1 : backward_step(g, s);
    const int t_prev = s > 0 ? backward_step(g, s - 1) : -1;
    const Assignment mine = assignment(g, 0);
    if (mine.slice < 0) continue;
    const int U = g.phase[0].slice, u0 = mine.slice * U, units = min_int(U, H - u0);
    // The previous step's dpre: the gradient that reaches h through W_hh.
    auto load_a = [&](int b, int k) { return p.dxp[(static_cast<int64_t>(t_prev) * B + b) * H + k]; };
    auto ran_before = [&](int row, int rows) { return s > 0 && any_row_runs(p.lengths, row, rows, t_prev); };
    auto epilogue = [&](int row, int rows, bool work, const TileResult<Acc<T>>& acc) {
      for (int index = static_cast<int>(threadIdx.x); index < rows * units; index += static_cast<int>(blockDim.x)) {
        const int i = index / units, j = index % units, b = row + i, u = u0 + j;
        const int64_t bu = static_cast<int64_t>(b) * H + u;
        const Acc<T> carried = s == 0 ? to_acc(p.dh_n[bu]) : p.carry[bu];
        const Acc<T> dh_carry = work && row_runs(p.lengths, b, t_prev) ? acc(i, j) + carried : carried;
        if (final_carry) {
          p.dh0[bu] = store<T>(dh_carry);
          continue;
        }
        const int64_t tu = (static_cast<int64_t>(t) * B + b) * H + u;
        const bool runs = row_runs(p.lengths, b, t);
        p.dxp[tu] = runs ? store<T>(rnn_cell_backward(to_acc(p.dy[tu]) + dh_carry, to_acc(p.y[tu]), p.relu)) : zero<T>();
        p.carry[bu] = runs ? Acc<T>(0) : dh_carry;
      }
    };
    run_phase<T, M>(g, smem, 0, mine.row_begin, mine.row_end, load_a, hh_columns(mine.slice), ran_before, epilogue);
  }
}

// --- host ---------------------------------------------------------------------------------------------

template <class T, Math M>
Plan plan_rnn(Kernel which, const Problem& problem, const Options& options) {
  if (which == Kernel::rnn_forward) return plan_for(&rnn_forward_kernel<T, M>, which, problem, options);
  return plan_for(&rnn_backward_kernel<T, M>, which, problem, options);
}

template <class T, Math M>
void run_forward(const RnnForward& a, const Options& o) {
  const Problem& problem = a.problem;
  const WorkspaceLayout w = workspace_layout(Kernel::rnn_forward, problem);
  RnnForwardParams<T> p{};
  p.relu = a.relu;
  p.xp = static_cast<const T*>(a.xp);
  p.h0 = static_cast<const T*>(a.h0);
  p.w_hh = static_cast<const T*>(a.w_hh);
  p.lengths = problem.lengths;
  p.y = static_cast<T*>(a.y);
  p.h_n = static_cast<T*>(a.h_n);
  p.h_even = at_offset<T>(a.workspace, w.h_even);
  p.h_odd = at_offset<T>(a.workspace, w.h_odd);
  p.barrier = at_offset<GridBarrierState>(a.workspace, w.barrier);
  const Plan plan = plan_rnn<T, M>(Kernel::rnn_forward, problem, o);
  run_plan(&rnn_forward_kernel<T, M>, p, plan.geometry, p.barrier, o.stream);
}

template <class T, Math M>
void run_backward(const RnnBackward& a, const Options& o) {
  const Problem& problem = a.problem;
  const WorkspaceLayout w = workspace_layout(Kernel::rnn_backward, problem);
  RnnBackwardParams<T> p{};
  p.relu = a.relu;
  p.dy = static_cast<const T*>(a.dy);
  p.dh_n = static_cast<const T*>(a.dh_n);
  p.y = static_cast<const T*>(a.y);
  p.w_hh = static_cast<const T*>(a.w_hh);
  p.lengths = problem.lengths;
  p.dxp = static_cast<T*>(a.dxp);
  p.dh0 = static_cast<T*>(a.dh0);
  p.carry = at_offset<Acc<T>>(a.workspace, w.carry);
  p.barrier = at_offset<GridBarrierState>(a.workspace, w.barrier);
  const Plan plan = plan_rnn<T, M>(Kernel::rnn_backward, problem, o);
  run_plan(&rnn_backward_kernel<T, M>, p, plan.geometry, p.barrier, o.stream);
}

}  // namespace

void rnn_forward(const RnnForward& args, const Options& options) {
  dispatch(args.problem.dtype, options.allow_tf32, [&](auto k) {
    run_forward<typename decltype(k)::type, decltype(k)::math>(args, options);
  });
}

void rnn_backward(const RnnBackward& args, const Options& options) {
  dispatch(args.problem.dtype, options.allow_tf32, [&](auto k) {
    run_backward<typename decltype(k)::type, decltype(k)::math>(args, options);
  });
}

Plan rnn_plan(Kernel kernel, const Problem& problem, const Options& options) {
  return dispatch(problem.dtype, options.allow_tf32, [&](auto k) {
    return plan_rnn<typename decltype(k)::type, decltype(k)::math>(kernel, problem, options);
  });
}

}  // namespace cuda
}  // namespace fastrnn
