// When gsa-cli and gsa-bench send a call again, and how long they wait first.
//
// A generation call (Generate, Complete) is sent again only when it never started on a server:
// it failed with UNAVAILABLE or CANCELLED before any response message arrived. That is how a
// draining gsa-server refuses a call (UNAVAILABLE "draining", or CANCELLED from gRPC for a call
// that arrives as its listener closes), and how a proxy answers when it reached no replica. No
// token was produced for the client, so another attempt (through a load balancer: most likely
// on another replica) cannot duplicate output. Once any response message has arrived the call is
// final whatever its status: its tokens were already streamed, and a second attempt would repeat
// them. DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED and every other code are final too.
//
// Who retries what:
//   - Generate and Complete: the caller, with CallWithRetries. gRPC's own retry policy (a service
//     config retryPolicy) does retry a streaming call, but only while the answer is trailers-only
//     (it commits the call at the first response headers), it cannot tell the application how
//     many attempts it made (gsa-bench reports retries), and stacked under an application retry
//     it would multiply the attempts. So these methods get no retryPolicy.
//   - GetModelInfo and Tokenize (idempotent, unary): gRPC, with the retryPolicy of
//     RetryServiceConfigJson, on UNAVAILABLE.
//   - gRPC's transparent retries (a stream refused before it reached the server application,
//     e.g. REFUSED_STREAM after a GOAWAY) are always on and not counted: they are not attempts
//     the server saw.
//
// Thread-safety: everything here is pure apart from CallWithRetries, which sleeps on the calling
// thread and may be called from many threads at once.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include <grpcpp/support/status.h>

namespace gsa {

struct RetryPolicy {
  int max_retries = 3;  // attempts after the first; 0: never retry
  // Backoff before retry n (n = 1, 2, ...): min(initial · multiplier^(n−1), max), times a jitter
  // factor uniform in [0.5, 1).
  std::chrono::milliseconds initial_backoff{50};
  std::chrono::milliseconds max_backoff{1000};
  double backoff_multiplier = 2.0;
};

// The largest --max-retries the clients accept.
inline constexpr int kMaxRetriesLimit = 10;

// Whether a generation call that ended with `code` never started on a server: UNAVAILABLE or
// CANCELLED with no response message received. (OK is never a failure to retry.)
bool IsRetryableFailure(grpc::StatusCode code, bool response_received);

// Whether to send the call again after its attempt number `retries_done` (0 for the first
// attempt) ended with `code`: a retryable failure and fewer than policy.max_retries retries done.
bool ShouldRetry(const RetryPolicy& policy, grpc::StatusCode code, bool response_received,
                 int retries_done);

// The wait before retry `retry` (1 for the first retry; REQUIRES: retry ≥ 1), with `jitter` in
// [0, 1) choosing the factor in [0.5, 1).
std::chrono::nanoseconds RetryBackoff(const RetryPolicy& policy, int retry, double jitter);

// What one attempt of a call did.
struct AttemptResult {
  grpc::Status status;
  bool response_received = false;  // at least one response message arrived
};

struct RetriedCall {
  AttemptResult last;  // the last attempt's result (the call's outcome)
  int retries = 0;     // attempts after the first
};

// Calls `attempt(n)` for n = 0, 1, ... until an attempt is not ShouldRetry's (success, a final
// status, a response received, or the retries used up), waiting RetryBackoff between attempts.
// Stops early, returning the failed attempt, when the wait would end at or after `deadline`
// (system_clock::time_point::max(): no deadline); each attempt should use that same deadline,
// so the whole call, retries included, ends by it. `on_retry(failed, wait, retry)` (may be
// empty) is told before each wait. The jitter comes from a generator seeded with `jitter_seed`.
// REQUIRES: the caller does not cancel the attempts itself (a call it cancelled also ends
// CANCELLED with no response, and would be sent again).
using AttemptFn = std::function<AttemptResult(int attempt)>;
using RetryNoteFn =
    std::function<void(const AttemptResult& failed, std::chrono::nanoseconds wait, int retry)>;
RetriedCall CallWithRetries(const RetryPolicy& policy,
                            std::chrono::system_clock::time_point deadline, uint64_t jitter_seed,
                            const AttemptFn& attempt, const RetryNoteFn& on_retry = {});

// A default service config (grpc::ChannelArguments::SetServiceConfigJSON) giving
// gsa.v1.Generation's GetModelInfo and Tokenize gRPC's retryPolicy on UNAVAILABLE, with
// policy.max_retries + 1 attempts (gRPC allows at most 5) and the policy's backoff; empty (set no
// service config) when policy.max_retries is 0.
std::string RetryServiceConfigJson(const RetryPolicy& policy);

}  // namespace gsa
