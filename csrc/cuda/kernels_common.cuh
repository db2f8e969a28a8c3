// Shared pieces of the CUDA kernels: launch checks, the step/time arithmetic, row addressing.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "../common/chunked_sum.h"
#include "../common/layout.h"
#include "../common/lstm_cell.h"
#include "../common/schedule.h"
#include "lstm_cuda.h"

namespace detlstm {
namespace cuda {

inline void check_cuda(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  cudaGetLastError();  // a failed call sets the last error too: clear it, or a later check reports it
  throw std::runtime_error(std::string("detlstm CUDA: ") + what + ": " + cudaGetErrorString(err));
}

// DETLSTM_CUDA_SYNC=1 (read at every launch): synchronise after each kernel and check, so a fault
// inside a kernel is reported with that kernel's name instead of surfacing at some later call. Off
// during stream capture, where synchronising is not allowed (and nothing runs yet anyway).
inline bool sync_after_launches() {
  const char* v = std::getenv("DETLSTM_CUDA_SYNC");
  return v != nullptr && v[0] != '\0' && !(v[0] == '0' && v[1] == '\0');
}

inline void check_launch(const char* kernel, cudaStream_t stream) {
  check_cuda(cudaGetLastError(), kernel);  // configuration errors: shape, resources
  if (!sync_after_launches()) return;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  check_cuda(cudaStreamIsCapturing(stream, &capture), kernel);
  if (capture == cudaStreamCaptureStatusNone)
    check_cuda(cudaStreamSynchronize(stream), kernel);  // faults while the kernel ran
}

// A grid of nx x ny x nz blocks of work, capped at the grid limit along x and y (nz <= 65535). No
// work gives an empty grid, which a launch rejects: callers launch only where there is work.
inline dim3 capped_grid(int64_t nx, int64_t ny = 1, int64_t nz = 1) {
  const GridLimit limit = grid_limit();
  const auto cap = [](int64_t n, int64_t most) {
    return static_cast<unsigned>(n < 1 ? 0 : (n < most ? n : most));
  };
  return dim3(cap(nx, limit.x), cap(ny, limit.y), static_cast<unsigned>(nz));
}

// Every kernel launch goes through here. Under nvcc it is the launch itself. Compiled as plain C++
// with DETLSTM_CUDA_EMULATION defined (tests/cuda_emulation, whose cuda_runtime.h stands in for
// CUDA's) it runs the kernel in the host emulation, which lets the CPU-only CI execute these very
// sources and compare their bits with the CPU kernels'. Kernels whose work can outgrow the grid
// limit (launch_shapes.h) visit their blocks of work in strides of the grid.
template <typename... Params, typename... Args>
void launch_kernel(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block,
                   cudaStream_t stream, Args... args) {
  const GridLimit limit = grid_limit();
  if (grid.x > limit.x || grid.y > limit.y)
    throw std::logic_error(std::string("detlstm CUDA: ") + name + ": grid over the limit");
#if defined(__CUDACC__)
  kernel<<<grid, block, 0, stream>>>(args...);
#elif defined(DETLSTM_CUDA_EMULATION)
  emulated_launch(kernel, grid, block, args...);
#else
#error "csrc/cuda compiles with nvcc, or as C++ for the host emulation with DETLSTM_CUDA_EMULATION"
#endif
  check_launch(name, stream);
}

// A cooperative launch: every block of the grid resident at once (cudaLaunchCooperativeKernel
// refuses a grid the device cannot hold instead of letting its blocks wait forever on blocks that
// never start), with shared_bytes of dynamic shared memory per block. Callers check the fit first
// (co_resident_blocks) and run another path where it fails. Returns false, nothing launched and no
// error left behind, where the device refuses the grid all the same
// (cudaErrorCooperativeLaunchTooLarge: fewer multiprocessors than the occupancy query counted, as
// under MPS with an active-thread percentage); any other error throws.
template <typename... Params, typename... Args>
bool try_launch_cooperative(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block,
                            size_t shared_bytes, cudaStream_t stream, Args... args) {
  const GridLimit limit = grid_limit();
  if (grid.x > limit.x || grid.y > limit.y)
    throw std::logic_error(std::string("detlstm CUDA: ") + name + ": grid over the limit");
#if defined(__CUDACC__)
  std::tuple<Params...> params(args...);
  void* pointers[sizeof...(Params)];
  std::apply([&](auto&... p) {
    int k = 0;
    ((pointers[k++] = static_cast<void*>(&p)), ...);
  }, params);
  const cudaError_t launched = cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel),
                                                           grid, block, pointers, shared_bytes, stream);
#elif defined(DETLSTM_CUDA_EMULATION)
  emulated_cooperative_launch(kernel, grid, block, shared_bytes, args...);
  const cudaError_t launched = cudaGetLastError();
#else
#error "csrc/cuda compiles with nvcc, or as C++ for the host emulation with DETLSTM_CUDA_EMULATION"
#endif
  if (launched == cudaErrorCooperativeLaunchTooLarge) {
    cudaGetLastError();  // the refusal sets the last error too
    return false;
  }
  check_cuda(launched, name);
  check_launch(name, stream);
  return true;
}

