// The Python binding of fastrnn._C: the one file that includes torch/extension.h. It checks and
// unpacks tensors, allocates the outputs and calls the kernels, which see only pointers and sizes
// (csrc/cpu/api.h, csrc/cuda/api.h), so that editing a kernel never recompiles the torch headers.
//
// The functions follow the recurrence contract of fastrnn/backends/reference.py, argument for
// argument; fastrnn/backends/cpp.py and fastrnn/backends/cuda.py call them. The CUDA section is built
// with FASTRNN_WITH_CUDA (setup.py, where nvcc and a CUDA build of torch exist). The test suite builds
// this same file a second time with FASTRNN_SIMT_EMULATION and without the CPU section: then the CUDA
// entry points take CPU tensors and run the CUDA kernels' sources in the SIMT emulator (csrc/emulation/).
#include <torch/extension.h>

#include <cstring>
#include <optional>
#include <string>
#include <vector>

// FASTRNN_CUDA_ONLY leaves the CPU section out: the emulated build, and the CUDA kernels compiled on
// first use beside a fastrnn._C that has the CPU kernels already (fastrnn/_ext.py).
#if defined(FASTRNN_SIMT_EMULATION) && !defined(FASTRNN_CUDA_ONLY)
#define FASTRNN_CUDA_ONLY
#endif

namespace fastrnn_binding {

// lengths, when given: a CPU int64 tensor (B,) sorted non-increasing in [0, T], as the recurrence
// contract says. Returned contiguous, for the caller to read or copy to its device.
torch::Tensor checked_lengths(const torch::Tensor& lengths, int64_t steps, int64_t batch, const char* backend) {
  TORCH_CHECK(lengths.device().is_cpu() && lengths.scalar_type() == at::kLong && lengths.dim() == 1 &&
                  lengths.size(0) == batch,
              "fastrnn ", backend, " backend: lengths must be a CPU int64 tensor of shape [", batch, "], got ",
              lengths.scalar_type(), " ", lengths.sizes(), " on ", lengths.device());
  torch::Tensor host = lengths.contiguous();
  const int64_t* length = host.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(length[b] >= 0 && length[b] <= steps, "fastrnn ", backend, " backend: lengths must lie in [0, ",
                steps, "], got ", length[b]);
    TORCH_CHECK(b == 0 || length[b] <= length[b - 1], "fastrnn ", backend,
                " backend: lengths must be sorted non-increasing");
  }
  return host;
}

}  // namespace fastrnn_binding

#if !defined(FASTRNN_CUDA_ONLY)
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <limits>

#include "cpu/api.h"

namespace {

using torch::Tensor;
namespace cpu = fastrnn::cpu;

void check_input(const Tensor& tensor, const char* name, const Tensor& like, at::IntArrayRef shape,
                 const char* like_name = "xp") {
  TORCH_CHECK(tensor.device().is_cpu(), "fastrnn cpp backend: ", name, " must be a CPU tensor, got one on ",
              tensor.device());
  TORCH_CHECK(tensor.scalar_type() == like.scalar_type(), "fastrnn cpp backend: ", name, " has dtype ",
              tensor.scalar_type(), " but ", like_name, " has ", like.scalar_type());
  TORCH_CHECK(tensor.sizes() == shape, "fastrnn cpp backend: ", name, " must have shape ", shape, ", got ",
              tensor.sizes());
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
  const Tensor contiguous = fastrnn_binding::checked_lengths(*lengths, steps, batch, "cpp");
  const int64_t* length = contiguous.data_ptr<int64_t>();
  std::vector<int64_t> live(steps, 0);
  for (int64_t t = 0; t < steps; ++t)
    while (live[t] < batch && length[live[t]] > t) ++live[t];
  return live;
}

// One weight tensor's packed panels, kept between calls (cpu::PanelCache; fastrnn/backends/cpp.py owns
// one per module parameter). Each call stamps what the weight holds: a new stamp when its storage, its
// offset in it, its in-place version (optimizer steps, load_state_dict, torch.no_grad() writes), dtype
// or shape differ from the last call's, so panels of an older weight are never read. The storage is
// held by a weak reference: it does not keep the weight alive, yet no other storage can take its
// identity while it is held.
class WeightPanels {
 public:
  WeightPanels() : cache_(cpu::new_panel_cache()) {}
  ~WeightPanels() { cpu::delete_panel_cache(cache_); }
  WeightPanels(const WeightPanels&) = delete;
  WeightPanels& operator=(const WeightPanels&) = delete;

  // Called with the GIL held, so stamps are handed out one call at a time.
  cpu::CachedPanels for_call(const Tensor& weight) {
    const c10::StorageImpl* storage = weight.storage().unsafeGetStorageImpl();
    const bool same = storage_.has_value() && storage_->_unsafe_get_target() == storage && !storage_->expired() &&
                      weight.data_ptr() == data_ && weight._version() == version_ &&
                      weight.scalar_type() == dtype_ && weight.sizes() == at::IntArrayRef(sizes_);
    if (!same) {
      storage_.emplace(weight.storage().getWeakStorageImpl());
      data_ = weight.data_ptr();
      version_ = weight._version();
      dtype_ = weight.scalar_type();
      sizes_ = weight.sizes().vec();
      ++stamp_;
    }
    return {cache_, stamp_};
  }
  int64_t bytes() const { return cpu::panel_cache_bytes(cache_); }

 private:
  cpu::PanelCache* cache_;
  std::optional<c10::weak_intrusive_ptr<c10::StorageImpl>> storage_;
  const void* data_ = nullptr;
  int64_t version_ = -1;
  at::ScalarType dtype_ = at::kFloat;
  std::vector<int64_t> sizes_;
  int64_t stamp_ = 0;
};

cpu::CachedPanels cached(WeightPanels* panels, const Tensor& weight) {
  return panels ? panels->for_call(weight) : cpu::CachedPanels{};
}

cpu::CachedPanels cached(WeightPanels* panels, const std::optional<Tensor>& weight) {
  return weight.has_value() ? cached(panels, *weight) : cpu::CachedPanels{};
}

// The threads a kernel may use: torch's count, but one inside another parallel region (a user's
// at::parallel_for), where there are no threads to spare.
int threads_here() { return at::in_parallel_region() ? 1 : at::get_num_threads(); }

cpu::Shape make_shape(int64_t steps, int64_t batch, int64_t hidden, int64_t state, bool reverse,
                      const std::vector<int64_t>& live) {
  return {steps, batch, hidden, state, reverse, live.empty() ? nullptr : live.data(), threads_here()};
}

// A test aid: outputs the kernels must write in full start as NaN, so an element one forgets to write
// can never pass a comparison.
bool poison_cpu_outputs = false;

Tensor poisoned(Tensor out) {
  if (poison_cpu_outputs) out.fill_(std::numeric_limits<double>::quiet_NaN());
  return out;
}

// A large output's memory comes fresh from the system (glibc maps big blocks anew and unmaps them when
// freed), and its first writes fault it in page by page: 16 ms for 64 MB on a Zen 5 core, a sixth of
// the LSTM forward that fills it. Asked before the first write, transparent huge pages (Linux, where the
// system allows them on request) fault it in 2 MB at a time: 3 ms.
constexpr int64_t kHugePageBytes = int64_t(1) << 21;

void advise_huge_pages(const Tensor& out) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const int64_t bytes = out.numel() * static_cast<int64_t>(out.element_size());
  if (bytes < 4 * kHugePageBytes) return;
  const auto start = reinterpret_cast<uintptr_t>(out.data_ptr());
  const uintptr_t first = (start + kHugePageBytes - 1) & ~uintptr_t(kHugePageBytes - 1);
  const uintptr_t last = (start + bytes) & ~uintptr_t(kHugePageBytes - 1);
  madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);  // advice only: a refusal changes nothing
#else
  (void)out;
#endif
}

Tensor fresh(at::IntArrayRef shape, const at::TensorOptions& options) {
  Tensor out = at::empty(shape, options);
  advise_huge_pages(out);
  return out;
}

// Outputs every step writes need no zeroing; with lengths, the padding of finished rows must be 0.
Tensor output(const Tensor& like, at::IntArrayRef shape, bool zeroed) {
  Tensor out = fresh(shape, like.options());
  return zeroed ? out.zero_() : poisoned(out);
}

// cat(pieces, dim=1)^T, contiguous, for float32 matrices of the same rows whose rows are contiguous (each
// piece's stride(1) == 1; pieces may be column ranges of one wider matrix): each piece is transposed
// straight into its rows of the result, with no side-by-side copy first.
Tensor transposed(const std::vector<Tensor>& pieces) {
  TORCH_CHECK(!pieces.empty(), "fastrnn cpp backend: transposed_cpu takes at least one matrix");
  const int64_t rows = pieces[0].dim() == 2 ? pieces[0].size(0) : -1;
  int64_t columns = 0;
  for (const Tensor& src : pieces) {
    TORCH_CHECK(src.device().is_cpu() && src.scalar_type() == at::kFloat && src.dim() == 2 &&
                    (src.stride(1) == 1 || src.size(1) <= 1) && src.stride(0) >= src.size(1),
                "fastrnn cpp backend: transposed_cpu takes 2-D float32 CPU tensors with contiguous rows, got ",
                src.scalar_type(), " ", src.sizes(), " with strides ", src.strides(), " on ", src.device());
    TORCH_CHECK(src.size(0) == rows, "fastrnn cpp backend: transposed_cpu's matrices must have the same rows (",
                rows, "), got ", src.sizes());
    columns += src.size(1);
  }
  Tensor dst = poisoned(fresh({columns, rows}, pieces[0].options()));
  const int threads = threads_here();
  std::vector<cpu::Transpose> calls;
  float* next = dst.data_ptr<float>();
  for (const Tensor& src : pieces) {
    if (src.numel() > 0) calls.push_back({rows, src.size(1), src.data_ptr<float>(), src.stride(0), next, threads});
    next += src.size(1) * rows;
  }
  {
    pybind11::gil_scoped_release no_gil;
    for (const cpu::Transpose& call : calls) cpu::transpose(call);
  }
  return dst;
}

// x w^T + bias (+ bias2) for a 2-D float32 x with contiguous rows and w (columns, depth): the input projection
// of a small layer, on w's panels kept in `w_panels` (None: packed for this call).
Tensor linear(const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias, const std::optional<Tensor>& bias2,
              WeightPanels* w_panels) {
  auto is_matrix = [](const Tensor& t) {
    return t.device().is_cpu() && t.scalar_type() == at::kFloat && t.dim() == 2 && t.is_contiguous();
  };
  TORCH_CHECK(is_matrix(x) && is_matrix(w), "fastrnn cpp backend: linear_cpu takes contiguous 2-D float32 CPU ",
              "tensors x (rows, depth) and w (columns, depth), got x ", x.scalar_type(), " ", x.sizes(), " and w ",
              w.scalar_type(), " ", w.sizes());
  TORCH_CHECK(x.size(1) == w.size(1), "fastrnn cpp backend: linear_cpu: x is (rows, ", x.size(1), ") but w is ",
              w.sizes(), "; expected w (columns, ", x.size(1), ")");
  for (const auto& b : {bias, bias2})
    TORCH_CHECK(!b.has_value() || (b->device().is_cpu() && b->scalar_type() == at::kFloat && b->dim() == 1 &&
                                   b->is_contiguous() && b->size(0) == w.size(0)),
                "fastrnn cpp backend: linear_cpu's biases must be contiguous float32 CPU vectors of ", w.size(0),
                " (w's rows), got ", b->scalar_type(), " ", b->sizes());
  Tensor out = poisoned(fresh({x.size(0), w.size(0)}, x.options()));
  if (out.numel() == 0) return out;
  if (x.size(1) == 0) {  // an empty product: the biases alone
    out.zero_();
    for (const auto& b : {bias, bias2})
      if (b.has_value()) out.add_(*b);
    return out;
  }
  const cpu::Linear args{x.size(0), x.size(1), w.size(0), x.data_ptr<float>(), w.data_ptr<float>(),
                         bias.has_value() ? bias->data_ptr<float>() : nullptr,
                         bias2.has_value() ? bias2->data_ptr<float>() : nullptr, out.data_ptr<float>(),
                         cached(w_panels, w), threads_here()};
  pybind11::gil_scoped_release no_gil;
  cpu::linear(args);
  return out;
}

