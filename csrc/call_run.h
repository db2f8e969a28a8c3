// Preparing and running a validated operator call (call_checks.h), the same for the CPU, CUDA and
// emulated bindings: contiguous inputs, output allocation, the kernels' pointer views of the tensors,
// scratch memory, and the run templates that hand a view to a binding's kernels.
#pragma once

#include <ATen/EmptyTensor.h>
#include <torch/extension.h>

#include <cstdint>
#include <functional>
#include <tuple>
#include <vector>

#include "call_checks.h"
#include "common/lstm_args.h"
#include "cpu/huge_pages.h"

namespace detlstm {

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
  a.gates = gates.numel() ? gates.data_ptr<T>() : nullptr;  // none: the kernels keep their own
  a.cells = cells.numel() ? cells.data_ptr<T>() : nullptr;
  return a;
}

// A large output the kernels will write whole: from `blocks` where the binding has one (the CPU
// binding's block cache, csrc/cpu/block_cache.h), else torch's allocator on the options' device
// (fresh CPU memory advised for huge pages: csrc/cpu/huge_pages.h).
inline at::Tensor large_output(at::IntArrayRef sizes, const at::TensorOptions& opts,
                               at::Allocator* blocks) {
  if (blocks && opts.device().is_cpu())
    return at::detail::empty_generic(sizes, blocks, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                     opts.dtype().toScalarType(), std::nullopt);
  at::Tensor t = at::empty(sizes, opts);
  if (t.is_cpu() && t.numel() > 0) cpu::advise_huge_pages_for_block(t.data_ptr(), t.nbytes());
  return t;
}

// What a forward keeps of its activations (gates, cells, layer outputs): every layer's, for a
// backward; for a forward nothing will differentiate, one layer's gates and cells (the CUDA
// kernels) or none (the CPU kernels, which run a window of steps at a time in their own), the
// layer outputs in at most two slices either way (LstmShape::keeps_every_layer false).
enum class KeptActivations { kEveryLayer, kOneLayer, kNone };

// The forward's outputs; where the shape keeps one layer (a forward nothing will differentiate),
// layer_out, gates and cells are the smaller buffers the kernels reuse (lstm_args.h), gates and
// cells empty where the kernels need none.
inline LstmOutputs allocate_lstm_outputs(const LstmCall& c, const LstmShape& shape,
                                         const at::Tensor& input, at::Allocator* blocks,
                                         KeptActivations kept) {
  const auto opts = input.options();
  const int64_t RH = c.proj_size > 0 ? c.proj_size : c.hidden_size;
  const int64_t LD = c.num_layers * c.directions, DH = c.directions * RH;
  const int64_t KL = kept == KeptActivations::kNone ? 0 : kept_layers(shape);
  LstmOutputs o;
  o.output = large_output({c.steps, c.batch, DH}, opts, blocks);
  o.h_n = at::empty({LD, c.batch, RH}, opts);
  o.c_n = at::empty({LD, c.batch, c.hidden_size}, opts);
  o.layer_out = large_output({layer_out_slices(shape), c.steps, c.batch, DH}, opts, blocks);
  o.gates = large_output({KL, c.directions, c.steps, c.batch, 4 * c.hidden_size}, opts, blocks);
  o.cells = large_output({KL, c.directions, c.steps, c.batch, c.hidden_size}, opts, blocks);
  return o;
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
                                     const at::Tensor& c0, const std::vector<at::Tensor>& weights,
                                     at::Allocator* blocks) {
  LstmGrads g;
  g.grad_input = large_output(input.sizes(), input.options(), blocks);
  g.grad_h0 = at::empty_like(h0, at::MemoryFormat::Contiguous);
  g.grad_c0 = at::empty_like(c0, at::MemoryFormat::Contiguous);
  for (const auto& w : weights) g.grad_weights.push_back(at::empty_like(w, at::MemoryFormat::Contiguous));
  return g;
}

