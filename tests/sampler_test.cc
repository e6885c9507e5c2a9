// The sampler: penalties, temperature, top-k / top-p / min-p, seeded reproducible draws,
// raw logprobs, and the validation of sampling and stopping parameters.
#include "engine/sample/sampler.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "engine/sample/sampling_params.h"

namespace gsa {
namespace {

using ::testing::HasSubstr;

SamplingParams Greedy() {
  SamplingParams p;
  p.temperature = 0.0f;
  return p;
}

// Counts of each token over `n` draws with seeds 0 … n-1 at step 0.
std::vector<int64_t> Histogram(Sampler& sampler, const std::vector<float>& logits,
                               const SamplingParams& params, int64_t n) {
  std::vector<int64_t> counts(logits.size(), 0);
  for (int64_t s = 0; s < n; ++s) {
    const SampleResult r = sampler.Sample(logits.data(), static_cast<int64_t>(logits.size()),
                                          params, static_cast<uint64_t>(s), {}, {}, 0);
    ++counts[static_cast<size_t>(r.token)];
  }
  return counts;
}

std::vector<double> Softmax(const std::vector<float>& logits, double temperature) {
  double m = -1e300;
  for (float x : logits) m = std::max<double>(m, x / temperature);
  std::vector<double> p;
  double z = 0.0;
  for (float x : logits) {
    p.push_back(std::exp(x / temperature - m));
    z += p.back();
  }
  for (double& v : p) v /= z;
  return p;
}

// Pearson's chi-square statistic of observed counts against expected probabilities.
double ChiSquare(const std::vector<int64_t>& counts, const std::vector<double>& probs) {
  int64_t n = 0;
  for (int64_t c : counts) n += c;
  double chi = 0.0;
  for (size_t i = 0; i < counts.size(); ++i) {
    const double e = probs[i] * static_cast<double>(n);
    const double d = static_cast<double>(counts[i]) - e;
    chi += d * d / e;
  }
  return chi;
}

// ---- Greedy and temperature ---------------------------------------------------------------------

TEST(Sampler, GreedyTakesTheArgmax) {
  Sampler s;
  const std::vector<float> logits = {0.1f, 2.5f, -1.0f, 2.4f};
  for (uint64_t seed = 0; seed < 20; ++seed) {
    EXPECT_EQ(s.Sample(logits.data(), 4, Greedy(), seed, {}, {}, seed).token, 1);
  }
}

TEST(Sampler, GreedyTiesGoToTheLowestId) {
  Sampler s;
  const std::vector<float> logits = {1.0f, 3.0f, 3.0f, 3.0f};
  EXPECT_EQ(s.Sample(logits.data(), 4, Greedy(), 7, {}, {}, 0).token, 1);
}

TEST(Sampler, TemperatureSamplesTheSoftmaxDistribution) {
  Sampler s;
  const std::vector<float> logits = {0.0f, 1.0f, 2.0f, 0.5f, -1.0f};
  for (const float t : {0.5f, 1.0f, 2.0f}) {
    SamplingParams p;
    p.temperature = t;
    const std::vector<int64_t> counts = Histogram(s, logits, p, 20000);
    // 4 degrees of freedom: P(chi² > 30) ≈ 5e-6 for a correct sampler; a sampler that ignores
    // the temperature or is off by a token lands in the hundreds or more.
    EXPECT_LT(ChiSquare(counts, Softmax(logits, t)), 30.0) << "temperature " << t;
  }
  // And the temperature matters: the T=0.5 distribution is not the T=2 one.
  SamplingParams cold;
  cold.temperature = 0.5f;
  EXPECT_GT(ChiSquare(Histogram(s, logits, cold, 20000), Softmax(logits, 2.0)), 1000.0);
}

TEST(Sampler, VeryHighTemperatureIsNearlyUniform) {
  Sampler s;
  const std::vector<float> logits = {0.0f, 5.0f, 10.0f};
  SamplingParams p;
  p.temperature = 100.0f;
  const std::vector<int64_t> counts = Histogram(s, logits, p, 6000);
  for (int64_t c : counts) EXPECT_GT(c, 1500);
}

// ---- Reproducibility ---------------------------------------------------------------------------

TEST(Sampler, SameSeedAndStepGiveTheSameToken) {
  const std::vector<float> logits(50, 0.0f);
  SamplingParams p;
  Sampler a;
  Sampler b;
  for (uint64_t step = 0; step < 100; ++step) {
    const int32_t first = a.Sample(logits.data(), 50, p, 1234, {}, {}, step).token;
    // A different instance, after unrelated calls, gives the same token: no state is carried.
    b.Sample(logits.data(), 50, p, 99, {}, {}, step + 7);
    EXPECT_EQ(b.Sample(logits.data(), 50, p, 1234, {}, {}, step).token, first);
  }
}

TEST(Sampler, DifferentStepsAndSeedsGiveVariedTokens) {
  const std::vector<float> logits(16, 0.0f);
  SamplingParams p;
  Sampler s;
  std::set<int32_t> by_step;
  std::set<int32_t> by_seed;
  for (uint64_t i = 0; i < 100; ++i) {
    by_step.insert(s.Sample(logits.data(), 16, p, 42, {}, {}, i).token);
    by_seed.insert(s.Sample(logits.data(), 16, p, i, {}, {}, 3).token);
  }
  EXPECT_GE(by_step.size(), 12u);
  EXPECT_GE(by_seed.size(), 12u);
}

TEST(SamplingUniform, IsInUnitIntervalAndEvenlySpread) {
  double sum = 0.0;
  int64_t low = 0;
  const int64_t n = 100000;
  for (int64_t i = 0; i < n; ++i) {
    const double u = SamplingUniform(static_cast<uint64_t>(i / 100), static_cast<uint64_t>(i % 100));
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
    low += u < 0.1 ? 1 : 0;
  }
  EXPECT_NEAR(sum / n, 0.5, 0.005);
  EXPECT_NEAR(static_cast<double>(low) / n, 0.1, 0.005);
  EXPECT_EQ(SamplingUniform(5, 9), SamplingUniform(5, 9));
  EXPECT_NE(SamplingUniform(5, 9), SamplingUniform(5, 10));
  EXPECT_NE(SamplingUniform(5, 9), SamplingUniform(6, 9));
}

TEST(Sampler, PriorPenaltiesDoNotLeakIntoLaterCalls) {
  Sampler s;
  const std::vector<float> logits = {2.0f, 1.5f};
  SamplingParams p = Greedy();
  p.repetition_penalty = 4.0f;
  p.frequency_penalty = 2.0f;
  p.presence_penalty = 2.0f;
  const std::vector<int32_t> out = {0, 0};
  EXPECT_EQ(s.Sample(logits.data(), 2, p, 0, out, out, 0).token, 1);
  EXPECT_EQ(s.Sample(logits.data(), 2, p, 0, {}, {}, 0).token, 0);
}

// ---- Filtering ---------------------------------------------------------------------------------

TEST(Sampler, TopKOfOneIsGreedy) {
  Sampler s;
  const std::vector<float> logits = {0.3f, 1.0f, 0.9f, 0.95f, -2.0f};
  SamplingParams p;
  p.top_k = 1;
  p.temperature = 1.5f;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    EXPECT_EQ(s.Sample(logits.data(), 5, p, seed, {}, {}, 0).token,
              s.Sample(logits.data(), 5, Greedy(), seed, {}, {}, 0).token);
  }
}

TEST(Sampler, TopKKeepsTheKMostLikelyWithTiesToLowerIds) {
  Sampler s;
  const std::vector<float> logits = {1.0f, 0.0f, 1.0f, 1.0f, 1.0f};
  SamplingParams p;
  p.top_k = 2;
  const std::vector<int64_t> counts = Histogram(s, logits, p, 2000);
  EXPECT_GT(counts[0], 800);
  EXPECT_GT(counts[2], 800);
  EXPECT_EQ(counts[1] + counts[3] + counts[4], 0);
}

TEST(Sampler, TopKLargerThanTheVocabularyKeepsEverything) {
  Sampler s;
  const std::vector<float> logits = {0.0f, 0.0f, 0.0f};
  SamplingParams p;
  p.top_k = 1000;
  for (int64_t c : Histogram(s, logits, p, 3000)) EXPECT_GT(c, 800);
}

TEST(Sampler, SmallTopPKeepsOnlyTheTopToken) {
  Sampler s;
  const std::vector<float> logits = {0.0f, 3.0f, 1.0f, 2.9f};
  SamplingParams p;
  p.top_p = 0.05f;
  for (int64_t c : {0, 2, 3}) EXPECT_EQ(Histogram(s, logits, p, 500)[static_cast<size_t>(c)], 0);
  // Exact ties: the order is (probability desc, id asc), so the lower id is the top token.
  const std::vector<float> tied = {0.0f, 3.0f, 3.0f};
  const std::vector<int64_t> counts = Histogram(s, tied, p, 500);
  EXPECT_EQ(counts[1], 500);
}

TEST(Sampler, TopPKeepsTheShortestPrefixReachingP) {
  Sampler s;
  // probabilities 0.5, 0.3, 0.15, 0.05
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f),
                                     std::log(0.05f)};
  SamplingParams p;
  p.top_p = 0.7f;  // 0.5 < 0.7 ≤ 0.8: tokens 0 and 1, renormalized to 5/8 and 3/8
  const std::vector<int64_t> counts = Histogram(s, logits, p, 8000);
  EXPECT_EQ(counts[2] + counts[3], 0);
  EXPECT_LT(ChiSquare({counts[0], counts[1]}, {5.0 / 8, 3.0 / 8}), 25.0);
  p.top_p = 0.9f;  // 0.8 < 0.9 ≤ 0.95: three tokens
  const std::vector<int64_t> three = Histogram(s, logits, p, 8000);
  EXPECT_GT(three[2], 0);
  EXPECT_EQ(three[3], 0);
}

