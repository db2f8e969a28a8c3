// What the persistent recurrent kernels (forward.cu, backward.cu) share: one cooperative launch per
// layer and pass whose blocks stay resident for every step. A block owns a slice of units of one
// direction and keeps its slice of W_hh in shared memory for the whole launch; at each step it
// stages the rows' left factors (h_prev forward, da of the next step backward) a panel of terms at a
// time and computes every chunk of every recurrent sum as its own 64-term chain (ARITHMETIC.md v2,
// chunked_sum.h): the chunks of a sum run in parallel on different threads, and the thread that
// finishes a unit folds them in order, so the step's latency is one chunk's chain, not H terms.
// A direction's blocks meet at an integer-flag barrier between steps (kernels_common.cuh:
// arrive_and_wait); the two directions run at once on separate blocks and never wait on each other
// (or, where both do not fit on the GPU together, one launch after the other).
//
// Who computes what changes no bit: every partial is the chain of its chunk from +0 in ascending
// order, and every fold is in chunk order, as in the per-step kernels and on the CPU.
#pragma once

#include "kernels_common.cuh"

namespace detlstm {
namespace cuda {

constexpr int kPersistentThreads = 256;
constexpr int kPersistentRows = 32;  // the most rows of a step a block computes together
// Blocks per SM the persistent kernels are compiled for (__launch_bounds__), float: 3, at most 80
// registers a thread (85, allocated 8 at a time). Left to itself ptxas held the float kernels to 64
// and spilled the cell inputs they load ahead of the step's sums; a spill store waits for its load,
// which would put that memory latency back on the step's path. With 78-80 registers nothing
// spills (sm_80, sm_90), and three blocks per SM is at least what shared memory allows in each
// plan of bench/GPU_NOTES.md. Double (no speed target) is left to ptxas: under the same bound it
// spilled 220-292 bytes in the backward.
template <typename T>
constexpr int kPersistentMinBlocks = sizeof(T) == sizeof(float) ? 3 : 1;

// The canonical functions' exp2 table (canonical_math.h: 32 hi, then 32 lo floats) at the head of a
// persistent block's dynamic shared memory. The global copy is read through L1, and every spin poll
// of the step barrier (an acquire load) invalidates the SM's L1, so a cell reading it there would
// wait on L2 twice per step (the gates, then tanh(c)), on the step's critical path.
constexpr size_t kExp2TableBytes = 64 * sizeof(float);

__device__ inline const float* exp2_table_in_shared() {
  return reinterpret_cast<const float*>(dynamic_shared_bytes());
}

// The block's copy of the table; every thread calls it, and a barrier must follow before any cell.
__device__ inline void stage_exp2_table() {
  float* table = reinterpret_cast<float*>(dynamic_shared_bytes());
  for (int j = threadIdx.x; j < 32; j += kPersistentThreads) {
    table[j] = exp2_table_hi(j);
    table[32 + j] = exp2_table_lo(j);
  }
}

// Lanes<float> with the table read from the block's copy: the same values, so the same bits.
struct SharedTableLanes : Lanes<float> {
  static __device__ float table_hi(int32_t j) { return exp2_table_in_shared()[j]; }
  static __device__ float table_lo(int32_t j) { return exp2_table_in_shared()[32 + j]; }
};

// The persistent kernels' cell activations (lstm_cell.h's policy): float through the shared table;
// double (no table) as everywhere else.
struct SharedTableActivations {
  static __device__ float sigmoid(float x) {
    return canonical_sigmoid_lanes<float, SharedTableLanes>(x);
  }
  static __device__ float tanh(float x) { return canonical_tanh_lanes<float, SharedTableLanes>(x); }
  static __device__ double sigmoid(double x) { return canonical_sigmoid(x); }
  static __device__ double tanh(double x) { return canonical_tanh(x); }
};

// The dynamic shared memory of a persistent block: the exp2 table (above), its W slice (K terms x
// cols), the staged panel of a row tile's left factors (rows x panel, rows padded by one value so
// that the row quads of a warp fall in different banks), every chunk's partials (chunks x rows x
// cols) and the row tile's left-factor row pointers. Every part but the last is a multiple of 16
// bytes.
// Term k of W and of a staged row sits at slot(k): k itself, or with chunk_slots = kSumChunk + 1 one
// unused slot after every 64-term chunk. Where a warp's tasks span several chunks (the backward, and
// the forward at small batch) their loads of the same term of different chunks are then in different
// banks, not all in one (64 terms are 0 mod 32 banks). The unused slots are never read.
template <typename T>
struct SliceLayout {
  int64_t K;      // terms of every recurrent sum
  int cols;       // sums per row: 4 gates x units forward, units backward (a multiple of 4)
  int rows;       // rows of a tile: a multiple of 4, at most kPersistentRows
  int64_t panel;  // terms staged at once, a multiple of kSumChunk
  int64_t chunk_slots = kSumChunk;  // shared slots per 64-term chunk: kSumChunk or kSumChunk + 1
  // Where a panel has fewer tasks of 4 rows than the block has threads, a task of one row each
  // (launch_shape().one_row_tasks; see slice_partials).
  bool one_row_tasks = false;
  __host__ __device__ int64_t chunks() const { return ceil_div(K, kSumChunk); }
  __host__ __device__ int64_t slot(int64_t k) const {
    return k + (chunk_slots - kSumChunk) * (k / kSumChunk);
  }
  // odd, so that the rows of a warp's row quads start in different banks: slot(panel) + 1 where
  // that is odd, else slot(panel) itself, the unused slot after the panel's last chunk
  __host__ __device__ int64_t x_stride() const { return slot(panel) | 1; }
  __host__ __device__ size_t w_offset() const { return kExp2TableBytes; }
  __host__ __device__ size_t x_offset() const {
    return w_offset() + size_t(slot(K - 1) + 1) * cols * sizeof(T);
  }
  __host__ __device__ size_t p_offset() const {
    return x_offset() + ((size_t(rows) * x_stride() * sizeof(T) + 15) / 16) * 16;
  }
  __host__ __device__ size_t src_offset() const {
    return p_offset() + size_t(chunks()) * rows * cols * sizeof(T);
  }
  __host__ __device__ size_t bytes() const { return src_offset() + rows * sizeof(T*); }
};

template <typename T>
struct SliceShared {
  T* w;           // w[slot(k) * cols + n]: term k of sum column n
  T* x;           // x[r * x_stride + slot(kk)]: term k0 + kk of row r's left factor
  T* p;           // p[(c * rows + r) * cols + n]: chunk c's partial of (r, n)
  const T** src;  // row r's left factor (null: the row has no sum)
};

template <typename T>
__device__ SliceShared<T> slice_shared(const SliceLayout<T>& L) {
  unsigned char* base = dynamic_shared_bytes();
  return {reinterpret_cast<T*>(base + L.w_offset()), reinterpret_cast<T*>(base + L.x_offset()),
          reinterpret_cast<T*>(base + L.p_offset()),
          reinterpret_cast<const T**>(base + L.src_offset())};
}

// Four consecutive values of shared memory (16-byte aligned for float: one vector load).
__device__ __forceinline__ void load4(const float* p, float (&v)[4]) {
  const float4 q = *reinterpret_cast<const float4*>(p);
  v[0] = q.x;
  v[1] = q.y;
  v[2] = q.z;
  v[3] = q.w;
}
__device__ __forceinline__ void load4(const double* p, double (&v)[4]) {
#pragma unroll
  for (int c = 0; c < 4; ++c) v[c] = p[c];
}

// Terms [k0, k0 + kc) of the left factors of the tile's first quads * 4 rows into x; rows without a
// sum, and rows past the tile's, get zeros (computed over, never used). Each thread issues
// kStageBatch loads before it stores any, so their L2 latencies overlap.
constexpr int kStageBatch = 8;
template <typename T>
__device__ void stage_panel(const SliceLayout<T>& L, const SliceShared<T>& sm, int rows, int quads,
                            int64_t k0, int kc) {
  const int total = quads * 4 * kc;
  for (int e0 = 0; e0 < total; e0 += kStageBatch * kPersistentThreads) {
    T v[kStageBatch];
#pragma unroll
    for (int m = 0; m < kStageBatch; ++m) {
      const int e = e0 + m * kPersistentThreads + static_cast<int>(threadIdx.x), r = e / kc;
      const T* src = e < total && r < rows ? sm.src[r] : nullptr;
      v[m] = src ? __ldcg(src + k0 + e % kc) : T(0);
    }
#pragma unroll
    for (int m = 0; m < kStageBatch; ++m) {
      const int e = e0 + m * kPersistentThreads + static_cast<int>(threadIdx.x);
      if (e < total) sm.x[(e / kc) * L.x_stride() + L.slot(e % kc)] = v[m];  // k0: a chunk's start
    }
  }
}

// Chunk pc of the staged panel for rows r0 .. r0 + RT - 1 and column quad cq: RT x 4 chains from +0
// over the chunk's terms in ascending order, stored as that chunk's partials.
template <typename T, int COLS, int RT>
__device__ void chunk_tile(const SliceLayout<T>& L, const SliceShared<T>& sm, int64_t k0, int kc,
                           int pc, int r0, int cq) {
  const int kb = pc * static_cast<int>(kSumChunk);
  const int ke = kb + static_cast<int>(kSumChunk) < kc ? kb + static_cast<int>(kSumChunk) : kc;
  const int64_t stride = L.x_stride();
  const T* x = sm.x + r0 * stride + (L.slot(kb) - kb);  // the chunk's slots are consecutive
  const T* w = sm.w + L.slot(k0 + kb) * COLS + cq * 4;
  T acc[RT][4];
#pragma unroll
  for (int r = 0; r < RT; ++r)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[r][c] = T(0);
#pragma unroll 4
  for (int kk = kb; kk < ke; ++kk, w += COLS) {
    T wv[4];
    load4(w, wv);
#pragma unroll
    for (int r = 0; r < RT; ++r) {
      const T xv = x[r * stride + kk];
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[r][c] = fma_rn(xv, wv[c], acc[r][c]);
    }
  }
  T* p = sm.p + ((k0 / kSumChunk + pc) * L.rows + r0) * COLS + cq * 4;
#pragma unroll
  for (int r = 0; r < RT; ++r)
#pragma unroll
    for (int c = 0; c < 4; ++c) p[r * COLS + c] = acc[r][c];
}

// The tasks of one staged panel, `groups` groups of RT rows x the column quads x its chunks, spread
// over the block's threads.
template <typename T, int COLS, int RT>
__device__ void panel_tasks(const SliceLayout<T>& L, const SliceShared<T>& sm, int64_t k0, int kc,
                            int groups) {
  constexpr int kColQuads = COLS / 4;
  const int tasks = static_cast<int>(ceil_div(kc, kSumChunk)) * groups * kColQuads;
  for (int task = threadIdx.x; task < tasks; task += kPersistentThreads)
    chunk_tile<T, COLS, RT>(L, sm, k0, kc, task / (kColQuads * groups),
                            (task / kColQuads) % groups * RT, task % kColQuads);
}

// Every chunk partial of every (row, column) of a tile of `rows` rows whose left-factor pointers are
// in sm.src: panel by panel, each panel's chunks x row quads x column quads spread over the threads;
// with L.one_row_tasks, a panel with fewer such tasks than threads (large's backward: 16 of 256)
// runs a task per row instead, four times the tasks, each a quarter of the chains. Every thread of
// the block calls it (it holds barriers); it ends on a barrier, the partials complete.
template <typename T, int COLS>
__device__ void slice_partials(const SliceLayout<T>& L, const SliceShared<T>& sm, int rows) {
  const int quads = (rows + 3) / 4;
  for (int64_t k0 = 0; k0 < L.K; k0 += L.panel) {
    const int kc = static_cast<int>(L.K - k0 < L.panel ? L.K - k0 : L.panel);
    __syncthreads();  // the previous panel (or row tile, or the weights' staging) is done with
    stage_panel(L, sm, rows, quads, k0, kc);
    __syncthreads();
    const int64_t quad_tasks = ceil_div(kc, kSumChunk) * quads * (COLS / 4);
    if (L.one_row_tasks && quad_tasks < kPersistentThreads)
      panel_tasks<T, COLS, 1>(L, sm, k0, kc, rows);
    else
      panel_tasks<T, COLS, 4>(L, sm, k0, kc, quads);
  }
  __syncthreads();
}

// The recurrent sum of tile row r, column n: its chunk partials folded in order (rule 3).
template <typename T, int COLS>
__device__ T folded_sum(const SliceLayout<T>& L, const SliceShared<T>& sm, int r, int n) {
  const T* p = sm.p + r * COLS + n;
  T total = p[0];
  for (int64_t c = 1; c < L.chunks(); ++c)
    total = fold_chunk(total, p[c * L.rows * COLS], c * kSumChunk);
  return total;
}

// How a layer's recurrence runs persistently: units per block (0: it does not, the per-step kernels
// run), the shared-memory layout, the blocks per direction, and the directions per launch (all of
// them at once, or one launch per direction where both do not fit together).
template <typename T>
struct PersistentPlan {
  int units = 0;
  SliceLayout<T> layout{};
  int64_t blocks_per_direction = 0;
  int64_t directions = 0;
};

// The plan for sums of K terms over `units` units of D directions, a block's columns being
// cols_per_unit x its units, `batch` rows at most per step, under the current launch shape: both
// directions in one launch if any plan fits, else one direction per launch; the first of 4 or 8
// units per block (kPersistentWide: 8 only); then the widest panel (all K terms, then halving down
// to one chunk) with which the whole grid is co-resident. Padded chunks (launch_shape().padded_chunks)
// are taken at a panel width only where they fit there: their extra slot per chunk must not halve the
// panel (at large on an H100 it would, 128 -> 64, doubling the panels and barriers of every step, a
// cost that would hide what the padding saves), so unpadded chunks are tried at that width before a
// narrower panel. Row tiles are the batch rounded up to 4 rows, at most kPersistentRows. kernel_for(u)
// is the kernel for u units per block.
template <typename T, class KernelFor>
PersistentPlan<T> plan_persistent(int64_t K, int64_t units, int cols_per_unit, int64_t D,
                                  int64_t batch, KernelFor kernel_for) {
  const LaunchShape& shape = launch_shape();
  const Recurrence mode = shape.recurrence;
  if (mode == Recurrence::kPerStep) return {};
  const int rows =
      static_cast<int>(batch < kPersistentRows ? ceil_div(batch, 4) * 4 : kPersistentRows);
  const int64_t widest = ceil_div(K, kSumChunk) * kSumChunk;
  const int64_t slot_choices[2] = {kSumChunk + 1, kSumChunk};  // padded first, where the shape asks
  const int first_choice = shape.padded_chunks ? 0 : 1;
  for (int64_t dirs = D; dirs >= 1; --dirs)
    for (const int u : {4, 8}) {
      if (mode == Recurrence::kPersistentWide && u != 8) continue;
      const int64_t per_direction = ceil_div(units, u);
      if (dirs * per_direction > grid_limit().x) continue;
      for (int64_t panel = widest;; panel = ceil_div(panel / 2, kSumChunk) * kSumChunk) {
        for (int choice = first_choice; choice < 2; ++choice) {
          const SliceLayout<T> layout{K, u * cols_per_unit, rows, panel, slot_choices[choice],
                                      shape.one_row_tasks};
          if (co_resident_blocks(kernel_for(u), kPersistentThreads, layout.bytes()) >=
              dirs * per_direction)
            return {u, layout, per_direction, dirs};
        }
        if (panel == kSumChunk) break;
      }
    }
  return {};
}

// What a persistent launch's blocks share, whichever pass: where a block stands (its direction and
// first unit), the schedule, and the step barrier of its direction.
template <typename T>
struct PersistentGrid {
  SliceLayout<T> layout;
  const int64_t* active;  // rows running at each processing step
  int64_t steps;          // processing steps with rows
  unsigned* arrivals;     // per direction: blocks x steps done
  int64_t blocks_per_direction;
  int first_direction;  // the launch's blocks run directions first_direction, first_direction + 1..
  __device__ int direction() const {
    return first_direction + static_cast<int>(blockIdx.x / blocks_per_direction);
  }
  __device__ int64_t first_unit(int units) const {
    return (blockIdx.x % blocks_per_direction) * units;
  }
  // After the block's done-th step (counting from 0) of direction d, unless it was the last: arrive,
  // run `between` (work of the next step that reads nothing another block wrote in this launch),
  // then wait for the direction's other blocks. Every thread of the block calls it. `between` comes
  // after the arrival because thread 0's release fence would also wait for its loads.
  template <class Between>
  __device__ void after_step(int d, int64_t done, Between between) const {
    if (done + 1 >= steps) return;
    arrive(arrivals + d);
    between();
    wait_for(arrivals + d, static_cast<unsigned>(blocks_per_direction * (done + 1)));
  }
  // Every step of the launch for direction d, in processing order (`reverse`: last first), on the
  // step parameters p (their step and active set here), a row tile of layout.rows rows at a time.
  // load(p, i0) is what a thread reads of its row in the tile from row i0 that does not depend on
  // the step's sums (the cell's inputs); run(p, i0, loaded) the tile. The first tile's load of a
  // step runs inside the barrier that ends the step before (after_step's `between`), a later
  // tile's as it starts, ahead of its partials. Every thread of the block calls it.
  template <class StepParams, class Load, class Run>
  __device__ void for_each_step(int d, StepParams p, bool reverse, Load load, Run run) const {
    const auto at = [&](int64_t done) {
      p.step = reverse ? steps - 1 - done : done;
      p.active = active[p.step];
    };
    at(0);
    auto loaded = load(p, int64_t(0));
    for (int64_t done = 0; done < steps; ++done) {
      for (int64_t i0 = 0; i0 < p.active; i0 += layout.rows) {
        if (i0 > 0) loaded = load(p, i0);
        run(p, i0, loaded);
      }
      after_step(d, done, [&] {
        at(done + 1);
        loaded = load(p, int64_t(0));
      });
    }
  }
};

// The arrival counters of a persistent launch's two directions, zeroed in stream order.
inline unsigned* arrival_counters(const ScratchAlloc& scratch, cudaStream_t stream) {
  unsigned* counters = scratch_array<unsigned>(scratch, 2);
  check_cuda(cudaMemsetAsync(counters, 0, 2 * sizeof(unsigned), stream), "zero the step flags");
  return counters;
}

// Processing steps that have rows: the longest sequence's length.
inline int64_t steps_with_rows(const StepSchedule& sched, int64_t T) {
  int64_t steps = 0;
  while (steps < T && sched.active[steps] > 0) ++steps;
  return steps;
}

}  // namespace cuda
}  // namespace detlstm

