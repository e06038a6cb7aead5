// The Python binding of fastrnn._C: the one file that includes torch/extension.h. It checks and
// unpacks tensors, allocates the outputs and calls the kernels, which see only pointers and sizes
// (csrc/cpu/api.h), so that editing a kernel never recompiles the torch headers.
//
// The functions follow the recurrence contract of fastrnn/backends/reference.py, argument for
// argument; fastrnn/backends/cpp.py calls them.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <optional>
#include <string>
#include <vector>

#include "cpu/api.h"

namespace {

using torch::Tensor;
namespace cpu = fastrnn::cpu;

void check_input(const Tensor& tensor, const char* name, const Tensor& like, std::vector<int64_t> shape) {
  TORCH_CHECK(tensor.device().is_cpu(), "fastrnn cpp backend: ", name, " must be a CPU tensor, got one on ",
              tensor.device());
  TORCH_CHECK(tensor.scalar_type() == like.scalar_type(), "fastrnn cpp backend: ", name, " has dtype ",
              tensor.scalar_type(), " but xp has ", like.scalar_type());
  TORCH_CHECK(tensor.sizes() == at::IntArrayRef(shape), "fastrnn cpp backend: ", name, " must have shape ",
              at::IntArrayRef(shape), ", got ", tensor.sizes());
  TORCH_CHECK(tensor.is_contiguous(), "fastrnn cpp backend: ", name, " must be contiguous");
}

// The kernels' element type for a torch scalar type (same layout; bfloat16 is the kernels' own struct).
template <class T>
struct KernelType {
  using type = T;
};
template <>
struct KernelType<at::BFloat16> {
  using type = cpu::bfloat16;
};
template <class T>
using kernel_t = typename KernelType<T>::type;

template <class T>
kernel_t<T>* data(const Tensor& tensor) {
  return reinterpret_cast<kernel_t<T>*>(tensor.data_ptr<T>());
}

template <class T>
kernel_t<T>* data_or_null(const std::optional<Tensor>& tensor) {
  return tensor.has_value() ? data<T>(*tensor) : nullptr;
}

// The number of sequences running at each step, from lengths sorted non-increasing (empty: all run).
std::vector<int64_t> live_rows(const std::optional<Tensor>& lengths, int64_t steps, int64_t batch) {
  if (!lengths.has_value()) return {};
  TORCH_CHECK(lengths->device().is_cpu() && lengths->scalar_type() == at::kLong && lengths->dim() == 1 &&
                  lengths->size(0) == batch,
              "fastrnn cpp backend: lengths must be a CPU int64 tensor of shape [", batch, "], got ",
              lengths->scalar_type(), " ", lengths->sizes(), " on ", lengths->device());
  const Tensor contiguous = lengths->contiguous();
  const int64_t* length = contiguous.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(length[b] >= 0 && length[b] <= steps, "fastrnn cpp backend: lengths must lie in [0, ", steps,
                "], got ", length[b]);
    TORCH_CHECK(b == 0 || length[b] <= length[b - 1], "fastrnn cpp backend: lengths must be sorted non-increasing");
  }
  std::vector<int64_t> live(steps, 0);
  for (int64_t t = 0; t < steps; ++t)
    while (live[t] < batch && length[live[t]] > t) ++live[t];
  return live;
}

cpu::Shape make_shape(int64_t steps, int64_t batch, int64_t hidden, int64_t state, bool reverse,
                      const std::vector<int64_t>& live) {
  // Inside another parallel region (a user's at::parallel_for) there are no threads to spare.
  const int threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  return {steps, batch, hidden, state, reverse, live.empty() ? nullptr : live.data(), threads};
}

// Outputs every step writes need no zeroing; with lengths, the padding of finished rows must be 0.
Tensor output(const Tensor& like, std::vector<int64_t> shape, bool zeroed) {
  return zeroed ? at::zeros(shape, like.options()) : at::empty(shape, like.options());
}

