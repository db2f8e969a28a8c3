// The fixed-order product's tile (gemm_chain.cuh) with its operands copied into shared memory by
// asynchronous copies (cp.async) over kAsyncStages stages: while a thread multiplies one P-tile, the
// copies of the next kAsyncStages - 1 are in flight, with no registers held for them and one barrier
// per P-tile. Same contract and same values as gemm_tile_chunks_staged: each chunk's partial is a
// chain from +0 over its P-values in ascending order, handed to on_chunk; a position past P is
// never added (a zero is copied there, and the inner loop stops before it).
//
// Shared layout, chosen so that neither the copies nor the multiply wait on bank conflicts:
// - B (and A in column mode) are copied a row of P at a time, a warp's 32 copies to 32 consecutive
//   words; A in row mode is copied as 8 P-values of 4 rows per warp (one 32-byte sector per row).
// - A is stored transposed, value (p, m) at column m XOR 4 * (p mod 8) of row p: the row-mode copies
//   of a warp then fall in 32 different banks, and 4 consecutive m stay 4 aligned consecutive words.
// - A thread's TM x TN patch is TM / 4 x TN / 4 blocks of 4 x 4, the blocks BM / (TM / 4) rows (BN /
//   (TN / 4) columns) apart: its values of one p load as 4-value vectors, and the 16 threads of a
//   half warp read 16 consecutive vectors of B and one vector of A. In float that is the fewest
//   shared-memory wavefronts there can be; in double (two 16-byte loads per vector, 32 bytes
//   apart) the B loads meet 2-way conflicts, left as they are: float64 is for gradcheck, not speed.
#pragma once

#include <type_traits>

#include "gemm_patch.cuh"

namespace detlstm {
namespace cuda {

constexpr int kAsyncBK = 8;      // P-values per stage
constexpr int kAsyncStages = 4;  // one multiplied while the copies of the next three are in flight
static_assert(kSumChunk % kAsyncBK == 0, "a chunk must end on a stage boundary");

// A's column for value (p, m): see the head of this file. It changes bits 2-4 of m only.
__device__ __forceinline__ int swizzled_column(int p, int m) { return m ^ ((p & 7) << 2); }

// out[0..3] = p[0..3], p 4-value aligned in shared memory: one vector load on the GPU.
template <typename T>
__device__ __forceinline__ void load4(const T* p, T* out) {
#if defined(__CUDACC__)
  if constexpr (sizeof(T) == 4) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
    return;
  } else {
    const double2 lo = reinterpret_cast<const double2*>(p)[0];
    const double2 hi = reinterpret_cast<const double2*>(p)[1];
    out[0] = lo.x, out[1] = lo.y, out[2] = hi.x, out[3] = hi.y;
    return;
  }
#else
  for (int i = 0; i < 4; ++i) out[i] = p[i];
#endif
}

// Copies an operand stored as rows of P (src(p)[x]: B, and A in column mode) into stages of kAsyncBK
// rows of W values: value e = threadIdx.x + r * kThreads of a stage is (p, x) = (e / W, e % W).
// prepare(k0) finds the rows of the stage that starts at P-value k0 (for a provider that reads an
// index, the load is issued here, a stage before the copies need it); issue() starts the copies.
template <typename T, int W, int kThreads, bool kSwizzle>
struct PRowsCopier {
  static constexpr int kLoads = W * kAsyncBK / kThreads;
  static_assert(W * kAsyncBK % kThreads == 0, "whole copies per thread");
  const T* from[kLoads];
  bool ok[kLoads];

  PRowsCopier() = default;
  template <class Src>
  __device__ __forceinline__ PRowsCopier(const Src&, int64_t, int64_t) {}  // rows found per stage

