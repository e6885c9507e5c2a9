// DeviceBuffer<T>: one cudaMalloc'ed array of T, freed when the buffer dies (RAII, move-only).
// PinnedBuffer<T>: the same for page-locked host memory (cudaMallocHost), which copies to and from
// the device can use asynchronously.
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

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() { Reset(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      Reset();
      ptr_ = std::exchange(o.ptr_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // `count` elements (0 gives an empty buffer). ResourceExhausted naming the bytes when the
  // device has too little memory.
  static absl::StatusOr<DeviceBuffer> Allocate(size_t count) {
    DeviceBuffer b;
    if (count == 0) return b;
    void* p = nullptr;
    const cudaError_t err = cudaMalloc(&p, count * sizeof(T));
    if (err != cudaSuccess) {
      (void)cudaGetLastError();  // clear the sticky-free error state of a failed allocation
      return CudaStatus(err, absl::StrCat("cudaMalloc of ", count * sizeof(T), " bytes"));
    }
    b.ptr_ = static_cast<T*>(p);
    b.size_ = count;
    return b;
  }

  // Allocates and copies `host` (synchronously).
  static absl::StatusOr<DeviceBuffer> FromHost(const std::vector<T>& host) {
    absl::StatusOr<DeviceBuffer> b = Allocate(host.size());
    if (!b.ok()) return b.status();
    if (!host.empty()) {
      GSA_CUDA_RETURN_IF_ERROR(cudaMemcpy(b->ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
    }
    return b;
  }

  // Copies the whole buffer to the host (synchronously).
  absl::StatusOr<std::vector<T>> ToHost() const {
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
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    size_ = 0;
  }

  T* ptr_ = nullptr;
  size_t size_ = 0;
};

template <typename T>
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer() { Reset(); }
  PinnedBuffer(PinnedBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept {
    if (this != &o) {
      Reset();
      ptr_ = std::exchange(o.ptr_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;

  // `count` elements (0 gives an empty buffer); ResourceExhausted naming the bytes on failure.
  static absl::StatusOr<PinnedBuffer> Allocate(size_t count) {
    PinnedBuffer b;
    if (count == 0) return b;
    void* p = nullptr;
    const cudaError_t err = cudaMallocHost(&p, count * sizeof(T));
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      return CudaStatus(err, absl::StrCat("cudaMallocHost of ", count * sizeof(T), " bytes"));
    }
    b.ptr_ = static_cast<T*>(p);
    b.size_ = count;
    return b;
  }

  // Makes the buffer hold at least `count` elements (contents lost when it grows).
  absl::Status Reserve(size_t count) {
    if (count <= size_) return absl::OkStatus();
    absl::StatusOr<PinnedBuffer> b = Allocate(count);
    if (!b.ok()) return b.status();
    *this = std::move(*b);
    return absl::OkStatus();
  }

  T* get() const { return ptr_; }
  size_t size() const { return size_; }

 private:
  void Reset() {
    if (ptr_ != nullptr) cudaFreeHost(ptr_);
    ptr_ = nullptr;
    size_ = 0;
  }

  T* ptr_ = nullptr;
  size_t size_ = 0;
};

}  // namespace gsa
