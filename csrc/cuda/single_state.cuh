// The step walk of a recurrence whose only state is h (GRU, Elman), forward and backward, as the phases
// of plan.h. The GRU and Elman kernels differ only in the cell at the end of each step, which they pass
// in; everything else here (the W_hh slices, the h exchange, lengths, carries, dh0) is written once.
//
// Forward, per step: each CTA computes h_{t-1} W_hh^T for its slice of units (W's slice in shared
// memory), hands each (row, unit) to the cell and publishes its units of h_t to a double-buffered
// exchange buffer.
//
// Backward, per step in reverse: each CTA carries the previous step's gate gradients into dh for its
// units (those gradients times the column slice of W_hh in shared memory), hands dy + dh to the cell
// backward, whose gate gradients every CTA reads next step, and keeps what the cell returns (the part of
// dh that bypasses W_hh) as the next carry. A last phase carries the first step's gradients into dh0.
#pragma once

#include "launch.cuh"
#include "tile.cuh"

namespace fastrnn {
namespace cuda {

template <class T>
struct SingleStateForwardParams {
  Geometry g;
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

template <class T>
struct SingleStateBackwardParams {
  Geometry g;
  const T* dy;
  const T* dh_n;
  const T* w_hh;
  const int32_t* lengths;
  T* dxp;
  T* dh0;
  Acc<T>* carry;  // [B, H] dh not yet consumed by a step (rows not running), or the cell's direct part
  GridBarrierState* barrier;
};

// One element of a step's epilogue: tile row i, column j of a slice `slice_units` wide, unit u, and
// tb = t * B + b, the (step, row) index of the [T, B, ...] tensors.
struct StepSite {
  int i, j, slice_units, u;
  int64_t tb;
};

// A (row, unit)'s columns of xp_t: gate g at x[g * stride] (in global memory, or the CTA's prefetched copy).
template <class T>
struct StepInputs {
  const T* x;
  int stride;
  __device__ Acc<T> operator()(int gate) const { return to_acc(x[gate * stride]); }
};

// cell(acc, site, xp, h_prev, runs) -> T: h_t, where acc is the tile of h_{t-1} W_hh^T (gate g of unit j at
// column g * slice_units + j) and xp(g) the unit's gate g of xp_t. On a row that does not run at step t it
// returns h_prev, after writing the zeros of whatever it saves per step.
//
// A persistent plan with g.inputs keeps the step's pointwise inputs in shared memory: the CTA's units of
// xp_t, prefetched while the grid barrier before step t waits (two stages: step t + 1's copies are issued
// once step t's epilogue is done), the lengths, and its own units of h_{t-1}, which no other CTA writes.
template <class T, Math M, class Cell>
__device__ void single_state_forward(const SingleStateForwardParams<T>& p, Cell cell) {
  FASTRNN_DYNAMIC_SHARED(shared);
  const Geometry& g = p.g;
  const SharedTiles<T> smem{shared, g};
  const int H = g.hidden, B = g.batch;

  // A CTA's slice of W_hh: its units' rows of every gate.
  auto hh_rows = [&](int slice) { return gate_rows(p.w_hh, g.phase[0], H, slice); };
  if (g.persistent) {
    stage_resident(g, smem, 0, hh_rows);
    __syncthreads();
  }

  const Assignment mine = assignment(g, 0);  // a persistent plan's CTA keeps its slice for every step
  const int U = g.phase[0].slice, u0 = (mine.slice < 0 ? 0 : mine.slice) * U, units = min_int(U, H - u0);
  const int G = g.phase[0].gates;  // xp's columns per unit
  const bool on_chip = g.persistent && g.inputs && mine.slice >= 0;
  const InputsOnChip<T> inputs{g, smem, p.xp, p.lengths, u0, units};
  const int32_t* lengths = on_chip ? inputs.lengths() : p.lengths;
  T* own = on_chip ? smem.own() : nullptr;
  if (on_chip) {
    inputs.start();
    for (int index = static_cast<int>(threadIdx.x); index < B * units; index += static_cast<int>(blockDim.x))
      own[index / units * U + index % units] = p.h0[static_cast<int64_t>(index / units) * H + u0 + index % units];
    __syncthreads();
  }

  for (int phase = g.phase_begin; phase < g.phase_end; ++phase) {
    if (phase > g.phase_begin) grid_barrier(p.barrier, phase - g.phase_begin);
    const int s = phase;
    const int t = forward_step(g, s);
    const bool last = s == g.steps - 1;
    const T* h_in = s == 0 ? p.h0 : (s & 1 ? p.h_odd : p.h_even);
    T* h_out = s & 1 ? p.h_even : p.h_odd;
    if (mine.slice < 0) continue;
    const RowSource<T> a_rows = rows_of(h_in, H, H);
    const T* xp_now = on_chip ? smem.xp(s & 1) : nullptr;
    auto runs_here = [&](int row, int rows) { return any_row_runs(lengths, row, rows, t); };
    auto epilogue = [&](int row, int rows, bool work, const TileResult<Acc<T>>& acc) {
      for (int index = static_cast<int>(threadIdx.x); index < rows * units; index += static_cast<int>(blockDim.x)) {
        const int i = index / units, j = index % units, b = row + i, u = u0 + j;
        const int64_t bu = static_cast<int64_t>(b) * H + u, tb = static_cast<int64_t>(t) * B + b;
        // A row whose sequence has ended (or not begun, in reverse) carries its state over and outputs 0.
        const bool runs = work && row_runs(lengths, b, t);
        const StepInputs<T> xp = on_chip ? StepInputs<T>{xp_now + b * G * U + j, U}
                                         : StepInputs<T>{p.xp + tb * G * H + u, H};
        const T h_value = cell(acc, StepSite{i, j, U, u, tb}, xp, on_chip ? own[b * U + j] : h_in[bu], runs);
        p.y[tb * H + u] = runs ? h_value : zero<T>();
        h_out[bu] = h_value;
        if (on_chip) own[b * U + j] = h_value;
        if (last) p.h_n[bu] = h_value;
      }
    };
    run_phase<T, M>(g, smem, 0, mine.row_begin, mine.row_end, a_rows, hh_rows(mine.slice), runs_here, epilogue);
    if (on_chip) inputs.after_step(s);
  }
}

// previous(tb0) -> RowSource<T>: the gate gradients of the step before (its rows from index tb0 = t B),
// the operand of dh += previous W_hh. cell(site, dh, runs) -> Acc<T>: writes the step's gate gradients from
// dh = dy + carried dh (zeros on a row that does not run) and returns the part of dh that reaches h_{t-1}
// directly, not through W_hh (0 where there is none or the row does not run).
template <class T, Math M, class Previous, class Cell>
__device__ void single_state_backward(const SingleStateBackwardParams<T>& p, Previous previous, Cell cell) {
  FASTRNN_DYNAMIC_SHARED(shared);
  const Geometry& g = p.g;
  const SharedTiles<T> smem{shared, g};
  const int H = g.hidden, B = g.batch;

  // A CTA's slice of W_hh: its units' columns (the gate rows are the reduction).
  auto hh_columns = [&](int slice) { return weight_columns(p.w_hh, g.phase[0], slice); };
  if (g.persistent) {
    stage_resident(g, smem, 0, hh_columns);
    __syncthreads();
  }

  for (int phase = g.phase_begin; phase < g.phase_end; ++phase) {
    if (phase > g.phase_begin) grid_barrier(p.barrier, phase - g.phase_begin);
    const int s = phase;
    const bool final_carry = s == g.steps;  // the last phase: carry into dh0
    const int t = final_carry ? -1 : backward_step(g, s);
    const int t_prev = s > 0 ? backward_step(g, s - 1) : -1;
    const Assignment mine = assignment(g, 0);
    if (mine.slice < 0) continue;
    const int U = g.phase[0].slice, u0 = mine.slice * U, units = min_int(U, H - u0);
    // (At s = 0 no row ran before: nothing is read, and step 0 stands in for the missing one.)
    const RowSource<T> a_rows = previous(static_cast<int64_t>(t_prev < 0 ? 0 : t_prev) * B);
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
        const bool runs = row_runs(p.lengths, b, t);
        const Acc<T> dh = runs ? to_acc(p.dy[tb * H + u]) + dh_carry : Acc<T>(0);
        const Acc<T> direct = cell(StepSite{i, j, U, u, tb}, dh, runs);
        p.carry[bu] = runs ? direct : dh_carry;
      }
    };
    run_phase<T, M>(g, smem, 0, mine.row_begin, mine.row_end, a_rows, hh_columns(mine.slice), ran_before, epilogue);
  }
}

// The host side: the common parameters from a call's arguments and workspace.
template <class T, class Args>
void fill_single_state_forward(SingleStateForwardParams<T>& p, const Args& a, const WorkspaceLayout& w) {
  p.xp = static_cast<const T*>(a.xp);
  p.h0 = static_cast<const T*>(a.h0);
  p.w_hh = static_cast<const T*>(a.w_hh);
  p.lengths = a.problem.lengths;
  p.y = static_cast<T*>(a.y);
  p.h_n = static_cast<T*>(a.h_n);
  p.h_even = at_offset<T>(a.workspace, w.h_even);
  p.h_odd = at_offset<T>(a.workspace, w.h_odd);
  p.barrier = at_offset<GridBarrierState>(a.workspace, w.barrier);
}

template <class T, class Args>
void fill_single_state_backward(SingleStateBackwardParams<T>& p, const Args& a, const WorkspaceLayout& w) {
  p.dy = static_cast<const T*>(a.dy);
  p.dh_n = static_cast<const T*>(a.dh_n);
  p.w_hh = static_cast<const T*>(a.w_hh);
  p.lengths = a.problem.lengths;
  p.dxp = static_cast<T*>(a.dxp);
  p.dh0 = static_cast<T*>(a.dh0);
  p.carry = at_offset<Acc<T>>(a.workspace, w.carry);
  p.barrier = at_offset<GridBarrierState>(a.workspace, w.barrier);
}

}  // namespace cuda
}  // namespace fastrnn
