// KvCacheManager: each running sequence's block table over a BlockPool, and prefix caching of
// full blocks.
//
// A full block is identified by a hash chained over every token before it and its own tokens,
// salted with the attention mode (in a dense sequence later layers hold different keys than in a
// sparse one, so the two must never share blocks). When a block is full and computed its hash is
// registered; a later prompt with the same prefix takes those blocks instead of recomputing them.
// 64-bit hashes from a strong mixer: a collision would need ~2^32 distinct cached blocks.
//
// Thread-safety: none; owned by the engine thread.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "absl/types/span.h"
#include "engine/cache/block_pool.h"

namespace gsa {

class KvCacheManager {
 public:
  KvCacheManager(int64_t num_blocks, int64_t block_size, bool enable_prefix_caching);

  int64_t block_size() const { return block_size_; }
  const BlockPool& pool() const { return pool_; }

  // Blocks needed to hold `tokens` tokens.
  int64_t BlocksFor(int64_t tokens) const { return (tokens + block_size_ - 1) / block_size_; }

  // For a sequence with no blocks yet: takes the longest run of cached full blocks matching the
  // start of `tokens` (at most tokens.size() - 1 tokens, so at least one token is computed and
  // gives logits). Returns the number of tokens covered (a multiple of block_size).
  int64_t AcquireCachedPrefix(uint64_t seq, absl::Span<const int32_t> tokens, uint64_t salt);

  // Extends the sequence's table to cover `total_tokens`. False, with nothing changed, when the
  // pool has too few free blocks.
  bool Reserve(uint64_t seq, int64_t total_tokens);

  // Tells the manager that tokens[0, computed) of the sequence are in the cache; registers the
  // hashes of blocks that became full.
  void Computed(uint64_t seq, absl::Span<const int32_t> tokens, int64_t computed, uint64_t salt);

  // Releases every block of the sequence (tail first, so its last blocks are evicted first).
  void Free(uint64_t seq);

  // REQUIRES: the sequence has a table (Reserve or AcquireCachedPrefix was called).
  const std::vector<int32_t>& Table(uint64_t seq) const { return seqs_.at(seq).blocks; }
  bool Has(uint64_t seq) const { return seqs_.count(seq) != 0; }

 private:
  struct SeqBlocks {
    std::vector<int32_t> blocks;
    std::vector<uint64_t> hashes;  // chained hashes of the full, computed blocks so far
  };
  uint64_t BlockHash(uint64_t parent, absl::Span<const int32_t> tokens, uint64_t salt) const;

  int64_t block_size_;
  bool prefix_caching_;
  BlockPool pool_;
  std::unordered_map<uint64_t, SeqBlocks> seqs_;
};

}  // namespace gsa
