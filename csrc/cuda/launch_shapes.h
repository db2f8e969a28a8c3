// Launch shapes as data: how the per-step kernels and the fixed-order GEMM split their work among
// threads and blocks. A shape decides only which thread computes which value, never the order of a
// value's operations, so every shape gives the same bits; tests and the profiler iterate over the
// table (forcing each one stands in for GPUs of other sizes). Shape 0 is the default.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace detlstm {
namespace cuda {

// Blocks of the "slice" step kernels: kSliceUnits units x kSliceRowGroups row groups of threads,
// staging kSliceK values of the summed index in shared memory at a time.
constexpr int kSliceUnits = 8;
constexpr int kSliceRowGroups = 32;
constexpr int kSliceThreads = kSliceUnits * kSliceRowGroups;
constexpr int kSliceK = 32;
constexpr int kSliceRowsPerThread = 2;  // shared memory: float64 at 2 rows takes ~26 KB of 48
// A staged block of the chain's index must not straddle a chunk of the chunked sums (chunked_sum.h).
static_assert(64 % kSliceK == 0, "kSliceK must divide the sums' chunk length");

enum class StepKernel {
  kSlice,    // a block per (units, rows) stages W_hh's columns and the rows in shared memory
  kPerUnit,  // a thread per unit and rows_per_thread rows, W_hh and the rows read from L2
};

// How a layer's recurrence runs (persistent.cuh): one persistent kernel per layer and pass where its
// blocks fit on the device at once, or one launch per step.
enum class Recurrence {
  kPersistent,      // persistent with 4 units per block where that grid fits, else 8, else per step
  kPersistentWide,  // persistent with 8 units per block where that fits, else per step
  kPerStep,         // the per-step kernels of `step`, always
};

enum class GemmTiles {
  kAuto,    // groups of float products all at least 128 x 128: 128x128 tiles of 8x8; else 64x64 of 4x4
  k128x64,  // as kAuto, but 128x64 tiles of 8x4 where kAuto takes 128x128 (half the accumulators)
  k128x64Pipelined,  // k128x64 with two shared stages, the next P-tile loaded during the current
  k32x32,   // 32x32 tiles of 4x4
  k64x32,   // 64 rows x 32 columns, tiles of 4x4
  // as k128x64 (the split products in 128x128 tiles of 8x8), every P-tile copied into shared
  // memory by asynchronous copies over 4 stages (gemm_tile_async.cuh)
  kAsync,
};

struct LaunchShape {
  const char* name;
  StepKernel step;
  int threads;          // per block of the step kernels
  int rows_per_thread;  // kPerUnit: 1, 4 or 8 (the kernels are instantiated for these)
  GemmTiles gemm;
  Recurrence recurrence;
  // The persistent kernels' shared copies of W_hh and of the staged rows keep one unused slot after
  // every 64-term chunk (SliceLayout::chunk_slots): the chunks a warp works on at once then start in
  // different banks (see persistent.cuh).
  bool padded_chunks = false;
  // The persistent kernels compute a panel's partials in tasks of one row, not four, where tasks of
  // four would leave threads of the block idle (SliceLayout::one_row_tasks).
  bool one_row_tasks = false;
};

// Measured on an H100 (bench/GPU_NOTES.md, 2026-11-23): of the per-step kernels the slice kernels
// are the fastest at the large and stream shapes and, under the arithmetic v2, at tagger too (under
// v1 shape 1 was faster there), so they are the fallback of the default. The persistent kernels
// (shapes 0 and 5) are not measured yet; shape 4 is the previous default, kept to compare. Shape 6
// is shape 0 with 8x4 patches in the whole-sum GEMMs: under v2 the 8x8 patch keeps 128
// accumulators (partial and running fold) and spills; 8x4 keeps 64. Shape 7 is shape 6 with every
// GEMM (whole-sum and split) pipelined over two shared stages. Shape 8 is shape 0 with padded chunks
// in the persistent kernels' shared memory (bank conflicts at small batch, bench/GPU_NOTES.md).
// Shape 9 is shape 8 with every GEMM's tiles copied by cp.async over 4 stages, conflict-free shared
// tiles (gemm_tile_async.cuh). Shape 10 is shape 8 with one-row tasks in the persistent kernels
// where four-row tasks leave threads idle (at large's backward 240 of 256: bench/GPU_NOTES.md).
constexpr LaunchShape kLaunchShapes[] = {
    {"persistent, else slice", StepKernel::kSlice, kSliceThreads, kSliceRowsPerThread,
     GemmTiles::kAuto, Recurrence::kPersistent},
    {"unit x 1 row, 32 threads", StepKernel::kPerUnit, 32, 1, GemmTiles::k32x32,
     Recurrence::kPerStep},
    {"unit x 8 rows, 256 threads", StepKernel::kPerUnit, 256, 8, GemmTiles::k64x32,
     Recurrence::kPerStep},
    {"unit x 4 rows, 128 threads", StepKernel::kPerUnit, 128, 4, GemmTiles::kAuto,
     Recurrence::kPerStep},
    {"slice", StepKernel::kSlice, kSliceThreads, kSliceRowsPerThread, GemmTiles::kAuto,
     Recurrence::kPerStep},
    {"persistent 8 units, else unit x 4 rows", StepKernel::kPerUnit, 128, 4, GemmTiles::k64x32,
     Recurrence::kPersistentWide},
    {"persistent, else slice; GEMM tiles 128x64", StepKernel::kSlice, kSliceThreads,
     kSliceRowsPerThread, GemmTiles::k128x64, Recurrence::kPersistent},
    {"persistent, else slice; GEMM tiles 128x64, pipelined", StepKernel::kSlice, kSliceThreads,
     kSliceRowsPerThread, GemmTiles::k128x64Pipelined, Recurrence::kPersistent},
    {"persistent with padded chunks, else slice", StepKernel::kSlice, kSliceThreads,
     kSliceRowsPerThread, GemmTiles::kAuto, Recurrence::kPersistent, true},
    {"persistent with padded chunks, else slice; GEMM tiles by asynchronous copies",
     StepKernel::kSlice, kSliceThreads, kSliceRowsPerThread, GemmTiles::kAsync,
     Recurrence::kPersistent, true},
    {"persistent with padded chunks and one-row tasks, else slice", StepKernel::kSlice,
     kSliceThreads, kSliceRowsPerThread, GemmTiles::kAuto, Recurrence::kPersistent, true, true},
};
constexpr int kLaunchShapeCount = static_cast<int>(sizeof(kLaunchShapes) / sizeof(kLaunchShapes[0]));

// The largest grid a launch may use along x and y. The default is CUDA's own limit; tests force small
// limits so that the kernels' loops over blocks of work beyond the grid run at small sizes.
struct GridLimit {
  int64_t x, y;
};
constexpr GridLimit kCudaGridLimit{2147483647, 65535};

// The most device memory a call holds for the partials of its split GEMM groups (gemm_chain.cuh): a
// group whose partials need more is split in several passes.
constexpr int64_t kSplitBytes = int64_t(32) << 20;

// The process-wide launch settings: the shape in use (an index into kLaunchShapes), the grid limit
// and the split products' buffer (tests lower it to force several passes).
struct LaunchSettings {
  int shape = 0;
  GridLimit grid = kCudaGridLimit;
  int64_t split_bytes = kSplitBytes;
};
inline LaunchSettings& launch_settings() {
  static LaunchSettings settings;
  return settings;
}
inline const LaunchShape& launch_shape() { return kLaunchShapes[launch_settings().shape]; }
inline GridLimit grid_limit() { return launch_settings().grid; }

// Selects shape `index` of kLaunchShapes; returns the previous index.
inline int set_launch_shape(int index) {
  if (index < 0 || index >= kLaunchShapeCount)
    throw std::invalid_argument("detlstm CUDA: launch variant must be in [0, " +
                                std::to_string(kLaunchShapeCount) + "), got " + std::to_string(index));
  const int previous = launch_settings().shape;
  launch_settings().shape = index;
  return previous;
}

// Sets the grid limit (values below 1 or above CUDA's restore CUDA's); returns the previous one.
inline GridLimit set_grid_limit(GridLimit limit) {
  const GridLimit previous = launch_settings().grid;
  const auto pick = [](int64_t v, int64_t most) { return v >= 1 && v <= most ? v : most; };
  launch_settings().grid = {pick(limit.x, kCudaGridLimit.x), pick(limit.y, kCudaGridLimit.y)};
  return previous;
}

// Sets the split products' buffer limit (values below 1 restore kSplitBytes); returns the previous.
inline int64_t set_split_bytes(int64_t bytes) {
  const int64_t previous = launch_settings().split_bytes;
  launch_settings().split_bytes = bytes >= 1 ? bytes : kSplitBytes;
  return previous;
}

}  // namespace cuda
}  // namespace detlstm
