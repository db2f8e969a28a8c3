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

// The operations the canonical functions are written in, for one lane type F. This header defines
// them for float (the CPU's portable build and the GPU); the CPU's AVX2 build defines them for its
// 8-lane vector (csrc/cpu/lanes_avx2.h), so the one text below also runs eight lanes at a time. Every
// operation is correctly rounded or exact, lane by lane, so both give the same bits.
template <class F>
struct Lanes;

template <>
struct Lanes<float> {
  using I = int32_t;  // integer lanes
  using M = bool;     // comparison results
  static constexpr bool kAllLanesTest = false;  // see canonical_exp_lanes
  static DETLSTM_HD float f(float c) { return c; }
  static DETLSTM_HD I i(int32_t c) { return c; }
  static DETLSTM_HD I as_int(float x) { return static_cast<int32_t>(float_bits(x)); }
  static DETLSTM_HD float as_float(I v) { return bits_float(static_cast<uint32_t>(v)); }
  static DETLSTM_HD float select(M m, float a, float b) { return m ? a : b; }
  static DETLSTM_HD M any_of(M a, M b) { return a || b; }
  static DETLSTM_HD float fma(float a, float b, float c) { return fma_rn(a, b, c); }
  static DETLSTM_HD float table_hi(I j) { return exp2_table_hi(j); }
  static DETLSTM_HD float table_lo(I j) { return exp2_table_lo(j); }
};

template <class F, class L = Lanes<F>>
DETLSTM_HD F abs_lanes(F x) {
  return L::as_float(L::as_int(x) & L::i(0x7fffffff));
}
template <class F, class L = Lanes<F>>
DETLSTM_HD F copysign_lanes(F magnitude, F sign) {
  return L::as_float((L::as_int(magnitude) & L::i(0x7fffffff)) |
                     (L::as_int(sign) & L::i(static_cast<int32_t>(0x80000000u))));
}

// The one NaN the canonical functions return. NaN payloads are not portable (x86 keeps the input's,
// NVIDIA GPUs return their own canonical NaN), so NaN inputs are answered with this fixed pattern.
constexpr int32_t kCanonicalNanBits = 0x7fc00000;

// exp(x) = 2^m * 2^(j/32) * exp(r), k = 32m + j = round(x * 32/ln2), |r| <= ln2/64.
// Because |r| is tiny, its own rounding costs ~0.01 ulp; the table's hi + lo carries the rest, and the
// one visible rounding is the final add, so the result is within ~0.51 ulp. The power of two is applied
// as two exact-or-once-rounded multiplications so results in the subnormal range are rounded once.
// No branches: the main path runs on x clamped to [-110, 100] (NaN to 0) and the special cases are
// selected at the end, so the vector build runs it lane-parallel and a GPU warp never diverges.
//
// canonical_exp_parts is that main path up to the power of two: y = 2^(j/32) * exp(r), in
// [0.98, 1.98], and m.
template <class F, class L = Lanes<F>>
struct ExpParts {
  F y;
  typename L::I m;
};

template <class F, class L = Lanes<F>>
DETLSTM_HD ExpParts<F, L> canonical_exp_parts(F xc) {
  using I = typename L::I;
  const F shift = L::f(0x1.8p23f);  // adding it rounds to an integer, ties to even, below 2^22
  const F shifted = xc * L::f(0x1.715476p+5f) + shift;  // 32/ln2; two roundings, as written
  const F k = shifted - shift;                           // exact
  const I ki = L::as_int(shifted) - L::as_int(shift);
  const F a = L::fma(-k, L::f(0x1.62e430p-6f), xc);      // ln2/32, high part
  const F r = L::fma(-k, L::f(-0x1.05c610p-34f), a);     // ln2/32, low part
  const I j = ki & L::i(31);
  // exp(r) - 1 = r + r^2 (1/2 + r (1/6 + r/24)); the dropped r^5/120 term is below 2^-40.
  F q = L::fma(r, L::f(0x1.555556p-5f), L::f(0x1.555556p-3f));
  q = L::fma(r, q, L::f(0.5f));
  const F p = L::fma(r * r, q, r);
  const F t_hi = L::table_hi(j);
  const F s = L::fma(t_hi, p, L::table_lo(j));
  return {t_hi + s, (ki - j) >> 5};  // m exact: floor(k / 32)
}

// Where every lane has |x| <= kExpPlainRange (NaN fails the test), the vector builds take a shorter
// road to the same bits: there |k| <= 3970, so -125 <= m <= 124 and y * 2^m lies in [2^-125.03,
// 2^125), a normal number. The general path's two scalings are then both exact and give y * 2^m,
// which adding m to y's exponent field gives exactly; the clamps and the special-case selects change
// nothing. Lanes<> types that can test all their lanes at once say so with kAllLanesTest (the
// portable build and the GPU keep the single branch-free path, and the tests compare the vector
// builds' bits against the portable build's over the whole float32 range).
constexpr float kExpPlainRange = 86.0f;

