// The AVX2 build's 8-lane types and the Lanes<> operations of csrc/common/canonical_math.h for them,
// so the canonical functions and the cell run eight lanes per instruction. Each intrinsic is the
// lane-wise twin of the scalar operation (add, multiply, divide and fma round once per lane;
// compares, selects, shifts and bit casts are exact), so a lane's bits equal the scalar build's;
// tests compare the two builds bit for bit. Included inside the AVX2 build's math namespace.
#pragma once

struct V8 {
  __m256 v;
  V8() = default;
  explicit V8(__m256 x) : v(x) {}
  explicit V8(float c) : v(_mm256_set1_ps(c)) {}
  static V8 load(const float* p) { return V8(_mm256_loadu_ps(p)); }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
};
struct I8 {
  __m256i v;
};
struct M8 {
  __m256 v;  // all ones in the lanes where the comparison holds
};

inline V8 operator+(V8 a, V8 b) { return V8(_mm256_add_ps(a.v, b.v)); }
inline V8 operator-(V8 a, V8 b) { return V8(_mm256_sub_ps(a.v, b.v)); }
inline V8 operator*(V8 a, V8 b) { return V8(_mm256_mul_ps(a.v, b.v)); }
inline V8 operator/(V8 a, V8 b) { return V8(_mm256_div_ps(a.v, b.v)); }
inline V8 operator-(V8 a) { return V8(_mm256_xor_ps(a.v, _mm256_set1_ps(-0.0f))); }  // sign flip
inline M8 operator>(V8 a, V8 b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_GT_OQ)}; }
inline M8 operator<(V8 a, V8 b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ)}; }
inline M8 operator>=(V8 a, V8 b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_GE_OQ)}; }
inline M8 operator!=(V8 a, V8 b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_NEQ_UQ)}; }  // NaN != NaN

inline I8 operator+(I8 a, I8 b) { return {_mm256_add_epi32(a.v, b.v)}; }
inline I8 operator-(I8 a, I8 b) { return {_mm256_sub_epi32(a.v, b.v)}; }
inline I8 operator&(I8 a, I8 b) { return {_mm256_and_si256(a.v, b.v)}; }
inline I8 operator|(I8 a, I8 b) { return {_mm256_or_si256(a.v, b.v)}; }
inline I8 operator>>(I8 a, int n) { return {_mm256_srai_epi32(a.v, n)}; }  // arithmetic, as int32
inline I8 operator<<(I8 a, int n) { return {_mm256_slli_epi32(a.v, n)}; }

template <>
struct Lanes<V8> {
  using I = I8;
  using M = M8;
  static constexpr bool kAllLanesTest = true;
  static bool all_abs_at_most(V8 x, float bound) {  // false where a lane is NaN
    const __m256 ax = _mm256_castsi256_ps(
        _mm256_and_si256(_mm256_castps_si256(x.v), _mm256_set1_epi32(0x7fffffff)));
    return _mm256_movemask_ps(_mm256_cmp_ps(ax, _mm256_set1_ps(bound), _CMP_LE_OQ)) == 0xff;
  }
  static V8 f(float c) { return V8(c); }
  static I8 i(int32_t c) { return {_mm256_set1_epi32(c)}; }
  static I8 as_int(V8 x) { return {_mm256_castps_si256(x.v)}; }
  static V8 as_float(I8 x) { return V8(_mm256_castsi256_ps(x.v)); }
  static V8 select(M8 m, V8 a, V8 b) { return V8(_mm256_blendv_ps(b.v, a.v, m.v)); }
  static M8 any_of(M8 a, M8 b) { return {_mm256_or_ps(a.v, b.v)}; }
  static V8 fma(V8 a, V8 b, V8 c) { return V8(_mm256_fmadd_ps(a.v, b.v, c.v)); }
  static V8 table_hi(I8 j) { return lookup32(kExp2Table32Hi, j); }
  static V8 table_lo(I8 j) { return lookup32(kExp2Table32Lo, j); }
  // table[j] for j in [0, 32) from registers: a permute within each quarter of the table, then two
  // blends on bits 3 and 4 of j (moved to the sign bit, which blendv reads). An exact copy, like the
  // gather it replaces, and several times cheaper where gathers are microcoded.
  static V8 lookup32(const float* table, I8 j) {
    const __m256 q0 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table), j.v);
    const __m256 q1 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table + 8), j.v);
    const __m256 q2 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table + 16), j.v);
    const __m256 q3 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table + 24), j.v);
    const __m256 bit3 = _mm256_castsi256_ps(_mm256_slli_epi32(j.v, 28));
    const __m256 bit4 = _mm256_castsi256_ps(_mm256_slli_epi32(j.v, 27));
    return V8(_mm256_blendv_ps(_mm256_blendv_ps(q0, q1, bit3), _mm256_blendv_ps(q2, q3, bit3), bit4));
  }
};

// What the cell (csrc/common/lstm_cell.h) calls, for eight lanes.
inline V8 fma_rn(V8 a, V8 b, V8 c) { return Lanes<V8>::fma(a, b, c); }
inline V8 canonical_exp(V8 x) { return canonical_exp_lanes(x); }
inline V8 canonical_sigmoid(V8 x) { return canonical_sigmoid_lanes(x); }
inline V8 canonical_tanh(V8 x) { return canonical_tanh_lanes(x); }
