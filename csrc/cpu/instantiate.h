// The body of every isa_*.cpp: the LSTM and GRU kernels for one instruction set, as extern entry
// points in namespace fastrnn::cpu::FASTRNN_ISA. The including file sets FASTRNN_ISA (a name),
// FASTRNN_VECTOR_BYTES (the vector width) and FASTRNN_REGISTERS (vector registers), after selecting
// the instruction set with a target pragma before any include.
#include "gru.h"
#include "lstm.h"

namespace fastrnn {
namespace cpu {
namespace FASTRNN_ISA {

template <class T>
using Lstm = LstmKernels<T, FASTRNN_VECTOR_BYTES / sizeof(T), FASTRNN_REGISTERS>;
template <class T>
using Gru = GruKernels<T, FASTRNN_VECTOR_BYTES / sizeof(T), FASTRNN_REGISTERS>;

void lstm_forward(const LstmForward<float>& args) { Lstm<float>::forward(args); }
void lstm_forward(const LstmForward<double>& args) { Lstm<double>::forward(args); }
void lstm_backward(const LstmBackward<float>& args) { Lstm<float>::backward(args); }
void lstm_backward(const LstmBackward<double>& args) { Lstm<double>::backward(args); }
void gru_forward(const GruForward<float>& args) { Gru<float>::forward(args); }
void gru_forward(const GruForward<double>& args) { Gru<double>::forward(args); }
void gru_backward(const GruBackward<float>& args) { Gru<float>::backward(args); }
void gru_backward(const GruBackward<double>& args) { Gru<double>::backward(args); }

}  // namespace FASTRNN_ISA
}  // namespace cpu
}  // namespace fastrnn