// try_launch_cooperative where a refusal is an error.
template <typename... Params, typename... Args>
void launch_cooperative(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block,
                        size_t shared_bytes, cudaStream_t stream, Args... args) {
  if (!try_launch_cooperative(name, kernel, grid, block, shared_bytes, stream, args...))
    check_cuda(cudaErrorCooperativeLaunchTooLarge, name);
}

// The current device's multiprocessor count.
inline int64_t multiprocessors() {
  int device = 0, sms = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "SM count");
  return sms;
}

// How many blocks of `kernel` (threads each, shared_bytes of dynamic shared memory) the device holds
// at once; 0 where one block cannot run (more shared memory than a block may have, or no cooperative
// launches). Raises the kernel's dynamic shared-memory limit to the most a block may have, which
// launches of more than 48 KB need: a ceiling, not a request, so plans made for other sizes (another
// thread's, another layer's) cannot leave it below what a launch asks for.
template <typename... Params>
int64_t co_resident_blocks(void (*kernel)(Params...), int threads, size_t shared_bytes) {
  int device = 0, most_shared = 0, cooperative = 0, per_sm = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&most_shared, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
             "shared memory per block");
  check_cuda(cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device),
             "cooperative launch support");
  if (!cooperative || shared_bytes > static_cast<size_t>(most_shared)) return 0;
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, most_shared),
             "raise the dynamic shared-memory limit");
  check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, shared_bytes),
             "occupancy");
  return per_sm * multiprocessors();
}

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The block's dynamic shared memory (the size its launch gave), 16-byte aligned.
#if defined(DETLSTM_CUDA_EMULATION)
inline unsigned char* dynamic_shared_bytes() { return emulated_dynamic_shared(); }
#else
__device__ __forceinline__ unsigned char* dynamic_shared_bytes() {
  extern __shared__ __align__(16) unsigned char detlstm_dynamic_shared[];
  return detlstm_dynamic_shared;
}
#endif

// Flags between the blocks of a cooperative launch (integers only: a count of arrivals).
// signal_release: everything this thread's block wrote before (a barrier first orders the block's
// other threads) is visible to whoever sees the new count. load_acquire: what the counted blocks
// wrote is visible after it. spin_pause: a short sleep in a wait loop (the emulator's turn switch).
#if defined(DETLSTM_CUDA_EMULATION)
inline void signal_release(unsigned* counter) { __atomic_fetch_add(counter, 1u, __ATOMIC_RELEASE); }
inline unsigned load_acquire(const unsigned* counter) {
  return __atomic_load_n(counter, __ATOMIC_ACQUIRE);
}
inline void spin_pause() { emulated_spin_pause(); }
#else
// A release reduction (MEMBAR.ALL.GPU + REDG on sm_90) by thread 0 after the block's __syncthreads:
// the barrier orders the other threads' writes before it and the release is cumulative over them
// (the structure of CUTLASS's grid barrier, which releases with fence.acq_rel + red.relaxed, one
// L1 invalidation more). __threadfence + atomicAdd would give a sequentially consistent fence
// (MEMBAR.SC.GPU) and an L1 invalidation, more than publishing the block's writes needs.
__device__ __forceinline__ void signal_release(unsigned* counter) {
#if __CUDA_ARCH__ >= 700
  asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(counter) : "memory");
#else
  __threadfence();
  atomicAdd(counter, 1u);
#endif
}
__device__ __forceinline__ unsigned load_acquire(const unsigned* counter) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(counter) : "memory");
  return v;
}
__device__ __forceinline__ void spin_pause() { __nanosleep(32); }
#endif

// Asynchronous copies of one value from global to shared memory (cp.async, sm_80 and later): the
// copy proceeds while the thread goes on, without passing through its registers. async_commit closes
// the group of the thread's copies issued since the last commit; async_wait<N>() returns once at
// most the N latest committed groups are still in flight, and its memory clobber keeps the
// compiler from moving shared-memory reads above it. A barrier orders only the copies waited for
// before it. !valid stores a zero and reads nothing, but `global` must still be a mapped address.
// Before sm_80 the copy is an ordinary load and store, and commit and wait do nothing.
#if defined(DETLSTM_CUDA_EMULATION)
template <typename T>
inline void async_copy(T* shared, const T* global, bool valid) {
  emulated_async_copy(shared, global, sizeof(T), valid);
}
inline void async_commit() { emulated_async_commit(); }
template <int N>
inline void async_wait() {
  emulated_async_wait(N);
}
#else
template <typename T>
__device__ __forceinline__ void async_copy(T* shared, const T* global, bool valid) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "one float or double per copy");
#if __CUDA_ARCH__ >= 800
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(dst), "l"(global),
               "n"(int(sizeof(T))), "r"(valid ? int(sizeof(T)) : 0)
               : "memory");
