// Validation of the operators' arguments, shared by the CPU, CUDA and emulated bindings. Every check
// runs before any kernel, so a bad call is a clear RuntimeError naming the argument, never a crash or
// silent garbage. The result is the call's description (LstmCall); preparing and running it is
// call_run.h's.
#pragma once

#include <torch/extension.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "common/lstm_args.h"

namespace detlstm {

// What a valid call is: its sizes, whether it has biases and projections, its dropout.
struct LstmCall {
  int64_t steps, batch, input_size, hidden_size, proj_size, num_layers, directions;
  bool has_bias;
  DropoutParams dropout{false, 0, 0, 1.0};
};

inline int64_t weights_per_layer(bool has_bias, bool has_proj) {
  return (has_bias ? 4 : 2) + (has_proj ? 1 : 0);
}

// nn.LSTM's per-(layer, direction) order: w_ih, w_hh, [b_ih, b_hh], [w_hr].
inline std::vector<int64_t> expected_weight_shape(int64_t index_in_layer, bool has_bias,
                                                  int64_t hidden, int64_t real_hidden,
                                                  int64_t layer_input) {
  if (index_in_layer == 0) return {4 * hidden, layer_input};
  if (index_in_layer == 1) return {4 * hidden, real_hidden};
  if (has_bias && index_in_layer < 4) return {4 * hidden};
  return {real_hidden, hidden};  // w_hr
}

// input: (T, B, I), float32 or float64, at least one step and one feature. B = 0 (no sequences) is
// a valid call with empty results, as for nn.LSTM.
inline void check_input(const at::Tensor& input, LstmCall& call) {
  TORCH_CHECK(input.dim() == 3, "detlstm: input must be 3-D (T, B, input_size), got ", input.dim(),
              "-D");
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble,
              "detlstm: input must be float32 or float64, got ", input.scalar_type());
  TORCH_CHECK(input.size(0) >= 1 && input.size(2) >= 1,
              "detlstm: input must have at least one step and one feature, got ", input.sizes());
  call.steps = input.size(0);
  call.batch = input.size(1);
  call.input_size = input.size(2);
}

// lengths: one int64/int32 CPU value per batch row, each in [1, T].
inline void check_lengths(const at::Tensor& lengths, const LstmCall& call) {
  TORCH_CHECK(lengths.dim() == 1, "detlstm: lengths must be 1-D, got ", lengths.dim(), "-D");
  TORCH_CHECK(lengths.scalar_type() == at::kLong || lengths.scalar_type() == at::kInt,
              "detlstm: lengths must be an int64 or int32 tensor, got ", lengths.scalar_type());
  TORCH_CHECK(lengths.device().is_cpu(), "detlstm: lengths must be on the CPU, got ",
              lengths.device());
  TORCH_CHECK(lengths.size(0) == call.batch, "detlstm: lengths must have one entry per batch row (",
              call.batch, "), got ", lengths.size(0));
  if (call.batch == 0) return;
  const at::Tensor l64 = lengths.to(at::kLong);
  const int64_t lo = l64.min().item<int64_t>(), hi = l64.max().item<int64_t>();
  TORCH_CHECK(lo >= 1 && hi <= call.steps, "detlstm: lengths must lie in [1, T=", call.steps,
              "], got values in [", lo, ", ", hi, "]");
}

// weights: nn.LSTM's flat list for (num_layers, directions, bias, proj_size); sets hidden_size.
inline void check_weights(at::TensorList weights, const at::Tensor& input, LstmCall& call) {
  const bool proj = call.proj_size > 0;
  const int64_t per = weights_per_layer(call.has_bias, proj);
  const int64_t groups = call.num_layers * call.directions;
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == per * groups, "detlstm: expected ",
              per * groups, " weight tensors for ", call.num_layers, " layer(s), ",
              call.directions, " direction(s), bias=", call.has_bias, ", proj_size=",
              call.proj_size, ", got ", weights.size());
  TORCH_CHECK(weights[1].dim() == 2 && weights[1].size(0) % 4 == 0 && weights[1].size(0) >= 4,
              "detlstm: weight_hh_l0 must have shape (4*hidden_size, ",
              proj ? "proj_size" : "hidden_size", "), got ", weights[1].sizes());
  call.hidden_size = weights[1].size(0) / 4;
  const int64_t H = call.hidden_size, RH = proj ? call.proj_size : H;
  TORCH_CHECK(!proj || call.proj_size < H, "detlstm: proj_size must be smaller than hidden_size (",
              H, "), got ", call.proj_size);
  for (int64_t w = 0; w < static_cast<int64_t>(weights.size()); ++w) {
    const int64_t layer = w / (per * call.directions);
    const int64_t layer_input = layer == 0 ? call.input_size : call.directions * RH;
    const auto shape = expected_weight_shape(w % per, call.has_bias, H, RH, layer_input);
    const at::Tensor& t = weights[w];
    TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), "detlstm: weight ", w, " (layer ", layer,
                ") must have shape ", at::IntArrayRef(shape), ", got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == input.scalar_type(), "detlstm: weight ", w, " has dtype ",
                t.scalar_type(), " but input has dtype ", input.scalar_type());
    TORCH_CHECK(t.device() == input.device(), "detlstm: weight ", w, " is on ", t.device(),
                " but input is on ", input.device());
  }
}

