// Summary statistics of latency samples: mean, standard deviation, extremes and percentiles
// (linear interpolation between the closest ranks, numpy's default, so numbers match vLLM's
// benchmark_serving on the same samples).
//
// Pure functions; safe to call from any thread.
#pragma once

#include <cstdint>
#include <vector>

namespace gsa::bench {

struct Summary {
  int64_t count = 0;  // samples; 0: every other field is 0 (and reports print "-")
  double mean = 0.0;
  double stddev = 0.0;  // population standard deviation
  double min = 0.0;
  double max = 0.0;
  double p50 = 0.0;
  double p90 = 0.0;
  double p99 = 0.0;
};

// The p-th percentile (p in [0, 100]) of `sorted` (ascending, non-empty): the value at rank
// p/100 · (n − 1), interpolated linearly between the neighbouring samples.
double PercentileOfSorted(const std::vector<double>& sorted, double p);

// Summary of `values` (any order); all zero when empty.
Summary Summarize(std::vector<double> values);

// Every field multiplied by `factor` (count kept), e.g. seconds → milliseconds.
Summary Scaled(const Summary& s, double factor);

}  // namespace gsa::bench