void check_storage(const Tensor& tensor) {
  TORCH_CHECK(tensor.scalar_type() == at::kFloat || tensor.scalar_type() == at::kDouble ||
                  tensor.scalar_type() == at::kBFloat16,
              "fastrnn cpp backend: the CPU kernels run in float32, float64 or bfloat16, got ", tensor.scalar_type(),
              "; convert the module (module.float()) or use backend='aten'");
}

void check_float(const Tensor& xp) {
  check_storage(xp);
  TORCH_CHECK(xp.dim() == 3, "fastrnn cpp backend: xp must be 3-D (T, B, gates), got ", xp.dim(), "-D");
}

// The biases that add to a layer's input projection, where it has them (both or neither; else undefined): b_ih +
// b_hh, but for a GRU b_ih + (b_hr, b_hz, 0): its b_hn stays inside the reset product (fastrnn/functional.py,
// gru_layer, says the same in Python).
Tensor projection_bias(cpu::CellMode mode, const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh) {
  TORCH_CHECK(b_ih.has_value() == b_hh.has_value(), "fastrnn cpp backend: a layer has both biases or neither");
  if (!b_ih.has_value()) return Tensor();
  if (mode != cpu::CellMode::gru) return *b_ih + *b_hh;
  TORCH_CHECK(b_ih->dim() == 1 && b_ih->sizes() == b_hh->sizes() && b_ih->size(0) % 3 == 0,
              "fastrnn cpp backend: a GRU's biases must both have shape [3 * hidden], got ", b_ih->sizes(), " and ",
              b_hh->sizes());
  const int64_t H = b_ih->size(0) / 3;
  Tensor sum = b_ih->clone();
  sum.narrow(0, 0, 2 * H).add_(b_hh->narrow(0, 0, 2 * H));
  return sum;
}

// The input projection run inside the recurrence's steps in place of an xp (cpu::LstmForward's x, w_ih, bias).
struct ProjectionInSteps {
  const Tensor& x;     // (T, B, I)
  const Tensor& w_ih;  // (4H, I)
  Tensor bias;         // (4H) b_ih + b_hh, or undefined
  WeightPanels* panels;
};

// The kernels' view of a projection in the steps (none: an empty one, the forward reads xp).
template <class T>
cpu::StepProjection<kernel_t<T>> step_projection(const ProjectionInSteps* projection) {
  if (!projection) return {};
  const Tensor& bias = projection->bias;
  return {data<T>(projection->x), data<T>(projection->w_ih), bias.defined() ? data<T>(bias) : nullptr,
          projection->x.size(2), cached(projection->panels, projection->w_ih)};
}

// xp, or where it is null the projection's x: 3-D, of a storage type the kernels take (x: float32 or float64, which
// the GEMMs read as they are).
void check_projection_input(const Tensor* xp, const ProjectionInSteps* projection) {
  const Tensor& like = xp ? *xp : projection->x;
  check_storage(like);
  TORCH_CHECK(like.dim() == 3, "fastrnn cpp backend: ", xp ? "xp" : "x", " must be 3-D (T, B, ",
              xp ? "gates" : "input", "), got ", like.dim(), "-D");
  if (!xp)
    TORCH_CHECK(like.scalar_type() == at::kFloat || like.scalar_type() == at::kDouble,
                "fastrnn cpp backend: the projection in the steps takes float32 or float64, got ", like.scalar_type());
}

void check_projection(const ProjectionInSteps& projection, int64_t columns) {
  const Tensor& x = projection.x;
  check_input(x, "x", x, {x.size(0), x.size(1), x.size(2)}, "x");
  check_input(projection.w_ih, "w_ih", x, {columns, x.size(2)}, "x");
  if (projection.bias.defined()) check_input(projection.bias, "the bias", x, {columns}, "x");
}

// The LSTM recurrence on xp, or (xp null) on x with the projection in its steps.
using LstmResults = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;  // y, h_n, c_n, gates, c_all

LstmResults run_lstm_forward(const Tensor* xp, const ProjectionInSteps* projection, const Tensor& h0, const Tensor& c0,
                             const Tensor& w_hh, const std::optional<Tensor>& w_hr,
                             const std::optional<Tensor>& lengths, bool reverse, bool save, WeightPanels* w_hh_panels,
                             WeightPanels* w_hr_panels, bool scratch_xp) {
  const Tensor& like = xp ? *xp : projection->x;
  const char* like_name = xp ? "xp" : "x";
  check_projection_input(xp, projection);
  TORCH_CHECK(w_hh.dim() == 2, "fastrnn cpp backend: w_hh must be 2-D (4 * hidden, state), got ", w_hh.dim(), "-D");
  const int64_t T = like.size(0), B = like.size(1), R = h0.size(-1);
  const int64_t H = xp ? xp->size(2) / 4 : w_hh.size(0) / 4;
  if (xp) {
    TORCH_CHECK(xp->size(2) == 4 * H, "fastrnn cpp backend: xp's last dimension must be 4 * hidden, got ", xp->size(2));
    check_input(*xp, "xp", like, {T, B, 4 * H});
  } else {
    check_projection(*projection, 4 * H);
  }
  check_input(h0, "h0", like, {B, R}, like_name);
  check_input(c0, "c0", like, {B, H}, like_name);
  check_input(w_hh, "w_hh", like, {4 * H, R}, like_name);
  if (w_hr.has_value()) check_input(*w_hr, "w_hr", like, {R, H}, like_name);
  else TORCH_CHECK(R == H, "fastrnn cpp backend: without w_hr the state width must equal hidden (", H, "), got ", R);
  const std::vector<int64_t> live = live_rows(lengths, T, B);
  const bool zeroed = lengths.has_value();
  Tensor y = output(like, {T, B, R}, zeroed), h_n = at::empty_like(h0), c_n = at::empty_like(c0);
  // scratch_xp: xp is the caller's to overwrite, and the gates go into it (each step reads a unit block's xp
  // just before it writes that block's gates, on the same thread): no second (T, B, 4H) buffer to allocate
  // and fault in, and its lines are in cache when written. Padded input only: with lengths the gates of
  // finished rows must read 0.
  TORCH_CHECK(!(scratch_xp && zeroed), "fastrnn cpp backend: scratch_xp takes padded input (no lengths)");
  TORCH_CHECK(!(scratch_xp && !xp), "fastrnn cpp backend: scratch_xp needs an xp");
  Tensor gates = !save ? at::empty({0}, like.options()) : scratch_xp ? *xp : output(like, {T, B, 4 * H}, zeroed);
  Tensor c_all = save ? output(like, {T, B, H}, zeroed) : at::empty({0}, like.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, like.scalar_type(), "fastrnn_lstm_forward", [&] {
    cpu::LstmForward<kernel_t<scalar_t>> args{make_shape(T, B, H, R, reverse, live),
                                              xp ? data<scalar_t>(*xp) : nullptr,
                                              data<scalar_t>(h0),
                                              data<scalar_t>(c0),
                                              data<scalar_t>(w_hh),
                                              data_or_null<scalar_t>(w_hr),
                                              data<scalar_t>(y),
                                              data<scalar_t>(h_n),
                                              data<scalar_t>(c_n),
                                              save ? data<scalar_t>(gates) : nullptr,
                                              save ? data<scalar_t>(c_all) : nullptr,
                                              cached(w_hh_panels, w_hh),
                                              cached(w_hr_panels, w_hr)};
    args.in_steps = step_projection<scalar_t>(projection);
    pybind11::gil_scoped_release no_gil;
    cpu::lstm_forward(args);
  });
  return {y, h_n, c_n, gates, c_all};
}

LstmResults lstm_forward(const Tensor& xp, const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
                         const std::optional<Tensor>& w_hr, const std::optional<Tensor>& lengths, bool reverse,
                         bool save, WeightPanels* w_hh_panels, WeightPanels* w_hr_panels, bool scratch_xp) {
  return run_lstm_forward(&xp, nullptr, h0, c0, w_hh, w_hr, lengths, reverse, save, w_hh_panels, w_hr_panels,
                          scratch_xp);
}

// The LSTM recurrence with x W_ih^T + b_ih + b_hh computed inside its steps (no xp buffer).
LstmResults lstm_forward_projecting(const Tensor& x, const Tensor& w_ih, const std::optional<Tensor>& b_ih,
                                    const std::optional<Tensor>& b_hh, const Tensor& h0, const Tensor& c0,
                                    const Tensor& w_hh, const std::optional<Tensor>& lengths, bool reverse, bool save,
                                    WeightPanels* w_ih_panels, WeightPanels* w_hh_panels) {
  const ProjectionInSteps projection{x, w_ih, projection_bias(cpu::CellMode::lstm, b_ih, b_hh), w_ih_panels};
  return run_lstm_forward(nullptr, &projection, h0, c0, w_hh, std::nullopt, lengths, reverse, save, w_hh_panels,
                          nullptr, false);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_backward(const Tensor& dy, const Tensor& dh_n, const Tensor& dc_n,
                                                         const Tensor& c_prev, const Tensor& w_hh,
                                                         const std::optional<Tensor>& w_hr, const Tensor& gates,
                                                         const Tensor& c_all, const std::optional<Tensor>& lengths,
                                                         bool reverse, WeightPanels* w_hh_panels,
                                                         WeightPanels* w_hr_panels) {
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
                                           data<scalar_t>(dc0),
                                           cached(w_hh_panels, w_hh),
                                           cached(w_hr_panels, w_hr)};
    pybind11::gil_scoped_release no_gil;
    cpu::lstm_backward(args);
  });
  return {dgates, dh_all, dh0, dc0};
}

// The GRU recurrence on xp, or (xp null) on x with the projection in its steps (bias: b_ir + b_hr, b_iz + b_hz, b_in).
std::tuple<Tensor, Tensor, Tensor> run_gru_forward(const Tensor* xp, const ProjectionInSteps* projection,
                                                   const Tensor& h0, const Tensor& w_hh,
                                                   const std::optional<Tensor>& b_hn,
                                                   const std::optional<Tensor>& lengths, bool reverse, bool save,
                                                   WeightPanels* w_hh_panels) {
  const Tensor& like = xp ? *xp : projection->x;
  const char* like_name = xp ? "xp" : "x";
  check_projection_input(xp, projection);
  const int64_t T = like.size(0), B = like.size(1), H = h0.size(-1);
  if (xp) check_input(*xp, "xp", like, {T, B, 3 * H});
  else check_projection(*projection, 3 * H);
  check_input(h0, "h0", like, {B, H}, like_name);
  check_input(w_hh, "w_hh", like, {3 * H, H}, like_name);
  if (b_hn.has_value()) check_input(*b_hn, "b_hn", like, {H}, like_name);
  const std::vector<int64_t> live = live_rows(lengths, T, B);
  const bool zeroed = lengths.has_value();
  Tensor y = output(like, {T, B, H}, zeroed), h_n = at::empty_like(h0);
  Tensor saved = save ? output(like, {T, B, 4 * H}, zeroed) : at::empty({0}, like.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, like.scalar_type(), "fastrnn_gru_forward", [&] {
    cpu::GruForward<kernel_t<scalar_t>> args{make_shape(T, B, H, H, reverse, live),
                                             xp ? data<scalar_t>(*xp) : nullptr,
                                             data<scalar_t>(h0),
                                             data<scalar_t>(w_hh),
                                             data_or_null<scalar_t>(b_hn),
                                             data<scalar_t>(y),
                                             data<scalar_t>(h_n),
                                             save ? data<scalar_t>(saved) : nullptr,
                                             cached(w_hh_panels, w_hh)};
    args.in_steps = step_projection<scalar_t>(projection);
    pybind11::gil_scoped_release no_gil;
    cpu::gru_forward(args);
  });
  return {y, h_n, saved};
}