void check_float(const Tensor& xp) {
  TORCH_CHECK(xp.scalar_type() == at::kFloat || xp.scalar_type() == at::kDouble || xp.scalar_type() == at::kBFloat16,
              "fastrnn cpp backend: the CPU kernels run in float32, float64 or bfloat16, got ", xp.scalar_type(),
              "; convert the module (module.float()) or use backend='aten'");
  TORCH_CHECK(xp.dim() == 3, "fastrnn cpp backend: xp must be 3-D (T, B, gates), got ", xp.dim(), "-D");
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(const Tensor& xp, const Tensor& h0, const Tensor& c0,
                                                                const Tensor& w_hh, const std::optional<Tensor>& w_hr,
                                                                const std::optional<Tensor>& lengths, bool reverse,
                                                                bool save) {
  check_float(xp);
  const int64_t T = xp.size(0), B = xp.size(1), H = xp.size(2) / 4, R = h0.size(-1);
  TORCH_CHECK(xp.size(2) == 4 * H, "fastrnn cpp backend: xp's last dimension must be 4 * hidden, got ", xp.size(2));
  check_input(xp, "xp", xp, {T, B, 4 * H});
  check_input(h0, "h0", xp, {B, R});
  check_input(c0, "c0", xp, {B, H});
  check_input(w_hh, "w_hh", xp, {4 * H, R});
  if (w_hr.has_value()) check_input(*w_hr, "w_hr", xp, {R, H});
  else TORCH_CHECK(R == H, "fastrnn cpp backend: without w_hr the state width must equal hidden (", H, "), got ", R);
  const std::vector<int64_t> live = live_rows(lengths, T, B);
  const bool zeroed = lengths.has_value();
  Tensor y = output(xp, {T, B, R}, zeroed), h_n = at::empty_like(h0), c_n = at::empty_like(c0);
  Tensor gates = save ? output(xp, {T, B, 4 * H}, zeroed) : at::empty({0}, xp.options());
  Tensor c_all = save ? output(xp, {T, B, H}, zeroed) : at::empty({0}, xp.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, xp.scalar_type(), "fastrnn_lstm_forward", [&] {
    const cpu::LstmForward<kernel_t<scalar_t>> args{make_shape(T, B, H, R, reverse, live),
                                          data<scalar_t>(xp),
                                          data<scalar_t>(h0),
                                          data<scalar_t>(c0),
                                          data<scalar_t>(w_hh),
                                          data_or_null<scalar_t>(w_hr),
                                          data<scalar_t>(y),
                                          data<scalar_t>(h_n),
                                          data<scalar_t>(c_n),
                                          save ? data<scalar_t>(gates) : nullptr,
                                          save ? data<scalar_t>(c_all) : nullptr};
    pybind11::gil_scoped_release no_gil;
    cpu::lstm_forward(args);
  });
  return {y, h_n, c_n, gates, c_all};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_backward(const Tensor& dy, const Tensor& dh_n, const Tensor& dc_n,
                                                         const Tensor& c_prev, const Tensor& w_hh,
                                                         const std::optional<Tensor>& w_hr, const Tensor& gates,
                                                         const Tensor& c_all, const std::optional<Tensor>& lengths,
                                                         bool reverse) {
  check_float(dy);
  const int64_t T = dy.size(0), B = dy.size(1), R = dy.size(2), H = c_all.size(-1);
  check_input(dh_n, "dh_n", dy, {B, R});
  check_input(dc_n, "dc_n", dy, {B, H});
  check_input(c_prev, "c_prev", dy, {T, B, H});
  check_input(w_hh, "w_hh", dy, {4 * H, R});
  if (w_hr.has_value()) check_input(*w_hr, "w_hr", dy, {R, H});
  else TORCH_CHECK(R == H, "fastrnn cpp backend: without w_hr the state width must equal hidden (", H, "), got ", R);
  check_input(gates, "gates", dy, {T, B, 4 * H});
  check_input(c_all, "c_all", dy, {T, B, H});
  const std::vector<int64_t> live = live_rows(lengths, T, B);
  const bool zeroed = lengths.has_value();
  Tensor dgates = output(dy, {T, B, 4 * H}, zeroed);
  Tensor dh_all = w_hr.has_value() ? output(dy, {T, B, R}, zeroed) : at::empty({0}, dy.options());
  Tensor dh0 = at::empty_like(dh_n), dc0 = at::empty_like(dc_n);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dy.scalar_type(), "fastrnn_lstm_backward", [&] {
    const cpu::LstmBackward<kernel_t<scalar_t>> args{make_shape(T, B, H, R, reverse, live),
                                           data<scalar_t>(dy),
                                           data<scalar_t>(dh_n),
                                           data<scalar_t>(dc_n),
                                           data<scalar_t>(c_prev),
                                           data<scalar_t>(w_hh),
                                           data_or_null<scalar_t>(w_hr),
                                           data<scalar_t>(gates),
                                           data<scalar_t>(c_all),
                                           data<scalar_t>(dgates),
                                           w_hr.has_value() ? data<scalar_t>(dh_all) : nullptr,
                                           data<scalar_t>(dh0),
                                           data<scalar_t>(dc0)};
    pybind11::gil_scoped_release no_gil;
    cpu::lstm_backward(args);
  });
  return {dgates, dh_all, dh0, dc0};
}

std::tuple<Tensor, Tensor, Tensor> gru_forward(const Tensor& xp, const Tensor& h0, const Tensor& w_hh,
                                               const std::optional<Tensor>& b_hn, const std::optional<Tensor>& lengths,
                                               bool reverse, bool save) {
  check_float(xp);
  const int64_t T = xp.size(0), B = xp.size(1), H = h0.size(-1);
  check_input(xp, "xp", xp, {T, B, 3 * H});
  check_input(h0, "h0", xp, {B, H});
  check_input(w_hh, "w_hh", xp, {3 * H, H});
  if (b_hn.has_value()) check_input(*b_hn, "b_hn", xp, {H});
  const std::vector<int64_t> live = live_rows(lengths, T, B);
  const bool zeroed = lengths.has_value();
  Tensor y = output(xp, {T, B, H}, zeroed), h_n = at::empty_like(h0);
  Tensor saved = save ? output(xp, {T, B, 4 * H}, zeroed) : at::empty({0}, xp.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, xp.scalar_type(), "fastrnn_gru_forward", [&] {
    const cpu::GruForward<kernel_t<scalar_t>> args{make_shape(T, B, H, H, reverse, live),
                                         data<scalar_t>(xp),
                                         data<scalar_t>(h0),
                                         data<scalar_t>(w_hh),
                                         data_or_null<scalar_t>(b_hn),
                                         data<scalar_t>(y),
                                         data<scalar_t>(h_n),
                                         save ? data<scalar_t>(saved) : nullptr};
    pybind11::gil_scoped_release no_gil;
    cpu::gru_forward(args);
  });
  return {y, h_n, saved};
}

std::tuple<Tensor, Tensor, Tensor> gru_backward(const Tensor& dy, const Tensor& dh_n, const Tensor& h_prev,
                                                const Tensor& w_hh, const Tensor& saved,
                                                const std::optional<Tensor>& lengths, bool reverse) {
  check_float(dy);
  const int64_t T = dy.size(0), B = dy.size(1), H = dy.size(2);
  check_input(dh_n, "dh_n", dy, {B, H});
  check_input(h_prev, "h_prev", dy, {T, B, H});
  check_input(w_hh, "w_hh", dy, {3 * H, H});
  check_input(saved, "saved", dy, {T, B, 4 * H});
  const std::vector<int64_t> live = live_rows(lengths, T, B);
  const bool zeroed = lengths.has_value();
  Tensor dxp = output(dy, {T, B, 3 * H}, zeroed), dhn = output(dy, {T, B, H}, zeroed), dh0 = at::empty_like(dh_n);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dy.scalar_type(), "fastrnn_gru_backward", [&] {
    const cpu::GruBackward<kernel_t<scalar_t>> args{make_shape(T, B, H, H, reverse, live),
                                          data<scalar_t>(dy),
                                          data<scalar_t>(dh_n),
                                          data<scalar_t>(h_prev),
                                          data<scalar_t>(w_hh),
                                          data<scalar_t>(saved),
                                          data<scalar_t>(dxp),
                                          data<scalar_t>(dhn),
                                          data<scalar_t>(dh0)};
    pybind11::gil_scoped_release no_gil;
    cpu::gru_backward(args);
  });
  return {dxp, dhn, dh0};
}

