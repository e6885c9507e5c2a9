// The CPU reference as an engine uses it: chunked prefill and decode agree with one-shot
// prefill, a sequence's results do not depend on its batch, prefix blocks can be shared, the tie
// rule holds on repeated tokens, dense mode is attention over everything, and bad batches are
// refused without touching the cache.
#include "engine/backend/cpu/cpu_backend.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "engine/model/model_loader.h"
#include "engine/tools/random_model.h"
#include "tests/testing/batch_builder.h"
#include "tests/testing/test_support.h"

namespace gsa {
namespace {

using gsa::testing::BatchBuilder;

constexpr int64_t kBlocks = 256;
constexpr int64_t kBlockSize = 8;

ModelConfig SmallConfig() {
  ModelConfig c;
  c.d_model = 64;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.d_head = 16;
  c.n_layers = 2;
  c.d_ffn = 96;
  c.vocab_size = 97;
  c.d_indexer = 16;
  c.n_indexer_heads = 2;
  c.k_base = 12;
  c.k_min = 4;
  c.k_max = 24;
  c.use_adaptive_k = false;
  c.max_position_embeddings = 4096;
  return c;
}

// A model directory with random weights, loaded, plus a backend with a cache.
struct Fixture {
  gsa::testing::TempDir dir;
  std::unique_ptr<LoadedModel> model;

  explicit Fixture(const ModelConfig& c, uint64_t seed = 1, double init_std = 0.08) {
    RandomModelOptions o;
    o.config = c;
    o.seed = seed;
    o.init_std = init_std;
    absl::Status s = WriteRandomModel(o, dir.path());
    EXPECT_TRUE(s.ok()) << s;
    auto m = LoadModel(dir.path());
    EXPECT_TRUE(m.ok()) << m.status();
    if (m.ok()) model = std::make_unique<LoadedModel>(std::move(*m));
  }

