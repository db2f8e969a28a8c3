// Which (step, row) pairs an LSTM call computes, shared by the CPU kernels and the CUDA host code.
// Host-only C++ (no device code): the CUDA side uploads these arrays once per call.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace detlstm {

// Rows are ordered by length, longest first (ties keep batch order), so the rows still running at
// processing step s are the first active[s] entries of `order`. The order only schedules work: no
// value depends on it.
struct StepSchedule {
  std::vector<int64_t> order;   // batch rows, longest first
  std::vector<int64_t> active;  // active[s] = number of rows with length > s; active[T] = 0
  std::vector<int64_t> valid;   // valid (t, b) as t * B + b, in storage order
  StepSchedule(const int64_t* lengths, int64_t T, int64_t B) : order(B), active(T + 1, 0) {
    for (int64_t b = 0; b < B; ++b) order[b] = b;
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t x, int64_t y) { return lengths[x] > lengths[y]; });
    for (int64_t b = 0; b < B; ++b)
      for (int64_t s = 0; s < lengths[b]; ++s) active[s] += 1;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t b = 0; b < B; ++b)
        if (t < lengths[b]) valid.push_back(t * B + b);
  }
};

}  // namespace detlstm
