#include "engine/sample/sampling_params.h"

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"

namespace gsa {
namespace {

// Largest accepted temperature: beyond it the distribution is uniform to within float rounding,
// so a larger value is almost certainly a mistake (a percentage, a missing decimal point).
constexpr float kMaxTemperature = 100.0f;
constexpr size_t kMaxStopStrings = 64;

// "<field> <value> is outside <range>", the one message shape of every range error here.
absl::Status OutsideRange(const char* field, const std::string& value, const char* range) {
  return absl::InvalidArgumentError(absl::StrCat(field, " ", value, " is outside ", range));
}

// Checks lo ≤ v ≤ hi; NaN fails (every comparison with NaN is false).
absl::Status CheckClosed(const char* field, float v, float lo, float hi, const char* range) {
  if (v >= lo && v <= hi) return absl::OkStatus();
  return OutsideRange(field, absl::StrCat(v), range);
}

}  // namespace

absl::Status ValidateSamplingParams(const SamplingParams& p, int32_t max_logprobs) {
  if (!(p.temperature >= 0.0f && p.temperature <= kMaxTemperature)) {
    return OutsideRange("temperature", absl::StrCat(p.temperature), "[0, 100] (0: greedy)");
  }
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) {
    return OutsideRange("top_p", absl::StrCat(p.top_p), "(0, 1] (1: off)");
  }
  if (p.top_k < 0) {
    return OutsideRange("top_k", absl::StrCat(p.top_k), "[0, inf) (0: off)");
  }
  if (absl::Status s = CheckClosed("min_p", p.min_p, 0.0f, 1.0f, "[0, 1] (0: off)"); !s.ok()) {
    return s;
  }
  if (!(std::isfinite(p.repetition_penalty) && p.repetition_penalty > 0.0f)) {
    return OutsideRange("repetition_penalty", absl::StrCat(p.repetition_penalty),
                        "(0, inf) (1: off)");
  }
  if (absl::Status s = CheckClosed("presence_penalty", p.presence_penalty, -2.0f, 2.0f, "[-2, 2]");
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          CheckClosed("frequency_penalty", p.frequency_penalty, -2.0f, 2.0f, "[-2, 2]");
      !s.ok()) {
    return s;
  }
  if (p.logprobs < 0 || p.logprobs > max_logprobs) {
    return absl::InvalidArgumentError(absl::StrCat("logprobs ", p.logprobs, " is outside [0, ",
                                                   max_logprobs, "]"));
  }
  return absl::OkStatus();
}

absl::Status ValidateStoppingParams(const StoppingParams& p, int64_t vocab_size) {
  if (p.max_tokens < 1) {
    return OutsideRange("max_tokens", absl::StrCat(p.max_tokens), "[1, inf)");
  }
  if (p.stop.size() > kMaxStopStrings) {
    return absl::InvalidArgumentError(absl::StrCat("stop has ", p.stop.size(),
                                                   " strings; at most ", kMaxStopStrings,
                                                   " are allowed"));
  }
  for (size_t i = 0; i < p.stop.size(); ++i) {
    if (p.stop[i].empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("stop[", i, "] is empty; stop strings must be non-empty"));
    }
  }
  for (size_t i = 0; i < p.stop_token_ids.size(); ++i) {
    const int32_t id = p.stop_token_ids[i];
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("stop_token_ids[", i, "] ", id,
                                                     " is outside [0, ", vocab_size,
                                                     ") (the vocabulary)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace gsa