void set_cpu_instruction_set(const std::string& name) {
  TORCH_CHECK(cpu::set_instruction_set(name.c_str()), "fastrnn: instruction set '", name,
              "' is not available here; this CPU and build support: ", cpu::supported_instruction_sets());
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastrnn's compiled kernels (see csrc/)";
  // save=false: an inference call; what only the backward needs (gates, cell states) comes back empty.
  m.def("lstm_forward_cpu", &lstm_forward, "LSTM recurrence, one layer-direction (CPU)");
  m.def("lstm_backward_cpu", &lstm_backward, "LSTM recurrence backward (CPU)");
  m.def("gru_forward_cpu", &gru_forward, "GRU recurrence, one layer-direction (CPU)");
  m.def("gru_backward_cpu", &gru_backward, "GRU recurrence backward (CPU)");
  m.def("cpu_instruction_set", [] { return std::string(cpu::instruction_set()); },
        "The instruction set the CPU kernels run on now");
  m.def("cpu_supported_instruction_sets", [] { return std::string(cpu::supported_instruction_sets()); },
        "The instruction sets this CPU and build support, best first, comma-separated");
  m.def("set_cpu_instruction_set", &set_cpu_instruction_set,
        "Run the CPU kernels on the named instruction set (one of cpu_supported_instruction_sets())");
}
