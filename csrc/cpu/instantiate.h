// The body of every isa_*.cpp: the LSTM, GRU and Elman kernels, the cells, the float32 transpose and input projection for one
// instruction set, as extern entry points in namespace fastrnn::cpu::FASTRNN_ISA. The including file sets FASTRNN_ISA (a name),
// FASTRNN_VECTOR_BYTES (the vector width) and FASTRNN_REGISTERS (vector registers), after selecting
// the instruction set with a target pragma before any include; optionally FASTRNN_BF16_DOT (the GEMMs
// multiply bfloat16 pairs, gemm.h) and FASTRNN_ONLY_BFLOAT16 (build the bfloat16 entry points only).
#include "cell_step.h"
#include "gru.h"
#include "lstm.h"
#include "projection.h"
#include "rnn.h"
#include "transpose.h"

namespace fastrnn {
namespace cpu {
namespace FASTRNN_ISA {

// One vector holds FASTRNN_VECTOR_BYTES of the compute type (float for bfloat16 storage).
template <class S>
using Lstm = LstmKernels<S, FASTRNN_VECTOR_BYTES / sizeof(typename ComputeOf<S>::type), FASTRNN_REGISTERS>;
template <class S>
using Gru = GruKernels<S, FASTRNN_VECTOR_BYTES / sizeof(typename ComputeOf<S>::type), FASTRNN_REGISTERS>;
template <class S>
using Rnn = RnnKernels<S, FASTRNN_VECTOR_BYTES / sizeof(typename ComputeOf<S>::type), FASTRNN_REGISTERS>;
template <class S>
using Cell = CellKernels<S, FASTRNN_VECTOR_BYTES / sizeof(typename ComputeOf<S>::type), FASTRNN_REGISTERS>;

#define FASTRNN_INSTANTIATE(S)                                                     \
  void lstm_forward(const LstmForward<S>& args) { Lstm<S>::forward(args); }        \
  void lstm_backward(const LstmBackward<S>& args) { Lstm<S>::backward(args); }     \
  void gru_forward(const GruForward<S>& args) { Gru<S>::forward(args); }           \
  void gru_backward(const GruBackward<S>& args) { Gru<S>::backward(args); }        \
  void rnn_forward(const RnnForward<S>& args) { Rnn<S>::forward(args); }           \
  void rnn_backward(const RnnBackward<S>& args) { Rnn<S>::backward(args); }        \
  bool cell_pack(const CellPack<S>& args) { return Cell<S>::pack(args); }          \
  bool cell_forward(const CellForward<S>& args) { return Cell<S>::forward(args); } \
  void cell_backward(const CellBackward<S>& args) { Cell<S>::backward(args); }

#if !defined(FASTRNN_ONLY_BFLOAT16)  // a variant that changes only the bfloat16 kernels builds only those
FASTRNN_INSTANTIATE(float)
FASTRNN_INSTANTIATE(double)
void transpose(const Transpose& args) { transpose_matrix<FASTRNN_VECTOR_BYTES / sizeof(float)>(args); }
void linear(const Linear& args) { LinearKernel<FASTRNN_VECTOR_BYTES / sizeof(float), FASTRNN_REGISTERS>::project(args); }
#endif
FASTRNN_INSTANTIATE(bfloat16)

int vector_bytes() { return FASTRNN_VECTOR_BYTES; }

}  // namespace FASTRNN_ISA
}  // namespace cpu
}  // namespace fastrnn
