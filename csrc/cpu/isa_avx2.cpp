// The CPU kernels for AVX2 with FMA: 32-byte vectors, 16 vector registers (see isa_avx512.cpp).
#if defined(__x86_64__)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx2,fma")
#endif
#define FASTRNN_ISA avx2
#define FASTRNN_VECTOR_BYTES 32
#define FASTRNN_REGISTERS 16
#include "instantiate.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
