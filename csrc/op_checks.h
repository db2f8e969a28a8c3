// Argument checks and output allocation shared by the CPU and CUDA bindings. Every check runs before
// any kernel, so a bad call is a clear RuntimeError, never a crash or silent garbage.
#pragma once

#include <torch/extension.h>

#include <cmath>
#include <functional>
#include <cstdint>
#include <vector>

#include "common/lstm_args.h"

namespace detlstm {

struct LstmCall {
  int64_t steps, batch, input_size, hidden_size, proj_size, num_layers, directions;
  bool has_bias;
  DropoutParams dropout{false, 0, 0, 1.0};
};

// nn.LSTM's per-(layer, direction) order: w_ih, w_hh, [b_ih, b_hh], [w_hr].
inline std::vector<int64_t> expected_weight_shape(int64_t index_in_layer, bool has_bias,
                                                  int64_t hidden, int64_t real_hidden,
                                                  int64_t layer_input) {
  if (index_in_layer == 0) return {4 * hidden, layer_input};
  if (index_in_layer == 1) return {4 * hidden, real_hidden};
  if (has_bias && index_in_layer < 4) return {4 * hidden};
  return {real_hidden, hidden};  // w_hr
}

inline int64_t weights_per_layer(bool has_bias, bool has_proj) {
  return (has_bias ? 4 : 2) + (has_proj ? 1 : 0);
}

inline LstmCall check_lstm_call(const at::Tensor& input, const at::Tensor& lengths,
                                const at::Tensor& h0, const at::Tensor& c0,
                                at::TensorList weights, bool has_biases, int64_t num_layers,
                                bool bidirectional, double dropout, bool train,
                                const at::Tensor& seed) {
  TORCH_CHECK(input.dim() == 3, "detlstm: input must be 3-D (T, B, input_size), got ", input.dim(),
              "-D");
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble,
              "detlstm: input must be float32 or float64, got ", input.scalar_type());
  TORCH_CHECK(input.size(0) >= 1 && input.size(1) >= 1 && input.size(2) >= 1,
              "detlstm: input must have at least one step, one batch row and one feature, got ",
              input.sizes());
  TORCH_CHECK(num_layers >= 1, "detlstm: num_layers must be >= 1, got ", num_layers);
  LstmCall call;
  call.steps = input.size(0);
  call.batch = input.size(1);
  call.input_size = input.size(2);
  call.num_layers = num_layers;
  call.directions = bidirectional ? 2 : 1;
  call.has_bias = has_biases;

  TORCH_CHECK(lengths.dim() == 1, "detlstm: lengths must be 1-D, got ", lengths.dim(), "-D");
  TORCH_CHECK(lengths.scalar_type() == at::kLong || lengths.scalar_type() == at::kInt,
              "detlstm: lengths must be an int64 or int32 tensor, got ", lengths.scalar_type());
  TORCH_CHECK(lengths.device().is_cpu(), "detlstm: lengths must be on the CPU, got ",
              lengths.device());
  TORCH_CHECK(lengths.size(0) == call.batch, "detlstm: lengths must have one entry per batch row (",
              call.batch, "), got ", lengths.size(0));
  {
    const at::Tensor l64 = lengths.to(at::kLong);
    const int64_t lo = l64.min().item<int64_t>(), hi = l64.max().item<int64_t>();
    TORCH_CHECK(lo >= 1 && hi <= call.steps, "detlstm: lengths must lie in [1, T=", call.steps,
                "], got values in [", lo, ", ", hi, "]");
  }

