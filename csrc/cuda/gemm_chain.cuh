// Fixed-order matrix product on the GPU (ARITHMETIC.md rule 3, csrc/common/chunked_sum.h), the
// CUDA twin of csrc/cpu/gemm_chain.h, with the same contract:
//
// C[m][n] = epilogue(S(m, n)), S the chunked sum over p = 0 .. P-1 of A(m, p) * B(p, n): chunks of
// kSumChunk p, each one chain of fma from +0 in ascending p, the partials left-folded; the epilogue
// stores S or v[n] + S. A thread owns a TM x TN patch of C for the whole reduction, keeping each
// element's chunk partial and running fold in registers; the P-tiles (kGemmBK, a divisor of the
// chunk) are visited in order and a tile's inner loop stops at P (a position past the end is never
// added as a zero). Tile and patch sizes decide only which thread computes which element, so the
// bits match the CPU's for any BM/BN/TM/TN and any grid. One launch runs a group of such products
// over the same P (GemmGroup), and may add up A's values over p beside them (GemmProblem::sums).
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
// multiplied, then the next. Before a P-tile is multiplied, on_stage(kmax, a_at) may read its
// first kmax P-values of A: a_at(k, m) is A's value at (m0 + m, k0 + k), zero past M (the column
// sums of GemmProblem). Every thread of the block calls this (it holds barriers); it ends on a
// barrier, so the block can go on with the same shared arrays.
template <typename T, bool kACols, int BM, int BN, int TM, int TN, class ARows, class BRows,
          class OnStage, class OnChunk>
__device__ void gemm_tile_chunks_staged(int64_t M, int64_t N, int64_t P, const ARows& a,
                                        const BRows& b, int64_t m0, int64_t n0,
                                        int64_t chunk_begin, int64_t chunk_end, OnStage&& on_stage,
                                        OnChunk&& on_chunk) {
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
    on_stage(kmax, [&](int k, int m) { return As[k][m]; });
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
          class OnStage, class OnChunk>
__device__ void gemm_tile_chunks_pipelined(int64_t M, int64_t N, int64_t P, const ARows& a,
                                           const BRows& b, int64_t m0, int64_t n0,
                                           int64_t chunk_begin, int64_t chunk_end,
                                           OnStage&& on_stage, OnChunk&& on_chunk) {
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
    on_stage(kmax, [&](int k, int m) { return As[st][k][m]; });
    multiply_ptile<T, TM, TN, kLda, BN>(&As[st][0][0], &Bs[st][0][0], kmax, tx, ty, acc);
    if (next) store(st ^ 1);  // the other stage: last read before the previous barrier
    st ^= 1;
    __syncthreads();
    hand_over_chunk(k0 + kmax - 1, P, acc, on_chunk);
  }
}

// gemm_tile_chunks_staged, _pipelined or _async, as kLoads says: the same values.
template <typename T, bool kACols, int BM, int BN, int TM, int TN, TileLoads kLoads, class ARows,
          class BRows, class OnStage, class OnChunk>
__device__ __forceinline__ void gemm_tile_chunks(int64_t M, int64_t N, int64_t P, const ARows& a,
                                                 const BRows& b, int64_t m0, int64_t n0,
                                                 int64_t chunk_begin, int64_t chunk_end,
                                                 OnStage&& on_stage, OnChunk&& on_chunk) {
  if constexpr (kLoads == TileLoads::kAsync)
    gemm_tile_chunks_async<T, kACols, BM, BN, TM, TN>(M, N, P, a, b, m0, n0, chunk_begin, chunk_end,
                                                      on_stage, on_chunk);
  else if constexpr (kLoads == TileLoads::kPipelined)
    gemm_tile_chunks_pipelined<T, kACols, BM, BN, TM, TN>(M, N, P, a, b, m0, n0, chunk_begin,
                                                          chunk_end, on_stage, on_chunk);
  else
    gemm_tile_chunks_staged<T, kACols, BM, BN, TM, TN>(M, N, P, a, b, m0, n0, chunk_begin,
                                                       chunk_end, on_stage, on_chunk);
}


