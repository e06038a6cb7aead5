// The GRU recurrence on CUDA, forward and backward: the contract of fastrnn/backends/reference.py,
// run as the phases of plan.h (persistent: one cooperative launch; stepwise: one launch per step),
// walked by single_state.cuh.
//
// Forward, the cell: the three gates' part of h_{t-1} W_hh^T, b_hn added to the candidate's, with xp_t
// through gru_cell_forward (csrc/cell.h); r, z, n and hn saved for the backward in a training call.
//
// Backward, the cell: gru_cell_backward gives (dr, dz, dn) into dxp and dhn, which every CTA reads next
// step as the gradients through W_hh, and the direct part dh z, the next carry.
#include "api.h"
#include "single_state.cuh"

namespace fastrnn {
namespace cuda {
namespace {

template <class T>
struct GruForwardParams : SingleStateForwardParams<T> {
  const T* b_hn;  // null without biases
  T* saved;       // null in an inference call
};

template <class T, Math M>
__global__ void __launch_bounds__(kMaxThreads, 1) gru_forward_kernel(const __grid_constant__ GruForwardParams<T> p) {
  const int H = p.g.hidden;
  // With the step's inputs on chip (plan.h's g.inputs) the CTA's units of b_hn are too, beside its own h:
  // otherwise their load would be the epilogue's one trip to L2. The walk's first barrier publishes them.
  FASTRNN_DYNAMIC_SHARED(shared);
  const SharedTiles<T> smem{shared, p.g};
  const int slice = assignment(p.g, 0).slice, per_cta = p.g.phase[0].slice;
  const T* b_hn = p.b_hn;
  int b_hn_first = 0;  // the unit b_hn[0] belongs to
  if (p.g.persistent && p.g.inputs && p.b_hn && slice >= 0) {
    b_hn_first = slice * per_cta;
    for (int j = static_cast<int>(threadIdx.x); j < min_int(per_cta, H - b_hn_first); j += static_cast<int>(blockDim.x))
      smem.own_b_hn()[j] = p.b_hn[b_hn_first + j];
    b_hn = smem.own_b_hn();
  }
  single_state_forward<T, M>(p, [&](const TileResult<Acc<T>>& acc, const StepSite& at, const StepInputs<T>& xp,
                                    T h_prev, bool runs) {
    T* saved = p.saved ? p.saved + at.tb * 4 * H + at.u : nullptr;
    if (!runs) {
      if (saved) saved[0] = saved[H] = saved[2 * H] = saved[3 * H] = zero<T>();
      return h_prev;
    }
    const int U = at.slice_units;
    const Acc<T> hn = acc(at.i, 2 * U + at.j) + (b_hn ? to_acc(b_hn[at.u - b_hn_first]) : Acc<T>(0));
    Acc<T> r, z, n, h;
    gru_cell_forward(xp(0), xp(1), xp(2), acc(at.i, at.j), acc(at.i, U + at.j), hn, to_acc(h_prev), r, z, n, h);
    if (saved) {
      saved[0] = store<T>(r);
      saved[H] = store<T>(z);
      saved[2 * H] = store<T>(n);
      saved[3 * H] = store<T>(hn);
    }
    return store<T>(h);
  });
}

template <class T>
struct GruBackwardParams : SingleStateBackwardParams<T> {
  const T* h_prev;
  const T* saved;
  T* dhn;
};

template <class T, Math M>
__global__ void __launch_bounds__(kMaxThreads, 1) gru_backward_kernel(const __grid_constant__ GruBackwardParams<T> p) {
  const int H = p.g.hidden;
  // The previous step's (dr, dz, dhn): the gradients that reach h through W_hh.
  auto previous = [&](int64_t tb0) {
    return RowSource<T>{p.dxp + tb0 * 3 * H, 3 * static_cast<int64_t>(H), 2 * H, p.dhn + tb0 * H, H};
  };
  single_state_backward<T, M>(p, previous, [&](const StepSite& at, Acc<T> dh, bool runs) {
    T* dx = p.dxp + at.tb * 3 * H + at.u;
    if (!runs) {
      dx[0] = dx[H] = dx[2 * H] = zero<T>();
      p.dhn[at.tb * H + at.u] = zero<T>();
      return Acc<T>(0);
    }
    const T* sv = p.saved + at.tb * 4 * H + at.u;
    Acc<T> dr, dz, dn, d_hn, direct;
    gru_cell_backward(dh, to_acc(sv[0]), to_acc(sv[H]), to_acc(sv[2 * H]), to_acc(sv[3 * H]),
                      to_acc(p.h_prev[at.tb * H + at.u]), dr, dz, dn, d_hn, direct);
    dx[0] = store<T>(dr);
    dx[H] = store<T>(dz);
    dx[2 * H] = store<T>(dn);
    p.dhn[at.tb * H + at.u] = store<T>(d_hn);
    return direct;  // dh z reaches h_{t-1} without W_hh
  });
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
  fill_single_state_forward(p, a, w);
  p.b_hn = static_cast<const T*>(a.b_hn);
  p.saved = static_cast<T*>(a.saved);
  const Plan plan = plan_gru<T, M>(Kernel::gru_forward, problem, o);
  run_plan(&gru_forward_kernel<T, M>, p, plan.geometry, p.barrier, o.stream);
}

template <class T, Math M>
void run_backward(const GruBackward& a, const Options& o) {
  const Problem& problem = a.problem;
  const WorkspaceLayout w = workspace_layout(Kernel::gru_backward, problem);
  GruBackwardParams<T> p{};
  fill_single_state_backward(p, a, w);
  p.h_prev = static_cast<const T*>(a.h_prev);
  p.saved = static_cast<const T*>(a.saved);
  p.dhn = static_cast<T*>(a.dhn);
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
