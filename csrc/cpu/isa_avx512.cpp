// The CPU kernels for AVX-512 (F, BW, DQ, VL): 64-byte vectors, 32 vector registers. The target pragma
// comes before every include so that all code of this translation unit, and only this one, may use
// AVX-512; dispatch.cpp calls in here only on CPUs that have it.
#if defined(__x86_64__)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")
#endif
#define FASTRNN_ISA avx512
#define FASTRNN_VECTOR_BYTES 64
#define FASTRNN_REGISTERS 32
#include "instantiate.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