  // With projections each (layer, direction) has one more weight, w_hr: the count tells.
  const int64_t groups = num_layers * call.directions;
  const bool has_proj = static_cast<int64_t>(weights.size()) == weights_per_layer(has_biases, true) * groups;
  const int64_t per = weights_per_layer(has_biases, has_proj);
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == per * groups, "detlstm: expected ",
              weights_per_layer(has_biases, false) * groups, " (or, with projections, ",
              weights_per_layer(has_biases, true) * groups, ") weight tensors for ", num_layers,
              " layer(s), ", call.directions, " direction(s), bias=", has_biases, ", got ",
              weights.size());
  TORCH_CHECK(weights[1].dim() == 2 && weights[1].size(1) >= 1 && weights[1].size(0) % 4 == 0 &&
                  weights[1].size(0) >= 4,
              "detlstm: weight_hh_l0 must have shape (4*hidden_size, hidden_size or proj_size), got ",
              weights[1].sizes());
  call.hidden_size = weights[1].size(0) / 4;
  call.proj_size = has_proj ? weights[1].size(1) : 0;
  const int64_t H = call.hidden_size;
  const int64_t RH = has_proj ? call.proj_size : H;
  TORCH_CHECK(has_proj || weights[1].size(1) == H, "detlstm: weight_hh_l0 must have shape ",
              "(4*hidden_size, hidden_size) without projections, got ", weights[1].sizes());
  for (int64_t w = 0; w < static_cast<int64_t>(weights.size()); ++w) {
    const int64_t layer = w / (per * call.directions);
    const int64_t layer_input = layer == 0 ? call.input_size : call.directions * RH;
    const auto shape = expected_weight_shape(w % per, has_biases, H, RH, layer_input);
    const at::Tensor& t = weights[w];
    TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), "detlstm: weight ", w, " (layer ", layer,
                ") must have shape ", at::IntArrayRef(shape), ", got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == input.scalar_type(), "detlstm: weight ", w, " has dtype ",
                t.scalar_type(), " but input has dtype ", input.scalar_type());
    TORCH_CHECK(t.device() == input.device(), "detlstm: weight ", w, " is on ", t.device(),
                " but input is on ", input.device());
  }
  for (const auto* pair : {&h0, &c0}) {
    const char* name = pair == &h0 ? "h0" : "c0";
    const std::vector<int64_t> state_shape{num_layers * call.directions, call.batch,
                                           pair == &h0 ? RH : H};
    TORCH_CHECK(pair->sizes() == at::IntArrayRef(state_shape), "detlstm: ", name,
                " must have shape ", at::IntArrayRef(state_shape), ", got ", pair->sizes());
    TORCH_CHECK(pair->scalar_type() == input.scalar_type(), "detlstm: ", name, " has dtype ",
                pair->scalar_type(), " but input has dtype ", input.scalar_type());
    TORCH_CHECK(pair->device() == input.device(), "detlstm: ", name, " is on ", pair->device(),
                " but input is on ", input.device());
  }

  TORCH_CHECK(std::isfinite(dropout) && dropout >= 0.0 && dropout <= 1.0,
              "detlstm: dropout must be a finite probability in [0, 1], got ", dropout);
  TORCH_CHECK(seed.numel() == 1 && seed.scalar_type() == at::kLong && seed.device().is_cpu(),
              "detlstm: seed must be a one-element int64 CPU tensor");
  call.dropout.active = train && dropout > 0.0 && num_layers > 1;
  if (call.dropout.active) {
    call.dropout.seed = static_cast<uint64_t>(seed.item<int64_t>());
    const double two32 = 4294967296.0;
    call.dropout.threshold =
        dropout >= 1.0 ? static_cast<uint64_t>(two32)
                       : static_cast<uint64_t>(std::nearbyint(dropout * two32));
    call.dropout.scale = 1.0 / (1.0 - dropout);
  }
  return call;
}

struct LstmOutputs {
  at::Tensor output, h_n, c_n, layer_out, gates, cells;
};

inline std::vector<at::Tensor> contiguous_all(const at::TensorList& list) {
  std::vector<at::Tensor> out;
  out.reserve(list.size());
  for (const auto& t : list) out.push_back(t.contiguous());
  return out;
}

inline LstmShape lstm_shape(const LstmCall& c) {
  return {c.steps,      c.batch,      c.input_size, c.hidden_size,
          c.proj_size,  c.num_layers, c.directions, c.has_bias};
}

// The kernels' view of one call: shape, pointers into the (contiguous) tensors, dropout. Used by the
// CPU and the CUDA bindings alike; lengths is always a host pointer.
template <typename T>
LstmForwardArgs<T> lstm_forward_args(const LstmCall& call, const at::Tensor& input,
                                     const at::Tensor& lengths, const at::Tensor& h0,
                                     const at::Tensor& c0, const std::vector<at::Tensor>& weights,
                                     T* output, T* h_n, T* c_n, const at::Tensor& layer_out,
                                     const at::Tensor& gates, const at::Tensor& cells) {
  LstmForwardArgs<T> a;
  a.shape = lstm_shape(call);
  a.x = input.data_ptr<T>();
  a.lengths = lengths.data_ptr<int64_t>();
  a.h0 = h0.data_ptr<T>();
  a.c0 = c0.data_ptr<T>();
  const int64_t per = weights_per_layer(call.has_bias, call.proj_size > 0);
  for (int64_t w = 0; w < call.num_layers * call.directions; ++w) {
    a.weights.w_ih.push_back(weights[w * per].data_ptr<T>());
    a.weights.w_hh.push_back(weights[w * per + 1].data_ptr<T>());
    a.weights.b_ih.push_back(call.has_bias ? weights[w * per + 2].data_ptr<T>() : nullptr);
    a.weights.b_hh.push_back(call.has_bias ? weights[w * per + 3].data_ptr<T>() : nullptr);
    a.weights.w_hr.push_back(call.proj_size > 0 ? weights[w * per + per - 1].data_ptr<T>() : nullptr);
  }
  a.dropout = call.dropout;
  a.y = output;
  a.h_n = h_n;
  a.c_n = c_n;
  a.layer_out = layer_out.numel() ? layer_out.data_ptr<T>() : nullptr;
  a.gates = gates.data_ptr<T>();
  a.cells = cells.data_ptr<T>();
  return a;
}