namespace detlstm {
namespace cuda {

// Launches a pass's persistent kernel under `plan` for D directions: pp is the kernel's parameters,
// whose `grid` is filled here; one launch for all directions, or one per direction. Returns false,
// nothing run, where the device refuses the first launch's grid (see try_launch_cooperative): the
// caller runs the per-step kernels. The launches are alike, so a later one is not refused.
template <typename T, class Params, class KernelFor>
bool launch_persistent(const char* name, KernelFor kernel_for, const PersistentPlan<T>& plan,
                       Params pp, int64_t D, int64_t steps, const int64_t* active,
                       const ScratchAlloc& scratch, cudaStream_t stream) {
  pp.grid = {plan.layout, active, steps, arrival_counters(scratch, stream),
             plan.blocks_per_direction, 0};
  const dim3 grid(static_cast<unsigned>(plan.directions * plan.blocks_per_direction));
  if (!try_launch_cooperative(name, kernel_for(plan.units), grid, dim3(kPersistentThreads),
                              plan.layout.bytes(), stream, pp))
    return false;
  for (pp.grid.first_direction += static_cast<int>(plan.directions); pp.grid.first_direction < D;
       pp.grid.first_direction += static_cast<int>(plan.directions))
    launch_cooperative(name, kernel_for(plan.units), grid, dim3(kPersistentThreads),
                       plan.layout.bytes(), stream, pp);
  return true;
}

}  // namespace cuda
}  // namespace detlstm
