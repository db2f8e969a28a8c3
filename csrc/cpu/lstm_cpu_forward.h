// The CPU forward, in the phases of csrc/common/phases.h (the same names as csrc/cuda/forward.cu):
// per layer the dropped layer input, the input projection, the recurrence and the final states.
// Included by lstm_cpu_impl.h inside one instruction-set variant's namespace.

// One direction's weights as the products read them: W_ih^T (K, 4H) and W_hh^T (RH, 4H), so a row
// of B runs over gate rows, and their panels for the vector kernel; W_hr^T (H, RH); and b_ih + b_hh
// (rule 4). Where the panels cover every column the products read (forward_panels_cover), they are
// packed straight from W_ih and W_hh and wt_ih, wt_hh stay empty.
template <typename T>
struct DirectionWeights {
  Buffer<T> wt_ih, wt_hh, wt_hr, bias;
  Buffer<T> ih_panels, hh_panels;
};

// Row p of a transposed weight wt (P rows of N), or nullptr where wt was not made (the panels are
// read instead).
template <typename T>
std::vector<const T*> weight_rows(const Buffer<T>& wt, int64_t P, int64_t N) {
  std::vector<const T*> rows(static_cast<size_t>(P), nullptr);
  if (!wt.empty())
    for (int64_t p = 0; p < P; ++p) rows[p] = wt.data() + p * N;
  return rows;
}

// W_ih^T and W_hh^T of one direction, as panels and, where the panels do not cover, as rows too.
template <typename T>
void transposed_weights(const LstmForwardArgs<T>& a, const math::CallDims& c, int64_t K, int64_t w,
                        DirectionWeights<T>& dw, const ParallelFor& parallel_for) {
  if (forward_panels_cover<T>(c.H)) {
    dw.ih_panels = pack_transposed_panels(a.weights.w_ih[w], c.G, K, parallel_for);
    dw.hh_panels = pack_transposed_panels(a.weights.w_hh[w], c.G, c.RH, parallel_for);
    return;
  }
  dw.wt_ih = transposed(a.weights.w_ih[w], c.G, K);
  dw.wt_hh = transposed(a.weights.w_hh[w], c.G, c.RH);
  dw.ih_panels = panels_for_vector_kernel(weight_rows(dw.wt_ih, K, c.G).data(), K, c.G, parallel_for);
  dw.hh_panels = panels_for_vector_kernel(weight_rows(dw.wt_hh, c.RH, c.G).data(), c.RH, c.G, parallel_for);
}

// A forward nothing will differentiate (LstmShape::keeps_every_layer false) keeps no gates or cells
// for a backward: it runs `steps` steps at a time, their pre-activations in a window of rows,
// (s % steps) * B + position, and the cells of the last two steps, (s % 2) * B + position, position
// being the row's place in the schedule's order. The same operations on the same values as the
// full buffers, so the same bits; the gates of a layer shrink from T steps to `steps`.
template <typename T>
struct StepWindow {
  int64_t steps = 0;   // 0: no window (every (t, b) has its rows in the layer's gates and cells)
  Buffer<T> gates;     // per direction: steps x B rows of 4H
  Buffer<T> cells;     // per direction: 2 x B rows of H
};

// Rows per window: enough for the input projection's tiles to run at full speed (a row tile reads
// its strips of W_ih^T whatever the number of rows), few enough to stay in cache and to keep an
// inference call's peak small: 1,024, and at most 4 MiB of pre-activations per direction (512 rows at
// hidden 512 in float32, 256 at 1024). But at least kMinWindowSteps steps, so that a large batch
// does not pay a window's setup (step buffers, row pointers, a parallel region) every step: there
// the window is 4 steps of B rows, whatever their size.
constexpr int64_t kWindowRows = 1024;
constexpr int64_t kWindowBytes = int64_t(4) << 20;
constexpr int64_t kMinWindowSteps = 4;

