#include "engine/engine.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "engine/util/status_macros.h"

namespace gsa {
namespace {

double Seconds(Request::Clock::time_point from, Request::Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

// Checks that the backend returned attention statistics for exactly the rows of the sequences
// that asked, every layer of each: InternalError naming the first discrepancy.
absl::Status CheckAttentionStats(const StepBatch& batch, const StepOutput& out, int64_t n_layers) {
  std::vector<int32_t> want;
  for (const SequenceInBatch& s : batch.seqs) {
    if (!s.attention_stats) continue;
    for (int32_t j = 0; j < s.num_query; ++j) want.push_back(s.query_start + j);
  }
  if (out.stats_rows.size() != want.size()) {
    return absl::InternalError(absl::StrCat("the backend returned attention statistics for ", out.stats_rows.size(),
                                            " rows; the step asked for ", want.size()));
  }
  for (size_t i = 0; i < want.size(); ++i) {
    if (out.stats_rows[i] != want[i]) {
      return absl::InternalError(absl::StrCat("the backend's attention statistics entry ", i, " is for row ",
                                              out.stats_rows[i], "; expected row ", want[i]));
    }
  }
  if (out.attention_stats.size() != want.size() * static_cast<size_t>(n_layers)) {
    return absl::InternalError(absl::StrCat("the backend returned ", out.attention_stats.size(),
                                            " attention statistics entries; expected ", want.size(), " rows x ",
                                            n_layers, " layers"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(std::unique_ptr<Backend> backend,
                                                       std::shared_ptr<const Tokenizer> tokenizer,
                                                       const EngineOptions& options) {
  if (backend == nullptr) return absl::InvalidArgumentError("Engine needs a backend");
  const ModelConfig& c = backend->config();
  EngineOptions o = options;
  if (o.block_size <= 0 || o.block_size > 4096) {
    return absl::InvalidArgumentError(absl::StrCat("block_size ", o.block_size, " must be in [1, 4096]"));
  }
  if (o.max_model_len == 0) o.max_model_len = c.max_position_embeddings;
  if (o.max_model_len < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_model_len ", o.max_model_len, " must be positive"));
  }
  if (o.max_batched_tokens < 1 || o.max_num_seqs < 1 || o.max_queue < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_batched_tokens (", o.max_batched_tokens, ") and max_num_seqs (", o.max_num_seqs,
        ") must be positive and max_queue (", o.max_queue, ") non-negative"));
  }
  const int64_t num_blocks = o.max_cache_tokens / o.block_size;
  if (num_blocks < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_cache_tokens ", o.max_cache_tokens,
                                                   " holds no block of ", o.block_size, " tokens"));
  }
  GSA_RETURN_IF_ERROR(backend->AllocateCache(num_blocks, o.block_size));
  return std::make_unique<Engine>(CreateTag{}, std::move(backend), std::move(tokenizer), o, num_blocks);
}

Engine::Engine(CreateTag, std::unique_ptr<Backend> backend, std::shared_ptr<const Tokenizer> tokenizer,
               const EngineOptions& options, int64_t num_blocks)
    : config_(backend->config()),
      options_(options),
      num_blocks_(num_blocks),
      backend_(std::move(backend)),
      tokenizer_(std::move(tokenizer)),
      cache_(num_blocks, options.block_size, options.enable_prefix_caching),
      scheduler_(SchedulerOptions{options.max_batched_tokens, options.max_num_seqs}, cache_),
      seed_rng_(std::random_device{}()) {
  if (config_.eos_token_id) {
    eos_id_ = static_cast<int32_t>(*config_.eos_token_id);
  } else if (tokenizer_ && tokenizer_->eos_id()) {
    eos_id_ = tokenizer_->eos_id();
  }
  // Padded vocabularies: the ids past the tokenizer have no text, so the detokenizer could not
  // stream them; cutting them out of sampling keeps every sampled id decodable.
  sampled_vocab_ = config_.vocab_size;
  if (tokenizer_) sampled_vocab_ = std::min<int64_t>(sampled_vocab_, tokenizer_->vocab_size());
  stats_.cache_blocks_total = num_blocks;
  thread_ = std::thread([this] { Loop(); });
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

absl::StatusOr<std::shared_ptr<RequestStream>> Engine::Submit(GenerateRequest g) {
  if (g.prompt.empty()) {
    return absl::InvalidArgumentError("prompt is empty; send at least one token");
  }
  for (size_t i = 0; i < g.prompt.size(); ++i) {
    if (g.prompt[i] < 0 || g.prompt[i] >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("prompt token ", i, " has id ", g.prompt[i],
                                                     ", outside the vocabulary [0, ",
                                                     config_.vocab_size, ")"));
    }
  }
  GSA_RETURN_IF_ERROR(ValidateSamplingParams(g.sampling, options_.max_logprobs));
  GSA_RETURN_IF_ERROR(ValidateStoppingParams(g.stopping, config_.vocab_size));
  if (g.prompt_logprobs > options_.max_logprobs || g.prompt_logprobs < -1) {
    return absl::InvalidArgumentError(absl::StrCat("prompt_logprobs ", g.prompt_logprobs,
                                                   " is outside [0, ", options_.max_logprobs, "]"));
  }
  if (!g.stopping.stop.empty() && tokenizer_ == nullptr) {
    return absl::InvalidArgumentError(
        "stop strings need a tokenizer, and this model has none; use stop_token_ids instead");
  }
  const int64_t total = static_cast<int64_t>(g.prompt.size()) + g.stopping.max_tokens;
  if (total > options_.max_model_len) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt (", g.prompt.size(), " tokens) + max_tokens (", g.stopping.max_tokens, ") = ", total,
        " exceeds max_model_len ", options_.max_model_len, "; shorten the prompt or lower max_tokens"));
  }
  if (cache_.BlocksFor(total) > num_blocks_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt + max_tokens = ", total, " tokens needs ", cache_.BlocksFor(total),
        " cache blocks but the whole cache has ", num_blocks_, " (", num_blocks_ * options_.block_size,
        " tokens); lower max_tokens or start the server with a larger cache"));
  }

  auto r = std::make_unique<Request>();
  r->request_id = std::move(g.request_id);
  r->prompt = std::move(g.prompt);
  r->sampling = g.sampling;
  r->stopping = std::move(g.stopping);
  r->attention = g.attention.value_or(options_.attention);
  r->prompt_logprobs = g.prompt_logprobs;
  if (g.attention_stats) r->attention_stats.emplace(config_);
  r->deadline = g.deadline;
  r->arrival = Request::Clock::now();
  if (tokenizer_) {
    // Prompt ids past the tokenizer (a padded vocabulary) are valid model input with no text:
    // the detokenizer's context leaves them out.
    std::vector<int32_t> text_prompt;
    text_prompt.reserve(r->prompt.size());
    for (const int32_t id : r->prompt) {
      if (id < sampled_vocab_) text_prompt.push_back(id);
    }
    r->detokenizer = std::make_unique<IncrementalDetokenizer>(*tokenizer_, std::move(text_prompt));
  }
  if (!r->stopping.stop.empty()) r->stop_matcher = std::make_unique<StopMatcher>(r->stopping.stop);

  std::shared_ptr<RequestStream> stream;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) return absl::UnavailableError("engine is shutting down");
    if (queued_ >= options_.max_queue) {
      return absl::ResourceExhaustedError(absl::StrCat("the waiting queue is full (", options_.max_queue,
                                                       " requests); retry later"));
    }
    r->id = next_id_++;
    r->seed = g.sampling.seed.value_or(seed_rng_());
    stream = std::make_shared<RequestStream>(r->id);
    r->stream = stream;
    ++queued_;
    inbox_.push_back(std::move(r));
  }
  cv_.notify_all();
  return stream;
}

