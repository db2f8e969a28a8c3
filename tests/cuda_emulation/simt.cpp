// The scheduler of the host emulation (include/cuda_runtime.h): every thread of a resident block is a
// fiber (ucontext) with its own stack. A fiber runs until it reaches a barrier, pauses in a spin wait
// or returns, then switches back to the scheduler, which resumes the next fiber that can run. A
// barrier releases its block's threads once every thread still running has reached it. An ordinary
// launch makes one block resident at a time; a cooperative launch makes the whole grid resident and
// lets each block in turn run as far as it can before the next.
#include <ucontext.h>

#include <cstdlib>
#include <memory>
#include <utility>
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
// A run of passes in which no thread got past a barrier or returned: every thread left is waiting
// on something no other thread will do, which on a GPU is a hang.
constexpr int kStalledPasses = 3;

enum class FiberState { kReady, kAtBarrier, kDone };

// An asynchronous copy issued and not landed yet: group 0 until a commit closes its group.
struct PendingCopy {
  void* dst;
  const void* src;
  size_t bytes;
  bool valid;
  uint64_t group;
};

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  FiberState state = FiberState::kDone;
  unsigned slot = 0;  // the resident block it belongs to
  uint3 thread{0, 0, 0};
  std::vector<PendingCopy> copies;
  uint64_t groups = 0;  // groups committed so far
};

struct BlockSlot {
  uint3 index{0, 0, 0};
  unsigned live = 0;        // threads that have not returned
  unsigned at_barrier = 0;  // of those, waiting at the barrier
  unsigned returned = 0;
  std::vector<unsigned char> shared;
};

struct Device {
  int multiprocessors = 132;
  int shared_per_multiprocessor = 228 * 1024;
  int shared_per_block = 227 * 1024;
  int shared_limit = 48 * 1024;  // raised by cudaFuncSetAttribute, as a kernel's limit is
  // cooperative launches of more blocks are refused although the occupancy query counts them (what
  // MPS with an active-thread percentage does to a GPU); 0: no such limit
  uint64_t cooperative_block_limit = 0;
};

struct Scheduler {
  ucontext_t home;
  std::vector<Fiber> fibers;
  std::vector<BlockSlot> slots;
  size_t threads_per_block = 0;  // slot b's fibers are [b, b + 1) * threads_per_block
  int current = -1;
  const std::function<void()>* body = nullptr;
  int order = 0;
  bool progressed = false;
  cudaError_t error = cudaSuccess;
  unsigned max_grid_x = 2147483647u, max_grid_y = 65535u;
  bool copies_land_early = false;
  Counts counts{0, 0, 0};
  Device device;
};

Scheduler& scheduler() {
  static Scheduler s;
  return s;
}

void fail(cudaError_t e) {
  Scheduler& s = scheduler();
  if (s.error == cudaSuccess) s.error = e;
}

// Every thread of the block still running is at the barrier: release them. Threads that returned
// first met a different barrier (or none), which is an error on a GPU.
void release_if_complete(BlockSlot& slot, unsigned slot_index) {
  Scheduler& s = scheduler();
  if (slot.at_barrier == 0 || slot.at_barrier != slot.live) return;
  if (slot.returned != 0) fail(cudaErrorLaunchFailure);
  for (size_t i = 0; i < s.threads_per_block; ++i) {
    Fiber& f = s.fibers[slot_index * s.threads_per_block + i];
    if (f.state == FiberState::kAtBarrier) f.state = FiberState::kReady;
  }
  slot.at_barrier = 0;
}

void fiber_entry() {
  Scheduler& s = scheduler();
  (*s.body)();
  Fiber& f = s.fibers[s.current];
  BlockSlot& slot = s.slots[f.slot];
  f.state = FiberState::kDone;
  if (!f.copies.empty()) fail(cudaErrorAsyncCopiesPending);
  slot.live -= 1;
  slot.returned += 1;
  if (slot.at_barrier != 0) fail(cudaErrorLaunchFailure);  // others wait at a barrier it skipped
  release_if_complete(slot, f.slot);
  s.progressed = true;
  // returning ends the context and resumes uc_link (home)
}

