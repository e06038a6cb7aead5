// A command-line driver for the emulated CUDA kernels, without torch, so that they can be built and run
// under ThreadSanitizer and AddressSanitizer (which need the program itself instrumented, not a Python
// extension loaded into an uninstrumented interpreter). tests/test_cuda_sanitizers.py writes the inputs,
// runs this, and checks the outputs against the reference recurrence.
//
//   driver run CASE_DIR...     each CASE_DIR holds case.txt (key=value lines: kernel, dtype, steps, batch,
//                              hidden, state, projection, reverse, strategy, ctas, threads, row_tile,
//                              k_chunk, allow_tf32; relu for the Elman kernels) and one raw little-endian file per input (NAME.bin,
//                              optional ones may be absent; lengths.bin is int32); writes NAME.out per output
//                              a cell step (kernel cell_forward or cell_backward) adds mode (LSTM, GRU,
//                              RNN_TANH, RNN_RELU) and input, its batch and hidden as above
//   driver selftest NAME       runs one of the planted bugs of selftest.h
//
// Exit status: 0 on success, 3 when a kernel failed a check of the emulator (its message on stderr),
// 2 on bad usage or missing files.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "../cuda/api.h"
#include "selftest.h"
#include "simt.h"

namespace {

namespace gpu = fastrnn::cuda;

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

using Bytes = std::vector<unsigned char>;

bool exists(const std::string& path) { return std::ifstream(path).good(); }

Bytes read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError("cannot read " + path);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_file(const std::string& path, const Bytes& data) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  if (!out) throw UsageError("cannot write " + path);
}

std::map<std::string, std::string> read_case(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw UsageError("cannot read " + path);
  std::map<std::string, std::string> values;
  std::string line;
  while (std::getline(in, line)) {
    const auto equals = line.find('=');
    if (equals != std::string::npos) values[line.substr(0, equals)] = line.substr(equals + 1);
  }
  return values;
}

gpu::DType dtype_named(const std::string& name) {
  if (name == "float64") return gpu::DType::float64;
  if (name == "float32") return gpu::DType::float32;
  if (name == "float16") return gpu::DType::float16;
  if (name == "bfloat16") return gpu::DType::bfloat16;
  throw UsageError("unknown dtype " + name);
}

size_t element_size(gpu::DType dtype) {
  return dtype == gpu::DType::float64 ? 8 : dtype == gpu::DType::float32 ? 4 : 2;
}

class Case {
 public:
  explicit Case(std::string dir) : dir_(std::move(dir)), values_(read_case(dir_ + "/case.txt")) {
    problem_.steps = number("steps");
    problem_.batch = number("batch");
    problem_.hidden = number("hidden");
    problem_.state = number("state");
    problem_.projection = number("projection") != 0;
    problem_.reverse = number("reverse") != 0;
    problem_.dtype = dtype_named(text("dtype"));
    options_.strategy = static_cast<gpu::Strategy>(number("strategy"));
    options_.ctas = static_cast<int>(number("ctas"));
    options_.threads = static_cast<int>(number("threads"));
    options_.row_tile = static_cast<int>(number("row_tile"));
    options_.k_chunk = static_cast<int>(number("k_chunk"));
    options_.allow_tf32 = number("allow_tf32") != 0;
    if (exists(dir_ + "/lengths.bin")) {
      lengths_ = read_file(dir_ + "/lengths.bin");
      if (lengths_.size() != problem_.batch * sizeof(int32_t)) throw UsageError("lengths.bin has the wrong size");
      problem_.lengths = reinterpret_cast<const int32_t*>(lengths_.data());
    }
  }

  gpu::Kernel kernel() const {
    const std::string name = text("kernel");
    if (name == "lstm_forward") return gpu::Kernel::lstm_forward;
    if (name == "lstm_backward") return gpu::Kernel::lstm_backward;
    if (name == "gru_forward") return gpu::Kernel::gru_forward;
    if (name == "gru_backward") return gpu::Kernel::gru_backward;
    if (name == "rnn_forward") return gpu::Kernel::rnn_forward;
    if (name == "rnn_backward") return gpu::Kernel::rnn_backward;
    throw UsageError("unknown kernel " + name);
  }