  template <class Src>
  __device__ __forceinline__ void prepare(const Src& src, int64_t k0, int64_t P, int64_t x0,
                                          int64_t X, const T* mapped) {
#pragma unroll
    for (int r = 0; r < kLoads; ++r) {
      const int e = threadIdx.x + r * kThreads, p = e / W, x = e % W;
      ok[r] = k0 + p < P && x0 + x < X;
      from[r] = ok[r] ? src(k0 + p) + x0 + x : mapped;
    }
  }
  __device__ __forceinline__ void issue(T (&stage)[kAsyncBK][W]) const {
#pragma unroll
    for (int r = 0; r < kLoads; ++r) {
      const int e = threadIdx.x + r * kThreads, p = e / W, x = e % W;
      async_copy(&stage[p][kSwizzle ? swizzled_column(p, x) : x], from[r], ok[r]);
    }
  }
};

// Copies A in row mode (src(m)[p]) into stages of kAsyncBK rows of BM values (transposed, swizzled):
// value e = threadIdx.x + r * kThreads is (p, m) = (e % kAsyncBK, e / kAsyncBK). A thread's rows of A
// are the same for every stage: found once, at the start of the tile.
template <typename T, int BM, int kThreads>
struct MRowsCopier {
  static constexpr int kLoads = BM * kAsyncBK / kThreads;
  static_assert(BM * kAsyncBK % kThreads == 0, "whole copies per thread");
  const T* row[kLoads];
  bool in[kLoads];
  int64_t k0 = 0, P = 0;

