// The scheduler of the host emulation (include/cuda_runtime.h): every thread of a block is a fiber
// (ucontext) with its own stack; __syncthreads() switches back to the scheduler, which resumes the
// next thread. One pass over the block's threads runs each from one barrier to the next, so a pass
// ends with all live threads at the same barrier, or all returned.
#include <ucontext.h>

#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_runtime.h"

uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;

namespace detlstm_emulation {
namespace {

constexpr size_t kStackBytes = 256 * 1024;

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  bool done = false;
};

struct Scheduler {
  ucontext_t home;
  std::vector<Fiber> fibers;
  int current = -1;
  const std::function<void()>* body = nullptr;
  int order = 0;
  cudaError_t error = cudaSuccess;
  unsigned max_grid_x = 2147483647u, max_grid_y = 65535u;
  Counts counts{0, 0};
};

Scheduler& scheduler() {
  static Scheduler s;
  return s;
}

void fiber_entry() {
  Scheduler& s = scheduler();
  (*s.body)();
  s.fibers[s.current].done = true;
  // returning ends the context and resumes uc_link (home)
}

uint3 thread_coordinates(unsigned linear, const dim3& block) {
  return {linear % block.x, (linear / block.x) % block.y, linear / (block.x * block.y)};
}

void run_block(unsigned nthreads, const dim3& block) {
  Scheduler& s = scheduler();
  if (s.fibers.size() < nthreads) s.fibers.resize(nthreads);
  for (unsigned i = 0; i < nthreads; ++i) {
    Fiber& f = s.fibers[i];
    if (!f.stack) f.stack.reset(new char[kStackBytes]);
    f.done = false;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.get();
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &s.home;
    makecontext(&f.context, fiber_entry, 0);
  }
  const bool reversed = (s.order & 2) != 0;
  for (;;) {
    unsigned live = 0, done = 0;
    for (unsigned k = 0; k < nthreads; ++k) {
      const unsigned i = reversed ? nthreads - 1 - k : k;
      Fiber& f = s.fibers[i];
      if (f.done) continue;
      s.current = static_cast<int>(i);
      threadIdx = thread_coordinates(i, block);
      swapcontext(&s.home, &f.context);
      if (f.done) ++done;
      else ++live;
    }
    if (live == 0) break;
    if (done != 0 && s.error == cudaSuccess) s.error = cudaErrorLaunchFailure;  // divergent barrier
  }
  s.current = -1;
}

}  // namespace

void run_grid(dim3 grid, dim3 block, const std::function<void()>& thread_body) {
  Scheduler& s = scheduler();
  if (s.current >= 0) throw std::logic_error("emulated launch from inside a kernel");
  s.counts.launches += 1;
  if (block.x * block.y * block.z == 0 || block.x * block.y * block.z > 1024 ||
      uint64_t(grid.x) * grid.y * grid.z == 0 || grid.x > s.max_grid_x || grid.y > s.max_grid_y ||
      grid.z > 65535) {
    s.error = cudaErrorInvalidValue;  // what a real launch reports for such a shape
    return;
  }
  s.body = &thread_body;
  gridDim = grid;
  blockDim = block;
  const unsigned nthreads = block.x * block.y * block.z;
  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
  for (uint64_t k = 0; k < nblocks; ++k) {
    const uint64_t linear = (s.order & 1) ? nblocks - 1 - k : k;
    blockIdx = {static_cast<unsigned>(linear % grid.x), static_cast<unsigned>((linear / grid.x) % grid.y),
                static_cast<unsigned>(linear / (uint64_t(grid.x) * grid.y))};
    run_block(nthreads, block);
  }
  s.body = nullptr;
}

int set_order(int order) {
  const int previous = scheduler().order;
  scheduler().order = order;
  return previous;
}

void set_max_grid(unsigned x, unsigned y) {
  scheduler().max_grid_x = x;
  scheduler().max_grid_y = y;
}

Counts counts() { return scheduler().counts; }

}  // namespace detlstm_emulation

void __syncthreads() {
  auto& s = detlstm_emulation::scheduler();
  if (s.current < 0) throw std::logic_error("__syncthreads() outside an emulated kernel");
  auto& f = s.fibers[s.current];
  swapcontext(&f.context, &s.home);
}

cudaError_t cudaGetLastError() {
  auto& s = detlstm_emulation::scheduler();
  const cudaError_t e = s.error;
  s.error = cudaSuccess;
  return e;
}

const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid launch shape (emulated)";
    case cudaErrorLaunchFailure: return "threads of one block met different barriers (emulated)";
  }
  return "unknown error (emulated)";
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t) {
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t) {
  detlstm_emulation::scheduler().counts.synchronizations += 1;
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t, cudaStreamCaptureStatus* status) {
  *status = cudaStreamCaptureStatusNone;
  return cudaSuccess;
}
