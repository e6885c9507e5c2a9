#include "server/json_log.h"

#include <chrono>
#include <ctime>

#include "absl/strings/str_format.h"

namespace gsa {

void JsonLog::Write(const std::string& level, const std::string& event, nlohmann::json fields) {
  const auto now = std::chrono::system_clock::now();
  const std::time_t secs = std::chrono::system_clock::to_time_t(now);
  const int64_t ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  nlohmann::json line;
  line["ts"] = absl::StrFormat("%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                               tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
  line["level"] = level;
  line["event"] = event;
  if (fields.is_object()) {
    for (auto& [k, v] : fields.items()) line[k] = std::move(v);
  }
  // Invalid UTF-8 in a field (a client's request id) is replaced, never thrown.
  const std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  std::lock_guard<std::mutex> lock(mu_);
  out_ << text << '\n' << std::flush;
}

}  // namespace gsa
