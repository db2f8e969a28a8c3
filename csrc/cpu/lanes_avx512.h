// The AVX-512 build's 16-lane types and the Lanes<> operations of csrc/common/canonical_math.h for
// them, like lanes_avx2.h for eight lanes: each intrinsic is the lane-wise twin of the scalar
// operation (add, multiply, divide and fma round once per lane under the same MXCSR, so subnormals
// are kept by the same DenormalGuard; compares, blends, shifts and bit casts are exact), so a lane's
// bits equal the portable build's; tests compare the builds bit for bit. The 32-entry exp2 table is
// one two-register permute here (vpermt2ps), where AVX2 needs four permutes and three blends.
// Included inside the AVX-512 build's math namespace.
#pragma once

struct V16 {
  __m512 v;
  V16() = default;
  explicit V16(__m512 x) : v(x) {}
  explicit V16(float c) : v(_mm512_set1_ps(c)) {}
  static V16 load(const float* p) { return V16(_mm512_loadu_ps(p)); }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
};
struct I16 {
  __m512i v;
};
struct M16 {
  __mmask16 v;  // one bit per lane: set where the comparison holds
};

inline V16 operator+(V16 a, V16 b) { return V16(_mm512_add_ps(a.v, b.v)); }
inline V16 operator-(V16 a, V16 b) { return V16(_mm512_sub_ps(a.v, b.v)); }
inline V16 operator*(V16 a, V16 b) { return V16(_mm512_mul_ps(a.v, b.v)); }
inline V16 operator/(V16 a, V16 b) { return V16(_mm512_div_ps(a.v, b.v)); }
inline V16 operator-(V16 a) {  // sign flip
  return V16(_mm512_castsi512_ps(
      _mm512_xor_si512(_mm512_castps_si512(a.v), _mm512_set1_epi32(static_cast<int>(0x80000000u)))));
}
inline M16 operator>(V16 a, V16 b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_GT_OQ)}; }
inline M16 operator<(V16 a, V16 b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ)}; }
inline M16 operator>=(V16 a, V16 b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_GE_OQ)}; }
inline M16 operator!=(V16 a, V16 b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_NEQ_UQ)}; }  // NaN != NaN

inline I16 operator+(I16 a, I16 b) { return {_mm512_add_epi32(a.v, b.v)}; }
inline I16 operator-(I16 a, I16 b) { return {_mm512_sub_epi32(a.v, b.v)}; }
inline I16 operator&(I16 a, I16 b) { return {_mm512_and_si512(a.v, b.v)}; }
inline I16 operator|(I16 a, I16 b) { return {_mm512_or_si512(a.v, b.v)}; }
inline I16 operator>>(I16 a, int n) { return {_mm512_srai_epi32(a.v, static_cast<unsigned>(n))}; }
inline I16 operator<<(I16 a, int n) { return {_mm512_slli_epi32(a.v, static_cast<unsigned>(n))}; }

template <>
struct Lanes<V16> {
  using I = I16;
  using M = M16;
  static constexpr bool kAllLanesTest = true;
  static bool all_abs_at_most(V16 x, float bound) {  // false where a lane is NaN
    const __m512 ax = _mm512_castsi512_ps(
        _mm512_and_si512(_mm512_castps_si512(x.v), _mm512_set1_epi32(0x7fffffff)));
    return _mm512_cmp_ps_mask(ax, _mm512_set1_ps(bound), _CMP_LE_OQ) == 0xffff;
  }
  static V16 f(float c) { return V16(c); }
  static I16 i(int32_t c) { return {_mm512_set1_epi32(c)}; }
  static I16 as_int(V16 x) { return {_mm512_castps_si512(x.v)}; }
  static V16 as_float(I16 x) { return V16(_mm512_castsi512_ps(x.v)); }
  static V16 select(M16 m, V16 a, V16 b) { return V16(_mm512_mask_blend_ps(m.v, b.v, a.v)); }
  static M16 any_of(M16 a, M16 b) { return {static_cast<__mmask16>(a.v | b.v)}; }
  static V16 fma(V16 a, V16 b, V16 c) { return V16(_mm512_fmadd_ps(a.v, b.v, c.v)); }
  static V16 table_hi(I16 j) { return lookup32(kExp2Table32Hi, j); }
  static V16 table_lo(I16 j) { return lookup32(kExp2Table32Lo, j); }
  // table[j] for j in [0, 32): bit 4 of j picks the register, bits 0-3 the lane. An exact copy.
  static V16 lookup32(const float* table, I16 j) {
    return V16(_mm512_permutex2var_ps(_mm512_loadu_ps(table), j.v, _mm512_loadu_ps(table + 16)));
  }
};

// What the cell (csrc/common/lstm_cell.h) calls, for sixteen lanes.
inline V16 fma_rn(V16 a, V16 b, V16 c) { return Lanes<V16>::fma(a, b, c); }
inline V16 canonical_exp(V16 x) { return canonical_exp_lanes(x); }
inline V16 canonical_sigmoid(V16 x) { return canonical_sigmoid_lanes(x); }
inline V16 canonical_tanh(V16 x) { return canonical_tanh_lanes(x); }
