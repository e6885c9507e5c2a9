#include "clients/bench/load_driver.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <system_error>
#include <thread>

namespace gsa::bench {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The dispatcher's and the workers' shared state; everything guarded by `mu`.
struct Dispatch {
  std::mutex mu;
  std::condition_variable work_cv;  // a request is ready, or the run is closing
  std::condition_variable slot_cv;  // a request finished (a slot under the cap is free)
  std::deque<int64_t> ready;        // dispatched, not yet picked up by a worker
  int idle = 0;                     // workers waiting on work_cv
  int in_flight = 0;                // dispatched and not finished
  bool closing = false;             // no more requests will be dispatched
};

}  // namespace

LoadResult RunLoad(const LoadPlan& plan, const RequestFn& send, const DoneFn& on_done) {
  LoadResult result;
  const int64_t n = std::max<int64_t>(plan.num_requests, 0);
  result.records.resize(static_cast<size_t>(n));
  Dispatch d;
  std::vector<std::thread> workers;
  const Clock::time_point start = Clock::now();

  // A worker frees its slot and becomes idle in one critical section, so the dispatcher never
  // sees a free slot without the idle worker that will take the next request.
  auto worker = [&]() {
    std::unique_lock<std::mutex> lock(d.mu);
    for (;;) {
      ++d.idle;
      d.work_cv.wait(lock, [&] { return !d.ready.empty() || d.closing; });
      --d.idle;
      if (d.ready.empty()) return;  // closing and nothing left
      const int64_t i = d.ready.front();
      d.ready.pop_front();
      lock.unlock();

      const double sent_s = SecondsSince(start);
      RequestRecord record = send(i);
      record.index = i;
      record.start_s = sent_s;
      if (on_done) on_done(record);

      lock.lock();
      result.records[static_cast<size_t>(i)] = std::move(record);
      --d.in_flight;
      d.slot_cv.notify_one();
    }
  };

  for (int64_t i = 0; i < n; ++i) {
    if (static_cast<size_t>(i) < plan.arrival_s.size()) {
      std::this_thread::sleep_until(
          start + std::chrono::duration_cast<Clock::duration>(
                      std::chrono::duration<double>(plan.arrival_s[static_cast<size_t>(i)])));
    }
    std::unique_lock<std::mutex> lock(d.mu);
    if (plan.max_in_flight > 0) {
      d.slot_cv.wait(lock, [&] { return d.in_flight < plan.max_in_flight; });
    }
    ++d.in_flight;
    result.peak_in_flight = std::max(result.peak_in_flight, d.in_flight);
    d.ready.push_back(i);
    // Idle workers (woken or not) each take one ready request; start a worker for the rest.
    if (static_cast<int>(d.ready.size()) > d.idle) {
      try {
        workers.emplace_back(worker);
      } catch (const std::system_error&) {
        // Out of threads: the request waits for a running worker (the load is then capped by
        // the machine, which the peak/threads numbers show).
        if (workers.empty()) throw;
      }
    } else {
      d.work_cv.notify_one();
    }
  }
  {
    std::lock_guard<std::mutex> lock(d.mu);
    d.closing = true;
  }
  d.work_cv.notify_all();
  for (std::thread& t : workers) t.join();
  result.duration_s = SecondsSince(start);
  result.threads_used = static_cast<int>(workers.size());
  return result;
}

}  // namespace gsa::bench
