#include "clients/retry_policy.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <thread>

#include "absl/strings/str_format.h"

namespace gsa {
namespace {

// gRPC ignores a retryPolicy's maxAttempts above 5 (it uses 5).
constexpr int kGrpcMaxAttempts = 5;

// "0.05s": the duration format of a service config.
std::string ConfigSeconds(std::chrono::milliseconds d) {
  return absl::StrFormat("%.3fs", std::chrono::duration<double>(d).count());
}

}  // namespace

bool IsRetryableFailure(grpc::StatusCode code, bool response_received) {
  if (response_received) return false;
  return code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::CANCELLED;
}

bool ShouldRetry(const RetryPolicy& policy, grpc::StatusCode code, bool response_received,
                 int retries_done) {
  return retries_done < policy.max_retries && IsRetryableFailure(code, response_received);
}

std::chrono::nanoseconds RetryBackoff(const RetryPolicy& policy, int retry, double jitter) {
  const double initial = std::chrono::duration<double>(policy.initial_backoff).count();
  const double cap = std::chrono::duration<double>(policy.max_backoff).count();
  const double base = std::min(initial * std::pow(policy.backoff_multiplier, std::max(retry - 1, 0)), cap);
  const double factor = 0.5 + 0.5 * std::clamp(jitter, 0.0, 1.0);
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(base * factor));
}

RetriedCall CallWithRetries(const RetryPolicy& policy, std::chrono::system_clock::time_point deadline,
                            uint64_t jitter_seed, const AttemptFn& attempt, const RetryNoteFn& on_retry) {
  std::mt19937_64 rng(jitter_seed);
  std::uniform_real_distribution<double> jitter(0.0, 1.0);
  RetriedCall call;
  for (;;) {
    call.last = attempt(call.retries);
    if (!ShouldRetry(policy, call.last.status.error_code(), call.last.response_received, call.retries)) {
      return call;
    }
    const std::chrono::nanoseconds wait = RetryBackoff(policy, call.retries + 1, jitter(rng));
    // The next attempt must start (and have a moment to run) before the deadline; otherwise the
    // refusal is the call's answer.
    if (deadline != std::chrono::system_clock::time_point::max() &&
        std::chrono::system_clock::now() + wait >= deadline) {
      return call;
    }
    if (on_retry) on_retry(call.last, wait, call.retries + 1);
    std::this_thread::sleep_for(wait);
    ++call.retries;
  }
}

std::string RetryServiceConfigJson(const RetryPolicy& policy) {
  if (policy.max_retries <= 0) return "";
  const int attempts = std::min(policy.max_retries + 1, kGrpcMaxAttempts);
  return absl::StrFormat(
      R"({"methodConfig":[{"name":[{"service":"gsa.v1.Generation","method":"GetModelInfo"},)"
      R"({"service":"gsa.v1.Generation","method":"Tokenize"}],)"
      R"("retryPolicy":{"maxAttempts":%d,"initialBackoff":"%s","maxBackoff":"%s",)"
      R"("backoffMultiplier":%g,"retryableStatusCodes":["UNAVAILABLE"]}}]})",
      attempts, ConfigSeconds(policy.initial_backoff), ConfigSeconds(policy.max_backoff),
      policy.backoff_multiplier);
}

}  // namespace gsa