void Engine::Cancel(uint64_t stream_id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancels_.push_back(stream_id);
  }
  cv_.notify_all();
}

EngineStats Engine::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

// A launched step: what CollectStep needs to take its output apart.
struct Engine::InFlight {
  SchedulerOutput plan;
  std::vector<uint64_t> ids;  // chunk i's request id: the request may finish while the step runs
  std::vector<int32_t> first_logits;  // per chunk: index into logits_rows of its first logits row
  StepBatch batch;
};

void Engine::Loop() {
  using Clock = std::chrono::steady_clock;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (!scheduler_.has_work() && in_flight_ == nullptr && to_stream_.empty()) {
        cv_.wait(lock, [&] { return stop_ || !inbox_.empty() || !cancels_.empty(); });
      }
      if (stop_) break;
    }
    const auto start = Clock::now();
    double backend_s = 0;
    const bool collected = in_flight_ != nullptr;
    if (collected) CollectStep(&backend_s);
    DrainInbox();
    ExpireDeadlines();
    if (scheduler_.has_work()) LaunchStep(&backend_s);
    // While the launched step runs: the collected step's tokens out to their streams.
    const auto overlap_start = Clock::now();
    StreamSampled();
    PublishStats();
    const auto end = Clock::now();
    if (collected || in_flight_ != nullptr) {
      std::lock_guard<std::mutex> lock(mu_);
      stats_.step_seconds += std::chrono::duration<double>(end - start).count();
      stats_.backend_seconds += backend_s;
      if (in_flight_ != nullptr) stats_.overlapped_seconds += std::chrono::duration<double>(end - overlap_start).count();
    }
  }
  // Shutting down: wait for the step in flight (its buffers and cache slots), stream what was
  // sampled, then end every stream so no consumer waits forever.
  if (in_flight_ != nullptr) {
    (void)backend_->Collect();
    in_flight_.reset();
  }
  StreamSampled();
  DrainInbox();
  std::vector<Request*> all;
  for (auto& [id, r] : requests_) all.push_back(r.get());
  for (Request* r : all) Finish(r, FinishReason::kCancelled, "engine shutting down");
  PublishStats();
}

