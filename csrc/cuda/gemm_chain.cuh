// Fixed-order matrix product on the GPU (ARITHMETIC.md rule 3, csrc/common/chunked_sum.h), the
// CUDA twin of csrc/cpu/gemm_chain.h, with the same contract:
//
// C[m][n] = epilogue(S(m, n)), S the chunked sum over p = 0 .. P-1 of A(m, p) * B(p, n): chunks of
// kSumChunk p, each one chain of fma from +0 in ascending p, the partials left-folded; the epilogue
// stores S or v[n] + S. A thread owns a TM x TN patch of C for the whole reduction, keeping each
// element's chunk partial and running fold in registers; the P-tiles (kGemmBK, a divisor of the
// chunk) are visited in order and a tile's inner loop stops at P (a position past the end is never
// added as a zero). Tile and patch sizes decide only which thread computes which element, so the
// bits match the CPU's for any BM/BN/TM/TN and any grid.
#pragma once

#include "gemm_patch.cuh"
#include "gemm_tile_async.cuh"

namespace detlstm {
namespace cuda {

constexpr int kGemmBK = 16;
static_assert(kSumChunk % kGemmBK == 0, "a chunk must end on a P-tile boundary");

// acc[i][j] continued over the first kmax terms of a staged P-tile: term kk's A values at
// a_s[kk * LDA + ty * TM + i], its B values at b_s[kk * BN + tx * TN + j].
template <typename T, int TM, int TN, int LDA, int BN>
__device__ __forceinline__ void multiply_ptile(const T* a_s, const T* b_s, int kmax, int tx, int ty,
                                               T (&acc)[TM][TN]) {
  for (int kk = 0; kk < kmax; ++kk) {
    T av[TM], bv[TN];
#pragma unroll
    for (int i = 0; i < TM; ++i) av[i] = a_s[kk * LDA + ty * TM + i];
#pragma unroll
    for (int j = 0; j < TN; ++j) bv[j] = b_s[kk * BN + tx * TN + j];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = fma_rn(av[i], bv[j], acc[i][j]);
  }
}

// The chunks [chunk_begin, chunk_end) of the BM x BN tile at (m0, n0): each chunk's partial of the
// thread's TM x TN patch (a chain from +0 over the chunk's P-tiles in order) goes to
// on_chunk(chunk_start, acc), and acc restarts from +0. Each P-tile is copied into shared memory,
// multiplied, then the next. Every thread of the block calls this (it holds barriers); it ends on
// a barrier, so the block can go on with the same shared arrays.
template <typename T, bool kACols, int BM, int BN, int TM, int TN, class ARows, class BRows,
          class OnChunk>
__device__ void gemm_tile_chunks_staged(int64_t M, int64_t N, int64_t P, const ARows& a,
                                        const BRows& b, int64_t m0, int64_t n0,
                                        int64_t chunk_begin, int64_t chunk_end, OnChunk&& on_chunk) {
  constexpr int kThreads = (BM / TM) * (BN / TN);
  // 16-byte aligned rows, so a patch's TM (TN) consecutive values load as vectors
  __shared__ __align__(16) T As[kGemmBK][BM];
  __shared__ __align__(16) T Bs[kGemmBK][BN];
  const int tid = threadIdx.x;
  const int tx = patch_col<BN, TN>(), ty = patch_row<BN, TN>();

  T acc[TM][TN];
  zero_patch(acc);

  const int64_t p_end = chunk_end * kSumChunk < P ? chunk_end * kSumChunk : P;
  for (int64_t k0 = chunk_begin * kSumChunk; k0 < p_end; k0 += kGemmBK) {
    for (int e = tid; e < BM * kGemmBK; e += kThreads) {
      int p, m;
      if (kACols) {
        p = e / BM;
        m = e % BM;
      } else {
        m = e / kGemmBK;
        p = e % kGemmBK;
      }
      T v = T(0);
      if (m0 + m < M && k0 + p < P) v = kACols ? a(k0 + p)[m0 + m] : a(m0 + m)[k0 + p];
      As[p][m] = v;
    }
    for (int e = tid; e < BN * kGemmBK; e += kThreads) {
      const int p = e / BN, n = e % BN;
      Bs[p][n] = (n0 + n < N && k0 + p < P) ? b(k0 + p)[n0 + n] : T(0);
    }
    __syncthreads();
    const int kmax = static_cast<int>(P - k0 < kGemmBK ? P - k0 : kGemmBK);
    multiply_ptile<T, TM, TN, BM, BN>(&As[0][0], &Bs[0][0], kmax, tx, ty, acc);
    __syncthreads();
    hand_over_chunk(k0 + kmax - 1, P, acc, on_chunk);
  }
}

// The same as gemm_tile_chunks_staged, with two shared stages: the next P-tile is loaded into
// registers while the current one is multiplied, then stored into the other stage (one barrier per
// P-tile instead of two). A's shared rows are padded in row mode, where its stores walk down a
// column (by 4 values, so rows stay 16-byte aligned for the patch's vector loads).
template <typename T, bool kACols, int BM, int BN, int TM, int TN, class ARows, class BRows,
          class OnChunk>
__device__ void gemm_tile_chunks_pipelined(int64_t M, int64_t N, int64_t P, const ARows& a,
                                           const BRows& b, int64_t m0, int64_t n0,
                                           int64_t chunk_begin, int64_t chunk_end,
                                           OnChunk&& on_chunk) {
  constexpr int kThreads = (BM / TM) * (BN / TN);
  constexpr int kLda = BM + (kACols ? 0 : 4);
  constexpr int kALoads = (BM * kGemmBK + kThreads - 1) / kThreads;
  constexpr int kBLoads = (BN * kGemmBK + kThreads - 1) / kThreads;
  __shared__ __align__(16) T As[2][kGemmBK][kLda];
  __shared__ __align__(16) T Bs[2][kGemmBK][BN];
  const int tid = threadIdx.x;
  const int tx = patch_col<BN, TN>(), ty = patch_row<BN, TN>();
  T a_next[kALoads], b_next[kBLoads];
  const auto load = [&](int64_t k0) {  // P-tile k0 into registers, zeros past M, N and P
#pragma unroll
    for (int r = 0; r < kALoads; ++r) {
      const int e = tid + r * kThreads;
      const int p = kACols ? e / BM : e % kGemmBK, m = kACols ? e % BM : e / kGemmBK;
      a_next[r] = e < BM * kGemmBK && m0 + m < M && k0 + p < P
                      ? (kACols ? a(k0 + p)[m0 + m] : a(m0 + m)[k0 + p])
                      : T(0);
    }
#pragma unroll
    for (int r = 0; r < kBLoads; ++r) {
      const int e = tid + r * kThreads, p = e / BN, n = e % BN;
      b_next[r] = e < BN * kGemmBK && n0 + n < N && k0 + p < P ? b(k0 + p)[n0 + n] : T(0);
    }
  };
  const auto store = [&](int st) {  // the registers into stage st
#pragma unroll
    for (int r = 0; r < kALoads; ++r) {
      const int e = tid + r * kThreads;
      if (e < BM * kGemmBK)
        As[st][kACols ? e / BM : e % kGemmBK][kACols ? e % BM : e / kGemmBK] = a_next[r];
    }
#pragma unroll
    for (int r = 0; r < kBLoads; ++r) {
      const int e = tid + r * kThreads;
      if (e < BN * kGemmBK) Bs[st][e / BN][e % BN] = b_next[r];
    }
  };

  T acc[TM][TN];
  zero_patch(acc);

  const int64_t p_end = chunk_end * kSumChunk < P ? chunk_end * kSumChunk : P;
  int st = 0;
  load(chunk_begin * kSumChunk);
  store(st);
  __syncthreads();
  for (int64_t k0 = chunk_begin * kSumChunk; k0 < p_end; k0 += kGemmBK) {
    const bool next = k0 + kGemmBK < p_end;
    if (next) load(k0 + kGemmBK);  // in flight while this tile is multiplied
    const int kmax = static_cast<int>(P - k0 < kGemmBK ? P - k0 : kGemmBK);
    multiply_ptile<T, TM, TN, kLda, BN>(&As[st][0][0], &Bs[st][0][0], kmax, tx, ty, acc);
    if (next) store(st ^ 1);  // the other stage: last read before the previous barrier
    st ^= 1;
    __syncthreads();
    hand_over_chunk(k0 + kmax - 1, P, acc, on_chunk);
  }
}

// gemm_tile_chunks_staged, _pipelined or _async, as kLoads says: the same values.
template <typename T, bool kACols, int BM, int BN, int TM, int TN, TileLoads kLoads, class ARows,
          class BRows, class OnChunk>
__device__ __forceinline__ void gemm_tile_chunks(int64_t M, int64_t N, int64_t P, const ARows& a,
                                                 const BRows& b, int64_t m0, int64_t n0,
                                                 int64_t chunk_begin, int64_t chunk_end,
                                                 OnChunk&& on_chunk) {
  if constexpr (kLoads == TileLoads::kAsync)
    gemm_tile_chunks_async<T, kACols, BM, BN, TM, TN>(M, N, P, a, b, m0, n0, chunk_begin, chunk_end,
                                                      on_chunk);
  else if constexpr (kLoads == TileLoads::kPipelined)
    gemm_tile_chunks_pipelined<T, kACols, BM, BN, TM, TN>(M, N, P, a, b, m0, n0, chunk_begin,
                                                          chunk_end, on_chunk);
  else
    gemm_tile_chunks_staged<T, kACols, BM, BN, TM, TN>(M, N, P, a, b, m0, n0, chunk_begin,
                                                       chunk_end, on_chunk);
}

// The BM x BN tile of C at (m0, n0): every chunk, each chunk's partial folded in order (rule 3),
// then the epilogue. Every thread of the block calls this (it holds barriers).
template <typename T, bool kACols, int BM, int BN, int TM, int TN, TileLoads kLoads, class ARows,
          class BRows, class CRows>
__device__ void gemm_chain_tile(int64_t M, int64_t N, int64_t P, const ARows& a, const BRows& b,
                                const CRows& c, GemmEpilogue epilogue, const T* vec, int64_t m0,
                                int64_t n0) {
  T total[TM][TN];
  gemm_tile_chunks<T, kACols, BM, BN, TM, TN, kLoads>(
      M, N, P, a, b, m0, n0, 0, ceil_div(P, kSumChunk), [&](int64_t start, T (&acc)[TM][TN]) {
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j) total[i][j] = fold_chunk(total[i][j], acc[i][j], start);
      });
  const int tx = patch_col<BN, TN>(), ty = patch_row<BN, TN>();
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t m = m0 + patch_row_of<kLoads, BM, TM>(ty, i);
    if (m >= M) continue;
    T* row = c(m);
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t n = n0 + patch_col_of<kLoads, BN, TN>(tx, j);
      if (n < N) row[n] = epilogue == GemmEpilogue::kAddVector ? vec[n] + total[i][j] : total[i][j];
    }
  }
}

