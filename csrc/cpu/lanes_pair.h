// Two vectors as one lane type: every operation of Lanes<> and of the cell applied to both halves,
// lane by lane, so each half's bits are exactly those of the single vector. Why: the cell is one
// long dependent chain (exp, divisions, exp again) per vector, and run one vector at a time it waits
// on latency most of the time; written over a pair, every step issues two independent instructions.
// Included inside a vector build's math namespace after its lanes header.
#pragma once

template <class V>
struct Two {
  V a, b;
  Two() = default;
  Two(V x, V y) : a(x), b(y) {}
  explicit Two(float c) : a(c), b(c) {}
};

#define DETLSTM_PAIR_BINARY(op)                                                                  \
  template <class V>                                                                             \
  inline auto operator op(const Two<V>& x, const Two<V>& y)->Two<decltype(x.a op y.a)> {         \
    return {x.a op y.a, x.b op y.b};                                                             \
  }
DETLSTM_PAIR_BINARY(+)
DETLSTM_PAIR_BINARY(-)
DETLSTM_PAIR_BINARY(*)
DETLSTM_PAIR_BINARY(/)
DETLSTM_PAIR_BINARY(>)
DETLSTM_PAIR_BINARY(<)
DETLSTM_PAIR_BINARY(>=)
DETLSTM_PAIR_BINARY(!=)
DETLSTM_PAIR_BINARY(&)
DETLSTM_PAIR_BINARY(|)
#undef DETLSTM_PAIR_BINARY

template <class V>
inline Two<V> operator-(const Two<V>& x) { return {-x.a, -x.b}; }
template <class V>
inline Two<V> operator>>(const Two<V>& x, int n) { return {x.a >> n, x.b >> n}; }
template <class V>
inline Two<V> operator<<(const Two<V>& x, int n) { return {x.a << n, x.b << n}; }

template <class V>
struct Lanes<Two<V>> {
  using L = Lanes<V>;
  using I = Two<typename L::I>;
  using M = Two<typename L::M>;
  static constexpr bool kAllLanesTest = L::kAllLanesTest;
  static bool all_abs_at_most(const Two<V>& x, float bound) {
    return L::all_abs_at_most(x.a, bound) && L::all_abs_at_most(x.b, bound);
  }
  static Two<V> f(float c) { return {L::f(c), L::f(c)}; }
  static I i(int32_t c) { return {L::i(c), L::i(c)}; }
  static I as_int(const Two<V>& x) { return {L::as_int(x.a), L::as_int(x.b)}; }
  static Two<V> as_float(const I& x) { return {L::as_float(x.a), L::as_float(x.b)}; }
  static Two<V> select(const M& m, const Two<V>& x, const Two<V>& y) {
    return {L::select(m.a, x.a, y.a), L::select(m.b, x.b, y.b)};
  }
  static M any_of(const M& x, const M& y) { return {L::any_of(x.a, y.a), L::any_of(x.b, y.b)}; }
  static Two<V> fma(const Two<V>& x, const Two<V>& y, const Two<V>& z) {
    return {L::fma(x.a, y.a, z.a), L::fma(x.b, y.b, z.b)};
  }
  static Two<V> table_hi(const I& j) { return {L::table_hi(j.a), L::table_hi(j.b)}; }
  static Two<V> table_lo(const I& j) { return {L::table_lo(j.a), L::table_lo(j.b)}; }
};

template <class V>
inline Two<V> fma_rn(const Two<V>& x, const Two<V>& y, const Two<V>& z) {
  return Lanes<Two<V>>::fma(x, y, z);
}
template <class V>
inline Two<V> canonical_exp(const Two<V>& x) { return canonical_exp_lanes(x); }
template <class V>
inline Two<V> canonical_sigmoid(const Two<V>& x) { return canonical_sigmoid_lanes(x); }
template <class V>
inline Two<V> canonical_tanh(const Two<V>& x) { return canonical_tanh_lanes(x); }
