// The CUDA implementations of the detlstm operators: argument checks (shared with the CPU binding),
// output allocation through torch's caching allocator, then the torch-free kernels on the current
// stream.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <string>
#include <vector>

#include "../call_run.h"
#include "lstm_cuda.h"

namespace detlstm {
namespace {

// The CUDA forward kernels on a prepared call, handed to `run_call` (run_lstm_forward or
// run_lstm_inference): on the input's device and current stream, scratch from torch's allocator.
template <class RunCall>
auto run_cuda_forward(const PreparedCall& p, RunCall run_call) {
  const c10::cuda::CUDAGuard guard(p.input.device());
  ScratchPool pool(p.input);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  return run_call(p, [&](const auto& view) { cuda::lstm_forward(view, pool.allocator(), stream); });
}

ForwardResult lstm_forward_cuda(const at::Tensor& input, const at::Tensor& lengths, const at::Tensor& h0,
                  const at::Tensor& c0, at::TensorList weights, bool has_biases, int64_t num_layers,
                  bool bidirectional, double dropout, bool train, const at::Tensor& seed,
                  int64_t proj_size) {
  return run_cuda_forward(
      prepare_forward(input, lengths, h0, c0, weights, has_biases, num_layers, bidirectional,
                      dropout, train, seed, proj_size),
      [](const PreparedCall& p, auto&& kernels) { return run_lstm_forward(p, kernels); });
}

InferenceResult lstm_inference_cuda(const at::Tensor& input, const at::Tensor& lengths,
                                    const at::Tensor& h0, const at::Tensor& c0,
                                    at::TensorList weights, bool has_biases, int64_t num_layers,
                                    bool bidirectional, double dropout, bool train,
                                    const at::Tensor& seed, int64_t proj_size) {
  return run_cuda_forward(
      prepare_forward(input, lengths, h0, c0, weights, has_biases, num_layers, bidirectional,
                      dropout, train, seed, proj_size),
      [](const PreparedCall& p, auto&& kernels) { return run_lstm_inference(p, kernels); });
}

BackwardResult lstm_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
    const at::Tensor& input, const at::Tensor& lengths, const at::Tensor& h0, const at::Tensor& c0,
    at::TensorList weights, const at::Tensor& output, const at::Tensor& layer_out,
    const at::Tensor& gates, const at::Tensor& cells, bool has_biases, int64_t num_layers,
    bool bidirectional, double dropout, bool train, const at::Tensor& seed, int64_t proj_size) {
  const PreparedCall p =
      prepare_backward(grad_output, grad_h_n, grad_c_n, input, lengths, h0, c0, weights, output,
                       layer_out, gates, cells, has_biases, num_layers, bidirectional, dropout,
                       train, seed, proj_size);
  const c10::cuda::CUDAGuard guard(p.input.device());
  ScratchPool pool(p.input);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  return run_lstm_backward(
      p, [&](const auto& view) { cuda::lstm_backward(view, pool.allocator(), stream); });
}

at::Tensor canonical_unary_cuda(const at::Tensor& x_, c10::string_view fn_name) {
  const UnaryFn fn = unary_fn(std::string(fn_name));
  TORCH_CHECK(x_.scalar_type() == at::kFloat, "detlstm.canonical_unary: x must be float32, got ",
              x_.scalar_type());
  const c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous();
  at::Tensor y = at::empty_like(x);
  cuda::canonical_unary(fn, x.data_ptr<float>(), y.data_ptr<float>(), x.numel(),
                        at::cuda::getCurrentCUDAStream());
  return y;
}

// f(x) for the float32 bit patterns first .. first+count-1, on the current CUDA device.
at::Tensor canonical_unary_bits_cuda(const std::string& fn_name, int64_t first, int64_t count) {
  const UnaryFn fn = unary_fn(fn_name);
  TORCH_CHECK(first >= 0 && count >= 0 && first + count <= (int64_t(1) << 32),
              "bit patterns must lie in [0, 2^32)");
  at::Tensor y = at::empty({count}, at::TensorOptions().device(at::kCUDA).dtype(at::kFloat));
  cuda::canonical_unary_bits(fn, static_cast<uint32_t>(first),
                             y.data_ptr<float>(), count, at::cuda::getCurrentCUDAStream());
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(detlstm, CUDA, m) {
  m.impl("lstm_forward", &lstm_forward_cuda);
  m.impl("lstm_inference", &lstm_inference_cuda);
  m.impl("lstm_backward", &lstm_backward_cuda);
  m.impl("canonical_unary", &canonical_unary_cuda);
}

}  // namespace detlstm

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("set_launch_variant", &detlstm::cuda::set_launch_shape,
        "Force the CUDA kernels' launch shape (an index into launch_shapes()); returns the previous "
        "one. Results must not change: tests use it as a stand-in for other GPUs.");
  m.def("launch_shapes", [] {
    std::vector<std::string> names;
    for (const auto& shape : detlstm::cuda::kLaunchShapes) names.push_back(shape.name);
    return names;
  }, "The names of the launch shapes, in index order (0 is the default).");
  m.def(
      "set_grid_limit",
      [](int64_t x, int64_t y) {
        const detlstm::cuda::GridLimit previous = detlstm::cuda::set_grid_limit({x, y});
        return std::make_pair(previous.x, previous.y);
      },
      "Force the largest grid the kernels launch along x and y (values < 1: CUDA's limits); returns "
      "the previous limits. Results must not change: the kernels cover the rest by looping.");
  m.def("canonical_unary_bits", &detlstm::canonical_unary_bits_cuda,
        "The canonical 'exp', 'sigmoid' or 'tanh' of count float32 bit patterns from first.");
}