// Block (x, y) computes tile (x, y) of C, then those a grid's width and height further on.
template <typename T, bool kACols, int BM, int BN, int TM, int TN, TileLoads kLoads, class ARows,
          class BRows, class CRows>
__global__ void __launch_bounds__((BM / TM) * (BN / TN))
    gemm_chain_kernel(int64_t M, int64_t N, int64_t P, ARows a, BRows b, CRows c,
                      GemmEpilogue epilogue, const T* vec) {
  for_each_work_block(ceil_div(N, BN), ceil_div(M, BM), [&](int64_t bx, int64_t by) {
    gemm_chain_tile<T, kACols, BM, BN, TM, TN, kLoads>(M, N, P, a, b, c, epilogue, vec, by * BM,
                                                           bx * BN);
  });
}

template <typename T, bool kACols, int BM, int BN, int TM, int TN, TileLoads kLoads = TileLoads::kStaged,
          class ARows, class BRows, class CRows>
void launch_gemm_tiles(int64_t M, int64_t N, int64_t P, ARows a, BRows b, CRows c,
                       GemmEpilogue epilogue, const T* vec, cudaStream_t stream) {
  const dim3 grid = capped_grid(ceil_div(N, BN), ceil_div(M, BM));
  launch_kernel("gemm_chain_kernel",
                gemm_chain_kernel<T, kACols, BM, BN, TM, TN, kLoads, ARows, BRows, CRows>, grid,
                (BM / TM) * (BN / TN), stream, M, N, P, a, b, c, epilogue, vec);
}

