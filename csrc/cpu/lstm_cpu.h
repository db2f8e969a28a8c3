// The CPU kernels' interface: plain pointers and sizes, no torch types, so the same kernel source can be
// compiled once per instruction set (lstm_cpu_avx2.cpp, lstm_cpu_generic.cpp) and picked at run time.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>


namespace detlstm {
namespace cpu {

// Runs fn(begin, end) over [0, n) in chunks of at least `grain` items, possibly on several threads.
// The kernels only split work whose outputs are independent, so the split never changes a bit.
using ParallelFor =
    std::function<void(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn)>;

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
  int64_t hidden_size;  // H
  int64_t num_layers;   // L
  int64_t directions;   // D, 1 or 2
  bool has_bias;
};

// Weights of one (layer, direction), indexed layer * D + direction, nn.LSTM layouts:
// w_ih (4H, K), w_hh (4H, H), b_ih and b_hh (4H) or null without bias.
template <typename T>
struct LstmWeights {
  std::vector<const T*> w_ih, w_hh, b_ih, b_hh;
};

// Tensors are contiguous and time-major: x (T, B, I); y (T, B, D*H); h0, c0, h_n, c_n (L*D, B, H);
// layer_out (L-1, T, B, D*H): outputs of the layers below the last, before dropout;
// gates (L, D, T, B, 4H): activated gates i, f, g, o; cells (L, D, T, B, H).
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

// Gradients in: dy (T, B, D*H), dh_n, dc_n (L*D, B, H). Out: dx (T, B, I) with zero padding rows,
// dh0, dc0 (L*D, B, H), and per (layer, direction) the weight gradients, laid out as the weights.
template <typename T>
struct LstmBackwardArgs {
  LstmForwardArgs<T> fwd;  // the forward's inputs and saved outputs (y, layer_out, gates, cells)
  const T* dy;
  const T* dh_n;
  const T* dc_n;
  T* dx;
  T* dh0;
  T* dc0;
  std::vector<T*> dw_ih, dw_hh, db_ih, db_hh;
};

enum class UnaryFn { kExp = 0, kSigmoid = 1, kTanh = 2 };

// One instruction-set variant of the kernels. All variants give identical bits (tests check it).
struct KernelVariant {
  const char* name;
  void (*forward_f32)(const LstmForwardArgs<float>&, const ParallelFor&);
  void (*forward_f64)(const LstmForwardArgs<double>&, const ParallelFor&);
  void (*backward_f32)(const LstmBackwardArgs<float>&, const ParallelFor&);
  void (*backward_f64)(const LstmBackwardArgs<double>&, const ParallelFor&);
  void (*unary_f32)(UnaryFn, const float*, float*, int64_t, const ParallelFor&);
};

const KernelVariant& generic_variant();
#if defined(__x86_64__) || defined(_M_X64)
const KernelVariant& avx2_variant();
#endif

}  // namespace cpu
}  // namespace detlstm