  template <class Src>
  __device__ __forceinline__ MRowsCopier(const Src& src, int64_t m0, int64_t M) {
#pragma unroll
    for (int r = 0; r < kLoads; ++r) {
      const int m = (threadIdx.x + r * kThreads) / kAsyncBK;
      in[r] = m0 + m < M;
      row[r] = src(in[r] ? m0 + m : 0);
    }
  }
  template <class Src>
  __device__ __forceinline__ void prepare(const Src&, int64_t k0_, int64_t P_, int64_t, int64_t,
                                          const T*) {
    k0 = k0_;
    P = P_;
  }
  __device__ __forceinline__ void issue(T (&stage)[kAsyncBK][BM]) const {
#pragma unroll
    for (int r = 0; r < kLoads; ++r) {
      const int e = threadIdx.x + r * kThreads, p = e % kAsyncBK, m = e / kAsyncBK;
      const bool ok = in[r] && k0 + p < P;
      async_copy(&stage[p][swizzled_column(p, m)], ok ? row[r] + k0 + p : row[r], ok);
    }
  }
};

// acc continued over the first kmax P-values of a stage, in order (see the head of the file for
// where the thread's values are).
template <typename T, int BM, int BN, int TM, int TN>
__device__ __forceinline__ void multiply_stage_step(const T (&a_s)[kAsyncBK][BM],
                                                    const T (&b_s)[kAsyncBK][BN], int k, int tx,
                                                    int ty, T (&acc)[TM][TN]) {
  T av[TM], bv[TN];
#pragma unroll
  for (int g = 0; g < TM / 4; ++g)
    load4(&a_s[k][swizzled_column(k, patch_row_of<TileLoads::kAsync, BM, TM>(ty, 4 * g))],
          &av[4 * g]);
#pragma unroll
  for (int g = 0; g < TN / 4; ++g)
    load4(&b_s[k][patch_col_of<TileLoads::kAsync, BN, TN>(tx, 4 * g)], &bv[4 * g]);
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = fma_rn(av[i], bv[j], acc[i][j]);
}

template <typename T, int BM, int BN, int TM, int TN>
__device__ __forceinline__ void multiply_stage(const T (&a_s)[kAsyncBK][BM],
                                               const T (&b_s)[kAsyncBK][BN], int kmax, int tx,
                                               int ty, T (&acc)[TM][TN]) {
  if (kmax == kAsyncBK) {
#pragma unroll
    for (int k = 0; k < kAsyncBK; ++k) multiply_stage_step(a_s, b_s, k, tx, ty, acc);
    return;
  }
  for (int k = 0; k < kmax; ++k) multiply_stage_step(a_s, b_s, k, tx, ty, acc);
}

// The chunks [chunk_begin, chunk_end) of the BM x BN tile at (m0, n0), as gemm_tile_chunks_staged.
// Every thread of the block calls this (it holds barriers); it ends on a barrier, so the block can
// go on with the same shared arrays, and with no copy in flight.
template <typename T, bool kACols, int BM, int BN, int TM, int TN, class ARows, class BRows,
          class OnStage, class OnChunk>
__device__ void gemm_tile_chunks_async(int64_t M, int64_t N, int64_t P, const ARows& a,
                                       const BRows& b, int64_t m0, int64_t n0,
                                       int64_t chunk_begin, int64_t chunk_end, OnStage&& on_stage,
                                       OnChunk&& on_chunk) {
  static_assert(TM % 4 == 0 && TN % 4 == 0 && BM % 32 == 0, "4x4 blocks, 32-row swizzle groups");
  constexpr int kThreads = (BM / TM) * (BN / TN);
  __shared__ __align__(16) T As[kAsyncStages][kAsyncBK][BM];
  __shared__ __align__(16) T Bs[kAsyncStages][kAsyncBK][BN];
  const int tx = patch_col<BN, TN>(), ty = patch_row<BN, TN>();
  using ACopier = std::conditional_t<kACols, PRowsCopier<T, BM, kThreads, true>,
                                     MRowsCopier<T, BM, kThreads>>;
  ACopier a_copy(a, m0, M);
  PRowsCopier<T, BN, kThreads, false> b_copy;
  const T* a_mapped = kACols ? a(0) : nullptr;  // the addresses a zero copy names
  const T* b_mapped = b(0);
  const int64_t k_begin = chunk_begin * kSumChunk;
  const int64_t k_end = chunk_end * kSumChunk < P ? chunk_end * kSumChunk : P;
  const int tiles = static_cast<int>(ceil_div(k_end - k_begin, kAsyncBK));
  const auto prepare = [&](int t) {
    a_copy.prepare(a, k_begin + t * int64_t(kAsyncBK), P, m0, M, a_mapped);
    b_copy.prepare(b, k_begin + t * int64_t(kAsyncBK), P, n0, N, b_mapped);
  };

  T acc[TM][TN];
  zero_patch(acc);
  prepare(0);
#pragma unroll
  for (int t = 0; t < kAsyncStages - 1; ++t) {
    if (t < tiles) {
      a_copy.issue(As[t]);
      b_copy.issue(Bs[t]);
      prepare(t + 1);
    }
    async_commit();  // an empty group past the last tile keeps the count of groups uniform
  }
  for (int t = 0; t < tiles; ++t) {
    async_wait<kAsyncStages - 2>();  // this thread's copies of tile t have landed
    __syncthreads();                 // everyone's; and everyone is done with tile t - 1's stage
    const int next = t + kAsyncStages - 1, st = t % kAsyncStages;
    if (next < tiles) {
      a_copy.issue(As[next % kAsyncStages]);
      b_copy.issue(Bs[next % kAsyncStages]);
      prepare(next + 1);
    }
    async_commit();
    const int64_t k0 = k_begin + t * int64_t(kAsyncBK);
    const int kmax = static_cast<int>(k_end - k0 < kAsyncBK ? k_end - k0 : kAsyncBK);
    on_stage(kmax, [&](int k, int m) { return As[st][k][swizzled_column(k, m)]; });
    multiply_stage<T, BM, BN, TM, TN>(As[st], Bs[st], kmax, tx, ty, acc);
    hand_over_chunk(k0 + kmax - 1, P, acc, on_chunk);
  }
  async_wait<0>();  // only empty groups are left; waiting costs nothing and keeps the rule simple
  __syncthreads();
}

}  // namespace cuda
}  // namespace detlstm
