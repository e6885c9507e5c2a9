// Engine: the continuous-batching loop on its own thread (DESIGN.md, Data flow). It owns the
// scheduler, the cache manager, the backend and every request's state; other threads only
// submit requests, cancel them and read their RequestStreams.
//
// Each iteration: collect the step in flight (Backend::Collect), add the attention statistics of
// the requests that asked for them, sample each finished chunk's next token and decide the
// finishes a token settles (stop token, EOS, length); take new requests and cancellations from
// the inbox, expire deadlines; schedule (decodes first, then prefill chunks FCFS under the token
// budget) and launch the next step over the whole batch (Backend::Launch); then, while it runs,
// detokenize, match stop strings and push the sampled tokens' deltas. A request a stop string
// ends while its next step is in flight has that step's result dropped (its cache blocks are
// free, but nothing is scheduled before the step is collected, so no other sequence gets them
// while the device may still write them). A request's tokens, logprobs and attention
// statistics never depend on what else is in the batch, nor on the overlap.
//
// Thread-safety: Submit, Cancel, Stats and the destructor may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/cache/kv_cache_manager.h"
#include "engine/model/tokenizer.h"
#include "engine/sched/request.h"
#include "engine/sched/request_stream.h"
#include "engine/sched/scheduler.h"

namespace gsa {

struct EngineOptions {
  int64_t block_size = 64;
  int64_t max_model_len = 0;          // 0: the model's max_position_embeddings
  int64_t max_cache_tokens = 65536;   // cache size in tokens (rounded down to whole blocks)
  int64_t max_batched_tokens = 2048;
  int64_t max_num_seqs = 64;
  int64_t max_queue = 1024;           // waiting requests beyond this are refused at once
  AttentionMode attention = AttentionMode::kModelDefault;  // for requests that say "default"
  bool enable_prefix_caching = true;
  int32_t max_logprobs = 20;
};

struct GenerateRequest {
  std::string request_id;
  std::vector<int32_t> prompt;         // token ids (the server tokenizes text)
  SamplingParams sampling;
  StoppingParams stopping;
  std::optional<AttentionMode> attention;  // unset: the engine's default
  int32_t prompt_logprobs = -1;        // -1: none; else top-N per prompt position
  // Attention statistics on the final output (GenerationDelta::attention_stats). The whole prompt
  // is then computed (no prefix-cache reuse).
  bool attention_stats = false;
  std::optional<std::chrono::steady_clock::time_point> deadline;
};

// A snapshot of the engine's counters, for metrics.
struct EngineStats {
  int64_t waiting = 0;
  int64_t running = 0;
  int64_t cache_blocks_total = 0;
  int64_t cache_blocks_used = 0;
  int64_t cache_blocks_cached = 0;
  int64_t preemptions = 0;
  int64_t prompt_tokens = 0;         // prompt tokens admitted
  int64_t prefix_cached_tokens = 0;  // of those, served from the prefix cache
  int64_t generated_tokens = 0;
  int64_t steps = 0;
  // Wall time of the engine's steps: all of it (collecting, sampling, scheduling, building and
  // launching the batch, detokenizing, streaming out); the part inside Backend::Launch and
  // Collect; and the host work done while a launched step ran on the device (streaming the
  // previous step's tokens). step - backend - overlapped is the host time the device waits for.
  double step_seconds = 0;
  double backend_seconds = 0;
  double overlapped_seconds = 0;
  int64_t finished[6] = {0, 0, 0, 0, 0, 0};  // by FinishReason
  // GSA selection: per layer, Σ k_t over every sparse query row computed so far, and the rows.
  std::vector<int64_t> selected_k_sum;  // [n_layers]
  int64_t selected_rows = 0;
};

class Engine {
 public:
  // Allocates the cache on the backend and starts the loop thread. The tokenizer may be null
  // (token ids only; stop strings then need one and are refused). With a tokenizer, only ids it
  // has a piece for are ever sampled: a model vocabulary padded past the tokenizer (Qwen's 151936
  // logits for 151643 pieces) has its extra logits treated as -inf (see sampled_vocab_size()).
  static absl::StatusOr<std::unique_ptr<Engine>> Create(std::unique_ptr<Backend> backend,
                                                        std::shared_ptr<const Tokenizer> tokenizer,
                                                        const EngineOptions& options);
  // Stops the loop; requests still in flight finish with kCancelled ("engine shutting down").
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Validates and queues a request. InvalidArgument for bad parameters or a request that can
  // never fit (prompt + max_tokens over max_model_len, or more blocks than the whole cache);
  // ResourceExhausted when the waiting queue is full.
  absl::StatusOr<std::shared_ptr<RequestStream>> Submit(GenerateRequest request);

