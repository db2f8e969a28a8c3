// The CUDA kernels' host interface: pure C++ with the CUDA runtime, no torch types. The binding
// (binding.cpp) hands in device pointers, a scratch allocator and the stream to run on.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>

#include "../common/lstm_args.h"

namespace detlstm {
namespace cuda {

// Device memory that lives until the call returns; stream-ordered with the call's stream.
using ScratchAlloc = std::function<void*(size_t bytes)>;

// Launch shapes. They decide which thread computes which value, never the order of a value's
// operations, so every variant gives the same bits (tests force each one as a stand-in for GPUs of
// other sizes). 0, the default, runs the steps with the shared-memory "slice" kernels (the fastest
// on an H100 at tagger and large, 2026-11-23); 1-3 with one thread per unit and 1, 8 or 4 rows.
int set_launch_variant(int variant);  // returns the previous one
constexpr int kLaunchVariants = 4;

// The most blocks a launch puts along grid x and y. The default is CUDA's own limit (2^31 - 1 and
// 65535); tests force small limits so that the kernels' loops over blocks beyond the grid, which let
// any size that fits in memory run, are exercised at small sizes. Values below 1 restore the default.
struct GridLimit {
  int64_t x, y;
};
GridLimit set_grid_limit(GridLimit limit);  // returns the previous one

void lstm_forward(const LstmForwardArgs<float>& args, const ScratchAlloc& scratch, cudaStream_t stream);
void lstm_forward(const LstmForwardArgs<double>& args, const ScratchAlloc& scratch, cudaStream_t stream);
void lstm_backward(const LstmBackwardArgs<float>& args, const ScratchAlloc& scratch, cudaStream_t stream);
void lstm_backward(const LstmBackwardArgs<double>& args, const ScratchAlloc& scratch, cudaStream_t stream);

// exp (0), sigmoid (1) or tanh (2) elementwise: the canonical functions, for the bitwise tests.
void canonical_unary(int fn, const float* x, float* y, int64_t n, cudaStream_t stream);
// Every float32 bit pattern from `first` on, `count` of them: y[k] = f(bits_float(first + k)).
void canonical_unary_bits(int fn, uint32_t first, float* y, int64_t count, cudaStream_t stream);

}  // namespace cuda
}  // namespace detlstm