void Engine::DrainInbox() {
  std::deque<std::unique_ptr<Request>> fresh;
  std::vector<uint64_t> cancels;
  {
    std::lock_guard<std::mutex> lock(mu_);
    fresh.swap(inbox_);
    cancels.swap(cancels_);
  }
  for (auto& r : fresh) {
    Request* p = r.get();
    requests_[p->id] = std::move(r);
    scheduler_.AddWaiting(p);
  }
  if (cancels.empty()) return;
  StreamSampled();  // a cancelled request still gets the tokens it was sampled before the cancel
  for (uint64_t id : cancels) {
    auto it = requests_.find(id);
    if (it != requests_.end()) Finish(it->second.get(), FinishReason::kCancelled, "cancelled by the client");
  }
}

void Engine::ExpireDeadlines() {
  const auto now = Request::Clock::now();
  std::vector<uint64_t> expired;
  for (auto& [id, r] : requests_) {
    if (r->deadline && *r->deadline <= now) expired.push_back(id);
  }
  if (expired.empty()) return;
  StreamSampled();  // may finish some of them first (a stop, the length)
  for (uint64_t id : expired) {
    auto it = requests_.find(id);
    if (it != requests_.end()) Finish(it->second.get(), FinishReason::kCancelled, "deadline exceeded");
  }
}

void Engine::LaunchStep(double* backend_s) {
  SchedulerOutput plan = scheduler_.Schedule();
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.preemptions += static_cast<int64_t>(plan.preempted.size());
  }
  if (plan.empty()) return;

  // Build the backend's batch: new tokens of each chunk, block tables, and which rows need
  // logits (the last row of a chunk that samples; every prompt row when prompt logprobs were asked).
  auto f = std::make_unique<InFlight>();
  StepBatch& batch = f->batch;
  f->first_logits.resize(plan.chunks.size());
  f->ids.reserve(plan.chunks.size());
  for (size_t i = 0; i < plan.chunks.size(); ++i) {
    const ScheduledChunk& c = plan.chunks[i];
    Request* r = c.request;
    f->ids.push_back(r->id);
    if (!r->first_scheduled) r->first_scheduled = Request::Clock::now();
    SequenceInBatch s;
    s.query_start = static_cast<int32_t>(batch.token_ids.size());
    s.num_query = static_cast<int32_t>(c.num_tokens);
    s.context_len = static_cast<int32_t>(c.start + c.num_tokens);
    s.block_table = cache_.Table(r->id);
    s.attention = r->attention;
    s.attention_stats = r->attention_stats.has_value();
    const bool want_prompt = r->prompt_logprobs >= 0 && !r->prompt_logprobs_sent;
    f->first_logits[i] = static_cast<int32_t>(batch.logits_rows.size());
    for (int64_t j = 0; j < c.num_tokens; ++j) {
      const int64_t pos = c.start + j;
      const bool last = j + 1 == c.num_tokens;
      const bool prompt_row = want_prompt && pos + 1 < static_cast<int64_t>(r->prompt.size());
      if (prompt_row || (last && c.samples())) {
        batch.logits_rows.push_back(s.query_start + static_cast<int32_t>(j));
      }
      batch.token_ids.push_back(r->TokenAt(pos));
    }
    batch.seqs.push_back(std::move(s));
  }

  const auto backend_start = std::chrono::steady_clock::now();
  const absl::Status launched = backend_->Launch(batch);
  *backend_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - backend_start).count();
  if (!launched.ok()) {
    // The step failed as a whole: its requests fail (after the tokens they were already sampled,
    // which may finish some), the others are untouched.
    StreamSampled();
    const std::string why = absl::StrCat("backend step failed: ", launched.ToString());
    for (const uint64_t id : f->ids) {
      auto it = requests_.find(id);
      if (it != requests_.end()) Finish(it->second.get(), FinishReason::kError, why);
    }
    return;
  }
  f->plan = std::move(plan);
  in_flight_ = std::move(f);
}

