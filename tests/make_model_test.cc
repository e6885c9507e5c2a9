// WriteRandomModel and NamedShape: random checkpoints are deterministic, complete (exactly
// MODEL.md's tensors), loadable in every dtype and layout, and numerically sane.
#include "engine/tools/random_model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "engine/model/config.h"
#include "engine/model/dtype.h"
#include "engine/model/safetensors.h"
#include "engine/model/weights.h"
#include "nlohmann/json.hpp"
#include "tests/testing/test_support.h"

namespace gsa {
namespace {

using ::gsa::testing::ReadFile;
using ::gsa::testing::TempDir;
using ::testing::HasSubstr;

RandomModelOptions Options(std::string_view shape, DType dtype = DType::kF32, uint64_t seed = 1) {
  RandomModelOptions o;
  auto config = NamedShape(shape);
  EXPECT_TRUE(config.ok()) << config.status();
  o.config = *config;
  o.dtype = dtype;
  o.seed = seed;
  return o;
}

std::vector<float> Values(const TensorView& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  const absl::Status s = ConvertToFloat(t, out.data());
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

std::vector<std::string> ShardFiles(const std::string& dir) {
  std::vector<std::string> shards;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("model-", 0) == 0) shards.push_back(name);
  }
  std::sort(shards.begin(), shards.end());
  return shards;
}

TEST(WriteRandomModel, SameOptionsGiveByteIdenticalFiles) {
  TempDir a, b;
  const RandomModelOptions o = Options("gsa-tiny", DType::kF32, 7);
  ASSERT_TRUE(WriteRandomModel(o, a.path()).ok());
  ASSERT_TRUE(WriteRandomModel(o, b.path()).ok());
  const std::string model_a = ReadFile(a.File("model.safetensors"));
  ASSERT_GT(model_a.size(), 100000u);
  EXPECT_TRUE(model_a == ReadFile(b.File("model.safetensors")));
  EXPECT_EQ(ReadFile(a.File("config.json")), ReadFile(b.File("config.json")));
}

TEST(WriteRandomModel, DifferentSeedChangesEveryTensor) {
  TempDir a, b;
  ASSERT_TRUE(WriteRandomModel(Options("gsa-tiny", DType::kF32, 1), a.path()).ok());
  ASSERT_TRUE(WriteRandomModel(Options("gsa-tiny", DType::kF32, 2), b.path()).ok());
  auto fa = SafetensorsFile::Open(a.File("model.safetensors"));
  auto fb = SafetensorsFile::Open(b.File("model.safetensors"));
  ASSERT_TRUE(fa.ok()) << fa.status();
  ASSERT_TRUE(fb.ok()) << fb.status();
  for (const auto& [name, view] : (*fa)->tensors()) {
    const TensorView* other = (*fb)->Find(name);
    ASSERT_NE(other, nullptr) << name;
    ASSERT_EQ(view.nbytes, other->nbytes) << name;
    EXPECT_NE(std::memcmp(view.data, other->data, view.nbytes), 0) << name;
  }
}

TEST(WriteRandomModel, TensorsAreExactlyTheExpectedWeights) {
  for (const std::string shape : {"gsa-small", "sparse-relu-tiny"}) {
    TempDir dir;
    const RandomModelOptions o = Options(shape, DType::kBF16);
    ASSERT_TRUE(WriteRandomModel(o, dir.path()).ok());
    auto file = SafetensorsFile::Open(dir.File("model.safetensors"));
    ASSERT_TRUE(file.ok()) << file.status();
    const std::vector<WeightSpec> expected = ExpectedWeights(o.config);
    EXPECT_EQ((*file)->tensors().size(), expected.size()) << shape;
    for (const WeightSpec& spec : expected) {
      const TensorView* t = (*file)->Find(spec.name);
      ASSERT_NE(t, nullptr) << shape << ": missing " << spec.name;
      EXPECT_EQ(t->dtype, DType::kBF16) << spec.name;
      EXPECT_EQ(t->shape, spec.shape) << spec.name;
    }
  }
}

TEST(WriteRandomModel, ConfigJsonRoundTripsAndWeightsBind) {
  TempDir dir;
  RandomModelOptions o = Options("gsa-small", DType::kBF16);
  o.config.bos_token_id = 1;
  o.config.eos_token_id = 2;
  ASSERT_TRUE(WriteRandomModel(o, dir.path()).ok());
  auto config = LoadModelConfig(dir.File("config.json"));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(ModelConfigToJson(*config), ModelConfigToJson(o.config));
  auto checkpoint = Checkpoint::Open(dir.path());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  auto weights = BindWeights(*config, std::shared_ptr<const Checkpoint>(std::move(*checkpoint)));
  EXPECT_TRUE(weights.ok()) << weights.status();
}

TEST(WriteRandomModel, TiedEmbeddingsOmitLmHead) {
  TempDir dir;
  RandomModelOptions o = Options("gsa-tiny");
  o.config.tie_word_embeddings = true;
  ASSERT_TRUE(WriteRandomModel(o, dir.path()).ok());
  auto file = SafetensorsFile::Open(dir.File("model.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->Find("lm_head.weight"), nullptr);
  EXPECT_NE((*file)->Find("model.embed_tokens.weight"), nullptr);
}

TEST(WriteRandomModel, ShardedTensorsEqualTheSingleFileByteForByte) {
  TempDir single, sharded;
  RandomModelOptions o = Options("gsa-tiny", DType::kBF16, 3);
  ASSERT_TRUE(WriteRandomModel(o, single.path()).ok());
  o.max_shard_bytes = 200 * 1000;
  ASSERT_TRUE(WriteRandomModel(o, sharded.path()).ok());

  EXPECT_FALSE(std::filesystem::exists(sharded.File("model.safetensors")));
  const std::vector<std::string> shards = ShardFiles(sharded.path());
  ASSERT_GE(shards.size(), 3u);
  const std::string count = std::to_string(shards.size());
  EXPECT_EQ(shards.front(), "model-00001-of-0000" + count + ".safetensors");
  EXPECT_EQ(shards.back(), "model-0000" + count + "-of-0000" + count + ".safetensors");

  const nlohmann::json index =
      nlohmann::json::parse(ReadFile(sharded.File("model.safetensors.index.json")));
  const nlohmann::json& weight_map = index.at("weight_map");

  auto whole = SafetensorsFile::Open(single.File("model.safetensors"));
  ASSERT_TRUE(whole.ok()) << whole.status();
  std::set<std::string> seen;
  size_t total = 0;
  for (const std::string& shard : shards) {
    auto file = SafetensorsFile::Open(sharded.File(shard));
    ASSERT_TRUE(file.ok()) << file.status();
    size_t shard_bytes = 0;
    for (const auto& [name, view] : (*file)->tensors()) {
      EXPECT_TRUE(seen.insert(name).second) << name << " is in two shards";
      EXPECT_EQ(weight_map.at(name).get<std::string>(), shard) << name;
      const TensorView* reference = (*whole)->Find(name);
      ASSERT_NE(reference, nullptr) << name;
      EXPECT_EQ(view.shape, reference->shape) << name;
      ASSERT_EQ(view.nbytes, reference->nbytes) << name;
      EXPECT_EQ(std::memcmp(view.data, reference->data, view.nbytes), 0) << name;
      total += view.nbytes;
      shard_bytes += view.nbytes;
    }
    // Only a single tensor larger than the limit may exceed it.
    if ((*file)->tensors().size() > 1) {
      EXPECT_LE(shard_bytes, o.max_shard_bytes) << shard;
    }
  }
  EXPECT_EQ(seen.size(), (*whole)->tensors().size());
  EXPECT_EQ(weight_map.size(), seen.size());
  EXPECT_EQ(index.at("metadata").at("total_size").get<size_t>(), total);

  auto checkpoint = Checkpoint::Open(sharded.path());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_EQ((*checkpoint)->tensors().size(), seen.size());
}

TEST(WriteRandomModel, RewritingADirectoryReplacesTheOldCheckpoint) {
  TempDir dir;
  RandomModelOptions o = Options("gsa-tiny");
  o.max_shard_bytes = 100 * 1000;
  ASSERT_TRUE(WriteRandomModel(o, dir.path()).ok());
  ASSERT_FALSE(ShardFiles(dir.path()).empty());
  o.max_shard_bytes = 0;
  ASSERT_TRUE(WriteRandomModel(o, dir.path()).ok());
  EXPECT_TRUE(ShardFiles(dir.path()).empty());
  EXPECT_FALSE(std::filesystem::exists(dir.File("model.safetensors.index.json")));
  EXPECT_TRUE(std::filesystem::exists(dir.File("model.safetensors")));
}

TEST(WriteRandomModel, ValuesDoNotDependOnDtype) {
  // bf16 and f16 files hold the f32 file's values, rounded: the stream is per tensor, not per byte.
  TempDir f32_dir, bf16_dir, f16_dir;
  ASSERT_TRUE(WriteRandomModel(Options("gsa-tiny", DType::kF32, 5), f32_dir.path()).ok());
  ASSERT_TRUE(WriteRandomModel(Options("gsa-tiny", DType::kBF16, 5), bf16_dir.path()).ok());
  ASSERT_TRUE(WriteRandomModel(Options("gsa-tiny", DType::kF16, 5), f16_dir.path()).ok());
  auto f32 = SafetensorsFile::Open(f32_dir.File("model.safetensors"));
  auto bf16 = SafetensorsFile::Open(bf16_dir.File("model.safetensors"));
  auto f16 = SafetensorsFile::Open(f16_dir.File("model.safetensors"));
  ASSERT_TRUE(f32.ok() && bf16.ok() && f16.ok());
  for (const auto& [name, view] : (*f32)->tensors()) {
    const std::vector<float> full = Values(view);
    const std::vector<float> b = Values(*(*bf16)->Find(name));
    const std::vector<float> h = Values(*(*f16)->Find(name));
    for (size_t i = 0; i < full.size(); ++i) {
      ASSERT_EQ(b[i], Bf16ToFloat(FloatToBf16(full[i]))) << name << "[" << i << "]";
      ASSERT_EQ(h[i], F16ToFloat(FloatToF16(full[i]))) << name << "[" << i << "]";
    }
  }
}

struct Moments {
  double mean = 0;
  double stddev = 0;
  double within_one_sigma = 0;  // fraction of values with |x - mean| < stddev
  bool finite = true;
};

Moments Measure(const std::vector<float>& v) {
  Moments m;
  double sum = 0, sq = 0;
  for (const float x : v) {
    m.finite = m.finite && std::isfinite(x);
    sum += x;
  }
  m.mean = sum / v.size();
  for (const float x : v) sq += (x - m.mean) * (x - m.mean);
  m.stddev = std::sqrt(sq / v.size());
  size_t inside = 0;
  for (const float x : v) inside += std::fabs(x - m.mean) < m.stddev;
  m.within_one_sigma = static_cast<double>(inside) / v.size();
  return m;
}

TEST(WriteRandomModel, ValuesAreFiniteAndHaveTheRequestedSpread) {
  TempDir dir;
  RandomModelOptions o = Options("gsa-small", DType::kF32, 11);
  o.init_std = 0.05;
  ASSERT_TRUE(WriteRandomModel(o, dir.path()).ok());
  auto file = SafetensorsFile::Open(dir.File("model.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  for (const auto& [name, view] : (*file)->tensors()) {
    EXPECT_TRUE(AllFinite(view)) << name;
  }

  // Projections and embeddings: N(0, init_std). 0.683 of a normal lies within one sigma, which
  // checks the shape of the distribution, not just its second moment.
  for (const char* name : {"model.embed_tokens.weight", "model.layers.2.self_attn.q_proj.weight",
                           "model.layers.0.mlp.down_proj.weight", "lm_head.weight"}) {
    const Moments m = Measure(Values(*(*file)->Find(name)));
    EXPECT_NEAR(m.mean, 0.0, 0.002) << name;
    EXPECT_NEAR(m.stddev, 0.05, 0.05 * 0.03) << name;
    EXPECT_NEAR(m.within_one_sigma, 0.6827, 0.01) << name;
  }
  // Norm scales near 1 and gate biases near +0.5 keep a random model's activations sane.
  const Moments norm = Measure(Values(*(*file)->Find("model.layers.1.input_layernorm.weight")));
  EXPECT_NEAR(norm.mean, 1.0, 0.03);
  EXPECT_GT(norm.stddev, 0.05);
  EXPECT_LT(norm.stddev, 0.15);
  const Moments gate =
      Measure(Values(*(*file)->Find("model.layers.0.self_attn.output_gate.gate_proj.bias")));
  EXPECT_NEAR(gate.mean, 0.5, 0.05);
  const Moments value_gate =
      Measure(Values(*(*file)->Find("model.layers.0.self_attn.value_gate.gate_proj.weight")));
  EXPECT_NEAR(value_gate.stddev, 0.05, 0.005);
}

TEST(WriteRandomModel, CopiesTheTokenizer) {
  TempDir dir;
  const std::string source = dir.File("source.model");
  gsa::testing::WriteFile(source, "not really a tokenizer, only bytes to copy");
  RandomModelOptions o = Options("gsa-tiny");
  o.tokenizer_path = source;
  const std::string out = dir.File("model");
  ASSERT_TRUE(WriteRandomModel(o, out).ok());
  EXPECT_EQ(ReadFile(out + "/tokenizer.model"), ReadFile(source));

  o.tokenizer_path = dir.File("missing.model");
  const absl::Status s = WriteRandomModel(o, dir.File("other"));
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr(o.tokenizer_path));
}

TEST(WriteRandomModel, RefusesBadOptions) {
  TempDir dir;
  RandomModelOptions o = Options("gsa-tiny");
  o.dtype = DType::kI32;
  EXPECT_EQ(WriteRandomModel(o, dir.path()).code(), absl::StatusCode::kInvalidArgument);
  o = Options("gsa-tiny");
  o.config.n_kv_heads = 3;
  const absl::Status s = WriteRandomModel(o, dir.path());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("n_kv_heads"));
  EXPECT_FALSE(std::filesystem::exists(dir.File("config.json")));
}

TEST(NamedShape, Gsa17bIsTheGpuReferenceShape) {
  auto c = NamedShape("gsa-1.7b");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->d_model, 2048);
  EXPECT_EQ(c->n_layers, 28);
  EXPECT_EQ(c->n_heads, 16);
  EXPECT_EQ(c->n_kv_heads, 8);
  EXPECT_EQ(c->d_head, 128);
  EXPECT_EQ(c->d_ffn, 6144);
  EXPECT_EQ(c->vocab_size, 151936);
  EXPECT_EQ(c->d_indexer, 64);
  EXPECT_EQ(c->n_indexer_heads, 4);
  EXPECT_EQ(c->k_base, 2048);
  EXPECT_EQ(c->k_min, 256);
  EXPECT_EQ(c->k_max, 4096);
  EXPECT_FALSE(c->use_adaptive_k);  // fixed k = 2048: the benchmark shape
  EXPECT_TRUE(c->use_value_gate);
  EXPECT_TRUE(c->use_output_gate);
  EXPECT_EQ(c->indexer_activation, IndexerActivation::kSigmoid);
  EXPECT_EQ(c->max_position_embeddings, 131072);
}

TEST(NamedShape, TinyShapesMatchTheGoldenConfigs) {
  for (const std::string name : {"gsa-tiny", "sparse-relu-tiny"}) {
    auto shape = NamedShape(name);
    ASSERT_TRUE(shape.ok()) << shape.status();
    auto golden = LoadModelConfig(gsa::testing::GoldenDir(name) + "/config.json");
    ASSERT_TRUE(golden.ok()) << golden.status();
    EXPECT_EQ(ModelConfigToJson(*shape), ModelConfigToJson(*golden)) << name;
  }
}

TEST(NamedShape, EveryNamedShapeIsValid) {
  ASSERT_GE(NamedShapes().size(), 4u);
  for (const std::string& name : NamedShapes()) {
    auto c = NamedShape(name);
    ASSERT_TRUE(c.ok()) << name << ": " << c.status();
    EXPECT_TRUE(ValidateModelConfig(*c).ok()) << name;
  }
  auto small = NamedShape("gsa-small");
  ASSERT_TRUE(small.ok());
  EXPECT_EQ(small->d_model, 256);
  EXPECT_EQ(small->n_layers, 4);
  EXPECT_EQ(small->vocab_size, 8000);
}

TEST(NamedShape, UnknownNameListsTheKnownOnes) {
  auto c = NamedShape("gsa-9000b");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("gsa-9000b"));
  for (const std::string& name : NamedShapes()) {
    EXPECT_THAT(c.status().message(), HasSubstr(name));
  }
}

}  // namespace
}  // namespace gsa
