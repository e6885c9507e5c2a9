// Scheduler: decodes first, prefill chunks FCFS under the token budget and the sequence cap;
// preemption of the newest running request when blocks run out; requests asking for attention
// statistics compute their whole prompt and restart their statistics when preempted.
#include "engine/sched/scheduler.h"

#include <gtest/gtest.h>

namespace gsa {
namespace {

std::unique_ptr<Request> MakeRequest(uint64_t id, int prompt_len) {
  auto r = std::make_unique<Request>();
  r->id = id;
  r->prompt.assign(static_cast<size_t>(prompt_len), 5);
  for (int i = 0; i < prompt_len; ++i) r->prompt[static_cast<size_t>(i)] = static_cast<int32_t>(id * 1000 + i);
  return r;
}

// Pretends the step ran and sampled one token for every chunk that reached its end.
void Advance(Scheduler& s, const SchedulerOutput& out) {
  s.Computed(out);
  for (const ScheduledChunk& c : out.chunks) {
    if (c.start + c.num_tokens == static_cast<int64_t>(c.request->prompt.size() + c.request->output.size())) {
      c.request->output.push_back(1);
    }
  }
}

TEST(Scheduler, ChunksPrefillUnderTheTokenBudgetAndPutsDecodesFirst) {
  KvCacheManager cache(64, 4, false);
  Scheduler s({/*max_batched_tokens=*/10, /*max_num_seqs=*/8}, cache);
  auto a = MakeRequest(1, 7);
  auto b = MakeRequest(2, 12);
  s.AddWaiting(a.get());
  s.AddWaiting(b.get());
  SchedulerOutput o1 = s.Schedule();
  ASSERT_EQ(o1.chunks.size(), 2u);
  EXPECT_EQ(o1.chunks[0].request, a.get());
  EXPECT_EQ(o1.chunks[0].num_tokens, 7);
  EXPECT_TRUE(o1.chunks[0].samples());
  EXPECT_EQ(o1.chunks[1].num_tokens, 3);  // the budget's remainder
  EXPECT_FALSE(o1.chunks[1].samples());
  Advance(s, o1);
  SchedulerOutput o2 = s.Schedule();
  ASSERT_EQ(o2.chunks.size(), 2u);
  EXPECT_EQ(o2.chunks[0].request, a.get());  // decode first
  EXPECT_EQ(o2.chunks[0].num_tokens, 1);
  EXPECT_EQ(o2.chunks[1].start, 3);
  EXPECT_EQ(o2.chunks[1].num_tokens, 9);
  EXPECT_EQ(o2.num_tokens, 10);
}

TEST(Scheduler, RespectsTheRunningSequenceCap) {
  KvCacheManager cache(64, 4, false);
  Scheduler s({100, 2}, cache);
  std::vector<std::unique_ptr<Request>> rs;
  for (int i = 0; i < 4; ++i) {
    rs.push_back(MakeRequest(static_cast<uint64_t>(i + 1), 3));
    s.AddWaiting(rs.back().get());
  }
  EXPECT_EQ(s.Schedule().chunks.size(), 2u);
  EXPECT_EQ(s.num_running(), 2u);
  EXPECT_EQ(s.num_waiting(), 2u);
}

TEST(Scheduler, PreemptsTheNewestRunningRequestWhenBlocksRunOut) {
  KvCacheManager cache(4, 4, false);  // 16 tokens in all
  Scheduler s({100, 8}, cache);
  auto a = MakeRequest(1, 7);  // 2 blocks
  auto b = MakeRequest(2, 8);  // 2 blocks
  s.AddWaiting(a.get());
  s.AddWaiting(b.get());
  SchedulerOutput o1 = s.Schedule();
  ASSERT_EQ(o1.chunks.size(), 2u);
  Advance(s, o1);
  // a: 8 tokens (fits its 2 blocks); b: 9 tokens needs a third block: none free → b (newest)
  // preempts itself.
  SchedulerOutput o2 = s.Schedule();
  ASSERT_EQ(o2.chunks.size(), 1u);
  EXPECT_EQ(o2.chunks[0].request, a.get());
  ASSERT_EQ(o2.preempted.size(), 1u);
  EXPECT_EQ(o2.preempted[0], b.get());
  EXPECT_EQ(b->num_computed, 0);
  EXPECT_EQ(b->output.size(), 1u);  // its output is kept for the recompute
  EXPECT_EQ(s.waiting().front(), b.get());
  Advance(s, o2);
  // a grows to 9 tokens: it takes the blocks b gave back.
  SchedulerOutput o3 = s.Schedule();
  EXPECT_EQ(o3.chunks[0].request, a.get());
  s.Remove(a.get());
  s.Remove(b.get());
  EXPECT_EQ(cache.pool().num_used(), 0);
}

TEST(Scheduler, AttentionStatsRequestsSkipThePrefixCacheAndRestartWhenPreempted) {
  KvCacheManager cache(6, 4, /*enable_prefix_caching=*/true);
  Scheduler s({100, 8}, cache);
  ModelConfig config;
  config.n_layers = 1;
  auto first = MakeRequest(1, 9);
  s.AddWaiting(first.get());
  Advance(s, s.Schedule());  // its two full blocks are now in the prefix cache
  s.Remove(first.get());

  auto plain = MakeRequest(2, 9);
  plain->prompt = first->prompt;
  auto asking = MakeRequest(3, 9);
  asking->prompt = first->prompt;
  asking->attention_stats.emplace(config);
  s.AddWaiting(asking.get());
  s.AddWaiting(plain.get());
  SchedulerOutput o = s.Schedule();
  ASSERT_EQ(o.chunks.size(), 2u);
  EXPECT_EQ(o.chunks[0].request, asking.get());
  EXPECT_EQ(o.chunks[0].start, 0) << "a request asking for attention statistics computes its whole prompt";
  EXPECT_EQ(asking->num_cached, 0);
  EXPECT_EQ(o.chunks[1].start, 8) << "the others still reuse the cached prefix";
  EXPECT_EQ(plain->num_cached, 8);
  Advance(s, o);

  s.Remove(asking.get());
  s.Remove(plain.get());
  EXPECT_EQ(cache.pool().num_used(), 0);

  // Preemption (as in PreemptsTheNewestRunningRequestWhenBlocksRunOut): the statistics gathered so
  // far are dropped, since the recompute counts every position again.
  KvCacheManager small(4, 4, false);  // 16 tokens in all
  Scheduler s2({100, 8}, small);
  auto a = MakeRequest(4, 7);
  auto b = MakeRequest(5, 8);
  b->attention_stats.emplace(config);
  s2.AddWaiting(a.get());
  s2.AddWaiting(b.get());
  Advance(s2, s2.Schedule());
  const AttentionRowStats row[1] = {{1, 1.0, 0.0, 0.0}};
  for (int64_t t = 0; t < 8; ++t) b->attention_stats->Add(t, row);  // what the engine adds
  SchedulerOutput o2 = s2.Schedule();
  ASSERT_EQ(o2.preempted.size(), 1u);
  EXPECT_EQ(o2.preempted[0], b.get());
  EXPECT_EQ(b->attention_stats->positions(), 0);
  s2.Remove(a.get());
  s2.Remove(b.get());
}

}  // namespace
}  // namespace gsa