TEST(Sampler, TopPOverALargeFlatVocabularyKeepsTheRightCount) {
  Sampler s;
  // 1000 equal tokens: top_p 0.25 keeps exactly ids 0 … 249 (ties → lower ids first).
  const std::vector<float> logits(1000, 0.5f);
  SamplingParams p;
  p.top_p = 0.25f;
  std::set<int32_t> seen;
  for (uint64_t seed = 0; seed < 5000; ++seed) {
    const int32_t t = s.Sample(logits.data(), 1000, p, seed, {}, {}, 0).token;
    EXPECT_LT(t, 250);
    seen.insert(t);
  }
  EXPECT_GT(seen.size(), 240u);
}

TEST(Sampler, TopPAppliesToWhatTopKKept) {
  Sampler s;
  // probabilities ∝ 4, 3, 2, 1; top_k 2 leaves 4/7, 3/7, and top_p 0.5 of that is token 0 alone.
  const std::vector<float> logits = {std::log(4.0f), std::log(3.0f), std::log(2.0f),
                                     std::log(1.0f)};
  SamplingParams p;
  p.top_k = 2;
  p.top_p = 0.5f;
  EXPECT_EQ(Histogram(s, logits, p, 500)[0], 500);
  p.top_p = 0.6f;  // 4/7 ≈ 0.571 < 0.6: both survivors
  const std::vector<int64_t> counts = Histogram(s, logits, p, 2000);
  EXPECT_GT(counts[1], 0);
  EXPECT_EQ(counts[2] + counts[3], 0);
}