// One checked operator call with its tensors made contiguous (lengths as int64 on the CPU): what the
// CPU and CUDA bindings both start from. The backward's extra tensors stay undefined for a forward.
struct PreparedCall {
  LstmCall call;
  // kEveryLayer unless nothing will differentiate the call (run_lstm_inference).
  KeptActivations kept = KeptActivations::kEveryLayer;
  at::Tensor input, lengths, h0, c0;
  std::vector<at::Tensor> weights;
  at::Tensor grad_output, grad_h_n, grad_c_n, output, layer_out, gates, cells;
};

inline PreparedCall prepare_forward(const at::Tensor& input, const at::Tensor& lengths,
                                    const at::Tensor& h0, const at::Tensor& c0,
                                    at::TensorList weights, bool has_biases, int64_t num_layers,
                                    bool bidirectional, double dropout, bool train,
                                    const at::Tensor& seed, int64_t proj_size) {
  PreparedCall p;
  p.call = check_lstm_call(input, lengths, h0, c0, weights, has_biases, num_layers, bidirectional,
                           dropout, train, seed, proj_size);
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
    bool bidirectional, double dropout, bool train, const at::Tensor& seed, int64_t proj_size) {
  PreparedCall p = prepare_forward(input, lengths, h0, c0, weights, has_biases, num_layers,
                                   bidirectional, dropout, train, seed, proj_size);
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

// The kernels' LstmShape of a prepared call.
inline LstmShape prepared_shape(const PreparedCall& p) {
  LstmShape s = lstm_shape(p.call);
  s.keeps_every_layer = p.kept == KeptActivations::kEveryLayer;
  return s;
}

// The kernels' views of a prepared call: the forward writing into `out`, the backward into `grads`.
template <typename T>
LstmForwardArgs<T> forward_view(const PreparedCall& p, const LstmOutputs& out) {
  LstmForwardArgs<T> a = lstm_forward_args<T>(
      p.call, p.input, p.lengths, p.h0, p.c0, p.weights, out.output.data_ptr<T>(),
      out.h_n.data_ptr<T>(), out.c_n.data_ptr<T>(), out.layer_out, out.gates, out.cells);
  a.shape = prepared_shape(p);
  return a;
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
using InferenceResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using BackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>>;

// The rest of an operator once its call is prepared, the same for every binding: allocate the
// outputs (the large ones from `blocks` where given, see large_output), hand the kernels' view
// (LstmForwardArgs<float> or <double>) to `run`, return the outputs.
template <class Run>
ForwardResult run_lstm_forward(const PreparedCall& p, Run&& run, at::Allocator* blocks = nullptr) {
  const LstmOutputs o = allocate_lstm_outputs(p.call, prepared_shape(p), p.input, blocks, p.kept);
  if (p.call.batch == 0) return {o.output, o.h_n, o.c_n, o.layer_out, o.gates, o.cells};  // all empty
  if (p.input.scalar_type() == at::kFloat)
    run(forward_view<float>(p, o));
  else
    run(forward_view<double>(p, o));
  return {o.output, o.h_n, o.c_n, o.layer_out, o.gates, o.cells};
}

// The forward nothing will differentiate (the lstm_inference operator): output, h_n and c_n, from
// buffers that held one layer's activations at a time, released on return.
template <class Run>
InferenceResult run_lstm_inference(PreparedCall p, Run&& run, at::Allocator* blocks = nullptr,
                                   KeptActivations kept = KeptActivations::kOneLayer) {
  p.kept = kept;
  const ForwardResult r = run_lstm_forward(p, std::forward<Run>(run), blocks);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
}

template <class Run>
BackwardResult run_lstm_backward(const PreparedCall& p, Run&& run, at::Allocator* blocks = nullptr) {
  const LstmGrads g = allocate_lstm_grads(p.input, p.h0, p.c0, p.weights, blocks);
  if (p.call.batch == 0) {  // no sequences: the weights' gradients are sums over none of them
    for (const auto& w : g.grad_weights) w.zero_();
    return {g.grad_input, g.grad_h0, g.grad_c0, g.grad_weights};
  }
  if (p.input.scalar_type() == at::kFloat)
    run(backward_view<float>(p, g));
  else
    run(backward_view<double>(p, g));
  return {g.grad_input, g.grad_h0, g.grad_c0, g.grad_weights};
}

}  // namespace detlstm
