// The CPU backward, in the phases of csrc/common/phases.h (the same names as csrc/cuda/backward.cu):
// per layer from the top, the recurrence backward, the initial-state gradients, the input gradient,
// the weight gradients and the bias gradients. Included by lstm_cpu_impl.h inside one
// instruction-set variant's namespace.

// Buffers the backward keeps across layers.
template <typename T>
struct BackwardBuffers {
  Buffer<T> dropped;                 // a layer's input after dropout
  Buffer<T> grad_buf;                // gradient w.r.t. a layer's output, built by the layer above
  std::vector<Buffer<T>> da;         // per direction: gate pre-activation gradients (T, B, 4H)
  std::vector<Buffer<T>> dh;         // per direction: dh of a step's rows (B, RH; dh_row), or
                                     // with projections of every (t, b) (T, B, RH), for dW_hr
  Buffer<T> dc;                      // (D, B, H): the gradient reaching c, carried between steps
  Buffer<T> dm;                      // with projections: dm = W_hr^T dh of a step's rows
  std::vector<Buffer<T>> m_all;      // with projections: the cell outputs m of every (t, b)

  explicit BackwardBuffers(const math::CallDims& c) {
    const size_t rows = static_cast<size_t>(c.T * c.B);
    // One buffer for every layer's gradient: a layer's dY is read by its recurrence backward only,
    // so its input gradient writes dX, the next layer down's dY, over it (input_gradient).
    if (c.L > 1) grad_buf.assign(rows * c.DH, T(0));
    // One zeroed buffer per direction, built in place: assign(D, prototype) would zero a prototype
    // and then copy it (tens of MiB written twice and twice the page faults).
    const size_t dh_rows = c.proj ? rows : static_cast<size_t>(c.B);
    for (int64_t d = 0; d < c.D; ++d) {
      da.emplace_back(rows * c.G, T(0));
      dh.emplace_back(dh_rows * c.RH, T(0));
    }
    dc.resize(static_cast<size_t>(c.D * c.B * c.H));
    if (c.proj) {
      dm.resize(static_cast<size_t>(c.D * c.B * c.H));
      for (int64_t d = 0; d < c.D; ++d) m_all.emplace_back(rows * c.H, T(0));
    }
  }
};

// What the phases of one layer share.
template <typename T>
struct BackwardLayer {
  int64_t l, K;
  const T* X;   // the layer's input (after dropout)
  const T* Y;   // its output
  const T* dY;  // the gradient w.r.t. its output
  std::vector<const T*> gates, cells;  // per direction, as the forward saved them
};

template <typename T>
BackwardLayer<T> backward_layer(const LstmForwardArgs<T>& f, const math::CallDims& c, int64_t l,
                                const T* X, const T* dY) {
  BackwardLayer<T> L{l, c.layer_input(l), X, layer_output(f, l), dY, {}, {}};
  for (int64_t d = 0; d < c.D; ++d) {
    L.gates.push_back(f.gates + c.saved_rows(l, d) * c.G);
    L.cells.push_back(f.cells + c.saved_rows(l, d) * c.H);
  }
  return L;
}

// W_hh rows (4H of RH: the dh sum runs over gate rows) and W_hr rows, per direction.
template <typename T>
struct BackwardOperands {
  std::vector<const T*> hh_rows, hr_rows;
  std::vector<Buffer<T>> hh_panels;
};

template <typename T>
BackwardOperands<T> backward_operands(const LstmForwardArgs<T>& f, const math::CallDims& c,
                                      int64_t l, const ParallelFor& parallel_for) {
  BackwardOperands<T> ops;
  ops.hh_rows.resize(c.D * c.G);
  ops.hh_panels.resize(c.D);
  for (int64_t d = 0; d < c.D; ++d) {
    for (int64_t p = 0; p < c.G; ++p) ops.hh_rows[d * c.G + p] = f.weights.w_hh[l * c.D + d] + p * c.RH;
    ops.hh_panels[d] = panels_for_vector_kernel(ops.hh_rows.data() + d * c.G, c.G, c.RH, parallel_for);
  }
  if (c.proj) {
    ops.hr_rows.resize(c.D * c.RH);
    for (int64_t d = 0; d < c.D; ++d)
      for (int64_t q = 0; q < c.RH; ++q) ops.hr_rows[d * c.RH + q] = f.weights.w_hr[l * c.D + d] + q * c.H;
  }
  return ops;
}

