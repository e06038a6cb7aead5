// The family-independent host entry points of api.h: workspace sizes and plan descriptions.
#include "api.h"
#include "plan.h"

namespace fastrnn {
namespace cuda {

size_t workspace_bytes(Kernel kernel, const Problem& problem) { return workspace_layout(kernel, problem).bytes; }

std::string describe_plan(Kernel kernel, const Problem& problem, const Options& options) {
  switch (kernel) {
    case Kernel::lstm_forward:
    case Kernel::lstm_backward: return lstm_plan(kernel, problem, options).description;
    case Kernel::gru_forward:
    case Kernel::gru_backward: return gru_plan(kernel, problem, options).description;
    case Kernel::rnn_forward:
    case Kernel::rnn_backward: return rnn_plan(kernel, problem, options).description;
    case Kernel::lstm_cell:
    case Kernel::gru_cell:
    case Kernel::rnn_cell: return cell_plan(kernel, problem, options).description;
  }
  throw std::invalid_argument("fastrnn cuda backend: unknown kernel " + std::to_string(static_cast<int>(kernel)));
}

}  // namespace cuda
}  // namespace fastrnn