inline LstmOutputs allocate_lstm_outputs(const LstmCall& c, const at::Tensor& input) {
  const auto opts = input.options();
  const int64_t RH = c.proj_size > 0 ? c.proj_size : c.hidden_size;
  const int64_t LD = c.num_layers * c.directions, DH = c.directions * RH;
  LstmOutputs o;
  o.output = at::empty({c.steps, c.batch, DH}, opts);
  o.h_n = at::empty({LD, c.batch, RH}, opts);
  o.c_n = at::empty({LD, c.batch, c.hidden_size}, opts);
  o.layer_out = at::empty({c.num_layers - 1, c.steps, c.batch, DH}, opts);
  o.gates = at::empty({c.num_layers, c.directions, c.steps, c.batch, 4 * c.hidden_size}, opts);
  o.cells = at::empty({c.num_layers, c.directions, c.steps, c.batch, c.hidden_size}, opts);
  return o;
}

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

struct LstmGrads {
  at::Tensor grad_input, grad_h0, grad_c0;
  std::vector<at::Tensor> grad_weights;
};

// Adds the gradient pointers to the forward's view for the backward kernels.
template <typename T>
LstmBackwardArgs<T> lstm_backward_args(const LstmForwardArgs<T>& fwd, const at::Tensor& grad_output,
                                       const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
                                       const LstmGrads& g, bool has_bias) {
  LstmBackwardArgs<T> a;
  a.fwd = fwd;
  a.dy = grad_output.data_ptr<T>();
  a.dh_n = grad_h_n.data_ptr<T>();
  a.dc_n = grad_c_n.data_ptr<T>();
  a.dx = g.grad_input.data_ptr<T>();
  a.dh0 = g.grad_h0.data_ptr<T>();
  a.dc0 = g.grad_c0.data_ptr<T>();
  const bool has_proj = fwd.shape.proj_size > 0;
  const size_t per = static_cast<size_t>(weights_per_layer(has_bias, has_proj));
  for (size_t w = 0; w * per < g.grad_weights.size(); ++w) {
    a.dw_ih.push_back(g.grad_weights[w * per].data_ptr<T>());
    a.dw_hh.push_back(g.grad_weights[w * per + 1].data_ptr<T>());
    a.db_ih.push_back(has_bias ? g.grad_weights[w * per + 2].data_ptr<T>() : nullptr);
    a.db_hh.push_back(has_bias ? g.grad_weights[w * per + 3].data_ptr<T>() : nullptr);
    a.dw_hr.push_back(has_proj ? g.grad_weights[w * per + per - 1].data_ptr<T>() : nullptr);
  }
  return a;
}

inline LstmGrads allocate_lstm_grads(const at::Tensor& input, const at::Tensor& h0,
                                     const at::Tensor& c0, const std::vector<at::Tensor>& weights) {
  LstmGrads g;
  g.grad_input = at::empty_like(input, at::MemoryFormat::Contiguous);
  g.grad_h0 = at::empty_like(h0, at::MemoryFormat::Contiguous);
  g.grad_c0 = at::empty_like(c0, at::MemoryFormat::Contiguous);
  for (const auto& w : weights) g.grad_weights.push_back(at::empty_like(w, at::MemoryFormat::Contiguous));
  return g;
}

}  // namespace detlstm