// One backward step's rows (schedule order), per direction d at [d * B, d * B + active).
template <typename T>
struct BackwardStepRows {
  std::vector<const T*> da_next;  // da of the row's next processing step (rows that continue)
  std::vector<T*> dh, dm;
  explicit BackwardStepRows(int64_t rows) : da_next(rows), dh(rows), dm(rows) {}
};

// The backward of one step: dh of every unit, then the cell backward (phases.h: recurrence
// backward). Rows i < n_next continue after this step (the schedule is by length, longest first):
// their dh = dy + S, S the chunked sum over the gate rows of da(next step) . W_hh. The others are at
// their last step: dh = dy + dh_n.
template <typename T>
class BackwardStep {
 public:
  // The step's rows: those of `rows` (direction rows.d, schedule positions rows.first, rows.first +
  // rows.stride, ...) in each direction from rows.d to d_end - 1. The split by units takes every
  // row of every direction ({0, 0, 1}, D); a group of the split by sequences its own.
  BackwardStep(const LstmBackwardArgs<T>& a, const math::CallDims& c, const StepSchedule& sched,
               const BackwardLayer<T>& L, BackwardBuffers<T>& buf, const BackwardOperands<T>& ops,
               int64_t s, const SequenceGroup& rows, int64_t d_end)
      : a_(a), c_(c), sched_(sched), L_(L), buf_(buf), ops_(ops), s_(s), sel_(rows),
        n_(rows.rows(sched.active[s])), n_next_(rows.rows(sched.active[s + 1])), rows_(c.D * c.B) {
    for (int64_t d = rows.d; d < d_end; ++d) fill_rows(d);
  }

  // The step of one group of the split by sequences (one direction), on the calling thread: dh of
  // every unit (the product over all of W_hh's columns: each strip read once for every row tile),
  // then the cells over whole rows.
  void run_here() {
    const int64_t d = sel_.d;
    if (n_next_ > 0) gemm_block<T, false>(dh_product(d), c_.G, 0, n_next_, 0, c_.RH);
    finish_dh(d, 0, c_.RH);
    if (c_.proj) gemm_block<T, false>(dm_product(d), c_.RH, 0, n_, 0, c_.H);
    cells_backward(d, 0, n_, 0, c_.H);
  }

