// Request: one generation request as the engine thread sees it: its tokens, parameters,
// progress through the cache and its output stream. Owned by the Engine; the Scheduler holds
// plain pointers to the requests it schedules.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/backend/batch.h"
#include "engine/sample/detokenizer.h"
#include "engine/sample/sampler.h"
#include "engine/sample/sampling_params.h"
#include "engine/sample/stop_matcher.h"
#include "engine/sched/attention_stats.h"
#include "engine/sched/request_stream.h"

namespace gsa {

enum class RequestStatus { kWaiting, kRunning, kFinished };

struct Request {
  using Clock = std::chrono::steady_clock;

  uint64_t id = 0;                 // engine-internal, unique per engine
  std::string request_id;          // the caller's id, for logs and errors
  std::vector<int32_t> prompt;
  std::vector<int32_t> output;     // generated so far
  SamplingParams sampling;
  StoppingParams stopping;
  uint64_t seed = 0;               // sampling.seed, or one the engine drew at submit
  AttentionMode attention = AttentionMode::kModelDefault;
  int32_t prompt_logprobs = -1;    // top-N per prompt position; -1: not requested
  // Set when the request asked for attention statistics: the sums over the positions computed so
  // far (since the last preemption, which resets them: the recompute counts every position again).
  // Such a request never takes its prompt from the prefix cache.
  std::optional<AttentionStatsAccumulator> attention_stats;
  std::optional<Clock::time_point> deadline;

  RequestStatus status = RequestStatus::kWaiting;
  int64_t num_computed = 0;        // tokens of prompt + output whose K/V are in the cache
  int64_t num_cached = 0;          // prompt tokens served from the prefix cache (first admission)
  bool admitted_once = false;
  int64_t num_preemptions = 0;

  // Prompt logprobs collected across prefill chunks; sent with the first output.
  std::vector<std::optional<TokenLogprob>> prompt_logprob_entries;
  bool prompt_logprobs_sent = false;

  std::unique_ptr<IncrementalDetokenizer> detokenizer;  // null without a tokenizer
  std::unique_ptr<StopMatcher> stop_matcher;            // null without stop strings

  Clock::time_point arrival;
  std::optional<Clock::time_point> first_scheduled;
  std::optional<Clock::time_point> first_token;

  std::shared_ptr<RequestStream> stream;

  int64_t num_tokens() const { return static_cast<int64_t>(prompt.size() + output.size()); }
  int32_t TokenAt(int64_t i) const {
    return i < static_cast<int64_t>(prompt.size()) ? prompt[static_cast<size_t>(i)]
                                                   : output[static_cast<size_t>(i) - prompt.size()];
  }
  std::vector<int32_t> AllTokens() const {
    std::vector<int32_t> all = prompt;
    all.insert(all.end(), output.begin(), output.end());
    return all;
  }
  // Salt for prefix-cache hashes: sequences of different attention modes never share blocks.
  uint64_t cache_salt() const { return attention == AttentionMode::kDense ? 1 : 0; }
};

}  // namespace gsa
