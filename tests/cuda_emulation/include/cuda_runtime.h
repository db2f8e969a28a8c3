// Host emulation of the part of CUDA that csrc/cuda uses, so the real kernel sources compile with g++
// and run on the CPU (tests/test_cuda_emulation.py). It stands in for <cuda_runtime.h>: this folder
// comes first on the include path of the emulated build, and nowhere else; the build also defines
// DETLSTM_CUDA_EMULATION, which makes csrc/cuda's launch_kernel call emulated_launch below.
//
// The subset of CUDA it supports, and nothing more (a kernel using anything else does not compile):
// - __global__, __device__, __host__, __forceinline__, __launch_bounds__, __align__, __shared__;
// - threadIdx, blockIdx, blockDim, gridDim; dim3 and uint3; __syncthreads();
// - launches through emulated_launch (grid and block shapes checked as a GPU checks them, with a
//   settable grid limit), cudaGetLastError, cudaGetErrorString;
// - cudaMemcpyAsync (a plain memmove: host and device memory are one), cudaStreamSynchronize (counts
//   calls), cudaStreamIsCapturing (never capturing); streams are opaque pointers.
// No atomics, warp intrinsics, dynamic shared memory, events, or device properties.
//
// What it models: a grid of blocks, each a set of threads with threadIdx/blockIdx/blockDim/gridDim,
// block-local __shared__ memory and __syncthreads() as a real barrier (every thread is a fiber of
// its own; a barrier switches to the next). Blocks run one after another and the threads of a block
// in turn between barriers, in an order the test chooses (forward or reversed), so a kernel whose
// result depends on which thread or block runs first shows it as a change of bits. What it cannot
// model: the device compiler, the memory model across concurrently running blocks, timing, and the
// two address spaces (a host pointer handed to a kernel works here and faults on a GPU).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Blocks never overlap in time here, so one static copy per kernel instantiation is block-local.
#define __shared__ static

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// The running thread's coordinates, set by the scheduler each time it resumes a thread.
extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;

void __syncthreads();

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorLaunchFailure = 719 };
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3
};
struct CUstream_st;
using cudaStream_t = CUstream_st*;

cudaError_t cudaGetLastError();
const char* cudaGetErrorString(cudaError_t err);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream);
// Launches run to completion here, so synchronising only counts (tests check it happens), and no
// stream is ever being captured.
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
enum cudaStreamCaptureStatus {
  cudaStreamCaptureStatusNone = 0,
  cudaStreamCaptureStatusActive = 1,
  cudaStreamCaptureStatusInvalidated = 2
};
cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status);

namespace detlstm_emulation {

// Runs thread_body once per thread of the grid (see the top of this file). A barrier reached by some
// threads of a block while others have returned is reported by the next cudaGetLastError().
void run_grid(dim3 grid, dim3 block, const std::function<void()>& thread_body);

// Order of execution: bit 0 reverses the blocks, bit 1 reverses the threads within each block.
int set_order(int order);  // returns the previous one

// The largest grid along x and y a launch may have; a larger one fails as on a GPU. The default is
// CUDA's (2^31 - 1, 65535); tests lower it to check that kernels cover work beyond their grid.
void set_max_grid(unsigned x, unsigned y);

// Launches and stream synchronisations since the process started.
struct Counts {
  uint64_t launches, synchronizations;
};
Counts counts();

}  // namespace detlstm_emulation

// What `kernel<<<grid, block, 0, stream>>>(args...)` becomes in the emulated build: the arguments are
// converted to the kernel's parameter types once, as a launch does, and every thread gets a copy.
template <typename... Params, typename... Args>
void emulated_launch(void (*kernel)(Params...), dim3 grid, dim3 block, Args... args) {
  const std::tuple<Params...> params(args...);
  detlstm_emulation::run_grid(grid, block, [&] { std::apply(kernel, params); });
}