std::tuple<Tensor, Tensor, Tensor> gru_forward(const Tensor& xp, const Tensor& h0, const Tensor& w_hh,
                                               const std::optional<Tensor>& b_hn, const std::optional<Tensor>& lengths,
                                               bool reverse, bool save, WeightPanels* w_hh_panels) {
  return run_gru_forward(&xp, nullptr, h0, w_hh, b_hn, lengths, reverse, save, w_hh_panels);
}

// The GRU recurrence with x W_ih^T and its biases computed inside its steps (no xp buffer); b_hn stays in the
// reset product as gru_forward's.
std::tuple<Tensor, Tensor, Tensor> gru_forward_projecting(const Tensor& x, const Tensor& w_ih,
                                                          const std::optional<Tensor>& b_ih,
                                                          const std::optional<Tensor>& b_hh, const Tensor& h0,
                                                          const Tensor& w_hh, const std::optional<Tensor>& lengths,
                                                          bool reverse, bool save, WeightPanels* w_ih_panels,
                                                          WeightPanels* w_hh_panels) {
  const ProjectionInSteps projection{x, w_ih, projection_bias(cpu::CellMode::gru, b_ih, b_hh), w_ih_panels};
  const int64_t H = h0.size(-1);
  const std::optional<Tensor> b_hn =
      b_hh.has_value() && b_hh->dim() == 1 && b_hh->size(0) == 3 * H ? std::optional<Tensor>(b_hh->narrow(0, 2 * H, H))
                                                                      : std::nullopt;
  return run_gru_forward(nullptr, &projection, h0, w_hh, b_hn, lengths, reverse, save, w_hh_panels);
}

std::tuple<Tensor, Tensor, Tensor> gru_backward(const Tensor& dy, const Tensor& dh_n, const Tensor& h_prev,
                                                const Tensor& w_hh, const Tensor& saved,
                                                const std::optional<Tensor>& lengths, bool reverse,
                                                WeightPanels* w_hh_panels) {
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
                                          data<scalar_t>(dh0),
                                          cached(w_hh_panels, w_hh)};
    pybind11::gil_scoped_release no_gil;
    cpu::gru_backward(args);
  });
  return {dxp, dhn, dh0};
}

// The Elman recurrence on xp, or (xp null) on x with the projection in its steps (bias: b_ih + b_hh).
std::tuple<Tensor, Tensor> run_rnn_forward(const Tensor* xp, const ProjectionInSteps* projection, const Tensor& h0,
                                           const Tensor& w_hh, bool relu, const std::optional<Tensor>& lengths,
                                           bool reverse, WeightPanels* w_hh_panels) {
  const Tensor& like = xp ? *xp : projection->x;
  const char* like_name = xp ? "xp" : "x";
  check_projection_input(xp, projection);
  const int64_t T = like.size(0), B = like.size(1), H = h0.size(-1);
  if (xp) check_input(*xp, "xp", like, {T, B, H});
  else check_projection(*projection, H);
  check_input(h0, "h0", like, {B, H}, like_name);
  check_input(w_hh, "w_hh", like, {H, H}, like_name);
  const std::vector<int64_t> live = live_rows(lengths, T, B);
  Tensor y = output(like, {T, B, H}, lengths.has_value()), h_n = output(h0, {B, H}, false);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, like.scalar_type(), "fastrnn_rnn_forward", [&] {
    cpu::RnnForward<kernel_t<scalar_t>> args{make_shape(T, B, H, H, reverse, live), relu,
                                             xp ? data<scalar_t>(*xp) : nullptr, data<scalar_t>(h0),
                                             data<scalar_t>(w_hh), data<scalar_t>(y), data<scalar_t>(h_n),
                                             cached(w_hh_panels, w_hh)};
    args.in_steps = step_projection<scalar_t>(projection);
    pybind11::gil_scoped_release no_gil;
    cpu::rnn_forward(args);
  });
  return {y, h_n};
}

std::tuple<Tensor, Tensor> rnn_forward(const Tensor& xp, const Tensor& h0, const Tensor& w_hh, bool relu,
                                       const std::optional<Tensor>& lengths, bool reverse, bool save,
                                       WeightPanels* w_hh_panels) {
  (void)save;  // the backward reads act' off y: nothing more to keep
  return run_rnn_forward(&xp, nullptr, h0, w_hh, relu, lengths, reverse, w_hh_panels);
}

// The Elman recurrence with x W_ih^T + b_ih + b_hh computed inside its steps (no xp buffer).
std::tuple<Tensor, Tensor> rnn_forward_projecting(const Tensor& x, const Tensor& w_ih,
                                                  const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
                                                  const Tensor& h0, const Tensor& w_hh, bool relu,
                                                  const std::optional<Tensor>& lengths, bool reverse,
                                                  WeightPanels* w_ih_panels, WeightPanels* w_hh_panels) {
  const ProjectionInSteps projection{x, w_ih, projection_bias(cpu::CellMode::rnn_tanh, b_ih, b_hh), w_ih_panels};
  return run_rnn_forward(nullptr, &projection, h0, w_hh, relu, lengths, reverse, w_hh_panels);
}

std::tuple<Tensor, Tensor> rnn_backward(const Tensor& dy, const Tensor& dh_n, const Tensor& y, const Tensor& w_hh,
                                        bool relu, const std::optional<Tensor>& lengths, bool reverse,
                                        WeightPanels* w_hh_panels) {
  check_float(dy);
  const int64_t T = dy.size(0), B = dy.size(1), H = dy.size(2);
  check_input(dh_n, "dh_n", dy, {B, H});
  check_input(y, "y", dy, {T, B, H});
  check_input(w_hh, "w_hh", dy, {H, H});
  const std::vector<int64_t> live = live_rows(lengths, T, B);
  Tensor dxp = output(dy, {T, B, H}, lengths.has_value()), dh0 = output(dh_n, {B, H}, false);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dy.scalar_type(), "fastrnn_rnn_backward", [&] {
    const cpu::RnnBackward<kernel_t<scalar_t>> args{make_shape(T, B, H, H, reverse, live), relu, data<scalar_t>(dy),
                                                    data<scalar_t>(dh_n), data<scalar_t>(y), data<scalar_t>(w_hh),
                                                    data<scalar_t>(dxp), data<scalar_t>(dh0),
                                                    cached(w_hh_panels, w_hh)};
    pybind11::gil_scoped_release no_gil;
    cpu::rnn_backward(args);
  });
  return {dxp, dh0};
}

// --- the cells -------------------------------------------------------------------------------------
// Called once per decoder step at small sizes: checks and output allocations only, no other at:: op.

cpu::CellMode cell_mode(const std::string& mode) {
  if (mode == "LSTM") return cpu::CellMode::lstm;
  if (mode == "GRU") return cpu::CellMode::gru;
  if (mode == "RNN_TANH") return cpu::CellMode::rnn_tanh;
  if (mode == "RNN_RELU") return cpu::CellMode::rnn_relu;
  TORCH_CHECK(false, "fastrnn cpp backend: unknown cell mode '", mode, "'; expected LSTM, GRU, RNN_TANH or RNN_RELU");
}

int64_t gates_of(cpu::CellMode mode) { return mode == cpu::CellMode::lstm ? 4 : mode == cpu::CellMode::gru ? 3 : 1; }

at::ScalarType compute_type(at::ScalarType storage) { return storage == at::kDouble ? at::kDouble : at::kFloat; }

// The vector width in elements of `compute` on the instruction set in use: a packing's last dimension.
int64_t lanes_now(at::ScalarType compute) {
  return cpu::vector_bytes() / static_cast<int64_t>(c10::elementSize(compute));
}

// A cell's output, allocated without at::empty's trip through the dispatcher (a visible part of a call
// that costs a few microseconds in all).
Tensor cell_output(at::IntArrayRef shape, const Tensor& like) {
  return poisoned(at::detail::empty_cpu(shape, like.scalar_type()));
}

// Below this many multiply-adds a cell call keeps the GIL: releasing and retaking it would cost this
// thread more than the wait costs any other.
constexpr int64_t kReleaseGilFromWork = int64_t(1) << 16;

template <class T>
using compute_t = typename cpu::ComputeOf<kernel_t<T>>::type;

// w (gates * H, K) as the cell kernels read it: [ceil(H / lanes), K, gates, lanes] in the compute type,
// for the vector width of the instruction set in use.
Tensor cell_pack(const Tensor& w, int64_t gates) {
  check_storage(w);
  TORCH_CHECK(w.device().is_cpu(), "fastrnn cpp backend: w must be a CPU tensor, got one on ", w.device());
  TORCH_CHECK(gates >= 1 && w.dim() == 2 && w.size(0) % gates == 0, "fastrnn cpp backend: cell_pack_cpu takes a "
              "weight of shape (gates * hidden, depth) with gates = ", gates, ", got ", w.sizes());
  const Tensor source = w.contiguous();
  const int64_t H = w.size(0) / gates, K = w.size(1);
  const at::ScalarType compute = compute_type(w.scalar_type());
  const int64_t lanes = lanes_now(compute);
  Tensor packed = at::empty({(H + lanes - 1) / lanes, K, gates, lanes}, w.options().dtype(compute));
  bool done = false;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, w.scalar_type(), "fastrnn_cell_pack", [&] {
    const cpu::CellPack<kernel_t<scalar_t>> args{data<scalar_t>(source), gates, H, K, static_cast<int>(lanes),
                                                 static_cast<compute_t<scalar_t>*>(packed.data_ptr())};
    done = cpu::cell_pack(args);
  });
  TORCH_CHECK(done, "fastrnn cpp backend: the instruction set changed while packing; pack again");
  return packed;
}

// A packing by cell_pack_cpu of a (gates * units, depth) weight for storage like x's; returns its lanes.
// The unit count is seen only to a block of lanes units (the packing pads the last block with zeros).
int64_t check_packed(const Tensor& packed, const char* name, const Tensor& x, int64_t gates, int64_t units,
                     int64_t depth) {
  const at::ScalarType compute = compute_type(x.scalar_type());
  TORCH_CHECK(packed.device().is_cpu() && packed.scalar_type() == compute && packed.dim() == 4 &&
                  packed.is_contiguous(),
              "fastrnn cpp backend: ", name, " must be a weight packed by cell_pack_cpu for ", x.scalar_type(),
              " (a contiguous 4-D ", compute, " CPU tensor), got ", packed.scalar_type(), " ", packed.sizes());
  const int64_t lanes = packed.size(3), now = lanes_now(compute);
  TORCH_CHECK(lanes == now, "fastrnn cpp backend: ", name, " was packed for vectors of ", lanes,
              " lanes, but the instruction set in use (", cpu::instruction_set(), ") has ", now,
              ": pack the weight again (cell_pack_cpu)");
  TORCH_CHECK(packed.size(0) == (units + lanes - 1) / lanes && packed.size(1) == depth && packed.size(2) == gates,
              "fastrnn cpp backend: ", name, " is a packing of shape ", packed.sizes(), " but this call needs a "
              "weight of shape [", gates * units, ", ", depth, "] (", gates, " gates of ", units, " units), packed as [",
              (units + lanes - 1) / lanes, ", ", depth, ", ", gates, ", ", lanes, "]");
  return lanes;
}

