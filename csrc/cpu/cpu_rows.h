// Row-wise pieces of the CPU kernels: transposes, padding, dropout, prefetch hints and the cell over
// a block of rows and units. Included by lstm_cpu_impl.h inside one instruction-set variant's
// namespace.

template <typename T>
Buffer<T> transposed(const T* w, int64_t rows, int64_t cols) {
  // by 32 x 32 blocks: both the reads and the writes stay within a few cache lines per block
  constexpr int64_t kBlock = 32;
  Buffer<T> out(static_cast<size_t>(rows * cols));
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock)
    for (int64_t c0 = 0; c0 < cols; c0 += kBlock)
      for (int64_t c = c0; c < std::min(c0 + kBlock, cols); ++c)
        for (int64_t r = r0; r < std::min(r0 + kBlock, rows); ++r)
          out[c * rows + r] = w[r * cols + c];
  return out;
}

#if DETLSTM_CPU_AVX512
// The high 32 bits of each lane's 32 x 32 -> 64-bit product: the even lanes' products from one
// vpmuludq, the odd lanes' from a second on the words shifted down.
inline __m512i mul_hi_u32x16(__m512i a, __m512i b) {
  const __m512i even = _mm512_mul_epu32(a, b);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), _mm512_srli_epi64(b, 32));
  return _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}

// math::dropout_draws for the 16 feature groups g0 .. g0+15 of one (layer, step, row) at once:
// word q of group g0 + k in lane k of w[q]. Integer arithmetic, so exactly philox4x32_10's words;
// the scalar generator costs ~25 instructions a feature, a few percent of a small layer's forward.
struct DropoutDrawsX16 {
  __m512i w[4];
};
inline DropoutDrawsX16 dropout_draws_x16(uint64_t seed, uint32_t layer, uint32_t step, uint32_t row,
                                         uint32_t g0) {
  const __m512i mul0 = _mm512_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m512i mul1 = _mm512_set1_epi32(static_cast<int>(0xCD9E8D57u));
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512i w0 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(g0)), lanes);
  __m512i w1 = _mm512_set1_epi32(static_cast<int>(row)), w2 = _mm512_set1_epi32(static_cast<int>(step));
  __m512i w3 = _mm512_set1_epi32(static_cast<int>(layer));
  uint32_t key0 = static_cast<uint32_t>(seed), key1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    if (round > 0) key0 += 0x9E3779B9u, key1 += 0xBB67AE85u;
    const __m512i hi0 = mul_hi_u32x16(mul0, w0), lo0 = _mm512_mullo_epi32(mul0, w0);
    const __m512i hi1 = mul_hi_u32x16(mul1, w2), lo1 = _mm512_mullo_epi32(mul1, w2);
    w0 = _mm512_xor_si512(_mm512_xor_si512(hi1, w1), _mm512_set1_epi32(static_cast<int>(key0)));
    w1 = lo1;
    w2 = _mm512_xor_si512(_mm512_xor_si512(hi0, w3), _mm512_set1_epi32(static_cast<int>(key1)));
    w3 = lo0;
  }
  return {{w0, w1, w2, w3}};
}

