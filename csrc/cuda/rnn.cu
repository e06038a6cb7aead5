// The Elman recurrence (nn.RNN, tanh or relu) on CUDA, forward and backward: the contract of
// fastrnn/backends/reference.py, run as the phases of plan.h (persistent: one cooperative launch;
// stepwise: one launch per step), walked by single_state.cuh.
//
// Forward, the cell: h_t = act(h_{t-1} W_hh^T + xp_t) (csrc/cell.h). Nothing but y is kept: the backward
// reads act' off it.
//
// Backward, the cell: dpre = (dy + dh) act'(y), written straight into the dxp output, which is also
// what every CTA reads next step as the gradient through W_hh.
#include "api.h"
#include "single_state.cuh"

namespace fastrnn {
namespace cuda {
namespace {

template <class T>
struct RnnForwardParams : SingleStateForwardParams<T> {
  bool relu;
};

template <class T, Math M>
__global__ void __launch_bounds__(kMaxThreads, 1) rnn_forward_kernel(const __grid_constant__ RnnForwardParams<T> p) {
  single_state_forward<T, M>(p, [&](const TileResult<Acc<T>>& acc, const StepSite& at, const StepInputs<T>& xp,
                                    T h_prev, bool runs) {
    return runs ? store<T>(rnn_cell_forward(acc(at.i, at.j) + xp(0), p.relu)) : h_prev;
  });
}

template <class T>
struct RnnBackwardParams : SingleStateBackwardParams<T> {
  bool relu;
  const T* y;
};

template <class T, Math M>
__global__ void __launch_bounds__(kMaxThreads, 1) rnn_backward_kernel(const __grid_constant__ RnnBackwardParams<T> p) {
  const int H = p.g.hidden;
  // The previous step's dpre: the gradient that reaches h through W_hh.
  auto previous = [&](int64_t tb0) { return rows_of(p.dxp + tb0 * H, H, H); };
  single_state_backward<T, M>(p, previous, [&](const StepSite& at, Acc<T> dh, bool runs) {
    const int64_t tu = at.tb * H + at.u;
    p.dxp[tu] = runs ? store<T>(rnn_cell_backward(dh, to_acc(p.y[tu]), p.relu)) : zero<T>();
    return Acc<T>(0);  // all of dh goes through the pre-activation
  });
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
  fill_single_state_forward(p, a, w);
  p.relu = a.relu;
  const Plan plan = plan_rnn<T, M>(Kernel::rnn_forward, problem, o);
  run_plan(&rnn_forward_kernel<T, M>, p, plan.geometry, p.barrier, o.stream);
}

template <class T, Math M>
void run_backward(const RnnBackward& a, const Options& o) {
  const Problem& problem = a.problem;
  const WorkspaceLayout w = workspace_layout(Kernel::rnn_backward, problem);
  RnnBackwardParams<T> p{};
  fill_single_state_backward(p, a, w);
  p.relu = a.relu;
  p.y = static_cast<const T*>(a.y);
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
