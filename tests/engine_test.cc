// The engine as a whole, on the CPU backend, synchronous and overlapped (every suite test runs
// twice: on the backend as it is, and behind testing::DeferredBackend, whose launched step runs
// only when the engine collects it, after the engine streamed the previous step's tokens): many
// requests at once, each answered as if it were alone; preemption, prefix caching, cancellation and deadlines free every block; stops,
// EOS, max_tokens and streaming text behave as specified; attention statistics come on the final
// delta only, the same alone, batched, chunked and preempted, over the whole prompt.
#include "engine/engine.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "engine/model/model_loader.h"
#include "engine/tools/random_model.h"
#include "tests/testing/deferred_backend.h"
#include "tests/testing/spm_fixture.h"
#include "tests/testing/test_support.h"

namespace gsa {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

// Everything a stream delivered, gathered.
struct Collected {
  std::vector<int32_t> tokens;
  std::string text;
  std::vector<std::string> deltas;
  std::vector<TokenLogprob> logprobs;
  std::optional<std::vector<std::optional<TokenLogprob>>> prompt_logprobs;
  int deltas_with_attention_stats = 0;
  GenerationDelta final;
  bool ok = false;
};

Collected Drain(RequestStream& s, std::chrono::seconds limit = 120s) {
  Collected c;
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    auto d = s.Next(100ms);
    if (!d) continue;
    c.tokens.insert(c.tokens.end(), d->token_ids.begin(), d->token_ids.end());
    c.text += d->text;
    c.deltas.push_back(d->text);
    for (auto& l : d->logprobs) c.logprobs.push_back(l);
    if (d->prompt_logprobs) c.prompt_logprobs = d->prompt_logprobs;
    if (d->attention_stats) ++c.deltas_with_attention_stats;
    if (d->finished) {
      c.final = std::move(*d);
      c.ok = true;
      return c;
    }
  }
  ADD_FAILURE() << "stream did not finish in time";
  return c;
}

using gsa::testing::IsValidUtf8;

// A random-weight model with a sentencepiece tokenizer trained on a small corpus, shared by
// the suite (training takes a moment).
class EngineTest : public ::testing::TestWithParam<bool> {
 protected:
  static void SetUpTestSuite() {
    dir_ = std::make_unique<gsa::testing::TempDir>();
    auto spm = gsa::testing::TrainSentencePieceModel(*dir_, gsa::testing::SpmTestCorpus());
    ASSERT_TRUE(spm.ok()) << spm.status();
    spm_path_ = *spm;
    model_dir_ = dir_->File("model");
    ASSERT_TRUE(WriteRandomModel(Options(std::nullopt), model_dir_).ok());
  }
  static void TearDownTestSuite() { dir_.reset(); }

  static RandomModelOptions Options(std::optional<int64_t> eos) {
    ModelConfig c;
    c.d_model = 64;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.d_head = 16;
    c.n_layers = 2;
    c.d_ffn = 96;
    c.vocab_size = 320;
    c.d_indexer = 16;
    c.n_indexer_heads = 2;
    c.k_base = 12;
    c.k_min = 4;
    c.k_max = 24;
    c.use_adaptive_k = true;
    c.max_position_embeddings = 512;
    c.eos_token_id = eos;
    RandomModelOptions o;
    o.config = c;
    o.seed = 5;
    o.init_std = 0.15;  // peaked enough that greedy output is not constant
    o.tokenizer_path = spm_path_;
    return o;
  }

  // The suite's parameter: the backend behind testing::DeferredBackend.
  static bool Overlapped() { return GetParam(); }

  static std::unique_ptr<Engine> MakeEngine(const std::string& dir, EngineOptions o = {}) {
    auto m = LoadModel(dir);
    EXPECT_TRUE(m.ok()) << m.status();
    auto b = CpuBackend::Create(m->config, m->weights, {2});
    EXPECT_TRUE(b.ok()) << b.status();
    if (o.block_size == 64) o.block_size = 8;
    if (o.max_cache_tokens == 65536) o.max_cache_tokens = 4096;
    std::unique_ptr<Backend> backend = std::move(*b);
    if (Overlapped()) backend = std::make_unique<gsa::testing::DeferredBackend>(std::move(backend));
    auto e = Engine::Create(std::move(backend), m->tokenizer, o);
    EXPECT_TRUE(e.ok()) << e.status();
    return std::move(*e);
  }

  static GenerateRequest Req(std::vector<int32_t> prompt, int32_t max_tokens, float temperature = 0,
                             std::optional<uint64_t> seed = std::nullopt) {
    GenerateRequest r;
    r.prompt = std::move(prompt);
    r.stopping.max_tokens = max_tokens;
    r.stopping.ignore_eos = true;
    r.sampling.temperature = temperature;
    r.sampling.seed = seed;
    r.sampling.return_logprobs = true;
    r.sampling.logprobs = 3;
    return r;
  }

