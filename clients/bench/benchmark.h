// RunBenchmark: one whole gsa-bench run against a server: fetch its ModelInfo, build the
// workload, send the warm-up requests, then the measured ones under the configured load, and
// return everything measured. gsa-bench's main is a thin wrapper; tests run it in process.
//
// Thread-safety: RunBenchmark may be called from any thread; it starts and joins its own
// workers. `log` is written from worker threads under the progress reporter's lock only.
#pragma once

#include <ostream>
#include <string>

#include "absl/status/statusor.h"
#include "clients/bench/bench_options.h"
#include "clients/bench/report.h"

namespace gsa::bench {

struct RunEnvironment {
  std::ostream* log = nullptr;  // progress and notes (stderr); null: silent
  bool log_is_tty = false;      // resolves --progress auto
  std::string command_line;     // recorded in the report
};

// Errors (the run stops before the measured requests):
//   Unavailable   the server cannot be reached within --connect-timeout-s (names the target),
//                 or GetModelInfo fails;
//   InvalidArgument   a TLS or API-key file cannot be used (names the flag, see client_channel.h);
//   InvalidArgument / FailedPrecondition / NotFound   the workload cannot be built (names the
//                 flag or the prompts file line);
//   Aborted       every warm-up request failed (names the first error).
// Failed measured requests are not errors: they are counted in the report.
absl::StatusOr<BenchReport> RunBenchmark(const BenchOptions& options, const RunEnvironment& env);

}  // namespace gsa::bench
