// Large CPU blocks kept for the next call instead of being handed back to the kernel. Why: a call's
// big buffers (the gate pre-activations, cell states, outputs, packed weight panels and the
// backward's gradients: tens of MiB at hidden 512, hundreds of KiB at hidden 128) are fresh
// mappings every call, and the kernel clears every page of a fresh mapping on first touch. Measured
// on the project's machine (2-core EPYC): at hidden 512, batch 64, 100 steps, page faults and
// clearing were ~5% of a forward on two threads (the input projection 67 -> 62 ms once its output
// lands in reused memory); at hidden 128, batch 16 (two bidirectional layers), blocks of 0.2-2 MiB,
// which glibc maps and unmaps on every call, cost ~8% of a forward + backward on one thread. A
// training loop asks for the same sizes every step, so a freed block usually fits the next request.
//
// Only where memory comes from changes, never a value: every buffer taken from here is either
// written whole by the kernels before it is read (the outputs) or value-initialised by its
// container (the kernels' scratch vectors), exactly as fresh memory was; the tests poison cached
// blocks (set_block_cache_poison) and compare bits against the uncached run.
//
// Sizes in kBlockGranule steps, two classes: from kSmallestCachedBytes up to 2 MiB, blocks of the
// system allocator; from 2 MiB, mappings of their own, 2 MiB aligned and advised for huge pages
// (huge_pages.h). The cache holds blocks up to a byte limit, evicting the least recently returned
// first; a request takes a cached block of its exact size, else (huge class) the smallest larger
// huge block with its tail unmapped. Its memory stays in the process between calls, like torch's
// CUDA caching allocator: empty_block_cache() releases it, set_block_cache_limit(0) turns it off.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>

namespace detlstm {
namespace cpu {

constexpr int64_t kDefaultBlockCacheLimit = int64_t(1) << 30;  // 1 GiB
constexpr size_t kHugePageBytes = size_t(2) << 20;
// Requests below this stay with the system allocator (glibc serves them from its heap).
constexpr size_t kSmallestCachedBytes = size_t(64) << 10;
constexpr size_t kBlockGranule = size_t(64) << 10;  // small sizes in steps: more requests match

// The size of the block that serves a request of n >= kSmallestCachedBytes bytes: n rounded up to a
// granule (huge blocks too: only their start needs the 2 MiB alignment, and a returned tensor
// should not hold up to 2 MiB it never uses).
inline size_t block_bytes(size_t n) {
  if (n > SIZE_MAX - kBlockGranule) throw std::bad_alloc();
  return (n + kBlockGranule - 1) / kBlockGranule * kBlockGranule;
}

struct BlockCacheInfo {
  int64_t hits = 0, misses = 0;  // requests served from the cache, and from fresh mappings
  int64_t cached_bytes = 0, limit_bytes = 0;
  int64_t cached_blocks = 0;  // filled in by block_cache_info from the list itself
};

// A block of `bytes` (a block_bytes size; 64-byte aligned, and from 2 MiB on a mapping that starts
// on a 2 MiB boundary, advised for huge pages): from the cache where it holds one, else fresh (throws
// std::bad_alloc when the system has none).
void* take_block(size_t bytes);
// Returns a block take_block made; the cache keeps it if the limit allows, else it is unmapped.
void give_block(void* p, size_t bytes);

void empty_block_cache();
// Sets the byte limit (0: keep nothing) and returns the previous one; a negative value only asks.
// Lowering it evicts at once.
int64_t set_block_cache_limit(int64_t bytes);
BlockCacheInfo block_cache_info();
// Tests only: fill every block the cache keeps with 0xFF bytes (a NaN in float and double), so a
// kernel that read memory it had not written would show it in its results.
void set_block_cache_poison(bool on);

}  // namespace cpu
}  // namespace detlstm