#else
  *shared = valid ? *global : T(0);
#endif
}
__device__ __forceinline__ void async_commit() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void async_wait() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}
#endif

// The barrier between steps of one direction's blocks in a persistent kernel, in two halves so that
// a block can issue work that needs no other block's step between them. arrive: the block's writes
// of the step (every thread's: the __syncthreads comes before thread 0's release) are released and
// the block is counted. wait_for: until `target` arrivals are counted (the direction's blocks times
// the steps done), the other blocks' writes then visible to the whole block. Every thread of the
// block calls both.
__device__ inline void arrive(unsigned* counter) {
  __syncthreads();
  if (threadIdx.x == 0) signal_release(counter);
}
__device__ inline void wait_for(const unsigned* counter, unsigned target) {
  if (threadIdx.x == 0)
    while (load_acquire(counter) < target) spin_pause();
  __syncthreads();
}
__device__ inline void arrive_and_wait(unsigned* counter, unsigned target) {
  arrive(counter);
  wait_for(counter, target);
}

// Blocks of `threads` for a grid-stride loop over n elements, capped at the grid limit.
inline dim3 stride_grid(int64_t n, int threads) { return capped_grid(ceil_div(n, threads)); }

// The index of the first element of this thread in a grid-stride loop, and the stride.
__device__ __forceinline__ int64_t stride_start() {
  return blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
}
__device__ __forceinline__ int64_t stride_step() { return int64_t(gridDim.x) * blockDim.x; }

// Runs body(bx, by) for every block of work (bx < nx, by < ny) this block stands for: its own
// coordinates, then strides of the grid. The bounds are the same for all threads of a block, so
// barriers inside the body stay uniform.
template <class Body>
__device__ __forceinline__ void for_each_work_block(int64_t nx, int64_t ny, Body&& body) {
  for (int64_t by = blockIdx.y; by < ny; by += gridDim.y)
    for (int64_t bx = blockIdx.x; bx < nx; bx += gridDim.x) body(bx, by);
}

using ::detlstm::CallDims;
using ::detlstm::GemmEpilogue;
using ::detlstm::chunk_ends_after;
using ::detlstm::fold_and_restart;
using ::detlstm::fold_chunk;
using ::detlstm::kSumChunk;
using ::detlstm::StepSchedule;
using ::detlstm::c_prev_of;
using ::detlstm::h_prev_of;
using ::detlstm::prev_time;
using ::detlstm::step_time;

// One of a pair of per-direction pointers. A kernel parameter array indexed at run time is copied to
// local memory; a select keeps it in the parameter space.
template <typename P>
__device__ __forceinline__ P pick(P const (&pair)[2], int d) {
  return d == 0 ? pair[0] : pair[1];
}

// Row r of a matrix whose rows are picked by an index array (or taken in order when index is null).
template <typename T>
struct Rows {
  T* base;
  const int64_t* index;
  int64_t ld;
  int64_t offset;
  __device__ T* operator()(int64_t r) const { return base + (index ? index[r] : r) * ld + offset; }
};

// Device copies of the call's schedule.
struct DeviceSchedule {
  const int64_t* lengths;
  const int64_t* order;
  const int64_t* valid;
  const int64_t* active;  // rows running at each processing step (T + 1 values)
  int64_t rows;           // number of valid (t, b)
};

template <typename T>
T* scratch_array(const ScratchAlloc& scratch, int64_t count) {
  return static_cast<T*>(scratch(static_cast<size_t>(count > 0 ? count : 1) * sizeof(T)));
}

// Copies count host int64 values to device memory in stream order (elementwise.cu). The values
// travel as kernel parameters, which a launch copies when it is enqueued and a stream capture copies
// into the graph: no host buffer has to outlive the call, and CUDA graphs can capture it (a
// cudaMemcpyAsync from pageable memory cannot be captured, and one from pinned memory would read
// the buffer again at every replay).
void upload_int64(const int64_t* host, int64_t count, int64_t* device, cudaStream_t stream);

inline int64_t* upload_array(const std::vector<int64_t>& host, const ScratchAlloc& scratch,
                             cudaStream_t stream) {
  int64_t* buf = scratch_array<int64_t>(scratch, static_cast<int64_t>(host.size()));
  upload_int64(host.data(), static_cast<int64_t>(host.size()), buf, stream);
  return buf;
}

