// LoadDriver: sends a workload's requests on time and within an in-flight cap, and collects what
// each measured. It knows nothing of gRPC: each request is a call of a RequestFn, which blocks
// for the request's whole life (so tests drive it with fakes).
//
// Threads: an elastic pool. The calling thread dispatches (sleeping until each arrival time,
// then waiting for a free slot under the cap); a request is handed to an idle worker, or to a new
// one when none is idle. So a closed loop of C uses C workers, and an open loop uses as many as
// were ever in flight at once (its cap when it has one).
//
// Thread-safety: Run may be called from one thread at a time; the RequestFn and the completion
// callback are called from worker threads concurrently and must be thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "clients/bench/request_record.h"

namespace gsa::bench {

struct LoadPlan {
  int64_t num_requests = 0;
  // Send time of request i, seconds after the start (non-decreasing). Empty: each is sent as soon
  // as a slot is free (closed loop).
  std::vector<double> arrival_s;
  int max_in_flight = 0;  // 0: unbounded (REQUIRES: arrival_s given, else > 0)
};

struct LoadResult {
  std::vector<RequestRecord> records;  // by index; index and start_s filled in by the driver
  double duration_s = 0.0;             // start → last request finished
  int peak_in_flight = 0;
  int threads_used = 0;
};

// Runs request i by calling `send(i)`; `on_done(record)` (may be empty) is called as each one
// finishes.
using RequestFn = std::function<RequestRecord(int64_t index)>;
using DoneFn = std::function<void(const RequestRecord&)>;
LoadResult RunLoad(const LoadPlan& plan, const RequestFn& send, const DoneFn& on_done);

}  // namespace gsa::bench