template <typename T>
StepWindow<T> step_window(const math::CallDims& c, bool keeps_every_layer) {
  StepWindow<T> w;
  if (keeps_every_layer) return w;
  const int64_t rows = std::min<int64_t>(
      kWindowRows, kWindowBytes / (std::max<int64_t>(c.G, 1) * int64_t(sizeof(T))));
  const int64_t steps = std::max<int64_t>(kMinWindowSteps, rows / std::max<int64_t>(c.B, 1));
  w.steps = std::max<int64_t>(1, std::min<int64_t>(c.T, steps));
  w.gates.resize(static_cast<size_t>(c.D * w.steps * c.B * c.G));
  w.cells.resize(static_cast<size_t>(c.D * 2 * c.B * c.H));
  return w;
}

// What the phases of one layer share.
template <typename T>
struct ForwardLayer {
  int64_t l, K;
  const T* X;                         // the layer's input (after dropout)
  T* Y;                               // its output (T, B, D*RH)
  std::vector<T*> gates, cells;       // per direction: (T, B, 4H) and (T, B, H), or a StepWindow's
  std::vector<DirectionWeights<T>> w; // per direction
  int64_t window_steps = 0;           // StepWindow::steps

  // Where step s's row at schedule position i, (t, b), finds its pre-activations (the cell writes
  // the activated gates over them), writes its cell, and finds the cell of the step before.
  T* gate_row(const math::CallDims& c, int64_t d, int64_t s, int64_t i, int64_t t, int64_t b) const {
    return gates[d] + (window_steps ? (s % window_steps) * c.B + i : c.row(t, b)) * c.G;
  }
  T* cell_row(const math::CallDims& c, int64_t d, int64_t s, int64_t i, int64_t t, int64_t b) const {
    return cells[d] + (window_steps ? (s % 2) * c.B + i : c.row(t, b)) * c.H;
  }
  const T* c_prev_row(const LstmForwardArgs<T>& a, const math::CallDims& c, int64_t d, int64_t s,
                      int64_t i, int64_t t, int64_t b) const {
    const int64_t len = a.lengths[b];
    if (!window_steps || math::first_step(d, t, len))
      return math::c_prev_of(c, a.c0, static_cast<const T*>(cells[d]), l, d, t, b, len);
    return cells[d] + ((s - 1) % 2 * c.B + i) * c.H;
  }
};

template <typename T>
ForwardLayer<T> forward_layer(const LstmForwardArgs<T>& a, const math::CallDims& c, int64_t l,
                              const T* X, StepWindow<T>& window, const ParallelFor& parallel_for) {
  ForwardLayer<T> L{l, c.layer_input(l), X, layer_output(a, l), {}, {}, {}, window.steps};
  for (int64_t d = 0; d < c.D; ++d) {
    const int64_t w = l * c.D + d;
    DirectionWeights<T> dw;
    transposed_weights(a, c, L.K, w, dw, parallel_for);
    if (c.proj) dw.wt_hr = transposed(a.weights.w_hr[w], c.RH, c.H);
    if (c.bias) {
      DenormalGuard guard;  // this add runs on the calling thread: keep its subnormals too
      dw.bias.resize(static_cast<size_t>(c.G));
      for (int64_t n = 0; n < c.G; ++n) dw.bias[n] = a.weights.b_ih[w][n] + a.weights.b_hh[w][n];
    }
    L.w.push_back(std::move(dw));
    if (window.steps) {
      L.gates.push_back(window.gates.data() + d * window.steps * c.B * c.G);
      L.cells.push_back(window.cells.data() + d * 2 * c.B * c.H);
    } else {
      L.gates.push_back(a.gates + c.saved_rows(l, d) * c.G);
      L.cells.push_back(a.cells + c.saved_rows(l, d) * c.H);
    }
  }
  return L;
}