// The step itself, on arguments its callers have checked: (B, I) rows of x, (B, H) rows of h and c, each
// contiguous; writes h_new, c_new (LSTM) and saved (when given).
void run_cell_forward(cpu::CellMode mode, int64_t B, int64_t I, int64_t H, int64_t lanes, const Tensor& x,
                      const Tensor& h, const std::optional<Tensor>& c, const Tensor& packed_ih, const Tensor& packed_hh,
                      const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh, const Tensor& h_new,
                      const Tensor& c_new, const Tensor& saved, bool keeps) {
  const bool lstm = mode == cpu::CellMode::lstm;
  bool done = false;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "fastrnn_cell_forward", [&] {
    const cpu::CellForward<kernel_t<scalar_t>> args{mode,
                                                    B,
                                                    I,
                                                    H,
                                                    static_cast<int>(lanes),
                                                    threads_here(),
                                                    data<scalar_t>(x),
                                                    data<scalar_t>(h),
                                                    data_or_null<scalar_t>(c),
                                                    static_cast<const compute_t<scalar_t>*>(packed_ih.data_ptr()),
                                                    static_cast<const compute_t<scalar_t>*>(packed_hh.data_ptr()),
                                                    data_or_null<scalar_t>(b_ih),
                                                    data_or_null<scalar_t>(b_hh),
                                                    data<scalar_t>(h_new),
                                                    lstm ? data<scalar_t>(c_new) : nullptr,
                                                    keeps ? data<scalar_t>(saved) : nullptr};
    std::optional<pybind11::gil_scoped_release> no_gil;
    if (B * gates_of(mode) * H * (I + H) >= kReleaseGilFromWork) no_gil.emplace();
    done = cpu::cell_forward(args);
  });
  TORCH_CHECK(done, "fastrnn cpp backend: the weights were packed for vectors of ", lanes,
              " lanes, but the instruction set in use (", cpu::instruction_set(), ") has ",
              lanes_now(compute_type(x.scalar_type())), ": pack the weights again (cell_pack_cpu)");
}

// The checks both entries share, on x and the states in the shapes the caller gives; returns the packing's lanes.
int64_t check_cell_arguments(cpu::CellMode mode, const std::string& mode_name, const Tensor& x, const Tensor& h,
                             const std::optional<Tensor>& c, const Tensor& packed_ih, const Tensor& packed_hh,
                             const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
                             at::IntArrayRef x_shape, at::IntArrayRef state_shape, int64_t I, int64_t H) {
  const int64_t gates = gates_of(mode);
  const bool lstm = mode == cpu::CellMode::lstm;
  check_input(x, "x", x, x_shape, "x");
  check_input(h, "h", x, state_shape, "x");
  TORCH_CHECK(c.has_value() == lstm, "fastrnn cpp backend: the ", mode_name, " cell ",
              lstm ? "needs the cell state c" : "has no cell state: c must be None");
  if (lstm) check_input(*c, "c", x, state_shape, "x");
  const int64_t lanes = check_packed(packed_ih, "packed_ih", x, gates, H, I);
  check_packed(packed_hh, "packed_hh", x, gates, H, H);
  if (b_ih.has_value()) check_input(*b_ih, "b_ih", x, {gates * H}, "x");
  if (b_hh.has_value()) check_input(*b_hh, "b_hh", x, {gates * H}, "x");
  return lanes;
}

std::tuple<Tensor, Tensor, Tensor> cell_forward(const std::string& mode_name, const Tensor& x, const Tensor& h,
                                                const std::optional<Tensor>& c, const Tensor& packed_ih,
                                                const Tensor& packed_hh, const std::optional<Tensor>& b_ih,
                                                const std::optional<Tensor>& b_hh, bool save) {
  const cpu::CellMode mode = cell_mode(mode_name);
  const bool lstm = mode == cpu::CellMode::lstm, keeps = save && gates_of(mode) > 1;
  check_storage(x);
  TORCH_CHECK(x.dim() == 2 && h.dim() == 2, "fastrnn cpp backend: x and h must be 2-D (batch, features), got ",
              x.sizes(), " and ", h.sizes());
  const int64_t B = x.size(0), I = x.size(1), H = h.size(1);
  const int64_t lanes =
      check_cell_arguments(mode, mode_name, x, h, c, packed_ih, packed_hh, b_ih, b_hh, {B, I}, {B, H}, I, H);
  Tensor h_new = cell_output({B, H}, x);
  Tensor c_new = lstm ? cell_output({B, H}, x) : cell_output({0}, x);
  Tensor saved = keeps ? cell_output({B, 4 * H}, x) : cell_output({0}, x);
  run_cell_forward(mode, B, I, H, lanes, x, h, c, packed_ih, packed_hh, b_ih, b_hh, h_new, c_new, saved, keeps);
  return {h_new, c_new, saved};
}

// One step of a one-layer, one-direction layer (T = 1) in the layer's own shapes: x (1, B, I), or (B, 1, I) when
// batch_first; h and c (1, B, H). Returns (output, h_n, c_n, saved; c_n empty but for the LSTM, saved as
// cell_forward's), the output in x's layout: a copy of h_n, as nn's layers return two tensors. The layer's
// streaming calls take this road, where a view, a copy or a squeeze from Python each cost more than the step's
// arithmetic at small sizes.
std::tuple<Tensor, Tensor, Tensor, Tensor> layer_step(const std::string& mode_name, const Tensor& x, const Tensor& h,
                                                      const std::optional<Tensor>& c, const Tensor& packed_ih,
                                                      const Tensor& packed_hh, const std::optional<Tensor>& b_ih,
                                                      const std::optional<Tensor>& b_hh, bool batch_first, bool save) {
  const cpu::CellMode mode = cell_mode(mode_name);
  const bool lstm = mode == cpu::CellMode::lstm, keeps = save && gates_of(mode) > 1;
  check_storage(x);
  TORCH_CHECK(x.dim() == 3 && h.dim() == 3 && x.size(batch_first ? 1 : 0) == 1,
              "fastrnn cpp backend: layer_step_cpu takes one step of x (", batch_first ? "B, 1" : "1, B",
              ", features) and h (1, B, hidden), got ", x.sizes(), " and ", h.sizes());
  const int64_t B = x.size(batch_first ? 0 : 1), I = x.size(2), H = h.size(2);
  const std::vector<int64_t> x_shape =
      batch_first ? std::vector<int64_t>{B, 1, I} : std::vector<int64_t>{1, B, I};
  const int64_t lanes = check_cell_arguments(mode, mode_name, x, h, c, packed_ih, packed_hh, b_ih, b_hh, x_shape,
                                             {1, B, H}, I, H);
  Tensor h_n = cell_output({1, B, H}, x);
  Tensor c_n = lstm ? cell_output({1, B, H}, x) : cell_output({0}, x);
  Tensor saved = keeps ? cell_output({B, 4 * H}, x) : cell_output({0}, x);
  Tensor output = cell_output(batch_first ? at::IntArrayRef{B, 1, H} : at::IntArrayRef{1, B, H}, x);
  run_cell_forward(mode, B, I, H, lanes, x, h, c, packed_ih, packed_hh, b_ih, b_hh, h_n, c_n, saved, keeps);
  std::memcpy(output.data_ptr(), h_n.data_ptr(), static_cast<size_t>(h_n.numel()) * h_n.element_size());
  return {output, h_n, c_n, saved};
}

// The pointwise backward of one step: (dgx, dgh, dh_direct, dc_prev), empty where the cell has none;
// dgh is dgx itself where both sides share the gradient (LSTM, Elman).
std::tuple<Tensor, Tensor, Tensor, Tensor> cell_backward(const std::string& mode_name, const Tensor& dh,
                                                         const std::optional<Tensor>& dc, const Tensor& h,
                                                         const std::optional<Tensor>& c, const Tensor& h_new,
                                                         const std::optional<Tensor>& c_new, const Tensor& saved) {
  const cpu::CellMode mode = cell_mode(mode_name);
  check_storage(dh);
  TORCH_CHECK(dh.dim() == 2, "fastrnn cpp backend: dh must be 2-D (batch, hidden), got ", dh.sizes());
  const int64_t B = dh.size(0), H = dh.size(1);
  check_input(dh, "dh", dh, {B, H}, "dh");
  const bool lstm = mode == cpu::CellMode::lstm, gru = mode == cpu::CellMode::gru;
  if (lstm) {
    TORCH_CHECK(c.has_value() && c_new.has_value(), "fastrnn cpp backend: the LSTM cell's backward needs c and c_new");
    if (dc.has_value()) check_input(*dc, "dc", dh, {B, H}, "dh");
    check_input(*c, "c", dh, {B, H}, "dh");
    check_input(*c_new, "c_new", dh, {B, H}, "dh");
    check_input(saved, "saved", dh, {B, 4 * H}, "dh");
  } else if (gru) {
    check_input(h, "h", dh, {B, H}, "dh");
    check_input(saved, "saved", dh, {B, 4 * H}, "dh");
  } else {
    check_input(h_new, "h_new", dh, {B, H}, "dh");
  }
  const Tensor dgx = cell_output({B, (lstm ? 4 : gru ? 3 : 1) * H}, dh);
  const Tensor dgh = gru ? cell_output({B, 3 * H}, dh) : dgx;
  const Tensor direct = gru ? cell_output({B, H}, dh) : cell_output({0}, dh);
  const Tensor dc_prev = lstm ? cell_output({B, H}, dh) : cell_output({0}, dh);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dh.scalar_type(), "fastrnn_cell_backward", [&] {
    const cpu::CellBackward<kernel_t<scalar_t>> args{mode,
                                                     B,
                                                     H,
                                                     threads_here(),
                                                     data<scalar_t>(dh),
                                                     lstm ? data_or_null<scalar_t>(dc) : nullptr,
                                                     gru ? data<scalar_t>(h) : nullptr,
                                                     lstm ? data<scalar_t>(*c) : nullptr,
                                                     lstm || gru ? nullptr : data<scalar_t>(h_new),
                                                     lstm ? data<scalar_t>(*c_new) : nullptr,
                                                     lstm || gru ? data<scalar_t>(saved) : nullptr,
                                                     data<scalar_t>(dgx),
                                                     gru ? data<scalar_t>(dgh) : nullptr,
                                                     gru ? data<scalar_t>(direct) : nullptr,
                                                     lstm ? data<scalar_t>(dc_prev) : nullptr};
    std::optional<pybind11::gil_scoped_release> no_gil;
    if (B * H * 32 >= kReleaseGilFromWork) no_gil.emplace();
    cpu::cell_backward(args);
  });
  return {dgx, dgh, direct, dc_prev};
}

// --- an inference's layer stack ----------------------------------------------------------------------
// One call for what the layer modules' inference road would run layer by layer (fastrnn/modules.py,
// _forward_inference): per layer and direction the input projection, then the recurrence (lstm_forward,
// gru_forward, rnn_forward with save=false), the directions' outputs side by side as the next layer's
// input, the final states stacked as nn returns them. Measured on an Ice Lake core, 1 thread, the Python of
// that road cost ~50 us a call, a quarter of an LSTM's at B = 1, H = 64, T = 128.

// x (T, B, I) W_ih^T plus the biases that add to it (b_ih + b_hh; a GRU's b_hn stays in the recurrence), as
// the Python road computes it: the own kernel (linear) for float32 products of up to own_limit multiply-adds,
// at::linear otherwise (the caller routes here only where that is the Python road's choice too).
Tensor stack_projection(cpu::CellMode mode, const Tensor& x, const Tensor& w_ih, const std::optional<Tensor>& b_ih,
                        const std::optional<Tensor>& b_hh, WeightPanels* panels, int64_t own_limit) {
  const int64_t T = x.size(0), B = x.size(1), G = w_ih.size(0);
  const Tensor rows = x.view({T * B, x.size(2)});
  std::optional<Tensor> bias = b_ih, bias2 = b_hh;  // summed by the GEMM, as the layer functions pass them
  if (mode == cpu::CellMode::gru && b_ih.has_value()) {
    bias = projection_bias(mode, b_ih, b_hh);
    bias2.reset();
  }
  Tensor xp;
  if (x.scalar_type() == at::kFloat && T * B * x.size(2) * G <= own_limit) {
    xp = linear(rows, w_ih, bias, bias2, panels);
  } else {
    std::optional<Tensor> summed = bias;
    if (bias2.has_value()) summed = bias.has_value() ? *bias + *bias2 : *bias2;
    xp = at::linear(rows, w_ih, summed);
  }
  return xp.view({T, B, G});
}

