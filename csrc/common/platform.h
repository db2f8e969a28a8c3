// Portability layer for the arithmetic headers: the same source compiles as host C++ (CPU kernels)
// and as CUDA device code. Only correctly rounded or exact operations are exposed here
// (ARITHMETIC.md rule 1), so every caller gets one rounding per named operation on both sides.
#pragma once

#include <cstdint>
#include <cstring>
#if !defined(__CUDACC__)
#include <cmath>
#endif

// The namespace these headers define their functions in. A CPU kernel variant compiled for another
// instruction set includes them under its own name, so two compilations of one inline function never
// meet at link time.
#ifndef DETLSTM_MATH_NS
#define DETLSTM_MATH_NS detlstm
#endif

#if defined(__CUDACC__)
#define DETLSTM_HD __host__ __device__ __forceinline__
#else
#define DETLSTM_HD inline
#endif

namespace DETLSTM_MATH_NS {

// One rounding, on both sides. Host: std::fma is correctly rounded (hardware FMA or glibc's exact
// software path). Device: __fmaf_rn is the single-rounding instruction.
DETLSTM_HD float fma_rn(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}
DETLSTM_HD double fma_rn(double a, double b, double c) {
#if defined(__CUDA_ARCH__)
  return __fma_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

DETLSTM_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint32_t>(__float_as_uint(x));
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}

DETLSTM_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}

}  // namespace DETLSTM_MATH_NS