uint3 linear_to_index(uint64_t linear, const dim3& shape) {
  return {static_cast<unsigned>(linear % shape.x), static_cast<unsigned>((linear / shape.x) % shape.y),
          static_cast<unsigned>(linear / (uint64_t(shape.x) * shape.y))};
}

// Makes the given blocks (linear indices into the grid) resident, one fiber per thread.
void make_resident(const std::vector<uint64_t>& blocks, const dim3& grid, const dim3& block,
                   size_t shared_bytes) {
  Scheduler& s = scheduler();
  const unsigned nthreads = block.x * block.y * block.z;
  const size_t total = blocks.size() * nthreads;
  if (s.fibers.size() < total) s.fibers.resize(total);
  s.slots.assign(blocks.size(), BlockSlot{});
  s.threads_per_block = nthreads;
  for (size_t b = 0; b < blocks.size(); ++b) {
    BlockSlot& slot = s.slots[b];
    slot.index = linear_to_index(blocks[b], grid);
    slot.live = nthreads;
    slot.shared.assign(shared_bytes, 0xFF);  // not zeroed on a GPU either: NaN if read unwritten
    for (unsigned i = 0; i < nthreads; ++i) {
      Fiber& f = s.fibers[b * nthreads + i];
      if (!f.stack) f.stack.reset(new char[kStackBytes]);
      f.state = FiberState::kReady;
      f.slot = static_cast<unsigned>(b);
      f.thread = linear_to_index(i, block);
      f.copies.clear();
      f.groups = 0;
      getcontext(&f.context);
      f.context.uc_stack.ss_sp = f.stack.get();
      f.context.uc_stack.ss_size = kStackBytes;
      f.context.uc_link = &s.home;
      makecontext(&f.context, fiber_entry, 0);
    }
  }
  for (size_t i = total; i < s.fibers.size(); ++i) s.fibers[i].state = FiberState::kDone;
}

// One pass over resident block b: resumes each of its threads that can run once, in the chosen
// order. Returns whether any thread was resumed.
bool run_block_pass(size_t b, unsigned nthreads) {
  Scheduler& s = scheduler();
  bool resumed = false;
  for (unsigned kt = 0; kt < nthreads; ++kt) {
    const size_t i = b * nthreads + ((s.order & 2) ? nthreads - 1 - kt : kt);
    Fiber& f = s.fibers[i];
    if (f.state != FiberState::kReady) continue;
    s.current = static_cast<int>(i);
    threadIdx = f.thread;
    blockIdx = s.slots[b].index;
    swapcontext(&s.home, &f.context);
    resumed = true;
  }
  s.current = -1;
  return resumed;
}

// Runs resident block b as far as it goes: until its threads have returned or it makes no progress
// (its threads wait on other blocks). Returns {whether it had a thread to run, whether it progressed}.
std::pair<bool, bool> run_block_ahead(size_t b, unsigned nthreads) {
  Scheduler& s = scheduler();
  bool live = false, progressed = false;
  for (;;) {
    s.progressed = false;
    if (!run_block_pass(b, nthreads)) break;
    live = true;
    if (!s.progressed) break;
    progressed = true;
  }
  return {live, progressed};
}

// Runs the resident blocks until every thread has returned, or until they stall. Each block in turn
// runs as far ahead of the others as it can, so blocks drift apart by whole steps, as much as their
// own waits allow: a read of another block's data that no flag orders sees it unwritten.
void run_resident(unsigned nthreads) {
  Scheduler& s = scheduler();
  int stalled = 0;
  for (;;) {
    bool live = false, progressed = false;
    for (size_t kb = 0; kb < s.slots.size(); ++kb) {
      const auto [block_live, block_progressed] =
          run_block_ahead((s.order & 1) ? s.slots.size() - 1 - kb : kb, nthreads);
      live = live || block_live;
      progressed = progressed || block_progressed;
    }
    if (!live) return;  // every thread returned
    stalled = progressed ? 0 : stalled + 1;
    if (stalled == kStalledPasses) {
      fail(cudaErrorLaunchTimeout);  // the fibers are abandoned; the next launch remakes them
      return;
    }
  }
}

