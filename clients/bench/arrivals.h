// Arrival times of an open-loop benchmark: a seeded Poisson process.
//
// Pure function; safe to call from any thread.
#pragma once

#include <cstdint>
#include <vector>

namespace gsa::bench {

// Send times, in seconds after the start, of `n` requests arriving as a Poisson process with
// `rate` requests per second: the first at 0, then independent exponential gaps of mean 1 / rate.
// rate = +inf: all at 0. Non-decreasing. REQUIRES: rate > 0.
std::vector<double> PoissonArrivalTimes(double rate, int64_t n, uint64_t seed);

}  // namespace gsa::bench