// One product of a group (GemmGroup): C = epilogue(A . B), M x N over the rows the providers name,
// summed over the group's P. Where sums[0] is set, the same launch also computes the chunked
// add-sum over p of A's value at (m, p) for every m (rule 3 with adds: a bias gradient is the sum
// of the gate gradients over the rows, A of the W_ih gradient) and stores it in sums[0] and, where
// set, sums[1].
template <typename T, class ARows, class BRows, class CRows>
struct GemmProblem {
  int64_t M, N;
  ARows a;
  BRows b;
  CRows c;
  GemmEpilogue epilogue;
  const T* vec;  // kAddVector: added to every row
  T* sums[2];
};

// Products over the same P run by one launch, so that products with few tiles each (both
// directions' weight gradients, W_ih's and W_hh's) fill the GPU together. The launch numbers the
// tiles of problem 0 first, then those of problem 1, ...; a split launch stores a chunk's partials
// of problem 0 first, then 1, ... (its outputs, then its sums). Passed to the kernels as a
// __grid_constant__ parameter: a problem picked at run time is read where the launch put it.
template <typename T, class ARows, class BRows, class CRows, int kCapacity>
struct GemmGroup {
  using Problem = GemmProblem<T, ARows, BRows, CRows>;
  int64_t P = 0;
  int count = 0;
  Problem problems[kCapacity];
  int64_t tile_end[kCapacity] = {};  // problem g's tiles end here (set by the launch, per tile size)
  int64_t out_end[kCapacity] = {};   // and its values in a chunk's partials (split launches)

  void add(const Problem& problem) {
    if (count == kCapacity) throw std::logic_error("detlstm CUDA: GEMM group over its capacity");
    problems[count++] = problem;
  }
  __host__ __device__ int64_t tiles() const { return count ? tile_end[count - 1] : 0; }
  __host__ __device__ int64_t partials() const { return count ? out_end[count - 1] : 0; }
  void set_tiles(int BM, int BN) {
    for (int g = 0; g < count; ++g)
      tile_end[g] = (g ? tile_end[g - 1] : 0) +
                    ceil_div(problems[g].M, BM) * ceil_div(problems[g].N, BN);
  }
  void set_partials() {
    for (int g = 0; g < count; ++g) {
      const Problem& p = problems[g];
      out_end[g] = (g ? out_end[g - 1] : 0) + p.M * p.N + (p.sums[0] ? p.M : 0);
    }
  }
  // The problem whose range of `ends` holds index i (i below the last end), and where it starts.
  __device__ int find(const int64_t (&ends)[kCapacity], int64_t i, int64_t& begin) const {
    int g = 0;
    while (i >= ends[g]) ++g;
    begin = g ? ends[g - 1] : 0;
    return g;
  }
};

// Where a tile of a group's launch lies: its problem and the first row and column of its outputs.
struct GroupTile {
  int problem;
  int64_t m0, n0;
};

template <int BM, int BN, class Group>
__device__ GroupTile group_tile(const Group& group, int64_t tile) {
  int64_t begin;
  const int g = group.find(group.tile_end, tile, begin);
  const int64_t across = ceil_div(group.problems[g].N, BN), t = tile - begin;
  return {g, t / across * BM, t % across * BN};
}

// The share of a problem's sums (GemmProblem::sums) one thread keeps in a tile: in the tiles of the
// first BN columns, thread m < BM adds up row m0 + m of A, one chain per chunk over the staged
// P-values in order. The tiles of the other columns stage the same values and leave them.
template <typename T, int BM>
struct RowSum {
  bool kept;
  T acc = T(0);

  template <class Problem>
  __device__ RowSum(const Problem& p, int64_t m0, int64_t n0)
      : kept(p.sums[0] && n0 == 0 && threadIdx.x < BM && m0 + threadIdx.x < p.M) {}

  template <class AAt>
  __device__ __forceinline__ void add(int kmax, const AAt& a_at) {
    if (!kept) return;
    for (int k = 0; k < kmax; ++k) acc = acc + a_at(k, threadIdx.x);
  }
  // The chunk's partial; the chain restarts from +0.
  __device__ __forceinline__ T take() {
    const T partial = acc;
    acc = T(0);
    return partial;
  }
};

template <typename T>
__device__ __forceinline__ void store_sum(T* const (&sums)[2], int64_t m, T value) {
  sums[0][m] = value;
  if (sums[1]) sums[1][m] = value;
}

