// Products of a few rows with a weight matrix — y = x · Wᵀ for decode steps (one row per sequence,
// at most kSmallLinearMaxRows rows) — as one bandwidth-bound pass over W, with the step's small
// follow-up work fused: add into y (the residual stream), or SwiGLU of the gate/up halves.
//
// Why not cuBLASLt here (it does every other product): at 1–8 rows its kernels read the decode
// step's weights at 1.2–2.9 TB/s on an H200 (the o_proj's 8 MB at 1.2) and add split-K reduction
// launches, and the step's SwiGLU is one more launch; gsa-step-bench / deploy/gpu/step-profile.sh
// measure both (README, "Where a decode step's time goes").
//
// bf16 products run on tensor cores (mma.sync, x's rows as the 8 columns of the B fragment, so
// one instruction does 16 rows of W × 16 of K for every row of x at once: the step stays bound by
// the weight stream at any row count, where CUDA-core FMAs of 4–8 rows were bound by issue);
// fp32 products (the indexer's few hundred rows) by CUDA-core FMAs. Each weight byte is read once,
// from DRAM, streaming; x comes through the read-only cache. Launched as a programmatic dependent
// of the kernel before it (kernels/pdl.cuh): the first weights are in flight before it waits.
// fp32 accumulation in a fixed order (tensor-core sums per 16 of K, then across warps in warp
// order): the same inputs give bitwise the same outputs, though not cuBLASLt's (another order).
#pragma once

#include <cstdint>

#include "kernels/paged.h"

namespace gsa::kernels {

constexpr int64_t kSmallLinearMaxRows = 8;

enum class SmallLinearEpilogue {
  kStore,       // y[m, n] = Σ_k x[m, k] · W[n, k]
  kAccumulate,  // y[m, n] += Σ_k x[m, k] · W[n, k]
  kSwiGlu,      // out[m, i] = bf16(silu(g) · u), g = (x·Wᵀ)[m, i], u = (x·Wᵀ)[m, F + i], F = n / 2
                //   (bf16 inputs only)
};

// Exactly one of (x_bf16, w_bf16) and (x_f32, w_f32) is set: bf16 inputs with bf16 weights, or
// fp32 with fp32 (the indexer's projections, cuda_backend.h says why). fp32 accumulation either way.
struct SmallLinearArgs {
  const bf16* x_bf16 = nullptr;  // [rows, ldx]
  const bf16* w_bf16 = nullptr;  // [n, k] row-major
  const float* x_f32 = nullptr;  // [rows, ldx]
  const float* w_f32 = nullptr;  // [n, k] row-major
  int64_t rows = 0;              // 1 … kSmallLinearMaxRows
  int64_t k = 0;                 // a multiple of 8 (bf16) or 4 (fp32)
  int64_t n = 0;                 // rows of W (kSwiGlu: 2 · F)
  int64_t ldx = 0;               // elements; a multiple of 8 (bf16) or 4 (fp32)
  SmallLinearEpilogue epilogue = SmallLinearEpilogue::kStore;
  float* y = nullptr;            // [rows, ldy] fp32 (kStore, kAccumulate)
  int64_t ldy = 0;
  bf16* out = nullptr;           // [rows, ldo] bf16 (kSwiGlu)
  int64_t ldo = 0;
};

// nullptr when SmallLinear can run `args`, else what it cannot do (rows out of range, a K or stride
// not a whole number of 16-byte chunks, pointers not 16-byte aligned, both or neither input pair,
// an odd n for kSwiGlu, a missing output). Callers fall back to a general product.
const char* SmallLinearUnsupported(const SmallLinearArgs& args);

// cudaErrorInvalidValue when SmallLinearUnsupported(args) is not empty.
cudaError_t SmallLinear(const SmallLinearArgs& args, cudaStream_t stream);

}  // namespace gsa::kernels
