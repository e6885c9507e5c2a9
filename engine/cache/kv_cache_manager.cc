#include "engine/cache/kv_cache_manager.h"

namespace gsa {
namespace {

uint64_t Mix(uint64_t x) {  // splitmix64 finaliser
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

KvCacheManager::KvCacheManager(int64_t num_blocks, int64_t block_size, bool enable_prefix_caching)
    : block_size_(block_size), prefix_caching_(enable_prefix_caching), pool_(num_blocks) {}

uint64_t KvCacheManager::BlockHash(uint64_t parent, absl::Span<const int32_t> tokens,
                                   uint64_t salt) const {
  uint64_t h = Mix(parent ^ Mix(salt + 0x51ed27ull));
  for (int32_t t : tokens) h = Mix(h ^ static_cast<uint32_t>(t));
  return h;
}

int64_t KvCacheManager::AcquireCachedPrefix(uint64_t seq, absl::Span<const int32_t> tokens,
                                            uint64_t salt) {
  SeqBlocks& s = seqs_[seq];
  if (!prefix_caching_ || !s.blocks.empty()) return 0;
  const int64_t max_blocks = (static_cast<int64_t>(tokens.size()) - 1) / block_size_;
  uint64_t parent = 0;
  for (int64_t b = 0; b < max_blocks; ++b) {
    const uint64_t h = BlockHash(parent, tokens.subspan(static_cast<size_t>(b * block_size_),
                                                        static_cast<size_t>(block_size_)),
                                 salt);
    auto block = pool_.AcquireCached(h);
    if (!block) break;
    s.blocks.push_back(*block);
    s.hashes.push_back(h);
    parent = h;
  }
  return static_cast<int64_t>(s.blocks.size()) * block_size_;
}

bool KvCacheManager::Reserve(uint64_t seq, int64_t total_tokens) {
  SeqBlocks& s = seqs_[seq];
  const int64_t need = BlocksFor(total_tokens) - static_cast<int64_t>(s.blocks.size());
  if (need <= 0) return true;
  auto fresh = pool_.Allocate(need);
  if (!fresh) return false;
  s.blocks.insert(s.blocks.end(), fresh->begin(), fresh->end());
  return true;
}

void KvCacheManager::Computed(uint64_t seq, absl::Span<const int32_t> tokens, int64_t computed,
                              uint64_t salt) {
  if (!prefix_caching_) return;
  SeqBlocks& s = seqs_.at(seq);
  const int64_t full = computed / block_size_;
  while (static_cast<int64_t>(s.hashes.size()) < full) {
    const int64_t b = static_cast<int64_t>(s.hashes.size());
    const uint64_t parent = b == 0 ? 0 : s.hashes.back();
    const uint64_t h = BlockHash(parent, tokens.subspan(static_cast<size_t>(b * block_size_),
                                                        static_cast<size_t>(block_size_)),
                                 salt);
    pool_.SetHash(s.blocks[static_cast<size_t>(b)], h);
    s.hashes.push_back(h);
  }
}

void KvCacheManager::Free(uint64_t seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  std::vector<int32_t> tail_first(it->second.blocks.rbegin(), it->second.blocks.rend());
  pool_.Release(tail_first);
  seqs_.erase(it);
}

}  // namespace gsa
