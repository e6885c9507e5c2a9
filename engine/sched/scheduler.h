// Scheduler: decides what runs in each engine step (iteration-level batching with chunked
// prefill, DESIGN.md, Scheduling). Running sequences first (decodes, and the rest of partly
// prefilled prompts), then waiting requests FCFS, under a token budget and a cap on running
// sequences. When the cache runs out of blocks the newest running request is preempted: its
// blocks are freed and it goes back to the front of the queue to be recomputed later (its
// output so far is kept, and seeded sampling by step makes the resumed output identical; its
// attention statistics, if asked for, restart). Requests that need every prompt position
// computed (prompt logprobs, attention statistics) never take prefix-cached blocks.
//
// The result is plain data: which requests run which tokens this step. The engine turns it into
// a StepBatch and reports back with Update.
//
// Thread-safety: none; owned by the engine thread.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "engine/cache/kv_cache_manager.h"
#include "engine/sched/request.h"

namespace gsa {

struct SchedulerOptions {
  int64_t max_batched_tokens = 2048;  // tokens per step, all sequences together
  int64_t max_num_seqs = 64;          // running sequences at once
};

struct ScheduledChunk {
  Request* request = nullptr;
  int64_t start = 0;       // first position computed this step
  int64_t num_tokens = 0;  // tokens computed this step
  // True when the chunk reaches the end of the request's known tokens: a token is sampled.
  bool samples() const { return start + num_tokens == request->num_tokens(); }
};

struct SchedulerOutput {
  std::vector<ScheduledChunk> chunks;  // running ones first, in order
  std::vector<Request*> preempted;     // preempted this step (back in the waiting queue)
  int64_t num_tokens = 0;
  bool empty() const { return chunks.empty(); }
};

class Scheduler {
 public:
  Scheduler(const SchedulerOptions& options, KvCacheManager& cache);

  // REQUIRES: the request fits the cache on its own (the engine checks at submit).
  void AddWaiting(Request* request);
  // Takes a request out of whichever queue holds it and frees its blocks.
  void Remove(Request* request);

  SchedulerOutput Schedule();

  // After the step ran: the chunks' tokens are in the cache.
  void Computed(const SchedulerOutput& out);

  size_t num_waiting() const { return waiting_.size(); }
  size_t num_running() const { return running_.size(); }
  bool has_work() const { return !waiting_.empty() || !running_.empty(); }
  const std::deque<Request*>& waiting() const { return waiting_; }
  const std::vector<Request*>& running() const { return running_; }

 private:
  void Preempt(Request* r);

  SchedulerOptions options_;
  KvCacheManager& cache_;
  std::deque<Request*> waiting_;
  std::vector<Request*> running_;
};

}  // namespace gsa
