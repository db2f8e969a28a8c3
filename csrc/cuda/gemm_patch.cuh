// What the tiles of the fixed-order product (gemm_chain.cuh, gemm_tile_async.cuh) share: which
// thread of a tile owns which outputs, and a chunk's hand-over (ARITHMETIC.md rule 3).
#pragma once

#include "kernels_common.cuh"

namespace detlstm {
namespace cuda {

// How a tile's P-tiles reach shared memory: copied by the threads and multiplied, one after the other
// (kStaged); loaded into registers while the previous one is multiplied, two shared stages
// (kPipelined); or by asynchronous copies over several stages (kAsync, gemm_tile_async.cuh).
enum class TileLoads { kStaged, kPipelined, kAsync };

// The thread's patch position in a BM x BN tile.
template <int BN, int TN>
__device__ __forceinline__ int patch_col() { return threadIdx.x % (BN / TN); }
template <int BN, int TN>
__device__ __forceinline__ int patch_row() { return threadIdx.x / (BN / TN); }

template <typename T, int TM, int TN>
__device__ __forceinline__ void zero_patch(T (&acc)[TM][TN]) {
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = T(0);
}

// After term k of P: if it ends a chunk, the chunk's partials go to on_chunk and acc restarts at +0.
template <typename T, int TM, int TN, class OnChunk>
__device__ __forceinline__ void hand_over_chunk(int64_t k, int64_t P, T (&acc)[TM][TN],
                                                OnChunk& on_chunk) {
  if (!chunk_ends_after(k, P)) return;
  on_chunk(chunk_start(k), acc);
  zero_patch(acc);
}

// Row i of the thread's TM x TN patch within the tile: TM consecutive rows, or under kAsync TM / 4
// blocks of 4 rows, BM / (TM / 4) rows apart (gemm_tile_async.cuh). Columns likewise.
template <TileLoads kLoads, int BM, int TM>
__device__ __forceinline__ int patch_row_of(int ty, int i) {
  if constexpr (kLoads == TileLoads::kAsync)
    return (i / 4) * (BM / (TM / 4)) + ty * 4 + i % 4;
  else
    return ty * TM + i;
}
template <TileLoads kLoads, int BN, int TN>
__device__ __forceinline__ int patch_col_of(int tx, int j) {
  return patch_row_of<kLoads, BN, TN>(tx, j);
}

}  // namespace cuda
}  // namespace detlstm