void land(const PendingCopy& c) {
  if (c.valid)
    std::memmove(c.dst, c.src, c.bytes);
  else
    std::memset(c.dst, 0, c.bytes);
}

Fiber& running_fiber(const char* what) {
  Scheduler& s = scheduler();
  if (s.current < 0) throw std::logic_error(std::string(what) + " outside an emulated kernel");
  return s.fibers[s.current];
}

bool shape_is_valid(const dim3& grid, const dim3& block) {
  const Scheduler& s = scheduler();
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  return threads != 0 && threads <= 1024 && uint64_t(grid.x) * grid.y * grid.z != 0 &&
         grid.x <= s.max_grid_x && grid.y <= s.max_grid_y && grid.z <= 65535;
}

void begin_grid(const dim3& grid, const dim3& block, const std::function<void()>& thread_body) {
  Scheduler& s = scheduler();
  s.body = &thread_body;
  gridDim = grid;
  blockDim = block;
}

}  // namespace

void run_grid(dim3 grid, dim3 block, const std::function<void()>& thread_body) {
  Scheduler& s = scheduler();
  if (s.current >= 0) throw std::logic_error("emulated launch from inside a kernel");
  s.counts.launches += 1;
  if (!shape_is_valid(grid, block)) {
    fail(cudaErrorInvalidValue);  // what a real launch reports for such a shape
    return;
  }
  begin_grid(grid, block, thread_body);
  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
  for (uint64_t k = 0; k < nblocks; ++k) {
    make_resident({(s.order & 1) ? nblocks - 1 - k : k}, grid, block, 0);
    run_resident(block.x * block.y * block.z);
  }
  s.body = nullptr;
}

void run_grid_cooperative(dim3 grid, dim3 block, size_t shared_bytes,
                          const std::function<void()>& thread_body) {
  Scheduler& s = scheduler();
  if (s.current >= 0) throw std::logic_error("emulated launch from inside a kernel");
  s.counts.launches += 1;
  const unsigned nthreads = block.x * block.y * block.z;
  if (!shape_is_valid(grid, block) || shared_bytes > size_t(s.device.shared_limit)) {
    fail(cudaErrorInvalidValue);
    return;
  }
  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
  const uint64_t limit = s.device.cooperative_block_limit;
  if (nblocks > uint64_t(s.device.multiprocessors) *
                    emulated_blocks_per_multiprocessor(static_cast<int>(nthreads), shared_bytes) ||
      (limit != 0 && nblocks > limit)) {
    fail(cudaErrorCooperativeLaunchTooLarge);
    return;
  }
  s.counts.cooperative_launches += 1;  // the ones that ran
  begin_grid(grid, block, thread_body);
  std::vector<uint64_t> all(nblocks);
  for (uint64_t k = 0; k < nblocks; ++k) all[k] = k;
  make_resident(all, grid, block, shared_bytes);
  run_resident(nthreads);
  s.body = nullptr;
}

void set_device(int multiprocessors, int shared_per_multiprocessor, int shared_per_block) {
  Device& d = scheduler().device;
  d.multiprocessors = multiprocessors;
  d.shared_per_multiprocessor = shared_per_multiprocessor;
  d.shared_per_block = shared_per_block;
}

uint64_t set_cooperative_block_limit(uint64_t blocks) {
  const uint64_t previous = scheduler().device.cooperative_block_limit;
  scheduler().device.cooperative_block_limit = blocks;
  return previous;
}