  // The step split by units, every direction, as parallel regions.
  void run(const ParallelFor& parallel_for) {
    std::vector<GemmGroup<T>> groups, projections;
    for (int64_t d = 0; d < c_.D; ++d) {
      groups.push_back(dh_product(d));
      if (c_.proj) projections.push_back(dm_product(d));
    }
    // Tasks take blocks of units, as in the forward: a unit's dh (its sum over da(next step) of its
    // row), and without projections its cell backward, need no other unit. With projections dm =
    // W_hr^T dh needs all of a row's dh: dm and the cell then run in a second region.
    const int64_t unit_blocks = (c_.RH + kUnitBlock - 1) / kUnitBlock;
    parallel_for(c_.D * unit_blocks, 1, [&](int64_t begin, int64_t end) {
      DenormalGuard guard;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t d = task / unit_blocks, u0 = (task % unit_blocks) * kUnitBlock;
        const int64_t u1 = std::min(u0 + kUnitBlock, c_.RH);
        if (!c_.proj) prefetch_cells(d, u0, u1);
        if (n_next_ > 0) gemm_columns<T, false>(groups[d], c_.G, u0, u1);
        finish_dh(d, u0, u1);
        if (!c_.proj) cells_backward(d, 0, n_, u0, u1);
      }
    });
    if (!c_.proj) return;
    const int64_t tiles = (n_ + kMR - 1) / kMR;
    parallel_for(c_.D * tiles, 1, [&](int64_t begin, int64_t end) {
      DenormalGuard guard;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t d = task / tiles, i0 = (task % tiles) * kMR;
        gemm_rows<T, false>(projections[d], c_.H, c_.RH, i0);
        cells_backward(d, i0, std::min(i0 + kMR, n_), 0, c_.H);
      }
    });
  }

 private:
  // S = da(next step) . W_hh of the rows that continue, into dh.
  GemmGroup<T> dh_product(int64_t d) {
    const int64_t k = d * c_.B;
    return {n_next_, rows_.da_next.data() + k, ops_.hh_rows.data() + d * c_.G, rows_.dh.data() + k,
            GemmEpilogue::kStore, nullptr, panels_or_null(ops_.hh_panels[d])};
  }
  // dm = W_hr^T dh: the chunked sum over q = 0 .. P-1.
  GemmGroup<T> dm_product(int64_t d) {
    const int64_t k = d * c_.B;
    return {n_, rows_.dh.data() + k, ops_.hr_rows.data() + d * c_.RH, rows_.dm.data() + k,
            GemmEpilogue::kStore, nullptr};
  }

  int64_t row_of(int64_t i) const { return sched_.order[sel_.first + i * sel_.stride]; }
  // Where (t, b)'s dh lives in BackwardBuffers::dh: only dW_hr reads it after its step, so without
  // projections each sequence's row is reused by its every step (a step's rows are distinct
  // sequences, and a sequence's steps run in order on one thread or in successive regions).
  int64_t dh_row(int64_t t, int64_t b) const { return c_.proj ? c_.row(t, b) : b; }
  int64_t time_of(int64_t d, int64_t i) const {
    return math::step_time(d, s_, a_.fwd.lengths[row_of(i)]);
  }

  void fill_rows(int64_t d) {
    for (int64_t i = 0; i < n_; ++i) {
      const int64_t b = row_of(i), t = time_of(d, i), k = d * c_.B + i;
      rows_.dh[k] = buf_.dh[d].data() + dh_row(t, b) * c_.RH;
      if (i < n_next_) {
        const int64_t t_next = math::step_time(d, s_ + 1, a_.fwd.lengths[b]);
        rows_.da_next[k] = buf_.da[d].data() + c_.row(t_next, b) * c_.G;
      }
      if (c_.proj) rows_.dm[k] = buf_.dm.data() + (d * c_.B + b) * c_.H;
    }
  }

  // dh of units u0 .. u1-1 of every row: dy + S where the row continues (S already in dh), dy + dh_n
  // at its last step.
  void finish_dh(int64_t d, int64_t u0, int64_t u1) {
    for (int64_t i = 0; i < n_; ++i) {
      const int64_t b = row_of(i);
      const T* dy_row = L_.dY + c_.out_offset(time_of(d, i), b, d);
      T* dh_row = rows_.dh[d * c_.B + i];
      const T* other = i < n_next_ ? dh_row : a_.dh_n + c_.state_row(L_.l, d, b) * c_.RH;
      for (int64_t j = u0; j < u1; ++j) dh_row[j] = dy_row[j] + other[j];
    }
  }

  // The lines finish_dh and cells_backward of units j0 .. j1-1 will touch (see prefetch_span): the
  // forward's saved gates and cells and dy are far out of cache by now.
  void prefetch_cells(int64_t d, int64_t j0, int64_t j1) const {
    for (int64_t i = 0; i < n_; ++i) {
      const int64_t b = row_of(i), t = time_of(d, i), r = c_.row(t, b);
      for (int64_t gate = 0; gate < 4; ++gate) {
        prefetch_span(L_.gates[d] + r * c_.G + gate * c_.H + j0, j1 - j0);
        prefetch_span<true>(buf_.da[d].data() + r * c_.G + gate * c_.H + j0, j1 - j0);
      }
      prefetch_span(L_.cells[d] + r * c_.H + j0, j1 - j0);
      prefetch_span(L_.dY + c_.out_offset(t, b, d) + j0, j1 - j0);
    }
  }

  // The cell backward of rows i0 .. i1-1, units j0 .. j1-1 (dc_n enters at a row's last step).
  void cells_backward(int64_t d, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    for (int64_t i = std::max(i0, n_next_); i < i1; ++i) {
      const T* dc_n = a_.dc_n + c_.state_row(L_.l, d, row_of(i)) * c_.H;
      std::copy(dc_n + j0, dc_n + j1, buf_.dc.data() + (d * c_.B + row_of(i)) * c_.H + j0);
    }
    cell_backward_rows<T>(c_.H, i0, i1, j0, j1, [&](int64_t i, int64_t j) {
      const int64_t b = row_of(i), t = time_of(d, i), r = c_.row(t, b);
      const T* c_prev = math::c_prev_of(c_, a_.fwd.c0, L_.cells[d], L_.l, d, t, b, a_.fwd.lengths[b]);
      const T* dh = c_.proj ? rows_.dm[d * c_.B + i] : rows_.dh[d * c_.B + i];
      return CellBackwardAt<T>{dh + j, buf_.dc.data() + (d * c_.B + b) * c_.H + j,
                               L_.gates[d] + r * c_.G + j, L_.cells[d] + r * c_.H + j, c_prev + j,
                               buf_.da[d].data() + r * c_.G + j};
    });
  }

  const LstmBackwardArgs<T>& a_;
  const math::CallDims& c_;
  const StepSchedule& sched_;
  const BackwardLayer<T>& L_;
  BackwardBuffers<T>& buf_;
  const BackwardOperands<T>& ops_;
  const int64_t s_;
  const SequenceGroup sel_;
  const int64_t n_, n_next_;  // the step's rows, and how many of them (the first) continue
  BackwardStepRows<T> rows_;
};