// The BM x BN tile of problem p's C at (m0, n0): every chunk, each chunk's partial folded in order
// (rule 3), then the epilogue; and its sums, where the tile keeps them. Every thread of the block
// calls this (it holds barriers).
template <typename T, bool kACols, int BM, int BN, int TM, int TN, TileLoads kLoads, class Problem>
__device__ void gemm_chain_tile(const Problem& p, int64_t P, int64_t m0, int64_t n0) {
  static_assert((BM / TM) * (BN / TN) >= BM, "a thread for every row's sum");
  T total[TM][TN];
  RowSum<T, BM> sum(p, m0, n0);
  T sum_total = T(0);
  gemm_tile_chunks<T, kACols, BM, BN, TM, TN, kLoads>(
      p.M, p.N, P, p.a, p.b, m0, n0, 0, ceil_div(P, kSumChunk),
      [&](int kmax, const auto& a_at) { sum.add(kmax, a_at); },
      [&](int64_t start, T (&acc)[TM][TN]) {
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j) total[i][j] = fold_chunk(total[i][j], acc[i][j], start);
        sum_total = fold_chunk(sum_total, sum.take(), start);
      });
  if (sum.kept) store_sum(p.sums, m0 + threadIdx.x, sum_total);
  const int tx = patch_col<BN, TN>(), ty = patch_row<BN, TN>();
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t m = m0 + patch_row_of<kLoads, BM, TM>(ty, i);
    if (m >= p.M) continue;
    T* row = p.c(m);
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t n = n0 + patch_col_of<kLoads, BN, TN>(tx, j);
      if (n < p.N)
        row[n] = p.epilogue == GemmEpilogue::kAddVector ? p.vec[n] + total[i][j] : total[i][j];
    }
  }
}

// Block x computes tile x of the group, then those a grid's width further on.
template <typename T, bool kACols, int BM, int BN, int TM, int TN, TileLoads kLoads, class Group>
__global__ void __launch_bounds__((BM / TM) * (BN / TN))
    gemm_chain_kernel(const __grid_constant__ Group group) {
  for (int64_t tile = blockIdx.x; tile < group.tiles(); tile += gridDim.x) {
    const GroupTile at = group_tile<BM, BN>(group, tile);
    gemm_chain_tile<T, kACols, BM, BN, TM, TN, kLoads>(group.problems[at.problem], group.P, at.m0,
                                                       at.n0);
  }
}

template <typename T, bool kACols, int BM, int BN, int TM, int TN,
          TileLoads kLoads = TileLoads::kStaged, class Group>
void launch_gemm_tiles(Group group, cudaStream_t stream) {
  group.set_tiles(BM, BN);
  launch_kernel("gemm_chain_kernel", gemm_chain_kernel<T, kACols, BM, BN, TM, TN, kLoads, Group>,
                capped_grid(group.tiles()), (BM / TM) * (BN / TN), stream, group);
}

// Split over chunks, for products with few output tiles and long sums (the weight gradients): the
// chunks of ARITHMETIC.md v2 are a fixed split-K. Block (x, 0, z) computes only chunk first + z of
// the group's tile x and stores that partial (and its sums' partials) in chunk z's partials; a
// second kernel folds the partials in chunk order. Same values as gemm_chain_tile: the same chains,
// the same fold.
template <typename T, bool kACols, int BM, int BN, int TM, int TN, TileLoads kLoads, class Group>
__global__ void __launch_bounds__((BM / TM) * (BN / TN))
    gemm_chunk_partials_kernel(const __grid_constant__ Group group, int64_t first, T* partials) {
  static_assert((BM / TM) * (BN / TN) >= BM, "a thread for every row's sum");
  const int64_t chunk = first + blockIdx.z;
  for (int64_t tile = blockIdx.x; tile < group.tiles(); tile += gridDim.x) {
    const GroupTile at = group_tile<BM, BN>(group, tile);
    const auto& p = group.problems[at.problem];
    const int64_t m0 = at.m0, n0 = at.n0;
    T* out = partials + blockIdx.z * group.partials() +
             (at.problem ? group.out_end[at.problem - 1] : 0);
    RowSum<T, BM> sum(p, m0, n0);
    gemm_tile_chunks<T, kACols, BM, BN, TM, TN, kLoads>(
        p.M, p.N, group.P, p.a, p.b, m0, n0, chunk, chunk + 1,
        [&](int kmax, const auto& a_at) { sum.add(kmax, a_at); },
        [&](int64_t, T (&acc)[TM][TN]) {
          const int tx = patch_col<BN, TN>(), ty = patch_row<BN, TN>();
#pragma unroll
          for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) {
              const int64_t m = m0 + patch_row_of<kLoads, BM, TM>(ty, i);
              const int64_t n = n0 + patch_col_of<kLoads, BN, TN>(tx, j);
              if (m < p.M && n < p.N) out[m * p.N + n] = acc[i][j];
            }
          if (sum.kept) out[p.M * p.N + m0 + threadIdx.x] = sum.take();
        });
  }
}

