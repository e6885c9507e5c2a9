#include "clients/bench/length_sampler.h"

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "clients/bench/rng.h"

namespace gsa::bench {

LengthRange UniformLengthRange(int32_t len, double range_ratio) {
  LengthRange r;
  r.lo = std::max<int32_t>(1, static_cast<int32_t>(std::floor(len * (1.0 - range_ratio))));
  const double hi = std::floor(len * (1.0 + range_ratio));
  r.hi = std::max<int32_t>(r.lo, static_cast<int32_t>(std::min<double>(hi, INT32_MAX)));
  return r;
}

absl::StatusOr<std::vector<int32_t>> SampleLengths(LengthDistribution dist, int32_t len,
                                                   double range_ratio, int64_t n,
                                                   std::mt19937_64& rng) {
  if (len < 1) return absl::InvalidArgumentError(absl::StrCat("length ", len, " is not ≥ 1"));
  if (!(range_ratio >= 0.0 && range_ratio < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("range ratio ", range_ratio, " is not in [0, 1)"));
  }
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(std::max<int64_t>(n, 0)));
  const LengthRange range = UniformLengthRange(len, range_ratio);
  const double max_normal = std::min<double>(2.0 * len, INT32_MAX);
  for (int64_t i = 0; i < n; ++i) {
    switch (dist) {
      case LengthDistribution::kFixed:
        out.push_back(len);
        break;
      case LengthDistribution::kUniform:
        out.push_back(static_cast<int32_t>(UniformInt(rng, range.lo, range.hi)));
        break;
      case LengthDistribution::kNormal: {
        const double x = std::round(len + len * range_ratio * StandardNormal(rng));
        out.push_back(static_cast<int32_t>(std::clamp(x, 1.0, max_normal)));
        break;
      }
    }
  }
  return out;
}

}  // namespace gsa::bench