// Recurrence backward (phases.h): the steps in reverse processing order, split by units (a
// parallel region per step) or by sequences (each group's steps on one thread; recurrence_split);
// steps no row reaches are skipped.
template <typename T>
void recurrence_backward(const LstmBackwardArgs<T>& a, const math::CallDims& c,
                         const StepSchedule& sched, const BackwardLayer<T>& L,
                         BackwardBuffers<T>& buf, const BackwardOperands<T>& ops,
                         const ParallelFor& parallel_for) {
  const int64_t per_direction = sequence_groups(c, sched, parallel_for.threads);
  if (per_direction == 0) {
    for (int64_t s = c.T - 1; s >= 0; --s)
      if (sched.active[s] > 0) BackwardStep<T>(a, c, sched, L, buf, ops, s, {0, 0, 1}, c.D).run(parallel_for);
    return;
  }
  for_sequence_groups(c.D, per_direction, parallel_for, [&](const SequenceGroup& group) {
    for (int64_t s = c.T - 1; s >= 0; --s)
      if (group.rows(sched.active[s]) > 0)
        BackwardStep<T>(a, c, sched, L, buf, ops, s, group, group.d + 1).run_here();
  });
}

// Initial-state gradients (phases.h): dh0 = the chunked sum over the gate rows of da(first step) .
// W_hh; dc0 = what reached c_prev at the first step.
template <typename T>
void initial_state_gradients(const LstmBackwardArgs<T>& a, const math::CallDims& c,
                             const BackwardLayer<T>& L, BackwardBuffers<T>& buf,
                             const BackwardOperands<T>& ops, const ParallelFor& parallel_for) {
  std::vector<const T*> a_rows(c.D * c.B);
  std::vector<T*> c_rows(c.D * c.B);
  std::vector<GemmGroup<T>> groups;
  for (int64_t d = 0; d < c.D; ++d) {
    for (int64_t b = 0; b < c.B; ++b) {
      const int64_t t = math::step_time(d, 0, a.fwd.lengths[b]);
      a_rows[d * c.B + b] = buf.da[d].data() + c.row(t, b) * c.G;
      c_rows[d * c.B + b] = a.dh0 + c.state_row(L.l, d, b) * c.RH;
    }
    groups.push_back({c.B, a_rows.data() + d * c.B, ops.hh_rows.data() + d * c.G,
                      c_rows.data() + d * c.B, GemmEpilogue::kStore, nullptr,
                      panels_or_null(ops.hh_panels[d])});
  }
  gemm_chain<T, false>(groups, c.RH, c.G, parallel_for);
  for (int64_t d = 0; d < c.D; ++d)
    std::copy(buf.dc.begin() + d * c.B * c.H, buf.dc.begin() + (d + 1) * c.B * c.H,
              a.dc0 + c.state_row(L.l, d, 0) * c.H);
}

