// The process-wide recurrence split setting (lstm_cpu.h): kAuto unless a test forces one split to
// compare the bits of both. One value for every instruction-set variant.
#include <atomic>

#include "lstm_cpu.h"

namespace detlstm {
namespace cpu {
namespace {

std::atomic<int>& split_setting() {
  static std::atomic<int> setting{static_cast<int>(RecurrenceSplit::kAuto)};
  return setting;
}

}  // namespace

void set_recurrence_split(RecurrenceSplit split) { split_setting().store(static_cast<int>(split)); }

RecurrenceSplit recurrence_split_setting() {
  return static_cast<RecurrenceSplit>(split_setting().load());
}

}  // namespace cpu
}  // namespace detlstm
