// The card's ceilings, measured in the same run as the kernels they judge (METHOD.md): device-to-
// device copy bandwidth (bytes read + written) and matrix-product rates through cuBLASLt.
#pragma once

#include <cstdint>
#include <string>

#include <cuda_runtime.h>

#include "kernels/bench/bench_util.h"

namespace gsa::bench {

struct CopyCeiling {
  int64_t bytes_copied = 0;  // one cudaMemcpyAsync of this many bytes
  Timing timing;
  double gbps = 0;           // 2 · bytes_copied / median time (read + written)
};

// cudaMemcpyAsync device → device of `bytes` (random source), warm-up 3, `reps` timed.
CopyCeiling MeasureCopy(int64_t bytes, int reps, EventTimer& timer, cudaStream_t stream, uint64_t seed);

struct GemmCeiling {
  bool ok = false;          // false: no algorithm (only possible for the optional fp32 product)
  std::string what;         // e.g. "bf16 x bf16 -> bf16, fp32 accumulate, 8192^3, TN"
  std::string error;        // why not ok
  int64_t n = 0;            // m = n = k
  Timing timing;
  double tflops = 0;        // 2 n³ / median time
};

// D = Aᵀ B with m = n = k = `n`, random inputs in [-1, 1], cuBLASLt's first heuristic algorithm
// with a 64 MiB workspace. bf16: A, B, D bf16, fp32 compute (CUBLAS_COMPUTE_32F). fp32 (bf16 =
// false): every matrix fp32, CUBLAS_COMPUTE_32F (no TF32): the CUDA-core fp32 rate. Errors are fatal
// for bf16; for fp32 a missing algorithm is returned as ok = false.
GemmCeiling MeasureGemm(bool bf16, int64_t n, int reps, EventTimer& timer, cudaStream_t stream, uint64_t seed);

}  // namespace gsa::bench