// Padding rows of every output the forward writes are 0.
template <typename T>
void zero_forward_padding(const LstmForwardArgs<T>& a, const math::CallDims& c) {
  zero_padding(a.y, c.DH, a.lengths, c.T, c.B);
  for (int64_t l = 0; l < layer_out_slices(a.shape); ++l)
    zero_padding(a.layer_out + l * c.T * c.B * c.DH, c.DH, a.lengths, c.T, c.B);
  for (int64_t ld = 0; a.gates && ld < c.KL * c.D; ++ld) {  // none with a StepWindow
    zero_padding(a.gates + ld * c.T * c.B * c.G, c.G, a.lengths, c.T, c.B);
    zero_padding(a.cells + ld * c.T * c.B * c.H, c.H, a.lengths, c.T, c.B);
  }
}

// The input projection's products, one per direction, as one parallel region: (b_ih + b_hh) + X
// (X alone without biases) into the pre-activation rows c_rows[d], X the chunked sum of the layer
// input's rows a_rows[d] . W_ih^T.
template <typename T>
void project_rows(const math::CallDims& c, const ForwardLayer<T>& L,
                  const std::vector<std::vector<const T*>>& a_rows,
                  const std::vector<std::vector<T*>>& c_rows, const ParallelFor& parallel_for) {
  std::vector<std::vector<const T*>> b_rows(c.D);
  std::vector<GemmGroup<T>> groups;
  for (int64_t d = 0; d < c.D; ++d) {
    b_rows[d] = weight_rows(L.w[d].wt_ih, L.K, c.G);
    groups.push_back({static_cast<int64_t>(a_rows[d].size()), a_rows[d].data(), b_rows[d].data(),
                      c_rows[d].data(), c.bias ? GemmEpilogue::kAddVector : GemmEpilogue::kStore,
                      L.w[d].bias.data(), panels_or_null(L.w[d].ih_panels)});
  }
  gemm_chain<T, false>(groups, c.G, L.K, parallel_for);
}

// Input projection (phases.h): every valid step's pre-activations, both directions, in storage
// order.
template <typename T>
void input_projection(const math::CallDims& c, const StepSchedule& sched, const ForwardLayer<T>& L,
                      const ParallelFor& parallel_for) {
  const int64_t R = static_cast<int64_t>(sched.valid.size());
  std::vector<std::vector<const T*>> a_rows(c.D, std::vector<const T*>(R));
  std::vector<std::vector<T*>> c_rows(c.D, std::vector<T*>(R));
  for (int64_t d = 0; d < c.D; ++d)
    for (int64_t v = 0; v < R; ++v) {
      a_rows[d][v] = L.X + sched.valid[v] * L.K;
      c_rows[d][v] = L.gates[d] + sched.valid[v] * c.G;
    }
  project_rows(c, L, a_rows, c_rows, parallel_for);
}

// The input projection of steps s0 .. s1-1 into a StepWindow (ForwardLayer::gate_row): the same
// sums as input_projection's for those steps' rows, per direction the rows its steps reach.
template <typename T>
void input_projection_window(const math::CallDims& c, const StepSchedule& sched,
                             const int64_t* lengths, const ForwardLayer<T>& L, int64_t s0,
                             int64_t s1, const ParallelFor& parallel_for) {
  std::vector<std::vector<const T*>> a_rows(c.D);
  std::vector<std::vector<T*>> c_rows(c.D);
  for (int64_t d = 0; d < c.D; ++d)
    for (int64_t s = s0; s < s1; ++s)
      for (int64_t i = 0; i < sched.active[s]; ++i) {
        const int64_t b = sched.order[i], t = math::step_time(d, s, lengths[b]);
        a_rows[d].push_back(L.X + c.row(t, b) * L.K);
        c_rows[d].push_back(L.gate_row(c, d, s, i, t, b));
      }
  project_rows(c, L, a_rows, c_rows, parallel_for);
}