namespace detlstm {

// One checked operator call with its tensors made contiguous (lengths as int64 on the CPU): what the
// CPU and CUDA bindings both start from. The backward's extra tensors stay undefined for a forward.
struct PreparedCall {
  LstmCall call;
  at::Tensor input, lengths, h0, c0;
  std::vector<at::Tensor> weights;
  at::Tensor grad_output, grad_h_n, grad_c_n, output, layer_out, gates, cells;
};

inline PreparedCall prepare_forward(const at::Tensor& input, const at::Tensor& lengths,
                                    const at::Tensor& h0, const at::Tensor& c0,
                                    at::TensorList weights, bool has_biases, int64_t num_layers,
                                    bool bidirectional, double dropout, bool train,
                                    const at::Tensor& seed) {
  PreparedCall p;
  p.call = check_lstm_call(input, lengths, h0, c0, weights, has_biases, num_layers, bidirectional,
                           dropout, train, seed);
  p.input = input.contiguous();
  p.lengths = lengths.to(at::kLong).contiguous();
  p.h0 = h0.contiguous();
  p.c0 = c0.contiguous();
  p.weights = contiguous_all(weights);
  return p;
}

inline PreparedCall prepare_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
    const at::Tensor& input, const at::Tensor& lengths, const at::Tensor& h0, const at::Tensor& c0,
    at::TensorList weights, const at::Tensor& output, const at::Tensor& layer_out,
    const at::Tensor& gates, const at::Tensor& cells, bool has_biases, int64_t num_layers,
    bool bidirectional, double dropout, bool train, const at::Tensor& seed) {
  PreparedCall p = prepare_forward(input, lengths, h0, c0, weights, has_biases, num_layers,
                                   bidirectional, dropout, train, seed);
  check_lstm_backward_call(p.call, grad_output, grad_h_n, grad_c_n, input, output, layer_out, gates,
                           cells);
  p.grad_output = grad_output.contiguous();
  p.grad_h_n = grad_h_n.contiguous();
  p.grad_c_n = grad_c_n.contiguous();
  p.output = output.contiguous();
  p.layer_out = layer_out.contiguous();
  p.gates = gates.contiguous();
  p.cells = cells.contiguous();
  return p;
}

// The kernels' views of a prepared call: the forward writing into `out`, the backward into `grads`.
template <typename T>
LstmForwardArgs<T> forward_view(const PreparedCall& p, const LstmOutputs& out) {
  return lstm_forward_args<T>(p.call, p.input, p.lengths, p.h0, p.c0, p.weights,
                              out.output.data_ptr<T>(), out.h_n.data_ptr<T>(), out.c_n.data_ptr<T>(),
                              out.layer_out, out.gates, out.cells);
}

template <typename T>
LstmBackwardArgs<T> backward_view(const PreparedCall& p, const LstmGrads& grads) {
  const LstmForwardArgs<T> fwd =
      lstm_forward_args<T>(p.call, p.input, p.lengths, p.h0, p.c0, p.weights,
                           p.output.data_ptr<T>(), nullptr, nullptr, p.layer_out, p.gates, p.cells);
  return lstm_backward_args<T>(fwd, p.grad_output, p.grad_h_n, p.grad_c_n, grads, p.call.has_bias);
}

// Scratch memory for one kernel call, from torch's allocator on the input's device; released when
// the pool goes (for CUDA stream-ordered, so after the call's kernels). `take` fits the kernels'
// allocator callback.
class ScratchPool {
 public:
  explicit ScratchPool(const at::Tensor& like) : options_(like.options().dtype(at::kByte)) {}
  void* take(size_t bytes) {
    keep_.push_back(at::empty({static_cast<int64_t>(bytes)}, options_));
    return keep_.back().data_ptr();
  }
  std::function<void*(size_t)> allocator() {
    return [this](size_t bytes) { return take(bytes); };
  }

 private:
  at::TensorOptions options_;
  std::vector<at::Tensor> keep_;
};

using ForwardResult =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using BackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>>;

// The rest of an operator once its call is prepared, the same for every binding: allocate the
// outputs, hand the kernels' view (LstmForwardArgs<float> or <double>) to `run`, return the outputs.
template <class Run>
ForwardResult run_lstm_forward(const PreparedCall& p, Run&& run) {
  const LstmOutputs o = allocate_lstm_outputs(p.call, p.input);
  if (p.input.scalar_type() == at::kFloat)
    run(forward_view<float>(p, o));
  else
    run(forward_view<double>(p, o));
  return {o.output, o.h_n, o.c_n, o.layer_out, o.gates, o.cells};
}

template <class Run>
BackwardResult run_lstm_backward(const PreparedCall& p, Run&& run) {
  const LstmGrads g = allocate_lstm_grads(p.input, p.h0, p.c0, p.weights);
  if (p.input.scalar_type() == at::kFloat)
    run(backward_view<float>(p, g));
  else
    run(backward_view<double>(p, g));
  return {g.grad_input, g.grad_h0, g.grad_c0, g.grad_weights};
}

}  // namespace detlstm
