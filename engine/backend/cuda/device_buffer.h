// DeviceBuffer<T>: one cudaMalloc'ed array of T, freed when the buffer dies (RAII, move-only).
// PinnedBuffer<T>: the same for page-locked host memory (cudaMallocHost), which copies to and from
// the device can use asynchronously. Both are CudaArray<T, kind>.
// Thread-safety: none; owned by one thread (the engine thread, or a test).
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include <cuda_runtime.h>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "engine/backend/cuda/cuda_status.h"

namespace gsa {

enum class CudaMemory { kDevice, kPinnedHost };

template <typename T, CudaMemory M>
class CudaArray {
 public:
  CudaArray() = default;
  ~CudaArray() { Reset(); }
  CudaArray(CudaArray&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  CudaArray& operator=(CudaArray&& o) noexcept {
    if (this != &o) {
      Reset();
      ptr_ = std::exchange(o.ptr_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  CudaArray(const CudaArray&) = delete;
  CudaArray& operator=(const CudaArray&) = delete;

  // `count` elements (0 gives an empty buffer). ResourceExhausted naming the bytes when there is
  // too little memory of the kind.
  static absl::StatusOr<CudaArray> Allocate(size_t count) {
    CudaArray b;
    if (count == 0) return b;
    void* p = nullptr;
    const cudaError_t err = M == CudaMemory::kDevice ? cudaMalloc(&p, count * sizeof(T)) : cudaMallocHost(&p, count * sizeof(T));
    if (err != cudaSuccess) {
      (void)cudaGetLastError();  // clear the sticky-free error state of a failed allocation
      return CudaStatus(err, absl::StrCat(M == CudaMemory::kDevice ? "cudaMalloc" : "cudaMallocHost", " of ",
                                          count * sizeof(T), " bytes"));
    }
    b.ptr_ = static_cast<T*>(p);
    b.size_ = count;
    return b;
  }

  // Makes the buffer hold at least `count` elements (contents lost when it grows).
  absl::Status Reserve(size_t count) {
    if (count <= size_) return absl::OkStatus();
    absl::StatusOr<CudaArray> b = Allocate(count);
    if (!b.ok()) return b.status();
    *this = std::move(*b);
    return absl::OkStatus();
  }

  // Device memory: allocates and copies `host` (synchronously).
  static absl::StatusOr<CudaArray> FromHost(const std::vector<T>& host) {
    static_assert(M == CudaMemory::kDevice, "FromHost is for device buffers");
    absl::StatusOr<CudaArray> b = Allocate(host.size());
    if (!b.ok()) return b.status();
    if (!host.empty()) {
      GSA_CUDA_RETURN_IF_ERROR(cudaMemcpy(b->ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
    }
    return b;
  }

  // Device memory: copies the whole buffer to the host (synchronously).
  absl::StatusOr<std::vector<T>> ToHost() const {
    static_assert(M == CudaMemory::kDevice, "ToHost is for device buffers");
    std::vector<T> host(size_);
    if (size_ > 0) {
      GSA_CUDA_RETURN_IF_ERROR(cudaMemcpy(host.data(), ptr_, size_ * sizeof(T), cudaMemcpyDeviceToHost));
    }
    return host;
  }

  T* get() const { return ptr_; }
  size_t size() const { return size_; }
  size_t bytes() const { return size_ * sizeof(T); }
  bool empty() const { return size_ == 0; }

 private:
  void Reset() {
    if (ptr_ != nullptr) {
      if (M == CudaMemory::kDevice) {
        cudaFree(ptr_);
      } else {
        cudaFreeHost(ptr_);
      }
    }
    ptr_ = nullptr;
    size_ = 0;
  }

  T* ptr_ = nullptr;
  size_t size_ = 0;
};

template <typename T>
using DeviceBuffer = CudaArray<T, CudaMemory::kDevice>;
template <typename T>
using PinnedBuffer = CudaArray<T, CudaMemory::kPinnedHost>;

}  // namespace gsa
