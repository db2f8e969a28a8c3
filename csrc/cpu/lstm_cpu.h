// The CPU kernels' interface: plain pointers and sizes, no torch types, so the same kernel source can be
// compiled once per instruction set (lstm_cpu_avx2.cpp, lstm_cpu_generic.cpp) and picked at run time.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "../common/lstm_args.h"


namespace detlstm {
namespace cpu {

using ::detlstm::DropoutParams;
using ::detlstm::LstmBackwardArgs;
using ::detlstm::LstmForwardArgs;
using ::detlstm::LstmShape;
using ::detlstm::LstmWeights;

// Runs fn(begin, end) over [0, n) in chunks of at least `grain` items, possibly on several threads.
// The kernels only split work whose outputs are independent, so the split never changes a bit.
using ParallelFor =
    std::function<void(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn)>;

using ::detlstm::UnaryFn;

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
#endif

}  // namespace cpu
}  // namespace detlstm
