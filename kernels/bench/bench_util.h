// Host utilities of gsa-kernel-bench: fatal errors that name the failing call, RAII device buffers,
// and the event timer (warm-up, a busy-wait kernel ahead of every timed region, median of reps).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <cublasLt.h>
#include <cuda_runtime.h>

namespace gsa::bench {

// Called once by Fatal before it exits (to print and save what was measured so far).
void SetFatalHook(std::function<void(const std::string&)> hook);

// Prints "gsa-kernel-bench: <message>" to stderr, runs the hook, exits with status 1.
[[noreturn]] void Fatal(const std::string& message);

void CheckCuda(cudaError_t err, const char* call, const char* file, int line);
void CheckCublas(cublasStatus_t st, const char* call, const char* file, int line);

#define BENCH_CUDA(call) ::gsa::bench::CheckCuda((call), #call, __FILE__, __LINE__)
#define BENCH_CUBLAS(call) ::gsa::bench::CheckCublas((call), #call, __FILE__, __LINE__)

// A device allocation of n elements of T (at least one element, so the pointer is never null).
template <class T>
class DevBuf {
 public:
  DevBuf() = default;
  DevBuf(int64_t n, const char* what) { Alloc(n, what); }
  ~DevBuf() { Free(); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  DevBuf(DevBuf&& o) noexcept : p_(o.p_), n_(o.n_) {
    o.p_ = nullptr;
    o.n_ = 0;
  }
  DevBuf& operator=(DevBuf&& o) noexcept {
    if (this != &o) {
      Free();
      p_ = o.p_;
      n_ = o.n_;
      o.p_ = nullptr;
      o.n_ = 0;
    }
    return *this;
  }

  void Alloc(int64_t n, const char* what) {
    Free();
    if (n < 1) n = 1;
    const size_t bytes = static_cast<size_t>(n) * sizeof(T);
    void* p = nullptr;
    const cudaError_t err = cudaMalloc(&p, bytes);
    if (err != cudaSuccess) {
      Fatal("cudaMalloc of " + std::to_string(bytes) + " bytes for " + what + " failed: " + cudaGetErrorName(err) +
            " (" + cudaGetErrorString(err) + ")");
    }
    p_ = static_cast<T*>(p);
    n_ = n;
  }
  void Free() {
    if (p_ != nullptr) cudaFree(p_);  // errors here would be sticky ones, reported by the next check
    p_ = nullptr;
    n_ = 0;
  }
  T* get() const { return p_; }
  int64_t size() const { return n_; }
  size_t bytes() const { return static_cast<size_t>(n_) * sizeof(T); }

 private:
  T* p_ = nullptr;
  int64_t n_ = 0;
};

template <class T>
DevBuf<T> Upload(const std::vector<T>& host, const char* what) {
  DevBuf<T> d(static_cast<int64_t>(host.size()), what);
  if (!host.empty()) {
    BENCH_CUDA(cudaMemcpy(d.get(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  return d;
}

template <class T>
std::vector<T> Download(const T* device, int64_t n) {
  std::vector<T> host(static_cast<size_t>(n));
  if (n > 0) BENCH_CUDA(cudaMemcpy(host.data(), device, host.size() * sizeof(T), cudaMemcpyDeviceToHost));
  return host;
}

struct Timing {
  double median_us = 0, min_us = 0, max_us = 0;
  int reps = 0;
  std::vector<double> samples_us;
};

// Times body(iter) on one stream. `warmup` untimed runs first (the last one timed once, to plan the
// reps when budget_ms > 0), then `reps` timed runs, each preceded by a busy-wait kernel of spin_ns so
// that the whole region is enqueued before the GPU reaches its start event (launch gaps of the host
// stay out of the number, the device-side gaps between the region's launches stay in). iter counts
// every run from 0 (rotation index). With budget_ms > 0 the reps are cut to fit it (at least 3).
class EventTimer {
 public:
  EventTimer(cudaStream_t stream, int64_t spin_ns);
  ~EventTimer();
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;

  Timing Run(const std::function<void(int64_t iter)>& body, int warmup, int reps, double budget_ms);

 private:
  void EnsureEvents(size_t n);
  cudaStream_t stream_;
  int64_t spin_ns_;
  std::vector<cudaEvent_t> start_, stop_;
};

}  // namespace gsa::bench
