// Gemm: the dense projections of the CUDA backend through cuBLASLt, in PyTorch Linear form
// (y = x Wᵀ, W stored [out, in]): bf16 operands, fp32 accumulation and fp32 output, optionally
// accumulated into y (y += x Wᵀ, the residual add fused into the product's epilogue).
// The algorithm for each shape is chosen once (cuBLASLt heuristic) and reused, so a given shape
// always runs the same algorithm: results are bitwise reproducible run to run.
//
// Thread-safety: one thread (the engine thread).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "absl/status/statusor.h"
#include "engine/backend/cuda/device_buffer.h"

namespace gsa {

class Gemm {
 public:
  // `workspace_bytes` of device scratch for cuBLASLt (32 MiB is plenty on Hopper).
  static absl::StatusOr<std::unique_ptr<Gemm>> Create(size_t workspace_bytes = size_t{32} << 20);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // y[r, n] (= or +=) Σ_k x[r, k] · w[n, k] for r < rows, n < out.
  // x: [rows, in] bf16 (row stride in); w: [out, in] bf16; y: [rows, ldy] fp32, ldy ≥ out.
  absl::Status Linear(const __nv_bfloat16* x, int64_t rows, int64_t in, const __nv_bfloat16* w,
                      int64_t out, float* y, int64_t ldy, bool accumulate, cudaStream_t stream);

  // The same in full fp32 (operands, accumulation and output; no TF32), for the small products
  // whose rounding would move token selection (the indexer's projections). x: [rows, in] fp32.
  absl::Status LinearF32(const float* x, int64_t rows, int64_t in, const float* w, int64_t out, float* y,
                         int64_t ldy, cudaStream_t stream);

  struct CreateTag {
    explicit CreateTag() = default;
  };
  Gemm(CreateTag, cublasLtHandle_t handle, DeviceBuffer<uint8_t> workspace);

 private:
  struct Plan;
  absl::StatusOr<const Plan*> PlanFor(int64_t rows, int64_t in, int64_t out, int64_t ldy, bool accumulate,
                                      bool fp32);

  cublasLtHandle_t handle_;
  DeviceBuffer<uint8_t> workspace_;
  std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, bool, bool>, std::unique_ptr<Plan>> plans_;
};

}  // namespace gsa
