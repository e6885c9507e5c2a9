// Token selection of MODEL.md: how many positions a query keeps (k_t) and which ones.
// Pure functions on one query's indexer scores, shared by the CPU reference and used as the
// oracle for the CUDA kernels.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/model/config.h"

namespace gsa {

// Population variance of scores[0 … n), two-pass in double.
double ScoreVariance(const float* scores, int64_t n);

// Entropy (nats) of softmax(scores[0 … n)), in double.
double ScoreEntropy(const float* scores, int64_t n);

// k_t for the query at `position` (0-based; it may keep at most position + 1 positions).
//  - use_adaptive_k false: min(k_base, position + 1).
//  - variance: var_t and ref_t (the mean of var_u over this sequence's positions u ≤ t).
//  - entropy: entropy_t = ScoreEntropy over the query's scores.
// The unused statistic is ignored.
int64_t SelectedCount(const ModelConfig& config, int64_t position, double var_t, double ref_t,
                      double entropy_t);

// Writes to `out` the positions of the `k` largest scores of scores[0 … n) (k ≤ n), ties broken
// toward the later position, sorted descending by position. `scratch` is reused storage.
void SelectTopK(const float* scores, int64_t n, int64_t k, std::vector<int32_t>& out,
                std::vector<int32_t>& scratch);

}  // namespace gsa
