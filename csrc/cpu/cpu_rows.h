// Row-wise pieces of the CPU kernels: transposes, padding, dropout and the cell over a block of units
// of one row. Included by lstm_cpu_impl.h inside one instruction-set variant's namespace.

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

// The cell of units j0 .. j1-1 of one row: g holds the four input parts of the pre-activations (i,
// f, g, o blocks of H: (b_ih + b_hh) + X, or X without biases) and receives the activated gates; r
// holds the recurrent parts R, so a = g + r (rule 4); c_out and h_out receive c and h = o * tanh(c).
template <typename T>
void cell_forward_row(T* g, const T* r, const T* c_prev, T* c_out, T* h_out, int64_t H, int64_t j0,
                      int64_t j1) {
  int64_t j = j0;
#if DETLSTM_CPU_AVX2
  if constexpr (std::is_same<T, float>::value) {  // eight units at a time, same bits
    using V = math::V8;
    const auto a = [&](int64_t k) { return V::load(g + k) + V::load(r + k); };
    for (; j + 8 <= j1; j += 8) {
      const math::CellState<V> st =
          math::lstm_cell_forward(a(j), a(H + j), a(2 * H + j), a(3 * H + j), V::load(c_prev + j));
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
    const math::CellState<T> st = math::lstm_cell_forward(
        g[j] + r[j], g[H + j] + r[H + j], g[2 * H + j] + r[2 * H + j], g[3 * H + j] + r[3 * H + j],
        c_prev[j]);
    g[j] = st.i;
    g[H + j] = st.f;
    g[2 * H + j] = st.g;
    g[3 * H + j] = st.o;
    c_out[j] = st.c;
    h_out[j] = st.h;
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


// Layer l's input as the layer reads it: x for layer 0; above, the layer below's output, through
// dropout into `dropped` when dropout is on (ARITHMETIC.md rule 7).
template <typename T>
const T* dropped_layer_input(const LstmForwardArgs<T>& f, int64_t l, const StepSchedule& sched,
                             std::vector<T>& dropped, const ParallelFor& parallel_for) {
  const T* X = layer_input(f, l);
  if (l == 0 || !f.dropout.active) return X;
  const math::CallDims c(f.shape);
  if (dropped.empty()) dropped.assign(static_cast<size_t>(c.T * c.B * c.DH), T(0));
  apply_dropout(f.dropout, l - 1, X, dropped.data(), c.DH, sched, c.B, parallel_for);
  return dropped.data();
}
