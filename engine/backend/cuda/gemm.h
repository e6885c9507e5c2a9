// Gemm: the dense projections of the CUDA backend through cuBLASLt, in PyTorch Linear form
// (y = x Wᵀ, W stored [out, in]): bf16 operands, fp32 accumulation and fp32 output, optionally
// accumulated into y (y += x Wᵀ, the residual add fused into the product's epilogue).
// The algorithm for each shape is chosen once (cuBLASLt heuristic) and reused, so a given shape
// always runs the same algorithm: results are bitwise reproducible run to run.
//
// Products of at most kernels::kSmallLinearMaxRows rows (decode steps) go through
// kernels::SmallLinear instead, when `small_rows` (Create) is on and the operands suit it (16-byte
// aligned, whole 16-byte rows): one bandwidth-bound pass over the weights, no split-K reduction
// launch, SwiGLU fused into the gate/up product (kernels/small_linear.h says why and what it
// measured). Its sums run in another order than cuBLASLt's, so a row's bits depend on whether its
// step had more than that many rows (both are fp32 accumulations of the same bf16 products).
//
// Thread-safety: one thread (the engine thread).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <tuple>

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "absl/status/statusor.h"
#include "engine/backend/cuda/device_buffer.h"
#include "kernels/small_linear.h"

namespace gsa {

class Gemm {
 public:
  // `workspace_bytes` of device scratch for cuBLASLt (32 MiB is plenty on Hopper); `small_rows`:
  // products of few rows through kernels::SmallLinear (false: cuBLASLt for every product).
  static absl::StatusOr<std::unique_ptr<Gemm>> Create(bool small_rows = true,
                                                      size_t workspace_bytes = size_t{32} << 20);
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

  // out[r, i] = bf16(silu(g) · u) with g = (x wᵀ)[r, i], u = (x wᵀ)[r, d_ffn + i]: the MLP's gate/up
  // product and SwiGLU (kernels::SwiGlu). w: [2 · d_ffn, in] bf16 (gate rows, then up rows);
  // gu: [rows, 2 · d_ffn] fp32 scratch (unused when the fused small-rows kernel runs); out: [rows, d_ffn],
  // overlapping neither x nor gu (the fused kernel writes out while other blocks still read x).
  absl::Status LinearSwiGlu(const __nv_bfloat16* x, int64_t rows, int64_t in, const __nv_bfloat16* w,
                            int64_t d_ffn, float* gu, __nv_bfloat16* out, cudaStream_t stream);

  struct CreateTag {
    explicit CreateTag() = default;
  };
  Gemm(CreateTag, cublasLtHandle_t handle, DeviceBuffer<uint8_t> workspace, bool small_rows);

 private:
  struct Plan;
  // kernels::SmallLinear(a) when this product qualifies (small_rows, at most
  // kernels::kSmallLinearMaxRows rows, operands it can read); nullopt: the caller uses cuBLASLt.
  std::optional<absl::Status> TrySmallRows(const kernels::SmallLinearArgs& a, cudaStream_t stream) const;
  absl::StatusOr<const Plan*> PlanFor(int64_t rows, int64_t in, int64_t out, int64_t ldy, bool accumulate,
                                      bool fp32);

  cublasLtHandle_t handle_;
  DeviceBuffer<uint8_t> workspace_;
  bool small_rows_;
  std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, bool, bool>, std::unique_ptr<Plan>> plans_;
};

}  // namespace gsa
