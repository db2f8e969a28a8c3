// The CPU LSTM: the whole stack (all layers, both directions) forward and backward, following
// ARITHMETIC.md, in the phases of csrc/common/phases.h. Compiled once per instruction-set variant:
// the including file defines DETLSTM_CPU_VARIANT (the variant's namespace), DETLSTM_MATH_NS and
// DETLSTM_CPU_AVX2, and has included the standard headers, lstm_cpu.h and the csrc/common headers.
//
// Work is proportional to the sum of the lengths: only valid (step, row) pairs are computed, and a
// sequence's reverse direction starts at its own last step.

#include "../common/chunked_sum.h"
#include "../common/layout.h"

namespace detlstm {
namespace cpu {
namespace DETLSTM_CPU_VARIANT {

namespace math = ::DETLSTM_MATH_NS;
using math::GemmEpilogue;
using ::detlstm::StepSchedule;

#include "gemm_chain.h"

// Hidden units per task in a step's parallel region: a multiple of the vector kernel's kNR so a
// block's gate columns start on a panel boundary whenever H is a multiple of kNR too.
constexpr int64_t kUnitBlock = 16;
static_assert(kUnitBlock % kNR == 0, "forward_panels_cover: a unit block is whole panels");

// Runs fn as one phase of the driver on the phase clock (lstm_cpu.h).
template <class Fn>
void timed(CpuPhase phase, double multiply_adds, Fn fn) {
  const CpuPhaseTimer timer(phase, multiply_adds);
  fn();
}

#include "cpu_rows.h"
#include "lstm_cpu_forward.h"
#include "lstm_cpu_backward.h"

template <typename T>
void lstm_unary(UnaryFn fn, const T* x, T* y, int64_t n, const ParallelFor& parallel_for) {
  parallel_for(n, 4096, [&](int64_t begin, int64_t end) {
    DenormalGuard guard;
    int64_t k = begin;
#if DETLSTM_CPU_AVX2
    if constexpr (std::is_same<T, float>::value) {
      using V = math::VecF;
      for (; k + math::kVecLanes <= end; k += math::kVecLanes) {
        const V v = V::load(x + k);
        (fn == UnaryFn::kExp ? math::canonical_exp(v)
                             : (fn == UnaryFn::kSigmoid ? math::canonical_sigmoid(v)
                                                        : math::canonical_tanh(v)))
            .store(y + k);
      }
    }
#endif
    for (; k < end; ++k) {
      switch (fn) {
        case UnaryFn::kExp: y[k] = math::canonical_exp(x[k]); break;
        case UnaryFn::kSigmoid: y[k] = math::canonical_sigmoid(x[k]); break;
        default: y[k] = math::canonical_tanh(x[k]); break;
      }
    }
  });
}

}  // namespace DETLSTM_CPU_VARIANT
}  // namespace cpu
}  // namespace detlstm
