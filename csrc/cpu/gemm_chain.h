// Fixed-order matrix product for the CPU kernels (ARITHMETIC.md rule 3, chunked_sum.h).
//
// C[m][n] = epilogue(S(m, n)), S the chunked sum over p = 0 .. P-1 of A(m, p) * B(p, n): the p are
// cut into chunks of kSumChunk; each chunk is one chain of fma from +0 in ascending p; the chunk
// partials are left-folded, and the running fold is kept in C between chunks (a store and a reload
// are exact). The epilogue stores S, or v[n] + S. Tiling only decides which (m, n) a thread computes
// and when, and every reduction slice starts on a chunk boundary (kKCRows and kKCCols are multiples
// of kSumChunk), so the bits of C[m][n] depend on row m of A, column n of B and v alone: not on M
// (batch invariance), not on the thread count, not on the tile sizes, and not on whether the vector
// or the scalar micro-kernel ran.
//
// Included by lstm_cpu_impl.h inside one instruction-set variant's namespace.

template <typename T>
struct GemmGroup {
  int64_t M;
  const T* const* a;  // row mode: A(m, p) = a[m][p]; column mode: A(m, p) = a[p][m]
  const T* const* b;  // B(p, n) = b[p][n]
  T* const* c;        // C(m, n) = c[m][n]
  GemmEpilogue epilogue;
  const T* vec;  // GemmEpilogue::kAddVector: C(m, n) = vec[n] + S(m, n)
  // Optional copy of B in panels of kNR columns (pack_b_panels): the vector kernel then streams
  // contiguous memory instead of following a row pointer per p. Same values, so the same bits.
  const T* b_panels = nullptr;
  // Column mode: a further product over the same A (the same a pointers, M and P) with
  // shared_a_N columns, run by the same calls of gemm_block on the same packed slices of A after
  // this product's columns (dW_ih and dW_hh share da: packed once, not twice). It may link on.
  // Each gemm_block call runs the linked products whole, so only gemm_chain, whose column-mode
  // tasks take every column of a block of rows, may be given one; row mode ignores the link.
  const GemmGroup* shared_a = nullptr;
  int64_t shared_a_N = 0;
};

// Rows of C per micro-tile: 6 x 2 AVX2 accumulators fill 12 of 16 registers; the AVX-512 build keeps
// 8 accumulators and 8 running folds in its 32.
constexpr int kMR = DETLSTM_CPU_AVX512 ? 8 : 6;
constexpr int kNR = 16;    // columns of C per micro-tile (two AVX2 vectors, one AVX-512 vector)
constexpr int kNB = 512;   // columns of C per row-mode task (see gemm_chain)
// Reduction slices (values of p per pass over a block's strips). Column mode packs A per slice
// (kMBCols x kKCCols values, 256 KiB, in L2). Row mode reads A's kMR rows in place (8 x kKCRows
// values, in L1) and a row-mode task is one tile, so a strip of B is read once per task whatever
// the slice: a longer one only saves micro-kernel calls and the reload of C between slices
// (input projection at hidden 512, two threads: 62.1 -> 60.6 ms, 256 -> 512).
constexpr int kKCRows = 512;
constexpr int kKCCols = 256;
static_assert(kKCRows % math::kSumChunk == 0 && kKCCols % math::kSumChunk == 0,
              "a reduction slice must start on a chunk boundary");

// Sets the x86 control bits that would flush subnormals (FTZ, DAZ) to IEEE behaviour for the
// current thread while a kernel runs, and restores the caller's bits after (ARITHMETIC.md rule 2).
struct DenormalGuard {
#if defined(__x86_64__) || defined(_M_X64)
  unsigned int saved;
  DenormalGuard() : saved(_mm_getcsr()) { _mm_setcsr(saved & ~((1u << 15) | (1u << 6))); }
  ~DenormalGuard() { _mm_setcsr(saved); }
#endif
};

