// The LSTM backward on the GPU, in the phases of csrc/common/phases.h (the same names as
// csrc/cpu/lstm_cpu_backward.h), the same sums as the CPU (ARITHMETIC.md rule 8): per layer, steps
// in reverse processing order (one launch per step, both directions in grid z), each thread summing
// over the gate rows of da(next step) . W_hh for its unit's dh and running the cell's backward; then
// the initial-state and input gradients, and the weight and bias gradients in one grouped launch.
#include "gemm_chain.cuh"
#include "persistent.cuh"

namespace detlstm {
namespace cuda {

// What one step launch does. Without projections dh feeds the cell directly (kFused). With them a
// step is three launches: kChainOnly writes dh, a GEMM makes dm = W_hr^T dh, kCellOnly runs the cell.
enum class BackwardMode : int { kFused, kChainOnly, kCellOnly, kFinal };

template <typename T>
struct BackwardStepParams {
  CallDims c;
  const int64_t* lengths;
  const int64_t* order;
  int64_t layer, step, active;
  BackwardMode mode;  // kFinal: dh0 = the sum over da(first step), no cell
  const T* dy;        // gradient w.r.t. this layer's output (T, B, D*RH)
  const T* dh_n;      // (L*D, B, RH)
  const T* dc_n;      // (L*D, B, H)
  const T* c0;
  const T* gates[2];  // activated gates (T, B, 4H)
  const T* cells[2];
  const T* w_hh[2];   // (4H, RH): consecutive threads read consecutive columns
  T* da[2];           // gate pre-activation gradients (T, B, 4H)
  T* dc;              // (D, B, H): gradient reaching c_prev, carried between launches
  T* dh0;             // (L*D, B, RH)
  T* dh_out[2];       // kChainOnly: dh of every (t, b) (T, B, RH)
  const T* dm_in[2];  // kCellOnly: dm of every (t, b) (T, B, H)
};

// One row of a step as a backward thread sees it, for unit j.
template <typename T>
struct BackwardRow {
  const T* src;  // da of the next processing step (the sum's left factor), or null: no sum
  int64_t b, t;
  bool last;  // the row's last step: dh_n and dc_n enter here
  T head;     // what the sum S is added to: dy; or, without a sum, dy + dh_n or dm (kCellOnly)
  T acc;      // the current chunk's partial of S, from +0
  T total;    // the fold of S's finished chunks
};

// At the end of the chunk holding term k: every summing row folds its partial.
template <typename T, int RB>
__device__ __forceinline__ void fold_rows(BackwardRow<T> (&rows)[RB], int64_t k) {
#pragma unroll
  for (int r = 0; r < RB; ++r)
    if (rows[r].src) fold_and_restart(rows[r].total, rows[r].acc, k);
}

// The row's dh once its sum is complete (rule 8): dh0 = S (kFinal), dh = dy + S where the row goes
// on, and the head itself without a sum.
template <typename T>
__device__ T backward_dh(const BackwardStepParams<T>& p, const BackwardRow<T>& row) {
  if (!row.src) return row.head;
  return p.mode == BackwardMode::kFinal ? row.total : row.head + row.total;
}

template <typename T>
__device__ BackwardRow<T> backward_row(const BackwardStepParams<T>& p, int d, int64_t i, bool live,
                                       int64_t j) {
  const CallDims& c = p.c;
  BackwardRow<T> row;
  row.b = p.order[i];
  row.acc = T(0);
  row.total = T(0);
  const int64_t len = p.lengths[row.b];
  if (p.mode == BackwardMode::kFinal) {
    row.last = false;
    row.t = step_time(d, 0, len);
    row.src = live ? pick(p.da, d) + c.row(row.t, row.b) * c.G : nullptr;
    row.head = T(0);
    return row;
  }
  row.t = step_time(d, p.step, len);
  row.last = p.step == len - 1;
  if (p.mode == BackwardMode::kCellOnly) {
    row.src = nullptr;
    row.head = pick(p.dm_in, d)[c.row(row.t, row.b) * c.H + j];
    return row;
  }
  const T dy = p.dy[c.out_offset(row.t, row.b, d) + j];
  row.head = row.last ? dy + p.dh_n[c.state_row(p.layer, d, row.b) * c.RH + j] : dy;
  row.src = live && !row.last ? pick(p.da, d) + c.row(step_time(d, p.step + 1, len), row.b) * c.G
                              : nullptr;
  return row;
}

// What unit j of a row's cell backward reads besides dh: the activated gates, c, c_prev and the dc
// reaching c (dc_n at the row's last step, else the carried dc this thread stored at the step
// before). None depends on the step's sum, so the persistent kernel loads them before it is done.
template <typename T>
struct BackwardCellInputs {
  T g[4];
  T c, c_prev, dc_next;
};

template <typename T>
__device__ BackwardCellInputs<T> backward_cell_inputs(const BackwardStepParams<T>& p, int d,
                                                      const BackwardRow<T>& row, int64_t j) {
  const CallDims& c = p.c;
  const int64_t H = c.H, b = row.b, t = row.t;
  BackwardCellInputs<T> in;
  const T* g = pick(p.gates, d) + c.row(t, b) * c.G;
#pragma unroll
  for (int k = 0; k < 4; ++k) in.g[k] = g[k * H + j];
  const T* cells = pick(p.cells, d);
  in.c = cells[c.row(t, b) * H + j];
  in.c_prev = c_prev_of(c, p.c0, cells, p.layer, d, t, b, p.lengths[b])[j];
  in.dc_next = row.last ? p.dc_n[c.state_row(p.layer, d, b) * H + j] : p.dc[(d * c.B + b) * H + j];
  return in;
}

// The cell's backward of unit j of a row whose dh is complete, on its inputs `in`. Act: where its
// tanh reads its table (lstm_cell.h).
template <typename T, class Act = CanonicalActivations>
__device__ void backward_cell(const BackwardStepParams<T>& p, int d, const BackwardRow<T>& row,
                              int64_t j, T dh, const BackwardCellInputs<T>& in) {
  const CallDims& c = p.c;
  const int64_t H = c.H, b = row.b;
  const CellGrad<T> cg = lstm_cell_backward<T, Act>(dh, in.dc_next, in.g[0], in.g[1], in.g[2],
                                                    in.g[3], in.c, in.c_prev);
  T* da = pick(p.da, d) + c.row(row.t, b) * c.G;
  da[j] = cg.da_i;
  da[H + j] = cg.da_f;
  da[2 * H + j] = cg.da_g;
  da[3 * H + j] = cg.da_o;
  p.dc[(d * c.B + b) * H + j] = cg.dc_prev;
}

// What a row's unit j does once its dh is complete: store dh (kChainOnly, kFinal) or run the
// cell's backward (kFused, kCellOnly).
template <typename T>
__device__ void backward_finish(const BackwardStepParams<T>& p, int d, const BackwardRow<T>& row,
                                int64_t j, T dh) {
  const CallDims& c = p.c;
  if (p.mode == BackwardMode::kFinal) {
    p.dh0[c.state_row(p.layer, d, row.b) * c.RH + j] = dh;
    return;
  }
  if (p.mode == BackwardMode::kChainOnly) {
    pick(p.dh_out, d)[c.row(row.t, row.b) * c.RH + j] = dh;
    return;
  }
  backward_cell(p, d, row, j, dh, backward_cell_inputs(p, d, row, j));
}

// The units a step launch covers: the cell's H, or the RH of dh for a chain-only launch.
template <typename T>
__host__ __device__ int64_t backward_units(const BackwardStepParams<T>& p) {
  const bool cell = p.mode == BackwardMode::kFused || p.mode == BackwardMode::kCellOnly;
  return cell ? p.c.H : p.c.RH;
}

// Thread (unit j, RB rows from i0) of direction blockIdx.z: S, the chunked sum over the gate rows n
// of da(next step) . W_hh, then dh and the cell; W_hh and da read straight from global memory (L2).
template <typename T, int RB>
__device__ void backward_step_rows(const BackwardStepParams<T>& p, int64_t j, int64_t i0) {
  const int d = blockIdx.z;
  const int64_t G = p.c.G, RH = p.c.RH;
  if (j >= backward_units(p)) return;
  BackwardRow<T> rows[RB];
  bool live[RB];
#pragma unroll
  for (int r = 0; r < RB; ++r) {
    live[r] = i0 + r < p.active;  // row i0 is always live
    rows[r] = backward_row(p, d, live[r] ? i0 + r : i0, live[r], j);
  }
  if (p.mode != BackwardMode::kCellOnly) {
    const T* w = pick(p.w_hh, d) + j;
    for (int64_t n = 0; n < G; ++n) {
      const T wv = w[n * RH];
#pragma unroll
      for (int r = 0; r < RB; ++r)
        if (rows[r].src) rows[r].acc = fma_rn(rows[r].src[n], wv, rows[r].acc);
      if (chunk_ends_after(n, G)) fold_rows<T, RB>(rows, n);
    }
  }
#pragma unroll
  for (int r = 0; r < RB; ++r)
    if (live[r]) backward_finish(p, d, rows[r], j, backward_dh(p, rows[r]));
}

template <typename T, int RB>
__global__ void backward_step_kernel(BackwardStepParams<T> p) {
  for_each_work_block(ceil_div(backward_units(p), blockDim.x), ceil_div(p.active, RB),
                      [&](int64_t bx, int64_t by) {
                        backward_step_rows<T, RB>(p, bx * blockDim.x + threadIdx.x, by * RB);
                      });
}

// The same step by (direction, kSliceUnits units from j0, kSliceRowGroups * RB rows from i0) blocks
// that stage their units' columns of W_hh and their rows' da(next step) in shared memory, kSliceK
// gate rows at a time (see forward_step_slice). A row without a sum skips the fma, never adds
// zeros. Every thread of the block calls this (it holds barriers).
template <typename T, int RB>
__device__ void backward_step_slice(const BackwardStepParams<T>& p, int64_t j0, int64_t i0) {
  constexpr int kRows = kSliceRowGroups * RB;
  __shared__ T w_s[kSliceK][kSliceUnits];
  __shared__ T a_s[kRows][kSliceK + 1];
  __shared__ const T* src_s[kRows];
  const int d = blockIdx.z;
  const int64_t G = p.c.G, RH = p.c.RH;
  const int u = threadIdx.x % kSliceUnits, q = threadIdx.x / kSliceUnits;
  const int64_t j = j0 + u;
  __syncthreads();  // a previous block of work of this thread block is done with the shared arrays
  // the rows' sum sources do not depend on the unit: any in-range j does for looking them up
  for (int rr = threadIdx.x; rr < kRows; rr += kSliceThreads)
    src_s[rr] = p.mode != BackwardMode::kCellOnly && i0 + rr < p.active
                    ? backward_row(p, d, i0 + rr, true, int64_t(0)).src
                    : nullptr;
  BackwardRow<T> rows[RB];
  bool live[RB];
#pragma unroll
  for (int r = 0; r < RB; ++r) {
    const int64_t i = i0 + q + r * kSliceRowGroups;
    live[r] = i < p.active && j < backward_units(p);
    if (live[r])
      rows[r] = backward_row(p, d, i, true, j);
    else
      rows[r].src = nullptr;
  }
  if (p.mode != BackwardMode::kCellOnly) {  // the same for the whole launch: barriers stay uniform
    const T* w = pick(p.w_hh, d);
    for (int64_t n0 = 0; n0 < G; n0 += kSliceK) {
      const int nc = static_cast<int>(G - n0 < kSliceK ? G - n0 : kSliceK);
      __syncthreads();  // the previous chunk is consumed (and, the first time, src_s is written)
      for (int e = threadIdx.x; e < kSliceK * kSliceUnits; e += kSliceThreads) {
        const int nn = e / kSliceUnits;
        const int64_t jj = j0 + e % kSliceUnits;
        w_s[nn][e % kSliceUnits] = nn < nc && jj < RH ? w[(n0 + nn) * RH + jj] : T(0);
      }
      for (int e = threadIdx.x; e < kRows * kSliceK; e += kSliceThreads) {
        const int rr = e / kSliceK, nn = e % kSliceK;
        a_s[rr][nn] = nn < nc && src_s[rr] ? src_s[rr][n0 + nn] : T(0);
      }
      __syncthreads();
      for (int nn = 0; nn < nc; ++nn) {
        const T wv = w_s[nn][u];
#pragma unroll
        for (int r = 0; r < RB; ++r)
          if (rows[r].src) rows[r].acc = fma_rn(a_s[q + r * kSliceRowGroups][nn], wv, rows[r].acc);
      }
      const int64_t last = n0 + nc - 1;  // a staged block never straddles a chunk (launch_shapes.h)
      if (chunk_ends_after(last, G)) fold_rows<T, RB>(rows, last);
    }
  }
#pragma unroll
  for (int r = 0; r < RB; ++r)
    if (live[r]) backward_finish(p, d, rows[r], j, backward_dh(p, rows[r]));
}

template <typename T, int RB>
__global__ void __launch_bounds__(kSliceThreads) backward_step_slice_kernel(BackwardStepParams<T> p) {
  for_each_work_block(ceil_div(backward_units(p), kSliceUnits),
                      ceil_div(p.active, kSliceRowGroups * RB), [&](int64_t bx, int64_t by) {
                        backward_step_slice<T, RB>(p, bx * kSliceUnits, by * kSliceRowGroups * RB);
                      });
}

template <typename T, int RB>
struct BackwardStep {
  static constexpr auto kernel = backward_step_kernel<T, RB>;
  static constexpr auto slice_kernel = backward_step_slice_kernel<T, kSliceRowsPerThread>;
};

template <typename T>
void backward_step(const BackwardStepParams<T>& p, cudaStream_t stream) {
  launch_step_kernel<BackwardStep, T>(p, backward_units(p), p.active, static_cast<int>(p.c.D),
                                      stream, "backward_step_kernel");
}

// The persistent backward (persistent.cuh): block (direction d, units j0 .. j0 + U) keeps W_hh's
// columns j0 .. j0 + U (all 4H gate rows) and runs every step of the layer in reverse processing
// order, meeting the direction's other blocks between steps. Without projections only (kFused).
template <typename T>
struct PersistentBackwardParams {
  BackwardStepParams<T> step;  // step and active are set inside, per step
  PersistentGrid<T> grid;
};

template <typename T, int U>
__device__ void stage_backward_weights(const PersistentBackwardParams<T>& pp,
                                       const SliceShared<T>& sm, int d, int64_t j0) {
  const int64_t RH = pp.step.c.RH;
  const T* w = pick(pp.step.w_hh, d);
  for (int64_t e = threadIdx.x; e < pp.grid.layout.K * U; e += kPersistentThreads) {
    const int64_t n = e / U, j = j0 + e % U;
    sm.w[pp.grid.layout.slot(n) * U + e % U] = j < RH ? w[n * RH + j] : T(0);
  }
}

// What thread (row r, unit u) of the row tile from row i0 knows of its row before the tile's sum:
// the row (its head: dy, with dh_n at its last step) and its cell inputs. live: the thread has a
// row and unit there.
template <typename T>
struct BackwardThreadRow {
  BackwardRow<T> row;
  BackwardCellInputs<T> in;
  bool live;
};

template <typename T, int U>
__device__ BackwardThreadRow<T> backward_thread_row(const BackwardStepParams<T>& p,
                                                    const SliceLayout<T>& layout, int d,
                                                    int64_t j0, int64_t i0) {
  const int r = static_cast<int>(threadIdx.x) / U;
  const int64_t j = j0 + threadIdx.x % U;
  BackwardThreadRow<T> tr{};
  tr.live = r < layout.rows && i0 + r < p.active && j < p.c.H;
  if (!tr.live) return tr;
  tr.row = backward_row(p, d, i0 + r, true, j);
  tr.in = backward_cell_inputs(p, d, tr.row, j);
  return tr;
}

// The row tile from row i0 of the step in p: the chunk partials of their U sums over da(next step),
// then thread (row r, unit u) folds unit j0 + u's into its row (tr), forms dh and runs the cell's
// backward. A row without a sum (its last step) takes dh from its head alone: its partials are
// never added.
template <typename T, int U>
__device__ void backward_persistent_rows(const PersistentBackwardParams<T>& pp,
                                         const BackwardStepParams<T>& p, const SliceShared<T>& sm,
                                         int d, int64_t j0, int64_t i0,
                                         const BackwardThreadRow<T>& tr) {
  const SliceLayout<T>& layout = pp.grid.layout;
  const int rows = static_cast<int>(p.active - i0 < layout.rows ? p.active - i0 : layout.rows);
  for (int r = threadIdx.x; r < layout.rows; r += kPersistentThreads)
    sm.src[r] = r < rows ? backward_row(p, d, i0 + r, true, int64_t(0)).src : nullptr;
  slice_partials<T, U>(layout, sm, rows);
  if (!tr.live) return;
  const int r = threadIdx.x / U, u = threadIdx.x % U;
  BackwardRow<T> row = tr.row;
  if (row.src) row.total = folded_sum<T, U>(layout, sm, r, u);
  backward_cell<T, SharedTableActivations>(p, d, row, j0 + u, backward_dh(p, row), tr.in);
}

// Every step of the layer, last first (PersistentGrid::for_each_step): a step's first row tile's
// thread rows (dy, the cell inputs, and dc: this thread's own store of the step before) are read
// inside the barrier that ends the step before.
template <typename T, int U>
__global__ void __launch_bounds__(kPersistentThreads, kPersistentMinBlocks<T>)
    backward_persistent_kernel(PersistentBackwardParams<T> pp) {
  const int d = pp.grid.direction();
  const int64_t j0 = pp.grid.first_unit(U);
  const SliceShared<T> sm = slice_shared(pp.grid.layout);
  stage_exp2_table();
  stage_backward_weights<T, U>(pp, sm, d, j0);  // slice_partials' first barrier publishes both
  pp.grid.for_each_step(
      d, pp.step, true,
      [&](const BackwardStepParams<T>& p, int64_t i0) {
        return backward_thread_row<T, U>(p, pp.grid.layout, d, j0, i0);
      },
      [&](const BackwardStepParams<T>& p, int64_t i0, const BackwardThreadRow<T>& tr) {
        backward_persistent_rows<T, U>(pp, p, sm, d, j0, i0, tr);
      });
}

template <typename T>
auto backward_persistent_for(int units) {
  return units == 4 ? backward_persistent_kernel<T, 4> : backward_persistent_kernel<T, 8>;
}

// The layer's recurrence backward as one persistent launch, where the plan allows it (no
// projections) and the device takes the launch. Returns whether it ran.
template <typename T>
bool recurrence_backward_persistent(const CallDims& c, const StepSchedule& sched,
                                    const DeviceSchedule& ds, BackwardStepParams<T> p,
                                    const ScratchAlloc& scratch, cudaStream_t stream) {
  const int64_t steps = steps_with_rows(sched, c.T);
  if (c.proj || steps == 0) return false;
  const PersistentPlan<T> plan =
      plan_persistent<T>(c.G, c.H, 1, c.D, c.B, backward_persistent_for<T>);
  if (plan.units == 0) return false;
  p.mode = BackwardMode::kFused;
  return launch_persistent("backward_persistent_kernel", backward_persistent_for<T>, plan,
                           PersistentBackwardParams<T>{p, {}}, c.D, steps, ds.active, scratch,
                           stream);
}

// h_prev of every valid row v of one layer and direction: what multiplied W_hh at that step, the
// right factor of dW_hh. Made once per layer and direction, so that the GEMM's tile loads, which ask
// for a row once per value they stage, read a pointer instead of dividing the row's index by B and
// testing for the first step each time.
template <typename T>
__global__ void h_prev_rows_kernel(CallDims c, const T* h0, const T* y, const int64_t* valid,
                                   const int64_t* lengths, int64_t rows, int64_t layer,
                                   int64_t direction, const T** out) {
  for (int64_t v = stride_start(); v < rows; v += stride_step()) {
    const int64_t r = valid[v], t = r / c.B, b = r % c.B;
    out[v] = h_prev_of(c, h0, y, layer, direction, t, b, lengths[b]);
  }
}

// Row v of h_prev_rows_kernel's table.
template <typename T>
struct HPrevRows {
  const T* const* rows;
  __device__ const T* operator()(int64_t v) const { return rows[v]; }
};

// The right factor of a weight gradient, row v of the valid rows: a gathered row of a matrix (the
// layer's input for W_ih, the cell outputs for W_hr) or, for W_hh, h_prev. One type, so that every
// weight gradient of a layer can run in one GEMM group.
template <typename T>
struct WeightGradRows {
  Rows<const T> rows;
  HPrevRows<T> h_prev;
  bool is_h_prev;
  __device__ const T* operator()(int64_t v) const { return is_h_prev ? h_prev(v) : rows(v); }
};

// m = o * tanh(c) of every valid (t, b), as the forward's cell computed it (for dW_hr).
template <typename T>
__global__ void cell_output_kernel(const T* gates, const T* cells, const int64_t* valid,
                                   int64_t rows, int64_t H, T* m) {
  for (int64_t e = stride_start(); e < rows * H; e += stride_step()) {
    const int64_t r = valid[e / H], j = e % H;
    m[r * H + j] = gates[r * 4 * H + 3 * H + j] * canonical_tanh(cells[r * H + j]);
  }
}

// Buffers the backward keeps across layers (call scratch).
template <typename T>
struct BackwardScratch {
  T* dropped;      // a layer's input after dropout
  T* grad_buf;     // gradient w.r.t. a layer's output, built by the layer above (one for all)
  T* da[2];        // per direction: gate pre-activation gradients (T, B, 4H)
  T* dc;           // (D, B, H): the gradient reaching c, carried between steps
  T* dh_all[2];    // with projections: dh of every (t, b) (T, B, RH)
  T* dm_all[2];    // with projections: dm = W_hr^T dh of every (t, b) (T, B, H)
  T* m_all[2];     // with projections: the cell outputs m, for dW_hr (T, B, H)
  T* dx_reverse;   // bidirectional: the reverse direction's part of dX (T, B, max(I, D*RH))
  const T** h_prev_rows[2];  // per direction: h_prev of each valid row (h_prev_rows_kernel), per layer
};

template <typename T>
BackwardScratch<T> backward_scratch(const CallDims& c, const ScratchAlloc& scratch, bool dropout) {
  BackwardScratch<T> s{};
  const int64_t rows = c.T * c.B;
  s.dropped = dropout && c.L > 1 ? scratch_array<T>(scratch, rows * c.DH) : nullptr;
  // A layer's dY is read by its recurrence backward only, so its input gradient writes dX, the next
  // layer down's dY, over it (input_gradient): one buffer serves every layer.
  if (c.L > 1) s.grad_buf = scratch_array<T>(scratch, rows * c.DH);
  for (int64_t d = 0; d < c.D; ++d) s.da[d] = scratch_array<T>(scratch, rows * c.G);
  s.dc = scratch_array<T>(scratch, c.D * c.B * c.H);
  s.dx_reverse = c.D == 2 ? scratch_array<T>(scratch, rows * (c.I > c.DH ? c.I : c.DH)) : nullptr;
  for (int64_t d = 0; d < c.D; ++d) s.h_prev_rows[d] = scratch_array<const T*>(scratch, rows);
  for (int64_t d = 0; c.proj && d < c.D; ++d) {
    s.dh_all[d] = scratch_array<T>(scratch, rows * c.RH);
    s.dm_all[d] = scratch_array<T>(scratch, rows * c.H);
    s.m_all[d] = scratch_array<T>(scratch, rows * c.H);
  }
  return s;
}

// What the phases of one layer share.
template <typename T>
struct BackwardLayer {
  int64_t l, K;
  const T* X;   // the layer's input (after dropout)
  const T* Y;   // its output
  const T* dY;  // the gradient w.r.t. its output
  const T* gates[2];
  const T* cells[2];
};

template <typename T>
BackwardLayer<T> backward_layer(const LstmForwardArgs<T>& f, const CallDims& c, int64_t l,
                                const T* X, const T* dY) {
  BackwardLayer<T> L{l, c.layer_input(l), X, layer_output(f, l), dY, {nullptr, nullptr},
                     {nullptr, nullptr}};
  for (int64_t d = 0; d < c.D; ++d) {
    L.gates[d] = f.gates + c.saved_rows(l, d) * c.G;
    L.cells[d] = f.cells + c.saved_rows(l, d) * c.H;
  }
  return L;
}

// The step launches' parameters for layer L, before a step and mode are set.
template <typename T>
BackwardStepParams<T> step_params(const LstmBackwardArgs<T>& a, const CallDims& c,
                                  const DeviceSchedule& ds, const BackwardLayer<T>& L,
                                  const BackwardScratch<T>& s) {
  BackwardStepParams<T> p{c};
  p.lengths = ds.lengths;
  p.order = ds.order;
  p.layer = L.l;
  p.dy = L.dY;
  p.dh_n = a.dh_n;
  p.dc_n = a.dc_n;
  p.c0 = a.fwd.c0;
  p.dc = s.dc;
  p.dh0 = a.dh0;
  for (int64_t d = 0; d < c.D; ++d) {
    p.gates[d] = L.gates[d];
    p.cells[d] = L.cells[d];
    p.w_hh[d] = a.fwd.weights.w_hh[L.l * c.D + d];
    p.da[d] = s.da[d];
    p.dh_out[d] = s.dh_all[d];
    p.dm_in[d] = s.dm_all[d];
  }
  return p;
}

// Recurrence backward (phases.h): one persistent launch for the layer where it fits (see above),
// else one launch per step in reverse processing order (three with
// projections: dh, then dm = W_hr^T dh, the chunked sum over q = 0 .. P-1, then the
// cell). Steps no row reaches are not launched.
template <typename T>
void recurrence_backward(const LstmBackwardArgs<T>& a, const CallDims& c, const StepSchedule& sched,
                         const DeviceSchedule& ds, const StepRows& step_rows,
                         const BackwardScratch<T>& s, BackwardStepParams<T> p,
                         const ScratchAlloc& scratch, cudaStream_t stream) {
  if (recurrence_backward_persistent(c, sched, ds, p, scratch, stream)) return;
  for (int64_t step = c.T - 1; step >= 0; --step) {
    p.step = step;
    p.active = sched.active[step];
    if (p.active == 0) continue;
    if (!c.proj) {
      p.mode = BackwardMode::kFused;
      backward_step(p, stream);
      continue;
    }
    p.mode = BackwardMode::kChainOnly;
    backward_step(p, stream);
    for (int64_t d = 0; d < c.D; ++d) {
      const int64_t* rows = step_rows.rows + step_rows.offset(d, step);
      gemm_chain<T, false>(p.active, c.H, c.RH, Rows<const T>{s.dh_all[d], rows, c.RH, 0},
                           Rows<const T>{a.fwd.weights.w_hr[p.layer * c.D + d], nullptr, c.H, 0},
                           Rows<T>{s.dm_all[d], rows, c.H, 0}, GemmEpilogue::kStore,
                           static_cast<const T*>(nullptr), stream);
    }
    p.mode = BackwardMode::kCellOnly;
    backward_step(p, stream);
  }
}

// Initial-state gradients (phases.h): dh0 = the chunked sum over da(first step) . W_hh (a kFinal
// launch over every row); dc0 = what reached c_prev at the first step.
template <typename T>
void initial_state_gradients(const LstmBackwardArgs<T>& a, const CallDims& c,
                             BackwardStepParams<T> p, cudaStream_t stream) {
  p.step = 0;
  p.active = c.B;
  p.mode = BackwardMode::kFinal;
  backward_step(p, stream);
  for (int64_t d = 0; d < c.D; ++d)
    check_cuda(cudaMemcpyAsync(a.dc0 + c.state_row(p.layer, d, 0) * c.H, p.dc + d * c.B * c.H,
                               c.B * c.H * sizeof(T), cudaMemcpyDeviceToDevice, stream),
               "copy dc0");
}

// dst[r] += src[r] for the valid rows r (rows of `width`): the two directions' input gradients.
template <typename T>
__global__ void add_rows_kernel(T* dst, const T* src, int64_t width, const int64_t* valid,
                                int64_t rows) {
  for (int64_t e = stride_start(); e < rows * width; e += stride_step()) {
    const int64_t f = valid[e / width] * width + e % width;
    dst[f] = dst[f] + src[f];
  }
}

// Input gradient (phases.h): dX = S_forward (+ S_reverse), each the chunked sum over its
// direction's gate rows of da . W_ih. Returns where it went: dx for layer 0, else a buffer.
template <typename T>
T* input_gradient(const LstmBackwardArgs<T>& a, const CallDims& c, const DeviceSchedule& ds,
                  const BackwardLayer<T>& L, const BackwardScratch<T>& s, cudaStream_t stream) {
  T* dX = L.l == 0 ? a.dx : s.grad_buf;  // over this layer's dY, if there: read no more
  GemmGroup<T, Rows<const T>, Rows<const T>, Rows<T>, 2> group;  // both directions, one launch
  group.P = c.G;
  for (int64_t d = 0; d < c.D; ++d)
    group.add({ds.rows, L.K, Rows<const T>{s.da[d], ds.valid, c.G, 0},
               Rows<const T>{a.fwd.weights.w_ih[L.l * c.D + d], nullptr, L.K, 0},
               Rows<T>{d == 0 ? dX : s.dx_reverse, ds.valid, L.K, 0}, GemmEpilogue::kStore,
               nullptr, {nullptr, nullptr}});
  gemm_group<T, false>(group, stream);
  if (c.D == 2)
    launch_kernel("add_rows_kernel", add_rows_kernel<T>, stride_grid(ds.rows * L.K, 256), 256,
                  stream, dX, static_cast<const T*>(s.dx_reverse), L.K, ds.valid, ds.rows);
  return dX;
}

// Weight and bias gradients (phases.h): chunked sums over the valid (t, b) in storage order, every
// one of the layer in one GEMM group, split over chunks where their few output tiles would leave the
// GPU idle (gemm_group_split). The bias gradients are the sums of dW_ih's left factor (da) over the
// rows, computed by the same launch (GemmProblem::sums): b_ih and b_hh get the same values.
template <typename T>
void weight_gradients(const LstmBackwardArgs<T>& a, const CallDims& c, const DeviceSchedule& ds,
                      const BackwardLayer<T>& L, const BackwardScratch<T>& s,
                      SplitBuffer<T>& split, cudaStream_t stream) {
  const int64_t R = ds.rows;
  GemmGroup<T, Rows<const T>, WeightGradRows<T>, Rows<T>, 6> group;
  group.P = R;
  const HPrevRows<T> no_h_prev{};
  for (int64_t d = 0; d < c.D; ++d) {
    const int64_t w = L.l * c.D + d;
    const Rows<const T> da{s.da[d], ds.valid, c.G, 0};
    if (R > 0)
      launch_kernel("h_prev_rows_kernel", h_prev_rows_kernel<T>, stride_grid(R, 256), 256, stream,
                    c, a.fwd.h0, L.Y, ds.valid, ds.lengths, R, L.l, d, s.h_prev_rows[d]);
    group.add({c.G, L.K, da, {{L.X, ds.valid, L.K, 0}, no_h_prev, false},
               {a.dw_ih[w], nullptr, L.K, 0}, GemmEpilogue::kStore, nullptr,
               {c.bias ? a.db_ih[w] : nullptr, c.bias ? a.db_hh[w] : nullptr}});
    group.add({c.G, c.RH, da,
               {{}, HPrevRows<T>{s.h_prev_rows[d]}, true},
               {a.dw_hh[w], nullptr, c.RH, 0}, GemmEpilogue::kStore, nullptr, {nullptr, nullptr}});
    if (!c.proj) continue;
    // dW_hr[q][k] = the chunked sum over the valid (t, b) in storage order of dh[q] * m[k].
    launch_kernel("cell_output_kernel", cell_output_kernel<T>, stride_grid(R * c.H, 256), 256,
                  stream, L.gates[d], L.cells[d], ds.valid, R, c.H, s.m_all[d]);
    group.add({c.RH, c.H, Rows<const T>{s.dh_all[d], ds.valid, c.RH, 0},
               {{s.m_all[d], ds.valid, c.H, 0}, no_h_prev, false}, {a.dw_hr[w], nullptr, c.H, 0},
               GemmEpilogue::kStore, nullptr, {nullptr, nullptr}});
  }
  gemm_group_split<T, true>(group, split, stream);
}

// The split products' buffer: what the largest layer's weight and bias gradients (per direction 4H x
// max(I, D*RH), 4H x RH, 4H and RH x H values, every chunk of the valid rows) need, at most the
// launch settings' split_bytes.
template <typename T>
int64_t split_elements(const CallDims& c, int64_t rows) {
  const int64_t most = launch_settings().split_bytes / int64_t(sizeof(T));
  const int64_t per_direction = c.G * ((c.I > c.DH ? c.I : c.DH) + c.RH + (c.bias ? 1 : 0)) +
                                (c.proj ? c.RH * c.H : 0);
  const int64_t need = c.D * per_direction * ceil_div(rows, kSumChunk);
  return need < most ? need : most;
}

template <typename T>
void backward_impl(const LstmBackwardArgs<T>& a, const ScratchAlloc& scratch, cudaStream_t stream) {
  const LstmForwardArgs<T>& f = a.fwd;
  const CallDims c(f.shape);
  const StepSchedule sched(f.lengths, c.T, c.B);
  const DeviceSchedule ds = upload_schedule(sched, f.lengths, c.B, scratch, stream);
  const StepRows step_rows =
      c.proj ? upload_step_rows(sched, f.lengths, c.B, c.D, scratch, stream) : StepRows{};
  const BackwardScratch<T> s = backward_scratch<T>(c, scratch, f.dropout.active);
  SplitBuffer<T> split{&scratch, split_elements<T>(c, ds.rows)};
  launch_zero_padding(a.dx, c.I, ds.lengths, c.T, c.B, stream);
  const T* dY = a.dy;
  for (int64_t l = c.L - 1; l >= 0; --l) {
    const BackwardLayer<T> L =
        backward_layer(f, c, l, dropped_layer_input(f, c, l, ds, s.dropped, stream), dY);
    const BackwardStepParams<T> p = step_params(a, c, ds, L, s);
    recurrence_backward(a, c, sched, ds, step_rows, s, p, scratch, stream);
    initial_state_gradients(a, c, p, stream);
    T* dX = input_gradient(a, c, ds, L, s, stream);
    weight_gradients(a, c, ds, L, s, split, stream);
    // Through the dropout between layer l-1 and l: the forward's mask, regenerated.
    if (l > 0 && f.dropout.active) launch_apply_dropout(f.dropout, l - 1, dX, dX, c.DH, ds, c.B, stream);
    dY = dX;
  }
}

void lstm_backward(const LstmBackwardArgs<float>& a, const ScratchAlloc& s, cudaStream_t st) {
  backward_impl<float>(a, s, st);
}
void lstm_backward(const LstmBackwardArgs<double>& a, const ScratchAlloc& s, cudaStream_t st) {
  backward_impl<double>(a, s, st);
}

}  // namespace cuda
}  // namespace detlstm
