// csrc/cuda/forward.cu compiled as C++ for the host emulation (include/cuda_runtime.h stands in for CUDA).
#include "../../csrc/cuda/forward.cu"