// The straightforward definition of Sample for temperature > 0 and no penalties: sort the whole
// vocabulary by (score desc, id asc), cut by top-k, top-p and min-p, draw by inverse CDF over ids.
int32_t ReferenceSample(const std::vector<float>& logits, const SamplingParams& p, uint64_t seed,
                        uint64_t step) {
  const size_t v = logits.size();
  std::vector<double> score(v);
  for (size_t i = 0; i < v; ++i) score[i] = static_cast<double>(logits[i]) / p.temperature;
  std::vector<int32_t> order(v);
  for (size_t i = 0; i < v; ++i) order[i] = static_cast<int32_t>(i);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return score[a] > score[b] || (score[a] == score[b] && a < b);
  });
  std::vector<double> w(v);
  for (size_t i = 0; i < v; ++i) w[i] = std::exp(score[i] - score[order[0]]);
  size_t keep = p.top_k > 0 ? std::min(v, static_cast<size_t>(p.top_k)) : v;
  double total = 0.0;
  for (size_t j = 0; j < keep; ++j) total += w[order[j]];
  double cum = 0.0;
  for (size_t j = 0; j < keep; ++j) {
    cum += w[order[j]];
    if (cum >= p.top_p * total) {
      keep = j + 1;
      break;
    }
  }
  for (size_t j = keep; j < v; ++j) w[order[j]] = 0.0;
  for (double& x : w) {
    if (x < p.min_p) x = 0.0;
  }
  double sum = 0.0;
  for (double x : w) sum += x;
  const double target = SamplingUniform(seed, step) * sum;
  double run = 0.0;
  int32_t last = -1;
  for (size_t i = 0; i < v; ++i) {
    if (w[i] <= 0.0) continue;
    run += w[i];
    last = static_cast<int32_t>(i);
    if (run > target) return last;
  }
  return last;
}