// The row pointers of one step of the recurrence: split by units, direction d's rows at
// [d * B, d * B + active); split by sequences, one group's rows from 0.
template <typename T>
struct StepRowsCpu {
  std::vector<const T*> h_prev, c_prev, m;  // m: the cell outputs with projections
  std::vector<T*> gates, r, h, cell, out;   // r: the recurrent parts; out: where the cell writes h (or m)
  explicit StepRowsCpu(int64_t rows)
      : h_prev(rows), c_prev(rows), m(rows), gates(rows), r(rows), h(rows), cell(rows), out(rows) {}
};

// The recurrence's fixed operands: W_hh^T and W_hr^T rows and W_hh^T's panels (per direction, in
// DirectionWeights).
template <typename T>
struct RecurrenceOperands {
  std::vector<const T*> hh_rows, hr_rows;
  std::vector<const T*> hh_panels;
};

// A step's scratch rows: the recurrent parts R = h_prev . W_hh^T (rows r_stride apart) and, with
// projections, the cell's output m = o * tanh(c) before h = W_hr m.
template <typename T>
struct StepBuffers {
  Buffer<T> r, m;
};

// Row stride of StepBuffers::r: 4H plus one cache line. 4H floats is a power of two at common
// sizes, and a unit block's cell reads its slice of every row: at 4H apart those slices share 2 of
// L1's 64 sets and evict each other (with the kept gates, the cell ~28% faster in isolation at
// hidden 512).
template <typename T>
int64_t r_stride(const math::CallDims& c) {
  return c.G + 64 / static_cast<int64_t>(sizeof(T));
}

template <typename T>
StepBuffers<T> step_buffers(const math::CallDims& c, int64_t rows) {
  StepBuffers<T> buf;
  buf.r.resize(static_cast<size_t>(rows * r_stride<T>(c)));
  if (c.proj) buf.m.resize(static_cast<size_t>(rows * c.H));
  return buf;
}

template <typename T>
RecurrenceOperands<T> recurrence_operands(const math::CallDims& c, const ForwardLayer<T>& L) {
  RecurrenceOperands<T> ops;
  for (int64_t d = 0; d < c.D; ++d) {
    const std::vector<const T*> rows = weight_rows(L.w[d].wt_hh, c.RH, c.G);
    ops.hh_rows.insert(ops.hh_rows.end(), rows.begin(), rows.end());
    ops.hh_panels.push_back(panels_or_null(L.w[d].hh_panels));
  }
  if (c.proj) {
    ops.hr_rows.resize(c.D * c.H);
    for (int64_t d = 0; d < c.D; ++d)
      for (int64_t p = 0; p < c.H; ++p) ops.hr_rows[d * c.H + p] = L.w[d].wt_hr.data() + p * c.RH;
  }
  return ops;
}

// Step s's rows of direction d at schedule positions first, first + stride, ... below active[s]
// (the split by units takes all: first 0, stride 1): where h_prev, c_prev and the gates are, each
// given slot k = slot0, slot0 + 1, ... and row k of buf. Returns how many.
template <typename T>
int64_t fill_step_rows(const LstmForwardArgs<T>& a, const math::CallDims& c, const StepSchedule& sched,
                       const ForwardLayer<T>& L, StepBuffers<T>& buf, int64_t s, int64_t d,
                       int64_t first, int64_t stride, int64_t slot0, StepRowsCpu<T>& rows) {
  int64_t k = slot0;
  for (int64_t i = first; i < sched.active[s]; i += stride, ++k) {
    const int64_t b = sched.order[i], len = a.lengths[b], t = math::step_time(d, s, len);
    rows.h_prev[k] = math::h_prev_of(c, a.h0, static_cast<const T*>(L.Y), L.l, d, t, b, len);
    rows.c_prev[k] = L.c_prev_row(a, c, d, s, i, t, b);
    rows.gates[k] = L.gate_row(c, d, s, i, t, b);
    rows.r[k] = buf.r.data() + k * r_stride<T>(c);
    rows.cell[k] = L.cell_row(c, d, s, i, t, b);
    rows.h[k] = L.Y + c.out_offset(t, b, d);
    rows.m[k] = c.proj ? buf.m.data() + k * c.H : nullptr;
    rows.out[k] = c.proj ? buf.m.data() + k * c.H : rows.h[k];
  }
  return k - slot0;
}