  static std::vector<int32_t> Prompt(int n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<int32_t> p(static_cast<size_t>(n));
    for (auto& t : p) t = static_cast<int32_t>(3 + rng() % 190);
    return p;
  }

  static Collected RunAlone(const std::string& dir, GenerateRequest r, EngineOptions o = {}) {
    auto e = MakeEngine(dir, o);
    auto s = e->Submit(std::move(r));
    EXPECT_TRUE(s.ok()) << s.status();
    return Drain(**s);
  }

  // All of `reqs` at once on an engine whose cache holds 12 blocks of 8 tokens (room for about two
  // requests): most are preempted and recomputed. Each request's collected output, in order, and
  // the engine's statistics once it is idle (*stats).
  static std::vector<Collected> RunUnderASmallCache(const std::vector<GenerateRequest>& reqs, EngineStats* stats) {
    EngineOptions o;
    o.max_cache_tokens = 8 * 12;
    o.max_batched_tokens = 64;
    auto e = MakeEngine(model_dir_, o);
    std::vector<std::shared_ptr<RequestStream>> streams;
    for (const auto& r : reqs) {
      auto s = e->Submit(r);
      EXPECT_TRUE(s.ok()) << s.status();
      if (s.ok()) streams.push_back(*s);
    }
    std::vector<Collected> out;
    for (auto& s : streams) out.push_back(Drain(*s));
    // Stats are published at the end of the step that sent the last delta.
    for (int i = 0; i < 100 && e->Stats().running != 0; ++i) std::this_thread::sleep_for(10ms);
    *stats = e->Stats();
    return out;
  }

  static inline std::unique_ptr<gsa::testing::TempDir> dir_;
  static inline std::string model_dir_;
  static inline std::string spm_path_;
};

void ExpectSameGeneration(const Collected& a, const Collected& b, const std::string& what) {
  EXPECT_EQ(a.tokens, b.tokens) << what;
  EXPECT_EQ(a.text, b.text) << what;
  ASSERT_EQ(a.logprobs.size(), b.logprobs.size()) << what;
  for (size_t i = 0; i < a.logprobs.size(); ++i) {
    EXPECT_EQ(a.logprobs[i].token_id, b.logprobs[i].token_id) << what;
    EXPECT_EQ(a.logprobs[i].logprob, b.logprobs[i].logprob) << what << " token " << i;
    EXPECT_EQ(a.logprobs[i].top, b.logprobs[i].top) << what << " token " << i;
  }
}

TEST_P(EngineTest, RequestsGetTheSameTokensAndLogprobsAloneAndAmongEightOthers) {
  // The target and 8 others of different lengths and sampling settings, in three arrival orders.
  std::vector<GenerateRequest> reqs;
  reqs.push_back(Req(Prompt(37, 1), 24));                  // greedy target
  reqs.push_back(Req(Prompt(21, 2), 24, 0.8f, 1234));      // seeded target
  for (int i = 0; i < 7; ++i) {
    reqs.push_back(Req(Prompt(5 + 13 * i, 10 + i), 8 + 3 * i, i % 2 ? 0.7f : 0.0f, 99 + i));
  }
  std::vector<Collected> alone;
  for (const auto& r : reqs) alone.push_back(RunAlone(model_dir_, r));
  EXPECT_GT(std::set<int32_t>(alone[0].tokens.begin(), alone[0].tokens.end()).size(), 3u)
      << "greedy output is degenerate; the test would prove little";

  for (uint32_t order_seed : {1u, 2u, 3u}) {
    std::vector<size_t> order(reqs.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), std::mt19937(order_seed));
    EngineOptions o;
    o.max_batched_tokens = 48;  // forces chunked prefill mixed with decodes
    auto e = MakeEngine(model_dir_, o);
    std::vector<std::shared_ptr<RequestStream>> streams(reqs.size());
    for (size_t i : order) {
      auto s = e->Submit(reqs[i]);
      ASSERT_TRUE(s.ok()) << s.status();
      streams[i] = *s;
      if (i % 3 == 0) std::this_thread::sleep_for(2ms);  // staggered arrivals
    }
    for (size_t i = 0; i < reqs.size(); ++i) {
      Collected c = Drain(*streams[i]);
      ExpectSameGeneration(c, alone[i], absl::StrCat("request ", i, " order ", order_seed));
      EXPECT_EQ(c.final.finish_reason, FinishReason::kLength);
    }
  }
}