int set_order(int order) {
  const int previous = scheduler().order;
  scheduler().order = order;
  return previous;
}

bool set_async_landing(bool early) {
  const bool previous = scheduler().copies_land_early;
  scheduler().copies_land_early = early;
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
  auto& f = detlstm_emulation::running_fiber("__syncthreads()");
  auto& slot = s.slots[f.slot];
  f.state = detlstm_emulation::FiberState::kAtBarrier;
  slot.at_barrier += 1;
  s.progressed = true;
  detlstm_emulation::release_if_complete(slot, f.slot);
  swapcontext(&f.context, &s.home);
}

void emulated_spin_pause() {
  auto& f = detlstm_emulation::running_fiber("a spin wait");
  swapcontext(&f.context, &detlstm_emulation::scheduler().home);  // stays ready: next pass resumes it
}

unsigned char* emulated_dynamic_shared() {
  auto& f = detlstm_emulation::running_fiber("shared memory");
  auto& shared = detlstm_emulation::scheduler().slots[f.slot].shared;
  return shared.empty() ? nullptr : shared.data();
}

void emulated_async_copy(void* dst, const void* src, size_t bytes, bool valid) {
  auto& f = detlstm_emulation::running_fiber("an asynchronous copy");
  const detlstm_emulation::PendingCopy copy{dst, src, bytes, valid, 0};
  if (detlstm_emulation::scheduler().copies_land_early)
    detlstm_emulation::land(copy);
  else
    f.copies.push_back(copy);
}

void emulated_async_commit() {
  auto& f = detlstm_emulation::running_fiber("an asynchronous copies' commit");
  f.groups += 1;
  for (auto& c : f.copies)
    if (c.group == 0) c.group = f.groups;
}

// Lands, in issue order, the copies of every committed group but the latest `pending`.
void emulated_async_wait(int pending) {
  auto& f = detlstm_emulation::running_fiber("a wait for asynchronous copies");
  const uint64_t last = f.groups > uint64_t(pending) ? f.groups - pending : 0;
  std::vector<detlstm_emulation::PendingCopy> left;
  for (const auto& c : f.copies) {
    if (c.group != 0 && c.group <= last)
      detlstm_emulation::land(c);
    else
      left.push_back(c);
  }
  f.copies.swap(left);
}

int emulated_blocks_per_multiprocessor(int threads, size_t shared_bytes) {
  const auto& d = detlstm_emulation::scheduler().device;
  if (threads <= 0 || threads > 1024 || shared_bytes > size_t(d.shared_per_block)) return 0;
  const size_t reserved = 1024;  // per block, as CUDA reserves on sm_80 and later
  const int by_shared = static_cast<int>(d.shared_per_multiprocessor / (shared_bytes + reserved));
  const int by_threads = 2048 / threads;
  return by_shared < by_threads ? by_shared : by_threads;
}

cudaError_t emulated_set_shared_limit(int bytes) {
  auto& d = detlstm_emulation::scheduler().device;
  if (bytes < 0 || bytes > d.shared_per_block) return cudaErrorInvalidValue;
  d.shared_limit = bytes > 48 * 1024 ? bytes : 48 * 1024;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  const auto& d = detlstm_emulation::scheduler().device;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = d.multiprocessors; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = d.shared_per_block; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor:
      *value = d.shared_per_multiprocessor;
      return cudaSuccess;
    case cudaDevAttrCooperativeLaunch: *value = 1; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
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
    case cudaErrorLaunchTimeout: return "the grid's threads wait on each other forever (emulated)";
    case cudaErrorLaunchFailure: return "threads of one block met different barriers (emulated)";
    case cudaErrorCooperativeLaunchTooLarge:
      return "too many blocks in cooperative launch (emulated)";
    case cudaErrorAsyncCopiesPending:
      return "a thread returned with asynchronous copies not waited for (emulated)";
  }
  return "unknown error (emulated)";
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t) {
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t) {
  std::memset(dst, value, bytes);
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
