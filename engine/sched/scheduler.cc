#include "engine/sched/scheduler.h"

#include <algorithm>

namespace gsa {

Scheduler::Scheduler(const SchedulerOptions& options, KvCacheManager& cache)
    : options_(options), cache_(cache) {}

void Scheduler::AddWaiting(Request* request) {
  request->status = RequestStatus::kWaiting;
  waiting_.push_back(request);
}

void Scheduler::Remove(Request* request) {
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), request), waiting_.end());
  running_.erase(std::remove(running_.begin(), running_.end(), request), running_.end());
  cache_.Free(request->id);
}

void Scheduler::Preempt(Request* r) {
  running_.erase(std::remove(running_.begin(), running_.end(), r), running_.end());
  cache_.Free(r->id);
  r->num_computed = 0;
  r->status = RequestStatus::kWaiting;
  ++r->num_preemptions;
  // Prompt logprobs not yet sent are collected again by the recompute, and attention statistics
  // restart with it (the recompute counts every position once more).
  if (!r->prompt_logprobs_sent) r->prompt_logprob_entries.clear();
  if (r->attention_stats) r->attention_stats->Reset();
  waiting_.push_front(r);
}

SchedulerOutput Scheduler::Schedule() {
  SchedulerOutput out;
  int64_t budget = options_.max_batched_tokens;

  // Running sequences, oldest first. Making room preempts from the newest end.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Request* r = running_[i];
    const int64_t n = std::min(r->num_tokens() - r->num_computed, budget);
    bool fits = true;
    while (!cache_.Reserve(r->id, r->num_computed + n)) {
      Request* victim = running_.back();
      Preempt(victim);
      out.preempted.push_back(victim);
      if (victim == r) {
        fits = false;
        break;
      }
    }
    if (!fits) break;
    out.chunks.push_back({r, r->num_computed, n});
    budget -= n;
    ++i;
  }

  // Waiting requests, FCFS, only when nobody had to be preempted this step.
  while (out.preempted.empty() && !waiting_.empty() && budget > 0 &&
         static_cast<int64_t>(running_.size()) < options_.max_num_seqs) {
    Request* r = waiting_.front();
    const std::vector<int32_t> tokens = r->AllTokens();
    if (r->num_computed == 0 && !cache_.Has(r->id)) {
      // Prompt logprobs need logits at every prompt position, and attention statistics every
      // position's attention, so such requests compute their whole prompt.
      const bool whole_prompt = r->prompt_logprobs >= 0 || r->attention_stats.has_value();
      const int64_t cached = whole_prompt ? 0 : cache_.AcquireCachedPrefix(r->id, tokens, r->cache_salt());
      r->num_computed = cached;
      if (!r->admitted_once) r->num_cached = cached;
    }
    const int64_t n = std::min(r->num_tokens() - r->num_computed, budget);
    if (!cache_.Reserve(r->id, r->num_computed + n)) {
      cache_.Free(r->id);  // give back any prefix blocks taken; try again next step
      r->num_computed = 0;
      break;
    }
    waiting_.pop_front();
    r->status = RequestStatus::kRunning;
    r->admitted_once = true;
    running_.push_back(r);
    out.chunks.push_back({r, r->num_computed, n});
    budget -= n;
  }
  out.num_tokens = options_.max_batched_tokens - budget;
  return out;
}

void Scheduler::Computed(const SchedulerOutput& out) {
  for (const ScheduledChunk& c : out.chunks) {
    Request* r = c.request;
    r->num_computed = c.start + c.num_tokens;
    // Only a step that fills a block registers a hash; skip the token copy otherwise.
    const int64_t bs = cache_.block_size();
    if (r->num_computed / bs != c.start / bs) {
      cache_.Computed(r->id, r->AllTokens(), r->num_computed, r->cache_salt());
    }
  }
}

}  // namespace gsa
