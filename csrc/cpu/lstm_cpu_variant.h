// Instantiates the CPU kernels for one instruction-set variant. The including .cpp defines
// DETLSTM_CPU_VARIANT, DETLSTM_MATH_NS, DETLSTM_CPU_AVX2 and DETLSTM_CPU_AVX512 first (and, for the
// vector builds, the target pragma). The vector builds name their widest float vector VecF
// (kVecLanes lanes): the cell and the elementwise functions run on it, in pairs (lanes_pair.h).
#include "../common/lstm_cell.h"
#if DETLSTM_CPU_AVX2
namespace DETLSTM_MATH_NS {
#include "lanes_avx2.h"
#if DETLSTM_CPU_AVX512
#include "lanes_avx512.h"
using VecF = V16;
#else
using VecF = V8;
#endif
constexpr int64_t kVecLanes = sizeof(VecF) / sizeof(float);
#include "lanes_pair.h"
}  // namespace DETLSTM_MATH_NS
#endif
#include "lstm_cpu_impl.h"

namespace detlstm {
namespace cpu {

const KernelVariant& DETLSTM_CPU_VARIANT_GETTER() {
  namespace v = DETLSTM_CPU_VARIANT;
  static const KernelVariant variant{
      DETLSTM_CPU_VARIANT_NAME,
      [](const LstmForwardArgs<float>& a, const ParallelFor& p) { v::lstm_forward<float>(a, p); },
      [](const LstmForwardArgs<double>& a, const ParallelFor& p) { v::lstm_forward<double>(a, p); },
      [](const LstmBackwardArgs<float>& a, const ParallelFor& p) { v::lstm_backward<float>(a, p); },
      [](const LstmBackwardArgs<double>& a, const ParallelFor& p) { v::lstm_backward<double>(a, p); },
      [](UnaryFn fn, const float* x, float* y, int64_t n, const ParallelFor& p) {
        v::lstm_unary<float>(fn, x, y, n, p);
      },
  };
  return variant;
}

}  // namespace cpu
}  // namespace detlstm
