// The emulated CUDA kernels under AddressSanitizer and UndefinedBehaviorSanitizer, without torch:
// every input, output and scratch buffer is its own exact-size heap block, so a kernel that reads or
// writes one element past any of them stops the run. Outputs start as NaN and inputs are finite, so
// an output element no kernel wrote is caught too. Exit status 0 and a last line "ok N" mean every
// configuration passed (tests/test_cuda_emulation.py builds and runs this).
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "../../csrc/cuda/lstm_cuda.h"

namespace {

using detlstm::LstmBackwardArgs;
using detlstm::LstmForwardArgs;
using detlstm::LstmShape;

template <typename T>
struct Buffers {
  std::vector<std::unique_ptr<T[]>> blocks;
  std::vector<std::pair<const T*, size_t>> outputs;
  std::mt19937 rng{1};

  T* input(size_t n) {
    blocks.emplace_back(new T[n]);
    std::uniform_real_distribution<double> u(-0.5, 0.5);
    for (size_t k = 0; k < n; ++k) blocks.back()[k] = static_cast<T>(u(rng));
    return blocks.back().get();
  }
  T* output(size_t n) {
    blocks.emplace_back(new T[n]);
    for (size_t k = 0; k < n; ++k) blocks.back()[k] = std::numeric_limits<T>::quiet_NaN();
    outputs.emplace_back(blocks.back().get(), n);
    return blocks.back().get();
  }
};

struct Scratch {
  std::vector<std::unique_ptr<char[]>> blocks;
  detlstm::cuda::ScratchAlloc allocator() {
    return [this](size_t bytes) {
      blocks.emplace_back(new char[bytes]);
      return static_cast<void*>(blocks.back().get());
    };
  }
};

template <typename T>
bool run_case(const LstmShape& s, const std::vector<int64_t>& lengths, bool dropout, int variant,
              const std::string& name) {
  detlstm::cuda::set_launch_shape(variant);
  const size_t T_ = s.steps, B = s.batch, H = s.hidden_size, L = s.num_layers, D = s.directions;
  const size_t R = s.proj_size > 0 ? s.proj_size : H, G = 4 * H;
  Buffers<T> buf;
  LstmForwardArgs<T> f{};
  f.shape = s;
  f.lengths = lengths.data();
  f.x = buf.input(T_ * B * s.input_size);
  f.h0 = buf.input(L * D * B * R);
  f.c0 = buf.input(L * D * B * H);
  for (size_t l = 0; l < L; ++l)
    for (size_t d = 0; d < D; ++d) {
      const size_t K = l == 0 ? s.input_size : D * R;
      f.weights.w_ih.push_back(buf.input(G * K));
      f.weights.w_hh.push_back(buf.input(G * R));
      f.weights.b_ih.push_back(s.has_bias ? buf.input(G) : nullptr);
      f.weights.b_hh.push_back(s.has_bias ? buf.input(G) : nullptr);
      f.weights.w_hr.push_back(s.proj_size > 0 ? buf.input(R * H) : nullptr);
    }
  f.dropout = {dropout, 77, 2147483648u, 2.0};
  f.y = buf.output(T_ * B * D * R);
  f.h_n = buf.output(L * D * B * R);
  f.c_n = buf.output(L * D * B * H);
  f.layer_out = L > 1 ? buf.output((L - 1) * T_ * B * D * R) : nullptr;
  f.gates = buf.output(L * D * T_ * B * G);
  f.cells = buf.output(L * D * T_ * B * H);
  {
    Scratch scratch;
    detlstm::cuda::lstm_forward(f, scratch.allocator(), nullptr);
  }

  LstmBackwardArgs<T> b{};
  b.fwd = f;
  b.dy = buf.input(T_ * B * D * R);
  b.dh_n = buf.input(L * D * B * R);
  b.dc_n = buf.input(L * D * B * H);
  b.dx = buf.output(T_ * B * s.input_size);
  b.dh0 = buf.output(L * D * B * R);
  b.dc0 = buf.output(L * D * B * H);
  for (size_t l = 0; l < L; ++l)
    for (size_t d = 0; d < D; ++d) {
      const size_t K = l == 0 ? s.input_size : D * R;
      b.dw_ih.push_back(buf.output(G * K));
      b.dw_hh.push_back(buf.output(G * R));
      b.db_ih.push_back(s.has_bias ? buf.output(G) : nullptr);
      b.db_hh.push_back(s.has_bias ? buf.output(G) : nullptr);
      b.dw_hr.push_back(s.proj_size > 0 ? buf.output(R * H) : nullptr);
    }
  {
    Scratch scratch;
    detlstm::cuda::lstm_backward(b, scratch.allocator(), nullptr);
  }
  for (size_t o = 0; o < buf.outputs.size(); ++o)
    for (size_t k = 0; k < buf.outputs[o].second; ++k)
      if (!std::isfinite(buf.outputs[o].first[k])) {
        std::printf("FAIL %s: output buffer %zu element %zu was never written (or is not finite)\n",
                    name.c_str(), o, k);
        return false;
      }
  return true;
}

}  // namespace

int main() {
  struct Case {
    LstmShape shape;
    std::vector<int64_t> lengths;
  };
  // steps, batch, input, hidden, proj, layers, directions, bias
  const std::vector<Case> cases = {
      {{6, 4, 5, 7, 0, 1, 1, true}, {6, 2, 5, 3}},
      {{6, 4, 5, 7, 0, 3, 2, true}, {6, 2, 5, 3}},
      {{6, 4, 5, 7, 3, 2, 2, false}, {1, 6, 6, 4}},
      {{1, 1, 1, 1, 0, 2, 2, true}, {1}},
      {{9, 5, 17, 19, 5, 2, 2, true}, {9, 9, 9, 9, 9}},
      {{11, 3, 33, 9, 0, 2, 1, false}, {2, 11, 7}},
      {{23, 9, 130, 36, 0, 2, 2, true}, {23, 1, 20, 22, 5, 23, 12, 2, 23}},  // 128x128 GEMM tiles
      {{8, 5, 6, 11, 4, 2, 2, true}, {5, 2, 5, 3, 1}},  // no row reaches steps 5-7
  };
  int passed = 0;
  for (size_t c = 0; c < cases.size(); ++c)
    for (int variant = 0; variant < detlstm::cuda::kLaunchShapeCount; ++variant)
      for (int dropout = 0; dropout < 2; ++dropout) {
        const std::string name = "case " + std::to_string(c) + " variant " +
                                 std::to_string(variant) + " dropout " + std::to_string(dropout);
        if (!run_case<float>(cases[c].shape, cases[c].lengths, dropout, variant, name + " float") ||
            !run_case<double>(cases[c].shape, cases[c].lengths, dropout, variant, name + " double"))
          return 1;
        passed += 2;
      }
  std::printf("ok %d\n", passed);
  return 0;
}
