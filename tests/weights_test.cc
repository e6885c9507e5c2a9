// Binding a checkpoint to MODEL.md's tensor list, and loading whole model directories: every way a
// checkpoint can disagree with its config is an error naming the tensor, and no model results.
#include "engine/model/weights.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>

#include "engine/model/model_loader.h"
#include "nlohmann/json.hpp"
#include "engine/model/safetensors_writer.h"
#include "engine/tools/random_model.h"
#include "tests/testing/test_support.h"

namespace gsa {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

// Copies a model directory's checkpoint into `dst`, letting `edit` drop, rename, reshape or
// retype tensors on the way. Returns false to drop a tensor.
struct TensorCopy {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<std::byte> bytes;
};
using Edit = std::function<bool(TensorCopy&)>;

void CopyModel(const std::string& src, const std::string& dst, const Edit& edit,
               const std::vector<TensorCopy>& extra = {}) {
  fs::copy_file(src + "/config.json", dst + "/config.json", fs::copy_options::overwrite_existing);
  auto file = SafetensorsFile::Open(src + "/model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  SafetensorsWriter w;
  auto add = [&w](TensorCopy t) {
    auto bytes = std::make_shared<std::vector<std::byte>>(std::move(t.bytes));
    w.AddTensor(t.name, t.dtype, t.shape, [bytes](std::byte* out, size_t n) {
      std::memcpy(out, bytes->data(), std::min(n, bytes->size()));
    });
  };
  for (const auto& [name, view] : (*file)->tensors()) {
    TensorCopy t{name, view.dtype, view.shape,
                 std::vector<std::byte>(view.data, view.data + view.nbytes)};
    if (edit(t)) add(std::move(t));
  }
  for (const TensorCopy& t : extra) add(t);
  absl::Status s = w.WriteTo(dst + "/model.safetensors");
  ASSERT_TRUE(s.ok()) << s;
}

absl::Status LoadStatus(const std::string& dir) { return LoadModel(dir).status(); }

void SetConfigKey(const std::string& dir, const std::string& key, const nlohmann::json& value) {
  nlohmann::json j = nlohmann::json::parse(gsa::testing::ReadFile(dir + "/config.json"));
  j[key] = value;
  gsa::testing::WriteFile(dir + "/config.json", j.dump(2));
}

class WeightsTest : public ::testing::Test {
 protected:
  std::string golden_ = gsa::testing::GoldenDir("gsa-tiny");
  gsa::testing::TempDir tmp_;
};

TEST_F(WeightsTest, GoldenCheckpointsBindEveryTensor) {
  for (const char* name : {"gsa-tiny", "sparse-relu-tiny"}) {
    auto m = LoadModel(gsa::testing::GoldenDir(name));
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(m->weights.layers.size(), 2u);
    EXPECT_NE(m->weights.lm_head, m->weights.embed_tokens);
    const bool gated = std::string(name) == "gsa-tiny";
    EXPECT_EQ(m->weights.layers[1].value_gate_w != nullptr, gated);
    EXPECT_EQ(m->weights.layers[1].output_gate_b != nullptr, gated);
    EXPECT_EQ(m->weights.layers[0].indexer_k_proj->shape, (std::vector<int64_t>{16, 128}));
    EXPECT_EQ(ExpectedWeights(m->config).size(), m->weights.checkpoint->tensors().size());
  }
}

TEST_F(WeightsTest, MissingTensorIsNamed) {
  CopyModel(golden_, tmp_.path(), [](TensorCopy& t) { return t.name != "model.layers.1.mlp.up_proj.weight"; });
  absl::Status s = LoadStatus(tmp_.path());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("missing tensor model.layers.1.mlp.up_proj.weight, expected shape [256, 128]"));
}

TEST_F(WeightsTest, ExtraTensorIsNamed) {
  TensorCopy extra{"model.layers.2.input_layernorm.weight", DType::kF32, {128},
                   std::vector<std::byte>(512, std::byte{0})};
  CopyModel(golden_, tmp_.path(), [](TensorCopy&) { return true; }, {extra});
  absl::Status s = LoadStatus(tmp_.path());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("unexpected tensor model.layers.2.input_layernorm.weight"));
}

TEST_F(WeightsTest, GateTensorsWithGatesOffSayWhichFlag) {
  CopyModel(golden_, tmp_.path(), [](TensorCopy&) { return true; });
  SetConfigKey(tmp_.path(), "use_value_gate", false);
  absl::Status s = LoadStatus(tmp_.path());
  EXPECT_THAT(s.message(), HasSubstr("value_gate"));
  EXPECT_THAT(s.message(), HasSubstr("use_value_gate=false"));
}

TEST_F(WeightsTest, MisShapedTensorIsNamedWithBothShapes) {
  CopyModel(golden_, tmp_.path(), [](TensorCopy& t) {
    if (t.name == "model.layers.0.self_attn.k_proj.weight") t.shape = {128, 64};
    return true;
  });
  absl::Status s = LoadStatus(tmp_.path());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("tensor model.layers.0.self_attn.k_proj.weight"));
  EXPECT_THAT(s.message(), HasSubstr("shape [128, 64], expected [64, 128]"));
}

