// The fp32 CPU reference against the reference implementation's golden cases (MODEL.md, Golden
// parity data): logits within 1e-4, the selected sets exact for every layer and query, and the
// same logits when the prompt is fed in chunks or one token at a time.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/model/model_loader.h"
#include "tests/testing/batch_builder.h"
#include "tests/testing/golden.h"
#include "tests/testing/test_support.h"

namespace gsa {
namespace {

using gsa::testing::Golden;
using gsa::testing::ReadGolden;

class GoldenParity : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    auto m = LoadModel(gsa::testing::GoldenDir(GetParam()));
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = std::make_unique<LoadedModel>(std::move(*m));
    golden_ = ReadGolden(model_->dir, model_->config.n_layers, model_->config.vocab_size);
    ASSERT_FALSE(golden_.input_ids.empty());
  }

  std::unique_ptr<CpuBackend> MakeBackend(int threads = 0) {
    auto b = CpuBackend::Create(model_->config, model_->weights, {threads});
    EXPECT_TRUE(b.ok()) << b.status();
    EXPECT_TRUE((*b)->AllocateCache(/*num_blocks=*/64, /*block_size=*/4).ok());
    return std::move(*b);
  }

  // Feeds the golden prompt in chunks of `chunk` tokens; returns logits for every position and,
  // when asked, the selections.
  std::vector<float> Run(CpuBackend& backend, int64_t chunk,
                         std::vector<std::vector<std::vector<int32_t>>>* sel = nullptr) {
    gsa::testing::BatchBuilder builder(64, 4);
    const int64_t T = static_cast<int64_t>(golden_.input_ids.size());
    std::vector<float> logits;
    if (sel) sel->assign(static_cast<size_t>(model_->config.n_layers), {});
    for (int64_t start = 0; start < T; start += chunk) {
      const int64_t n = std::min(chunk, T - start);
      gsa::testing::BatchBuilder::Chunk c;
      c.tokens.assign(golden_.input_ids.begin() + start, golden_.input_ids.begin() + start + n);
      c.start = start;
      auto out = backend.Step(builder.Make({c}, sel != nullptr));
      EXPECT_TRUE(out.ok()) << out.status();
      if (!out.ok()) return {};
      logits.insert(logits.end(), out->logits.begin(), out->logits.end());
      if (sel) {
        for (size_t l = 0; l < sel->size(); ++l) {
          for (auto& row : out->selections[l]) (*sel)[l].push_back(row);
        }
      }
    }
    return logits;
  }

  std::unique_ptr<LoadedModel> model_;
  Golden golden_;
};

TEST_P(GoldenParity, OneShotPrefillMatchesGoldenLogitsAndSelections) {
  auto backend = MakeBackend();
  std::vector<std::vector<std::vector<int32_t>>> sel;
  const int64_t T = static_cast<int64_t>(golden_.input_ids.size());
  std::vector<float> logits = Run(*backend, T, &sel);
  ASSERT_EQ(logits.size(), golden_.logits.size());
  float max_diff = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    max_diff = std::max(max_diff, std::fabs(logits[i] - golden_.logits[i]));
  }
  EXPECT_LE(max_diff, 1e-4f);
  std::printf("[ %s ] max |logit - golden| = %.3g over %zu logits\n", GetParam(), max_diff,
              logits.size());
  ASSERT_EQ(sel.size(), golden_.sel.size());
  for (size_t l = 0; l < sel.size(); ++l) {
    ASSERT_EQ(sel[l].size(), static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) {
      EXPECT_EQ(sel[l][static_cast<size_t>(t)], golden_.sel[l][static_cast<size_t>(t)])
          << "layer " << l << " query position " << t;
    }
  }
}

TEST_P(GoldenParity, ChunkedPrefillAndTokenByTokenDecodeMatchGolden) {
  const int64_t T = static_cast<int64_t>(golden_.input_ids.size());
  for (int64_t chunk : {int64_t{1}, int64_t{3}, int64_t{16}, T}) {
    auto backend = MakeBackend();
    std::vector<std::vector<std::vector<int32_t>>> sel;
    std::vector<float> logits = Run(*backend, chunk, &sel);
    ASSERT_EQ(logits.size(), golden_.logits.size()) << "chunk " << chunk;
    float max_diff = 0;
    for (size_t i = 0; i < logits.size(); ++i) {
      max_diff = std::max(max_diff, std::fabs(logits[i] - golden_.logits[i]));
    }
    EXPECT_LE(max_diff, 1e-4f) << "chunk " << chunk;
    EXPECT_EQ(sel, golden_.sel) << "chunk " << chunk;
  }
}

TEST_P(GoldenParity, ResultsDoNotDependOnThreadCount) {
  auto one = MakeBackend(1);
  auto two = MakeBackend(2);
  const int64_t T = static_cast<int64_t>(golden_.input_ids.size());
  EXPECT_EQ(Run(*one, T), Run(*two, T));
}

INSTANTIATE_TEST_SUITE_P(Cases, GoldenParity, ::testing::Values("gsa-tiny", "sparse-relu-tiny"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

}  // namespace
}  // namespace gsa