// h0 (L*D, B, RH) and c0 (L*D, B, H), with the input's dtype and device.
inline void check_states(const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& input,
                         const LstmCall& call) {
  const int64_t RH = call.proj_size > 0 ? call.proj_size : call.hidden_size;
  for (const auto* state : {&h0, &c0}) {
    const char* name = state == &h0 ? "h0" : "c0";
    const std::vector<int64_t> shape{call.num_layers * call.directions, call.batch,
                                     state == &h0 ? RH : call.hidden_size};
    TORCH_CHECK(state->sizes() == at::IntArrayRef(shape), "detlstm: ", name, " must have shape ",
                at::IntArrayRef(shape), ", got ", state->sizes());
    TORCH_CHECK(state->scalar_type() == input.scalar_type(), "detlstm: ", name, " has dtype ",
                state->scalar_type(), " but input has dtype ", input.scalar_type());
    TORCH_CHECK(state->device() == input.device(), "detlstm: ", name, " is on ", state->device(),
                " but input is on ", input.device());
  }
}

// Dropout between layers (ARITHMETIC.md rule 7), decided on the host: active in training with p > 0
// and more than one layer; threshold = round(p * 2^32), scale = 1 / (1 - p) (in double, rounded to
// the kernels' dtype once there).
inline DropoutParams dropout_params(double dropout, bool train, int64_t num_layers,
                                    const at::Tensor& seed) {
  TORCH_CHECK(std::isfinite(dropout) && dropout >= 0.0 && dropout <= 1.0,
              "detlstm: dropout must be a finite probability in [0, 1], got ", dropout);
  TORCH_CHECK(seed.numel() == 1 && seed.scalar_type() == at::kLong && seed.device().is_cpu(),
              "detlstm: seed must be a one-element int64 CPU tensor");
  DropoutParams p{train && dropout > 0.0 && num_layers > 1, 0, 0, 1.0};
  if (!p.active) return p;
  const double two32 = 4294967296.0;
  p.seed = static_cast<uint64_t>(seed.item<int64_t>());
  p.threshold = dropout >= 1.0 ? static_cast<uint64_t>(two32)
                               : static_cast<uint64_t>(std::nearbyint(dropout * two32));
  p.scale = 1.0 / (1.0 - dropout);
  return p;
}

inline LstmCall check_lstm_call(const at::Tensor& input, const at::Tensor& lengths,
                                const at::Tensor& h0, const at::Tensor& c0,
                                at::TensorList weights, bool has_biases, int64_t num_layers,
                                bool bidirectional, double dropout, bool train,
                                const at::Tensor& seed, int64_t proj_size) {
  TORCH_CHECK(num_layers >= 1, "detlstm: num_layers must be >= 1, got ", num_layers);
  TORCH_CHECK(proj_size >= 0, "detlstm: proj_size must be >= 0, got ", proj_size);
  LstmCall call;
  call.num_layers = num_layers;
  call.directions = bidirectional ? 2 : 1;
  call.has_bias = has_biases;
  call.proj_size = proj_size;
  check_input(input, call);
  check_lengths(lengths, call);
  check_weights(weights, input, call);
  check_states(h0, c0, input, call);
  call.dropout = dropout_params(dropout, train, num_layers, seed);
  return call;
}

// The backward's extra tensors: the gradients arriving and what the forward saved.
inline void check_lstm_backward_call(const LstmCall& c, const at::Tensor& grad_output,
                                     const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
                                     const at::Tensor& input, const at::Tensor& output,
                                     const at::Tensor& layer_out, const at::Tensor& gates,
                                     const at::Tensor& cells) {
  const int64_t RH = c.proj_size > 0 ? c.proj_size : c.hidden_size;
  const int64_t LD = c.num_layers * c.directions, DH = c.directions * RH;
  const auto check = [&](const at::Tensor& t, const char* name, at::IntArrayRef shape) {
    TORCH_CHECK(t.sizes() == shape, "detlstm backward: ", name, " must have shape ", shape,
                ", got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == input.scalar_type() && t.device() == input.device(),
                "detlstm backward: ", name, " must match input's dtype and device");
  };
  check(grad_output, "grad_output", {c.steps, c.batch, DH});
  check(grad_h_n, "grad_h_n", {LD, c.batch, RH});
  check(grad_c_n, "grad_c_n", {LD, c.batch, c.hidden_size});
  check(output, "output", {c.steps, c.batch, DH});
  check(layer_out, "layer_out", {c.num_layers - 1, c.steps, c.batch, DH});
  check(gates, "gates", {c.num_layers, c.directions, c.steps, c.batch, 4 * c.hidden_size});
  check(cells, "cells", {c.num_layers, c.directions, c.steps, c.batch, c.hidden_size});
}

// The canonical functions by name, the one place the names are mapped.
inline UnaryFn unary_fn(const std::string& name) {
  if (name == "exp") return UnaryFn::kExp;
  if (name == "sigmoid") return UnaryFn::kSigmoid;
  if (name == "tanh") return UnaryFn::kTanh;
  TORCH_CHECK(false, "detlstm.canonical_unary: fn must be 'exp', 'sigmoid' or 'tanh', got '", name,
              "'");
}

}  // namespace detlstm