template <class F, class L = Lanes<F>>
DETLSTM_HD F canonical_exp_lanes(F x) {
  using I = typename L::I;
  if constexpr (L::kAllLanesTest) {
    if (L::all_abs_at_most(x, kExpPlainRange)) {
      const ExpParts<F, L> e = canonical_exp_parts<F, L>(x);
      return L::as_float(L::as_int(e.y) + (e.m << 23));
    }
  }
  const auto nan = x != x;
  const auto over = x > L::f(100.0f);     // exp(x) > FLT_MAX: +inf, as the true function
  const auto under = x < L::f(-110.0f);   // below half the smallest subnormal: +0
  const F xc = L::select(nan, L::f(0.0f), L::select(over, L::f(100.0f), L::select(under, L::f(-110.0f), x)));
  const ExpParts<F, L> e = canonical_exp_parts<F, L>(xc);
  const I m = e.m;
  const I m1 = (m + ((m >> 31) & L::i(1))) >> 1;  // m / 2, rounded toward zero
  const I m2 = m - m1;
  const F scaled = (e.y * L::as_float((m1 + L::i(127)) << 23)) * L::as_float((m2 + L::i(127)) << 23);
  const F special = L::select(over, L::as_float(L::i(0x7f800000)), L::f(0.0f));
  return L::select(nan, L::as_float(L::i(kCanonicalNanBits)), L::select(L::any_of(over, under), special, scaled));
}

// sigmoid(x) = num / (1 + e) with e = exp(-|x|) <= 1 and num = 1 (x >= 0) or e (x < 0): neither
// branch can overflow, and the negative side keeps sigmoid's subnormal tail. The division is by the
// exact 1 + e = d + d_err (Fast2Sum, since 1 >= e), corrected once through the exact remainder
// num - q*d, so the add's rounding never reaches the result: only e's own error and one final
// rounding remain (worst case measured below 1.5 ulp).
template <class F, class L = Lanes<F>>
DETLSTM_HD F canonical_sigmoid_lanes(F x) {
  const F e = canonical_exp_lanes<F, L>(-abs_lanes<F, L>(x));
  const F one = L::f(1.0f);
  const F d = one + e;
  const F d_err = e - (d - one);
  const F num = L::select(x >= L::f(0.0f), one, e);
  const F q = num / d;
  const F rem = L::fma(-q, d, num);  // exact
  const F result = q + L::fma(-q, d_err, rem) / d;
  return L::select(x != x, L::as_float(L::i(kCanonicalNanBits)), result);
}

// tanh: an odd polynomial x + x^3 P(x^2) below 0.55 (no cancellation there), 1 - 2/(exp(2|x|)+1)
// above, where the result is >= 0.5 and the subtraction loses nothing. P is a weighted least-squares
// fit of (tanh(x) - x)/x^3 on [0, 0.55], coefficients rounded to float (approximation error < 0.1 ulp).
// Both branches are computed and one is selected (see canonical_exp_lanes).
template <class F, class L = Lanes<F>>
DETLSTM_HD F canonical_tanh_lanes(F x) {
  const F ax = abs_lanes<F, L>(x);
  const F z = x * x;
  F p = L::f(-0x1.e1abd8p-11f);
  p = L::fma(p, z, L::f(0x1.b8126cp-9f));
  p = L::fma(p, z, L::f(-0x1.209bdep-7f));
  p = L::fma(p, z, L::f(0x1.66306ep-6f));
  p = L::fma(p, z, L::f(-0x1.ba1a88p-5f));
  p = L::fma(p, z, L::f(0x1.11110ep-3f));
  p = L::fma(p, z, L::f(-0x1.555556p-2f));
  const F small = L::fma(x * z, p, x);
  const F e = canonical_exp_lanes<F, L>(ax + ax);  // +inf for large |x| gives exactly 1 below
  const F large = L::f(1.0f) - L::f(2.0f) / (e + L::f(1.0f));
  const F result = copysign_lanes<F, L>(L::select(ax < L::f(0.55f), small, large), x);  // tanh(-0) = -0
  return L::select(x != x, L::as_float(L::i(kCanonicalNanBits)), result);
}

DETLSTM_HD float canonical_exp(float x) { return canonical_exp_lanes(x); }
DETLSTM_HD float canonical_sigmoid(float x) { return canonical_sigmoid_lanes(x); }
DETLSTM_HD float canonical_tanh(float x) { return canonical_tanh_lanes(x); }

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
