// Large CPU buffers on transparent huge pages, where Linux grants them on request
// (/sys/kernel/mm/transparent_hugepage/enabled = madvise, a common default). Why: the kernels write
// buffers of tens of MiB (a layer's gate pre-activations, their gradients), and fresh memory costs a
// page fault and a page clear per 4 KiB: measured at ~15% of a forward + backward at hidden 512 on
// the project's machine. One fault per 2 MiB removes most of it; the block cache (block_cache.h)
// removes most of the rest by handing the next call the blocks the last one freed.
// Only where the memory lives changes, never a value.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <vector>

#include "block_cache.h"
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace detlstm {
namespace cpu {

// Asks for huge pages under the whole 2 MiB pages inside [p, p + bytes): a hint, its failure is
// harmless. Callers pass memory that is its own mapping (the block cache's huge blocks,
// advise_huge_pages_for_block), so no other allocation's pages are touched.
inline void advise_huge_pages(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + kHugePageBytes - 1) & ~(kHugePageBytes - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kHugePageBytes - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)p, (void)bytes;
#endif
}

// std::allocator below kSmallestCachedBytes; from there on, blocks of the block cache
// (block_cache.h: a block an earlier call returned, else a fresh one; from 2 MiB a mapping on huge
// pages), returned to it on deallocation.
template <typename T>
struct BlockAllocator {
  using value_type = T;
  BlockAllocator() = default;
  template <class U>
  BlockAllocator(const BlockAllocator<U>&) {}

  T* allocate(size_t n) {
    if (n * sizeof(T) >= kSmallestCachedBytes) return static_cast<T*>(take_block(block_bytes(n * sizeof(T))));
    return std::allocator<T>().allocate(n);
  }
  void deallocate(T* p, size_t n) {
    if (n * sizeof(T) >= kSmallestCachedBytes) return give_block(p, block_bytes(n * sizeof(T)));
    std::allocator<T>().deallocate(p, n);
  }
};
template <class T, class U>
bool operator==(const BlockAllocator<T>&, const BlockAllocator<U>&) { return true; }
template <class T, class U>
bool operator!=(const BlockAllocator<T>&, const BlockAllocator<U>&) { return false; }

// The CPU kernels' scratch: a std::vector on BlockAllocator.
template <typename T>
using Buffer = std::vector<T, BlockAllocator<T>>;

// A tensor the C++ call allocated through torch: glibc maps blocks of 32 MiB and more on their own
// (its mmap threshold never rises above that on 64-bit hosts), so only those are advised.
inline void advise_huge_pages_for_block(void* p, size_t bytes) {
  if (bytes >= (size_t(32) << 20)) advise_huge_pages(p, bytes);
}

}  // namespace cpu
}  // namespace detlstm
