// The family-independent host entry points of api.h: workspace sizes and plan descriptions.
#include "api.h"
#include "plan.h"

namespace fastrnn {
namespace cuda {

size_t workspace_bytes(Kernel kernel, const Problem& problem) { return workspace_layout(kernel, problem).bytes; }

std::string describe_plan(Kernel kernel, const Problem& problem, const Options& options) {
  const bool lstm = kernel == Kernel::lstm_forward || kernel == Kernel::lstm_backward;
  return (lstm ? lstm_plan(kernel, problem, options) : gru_plan(kernel, problem, options)).description;
}

}  // namespace cuda
}  // namespace fastrnn
