// The CUDA kernels' host interface: pure C++ with the CUDA runtime, no torch types. The binding
// (binding.cpp) hands in device pointers, a scratch allocator and the stream to run on.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>

#include "../common/lstm_args.h"
#include "launch_shapes.h"

namespace detlstm {
namespace cuda {

// Device memory that lives until the call returns; stream-ordered with the call's stream.
using ScratchAlloc = std::function<void*(size_t bytes)>;

void lstm_forward(const LstmForwardArgs<float>& args, const ScratchAlloc& scratch, cudaStream_t stream);
void lstm_forward(const LstmForwardArgs<double>& args, const ScratchAlloc& scratch, cudaStream_t stream);
void lstm_backward(const LstmBackwardArgs<float>& args, const ScratchAlloc& scratch, cudaStream_t stream);
void lstm_backward(const LstmBackwardArgs<double>& args, const ScratchAlloc& scratch, cudaStream_t stream);

// exp, sigmoid or tanh elementwise: the canonical functions, for the bitwise tests.
void canonical_unary(UnaryFn fn, const float* x, float* y, int64_t n, cudaStream_t stream);
// Every float32 bit pattern from `first` on, `count` of them: y[k] = f(bits_float(first + k)).
void canonical_unary_bits(UnaryFn fn, uint32_t first, float* y, int64_t count, cudaStream_t stream);

}  // namespace cuda
}  // namespace detlstm
