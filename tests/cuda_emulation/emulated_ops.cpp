// The CUDA kernels (csrc/cuda, compiled as C++ against include/cuda_runtime.h) behind functions with
// the operators' signatures, on CPU tensors: the same argument preparation and the same kernel entry
// points as csrc/cuda/binding.cpp, with host memory standing in for device memory.
#include <torch/extension.h>

#include "../../csrc/call_run.h"
#include "../../csrc/cuda/kernels_common.cuh"
#include "../../csrc/cuda/persistent.cuh"

namespace detlstm {
namespace {

// The emulated CUDA forward kernels on a prepared call of CPU tensors, handed to `run_call`
// (run_lstm_forward or run_lstm_inference).
template <class RunCall>
auto run_emulated_forward(const PreparedCall& p, RunCall run_call) {
  TORCH_CHECK(p.input.device().is_cpu(), "the emulated CUDA kernels take CPU tensors");
  ScratchPool pool(p.input);
  return run_call(p, [&](const auto& view) { cuda::lstm_forward(view, pool.allocator(), nullptr); });
}

ForwardResult lstm_forward_emulated(const at::Tensor& input, const at::Tensor& lengths,
                                    const at::Tensor& h0, const at::Tensor& c0,
                                    std::vector<at::Tensor> weights, bool has_biases,
                                    int64_t num_layers, bool bidirectional, double dropout,
                                    bool train, const at::Tensor& seed, int64_t proj_size) {
  return run_emulated_forward(
      prepare_forward(input, lengths, h0, c0, weights, has_biases, num_layers, bidirectional,
                      dropout, train, seed, proj_size),
      [](const PreparedCall& p, auto&& kernels) { return run_lstm_forward(p, kernels); });
}

InferenceResult lstm_inference_emulated(const at::Tensor& input, const at::Tensor& lengths,
                                        const at::Tensor& h0, const at::Tensor& c0,
                                        std::vector<at::Tensor> weights, bool has_biases,
                                        int64_t num_layers, bool bidirectional, double dropout,
                                        bool train, const at::Tensor& seed, int64_t proj_size) {
  return run_emulated_forward(
      prepare_forward(input, lengths, h0, c0, weights, has_biases, num_layers, bidirectional,
                      dropout, train, seed, proj_size),
      [](const PreparedCall& p, auto&& kernels) { return run_lstm_inference(p, kernels); });
}

BackwardResult lstm_backward_emulated(
    const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
    const at::Tensor& input, const at::Tensor& lengths, const at::Tensor& h0, const at::Tensor& c0,
    std::vector<at::Tensor> weights, const at::Tensor& output, const at::Tensor& layer_out,
    const at::Tensor& gates, const at::Tensor& cells, bool has_biases, int64_t num_layers,
    bool bidirectional, double dropout, bool train, const at::Tensor& seed, int64_t proj_size) {
  const PreparedCall p =
      prepare_backward(grad_output, grad_h_n, grad_c_n, input, lengths, h0, c0, weights, output,
                       layer_out, gates, cells, has_biases, num_layers, bidirectional, dropout,
                       train, seed, proj_size);
  TORCH_CHECK(p.input.device().is_cpu(), "the emulated CUDA kernels take CPU tensors");
  ScratchPool pool(p.input);
  return run_lstm_backward(
      p, [&](const auto& view) { cuda::lstm_backward(view, pool.allocator(), nullptr); });
}

at::Tensor canonical_unary_bits_emulated(const std::string& fn_name, int64_t first, int64_t count) {
  const UnaryFn fn = unary_fn(fn_name);
  TORCH_CHECK(first >= 0 && count >= 0 && first + count <= (int64_t(1) << 32),
              "the bit patterns must lie in [0, 2^32)");
  at::Tensor y = at::empty({count}, at::kFloat);
  cuda::canonical_unary_bits(fn, static_cast<uint32_t>(first),
                             y.data_ptr<float>(), count, nullptr);
  return y;
}

// The emulator's own check: every thread writes its slot of shared memory, then reads its
// neighbour's. With the barrier every read sees this launch's stamp; without it the result depends on
// which thread ran first, and the emulator must show that. `diverge` makes half the block skip the
// barrier, which the emulator must report as an error.
__global__ void neighbour_read_kernel(int* out, int stamp, bool sync, bool diverge) {
  __shared__ int slots[64];
  const unsigned t = threadIdx.x;
  slots[t] = stamp;
  if (sync && (!diverge || t < 32)) __syncthreads();
  out[t] = slots[(t + 1) % 64];
}

at::Tensor neighbour_read_probe(int64_t stamp, bool sync, bool diverge) {
  at::Tensor out = at::empty({64}, at::kInt);
  cuda::launch_kernel("neighbour_read_kernel", neighbour_read_kernel, 1, 64, nullptr,
                      out.data_ptr<int>(), static_cast<int>(stamp), sync, diverge);
  return out;
}

// The emulator's check of asynchronous copies: each thread copies in[t] into its slot of shared
// memory (which holds -1) and reads the slot after waiting for the copy (`wait` true) or before it.
// `leave_pending` returns without waiting, which the emulator must report.
__global__ void async_copy_kernel(const int* in, int* out, bool wait, bool leave_pending) {
  __shared__ int slots[32];
  const unsigned t = threadIdx.x;
  slots[t] = -1;
  cuda::async_copy(&slots[t], &in[t], true);
  cuda::async_commit();
  if (wait) cuda::async_wait<0>();
  out[t] = slots[t];
  if (!leave_pending) cuda::async_wait<0>();
}

at::Tensor async_copy_probe(const at::Tensor& in, bool wait, bool leave_pending) {
  TORCH_CHECK(in.dtype() == at::kInt && in.numel() == 32 && in.is_contiguous(), "in: 32 int32");
  at::Tensor out = at::empty({32}, at::kInt);
  cuda::launch_kernel("async_copy_kernel", async_copy_kernel, 1, 32, nullptr, in.data_ptr<int>(),
                      out.data_ptr<int>(), wait, leave_pending);
  return out;
}

// The emulator's check of cooperative launches: block b writes its stamp, meets the other blocks at
// the persistent kernels' step barrier (or skips it), then reads block b + 1's stamp. With the
// barrier every block reads this launch's stamps in any order; without it, the block that runs ahead
// reads a stale one. `extra` asks the barrier for more arrivals than there are blocks: a wait that
// never ends, which the emulator must report rather than hang on.
__global__ void neighbour_block_kernel(int* slots, int* out, unsigned* counter, int stamp, bool wait,
                                       unsigned extra) {
  if (threadIdx.x == 0) slots[blockIdx.x] = stamp + static_cast<int>(blockIdx.x);
  if (wait) cuda::arrive_and_wait(counter, gridDim.x + extra);
  if (threadIdx.x == 0) out[blockIdx.x] = slots[(blockIdx.x + 1) % gridDim.x];
}

at::Tensor neighbour_block_probe(const at::Tensor& slots, int64_t stamp, bool wait, int64_t extra) {
  TORCH_CHECK(slots.dtype() == at::kInt && slots.dim() == 1 && slots.is_contiguous(), "slots: int32");
  const int64_t blocks = slots.numel();
  at::Tensor out = at::empty({blocks}, at::kInt);
  unsigned counter = 0;
  cuda::launch_cooperative("neighbour_block_kernel", neighbour_block_kernel,
                           dim3(static_cast<unsigned>(blocks)), dim3(32), 0, nullptr,
                           slots.data_ptr<int>(), out.data_ptr<int>(), &counter,
                           static_cast<int>(stamp), wait, static_cast<unsigned>(extra));
  return out;
}

// The persistent recurrence's plan (plan_persistent, float) on the emulated device under the current
// launch shape: (units per block, panel, chunk slots, blocks per direction, directions per launch),
// all 0 where the per-step kernels run. Only the plan's fit is asked of the kernel: none is launched.
__global__ void plan_probe_kernel() {}

std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t> persistent_plan(int64_t K, int64_t units,
                                                                       int64_t cols_per_unit,
                                                                       int64_t directions,
                                                                       int64_t batch) {
  const cuda::PersistentPlan<float> plan = cuda::plan_persistent<float>(
      K, units, static_cast<int>(cols_per_unit), directions, batch, [](int) { return plan_probe_kernel; });
  return {plan.units, plan.layout.panel, plan.layout.chunk_slots, plan.blocks_per_direction,
          plan.directions};
}

}  // namespace
}  // namespace detlstm

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lstm_forward", &detlstm::lstm_forward_emulated);
  m.def("lstm_inference", &detlstm::lstm_inference_emulated);
  m.def("lstm_backward", &detlstm::lstm_backward_emulated);
  m.def("canonical_unary_bits", &detlstm::canonical_unary_bits_emulated);
  m.def("set_launch_variant", &detlstm::cuda::set_launch_shape);
  m.def("launch_shape_count", [] { return detlstm::cuda::kLaunchShapeCount; });
  m.def("set_order", &detlstm_emulation::set_order,
        "bit 0: run the blocks last to first; bit 1: run a block's threads last to first");
  m.def("set_async_landing", &detlstm_emulation::set_async_landing,
        "asynchronous copies land as they are issued (True) or at their wait (False, the default)");
  m.def("set_grid_limit", [](int64_t x, int64_t y) {
    // the kernels' own limit and the emulator's check together: the kernels must keep under it
    detlstm::cuda::set_grid_limit({x, y});
    const detlstm::cuda::GridLimit now = detlstm::cuda::grid_limit();
    detlstm_emulation::set_max_grid(static_cast<unsigned>(now.x), static_cast<unsigned>(now.y));
  }, "force the largest grid along x and y (values < 1: CUDA's own limits)");
  m.def("set_split_bytes", &detlstm::cuda::set_split_bytes,
        "the split products' buffer in bytes (values < 1: the default); returns the previous");
  m.def("set_emulator_max_grid", [](unsigned x, unsigned y) { detlstm_emulation::set_max_grid(x, y); },
        "lower the emulator's own grid limit only (the kernels do not know it)");
  m.def("counts", [] {
    const auto c = detlstm_emulation::counts();
    return std::make_tuple(c.launches, c.synchronizations, c.cooperative_launches);
  }, "(kernel launches, stream synchronisations, cooperative launches that ran) so far");
  m.def("set_cooperative_block_limit", &detlstm_emulation::set_cooperative_block_limit,
        "refuse cooperative launches of more blocks than this at launch (0: no limit); returns the "
        "previous limit");
  m.def("set_device", &detlstm_emulation::set_device,
        "the emulated GPU: multiprocessors, shared memory per multiprocessor and per block (bytes)");
  m.def("neighbour_read_probe", &detlstm::neighbour_read_probe);
  m.def("neighbour_block_probe", &detlstm::neighbour_block_probe);
  m.def("async_copy_probe", &detlstm::async_copy_probe);
  m.def("persistent_plan", &detlstm::persistent_plan,
        "plan_persistent's choice (units, panel, chunk slots, blocks per direction, directions) for "
        "float sums of K terms over `units` units");
}