// Split over chunks, for products with few output tiles and long sums (the weight gradients): the
// chunks of ARITHMETIC.md v2 are a fixed split-K. Block (x, y, z) computes only chunk first + z of
// tile (x, y) and stores that partial (partials[z] is M x N); a second kernel folds the partials
// into C in chunk order. Same values as gemm_chain_tile: the same chains, the same fold.
template <typename T, bool kACols, int BM, int BN, int TM, int TN, TileLoads kLoads, class ARows,
          class BRows>
__global__ void __launch_bounds__((BM / TM) * (BN / TN))
    gemm_chunk_partials_kernel(int64_t M, int64_t N, int64_t P, ARows a, BRows b, int64_t first,
                               T* partials) {
  T* out = partials + blockIdx.z * M * N;
  for_each_work_block(ceil_div(N, BN), ceil_div(M, BM), [&](int64_t bx, int64_t by) {
    const int64_t m0 = by * BM, n0 = bx * BN, chunk = first + blockIdx.z;
    gemm_tile_chunks<T, kACols, BM, BN, TM, TN, kLoads>(
        M, N, P, a, b, m0, n0, chunk, chunk + 1, [&](int64_t, T (&acc)[TM][TN]) {
          const int tx = patch_col<BN, TN>(), ty = patch_row<BN, TN>();
#pragma unroll
          for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) {
              const int64_t m = m0 + patch_row_of<kLoads, BM, TM>(ty, i);
              const int64_t n = n0 + patch_col_of<kLoads, BN, TN>(tx, j);
              if (m < M && n < N) out[m * N + n] = acc[i][j];
            }
        });
  });
}