// One direction's product of the input gradient: the chunked sums over its gate rows of da . W_ih
// for every valid (t, b), into c_rows, with W_ih's panels it owns.
template <typename T>
struct InputGradientProduct {
  std::vector<const T*> a_rows, b_rows;
  Buffer<T> panels;
  GemmGroup<T> group;
};

template <typename T>
void input_gradient_product(const LstmBackwardArgs<T>& a, const math::CallDims& c,
                            const StepSchedule& sched, const BackwardLayer<T>& L,
                            const BackwardBuffers<T>& buf, int64_t d, const std::vector<T*>& c_rows,
                            const ParallelFor& parallel_for, InputGradientProduct<T>& out) {
  const int64_t R = static_cast<int64_t>(sched.valid.size()), K = L.K;
  out.a_rows.resize(R);
  out.b_rows.resize(c.G);
  for (int64_t v = 0; v < R; ++v) out.a_rows[v] = buf.da[d].data() + sched.valid[v] * c.G;
  for (int64_t p = 0; p < c.G; ++p) out.b_rows[p] = a.fwd.weights.w_ih[L.l * c.D + d] + p * K;
  out.panels = panels_for_vector_kernel(out.b_rows.data(), c.G, K, parallel_for);
  out.group = {R, out.a_rows.data(), out.b_rows.data(), c_rows.data(),
               GemmEpilogue::kStore, nullptr, panels_or_null(out.panels)};
}

// dX = S_forward + S_reverse by the row-mode tiles of gemm_chain (kMR rows by kNB columns): a task
// stores its tile of S_forward in dX, computes the same tile of S_reverse into its thread's own
// rows and adds it while both are in cache. No (T, B, K) buffer holds the reverse part, and no
// second pass reads dX.
template <typename T>
void input_gradient_both_directions(const GemmGroup<T>& forward, const GemmGroup<T>& reverse,
                                    int64_t K, int64_t P, const ParallelFor& parallel_for) {
  const TaskTiles tiles = row_mode_tiles(forward.M, K);
  parallel_for(tiles.count(), tiles.grain(2 * P), [&](int64_t begin, int64_t end) {
    DenormalGuard guard;
    thread_local std::vector<T> tile;  // kMR rows of K: a task's tile of S_reverse
    tile.resize(static_cast<size_t>(kMR * K));
    T* tile_rows[kMR];
    for (int64_t i = 0; i < kMR; ++i) tile_rows[i] = tile.data() + i * K;
    for (int64_t task = begin; task < end; ++task) {
      const auto [m0, m1, n0, n1] = tiles.tile(task);
      gemm_block<T, false>(forward, P, m0, m1, n0, n1);
      // the reverse product's rows m0 .. m1-1, as rows 0 .. of a product whose C is the tile
      GemmGroup<T> into_tile = reverse;
      into_tile.M = m1 - m0;
      into_tile.a = reverse.a + m0;
      into_tile.c = tile_rows;
      gemm_block<T, false>(into_tile, P, 0, m1 - m0, n0, n1);
      for (int64_t m = m0; m < m1; ++m) {
        T* row = forward.c[m];
        const T* part = tile_rows[m - m0];
        for (int64_t n = n0; n < n1; ++n) row[n] = row[n] + part[n];
      }
    }
  });
}