// Dropout on the 64 float features of 16 groups (math::dropout_apply lane by lane): feature 4k + q
// draws word q of group k, so the words are first put in feature order (a 4 x 4 transpose within
// each 128-bit lane, then the lanes gathered: features 16j .. 16j+15 in vector j); a feature is
// kept (y * scale, one rounding as in the scalar code) where its draw >= threshold, else +0.
// Replaced a scalar loop over the 64 features: ~2.5% of a dense forward + backward at one thread.
inline void apply_dropout_x64(const DropoutDrawsX16& d, uint64_t threshold, float scale, const float* y,
                              float* out) {
  const __m512i a = _mm512_unpacklo_epi32(d.w[0], d.w[1]), b = _mm512_unpackhi_epi32(d.w[0], d.w[1]);
  const __m512i c = _mm512_unpacklo_epi32(d.w[2], d.w[3]), e = _mm512_unpackhi_epi32(d.w[2], d.w[3]);
  // r0 .. r3: in 128-bit lane L, the words of groups 4L, 4L+1, 4L+2, 4L+3 (features 16L + 4i ..)
  const __m512i r0 = _mm512_unpacklo_epi64(a, c), r1 = _mm512_unpackhi_epi64(a, c);
  const __m512i r2 = _mm512_unpacklo_epi64(b, e), r3 = _mm512_unpackhi_epi64(b, e);
  const __m512i t0 = _mm512_shuffle_i32x4(r0, r1, _MM_SHUFFLE(1, 0, 1, 0));
  const __m512i t1 = _mm512_shuffle_i32x4(r2, r3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m512i t2 = _mm512_shuffle_i32x4(r0, r1, _MM_SHUFFLE(3, 2, 3, 2));
  const __m512i t3 = _mm512_shuffle_i32x4(r2, r3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m512i in_order[4] = {_mm512_shuffle_i32x4(t0, t1, _MM_SHUFFLE(2, 0, 2, 0)),
                               _mm512_shuffle_i32x4(t0, t1, _MM_SHUFFLE(3, 1, 3, 1)),
                               _mm512_shuffle_i32x4(t2, t3, _MM_SHUFFLE(2, 0, 2, 0)),
                               _mm512_shuffle_i32x4(t2, t3, _MM_SHUFFLE(3, 1, 3, 1))};
  const bool keeps_any = threshold <= 0xFFFFFFFFu;  // threshold 2^32 (p = 1) keeps nothing
  const __m512i bound = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(threshold)));
  const __m512 factor = _mm512_set1_ps(scale);
  for (int j = 0; j < 4; ++j) {
    const __mmask16 keep = keeps_any ? _mm512_cmpge_epu32_mask(in_order[j], bound) : __mmask16(0);
    _mm512_storeu_ps(out + 16 * j, _mm512_maskz_mul_ps(keep, _mm512_loadu_ps(y + 16 * j), factor));
  }
}
#endif

// Layer `layer`'s output y (valid rows only) with dropout applied, into out (same layout; out may
// be y). The AVX-512 build draws 64 features at a time (dropout_draws_x16), the rest one Philox
// block of 4 at a time: the same draws either way.
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
      const auto layer32 = static_cast<uint32_t>(layer), t32 = static_cast<uint32_t>(t);
      const auto b32 = static_cast<uint32_t>(b);
      int64_t f0 = 0;
#if DETLSTM_CPU_AVX512
      for (; f0 + 64 <= width; f0 += 64) {
        const DropoutDrawsX16 draws =
            dropout_draws_x16(dp.seed, layer32, t32, b32, static_cast<uint32_t>(f0 / 4));
        if constexpr (std::is_same<T, float>::value) {
          apply_dropout_x64(draws, dp.threshold, scale, src + f0, dst + f0);
          continue;
        }
        uint32_t words[4][16];
        for (int q = 0; q < 4; ++q) _mm512_storeu_si512(words[q], draws.w[q]);
        for (int k = 0; k < 16; ++k)
          for (int q = 0; q < 4; ++q) {
            const int64_t f = f0 + 4 * k + q;
            dst[f] = math::dropout_apply(src[f], words[q][k], dp.threshold, scale);
          }
      }
#endif
      for (; f0 < width; f0 += 4) {
        const math::Philox4x32 draws =
            math::dropout_draws(dp.seed, layer32, t32, b32, static_cast<uint32_t>(f0 / 4));
        for (int64_t q = 0; q < 4 && f0 + q < width; ++q)
          dst[f0 + q] = math::dropout_apply(src[f0 + q], draws.v[q], dp.threshold, scale);
      }
    }
  });
}

// Asks for the cache lines of n values from p before they are read (or, with kWrite, written). The
// cell reads gate pre-activations the input projection wrote long before (a whole layer's worth:
// far out of L2), a unit block's slice of each row sitting alone in its cache line, a pattern no
// hardware prefetcher follows: issued before the step's product, the lines arrive while it runs.
// Only a hint: no value changes.
template <bool kWrite = false, typename T>
inline void prefetch_span(const T* p, int64_t n) {
  const char* end = reinterpret_cast<const char*>(p + n);
  for (const char* q = reinterpret_cast<const char*>(p); q < end; q += 64)
    __builtin_prefetch(q, kWrite ? 1 : 0, 3);
}

