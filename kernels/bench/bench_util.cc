#include "kernels/bench/bench_util.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "kernels/bench/bench_kernels.h"

namespace gsa::bench {
namespace {

std::function<void(const std::string&)>& Hook() {
  static std::function<void(const std::string&)> hook;
  return hook;
}

}  // namespace

void SetFatalHook(std::function<void(const std::string&)> hook) { Hook() = std::move(hook); }

void Fatal(const std::string& message) {
  std::fflush(stdout);
  std::fprintf(stderr, "gsa-kernel-bench: %s\n", message.c_str());
  std::fflush(stderr);
  static bool in_hook = false;
  if (!in_hook && Hook()) {
    in_hook = true;  // a failure inside the hook exits without running it again
    Hook()(message);
  }
  std::exit(1);
}

void CheckCuda(cudaError_t err, const char* call, const char* file, int line) {
  if (err == cudaSuccess) return;
  Fatal(std::string(call) + " failed (" + file + ":" + std::to_string(line) + "): " + cudaGetErrorName(err) + " (" +
        cudaGetErrorString(err) + ")");
}

void CheckCublas(cublasStatus_t st, const char* call, const char* file, int line) {
  if (st == CUBLAS_STATUS_SUCCESS) return;
  Fatal(std::string(call) + " failed (" + file + ":" + std::to_string(line) + "): cuBLAS status " +
        std::to_string(static_cast<int>(st)) + " (" + cublasLtGetStatusName(st) + ": " + cublasLtGetStatusString(st) +
        ")");
}

EventTimer::EventTimer(cudaStream_t stream, int64_t spin_ns) : stream_(stream), spin_ns_(spin_ns) {}

EventTimer::~EventTimer() {
  for (cudaEvent_t e : start_) cudaEventDestroy(e);
  for (cudaEvent_t e : stop_) cudaEventDestroy(e);
}

void EventTimer::EnsureEvents(size_t n) {
  while (start_.size() < n) {
    cudaEvent_t a = nullptr, b = nullptr;
    BENCH_CUDA(cudaEventCreate(&a));
    BENCH_CUDA(cudaEventCreate(&b));
    start_.push_back(a);
    stop_.push_back(b);
  }
}

Timing EventTimer::Run(const std::function<void(int64_t)>& body, int warmup, int reps, double budget_ms) {
  if (warmup < 1) warmup = 1;
  if (reps < 1) reps = 1;
  EnsureEvents(static_cast<size_t>(reps));
  int64_t iter = 0;
  for (int w = 0; w + 1 < warmup; ++w) {
    BENCH_CUDA(Spin(spin_ns_, stream_));
    body(iter++);
  }
  // The last warm-up run, timed: it plans the number of reps under a time budget.
  BENCH_CUDA(Spin(spin_ns_, stream_));
  BENCH_CUDA(cudaEventRecord(start_[0], stream_));
  body(iter++);
  BENCH_CUDA(cudaEventRecord(stop_[0], stream_));
  BENCH_CUDA(cudaEventSynchronize(stop_[0]));
  BENCH_CUDA(cudaGetLastError());
  float warm_ms = 0;
  BENCH_CUDA(cudaEventElapsedTime(&warm_ms, start_[0], stop_[0]));
  int n = reps;
  if (budget_ms > 0 && warm_ms > 0) {
    const double fit = budget_ms / static_cast<double>(warm_ms);
    const int lo = std::min(3, reps);
    n = fit >= reps ? reps : std::max(lo, static_cast<int>(fit));
  }

  for (int i = 0; i < n; ++i) {
    BENCH_CUDA(Spin(spin_ns_, stream_));
    BENCH_CUDA(cudaEventRecord(start_[static_cast<size_t>(i)], stream_));
    body(iter++);
    BENCH_CUDA(cudaEventRecord(stop_[static_cast<size_t>(i)], stream_));
  }
  BENCH_CUDA(cudaEventSynchronize(stop_[static_cast<size_t>(n - 1)]));
  BENCH_CUDA(cudaGetLastError());

  Timing t;
  t.reps = n;
  for (int i = 0; i < n; ++i) {
    float ms = 0;
    BENCH_CUDA(cudaEventElapsedTime(&ms, start_[static_cast<size_t>(i)], stop_[static_cast<size_t>(i)]));
    t.samples_us.push_back(static_cast<double>(ms) * 1000.0);
  }
  std::vector<double> s = t.samples_us;
  std::sort(s.begin(), s.end());
  const size_t m = s.size();
  t.median_us = (m % 2 == 1) ? s[m / 2] : 0.5 * (s[m / 2 - 1] + s[m / 2]);
  t.min_us = s.front();
  t.max_us = s.back();
  return t;
}

}  // namespace gsa::bench
