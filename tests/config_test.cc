// config.json → ModelConfig: reference defaults, the golden configs, and one refusal per rule of
// MODEL.md, each naming the key.
#include "engine/model/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "nlohmann/json.hpp"
#include "tests/testing/test_support.h"

namespace gsa {
namespace {

using ::testing::HasSubstr;

absl::Status ParseWith(const std::string& key, const nlohmann::json& value) {
  nlohmann::json j = nlohmann::json::parse(
      gsa::testing::ReadFile(gsa::testing::GoldenDir("gsa-tiny") + "/config.json"));
  j[key] = value;
  return ParseModelConfig(j.dump()).status();
}

TEST(ModelConfig, GoldenConfigParses) {
  auto c = LoadModelConfig(gsa::testing::GoldenDir("gsa-tiny") + "/config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->d_model, 128);
  EXPECT_EQ(c->n_heads, 4);
  EXPECT_EQ(c->n_kv_heads, 2);
  EXPECT_EQ(c->d_head, 32);
  EXPECT_EQ(c->k_base, 8);
  EXPECT_FALSE(c->use_adaptive_k);
  EXPECT_EQ(c->indexer_activation, IndexerActivation::kSigmoid);
  EXPECT_EQ(c->rope_scaling.type, RopeScalingType::kNone);
  auto relu = LoadModelConfig(gsa::testing::GoldenDir("sparse-relu-tiny") + "/config.json");
  ASSERT_TRUE(relu.ok()) << relu.status();
  EXPECT_EQ(relu->indexer_activation, IndexerActivation::kRelu);
  EXPECT_FALSE(relu->use_value_gate);
  EXPECT_FALSE(relu->use_output_gate);
}

TEST(ModelConfig, MissingKeysTakeReferenceDefaults) {
  auto c = ParseModelConfig("{}");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->d_model, 4096);
  EXPECT_EQ(c->n_heads, 32);
  EXPECT_EQ(c->n_kv_heads, 8);
  EXPECT_EQ(c->d_head, 128);  // null → d_model / n_heads
  EXPECT_EQ(c->n_layers, 32);
  EXPECT_EQ(c->d_ffn, 11008);
  EXPECT_EQ(c->vocab_size, 128256);
  EXPECT_EQ(c->d_indexer, 64);
  EXPECT_EQ(c->n_indexer_heads, 4);
  EXPECT_EQ(c->k_base, 2048);
  EXPECT_EQ(c->k_min, 256);
  EXPECT_EQ(c->k_max, 4096);
  EXPECT_TRUE(c->use_adaptive_k);
  EXPECT_EQ(c->adaptive_k_method, AdaptiveKMethod::kVariance);
  EXPECT_TRUE(c->use_value_gate);
  EXPECT_TRUE(c->use_output_gate);
  EXPECT_EQ(c->gate_activation, GateActivation::kSigmoid);
  EXPECT_DOUBLE_EQ(c->rope_base, 10000.0);
  EXPECT_EQ(c->max_position_embeddings, 131072);
  EXPECT_DOUBLE_EQ(c->norm_eps, 1e-5);
  EXPECT_FALSE(c->tie_word_embeddings);
}

TEST(ModelConfig, UnknownKeysAreIgnored) {
  EXPECT_TRUE(ParseWith("some_training_only_key", {1, 2, 3}).ok());
}

TEST(ModelConfig, DHeadNullMeansDModelOverNHeads) {
  auto c = ParseModelConfig(R"({"d_model": 256, "n_heads": 8, "n_kv_heads": 4, "d_head": null})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->d_head, 32);
}

TEST(ModelConfig, ExplicitDHeadMayDifferFromDModelOverNHeads) {
  auto c = ParseModelConfig(R"({"d_model": 256, "n_heads": 8, "n_kv_heads": 4, "d_head": 64})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->d_head, 64);
  EXPECT_EQ(c->q_dim(), 512);
}

TEST(ModelConfig, RejectsInvalidJson) {
  auto c = ParseModelConfig(R"({"d_model": 128,)");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("not valid JSON"));
}

TEST(ModelConfig, RejectsNonObject) {
  auto c = ParseModelConfig("[1, 2]");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("JSON object"));
}

TEST(ModelConfig, MissingFileNamesPath) {
  auto c = LoadModelConfig("/nonexistent/dir/config.json");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(c.status().message(), HasSubstr("/nonexistent/dir/config.json"));
}

struct BadValue {
  const char* key;
  nlohmann::json value;
  const char* expect;  // substring of the message
  friend void PrintTo(const BadValue& b, std::ostream* os) { *os << b.key << "=" << b.value.dump(); }
};

class ModelConfigRejects : public ::testing::TestWithParam<BadValue> {};

TEST_P(ModelConfigRejects, NamesTheKey) {
  const BadValue& b = GetParam();
  absl::Status s = ParseWith(b.key, b.value);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << b.key;
  EXPECT_THAT(s.message(), HasSubstr(b.expect)) << s;
}

INSTANTIATE_TEST_SUITE_P(
    Rules, ModelConfigRejects,
    ::testing::Values(
        BadValue{"d_model", 0, "\"d_model\": must be positive"},
        BadValue{"d_model", -128, "\"d_model\": must be positive"},
        BadValue{"d_model", 130, "divisible by n_heads"},
        BadValue{"n_heads", 3, "divisible by n_heads"},
        BadValue{"n_kv_heads", 3, "divisible by n_kv_heads"},
        BadValue{"n_kv_heads", 0, "\"n_kv_heads\": must be positive"},
        BadValue{"n_layers", 0, "\"n_layers\": must be positive"},
        BadValue{"d_ffn", -1, "\"d_ffn\": must be positive"},
        BadValue{"vocab_size", 0, "\"vocab_size\": must be positive"},
        BadValue{"d_indexer", 0, "\"d_indexer\": must be positive"},
        BadValue{"n_indexer_heads", 0, "\"n_indexer_heads\": must be positive"},
        BadValue{"d_head", 31, "\"d_head\": must be even"},
        BadValue{"k_base", 2, "k_min <= k_base <= k_max"},
        BadValue{"k_base", 17, "k_min <= k_base <= k_max"},
        BadValue{"k_min", 0, "\"k_min\": must be positive"},
        BadValue{"k_max", 7, "k_min <= k_base <= k_max"},
        BadValue{"indexer_activation", "gelu", "\"indexer_activation\": unknown value \"gelu\""},
        BadValue{"gate_activation", "relu", "\"gate_activation\": unknown value \"relu\""},
        BadValue{"adaptive_k_method", "magic", "\"adaptive_k_method\": unknown value"},
        BadValue{"adaptive_k_temperature", 0.0, "\"adaptive_k_temperature\": must be positive"},
        BadValue{"rope_base", 1.0, "\"rope_base\": must be greater than 1"},
        BadValue{"norm_eps", 0.0, "\"norm_eps\": must be positive"},
        BadValue{"max_position_embeddings", 0, "\"max_position_embeddings\": must be positive"},
        BadValue{"d_model", "128", "\"d_model\": expected an integer"},
        BadValue{"d_model", 128.5, "\"d_model\": expected an integer"},
        BadValue{"use_value_gate", "yes", "\"use_value_gate\": expected true or false"},
        BadValue{"rope_base", "big", "\"rope_base\": expected a number"},
        BadValue{"eos_token_id", 512, "\"eos_token_id\": token id 512 is outside the vocabulary"},
        BadValue{"bos_token_id", -1, "\"bos_token_id\": token id -1 is outside the vocabulary"},
        BadValue{"rope_scaling", "yarn", "\"rope_scaling\": expected null or an object"},
        BadValue{"rope_scaling", {{"type", "linear"}, {"factor", 2.0}}, "\"rope_scaling.type\": unknown value \"linear\""},
        BadValue{"rope_scaling", {{"type", "ntk"}}, "\"rope_scaling.factor\": required"},
        BadValue{"rope_scaling", {{"type", "yarn"}, {"factor", 0.5}}, "\"rope_scaling.factor\": must be >= 1"},
        BadValue{"vocab_size", int64_t{1} << 40, "larger than the supported"}));

TEST(ModelConfig, RopeScalingVariantsParse) {
  auto ntk = ParseModelConfig(R"({"rope_scaling": {"type": "ntk", "factor": 4.0}})");
  ASSERT_TRUE(ntk.ok()) << ntk.status();
  EXPECT_EQ(ntk->rope_scaling.type, RopeScalingType::kNtk);
  EXPECT_DOUBLE_EQ(ntk->rope_scaling.factor, 4.0);
  auto yarn = ParseModelConfig(
      R"({"rope_scaling": {"type": "yarn", "factor": 8, "original_max_position_embeddings": 2048}})");
  ASSERT_TRUE(yarn.ok()) << yarn.status();
  EXPECT_EQ(yarn->rope_scaling.type, RopeScalingType::kYarn);
  EXPECT_EQ(yarn->rope_scaling.original_max_position_embeddings, 2048);
  EXPECT_DOUBLE_EQ(yarn->rope_scaling.beta_fast, 32.0);
  EXPECT_DOUBLE_EQ(yarn->rope_scaling.beta_slow, 1.0);
  auto dyn = ParseModelConfig(R"({"rope_scaling": {"type": "dynamic_ntk", "factor": 2}})");
  ASSERT_TRUE(dyn.ok()) << dyn.status();
  EXPECT_EQ(dyn->rope_scaling.type, RopeScalingType::kNone);
}

TEST(ModelConfig, JsonRoundTrip) {
  ModelConfig c;
  c.d_model = 256;
  c.n_heads = 4;
  c.n_kv_heads = 1;
  c.d_head = 64;
  c.adaptive_k_method = AdaptiveKMethod::kEntropy;
  c.gate_activation = GateActivation::kSilu;
  c.rope_scaling.type = RopeScalingType::kYarn;
  c.rope_scaling.factor = 4;
  c.eos_token_id = 2;
  auto back = ParseModelConfig(ModelConfigToJson(c));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(ModelConfigToJson(*back), ModelConfigToJson(c));
  EXPECT_EQ(back->adaptive_k_method, AdaptiveKMethod::kEntropy);
  EXPECT_EQ(back->eos_token_id, 2);
}

}  // namespace
}  // namespace gsa