  const gpu::Problem& problem() const { return problem_; }
  bool relu() const { return number("relu") != 0; }
  const gpu::Options& options() const { return options_; }
  void* workspace() {  // 256-byte aligned, as the binding's allocations are
    if (workspace_.empty()) workspace_.resize(gpu::workspace_bytes(kernel(), problem_) + 256);
    const auto address = reinterpret_cast<uintptr_t>(workspace_.data());
    return workspace_.data() + (256 - address % 256) % 256;
  }

  // An input of `elements` elements, or null when optional and absent.
  const void* input(const std::string& name, int64_t elements, bool optional = false) {
    const std::string path = dir_ + "/" + name + ".bin";
    if (optional && !exists(path)) return nullptr;
    Bytes& data = inputs_[name] = read_file(path);
    if (data.size() != static_cast<size_t>(elements) * element_size(problem_.dtype))
      throw UsageError(path + " holds " + std::to_string(data.size()) + " bytes, expected " +
                       std::to_string(elements * element_size(problem_.dtype)));
    return data.data();
  }

  // An output of `elements` elements, poisoned with 0xFF bytes (NaN) so that unwritten elements show.
  void* output(const std::string& name, int64_t elements) {
    Bytes& data = outputs_[name];
    data.assign(static_cast<size_t>(elements) * element_size(problem_.dtype), 0xFF);
    return data.data();
  }

  void save_outputs() const {
    for (const auto& [name, data] : outputs_) write_file(dir_ + "/" + name + ".out", data);
  }

  int64_t number(const std::string& key) const { return std::stoll(text(key)); }
  std::string text(const std::string& key) const {
    const auto found = values_.find(key);
    if (found == values_.end()) throw UsageError(dir_ + "/case.txt has no " + key);
    return found->second;
  }

 private:

  std::string dir_;
  std::map<std::string, std::string> values_;
  gpu::Problem problem_{};
  gpu::Options options_;
  Bytes lengths_, workspace_;
  std::map<std::string, Bytes> inputs_, outputs_;
};

gpu::CellMode cell_mode_named(const std::string& name) {
  if (name == "LSTM") return gpu::CellMode::lstm;
  if (name == "GRU") return gpu::CellMode::gru;
  if (name == "RNN_TANH") return gpu::CellMode::rnn_tanh;
  if (name == "RNN_RELU") return gpu::CellMode::rnn_relu;
  throw UsageError("unknown cell mode " + name);
}

void run_cell(Case& c, bool forward) {
  const gpu::Problem& p = c.problem();
  const gpu::CellMode mode = cell_mode_named(c.text("mode"));
  const bool lstm = mode == gpu::CellMode::lstm, gru = mode == gpu::CellMode::gru;
  const int64_t B = p.batch, H = p.hidden, I = c.number("input"), G = (lstm ? 4 : gru ? 3 : 1) * H;
  if (forward) {
    const gpu::CellForward args{mode, p.dtype, B, I, H, c.input("x", B * I), c.input("h", B * H),
                                lstm ? c.input("c", B * H) : nullptr, c.input("w_ih", G * I), c.input("w_hh", G * H),
                                c.input("b_ih", G, true), c.input("b_hh", G, true), c.output("h_new", B * H),
                                lstm ? c.output("c_new", B * H) : nullptr,
                                lstm || gru ? c.output("saved", B * 4 * H) : nullptr};
    gpu::cell_forward(args, c.options());
    return;
  }
  const gpu::CellBackward args{mode, p.dtype, B, H, c.input("dh", B * H), lstm ? c.input("dc", B * H, true) : nullptr,
                               gru ? c.input("h", B * H) : nullptr, lstm ? c.input("c", B * H) : nullptr,
                               lstm || gru ? nullptr : c.input("h_new", B * H), lstm ? c.input("c_new", B * H) : nullptr,
                               lstm || gru ? c.input("saved", B * 4 * H) : nullptr, c.output("dgx", B * G),
                               gru ? c.output("dgh", B * G) : nullptr, gru ? c.output("direct", B * H) : nullptr,
                               lstm ? c.output("dc_prev", B * H) : nullptr};
  gpu::cell_backward(args, c.options());
}

