// The LSTM kernels' arguments: plain pointers and sizes, no torch types. The CPU kernels get host
// pointers; the CUDA kernels get device pointers (lengths stays a host pointer: the schedule is made
// on the host).
#pragma once

#include <cstdint>
#include <vector>

namespace detlstm {

// The canonical functions (ARITHMETIC.md rule 6), for the elementwise test operators.
enum class UnaryFn { kExp = 0, kSigmoid = 1, kTanh = 2 };

// Dropout between layers (ARITHMETIC.md rule 7), decided on the host: an element is kept when its
// Philox draw is >= threshold (round(p * 2^32), so p = 1 keeps nothing); kept values are scaled.
struct DropoutParams {
  bool active;
  uint64_t seed;
  uint64_t threshold;
  double scale;  // 1/(1-p); rounded once to the kernel's dtype
};

struct LstmShape {
  int64_t steps;        // T, the padded length
  int64_t batch;        // B
  int64_t input_size;   // I
  int64_t hidden_size;  // H: the cell state's width
  int64_t proj_size;    // P: width of h with projections (h = W_hr (o * tanh c)); 0 = none
  int64_t num_layers;   // L
  int64_t directions;   // D, 1 or 2
  bool has_bias;
  // true: the forward keeps every layer's gates, cells and outputs for a backward. false (a forward
  // nothing will differentiate): layer outputs in at most two slices, reused layer after layer
  // (layer_out_slices); gates and cells for one layer on CUDA (kept_layers), none on the CPU,
  // which keeps a window of steps of its own (lstm_cpu_forward.h). The results are the same.
  bool keeps_every_layer = true;
};

// Layers whose gates and cells the buffers hold: every layer, or the one being computed (CUDA; the
// CPU's windowed forward is handed none and never asks).
inline int64_t kept_layers(const LstmShape& s) { return s.keeps_every_layer ? s.num_layers : 1; }

// Slices of layer_out: one per layer below the last, or at most two taken in turn: layer l reads
// layer l-1's slice and writes the other, which held layer l-2's output, read no more. One would
// not do on the CPU: its windowed forward projects a window's input rows after earlier windows'
// steps have written outputs, and the reverse direction reads late times the forward direction
// wrote early.
inline int64_t layer_out_slices(const LstmShape& s) {
  const int64_t below_last = s.num_layers - 1;
  return s.keeps_every_layer || below_last < 2 ? below_last : 2;
}

// Weights of one (layer, direction), indexed layer * D + direction, nn.LSTM layouts:
// w_ih (4H, K), w_hh (4H, R), b_ih and b_hh (4H) or null without bias, w_hr (P, H) or null without
// projections; R, the width of h, is P with projections and H without.
template <typename T>
struct LstmWeights {
  std::vector<const T*> w_ih, w_hh, b_ih, b_hh, w_hr;
};

// Tensors are contiguous and time-major: x (T, B, I); y (T, B, D*R); h0, h_n (L*D, B, R);
// c0, c_n (L*D, B, H); layer_out (L-1, T, B, D*R): outputs of the layers below the last, before dropout;
// gates (L, D, T, B, 4H): activated gates i, f, g, o; cells (L, D, T, B, H). Where the shape keeps one
// layer (LstmShape::keeps_every_layer false): layer_out (layer_out_slices, T, B, D*R); gates and
// cells (1, D, T, B, *) on CUDA, null on the CPU.
// lengths: B values in [1, T]. Padding rows of y, layer_out, gates and cells are written as 0.
template <typename T>
struct LstmForwardArgs {
  LstmShape shape;
  const T* x;
  const int64_t* lengths;
  const T* h0;
  const T* c0;
  LstmWeights<T> weights;
  DropoutParams dropout;
  T* y;
  T* h_n;
  T* c_n;
  T* layer_out;
  T* gates;
  T* cells;
};

// Gradients in: dy (T, B, D*R), dh_n (L*D, B, R), dc_n (L*D, B, H). Out: dx (T, B, I) with zero
// padding rows, dh0 and dc0 shaped as h0 and c0, and per (layer, direction) the weight gradients, laid out as the weights.
template <typename T>
struct LstmBackwardArgs {
  LstmForwardArgs<T> fwd;  // the forward's inputs and saved outputs (y, layer_out, gates, cells)
  const T* dy;
  const T* dh_n;
  const T* dc_n;
  T* dx;
  T* dh0;
  T* dc0;
  std::vector<T*> dw_ih, dw_hh, db_ih, db_hh, dw_hr;
};

// Width of h: proj_size with projections, else hidden_size.
inline int64_t real_hidden_size(const LstmShape& s) {
  return s.proj_size > 0 ? s.proj_size : s.hidden_size;
}

// Layer l's output: the call's output for the last layer, else its slice of layer_out.
template <typename T>
T* layer_output(const LstmForwardArgs<T>& a, int64_t layer) {
  const LstmShape& s = a.shape;
  if (layer == s.num_layers - 1) return a.y;
  const int64_t slice = s.keeps_every_layer ? layer : layer % 2;
  return a.layer_out + slice * s.steps * s.batch * s.directions * real_hidden_size(s);
}

// Layer l's input before dropout: x for layer 0, the output of the layer below otherwise.
template <typename T>
const T* layer_input(const LstmForwardArgs<T>& a, int64_t layer) {
  return layer == 0 ? a.x : layer_output(a, layer - 1);
}

}  // namespace detlstm
