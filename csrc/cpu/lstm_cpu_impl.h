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

// How the recurrences spread over threads. Both splits give the same bits: every (row, column)
// value is computed by the same operations whichever thread computes it.
// - By units: every step is one parallel region over blocks of kUnitBlock hidden units (a unit's
//   gates, cell and h need no other unit of the step). Each thread reads 1/threads of W_hh per
//   step, and the threads meet at every step's end.
// - By sequences: a sequence's recurrence needs only its own h and c (backward, its own
//   gradients), so each thread takes a group of one direction's rows and runs every step of them,
//   meeting no other thread before the layer ends. Each thread reads its direction's whole W_hh
//   every step, and its cells run over whole rows. On this project's 2-core machine the step-end
//   waits were ~3% of a two-thread forward at hidden 512 (a shared machine holds up one thread or
//   the other), and a unit block's cell runs ~30% slower than a whole row's.
// Returns the groups per direction of the split by sequences, or 0 for the split by units. Auto
// takes sequences on one thread (its D groups one after the other), and else when at most two
// threads share a direction (more would each read the same W_hh every step, where units give each
// a slice that may fit its L2: not measured here) and the groups, of at least kMR rows each, are
// exactly one per thread (at::parallel_for gives each thread ceil(groups / threads) of them).
inline int64_t sequence_groups(const math::CallDims& c, const StepSchedule& sched, int64_t threads) {
  const int64_t D = c.D, rows = c.T > 0 ? sched.active[0] : 0;
  const RecurrenceSplit setting = recurrence_split_setting();
  if (setting == RecurrenceSplit::kByUnits || rows == 0) return 0;
  const int64_t per_direction = std::max<int64_t>(1, (threads + D - 1) / D);
  if (setting == RecurrenceSplit::kBySequences) return std::min(per_direction, rows);
  const int64_t groups = std::min(per_direction, std::max<int64_t>(1, rows / kMR));
  return threads == 1 || (per_direction <= 2 && D * groups == threads) ? groups : 0;
}

// One group of the split by sequences: direction d's rows at schedule positions first, first +
// stride, ... (interleaved, so every group gets its share of long and short sequences).
struct SequenceGroup {
  int64_t d, first, stride;
  int64_t rows(int64_t active) const { return active > first ? (active - first + stride - 1) / stride : 0; }
};

// Runs fn(group) for each of the D * per_direction groups of the split by sequences, one parallel
// region for the whole layer.
template <class Fn>
void for_sequence_groups(int64_t D, int64_t per_direction, const ParallelFor& parallel_for, Fn fn) {
  parallel_for(D * per_direction, 1, [&](int64_t begin, int64_t end) {
    DenormalGuard guard;
    for (int64_t g = begin; g < end; ++g) fn(SequenceGroup{g / per_direction, g % per_direction, per_direction});
  });
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
