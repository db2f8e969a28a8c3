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
// - cooperative launches through emulated_cooperative_launch: every block of the grid resident at
//   once, with dynamic shared memory per block (emulated_dynamic_shared), refused like
//   cudaLaunchCooperativeKernel when the grid cannot be co-resident on the emulated device;
// - the device's size and occupancy: cudaGetDevice, cudaDeviceGetAttribute (multiprocessors, shared
//   memory per block and per multiprocessor), cudaFuncSetAttribute (the dynamic shared-memory limit),
//   cudaOccupancyMaxActiveBlocksPerMultiprocessor; the emulated device is set by set_device;
// - integer atomics as the GCC builtins (one OS thread runs every fiber, so they are exact), and
//   emulated_spin_pause() for a thread that waits on another block;
// - asynchronous copies from global to shared memory (what cp.async does, csrc/cuda's async_copy,
//   async_commit, async_wait): each thread's copies are grouped at each commit, and a copy lands
//   either at the latest moment CUDA allows (the wait that leaves its group no longer pending: a
//   read of shared memory before its wait sees the old contents) or at once (set_async_landing:
//   a copy issued into memory other threads still read changes what they read); a thread that
//   returns with copies pending is reported, as a kernel that leaves them would race with the next
//   work its block's shared memory holds;
// - cudaMemcpyAsync, cudaMemsetAsync (plain memmove / memset: host and device memory are one),
//   cudaStreamSynchronize (counts calls), cudaStreamIsCapturing (never capturing); streams are opaque
//   pointers.
// No warp intrinsics, events, or float atomics.
//
// What it models: a grid of blocks, each a set of threads with threadIdx/blockIdx/blockDim/gridDim,
// block-local shared memory and __syncthreads() as a real barrier (every thread is a fiber of its
// own; a thread runs until it reaches a barrier, pauses in a spin wait, or returns). An ordinary
// launch runs its blocks one after another; a cooperative launch runs all of them at once, a pass at
// a time over every thread that can run, so blocks that wait on each other's flags interleave as on
// a GPU, and a grid whose blocks wait forever is reported instead of hanging. Blocks and threads run
// in an order the test chooses (forward or reversed), so a kernel whose result depends on which
// thread or block runs first shows it as a change of bits. What it cannot model: the device
// compiler, the hardware memory model (stores are visible at once here, so a missing fence shows
// nothing), timing, and the two address spaces (a host pointer handed to a kernel works here and
// faults on a GPU). Static __shared__ arrays are one copy per kernel: a cooperative kernel must keep
// its shared arrays in dynamic shared memory.
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
// A kernel parameter read in place (CUDA: no per-thread copy); here parameters are the kernel's own.
#define __grid_constant__
#define __align__(n) __attribute__((aligned(n)))
// The blocks of an ordinary launch never overlap in time here, so one static copy per kernel
// instantiation is block-local (cooperative kernels use dynamic shared memory instead).
#define __shared__ static

struct __attribute__((aligned(16))) float4 {
  float x, y, z, w;
};
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

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorLaunchTimeout = 702,
  cudaErrorLaunchFailure = 719,
  cudaErrorAsyncCopiesPending = 999,
  cudaErrorCooperativeLaunchTooLarge = 720
};
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
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t stream);

// The emulated device's size (detlstm_emulation::set_device) and what a launch may use of it.
enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
  cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
  cudaDevAttrCooperativeLaunch = 95
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
// Blocks of `threads` threads and `shared_bytes` of dynamic shared memory one multiprocessor holds:
// limited by shared memory and by 2048 threads, as on an H100 (registers are not modelled).
int emulated_blocks_per_multiprocessor(int threads, size_t shared_bytes);
template <typename Kernel>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, Kernel, int threads,
                                                          size_t shared_bytes) {
  *blocks = emulated_blocks_per_multiprocessor(threads, shared_bytes);
  return cudaSuccess;
}
cudaError_t emulated_set_shared_limit(int bytes);
template <typename Kernel>
cudaError_t cudaFuncSetAttribute(Kernel, cudaFuncAttribute, int bytes) {
  return emulated_set_shared_limit(bytes);
}

// Device-side pieces: fences are no-ops (one OS thread runs every fiber; stores are seen at once),
// __ldcg a plain load, and a spin wait's pause hands the turn to the other threads.
inline void __threadfence() {}
template <typename T>
T __ldcg(const T* p) {
  return *p;
}
void emulated_spin_pause();
// The running block's dynamic shared memory (cooperative launches), null in an ordinary launch.
unsigned char* emulated_dynamic_shared();

// The running thread's asynchronous copies (see the list at the top): `bytes` from src to dst, or
// zeros where !valid (src is then not read); a commit closes the group of the copies issued since the
// last; a wait leaves at most `pending` of the latest committed groups not landed.
void emulated_async_copy(void* dst, const void* src, size_t bytes, bool valid);
void emulated_async_commit();
void emulated_async_wait(int pending);

namespace detlstm_emulation {

// Runs thread_body once per thread of the grid (see the top of this file). A barrier reached by some
// threads of a block while others have returned is reported by the next cudaGetLastError().
void run_grid(dim3 grid, dim3 block, const std::function<void()>& thread_body);

// Runs thread_body once per thread of the grid with every block resident at once, each with
// shared_bytes of its own dynamic shared memory (see the top of this file).
void run_grid_cooperative(dim3 grid, dim3 block, size_t shared_bytes,
                          const std::function<void()>& thread_body);

// The emulated device: multiprocessors, shared memory per multiprocessor and the most one block may
// opt in to (defaults: an H100's 132, 228 KiB and 227 KiB).
void set_device(int multiprocessors, int shared_per_multiprocessor, int shared_per_block);

// Cooperative launches of more than `blocks` blocks are refused (cudaErrorCooperativeLaunchTooLarge)
// although the occupancy query counts room for them, as under MPS with an active-thread percentage;
// 0 (the default): no such limit. Returns the previous one.
uint64_t set_cooperative_block_limit(uint64_t blocks);

// Order of execution: bit 0 reverses the blocks, bit 1 reverses the threads within each block.
int set_order(int order);  // returns the previous one

// Where asynchronous copies land: at the latest (false, the default) or as they are issued (true).
bool set_async_landing(bool early);  // returns the previous setting

// The largest grid along x and y a launch may have; a larger one fails as on a GPU. The default is
// CUDA's (2^31 - 1, 65535); tests lower it to check that kernels cover work beyond their grid.
void set_max_grid(unsigned x, unsigned y);

// Launches and stream synchronisations since the process started (cooperative launches: those that ran).
struct Counts {
  uint64_t launches, synchronizations, cooperative_launches;
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

// What cudaLaunchCooperativeKernel(kernel, grid, block, args, shared_bytes, stream) becomes.
template <typename... Params, typename... Args>
void emulated_cooperative_launch(void (*kernel)(Params...), dim3 grid, dim3 block,
                                 size_t shared_bytes, Args... args) {
  const std::tuple<Params...> params(args...);
  detlstm_emulation::run_grid_cooperative(grid, block, shared_bytes,
                                          [&] { std::apply(kernel, params); });
}
