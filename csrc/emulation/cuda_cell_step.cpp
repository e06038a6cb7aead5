// The CUDA kernels of csrc/cuda/cell_step.cu compiled as host C++ for the SIMT emulator (a .cpp, because
// torch.utils.cpp_extension would hand a .cu to nvcc).
#include "../cuda/cell_step.cu"
