// The LSTM cell's forward and backward arithmetic (ARITHMETIC.md rules 5 and 8), written once for the
// CPU and CUDA kernels. Each local is one rounded value, in the order written here.
#pragma once

#include "canonical_math.h"
#include "philox.h"

namespace DETLSTM_MATH_NS {

// Where the cell's sigmoid and tanh come from: the canonical functions (canonical_math.h), found
// for the lane type at hand (float, double, the CPU's vectors). A kernel may pass its own policy
// with the same functions reading their exp2 table from elsewhere (the persistent GPU kernels keep a
// copy in shared memory: persistent.cuh); the values are the same, so the bits are too.
struct CanonicalActivations {
  template <typename X>
  static DETLSTM_HD X sigmoid(X x) { return canonical_sigmoid(x); }
  template <typename X>
  static DETLSTM_HD X tanh(X x) { return canonical_tanh(x); }
};

template <typename T>
struct CellState {
  T i, f, g, o;  // activated gates
  T c, h;
};

// The cell forward in its two halves: the gate activations from the four pre-activations
// (PyTorch's order i, f, g, o), then the new cell state and h from the activated gates and the
// previous cell state. lstm_cell_forward runs both; a caller may run the halves apart (the CPU runs
// the first half over a block of units before the second: see cell_forward_rows).
template <typename T, class Act = CanonicalActivations>
DETLSTM_HD CellState<T> lstm_cell_gates(T a_i, T a_f, T a_g, T a_o) {
  CellState<T> s;
  s.i = Act::sigmoid(a_i);
  s.f = Act::sigmoid(a_f);
  s.g = Act::tanh(a_g);
  s.o = Act::sigmoid(a_o);
  return s;
}

// Fills s.c and s.h from s.i, s.f, s.g, s.o.
template <typename T, class Act = CanonicalActivations>
DETLSTM_HD void lstm_cell_state(CellState<T>& s, T c_prev) {
  s.c = fma_rn(s.f, c_prev, s.i * s.g);
  s.h = s.o * Act::tanh(s.c);
}

template <typename T, class Act = CanonicalActivations>
DETLSTM_HD CellState<T> lstm_cell_forward(T a_i, T a_f, T a_g, T a_o, T c_prev) {
  CellState<T> s = lstm_cell_gates<T, Act>(a_i, a_f, a_g, a_o);
  lstm_cell_state<T, Act>(s, c_prev);
  return s;
}

template <typename T>
struct CellGrad {
  T da_i, da_f, da_g, da_o;  // gradients of the gate pre-activations
  T dc_prev;                 // gradient flowing to the previous cell state
};

// dh: the whole gradient reaching h at this step (output gradient plus the recurrent part);
// dc_next: the gradient reaching c from the step after it (or from c_n). tanh(c) is recomputed with
// the forward's canonical function, so it is the forward's value bit for bit.
// sigmoid'(a) = s - s*s and tanh'(a) = 1 - t*t, each as one fma.
template <typename T, class Act = CanonicalActivations>
DETLSTM_HD CellGrad<T> lstm_cell_backward(T dh, T dc_next, T i, T f, T g, T o, T c, T c_prev) {
  const T tc = Act::tanh(c);
  const T d_o = dh * tc;
  const T dc = fma_rn(dh * o, fma_rn(-tc, tc, T(1)), dc_next);
  CellGrad<T> r;
  r.da_i = (dc * g) * fma_rn(-i, i, i);
  r.da_f = (dc * c_prev) * fma_rn(-f, f, f);
  r.da_g = (dc * i) * fma_rn(-g, g, T(1));
  r.da_o = d_o * fma_rn(-o, o, o);
  r.dc_prev = dc * f;
  return r;
}

// Dropout applied to one value y of layer `layer`'s output at (step, row, feature): the draw for
// this element comes from its Philox block (see philox.h); kept values are y * scale, dropped are 0.
template <typename T>
DETLSTM_HD T dropout_apply(T y, uint32_t draw, uint64_t threshold, T scale) {
  return static_cast<uint64_t>(draw) >= threshold ? y * scale : T(0);
}

}  // namespace DETLSTM_MATH_NS