// Chunks [p0, p0 + kc) of the (m0.., n0..) tile's sums, folded into C; after the sum's last chunk
// (p0 + kc == P) the epilogue.
template <typename T, bool kACols>
inline void micro_scalar(const GemmGroup<T>& g, int mr, int nr, int64_t m0, int64_t n0, int64_t p0,
                         int64_t kc, int64_t P) {
  for (int64_t pc = p0; pc < p0 + kc; pc += math::kSumChunk) {
    const int64_t pe = std::min(pc + math::kSumChunk, p0 + kc);
    T acc[kMR][kNR] = {};
    for (int64_t p = pc; p < pe; ++p) {
      const T* bp = g.b[p] + n0;
      for (int i = 0; i < mr; ++i) {
        const T av = kACols ? g.a[p][m0 + i] : g.a[m0 + i][p];
        for (int j = 0; j < nr; ++j) acc[i][j] = math::fma_rn(av, bp[j], acc[i][j]);
      }
    }
    for (int i = 0; i < mr; ++i)
      for (int j = 0; j < nr; ++j) {
        T& c = g.c[m0 + i][n0 + j];
        c = math::fold_chunk(c, acc[i][j], pc);
      }
  }
  if (p0 + kc < P || g.epilogue != GemmEpilogue::kAddVector) return;
  for (int i = 0; i < mr; ++i)
    for (int j = 0; j < nr; ++j) g.c[m0 + i][n0 + j] = g.vec[n0 + j] + g.c[m0 + i][n0 + j];
}