TEST_F(WeightsTest, UnsupportedDtypeIsNamed) {
  CopyModel(golden_, tmp_.path(), [](TensorCopy& t) {
    if (t.name == "model.norm.weight") t.dtype = DType::kI32;  // same byte size as F32
    return true;
  });
  absl::Status s = LoadStatus(tmp_.path());
  EXPECT_THAT(s.message(), HasSubstr("tensor model.norm.weight"));
  EXPECT_THAT(s.message(), HasSubstr("dtype I32 is not supported"));
}

TEST_F(WeightsTest, NonFiniteValuesAreRefused) {
  for (float bad : {std::nanf(""), INFINITY}) {
    CopyModel(golden_, tmp_.path(), [bad](TensorCopy& t) {
      if (t.name == "model.layers.1.self_attn.indexer.bias") std::memcpy(t.bytes.data() + 4, &bad, 4);
      return true;
    });
    absl::Status s = LoadStatus(tmp_.path());
    EXPECT_THAT(s.message(), HasSubstr("tensor model.layers.1.self_attn.indexer.bias"));
    EXPECT_THAT(s.message(), HasSubstr("NaN or infinite"));
  }
}

TEST_F(WeightsTest, TiedEmbeddingsUseTheEmbeddingAsLmHead) {
  // Without lm_head.weight: bound to the embedding.
  CopyModel(golden_, tmp_.path(), [](TensorCopy& t) { return t.name != "lm_head.weight"; });
  SetConfigKey(tmp_.path(), "tie_word_embeddings", true);
  auto m = LoadModel(tmp_.path());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->weights.lm_head, m->weights.embed_tokens);

  // Without tying, the same checkpoint lacks lm_head.
  gsa::testing::TempDir untied;
  CopyModel(golden_, untied.path(), [](TensorCopy& t) { return t.name != "lm_head.weight"; });
  EXPECT_THAT(LoadStatus(untied.path()).message(), HasSubstr("missing tensor lm_head.weight"));

  // Tied with an lm_head that differs from the embedding: refused.
  gsa::testing::TempDir differs;
  CopyModel(golden_, differs.path(), [](TensorCopy&) { return true; });
  SetConfigKey(differs.path(), "tie_word_embeddings", true);
  EXPECT_THAT(LoadStatus(differs.path()).message(),
              HasSubstr("lm_head.weight (" + differs.File("model.safetensors") + ") differs from model.embed_tokens.weight"));
}

TEST_F(WeightsTest, Bf16AndShardedCheckpointsLoad) {
  ModelConfig c;
  c.d_model = 64;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.d_head = 16;
  c.n_layers = 3;
  c.d_ffn = 96;
  c.vocab_size = 50;
  c.d_indexer = 16;
  c.n_indexer_heads = 2;
  c.k_base = 8;
  c.k_min = 4;
  c.k_max = 16;
  RandomModelOptions o;
  o.config = c;
  o.dtype = DType::kBF16;
  o.max_shard_bytes = 40000;
  ASSERT_TRUE(WriteRandomModel(o, tmp_.path()).ok());
  ASSERT_TRUE(fs::exists(tmp_.File("model.safetensors.index.json")));
  auto m = LoadModel(tmp_.path());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->weights.layers[2].mlp_down->dtype, DType::kBF16);
  EXPECT_EQ(m->weights.layers[2].mlp_down->shape, (std::vector<int64_t>{64, 96}));
}

TEST_F(WeightsTest, ModelDirectoryErrorsNameTheFile) {
  EXPECT_EQ(LoadStatus(tmp_.File("nope")).code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(LoadStatus(tmp_.File("nope")).message(), HasSubstr(tmp_.File("nope")));
  // No config.json.
  EXPECT_THAT(LoadStatus(tmp_.path()).message(), HasSubstr("config.json"));
  // Config but no weights.
  fs::copy_file(golden_ + "/config.json", tmp_.File("config.json"));
  absl::Status s = LoadStatus(tmp_.path());
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("model.safetensors"));
}

TEST_F(WeightsTest, TextNeedsATokenizerAndTheErrorSaysSo) {
  auto m = LoadModel(golden_);  // the golden cases ship no tokenizer.model
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->tokenizer, nullptr);
  auto tok = m->RequireTokenizer();
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(tok.status().message(), HasSubstr("has no tokenizer.model"));
  EXPECT_THAT(tok.status().message(), HasSubstr("token ids"));
}

TEST_F(WeightsTest, GarbageTokenizerFailsTheLoad) {
  CopyModel(golden_, tmp_.path(), [](TensorCopy&) { return true; });
  gsa::testing::WriteFile(tmp_.File("tokenizer.model"), "this is not a sentencepiece model");
  absl::Status s = LoadStatus(tmp_.path());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("tokenizer.model"));
}

}  // namespace
}  // namespace gsa