template <typename T>
void zero_padding(T* base, int64_t width, const int64_t* lengths, int64_t steps, int64_t B) {
  for (int64_t t = 0; t < steps; ++t)
    for (int64_t b = 0; b < B; ++b)
      if (t >= lengths[b]) std::fill(base + (t * B + b) * width, base + (t * B + b + 1) * width, T(0));
}

// Where the cell of one row reads and writes, each pointer advanced to the unit at hand (gate k of
// that unit at + k * H).
template <typename T>
struct CellForwardAt {
  T* g;             // in: the input parts of the pre-activations ((b_ih + b_hh) + X, or X); out: gates
  const T* r;       // the recurrent parts R: a = g + r (rule 4)
  const T* c_prev;
  T* c_out;
  T* h_out;         // h = o * tanh(c) (m with projections)
};
template <typename T>
struct CellBackwardAt {
  const T* dh;      // the gradient reaching h (m with projections)
  T* dc;            // in: the gradient reaching c from the step after; out: the one reaching c_prev
  const T* g;       // the activated gates the forward saved
  const T* c;
  const T* c_prev;
  T* da;            // out: the gate pre-activation gradients
};

// Runs a cell over rows i0 .. i1-1, units j0 .. j1-1; at(i, j) gives row i's pointers at unit j. In
// the vector builds (float) whole vectors go two at a time through vectors(N, slots) (N = 2; a last
// odd one alone, N = 1: see lanes_pair.h), and the units past a row's last whole vector, like every
// unit elsewhere, through scalar(slot). Each unit's bits are the same on every path.
template <typename T, class At, class Vectors, class Scalar>
void for_cell_slots(int64_t i0, int64_t i1, int64_t j0, int64_t j1, At at, Vectors vectors,
                    Scalar scalar) {
  int64_t j_scalar = j0;
#if DETLSTM_CPU_AVX2
  if constexpr (std::is_same<T, float>::value) {
    constexpr int64_t W = math::kVecLanes;
    const int64_t per_row = (j1 - j0) / W, n = (i1 - i0) * per_row;
    j_scalar = j0 + per_row * W;
    decltype(at(i0, j0)) slot[2];
    const auto fill = [&](int q, int64_t k) { slot[q] = at(i0 + k / per_row, j0 + k % per_row * W); };
    int64_t k = 0;
    for (; k + 2 <= n; k += 2) {
      fill(0, k);
      fill(1, k + 1);
      vectors(std::integral_constant<int, 2>(), slot);
    }
    if (k < n) {
      fill(0, k);
      vectors(std::integral_constant<int, 1>(), slot);
    }
  }
#endif
  for (int64_t i = i0; i < i1; ++i)
    for (int64_t j = j_scalar; j < j1; ++j) scalar(at(i, j));
}

#if DETLSTM_CPU_AVX2
// One vector (N = 1) or a pair (N = 2) of the cell's lanes, and their loads and stores: slot s's
// vector at ptr(s).
template <int N>
using CellVec = std::conditional_t<N == 1, math::VecF, math::Two<math::VecF>>;

template <int N, class Ptr>
CellVec<N> load_slots(Ptr ptr) {
  if constexpr (N == 1) return math::VecF::load(ptr(0));
  else return CellVec<N>(math::VecF::load(ptr(0)), math::VecF::load(ptr(1)));
}
template <int N, class Ptr>
void store_slots(const CellVec<N>& v, Ptr ptr) {
  if constexpr (N == 1) {
    v.store(ptr(0));
  } else {
    v.a.store(ptr(0));
    v.b.store(ptr(1));
  }
}

