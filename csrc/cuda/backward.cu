// The LSTM backward on the GPU, the same chains as csrc/cpu/lstm_cpu_impl.h (ARITHMETIC.md rule 8):
// per layer, steps in reverse processing order (one launch per step, both directions in grid z),
// each thread continuing dh as a chain over the gate rows of da(next step) . W_hh and running the
// cell's backward; then the input gradient and the weight gradients as fixed-order GEMMs.
#include "gemm_chain.cuh"

namespace detlstm {
namespace cuda {

// What one step launch does. Without projections dh feeds the cell directly (kFused). With them a
// step is three launches: kChainOnly writes dh, a GEMM makes dm = W_hr^T dh, kCellOnly runs the cell.
enum class BackwardMode : int { kFused, kChainOnly, kCellOnly, kFinal };

template <typename T>
struct BackwardStepParams {
  const int64_t* lengths;
  const int64_t* order;
  int64_t batch, hidden, real_hidden, layer, step, active;  // real_hidden: width of h (R)
  BackwardMode mode;  // kFinal: dh0 = chain over da(step 0) from 0, no cell
  const T* dy;        // gradient w.r.t. this layer's output (T, B, D*R)
  const T* dh_n;      // (L*D, B, R)
  const T* dc_n;      // (L*D, B, H)
  const T* c0;
  const T* gates[2];  // activated gates (T, B, 4H)
  const T* cells[2];
  const T* w_hh[2];   // (4H, R): consecutive threads read consecutive columns
  T* da[2];           // gate pre-activation gradients (T, B, 4H)
  T* dc;              // (D, B, H): gradient reaching c_prev, carried between launches
  T* dh0;             // (L*D, B, R)
  T* dh_out[2];       // kChainOnly: dh of every (t, b) (T, B, R)
  const T* dm_in[2];  // kCellOnly: dm of every (t, b) (T, B, H)
};

// One row of a step as a backward thread sees it, for unit j.
template <typename T>
struct BackwardRow {
  const T* src;  // da of the next processing step (the dh chain's left factor), or null: no chain
  int64_t b, t;
  bool last;  // the row's last step: dh_n and dc_n enter here
  T acc;      // the chain's head: dy (+ dh_n), dm (kCellOnly) or 0 (kFinal)
};

template <typename T>
__device__ BackwardRow<T> backward_row(const BackwardStepParams<T>& p, int d, int D, int64_t i,
                                       bool live, int64_t j) {
  const int64_t H = p.hidden, G = 4 * H, B = p.batch, RH = p.real_hidden, DH = D * RH;
  BackwardRow<T> row;
  row.b = p.order[i];
  const int64_t len = p.lengths[row.b];
  if (p.mode == BackwardMode::kFinal) {
    row.last = false;
    row.t = step_time(d, 0, len);
    row.src = live ? pick(p.da, d) + (row.t * B + row.b) * G : nullptr;
    row.acc = T(0);
    return row;
  }
  row.t = step_time(d, p.step, len);
  row.last = p.step == len - 1;
  if (p.mode == BackwardMode::kCellOnly) {
    row.src = nullptr;
    row.acc = pick(p.dm_in, d)[(row.t * B + row.b) * H + j];
    return row;
  }
  const T dy = p.dy[(row.t * B + row.b) * DH + d * RH + j];
  row.acc = row.last ? dy + p.dh_n[((p.layer * D + d) * B + row.b) * RH + j] : dy;
  row.src = live && !row.last ? pick(p.da, d) + (step_time(d, p.step + 1, len) * B + row.b) * G
                              : nullptr;
  return row;
}

// What a row's unit j does once its dh chain is complete: store dh (kChainOnly, kFinal) or run the
// cell's backward (kFused, kCellOnly).
template <typename T>
__device__ void backward_finish(const BackwardStepParams<T>& p, int d, int D,
                                const BackwardRow<T>& row, int64_t j, T dh) {
  const int64_t H = p.hidden, G = 4 * H, B = p.batch, RH = p.real_hidden;
  const int64_t b = row.b, t = row.t;
  if (p.mode == BackwardMode::kFinal) {
    p.dh0[((p.layer * D + d) * B + b) * RH + j] = dh;
    return;
  }
  if (p.mode == BackwardMode::kChainOnly) {
    pick(p.dh_out, d)[(t * B + b) * RH + j] = dh;
    return;
  }
  const int64_t state_c = ((p.layer * D + d) * B + b) * H + j;
  const T* g = pick(p.gates, d) + (t * B + b) * G;
  const T c_prev =
      p.step == 0 ? p.c0[state_c] : pick(p.cells, d)[(prev_time(d, t) * B + b) * H + j];
  const T dc_next = row.last ? p.dc_n[state_c] : p.dc[(d * B + b) * H + j];
  const CellGrad<T> cg = lstm_cell_backward(dh, dc_next, g[j], g[H + j], g[2 * H + j], g[3 * H + j],
                                            pick(p.cells, d)[(t * B + b) * H + j], c_prev);
  T* da = pick(p.da, d) + (t * B + b) * G;
  da[j] = cg.da_i;
  da[H + j] = cg.da_f;
  da[2 * H + j] = cg.da_g;
  da[3 * H + j] = cg.da_o;
  p.dc[(d * B + b) * H + j] = cg.dc_prev;
}

// The units a step launch covers: the cell's H, or the R of dh for a chain-only launch.
template <typename T>
__host__ __device__ int64_t backward_units(const BackwardStepParams<T>& p) {
  const bool cell = p.mode == BackwardMode::kFused || p.mode == BackwardMode::kCellOnly;
  return cell ? p.hidden : p.real_hidden;
}

// Thread (unit j, RB rows from i0) of direction blockIdx.z: dh as one chain over the gate rows n of
// da(next step) . W_hh, W_hh and da read straight from global memory (L2).
template <typename T, int RB>
__device__ void backward_step_rows(const BackwardStepParams<T>& p, int64_t j, int64_t i0) {
  const int d = blockIdx.z, D = gridDim.z;
  const int64_t G = 4 * p.hidden, RH = p.real_hidden;
  if (j >= backward_units(p)) return;
  BackwardRow<T> rows[RB];
  bool live[RB];
#pragma unroll
  for (int r = 0; r < RB; ++r) {
    live[r] = i0 + r < p.active;  // row i0 is always live
    rows[r] = backward_row(p, d, D, live[r] ? i0 + r : i0, live[r], j);
  }
  if (p.mode != BackwardMode::kCellOnly) {
    const T* w = pick(p.w_hh, d) + j;
    for (int64_t n = 0; n < G; ++n) {
      const T wv = w[n * RH];
#pragma unroll
      for (int r = 0; r < RB; ++r)
        if (rows[r].src) rows[r].acc = fma_rn(rows[r].src[n], wv, rows[r].acc);
    }
  }
#pragma unroll
  for (int r = 0; r < RB; ++r)
    if (live[r]) backward_finish(p, d, D, rows[r], j, rows[r].acc);
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
// gate rows at a time (see forward_step_slice). A row without a chain skips the fma, never adds
// zeros. Every thread of the block calls this (it holds barriers).
template <typename T, int RB>
__device__ void backward_step_slice(const BackwardStepParams<T>& p, int64_t j0, int64_t i0) {
  constexpr int kRows = kSliceRowGroups * RB;
  __shared__ T w_s[kSliceK][kSliceUnits];
  __shared__ T a_s[kRows][kSliceK + 1];
  __shared__ const T* src_s[kRows];
  const int d = blockIdx.z, D = gridDim.z;
  const int64_t G = 4 * p.hidden, RH = p.real_hidden;
  const int u = threadIdx.x % kSliceUnits, q = threadIdx.x / kSliceUnits;
  const int64_t j = j0 + u;
  __syncthreads();  // a previous block of work of this thread block is done with the shared arrays
  // the rows' chain sources do not depend on the unit: any in-range j does for looking them up
  for (int rr = threadIdx.x; rr < kRows; rr += kSliceThreads)
    src_s[rr] = p.mode != BackwardMode::kCellOnly && i0 + rr < p.active
                    ? backward_row(p, d, D, i0 + rr, true, int64_t(0)).src
                    : nullptr;
  BackwardRow<T> rows[RB];
  bool live[RB];
#pragma unroll
  for (int r = 0; r < RB; ++r) {
    const int64_t i = i0 + q + r * kSliceRowGroups;
    live[r] = i < p.active && j < backward_units(p);
    if (live[r])
      rows[r] = backward_row(p, d, D, i, true, j);
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
    }
  }
#pragma unroll
  for (int r = 0; r < RB; ++r)
    if (live[r]) backward_finish(p, d, D, rows[r], j, rows[r].acc);
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
void backward_step(const BackwardStepParams<T>& p, int directions, cudaStream_t stream) {
  launch_step_kernel<BackwardStep, T>(p, backward_units(p), p.active, directions, stream,
                                      "backward_step_kernel");
}

// h_prev of the valid row v in direction d: what multiplied W_hh at that step.
template <typename T>
struct HPrevRows {
  const T* h0;
  const T* y;
  const int64_t* valid;
  const int64_t* lengths;
  int64_t batch, hidden, width, direction, layer_direction;
  __device__ const T* operator()(int64_t v) const {
    const int64_t r = valid[v], t = r / batch, b = r % batch;
    const bool first = direction == 0 ? t == 0 : t == lengths[b] - 1;
    if (first) return h0 + (layer_direction * batch + b) * hidden;
    return y + (prev_time(direction, t) * batch + b) * width + direction * hidden;
  }
};

// db[n] = chain of adds over the valid rows in storage order, from 0; b_ih and b_hh get the same.
template <typename T>
__global__ void bias_grad_kernel(const T* da, const int64_t* valid, int64_t rows, int64_t G,
                                 T* db_ih, T* db_hh) {
  for (int64_t n = stride_start(); n < G; n += stride_step()) {
    T acc = T(0);
    for (int64_t v = 0; v < rows; ++v) acc = acc + da[valid[v] * G + n];
    db_ih[n] = acc;
    db_hh[n] = acc;
  }
}

// m = o * tanh(c) of every valid (t, b), as the forward's cell computed it (for dW_hr).
template <typename T>
__global__ void cell_output_kernel(const T* gates, const T* cells, const int64_t* valid,
                                   int64_t rows, int64_t H, T* m) {
  for (int64_t e = stride_start(); e < rows * H; e += stride_step()) {
    const int64_t r = valid[e / H], j = e % H;
    m[r * H + j] = gates[r * 4 * H + 3 * H + j] * canonical_tanh(cells[r * H + j]);
  }
}

template <typename T>
void backward_impl(const LstmBackwardArgs<T>& a, const ScratchAlloc& scratch, cudaStream_t stream) {
  const LstmForwardArgs<T>& f = a.fwd;
  const LstmShape& S = f.shape;
  const int64_t Tn = S.steps, B = S.batch, H = S.hidden_size, L = S.num_layers, D = S.directions;
  const bool proj = S.proj_size > 0;
  const int64_t RH = proj ? S.proj_size : H;
  const int64_t DH = D * RH, G = 4 * H;
  const StepSchedule sched(f.lengths, Tn, B);
  const DeviceSchedule ds = upload_schedule(sched, f.lengths, B, scratch, stream);
  const int64_t R = ds.rows;
  const StepRows step_rows =
      proj ? upload_step_rows(sched, f.lengths, B, D, scratch, stream) : StepRows{};

  launch_zero_padding(a.dx, S.input_size, ds.lengths, Tn, B, stream);
  T* dropped = (f.dropout.active && L > 1) ? scratch_array<T>(scratch, Tn * B * DH) : nullptr;
  T* grad_buf[2] = {nullptr, nullptr};
  if (L > 1)
    for (auto& buf : grad_buf) buf = scratch_array<T>(scratch, Tn * B * DH);
  T* da[2];
  for (int64_t d = 0; d < D; ++d) da[d] = scratch_array<T>(scratch, Tn * B * G);
  T* dc = scratch_array<T>(scratch, D * B * H);
  // with projections: dh and dm = W_hr^T dh of every (t, b), and the cell outputs m for dW_hr
  T* dh_all[2] = {nullptr, nullptr};
  T* dm_all[2] = {nullptr, nullptr};
  T* m_all[2] = {nullptr, nullptr};
  for (int64_t d = 0; proj && d < D; ++d) {
    dh_all[d] = scratch_array<T>(scratch, Tn * B * RH);
    dm_all[d] = scratch_array<T>(scratch, Tn * B * H);
    m_all[d] = scratch_array<T>(scratch, Tn * B * H);
  }

  const T* dY = a.dy;
  for (int64_t l = L - 1; l >= 0; --l) {
    const int64_t K = layer_input_size(S, l);
    const T* X = layer_input(f, l);
    if (l > 0 && f.dropout.active) {
      launch_apply_dropout(f.dropout, l - 1, X, dropped, DH, ds, B, stream);
      X = dropped;
    }
    const T* Y = layer_output(f, l);

    BackwardStepParams<T> p{};
    p.lengths = ds.lengths;
    p.order = ds.order;
    p.batch = B;
    p.hidden = H;
    p.real_hidden = RH;
    p.layer = l;
    p.dy = dY;
    p.dh_n = a.dh_n;
    p.dc_n = a.dc_n;
    p.c0 = f.c0;
    p.dc = dc;
    p.dh0 = a.dh0;
    for (int64_t d = 0; d < D; ++d) {
      p.gates[d] = f.gates + (l * D + d) * Tn * B * G;
      p.cells[d] = f.cells + (l * D + d) * Tn * B * H;
      p.w_hh[d] = f.weights.w_hh[l * D + d];
      p.da[d] = da[d];
      p.dh_out[d] = dh_all[d];
      p.dm_in[d] = dm_all[d];
    }
    for (int64_t s = Tn - 1; s >= 0; --s) {
      p.step = s;
      p.active = sched.active[s];
      if (p.active == 0) continue;  // a step no row reaches: nothing to do, and no empty grid
      if (!proj) {
        p.mode = BackwardMode::kFused;
        backward_step(p, static_cast<int>(D), stream);
        continue;
      }
      p.mode = BackwardMode::kChainOnly;
      backward_step(p, static_cast<int>(D), stream);
      // dm = W_hr^T dh: one chain per element over q = 0 .. P-1, from 0.
      for (int64_t d = 0; d < D; ++d) {
        const int64_t* rows = step_rows.rows + step_rows.offset(d, s);
        gemm_chain<T, false>(p.active, H, RH, Rows<const T>{dh_all[d], rows, RH, 0},
                             Rows<const T>{f.weights.w_hr[l * D + d], nullptr, H, 0},
                             Rows<T>{dm_all[d], rows, H, 0}, GemmInit::kZero,
                             static_cast<const T*>(nullptr), stream);
      }
      p.mode = BackwardMode::kCellOnly;
      backward_step(p, static_cast<int>(D), stream);
    }
    p.step = 0;
    p.active = B;
    p.mode = BackwardMode::kFinal;
    backward_step(p, static_cast<int>(D), stream);
    for (int64_t d = 0; d < D; ++d)
      check_cuda(cudaMemcpyAsync(a.dc0 + (l * D + d) * B * H, dc + d * B * H, B * H * sizeof(T),
                                 cudaMemcpyDeviceToDevice, stream),
                 "copy dc0");

    // Input gradient: forward direction's gate rows, then the reverse's, one chain from 0.
    T* dX = l == 0 ? a.dx : grad_buf[l % 2];
    for (int64_t d = 0; d < D; ++d)
      gemm_chain<T, false>(R, K, G, Rows<const T>{da[d], ds.valid, G, 0},
                           Rows<const T>{f.weights.w_ih[l * D + d], nullptr, K, 0},
                           Rows<T>{dX, ds.valid, K, 0}, d == 0 ? GemmInit::kZero : GemmInit::kFromC,
                           static_cast<const T*>(nullptr), stream);

    // Weight gradients: chains over the valid (t, b) in storage order, from 0.
    for (int64_t d = 0; d < D; ++d) {
      const int64_t w = l * D + d;
      gemm_chain<T, true>(G, K, R, Rows<const T>{da[d], ds.valid, G, 0},
                          Rows<const T>{X, ds.valid, K, 0}, Rows<T>{a.dw_ih[w], nullptr, K, 0},
                          GemmInit::kZero, static_cast<const T*>(nullptr), stream);
      gemm_chain<T, true>(G, RH, R, Rows<const T>{da[d], ds.valid, G, 0},
                          HPrevRows<T>{f.h0, Y, ds.valid, ds.lengths, B, RH, DH, d, w},
                          Rows<T>{a.dw_hh[w], nullptr, RH, 0}, GemmInit::kZero,
                          static_cast<const T*>(nullptr), stream);
      if (proj) {
        // dW_hr[q][k] = chain over the valid (t, b) in storage order of dh[q] * m[k], from 0.
        launch_kernel("cell_output_kernel", cell_output_kernel<T>, stride_grid(R * H, 256), 256,
                      stream, p.gates[d], p.cells[d], ds.valid, R, H, m_all[d]);
        gemm_chain<T, true>(RH, H, R, Rows<const T>{dh_all[d], ds.valid, RH, 0},
                            Rows<const T>{m_all[d], ds.valid, H, 0},
                            Rows<T>{a.dw_hr[w], nullptr, H, 0}, GemmInit::kZero,
                            static_cast<const T*>(nullptr), stream);
      }
      if (S.has_bias) {
        launch_kernel("bias_grad_kernel", bias_grad_kernel<T>, stride_grid(G, 128), 128, stream,
                      da[d], ds.valid, R, G, a.db_ih[w], a.db_hh[w]);
      }
    }

    if (l > 0) {
      if (f.dropout.active) launch_apply_dropout(f.dropout, l - 1, dX, dX, DH, ds, B, stream);
      dY = dX;
    }
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