// input (T, B, I), or (B, T, I) when batch_first; states: none (zeros) or nn's (L * D, B, H) tensors (h, and c for
// an LSTM); weights: (w_ih, w_hh, b_ih, b_hh) per layer-direction in nn's order, biases None where the layer has
// none; panels: (W_ih's, W_hh's) per layer-direction; in_steps: empty, or per layer-direction whether its projection
// runs inside its steps (lstm_, gru_, rnn_forward_projecting). Returns (output, final states).
std::tuple<Tensor, std::vector<Tensor>> stack_inference(const std::string& mode_name, const Tensor& input,
                                                        const std::vector<Tensor>& states,
                                                        const std::vector<std::optional<Tensor>>& weights,
                                                        const std::vector<WeightPanels*>& panels, int64_t layers,
                                                        bool bidirectional, bool batch_first, int64_t own_limit,
                                                        const std::vector<bool>& in_steps) {
  const cpu::CellMode mode = cell_mode(mode_name);
  const int64_t directions = bidirectional ? 2 : 1, count = layers * directions;
  const size_t state_count = mode == cpu::CellMode::lstm ? 2 : 1;
  check_storage(input);
  TORCH_CHECK(input.dim() == 3 && input.device().is_cpu(), "fastrnn cpp backend: stack_inference_cpu takes a 3-D ",
              "CPU input, got ", input.dim(), "-D on ", input.device());
  TORCH_CHECK(layers >= 1 && weights.size() == size_t(4 * count) && panels.size() == size_t(2 * count),
              "fastrnn cpp backend: stack_inference_cpu takes 4 weights and 2 panels per layer-direction (",
              count, "), got ", weights.size(), " and ", panels.size());
  TORCH_CHECK(states.empty() || states.size() == state_count, "fastrnn cpp backend: stack_inference_cpu takes ",
              state_count, " initial state tensors or none, got ", states.size());
  TORCH_CHECK(in_steps.empty() || in_steps.size() == size_t(count),
              "fastrnn cpp backend: stack_inference_cpu's in_steps holds one entry per layer-direction (", count,
              "), got ", in_steps.size());
  for (int64_t index = 0; index < count; ++index)
    TORCH_CHECK(weights[4 * index].has_value() && weights[4 * index + 1].has_value() &&
                    weights[4 * index + 2].has_value() == weights[4 * index + 3].has_value(),
                "fastrnn cpp backend: stack_inference_cpu: layer-direction ", index, " needs w_ih and w_hh, and ",
                "both biases or neither");
  Tensor x = batch_first ? input.transpose(0, 1).contiguous() : input.contiguous();
  const int64_t B = x.size(1), H = weights[1]->size(1);
  for (const Tensor& state : states) check_input(state, "hx", x, {count, B, H}, "input");
  const Tensor zeros = states.empty() ? at::zeros({B, H}, x.options()) : Tensor();
  auto initial = [&](size_t which, int64_t index) { return states.empty() ? zeros : states[which][index]; };
  std::vector<std::vector<Tensor>> finals(state_count);
  for (int64_t layer = 0; layer < layers; ++layer) {
    std::vector<Tensor> outputs;
    for (int64_t direction = 0; direction < directions; ++direction) {
      const int64_t index = layer * directions + direction;
      const Tensor& w_ih = *weights[4 * index];
      const Tensor& w_hh = *weights[4 * index + 1];
      const std::optional<Tensor>& b_ih = weights[4 * index + 2];
      const std::optional<Tensor>& b_hh = weights[4 * index + 3];
      const bool reverse = direction == 1;
      Tensor y;
      auto projected = [&] { return stack_projection(mode, x, w_ih, b_ih, b_hh, panels[2 * index], own_limit); };
      if (mode == cpu::CellMode::lstm) {
        Tensor h_n, c_n, unused_gates, unused_c;
        if (!in_steps.empty() && in_steps[index])
          std::tie(y, h_n, c_n, unused_gates, unused_c) =
              lstm_forward_projecting(x, w_ih, b_ih, b_hh, initial(0, index), initial(1, index), w_hh, std::nullopt,
                                      reverse, false, panels[2 * index], panels[2 * index + 1]);
        else
          std::tie(y, h_n, c_n, unused_gates, unused_c) = lstm_forward(
              projected(), initial(0, index), initial(1, index), w_hh, std::nullopt, std::nullopt, reverse, false,
              panels[2 * index + 1], nullptr, false);
        finals[0].push_back(h_n);
        finals[1].push_back(c_n);
      } else if (mode == cpu::CellMode::gru) {
        Tensor h_n, unused_saved;
        const std::optional<Tensor> b_hn =
            b_hh.has_value() ? std::optional<Tensor>(b_hh->narrow(0, 2 * H, H)) : std::nullopt;
        if (!in_steps.empty() && in_steps[index])
          std::tie(y, h_n, unused_saved) = gru_forward_projecting(x, w_ih, b_ih, b_hh, initial(0, index), w_hh,
                                                                  std::nullopt, reverse, false, panels[2 * index],
                                                                  panels[2 * index + 1]);
        else
          std::tie(y, h_n, unused_saved) = gru_forward(projected(), initial(0, index), w_hh, b_hn, std::nullopt,
                                                       reverse, false, panels[2 * index + 1]);
        finals[0].push_back(h_n);
      } else {
        Tensor h_n;
        const bool relu = mode == cpu::CellMode::rnn_relu;
        if (!in_steps.empty() && in_steps[index])
          std::tie(y, h_n) = rnn_forward_projecting(x, w_ih, b_ih, b_hh, initial(0, index), w_hh, relu, std::nullopt,
                                                    reverse, panels[2 * index], panels[2 * index + 1]);
        else
          std::tie(y, h_n) = rnn_forward(projected(), initial(0, index), w_hh, relu, std::nullopt, reverse, false,
                                         panels[2 * index + 1]);
        finals[0].push_back(h_n);
      }
      outputs.push_back(y);
    }
    x = outputs.size() == 1 ? outputs[0] : at::cat(outputs, 2);
  }
  std::vector<Tensor> stacked;
  for (const std::vector<Tensor>& states_of_one_kind : finals) stacked.push_back(at::stack(states_of_one_kind));
  return {batch_first ? x.transpose(0, 1).contiguous() : x, stacked};
}

void set_cpu_instruction_set(const std::string& name) {
  TORCH_CHECK(cpu::set_instruction_set(name.c_str()), "fastrnn: instruction set '", name,
              "' is not available here; this CPU and build support: ", cpu::supported_instruction_sets());
}

}  // namespace
#endif  // !FASTRNN_CUDA_ONLY

#if defined(FASTRNN_WITH_CUDA) || defined(FASTRNN_SIMT_EMULATION)
// --- CUDA kernels (csrc/cuda/) ------------------------------------------------------------------------
#include <cmath>
#include <cstdlib>
#include <limits>

#include "cuda/api.h"

#if defined(FASTRNN_WITH_CUDA)
// c10's CUDA headers need only the CUDA runtime's; ATen/cuda's would pull in cuBLAS and cuSPARSE.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace fastrnn_cuda_ops {

using torch::Tensor;
namespace gpu = fastrnn::cuda;

#if defined(FASTRNN_SIMT_EMULATION)
constexpr const char* kDevice = "CPU (the CUDA kernels run in the SIMT emulator)";
bool on_device(const Tensor& tensor) { return tensor.device().is_cpu(); }
void* stream_of(const Tensor&) { return nullptr; }
struct DeviceGuard {
  explicit DeviceGuard(const Tensor&) {}
};
// Outputs start as NaN, so an element a kernel forgets to write can never pass a comparison.
bool poison_outputs = true;
#else
constexpr const char* kDevice = "CUDA";
bool on_device(const Tensor& tensor) { return tensor.device().is_cuda(); }
void* stream_of(const Tensor& tensor) { return c10::cuda::getCurrentCUDAStream(tensor.device().index()).stream(); }
struct DeviceGuard {  // the kernels' launches and device queries go to the inputs' GPU
  explicit DeviceGuard(const Tensor& tensor) : guard(tensor.device()) {}
  c10::cuda::CUDAGuard guard;
};
bool poison_outputs = std::getenv("FASTRNN_CUDA_POISON") != nullptr && std::getenv("FASTRNN_CUDA_POISON")[0] == '1';
#endif

gpu::DType dtype_of(const Tensor& xp) {
  switch (xp.scalar_type()) {
    case at::kDouble: return gpu::DType::float64;
    case at::kFloat: return gpu::DType::float32;
    case at::kHalf: return gpu::DType::float16;
    case at::kBFloat16: return gpu::DType::bfloat16;
    default:
      TORCH_CHECK(false, "fastrnn cuda backend: the CUDA kernels run in float64, float32, float16 or bfloat16, got ",
                  xp.scalar_type());
  }
}

void check_first(const Tensor& xp, const char* name) {
  TORCH_CHECK(on_device(xp), "fastrnn cuda backend: ", name, " must be a ", kDevice, " tensor, got one on ", xp.device());
  dtype_of(xp);
  TORCH_CHECK(xp.dim() == 3, "fastrnn cuda backend: ", name, " must be 3-D (T, B, features), got ", xp.dim(), "-D");
}

void check_input(const Tensor& tensor, const char* name, const Tensor& like, std::vector<int64_t> shape) {
  TORCH_CHECK(on_device(tensor) && tensor.device() == like.device(), "fastrnn cuda backend: ", name,
              " must be on ", like.device(), " like the other inputs, got one on ", tensor.device());
  TORCH_CHECK(tensor.scalar_type() == like.scalar_type(), "fastrnn cuda backend: ", name, " has dtype ",
              tensor.scalar_type(), " but the other inputs have ", like.scalar_type());
  TORCH_CHECK(tensor.sizes() == at::IntArrayRef(shape), "fastrnn cuda backend: ", name, " must have shape ",
              at::IntArrayRef(shape), ", got ", tensor.sizes());
  TORCH_CHECK(tensor.is_contiguous(), "fastrnn cuda backend: ", name, " must be contiguous");
}

// lengths: None, or a CPU int64 tensor (B,) sorted non-increasing in [0, T]; returned as int32 on the
// kernels' device (an undefined tensor when None).
Tensor device_lengths(const std::optional<Tensor>& lengths, int64_t steps, int64_t batch, const Tensor& like) {
  if (!lengths.has_value()) return Tensor();
  return fastrnn_binding::checked_lengths(*lengths, steps, batch, "cuda").to(at::kInt).to(like.device());
}

Tensor output(const Tensor& like, std::vector<int64_t> shape) {
  Tensor out = at::empty(shape, like.options());
  if (poison_outputs) out.fill_(std::numeric_limits<double>::quiet_NaN());
  return out;
}

gpu::Options options(bool allow_tf32, int strategy, int ctas, int threads, int row_tile, int k_chunk, const Tensor& like) {
  TORCH_CHECK(strategy >= 0 && strategy <= 2, "fastrnn cuda backend: strategy must be 0 (automatic), 1 (persistent) "
              "or 2 (stepwise), got ", strategy);
  gpu::Options o;
  o.strategy = static_cast<gpu::Strategy>(strategy);
  o.ctas = ctas;
  o.threads = threads;
  o.row_tile = row_tile;
  o.k_chunk = k_chunk;
  o.allow_tf32 = allow_tf32;
  o.stream = stream_of(like);
  return o;
}