#if DETLSTM_CPU_AVX2
// The same sums as micro_scalar, eight columns per instruction: _mm256_fmadd_ps and _mm256_add_ps
// round once per lane exactly like fma_rn and +, so the two kernels agree bit for bit. One call is
// one chunk [pc, pe) of the tile's sums: chained from +0, folded into C, and after the sum's last
// chunk (`last`) the epilogue.
// apack: with kACols, the chunk's A values packed as apack[(p - pc) * kMR + i] (see gemm_block).
// The accumulators are named variables, not arrays, and the function is not inlined: written with
// arrays and inlined into its caller, GCC 12 kept them in memory and stored all twelve every p.
#define DETLSTM_FOR_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)
template <int MR, bool kACols, bool kPanels>
__attribute__((noinline)) void micro_avx2(const GemmGroup<float>& g, int64_t m0, int64_t n0,
                                          int64_t pc, int64_t pe, bool last, const float* panel,
                                          const float* apack) {
  static_assert(MR >= 1 && MR <= kMR, "rows per micro-tile");
  const __m256 zero = _mm256_setzero_ps();
#define DETLSTM_INIT(i)                                                                          \
  __m256 lo##i = zero, hi##i = zero;                                                             \
  const float* arow##i = nullptr;                                                                \
  if constexpr (i < MR) {                                                                        \
    if (!kACols) arow##i = g.a[m0 + i];                                                          \
  }
  DETLSTM_FOR_ROWS(DETLSTM_INIT)
#undef DETLSTM_INIT
  for (int64_t p = pc; p < pe; ++p) {
    const float* bp = kPanels ? panel + p * kNR : g.b[p] + n0;
    const __m256 b0 = _mm256_loadu_ps(bp);
    const __m256 b1 = _mm256_loadu_ps(bp + 8);
    const float* acol = kACols ? apack + (p - pc) * kMR : nullptr;
#define DETLSTM_STEP(i)                                                                          \
  if constexpr (i < MR) {                                                                        \
    const __m256 av = _mm256_broadcast_ss(kACols ? acol + i : arow##i + p);                      \
    lo##i = _mm256_fmadd_ps(av, b0, lo##i);                                                      \
    hi##i = _mm256_fmadd_ps(av, b1, hi##i);                                                      \
  }
    DETLSTM_FOR_ROWS(DETLSTM_STEP)
#undef DETLSTM_STEP
  }
  const bool fold = pc != 0, add_vec = last && g.epilogue == GemmEpilogue::kAddVector;
  const __m256 v0 = add_vec ? _mm256_loadu_ps(g.vec + n0) : zero;
  const __m256 v1 = add_vec ? _mm256_loadu_ps(g.vec + n0 + 8) : zero;
#define DETLSTM_STORE(i)                                                                         \
  if constexpr (i < MR) {                                                                        \
    float* c = g.c[m0 + i] + n0;                                                                 \
    if (fold) {                                                                                  \
      lo##i = _mm256_add_ps(_mm256_loadu_ps(c), lo##i);                                          \
      hi##i = _mm256_add_ps(_mm256_loadu_ps(c + 8), hi##i);                                      \
    }                                                                                            \
    if (add_vec) {                                                                               \
      lo##i = _mm256_add_ps(v0, lo##i);                                                          \
      hi##i = _mm256_add_ps(v1, hi##i);                                                          \
    }                                                                                            \
    _mm256_storeu_ps(c, lo##i);                                                                  \
    _mm256_storeu_ps(c + 8, hi##i);                                                              \
  }
  DETLSTM_FOR_ROWS(DETLSTM_STORE)
#undef DETLSTM_STORE
  (void)arow0, (void)arow1, (void)arow2, (void)arow3, (void)arow4, (void)arow5;
}
#undef DETLSTM_FOR_ROWS

#if DETLSTM_CPU_AVX512
// The AVX-512 tile: MR rows x 16 columns, one register each, over a whole reduction slice [p0, p1)
// (chunk-aligned) in one call. Each chunk is chained from +0 in acc, then folded into the running
// fold in fold (fold_chunk's order: the sum's first chunk starts it, every later one is added), all
// in registers; C is read once (a slice after the first continues the fold stored there) and
// written once. Same operations, so the same bits, as micro_avx2 and micro_scalar.
#define DETLSTM_FOR_ROWS8(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
template <int MR, bool kACols, bool kPanels>
__attribute__((noinline)) void micro_avx512(const GemmGroup<float>& g, int64_t m0, int64_t n0,
                                            int64_t p0, int64_t p1, int64_t P, const float* panel,
                                            const float* apack) {
  static_assert(MR >= 1 && MR <= kMR, "rows per micro-tile");
  const __m512 zero = _mm512_setzero_ps();
#define DETLSTM_INIT(i)                                                                          \
  __m512 acc##i = zero, fold##i = zero;                                                          \
  const float* arow##i = nullptr;                                                                \
  if constexpr (i < MR) {                                                                        \
    if (!kACols) arow##i = g.a[m0 + i];                                                          \
    if (p0 != 0) fold##i = _mm512_loadu_ps(g.c[m0 + i] + n0);                                    \
  }
  DETLSTM_FOR_ROWS8(DETLSTM_INIT)
#undef DETLSTM_INIT
  for (int64_t pc = p0; pc < p1; pc += math::kSumChunk) {
    const int64_t pe = std::min(pc + math::kSumChunk, p1);
    for (int64_t p = pc; p < pe; ++p) {
      const __m512 b = _mm512_loadu_ps(kPanels ? panel + p * kNR : g.b[p] + n0);
      const float* acol = kACols ? apack + (p - p0) * kMR : nullptr;
#define DETLSTM_STEP(i)                                                                          \
  if constexpr (i < MR) {                                                                        \
    acc##i = _mm512_fmadd_ps(_mm512_set1_ps(kACols ? acol[i] : arow##i[p]), b, acc##i);          \
  }
      DETLSTM_FOR_ROWS8(DETLSTM_STEP)
#undef DETLSTM_STEP
    }
#define DETLSTM_FOLD(i)                                                                          \
  if constexpr (i < MR) {                                                                        \
    fold##i = pc == 0 ? acc##i : _mm512_add_ps(fold##i, acc##i);                                 \
    acc##i = zero;                                                                               \
  }
    DETLSTM_FOR_ROWS8(DETLSTM_FOLD)
#undef DETLSTM_FOLD
  }
  const bool add_vec = p1 == P && g.epilogue == GemmEpilogue::kAddVector;
  const __m512 v = add_vec ? _mm512_loadu_ps(g.vec + n0) : zero;
#define DETLSTM_STORE(i)                                                                         \
  if constexpr (i < MR) {                                                                        \
    _mm512_storeu_ps(g.c[m0 + i] + n0, add_vec ? _mm512_add_ps(v, fold##i) : fold##i);           \
  }
  DETLSTM_FOR_ROWS8(DETLSTM_STORE)
#undef DETLSTM_STORE
  (void)arow0, (void)arow1, (void)arow2, (void)arow3, (void)arow4, (void)arow5, (void)arow6,
      (void)arow7;
}
#undef DETLSTM_FOR_ROWS8

#endif

// Calls fn(std::integral_constant<int, MR>()) with MR = mr, 1 <= mr <= kMax: the micro-kernels take
// their row count as a template argument, so their accumulators are named registers.
template <int kMax, class Fn>
inline void with_tile_rows(int mr, Fn fn) {
  if constexpr (kMax > 1) {
    if (mr < kMax) return with_tile_rows<kMax - 1>(mr, fn);
  }
  fn(std::integral_constant<int, kMax>());
}

// Chunks [p0, p0 + kc) of a tile's sums: one micro_avx512 call for the whole slice, or one
// micro_avx2 call per chunk.
template <bool kACols>
inline void micro_vector(const GemmGroup<float>& g, int mr, int64_t m0, int64_t n0, int64_t p0,
                         int64_t kc, int64_t P, const float* apack) {
  const bool panels = g.b_panels && n0 % kNR == 0;  // a panel holds columns kNR q .. kNR q + kNR-1
  const float* panel = panels ? g.b_panels + (n0 / kNR) * P * kNR : nullptr;
  const auto tile = [&](auto rows, auto with_panels) {
    constexpr int MR = decltype(rows)::value;
    constexpr bool kPanels = decltype(with_panels)::value;
#if DETLSTM_CPU_AVX512
    micro_avx512<MR, kACols, kPanels>(g, m0, n0, p0, p0 + kc, P, panel, apack);
#else
    for (int64_t pc = p0; pc < p0 + kc; pc += math::kSumChunk) {
      const int64_t pe = std::min(pc + math::kSumChunk, p0 + kc);
      const float* chunk_pack = kACols ? apack + (pc - p0) * kMR : nullptr;
      micro_avx2<MR, kACols, kPanels>(g, m0, n0, pc, pe, pe == P, panel, chunk_pack);
    }
#endif
  };
  with_tile_rows<kMR>(mr, [&](auto rows) {
    if (panels)
      tile(rows, std::true_type());
    else
      tile(rows, std::false_type());
  });
}
#endif

// Panels are packed in parallel, a run of whole items (panels, or blocks of rows) per task: a task
// of at least kPackGrain values, so that small operands stay on the calling thread. The weights
// alone (hidden 512) are 8 MiB a layer, packed on every call: 1.8 ms of a 136 ms forward on one
// thread of two.
constexpr int64_t kPackGrain = int64_t(1) << 15;

template <class Fn>
void for_panels(int64_t items, int64_t item_values, const ParallelFor& parallel_for, Fn fn) {
  const int64_t grain = std::max<int64_t>(1, kPackGrain / std::max<int64_t>(item_values, 1));
  parallel_for(items, grain, [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) fn(q);
  });
}

// B (P rows given by pointers, N columns) as panels of kNR columns, panel q at q * P * kNR, row p of
// it at + p * kNR. Only whole panels: the last N % kNR columns stay with the row pointers.
// Tasks take blocks of kPackRows rows of B, each row read front to back (its lines in order, which
// the hardware prefetcher follows) into its slot of every panel. Panel by panel, every row was read
// one line per panel: the loads missed, and pack_b_panels was ~2.8% of a dense forward + backward
// at one thread (2.0% now).
constexpr int64_t kPackRows = 32;

template <typename T>
Buffer<T> pack_b_panels(const T* const* b, int64_t P, int64_t N, const ParallelFor& parallel_for) {
  const int64_t panels = N / kNR;
  Buffer<T> out(static_cast<size_t>(panels * P * kNR));
  if (panels == 0) return out;
  const int64_t blocks = (P + kPackRows - 1) / kPackRows;
  for_panels(blocks, kPackRows * panels * kNR, parallel_for, [&](int64_t block) {
    const int64_t p0 = block * kPackRows, p1 = std::min(P, p0 + kPackRows);
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t q = 0; q < panels; ++q) {
        // a copy of constant length, which the compiler makes a few vector moves: std::copy of a
        // length known only at run time was a memmove call per 64 bytes (~2% of a forward +
        // backward at hidden 128; memmove's share of that profile fell from 5.3% to 3.0%)
        std::memcpy(out.data() + (q * P + p) * kNR, b[p] + q * kNR, sizeof(T) * kNR);
      }
  });
  return out;
}

// The panels pack_b_panels makes of B = W^T, straight from W (N rows of P values, row-major): panel
// q's row p holds W[kNR q + j][p], j = 0 .. kNR-1. The forward's B operands are its transposed
// weights; packed from W they need no transposed copy first. N % kNR == 0.
template <typename T>
Buffer<T> pack_transposed_panels(const T* w, int64_t N, int64_t P, const ParallelFor& parallel_for) {
  constexpr int64_t kBlock = 16;  // a block's kNR x kBlock reads and its writes stay in L1
  Buffer<T> out(static_cast<size_t>(N * P));
  for_panels(N / kNR, P * kNR, parallel_for, [&](int64_t q) {
    T* panel = out.data() + q * P * kNR;
    for (int64_t p0 = 0; p0 < P; p0 += kBlock) {
      const int64_t p1 = std::min(p0 + kBlock, P);
      for (int64_t j = 0; j < kNR; ++j) {
        const T* row = w + (q * kNR + j) * P;
        for (int64_t p = p0; p < p1; ++p) panel[p * kNR + j] = row[p];
      }
    }
  });
  return out;
}

// Panels only where the vector kernel reads them (float in the AVX2 build); empty elsewhere.
template <typename T>
Buffer<T> panels_for_vector_kernel(const T* const* b, int64_t P, int64_t N,
                                   const ParallelFor& parallel_for) {
#if DETLSTM_CPU_AVX2
  if constexpr (std::is_same<T, float>::value) return pack_b_panels(b, P, N, parallel_for);
#endif
  (void)b, (void)P, (void)N, (void)parallel_for;
  return {};
}

// Whether every column block the forward's products take from W^T (the input projection's kNB-wide
// tasks, the recurrence's gate columns of kUnitBlock units) is made of whole panels the vector
// kernel reads: then W^T itself is never read and the panels are packed straight from W.
template <typename T>
constexpr bool forward_panels_cover(int64_t H) {
  return DETLSTM_CPU_AVX2 && std::is_same<T, float>::value && H % kNR == 0;
}

template <typename T>
const T* panels_or_null(const Buffer<T>& panels) {
  return panels.empty() ? nullptr : panels.data();
}

#if DETLSTM_CPU_AVX2
// Column mode reads A(m, p) = a[p][m]: a new row, far from the last, for every p. Each kMR-row
// tile's values of every p in the slice [p0, p0 + kc) are copied once into a contiguous block of
// apack (tile t at t * kMR * slice) that its strips stream.
inline void pack_a_slice(const GemmGroup<float>& g, int64_t m_begin, int64_t m_end, int64_t p0,
                         int64_t kc, int64_t slice, float* apack) {
  const int64_t tiles = (m_end - m_begin + kMR - 1) / kMR;
  for (int64_t tile = 0; tile < tiles; ++tile) {
    const int64_t m0 = m_begin + tile * kMR;
    const int mr = static_cast<int>(std::min<int64_t>(kMR, m_end - m0));
    float* dst = apack + tile * kMR * slice;
    for (int64_t p = p0; p < p0 + kc; ++p) {
      if (mr == kMR) {  // a constant length: a vector move, not a memmove call per 32 bytes
        std::memcpy(dst + (p - p0) * kMR, g.a[p] + m0, sizeof(float) * kMR);
        continue;
      }
      float* out = std::copy(g.a[p] + m0, g.a[p] + m0 + mr, dst + (p - p0) * kMR);
      std::fill(out, dst + (p - p0 + 1) * kMR, 0.0f);
    }
  }
}
#endif

// Rows m_begin .. m_end-1 and columns n_begin .. n_end-1 of C, the whole reduction, on the calling
// thread, then in column mode every column of each product linked by shared_a. Loop order: a slice
// of p (kKCRows or kKCCols), then each kNR-column strip of B, then every kMR-row tile of the block
// over that strip, so the strip (slice x kNR values) is read from L2 once and reused from L1 by all
// the block's tiles. Any order of these loops gives the same bits: each element's chunks still run
// over p ascending and fold in order, carried through C between slices.
template <typename T, bool kACols>
void gemm_block(const GemmGroup<T>& g, int64_t P, int64_t m_begin, int64_t m_end, int64_t n_begin,
                int64_t n_end) {
  constexpr int64_t kSlice = kACols ? kKCCols : kKCRows;
  // Whether any product of the call has a whole strip (only those read the packed A).
  bool any_strip = n_end - n_begin >= kNR;
  if constexpr (kACols)
    for (const GemmGroup<T>* next = &g; next->shared_a; next = next->shared_a)
      any_strip = any_strip || next->shared_a_N >= kNR;
#if DETLSTM_CPU_AVX2
  // Only column mode touches the thread's buffer: the row-mode steps call this in their hot loop.
  float* apack = nullptr;
  if constexpr (std::is_same<T, float>::value && kACols) {
    thread_local std::vector<float> buffer;
    buffer.resize(static_cast<size_t>((m_end - m_begin + kMR - 1) / kMR * kMR * kSlice));
    apack = buffer.data();
  }
#endif
  for (int64_t p0 = 0; p0 < P; p0 += kSlice) {
    const int64_t kc = std::min<int64_t>(kSlice, P - p0);
#if DETLSTM_CPU_AVX2
    if constexpr (std::is_same<T, float>::value && kACols)
      if (any_strip) pack_a_slice(g, m_begin, m_end, p0, kc, kSlice, apack);
#endif
    const auto strips = [&](const GemmGroup<T>& product, int64_t n_first, int64_t n_last) {
      for (int64_t n0 = n_first; n0 < n_last; n0 += kNR) {
        const int nr = static_cast<int>(std::min<int64_t>(kNR, n_last - n0));
        for (int64_t m0 = m_begin; m0 < m_end; m0 += kMR) {
          const int mr = static_cast<int>(std::min<int64_t>(kMR, m_end - m0));
#if DETLSTM_CPU_AVX2
          if constexpr (std::is_same<T, float>::value) {
            if (nr == kNR) {
              const float* tile_pack = kACols ? apack + ((m0 - m_begin) / kMR) * kMR * kSlice : nullptr;
              micro_vector<kACols>(product, mr, m0, n0, p0, kc, P, tile_pack);
              continue;
            }
          }
#endif
          micro_scalar<T, kACols>(product, mr, nr, m0, n0, p0, kc, P);
        }
      }
    };
    strips(g, n_begin, n_end);
    if constexpr (kACols)
      for (const GemmGroup<T>* next = &g; next->shared_a; next = next->shared_a)
        strips(*next->shared_a, 0, next->shared_a_N);
  }
}

// Rows m0 .. m0+kMR-1 of one group's product, every column, on the calling thread: for callers
// that go on with those rows' results in the same task.
template <typename T, bool kACols>
void gemm_rows(const GemmGroup<T>& g, int64_t N, int64_t P, int64_t m0) {
  gemm_block<T, kACols>(g, P, m0, std::min<int64_t>(m0 + kMR, g.M), 0, N);
}

// Columns n0 .. n1-1 of one group's product, every row, on the calling thread. For the recurrent
// steps (few rows, long reductions) a tile at a time over the whole reduction measured faster than
// the slice-major order of gemm_block (single thread, hidden 1024: ~10%).
template <typename T, bool kACols>
void gemm_columns(const GemmGroup<T>& g, int64_t P, int64_t n0, int64_t n1) {
  for (int64_t m0 = 0; m0 < g.M; m0 += kMR)
    gemm_block<T, kACols>(g, P, m0, std::min<int64_t>(m0 + kMR, g.M), n0, n1);
}

// Rows per column-mode task: kMBCols / kMR packed tiles of A share each strip of B (the layer's
// inputs, tens of MiB) from L1, so B is streamed from memory once per kMBCols rows of C. A's
// packed slice is kMBCols x kKCCols values (256 KiB), in L2. Weight gradients at hidden 512, batch
// 64: 64 rows 301 ms, 128 rows 277, 256 rows 262-277, 512 rows 270 (one thread, best of 3 rounds).
constexpr int64_t kMBCols = 32 * kMR;

// How a product's (M, N) outputs are cut into tasks: blocks of `rows` x `cols`, m fastest, so
// consecutive tasks reuse the same columns of B from cache. gemm_chain and the bidirectional input
// gradient (lstm_cpu_backward.h) cut the same way.
struct TaskTiles {
  int64_t M, N, rows, cols, n_blocks;
  struct Tile {
    int64_t m0, m1, n0, n1;
  };
  int64_t m_blocks() const { return (M + rows - 1) / rows; }
  int64_t count() const { return m_blocks() * n_blocks; }
  Tile tile(int64_t task) const {
    const int64_t m0 = (task % m_blocks()) * rows, n0 = (task / m_blocks()) * cols;
    return {m0, std::min(m0 + rows, M), n0, std::min(n0 + cols, N)};
  }
  // Tasks per claim of the thread pool: about 2^16 multiply-adds, `work` per output.
  int64_t grain(int64_t work) const {
    return std::max<int64_t>(1, (int64_t(1) << 16) / (rows * cols * work));
  }
};

// Row mode: tiles of kMR rows by kNB columns.
inline TaskTiles row_mode_tiles(int64_t M, int64_t N) { return {M, N, kMR, kNB, (N + kNB - 1) / kNB}; }
// Column mode: kMBCols rows by every column, one block even of none (a product linked by shared_a
// still runs).
inline TaskTiles column_mode_tiles(int64_t M, int64_t N) {
  return {M, N, kMBCols, std::max<int64_t>(N, 1), 1};
}

// Runs every group's product (all with the same N and P) as one parallel region. P >= 1.
// A row-mode task is one tile of kMR rows by kNB columns: its rows of A (8 x kKCRows values, read
// from kMR rows far apart) stay in L1 while the kNB / kNR strips of B stream from L2, one line per p.
// Blocks of 8 tiles x 64 columns made every strip re-read A's 64 rows from L2, 8 streams at once:
// measured 89-91 GFLOP/s against 103-105 for one tile x 512 columns (input projection at
// hidden 512, one thread, peak 116).
// In column mode a task takes kMBCols rows and every column: it packs its rows of A (gemm_block)
// once per slice, and B, the long operand, is read once per kMBCols rows.
template <typename T, bool kACols>
void gemm_chain(const std::vector<GemmGroup<T>>& groups, int64_t N, int64_t P,
                const ParallelFor& parallel_for) {
  const auto tiles_of = [&](const GemmGroup<T>& g) {
    return kACols ? column_mode_tiles(g.M, N) : row_mode_tiles(g.M, N);
  };
  std::vector<int64_t> first_task(groups.size() + 1, 0);
  for (size_t k = 0; k < groups.size(); ++k)
    first_task[k + 1] = first_task[k] + tiles_of(groups[k]).count();
  const int64_t tasks = first_task.back();
  if (tasks == 0) return;
  const int64_t grain = tiles_of(groups[0]).grain(P);
  parallel_for(tasks, grain, [&](int64_t begin, int64_t end) {
    DenormalGuard guard;
    size_t k = 0;
    for (int64_t task = begin; task < end; ++task) {
      while (task >= first_task[k + 1]) ++k;
      const GemmGroup<T>& g = groups[k];
      const TaskTiles::Tile t = tiles_of(g).tile(task - first_task[k]);
      gemm_block<T, kACols>(g, P, t.m0, t.m1, t.n0, t.n1);
    }
  });
}
