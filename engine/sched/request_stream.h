// RequestStream: the per-request channel from the engine thread to whoever consumes the output
// (a gRPC writer, a test). The engine pushes deltas; the consumer pulls them in order. The last
// delta has `finished` set and carries the finish reason, usage and timings (and the attention
// statistics, when asked for).
//
// Thread-safety: Push from the engine thread, Next from one consumer thread; safe together.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "engine/sample/sampler.h"
#include "engine/sched/attention_stats.h"

namespace gsa {

enum class FinishReason { kNone, kLength, kStop, kEos, kCancelled, kError };
const char* ToString(FinishReason r);

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_tokens = 0;  // prompt tokens whose cache blocks were reused (prefix cache)
};

struct Timings {
  double queued_s = 0;        // arrival → first scheduled
  double first_token_s = 0;   // arrival → first generated token
  double total_s = 0;         // arrival → finish
};

struct GenerationDelta {
  std::vector<int32_t> token_ids;       // new tokens in this delta
  std::string text;                     // their text (valid UTF-8; stop strings never included)
  std::vector<TokenLogprob> logprobs;   // one per new token, when logprobs were asked for
  // First delta only, when prompt logprobs were asked for: one entry per prompt position
  // (position 0 has none).
  std::optional<std::vector<std::optional<TokenLogprob>>> prompt_logprobs;

  bool finished = false;
  FinishReason finish_reason = FinishReason::kNone;
  std::string error;                    // why, for kError (and kCancelled: who cancelled)
  Usage usage;
  Timings timings;
  // Final delta only, when the request asked for attention statistics.
  std::optional<AttentionStats> attention_stats;
};

class RequestStream {
 public:
  explicit RequestStream(uint64_t id) : id_(id) {}

  uint64_t id() const { return id_; }

  // Engine side. Pushing after the finished delta is ignored.
  void Push(GenerationDelta delta);

  // The next delta, waiting up to `timeout`; nullopt on timeout or once the finished delta has
  // been returned.
  std::optional<GenerationDelta> Next(std::chrono::milliseconds timeout);
  // True once the finished delta has been pushed.
  bool finished() const;

 private:
  const uint64_t id_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<GenerationDelta> queue_;  // guarded by mu_
  bool finished_pushed_ = false;       // guarded by mu_
  bool finished_taken_ = false;        // guarded by mu_
};

}  // namespace gsa
