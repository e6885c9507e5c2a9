// ProgressReporter: how far a benchmark run is, on stderr: a redrawn bar when stderr is a
// terminal, otherwise a line at every 10% of the requests (so logs stay readable).
//
// Thread-safety: OnRequestDone may be called from many threads at once; Finish from one thread
// after every OnRequestDone has returned.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <ostream>
#include <string>

#include "clients/bench/bench_options.h"

namespace gsa::bench {

// kAuto resolved against whether stderr is a terminal.
ProgressMode ResolveProgressMode(ProgressMode mode, bool stderr_is_tty);

// "[#########...........]  45/100  ok 44  failed 1  12.3 req/s  4.5 s": a pure function.
std::string RenderProgressBar(int64_t done, int64_t failed, int64_t total, double elapsed_s,
                              int width);

class ProgressReporter {
 public:
  // `mode` must be resolved (not kAuto). `label` prefixes each line ("warmup", "benchmark").
  ProgressReporter(std::ostream& out, ProgressMode mode, int64_t total, std::string label);

  void OnRequestDone(bool ok);
  // Draws the final state (the bar's last frame and its newline).
  void Finish();

 private:
  void DrawLocked(bool final_frame);

  std::ostream& out_;
  const ProgressMode mode_;
  const int64_t total_;
  const std::string label_;
  const std::chrono::steady_clock::time_point start_;
  std::mutex mu_;
  int64_t done_ = 0;                                      // guarded by mu_
  int64_t failed_ = 0;                                    // guarded by mu_
  int64_t last_decile_ = 0;                               // guarded by mu_; lines mode
  std::chrono::steady_clock::time_point last_draw_;       // guarded by mu_; bar mode
  int64_t last_drawn_done_ = -1;                          // guarded by mu_; bar mode
  bool finished_ = false;                                 // guarded by mu_
};

}  // namespace gsa::bench
