// Canonical exp, sigmoid and tanh (ARITHMETIC.md rules 1 and 6): one algorithm each, built only from
// correctly rounded binary32 operations, so the CPU and every CUDA GPU produce the same bits.
// Accuracy (measured by tests/test_canonical_math.py over the whole float32 range): exp ~0.5 ulp,
// sigmoid and tanh within 2 ulp of the correctly rounded result.
#pragma once

#include "platform.h"

namespace DETLSTM_MATH_NS {

// 2^(j/32) for j = 0..31 as an unevaluated sum hi + lo (hi = float nearest, lo = float nearest to the
// rest), so the table carries ~48 bits and the reduction below loses nothing visible in float32.
#define DETLSTM_EXP2_32_HI                                                                          \
  {0x1.000000p+0f, 0x1.059b0ep+0f, 0x1.0b5586p+0f, 0x1.11301ep+0f, 0x1.172b84p+0f, 0x1.1d4874p+0f, \
   0x1.2387a6p+0f, 0x1.29e9e0p+0f, 0x1.306fe0p+0f, 0x1.371a74p+0f, 0x1.3dea64p+0f, 0x1.44e086p+0f, \
   0x1.4bfdaep+0f, 0x1.5342b6p+0f, 0x1.5ab07ep+0f, 0x1.6247ecp+0f, 0x1.6a09e6p+0f, 0x1.71f75ep+0f, \
   0x1.7a1148p+0f, 0x1.82589ap+0f, 0x1.8ace54p+0f, 0x1.93737cp+0f, 0x1.9c4918p+0f, 0x1.a5503cp+0f, \
   0x1.ae89fap+0f, 0x1.b7f770p+0f, 0x1.c199bep+0f, 0x1.cb720ep+0f, 0x1.d5818ep+0f, 0x1.dfc974p+0f, \
   0x1.ea4afap+0f, 0x1.f50766p+0f}
#define DETLSTM_EXP2_32_LO                                                                       \
  {0x0p+0f,          -0x1.9d4f52p-25f, 0x1.9f3122p-25f,  -0x1.fdb496p-25f, -0x1.c15742p-27f,     \
   -0x1.d2e8cap-25f, 0x1.ceac48p-25f,  -0x1.5c0424p-25f, 0x1.4636e2p-25f,  -0x1.18aac6p-25f,     \
   0x1.824684p-25f,  0x1.8624b4p-30f,  -0x1.593abcp-25f, -0x1.2c5610p-25f, -0x1.5bd5ecp-27f,     \
   -0x1.f8b550p-25f, 0x1.9fcef4p-26f,  0x1.1d8beep-25f,  -0x1.829fd0p-25f, -0x1.accc7cp-26f,     \
   0x1.15506ep-27f,  -0x1.e64744p-25f, 0x1.51f848p-27f,  -0x1.b83b54p-25f, -0x1.a94b14p-26f,     \
   -0x1.a09438p-25f, -0x1.3d56b2p-27f, -0x1.8837ccp-27f, -0x1.822dbcp-27f, -0x1.908c94p-25f,     \
   0x1.52486cp-27f,  -0x1.246eb0p-26f}

#if defined(__CUDACC__)
static __device__ const float kExp2Table32HiDevice[32] = DETLSTM_EXP2_32_HI;
static __device__ const float kExp2Table32LoDevice[32] = DETLSTM_EXP2_32_LO;
#endif
static constexpr float kExp2Table32Hi[32] = DETLSTM_EXP2_32_HI;
static constexpr float kExp2Table32Lo[32] = DETLSTM_EXP2_32_LO;

DETLSTM_HD float exp2_table_hi(int j) {
#if defined(__CUDA_ARCH__)
  return kExp2Table32HiDevice[j];
#else
  return kExp2Table32Hi[j];
#endif
}
DETLSTM_HD float exp2_table_lo(int j) {
#if defined(__CUDA_ARCH__)
  return kExp2Table32LoDevice[j];
#else
  return kExp2Table32Lo[j];
#endif
}

DETLSTM_HD float abs_exact(float x) { return bits_float(float_bits(x) & 0x7fffffffu); }
DETLSTM_HD float copysign_exact(float magnitude, float sign) {
  return bits_float((float_bits(magnitude) & 0x7fffffffu) | (float_bits(sign) & 0x80000000u));
}

// The one NaN the canonical functions return. NaN payloads are not portable (x86 keeps the input's,
// NVIDIA GPUs return their own canonical NaN), so NaN inputs are answered with this fixed pattern.
DETLSTM_HD float canonical_nan() { return bits_float(0x7fc00000u); }

// exp(x) = 2^m * 2^(j/32) * exp(r), k = 32m + j = round(x * 32/ln2), |r| <= ln2/64.
// Because |r| is tiny, its own rounding costs ~0.01 ulp; the table's hi + lo carries the rest, and the
// one visible rounding is the final add, so the result is within ~0.51 ulp. The power of two is applied
// as two exact-or-once-rounded multiplications so results in the subnormal range are rounded once.
DETLSTM_HD float canonical_exp(float x) {
  if (!(x == x)) return canonical_nan();
  if (x > 100.0f) return bits_float(0x7f800000u);  // exp(x) > FLT_MAX: +inf, as the true function
  if (x < -110.0f) return 0.0f;                    // below half the smallest subnormal: +0
  const float kShift = 0x1.8p23f;  // adding it rounds to an integer, ties to even, below 2^22
  const float shifted = x * 0x1.715476p+5f + kShift;  // 32/ln2; two roundings, as written
  const float k = shifted - kShift;                     // exact
  const int ki = static_cast<int>(float_bits(shifted)) - static_cast<int>(float_bits(kShift));
  const float a = fma_rn(-k, 0x1.62e430p-6f, x);       // ln2/32, high part
  const float r = fma_rn(-k, -0x1.05c610p-34f, a);     // ln2/32, low part
  const int j = ki & 31;
  const int m = (ki - j) / 32;                         // exact: floor(k / 32)
  // exp(r) - 1 = r + r^2 (1/2 + r (1/6 + r/24)); the dropped r^5/120 term is below 2^-40.
  float q = fma_rn(r, 0x1.555556p-5f, 0x1.555556p-3f);
  q = fma_rn(r, q, 0.5f);
  const float p = fma_rn(r * r, q, r);
  const float t_hi = exp2_table_hi(j);
  const float s = fma_rn(t_hi, p, exp2_table_lo(j));
  const float y = t_hi + s;
  const int m1 = m / 2;
  const int m2 = m - m1;
  return (y * exp2_int(m1)) * exp2_int(m2);
}

// sigmoid(x) = num / (1 + e) with e = exp(-|x|) <= 1 and num = 1 (x >= 0) or e (x < 0): neither
// branch can overflow, and the negative side keeps sigmoid's subnormal tail. The division is by the
// exact 1 + e = d + d_err (Fast2Sum, since 1 >= e), corrected once through the exact remainder
// num - q*d, so the add's rounding never reaches the result: only e's own error and one final
// rounding remain (worst case measured below 1.5 ulp).
DETLSTM_HD float canonical_sigmoid(float x) {
  if (!(x == x)) return canonical_nan();
  const float e = canonical_exp(-abs_exact(x));
  const float d = 1.0f + e;
  const float d_err = e - (d - 1.0f);
  const float num = x >= 0.0f ? 1.0f : e;
  const float q = num / d;
  const float rem = fma_rn(-q, d, num);    // exact
  return q + fma_rn(-q, d_err, rem) / d;
}

// tanh: an odd polynomial x + x^3 P(x^2) below 0.55 (no cancellation there), 1 - 2/(exp(2|x|)+1)
// above, where the result is >= 0.5 and the subtraction loses nothing. P is a weighted least-squares
// fit of (tanh(x) - x)/x^3 on [0, 0.55], coefficients rounded to float (approximation error < 0.1 ulp).
DETLSTM_HD float canonical_tanh(float x) {
  if (!(x == x)) return canonical_nan();
  const float ax = abs_exact(x);
  if (ax < 0.55f) {
    const float z = x * x;
    float p = -0x1.e1abd8p-11f;
    p = fma_rn(p, z, 0x1.b8126cp-9f);
    p = fma_rn(p, z, -0x1.209bdep-7f);
    p = fma_rn(p, z, 0x1.66306ep-6f);
    p = fma_rn(p, z, -0x1.ba1a88p-5f);
    p = fma_rn(p, z, 0x1.11110ep-3f);
    p = fma_rn(p, z, -0x1.555556p-2f);
    return copysign_exact(fma_rn(x * z, p, x), x);  // keeps tanh(-0) = -0
  }
  const float e = canonical_exp(ax + ax);  // +inf for large |x| gives exactly 1 below
  return copysign_exact(1.0f - 2.0f / (e + 1.0f), x);
}

// float64 is the reference and gradcheck dtype; G4 is promised for float32 only (ARITHMETIC.md), so
// it uses the platform's double-precision functions.
DETLSTM_HD double canonical_exp(double x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  return std::exp(x);
#endif
}
DETLSTM_HD double canonical_sigmoid(double x) {
  const double e = canonical_exp(-(x < 0 ? -x : x));
  const double d = 1.0 + e;
  return x >= 0.0 ? 1.0 / d : e / d;
}
DETLSTM_HD double canonical_tanh(double x) {
#if defined(__CUDA_ARCH__)
  return ::tanh(x);
#else
  return std::tanh(x);
#endif
}

}  // namespace DETLSTM_MATH_NS
