// The CPU block cache (block_cache.h): one per process, behind one mutex.
#include "block_cache.h"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <new>
#include <vector>

#include "huge_pages.h"

#if defined(__linux__) || defined(__APPLE__)
#include <pthread.h>
#include <sys/mman.h>
#define DETLSTM_HAVE_MMAP 1
#else
#define DETLSTM_HAVE_MMAP 0
#endif

namespace detlstm {
namespace cpu {
namespace {

struct Block {
  void* p;
  size_t bytes;
};

struct BlockCache {
  std::mutex mutex;
  std::vector<Block> blocks;  // least recently returned first
  BlockCacheInfo info;
  bool poison = false;
};

void install_fork_handler(BlockCache* c);

BlockCache& cache() {
  // never destroyed: a tensor freed while the process exits may still return a block
  static BlockCache* instance = [] {
    auto* c = new BlockCache;
    c->info.limit_bytes = kDefaultBlockCacheLimit;
    install_fork_handler(c);
    return c;
  }();
  return *instance;
}

// Small blocks come from the system allocator, as they did before the cache (glibc keeps them on
// its heap or maps them as it sees fit; with the cache off nothing changes for them). Huge blocks
// are mappings of their own: 2 MiB aligned, advised, trimmable.
std::align_val_t small_alignment() { return std::align_val_t(64); }

#if DETLSTM_HAVE_MMAP
// fork() waits until no thread is inside the cache (the parent holds its mutex across the fork), so
// the child's copy is whole and its mutex free; the child's blocks are its own (copy-on-write).
BlockCache* forking_cache = nullptr;
void install_fork_handler(BlockCache* c) {
  forking_cache = c;
  pthread_atfork([] { forking_cache->mutex.lock(); }, [] { forking_cache->mutex.unlock(); },
                 [] { forking_cache->mutex.unlock(); });
}

// Over-maps by one huge page, then trims both ends so the block starts on a 2 MiB boundary.
void* map_huge_block(size_t bytes) {
  const size_t span = bytes + kHugePageBytes;
  void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  const uintptr_t base = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t start = (base + kHugePageBytes - 1) & ~(kHugePageBytes - 1);
  if (start > base) munmap(raw, start - base);
  if (base + span > start + bytes) munmap(reinterpret_cast<void*>(start + bytes), base + span - start - bytes);
  advise_huge_pages(reinterpret_cast<void*>(start), bytes);
  return reinterpret_cast<void*>(start);
}
void unmap_huge_block(void* p, size_t bytes) { munmap(p, bytes); }
// The first `bytes` of a larger huge block, the rest unmapped (the cut is on a granule).
void trim_block(Block& b, size_t bytes) {
  munmap(static_cast<char*>(b.p) + bytes, b.bytes - bytes);
  b.bytes = bytes;
}
constexpr bool kTrimmable = true;
#else
void install_fork_handler(BlockCache*) {}
void* map_huge_block(size_t bytes) { return ::operator new(bytes, std::align_val_t(kHugePageBytes)); }
void unmap_huge_block(void* p, size_t) { ::operator delete(p, std::align_val_t(kHugePageBytes)); }
void trim_block(Block&, size_t) {}
constexpr bool kTrimmable = false;
#endif

void* map_block(size_t bytes) {
  return bytes >= kHugePageBytes ? map_huge_block(bytes) : ::operator new(bytes, small_alignment());
}
void unmap_block(void* p, size_t bytes) {
  if (bytes >= kHugePageBytes) return unmap_huge_block(p, bytes);
  ::operator delete(p, small_alignment());
}

// Index of the cached block to serve `bytes` from (exact size, else, for a huge request, the
// smallest larger huge block, to be trimmed), or -1.
int64_t find_block(const std::vector<Block>& blocks, size_t bytes) {
  const bool trim = kTrimmable && bytes >= kHugePageBytes;
  int64_t best = -1;
  for (int64_t i = static_cast<int64_t>(blocks.size()) - 1; i >= 0; --i) {
    const size_t have = blocks[i].bytes;
    if (have == bytes) return i;
    if (trim && have > bytes && (best < 0 || have < blocks[best].bytes)) best = i;
  }
  return best;
}

// Evicts the least recently returned blocks until the cache fits its limit.
void evict_to_limit(BlockCache& c) {
  size_t drop = 0;
  while (drop < c.blocks.size() && c.info.cached_bytes > c.info.limit_bytes) {
    unmap_block(c.blocks[drop].p, c.blocks[drop].bytes);
    c.info.cached_bytes -= static_cast<int64_t>(c.blocks[drop].bytes);
    ++drop;
  }
  c.blocks.erase(c.blocks.begin(), c.blocks.begin() + static_cast<int64_t>(drop));
}

}  // namespace

void* take_block(size_t bytes) {
  BlockCache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    const int64_t i = find_block(c.blocks, bytes);
    if (i >= 0) {
      Block b = c.blocks[i];
      c.blocks.erase(c.blocks.begin() + i);
      c.info.cached_bytes -= static_cast<int64_t>(b.bytes);
      if (b.bytes != bytes) trim_block(b, bytes);
      ++c.info.hits;
      return b.p;
    }
    ++c.info.misses;
  }
  return map_block(bytes);
}

void give_block(void* p, size_t bytes) {
  BlockCache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    if (static_cast<int64_t>(bytes) <= c.info.limit_bytes) {
      // called from deallocators, which must not throw: a block the list cannot take is released
      try {
        c.blocks.push_back({p, bytes});
      } catch (const std::bad_alloc&) {
        unmap_block(p, bytes);
        return;
      }
      if (c.poison) std::memset(p, 0xFF, bytes);
      c.info.cached_bytes += static_cast<int64_t>(bytes);
      evict_to_limit(c);
      return;
    }
  }
  unmap_block(p, bytes);
}

void empty_block_cache() {
  BlockCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  for (const Block& b : c.blocks) unmap_block(b.p, b.bytes);
  c.blocks.clear();
  c.info.cached_bytes = 0;
}

int64_t set_block_cache_limit(int64_t bytes) {
  BlockCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  const int64_t previous = c.info.limit_bytes;
  if (bytes >= 0) {
    c.info.limit_bytes = bytes;
    evict_to_limit(c);
  }
  return previous;
}

BlockCacheInfo block_cache_info() {
  BlockCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  BlockCacheInfo info = c.info;
  info.cached_blocks = static_cast<int64_t>(c.blocks.size());
  return info;
}

void set_block_cache_poison(bool on) {
  BlockCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.poison = on;
}

}  // namespace cpu
}  // namespace detlstm
