// The LSTM forward on the GPU, in the phases of csrc/common/phases.h (the same names as
// csrc/cpu/lstm_cpu_forward.h): per layer, the input projection of every valid step as one
// fixed-order GEMM ((b_ih + b_hh) + X), then one launch per step that sums h_prev . W_hh^T and runs
// the cell (csrc/common/lstm_cell.h) on pre + R, both directions in grid z. Same sums and same cell
// as the CPU kernels, so the same bits. With projections the cell's
// output m = o * tanh(c) goes to a buffer and h = W_hr m is one more fixed-order GEMM per step.
#include "gemm_chain.cuh"
#include "persistent.cuh"

namespace detlstm {
namespace cuda {

template <typename T>
struct ForwardStepParams {
  CallDims c;
  const int64_t* lengths;
  const int64_t* order;
  int64_t layer, step, active;
  const T* h0;  // (L*D, B, RH)
  const T* c0;  // (L*D, B, H)
  T* y;         // this layer's output (T, B, D*RH)
  T* m_out[2];  // with projections: the cell outputs (T, B, H) per direction; else null
  T* gates[2];  // per direction: pre-activations in, activated gates out (T, B, 4H)
  T* cells[2];  // (T, B, H)
  const T* wt_hh[2];  // W_hh^T (RH, 4H): consecutive threads read consecutive gate rows
};

// One row of a step as a thread sees it: where its h_prev and c_prev are, where its gates go.
template <typename T>
struct ForwardRow {
  const T* hprev;
  const T* cprev;
  T* grow;  // the row's pre-activations in, activated gates out
  int64_t out_row;
};

// Row i of the step's schedule, in direction d.
template <typename T>
__device__ ForwardRow<T> forward_row(const ForwardStepParams<T>& p, int d, int64_t i) {
  const CallDims& c = p.c;
  const int64_t b = p.order[i], len = p.lengths[b];
  const int64_t t = step_time(d, p.step, len);
  ForwardRow<T> row;
  row.hprev = h_prev_of(c, p.h0, static_cast<const T*>(p.y), p.layer, d, t, b, len);
  row.cprev = c_prev_of(c, p.c0, static_cast<const T*>(pick(p.cells, d)), p.layer, d, t, b, len);
  row.out_row = c.row(t, b);
  row.grow = pick(p.gates, d) + row.out_row * c.G;
  return row;
}

// What unit j of a row's cell reads besides its recurrent sums: the input projection's four
// pre-activations (in the gates row) and c_prev. Neither depends on the step's sums, so the
// persistent kernel loads them before its sums are done, and their memory latency overlaps the
// step barrier and the partials instead of following the fold.
template <typename T>
struct ForwardCellInputs {
  T pre[4];
  T cprev;
};

template <typename T>
__device__ ForwardCellInputs<T> forward_cell_inputs(const ForwardRow<T>& row, int64_t H, int64_t j) {
  ForwardCellInputs<T> in;
#pragma unroll
  for (int g = 0; g < 4; ++g) in.pre[g] = row.grow[g * H + j];
  in.cprev = row.cprev[j];
  return in;
}

// The cell of unit j of a row whose four recurrent sums R are complete: a = pre + R (rule 4). Act:
// where its activations read their table (lstm_cell.h).
template <typename T, class Act = CanonicalActivations>
__device__ void forward_finish(const ForwardStepParams<T>& p, int d, const ForwardRow<T>& row,
                               int64_t j, const T (&rsum)[4], const ForwardCellInputs<T>& in) {
  const int64_t H = p.c.H;
  T a[4];
#pragma unroll
  for (int g = 0; g < 4; ++g) a[g] = in.pre[g] + rsum[g];
  const CellState<T> st = lstm_cell_forward<T, Act>(a[0], a[1], a[2], a[3], in.cprev);
  row.grow[j] = st.i;
  row.grow[H + j] = st.f;
  row.grow[2 * H + j] = st.g;
  row.grow[3 * H + j] = st.o;
  pick(p.cells, d)[row.out_row * H + j] = st.c;
  T* m_out = pick(p.m_out, d);
  if (m_out)
    m_out[row.out_row * H + j] = st.h;
  else
    p.y[row.out_row * p.c.DH + d * p.c.RH + j] = st.h;
}

// The same, its inputs read now (the per-step kernels).
template <typename T>
__device__ void forward_finish(const ForwardStepParams<T>& p, int d, const ForwardRow<T>& row,
                               int64_t j, const T (&rsum)[4]) {
  forward_finish(p, d, row, j, rsum, forward_cell_inputs(row, p.c.H, j));
}

// At the end of the chunk holding term k: every one of the RB x 4 sums folds its partial.
template <typename T, int RB>
__device__ __forceinline__ void fold_partials(T (&total)[RB][4], T (&acc)[RB][4], int64_t k) {
#pragma unroll
  for (int r = 0; r < RB; ++r)
#pragma unroll
    for (int g = 0; g < 4; ++g) fold_and_restart(total[r][g], acc[r][g], k);
}

// Thread (unit j, RB rows from i0) of direction blockIdx.z. Each of its 4*RB recurrent sums R is the
// chunked sum over k = 0 .. RH-1 of h_prev[k] * W_hh[n][k] (rules 3 and 4), then the cell runs in
// the same thread. W_hh^T and h_prev are read straight from global memory (L2).
template <typename T, int RB>
__device__ void forward_step_rows(const ForwardStepParams<T>& p, int64_t j, int64_t i0) {
  const int d = blockIdx.z;
  const int64_t H = p.c.H, G = p.c.G, RH = p.c.RH;
  if (j >= H) return;
  ForwardRow<T> rows[RB];
  bool live[RB];
  T acc[RB][4] = {}, total[RB][4];
#pragma unroll
  for (int r = 0; r < RB; ++r) {
    live[r] = i0 + r < p.active;  // row i0 is always live
    rows[r] = forward_row(p, d, live[r] ? i0 + r : i0);
  }
  const T* wt = pick(p.wt_hh, d) + j;
  for (int64_t k = 0; k < RH; ++k) {
    T w[4];
#pragma unroll
    for (int g = 0; g < 4; ++g) w[g] = wt[k * G + g * H];
#pragma unroll
    for (int r = 0; r < RB; ++r) {
      const T hv = rows[r].hprev[k];
#pragma unroll
      for (int g = 0; g < 4; ++g) acc[r][g] = fma_rn(hv, w[g], acc[r][g]);
    }
    if (chunk_ends_after(k, RH)) fold_partials<T, RB>(total, acc, k);
  }
#pragma unroll
  for (int r = 0; r < RB; ++r)
    if (live[r]) forward_finish(p, d, rows[r], j, total[r]);
}

template <typename T, int RB>
__global__ void forward_step_kernel(ForwardStepParams<T> p) {
  for_each_work_block(ceil_div(p.c.H, blockDim.x), ceil_div(p.active, RB),
                      [&](int64_t bx, int64_t by) {
                        forward_step_rows<T, RB>(p, bx * blockDim.x + threadIdx.x, by * RB);
                      });
}

// The same step with a block per (direction, kSliceUnits units from j0, kSliceRowGroups * RB rows
// from i0): the block stages its units' columns of W_hh^T and its rows' h_prev in shared memory,
// kSliceK values of k at a time, so W_hh is read from L2 once per step per row block instead of once
// per RB rows. Thread (unit u, row group q) owns rows q, q + kSliceRowGroups, ...; sums and cell as
// above. Every thread of the block calls this (it holds barriers).
template <typename T, int RB>
__device__ void forward_step_slice(const ForwardStepParams<T>& p, int64_t j0, int64_t i0) {
  constexpr int kRows = kSliceRowGroups * RB;
  __shared__ T w_s[kSliceK][4 * kSliceUnits];
  __shared__ T h_s[kRows][kSliceK + 1];  // +1: the row groups of a warp fall in different banks
  __shared__ const T* hprev_s[kRows];
  const int d = blockIdx.z;
  const int64_t H = p.c.H, G = p.c.G, RH = p.c.RH;
  const int u = threadIdx.x % kSliceUnits, q = threadIdx.x / kSliceUnits;
  const int64_t j = j0 + u;
  __syncthreads();  // a previous block of work of this thread block is done with the shared arrays
  for (int rr = threadIdx.x; rr < kRows; rr += kSliceThreads)
    hprev_s[rr] = i0 + rr < p.active ? forward_row(p, d, i0 + rr).hprev : nullptr;
  ForwardRow<T> rows[RB];
  bool live[RB];
  T acc[RB][4] = {}, total[RB][4];
#pragma unroll
  for (int r = 0; r < RB; ++r) {
    const int64_t i = i0 + q + r * kSliceRowGroups;
    live[r] = i < p.active && j < H;
    if (live[r]) rows[r] = forward_row(p, d, i);
  }
  const T* wt = pick(p.wt_hh, d);
  for (int64_t k0 = 0; k0 < RH; k0 += kSliceK) {
    const int kc = static_cast<int>(RH - k0 < kSliceK ? RH - k0 : kSliceK);
    __syncthreads();  // the previous chunk is consumed (and, the first time, hprev_s is written)
    for (int e = threadIdx.x; e < kSliceK * 4 * kSliceUnits; e += kSliceThreads) {
      const int kk = e / (4 * kSliceUnits), c = e % (4 * kSliceUnits);
      const int64_t jj = j0 + c % kSliceUnits;
      w_s[kk][c] = kk < kc && jj < H ? wt[(k0 + kk) * G + (c / kSliceUnits) * H + jj] : T(0);
    }
    for (int e = threadIdx.x; e < kRows * kSliceK; e += kSliceThreads) {
      const int rr = e / kSliceK, kk = e % kSliceK;
      h_s[rr][kk] = kk < kc && hprev_s[rr] ? hprev_s[rr][k0 + kk] : T(0);
    }
    __syncthreads();
    for (int kk = 0; kk < kc; ++kk) {
      T w[4];
#pragma unroll
      for (int g = 0; g < 4; ++g) w[g] = w_s[kk][g * kSliceUnits + u];
#pragma unroll
      for (int r = 0; r < RB; ++r) {
        const T hv = h_s[q + r * kSliceRowGroups][kk];
#pragma unroll
        for (int g = 0; g < 4; ++g) acc[r][g] = fma_rn(hv, w[g], acc[r][g]);
      }
    }
    const int64_t last = k0 + kc - 1;  // a staged block never straddles a chunk (launch_shapes.h)
    if (chunk_ends_after(last, RH)) fold_partials<T, RB>(total, acc, last);
  }
#pragma unroll
  for (int r = 0; r < RB; ++r)
    if (live[r]) forward_finish(p, d, rows[r], j, total[r]);
}

template <typename T, int RB>
__global__ void __launch_bounds__(kSliceThreads) forward_step_slice_kernel(ForwardStepParams<T> p) {
  for_each_work_block(ceil_div(p.c.H, kSliceUnits), ceil_div(p.active, kSliceRowGroups * RB),
                      [&](int64_t bx, int64_t by) {
                        forward_step_slice<T, RB>(p, bx * kSliceUnits, by * kSliceRowGroups * RB);
                      });
}

template <typename T, int RB>
struct ForwardStep {
  static constexpr auto kernel = forward_step_kernel<T, RB>;
  static constexpr auto slice_kernel = forward_step_slice_kernel<T, kSliceRowsPerThread>;
};

template <typename T>
void forward_step(const ForwardStepParams<T>& p, cudaStream_t stream) {
  launch_step_kernel<ForwardStep, T>(p, p.c.H, p.active, static_cast<int>(p.c.D), stream,
                                     "forward_step_kernel");
}

// The persistent forward (persistent.cuh): block (direction d, units j0 .. j0 + U) keeps the
// columns of W_hh^T for its units' four gates (column g * U + u is gate g of unit j0 + u) and runs
// every step of the layer, meeting the direction's other blocks between steps.
template <typename T>
struct PersistentForwardParams {
  ForwardStepParams<T> step;  // step and active are set inside, per step
  PersistentGrid<T> grid;
};

template <typename T, int U>
__device__ void stage_forward_weights(const PersistentForwardParams<T>& pp, const SliceShared<T>& sm,
                                      int d, int64_t j0) {
  const int64_t H = pp.step.c.H, G = pp.step.c.G;
  const T* wt = pick(pp.step.wt_hh, d);
  for (int64_t e = threadIdx.x; e < pp.grid.layout.K * 4 * U; e += kPersistentThreads) {
    const int64_t k = e / (4 * U), g = (e / U) % 4, j = j0 + e % U;
    sm.w[pp.grid.layout.slot(k) * 4 * U + e % (4 * U)] = j < H ? wt[k * G + g * H + j] : T(0);
  }
}

// Thread (row r, unit u)'s cell inputs for the row tile from row i0 of the step in p; nothing
// where the thread has no row and unit there.
template <typename T, int U>
__device__ ForwardCellInputs<T> tile_cell_inputs(const ForwardStepParams<T>& p,
                                                 const SliceLayout<T>& layout, int d, int64_t j0,
                                                 int64_t i0) {
  const int r = static_cast<int>(threadIdx.x) / U;
  const int64_t j = j0 + threadIdx.x % U;
  if (r >= layout.rows || i0 + r >= p.active || j >= p.c.H) return {};
  return forward_cell_inputs(forward_row(p, d, i0 + r), p.c.H, j);
}

// The row tile from row i0 of the step in p: the chunk partials of their 4U sums, then thread (row
// r, unit u) folds unit j0 + u's four and runs its cell on them and `in`, its cell inputs.
template <typename T, int U>
__device__ void forward_persistent_rows(const PersistentForwardParams<T>& pp,
                                        const ForwardStepParams<T>& p, const SliceShared<T>& sm,
                                        int d, int64_t j0, int64_t i0,
                                        const ForwardCellInputs<T>& in) {
  const SliceLayout<T>& layout = pp.grid.layout;
  const int rows = static_cast<int>(p.active - i0 < layout.rows ? p.active - i0 : layout.rows);
  for (int r = threadIdx.x; r < layout.rows; r += kPersistentThreads)
    sm.src[r] = r < rows ? forward_row(p, d, i0 + r).hprev : nullptr;
  slice_partials<T, 4 * U>(layout, sm, rows);
  const int r = threadIdx.x / U;
  const int64_t j = j0 + threadIdx.x % U;
  if (r >= rows || j >= p.c.H) return;
  T rsum[4];
#pragma unroll
  for (int g = 0; g < 4; ++g)
    rsum[g] = folded_sum<T, 4 * U>(layout, sm, r, g * U + static_cast<int>(threadIdx.x % U));
  forward_finish<T, SharedTableActivations>(p, d, forward_row(p, d, i0 + r), j, rsum, in);
}

// Every step of the layer (PersistentGrid::for_each_step): the cell inputs of a step's first row
// tile are read inside the barrier that ends the step before (c_prev there is this thread's own
// store of that step, the input projection a launch older).
template <typename T, int U>
__global__ void __launch_bounds__(kPersistentThreads, kPersistentMinBlocks<T>)
    forward_persistent_kernel(PersistentForwardParams<T> pp) {
  const int d = pp.grid.direction();
  const int64_t j0 = pp.grid.first_unit(U);
  const SliceShared<T> sm = slice_shared(pp.grid.layout);
  stage_exp2_table();
  stage_forward_weights<T, U>(pp, sm, d, j0);  // slice_partials' first barrier publishes both
  pp.grid.for_each_step(
      d, pp.step, false,
      [&](const ForwardStepParams<T>& p, int64_t i0) {
        return tile_cell_inputs<T, U>(p, pp.grid.layout, d, j0, i0);
      },
      [&](const ForwardStepParams<T>& p, int64_t i0, const ForwardCellInputs<T>& in) {
        forward_persistent_rows<T, U>(pp, p, sm, d, j0, i0, in);
      });
}

template <typename T>
auto forward_persistent_for(int units) {
  return units == 4 ? forward_persistent_kernel<T, 4> : forward_persistent_kernel<T, 8>;
}

// The layer's recurrence as one persistent launch, where the plan allows it (no projections: their
// per-step GEMM is not part of it) and the device takes the launch. Returns whether it ran.
template <typename T>
bool recurrence_persistent(const ForwardStepParams<T>& p, const StepSchedule& sched,
                           const DeviceSchedule& ds, const ScratchAlloc& scratch,
                           cudaStream_t stream) {
  const CallDims& c = p.c;
  const int64_t steps = steps_with_rows(sched, c.T);
  if (c.proj || steps == 0) return false;
  const PersistentPlan<T> plan =
      plan_persistent<T>(c.RH, c.H, 4, c.D, c.B, forward_persistent_for<T>);
  if (plan.units == 0) return false;
  return launch_persistent("forward_persistent_kernel", forward_persistent_for<T>, plan,
                           PersistentForwardParams<T>{p, {}}, c.D, steps, ds.active, scratch, stream);
}

template <typename T>
__global__ void bias_sum_kernel(const T* b_ih, const T* b_hh, T* out, int64_t n) {
  for (int64_t e = stride_start(); e < n; e += stride_step())
    out[e] = b_ih[e] + b_hh[e];  // (b_ih + b_hh), rule 4
}

// A final state after step len-1 (forward) or step 0 (reverse): h_n from the layer output (rows of
// D*width, this direction's slice at d*width), c_n from the cells (rows of width).
template <typename T>
__global__ void final_state_kernel(CallDims c, const int64_t* lengths, const T* src_fwd,
                                   const T* src_rev, int64_t row_width, int64_t width, bool sliced,
                                   T* dst, int64_t layer) {
  for (int64_t e = stride_start(); e < c.D * c.B * width; e += stride_step()) {
    const int64_t d = e / (c.B * width), b = (e / width) % c.B, j = e % width;
    const int64_t t = d == 0 ? lengths[b] - 1 : 0;
    const T* src = d == 0 ? src_fwd : src_rev;
    dst[c.state_row(layer, d, b) * width + j] =
        src[c.row(t, b) * row_width + (sliced ? d * width : 0) + j];
  }
}

template <typename T>
void launch_final_state(const CallDims& c, const int64_t* lengths, const T* fwd, const T* rev,
                        int64_t row_width, int64_t width, bool sliced, T* dst, int64_t layer,
                        cudaStream_t stream) {
  launch_kernel("final_state_kernel", final_state_kernel<T>, stride_grid(c.D * c.B * width, 256),
                256, stream, c, lengths, fwd, rev, row_width, width, sliced, dst, layer);
}

// One direction's weights as the kernels read them (call scratch): W_ih^T (K, 4H), W_hh^T (RH, 4H),
// W_hr^T (H, RH), b_ih + b_hh, and with projections the cell outputs m (T, B, H).
template <typename T>
struct DirectionWeights {
  T* wt_ih;
  T* wt_hh;
  T* wt_hr;
  T* bias;
  T* m_buf;
};

template <typename T>
struct ForwardScratch {
  T* dropped;  // a layer's input after dropout
  DirectionWeights<T> w[2];
};

template <typename T>
ForwardScratch<T> forward_scratch(const CallDims& c, const ScratchAlloc& scratch, bool dropout) {
  ForwardScratch<T> s{};
  s.dropped = dropout && c.L > 1 ? scratch_array<T>(scratch, c.T * c.B * c.DH) : nullptr;
  const int64_t k_max = c.I > c.DH ? c.I : c.DH;
  for (int64_t d = 0; d < c.D; ++d) {
    DirectionWeights<T>& w = s.w[d];
    w.wt_ih = scratch_array<T>(scratch, k_max * c.G);
    w.wt_hh = scratch_array<T>(scratch, c.RH * c.G);
    w.bias = scratch_array<T>(scratch, c.G);
    w.wt_hr = c.proj ? scratch_array<T>(scratch, c.H * c.RH) : nullptr;
    w.m_buf = c.proj ? scratch_array<T>(scratch, c.T * c.B * c.H) : nullptr;
  }
  return s;
}

// What the phases of one layer share.
template <typename T>
struct ForwardLayer {
  int64_t l, K;
  const T* X;  // the layer's input (after dropout)
  T* Y;        // its output
  T* gates[2];
  T* cells[2];
};

template <typename T>
ForwardLayer<T> forward_layer(const LstmForwardArgs<T>& a, const CallDims& c, int64_t l,
                              const T* X) {
  ForwardLayer<T> L{l, c.layer_input(l), X, layer_output(a, l), {nullptr, nullptr},
                    {nullptr, nullptr}};
  for (int64_t d = 0; d < c.D; ++d) {
    L.gates[d] = a.gates + c.saved_rows(l, d) * c.G;
    L.cells[d] = a.cells + c.saved_rows(l, d) * c.H;
  }
  return L;
}

// Padding rows of every output the forward writes are 0.
template <typename T>
void zero_forward_padding(const LstmForwardArgs<T>& a, const CallDims& c, const DeviceSchedule& ds,
                          cudaStream_t stream) {
  launch_zero_padding(a.y, c.DH, ds.lengths, c.T, c.B, stream);
  for (int64_t l = 0; l < layer_out_slices(a.shape); ++l)
    launch_zero_padding(a.layer_out + l * c.T * c.B * c.DH, c.DH, ds.lengths, c.T, c.B, stream);
  for (int64_t ld = 0; ld < c.KL * c.D; ++ld) {
    launch_zero_padding(a.gates + ld * c.T * c.B * c.G, c.G, ds.lengths, c.T, c.B, stream);
    launch_zero_padding(a.cells + ld * c.T * c.B * c.H, c.H, ds.lengths, c.T, c.B, stream);
  }
}

// The layer's weights transposed for the products, and b_ih + b_hh.
template <typename T>
void layer_weights(const LstmForwardArgs<T>& a, const CallDims& c, const ForwardLayer<T>& L,
                   ForwardScratch<T>& s, cudaStream_t stream) {
  for (int64_t d = 0; d < c.D; ++d) {
    const int64_t w = L.l * c.D + d;
    launch_transpose(a.weights.w_ih[w], s.w[d].wt_ih, c.G, L.K, stream);
    launch_transpose(a.weights.w_hh[w], s.w[d].wt_hh, c.G, c.RH, stream);
    if (c.proj) launch_transpose(a.weights.w_hr[w], s.w[d].wt_hr, c.RH, c.H, stream);
    if (c.bias)
      launch_kernel("bias_sum_kernel", bias_sum_kernel<T>, stride_grid(c.G, 256), 256, stream,
                    a.weights.b_ih[w], a.weights.b_hh[w], s.w[d].bias, c.G);
  }
}

// Input projection (phases.h): every valid step's (b_ih + b_hh) + X, X the chunked sum of
// x . W_ih^T (X alone without biases).
template <typename T>
void input_projection(const CallDims& c, const DeviceSchedule& ds, const ForwardLayer<T>& L,
                      const ForwardScratch<T>& s, cudaStream_t stream) {
  GemmGroup<T, Rows<const T>, Rows<const T>, Rows<T>, 2> group;  // both directions, one launch
  group.P = L.K;
  for (int64_t d = 0; d < c.D; ++d)
    group.add({ds.rows, c.G, Rows<const T>{L.X, ds.valid, L.K, 0},
               Rows<const T>{s.w[d].wt_ih, nullptr, c.G, 0}, Rows<T>{L.gates[d], ds.valid, c.G, 0},
               c.bias ? GemmEpilogue::kAddVector : GemmEpilogue::kStore,
               static_cast<const T*>(s.w[d].bias), {nullptr, nullptr}});
  gemm_group<T, false>(group, stream);
}

// The recurrence (phases.h): one persistent launch for the layer where it fits (see above), else
// one launch per step in processing order: R, the chunked sum of
// h_prev . W_hh^T, for every gate, then the cell on pre + R; with projections h = W_hr m for the
// step's rows, the chunked sum over k = 0 .. H-1. Steps no row reaches are not launched: they have
// no work, and a launch with no rows would be an empty grid.
template <typename T>
void recurrence(const LstmForwardArgs<T>& a, const CallDims& c, const StepSchedule& sched,
                const DeviceSchedule& ds, const StepRows& step_rows, const ForwardLayer<T>& L,
                const ForwardScratch<T>& s, const ScratchAlloc& scratch, cudaStream_t stream) {
  ForwardStepParams<T> p{c};
  p.lengths = ds.lengths;
  p.order = ds.order;
  p.layer = L.l;
  p.h0 = a.h0;
  p.c0 = a.c0;
  p.y = L.Y;
  for (int64_t d = 0; d < c.D; ++d) {
    p.m_out[d] = s.w[d].m_buf;
    p.gates[d] = L.gates[d];
    p.cells[d] = L.cells[d];
    p.wt_hh[d] = s.w[d].wt_hh;
  }
  if (recurrence_persistent(p, sched, ds, scratch, stream)) return;
  for (int64_t step = 0; step < c.T && sched.active[step] > 0; ++step) {
    p.step = step;
    p.active = sched.active[step];
    forward_step(p, stream);
    for (int64_t d = 0; c.proj && d < c.D; ++d) {
      const int64_t* rows = step_rows.rows + step_rows.offset(d, step);
      gemm_chain<T, false>(p.active, c.RH, c.H, Rows<const T>{s.w[d].m_buf, rows, c.H, 0},
                           Rows<const T>{s.w[d].wt_hr, nullptr, c.RH, 0},
                           Rows<T>{L.Y, rows, c.DH, d * c.RH}, GemmEpilogue::kStore,
                           static_cast<const T*>(nullptr), stream);
    }
  }
}

// Final states (phases.h): h_n and c_n, forward after step len-1, reverse after step 0.
template <typename T>
void final_states(const LstmForwardArgs<T>& a, const CallDims& c, const DeviceSchedule& ds,
                  const ForwardLayer<T>& L, cudaStream_t stream) {
  launch_final_state<T>(c, ds.lengths, L.Y, L.Y, c.DH, c.RH, true, a.h_n, L.l, stream);
  launch_final_state<T>(c, ds.lengths, L.cells[0], L.cells[c.D - 1], c.H, c.H, false, a.c_n, L.l,
                        stream);
}

template <typename T>
void forward_impl(const LstmForwardArgs<T>& a, const ScratchAlloc& scratch, cudaStream_t stream) {
  const CallDims c(a.shape);
  const StepSchedule sched(a.lengths, c.T, c.B);
  const DeviceSchedule ds = upload_schedule(sched, a.lengths, c.B, scratch, stream);
  const StepRows step_rows =
      c.proj ? upload_step_rows(sched, a.lengths, c.B, c.D, scratch, stream) : StepRows{};
  ForwardScratch<T> s = forward_scratch<T>(c, scratch, a.dropout.active);
  zero_forward_padding(a, c, ds, stream);
  for (int64_t l = 0; l < c.L; ++l) {
    const ForwardLayer<T> L =
        forward_layer(a, c, l, dropped_layer_input(a, c, l, ds, s.dropped, stream));
    layer_weights(a, c, L, s, stream);
    input_projection(c, ds, L, s, stream);
    recurrence(a, c, sched, ds, step_rows, L, s, scratch, stream);
    final_states(a, c, ds, L, stream);
  }
}

void lstm_forward(const LstmForwardArgs<float>& a, const ScratchAlloc& s, cudaStream_t st) {
  forward_impl<float>(a, s, st);
}
void lstm_forward(const LstmForwardArgs<double>& a, const ScratchAlloc& s, cudaStream_t st) {
  forward_impl<double>(a, s, st);
}

}  // namespace cuda
}  // namespace detlstm