// The cell forward's first half (lstm_cell_gates) on one vector or a pair: the activated gates
// replace the pre-activations' input parts in g (the backward reads them there) and go to kept, slot
// s's gate k at kept + (s * 4 + k) * lanes, where the second half reads them: g's rows are 4H apart
// (a power of two at common sizes), so a unit block's rows share a few cache sets and a second pass
// over them missed L1 (measured: the cell ~20% slower, see cell_forward_vectors).
// flatten: the canonical functions are inlined here (GCC left exp a call that passed its two
// vectors through memory; measured at hidden 512: the whole cell ~12% slower).
template <int N>
__attribute__((flatten)) void cell_gates_vectors(const CellForwardAt<float>* at, int64_t H,
                                                 float* kept) {
  constexpr int64_t W = math::kVecLanes;
  const auto in = [&](int64_t k) {
    return load_slots<N>([&](int s) { return at[s].g + k; }) +
           load_slots<N>([&](int s) { return at[s].r + k; });
  };
  const math::CellState<CellVec<N>> st = math::lstm_cell_gates(in(0), in(H), in(2 * H), in(3 * H));
  const CellVec<N>* gates[4] = {&st.i, &st.f, &st.g, &st.o};
  for (int k = 0; k < 4; ++k) {
    store_slots<N>(*gates[k], [&](int s) { return at[s].g + k * H; });
    store_slots<N>(*gates[k], [&](int s) { return kept + (s * 4 + k) * W; });
  }
}

// Its second half (lstm_cell_state), from the gates cell_gates_vectors kept.
template <int N>
__attribute__((flatten)) void cell_state_vectors(const CellForwardAt<float>* at, const float* kept) {
  constexpr int64_t W = math::kVecLanes;
  const auto gate = [&](int64_t k) { return load_slots<N>([&](int s) { return kept + (s * 4 + k) * W; }); };
  math::CellState<CellVec<N>> st;
  st.i = gate(0);
  st.f = gate(1);
  st.g = gate(2);
  st.o = gate(3);
  math::lstm_cell_state(st, load_slots<N>([&](int s) { return at[s].c_prev; }));
  store_slots<N>(st.c, [&](int s) { return at[s].c_out; });
  store_slots<N>(st.h, [&](int s) { return at[s].h_out; });
}

template <int N>
__attribute__((flatten)) void cell_backward_vectors(const CellBackwardAt<float>* at, int64_t H) {
  const auto ld = [&](auto member, int64_t k) {
    return load_slots<N>([&](int s) { return at[s].*member + k; });
  };
  using A = CellBackwardAt<float>;
  const math::CellGrad<CellVec<N>> cg = math::lstm_cell_backward(
      ld(&A::dh, 0), load_slots<N>([&](int s) { return at[s].dc; }), ld(&A::g, 0), ld(&A::g, H),
      ld(&A::g, 2 * H), ld(&A::g, 3 * H), ld(&A::c, 0), ld(&A::c_prev, 0));
  store_slots<N>(cg.da_i, [&](int s) { return at[s].da; });
  store_slots<N>(cg.da_f, [&](int s) { return at[s].da + H; });
  store_slots<N>(cg.da_g, [&](int s) { return at[s].da + 2 * H; });
  store_slots<N>(cg.da_o, [&](int s) { return at[s].da + 3 * H; });
  store_slots<N>(cg.dc_prev, [&](int s) { return at[s].dc; });
}
#endif

#if DETLSTM_CPU_AVX2
// Vector slots per run of the forward cell: a run's kept gates (kCellRun x 4 vectors, 8 KiB in the
// AVX-512 build) stay in L1 between its two passes.
constexpr int64_t kCellRun = 32;