// Every value of the group's outputs and sums = the fold of partials 0 .. count-1 (chunks first ..
// first + count - 1) onto what it holds from the chunks before (nothing when first is 0).
template <typename T, class Group>
__global__ void fold_chunk_partials_kernel(const __grid_constant__ Group group, const T* partials,
                                           int64_t first, int64_t count) {
  const int64_t values = group.partials();
  for (int64_t e = stride_start(); e < values; e += stride_step()) {
    int64_t begin;
    const auto& p = group.problems[group.find(group.out_end, e, begin)];
    const int64_t o = e - begin;
    const int64_t outputs = p.M * p.N;
    T* out = o < outputs ? p.c(o / p.N) + o % p.N : p.sums[0] + (o - outputs);
    T total = first == 0 ? T(0) : *out;
    for (int64_t k = 0; k < count; ++k)
      total = fold_chunk(total, partials[k * values + e], (first + k) * kSumChunk);
    if (o < outputs)
      *out = total;
    else
      store_sum(p.sums, o - outputs, total);
  }
}

// Device memory for the partials of split groups, taken from the call's scratch on first use and
// reused by every split group of the call (they run in stream order).
template <typename T>
struct SplitBuffer {
  const ScratchAlloc* scratch;
  int64_t elements;  // its size when taken: the most any split group of the call needs, capped
  T* data = nullptr;
  T* get() {
    if (!data) data = scratch_array<T>(*scratch, elements);
    return data;
  }
};

// As many chunks per pass as the buffer holds (at least one, at most a grid's z).
template <typename T, bool kACols, int BM, int BN, int TM, int TN, TileLoads kLoads, class Group>
void launch_gemm_split(Group group, SplitBuffer<T>& split, cudaStream_t stream) {
  group.set_tiles(BM, BN);
  group.set_partials();
  const int64_t chunks = ceil_div(group.P, kSumChunk);
  int64_t per_pass = split.elements / group.partials();
  per_pass = per_pass < 1 ? 1 : (per_pass > 65535 ? 65535 : per_pass);
  for (int64_t first = 0; first < chunks; first += per_pass) {
    const int64_t count = chunks - first < per_pass ? chunks - first : per_pass;
    launch_kernel("gemm_chunk_partials_kernel",
                  gemm_chunk_partials_kernel<T, kACols, BM, BN, TM, TN, kLoads, Group>,
                  capped_grid(group.tiles(), 1, count), (BM / TM) * (BN / TN), stream, group,
                  first, split.get());
    launch_kernel("fold_chunk_partials_kernel", fold_chunk_partials_kernel<T, Group>,
                  stride_grid(group.partials(), 256), 256, stream, group,
                  static_cast<const T*>(split.get()), first, count);
  }
}

// Whether every product of the group is at least 128 x 128 (float only: float64 never takes the
// 8x8 patches, for their registers).
template <typename T, class Group>
bool wide_group(const Group& group) {
  bool wide = sizeof(T) == 4;
  for (int g = 0; g < group.count; ++g)
    wide = wide && group.problems[g].M >= 128 && group.problems[g].N >= 128;
  return wide;
}

// launch_gemm_split in 128x128 tiles of 8x8 where `wide`, else 64x64 tiles of 4x4.
template <typename T, bool kACols, TileLoads kLoads, class Group>
void launch_split_tiles(bool wide, const Group& group, SplitBuffer<T>& split, cudaStream_t stream) {
  if constexpr (sizeof(T) == 4) {
    if (wide) {
      launch_gemm_split<T, kACols, 128, 128, 8, 8, kLoads>(group, split, stream);
      return;
    }
  }
  launch_gemm_split<T, kACols, 64, 64, 4, 4, kLoads>(group, split, stream);
}