TEST(Sampler, FilteringMatchesAFullSortReference) {
  Sampler s;
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    // Quantized logits: many exact ties, so the tie order is exercised at every cut.
    const size_t v = 50 + rng() % 2000;
    std::vector<float> logits(v);
    for (float& x : logits) x = static_cast<float>(static_cast<int>(rng() % 41) - 20) * 0.25f;
    SamplingParams p;
    p.temperature = 0.3f + static_cast<float>(rng() % 20) * 0.1f;
    p.top_k = rng() % 3 == 0 ? 0 : static_cast<int32_t>(1 + rng() % 300);
    p.top_p = rng() % 3 == 0 ? 1.0f : 0.05f + static_cast<float>(rng() % 95) * 0.01f;
    p.min_p = rng() % 2 == 0 ? 0.0f : static_cast<float>(rng() % 50) * 0.01f;
    for (uint64_t step = 0; step < 20; ++step) {
      const uint64_t seed = 1000 + static_cast<uint64_t>(trial);
      ASSERT_EQ(s.Sample(logits.data(), static_cast<int64_t>(v), p, seed, {}, {}, step).token,
                ReferenceSample(logits, p, seed, step))
          << "trial " << trial << " vocab " << v << " top_k " << p.top_k << " top_p " << p.top_p
          << " min_p " << p.min_p << " temperature " << p.temperature;
    }
  }
}

// A draw near 1 picks the last kept token in id order; with logits decreasing in id that is the
// last token of the cut, so each filter's exact cut point is visible in one call.
TEST(Sampler, EachFilterCutsAtExactlyTheRightToken) {
  uint64_t seed = 0;
  while (SamplingUniform(seed, 0) < 0.99999) ++seed;  // 1 - u below any token's share
  const int64_t v = 3000;
  std::vector<float> logits(v);
  for (int64_t i = 0; i < v; ++i) logits[i] = -0.0005f * static_cast<float>(i);
  std::vector<double> w(v);  // weights at temperature 1, relative to token 0
  for (int64_t i = 0; i < v; ++i) w[i] = std::exp(static_cast<double>(logits[i]) - logits[0]);
  double total = 0.0;
  for (double x : w) total += x;
  Sampler s;
  for (int32_t k : {1, 2, 63, 64, 65, 100, 257, 1500, 2999}) {
    SamplingParams p;
    p.top_k = k;
    EXPECT_EQ(s.Sample(logits.data(), v, p, seed, {}, {}, 0).token, k - 1) << "top_k " << k;
  }
  for (int i = 1; i <= 100; ++i) {
    SamplingParams p;
    p.top_p = static_cast<float>(i) * 0.0099f;
    int32_t last = 0;
    double cum = 0.0;
    for (int64_t j = 0; j < v; ++j) {
      cum += w[j];
      last = static_cast<int32_t>(j);
      if (cum >= static_cast<double>(p.top_p) * total) break;
    }
    EXPECT_EQ(s.Sample(logits.data(), v, p, seed, {}, {}, 0).token, last) << "top_p " << p.top_p;
  }
  for (const float min_p : {0.5f, 0.9f, 0.3f, 0.99f}) {
    SamplingParams p;
    p.min_p = min_p;
    int32_t last = 0;
    for (int64_t j = 0; j < v; ++j) {
      if (w[j] >= min_p) last = static_cast<int32_t>(j);
    }
    EXPECT_EQ(s.Sample(logits.data(), v, p, seed, {}, {}, 0).token, last) << "min_p " << min_p;
  }
}

TEST(Sampler, MinPDropsTokensBelowAFractionOfTheTopProbability) {
  Sampler s;
  // probabilities 0.5, 0.3, 0.2; min_p 0.5 drops prob < 0.25, i.e. token 2.
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  SamplingParams p;
  p.min_p = 0.5f;
  const std::vector<int64_t> counts = Histogram(s, logits, p, 4000);
  EXPECT_EQ(counts[2], 0);
  EXPECT_LT(ChiSquare({counts[0], counts[1]}, {0.625, 0.375}), 25.0);
  // min_p 0 keeps everything.
  p.min_p = 0.0f;
  EXPECT_GT(Histogram(s, logits, p, 4000)[2], 0);
}