// Input gradient (phases.h): dX = S_forward (+ S_reverse), each the chunked sum over its
// direction's gate rows of da . W_ih. Returns where it went: dx for layer 0, else the gradient
// buffer, over this layer's dY (its recurrence backward was its only reader).
template <typename T>
T* input_gradient(const LstmBackwardArgs<T>& a, const math::CallDims& c, const StepSchedule& sched,
                  const BackwardLayer<T>& L, BackwardBuffers<T>& buf,
                  const ParallelFor& parallel_for) {
  const int64_t R = static_cast<int64_t>(sched.valid.size());
  T* dX = L.l == 0 ? a.dx : buf.grad_buf.data();
  std::vector<T*> c_rows(R);
  for (int64_t v = 0; v < R; ++v) c_rows[v] = dX + sched.valid[v] * L.K;
  InputGradientProduct<T> product[2];
  for (int64_t d = 0; d < c.D; ++d)
    input_gradient_product(a, c, sched, L, buf, d, c_rows, parallel_for, product[d]);
  if (c.D == 1)
    gemm_chain<T, false>({product[0].group}, L.K, c.G, parallel_for);
  else
    input_gradient_both_directions(product[0].group, product[1].group, L.K, c.G, parallel_for);
  return dX;
}

// m = o * tanh(c) of every valid (t, b), recomputed exactly as the forward's cell computed it.
template <typename T>
void cell_outputs(const math::CallDims& c, const StepSchedule& sched, const BackwardLayer<T>& L,
                  BackwardBuffers<T>& buf, const ParallelFor& parallel_for) {
  const int64_t R = static_cast<int64_t>(sched.valid.size());
  parallel_for(R, std::max<int64_t>(1, 2048 / c.H), [&](int64_t begin, int64_t end) {
    DenormalGuard guard;
    for (int64_t v = begin; v < end; ++v) {
      const int64_t r = sched.valid[v];
      for (int64_t d = 0; d < c.D; ++d) {
        const T* g = L.gates[d] + r * c.G;
        const T* cell = L.cells[d] + r * c.H;
        T* m = buf.m_all[d].data() + r * c.H;
        for (int64_t j = 0; j < c.H; ++j) m[j] = g[3 * c.H + j] * math::canonical_tanh(cell[j]);
      }
    }
  });
}

// One right operand of the weight gradients' products: B's rows per direction (D * R of them, or R
// shared by every direction: b_step 0), its N columns, and dW per direction (M x N, row-major).
template <typename T>
struct WeightOperand {
  const std::vector<const T*>& b_rows;
  int64_t b_step, N;
  const std::vector<T*>& out;
};

// One operand's products, a group per direction, with the rows and panels they point into.
template <typename T>
struct WeightProducts {
  std::vector<std::vector<T*>> c_rows;
  std::vector<Buffer<T>> panels;
  std::vector<GemmGroup<T>> groups;
};

template <typename T>
WeightProducts<T> weight_products(const math::CallDims& c, int64_t R,
                                  const std::vector<const T*>& a_rows, int64_t M,
                                  const WeightOperand<T>& op, const ParallelFor& parallel_for) {
  WeightProducts<T> w{std::vector<std::vector<T*>>(c.D, std::vector<T*>(M)),
                      std::vector<Buffer<T>>(c.D), {}};
  for (int64_t d = 0; d < c.D; ++d) {
    for (int64_t m = 0; m < M; ++m) w.c_rows[d][m] = op.out[d] + m * op.N;
    if (d == 0 || op.b_step != 0)
      w.panels[d] = panels_for_vector_kernel(op.b_rows.data() + d * op.b_step, R, op.N, parallel_for);
    w.groups.push_back({M, a_rows.data() + d * R, op.b_rows.data() + d * op.b_step,
                        w.c_rows[d].data(), GemmEpilogue::kStore, nullptr,
                        panels_or_null(w.panels[op.b_step != 0 ? d : 0])});
  }
  return w;
}

