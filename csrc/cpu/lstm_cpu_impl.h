// The CPU LSTM: the whole stack (all layers, both directions) forward and backward, following
// ARITHMETIC.md. Compiled once per instruction-set variant: the including file defines
// DETLSTM_CPU_VARIANT (the variant's namespace), DETLSTM_MATH_NS and DETLSTM_CPU_AVX2, and has
// included the standard headers, lstm_cpu.h and the csrc/common headers.
//
// Work is proportional to the sum of the lengths: only valid (step, row) pairs are computed, and a
// sequence's reverse direction starts at its own last step.

namespace detlstm {
namespace cpu {
namespace DETLSTM_CPU_VARIANT {

namespace math = ::DETLSTM_MATH_NS;

#include "gemm_chain.h"

using ::detlstm::StepSchedule;

// Time index of processing step s of row b: forward runs t = s, reverse runs t = len-1-s.
inline int64_t step_time(int64_t direction, int64_t s, int64_t length) {
  return direction == 0 ? s : length - 1 - s;
}
// The time index whose state feeds step t (t-1 forward, t+1 reverse).
inline int64_t prev_time(int64_t direction, int64_t t) { return direction == 0 ? t - 1 : t + 1; }

// Hidden units per task in a step's parallel region: a multiple of the vector kernel's kNR so a
// block's gate columns start on a panel boundary whenever H is a multiple of kNR too.
constexpr int64_t kUnitBlock = 16;

template <typename T>
std::vector<T> transposed(const T* w, int64_t rows, int64_t cols) {
  // by 32 x 32 blocks: both the reads and the writes stay within a few cache lines per block
  constexpr int64_t kBlock = 32;
  std::vector<T> out(static_cast<size_t>(rows * cols));
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock)
    for (int64_t c0 = 0; c0 < cols; c0 += kBlock)
      for (int64_t c = c0; c < std::min(c0 + kBlock, cols); ++c)
        for (int64_t r = r0; r < std::min(r0 + kBlock, rows); ++r)
          out[c * rows + r] = w[r * cols + c];
  return out;
}

// Layer `layer`'s output y (valid rows only) with dropout applied, into out (same layout).
template <typename T>
void apply_dropout(const DropoutParams& dp, int64_t layer, const T* y, T* out, int64_t width,
                   const StepSchedule& sched, int64_t B, const ParallelFor& parallel_for) {
  const T scale = static_cast<T>(dp.scale);
  parallel_for(static_cast<int64_t>(sched.valid.size()), 4, [&](int64_t begin, int64_t end) {
    DenormalGuard guard;
    for (int64_t v = begin; v < end; ++v) {
      const int64_t r = sched.valid[v], t = r / B, b = r % B;
      const T* src = y + r * width;
      T* dst = out + r * width;
      for (int64_t f0 = 0; f0 < width; f0 += 4) {
        const math::Philox4x32 draws =
            math::dropout_draws(dp.seed, static_cast<uint32_t>(layer), static_cast<uint32_t>(t),
                                static_cast<uint32_t>(b), static_cast<uint32_t>(f0 / 4));
        for (int64_t q = 0; q < 4 && f0 + q < width; ++q)
          dst[f0 + q] = math::dropout_apply(src[f0 + q], draws.v[q], dp.threshold, scale);
      }
    }
  });
}

template <typename T>
void zero_padding(T* base, int64_t width, const int64_t* lengths, int64_t steps, int64_t B) {
  for (int64_t t = 0; t < steps; ++t)
    for (int64_t b = 0; b < B; ++b)
      if (t >= lengths[b]) std::fill(base + (t * B + b) * width, base + (t * B + b + 1) * width, T(0));
}

// The cell of units j0 .. j1-1 of one row: g holds the four pre-activation blocks (i, f, g, o; H
// each) and receives the activated gates; c_out and h_out receive c and h = o * tanh(c).
template <typename T>
void cell_forward_row(T* g, const T* c_prev, T* c_out, T* h_out, int64_t H, int64_t j0, int64_t j1) {
  int64_t j = j0;
#if DETLSTM_CPU_AVX2
  if constexpr (std::is_same<T, float>::value) {  // eight units at a time, same bits
    using V = math::V8;
    for (; j + 8 <= j1; j += 8) {
      const math::CellState<V> st =
          math::lstm_cell_forward(V::load(g + j), V::load(g + H + j), V::load(g + 2 * H + j),
                                  V::load(g + 3 * H + j), V::load(c_prev + j));
      st.i.store(g + j);
      st.f.store(g + H + j);
      st.g.store(g + 2 * H + j);
      st.o.store(g + 3 * H + j);
      st.c.store(c_out + j);
      st.h.store(h_out + j);
    }
  }
#endif
  for (; j < j1; ++j) {
    const math::CellState<T> st =
        math::lstm_cell_forward(g[j], g[H + j], g[2 * H + j], g[3 * H + j], c_prev[j]);
    g[j] = st.i;
    g[H + j] = st.f;
    g[2 * H + j] = st.g;
    g[3 * H + j] = st.o;
    c_out[j] = st.c;
    h_out[j] = st.h;
  }
}

template <typename T>
void lstm_forward(const LstmForwardArgs<T>& a, const ParallelFor& parallel_for) {
  const LstmShape& S = a.shape;
  const int64_t Tn = S.steps, B = S.batch, H = S.hidden_size, L = S.num_layers, D = S.directions;
  // R (here RH): the width of h, proj_size with projections (h = W_hr (o * tanh c)), else H.
  const bool proj = S.proj_size > 0;
  const int64_t RH = proj ? S.proj_size : H;
  const int64_t DH = D * RH, G = 4 * H;
  const int64_t* len = a.lengths;
  const StepSchedule sched(len, Tn, B);
  const int64_t R = static_cast<int64_t>(sched.valid.size());

  zero_padding(a.y, DH, len, Tn, B);
  for (int64_t l = 0; l + 1 < L; ++l) zero_padding(a.layer_out + l * Tn * B * DH, DH, len, Tn, B);
  for (int64_t ld = 0; ld < L * D; ++ld) {
    zero_padding(a.gates + ld * Tn * B * G, G, len, Tn, B);
    zero_padding(a.cells + ld * Tn * B * H, H, len, Tn, B);
  }

  std::vector<T> dropped;
  if (a.dropout.active && L > 1) dropped.assign(static_cast<size_t>(Tn * B * DH), T(0));

  std::vector<const T*> a_rows;
  std::vector<T*> c_rows;
  std::vector<const T*> b_rows;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t K = layer_input_size(S, l);
    const T* X = layer_input(a, l);
    if (l > 0 && a.dropout.active) {
      apply_dropout(a.dropout, l - 1, X, dropped.data(), DH, sched, B, parallel_for);
      X = dropped.data();
    }
    T* Y = layer_output(a, l);

    // Per direction: W_ih^T (K, 4H), W_hh^T (R, 4H) so a row of B is contiguous over gate rows,
    // W_hr^T (H, P), and the chain's head b_ih + b_hh (rule 4).
    std::vector<std::vector<T>> wt_ih(D), wt_hh(D), wt_hr(D), bias(D);
    std::vector<T*> gates(D), cells(D);
    for (int64_t d = 0; d < D; ++d) {
      const int64_t w = l * D + d;
      wt_ih[d] = transposed(a.weights.w_ih[w], G, K);
      wt_hh[d] = transposed(a.weights.w_hh[w], G, RH);
      if (proj) wt_hr[d] = transposed(a.weights.w_hr[w], RH, H);
      bias[d].assign(static_cast<size_t>(G), T(0));
      if (S.has_bias)
        for (int64_t n = 0; n < G; ++n) bias[d][n] = a.weights.b_ih[w][n] + a.weights.b_hh[w][n];
      gates[d] = a.gates + w * Tn * B * G;
      cells[d] = a.cells + w * Tn * B * H;
    }

    // Input part of every valid step's pre-activations: the head of each chain, all steps at once.
    {
      a_rows.resize(R);
      c_rows.resize(D * R);
      b_rows.resize(D * K);
      std::vector<GemmGroup<T>> groups;
      for (int64_t v = 0; v < R; ++v) a_rows[v] = X + sched.valid[v] * K;
      std::vector<std::vector<T>> panels(D);
      for (int64_t d = 0; d < D; ++d) {
        for (int64_t v = 0; v < R; ++v) c_rows[d * R + v] = gates[d] + sched.valid[v] * G;
        for (int64_t p = 0; p < K; ++p) b_rows[d * K + p] = wt_ih[d].data() + p * G;
        panels[d] = panels_for_vector_kernel(b_rows.data() + d * K, K, G);
        groups.push_back({R, a_rows.data(), b_rows.data() + d * K, c_rows.data() + d * R,
                          Init::kVector, bias[d].data(), panels_or_null(panels[d])});
      }
      gemm_chain<T, false>(groups, G, K, parallel_for);
    }

    // The recurrence: each step continues the chains with h_prev . W_hh^T, then runs the cell.
    b_rows.resize(D * RH);
    std::vector<std::vector<T>> hh_panels(D);
    for (int64_t d = 0; d < D; ++d) {
      for (int64_t p = 0; p < RH; ++p) b_rows[d * RH + p] = wt_hh[d].data() + p * G;
      hh_panels[d] = panels_for_vector_kernel(b_rows.data() + d * RH, RH, G);
    }
    std::vector<const T*> hr_rows(proj ? D * H : 0);
    for (int64_t d = 0; proj && d < D; ++d)
      for (int64_t p = 0; p < H; ++p) hr_rows[d * H + p] = wt_hr[d].data() + p * RH;
    a_rows.resize(D * B);
    c_rows.resize(D * B);
    std::vector<const T*> c_prev_rows(D * B);
    // With projections the cell's output m = o * tanh(c) goes here first, then h = W_hr m.
    std::vector<T> m_buf(proj ? static_cast<size_t>(D * B * H) : 0);
    std::vector<const T*> m_rows(proj ? D * B : 0);
    std::vector<T*> h_rows(proj ? D * B : 0);
    for (int64_t s = 0; s < Tn; ++s) {
      const int64_t n = sched.active[s];
      std::vector<GemmGroup<T>> groups, projections;
      for (int64_t d = 0; d < D; ++d) {
        for (int64_t i = 0; i < n; ++i) {
          const int64_t b = sched.order[i], t = step_time(d, s, len[b]);
          if (s == 0) {
            a_rows[d * B + i] = a.h0 + ((l * D + d) * B + b) * RH;
            c_prev_rows[d * B + i] = a.c0 + ((l * D + d) * B + b) * H;
          } else {
            const int64_t tp = prev_time(d, t);
            a_rows[d * B + i] = Y + (tp * B + b) * DH + d * RH;
            c_prev_rows[d * B + i] = cells[d] + (tp * B + b) * H;
          }
          c_rows[d * B + i] = gates[d] + (t * B + b) * G;
          if (proj) {
            m_rows[d * B + i] = m_buf.data() + (d * B + i) * H;
            h_rows[d * B + i] = Y + (t * B + b) * DH + d * RH;
          }
        }
        groups.push_back({n, a_rows.data() + d * B, b_rows.data() + d * RH, c_rows.data() + d * B,
                          Init::kFromC, nullptr, panels_or_null(hh_panels[d])});
        if (proj)  // h = W_hr m: one chain per element over k = 0 .. H-1, from 0 (rule 4)
          projections.push_back({n, m_rows.data() + d * B, hr_rows.data() + d * H,
                                 h_rows.data() + d * B, Init::kZero, nullptr});
      }
      // A hidden unit's four gates, its cell and its h depend on no other unit of the step: one task
      // per (direction, block of kUnitBlock units) runs the recurrent product for the block's gate
      // columns over all rows, then their cells, reading its slice of W_hh^T once per step. With
      // projections, h = W_hr m needs every unit of a row: a second region, by row tiles.
      const int64_t unit_blocks = (H + kUnitBlock - 1) / kUnitBlock;
      parallel_for(D * unit_blocks, 1, [&](int64_t begin, int64_t end) {
        DenormalGuard guard;
        for (int64_t task = begin; task < end; ++task) {
          const int64_t d = task / unit_blocks, u0 = (task % unit_blocks) * kUnitBlock;
          const int64_t u1 = std::min(u0 + kUnitBlock, H);
          for (int64_t gate = 0; gate < 4; ++gate)
            gemm_columns<T, false>(groups[d], RH, gate * H + u0, gate * H + u1);
          for (int64_t i = 0; i < n; ++i) {
            const int64_t b = sched.order[i], t = step_time(d, s, len[b]);
            T* h_out = proj ? m_buf.data() + (d * B + i) * H : Y + (t * B + b) * DH + d * RH;
            cell_forward_row<T>(c_rows[d * B + i], c_prev_rows[d * B + i],
                                cells[d] + (t * B + b) * H, h_out, H, u0, u1);
          }
        }
      });
      if (proj) {
        const int64_t tiles = (n + kMR - 1) / kMR;
        parallel_for(D * tiles, 1, [&](int64_t begin, int64_t end) {
          DenormalGuard guard;
          for (int64_t task = begin; task < end; ++task)
            gemm_rows<T, false>(projections[task / tiles], RH, H, (task % tiles) * kMR);
        });
      }
    }

    // Final states: forward after step len-1, reverse after step 0.
    for (int64_t d = 0; d < D; ++d)
      for (int64_t b = 0; b < B; ++b) {
        const int64_t t = d == 0 ? len[b] - 1 : 0;
        const T* h = Y + (t * B + b) * DH + d * RH;
        std::copy(h, h + RH, a.h_n + ((l * D + d) * B + b) * RH);
        std::copy(cells[d] + (t * B + b) * H, cells[d] + (t * B + b) * H + H,
                  a.c_n + ((l * D + d) * B + b) * H);
      }
  }
}

// The cell's backward for units j0 .. j1-1 of one row: dh (the gradient reaching h, or m with
// projections) and dc (the gradient reaching c from the step after, replaced by the one reaching
// c_prev) in; the gate pre-activation gradients da (i, f, g, o blocks) out.
template <typename T>
void cell_backward_row(const T* dh, T* dc, const T* g, const T* c, const T* c_prev, T* da,
                       int64_t H, int64_t j0, int64_t j1) {
  int64_t j = j0;
#if DETLSTM_CPU_AVX2
  if constexpr (std::is_same<T, float>::value) {  // eight units at a time, same bits
    using V = math::V8;
    for (; j + 8 <= j1; j += 8) {
      const math::CellGrad<V> cg = math::lstm_cell_backward(
          V::load(dh + j), V::load(dc + j), V::load(g + j), V::load(g + H + j),
          V::load(g + 2 * H + j), V::load(g + 3 * H + j), V::load(c + j), V::load(c_prev + j));
      cg.da_i.store(da + j);
      cg.da_f.store(da + H + j);
      cg.da_g.store(da + 2 * H + j);
      cg.da_o.store(da + 3 * H + j);
      cg.dc_prev.store(dc + j);
    }
  }
#endif
  for (; j < j1; ++j) {
    const math::CellGrad<T> cg = math::lstm_cell_backward(dh[j], dc[j], g[j], g[H + j], g[2 * H + j],
                                                          g[3 * H + j], c[j], c_prev[j]);
    da[j] = cg.da_i;
    da[H + j] = cg.da_f;
    da[2 * H + j] = cg.da_g;
    da[3 * H + j] = cg.da_o;
    dc[j] = cg.dc_prev;
  }
}

template <typename T>
void lstm_backward(const LstmBackwardArgs<T>& a, const ParallelFor& parallel_for) {
  const LstmForwardArgs<T>& f = a.fwd;
  const LstmShape& S = f.shape;
  const int64_t Tn = S.steps, B = S.batch, H = S.hidden_size, L = S.num_layers, D = S.directions;
  const bool proj = S.proj_size > 0;
  const int64_t RH = proj ? S.proj_size : H;
  const int64_t DH = D * RH, G = 4 * H;
  const int64_t* len = f.lengths;
  const StepSchedule sched(len, Tn, B);
  const int64_t R = static_cast<int64_t>(sched.valid.size());

  zero_padding(a.dx, S.input_size, len, Tn, B);

  std::vector<T> dropped;
  if (f.dropout.active && L > 1) dropped.assign(static_cast<size_t>(Tn * B * DH), T(0));
  // Gradient w.r.t. the current layer's output, and the one being built for the layer below.
  std::vector<T> grad_buf[2];
  if (L > 1)
    for (auto& buf : grad_buf) buf.assign(static_cast<size_t>(Tn * B * DH), T(0));
  std::vector<std::vector<T>> da(D, std::vector<T>(static_cast<size_t>(Tn * B * G), T(0)));
  // dh of every (t, b) (kept: the projection's weight gradient needs it), dc carried per row, and
  // with projections dm = W_hr^T dh, the gradient reaching the cell's output.
  std::vector<std::vector<T>> dh(D, std::vector<T>(static_cast<size_t>(Tn * B * RH), T(0)));
  std::vector<T> dc(static_cast<size_t>(D * B * H)), dm(proj ? static_cast<size_t>(D * B * H) : 0);
  std::vector<std::vector<T>> m_all(proj ? D : 0, std::vector<T>(static_cast<size_t>(Tn * B * H), T(0)));

  std::vector<const T*> a_rows, b_rows;
  std::vector<T*> c_rows;
  const T* dY = a.dy;
  for (int64_t l = L - 1; l >= 0; --l) {
    const int64_t K = layer_input_size(S, l);
    const T* X = layer_input(f, l);
    if (l > 0 && f.dropout.active) {
      apply_dropout(f.dropout, l - 1, X, dropped.data(), DH, sched, B, parallel_for);
      X = dropped.data();
    }
    const T* Y = layer_output(f, l);
    std::vector<const T*> gates(D), cells(D);
    for (int64_t d = 0; d < D; ++d) {
      gates[d] = f.gates + (l * D + d) * Tn * B * G;
      cells[d] = f.cells + (l * D + d) * Tn * B * H;
    }
    // h_prev of (t, b) in direction d: what multiplied W_hh at that step.
    auto h_prev = [&](int64_t d, int64_t t, int64_t b) -> const T* {
      const bool first = d == 0 ? t == 0 : t == len[b] - 1;
      if (first) return f.h0 + ((l * D + d) * B + b) * RH;
      return Y + (prev_time(d, t) * B + b) * DH + d * RH;
    };

    // Steps in reverse processing order. dh of a row starts as its output gradient (plus dh_n at its
    // last step) and continues as one chain over the gate rows n = 0 .. 4H-1 of da(next step) * W_hh.
    b_rows.resize(D * G);
    std::vector<std::vector<T>> hh_panels(D);
    for (int64_t d = 0; d < D; ++d) {
      for (int64_t p = 0; p < G; ++p) b_rows[d * G + p] = f.weights.w_hh[l * D + d] + p * RH;
      hh_panels[d] = panels_for_vector_kernel(b_rows.data() + d * G, G, RH);
    }
    std::vector<const T*> hr_rows(proj ? D * RH : 0);
    std::vector<T*> dh_rows(D * B), dm_rows(proj ? D * B : 0);
    for (int64_t d = 0; proj && d < D; ++d)
      for (int64_t q = 0; q < RH; ++q) hr_rows[d * RH + q] = f.weights.w_hr[l * D + d] + q * H;
    a_rows.resize(D * B);
    c_rows.resize(D * B);
    for (int64_t s = Tn - 1; s >= 0; --s) {
      const int64_t n = sched.active[s], n_next = sched.active[s + 1];
      // Rows i < n_next continue after this step (the schedule is by length, longest first): their dh
      // chain runs over da(next step). The others are at their last step: dh = dy + dh_n, no chain.
      std::vector<GemmGroup<T>> groups, projections;
      for (int64_t d = 0; d < D; ++d) {
        for (int64_t i = 0; i < n; ++i) {
          const int64_t b = sched.order[i], t = step_time(d, s, len[b]);
          dh_rows[d * B + i] = dh[d].data() + (t * B + b) * RH;
          if (i < n_next)
            a_rows[d * B + i] = da[d].data() + (step_time(d, s + 1, len[b]) * B + b) * G;
          if (proj) dm_rows[d * B + i] = dm.data() + (d * B + b) * H;
        }
        groups.push_back({n_next, a_rows.data() + d * B, b_rows.data() + d * G,
                          dh_rows.data() + d * B, Init::kFromC, nullptr,
                          panels_or_null(hh_panels[d])});
        if (proj)  // dm = W_hr^T dh: one chain per element over q = 0 .. P-1, from 0
          projections.push_back({n, dh_rows.data() + d * B, hr_rows.data() + d * RH,
                                 dm_rows.data() + d * B, Init::kZero, nullptr});
      }
      // The cell backward of rows i0 .. i1-1, units j0 .. j1-1 (dc_n enters at a row's last step).
      auto backward_cells = [&](int64_t d, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t b = sched.order[i], t = step_time(d, s, len[b]);
          T* dc_row = dc.data() + (d * B + b) * H;
          if (i >= n_next) {
            const T* dc_n = a.dc_n + ((l * D + d) * B + b) * H;
            std::copy(dc_n + j0, dc_n + j1, dc_row + j0);
          }
          const T* c_prev = s == 0 ? f.c0 + ((l * D + d) * B + b) * H
                                   : cells[d] + (prev_time(d, t) * B + b) * H;
          cell_backward_row<T>(proj ? dm_rows[d * B + i] : dh_rows[d * B + i], dc_row,
                               gates[d] + (t * B + b) * G, cells[d] + (t * B + b) * H, c_prev,
                               da[d].data() + (t * B + b) * G, H, j0, j1);
        }
      };
      // As in the forward, tasks take blocks of units: a unit's dh (its chain over da(next step) of
      // its row), and without projections its cell backward, need no other unit. With projections
      // dm = W_hr^T dh needs all of a row's dh: dm and the cell then run in a second region.
      const int64_t unit_blocks = (RH + kUnitBlock - 1) / kUnitBlock;
      parallel_for(D * unit_blocks, 1, [&](int64_t begin, int64_t end) {
        DenormalGuard guard;
        for (int64_t task = begin; task < end; ++task) {
          const int64_t d = task / unit_blocks, u0 = (task % unit_blocks) * kUnitBlock;
          const int64_t u1 = std::min(u0 + kUnitBlock, RH);
          for (int64_t i = 0; i < n; ++i) {
            const int64_t b = sched.order[i], t = step_time(d, s, len[b]);
            const T* dy_row = dY + (t * B + b) * DH + d * RH;
            T* dh_row = dh_rows[d * B + i];
            if (i >= n_next) {
              const T* dh_n = a.dh_n + ((l * D + d) * B + b) * RH;
              for (int64_t j = u0; j < u1; ++j) dh_row[j] = dy_row[j] + dh_n[j];
            } else {
              std::copy(dy_row + u0, dy_row + u1, dh_row + u0);
            }
          }
          if (n_next > 0) gemm_columns<T, false>(groups[d], G, u0, u1);
          if (!proj) backward_cells(d, 0, n, u0, u1);
        }
      });
      if (proj) {
        const int64_t tiles = (n + kMR - 1) / kMR;
        parallel_for(D * tiles, 1, [&](int64_t begin, int64_t end) {
          DenormalGuard guard;
          for (int64_t task = begin; task < end; ++task) {
            const int64_t d = task / tiles, i0 = (task % tiles) * kMR;
            gemm_rows<T, false>(projections[d], H, RH, i0);
            backward_cells(d, i0, std::min(i0 + kMR, n), 0, H);
          }
        });
      }
    }

    // dh0: the chain over da(step 0) * W_hh from 0; dc0: what reached c_prev at step 0.
    {
      std::vector<GemmGroup<T>> groups;
      for (int64_t d = 0; d < D; ++d) {
        for (int64_t b = 0; b < B; ++b) {
          a_rows[d * B + b] = da[d].data() + (step_time(d, 0, len[b]) * B + b) * G;
          c_rows[d * B + b] = a.dh0 + ((l * D + d) * B + b) * RH;
        }
        groups.push_back({B, a_rows.data() + d * B, b_rows.data() + d * G, c_rows.data() + d * B,
                          Init::kZero, nullptr, panels_or_null(hh_panels[d])});
      }
      gemm_chain<T, false>(groups, RH, G, parallel_for);
      for (int64_t d = 0; d < D; ++d)
        std::copy(dc.begin() + d * B * H, dc.begin() + (d + 1) * B * H,
                  a.dc0 + (l * D + d) * B * H);
    }

    // Gradient w.r.t. the layer input: one chain per element over the forward direction's gate rows,
    // then the reverse direction's, each ascending, from 0.
    T* dX = l == 0 ? a.dx : grad_buf[l % 2].data();
    {
      a_rows.resize(D * R);
      c_rows.resize(R);
      b_rows.resize(D * G);
      for (int64_t v = 0; v < R; ++v) c_rows[v] = dX + sched.valid[v] * K;
      for (int64_t d = 0; d < D; ++d) {
        for (int64_t v = 0; v < R; ++v) a_rows[d * R + v] = da[d].data() + sched.valid[v] * G;
        for (int64_t p = 0; p < G; ++p) b_rows[d * G + p] = f.weights.w_ih[l * D + d] + p * K;
        const std::vector<T> panels = panels_for_vector_kernel(b_rows.data() + d * G, G, K);
        std::vector<GemmGroup<T>> groups{{R, a_rows.data() + d * R, b_rows.data() + d * G,
                                          c_rows.data(), d == 0 ? Init::kZero : Init::kFromC,
                                          nullptr, panels_or_null(panels)}};
        gemm_chain<T, false>(groups, K, G, parallel_for);
      }
    }

    // Weight gradients: chains over the valid (t, b) in storage order, from 0 (rule 8).
    {
      std::vector<const T*> da_rows(D * R), x_rows(R), hp_rows(D * R);
      std::vector<T*> dwih_rows(D * G), dwhh_rows(D * G);
      for (int64_t v = 0; v < R; ++v) x_rows[v] = X + sched.valid[v] * K;
      const std::vector<T> x_panels = panels_for_vector_kernel(x_rows.data(), R, K);
      std::vector<std::vector<T>> hp_panels(D);
      std::vector<GemmGroup<T>> ih_groups, hh_groups;
      for (int64_t d = 0; d < D; ++d) {
        const int64_t w = l * D + d;
        for (int64_t v = 0; v < R; ++v) {
          const int64_t r = sched.valid[v];
          da_rows[d * R + v] = da[d].data() + r * G;
          hp_rows[d * R + v] = h_prev(d, r / B, r % B);
        }
        for (int64_t m = 0; m < G; ++m) {
          dwih_rows[d * G + m] = a.dw_ih[w] + m * K;
          dwhh_rows[d * G + m] = a.dw_hh[w] + m * RH;
        }
        hp_panels[d] = panels_for_vector_kernel(hp_rows.data() + d * R, R, RH);
        ih_groups.push_back({G, da_rows.data() + d * R, x_rows.data(), dwih_rows.data() + d * G,
                             Init::kZero, nullptr, panels_or_null(x_panels)});
        hh_groups.push_back({G, da_rows.data() + d * R, hp_rows.data() + d * R,
                             dwhh_rows.data() + d * G, Init::kZero, nullptr,
                             panels_or_null(hp_panels[d])});
      }
      gemm_chain<T, true>(ih_groups, K, R, parallel_for);
      gemm_chain<T, true>(hh_groups, RH, R, parallel_for);
      if (proj) {
        // dW_hr[q][k] = chain over the valid (t, b) in storage order of dh[q] * m[k], from 0, with
        // m = o * tanh(c) recomputed exactly as the forward's cell computed it.
        parallel_for(R, std::max<int64_t>(1, 2048 / H), [&](int64_t begin, int64_t end) {
          DenormalGuard guard;
          for (int64_t v = begin; v < end; ++v) {
            const int64_t r = sched.valid[v];
            for (int64_t d = 0; d < D; ++d) {
              const T* g = gates[d] + r * G;
              const T* c = cells[d] + r * H;
              T* m = m_all[d].data() + r * H;
              for (int64_t j = 0; j < H; ++j) m[j] = g[3 * H + j] * math::canonical_tanh(c[j]);
            }
          }
        });
        std::vector<const T*> dh_valid(D * R), m_valid(D * R);
        std::vector<T*> dwhr_rows(D * RH);
        std::vector<GemmGroup<T>> hr_groups;
        for (int64_t d = 0; d < D; ++d) {
          for (int64_t v = 0; v < R; ++v) {
            dh_valid[d * R + v] = dh[d].data() + sched.valid[v] * RH;
            m_valid[d * R + v] = m_all[d].data() + sched.valid[v] * H;
          }
          for (int64_t q = 0; q < RH; ++q) dwhr_rows[d * RH + q] = a.dw_hr[l * D + d] + q * H;
          hr_groups.push_back({RH, dh_valid.data() + d * R, m_valid.data() + d * R,
                               dwhr_rows.data() + d * RH, Init::kZero, nullptr});
        }
        gemm_chain<T, true>(hr_groups, H, R, parallel_for);
      }
      if (S.has_bias) {
        // db[n] = chain of adds over the valid (t, b) in storage order, from 0; b_ih and b_hh enter
        // the pre-activation the same way, so both get this one value.
        // A task takes a block of kBiasBlock consecutive n and walks the rows once, each row's block
        // contiguous; every n keeps its own chain in row order (the adds are lane-wise).
        constexpr int64_t kBiasBlock = 64;
        const int64_t blocks = (G + kBiasBlock - 1) / kBiasBlock;
        parallel_for(D * blocks, 1, [&](int64_t begin, int64_t end) {
          DenormalGuard guard;
          T acc[kBiasBlock];
          for (int64_t item = begin; item < end; ++item) {
            const int64_t d = item / blocks, n0 = (item % blocks) * kBiasBlock;
            const int64_t width = std::min(kBiasBlock, G - n0);
            std::fill(acc, acc + kBiasBlock, T(0));
            for (int64_t v = 0; v < R; ++v) {
              const T* row = da_rows[d * R + v] + n0;
              for (int64_t k = 0; k < width; ++k) acc[k] = acc[k] + row[k];
            }
            std::copy(acc, acc + width, a.db_ih[l * D + d] + n0);
            std::copy(acc, acc + width, a.db_hh[l * D + d] + n0);
          }
        });
      }
    }

    if (l > 0) {
      // Through the dropout between layer l-1 and l: the forward's mask, regenerated.
      if (f.dropout.active) apply_dropout(f.dropout, l - 1, dX, dX, DH, sched, B, parallel_for);
      dY = dX;
    }
  }
}

template <typename T>
void lstm_unary(UnaryFn fn, const T* x, T* y, int64_t n, const ParallelFor& parallel_for) {
  parallel_for(n, 4096, [&](int64_t begin, int64_t end) {
    DenormalGuard guard;
    int64_t k = begin;
#if DETLSTM_CPU_AVX2
    if constexpr (std::is_same<T, float>::value) {
      using V = math::V8;
      for (; k + 8 <= end; k += 8) {
        const V v = V::load(x + k);
        (fn == UnaryFn::kExp ? math::canonical_exp(v)
                             : (fn == UnaryFn::kSigmoid ? math::canonical_sigmoid(v)
                                                        : math::canonical_tanh(v)))
            .store(y + k);
      }
    }
#endif
    for (; k < end; ++k) {
      switch (fn) {
        case UnaryFn::kExp: y[k] = math::canonical_exp(x[k]); break;
        case UnaryFn::kSigmoid: y[k] = math::canonical_sigmoid(x[k]); break;
        default: y[k] = math::canonical_tanh(x[k]); break;
      }
    }
  });
}

}  // namespace DETLSTM_CPU_VARIANT
}  // namespace cpu
}  // namespace detlstm
