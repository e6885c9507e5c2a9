// Seeded random draws for workload generation, written out (rather than std::*_distribution,
// whose algorithms differ between standard libraries) so that one --seed gives the same workload
// and arrival times on every platform.
//
// Pure functions of the generator state; a generator must not be shared between threads.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>

namespace gsa::bench {

// Uniform in [0, 1), 53 random bits.
inline double Uniform01(std::mt19937_64& rng) {
  return static_cast<double>(rng() >> 11) * 0x1.0p-53;
}

// Uniform integer in [lo, hi] (REQUIRES: lo ≤ hi), unbiased (rejection sampling).
inline int64_t UniformInt(std::mt19937_64& rng, int64_t lo, int64_t hi) {
  const uint64_t span = static_cast<uint64_t>(hi) - static_cast<uint64_t>(lo) + 1;
  if (span == 0) return static_cast<int64_t>(rng());  // the whole 64-bit range
  const uint64_t limit = UINT64_MAX - UINT64_MAX % span;
  uint64_t x = rng();
  while (x >= limit) x = rng();
  return lo + static_cast<int64_t>(x % span);
}

// Standard normal (Box–Muller; one of the pair is discarded to keep draws stateless).
inline double StandardNormal(std::mt19937_64& rng) {
  const double u1 = 1.0 - Uniform01(rng);  // (0, 1]: log is finite
  const double u2 = Uniform01(rng);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

// Exponential with the given rate (mean 1 / rate). REQUIRES: rate > 0.
inline double Exponential(std::mt19937_64& rng, double rate) {
  return -std::log(1.0 - Uniform01(rng)) / rate;
}

}  // namespace gsa::bench
