#include "tests/testing/golden.h"

#include <gtest/gtest.h>

#include <cstring>

#include "engine/model/safetensors.h"
#include "tests/testing/test_support.h"

namespace gsa::testing {

Golden ReadGolden(const std::string& dir, int64_t n_layers, int64_t vocab) {
  Golden g;
  auto file = SafetensorsFile::Open(dir + "/golden.safetensors");
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return g;
  const TensorView* ids = (*file)->Find("input_ids");
  const TensorView* logits = (*file)->Find("logits");
  EXPECT_TRUE(ids && logits);
  if (!ids || !logits) return g;
  const int64_t T = ids->shape[0];
  for (int64_t t = 0; t < T; ++t) {
    int64_t v;
    std::memcpy(&v, ids->data + t * 8, 8);
    g.input_ids.push_back(static_cast<int32_t>(v));
  }
  EXPECT_EQ(logits->shape, (std::vector<int64_t>{T, vocab}));
  g.logits.resize(static_cast<size_t>(T * vocab));
  EXPECT_TRUE(ConvertToFloat(*logits, g.logits.data()).ok());
  for (int64_t l = 0; l < n_layers; ++l) {
    const TensorView* s = (*file)->Find("layer" + std::to_string(l) + ".selected");
    EXPECT_NE(s, nullptr);
    if (!s) return g;
    const int64_t k = s->shape[1];
    std::vector<std::vector<int32_t>> rows(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t j = 0; j < k; ++j) {
        int64_t v;
        std::memcpy(&v, s->data + (t * k + j) * 8, 8);
        if (v >= 0) rows[static_cast<size_t>(t)].push_back(static_cast<int32_t>(v));
      }
    }
    g.sel.push_back(std::move(rows));
  }
  return g;
}

namespace {
std::vector<int32_t> ReadIds(const SafetensorsFile& f, const std::string& name) {
  std::vector<int32_t> out;
  const TensorView* t = f.Find(name);
  EXPECT_NE(t, nullptr) << name;
  if (!t) return out;
  for (int64_t i = 0; i < t->shape[0]; ++i) {
    int64_t v;
    std::memcpy(&v, t->data + i * 8, 8);
    out.push_back(static_cast<int32_t>(v));
  }
  return out;
}
}  // namespace

std::string DefaultModelDir() { return TestDataDir() + "/../../deploy/default-model"; }

DefaultModelFixture ReadDefaultModelFixture(int64_t vocab) {
  DefaultModelFixture x;
  auto f = SafetensorsFile::Open(TestDataDir() + "/default-model-parity.safetensors");
  EXPECT_TRUE(f.ok()) << f.status();
  if (!f.ok()) return x;
  x.input_ids = ReadIds(**f, "input_ids");
  x.positions = ReadIds(**f, "positions");
  x.greedy_prompt = ReadIds(**f, "greedy_prompt");
  x.greedy_tokens = ReadIds(**f, "greedy_tokens");
  const TensorView* logits = (*f)->Find("logits");
  EXPECT_NE(logits, nullptr);
  if (!logits) return x;
  EXPECT_EQ(logits->shape, (std::vector<int64_t>{static_cast<int64_t>(x.positions.size()), vocab}));
  x.logits.resize(static_cast<size_t>(logits->shape[0] * logits->shape[1]));
  EXPECT_TRUE(ConvertToFloat(*logits, x.logits.data()).ok());
  return x;
}

}  // namespace gsa::testing
