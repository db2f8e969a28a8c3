// Fixed-order matrix product on the GPU (ARITHMETIC.md rule 3), the CUDA twin of
// csrc/cpu/gemm_chain.h, with the same contract:
//
// C[m][n] = init(m, n) + sum over p = 0 .. P-1 of A(m, p) * B(p, n), each element ONE chain of
// fma in ascending p, started from init. A thread owns a 4x4 patch of C for the whole reduction; the
// P-tiles are visited in order and a tile's inner loop stops at P (a position past the end is never
// added as a zero). Tile sizes decide only which thread computes which element, so the bits match the
// CPU's for any BM/BN and any grid.
#pragma once

#include "kernels_common.cuh"

namespace detlstm {
namespace cuda {

enum class GemmInit { kZero, kVector, kFromC };

constexpr int kGemmBK = 16;

template <typename T, bool kACols, int BM, int BN, class ARows, class BRows, class CRows>
__global__ void __launch_bounds__((BM / 4) * (BN / 4))
    gemm_chain_kernel(int64_t M, int64_t N, int64_t P, ARows a, BRows b, CRows c, GemmInit init,
                      const T* init_vec) {
  constexpr int kThreads = (BM / 4) * (BN / 4);
  __shared__ T As[kGemmBK][BM];
  __shared__ T Bs[kGemmBK][BN];
  const int tid = threadIdx.x;
  const int tx = tid % (BN / 4), ty = tid / (BN / 4);
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * BM, n0 = static_cast<int64_t>(blockIdx.x) * BN;

  T acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t m = m0 + ty * 4 + i, n = n0 + tx * 4 + j;
      T v = T(0);
      if (m < M && n < N) {
        if (init == GemmInit::kVector) v = init_vec[n];
        else if (init == GemmInit::kFromC) v = c(m)[n];
      }
      acc[i][j] = v;
    }
  }

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
      T av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = As[kk][ty * 4 + i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = Bs[kk][tx * 4 + j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fma_rn(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty * 4 + i;
    if (m >= M) continue;
    T* row = c(m);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx * 4 + j;
      if (n < N) row[n] = acc[i][j];
    }
  }
}

template <typename T, bool kACols, int BM, int BN, class ARows, class BRows, class CRows>
void launch_gemm_tiles(int64_t M, int64_t N, int64_t P, ARows a, BRows b, CRows c, GemmInit init,
                       const T* init_vec, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(ceil_div(N, BN)), static_cast<unsigned>(ceil_div(M, BM)));
  launch_kernel("gemm_chain_kernel", gemm_chain_kernel<T, kACols, BM, BN, ARows, BRows, CRows>, grid,
                (BM / 4) * (BN / 4), stream, M, N, P, a, b, c, init, init_vec);
}

// C = init + A . B over the rows the providers name. M, N, P >= 1.
template <typename T, bool kACols, class ARows, class BRows, class CRows>
void gemm_chain(int64_t M, int64_t N, int64_t P, ARows a, BRows b, CRows c, GemmInit init,
                const T* init_vec, cudaStream_t stream) {
  if (M <= 0 || N <= 0) return;
  if (launch_variant() == 1)
    launch_gemm_tiles<T, kACols, 32, 32>(M, N, P, a, b, c, init, init_vec, stream);
  else if (launch_variant() == 2)
    launch_gemm_tiles<T, kACols, 64, 32>(M, N, P, a, b, c, init, init_vec, stream);
  else
    launch_gemm_tiles<T, kACols, 64, 64>(M, N, P, a, b, c, init, init_vec, stream);
}

}  // namespace cuda
}  // namespace detlstm
