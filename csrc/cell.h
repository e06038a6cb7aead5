// The LSTM, GRU and Elman cell math, stated once for every kernel: the CPU kernels (scalar and SIMD vector
// types), the CUDA kernels, and the CUDA kernels run on the host by the SIMT emulator.
//
// Only the pointwise part of a step lives here; the matmuls are the kernels' business. The math is
// that of fastrnn/cell_math.py (PyTorch's gate order and bias layout):
//
//   LSTM  i, f, o = sigmoid(.), g = tanh(.);  c' = f c + i g;  h' = o tanh(c')   (then h' W_hr^T with proj_size)
//   GRU   r = sigmoid(xr + hr), z = sigmoid(xz + hz), n = tanh(xn + r * hn);  h' = (1 - z) n + z h
//         (hn = h W_hn^T + b_hn: b_hn sits inside the reset product)
//   Elman h' = act(pre), act = tanh or relu
//
// Every function is a template over the value type V: float or double, or a SIMD vector type that
// supplies +, -, *, /, construction from a scalar, and the overloads fastrnn_exp(V), fastrnn_tanh(V),
// fastrnn_relu(V) and fastrnn_positive(V) (found by argument-dependent lookup). Low-precision storage
// (bf16, fp16) is converted to float by the caller; the cell always computes in float or double.
//
// Everything has internal linkage (unnamed namespace): the CPU build compiles this header into
// several translation units for different instruction sets, and one TU's AVX-512 copy of an inline
// function must never be picked by the linker for another's portable caller.
#pragma once

#if defined(__CUDACC__)
#define FASTRNN_HD __host__ __device__ __forceinline__
#else
#define FASTRNN_HD inline __attribute__((always_inline))
#endif

namespace fastrnn {
namespace {

// --- scalar exp and tanh -------------------------------------------------------------------------

#if defined(__CUDA_ARCH__)
FASTRNN_HD float fastrnn_exp(float x) { return expf(x); }
FASTRNN_HD double fastrnn_exp(double x) { return exp(x); }
FASTRNN_HD float fastrnn_tanh(float x) { return tanhf(x); }
FASTRNN_HD double fastrnn_tanh(double x) { return tanh(x); }
#else
// Builtins, not <cmath>: they lower to libm calls and pull in no inline library code (see above).
FASTRNN_HD float fastrnn_exp(float x) { return __builtin_expf(x); }
FASTRNN_HD double fastrnn_exp(double x) { return __builtin_exp(x); }
FASTRNN_HD float fastrnn_tanh(float x) { return __builtin_tanhf(x); }
FASTRNN_HD double fastrnn_tanh(double x) { return __builtin_tanh(x); }
#endif

// relu as torch's (a NaN stays NaN), and its derivative read off its output: 1 where x > 0, else 0.
FASTRNN_HD float fastrnn_relu(float x) { return x < 0.0f ? 0.0f : x; }
FASTRNN_HD double fastrnn_relu(double x) { return x < 0.0 ? 0.0 : x; }
FASTRNN_HD float fastrnn_positive(float x) { return x > 0.0f ? 1.0f : 0.0f; }
FASTRNN_HD double fastrnn_positive(double x) { return x > 0.0 ? 1.0 : 0.0; }

template <class V>
FASTRNN_HD V sigmoid(V x) {
  return V(1) / (V(1) + fastrnn_exp(-x));
}

// --- LSTM ----------------------------------------------------------------------------------------

// One LSTM cell forward. In: the gate pre-activations (x W_ih^T + b + h W_hh^T) and the previous cell
// state. Out: the activated gates (kept for the backward), the new cell state and the unprojected
// hidden state o * tanh(c').
template <class V>
FASTRNN_HD void lstm_cell_forward(V pre_i, V pre_f, V pre_g, V pre_o, V c_prev,
                                  V& i, V& f, V& g, V& o, V& c, V& h) {
  i = sigmoid(pre_i);
  f = sigmoid(pre_f);
  g = fastrnn_tanh(pre_g);
  o = sigmoid(pre_o);
  c = f * c_prev + i * g;
  h = o * fastrnn_tanh(c);
}

// One LSTM cell backward. In: dh, the gradient of the unprojected hidden output o * tanh(c') (output
// gradient plus the carry from the next step, already through W_hr^T with proj_size); dc, the carried
// gradient of c'; the activated gates, c' and c. Out: the gradients of the four pre-activations and of
// the previous cell state.
template <class V>
FASTRNN_HD void lstm_cell_backward(V dh, V dc, V i, V f, V g, V o, V c, V c_prev,
                                   V& d_pre_i, V& d_pre_f, V& d_pre_g, V& d_pre_o, V& dc_prev) {
  const V tanh_c = fastrnn_tanh(c);
  const V dc_total = dc + dh * o * (V(1) - tanh_c * tanh_c);
  d_pre_i = dc_total * g * i * (V(1) - i);
  d_pre_f = dc_total * c_prev * f * (V(1) - f);
  d_pre_g = dc_total * i * (V(1) - g * g);
  d_pre_o = dh * tanh_c * o * (V(1) - o);
  dc_prev = dc_total * f;
}

// --- GRU -----------------------------------------------------------------------------------------

// One GRU cell forward. In: the input parts x W_i*^T + b_i* (+ b_hr, b_hz folded into xr, xz), the
// hidden parts h W_h*^T (hn including b_hn) and the previous hidden state. Out: r, z, n (kept for the
// backward together with hn) and the new hidden state.
template <class V>
FASTRNN_HD void gru_cell_forward(V xr, V xz, V xn, V hr, V hz, V hn, V h_prev, V& r, V& z, V& n, V& h) {
  r = sigmoid(xr + hr);
  z = sigmoid(xz + hz);
  n = fastrnn_tanh(xn + r * hn);
  h = (V(1) - z) * n + z * h_prev;
}

// One GRU cell backward. In: dh, the total gradient of h' (output gradient plus the carry from the
// next step); r, z, n, hn and h. Out: the gradients of the three input-side pre-activations (xr + hr,
// xz + hz, and xn, the candidate's input part), of hn, and the direct part dh * z of the previous hidden
// state's gradient (the rest arrives through W_hh).
template <class V>
FASTRNN_HD void gru_cell_backward(V dh, V r, V z, V n, V hn, V h_prev,
                                  V& d_pre_r, V& d_pre_z, V& d_pre_n, V& d_hn, V& dh_prev_direct) {
  d_pre_n = dh * (V(1) - z) * (V(1) - n * n);
  d_pre_r = d_pre_n * hn * r * (V(1) - r);
  d_pre_z = dh * (h_prev - n) * z * (V(1) - z);
  d_hn = d_pre_n * r;
  dh_prev_direct = dh * z;
}

// --- Elman ---------------------------------------------------------------------------------------

// One Elman cell forward: the pre-activation (x W_ih^T + b_ih + h W_hh^T + b_hh) to h' = act(pre).
template <class V>
FASTRNN_HD V rnn_cell_forward(V pre, bool relu) {
  return relu ? fastrnn_relu(pre) : fastrnn_tanh(pre);
}

// One Elman cell backward: dh, the total gradient of h', to that of the pre-activation. act' is read
// off h' (tanh: 1 - h'^2; relu: h' > 0), so the forward keeps nothing but its output.
template <class V>
FASTRNN_HD V rnn_cell_backward(V dh, V h, bool relu) {
  return dh * (relu ? fastrnn_positive(h) : V(1) - h * h);
}

}  // namespace
}  // namespace fastrnn
