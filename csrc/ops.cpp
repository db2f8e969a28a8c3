// Operator schemas, argument checks and the CPU implementations' binding to the torch-free kernels.
// Autograd and the fake (meta) kernels are registered from Python (detlstm/_ops.py).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cmath>
#include <string>
#include <vector>

#include "common/philox.h"
#include "cpu/lstm_cpu.h"
#include "call_run.h"

namespace detlstm {
namespace {

using cpu::KernelVariant;

#if defined(__x86_64__) || defined(_M_X64)
bool cpu_has_avx2() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
bool cpu_has_avx512() {
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
}
#endif

// The instruction-set variant the CPU kernels run: the widest the processor has (AVX-512, AVX2 + FMA,
// else the portable build). Tests switch it to prove all give the same bits.
const KernelVariant* select_default_variant() {
#if defined(__x86_64__) || defined(_M_X64)
  if (cpu_has_avx512()) return &cpu::avx512_variant();
  if (cpu_has_avx2()) return &cpu::avx2_variant();
#endif
  return &cpu::generic_variant();
}
const KernelVariant*& current_variant() {
  static const KernelVariant* variant = select_default_variant();
  return variant;
}

std::string set_cpu_variant(const std::string& name) {
  const std::string previous = current_variant()->name;
  if (name.empty()) return previous;
  if (name == "generic") {
    current_variant() = &cpu::generic_variant();
#if defined(__x86_64__) || defined(_M_X64)
  } else if (name == "avx2") {
    TORCH_CHECK(cpu_has_avx2(),
                "detlstm: this processor lacks AVX2/FMA, the 'avx2' CPU kernels cannot run");
    current_variant() = &cpu::avx2_variant();
  } else if (name == "avx512") {
    TORCH_CHECK(cpu_has_avx512(), "detlstm: this processor lacks AVX-512 (F, VL, DQ, BW), the "
                "'avx512' CPU kernels cannot run");
    current_variant() = &cpu::avx512_variant();
#endif
  } else if (name == "default") {
    current_variant() = select_default_variant();
  } else {
    TORCH_CHECK(false, "detlstm: unknown CPU kernel variant '", name,
                "' (expected 'generic', 'avx2', 'avx512' or 'default')");
  }
  return previous;
}

// The CPU binding's large outputs (the layer outputs, gates, cells and the input gradient) come from
// the block cache (csrc/cpu/block_cache.h), as the kernels' own scratch does: requests under
// kSmallestCachedBytes go to torch's CPU allocator.
class BlockCacheAllocator final : public at::Allocator {
 public:
  at::DataPtr allocate(size_t n) override {
    if (n < cpu::kSmallestCachedBytes) return at::getCPUAllocator()->allocate(n);
    auto* held = new HeldBlock{nullptr, cpu::block_bytes(n)};
    try {
      held->p = cpu::take_block(held->bytes);
    } catch (...) {
      delete held;
      throw;
    }
    return {held->p, held, &give_back, at::Device(at::kCPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  struct HeldBlock {
    void* p;
    size_t bytes;
  };
  static void give_back(void* context) {
    auto* held = static_cast<HeldBlock*>(context);
    cpu::give_block(held->p, held->bytes);
    delete held;
  }
};

at::Allocator* block_cache_allocator() {
  // never destroyed: storages made by it may outlive static destruction at exit
  static BlockCacheAllocator* allocator = new BlockCacheAllocator;
  return allocator;
}

// torch's thread pool, and how many threads a call of it may use now (one inside another parallel
// region, where at::parallel_for runs inline).
cpu::ParallelFor torch_parallel_for() {
  return {[](int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
            at::parallel_for(0, n, grain, fn);
          },
          at::in_parallel_region() ? 1 : static_cast<int64_t>(at::get_num_threads())};
}

// The CPU forward kernels of the selected build, for run_lstm_forward and run_lstm_inference.
auto cpu_forward_kernels() {
  return [&kernels = *current_variant()](const auto& view) {
    if constexpr (std::is_same_v<std::decay_t<decltype(view)>, LstmForwardArgs<float>>)
      kernels.forward_f32(view, torch_parallel_for());
    else
      kernels.forward_f64(view, torch_parallel_for());
  };
}

ForwardResult lstm_forward_cpu(const at::Tensor& input, const at::Tensor& lengths,
                               const at::Tensor& h0, const at::Tensor& c0, at::TensorList weights,
                               bool has_biases, int64_t num_layers, bool bidirectional,
                               double dropout, bool train, const at::Tensor& seed,
                               int64_t proj_size) {
  const PreparedCall p = prepare_forward(input, lengths, h0, c0, weights, has_biases, num_layers,
                                         bidirectional, dropout, train, seed, proj_size);
  return run_lstm_forward(p, cpu_forward_kernels(), block_cache_allocator());
}

InferenceResult lstm_inference_cpu(const at::Tensor& input, const at::Tensor& lengths,
                                   const at::Tensor& h0, const at::Tensor& c0,
                                   at::TensorList weights, bool has_biases, int64_t num_layers,
                                   bool bidirectional, double dropout, bool train,
                                   const at::Tensor& seed, int64_t proj_size) {
  return run_lstm_inference(prepare_forward(input, lengths, h0, c0, weights, has_biases, num_layers,
                                            bidirectional, dropout, train, seed, proj_size),
                            cpu_forward_kernels(), block_cache_allocator(),
                            KeptActivations::kNone);
}

BackwardResult lstm_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
    const at::Tensor& input, const at::Tensor& lengths, const at::Tensor& h0, const at::Tensor& c0,
    at::TensorList weights, const at::Tensor& output, const at::Tensor& layer_out,
    const at::Tensor& gates, const at::Tensor& cells, bool has_biases, int64_t num_layers,
    bool bidirectional, double dropout, bool train, const at::Tensor& seed, int64_t proj_size) {
  const PreparedCall p =
      prepare_backward(grad_output, grad_h_n, grad_c_n, input, lengths, h0, c0, weights, output,
                       layer_out, gates, cells, has_biases, num_layers, bidirectional, dropout,
                       train, seed, proj_size);
  const KernelVariant& kernels = *current_variant();
  return run_lstm_backward(p, [&](const auto& view) {
    if constexpr (std::is_same_v<std::decay_t<decltype(view)>, LstmBackwardArgs<float>>)
      kernels.backward_f32(view, torch_parallel_for());
    else
      kernels.backward_f64(view, torch_parallel_for());
  }, block_cache_allocator());
}

at::Tensor canonical_unary_cpu(const at::Tensor& x_, c10::string_view fn_name) {
  const UnaryFn fn = unary_fn(std::string(fn_name));
  TORCH_CHECK(x_.scalar_type() == at::kFloat, "detlstm.canonical_unary: x must be float32, got ",
              x_.scalar_type());
  const at::Tensor x = x_.contiguous();
  at::Tensor y = at::empty_like(x);
  current_variant()->unary_f32(fn, x.data_ptr<float>(), y.data_ptr<float>(), x.numel(),
                               torch_parallel_for());
  return y;
}

// Raw Philox4x32-10 blocks, for the known-answer tests and for checking dropout masks from Python.
at::Tensor philox4x32_10_cpu(const at::Tensor& counters_, int64_t key0, int64_t key1) {
  TORCH_CHECK(counters_.dim() == 2 && counters_.size(1) == 4 && counters_.scalar_type() == at::kLong,
              "detlstm.philox4x32_10: counters must be an (N, 4) int64 tensor of 32-bit words");
  const at::Tensor counters = counters_.contiguous();
  at::Tensor out = at::empty_like(counters);
  const int64_t* in = counters.data_ptr<int64_t>();
  int64_t* res = out.data_ptr<int64_t>();
  for (int64_t r = 0; r < counters.size(0); ++r) {
    Philox4x32 ctr;
    for (int k = 0; k < 4; ++k) ctr.v[k] = static_cast<uint32_t>(in[r * 4 + k]);
    const Philox4x32 block =
        philox4x32_10(ctr, static_cast<uint32_t>(key0), static_cast<uint32_t>(key1));
    for (int k = 0; k < 4; ++k) res[r * 4 + k] = block.v[k];
  }
  return out;
}

}  // namespace

// proj_size has no default on purpose: the dispatcher drops a trailing argument equal to its default,
// and torch 2.11's autograd wrapper then wants one gradient fewer than the formula returns (seen on
// the first GPU run of this schema). Every caller passes it.
TORCH_LIBRARY(detlstm, m) {
  m.def(
      "lstm_forward(Tensor input, Tensor lengths, Tensor h0, Tensor c0, Tensor[] weights, "
      "bool has_biases, int num_layers, bool bidirectional, float dropout, bool train, "
      "Tensor seed, int proj_size) -> (Tensor output, Tensor h_n, Tensor c_n, Tensor layer_out, "
      "Tensor gates, Tensor cells)");
  // lstm_forward's results alone, for a call nothing will differentiate (inference; dropout still
  // applies where train is true): no activations are kept for a backward, so a multi-layer call
  // holds one layer's gates and cells at a time. The same bits as lstm_forward's first three.
  m.def(
      "lstm_inference(Tensor input, Tensor lengths, Tensor h0, Tensor c0, Tensor[] weights, "
      "bool has_biases, int num_layers, bool bidirectional, float dropout, bool train, "
      "Tensor seed, int proj_size) -> (Tensor output, Tensor h_n, Tensor c_n)");
  m.def(
      "lstm_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor input, "
      "Tensor lengths, Tensor h0, Tensor c0, Tensor[] weights, Tensor output, Tensor layer_out, "
      "Tensor gates, Tensor cells, bool has_biases, int num_layers, bool bidirectional, "
      "float dropout, bool train, Tensor seed, int proj_size) -> (Tensor grad_input, "
      "Tensor grad_h0, Tensor grad_c0, Tensor[] grad_weights)");
  m.def("canonical_unary(Tensor x, str fn) -> Tensor");
  m.def("philox4x32_10(Tensor counters, int key0, int key1) -> Tensor");
}

TORCH_LIBRARY_IMPL(detlstm, CPU, m) {
  m.impl("lstm_forward", &lstm_forward_cpu);
  m.impl("lstm_inference", &lstm_inference_cpu);
  m.impl("lstm_backward", &lstm_backward_cpu);
  m.impl("canonical_unary", &canonical_unary_cpu);
  m.impl("philox4x32_10", &philox4x32_10_cpu);
}

}  // namespace detlstm

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("set_cpu_variant", &detlstm::set_cpu_variant,
        "Select the CPU kernel build ('generic', 'avx2', 'avx512', 'default'); '' only queries. Returns the "
        "previous name.",
        pybind11::arg("name") = "");
  m.def("set_cpu_phase_timing", &detlstm::cpu::set_cpu_phase_timing,
        "Turn the CPU driver's per-phase clock on or off (off by default; bench/phases.py).");
  m.def(
      "take_cpu_phase_times",
      [] {
        const auto sums = detlstm::cpu::take_cpu_phase_times();
        pybind11::dict out;
        for (size_t k = 0; k < sums.size(); ++k)
          out[detlstm::cpu::cpu_phase_name(static_cast<detlstm::cpu::CpuPhase>(k))] =
              pybind11::make_tuple(sums[k].first, sums[k].second);
        return out;
      },
      "{phase: (seconds, multiply-adds)} summed since the last call, which resets them.");
  m.def("empty_cpu_cache", &detlstm::cpu::empty_block_cache,
        "Release every block the CPU block cache holds.");
  m.def("set_cpu_cache_limit", &detlstm::cpu::set_block_cache_limit,
        "Set the CPU block cache's limit in bytes (0: keep nothing); a negative value only asks. Returns "
        "the previous limit.",
        pybind11::arg("limit_bytes") = -1);
  m.def(
      "cpu_cache_info",
      [] {
        const detlstm::cpu::BlockCacheInfo i = detlstm::cpu::block_cache_info();
        pybind11::dict out;
        out["hits"] = i.hits;
        out["misses"] = i.misses;
        out["cached_bytes"] = i.cached_bytes;
        out["cached_blocks"] = i.cached_blocks;
        out["limit_bytes"] = i.limit_bytes;
        return out;
      },
      "The CPU block cache's counters: hits, misses, cached_bytes, cached_blocks, limit_bytes.");
  m.def("set_cpu_cache_poison", &detlstm::cpu::set_block_cache_poison,
        "Tests only: fill every block the CPU block cache keeps with 0xFF bytes (NaN).");
  m.def(
      "set_cpu_recurrence_split",
      [](const std::string& name) {
        using detlstm::cpu::RecurrenceSplit;
        static const char* const names[] = {"auto", "units", "sequences"};
        const RecurrenceSplit before = detlstm::cpu::recurrence_split_setting();
        if (!name.empty()) {
          int k = 0;
          while (k < 3 && name != names[k]) ++k;
          TORCH_CHECK(k < 3, "set_cpu_recurrence_split: name must be 'auto', 'units' or 'sequences'; got '",
                      name, "'");
          detlstm::cpu::set_recurrence_split(static_cast<RecurrenceSplit>(k));
        }
        return std::string(names[static_cast<int>(before)]);
      },
      "Tests only: how the CPU recurrences spread over threads ('auto', 'units', 'sequences'); '' only "
      "queries. Returns the previous name.",
      pybind11::arg("name") = "");
}