gpu::Problem problem(int64_t steps, int64_t batch, int64_t hidden, int64_t state, bool projection, bool reverse,
                     const Tensor& like, const Tensor& lengths) {
  TORCH_CHECK(steps <= std::numeric_limits<int32_t>::max() && batch <= std::numeric_limits<int32_t>::max() &&
                  4 * hidden <= std::numeric_limits<int32_t>::max() && state <= std::numeric_limits<int32_t>::max(),
              "fastrnn cuda backend: sizes beyond 2**31 are not supported");
  return {steps, batch, hidden, state, projection, reverse, dtype_of(like),
          lengths.defined() ? lengths.data_ptr<int32_t>() : nullptr};
}

const void* data_or_null(const std::optional<Tensor>& tensor) { return tensor.has_value() ? tensor->data_ptr() : nullptr; }

Tensor workspace(gpu::Kernel kernel, const gpu::Problem& p, const Tensor& like) {
  return at::empty({static_cast<int64_t>(gpu::workspace_bytes(kernel, p))}, like.options().dtype(at::kByte));
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(const Tensor& xp, const Tensor& h0, const Tensor& c0,
                                                                const Tensor& w_hh, const std::optional<Tensor>& w_hr,
                                                                const std::optional<Tensor>& lengths, bool reverse,
                                                                bool save, bool allow_tf32, int strategy, int ctas,
                                                                int threads, int row_tile, int k_chunk) {
  check_first(xp, "xp");
  const int64_t T = xp.size(0), B = xp.size(1), H = xp.size(2) / 4, R = h0.dim() == 2 ? h0.size(1) : -1;
  TORCH_CHECK(xp.size(2) == 4 * H && H > 0, "fastrnn cuda backend: xp's last dimension must be 4 * hidden, got ", xp.size(2));
  check_input(xp, "xp", xp, {T, B, 4 * H});
  check_input(h0, "h0", xp, {B, R});
  check_input(c0, "c0", xp, {B, H});
  check_input(w_hh, "w_hh", xp, {4 * H, R});
  if (w_hr.has_value()) check_input(*w_hr, "w_hr", xp, {R, H});
  else TORCH_CHECK(R == H, "fastrnn cuda backend: without w_hr the state width must equal hidden (", H, "), got ", R);
  const DeviceGuard guard(xp);
  const Tensor lens = device_lengths(lengths, T, B, xp);
  // save=false: an inference call; what only the backward needs (gates, cell states) is neither written nor returned.
  Tensor y = output(xp, {T, B, R});
  Tensor gates = save ? output(xp, {T, B, 4 * H}) : at::empty({0}, xp.options());
  Tensor c_all = save ? output(xp, {T, B, H}) : at::empty({0}, xp.options());
  if (T == 0 || B == 0) return {y, h0.clone(), c0.clone(), gates, c_all};
  Tensor h_n = output(h0, {B, R}), c_n = output(c0, {B, H});
  const gpu::Problem p = problem(T, B, H, R, w_hr.has_value(), reverse, xp, lens);
  Tensor space = workspace(gpu::Kernel::lstm_forward, p, xp);
  const gpu::LstmForward args{p, xp.data_ptr(), h0.data_ptr(), c0.data_ptr(), w_hh.data_ptr(), data_or_null(w_hr),
                              y.data_ptr(), h_n.data_ptr(), c_n.data_ptr(), save ? gates.data_ptr() : nullptr,
                              save ? c_all.data_ptr() : nullptr, space.data_ptr()};
  const gpu::Options o = options(allow_tf32, strategy, ctas, threads, row_tile, k_chunk, xp);
  {
    pybind11::gil_scoped_release no_gil;
    gpu::lstm_forward(args, o);
  }
  return {y, h_n, c_n, gates, c_all};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_backward(const Tensor& dy, const Tensor& dh_n, const Tensor& dc_n,
                                                         const Tensor& c_prev, const Tensor& w_hh,
                                                         const std::optional<Tensor>& w_hr, const Tensor& gates,
                                                         const Tensor& c_all, const std::optional<Tensor>& lengths,
                                                         bool reverse, bool allow_tf32, int strategy, int ctas,
                                                         int threads, int row_tile, int k_chunk) {
  check_first(dy, "dy");
  const int64_t T = dy.size(0), B = dy.size(1), R = dy.size(2), H = c_all.dim() == 3 ? c_all.size(2) : -1;
  TORCH_CHECK(H > 0, "fastrnn cuda backend: c_all must be 3-D (T, B, hidden), got ", c_all.sizes());
  check_input(dh_n, "dh_n", dy, {B, R});
  check_input(dc_n, "dc_n", dy, {B, H});
  check_input(c_prev, "c_prev", dy, {T, B, H});
  check_input(w_hh, "w_hh", dy, {4 * H, R});
  if (w_hr.has_value()) check_input(*w_hr, "w_hr", dy, {R, H});
  else TORCH_CHECK(R == H, "fastrnn cuda backend: without w_hr the state width must equal hidden (", H, "), got ", R);
  check_input(gates, "gates", dy, {T, B, 4 * H});
  check_input(c_all, "c_all", dy, {T, B, H});
  const DeviceGuard guard(dy);
  const Tensor lens = device_lengths(lengths, T, B, dy);
  Tensor dgates = output(dy, {T, B, 4 * H});
  Tensor dh_all = w_hr.has_value() ? output(dy, {T, B, R}) : at::empty({0}, dy.options());
  if (T == 0 || B == 0) return {dgates, dh_all, dh_n.clone(), dc_n.clone()};
  Tensor dh0 = output(dh_n, {B, R}), dc0 = output(dc_n, {B, H});
  const gpu::Problem p = problem(T, B, H, R, w_hr.has_value(), reverse, dy, lens);
  Tensor space = workspace(gpu::Kernel::lstm_backward, p, dy);
  const gpu::LstmBackward args{p, dy.data_ptr(), dh_n.data_ptr(), dc_n.data_ptr(), c_prev.data_ptr(), w_hh.data_ptr(),
                               data_or_null(w_hr), gates.data_ptr(), c_all.data_ptr(), dgates.data_ptr(),
                               w_hr.has_value() ? dh_all.data_ptr() : nullptr, dh0.data_ptr(), dc0.data_ptr(),
                               space.data_ptr()};
  const gpu::Options o = options(allow_tf32, strategy, ctas, threads, row_tile, k_chunk, dy);
  {
    pybind11::gil_scoped_release no_gil;
    gpu::lstm_backward(args, o);
  }
  return {dgates, dh_all, dh0, dc0};
}

std::tuple<Tensor, Tensor, Tensor> gru_forward(const Tensor& xp, const Tensor& h0, const Tensor& w_hh,
                                               const std::optional<Tensor>& b_hn, const std::optional<Tensor>& lengths,
                                               bool reverse, bool save, bool allow_tf32, int strategy, int ctas,
                                               int threads, int row_tile, int k_chunk) {
  check_first(xp, "xp");
  const int64_t T = xp.size(0), B = xp.size(1), H = h0.dim() == 2 ? h0.size(1) : -1;
  TORCH_CHECK(H > 0, "fastrnn cuda backend: h0 must be 2-D (B, hidden), got ", h0.sizes());
  check_input(xp, "xp", xp, {T, B, 3 * H});
  check_input(h0, "h0", xp, {B, H});
  check_input(w_hh, "w_hh", xp, {3 * H, H});
  if (b_hn.has_value()) check_input(*b_hn, "b_hn", xp, {H});
  const DeviceGuard guard(xp);
  const Tensor lens = device_lengths(lengths, T, B, xp);
  Tensor y = output(xp, {T, B, H});
  Tensor saved = save ? output(xp, {T, B, 4 * H}) : at::empty({0}, xp.options());
  if (T == 0 || B == 0) return {y, h0.clone(), saved};
  Tensor h_n = output(h0, {B, H});
  const gpu::Problem p = problem(T, B, H, H, false, reverse, xp, lens);
  Tensor space = workspace(gpu::Kernel::gru_forward, p, xp);
  const gpu::GruForward args{p, xp.data_ptr(), h0.data_ptr(), w_hh.data_ptr(), data_or_null(b_hn),
                             y.data_ptr(), h_n.data_ptr(), save ? saved.data_ptr() : nullptr, space.data_ptr()};
  const gpu::Options o = options(allow_tf32, strategy, ctas, threads, row_tile, k_chunk, xp);
  {
    pybind11::gil_scoped_release no_gil;
    gpu::gru_forward(args, o);
  }
  return {y, h_n, saved};
}

std::tuple<Tensor, Tensor, Tensor> gru_backward(const Tensor& dy, const Tensor& dh_n, const Tensor& h_prev,
                                                const Tensor& w_hh, const Tensor& saved,
                                                const std::optional<Tensor>& lengths, bool reverse, bool allow_tf32,
                                                int strategy, int ctas, int threads, int row_tile, int k_chunk) {
  check_first(dy, "dy");
  const int64_t T = dy.size(0), B = dy.size(1), H = dy.size(2);
  TORCH_CHECK(H > 0, "fastrnn cuda backend: dy's last dimension (hidden) must be positive");
  check_input(dh_n, "dh_n", dy, {B, H});
  check_input(h_prev, "h_prev", dy, {T, B, H});
  check_input(w_hh, "w_hh", dy, {3 * H, H});
  check_input(saved, "saved", dy, {T, B, 4 * H});
  const DeviceGuard guard(dy);
  const Tensor lens = device_lengths(lengths, T, B, dy);
  Tensor dxp = output(dy, {T, B, 3 * H}), dhn = output(dy, {T, B, H});
  if (T == 0 || B == 0) return {dxp, dhn, dh_n.clone()};
  Tensor dh0 = output(dh_n, {B, H});
  const gpu::Problem p = problem(T, B, H, H, false, reverse, dy, lens);
  Tensor space = workspace(gpu::Kernel::gru_backward, p, dy);
  const gpu::GruBackward args{p, dy.data_ptr(), dh_n.data_ptr(), h_prev.data_ptr(), w_hh.data_ptr(), saved.data_ptr(),
                              dxp.data_ptr(), dhn.data_ptr(), dh0.data_ptr(), space.data_ptr()};
  const gpu::Options o = options(allow_tf32, strategy, ctas, threads, row_tile, k_chunk, dy);
  {
    pybind11::gil_scoped_release no_gil;
    gpu::gru_backward(args, o);
  }
  return {dxp, dhn, dh0};
}

std::tuple<Tensor, Tensor> rnn_forward(const Tensor& xp, const Tensor& h0, const Tensor& w_hh, bool relu,
                                       const std::optional<Tensor>& lengths, bool reverse, bool save, bool allow_tf32,
                                       int strategy, int ctas, int threads, int row_tile, int k_chunk) {
  (void)save;  // the backward reads act' off y: nothing more to keep
  check_first(xp, "xp");
  const int64_t T = xp.size(0), B = xp.size(1), H = h0.dim() == 2 ? h0.size(1) : -1;
  TORCH_CHECK(H > 0, "fastrnn cuda backend: h0 must be 2-D (B, hidden), got ", h0.sizes());
  check_input(xp, "xp", xp, {T, B, H});
  check_input(h0, "h0", xp, {B, H});
  check_input(w_hh, "w_hh", xp, {H, H});
  const DeviceGuard guard(xp);
  const Tensor lens = device_lengths(lengths, T, B, xp);
  Tensor y = output(xp, {T, B, H});
  if (T == 0 || B == 0) return {y, h0.clone()};
  Tensor h_n = output(h0, {B, H});
  const gpu::Problem p = problem(T, B, H, H, false, reverse, xp, lens);
  Tensor space = workspace(gpu::Kernel::rnn_forward, p, xp);
  const gpu::RnnForward args{p, relu, xp.data_ptr(), h0.data_ptr(), w_hh.data_ptr(), y.data_ptr(), h_n.data_ptr(),
                             space.data_ptr()};
  const gpu::Options o = options(allow_tf32, strategy, ctas, threads, row_tile, k_chunk, xp);
  {
    pybind11::gil_scoped_release no_gil;
    gpu::rnn_forward(args, o);
  }
  return {y, h_n};
}

std::tuple<Tensor, Tensor> rnn_backward(const Tensor& dy, const Tensor& dh_n, const Tensor& y, const Tensor& w_hh,
                                        bool relu, const std::optional<Tensor>& lengths, bool reverse, bool allow_tf32,
                                        int strategy, int ctas, int threads, int row_tile, int k_chunk) {
  check_first(dy, "dy");
  const int64_t T = dy.size(0), B = dy.size(1), H = dy.size(2);
  TORCH_CHECK(H > 0, "fastrnn cuda backend: dy's last dimension (hidden) must be positive");
  check_input(dh_n, "dh_n", dy, {B, H});
  check_input(y, "y", dy, {T, B, H});
  check_input(w_hh, "w_hh", dy, {H, H});
  const DeviceGuard guard(dy);
  const Tensor lens = device_lengths(lengths, T, B, dy);
  Tensor dxp = output(dy, {T, B, H});
  if (T == 0 || B == 0) return {dxp, dh_n.clone()};
  Tensor dh0 = output(dh_n, {B, H});
  const gpu::Problem p = problem(T, B, H, H, false, reverse, dy, lens);
  Tensor space = workspace(gpu::Kernel::rnn_backward, p, dy);
  const gpu::RnnBackward args{p, relu, dy.data_ptr(), dh_n.data_ptr(), y.data_ptr(), w_hh.data_ptr(), dxp.data_ptr(),
                              dh0.data_ptr(), space.data_ptr()};
  const gpu::Options o = options(allow_tf32, strategy, ctas, threads, row_tile, k_chunk, dy);
  {
    pybind11::gil_scoped_release no_gil;
    gpu::rnn_backward(args, o);
  }
  return {dxp, dh0};
}

// --- the cells: one step per call --------------------------------------------------------------------

gpu::CellMode cell_mode(const std::string& mode) {
  if (mode == "LSTM") return gpu::CellMode::lstm;
  if (mode == "GRU") return gpu::CellMode::gru;
  if (mode == "RNN_TANH") return gpu::CellMode::rnn_tanh;
  if (mode == "RNN_RELU") return gpu::CellMode::rnn_relu;
  TORCH_CHECK(false, "fastrnn cuda backend: mode must be LSTM, GRU, RNN_TANH or RNN_RELU, got ", mode);
}

int64_t gates_of(gpu::CellMode mode) { return mode == gpu::CellMode::lstm ? 4 : mode == gpu::CellMode::gru ? 3 : 1; }

void check_2d(const Tensor& tensor, const char* name) {
  TORCH_CHECK(on_device(tensor), "fastrnn cuda backend: ", name, " must be a ", kDevice, " tensor, got one on ",
              tensor.device());
  dtype_of(tensor);
  TORCH_CHECK(tensor.dim() == 2, "fastrnn cuda backend: ", name, " must be 2-D (batch, features), got ",
              tensor.sizes());
}

// (h_new, c_new, saved): c_new empty but for the LSTM, saved empty for the Elman cell or without save.
std::tuple<Tensor, Tensor, Tensor> cell_forward(const std::string& mode_name, const Tensor& x, const Tensor& h,
                                                const std::optional<Tensor>& c, const Tensor& w_ih, const Tensor& w_hh,
                                                const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
                                                bool save, bool allow_tf32, int threads, int row_tile, int k_chunk) {
  const gpu::CellMode mode = cell_mode(mode_name);
  const bool lstm = mode == gpu::CellMode::lstm, keeps = save && gates_of(mode) > 1;
  check_2d(x, "x");
  check_2d(h, "h");
  const int64_t B = x.size(0), I = x.size(1), H = h.size(1), G = gates_of(mode) * H;
  check_input(h, "h", x, {B, H});
  TORCH_CHECK(c.has_value() == lstm, "fastrnn cuda backend: the ", mode_name, " cell ",
              lstm ? "needs the cell state c" : "has no cell state: c must be None");
  if (lstm) check_input(*c, "c", x, {B, H});
  check_input(w_ih, "w_ih", x, {G, I});
  check_input(w_hh, "w_hh", x, {G, H});
  TORCH_CHECK(b_ih.has_value() == b_hh.has_value(), "fastrnn cuda backend: b_ih and b_hh come together or not at all");
  if (b_ih.has_value()) check_input(*b_ih, "b_ih", x, {G});
  if (b_hh.has_value()) check_input(*b_hh, "b_hh", x, {G});
  TORCH_CHECK(B <= std::numeric_limits<int32_t>::max() && I + G <= std::numeric_limits<int32_t>::max(),
              "fastrnn cuda backend: sizes beyond 2**31 are not supported");
  const DeviceGuard guard(x);
  Tensor h_new = output(x, {B, H});
  Tensor c_new = lstm ? output(x, {B, H}) : at::empty({0}, x.options());
  Tensor saved = keeps ? output(x, {B, 4 * H}) : at::empty({0}, x.options());
  if (B == 0 || H == 0) return {h_new, c_new, saved};  // nothing to launch
  const gpu::CellForward args{mode, dtype_of(x), B, I, H, x.data_ptr(), h.data_ptr(), lstm ? c->data_ptr() : nullptr,
                              w_ih.data_ptr(), w_hh.data_ptr(), data_or_null(b_ih), data_or_null(b_hh),
                              h_new.data_ptr(), lstm ? c_new.data_ptr() : nullptr, keeps ? saved.data_ptr() : nullptr};
  const gpu::Options o = options(allow_tf32, 2, 0, threads, row_tile, k_chunk, x);
  gpu::cell_forward(args, o);  // a few microseconds: keeping the GIL costs less than handing it over
  return {h_new, c_new, saved};
}

// The pointwise backward of one step: (dgx, dgh, dh_direct, dc_prev), empty where the cell has none;
// dgh is dgx itself where both sides share the gradient (LSTM, Elman).
std::tuple<Tensor, Tensor, Tensor, Tensor> cell_backward(const std::string& mode_name, const Tensor& dh,
                                                         const std::optional<Tensor>& dc, const Tensor& h,
                                                         const std::optional<Tensor>& c, const Tensor& h_new,
                                                         const std::optional<Tensor>& c_new, const Tensor& saved,
                                                         int threads) {
  const gpu::CellMode mode = cell_mode(mode_name);
  const bool lstm = mode == gpu::CellMode::lstm, gru = mode == gpu::CellMode::gru;
  check_2d(dh, "dh");
  const int64_t B = dh.size(0), H = dh.size(1);
  check_input(dh, "dh", dh, {B, H});
  if (lstm) {
    TORCH_CHECK(c.has_value() && c_new.has_value(), "fastrnn cuda backend: the LSTM cell's backward needs c and c_new");
    if (dc.has_value()) check_input(*dc, "dc", dh, {B, H});
    check_input(*c, "c", dh, {B, H});
    check_input(*c_new, "c_new", dh, {B, H});
    check_input(saved, "saved", dh, {B, 4 * H});
  } else if (gru) {
    check_input(h, "h", dh, {B, H});
    check_input(saved, "saved", dh, {B, 4 * H});
  } else {
    check_input(h_new, "h_new", dh, {B, H});
  }
  const DeviceGuard guard(dh);
  const Tensor dgx = output(dh, {B, (lstm ? 4 : gru ? 3 : 1) * H});
  const Tensor dgh = gru ? output(dh, {B, 3 * H}) : dgx;
  const Tensor direct = gru ? output(dh, {B, H}) : at::empty({0}, dh.options());
  const Tensor dc_prev = lstm ? output(dh, {B, H}) : at::empty({0}, dh.options());
  if (B == 0 || H == 0) return {dgx, dgh, direct, dc_prev};
  const gpu::CellBackward args{mode, dtype_of(dh), B, H, dh.data_ptr(), lstm ? data_or_null(dc) : nullptr,
                               gru ? h.data_ptr() : nullptr, lstm ? c->data_ptr() : nullptr,
                               lstm || gru ? nullptr : h_new.data_ptr(), lstm ? c_new->data_ptr() : nullptr,
                               lstm || gru ? saved.data_ptr() : nullptr, dgx.data_ptr(), gru ? dgh.data_ptr() : nullptr,
                               gru ? direct.data_ptr() : nullptr, lstm ? dc_prev.data_ptr() : nullptr};
  gpu::Options o;
  o.threads = threads;
  o.stream = stream_of(dh);
  gpu::cell_backward(args, o);
  return {dgx, dgh, direct, dc_prev};
}

gpu::DType dtype_named(const std::string& name) {
  if (name == "float64") return gpu::DType::float64;
  if (name == "float32") return gpu::DType::float32;
  if (name == "float16") return gpu::DType::float16;
  if (name == "bfloat16") return gpu::DType::bfloat16;
  TORCH_CHECK(false, "fastrnn cuda backend: no CUDA kernels for dtype ", name);
}

// The plan a call would run on the current device (on the modelled one in the emulator), in words.
std::string describe_plan(int kernel, int64_t steps, int64_t batch, int64_t hidden, int64_t state, bool projection,
                          const std::string& dtype, bool allow_tf32, int strategy, int ctas, int threads, int row_tile,
                          int k_chunk) {
  TORCH_CHECK(kernel >= 0 && kernel <= 5, "fastrnn cuda backend: kernel must be 0..5 (lstm forward, lstm backward, "
              "gru forward, gru backward, rnn forward, rnn backward)");
  TORCH_CHECK(steps >= 1 && batch >= 1 && hidden >= 1 && state >= 1, "fastrnn cuda backend: sizes must be positive");
  const gpu::Problem p{steps, batch, hidden, state, projection, false, dtype_named(dtype), nullptr};
  gpu::Options o;
  o.strategy = static_cast<gpu::Strategy>(strategy);
  o.ctas = ctas;
  o.threads = threads;
  o.row_tile = row_tile;
  o.k_chunk = k_chunk;
  o.allow_tf32 = allow_tf32;
  return gpu::describe_plan(static_cast<gpu::Kernel>(kernel), p, o);
}

void define(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("lstm_forward_cuda", &lstm_forward, "LSTM recurrence, one layer-direction (CUDA)", py::arg("xp"), py::arg("h0"),
        py::arg("c0"), py::arg("w_hh"), py::arg("w_hr"), py::arg("lengths"), py::arg("reverse"), py::arg("save") = true,
        py::arg("allow_tf32") = true, py::arg("strategy") = 0, py::arg("ctas") = 0, py::arg("threads") = 0,
        py::arg("row_tile") = 0, py::arg("k_chunk") = 0);
  m.def("lstm_backward_cuda", &lstm_backward, "LSTM recurrence backward (CUDA)", py::arg("dy"), py::arg("dh_n"),
        py::arg("dc_n"), py::arg("c_prev"), py::arg("w_hh"), py::arg("w_hr"), py::arg("gates"), py::arg("c_all"),
        py::arg("lengths"), py::arg("reverse"), py::arg("allow_tf32") = true, py::arg("strategy") = 0,
        py::arg("ctas") = 0, py::arg("threads") = 0, py::arg("row_tile") = 0, py::arg("k_chunk") = 0);
  m.def("gru_forward_cuda", &gru_forward, "GRU recurrence, one layer-direction (CUDA)", py::arg("xp"), py::arg("h0"),
        py::arg("w_hh"), py::arg("b_hn"), py::arg("lengths"), py::arg("reverse"), py::arg("save") = true,
        py::arg("allow_tf32") = true,
        py::arg("strategy") = 0, py::arg("ctas") = 0, py::arg("threads") = 0, py::arg("row_tile") = 0,
        py::arg("k_chunk") = 0);
  m.def("gru_backward_cuda", &gru_backward, "GRU recurrence backward (CUDA)", py::arg("dy"), py::arg("dh_n"),
        py::arg("h_prev"), py::arg("w_hh"), py::arg("saved"), py::arg("lengths"), py::arg("reverse"),
        py::arg("allow_tf32") = true, py::arg("strategy") = 0, py::arg("ctas") = 0, py::arg("threads") = 0,
        py::arg("row_tile") = 0, py::arg("k_chunk") = 0);
  m.def("rnn_forward_cuda", &rnn_forward, "Elman recurrence (tanh or relu), one layer-direction (CUDA)", py::arg("xp"),
        py::arg("h0"), py::arg("w_hh"), py::arg("relu"), py::arg("lengths"), py::arg("reverse"), py::arg("save") = true,
        py::arg("allow_tf32") = true, py::arg("strategy") = 0, py::arg("ctas") = 0, py::arg("threads") = 0,
        py::arg("row_tile") = 0, py::arg("k_chunk") = 0);
  m.def("rnn_backward_cuda", &rnn_backward, "Elman recurrence backward (CUDA)", py::arg("dy"), py::arg("dh_n"),
        py::arg("y"), py::arg("w_hh"), py::arg("relu"), py::arg("lengths"), py::arg("reverse"),
        py::arg("allow_tf32") = true, py::arg("strategy") = 0, py::arg("ctas") = 0, py::arg("threads") = 0,
        py::arg("row_tile") = 0, py::arg("k_chunk") = 0);
  m.def("cell_forward_cuda", &cell_forward, "One cell step (LSTM, GRU, RNN_TANH, RNN_RELU), both gate GEMMs and the "
        "cell in one launch (CUDA): (h_new, c_new, saved)", py::arg("mode"), py::arg("x"), py::arg("h"), py::arg("c"),
        py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("save") = true,
        py::arg("allow_tf32") = true, py::arg("threads") = 0, py::arg("row_tile") = 0, py::arg("k_chunk") = 0);
  m.def("cell_backward_cuda", &cell_backward, "One cell step's pointwise backward (CUDA): (dgx, dgh, dh_direct, "
        "dc_prev)", py::arg("mode"), py::arg("dh"), py::arg("dc"), py::arg("h"), py::arg("c"), py::arg("h_new"),
        py::arg("c_new"), py::arg("saved"), py::arg("threads") = 0);
  m.def("cuda_describe_plan", &describe_plan, "The launch plan a CUDA kernel call would run here, in words",
        py::arg("kernel"), py::arg("steps"), py::arg("batch"), py::arg("hidden"), py::arg("state"),
        py::arg("projection"), py::arg("dtype"), py::arg("allow_tf32") = true, py::arg("strategy") = 0,
        py::arg("ctas") = 0, py::arg("threads") = 0, py::arg("row_tile") = 0, py::arg("k_chunk") = 0);
  m.def("cuda_set_poison_outputs", [](bool on) { poison_outputs = on; },
        "Fill the CUDA kernels' outputs with NaN before each call (a test aid: unwritten elements then show)");
#if defined(FASTRNN_SIMT_EMULATION)
  m.attr("cuda_emulated") = true;
#else
  m.attr("cuda_emulated") = false;
#endif
}

}  // namespace fastrnn_cuda_ops
#endif  // FASTRNN_WITH_CUDA || FASTRNN_SIMT_EMULATION

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastrnn's compiled kernels (see csrc/)";
#if !defined(FASTRNN_CUDA_ONLY)
  namespace py = pybind11;
  // save=false: an inference call; what only the backward needs (gates, cell states) comes back empty.
  // w_hh_panels, w_hr_panels: the weights' CpuWeightPanels, packed panels kept between calls (None: pack
  // for this call only).
  py::class_<WeightPanels>(m, "CpuWeightPanels", "One weight's packed panels for the CPU layer kernels, kept "
                           "between calls and repacked when the weight changes (its version, storage, dtype or shape)")
      .def(py::init<>())
      .def_property_readonly("nbytes", &WeightPanels::bytes, "Bytes of packed panels held now")
      // A copied or unpickled module starts with none: its weights are other tensors.
      .def("__copy__", [](const WeightPanels&) { return std::make_unique<WeightPanels>(); })
      .def("__deepcopy__", [](const WeightPanels&, py::dict) { return std::make_unique<WeightPanels>(); })
      .def(py::pickle([](const WeightPanels&) { return py::tuple(); },
                      [](const py::tuple&) { return std::make_unique<WeightPanels>(); }));
  m.def("lstm_forward_cpu", &lstm_forward, "LSTM recurrence, one layer-direction (CPU)", py::arg("xp"), py::arg("h0"),
        py::arg("c0"), py::arg("w_hh"), py::arg("w_hr"), py::arg("lengths"), py::arg("reverse"), py::arg("save") = true,
        py::arg("w_hh_panels") = nullptr, py::arg("w_hr_panels") = nullptr, py::arg("scratch_xp") = false);
  m.def("lstm_forward_projecting_cpu", &lstm_forward_projecting,
        "LSTM recurrence, one layer-direction, with the input projection inside its steps (CPU, float32/float64)",
        py::arg("x"), py::arg("w_ih"), py::arg("b_ih"), py::arg("b_hh"), py::arg("h0"), py::arg("c0"), py::arg("w_hh"),
        py::arg("lengths"), py::arg("reverse"), py::arg("save") = true, py::arg("w_ih_panels") = nullptr,
        py::arg("w_hh_panels") = nullptr);
  m.def("gru_forward_projecting_cpu", &gru_forward_projecting,
        "GRU recurrence, one layer-direction, with the input projection inside its steps (CPU, float32/float64)",
        py::arg("x"), py::arg("w_ih"), py::arg("b_ih"), py::arg("b_hh"), py::arg("h0"), py::arg("w_hh"),
        py::arg("lengths"), py::arg("reverse"), py::arg("save") = true, py::arg("w_ih_panels") = nullptr,
        py::arg("w_hh_panels") = nullptr);
  m.def("rnn_forward_projecting_cpu", &rnn_forward_projecting,
        "Elman recurrence, one layer-direction, with the input projection inside its steps (CPU, float32/float64)",
        py::arg("x"), py::arg("w_ih"), py::arg("b_ih"), py::arg("b_hh"), py::arg("h0"), py::arg("w_hh"),
        py::arg("relu"), py::arg("lengths"), py::arg("reverse"), py::arg("w_ih_panels") = nullptr,
        py::arg("w_hh_panels") = nullptr);
  m.def("lstm_backward_cpu", &lstm_backward, "LSTM recurrence backward (CPU)", py::arg("dy"), py::arg("dh_n"),
        py::arg("dc_n"), py::arg("c_prev"), py::arg("w_hh"), py::arg("w_hr"), py::arg("gates"), py::arg("c_all"),
        py::arg("lengths"), py::arg("reverse"), py::arg("w_hh_panels") = nullptr, py::arg("w_hr_panels") = nullptr);
  m.def("gru_forward_cpu", &gru_forward, "GRU recurrence, one layer-direction (CPU)", py::arg("xp"), py::arg("h0"),
        py::arg("w_hh"), py::arg("b_hn"), py::arg("lengths"), py::arg("reverse"), py::arg("save") = true,
        py::arg("w_hh_panels") = nullptr);
  m.def("gru_backward_cpu", &gru_backward, "GRU recurrence backward (CPU)", py::arg("dy"), py::arg("dh_n"),
        py::arg("h_prev"), py::arg("w_hh"), py::arg("saved"), py::arg("lengths"), py::arg("reverse"),
        py::arg("w_hh_panels") = nullptr);
  m.def("rnn_forward_cpu", &rnn_forward, "Elman recurrence (tanh or relu), one layer-direction (CPU)", py::arg("xp"),
        py::arg("h0"), py::arg("w_hh"), py::arg("relu"), py::arg("lengths"), py::arg("reverse"), py::arg("save") = true,
        py::arg("w_hh_panels") = nullptr);
  m.def("rnn_backward_cpu", &rnn_backward, "Elman recurrence backward (CPU)", py::arg("dy"), py::arg("dh_n"),
        py::arg("y"), py::arg("w_hh"), py::arg("relu"), py::arg("lengths"), py::arg("reverse"),
        py::arg("w_hh_panels") = nullptr);
  m.def("transposed_cpu", &transposed, "torch.cat(pieces, dim=1).T, contiguous, for 2-D float32 CPU tensors of the "
        "same rows whose rows are contiguous: the operands of the backward's weight-gradient GEMMs", py::arg("pieces"));
  m.def("linear_cpu", &linear, "x w^T + bias + bias2 for 2-D float32 CPU tensors (the input projection of a small "
        "layer), on w's panels kept in w_panels", py::arg("x"), py::arg("w"), py::arg("bias") = py::none(),
        py::arg("bias2") = py::none(), py::arg("w_panels") = nullptr);
  m.def("cell_pack_cpu", &cell_pack, "A cell weight (gates * hidden, depth) packed for cell_forward_cpu on the "
        "instruction set in use", py::arg("w"), py::arg("gates"));
  m.def("cell_forward_cpu", &cell_forward, "One cell step (LSTM, GRU, RNN_TANH, RNN_RELU) on packed weights (CPU): "
        "(h_new, c_new, saved)", py::arg("mode"), py::arg("x"), py::arg("h"), py::arg("c"), py::arg("packed_ih"),
        py::arg("packed_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("save") = true);
  m.def("layer_step_cpu", &layer_step, "One step (T = 1) of a one-layer, one-direction layer in its own shapes: "
        "x (1, B, I) or (B, 1, I), h and c (1, B, H) -> (output, h_n, c_n, saved)", py::arg("mode"), py::arg("x"),
        py::arg("h"), py::arg("c"), py::arg("packed_ih"), py::arg("packed_hh"), py::arg("b_ih"), py::arg("b_hh"),
        py::arg("batch_first"), py::arg("save") = true);
  m.def("stack_inference_cpu", &stack_inference, "An inference's whole layer stack (padded input, no projection): "
        "per layer-direction the input projection and the recurrence -> (output, final states)", py::arg("mode"),
        py::arg("input"), py::arg("states"), py::arg("weights"), py::arg("panels"), py::arg("layers"),
        py::arg("bidirectional"), py::arg("batch_first"), py::arg("own_projection_limit"),
        py::arg("in_steps") = std::vector<bool>{});
  m.def("cell_backward_cpu", &cell_backward, "One cell step's pointwise backward (CPU): (dgx, dgh, dh_direct, "
        "dc_prev)", py::arg("mode"), py::arg("dh"), py::arg("dc"), py::arg("h"), py::arg("c"), py::arg("h_new"),
        py::arg("c_new"), py::arg("saved"));
  m.def("cpu_instruction_set", [] { return std::string(cpu::instruction_set()); },
        "The instruction set the CPU kernels run on now: 'auto' (the default; see csrc/cpu/dispatch.cpp) or "
        "the variant chosen with set_cpu_instruction_set");
  m.def("cpu_pair_products_per_fma", &cpu::pair_products_per_fma,
        "vdpbf16ps multiply-adds per second over fp32 FMA ones on this core, measured once (0: no AVX512_BF16)");
  m.def("cpu_supported_instruction_sets", [] { return std::string(cpu::supported_instruction_sets()); },
        "The instruction sets this CPU and build support, best first, comma-separated");
  m.def("cpu_set_poison_outputs", [](bool on) { poison_cpu_outputs = on; },
        "Fill the CPU kernels' outputs with NaN before each call (a test aid: unwritten elements then show)");
  m.def("set_cpu_instruction_set", &set_cpu_instruction_set,
        "Run the CPU kernels on the named instruction set (one of cpu_supported_instruction_sets()), or "
        "'auto' to let each call choose");
#endif
#if defined(FASTRNN_WITH_CUDA) || defined(FASTRNN_SIMT_EMULATION)
  fastrnn_cuda_ops::define(m);
#endif
}