// C[m][n] = the fold of partials 0 .. count-1 (chunks first .. first + count - 1) onto what C holds
// from the chunks before (nothing when first is 0).
template <typename T, class CRows>
__global__ void fold_chunk_partials_kernel(int64_t M, int64_t N, const T* partials, int64_t first,
                                           int64_t count, CRows c) {
  for (int64_t e = stride_start(); e < M * N; e += stride_step()) {
    T* out = c(e / N) + e % N;
    T total = first == 0 ? T(0) : *out;
    for (int64_t k = 0; k < count; ++k)
      total = fold_chunk(total, partials[k * M * N + e], (first + k) * kSumChunk);
    *out = total;
  }
}

// Device memory for the partials of split products, taken from the call's scratch on first use and
// reused by every split product of the call (they run in stream order).
template <typename T>
struct SplitBuffer {
  const ScratchAlloc* scratch;
  int64_t elements;  // its size when taken: the most any split product of the call needs, capped
  T* data = nullptr;
  T* get() {
    if (!data) data = scratch_array<T>(*scratch, elements);
    return data;
  }
};

// As many chunks per pass as the buffer holds (at least one, at most a grid's z).
template <typename T, bool kACols, int BM, int BN, int TM, int TN, TileLoads kLoads, class ARows,
          class BRows, class CRows>
void launch_gemm_split(int64_t M, int64_t N, int64_t P, ARows a, BRows b, CRows c,
                       SplitBuffer<T>& split, cudaStream_t stream) {
  const int64_t chunks = ceil_div(P, kSumChunk);
  int64_t per_pass = split.elements / (M * N);
  per_pass = per_pass < 1 ? 1 : (per_pass > 65535 ? 65535 : per_pass);
  for (int64_t first = 0; first < chunks; first += per_pass) {
    const int64_t count = chunks - first < per_pass ? chunks - first : per_pass;
    launch_kernel("gemm_chunk_partials_kernel",
                  gemm_chunk_partials_kernel<T, kACols, BM, BN, TM, TN, kLoads, ARows, BRows>,
                  capped_grid(ceil_div(N, BN), ceil_div(M, BM), count), (BM / TM) * (BN / TN),
                  stream, M, N, P, a, b, first, split.get());
    launch_kernel("fold_chunk_partials_kernel", fold_chunk_partials_kernel<T, CRows>,
                  stride_grid(M * N, 256), 256, stream, M, N,
                  static_cast<const T*>(split.get()), first, count, c);
  }
}

// launch_gemm_split in 128x128 tiles of 8x8 where `wide` (float only: float64 never takes them, for
// their registers), else 64x64 tiles of 4x4.
template <typename T, bool kACols, TileLoads kLoads, class ARows, class BRows, class CRows>
void launch_split_tiles(bool wide, int64_t M, int64_t N, int64_t P, ARows a, BRows b, CRows c,
                        SplitBuffer<T>& split, cudaStream_t stream) {
  if constexpr (sizeof(T) == 4) {
    if (wide) {
      launch_gemm_split<T, kACols, 128, 128, 8, 8, kLoads>(M, N, P, a, b, c, split, stream);
      return;
    }
  }
  launch_gemm_split<T, kACols, 64, 64, 4, 4, kLoads>(M, N, P, a, b, c, split, stream);
}

