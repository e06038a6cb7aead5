// The GRU recurrence on CUDA, forward and backward: the contract of fastrnn/backends/reference.py,
// run as the phases of plan.h (persistent: one cooperative launch; stepwise: one launch per step).
//
// Forward, per step: each CTA computes h_{t-1} W_hh^T for its slice of units with their three gates
// (W's slice in shared memory), adds b_hn to the candidate's part, applies the cell (csrc/cell.h) with
// xp_t, and publishes its units of h_t to a double-buffered exchange buffer.
//
// Backward, per step in reverse: each CTA carries the previous step's gradients (dr, dz, dhn) into dh
// for its units, (dr, dz, dhn) W_hh with the column slice of W_hh in shared memory, adds the direct
// part dh z, and applies the cell backward, whose outputs (dxp, dhn) every CTA reads next step. A last
// phase carries the first step's gradients into dh0.
#include "api.h"
#include "launch.cuh"
#include "tile.cuh"

namespace fastrnn {
namespace cuda {
namespace {

template <class T>
struct GruForwardParams {
  Geometry g;
  const T* xp;
  const T* h0;
  const T* w_hh;
  const T* b_hn;  // null without biases
  const int32_t* lengths;
  T* y;
  T* h_n;
  T* saved;
  T* h_even;  // the exchange buffers: step s reads h_{s & 1} (h0 at s = 0) and writes the other
  T* h_odd;
  GridBarrierState* barrier;
};

template <class T, Math M>
__global__ void __launch_bounds__(kMaxThreads, 1) gru_forward_kernel(const __grid_constant__ GruForwardParams<T> p) {
  FASTRNN_DYNAMIC_SHARED(shared);
  const Geometry& g = p.g;
  const SharedTiles<T> smem{shared, g};
  const int H = g.hidden, B = g.batch;

  // A CTA's slice of W_hh: its units' rows of the three gates (r, z, n).
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
        const int64_t bu = static_cast<int64_t>(b) * H + u, tb = static_cast<int64_t>(t) * B + b;
        T* saved = p.saved ? p.saved + tb * 4 * H + u : nullptr;  // null in an inference call
        const T h_prev = h_in[bu];
        if (work && row_runs(p.lengths, b, t)) {
          const T* x = p.xp + tb * 3 * H + u;
          const Acc<T> hn = acc(i, 2 * U + j) + (p.b_hn ? to_acc(p.b_hn[u]) : Acc<T>(0));
          Acc<T> r, z, n, h;
          gru_cell_forward(to_acc(x[0]), to_acc(x[H]), to_acc(x[2 * H]), acc(i, j), acc(i, U + j), hn, to_acc(h_prev),
                           r, z, n, h);
          if (saved) {
            saved[0] = store<T>(r);
            saved[H] = store<T>(z);
            saved[2 * H] = store<T>(n);
            saved[3 * H] = store<T>(hn);
          }
          const T h_value = store<T>(h);
          p.y[tb * H + u] = h_value;
          h_out[bu] = h_value;
          if (last) p.h_n[bu] = h_value;
        } else {  // this row's sequence has ended (or not begun, in reverse): carry the state over
          if (saved) saved[0] = saved[H] = saved[2 * H] = saved[3 * H] = zero<T>();
          p.y[tb * H + u] = zero<T>();
          h_out[bu] = h_prev;
          if (last) p.h_n[bu] = h_prev;
        }
      }
    };
    run_phase<T, M>(g, smem, 0, mine.row_begin, mine.row_end, load_a, hh_rows(mine.slice), runs_here, epilogue);
  }
}

template <class T>
struct GruBackwardParams {
  Geometry g;
  const T* dy;
  const T* dh_n;
  const T* h_prev;
  const T* w_hh;
  const T* saved;
  const int32_t* lengths;
  T* dxp;
  T* dhn;
  T* dh0;
  Acc<T>* carry;  // [B, H] dh not yet consumed by a step (rows not running), or the direct part dh z
  GridBarrierState* barrier;
};