inline DeviceSchedule upload_schedule(const StepSchedule& sched, const int64_t* lengths, int64_t B,
                                      const ScratchAlloc& scratch, cudaStream_t stream) {
  const int64_t R = static_cast<int64_t>(sched.valid.size());
  std::vector<int64_t> host(lengths, lengths + B);
  host.insert(host.end(), sched.order.begin(), sched.order.end());
  host.insert(host.end(), sched.valid.begin(), sched.valid.end());
  host.insert(host.end(), sched.active.begin(), sched.active.end());
  const int64_t* buf = upload_array(host, scratch, stream);
  return {buf, buf + B, buf + 2 * B, buf + 2 * B + R, R};
}

// Per direction and processing step, the storage rows t * B + b of the rows running at that step
// (in schedule order): the row lists of the per-step projection GEMMs. Offsets stay on the host.
struct StepRows {
  const int64_t* rows = nullptr;
  std::vector<int64_t> step_offset;  // where (d, s) starts: index d * T + s
  int64_t steps = 0;
  int64_t offset(int64_t d, int64_t s) const { return step_offset[d * steps + s]; }
};

inline StepRows upload_step_rows(const StepSchedule& sched, const int64_t* lengths, int64_t B,
                                 int64_t D, const ScratchAlloc& scratch, cudaStream_t stream) {
  StepRows out;
  out.steps = static_cast<int64_t>(sched.active.size()) - 1;
  std::vector<int64_t> host;
  for (int64_t d = 0; d < D; ++d)
    for (int64_t s = 0; s < out.steps; ++s) {
      out.step_offset.push_back(static_cast<int64_t>(host.size()));
      for (int64_t i = 0; i < sched.active[s]; ++i) {
        const int64_t b = sched.order[i];
        host.push_back(step_time(d, s, lengths[b]) * B + b);
      }
    }
  out.rows = upload_array(host, scratch, stream);
  return out;
}

// Launches a per-step kernel in the current launch shape (launch_shapes.h): Step<T, RB>::slice_kernel
// (blocks of units x rows staged in shared memory) or Step<T, RB>::kernel (one thread per unit, RB
// rows per thread); both directions in grid z, units x row blocks capped at the grid limit (the
// kernels loop over the rest). The shape decides only who computes what.
template <template <typename, int> class Step, typename T, typename Params>
void launch_step_kernel(const Params& p, int64_t units, int64_t rows, int directions,
                        cudaStream_t stream, const char* name) {
  const LaunchShape& shape = launch_shape();
  const int64_t rows_per_block = static_cast<int64_t>(shape.rows_per_thread) *
                                 (shape.step == StepKernel::kSlice ? kSliceRowGroups : 1);
  const int64_t units_per_block = shape.step == StepKernel::kSlice ? kSliceUnits : shape.threads;
  const dim3 grid = capped_grid(ceil_div(units, units_per_block), ceil_div(rows, rows_per_block),
                                directions);
  if (shape.step == StepKernel::kSlice) {
    launch_kernel(name, Step<T, kSliceRowsPerThread>::slice_kernel, grid, kSliceThreads, stream, p);
    return;
  }
  switch (shape.rows_per_thread) {
    case 1: launch_kernel(name, Step<T, 1>::kernel, grid, shape.threads, stream, p); break;
    case 8: launch_kernel(name, Step<T, 8>::kernel, grid, shape.threads, stream, p); break;
    default: launch_kernel(name, Step<T, 4>::kernel, grid, shape.threads, stream, p); break;
  }
}

// Shared elementwise launches (elementwise.cu).
template <typename T>
void launch_zero_padding(T* base, int64_t width, const int64_t* lengths_device, int64_t steps,
                         int64_t batch, cudaStream_t stream);
template <typename T>
void launch_transpose(const T* in, T* out, int64_t rows, int64_t cols, cudaStream_t stream);
template <typename T>
void launch_apply_dropout(const DropoutParams& dp, int64_t layer, const T* y, T* out, int64_t width,
                          const DeviceSchedule& sched, int64_t batch, cudaStream_t stream);

// Layer l's input as the layer reads it (phases.h: dropped layer input): x for layer 0; above, the
// layer below's output, through dropout into `dropped` when dropout is on.
template <typename T>
const T* dropped_layer_input(const LstmForwardArgs<T>& f, const CallDims& c, int64_t l,
                             const DeviceSchedule& ds, T* dropped, cudaStream_t stream) {
  const T* X = layer_input(f, l);
  if (l == 0 || !f.dropout.active) return X;
  launch_apply_dropout(f.dropout, l - 1, X, dropped, c.DH, ds, c.B, stream);
  return dropped;
}

}  // namespace cuda
}  // namespace detlstm