// dW[m][p] = the chunked sum over the valid (t, b) in storage order of A(v, m) * B(v, p), for every
// direction and every right operand; A's rows per direction, D * R of them. The operands' products
// run in one parallel region, linked by GemmGroup::shared_a so that each task packs its slices of A
// once for all of them (dW_ih and dW_hh: at dense forward + backward, one thread, the weight
// gradients went 10.5 -> 10.3 ms; with no packing of A at all they took 9.6).
template <typename T>
void weight_gradient(const math::CallDims& c, int64_t R, const std::vector<const T*>& a_rows,
                     int64_t M, const std::vector<WeightOperand<T>>& operands,
                     const ParallelFor& parallel_for) {
  std::vector<WeightProducts<T>> products;
  for (const WeightOperand<T>& op : operands)
    products.push_back(weight_products(c, R, a_rows, M, op, parallel_for));
  for (size_t k = 0; k + 1 < products.size(); ++k)  // linked once no vector moves any more
    for (int64_t d = 0; d < c.D; ++d) {
      products[k].groups[d].shared_a = &products[k + 1].groups[d];
      products[k].groups[d].shared_a_N = operands[k + 1].N;
    }
  gemm_chain<T, true>(products[0].groups, operands[0].N, R, parallel_for);
}

// Weight gradients (phases.h): dW_ih, dW_hh and dW_hr, chunked sums over the valid (t, b) in
// storage order (rule 8).
template <typename T>
void weight_gradients(const LstmBackwardArgs<T>& a, const math::CallDims& c,
                      const StepSchedule& sched, const BackwardLayer<T>& L,
                      BackwardBuffers<T>& buf, const ParallelFor& parallel_for) {
  const int64_t R = static_cast<int64_t>(sched.valid.size());
  std::vector<const T*> da_rows(c.D * R), x_rows(R), hp_rows(c.D * R), dh_rows, m_rows;
  std::vector<T*> dw_ih(c.D), dw_hh(c.D), dw_hr(c.D);
  for (int64_t v = 0; v < R; ++v) x_rows[v] = L.X + sched.valid[v] * L.K;
  for (int64_t d = 0; d < c.D; ++d) {
    const int64_t w = L.l * c.D + d;
    dw_ih[d] = a.dw_ih[w];
    dw_hh[d] = a.dw_hh[w];
    dw_hr[d] = c.proj ? a.dw_hr[w] : nullptr;
    for (int64_t v = 0; v < R; ++v) {
      const int64_t r = sched.valid[v], t = r / c.B, b = r % c.B;
      da_rows[d * R + v] = buf.da[d].data() + r * c.G;
      hp_rows[d * R + v] = math::h_prev_of(c, a.fwd.h0, L.Y, L.l, d, t, b, a.fwd.lengths[b]);
    }
  }
  weight_gradient<T>(c, R, da_rows, c.G, {{x_rows, 0, L.K, dw_ih}, {hp_rows, R, c.RH, dw_hh}},
                     parallel_for);
  if (!c.proj) return;
  // dW_hr[q][k] = the chunked sum over the valid (t, b) in storage order of dh[q] * m[k].
  cell_outputs(c, sched, L, buf, parallel_for);
  for (int64_t d = 0; d < c.D; ++d)
    for (int64_t v = 0; v < R; ++v) {
      dh_rows.push_back(buf.dh[d].data() + sched.valid[v] * c.RH);
      m_rows.push_back(buf.m_all[d].data() + sched.valid[v] * c.H);
    }
  weight_gradient<T>(c, R, dh_rows, c.RH, {{m_rows, R, c.H, dw_hr}}, parallel_for);
}