// Where the cell of row i, unit j reads and writes (cell_forward_rows).
template <typename T>
auto cell_forward_at(const StepRowsCpu<T>& rows) {
  return [&rows](int64_t i, int64_t j) {
    return CellForwardAt<T>{rows.gates[i] + j, rows.r[i] + j, rows.c_prev[i] + j, rows.cell[i] + j,
                            rows.out[i] + j};
  };
}

// The lines the cell of units u0 .. u1-1 of rows i0 .. i1-1 will touch (see prefetch_span): the
// input parts of the pre-activations, and the cell and h rows it writes. c_prev is left out: from
// the second step on it is the step before's output, already in cache.
template <typename T>
void prefetch_cell_rows(const StepRowsCpu<T>& rows, int64_t H, int64_t i0, int64_t i1, int64_t u0,
                        int64_t u1) {
  for (int64_t i = i0; i < i1; ++i) {
    for (int64_t gate = 0; gate < 4; ++gate) prefetch_span(rows.gates[i] + gate * H + u0, u1 - u0);
    prefetch_span<true>(rows.cell[i] + u0, u1 - u0);
    prefetch_span<true>(rows.out[i] + u0, u1 - u0);
  }
}

// One step of the recurrence split by units (phases.h): R = the chunked sum of h_prev . W_hh^T for
// every gate row, then the cell on a = pre + R (rule 4). A hidden unit's four gates, its cell and
// its h depend on no other unit of the step, so one task per (direction, block of kUnitBlock units)
// runs the recurrent product for the block's gate columns over all rows, then their cells, reading
// its slice of W_hh^T once per step. A tile of kMR rows runs all four gates' columns before the
// next tile: its h_prev rows stay in L1 while the gates' panels stream from L2 (gate-major re-read
// every row tile from L2: ~6% slower at hidden 512, batch 64, one thread). With projections h =
// W_hr m needs every unit of a row: a second region, by row tiles. The cell's inputs of this step
// were asked for a step ahead (next, with its n_next rows): memory latency measured longer than
// one step's product at hidden 128.
template <typename T>
void recurrence_step(const math::CallDims& c, int64_t n, const RecurrenceOperands<T>& ops,
                     StepRowsCpu<T>& rows, const StepRowsCpu<T>& next, int64_t n_next,
                     const ParallelFor& parallel_for) {
  std::vector<GemmGroup<T>> groups, projections;
  for (int64_t d = 0; d < c.D; ++d) {
    const int64_t k = d * c.B;
    groups.push_back({n, rows.h_prev.data() + k, ops.hh_rows.data() + d * c.RH, rows.r.data() + k,
                      GemmEpilogue::kStore, nullptr, ops.hh_panels[d]});
    if (c.proj)  // h = W_hr m: the chunked sum over k = 0 .. H-1 (rule 4)
      projections.push_back({n, rows.m.data() + k, ops.hr_rows.data() + d * c.H,
                             rows.h.data() + k, GemmEpilogue::kStore, nullptr});
  }
  const int64_t unit_blocks = (c.H + kUnitBlock - 1) / kUnitBlock;
  parallel_for(c.D * unit_blocks, 1, [&](int64_t begin, int64_t end) {
    DenormalGuard guard;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t d = task / unit_blocks, u0 = (task % unit_blocks) * kUnitBlock;
      const int64_t u1 = std::min(u0 + kUnitBlock, c.H);
      prefetch_cell_rows(next, c.H, d * c.B, d * c.B + n_next, u0, u1);
      for (int64_t m0 = 0; m0 < n; m0 += kMR)
        for (int64_t gate = 0; gate < 4; ++gate)
          gemm_block<T, false>(groups[d], c.RH, m0, std::min<int64_t>(m0 + kMR, n), gate * c.H + u0,
                               gate * c.H + u1);
      cell_forward_rows<T>(c.H, d * c.B, d * c.B + n, u0, u1, cell_forward_at(rows));
    }
  });
  if (!c.proj) return;
  const int64_t tiles = (n + kMR - 1) / kMR;
  parallel_for(c.D * tiles, 1, [&](int64_t begin, int64_t end) {
    DenormalGuard guard;
    for (int64_t task = begin; task < end; ++task)
      gemm_rows<T, false>(projections[task / tiles], c.RH, c.H, (task % tiles) * kMR);
  });
}