TEST(Sampler, MinPIsRelativeToTheTemperedDistribution) {
  Sampler s;
  // At T=1 the ratio p2/p0 is 0.4 (kept by min_p 0.3); at T=0.5 it is 0.16 (dropped).
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  SamplingParams p;
  p.min_p = 0.3f;
  EXPECT_GT(Histogram(s, logits, p, 3000)[2], 0);
  p.temperature = 0.5f;
  EXPECT_EQ(Histogram(s, logits, p, 3000)[2], 0);
}

TEST(Sampler, NanLogitsAreNeverSampled) {
  Sampler s;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> logits = {nan, 0.0f, nan, 0.0f};
  SamplingParams p;
  const std::vector<int64_t> counts = Histogram(s, logits, p, 1000);
  EXPECT_EQ(counts[0] + counts[2], 0);
  EXPECT_EQ(s.Sample(logits.data(), 4, Greedy(), 0, {}, {}, 0).token, 1);
}

TEST(Sampler, GreedyOverOnlyNanAndMinusInfinityTakesTheFirstId) {
  Sampler s;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> all_bad = {nan, -inf, nan, -inf};
  EXPECT_EQ(s.Sample(all_bad.data(), 4, Greedy(), 0, {}, {}, 0).token, 0);
  const std::vector<float> nan_first = {nan, -inf, -3.0f, -3.0f};
  EXPECT_EQ(s.Sample(nan_first.data(), 4, Greedy(), 0, {}, {}, 0).token, 2);
  const std::vector<float> plus_inf = {1.0f, inf, nan, inf};
  EXPECT_EQ(s.Sample(plus_inf.data(), 4, Greedy(), 0, {}, {}, 0).token, 1);
}

// Greedy without penalties takes a vectorized two-pass path: on rows of many lengths (vector
// tails, 152K entries) with NaN, ±inf, ±0 and repeated maxima at random places, it picks exactly
// the token of the scalar rule (the first index of the largest value, NaN below everything, 0 when
// nothing is above -inf) — and of the penalty path's argmax, forced with a neutral penalty.
TEST(Sampler, GreedyFastPathPicksTheScalarRulesTokenOnEveryRow) {
  Sampler s;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  std::mt19937 rng(20261129);
  std::normal_distribution<float> normal;
  auto scalar = [&](const std::vector<float>& v) {
    int32_t best = 0;
    float best_v = std::isnan(v[0]) ? -inf : v[0];
    for (size_t i = 1; i < v.size(); ++i) {
      if (v[i] > best_v) {
        best_v = v[i];
        best = static_cast<int32_t>(i);
      }
    }
    return best;
  };
  SamplingParams slow = Greedy();
  slow.presence_penalty = 1e-30;  // takes the general path; no token was seen, so nothing changes
  const std::vector<float> specials = {nan, inf, -inf, 0.0f, -0.0f, 7.5f};
  for (int trial = 0; trial < 400; ++trial) {
    const size_t n = trial == 0 ? 151936 : 1 + rng() % (trial % 4 == 0 ? 9000 : 70);
    std::vector<float> v(n);
    const int mode = trial % 5;  // 0: normal values; 1: few distinct values (ties); 2: mostly NaN/-inf
    for (float& x : v) {
      x = mode == 1 ? static_cast<float>(rng() % 4) : mode == 2 ? (rng() % 2 ? nan : -inf) : normal(rng);
    }
    const int extra = static_cast<int>(rng() % 4);
    for (int e = 0; e < extra; ++e) v[rng() % n] = specials[rng() % specials.size()];
    const int32_t want = scalar(v);
    const int32_t got = s.Sample(v.data(), static_cast<int64_t>(n), Greedy(), 0, {}, {}, 0).token;
    ASSERT_EQ(got, want) << "trial " << trial << ", " << n << " logits";
    ASSERT_EQ(s.Sample(v.data(), static_cast<int64_t>(n), slow, 0, {}, {}, 0).token, want) << "trial " << trial;
  }
}

// ---- Penalties ---------------------------------------------------------------------------------

