// Synthetic request lengths (prompt or output tokens) drawn around a mean, like vLLM's random
// dataset: fixed, uniform in [len·(1 − r), len·(1 + r)], or normal with standard deviation len·r.
//
// Pure functions; thread-compatible (a generator must not be shared between threads).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "absl/status/statusor.h"
#include "clients/bench/bench_options.h"

namespace gsa::bench {

// The inclusive range a uniform draw comes from: [max(1, ⌊len·(1 − r)⌋), max(lo, ⌊len·(1 + r)⌋)].
struct LengthRange {
  int32_t lo = 1;
  int32_t hi = 1;
};
LengthRange UniformLengthRange(int32_t len, double range_ratio);

// `n` lengths, each ≥ 1. Fixed: all `len`. Uniform: see UniformLengthRange. Normal:
// round(len + len·r·z), clamped to [1, 2·len] so that the mean stays `len` up to the clamp.
// InvalidArgument when len < 1 or the ratio is outside [0, 1).
absl::StatusOr<std::vector<int32_t>> SampleLengths(LengthDistribution dist, int32_t len,
                                                   double range_ratio, int64_t n,
                                                   std::mt19937_64& rng);

}  // namespace gsa::bench