  // Cancels a request by its stream id; its blocks are freed at the next step and its stream
  // ends with kCancelled. Unknown or finished ids are ignored.
  void Cancel(uint64_t stream_id);

  EngineStats Stats() const;
  const ModelConfig& config() const { return config_; }
  const EngineOptions& options() const { return options_; }
  int64_t max_model_len() const { return options_.max_model_len; }
  int64_t num_cache_blocks() const { return num_blocks_; }
  // The ids [0, sampled_vocab_size()) are the ones sampling and logprobs range over: the model's
  // vocabulary, cut to the tokenizer's pieces when there is a tokenizer with fewer. The logits of
  // the ids past it count as -inf: never sampled, never a logprob alternative, logprob -inf.
  int64_t sampled_vocab_size() const { return sampled_vocab_; }

 private:
  struct CreateTag {};

 public:
  Engine(CreateTag, std::unique_ptr<Backend> backend, std::shared_ptr<const Tokenizer> tokenizer,
         const EngineOptions& options, int64_t num_blocks);

 private:
  struct InFlight;  // a launched step: its plan, the batch, each chunk's request id and first logits row
  // A sampled token not yet streamed, with the finish its id or the length settled (kNone: none).
  struct Sampled {
    uint64_t id = 0;
    int32_t token = 0;
    std::optional<TokenLogprob> logprob;
    FinishReason finish = FinishReason::kNone;
    // With the first token of a request that asked: every prompt position's logprobs (complete
    // once a token is sampled; taken off the request so a preemption cannot clear them).
    std::optional<std::vector<std::optional<TokenLogprob>>> prompt_logprobs;
  };

  void Loop();
  void DrainInbox();
  void ExpireDeadlines();
  // Schedules and launches a step (in_flight_ set), or finishes its requests if Launch fails.
  void LaunchStep(double* backend_s);
  // Collects in_flight_: statistics, prompt logprobs, sampling (tokens appended to the requests,
  // Sampled entries queued in to_stream_). Chunks whose request finished meanwhile are dropped.
  void CollectStep(double* backend_s);
  // Streams to_stream_ (text, stop strings, deltas, finishes).
  void StreamSampled();
  // Sends the final delta, frees the request's blocks and forgets it.
  void Finish(Request* r, FinishReason reason, std::string error = "");
  // Appends a sampled token to the request and returns the finish it settles by itself.
  FinishReason AppendToken(Request* r, int32_t token);
  void StreamToken(Request* r, Sampled s);
  void PublishStats();

  const ModelConfig config_;
  const EngineOptions options_;
  const int64_t num_blocks_;
  std::unique_ptr<Backend> backend_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  std::optional<int32_t> eos_id_;
  int64_t sampled_vocab_ = 0;  // see sampled_vocab_size()

  // Engine-thread state.
  KvCacheManager cache_;
  Scheduler scheduler_;
  Sampler sampler_;
  std::unordered_map<uint64_t, std::unique_ptr<Request>> requests_;
  std::unique_ptr<InFlight> in_flight_;  // the step on the backend, if any
  std::vector<Sampled> to_stream_;       // the last collected step's tokens, not yet streamed

  // Inbox, shared with other threads.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Request>> inbox_;  // guarded by mu_
  std::vector<uint64_t> cancels_;               // guarded by mu_
  bool stop_ = false;                           // guarded by mu_
  int64_t queued_ = 0;                          // guarded by mu_: inbox + waiting
  uint64_t next_id_ = 1;                        // guarded by mu_
  std::mt19937_64 seed_rng_;                    // guarded by mu_: seeds for unseeded requests
  EngineStats stats_;                           // guarded by mu_

  std::thread thread_;  // last: started after everything above exists
};

}  // namespace gsa
