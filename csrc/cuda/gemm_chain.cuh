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

#include "kernels_common.cuh"

namespace detlstm {
namespace cuda {

constexpr int kGemmBK = 16;
static_assert(kSumChunk % kGemmBK == 0, "a chunk must end on a P-tile boundary");

// The BM x BN tile of C at (m0, n0). Every thread of the block calls this (it holds barriers); it
// ends on a barrier, so the block can go on to another tile with the same shared arrays.
template <typename T, bool kACols, int BM, int BN, int TM, int TN, class ARows, class BRows,
          class CRows>
__device__ void gemm_chain_tile(int64_t M, int64_t N, int64_t P, const ARows& a, const BRows& b,
                                const CRows& c, GemmEpilogue epilogue, const T* vec, int64_t m0,
                                int64_t n0) {
  constexpr int kThreads = (BM / TM) * (BN / TN);
  // 16-byte aligned rows, so a patch's TM (TN) consecutive values load as vectors
  __shared__ __align__(16) T As[kGemmBK][BM];
  __shared__ __align__(16) T Bs[kGemmBK][BN];
  const int tid = threadIdx.x;
  const int tx = tid % (BN / TN), ty = tid / (BN / TN);

  T acc[TM][TN], total[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = T(0);

  for (int64_t k0 = 0; k0 < P; k0 += kGemmBK) {
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
    for (int kk = 0; kk < kmax; ++kk) {
      T av[TM], bv[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) av[i] = As[kk][ty * TM + i];
#pragma unroll
      for (int j = 0; j < TN; ++j) bv[j] = Bs[kk][tx * TN + j];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fma_rn(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
    if (chunk_ends_after(k0 + kmax - 1, P)) {  // fold the chunk's partial, start the next from +0
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) fold_and_restart(total[i][j], acc[i][j], k0 + kmax - 1);
    }
  }

#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t m = m0 + ty * TM + i;
    if (m >= M) continue;
    T* row = c(m);
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t n = n0 + tx * TN + j;
      if (n < N) row[n] = epilogue == GemmEpilogue::kAddVector ? vec[n] + total[i][j] : total[i][j];
    }
  }
}

// Block (x, y) computes tile (x, y) of C, then those a grid's width and height further on.
template <typename T, bool kACols, int BM, int BN, int TM, int TN, class ARows, class BRows,
          class CRows>
__global__ void __launch_bounds__((BM / TM) * (BN / TN))
    gemm_chain_kernel(int64_t M, int64_t N, int64_t P, ARows a, BRows b, CRows c,
                      GemmEpilogue epilogue, const T* vec) {
  for_each_work_block(ceil_div(N, BN), ceil_div(M, BM), [&](int64_t bx, int64_t by) {
    gemm_chain_tile<T, kACols, BM, BN, TM, TN>(M, N, P, a, b, c, epilogue, vec, by * BM, bx * BN);
  });
}

template <typename T, bool kACols, int BM, int BN, int TM, int TN, class ARows, class BRows,
          class CRows>
void launch_gemm_tiles(int64_t M, int64_t N, int64_t P, ARows a, BRows b, CRows c,
                       GemmEpilogue epilogue, const T* vec, cudaStream_t stream) {
  const dim3 grid = capped_grid(ceil_div(N, BN), ceil_div(M, BM));
  launch_kernel("gemm_chain_kernel",
                gemm_chain_kernel<T, kACols, BM, BN, TM, TN, ARows, BRows, CRows>, grid,
                (BM / TM) * (BN / TN), stream, M, N, P, a, b, c, epilogue, vec);
}

// C = epilogue(A . B) over the rows the providers name. M, N, P >= 1.
template <typename T, bool kACols, class ARows, class BRows, class CRows>
void gemm_chain(int64_t M, int64_t N, int64_t P, ARows a, BRows b, CRows c, GemmEpilogue epilogue,
                const T* vec, cudaStream_t stream) {
  if (M <= 0 || N <= 0) return;
  // GemmTiles::kAuto: large float products get 128x128 tiles of 8x8 patches, twice the fma per
  // shared-memory load of 4x4 patches (64 per 16 values instead of 16 per 8). Small ones, and float64
  // (whose 8x8 patch would take 128 registers of accumulators), keep 64x64 tiles of 4x4.
  switch (launch_shape().gemm) {
    case GemmTiles::k32x32:
      launch_gemm_tiles<T, kACols, 32, 32, 4, 4>(M, N, P, a, b, c, epilogue, vec, stream);
      return;
    case GemmTiles::k64x32:
      launch_gemm_tiles<T, kACols, 64, 32, 4, 4>(M, N, P, a, b, c, epilogue, vec, stream);
      return;
    case GemmTiles::kAuto:
      break;
  }
  if constexpr (sizeof(T) == 4) {
    if (M >= 128 && N >= 128) {
      launch_gemm_tiles<T, kACols, 128, 128, 8, 8>(M, N, P, a, b, c, epilogue, vec, stream);
      return;
    }
  }
  launch_gemm_tiles<T, kACols, 64, 64, 4, 4>(M, N, P, a, b, c, epilogue, vec, stream);
}

}  // namespace cuda
}  // namespace detlstm
