// JsonLog: structured logs, one JSON object a line ({"ts", "level", "event", ...fields}), so that
// log collectors can index request ids, outcomes and latencies without parsing prose.
//
// Thread-safety: Write may be called from any thread; lines never interleave.
#pragma once

#include <mutex>
#include <ostream>
#include <string>

#include "nlohmann/json.hpp"

namespace gsa {

class JsonLog {
 public:
  // `out` must outlive the log (std::cerr in gsa-server).
  explicit JsonLog(std::ostream& out) : out_(out) {}

  // Writes {"ts": ISO-8601 UTC with milliseconds, "level", "event", ...fields}.
  void Write(const std::string& level, const std::string& event, nlohmann::json fields = {});
  void Info(const std::string& event, nlohmann::json fields = {}) { Write("info", event, std::move(fields)); }
  void Warn(const std::string& event, nlohmann::json fields = {}) { Write("warn", event, std::move(fields)); }

 private:
  std::mutex mu_;
  std::ostream& out_;  // guarded by mu_
};

}  // namespace gsa
