// BlockPool: owns the cache's physical blocks: reference counts, the free queue, and the
// prefix-cache map from a block's content hash to the block that holds it.
//
// A block is in use (ref count > 0), cached-and-free (ref count 0 but still holding a hashed,
// reusable prefix) or plain free. Free blocks wait in one queue in the order they were released;
// allocation takes from its front, evicting the cached content of a block it takes. A cached
// block that is looked up again leaves the queue and is shared (ref count + 1).
//
// Thread-safety: none; owned by the engine thread.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <unordered_map>
#include <vector>

namespace gsa {

class BlockPool {
 public:
  explicit BlockPool(int64_t num_blocks);

  int64_t num_blocks() const { return static_cast<int64_t>(ref_.size()); }
  // Blocks with ref count 0 (cached ones included: they can be evicted).
  int64_t num_free() const { return static_cast<int64_t>(free_queue_.size()); }
  int64_t num_used() const { return num_blocks() - num_free(); }
  int64_t num_cached() const { return static_cast<int64_t>(by_hash_.size()); }

  // n blocks with ref count 1, or nullopt (nothing changed) when fewer than n are free.
  std::optional<std::vector<int32_t>> Allocate(int64_t n);

  // Drops one reference from each block. Blocks reaching 0 join the back of the free queue in
  // the order given (pass a table tail-first so that a sequence's last blocks are evicted first).
  void Release(const std::vector<int32_t>& blocks);

  // The block caching `hash`, with one more reference, or nullopt.
  std::optional<int32_t> AcquireCached(uint64_t hash);

  // Records that `block` (in use) holds the content identified by `hash`. A hash already cached in
  // another block is left alone (the first copy stays the shared one).
  void SetHash(int32_t block, uint64_t hash);

  int32_t ref_count(int32_t block) const { return ref_[static_cast<size_t>(block)]; }

 private:
  std::vector<int32_t> ref_;                                   // [num_blocks]
  std::vector<std::optional<uint64_t>> hash_;                  // [num_blocks]
  std::list<int32_t> free_queue_;                              // ref count 0, oldest first
  std::vector<std::list<int32_t>::iterator> queue_pos_;        // [num_blocks], valid when free
  std::unordered_map<uint64_t, int32_t> by_hash_;
};

}  // namespace gsa