// Every product of the group in one launch (M, N, P >= 1 each). GemmTiles::kAuto: groups of large
// float products get 128x128 tiles of 8x8 patches, twice the fma per shared-memory load of 4x4
// patches (64 per 16 values instead of 16 per 8). Small ones, and float64 (whose 8x8 patch would
// take 128 registers of accumulators), keep 64x64 tiles of 4x4.
template <typename T, bool kACols, class Group>
void gemm_group(const Group& group, cudaStream_t stream) {
  if (group.count == 0) return;
  const GemmTiles shape = launch_shape().gemm;
  switch (shape) {
    case GemmTiles::k32x32:
      launch_gemm_tiles<T, kACols, 32, 32, 4, 4>(group, stream);
      return;
    case GemmTiles::k64x32:
      launch_gemm_tiles<T, kACols, 64, 32, 4, 4>(group, stream);
      return;
    default:
      break;
  }
  constexpr TileLoads kAsync = TileLoads::kAsync;
  if constexpr (sizeof(T) == 4) {
    if (wide_group<T>(group)) {
      switch (shape) {
        case GemmTiles::k128x64:
          launch_gemm_tiles<T, kACols, 128, 64, 8, 4>(group, stream);
          return;
        case GemmTiles::k128x64Pipelined:
          launch_gemm_tiles<T, kACols, 128, 64, 8, 4, TileLoads::kPipelined>(group, stream);
          return;
        case GemmTiles::kAsync:
          launch_gemm_tiles<T, kACols, 128, 64, 8, 4, kAsync>(group, stream);
          return;
        default:
          launch_gemm_tiles<T, kACols, 128, 128, 8, 8>(group, stream);
          return;
      }
    }
  }
  if (shape == GemmTiles::kAsync)
    launch_gemm_tiles<T, kACols, 64, 64, 4, 4, kAsync>(group, stream);
  else
    launch_gemm_tiles<T, kACols, 64, 64, 4, 4>(group, stream);
}

// C = epilogue(A . B) over the rows the providers name: a group of one. M, N, P >= 1.
template <typename T, bool kACols, class ARows, class BRows, class CRows>
void gemm_chain(int64_t M, int64_t N, int64_t P, ARows a, BRows b, CRows c, GemmEpilogue epilogue,
                const T* vec, cudaStream_t stream) {
  if (M <= 0 || N <= 0) return;
  GemmGroup<T, ARows, BRows, CRows, 1> group;
  group.P = P;
  group.add({M, N, a, b, c, epilogue, vec, {nullptr, nullptr}});
  gemm_group<T, kACols>(group, stream);
}

// The group's products (stored, no epilogue) split over chunks where whole-sum tiles would leave
// most of the GPU idle: fewer output tiles than multiprocessors in all, more than one chunk, and a
// buffer that holds one chunk's partials of every product. Under GemmTiles::kAuto, k128x64,
// k128x64Pipelined and kAsync (all split into 128x128 tiles of 8x8 for float: without a running
// fold they need no more registers; loaded as the shape's whole-sum tiles are, except k128x64's,
// staged); otherwise, and under the other launch shapes, gemm_group. Same bits either way.
template <typename T, bool kACols, class Group>
void gemm_group_split(Group group, SplitBuffer<T>& split, cudaStream_t stream) {
  if (group.count == 0) return;
  for (int g = 0; g < group.count; ++g)  // the fold kernel stores the sums alone
    if (group.problems[g].epilogue != GemmEpilogue::kStore)
      throw std::logic_error("detlstm CUDA: a split GEMM group takes stored products only");
  const bool wide = wide_group<T>(group);
  group.set_tiles(wide ? 128 : 64, wide ? 128 : 64);
  group.set_partials();
  const GemmTiles shape = launch_shape().gemm;
  const bool splits = shape == GemmTiles::kAuto || shape == GemmTiles::k128x64 ||
                      shape == GemmTiles::k128x64Pipelined || shape == GemmTiles::kAsync;
  if (!splits || group.P <= kSumChunk || split.elements < group.partials() ||
      group.tiles() >= multiprocessors()) {
    gemm_group<T, kACols>(group, stream);
    return;
  }
  if (shape == GemmTiles::k128x64Pipelined)
    launch_split_tiles<T, kACols, TileLoads::kPipelined>(wide, group, split, stream);
  else if (shape == GemmTiles::kAsync)
    launch_split_tiles<T, kACols, TileLoads::kAsync>(wide, group, split, stream);
  else
    launch_split_tiles<T, kACols, TileLoads::kStaged>(wide, group, split, stream);
}

}  // namespace cuda
}  // namespace detlstm
