#include "clients/bench/arrivals.h"

#include <cmath>
#include <random>

#include "clients/bench/rng.h"

namespace gsa::bench {

std::vector<double> PoissonArrivalTimes(double rate, int64_t n, uint64_t seed) {
  std::vector<double> times;
  if (n <= 0) return times;
  times.reserve(static_cast<size_t>(n));
  // A stream of its own, so that arrival times do not change with the workload's draws.
  std::mt19937_64 rng(seed ^ 0xa5a5'5a5a'0f0f'f0f0ULL);
  double t = 0.0;
  times.push_back(t);
  for (int64_t i = 1; i < n; ++i) {
    if (!std::isinf(rate)) t += Exponential(rng, rate);
    times.push_back(t);
  }
  return times;
}

}  // namespace gsa::bench
