// The one shape of every dot product and sum (ARITHMETIC.md v2, rule 3), written once for the CPU
// and CUDA kernels: the terms, in ascending index order, are cut into consecutive chunks of
// kSumChunk (the last may be shorter); each chunk is one chain from +0 (fma for products, add for
// plain sums) in ascending order; the result is the left fold of the chunk partials,
// ((p0 + p1) + p2) + ..., starting from p0 (a sum of at most kSumChunk terms is p0 alone).
//
// Why chunks: one long chain (a weight gradient over thousands of rows, a gate over a thousand
// inputs) rounds worse than nn.LSTM's blocked BLAS sums, and on a GPU a long dependent chain is a
// latency floor per step; 64-term chains can run in parallel and their fold is a few adds. The
// shape never depends on batch size, thread count, grid or tile sizes: kernels only choose where
// and when the chunks are computed.
#pragma once

#include <cstdint>

#include "platform.h"

namespace DETLSTM_MATH_NS {

constexpr int64_t kSumChunk = 64;

// Folds chunk partial `partial`, the one starting at term index `chunk_start`, into `total`: the
// first chunk starts the fold, every later one is added to it.
template <typename T>
DETLSTM_HD T fold_chunk(T total, T partial, int64_t chunk_start) {
  return chunk_start == 0 ? partial : total + partial;
}

// Whether the chain of terms [.., k + 1) ends a chunk: term k is a chunk's last, or the sum's.
DETLSTM_HD bool chunk_ends_after(int64_t k, int64_t n) {
  return (k + 1) % kSumChunk == 0 || k + 1 == n;
}

// The index of the first term of the chunk that holds term k.
DETLSTM_HD int64_t chunk_start(int64_t k) { return k / kSumChunk * kSumChunk; }

// At the end of the chunk holding term k: folds its partial `acc` into `total` and restarts `acc`
// from +0 for the next chunk.
template <typename T>
DETLSTM_HD void fold_and_restart(T& total, T& acc, int64_t k) {
  total = fold_chunk(total, acc, chunk_start(k));
  acc = T(0);
}

// The chunked sum of n terms for scalar code: step(k, acc) returns acc continued with term k (an fma
// for a product, an add for a plain sum). n >= 1.
template <typename T, class Step>
DETLSTM_HD T chunked_sum(int64_t n, Step step) {
  T total = T(0);
  for (int64_t k0 = 0; k0 < n; k0 += kSumChunk) {
    const int64_t k1 = k0 + kSumChunk < n ? k0 + kSumChunk : n;
    T acc = T(0);
    for (int64_t k = k0; k < k1; ++k) acc = step(k, acc);
    total = fold_chunk(total, acc, k0);
  }
  return total;
}

}  // namespace DETLSTM_MATH_NS
