#include "engine/cache/block_pool.h"

#include <cassert>

namespace gsa {

BlockPool::BlockPool(int64_t num_blocks)
    : ref_(static_cast<size_t>(num_blocks), 0),
      hash_(static_cast<size_t>(num_blocks)),
      queue_pos_(static_cast<size_t>(num_blocks)) {
  for (int32_t b = 0; b < num_blocks; ++b) {
    queue_pos_[static_cast<size_t>(b)] = free_queue_.insert(free_queue_.end(), b);
  }
}

std::optional<std::vector<int32_t>> BlockPool::Allocate(int64_t n) {
  if (n > num_free()) return std::nullopt;
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const int32_t b = free_queue_.front();
    free_queue_.pop_front();
    auto& h = hash_[static_cast<size_t>(b)];
    if (h) {  // evict its cached content
      auto it = by_hash_.find(*h);
      if (it != by_hash_.end() && it->second == b) by_hash_.erase(it);
      h.reset();
    }
    ref_[static_cast<size_t>(b)] = 1;
    out.push_back(b);
  }
  return out;
}

void BlockPool::Release(const std::vector<int32_t>& blocks) {
  for (int32_t b : blocks) {
    int32_t& r = ref_[static_cast<size_t>(b)];
    assert(r > 0);
    if (--r == 0) queue_pos_[static_cast<size_t>(b)] = free_queue_.insert(free_queue_.end(), b);
  }
}

std::optional<int32_t> BlockPool::AcquireCached(uint64_t hash) {
  auto it = by_hash_.find(hash);
  if (it == by_hash_.end()) return std::nullopt;
  const int32_t b = it->second;
  if (ref_[static_cast<size_t>(b)]++ == 0) free_queue_.erase(queue_pos_[static_cast<size_t>(b)]);
  return b;
}

void BlockPool::SetHash(int32_t block, uint64_t hash) {
  auto& h = hash_[static_cast<size_t>(block)];
  if (h) return;
  if (by_hash_.emplace(hash, block).second) h = hash;
}

}  // namespace gsa
