// BlockPool and KvCacheManager: reference counts, the free queue, prefix-cache reuse and
// eviction, and all-or-nothing reservations.
#include "engine/cache/block_pool.h"

#include <gtest/gtest.h>

#include "engine/cache/kv_cache_manager.h"

namespace gsa {
namespace {

TEST(BlockPool, AllocatesUntilEmptyAndRefusesWithoutChangingAnything) {
  BlockPool pool(4);
  auto a = pool.Allocate(3);
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(pool.num_free(), 1);
  EXPECT_FALSE(pool.Allocate(2).has_value());
  EXPECT_EQ(pool.num_free(), 1);
  pool.Release(*a);
  EXPECT_EQ(pool.num_free(), 4);
  EXPECT_EQ(pool.num_used(), 0);
}

TEST(BlockPool, CachedBlocksAreSharedThenEvictedOldestFirst) {
  BlockPool pool(3);
  auto a = *pool.Allocate(2);
  pool.SetHash(a[0], 111);
  pool.SetHash(a[1], 222);
  pool.Release({a[1], a[0]});  // tail first
  EXPECT_EQ(pool.num_free(), 3);
  EXPECT_EQ(pool.num_cached(), 2);
  auto hit = pool.AcquireCached(111);
  ASSERT_TRUE(hit.has_value());
  EXPECT_EQ(*hit, a[0]);
  EXPECT_EQ(pool.ref_count(a[0]), 1);
  auto again = pool.AcquireCached(111);
  EXPECT_EQ(pool.ref_count(a[0]), 2);
  // Allocating two takes the never-used block, then evicts 222 (released before 111).
  auto fresh = *pool.Allocate(2);
  EXPECT_FALSE(pool.AcquireCached(222).has_value());
  EXPECT_EQ(pool.num_cached(), 1);
  pool.Release({*hit, *again});
  pool.Release(fresh);
  EXPECT_EQ(pool.num_free(), 3);
}

TEST(KvCacheManager, ReusesFullComputedBlocksOfTheSamePrefixAndSalt) {
  KvCacheManager m(16, 4, /*enable_prefix_caching=*/true);
  std::vector<int32_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  EXPECT_EQ(m.AcquireCachedPrefix(1, tokens, 0), 0);
  ASSERT_TRUE(m.Reserve(1, 10));
  m.Computed(1, tokens, 10, 0);
  // Same prefix: two full blocks (8 tokens) are reused.
  EXPECT_EQ(m.AcquireCachedPrefix(2, tokens, 0), 8);
  EXPECT_EQ(m.Table(2)[0], m.Table(1)[0]);
  EXPECT_EQ(m.Table(2)[1], m.Table(1)[1]);
  // Another salt (attention mode) or a different first token: nothing shared.
  EXPECT_EQ(m.AcquireCachedPrefix(3, tokens, 1), 0);
  std::vector<int32_t> other = tokens;
  other[0] = 99;
  EXPECT_EQ(m.AcquireCachedPrefix(4, other, 0), 0);
  // A prompt that is exactly the cached blocks still leaves its last token to compute.
  std::vector<int32_t> eight(tokens.begin(), tokens.begin() + 8);
  EXPECT_EQ(m.AcquireCachedPrefix(5, eight, 0), 4);
  for (uint64_t s : {1, 2, 3, 4, 5}) m.Free(s);
  EXPECT_EQ(m.pool().num_used(), 0);
}

TEST(KvCacheManager, ReserveIsAllOrNothing) {
  KvCacheManager m(3, 4, false);
  ASSERT_TRUE(m.Reserve(1, 8));
  EXPECT_FALSE(m.Reserve(2, 8));
  EXPECT_EQ(m.pool().num_free(), 1);
  EXPECT_TRUE(m.Reserve(2, 4));
  m.Free(1);
  m.Free(2);
  EXPECT_EQ(m.pool().num_free(), 3);
}

}  // namespace
}  // namespace gsa