TEST_P(EngineTest, PreemptionUnderASmallCacheKeepsEveryOutputIdentical) {
  std::vector<GenerateRequest> reqs;
  for (int i = 0; i < 16; ++i) reqs.push_back(Req(Prompt(10 + i, 40 + i), 20, i % 3 ? 0.9f : 0.f, 7 + i));
  for (int i : {5, 15}) reqs[static_cast<size_t>(i)].prompt_logprobs = 2;  // collected across a preemption too
  std::vector<Collected> alone;
  for (const auto& r : reqs) alone.push_back(RunAlone(model_dir_, r));

  EngineStats st;
  const std::vector<Collected> got = RunUnderASmallCache(reqs, &st);
  ASSERT_EQ(got.size(), reqs.size());
  for (size_t i = 0; i < reqs.size(); ++i) {
    const Collected& c = got[i];
    ExpectSameGeneration(c, alone[i], absl::StrCat("request ", i));
    ASSERT_EQ(c.prompt_logprobs.has_value(), alone[i].prompt_logprobs.has_value());
    if (c.prompt_logprobs) {
      ASSERT_EQ(c.prompt_logprobs->size(), reqs[i].prompt.size());
      for (size_t p = 1; p < c.prompt_logprobs->size(); ++p) {
        EXPECT_EQ((*c.prompt_logprobs)[p]->logprob, (*alone[i].prompt_logprobs)[p]->logprob);
      }
    }
  }
  EXPECT_GT(st.preemptions, 0) << "the cache was large enough that nothing was preempted";
  EXPECT_EQ(st.cache_blocks_used, 0) << "blocks leaked";
  EXPECT_EQ(st.running, 0);
  EXPECT_EQ(st.waiting, 0);
}

TEST_P(EngineTest, SecondIdenticalLongPromptIsServedFromThePrefixCache) {
  auto e = MakeEngine(model_dir_);
  const std::vector<int32_t> prompt = Prompt(101, 77);
  auto s1 = e->Submit(Req(prompt, 12));
  ASSERT_TRUE(s1.ok());
  Collected first = Drain(**s1);
  auto s2 = e->Submit(Req(prompt, 12));
  ASSERT_TRUE(s2.ok());
  Collected second = Drain(**s2);
  EXPECT_EQ(first.final.usage.cached_tokens, 0);
  EXPECT_EQ(second.final.usage.cached_tokens, 96);  // 12 full blocks of 8; the rest recomputed
  EXPECT_EQ(second.final.usage.prompt_tokens, 101);
  ExpectSameGeneration(second, first, "cached prefix");
  // A dense request never shares blocks with a sparse one.
  GenerateRequest dense = Req(prompt, 4);
  dense.attention = AttentionMode::kDense;
  auto s3 = e->Submit(dense);
  ASSERT_TRUE(s3.ok());
  EXPECT_EQ(Drain(**s3).final.usage.cached_tokens, 0);
  EXPECT_GE(e->Stats().prefix_cached_tokens, 96);
}