TEST(Sampler, RepetitionPenaltyDividesPositiveLogitsOfSeenTokens) {
  Sampler s;
  const std::vector<float> logits = {2.0f, 1.5f};
  SamplingParams p = Greedy();
  p.repetition_penalty = 2.0f;  // 2.0 / 2 = 1.0 < 1.5
  const std::vector<int32_t> seen = {0};
  EXPECT_EQ(s.Sample(logits.data(), 2, p, 0, {}, seen, 0).token, 1);
  EXPECT_EQ(s.Sample(logits.data(), 2, p, 0, seen, {}, 0).token, 1) << "prompt tokens count";
  EXPECT_EQ(s.Sample(logits.data(), 2, p, 0, {}, {}, 0).token, 0);
}

TEST(Sampler, RepetitionPenaltyMultipliesNegativeLogitsOfSeenTokens) {
  Sampler s;
  const std::vector<float> logits = {-1.0f, -1.5f};
  SamplingParams p = Greedy();
  p.repetition_penalty = 2.0f;  // -1.0 · 2 = -2.0 < -1.5
  const std::vector<int32_t> seen = {0};
  EXPECT_EQ(s.Sample(logits.data(), 2, p, 0, {}, seen, 0).token, 1);
  // Below 1 it rewards repetition: -1.5 · 0.5 = -0.75 > -1.0
  p.repetition_penalty = 0.5f;
  const std::vector<int32_t> seen1 = {1};
  EXPECT_EQ(s.Sample(logits.data(), 2, p, 0, {}, seen1, 0).token, 1);
}

TEST(Sampler, RepetitionPenaltyAppliesOncePerDistinctToken) {
  Sampler s;
  const std::vector<float> logits = {4.0f, 1.5f};
  SamplingParams p = Greedy();
  p.repetition_penalty = 2.0f;  // once: 2.0 > 1.5; three times would give 0.5
  const std::vector<int32_t> seen = {0, 0, 0};
  EXPECT_EQ(s.Sample(logits.data(), 2, p, 0, seen, seen, 0).token, 0);
}

TEST(Sampler, FrequencyPenaltyScalesWithTheOutputCount) {
  Sampler s;
  const std::vector<float> logits = {2.0f, 1.5f};
  SamplingParams p = Greedy();
  p.frequency_penalty = 0.3f;
  const std::vector<int32_t> once = {0};       // 2.0 - 0.3 = 1.7 > 1.5
  const std::vector<int32_t> twice = {0, 1, 0};  // 2.0 - 0.6 = 1.4 > 1.5 - 0.3 = 1.2
  EXPECT_EQ(s.Sample(logits.data(), 2, p, 0, {}, once, 0).token, 0);
  EXPECT_EQ(s.Sample(logits.data(), 2, p, 0, {}, twice, 0).token, 0);
  const std::vector<int32_t> two_zeros = {0, 0};  // 1.4 < 1.5
  EXPECT_EQ(s.Sample(logits.data(), 2, p, 0, {}, two_zeros, 0).token, 1);
  // Prompt tokens do not count.
  const std::vector<int32_t> prompt = {0, 0, 0, 0};
  EXPECT_EQ(s.Sample(logits.data(), 2, p, 0, prompt, {}, 0).token, 0);
}

TEST(Sampler, PresencePenaltyIsFlatOnceATokenAppeared) {
  Sampler s;
  const std::vector<float> logits = {2.0f, 1.5f};
  SamplingParams p = Greedy();
  const std::vector<int32_t> thrice = {0, 0, 0};
  p.presence_penalty = 0.4f;  // 1.6 > 1.5 however often token 0 appeared
  EXPECT_EQ(s.Sample(logits.data(), 2, p, 0, {}, thrice, 0).token, 0);
  p.presence_penalty = 0.6f;  // 1.4 < 1.5
  const std::vector<int32_t> once = {0};
  EXPECT_EQ(s.Sample(logits.data(), 2, p, 0, {}, once, 0).token, 1);
  // Negative values encourage: 1.5 + 0.6 > 2.0
  p.presence_penalty = -0.6f;
  const std::vector<int32_t> one = {1};
  EXPECT_EQ(s.Sample(logits.data(), 2, p, 0, {}, one, 0).token, 1);
  // Prompt tokens do not count.
  p.presence_penalty = 2.0f;
  EXPECT_EQ(s.Sample(logits.data(), 2, p, 0, once, {}, 0).token, 0);
}

