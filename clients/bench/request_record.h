// RequestRecord: what one benchmark request measured. Plain data.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace gsa::bench {

struct RequestRecord {
  int64_t index = 0;      // position in the workload
  double start_s = 0.0;   // when it was sent, seconds after the run started
  bool ok = false;        // gRPC OK and a finish reason other than ERROR
  std::string status;     // gRPC status code name ("OK", "DEADLINE_EXCEEDED", ...) of the last
                          // attempt, or "FINISH_REASON_ERROR" when the stream ended OK with an
                          // error finish
  int retries = 0;        // attempts after the first (refused before any response; see
                          // clients/retry_policy.h)
  std::string error;      // the status message when not ok
  std::string finish_reason;   // "length", "stop", "eos", "cancelled", "error"; empty: none seen
  int64_t prompt_tokens = 0;   // from the final message's usage; else the prompt ids sent
  int64_t output_tokens = 0;   // from usage; else the token ids received
  std::optional<double> ttft_s;  // first send → first message carrying tokens
  double e2e_s = 0.0;            // first send → stream finished (refused attempts included)
  std::vector<double> itl_s;     // one per token after the first message: the gap between its
                                 // message and the previous token-bearing one ÷ tokens in it
};

// Time per output token after the first: (e2e − ttft) / (output_tokens − 1); unset for failed
// requests and those with fewer than 2 tokens.
inline std::optional<double> TimePerOutputToken(const RequestRecord& r) {
  if (!r.ok || !r.ttft_s.has_value() || r.output_tokens < 2) return std::nullopt;
  return (r.e2e_s - *r.ttft_s) / static_cast<double>(r.output_tokens - 1);
}

}  // namespace gsa::bench
