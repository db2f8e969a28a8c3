// The CPU driver's phase clock (lstm_cpu.h): one table for every instruction-set variant, guarded by
// a mutex (phases end on the calling thread, so it is taken a few times per layer at most).
#include <mutex>
#include <utility>
#include <vector>

#include "lstm_cpu.h"

namespace detlstm {
namespace cpu {
namespace {

constexpr int kPhases = static_cast<int>(CpuPhase::kCount);

struct PhaseTable {
  std::mutex mutex;
  bool on = false;
  std::vector<std::pair<double, double>> sums = std::vector<std::pair<double, double>>(kPhases);
};

PhaseTable& table() {
  static PhaseTable t;
  return t;
}

}  // namespace

const char* cpu_phase_name(CpuPhase phase) {
  static const char* const names[kPhases] = {
      "input_projection",  "recurrence",       "recurrence_backward", "initial_state_gradients",
      "input_gradient",    "weight_gradients", "bias_gradients"};
  return names[static_cast<int>(phase)];
}

void set_cpu_phase_timing(bool on) {
  std::lock_guard<std::mutex> lock(table().mutex);
  table().on = on;
}

bool cpu_phase_timing() {
  std::lock_guard<std::mutex> lock(table().mutex);
  return table().on;
}

void add_cpu_phase(CpuPhase phase, double seconds, double multiply_adds) {
  std::lock_guard<std::mutex> lock(table().mutex);
  auto& sum = table().sums[static_cast<int>(phase)];
  sum.first += seconds;
  sum.second += multiply_adds;
}

std::vector<std::pair<double, double>> take_cpu_phase_times() {
  std::lock_guard<std::mutex> lock(table().mutex);
  std::vector<std::pair<double, double>> out(kPhases);
  std::swap(out, table().sums);
  return out;
}

}  // namespace cpu
}  // namespace detlstm
