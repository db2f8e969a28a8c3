// AVX-512 build of the CPU kernels (F, VL, DQ, BW on top of AVX2 + FMA), chosen at run time when the
// processor has them. Its 32 vector registers hold a GEMM tile's chunk partials and running folds
// together (no store and reload of C between chunks, gemm_chain.h), and the cell runs sixteen lanes
// per instruction with a one-instruction table lookup. Same bits as the other builds (tests compare
// them). Like the AVX2 build, everything after the target pragma is compiled for that target under
// its own namespace.
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
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")

#define DETLSTM_CPU_VARIANT avx512
#define DETLSTM_CPU_VARIANT_GETTER avx512_variant
#define DETLSTM_CPU_VARIANT_NAME "avx512"
#define DETLSTM_MATH_NS detlstm_math_avx512
#define DETLSTM_CPU_AVX2 1
#define DETLSTM_CPU_AVX512 1
#include "lstm_cpu_variant.h"

#pragma GCC pop_options