TEST(Sampler, OutOfVocabularyHistoryTokensAreIgnored) {
  Sampler s;
  const std::vector<float> logits = {2.0f, 1.5f};
  SamplingParams p = Greedy();
  p.repetition_penalty = 2.0f;
  p.frequency_penalty = 1.0f;
  const std::vector<int32_t> bad = {-1, 2, 1000000};
  EXPECT_EQ(s.Sample(logits.data(), 2, p, 0, bad, bad, 0).token, 0);
}

// ---- Logprobs ----------------------------------------------------------------------------------

TEST(RawLogprobs, ProbabilitiesSumToOne) {
  const std::vector<float> logits = {0.3f, -2.0f, 5.0f, 1.25f, 1.25f, -40.0f, 0.0f};
  const int64_t v = static_cast<int64_t>(logits.size());
  double sum = 0.0;
  for (int32_t t = 0; t < v; ++t) sum += std::exp(RawLogprobs(logits.data(), v, t, 0).logprob);
  EXPECT_NEAR(sum, 1.0, 1e-6);
  // The top list over the whole vocabulary sums to one as well.
  const TokenLogprob all = RawLogprobs(logits.data(), v, 0, static_cast<int32_t>(v));
  ASSERT_EQ(all.top.size(), static_cast<size_t>(v));
  double top_sum = 0.0;
  for (const auto& [id, lp] : all.top) top_sum += std::exp(lp);
  EXPECT_NEAR(top_sum, 1.0, 1e-6);
}

TEST(RawLogprobs, TopIsMostLikelyFirstWithTiesToLowerIds) {
  const std::vector<float> logits = {0.3f, 1.25f, 5.0f, 1.25f, -1.0f, 1.25f};
  const TokenLogprob r = RawLogprobs(logits.data(), 6, 4, 4);
  EXPECT_EQ(r.token_id, 4);
  ASSERT_EQ(r.top.size(), 4u);
  EXPECT_EQ(r.top[0].first, 2);
  EXPECT_EQ(r.top[1].first, 1);
  EXPECT_EQ(r.top[2].first, 3);
  EXPECT_EQ(r.top[3].first, 5);
  EXPECT_GT(r.top[0].second, r.top[1].second);
  EXPECT_EQ(r.top[1].second, r.top[2].second);
  // The value is log_softmax: 5.0 - log Σ e^x.
  double z = 0.0;
  for (float x : logits) z += std::exp(static_cast<double>(x));
  EXPECT_NEAR(r.top[0].second, 5.0 - std::log(z), 1e-6);
  EXPECT_NEAR(r.logprob, -1.0 - std::log(z), 1e-6);
  // top_n beyond the vocabulary lists the whole vocabulary; 0 lists nothing.
  EXPECT_EQ(RawLogprobs(logits.data(), 6, 0, 100).top.size(), 6u);
  EXPECT_TRUE(RawLogprobs(logits.data(), 6, 0, 0).top.empty());
}

TEST(RawLogprobs, InfiniteMaximumSharesTheMassAmongTies) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> logits = {inf, 0.0f, inf};
  EXPECT_NEAR(RawLogprobs(logits.data(), 3, 0, 0).logprob, std::log(0.5), 1e-6);
  EXPECT_EQ(RawLogprobs(logits.data(), 3, 1, 0).logprob, -inf);
}

TEST(Sampler, ReportsTheRawLogprobOfTheSampledToken) {
  Sampler s;
  const std::vector<float> logits = {2.0f, 1.5f, 0.0f};
  SamplingParams p = Greedy();
  p.repetition_penalty = 2.0f;
  p.return_logprobs = true;
  p.logprobs = 2;
  const std::vector<int32_t> seen = {0};
  const SampleResult r = s.Sample(logits.data(), 3, p, 0, {}, seen, 0);
  ASSERT_EQ(r.token, 1);
  ASSERT_TRUE(r.logprob.has_value());
  // Before penalties: the reported distribution is the model's own.
  const TokenLogprob expected = RawLogprobs(logits.data(), 3, 1, 2);
  EXPECT_EQ(r.logprob->token_id, 1);
  EXPECT_EQ(r.logprob->logprob, expected.logprob);
  EXPECT_EQ(r.logprob->top, expected.top);
  EXPECT_EQ(r.logprob->top[0].first, 0);
}

TEST(Sampler, NoLogprobUnlessAsked) {
  Sampler s;
  const std::vector<float> logits = {2.0f, 1.5f};
  EXPECT_FALSE(s.Sample(logits.data(), 2, Greedy(), 0, {}, {}, 0).logprob.has_value());
}