TEST_P(EngineTest, CancellingMidStreamFreesEveryBlock) {
  auto e = MakeEngine(model_dir_);
  auto s = e->Submit(Req(Prompt(30, 4), 400));
  ASSERT_TRUE(s.ok());
  int got = 0;
  while (got < 3) {
    auto d = (*s)->Next(5s);
    ASSERT_TRUE(d.has_value());
    ASSERT_FALSE(d->finished);
    got += static_cast<int>(d->token_ids.size());
  }
  e->Cancel((*s)->id());
  Collected rest = Drain(**s);
  EXPECT_EQ(rest.final.finish_reason, FinishReason::kCancelled);
  EXPECT_LT(rest.final.usage.completion_tokens, 400);
  for (int i = 0; i < 100 && e->Stats().cache_blocks_used != 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(e->Stats().cache_blocks_used, 0);
}

TEST_P(EngineTest, APassedDeadlineEndsTheRequestAndFreesItsBlocks) {
  auto e = MakeEngine(model_dir_);
  // Every token the context holds (30 + 482 = 512) against a 3 ms deadline: no machine runs 482
  // steps in 3 ms (with 400 tokens and 30 ms, a fast or lightly loaded one finished them first and
  // the request ended by its length).
  GenerateRequest r = Req(Prompt(30, 4), 482);
  r.deadline = std::chrono::steady_clock::now() + 3ms;
  auto s = e->Submit(r);
  ASSERT_TRUE(s.ok());
  Collected c = Drain(**s);
  EXPECT_EQ(c.final.finish_reason, FinishReason::kCancelled);
  EXPECT_THAT(c.final.error, HasSubstr("deadline"));
  for (int i = 0; i < 100 && e->Stats().cache_blocks_used != 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(e->Stats().cache_blocks_used, 0);
}

TEST_P(EngineTest, MaxTokensEndsWithLength) {
  Collected c = RunAlone(model_dir_, Req(Prompt(9, 8), 7));
  EXPECT_EQ(c.tokens.size(), 7u);
  EXPECT_EQ(c.final.finish_reason, FinishReason::kLength);
  EXPECT_EQ(c.final.usage.completion_tokens, 7);
  EXPECT_EQ(c.final.usage.prompt_tokens, 9);
  EXPECT_GT(c.final.timings.total_s, 0);
  EXPECT_LE(c.final.timings.first_token_s, c.final.timings.total_s);
}

TEST_P(EngineTest, EosAndStopTokenIdsEndGenerationAndIgnoreEosDoesNot) {
  const std::vector<int32_t> prompt = Prompt(12, 9);
  const Collected free_run = RunAlone(model_dir_, Req(prompt, 16));
  ASSERT_EQ(free_run.tokens.size(), 16u);
  const int32_t target = free_run.tokens[5];
  const size_t first = static_cast<size_t>(
      std::find(free_run.tokens.begin(), free_run.tokens.end(), target) - free_run.tokens.begin());

  // The same weights with that token as EOS.
  gsa::testing::TempDir eos_dir;
  ASSERT_TRUE(WriteRandomModel(Options(target), eos_dir.path()).ok());
  GenerateRequest r = Req(prompt, 16);
  r.stopping.ignore_eos = false;
  Collected eos = RunAlone(eos_dir.path(), r);
  EXPECT_EQ(eos.final.finish_reason, FinishReason::kEos);
  EXPECT_EQ(eos.tokens, std::vector<int32_t>(free_run.tokens.begin(), free_run.tokens.begin() + first + 1));
  r.stopping.ignore_eos = true;
  EXPECT_EQ(RunAlone(eos_dir.path(), r).tokens, free_run.tokens);

  GenerateRequest st = Req(prompt, 16);
  st.stopping.stop_token_ids = {target};
  Collected stopped = RunAlone(model_dir_, st);
  EXPECT_EQ(stopped.final.finish_reason, FinishReason::kStop);
  EXPECT_EQ(stopped.tokens.size(), first + 1);
}

TEST_P(EngineTest, StopStringsAcrossTokenBoundariesAreMatchedAndNeverEmitted) {
  const std::vector<int32_t> prompt = Prompt(15, 12);
  const Collected free_run = RunAlone(model_dir_, Req(prompt, 40));
  // Find two consecutive non-empty deltas and build a stop string spanning their boundary.
  std::string stop;
  size_t cut = 0;
  std::string before;
  for (size_t i = 0; i + 1 < free_run.deltas.size(); ++i) {
    const std::string& a = free_run.deltas[i];
    const std::string& b = free_run.deltas[i + 1];
    before += a;
    if (i < 2 || a.empty() || b.empty()) continue;
    // Last character of a and first character of b (whole UTF-8 characters).
    size_t ai = a.size() - 1;
    while (ai > 0 && (static_cast<unsigned char>(a[ai]) >> 6) == 2) --ai;
    size_t bl = 1;
    while (bl < b.size() && (static_cast<unsigned char>(b[bl]) >> 6) == 2) ++bl;
    stop = a.substr(ai) + b.substr(0, bl);
    cut = before.size() - (a.size() - ai);
    break;
  }
  ASSERT_FALSE(stop.empty()) << "no two consecutive text deltas in: " << free_run.text;
  const size_t earliest = free_run.text.find(stop);
  ASSERT_LE(earliest, cut);
  GenerateRequest r = Req(prompt, 40);
  r.stopping.stop = {stop, "a-stop-string-that-never-occurs"};
  Collected c = RunAlone(model_dir_, r);
  EXPECT_EQ(c.final.finish_reason, FinishReason::kStop);
  EXPECT_EQ(c.text, free_run.text.substr(0, earliest)) << "stop string " << stop;
  EXPECT_EQ(c.text.find(stop), std::string::npos);
  for (const std::string& d : c.deltas) EXPECT_TRUE(IsValidUtf8(d));
}

TEST_P(EngineTest, AStopStringThatEndsARequestWhileItsNextStepRunsDropsThatStepAndNothingElse) {
  if (!Overlapped()) GTEST_SKIP() << "needs the overlapped engine; the Overlapped instance runs it";
  const std::vector<int32_t> prompt = Prompt(12, 21);
  const Collected free_run = RunAlone(model_dir_, Req(prompt, 30));
  // The stop string: a whole delta well inside the run, so it completes at a token past the first.
  std::string stop;
  for (size_t i = 4; i < free_run.deltas.size() && stop.empty(); ++i) {
    if (free_run.deltas[i].size() >= 2) stop = free_run.deltas[i];
  }
  ASSERT_FALSE(stop.empty()) << "no delta of two bytes or more in: " << free_run.text;
  const size_t earliest = free_run.text.find(stop);
  GenerateRequest a = Req(prompt, 30);
  a.stopping.stop = {stop};
  const GenerateRequest b = Req(Prompt(20, 22), 30, 0.9f, 3);
  const Collected b_alone = RunAlone(model_dir_, b);

  auto m = LoadModel(model_dir_);
  ASSERT_TRUE(m.ok()) << m.status();
  auto cpu = CpuBackend::Create(m->config, m->weights, {2});
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  auto deferred = std::make_unique<gsa::testing::DeferredBackend>(std::move(*cpu));
  const gsa::testing::DeferredBackend* backend = deferred.get();
  EngineOptions o;
  o.block_size = 8;
  o.max_cache_tokens = 4096;
  auto e = Engine::Create(std::move(deferred), m->tokenizer, o);
  ASSERT_TRUE(e.ok()) << e.status();

  // Alone: one step per token (the prompt fits one chunk), and one more, launched before the
  // stop string was seen, whose result was dropped.
  auto sa = (*e)->Submit(a);
  ASSERT_TRUE(sa.ok()) << sa.status();
  const Collected ca = Drain(**sa);
  EXPECT_EQ(ca.final.finish_reason, FinishReason::kStop);
  EXPECT_EQ(ca.text, free_run.text.substr(0, earliest)) << "stop string " << stop;
  for (int i = 0; i < 100 && (*e)->Stats().running != 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(backend->launches(), ca.final.usage.completion_tokens + 1);

  // Beside another request: the same text, and the other request's output is untouched.
  auto sa2 = (*e)->Submit(a);
  auto sb = (*e)->Submit(b);
  ASSERT_TRUE(sa2.ok() && sb.ok());
  const Collected ca2 = Drain(**sa2);
  const Collected cb = Drain(**sb);
  EXPECT_EQ(ca2.text, ca.text);
  EXPECT_EQ(ca2.final.finish_reason, FinishReason::kStop);
  ExpectSameGeneration(cb, b_alone, "the request beside the stopped one");
  for (int i = 0; i < 100 && (*e)->Stats().cache_blocks_used != 0; ++i) std::this_thread::sleep_for(10ms);
  const EngineStats st = (*e)->Stats();
  EXPECT_EQ(st.cache_blocks_used, 0) << "blocks leaked";
  EXPECT_GT(st.overlapped_seconds, 0.0) << "no host work overlapped a launched step";
}

TEST_P(EngineTest, StreamedTextIsValidUtf8AndEqualsTheDecodedTokens) {
  auto m = LoadModel(model_dir_);
  ASSERT_TRUE(m.ok());
  for (uint32_t seed : {1u, 2u, 3u}) {
    Collected c = RunAlone(model_dir_, Req(Prompt(8, seed), 48, 1.0f, seed));
    for (const std::string& d : c.deltas) EXPECT_TRUE(IsValidUtf8(d)) << "delta of seed " << seed;
    auto full = m->tokenizer->Decode(c.tokens);
    ASSERT_TRUE(full.ok());
    // Whole-sequence decoding may render a held incomplete tail differently; the stream never
    // emits invalid bytes, so compare where the full decode is itself valid UTF-8.
    if (IsValidUtf8(*full)) {
      EXPECT_EQ(c.text, *full) << "seed " << seed;
    }
  }
}

TEST_P(EngineTest, RefusesRequestsThatCanNeverRunWithClearErrors) {
  EngineOptions o;
  o.max_model_len = 100;
  o.max_cache_tokens = 8 * 10;
  auto e = MakeEngine(model_dir_, o);
  auto expect = [&](GenerateRequest r, absl::StatusCode code, const std::string& text) {
    auto s = e->Submit(std::move(r));
    EXPECT_EQ(s.status().code(), code) << text;
    EXPECT_THAT(s.status().message(), HasSubstr(text));
  };
  expect(Req({}, 4), absl::StatusCode::kInvalidArgument, "prompt is empty");
  expect(Req({1, 2, 320}, 4), absl::StatusCode::kInvalidArgument, "has id 320, outside the vocabulary");
  expect(Req(Prompt(90, 1), 20), absl::StatusCode::kInvalidArgument, "exceeds max_model_len 100");
  expect(Req(Prompt(70, 1), 20), absl::StatusCode::kInvalidArgument, "the whole cache has 10");
  GenerateRequest bad = Req(Prompt(5, 1), 4);
  bad.sampling.top_p = 1.5f;
  expect(bad, absl::StatusCode::kInvalidArgument, "top_p");
  GenerateRequest bad_pl = Req(Prompt(5, 1), 4);
  bad_pl.prompt_logprobs = 1000;
  expect(bad_pl, absl::StatusCode::kInvalidArgument, "prompt_logprobs");
  // The engine still serves good requests afterwards.
  auto ok = e->Submit(Req(Prompt(5, 1), 4));
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(Drain(**ok).final.finish_reason, FinishReason::kLength);
}

TEST_P(EngineTest, AVocabularyPaddedPastTheTokenizerNeverSamplesAnIdWithoutAPiece) {
  // 512 logits, 320 tokenizer pieces (as Qwen's 151936 for 151643): ids 320-511 have no text.
  auto tok = LoadModel(model_dir_);
  ASSERT_TRUE(tok.ok());
  const int32_t pieces = tok->tokenizer->vocab_size();
  gsa::testing::TempDir padded;
  RandomModelOptions mo = Options(std::nullopt);
  mo.config.vocab_size = 512;
  ASSERT_GT(mo.config.vocab_size, pieces);
  ASSERT_TRUE(WriteRandomModel(mo, padded.path()).ok());
  auto e = MakeEngine(padded.path());
  EXPECT_EQ(e->sampled_vocab_size(), pieces);

  for (uint64_t seed : {1u, 2u}) {
    GenerateRequest r = Req(Prompt(6, static_cast<uint32_t>(seed)), 64, 5.0f, seed);
    r.sampling.logprobs = 20;
    auto s = e->Submit(std::move(r));
    ASSERT_TRUE(s.ok()) << s.status();
    Collected c = Drain(**s);
    EXPECT_EQ(c.final.finish_reason, FinishReason::kLength) << c.final.error;
    ASSERT_EQ(c.tokens.size(), 64u);
    for (const int32_t t : c.tokens) EXPECT_LT(t, pieces) << "seed " << seed;
    for (const TokenLogprob& l : c.logprobs) {
      EXPECT_TRUE(std::isfinite(l.logprob));
      for (const auto& [id, lp] : l.top) EXPECT_LT(id, pieces) << "alternative of seed " << seed;
    }
    EXPECT_TRUE(IsValidUtf8(c.text));
    auto full = tok->tokenizer->Decode(c.tokens);
    ASSERT_TRUE(full.ok()) << full.status();
    if (IsValidUtf8(*full)) {
      EXPECT_EQ(c.text, *full);
    }
  }

  // Prompt ids: the model's whole vocabulary is accepted, past it is refused naming id and limit.
  auto in_padding = e->Submit(Req({1, 400}, 4));
  ASSERT_TRUE(in_padding.ok()) << in_padding.status();
  EXPECT_EQ(Drain(**in_padding).final.finish_reason, FinishReason::kLength);
  auto past = e->Submit(Req({1, 512}, 4));
  EXPECT_EQ(past.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(past.status().message(), HasSubstr("has id 512, outside the vocabulary [0, 512)"));
  GenerateRequest stop = Req({1, 2}, 4);
  stop.stopping.stop_token_ids = {512};
  auto bad_stop = e->Submit(std::move(stop));
  EXPECT_EQ(bad_stop.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_stop.status().message(), HasSubstr("512"));
}

TEST_P(EngineTest, FullQueueRefusesWithResourceExhaustedAndServesTheRest) {
  EngineOptions o;
  o.max_queue = 1;
  o.max_num_seqs = 1;
  auto e = MakeEngine(model_dir_, o);
  std::vector<std::shared_ptr<RequestStream>> accepted;
  int refused = 0;
  for (int i = 0; i < 6; ++i) {
    auto s = e->Submit(Req(Prompt(20, 30 + i), 60));
    if (s.ok()) {
      accepted.push_back(*s);
    } else {
      EXPECT_EQ(s.status().code(), absl::StatusCode::kResourceExhausted);
      EXPECT_THAT(s.status().message(), HasSubstr("queue is full"));
      ++refused;
    }
  }
  EXPECT_GT(refused, 0);
  for (auto& s : accepted) EXPECT_EQ(Drain(*s).final.finish_reason, FinishReason::kLength);
}

TEST_P(EngineTest, PromptLogprobsMatchTheGoldenLogSoftmax) {
  const std::string dir = gsa::testing::GoldenDir("gsa-tiny");
  auto golden = SafetensorsFile::Open(dir + "/golden.safetensors");
  ASSERT_TRUE(golden.ok());
  const TensorView* ids = (*golden)->Find("input_ids");
  const TensorView* logits = (*golden)->Find("logits");
  std::vector<int32_t> prompt;
  for (int64_t t = 0; t < ids->shape[0]; ++t) {
    int64_t v;
    std::memcpy(&v, ids->data + t * 8, 8);
    prompt.push_back(static_cast<int32_t>(v));
  }
  std::vector<float> gl(static_cast<size_t>(logits->numel()));
  ASSERT_TRUE(ConvertToFloat(*logits, gl.data()).ok());
  const int64_t V = logits->shape[1];

  EngineOptions o;
  o.max_batched_tokens = 16;  // prompt logprobs gathered across chunks
  GenerateRequest r = Req(prompt, 1);
  r.prompt_logprobs = 2;
  Collected c = RunAlone(dir, r, o);
  ASSERT_TRUE(c.prompt_logprobs.has_value());
  ASSERT_EQ(c.prompt_logprobs->size(), prompt.size());
  EXPECT_FALSE((*c.prompt_logprobs)[0].has_value());
  for (size_t p = 1; p < prompt.size(); ++p) {
    const float* row = gl.data() + (p - 1) * V;
    double mx = row[0], z = 0;
    for (int64_t v = 0; v < V; ++v) mx = std::max<double>(mx, row[v]);
    for (int64_t v = 0; v < V; ++v) z += std::exp(row[v] - mx);
    const double want = row[prompt[p]] - mx - std::log(z);
    ASSERT_TRUE((*c.prompt_logprobs)[p].has_value());
    EXPECT_EQ((*c.prompt_logprobs)[p]->token_id, prompt[p]);
    EXPECT_NEAR((*c.prompt_logprobs)[p]->logprob, want, 1e-4) << "position " << p;
    EXPECT_EQ((*c.prompt_logprobs)[p]->top.size(), 2u);
  }
}

// Attention statistics must be bitwise equal: each position's values do not depend on the
// batch (cpu_ops.h) and the engine adds them in position order.
void ExpectSameAttentionStats(const AttentionStats& a, const AttentionStats& b, const std::string& what) {
  EXPECT_EQ(a.positions, b.positions) << what;
  EXPECT_EQ(a.mean_selected_k, b.mean_selected_k) << what;
  EXPECT_EQ(a.first_token_share, b.first_token_share) << what;
  EXPECT_EQ(a.value_gate_mean, b.value_gate_mean) << what;
  EXPECT_EQ(a.output_gate_mean, b.output_gate_mean) << what;
  ASSERT_EQ(a.layers.size(), b.layers.size()) << what;
  for (size_t l = 0; l < a.layers.size(); ++l) {
    EXPECT_EQ(a.layers[l].mean_selected_k, b.layers[l].mean_selected_k) << what << " layer " << l;
    EXPECT_EQ(a.layers[l].first_token_share, b.layers[l].first_token_share) << what << " layer " << l;
    EXPECT_EQ(a.layers[l].value_gate_mean, b.layers[l].value_gate_mean) << what << " layer " << l;
    EXPECT_EQ(a.layers[l].output_gate_mean, b.layers[l].output_gate_mean) << what << " layer " << l;
  }
}

TEST_P(EngineTest, AttentionStatsComeOnTheFinalDeltaAndAreTheSameAloneBatchedAndChunked) {
  GenerateRequest target = Req(Prompt(37, 1), 12);
  target.attention_stats = true;
  GenerateRequest dense = Req(Prompt(23, 2), 9, 0.8f, 42);
  dense.attention = AttentionMode::kDense;
  dense.attention_stats = true;
  const Collected alone = RunAlone(model_dir_, target);
  const Collected dense_alone = RunAlone(model_dir_, dense);
  ASSERT_TRUE(alone.ok && dense_alone.ok);
  ASSERT_TRUE(alone.final.attention_stats.has_value());
  EXPECT_EQ(alone.deltas_with_attention_stats, 1) << "statistics belong on the final delta only";
  // Every prompt position and every generated token but the last (never fed back) is counted.
  const AttentionStats& s = *alone.final.attention_stats;
  EXPECT_EQ(s.positions, 37 + 12 - 1);
  ASSERT_EQ(s.layers.size(), 2u);
  EXPECT_GT(s.mean_selected_k, 4.0);
  EXPECT_LT(s.mean_selected_k, 24.0);
  EXPECT_GT(s.first_token_share, 0.0);
  EXPECT_LT(s.first_token_share, 1.0);
  ASSERT_TRUE(s.value_gate_mean.has_value() && s.output_gate_mean.has_value());
  EXPECT_GT(*s.value_gate_mean, 0.0);
  EXPECT_LT(*s.value_gate_mean, 1.0);  // sigmoid gates
  // Dense: position t attends to t + 1 keys, so the mean over positions 0 … N-1 is (N + 1) / 2.
  const AttentionStats& d = *dense_alone.final.attention_stats;
  EXPECT_EQ(d.positions, 23 + 9 - 1);
  for (const LayerAttentionStats& l : d.layers) EXPECT_EQ(l.mean_selected_k, (d.positions + 1) / 2.0);

  // Not asked: no statistics.
  const Collected plain = RunAlone(model_dir_, Req(Prompt(37, 1), 12));
  EXPECT_FALSE(plain.final.attention_stats.has_value());
  EXPECT_EQ(plain.deltas_with_attention_stats, 0);
  ExpectSameGeneration(plain, alone, "asking for statistics changes the generation");

  // Among others, with the prompts chunked (16 tokens a step) and mixed with decodes.
  EngineOptions o;
  o.max_batched_tokens = 16;
  auto e = MakeEngine(model_dir_, o);
  std::vector<std::shared_ptr<RequestStream>> others;
  for (int i = 0; i < 3; ++i) {
    auto s_other = e->Submit(Req(Prompt(9 + 7 * i, 60 + i), 10 + i, 0.7f, 5 + i));
    ASSERT_TRUE(s_other.ok());
    others.push_back(*s_other);
  }
  auto st = e->Submit(target);
  auto sd = e->Submit(dense);
  ASSERT_TRUE(st.ok() && sd.ok());
  const Collected batched = Drain(**st);
  const Collected dense_batched = Drain(**sd);
  for (auto& other : others) EXPECT_FALSE(Drain(*other).final.attention_stats.has_value());
  ASSERT_TRUE(batched.final.attention_stats.has_value());
  ASSERT_TRUE(dense_batched.final.attention_stats.has_value());
  ExpectSameAttentionStats(*batched.final.attention_stats, s, "sparse request, batched and chunked");
  ExpectSameAttentionStats(*dense_batched.final.attention_stats, d, "dense request, batched and chunked");
}

TEST_P(EngineTest, AttentionStatsRequestsComputeTheirWholePromptAndStillFillThePrefixCache) {
  const std::vector<int32_t> prompt = Prompt(101, 78);
  GenerateRequest with_stats = Req(prompt, 4);
  with_stats.attention_stats = true;
  {
    // The prompt is in the cache, but a request asking for statistics computes it all.
    auto e = MakeEngine(model_dir_);
    auto s1 = e->Submit(Req(prompt, 4));
    ASSERT_TRUE(s1.ok());
    EXPECT_EQ(Drain(**s1).final.usage.cached_tokens, 0);
    auto s2 = e->Submit(with_stats);
    ASSERT_TRUE(s2.ok());
    const Collected c = Drain(**s2);
    EXPECT_EQ(c.final.usage.cached_tokens, 0);
    ASSERT_TRUE(c.final.attention_stats.has_value());
    EXPECT_EQ(c.final.attention_stats->positions, 101 + 4 - 1);
    ExpectSameAttentionStats(*c.final.attention_stats, *RunAlone(model_dir_, with_stats).final.attention_stats,
                             "after a cached run");
  }
  {
    // A request asking for statistics fills the cache for the next one.
    auto e = MakeEngine(model_dir_);
    auto s1 = e->Submit(with_stats);
    ASSERT_TRUE(s1.ok());
    Drain(**s1);
    auto s2 = e->Submit(Req(prompt, 4));
    ASSERT_TRUE(s2.ok());
    EXPECT_EQ(Drain(**s2).final.usage.cached_tokens, 96);
  }
}

TEST_P(EngineTest, PreemptedRequestsRestartTheirAttentionStatsAndCountEveryPositionOnce) {
  std::vector<GenerateRequest> reqs;
  for (int i = 0; i < 8; ++i) {
    reqs.push_back(Req(Prompt(12 + 2 * i, 90 + i), 20, i % 2 ? 0.9f : 0.f, 17 + i));
    reqs.back().attention_stats = true;
  }
  std::vector<Collected> alone;
  for (const auto& r : reqs) alone.push_back(RunAlone(model_dir_, r));

  EngineStats st;
  const std::vector<Collected> got = RunUnderASmallCache(reqs, &st);
  ASSERT_EQ(got.size(), reqs.size());
  for (size_t i = 0; i < reqs.size(); ++i) {
    const Collected& c = got[i];
    ExpectSameGeneration(c, alone[i], absl::StrCat("request ", i));
    ASSERT_TRUE(c.final.attention_stats.has_value());
    EXPECT_EQ(c.final.attention_stats->positions, static_cast<int64_t>(reqs[i].prompt.size()) + 20 - 1);
    ExpectSameAttentionStats(*c.final.attention_stats, *alone[i].final.attention_stats, absl::StrCat("request ", i));
  }
  EXPECT_GT(st.preemptions, 0) << "the cache was large enough that nothing was preempted";
  EXPECT_EQ(st.cache_blocks_used, 0) << "blocks leaked";
}

INSTANTIATE_TEST_SUITE_P(Backends, EngineTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? std::string("Overlapped") : std::string("Synchronous");
                         });

}  // namespace
}  // namespace gsa
