// AVX2 + FMA build of the CPU kernels, chosen at run time when the processor has both. Everything
// after the target pragma (the shared arithmetic headers included) is compiled for that target, under
// its own namespace, so no inline function compiled here can stand in for the generic build's.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>
#include <vector>
#include <immintrin.h>

#include "../common/schedule.h"
#include "lstm_cpu.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

#define DETLSTM_CPU_VARIANT avx2
#define DETLSTM_CPU_VARIANT_GETTER avx2_variant
#define DETLSTM_CPU_VARIANT_NAME "avx2"
#define DETLSTM_MATH_NS detlstm_math_avx2
#define DETLSTM_CPU_AVX2 1
#define DETLSTM_CPU_AVX512 0
#include "lstm_cpu_variant.h"

#pragma GCC pop_options