// Bias gradients (phases.h): db[n] = the chunked add-sum over the valid (t, b) in storage order of
// da[n]; b_ih and b_hh enter the pre-activation the same way, so both get this one value. A task
// takes a block of kBiasBlock consecutive n and walks the rows once, each row's block contiguous;
// every n keeps its own chunks in row order (the adds are lane-wise).
template <typename T>
void bias_gradients(const LstmBackwardArgs<T>& a, const math::CallDims& c,
                    const StepSchedule& sched, const BackwardLayer<T>& L,
                    const BackwardBuffers<T>& buf, const ParallelFor& parallel_for) {
  if (!c.bias) return;
  const int64_t R = static_cast<int64_t>(sched.valid.size());
  constexpr int64_t kBiasBlock = 64;
  const int64_t blocks = (c.G + kBiasBlock - 1) / kBiasBlock;
  parallel_for(c.D * blocks, 1, [&](int64_t begin, int64_t end) {
    DenormalGuard guard;
    T acc[kBiasBlock], total[kBiasBlock];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t d = item / blocks, n0 = (item % blocks) * kBiasBlock;
      const int64_t width = std::min(kBiasBlock, c.G - n0);
      for (int64_t v0 = 0; v0 < R; v0 += math::kSumChunk) {
        std::fill(acc, acc + kBiasBlock, T(0));
        for (int64_t v = v0; v < std::min(v0 + math::kSumChunk, R); ++v) {
          const T* row = buf.da[d].data() + sched.valid[v] * c.G + n0;
          for (int64_t k = 0; k < width; ++k) acc[k] = acc[k] + row[k];
        }
        for (int64_t k = 0; k < width; ++k) total[k] = math::fold_chunk(total[k], acc[k], v0);
      }
      std::copy(total, total + width, a.db_ih[L.l * c.D + d] + n0);
      std::copy(total, total + width, a.db_hh[L.l * c.D + d] + n0);
    }
  });
}

template <typename T>
void lstm_backward(const LstmBackwardArgs<T>& a, const ParallelFor& parallel_for) {
  const LstmForwardArgs<T>& f = a.fwd;
  const math::CallDims c(f.shape);
  const StepSchedule sched(f.lengths, c.T, c.B);
  zero_padding(a.dx, c.I, f.lengths, c.T, c.B);
  BackwardBuffers<T> buf(c);
  const T* dY = a.dy;
  for (int64_t l = c.L - 1; l >= 0; --l) {
    const BackwardLayer<T> L =
        backward_layer(f, c, l, dropped_layer_input(f, l, sched, buf.dropped, parallel_for), dY);
    const BackwardOperands<T> ops = backward_operands(f, c, l, parallel_for);
    // multiply-adds per phase, for the phase clock (lstm_cpu.h)
    const double R = static_cast<double>(sched.valid.size()), D = static_cast<double>(c.D);
    const double proj = c.proj ? R * D * c.H * c.RH : 0.0;
    timed(CpuPhase::kRecurrenceBackward, (R - c.B) * D * c.G * c.RH + proj,
          [&] { recurrence_backward(a, c, sched, L, buf, ops, parallel_for); });
    timed(CpuPhase::kInitialStateGradients, D * c.B * c.G * c.RH,
          [&] { initial_state_gradients(a, c, L, buf, ops, parallel_for); });
    T* dX = nullptr;
    timed(CpuPhase::kInputGradient, R * D * c.G * L.K,
          [&] { dX = input_gradient(a, c, sched, L, buf, parallel_for); });
    timed(CpuPhase::kWeightGradients, R * D * c.G * (L.K + c.RH) + proj,
          [&] { weight_gradients(a, c, sched, L, buf, parallel_for); });
    timed(CpuPhase::kBiasGradients, 0.0, [&] { bias_gradients(a, c, sched, L, buf, parallel_for); });
    // Through the dropout between layer l-1 and l: the forward's mask, regenerated.
    if (l > 0 && f.dropout.active) apply_dropout(f.dropout, l - 1, dX, dX, c.DH, sched, c.B, parallel_for);
    dY = dX;
  }
}
