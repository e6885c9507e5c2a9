#include "engine/backend/rope.h"

#include <algorithm>
#include <cmath>

namespace gsa {

std::vector<float> RopeInvFreq(const ModelConfig& config) {
  const int64_t d = config.d_head;
  const int64_t half = d / 2;
  const RopeScaling& rs = config.rope_scaling;
  double base = config.rope_base;
  if (rs.type == RopeScalingType::kNtk) {
    base *= std::pow(rs.factor, static_cast<double>(d) / static_cast<double>(d - 2));
  }
  std::vector<double> extrap(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    extrap[static_cast<size_t>(i)] = std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(d));
  }
  std::vector<float> out(static_cast<size_t>(half));
  if (rs.type != RopeScalingType::kYarn) {
    for (int64_t i = 0; i < half; ++i) out[static_cast<size_t>(i)] = static_cast<float>(extrap[static_cast<size_t>(i)]);
    return out;
  }
  // YaRN: keep high frequencies (i < low), interpolate low ones (i > high), blend in between.
  const double two_pi = 2.0 * M_PI;
  const double l0 = static_cast<double>(rs.original_max_position_embeddings);
  const double log_base = std::log(base);
  const int64_t low = std::max<int64_t>(
      static_cast<int64_t>(std::floor(static_cast<double>(d) * std::log(l0 / (two_pi * rs.beta_fast)) /
                                      (2.0 * log_base))),
      0);
  const int64_t high = std::min<int64_t>(
      static_cast<int64_t>(std::ceil(static_cast<double>(d) * std::log(l0 / (two_pi * rs.beta_slow)) /
                                     (2.0 * log_base))),
      half - 1);
  for (int64_t i = 0; i < half; ++i) {
    const double e = extrap[static_cast<size_t>(i)];
    const double interp = e / rs.factor;
    double v;
    if (i < low) {
      v = e;
    } else if (i > high) {
      v = interp;
    } else {
      // low ≤ i ≤ high. When the ramp is empty (high ≤ low) the ramp value is 0: extrapolate.
      const double s = high > low ? static_cast<double>(i - low) / static_cast<double>(high - low) : 0.0;
      v = (1.0 - s) * e + s * interp;
    }
    out[static_cast<size_t>(i)] = static_cast<float>(v);
  }
  return out;
}

void ApplyRope(float* x, int64_t n_heads, int64_t d_head, int64_t position, const float* inv_freq) {
  const int64_t half = d_head / 2;
  const float pos = static_cast<float>(position);
  for (int64_t i = 0; i < half; ++i) {
    const float angle = pos * inv_freq[i];  // fp32, as the reference computes it
    const float c = std::cos(angle);
    const float s = std::sin(angle);
    for (int64_t h = 0; h < n_heads; ++h) {
      float* v = x + h * d_head;
      const float a = v[i];
      const float b = v[i + half];
      v[i] = a * c - b * s;
      v[i + half] = b * c + a * s;
    }
  }
}

}  // namespace gsa