void run_case(const std::string& dir) {
  Case c(dir);
  const std::string name = c.text("kernel");
  if (name == "cell_forward" || name == "cell_backward") {
    run_cell(c, name == "cell_forward");
    c.save_outputs();
    return;
  }
  const gpu::Problem& p = c.problem();
  const int64_t T = p.steps, B = p.batch, H = p.hidden, R = p.state;
  switch (c.kernel()) {
    case gpu::Kernel::lstm_forward: {
      const gpu::LstmForward args{p, c.input("xp", T * B * 4 * H), c.input("h0", B * R), c.input("c0", B * H),
                                  c.input("w_hh", 4 * H * R), c.input("w_hr", R * H, true), c.output("y", T * B * R),
                                  c.output("h_n", B * R), c.output("c_n", B * H), c.output("gates", T * B * 4 * H),
                                  c.output("c_all", T * B * H), c.workspace()};
      gpu::lstm_forward(args, c.options());
      break;
    }
    case gpu::Kernel::lstm_backward: {
      const gpu::LstmBackward args{p, c.input("dy", T * B * R), c.input("dh_n", B * R), c.input("dc_n", B * H),
                                   c.input("c_prev", T * B * H), c.input("w_hh", 4 * H * R), c.input("w_hr", R * H, true),
                                   c.input("gates", T * B * 4 * H), c.input("c_all", T * B * H),
                                   c.output("dgates", T * B * 4 * H), p.projection ? c.output("dh_all", T * B * R) : nullptr,
                                   c.output("dh0", B * R), c.output("dc0", B * H), c.workspace()};
      gpu::lstm_backward(args, c.options());
      break;
    }
    case gpu::Kernel::gru_forward: {
      const gpu::GruForward args{p, c.input("xp", T * B * 3 * H), c.input("h0", B * H), c.input("w_hh", 3 * H * H),
                                 c.input("b_hn", H, true), c.output("y", T * B * H), c.output("h_n", B * H),
                                 c.output("saved", T * B * 4 * H), c.workspace()};
      gpu::gru_forward(args, c.options());
      break;
    }
    case gpu::Kernel::gru_backward: {
      const gpu::GruBackward args{p, c.input("dy", T * B * H), c.input("dh_n", B * H), c.input("h_prev", T * B * H),
                                  c.input("w_hh", 3 * H * H), c.input("saved", T * B * 4 * H),
                                  c.output("dxp", T * B * 3 * H), c.output("dhn", T * B * H), c.output("dh0", B * H),
                                  c.workspace()};
      gpu::gru_backward(args, c.options());
      break;
    }
    case gpu::Kernel::rnn_forward: {
      const gpu::RnnForward args{p, c.relu(), c.input("xp", T * B * H), c.input("h0", B * H), c.input("w_hh", H * H),
                                 c.output("y", T * B * H), c.output("h_n", B * H), c.workspace()};
      gpu::rnn_forward(args, c.options());
      break;
    }
    case gpu::Kernel::rnn_backward: {
      const gpu::RnnBackward args{p, c.relu(), c.input("dy", T * B * H), c.input("dh_n", B * H), c.input("y", T * B * H),
                                  c.input("w_hh", H * H), c.output("dxp", T * B * H), c.output("dh0", B * H),
                                  c.workspace()};
      gpu::rnn_backward(args, c.options());
      break;
    }
    default:
      throw UsageError("kernel " + name + " is not a layer kernel");
  }
  c.save_outputs();
}

}  // namespace

int main(int argc, char** argv) {
  const std::string command = argc > 1 ? argv[1] : "";
  try {
    if (command == "run" && argc > 2) {
      for (int i = 2; i < argc; ++i) run_case(argv[i]);
      return 0;
    }
    if (command == "selftest" && argc == 3) {
      if (!fastrnn_selftest::run(argv[2])) throw UsageError(std::string("no self-test named ") + argv[2]);
      std::printf("selftest %s: no error raised\n", argv[2]);
      return 0;
    }
    throw UsageError("usage: driver run CASE_DIR... | driver selftest NAME");
  } catch (const UsageError& error) {
    std::fprintf(stderr, "driver: %s\n", error.what());
    return 2;
  } catch (const std::exception& error) {  // an emulator check, or the launcher's own refusal
    std::fprintf(stderr, "kernel error: %s\n", error.what());
    return 3;
  }
}