// The recurrence split by units: the steps in order, each one parallel region (recurrence_step);
// steps no row reaches are skipped.
template <typename T>
void recurrence_by_units(const LstmForwardArgs<T>& a, const math::CallDims& c,
                         const StepSchedule& sched, const ForwardLayer<T>& L,
                         const RecurrenceOperands<T>& ops, int64_t s0, int64_t s1,
                         const ParallelFor& parallel_for) {
  StepBuffers<T> buf = step_buffers<T>(c, c.D * c.B);
  StepRowsCpu<T> rows[2] = {StepRowsCpu<T>(c.D * c.B), StepRowsCpu<T>(c.D * c.B)};
  const auto active = [&](int64_t s) { return s < s1 ? sched.active[s] : 0; };
  const auto fill = [&](int64_t s, StepRowsCpu<T>& into) {
    for (int64_t d = 0; d < c.D; ++d) fill_step_rows(a, c, sched, L, buf, s, d, 0, 1, d * c.B, into);
  };
  fill(s0, rows[s0 % 2]);
  for (int64_t d = 0; d < c.D; ++d)  // the first step's inputs: no step before asked for them
    prefetch_cell_rows(rows[s0 % 2], c.H, d * c.B, d * c.B + active(s0), 0, c.H);
  for (int64_t s = s0; active(s) > 0; ++s) {
    StepRowsCpu<T>& now = rows[s % 2];
    StepRowsCpu<T>& next = rows[(s + 1) % 2];
    if (active(s + 1) > 0) fill(s + 1, next);
    recurrence_step(c, active(s), ops, now, next, active(s + 1), parallel_for);
  }
}

// Every step of one group of the split by sequences (recurrence_split): direction d's rows at
// schedule positions first, first + stride, ..., on the calling thread. Per step the recurrent
// product of the group's rows over every gate column (gemm_block: each strip of W_hh^T read once
// and used by every row tile), the cell over whole rows, and with projections h = W_hr m.
template <typename T>
void sequence_group_steps(const LstmForwardArgs<T>& a, const math::CallDims& c,
                          const StepSchedule& sched, const ForwardLayer<T>& L,
                          const RecurrenceOperands<T>& ops, const SequenceGroup& group, int64_t s0,
                          int64_t s1) {
  const int64_t d = group.d, most = group.rows(sched.active[s0]);
  StepBuffers<T> buf = step_buffers<T>(c, most);
  StepRowsCpu<T> rows(most);
  for (int64_t s = s0; s < s1; ++s) {
    const int64_t n = fill_step_rows(a, c, sched, L, buf, s, d, group.first, group.stride, 0, rows);
    if (n == 0) break;  // active[] never grows again
    const GemmGroup<T> product{n, rows.h_prev.data(), ops.hh_rows.data() + d * c.RH, rows.r.data(),
                               GemmEpilogue::kStore, nullptr, ops.hh_panels[d]};
    gemm_block<T, false>(product, c.RH, 0, n, 0, c.G);
    cell_forward_rows<T>(c.H, 0, n, 0, c.H, cell_forward_at(rows));
    if (!c.proj) continue;
    const GemmGroup<T> projection{n, rows.m.data(), ops.hr_rows.data() + d * c.H, rows.h.data(),
                                  GemmEpilogue::kStore, nullptr};
    gemm_block<T, false>(projection, c.H, 0, n, 0, c.RH);
  }
}