// The whole vectors of the cell forward of rows i0 .. i1-1, units j0 .. j1-1, in runs of kCellRun
// slots (row-major: a row's vectors, then the next row's): the gates of every slot of the run, two
// at a time, then every slot's cell state and h. Each unit's cell is one long dependent chain
// (exponential, divisions, then tanh of the new state), and a pass of independent gate activations
// followed by a pass of short tanh chains lets the processor overlap slots that a whole cell per
// slot kept apart (measured: see git log). Returns the first unit of each row left to the scalar
// path.
template <class At>
int64_t cell_forward_vectors(int64_t H, int64_t i0, int64_t i1, int64_t j0, int64_t j1, At at) {
  constexpr int64_t W = math::kVecLanes;
  const int64_t per_row = (j1 - j0) / W, n = (i1 - i0) * per_row;
  alignas(64) float kept[kCellRun * 4 * W];
  CellForwardAt<float> slot[kCellRun];
  for (int64_t k0 = 0; k0 < n; k0 += kCellRun) {
    const int64_t run = std::min(kCellRun, n - k0);
    for (int64_t q = 0; q < run; ++q) slot[q] = at(i0 + (k0 + q) / per_row, j0 + (k0 + q) % per_row * W);
    int64_t q = 0;
    for (; q + 2 <= run; q += 2) cell_gates_vectors<2>(slot + q, H, kept + q * 4 * W);
    if (q < run) cell_gates_vectors<1>(slot + q, H, kept + q * 4 * W);
    for (q = 0; q + 2 <= run; q += 2) cell_state_vectors<2>(slot + q, kept + q * 4 * W);
    if (q < run) cell_state_vectors<1>(slot + q, kept + q * 4 * W);
  }
  return j0 + per_row * W;
}
#endif

// The cell forward of rows i0 .. i1-1, units j0 .. j1-1; at(i, j) gives row i's pointers at unit j.
// The vector builds run whole vectors through cell_forward_vectors, and the units past a row's last
// whole vector, like every unit elsewhere, one at a time here. Same operations per unit, same bits.
template <typename T, class At>
void cell_forward_rows(int64_t H, int64_t i0, int64_t i1, int64_t j0, int64_t j1, At at) {
  int64_t j_scalar = j0;
#if DETLSTM_CPU_AVX2
  if constexpr (std::is_same<T, float>::value) j_scalar = cell_forward_vectors(H, i0, i1, j0, j1, at);
#endif
  for (int64_t i = i0; i < i1; ++i)
    for (int64_t j = j_scalar; j < j1; ++j) {
      const CellForwardAt<T> p = at(i, j);
      const math::CellState<T> st = math::lstm_cell_forward(
          p.g[0] + p.r[0], p.g[H] + p.r[H], p.g[2 * H] + p.r[2 * H], p.g[3 * H] + p.r[3 * H],
          p.c_prev[0]);
      p.g[0] = st.i;
      p.g[H] = st.f;
      p.g[2 * H] = st.g;
      p.g[3 * H] = st.o;
      p.c_out[0] = st.c;
      p.h_out[0] = st.h;
    }
}

// The cell backward of rows i0 .. i1-1, units j0 .. j1-1 (at: see for_cell_slots).
template <typename T, class At>
void cell_backward_rows(int64_t H, int64_t i0, int64_t i1, int64_t j0, int64_t j1, At at) {
  for_cell_slots<T>(
      i0, i1, j0, j1, at,
      [&](auto n, const CellBackwardAt<T>* slots) {
#if DETLSTM_CPU_AVX2
        if constexpr (std::is_same<T, float>::value) cell_backward_vectors<decltype(n)::value>(slots, H);
#endif
        (void)n, (void)slots;
      },
      [&](const CellBackwardAt<T>& p) {
        const math::CellGrad<T> cg = math::lstm_cell_backward(
            p.dh[0], p.dc[0], p.g[0], p.g[H], p.g[2 * H], p.g[3 * H], p.c[0], p.c_prev[0]);
        p.da[0] = cg.da_i;
        p.da[H] = cg.da_f;
        p.da[2 * H] = cg.da_g;
        p.da[3 * H] = cg.da_o;
        p.dc[0] = cg.dc_prev;
      });
}


// Layer l's input as the layer reads it: x for layer 0; above, the layer below's output, through
// dropout into `dropped` when dropout is on (ARITHMETIC.md rule 7).
template <typename T>
const T* dropped_layer_input(const LstmForwardArgs<T>& f, int64_t l, const StepSchedule& sched,
                             Buffer<T>& dropped, const ParallelFor& parallel_for) {
  const T* X = layer_input(f, l);
  if (l == 0 || !f.dropout.active) return X;
  const math::CallDims c(f.shape);
  if (dropped.empty()) dropped.assign(static_cast<size_t>(c.T * c.B * c.DH), T(0));
  apply_dropout(f.dropout, l - 1, X, dropped.data(), c.DH, sched, c.B, parallel_for);
  return dropped.data();
}
