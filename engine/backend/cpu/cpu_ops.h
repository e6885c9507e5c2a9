// fp32 building blocks of the CPU reference. Every output element is computed by one fixed
// sequence of float operations that depends only on its own inputs, never on the batch, the
// row count or the thread that runs it: that is what makes results batch-invariant and equal
// between chunked and one-shot prefill.
#pragma once

#include <cmath>
#include <cstdint>

#include "engine/model/config.h"
#include "engine/util/thread_pool.h"

namespace gsa::cpu {

// Σ a[i]·b[i] with eight interleaved fp32 accumulators combined in a fixed order.
float Dot(const float* a, const float* b, int64_t n);

// y[t, n] = Σ_k x[t, k] · w[n, k]  (PyTorch Linear: y = x Wᵀ), for t < rows, n < out.
// x: [rows, in], w: [out, in], y: [rows, out] (row stride out). Parallel over output columns.
void Linear(ThreadPool& pool, const float* x, int64_t rows, int64_t in, const float* w, int64_t out,
            float* y);

// y = x / sqrt(mean(x²) + eps) * weight, for one row of n values.
void RmsNorm(const float* x, const float* weight, int64_t n, double eps, float* y);

inline float Sigmoid(float z) { return 1.0f / (1.0f + std::exp(-z)); }
inline float Silu(float z) { return z * Sigmoid(z); }

// The gate activation of MODEL.md: sigmoid, (tanh(z)+1)/2, or silu.
inline float GateAct(GateActivation a, float z) {
  switch (a) {
    case GateActivation::kTanh: return 0.5f * (std::tanh(z) + 1.0f);
    case GateActivation::kSilu: return Silu(z);
    default: return Sigmoid(z);
  }
}

}  // namespace gsa::cpu
