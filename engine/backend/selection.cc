#include "engine/backend/selection.h"

#include <algorithm>
#include <cmath>

namespace gsa {

double ScoreVariance(const float* scores, int64_t n) {
  if (n <= 0) return 0.0;
  double mean = 0.0;
  for (int64_t i = 0; i < n; ++i) mean += scores[i];
  mean /= static_cast<double>(n);
  double var = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = scores[i] - mean;
    var += d * d;
  }
  return var / static_cast<double>(n);
}

double ScoreEntropy(const float* scores, int64_t n) {
  if (n <= 0) return 0.0;
  double mx = scores[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max<double>(mx, scores[i]);
  double z = 0.0;
  double ez = 0.0;  // Σ e^(x-m) (x-m)
  for (int64_t i = 0; i < n; ++i) {
    const double d = scores[i] - mx;
    const double e = std::exp(d);
    z += e;
    ez += e * d;
  }
  // H = log Z - Σ p (x - m)
  return std::log(z) - ez / z;
}

int64_t SelectedCount(const ModelConfig& c, int64_t position, double var_t, double ref_t,
                      double entropy_t) {
  const int64_t available = position + 1;
  if (!c.use_adaptive_k) return std::min(c.k_base, available);
  double factor;
  if (c.adaptive_k_method == AdaptiveKMethod::kVariance) {
    factor = 0.5 + 1.0 / (1.0 + c.adaptive_k_temperature * var_t / (ref_t + 1e-8));
  } else {
    factor = 0.5 + c.adaptive_k_temperature * entropy_t / std::log(static_cast<double>(position) + 2.0);
  }
  const double raw = std::floor(static_cast<double>(c.k_base) * factor);
  // Clamp in double before converting so that a huge factor cannot overflow the integer.
  const double clamped = std::clamp(raw, static_cast<double>(c.k_min), static_cast<double>(c.k_max));
  return std::min(static_cast<int64_t>(clamped), available);
}

void SelectTopK(const float* scores, int64_t n, int64_t k, std::vector<int32_t>& out,
                std::vector<int32_t>& scratch) {
  k = std::clamp<int64_t>(k, 0, n);
  // A strict total order: higher score first, then the later position (MODEL.md, Ties).
  // NaN (never expected from finite weights) ranks lowest so the order stays total.
  auto key = [scores](int32_t i) {
    const float s = scores[i];
    return std::isnan(s) ? -INFINITY : s;
  };
  auto better = [&key](int32_t a, int32_t b) {
    const float ka = key(a), kb = key(b);
    if (ka != kb) return ka > kb;
    return a > b;
  };
  scratch.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) scratch[static_cast<size_t>(i)] = static_cast<int32_t>(i);
  if (k < n) {
    std::nth_element(scratch.begin(), scratch.begin() + k, scratch.end(), better);
  }
  out.assign(scratch.begin(), scratch.begin() + k);
  std::sort(out.begin(), out.end(), std::greater<int32_t>());
}

}  // namespace gsa
