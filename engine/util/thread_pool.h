// ThreadPool: a fixed set of worker threads for data-parallel loops on the CPU backend.
//
// ParallelFor splits [0, n) into contiguous ranges, one per participant (the caller included),
// and returns when all are done. Which thread computes an index never changes what is computed
// for it: callers must make each index's work independent of the others, which is what keeps
// the CPU backend's results identical for any thread count.
//
// Thread-safety: ParallelFor may be called from one thread at a time (the engine thread).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace gsa {

class ThreadPool {
 public:
  // num_threads counts the caller: 1 means run everything inline. 0 means hardware concurrency.
  explicit ThreadPool(int num_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(begin, end) on disjoint ranges covering [0, n). Ranges hold at least `min_chunk`
  // indices (except the last) so that tiny loops stay on the caller's thread.
  void ParallelFor(int64_t n, int64_t min_chunk, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void WorkerLoop(int worker_index);

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;  // guarded by mu_
  std::vector<std::pair<int64_t, int64_t>> ranges_;               // guarded by mu_; [worker+1]
  uint64_t generation_ = 0;                                       // guarded by mu_
  int pending_ = 0;                                               // guarded by mu_
  bool stop_ = false;                                             // guarded by mu_
};

}  // namespace gsa
