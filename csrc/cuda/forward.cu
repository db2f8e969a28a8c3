// The LSTM forward on the GPU: per layer, the input projection of every valid step as one
// fixed-order GEMM (the head of each pre-activation chain), then one launch per step that continues
// the chains with h_prev . W_hh^T and runs the cell (csrc/common/lstm_cell.h). Both directions share
// each launch (grid z). Same chains and same cell as the CPU kernels, so the same bits. With
// projections the cell's output m = o * tanh(c) goes to a buffer and h = W_hr m is one more
// fixed-order GEMM per step.
#include "gemm_chain.cuh"

namespace detlstm {
namespace cuda {

template <typename T>
struct ForwardStepParams {
  const int64_t* lengths;
  const int64_t* order;
  int64_t batch, hidden, real_hidden, layer, step, active;  // real_hidden: width of h (R)
  const T* h0;  // (L*D, B, R)
  const T* c0;  // (L*D, B, H)
  T* y;         // this layer's output (T, B, D*R)
  T* m_out[2];  // with projections: the cell outputs (T, B, H) per direction; else null
  T* gates[2];  // per direction: pre-activations in, activated gates out (T, B, 4H)
  T* cells[2];  // (T, B, H)
  const T* wt_hh[2];  // W_hh^T (R, 4H): consecutive threads read consecutive gate rows
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
__device__ ForwardRow<T> forward_row(const ForwardStepParams<T>& p, int d, int D, int64_t i) {
  const int64_t H = p.hidden, B = p.batch, RH = p.real_hidden;
  const int64_t b = p.order[i];
  const int64_t t = step_time(d, p.step, p.lengths[b]);
  ForwardRow<T> row;
  if (p.step == 0) {
    row.hprev = p.h0 + ((p.layer * D + d) * B + b) * RH;
    row.cprev = p.c0 + ((p.layer * D + d) * B + b) * H;
  } else {
    const int64_t tp = prev_time(d, t);
    row.hprev = p.y + (tp * B + b) * D * RH + d * RH;
    row.cprev = pick(p.cells, d) + (tp * B + b) * H;
  }
  row.out_row = t * B + b;
  row.grow = pick(p.gates, d) + row.out_row * 4 * H;
  return row;
}

// The cell of unit j of a row whose four pre-activation chains are complete.
template <typename T>
__device__ void forward_finish(const ForwardStepParams<T>& p, int d, int D, const ForwardRow<T>& row,
                               int64_t j, const T (&acc)[4]) {
  const int64_t H = p.hidden;
  const CellState<T> st = lstm_cell_forward(acc[0], acc[1], acc[2], acc[3], row.cprev[j]);
  row.grow[j] = st.i;
  row.grow[H + j] = st.f;
  row.grow[2 * H + j] = st.g;
  row.grow[3 * H + j] = st.o;
  pick(p.cells, d)[row.out_row * H + j] = st.c;
  T* m_out = pick(p.m_out, d);
  if (m_out)
    m_out[row.out_row * H + j] = st.h;
  else
    p.y[row.out_row * D * p.real_hidden + d * H + j] = st.h;
}

// Thread (unit j, RB rows from i0) of direction blockIdx.z. Each of its 4*RB pre-activations
// continues as one fma chain over k = 0 .. R-1 (ARITHMETIC.md rule 4), then the cell runs in the same
// thread. W_hh^T and h_prev are read straight from global memory (L2).
template <typename T, int RB>
__device__ void forward_step_rows(const ForwardStepParams<T>& p, int64_t j, int64_t i0) {
  const int d = blockIdx.z, D = gridDim.z;
  const int64_t H = p.hidden, G = 4 * H, RH = p.real_hidden;
  if (j >= H) return;
  ForwardRow<T> rows[RB];
  bool live[RB];
  T acc[RB][4];
#pragma unroll
  for (int r = 0; r < RB; ++r) {
    live[r] = i0 + r < p.active;  // row i0 is always live
    rows[r] = forward_row(p, d, D, live[r] ? i0 + r : i0);
#pragma unroll
    for (int g = 0; g < 4; ++g) acc[r][g] = rows[r].grow[g * H + j];
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
  }
#pragma unroll
  for (int r = 0; r < RB; ++r)
    if (live[r]) forward_finish(p, d, D, rows[r], j, acc[r]);
}

template <typename T, int RB>
__global__ void forward_step_kernel(ForwardStepParams<T> p) {
  for_each_work_block(ceil_div(p.hidden, blockDim.x), ceil_div(p.active, RB),
                      [&](int64_t bx, int64_t by) {
                        forward_step_rows<T, RB>(p, bx * blockDim.x + threadIdx.x, by * RB);
                      });
}

// The same step with a block per (direction, kSliceUnits units from j0, kSliceRowGroups * RB rows
// from i0): the block stages its units' columns of W_hh^T and its rows' h_prev in shared memory,
// kSliceK values of k at a time, so W_hh is read from L2 once per step per row block instead of once
// per RB rows. Thread (unit u, row group q) owns rows q, q + kSliceRowGroups, ...; chains and cell as
// above. Every thread of the block calls this (it holds barriers).
template <typename T, int RB>
__device__ void forward_step_slice(const ForwardStepParams<T>& p, int64_t j0, int64_t i0) {
  constexpr int kRows = kSliceRowGroups * RB;
  __shared__ T w_s[kSliceK][4 * kSliceUnits];
  __shared__ T h_s[kRows][kSliceK + 1];  // +1: the row groups of a warp fall in different banks
  __shared__ const T* hprev_s[kRows];
  const int d = blockIdx.z, D = gridDim.z;
  const int64_t H = p.hidden, G = 4 * H, RH = p.real_hidden;
  const int u = threadIdx.x % kSliceUnits, q = threadIdx.x / kSliceUnits;
  const int64_t j = j0 + u;
  __syncthreads();  // a previous block of work of this thread block is done with the shared arrays
  for (int rr = threadIdx.x; rr < kRows; rr += kSliceThreads)
    hprev_s[rr] = i0 + rr < p.active ? forward_row(p, d, D, i0 + rr).hprev : nullptr;
  ForwardRow<T> rows[RB];
  bool live[RB];
  T acc[RB][4];
#pragma unroll
  for (int r = 0; r < RB; ++r) {
    const int64_t i = i0 + q + r * kSliceRowGroups;
    live[r] = i < p.active && j < H;
    if (live[r]) rows[r] = forward_row(p, d, D, i);
#pragma unroll
    for (int g = 0; g < 4; ++g) acc[r][g] = live[r] ? rows[r].grow[g * H + j] : T(0);
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
  }
#pragma unroll
  for (int r = 0; r < RB; ++r)
    if (live[r]) forward_finish(p, d, D, rows[r], j, acc[r]);
}

template <typename T, int RB>
__global__ void __launch_bounds__(kSliceThreads) forward_step_slice_kernel(ForwardStepParams<T> p) {
  for_each_work_block(ceil_div(p.hidden, kSliceUnits), ceil_div(p.active, kSliceRowGroups * RB),
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
void forward_step(const ForwardStepParams<T>& p, int directions, cudaStream_t stream) {
  launch_step_kernel<ForwardStep, T>(p, p.hidden, p.active, directions, stream, "forward_step_kernel");
}

template <typename T>
__global__ void bias_sum_kernel(const T* b_ih, const T* b_hh, T* out, int64_t n) {
  for (int64_t e = stride_start(); e < n; e += stride_step())
    out[e] = b_ih[e] + b_hh[e];  // the chain's head (rule 4)
}

// A final state after step len-1 (forward) or step 0 (reverse): h_n from the layer output (rows of
// D*width, this direction's slice at d*width), c_n from the cells (rows of width).
template <typename T>
__global__ void final_state_kernel(const int64_t* lengths, const T* src_fwd, const T* src_rev,
                                   int64_t row_width, int64_t width, bool sliced, T* dst,
                                   int64_t layer, int64_t D, int64_t B) {
  for (int64_t e = stride_start(); e < D * B * width; e += stride_step()) {
    const int64_t d = e / (B * width), b = (e / width) % B, j = e % width;
    const int64_t t = d == 0 ? lengths[b] - 1 : 0;
    const T* src = d == 0 ? src_fwd : src_rev;
    dst[((layer * D + d) * B + b) * width + j] =
        src[(t * B + b) * row_width + (sliced ? d * width : 0) + j];
  }
}

template <typename T>
void launch_final_state(const int64_t* lengths, const T* fwd, const T* rev, int64_t row_width,
                        int64_t width, bool sliced, T* dst, int64_t layer, int64_t D, int64_t B,
                        cudaStream_t stream) {
  launch_kernel("final_state_kernel", final_state_kernel<T>, stride_grid(D * B * width, 256), 256,
                stream, lengths, fwd, rev, row_width, width, sliced, dst, layer, D, B);
}

template <typename T>
void forward_impl(const LstmForwardArgs<T>& a, const ScratchAlloc& scratch, cudaStream_t stream) {
  const LstmShape& S = a.shape;
  const int64_t Tn = S.steps, B = S.batch, H = S.hidden_size, L = S.num_layers, D = S.directions;
  const bool proj = S.proj_size > 0;
  const int64_t RH = proj ? S.proj_size : H;
  const int64_t DH = D * RH, G = 4 * H;
  const StepSchedule sched(a.lengths, Tn, B);
  const DeviceSchedule ds = upload_schedule(sched, a.lengths, B, scratch, stream);
  const int64_t R = ds.rows;
  const StepRows step_rows =
      proj ? upload_step_rows(sched, a.lengths, B, D, scratch, stream) : StepRows{};

  launch_zero_padding(a.y, DH, ds.lengths, Tn, B, stream);
  for (int64_t l = 0; l + 1 < L; ++l)
    launch_zero_padding(a.layer_out + l * Tn * B * DH, DH, ds.lengths, Tn, B, stream);
  for (int64_t ld = 0; ld < L * D; ++ld) {
    launch_zero_padding(a.gates + ld * Tn * B * G, G, ds.lengths, Tn, B, stream);
    launch_zero_padding(a.cells + ld * Tn * B * H, H, ds.lengths, Tn, B, stream);
  }

  const int64_t k_max = S.input_size > DH ? S.input_size : DH;
  T* dropped = (a.dropout.active && L > 1) ? scratch_array<T>(scratch, Tn * B * DH) : nullptr;
  T* wt_ih[2];
  T* wt_hh[2];
  T* wt_hr[2] = {nullptr, nullptr};
  T* m_buf[2] = {nullptr, nullptr};
  T* bias[2];
  for (int64_t d = 0; d < D; ++d) {
    wt_ih[d] = scratch_array<T>(scratch, k_max * G);
    wt_hh[d] = scratch_array<T>(scratch, RH * G);
    bias[d] = scratch_array<T>(scratch, G);
    if (proj) {
      wt_hr[d] = scratch_array<T>(scratch, H * RH);
      m_buf[d] = scratch_array<T>(scratch, Tn * B * H);
    }
  }

  for (int64_t l = 0; l < L; ++l) {
    const int64_t K = layer_input_size(S, l);
    const T* X = layer_input(a, l);
    if (l > 0 && a.dropout.active) {
      launch_apply_dropout(a.dropout, l - 1, X, dropped, DH, ds, B, stream);
      X = dropped;
    }
    T* Y = layer_output(a, l);
    ForwardStepParams<T> p{};
    p.lengths = ds.lengths;
    p.order = ds.order;
    p.batch = B;
    p.hidden = H;
    p.real_hidden = RH;
    p.layer = l;
    p.h0 = a.h0;
    p.c0 = a.c0;
    p.y = Y;
    for (int64_t d = 0; d < D; ++d) {
      const int64_t w = l * D + d;
      launch_transpose(a.weights.w_ih[w], wt_ih[d], G, K, stream);
      launch_transpose(a.weights.w_hh[w], wt_hh[d], G, RH, stream);
      if (proj) launch_transpose(a.weights.w_hr[w], wt_hr[d], RH, H, stream);
      p.m_out[d] = m_buf[d];
      if (S.has_bias) {
        launch_kernel("bias_sum_kernel", bias_sum_kernel<T>, stride_grid(G, 256), 256, stream,
                      a.weights.b_ih[w], a.weights.b_hh[w], bias[d], G);
      }
      p.gates[d] = a.gates + w * Tn * B * G;
      p.cells[d] = a.cells + w * Tn * B * H;
      p.wt_hh[d] = wt_hh[d];
      gemm_chain<T, false>(R, G, K, Rows<const T>{X, ds.valid, K, 0},
                           Rows<const T>{wt_ih[d], nullptr, G, 0},
                           Rows<T>{p.gates[d], ds.valid, G, 0},
                           S.has_bias ? GemmInit::kVector : GemmInit::kZero, bias[d], stream);
    }
    // Steps no row reaches (every length below T) are not launched: they have no work, and a launch
    // with no rows would be an empty grid.
    for (int64_t s = 0; s < Tn && sched.active[s] > 0; ++s) {
      p.step = s;
      p.active = sched.active[s];
      forward_step(p, static_cast<int>(D), stream);
      // h = W_hr m for this step's rows: one chain per element over k = 0 .. H-1, from 0.
      for (int64_t d = 0; proj && d < D; ++d) {
        const int64_t* rows = step_rows.rows + step_rows.offset(d, s);
        gemm_chain<T, false>(p.active, RH, H, Rows<const T>{m_buf[d], rows, H, 0},
                             Rows<const T>{wt_hr[d], nullptr, RH, 0}, Rows<T>{Y, rows, DH, d * RH},
                             GemmInit::kZero, static_cast<const T*>(nullptr), stream);
      }
    }
    launch_final_state<T>(ds.lengths, Y, Y, DH, RH, true, a.h_n, l, D, B, stream);
    launch_final_state<T>(ds.lengths, p.cells[0], p.cells[D - 1], H, H, false, a.c_n, l, D, B,
                          stream);
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