template <class T, Math M>
__global__ void __launch_bounds__(kMaxThreads, 1) gru_backward_kernel(const __grid_constant__ GruBackwardParams<T> p) {
  FASTRNN_DYNAMIC_SHARED(shared);
  const Geometry& g = p.g;
  const SharedTiles<T> smem{shared, g};
  const int H = g.hidden, B = g.batch;

  // A CTA's slice of W_hh: its units' columns (the 3H rows are the reduction).
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
    // The previous step's (dr, dz, dhn): the gradients that reach h through W_hh.
    auto load_a = [&](int b, int k) {
      const int64_t tb = static_cast<int64_t>(t_prev) * B + b;
      return k < 2 * H ? p.dxp[tb * 3 * H + k] : p.dhn[tb * H + k - 2 * H];
    };
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
        const int64_t tb = static_cast<int64_t>(t) * B + b;
        T* dx = p.dxp + tb * 3 * H + u;
        if (row_runs(p.lengths, b, t)) {
          const T* sv = p.saved + tb * 4 * H + u;
          Acc<T> dr, dz, dn, d_hn, direct;
          gru_cell_backward(to_acc(p.dy[tb * H + u]) + dh_carry, to_acc(sv[0]), to_acc(sv[H]), to_acc(sv[2 * H]),
                            to_acc(sv[3 * H]), to_acc(p.h_prev[tb * H + u]), dr, dz, dn, d_hn, direct);
          dx[0] = store<T>(dr);
          dx[H] = store<T>(dz);
          dx[2 * H] = store<T>(dn);
          p.dhn[tb * H + u] = store<T>(d_hn);
          p.carry[bu] = direct;
        } else {
          dx[0] = dx[H] = dx[2 * H] = zero<T>();
          p.dhn[tb * H + u] = zero<T>();
          p.carry[bu] = dh_carry;
        }
      }
    };
    run_phase<T, M>(g, smem, 0, mine.row_begin, mine.row_end, load_a, hh_columns(mine.slice), ran_before, epilogue);
  }
}

// --- host ---------------------------------------------------------------------------------------------

template <class T, Math M>
Plan plan_gru(Kernel which, const Problem& problem, const Options& options) {
  if (which == Kernel::gru_forward) return plan_for(&gru_forward_kernel<T, M>, which, problem, options);
  return plan_for(&gru_backward_kernel<T, M>, which, problem, options);
}

template <class T, Math M>
void run_forward(const GruForward& a, const Options& o) {
  const Problem& problem = a.problem;
  const WorkspaceLayout w = workspace_layout(Kernel::gru_forward, problem);
  GruForwardParams<T> p{};
  p.xp = static_cast<const T*>(a.xp);
  p.h0 = static_cast<const T*>(a.h0);
  p.w_hh = static_cast<const T*>(a.w_hh);
  p.b_hn = static_cast<const T*>(a.b_hn);
  p.lengths = problem.lengths;
  p.y = static_cast<T*>(a.y);
  p.h_n = static_cast<T*>(a.h_n);
  p.saved = static_cast<T*>(a.saved);
  p.h_even = at_offset<T>(a.workspace, w.h_even);
  p.h_odd = at_offset<T>(a.workspace, w.h_odd);
  p.barrier = at_offset<GridBarrierState>(a.workspace, w.barrier);
  const Plan plan = plan_gru<T, M>(Kernel::gru_forward, problem, o);
  run_plan(&gru_forward_kernel<T, M>, p, plan.geometry, p.barrier, o.stream);
}

template <class T, Math M>
void run_backward(const GruBackward& a, const Options& o) {
  const Problem& problem = a.problem;
  const WorkspaceLayout w = workspace_layout(Kernel::gru_backward, problem);
  GruBackwardParams<T> p{};
  p.dy = static_cast<const T*>(a.dy);
  p.dh_n = static_cast<const T*>(a.dh_n);
  p.h_prev = static_cast<const T*>(a.h_prev);
  p.w_hh = static_cast<const T*>(a.w_hh);
  p.saved = static_cast<const T*>(a.saved);
  p.lengths = problem.lengths;
  p.dxp = static_cast<T*>(a.dxp);
  p.dhn = static_cast<T*>(a.dhn);
  p.dh0 = static_cast<T*>(a.dh0);
  p.carry = at_offset<Acc<T>>(a.workspace, w.carry);
  p.barrier = at_offset<GridBarrierState>(a.workspace, w.barrier);
  const Plan plan = plan_gru<T, M>(Kernel::gru_backward, problem, o);
  run_plan(&gru_backward_kernel<T, M>, p, plan.geometry, p.barrier, o.stream);
}

}  // namespace

void gru_forward(const GruForward& args, const Options& options) {
  dispatch(args.problem.dtype, options.allow_tf32, [&](auto k) {
    run_forward<typename decltype(k)::type, decltype(k)::math>(args, options);
  });
}

void gru_backward(const GruBackward& args, const Options& options) {
  dispatch(args.problem.dtype, options.allow_tf32, [&](auto k) {
    run_backward<typename decltype(k)::type, decltype(k)::math>(args, options);
  });
}

Plan gru_plan(Kernel kernel, const Problem& problem, const Options& options) {
  return dispatch(problem.dtype, options.allow_tf32, [&](auto k) {
    return plan_gru<typename decltype(k)::type, decltype(k)::math>(kernel, problem, options);
  });
}

}  // namespace cuda
}  // namespace fastrnn