// The recurrence (phases.h) of steps s0 .. s1-1 (every step: 0 .. T), split by units or by
// sequences (recurrence_split).
template <typename T>
void recurrence(const LstmForwardArgs<T>& a, const math::CallDims& c, const StepSchedule& sched,
                const ForwardLayer<T>& L, int64_t s0, int64_t s1, const ParallelFor& parallel_for) {
  const RecurrenceOperands<T> ops = recurrence_operands(c, L);
  const int64_t per_direction = sequence_groups(c, sched, parallel_for.threads);
  if (per_direction == 0) return recurrence_by_units(a, c, sched, L, ops, s0, s1, parallel_for);
  for_sequence_groups(c.D, per_direction, parallel_for, [&](const SequenceGroup& group) {
    sequence_group_steps(a, c, sched, L, ops, group, s0, s1);
  });
}

// The input projection and the recurrence of one layer: every step's projection, then every step;
// with a StepWindow, a window of steps' projection, then those steps, window after window.
template <typename T>
void projection_and_recurrence(const LstmForwardArgs<T>& a, const math::CallDims& c,
                               const StepSchedule& sched, const ForwardLayer<T>& L,
                               const ParallelFor& parallel_for) {
  const double D = static_cast<double>(c.D), per_row = c.RH * c.G + (c.proj ? c.H * c.RH : 0);
  if (!L.window_steps) {
    const double R = static_cast<double>(sched.valid.size());
    timed(CpuPhase::kInputProjection, R * D * L.K * c.G,
          [&] { input_projection(c, sched, L, parallel_for); });
    timed(CpuPhase::kRecurrence, R * D * per_row,
          [&] { recurrence(a, c, sched, L, 0, c.T, parallel_for); });
    return;
  }
  for (int64_t s0 = 0; s0 < c.T && sched.active[s0] > 0; s0 += L.window_steps) {
    const int64_t s1 = std::min(s0 + L.window_steps, c.T);
    double R = 0;
    for (int64_t s = s0; s < s1; ++s) R += static_cast<double>(sched.active[s]);
    timed(CpuPhase::kInputProjection, R * D * L.K * c.G,
          [&] { input_projection_window(c, sched, a.lengths, L, s0, s1, parallel_for); });
    timed(CpuPhase::kRecurrence, R * D * per_row,
          [&] { recurrence(a, c, sched, L, s0, s1, parallel_for); });
  }
}

// Final states (phases.h): h_n and c_n, forward after step len-1, reverse after step 0.
template <typename T>
void final_states(const LstmForwardArgs<T>& a, const math::CallDims& c, const StepSchedule& sched,
                  const ForwardLayer<T>& L) {
  for (int64_t d = 0; d < c.D; ++d)
    for (int64_t i = 0; i < c.B; ++i) {  // schedule positions: where a StepWindow keeps the cells
      const int64_t b = sched.order[i], t = d == 0 ? a.lengths[b] - 1 : 0;
      const T* h = L.Y + c.out_offset(t, b, d);
      const T* cell = L.cell_row(c, d, a.lengths[b] - 1, i, t, b);
      std::copy(h, h + c.RH, a.h_n + c.state_row(L.l, d, b) * c.RH);
      std::copy(cell, cell + c.H, a.c_n + c.state_row(L.l, d, b) * c.H);
    }
}

template <typename T>
void lstm_forward(const LstmForwardArgs<T>& a, const ParallelFor& parallel_for) {
  const math::CallDims c(a.shape);
  const StepSchedule sched(a.lengths, c.T, c.B);
  zero_forward_padding(a, c);
  Buffer<T> dropped;
  StepWindow<T> window = step_window<T>(c, a.shape.keeps_every_layer);
  for (int64_t l = 0; l < c.L; ++l) {
    const ForwardLayer<T> L = forward_layer(
        a, c, l, dropped_layer_input(a, l, sched, dropped, parallel_for), window, parallel_for);
    projection_and_recurrence(a, c, sched, L, parallel_for);
    final_states(a, c, sched, L);
  }
}
