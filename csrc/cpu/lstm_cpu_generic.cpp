// Portable build of the CPU kernels: scalar std::fma everywhere. Runs where AVX2/FMA is missing and
// serves as the reference the AVX2 build must match bit for bit.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>
#include <vector>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "../common/schedule.h"
#include "lstm_cpu.h"

#define DETLSTM_CPU_VARIANT generic
#define DETLSTM_CPU_VARIANT_GETTER generic_variant
#define DETLSTM_CPU_VARIANT_NAME "generic"
#define DETLSTM_MATH_NS detlstm_math_generic
#define DETLSTM_CPU_AVX2 0
#define DETLSTM_CPU_AVX512 0
#include "lstm_cpu_variant.h"
