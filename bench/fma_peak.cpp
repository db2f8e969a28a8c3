// The machine's fused-multiply-add peak, for bench/phases.py's "% of peak" column.
//
// Each thread runs many independent chains acc = acc * m + a on 256-bit (AVX2/FMA) or 512-bit
// (AVX-512F) vectors: 12 accumulators at 256 bits (12 + 2 constants fit the 16 ymm registers), 24 at
// 512 bits (32 zmm registers), more than latency x pipes (4 cycles x 2 FMA pipes = 8) in flight.
// Built by torch.utils.cpp_extension.load with -O3 -mavx2 -mfma (at -O2 GCC may keep the
// accumulators in memory); the 512-bit kernel carries its own target attribute and is only called
// when /proc/cpuinfo lists avx512f. Plain C entry points, called through ctypes.

#include <immintrin.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

namespace {

constexpr int kAcc256 = 12;
constexpr int kAcc512 = 24;

__attribute__((noinline)) float chains256(int64_t iters) {
  __m256 acc[kAcc256];
  for (int i = 0; i < kAcc256; ++i) acc[i] = _mm256_set1_ps(1.0f + 0.001f * i);
  const __m256 m = _mm256_set1_ps(0.999999f);
  const __m256 a = _mm256_set1_ps(1e-7f);
  for (int64_t k = 0; k < iters; ++k) {
#pragma GCC unroll 12
    for (int i = 0; i < kAcc256; ++i) acc[i] = _mm256_fmadd_ps(acc[i], m, a);
  }
  __m256 s = acc[0];
  for (int i = 1; i < kAcc256; ++i) s = _mm256_add_ps(s, acc[i]);
  alignas(32) float out[8];
  _mm256_store_ps(out, s);
  return out[0] + out[1] + out[2] + out[3] + out[4] + out[5] + out[6] + out[7];
}

__attribute__((noinline, target("avx512f"))) float chains512(int64_t iters) {
  __m512 acc[kAcc512];
  for (int i = 0; i < kAcc512; ++i) acc[i] = _mm512_set1_ps(1.0f + 0.001f * i);
  const __m512 m = _mm512_set1_ps(0.999999f);
  const __m512 a = _mm512_set1_ps(1e-7f);
  for (int64_t k = 0; k < iters; ++k) {
#pragma GCC unroll 24
    for (int i = 0; i < kAcc512; ++i) acc[i] = _mm512_fmadd_ps(acc[i], m, a);
  }
  __m512 s = acc[0];
  for (int i = 1; i < kAcc512; ++i) s = _mm512_add_ps(s, acc[i]);
  return _mm512_reduce_add_ps(s);
}

double flops_per_iter(int width) {
  // accumulators x lanes x 2 (a multiply and an add per lane)
  return width == 512 ? kAcc512 * 16 * 2.0 : kAcc256 * 8 * 2.0;
}

// Wall seconds for `threads` threads each running `iters` iterations, started together.
double timed_run(int width, int threads, int64_t iters, volatile float* sink) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> pool;
  std::vector<float> results(threads, 0.0f);
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) {
      }
      results[t] = width == 512 ? chains512(iters) : chains256(iters);
    });
  }
  while (ready.load() < threads) {
  }
  auto t0 = std::chrono::steady_clock::now();
  go.store(true, std::memory_order_release);
  for (auto& th : pool) th.join();
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  float total = 0.0f;
  for (float r : results) total += r;
  *sink = total;
  return s;
}

}  // namespace

extern "C" {

// Best GFLOP/s of `runs` runs of about `seconds` each, on `threads` threads; width 256 or 512.
// Returns -1 for a width this function does not know.
double detlstm_fma_peak_gflops(int width, int threads, double seconds, int runs) {
  if (width != 256 && width != 512) return -1.0;
  if (threads < 1) threads = 1;
  volatile float sink = 0.0f;
  // calibrate: grow the iteration count until one run takes a tenth of the target
  int64_t iters = 1 << 14;
  double s = timed_run(width, threads, iters, &sink);
  while (s < seconds / 10 && iters < (int64_t(1) << 40)) {
    iters *= 4;
    s = timed_run(width, threads, iters, &sink);
  }
  iters = static_cast<int64_t>(iters * (seconds / (s > 0 ? s : 1e-9)));
  if (iters < 1) iters = 1;
  double best = 0.0;
  for (int r = 0; r < runs; ++r) {
    s = timed_run(width, threads, iters, &sink);
    double g = flops_per_iter(width) * static_cast<double>(iters) * threads / s / 1e9;
    if (g > best) best = g;
  }
  return best;
}

}  // extern "C"