// ---- Validation --------------------------------------------------------------------------------

absl::Status CheckSampling(void (*edit)(SamplingParams&)) {
  SamplingParams p;
  edit(p);
  return ValidateSamplingParams(p, 20);
}

TEST(ValidateSamplingParams, AcceptsDefaultsAndEdges) {
  EXPECT_TRUE(ValidateSamplingParams(SamplingParams(), 20).ok());
  SamplingParams p;
  p.temperature = 0.0f;
  p.top_p = 1.0f;
  p.top_k = 1;
  p.min_p = 1.0f;
  p.repetition_penalty = 0.01f;
  p.presence_penalty = -2.0f;
  p.frequency_penalty = 2.0f;
  p.logprobs = 20;
  EXPECT_TRUE(ValidateSamplingParams(p, 20).ok());
}

TEST(ValidateSamplingParams, NamesTheFieldTheValueAndTheRange) {
  struct Case {
    void (*edit)(SamplingParams&);
    std::string message;
  };
  const std::vector<Case> cases = {
      {[](SamplingParams& p) { p.temperature = -0.5f; }, "temperature -0.5 is outside [0, 100]"},
      {[](SamplingParams& p) { p.temperature = 250.0f; }, "temperature 250 is outside [0, 100]"},
      {[](SamplingParams& p) { p.temperature = std::nanf(""); }, "temperature nan is outside"},
      {[](SamplingParams& p) { p.top_p = 1.5f; }, "top_p 1.5 is outside (0, 1]"},
      {[](SamplingParams& p) { p.top_p = 0.0f; }, "top_p 0 is outside (0, 1]"},
      {[](SamplingParams& p) { p.top_k = -1; }, "top_k -1 is outside [0, inf)"},
      {[](SamplingParams& p) { p.min_p = 1.25f; }, "min_p 1.25 is outside [0, 1]"},
      {[](SamplingParams& p) { p.min_p = -0.1f; }, "min_p -0.1 is outside [0, 1]"},
      {[](SamplingParams& p) { p.repetition_penalty = 0.0f; },
       "repetition_penalty 0 is outside (0, inf)"},
      {[](SamplingParams& p) { p.repetition_penalty = std::numeric_limits<float>::infinity(); },
       "repetition_penalty inf is outside (0, inf)"},
      {[](SamplingParams& p) { p.presence_penalty = 2.5f; },
       "presence_penalty 2.5 is outside [-2, 2]"},
      {[](SamplingParams& p) { p.frequency_penalty = -3.0f; },
       "frequency_penalty -3 is outside [-2, 2]"},
      {[](SamplingParams& p) { p.logprobs = 21; }, "logprobs 21 is outside [0, 20]"},
      {[](SamplingParams& p) { p.logprobs = -1; }, "logprobs -1 is outside [0, 20]"},
  };
  for (const Case& c : cases) {
    const absl::Status s = CheckSampling(c.edit);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.message));
  }
}

TEST(ValidateStoppingParams, AcceptsDefaultsAndEdges) {
  EXPECT_TRUE(ValidateStoppingParams(StoppingParams(), 100).ok());
  StoppingParams p;
  p.max_tokens = 1;
  p.stop.assign(64, "x");
  p.stop_token_ids = {0, 99};
  EXPECT_TRUE(ValidateStoppingParams(p, 100).ok());
}

TEST(ValidateStoppingParams, NamesTheFieldTheValueAndTheRule) {
  StoppingParams p;
  p.max_tokens = 0;
  absl::Status s = ValidateStoppingParams(p, 100);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("max_tokens 0 is outside [1, inf)"));

  p = StoppingParams();
  p.stop = {"ok", ""};
  s = ValidateStoppingParams(p, 100);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("stop[1] is empty"));

  p = StoppingParams();
  p.stop.assign(65, "x");
  s = ValidateStoppingParams(p, 100);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("stop has 65 strings; at most 64"));

  p = StoppingParams();
  p.stop_token_ids = {3, 100};
  s = ValidateStoppingParams(p, 100);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("stop_token_ids[1] 100 is outside [0, 100)"));

  p.stop_token_ids = {-1};
  s = ValidateStoppingParams(p, 100);
  EXPECT_THAT(std::string(s.message()), HasSubstr("stop_token_ids[0] -1 is outside [0, 100)"));
}

}  // namespace
}  // namespace gsa
