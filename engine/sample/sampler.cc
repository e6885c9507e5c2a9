#include "engine/sample/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace gsa {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// vLLM's _SAMPLING_EPS: below it a temperature means greedy (dividing by it would only turn the
// softmax into an argmax with overflow on the way).
constexpr double kGreedyTemperature = 1e-5;

// Top-p narrows its candidate range by quickselect until it is this short, then sorts it.
constexpr int64_t kTopPSortedRange = 64;

// A logit as the sampler sees it: NaN (a broken model row) can never be chosen.
double Clean(float x) { return std::isnan(x) ? -kInf : static_cast<double>(x); }

// The splitmix64 finalizer: a bijective 64-bit mix with full avalanche.
uint64_t Mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Index of the largest value of v[0 … n), the lowest index among equals.
int64_t ArgMax(const double* v, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (v[i] > v[best]) best = i;
  }
  return best;
}

// The greedy token of a row of logits: the lowest index holding the largest value, where a NaN
// never compares greater (it acts as -inf); 0 when nothing is above -inf. Two passes, each
// without a loop-carried compare: the maximum (maxps(x, m) is exactly `x > m ? x : m`, so a NaN
// x keeps m), then the first index equal to it (every index before it holds less, or NaN). With a
// 152K-entry vocabulary this is ~5x the simple loop on the engine thread, once per sequence per
// step; the plain-C++ tail and fallback give the same index.
int64_t GreedyToken(const float* v, int64_t n) {
  constexpr float kNegInfF = -std::numeric_limits<float>::infinity();
  float best = kNegInfF;
  int64_t i = 0;
#if defined(__SSE2__)
  __m128 m0 = _mm_set1_ps(kNegInfF), m1 = m0, m2 = m0, m3 = m0;
  for (; i + 16 <= n; i += 16) {
    m0 = _mm_max_ps(_mm_loadu_ps(v + i), m0);
    m1 = _mm_max_ps(_mm_loadu_ps(v + i + 4), m1);
    m2 = _mm_max_ps(_mm_loadu_ps(v + i + 8), m2);
    m3 = _mm_max_ps(_mm_loadu_ps(v + i + 12), m3);
  }
  alignas(16) float lanes[16];
  _mm_store_ps(lanes, m0);
  _mm_store_ps(lanes + 4, m1);
  _mm_store_ps(lanes + 8, m2);
  _mm_store_ps(lanes + 12, m3);
  for (const float x : lanes) best = x > best ? x : best;
#endif
  for (; i < n; ++i) best = v[i] > best ? v[i] : best;
  if (!(best > kNegInfF)) return 0;
  int64_t j = 0;
#if defined(__SSE2__)
  const __m128 target = _mm_set1_ps(best);
  for (; j + 4 <= n; j += 4) {
    const int hits = _mm_movemask_ps(_mm_cmpeq_ps(_mm_loadu_ps(v + j), target));
    if (hits != 0) return j + __builtin_ctz(static_cast<unsigned>(hits));
  }
#endif
  for (; j < n; ++j) {
    if (v[j] == best) return j;
  }
  return 0;  // not reached: best is one of the values
}

}  // namespace

TokenLogprob RawLogprobs(const float* logits, int64_t vocab, int32_t token, int32_t top_n) {
  double m = -kInf;
  for (int64_t i = 0; i < vocab; ++i) m = std::max(m, Clean(logits[i]));

  // logprob(x) = x - log Σ e^x, with the max subtracted first. A non-finite max (all -inf, or
  // +inf present) has no such form: the tokens equal to it split the mass.
  double log_z = 0.0;
  double tie_logprob = 0.0;
  const bool finite_max = std::isfinite(m);
  if (finite_max) {
    double z = 0.0;
    for (int64_t i = 0; i < vocab; ++i) z += std::exp(Clean(logits[i]) - m);
    log_z = m + std::log(z);
  } else {
    int64_t at_max = 0;
    for (int64_t i = 0; i < vocab; ++i) at_max += Clean(logits[i]) == m ? 1 : 0;
    tie_logprob = -std::log(static_cast<double>(at_max));
  }
  auto logprob = [&](int64_t i) -> float {
    const double x = Clean(logits[i]);
    if (finite_max) return static_cast<float>(x - log_z);
    return static_cast<float>(x == m ? tie_logprob : -kInf);
  };

  TokenLogprob out;
  out.token_id = token;
  out.logprob = token >= 0 && token < vocab ? logprob(token) : static_cast<float>(-kInf);

  // Top-N by insertion into a short sorted list. Ids are scanned ascending, so a newcomer goes
  // after the equal logits already there: ties keep the lower id first.
  const int64_t n = std::min<int64_t>(std::max(top_n, 0), vocab);
  if (n == 0) return out;
  std::vector<std::pair<int32_t, double>> top;  // (id, clean logit), best first
  top.reserve(static_cast<size_t>(n) + 1);
  for (int64_t i = 0; i < vocab; ++i) {
    const double x = Clean(logits[i]);
    if (static_cast<int64_t>(top.size()) == n && !(x > top.back().second)) continue;
    auto at = std::find_if(top.begin(), top.end(), [x](const auto& e) { return e.second < x; });
    top.insert(at, {static_cast<int32_t>(i), x});
    if (static_cast<int64_t>(top.size()) > n) top.pop_back();
  }
  out.top.reserve(top.size());
  for (const auto& [id, x] : top) out.top.emplace_back(id, logprob(id));
  return out;
}