void Engine::CollectStep(double* backend_s) {
  std::unique_ptr<InFlight> f = std::move(in_flight_);
  const auto backend_start = std::chrono::steady_clock::now();
  absl::StatusOr<StepOutput> out = backend_->Collect();
  *backend_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - backend_start).count();
  const StepBatch& batch = f->batch;
  std::vector<ScheduledChunk>& chunks = f->plan.chunks;

  // Chunks whose request finished while the step ran (a stop string, or a detokenizer error, met
  // while streaming; cancels and deadlines apply only between Collect and Launch): their results
  // are dropped.
  std::vector<bool> alive(chunks.size());
  for (size_t i = 0; i < chunks.size(); ++i) alive[i] = requests_.count(f->ids[i]) != 0;
  if (!out.ok()) {
    // The step failed as a whole: its requests fail, the others are untouched.
    const std::string why = absl::StrCat("backend step failed: ", out.status().ToString());
    for (size_t i = 0; i < chunks.size(); ++i) {
      if (alive[i]) Finish(chunks[i].request, FinishReason::kError, why);
    }
    return;
  }
  SchedulerOutput computed;
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (alive[i]) computed.chunks.push_back(chunks[i]);
  }
  scheduler_.Computed(computed);
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.steps;
    stats_.selected_k_sum.resize(out->selected_sum.size(), 0);
    for (size_t l = 0; l < out->selected_sum.size(); ++l) stats_.selected_k_sum[l] += out->selected_sum[l];
    stats_.selected_rows += out->selected_rows;
  }

  // Attention statistics: every position computed this step, in order, into its request's sums
  // (stats_rows are the asking sequences' rows, ascending, so they come chunk by chunk).
  if (!out->stats_rows.empty() || std::any_of(batch.seqs.begin(), batch.seqs.end(),
                                              [](const SequenceInBatch& s) { return s.attention_stats; })) {
    const absl::Status ok = CheckAttentionStats(batch, *out, config_.n_layers);
    size_t next = 0;
    for (size_t i = 0; i < chunks.size(); ++i) {
      if (!batch.seqs[i].attention_stats) continue;
      if (!alive[i] || !ok.ok()) {
        next += static_cast<size_t>(chunks[i].num_tokens);  // dropped with its request, or unusable
        continue;
      }
      for (int64_t j = 0; j < chunks[i].num_tokens; ++j, ++next) {
        chunks[i].request->attention_stats->Add(
            chunks[i].start + j, out->attention_stats.data() + next * static_cast<size_t>(config_.n_layers));
      }
    }
    if (!ok.ok()) {
      for (size_t i = 0; i < chunks.size(); ++i) {
        if (alive[i] && batch.seqs[i].attention_stats) {
          Finish(chunks[i].request, FinishReason::kError, std::string(ok.message()));
          alive[i] = false;
        }
      }
    }
  }

  const int64_t V = out->vocab_size;  // the row stride; sampling reads the first sampled_vocab_
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (!alive[i]) continue;
    const ScheduledChunk& c = chunks[i];
    Request* r = c.request;
    int32_t li = f->first_logits[i];
    // Prompt logprobs: logits at position p score the prompt token at p + 1.
    if (r->prompt_logprobs >= 0 && !r->prompt_logprobs_sent) {
      if (r->prompt_logprob_entries.empty()) r->prompt_logprob_entries.emplace_back();  // position 0
      for (int64_t j = 0; j < c.num_tokens; ++j) {
        const int64_t pos = c.start + j;
        if (pos + 1 >= static_cast<int64_t>(r->prompt.size())) break;
        const float* row = out->logits.data() + static_cast<int64_t>(li++) * V;
        r->prompt_logprob_entries.push_back(
            RawLogprobs(row, sampled_vocab_, r->prompt[static_cast<size_t>(pos + 1)], r->prompt_logprobs));
      }
    }
    if (!c.samples()) continue;
    const float* row = out->logits.data() + static_cast<int64_t>(li) * V;
    const uint64_t step = r->output.size();
    SampleResult s = sampler_.Sample(row, sampled_vocab_, r->sampling, r->seed, r->prompt, r->output, step);
    Sampled e;
    e.id = r->id;
    e.token = s.token;
    e.logprob = std::move(s.logprob);
    e.finish = AppendToken(r, s.token);
    if (r->prompt_logprobs >= 0 && !r->prompt_logprobs_sent) {
      e.prompt_logprobs = std::move(r->prompt_logprob_entries);
      r->prompt_logprob_entries.clear();
      r->prompt_logprobs_sent = true;
    }
    // Settled now, so the next step is scheduled without it; its delta still streams first.
    if (e.finish != FinishReason::kNone) scheduler_.Remove(r);
    to_stream_.push_back(std::move(e));
  }
}