// C = epilogue(A . B) over the rows the providers name. M, N, P >= 1.
template <typename T, bool kACols, class ARows, class BRows, class CRows>
void gemm_chain(int64_t M, int64_t N, int64_t P, ARows a, BRows b, CRows c, GemmEpilogue epilogue,
                const T* vec, cudaStream_t stream) {
  if (M <= 0 || N <= 0) return;
  // GemmTiles::kAuto: large float products get 128x128 tiles of 8x8 patches, twice the fma per
  // shared-memory load of 4x4 patches (64 per 16 values instead of 16 per 8). Small ones, and float64
  // (whose 8x8 patch would take 128 registers of accumulators), keep 64x64 tiles of 4x4.
  const GemmTiles shape = launch_shape().gemm;
  switch (shape) {
    case GemmTiles::k32x32:
      launch_gemm_tiles<T, kACols, 32, 32, 4, 4>(M, N, P, a, b, c, epilogue, vec, stream);
      return;
    case GemmTiles::k64x32:
      launch_gemm_tiles<T, kACols, 64, 32, 4, 4>(M, N, P, a, b, c, epilogue, vec, stream);
      return;
    default:
      break;
  }
  constexpr TileLoads kAsync = TileLoads::kAsync;
  if constexpr (sizeof(T) == 4) {
    if (M >= 128 && N >= 128) {
      switch (shape) {
        case GemmTiles::k128x64:
          launch_gemm_tiles<T, kACols, 128, 64, 8, 4>(M, N, P, a, b, c, epilogue, vec, stream);
          return;
        case GemmTiles::k128x64Pipelined:
          launch_gemm_tiles<T, kACols, 128, 64, 8, 4, TileLoads::kPipelined>(M, N, P, a, b, c,
                                                                            epilogue, vec, stream);
          return;
        case GemmTiles::kAsync:
          launch_gemm_tiles<T, kACols, 128, 64, 8, 4, kAsync>(M, N, P, a, b, c, epilogue, vec,
                                                              stream);
          return;
        default:
          launch_gemm_tiles<T, kACols, 128, 128, 8, 8>(M, N, P, a, b, c, epilogue, vec, stream);
          return;
      }
    }
  }
  if (shape == GemmTiles::kAsync)
    launch_gemm_tiles<T, kACols, 64, 64, 4, 4, kAsync>(M, N, P, a, b, c, epilogue, vec, stream);
  else
    launch_gemm_tiles<T, kACols, 64, 64, 4, 4>(M, N, P, a, b, c, epilogue, vec, stream);
}

// C = A . B (stored, no epilogue) split over chunks where whole-sum tiles would leave most of the
// GPU idle: fewer output tiles than multiprocessors, more than one chunk, and a buffer that holds
// one chunk's partials. Under GemmTiles::kAuto, k128x64, k128x64Pipelined and kAsync (all
// split into 128x128 tiles of 8x8 for float: without a running fold they need no more registers;
// loaded as the shape's whole-sum tiles are, except k128x64's, staged); otherwise, and under the
// other launch shapes, gemm_chain. Same bits either way.
template <typename T, bool kACols, class ARows, class BRows, class CRows>
void gemm_chain_split(int64_t M, int64_t N, int64_t P, ARows a, BRows b, CRows c,
                      SplitBuffer<T>& split, cudaStream_t stream) {
  if (M <= 0 || N <= 0) return;
  const bool wide = sizeof(T) == 4 && M >= 128 && N >= 128;
  const int64_t tiles = wide ? ceil_div(M, 128) * ceil_div(N, 128) : ceil_div(M, 64) * ceil_div(N, 64);
  const GemmTiles shape = launch_shape().gemm;
  const bool splits = shape == GemmTiles::kAuto || shape == GemmTiles::k128x64 ||
                      shape == GemmTiles::k128x64Pipelined || shape == GemmTiles::kAsync;
  if (!splits || P <= kSumChunk || split.elements < M * N || tiles >= multiprocessors()) {
    gemm_chain<T, kACols>(M, N, P, a, b, c, GemmEpilogue::kStore, static_cast<const T*>(nullptr),
                          stream);
    return;
  }
  if (shape == GemmTiles::k128x64Pipelined)
    launch_split_tiles<T, kACols, TileLoads::kPipelined>(wide, M, N, P, a, b, c, split, stream);
  else if (shape == GemmTiles::kAsync)
    launch_split_tiles<T, kACols, TileLoads::kAsync>(wide, M, N, P, a, b, c, split, stream);
  else
    launch_split_tiles<T, kACols, TileLoads::kStaged>(wide, M, N, P, a, b, c, split, stream);
}

}  // namespace cuda
}  // namespace detlstm