double SamplingUniform(uint64_t seed, uint64_t step) {
  // Each key is mixed on its own before combining, so neighbouring seeds and neighbouring steps
  // land far apart; the final mix spreads the combination over all 64 bits.
  const uint64_t h = Mix64(Mix64(seed) ^ Mix64(step ^ 0x632BE59BD9B4E019ULL));
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

void Sampler::Reserve(int64_t vocab) {
  const size_t v = static_cast<size_t>(vocab);
  if (scores_.size() == v) return;
  scores_.resize(v);
  weights_.resize(v);
  order_.resize(v);
  counts_.assign(v, 0);
  marks_.assign(v, 0);
}

void Sampler::ApplyPenalties(const SamplingParams& params, absl::Span<const int32_t> prompt,
                             absl::Span<const int32_t> output) {
  const int64_t vocab = static_cast<int64_t>(scores_.size());
  auto in_vocab = [vocab](int32_t t) { return t >= 0 && t < vocab; };

  const double rep = params.repetition_penalty;
  if (rep != 1.0) {
    // Once per distinct token, whether it appears in the prompt, the output or both.
    auto penalize = [&](int32_t t) {
      if (!in_vocab(t) || marks_[static_cast<size_t>(t)]) return;
      marks_[static_cast<size_t>(t)] = 1;
      double& s = scores_[static_cast<size_t>(t)];
      s = s > 0.0 ? s / rep : s * rep;
    };
    for (const int32_t t : prompt) penalize(t);
    for (const int32_t t : output) penalize(t);
    for (const int32_t t : prompt) {
      if (in_vocab(t)) marks_[static_cast<size_t>(t)] = 0;
    }
    for (const int32_t t : output) {
      if (in_vocab(t)) marks_[static_cast<size_t>(t)] = 0;
    }
  }

  const double freq = params.frequency_penalty;
  const double pres = params.presence_penalty;
  if (freq != 0.0 || pres != 0.0) {
    for (const int32_t t : output) {
      if (in_vocab(t)) ++counts_[static_cast<size_t>(t)];
    }
    // The first occurrence applies the token's whole penalty and clears its count, so later
    // occurrences skip it and counts_ is all zero again afterwards.
    for (const int32_t t : output) {
      if (!in_vocab(t)) continue;
      int32_t& c = counts_[static_cast<size_t>(t)];
      if (c == 0) continue;
      scores_[static_cast<size_t>(t)] -= static_cast<double>(c) * freq + pres;
      c = 0;
    }
  }
}

bool Sampler::Before(int32_t a, int32_t b) const {
  // (score desc, id asc): a total order, since scores hold no NaN. Score order is probability
  // order (exp is monotone) without the ties that rounding of exp would add.
  const double sa = scores_[static_cast<size_t>(a)];
  const double sb = scores_[static_cast<size_t>(b)];
  return sa > sb || (sa == sb && a < b);
}

int64_t Sampler::TopPPrefix(float top_p, int64_t n) {
  auto before = [this](int32_t a, int32_t b) { return Before(a, b); };
  auto weight = [this](int64_t j) { return weights_[static_cast<size_t>(order_[j])]; };
  double total = 0.0;
  for (int64_t j = 0; j < n; ++j) total += weight(j);
  const double threshold = static_cast<double>(top_p) * total;
  // Quickselect on the answer instead of sorting: invariant: order_[0 … lo) holds the first lo
  // tokens of the order (in some order), their mass `mass_lo` is < threshold, and the answer
  // lies in (lo, hi]. Expected O(n) even when top-p keeps most of a flat vocabulary.
  int64_t lo = 0;
  int64_t hi = n;
  double mass_lo = 0.0;
  while (hi - lo > kTopPSortedRange) {
    const int64_t mid = lo + (hi - lo) / 2;
    std::nth_element(order_.begin() + lo, order_.begin() + mid, order_.begin() + hi, before);
    double m = 0.0;
    for (int64_t j = lo; j <= mid; ++j) m += weight(j);
    if (mass_lo + m >= threshold) {
      hi = mid + 1;
    } else {
      mass_lo += m;
      lo = mid + 1;
    }
  }
  std::sort(order_.begin() + lo, order_.begin() + hi, before);
  for (int64_t j = lo; j < hi; ++j) {
    mass_lo += weight(j);
    if (mass_lo >= threshold) return j + 1;
  }
  return hi;  // rounding kept the sum a hair short: keep the whole candidate range
}

void Sampler::Filter(const SamplingParams& params, int64_t vocab) {
  const int64_t k = params.top_k > 0 ? std::min<int64_t>(params.top_k, vocab) : vocab;
  const bool top_p = params.top_p < 1.0f;
  if (k < vocab || top_p) {
    std::iota(order_.begin(), order_.begin() + vocab, 0);
    int64_t keep = vocab;
    if (k < vocab) {
      std::nth_element(order_.begin(), order_.begin() + (k - 1), order_.begin() + vocab,
                       [this](int32_t a, int32_t b) { return Before(a, b); });
      keep = k;
    }
    if (top_p) keep = TopPPrefix(params.top_p, keep);
    for (int64_t j = keep; j < vocab; ++j) weights_[static_cast<size_t>(order_[j])] = 0.0;
  }
  // The most likely token always survives top-k and top-p with weight 1 (weights are relative
  // to the max), so min_p · max prob is min_p in weight units.
  const double min_p = params.min_p;
  if (min_p > 0.0) {
    for (int64_t i = 0; i < vocab; ++i) {
      double& w = weights_[static_cast<size_t>(i)];
      if (w < min_p) w = 0.0;
    }
  }
}

SampleResult Sampler::Sample(const float* logits, int64_t vocab, const SamplingParams& params,
                             uint64_t seed, absl::Span<const int32_t> prompt,
                             absl::Span<const int32_t> output, uint64_t step) {
  if (params.temperature < kGreedyTemperature && params.repetition_penalty == 1.0 &&
      params.frequency_penalty == 0.0 && params.presence_penalty == 0.0) {
    // Greedy without penalties (the common serving case, once per sequence per step on the engine
    // thread): the argmax straight from the logits, the same token as ArgMax over Clean()ed
    // scores — a NaN never compares greater, so it acts as -inf; ties keep the lowest id.
    SampleResult result;
    result.token = static_cast<int32_t>(GreedyToken(logits, vocab));
    if (params.return_logprobs) result.logprob = RawLogprobs(logits, vocab, result.token, params.logprobs);
    return result;
  }
  Reserve(vocab);
  for (int64_t i = 0; i < vocab; ++i) scores_[static_cast<size_t>(i)] = Clean(logits[i]);
  ApplyPenalties(params, prompt, output);

  int64_t token = 0;
  const double temperature = params.temperature;
  if (temperature < kGreedyTemperature) {
    token = ArgMax(scores_.data(), vocab);
  } else {
    for (int64_t i = 0; i < vocab; ++i) scores_[static_cast<size_t>(i)] /= temperature;
    const double max_score = scores_[static_cast<size_t>(ArgMax(scores_.data(), vocab))];
    // Equality first: it gives +inf (and an all -inf row) weight 1 instead of exp(NaN).
    for (int64_t i = 0; i < vocab; ++i) {
      const double s = scores_[static_cast<size_t>(i)];
      weights_[static_cast<size_t>(i)] = s == max_score ? 1.0 : std::exp(s - max_score);
    }
    Filter(params, vocab);

    // Inverse CDF over ids ascending, one fixed summation order, so the draw is reproducible.
    double total = 0.0;
    for (int64_t i = 0; i < vocab; ++i) total += weights_[static_cast<size_t>(i)];
    const double target = SamplingUniform(seed, step) * total;
    double cum = 0.0;
    int64_t last_kept = -1;
    token = -1;
    for (int64_t i = 0; i < vocab; ++i) {
      const double w = weights_[static_cast<size_t>(i)];
      if (w <= 0.0) continue;
      cum += w;
      last_kept = i;
      if (cum > target) {
        token = i;
        break;
      }
    }
    // Rounding can leave the running sum a hair below target at the end: the last kept token.
    if (token < 0) token = last_kept;
  }

  SampleResult result;
  result.token = static_cast<int32_t>(token);
  if (params.return_logprobs) {
    result.logprob = RawLogprobs(logits, vocab, result.token, params.logprobs);
  }
  return result;
}

}  // namespace gsa
