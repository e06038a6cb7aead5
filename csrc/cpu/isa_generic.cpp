// The CPU kernels for any CPU: 16-byte vectors, which the compiler maps to the baseline instruction set
// of the build target (SSE2 on x86-64, NEON on AArch64, scalar code elsewhere).
#define FASTRNN_ISA generic
#define FASTRNN_VECTOR_BYTES 16
#define FASTRNN_REGISTERS 16
#include "instantiate.h"
