#include "clients/bench/statistics.h"

#include <algorithm>
#include <cmath>

namespace gsa::bench {

double PercentileOfSorted(const std::vector<double>& sorted, double p) {
  const size_t n = sorted.size();
  if (n == 0) return 0.0;
  const double rank = std::clamp(p, 0.0, 100.0) / 100.0 * static_cast<double>(n - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, n - 1);
  const double frac = rank - static_cast<double>(lo);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * frac;
}

Summary Summarize(std::vector<double> values) {
  Summary s;
  if (values.empty()) return s;
  std::sort(values.begin(), values.end());
  s.count = static_cast<int64_t>(values.size());
  double sum = 0.0;
  for (double v : values) sum += v;
  s.mean = sum / static_cast<double>(values.size());
  double sq = 0.0;
  for (double v : values) sq += (v - s.mean) * (v - s.mean);
  s.stddev = std::sqrt(sq / static_cast<double>(values.size()));
  s.min = values.front();
  s.max = values.back();
  s.p50 = PercentileOfSorted(values, 50.0);
  s.p90 = PercentileOfSorted(values, 90.0);
  s.p99 = PercentileOfSorted(values, 99.0);
  return s;
}

Summary Scaled(const Summary& s, double factor) {
  Summary r = s;
  r.mean *= factor;
  r.stddev *= factor;
  r.min *= factor;
  r.max *= factor;
  r.p50 *= factor;
  r.p90 *= factor;
  r.p99 *= factor;
  return r;
}

}  // namespace gsa::bench