  std::unique_ptr<CpuBackend> Backend(int threads = 2) const {
    auto b = CpuBackend::Create(model->config, model->weights, {threads});
    EXPECT_TRUE(b.ok()) << b.status();
    EXPECT_TRUE((*b)->AllocateCache(kBlocks, kBlockSize).ok());
    return std::move(*b);
  }
};

std::vector<int32_t> RandomTokens(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = d(rng);
  return t;
}

struct RunResult {
  std::vector<float> logits;                                // [T, vocab]
  std::vector<std::vector<std::vector<int32_t>>> selected;  // [layer][t]
};

// Feeds `tokens` to one sequence in chunks of `chunk` (the last chunk may be shorter).
RunResult RunChunked(Backend& backend, const std::vector<int32_t>& tokens, int64_t chunk,
                     AttentionMode mode = AttentionMode::kModelDefault) {
  BatchBuilder builder(kBlocks, kBlockSize);
  RunResult r;
  r.selected.resize(static_cast<size_t>(backend.config().n_layers));
  const int64_t T = static_cast<int64_t>(tokens.size());
  for (int64_t start = 0; start < T; start += chunk) {
    BatchBuilder::Chunk c;
    c.tokens.assign(tokens.begin() + start, tokens.begin() + std::min(T, start + chunk));
    c.start = start;
    c.attention = mode;
    auto out = backend.Step(builder.Make({c}, true));
    EXPECT_TRUE(out.ok()) << out.status();
    if (!out.ok()) return r;
    r.logits.insert(r.logits.end(), out->logits.begin(), out->logits.end());
    for (size_t l = 0; l < r.selected.size(); ++l) {
      for (auto& row : out->selections[l]) r.selected[l].push_back(row);
    }
  }
  return r;
}

float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

struct KMode {
  const char* name;
  bool adaptive;
  AdaptiveKMethod method;
  friend void PrintTo(const KMode& m, std::ostream* os) { *os << m.name; }
};

class ChunkingInvariance : public ::testing::TestWithParam<KMode> {};

TEST_P(ChunkingInvariance, ChunkedPrefillAndTokenByTokenDecodeReproduceOneShot) {
  ModelConfig c = SmallConfig();
  c.use_adaptive_k = GetParam().adaptive;
  c.adaptive_k_method = GetParam().method;
  Fixture f(c);
  ASSERT_NE(f.model, nullptr);
  const int64_t T = 70;  // crosses several 8-token blocks; k_t < t+1 for most positions
  const std::vector<int32_t> tokens = RandomTokens(T, c.vocab_size, 11);
  auto ref_backend = f.Backend();
  const RunResult one_shot = RunChunked(*ref_backend, tokens, T);
  ASSERT_EQ(one_shot.logits.size(), static_cast<size_t>(T * c.vocab_size));
  // Selection must be sparse somewhere, or this test would not be testing selection.
  EXPECT_LT(one_shot.selected[1][T - 1].size(), static_cast<size_t>(T));
  for (int64_t chunk : {int64_t{1}, int64_t{3}, int64_t{16}, T}) {
    auto backend = f.Backend();
    const RunResult r = RunChunked(*backend, tokens, chunk);
    EXPECT_LE(MaxAbsDiff(r.logits, one_shot.logits), 1e-5f) << "chunk " << chunk;
    EXPECT_EQ(r.selected, one_shot.selected) << "chunk " << chunk;
  }
}

INSTANTIATE_TEST_SUITE_P(KModes, ChunkingInvariance,
                         ::testing::Values(KMode{"fixed", false, AdaptiveKMethod::kVariance},
                                           KMode{"variance", true, AdaptiveKMethod::kVariance},
                                           KMode{"entropy", true, AdaptiveKMethod::kEntropy}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(CpuBackend, AdaptiveKVariesAcrossPositions) {
  ModelConfig c = SmallConfig();
  c.use_adaptive_k = true;
  c.adaptive_k_method = AdaptiveKMethod::kVariance;
  Fixture f(c);
  ASSERT_NE(f.model, nullptr);
  auto b = f.Backend();
  const RunResult r = RunChunked(*b, RandomTokens(60, c.vocab_size, 3), 60);
  std::set<size_t> sizes;
  for (int64_t t = 30; t < 60; ++t) {
    const size_t k = r.selected[0][t].size();
    EXPECT_GE(k, static_cast<size_t>(c.k_min));
    EXPECT_LE(k, static_cast<size_t>(c.k_max));
    sizes.insert(k);
  }
  EXPECT_GT(sizes.size(), 1u) << "adaptive k never changed";
}

TEST(CpuBackend, SequenceResultsDoNotDependOnTheBatch) {
  ModelConfig c = SmallConfig();
  c.use_adaptive_k = true;
  Fixture f(c);
  ASSERT_NE(f.model, nullptr);
  const std::vector<int32_t> target = RandomTokens(40, c.vocab_size, 5);

  // Alone: prefill 30, then decode 10 tokens one at a time.
  auto alone_b = f.Backend(1);
  const RunResult alone = RunChunked(*alone_b, target, 30);
  std::vector<float> alone_logits = alone.logits;

  // Together: the target's chunks share every step with other sequences of other lengths,
  // in a different thread count, placed first, middle or last in the batch.
  auto b = f.Backend(2);
  BatchBuilder builder(kBlocks, kBlockSize);
  const std::vector<int32_t> other1 = RandomTokens(55, c.vocab_size, 6);
  const std::vector<int32_t> other2 = RandomTokens(9, c.vocab_size, 7);
  // Warm the others up so that later steps mix their decodes with the target's prefill.
  BatchBuilder::Chunk o1{1, {other1.begin(), other1.begin() + 20}, 0, false};
  ASSERT_TRUE(b->Step(builder.Make({o1})).ok());
  std::vector<float> together;
  BatchBuilder::Chunk t0{0, {target.begin(), target.begin() + 30}, 0, true};
  BatchBuilder::Chunk o1b{1, {other1.begin() + 20, other1.begin() + 55}, 20, true};
  BatchBuilder::Chunk o2{2, {other2.begin(), other2.end()}, 0, true};
  {
    StepBatch batch = builder.Make({o1b, t0, o2});
    auto out = b->Step(batch);
    ASSERT_TRUE(out.ok()) << out.status();
    // Logits rows: 35 of o1b, then 30 of the target.
    const size_t V = static_cast<size_t>(c.vocab_size);
    together.insert(together.end(), out->logits.begin() + 35 * V, out->logits.begin() + 65 * V);
  }
  for (int64_t p = 30; p < 40; ++p) {
    BatchBuilder::Chunk td{0, {target[p]}, p, true};
    BatchBuilder::Chunk od{2, {static_cast<int32_t>((p * 13) % c.vocab_size)}, 9 + (p - 30), true};
    auto out = b->Step(builder.Make(p % 2 ? std::vector{td, od} : std::vector{od, td}));
    ASSERT_TRUE(out.ok()) << out.status();
    const size_t V = static_cast<size_t>(c.vocab_size);
    const size_t row = p % 2 ? 0 : 1;
    together.insert(together.end(), out->logits.begin() + row * V, out->logits.begin() + (row + 1) * V);
  }
  ASSERT_EQ(together.size(), alone_logits.size());
  EXPECT_EQ(together, alone_logits);  // bitwise
}

TEST(CpuBackend, SharedPrefixBlocksGiveTheSameResultAsRecomputing) {
  ModelConfig c = SmallConfig();
  c.use_adaptive_k = true;  // the running variance must travel with the cached blocks
  Fixture f(c);
  ASSERT_NE(f.model, nullptr);
  const std::vector<int32_t> a = RandomTokens(48, c.vocab_size, 21);
  std::vector<int32_t> bt(a.begin(), a.begin() + 32);  // shares 4 full blocks with a
  const std::vector<int32_t> tail = RandomTokens(10, c.vocab_size, 22);
  bt.insert(bt.end(), tail.begin(), tail.end());

  auto fresh = f.Backend();
  const RunResult expect = RunChunked(*fresh, bt, 42);

  auto backend = f.Backend();
  BatchBuilder builder(kBlocks, kBlockSize);
  ASSERT_TRUE(backend->Step(builder.Make({{0, a, 0, false}})).ok());
  // Sequence 1 reuses sequence 0's first four blocks and computes only its own 10 tokens.
  StepBatch batch = builder.Make({{1, tail, 32, true}});
  const std::vector<int32_t>& a_blocks = builder.Blocks(0, 48);
  std::copy(a_blocks.begin(), a_blocks.begin() + 4, batch.seqs[0].block_table.begin());
  auto out = backend->Step(batch);
  ASSERT_TRUE(out.ok()) << out.status();
  const size_t V = static_cast<size_t>(c.vocab_size);
  std::vector<float> want(expect.logits.end() - 10 * V, expect.logits.end());
  EXPECT_EQ(out->logits, want);
}

TEST(CpuBackend, RepeatedTokensTieAndTheLaterPositionsWin) {
  ModelConfig c = SmallConfig();
  Fixture f(c);
  ASSERT_NE(f.model, nullptr);
  auto b = f.Backend();
  const std::vector<int32_t> same(40, 17);
  const RunResult r = RunChunked(*b, same, 40);
  // Layer 0 sees identical indexer keys everywhere: every score ties, so the most recent k win.
  for (int64_t t = 0; t < 40; ++t) {
    std::vector<int32_t> want;
    for (int64_t s = t; s >= 0 && static_cast<int64_t>(want.size()) < c.k_base; --s) want.push_back(s);
    EXPECT_EQ(r.selected[0][t], want) << "t=" << t;
  }
}

TEST(CpuBackend, DenseModeAttendsToEveryPosition) {
  ModelConfig sparse_cfg = SmallConfig();
  Fixture f(sparse_cfg);
  ASSERT_NE(f.model, nullptr);
  const std::vector<int32_t> tokens = RandomTokens(50, sparse_cfg.vocab_size, 9);
  auto b = f.Backend();
  const RunResult dense = RunChunked(*b, tokens, 7, AttentionMode::kDense);
  for (int64_t t = 0; t < 50; ++t) EXPECT_EQ(dense.selected[1][t].size(), static_cast<size_t>(t + 1));
  auto b2 = f.Backend();
  const RunResult sparse = RunChunked(*b2, tokens, 7);
  EXPECT_GT(MaxAbsDiff(dense.logits, sparse.logits), 1e-4f) << "selection had no effect";

  // The same weights with k_base ≥ T select everything: identical to dense mode.
  ModelConfig wide = sparse_cfg;
  wide.k_base = wide.k_max = 64;
  Fixture fw(wide);  // same seed → same weights
  ASSERT_NE(fw.model, nullptr);
  auto b3 = fw.Backend();
  EXPECT_EQ(RunChunked(*b3, tokens, 7).logits, dense.logits);
}

struct Variant {
  const char* name;
  IndexerActivation indexer;
  bool value_gate, output_gate;
  GateActivation gate;
  int64_t n_heads, n_kv_heads, d_head;
  RopeScalingType rope;
  friend void PrintTo(const Variant& v, std::ostream* os) { *os << v.name; }
};

class Variants : public ::testing::TestWithParam<Variant> {};

TEST_P(Variants, RunAndAgreeBetweenChunkedAndOneShot) {
  const Variant& v = GetParam();
  ModelConfig c = SmallConfig();
  c.indexer_activation = v.indexer;
  c.use_value_gate = v.value_gate;
  c.use_output_gate = v.output_gate;
  c.gate_activation = v.gate;
  c.n_heads = v.n_heads;
  c.n_kv_heads = v.n_kv_heads;
  c.d_head = v.d_head;
  c.rope_scaling.type = v.rope;
  c.rope_scaling.factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 32;
  Fixture f(c);
  ASSERT_NE(f.model, nullptr);
  const std::vector<int32_t> tokens = RandomTokens(37, c.vocab_size, 4);
  auto b1 = f.Backend();
  const RunResult one = RunChunked(*b1, tokens, 37);
  for (float x : one.logits) ASSERT_TRUE(std::isfinite(x));
  auto b2 = f.Backend();
  EXPECT_LE(MaxAbsDiff(RunChunked(*b2, tokens, 5).logits, one.logits), 1e-5f);
}

INSTANTIATE_TEST_SUITE_P(
    Rows, Variants,
    ::testing::Values(
        Variant{"gsa", IndexerActivation::kSigmoid, true, true, GateActivation::kSigmoid, 4, 2, 16, RopeScalingType::kNone},
        Variant{"sparse_only", IndexerActivation::kRelu, false, false, GateActivation::kSigmoid, 4, 2, 16, RopeScalingType::kNone},
        Variant{"value_gate_only_tanh", IndexerActivation::kSigmoid, true, false, GateActivation::kTanh, 4, 2, 16, RopeScalingType::kNone},
        Variant{"output_gate_only_silu", IndexerActivation::kRelu, false, true, GateActivation::kSilu, 4, 2, 16, RopeScalingType::kNone},
        Variant{"gqa_4_to_1_dhead_64", IndexerActivation::kSigmoid, true, true, GateActivation::kSigmoid, 8, 2, 64, RopeScalingType::kNone},
        Variant{"ntk", IndexerActivation::kSigmoid, true, true, GateActivation::kSigmoid, 4, 2, 16, RopeScalingType::kNtk},
        Variant{"yarn", IndexerActivation::kSigmoid, true, true, GateActivation::kSigmoid, 4, 4, 16, RopeScalingType::kYarn}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(CpuBackend, RefusesABadBatchWithoutTouchingTheCache) {
  ModelConfig c = SmallConfig();
  Fixture f(c);
  ASSERT_NE(f.model, nullptr);
  const std::vector<int32_t> tokens = RandomTokens(20, c.vocab_size, 8);
  auto ref = f.Backend();
  const RunResult expect = RunChunked(*ref, tokens, 10);

  auto b = f.Backend();
  BatchBuilder builder(kBlocks, kBlockSize);
  auto first = b->Step(builder.Make({{0, {tokens.begin(), tokens.begin() + 10}, 0, true}}));
  ASSERT_TRUE(first.ok());
  // Out-of-vocabulary token in the second chunk: refused, naming the row.
  std::vector<int32_t> bad(tokens.begin() + 10, tokens.end());
  bad[3] = static_cast<int32_t>(c.vocab_size);
  auto refused = b->Step(builder.Make({{0, bad, 10, true}}));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), ::testing::HasSubstr("token id 97"));
  // Block table too short and a block id out of range: refused too.
  StepBatch short_table = builder.Make({{0, {tokens.begin() + 10, tokens.end()}, 10, true}});
  short_table.seqs[0].block_table.resize(1);
  EXPECT_THAT(b->Step(short_table).status().message(), ::testing::HasSubstr("block table has 1 blocks"));
  StepBatch bad_block = builder.Make({{0, {tokens.begin() + 10, tokens.end()}, 10, true}});
  bad_block.seqs[0].block_table[1] = kBlocks;
  EXPECT_THAT(b->Step(bad_block).status().message(), ::testing::HasSubstr("outside the cache"));
  // The good second chunk still gives the uninterrupted result.
  auto second = b->Step(builder.Make({{0, {tokens.begin() + 10, tokens.end()}, 10, true}}));
  ASSERT_TRUE(second.ok()) << second.status();
  std::vector<float> got = first->logits;
  got.insert(got.end(), second->logits.begin(), second->logits.end());
  EXPECT_EQ(got, expect.logits);
}

TEST(CpuBackend, StepBeforeAllocateCacheIsAnError) {
  Fixture f(SmallConfig());
  ASSERT_NE(f.model, nullptr);
  auto b = CpuBackend::Create(f.model->config, f.model->weights);
  ASSERT_TRUE(b.ok());
  BatchBuilder builder(kBlocks, kBlockSize);
  EXPECT_EQ((*b)->Step(builder.Make({{0, {1, 2}, 0, true}})).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace gsa
