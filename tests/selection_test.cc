// Selection of MODEL.md: k_t (fixed, variance, entropy) and top-k with the tie rule.
#include "engine/backend/selection.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

namespace gsa {
namespace {

TEST(SelectTopK, KeepsLargestScoresSortedDescendingByPosition) {
  std::vector<float> s = {0.1f, 0.9f, 0.3f, 0.8f, 0.2f};
  std::vector<int32_t> out, scratch;
  SelectTopK(s.data(), 5, 2, out, scratch);
  EXPECT_EQ(out, (std::vector<int32_t>{3, 1}));
  SelectTopK(s.data(), 5, 5, out, scratch);
  EXPECT_EQ(out, (std::vector<int32_t>{4, 3, 2, 1, 0}));
  SelectTopK(s.data(), 5, 0, out, scratch);
  EXPECT_TRUE(out.empty());
}

TEST(SelectTopK, EqualScoresPreferTheLaterPosition) {
  std::vector<float> s(10, 0.5f);
  std::vector<int32_t> out, scratch;
  SelectTopK(s.data(), 10, 3, out, scratch);
  EXPECT_EQ(out, (std::vector<int32_t>{9, 8, 7}));
  // A relu indexer scores many positions exactly 0: the zeros kept are the most recent ones.
  std::vector<float> r = {0, 0, 2.0f, 0, 0, 1.0f, 0, 0};
  SelectTopK(r.data(), 8, 4, out, scratch);
  EXPECT_EQ(out, (std::vector<int32_t>{7, 6, 5, 2}));
}

TEST(SelectTopK, MatchesAFullSortOnRandomScoresWithManyTies) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> level(0, 20);
  std::vector<int32_t> out, scratch;
  for (int trial = 0; trial < 50; ++trial) {
    const int n = 1 + trial * 37;
    std::vector<float> s(n);
    for (float& v : s) v = level(rng) * 0.25f;  // few distinct values: many ties
    const int k = n / 3 + 1;
    std::vector<int32_t> idx(n);
    for (int i = 0; i < n; ++i) idx[i] = i;
    std::sort(idx.begin(), idx.end(), [&](int a, int b) { return s[a] != s[b] ? s[a] > s[b] : a > b; });
    std::vector<int32_t> want(idx.begin(), idx.begin() + k);
    std::sort(want.begin(), want.end(), std::greater<int32_t>());
    SelectTopK(s.data(), n, k, out, scratch);
    EXPECT_EQ(out, want) << "n=" << n;
  }
}

TEST(SelectedCount, FixedKIsKBaseCappedByAvailablePositions) {
  ModelConfig c;
  c.use_adaptive_k = false;
  c.k_base = 8;
  EXPECT_EQ(SelectedCount(c, 0, 0, 0, 0), 1);
  EXPECT_EQ(SelectedCount(c, 6, 0, 0, 0), 7);
  EXPECT_EQ(SelectedCount(c, 7, 0, 0, 0), 8);
  EXPECT_EQ(SelectedCount(c, 1000, 0, 0, 0), 8);
}

TEST(SelectedCount, VarianceFollowsTheFormula) {
  ModelConfig c;
  c.use_adaptive_k = true;
  c.adaptive_k_method = AdaptiveKMethod::kVariance;
  c.k_base = 100;
  c.k_min = 20;
  c.k_max = 300;
  c.adaptive_k_temperature = 2.0;
  // var = ref: factor = 0.5 + 1/(1 + 2) → floor(100 · 0.8333) = 83.
  EXPECT_EQ(SelectedCount(c, 10000, 1.0, 1.0, 0), 83);
  // var = 0: factor 1.5 → 150.
  EXPECT_EQ(SelectedCount(c, 10000, 0.0, 1.0, 0), 150);
  // Huge variance: factor → 0.5 → 50.
  EXPECT_EQ(SelectedCount(c, 10000, 1e12, 1.0, 0), 50);
  // Clamped below by k_min and above by k_max, then capped by position + 1.
  c.k_base = 30;
  EXPECT_EQ(SelectedCount(c, 10000, 1e12, 1.0, 0), 20);
  c.k_base = 250;
  EXPECT_EQ(SelectedCount(c, 10000, 0.0, 1.0, 0), 300);
  EXPECT_EQ(SelectedCount(c, 9, 0.0, 1.0, 0), 10);
}

TEST(SelectedCount, EntropyFollowsTheFormula) {
  ModelConfig c;
  c.use_adaptive_k = true;
  c.adaptive_k_method = AdaptiveKMethod::kEntropy;
  c.k_base = 100;
  c.k_min = 10;
  c.k_max = 400;
  c.adaptive_k_temperature = 1.0;
  const int64_t t = 999;
  const double h = 0.5 * std::log(t + 2.0);  // factor = 0.5 + 0.5 = 1.0
  EXPECT_EQ(SelectedCount(c, t, 0, 0, h), 100);
  EXPECT_EQ(SelectedCount(c, t, 0, 0, 0.0), 50);
  EXPECT_EQ(SelectedCount(c, t, 0, 0, 100.0), 400);
}

TEST(ScoreStatistics, VarianceAndEntropy) {
  std::vector<float> s = {1, 2, 3, 4};
  EXPECT_DOUBLE_EQ(ScoreVariance(s.data(), 4), 1.25);
  std::vector<float> u(16, 3.0f);
  EXPECT_NEAR(ScoreEntropy(u.data(), 16), std::log(16.0), 1e-12);
  std::vector<float> peaked = {100.0f, 0.0f, 0.0f};
  EXPECT_NEAR(ScoreEntropy(peaked.data(), 3), 0.0, 1e-12);
  EXPECT_DOUBLE_EQ(ScoreVariance(s.data(), 1), 0.0);
}

}  // namespace
}  // namespace gsa
