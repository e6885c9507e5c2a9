// CUDA errors as absl::Status values: every CUDA runtime and cuBLASLt call of the backend goes
// through one of these, so a failure names the call and the CUDA error string.
#pragma once

#include <string_view>

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace gsa {

// OK for cudaSuccess; otherwise Internal (ResourceExhausted for out-of-memory) naming `what`.
inline absl::Status CudaStatus(cudaError_t err, std::string_view what) {
  if (err == cudaSuccess) return absl::OkStatus();
  const std::string msg = absl::StrCat(std::string(what), ": CUDA error ", static_cast<int>(err), " (",
                                       cudaGetErrorName(err), ": ", cudaGetErrorString(err), ")");
  if (err == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

}  // namespace gsa

// Returns from the enclosing function (returning absl::Status or StatusOr) when the CUDA call fails.
#define GSA_CUDA_RETURN_IF_ERROR(call)                                 \
  do {                                                                 \
    const cudaError_t gsa_cuda_err_ = (call);                          \
    if (gsa_cuda_err_ != cudaSuccess) return ::gsa::CudaStatus(gsa_cuda_err_, #call); \
  } while (0)
