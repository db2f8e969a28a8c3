// The CPU kernels' interface: plain pointers and sizes, no torch types, so the same kernel source can be
// compiled once per instruction set (lstm_cpu_avx512.cpp, lstm_cpu_avx2.cpp, lstm_cpu_generic.cpp) and picked at run time.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "../common/lstm_args.h"
#include "huge_pages.h"


namespace detlstm {
namespace cpu {

using ::detlstm::DropoutParams;
using ::detlstm::LstmBackwardArgs;
using ::detlstm::LstmForwardArgs;
using ::detlstm::LstmShape;
using ::detlstm::LstmWeights;

// Runs fn(begin, end) over [0, n) in chunks of at least `grain` items, on at most `threads`
// threads. The kernels only split work whose outputs are independent, so the split never changes
// a bit; the recurrences choose how to split by the thread count (recurrence_split below).
struct ParallelFor {
  std::function<void(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn)> run;
  int64_t threads = 1;
  void operator()(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) const {
    run(n, grain, fn);
  }
};

// How the recurrences spread over threads (lstm_cpu_impl.h: recurrence_split). kAuto chooses by
// the thread count and shape; the others force one split, for tests that compare their bits.
enum class RecurrenceSplit : int { kAuto, kByUnits, kBySequences };
void set_recurrence_split(RecurrenceSplit split);
RecurrenceSplit recurrence_split_setting();

using ::detlstm::UnaryFn;

// Wall time and multiply-adds of each phase of the CPU driver (csrc/common/phases.h), summed over
// calls while timing is on: bench/phases.py reads them to report each phase's GFLOP/s against the
// machine's FMA peak. Off by default; on, it reads the clock twice per phase and layer. It never
// changes a value.
enum class CpuPhase : int {
  kInputProjection,
  kRecurrence,
  kRecurrenceBackward,
  kInitialStateGradients,
  kInputGradient,
  kWeightGradients,
  kBiasGradients,
  kCount
};
const char* cpu_phase_name(CpuPhase phase);
void set_cpu_phase_timing(bool on);
bool cpu_phase_timing();
void add_cpu_phase(CpuPhase phase, double seconds, double multiply_adds);
// (seconds, multiply-adds) per phase, in CpuPhase order, since the last call; resets them.
std::vector<std::pair<double, double>> take_cpu_phase_times();

// Times one phase of one layer: multiply_adds is the work it does (valid rows only).
class CpuPhaseTimer {
 public:
  CpuPhaseTimer(CpuPhase phase, double multiply_adds)
      : phase_(phase), multiply_adds_(multiply_adds), on_(cpu_phase_timing()),
        start_(on_ ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point()) {}
  ~CpuPhaseTimer() {
    if (!on_) return;
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start_;
    add_cpu_phase(phase_, took.count(), multiply_adds_);
  }

 private:
  CpuPhase phase_;
  double multiply_adds_;
  bool on_;
  std::chrono::steady_clock::time_point start_;
};

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
const KernelVariant& avx512_variant();
#endif

}  // namespace cpu
}  // namespace detlstm
