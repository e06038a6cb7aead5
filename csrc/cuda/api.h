// The CUDA kernels as the binding sees them: plain pointers, sizes and a dtype, no torch and no CUDA
// types, so that the binding never compiles a kernel and a kernel never compiles torch's headers.
//
// Each call runs one layer in one direction, the contract of fastrnn/backends/reference.py: the whole
// T-step recurrence (forward) or its reverse (backward). Tensors are contiguous, time-major, on the
// current device, in `dtype`; `lengths` is a device array of B int32 (row b runs steps t < lengths[b])
// or null when every row runs all T steps. Every element of every output is written, padding included
// (as 0). The launchers enqueue their work on `stream` and return; a bad plan or a failed launch throws
// std::runtime_error with the reason.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace fastrnn {
namespace cuda {

enum class DType : int { float64 = 0, float32 = 1, float16 = 2, bfloat16 = 3 };

// Which kernel: (cell, pass).
enum class Kernel : int {
  lstm_forward = 0,
  lstm_backward = 1,
  gru_forward = 2,
  gru_backward = 3,
  rnn_forward = 4,  // Elman, tanh or relu
  rnn_backward = 5,
  lstm_cell = 6,  // one fused cell step (cell_step.cu): both gate GEMMs and the cell
  gru_cell = 7,
  rnn_cell = 8,
};

// How the recurrence is launched (see csrc/cuda/plan.h): one persistent cooperative launch for all steps,
// or one fused launch per step (and per phase of a step).
enum class Strategy : int { automatic = 0, persistent = 1, stepwise = 2 };

struct Options {
  Strategy strategy = Strategy::automatic;
  int ctas = 0;      // persistent: the number of CTAs (0: one per multiprocessor, as many as the units need)
  int threads = 0;   // threads per CTA, a multiple of 32 up to 256 (0: 256)
  int row_tile = 0;  // batch rows per GEMM tile, a multiple of 16 (0: chosen)
  int k_chunk = 0;   // reduction columns staged in shared memory at once, a multiple of 16 (0: chosen)
  bool allow_tf32 = true;  // float32 matmuls on TF32 tensor cores (torch.backends.cudnn.allow_tf32)
  void* stream = nullptr;  // a cudaStream_t
};

struct Problem {
  int64_t steps;   // T
  int64_t batch;   // B
  int64_t hidden;  // H
  int64_t state;   // R: the hidden state's width (proj_size, or H)
  bool projection;  // LSTM with proj_size (w_hr given)
  bool reverse;
  DType dtype;
  const int32_t* lengths;  // [B] on the device, or null
  int64_t input = 0;       // a cell step's input width I (its reduction runs over I + H)
};

struct LstmForward {
  Problem problem;
  const void* xp;    // [T, B, 4H]  x W_ih^T + b_ih + b_hh
  const void* h0;    // [B, R]
  const void* c0;    // [B, H]
  const void* w_hh;  // [4H, R]
  const void* w_hr;  // [R, H] or null
  void* y;           // [T, B, R]
  void* h_n;         // [B, R]
  void* c_n;         // [B, H]
  void* gates;       // [T, B, 4H] the activated gates i, f, g, o; null (with c_all) in an inference call
  void* c_all;       // [T, B, H] the cell state after each step
  void* workspace;   // workspace_bytes(Kernel::lstm_forward, problem) bytes, 256-byte aligned
};

struct LstmBackward {
  Problem problem;
  const void* dy;      // [T, B, R]
  const void* dh_n;    // [B, R]
  const void* dc_n;    // [B, H]
  const void* c_prev;  // [T, B, H] the cell state entering each step
  const void* w_hh;
  const void* w_hr;
  const void* gates;
  const void* c_all;
  void* dgates;  // [T, B, 4H] gradient of the gate pre-activations
  void* dh_all;  // [T, B, R] gradient of each step's hidden output before the carry (only with w_hr)
  void* dh0;     // [B, R]
  void* dc0;     // [B, H]
  void* workspace;
};

struct GruForward {
  Problem problem;   // state == hidden
  const void* xp;    // [T, B, 3H]  x W_ih^T + b_ih + (b_hr, b_hz, 0)
  const void* h0;    // [B, H]
  const void* w_hh;  // [3H, H]
  const void* b_hn;  // [H] or null
  void* y;           // [T, B, H]
  void* h_n;         // [B, H]
  void* saved;       // [T, B, 4H] r, z, n and hn = h W_hn^T + b_hn; null in an inference call
  void* workspace;
};

struct GruBackward {
  Problem problem;
  const void* dy;      // [T, B, H]
  const void* dh_n;    // [B, H]
  const void* h_prev;  // [T, B, H] the hidden state entering each step
  const void* w_hh;
  const void* saved;
  void* dxp;  // [T, B, 3H]
  void* dhn;  // [T, B, H] gradient of hn
  void* dh0;  // [B, H]
  void* workspace;
};

struct RnnForward {
  Problem problem;   // state == hidden
  bool relu;         // act = relu, else tanh
  const void* xp;    // [T, B, H]  x W_ih^T + b_ih + b_hh
  const void* h0;    // [B, H]
  const void* w_hh;  // [H, H]
  void* y;           // [T, B, H] (all the backward needs: act' is read off y)
  void* h_n;         // [B, H]
  void* workspace;
};

struct RnnBackward {
  Problem problem;
  bool relu;
  const void* dy;    // [T, B, H]
  const void* dh_n;  // [B, H]
  const void* y;     // [T, B, H] the forward's outputs
  const void* w_hh;
  void* dxp;  // [T, B, H] gradient of the pre-activations
  void* dh0;  // [B, H]
  void* workspace;
};

// The cells (LSTMCell, GRUCell, RNNCell): one step from x and the states, as fastrnn.cells' step gives it.
enum class CellMode : int { lstm = 0, gru = 1, rnn_tanh = 2, rnn_relu = 3 };

struct CellForward {
  CellMode mode;
  DType dtype;
  int64_t batch, input, hidden;  // B, I, H; G below is 4H (LSTM), 3H (GRU) or H (Elman)
  const void* x;     // [B, I]
  const void* h;     // [B, H]
  const void* c;     // [B, H] (LSTM; else null)
  const void* w_ih;  // [G, I]
  const void* w_hh;  // [G, H]
  const void* b_ih;  // [G], or null (then b_hh is null too)
  const void* b_hh;  // [G]
  void* h_new;       // [B, H]
  void* c_new;       // [B, H] (LSTM; else null)
  void* saved;       // [B, 4H]: LSTM's activated gates i, f, g, o, GRU's r, z, n, hn; null: nothing kept
};

struct CellBackward {
  CellMode mode;
  DType dtype;
  int64_t batch, hidden;
  const void* dh;     // [B, H] the gradient of h'
  const void* dc;     // [B, H] the gradient of c' (LSTM), or null for zero
  const void* h;      // [B, H] the state entering the step (GRU)
  const void* c;      // [B, H] the cell state entering the step (LSTM)
  const void* h_new;  // [B, H] the step's h' (Elman: act' is read off it)
  const void* c_new;  // [B, H] the step's c' (LSTM)
  const void* saved;  // [B, 4H] (LSTM, GRU)
  void* dgx;          // [B, G] the gradient of x W_ih^T + b_ih (LSTM and Elman: also that of h W_hh^T + b_hh)
  void* dgh;          // [B, 3H] the gradient of h W_hh^T + b_hh (GRU: (dr, dz, dhn)); else null
  void* direct;       // [B, H] the direct part dh' z of dh (GRU); else null
  void* dc_prev;      // [B, H] the gradient of c (LSTM); else null
};

// Bytes of device workspace a call needs (carried states, h exchange buffers, the grid barrier).
size_t workspace_bytes(Kernel kernel, const Problem& problem);

// Run one layer-direction. steps >= 1 and batch >= 1 (the binding handles empty problems).
void lstm_forward(const LstmForward& args, const Options& options);
void lstm_backward(const LstmBackward& args, const Options& options);
void gru_forward(const GruForward& args, const Options& options);
void gru_backward(const GruBackward& args, const Options& options);
void rnn_forward(const RnnForward& args, const Options& options);
void rnn_backward(const RnnBackward& args, const Options& options);
// One cell step: forward one launch (stepwise: (unit slice, row block) per CTA), backward one pointwise launch.
void cell_forward(const CellForward& args, const Options& options);
void cell_backward(const CellBackward& args, const Options& options);

// The launch plan a call with these arguments would run, in words (strategy, CTAs, threads, tiles,
// shared memory, and why), computed for the current device.
std::string describe_plan(Kernel kernel, const Problem& problem, const Options& options);

}  // namespace cuda
}  // namespace fastrnn
