// Elementwise CUDA kernels: padding, transposes, dropout, the canonical functions, host uploads.
#include "kernels_common.cuh"

namespace detlstm {
namespace cuda {

namespace {
constexpr int kThreads = 256;

dim3 blocks_for(int64_t n) { return stride_grid(n, kThreads); }
}  // namespace

// Up to kUploadWords values per launch, carried in the launch's parameters (4 KB in all, the
// limit every CUDA version takes).
constexpr int kUploadWords = 496;
struct UploadChunk {
  int64_t words[kUploadWords];
};

__global__ void upload_kernel(int64_t* device, int64_t count, UploadChunk chunk) {
  for (int64_t e = threadIdx.x; e < count; e += blockDim.x) device[e] = chunk.words[e];
}

void upload_int64(const int64_t* host, int64_t count, int64_t* device, cudaStream_t stream) {
  UploadChunk chunk;
  for (int64_t first = 0; first < count; first += kUploadWords) {
    const int64_t n = count - first < kUploadWords ? count - first : kUploadWords;
    std::copy(host + first, host + first + n, chunk.words);
    launch_kernel("upload_kernel", upload_kernel, 1, 128, stream, device + first, n, chunk);
  }
}

template <typename T>
__global__ void zero_padding_kernel(T* base, int64_t width, const int64_t* lengths, int64_t steps,
                                    int64_t batch) {
  const int64_t total = steps * batch * width;
  for (int64_t e = stride_start(); e < total; e += stride_step()) {
    const int64_t row = e / width, t = row / batch, b = row % batch;
    if (t >= lengths[b]) base[e] = T(0);
  }
}

template <typename T>
void launch_zero_padding(T* base, int64_t width, const int64_t* lengths, int64_t steps,
                         int64_t batch, cudaStream_t stream) {
  launch_kernel("zero_padding_kernel", zero_padding_kernel<T>, blocks_for(steps * batch * width),
                kThreads, stream, base, width, lengths, steps, batch);
}

template <typename T>
__global__ void transpose_kernel(const T* in, T* out, int64_t rows, int64_t cols) {
  const int64_t total = rows * cols;
  for (int64_t e = stride_start(); e < total; e += stride_step()) {
    const int64_t c = e / rows, r = e % rows;  // coalesced writes
    out[e] = in[r * cols + c];
  }
}

template <typename T>
void launch_transpose(const T* in, T* out, int64_t rows, int64_t cols, cudaStream_t stream) {
  launch_kernel("transpose_kernel", transpose_kernel<T>, blocks_for(rows * cols), kThreads, stream,
                in, out, rows, cols);
}

// One thread per (valid row, group of four features): one Philox block gives the four draws.
template <typename T>
__global__ void dropout_kernel(uint64_t seed, uint64_t threshold, T scale, uint32_t layer,
                               const T* y, T* out, int64_t width, const int64_t* valid, int64_t rows,
                               int64_t batch) {
  const int64_t groups = (width + 3) / 4;
  const int64_t total = rows * groups;
  for (int64_t e = stride_start(); e < total; e += stride_step()) {
    const int64_t r = valid[e / groups], group = e % groups;
    const int64_t t = r / batch, b = r % batch;
    const Philox4x32 draws = dropout_draws(seed, layer, static_cast<uint32_t>(t),
                                           static_cast<uint32_t>(b), static_cast<uint32_t>(group));
    for (int q = 0; q < 4 && group * 4 + q < width; ++q) {
      const int64_t f = r * width + group * 4 + q;
      out[f] = dropout_apply(y[f], draws.v[q], threshold, scale);
    }
  }
}

template <typename T>
void launch_apply_dropout(const DropoutParams& dp, int64_t layer, const T* y, T* out, int64_t width,
                          const DeviceSchedule& sched, int64_t batch, cudaStream_t stream) {
  launch_kernel("dropout_kernel", dropout_kernel<T>, blocks_for(sched.rows * ((width + 3) / 4)),
                kThreads, stream, dp.seed, dp.threshold, static_cast<T>(dp.scale),
                static_cast<uint32_t>(layer), y, out, width, sched.valid, sched.rows, batch);
}

__device__ inline float unary_apply(UnaryFn fn, float x) {
  return fn == UnaryFn::kExp ? canonical_exp(x)
                             : (fn == UnaryFn::kSigmoid ? canonical_sigmoid(x) : canonical_tanh(x));
}

__global__ void unary_kernel(UnaryFn fn, const float* x, float* y, int64_t n) {
  for (int64_t e = stride_start(); e < n; e += stride_step())
    y[e] = unary_apply(fn, x[e]);
}

__global__ void unary_bits_kernel(UnaryFn fn, uint32_t first, float* y, int64_t n) {
  for (int64_t e = stride_start(); e < n; e += stride_step())
    y[e] = unary_apply(fn, bits_float(first + static_cast<uint32_t>(e)));
}

void canonical_unary(UnaryFn fn, const float* x, float* y, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  launch_kernel("unary_kernel", unary_kernel, blocks_for(n), kThreads, stream, fn, x, y, n);
}

void canonical_unary_bits(UnaryFn fn, uint32_t first, float* y, int64_t count, cudaStream_t stream) {
  if (count == 0) return;
  launch_kernel("unary_bits_kernel", unary_bits_kernel, blocks_for(count), kThreads, stream, fn,
                first, y, count);
}

#define DETLSTM_INSTANTIATE(T)                                                                    \
  template void launch_zero_padding<T>(T*, int64_t, const int64_t*, int64_t, int64_t,           \
                                       cudaStream_t);                                            \
  template void launch_transpose<T>(const T*, T*, int64_t, int64_t, cudaStream_t);              \
  template void launch_apply_dropout<T>(const DropoutParams&, int64_t, const T*, T*, int64_t,   \
                                        const DeviceSchedule&, int64_t, cudaStream_t);
DETLSTM_INSTANTIATE(float)
DETLSTM_INSTANTIATE(double)
#undef DETLSTM_INSTANTIATE

}  // namespace cuda
}  // namespace detlstm