FinishReason Engine::AppendToken(Request* r, int32_t token) {
  if (!r->first_token) r->first_token = Request::Clock::now();
  r->output.push_back(token);
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.generated_tokens;
  }
  const std::vector<int32_t>& stops = r->stopping.stop_token_ids;
  if (std::find(stops.begin(), stops.end(), token) != stops.end()) return FinishReason::kStop;
  if (eos_id_ && token == *eos_id_ && !r->stopping.ignore_eos) return FinishReason::kEos;
  if (static_cast<int64_t>(r->output.size()) >= r->stopping.max_tokens || r->num_tokens() >= options_.max_model_len) {
    return FinishReason::kLength;  // unless a stop string completes with this token (StreamToken)
  }
  return FinishReason::kNone;
}

void Engine::StreamSampled() {
  std::vector<Sampled> items;
  items.swap(to_stream_);
  for (Sampled& e : items) {
    auto it = requests_.find(e.id);
    if (it == requests_.end()) continue;  // finished since it was sampled
    StreamToken(it->second.get(), std::move(e));
  }
}

void Engine::StreamToken(Request* r, Sampled e) {
  GenerationDelta d;
  d.token_ids.push_back(e.token);
  if (e.logprob) d.logprobs.push_back(std::move(*e.logprob));
  d.prompt_logprobs = std::move(e.prompt_logprobs);

  FinishReason reason = e.finish;
  bool stopped_by_string = false;
  const bool text_token = reason == FinishReason::kNone || reason == FinishReason::kLength;
  if (text_token && r->detokenizer) {
    // Stop and EOS tokens are not text; everything else streams through the stop matcher.
    absl::StatusOr<std::string> text = r->detokenizer->Push(e.token);
    if (!text.ok()) {
      r->stream->Push(std::move(d));
      Finish(r, FinishReason::kError, std::string(text.status().message()));
      return;
    }
    if (r->stop_matcher) {
      StopMatcher::Result m = r->stop_matcher->Push(*text);
      d.text = std::move(m.emit);
      stopped_by_string = m.stopped;
      if (m.stopped) reason = FinishReason::kStop;
    } else {
      d.text = std::move(*text);
    }
  }
  if (reason != FinishReason::kNone && !stopped_by_string && r->detokenizer) {
    // Nothing more will come: release what the detokenizer and the stop matcher held back
    // (a stop string can still complete inside the detokenizer's held bytes).
    std::string tail = r->detokenizer->Flush();
    if (r->stop_matcher) {
      StopMatcher::Result m = r->stop_matcher->Push(tail);
      d.text += m.emit;
      if (m.stopped) {
        reason = FinishReason::kStop;
      } else {
        d.text += r->stop_matcher->Flush();
      }
    } else {
      d.text += tail;
    }
  }
  r->stream->Push(std::move(d));
  if (reason != FinishReason::kNone) Finish(r, reason);
}

void Engine::Finish(Request* r, FinishReason reason, std::string error) {
  const auto now = Request::Clock::now();
  scheduler_.Remove(r);
  GenerationDelta d;
  d.finished = true;
  d.finish_reason = reason;
  d.error = std::move(error);
  d.usage.prompt_tokens = static_cast<int64_t>(r->prompt.size());
  d.usage.completion_tokens = static_cast<int64_t>(r->output.size());
  d.usage.cached_tokens = r->num_cached;
  if (r->first_scheduled) d.timings.queued_s = Seconds(r->arrival, *r->first_scheduled);
  if (r->first_token) d.timings.first_token_s = Seconds(r->arrival, *r->first_token);
  d.timings.total_s = Seconds(r->arrival, now);
  if (r->attention_stats) d.attention_stats = r->attention_stats->Summary();
  r->status = RequestStatus::kFinished;
  r->stream->Push(std::move(d));
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.finished[static_cast<int>(reason)];
    if (r->admitted_once) {
      stats_.prompt_tokens += static_cast<int64_t>(r->prompt.size());
      stats_.prefix_cached_tokens += r->num_cached;
    }
  }
  requests_.erase(r->id);
}

void Engine::PublishStats() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.waiting = static_cast<int64_t>(scheduler_.num_waiting() + inbox_.size());
  stats_.running = static_cast<int64_t>(scheduler_.num_running());
  stats_.cache_blocks_used = cache_.pool().num_used();
  stats_.cache_blocks_cached = cache_.pool().num_cached();
  queued_ = stats_.waiting;
}

}  // namespace gsa
