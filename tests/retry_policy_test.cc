// The clients' retry of calls that never started (clients/retry_policy.h): which failures are
// sent again, how many times, how long the waits are, the deadline bound, and the service config
// that gives the unary calls gRPC's own retry policy.
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <vector>

#include "clients/retry_policy.h"
#include "nlohmann/json.hpp"

namespace gsa {
namespace {

using std::chrono::milliseconds;
using std::chrono::nanoseconds;
using Code = grpc::StatusCode;

RetryPolicy FastPolicy(int max_retries) {
  RetryPolicy p;
  p.max_retries = max_retries;
  p.initial_backoff = milliseconds(1);
  p.max_backoff = milliseconds(4);
  return p;
}

AttemptResult Failed(Code code, bool response_received = false) {
  return AttemptResult{grpc::Status(code, "refused"), response_received};
}

// ---- The decision -------------------------------------------------------------------------------

TEST(RetryDecision, UnavailableOrCancelledBeforeAnyResponseIsRetried) {
  EXPECT_TRUE(IsRetryableFailure(Code::UNAVAILABLE, false));
  EXPECT_TRUE(IsRetryableFailure(Code::CANCELLED, false));
}

TEST(RetryDecision, NothingIsRetriedOnceAResponseArrived) {
  // Tokens were already streamed: another attempt would repeat them.
  EXPECT_FALSE(IsRetryableFailure(Code::UNAVAILABLE, true));
  EXPECT_FALSE(IsRetryableFailure(Code::CANCELLED, true));
  EXPECT_FALSE(IsRetryableFailure(Code::OK, true));
}

TEST(RetryDecision, OtherCodesAreFinal) {
  for (Code code : {Code::OK, Code::UNKNOWN, Code::INVALID_ARGUMENT, Code::DEADLINE_EXCEEDED,
                    Code::NOT_FOUND, Code::RESOURCE_EXHAUSTED, Code::FAILED_PRECONDITION,
                    Code::ABORTED, Code::INTERNAL, Code::UNIMPLEMENTED, Code::UNAUTHENTICATED,
                    Code::PERMISSION_DENIED}) {
    EXPECT_FALSE(IsRetryableFailure(code, false)) << "code " << code;
  }
}

TEST(RetryDecision, AttemptsAreBoundedByMaxRetries) {
  const RetryPolicy p = FastPolicy(3);
  EXPECT_TRUE(ShouldRetry(p, Code::UNAVAILABLE, false, 0));
  EXPECT_TRUE(ShouldRetry(p, Code::CANCELLED, false, 2));
  EXPECT_FALSE(ShouldRetry(p, Code::UNAVAILABLE, false, 3));
  EXPECT_FALSE(ShouldRetry(p, Code::UNAVAILABLE, true, 0));
  EXPECT_FALSE(ShouldRetry(p, Code::DEADLINE_EXCEEDED, false, 0));
}

TEST(RetryDecision, ZeroMaxRetriesNeverRetries) {
  EXPECT_FALSE(ShouldRetry(FastPolicy(0), Code::UNAVAILABLE, false, 0));
}

// ---- The waits ------------------------------------------------------------------------------------

TEST(RetryBackoff, DoublesFromTheInitialWaitUpToTheCapWithJitterInHalfToOne) {
  RetryPolicy p;  // 50 ms, ×2, at most 1 s
  EXPECT_EQ(RetryBackoff(p, 1, 0.0), milliseconds(25));
  EXPECT_EQ(RetryBackoff(p, 2, 0.0), milliseconds(50));
  EXPECT_EQ(RetryBackoff(p, 3, 0.0), milliseconds(100));
  EXPECT_EQ(RetryBackoff(p, 10, 0.0), milliseconds(500));  // capped at 1 s before the jitter
  for (int retry = 1; retry <= 10; ++retry) {
    for (double jitter : {0.0, 0.25, 0.5, 0.999}) {
      const nanoseconds wait = RetryBackoff(p, retry, jitter);
      EXPECT_GE(wait, milliseconds(25));
      EXPECT_LT(wait, milliseconds(1000));
    }
  }
  EXPECT_LT(RetryBackoff(p, 2, 0.1), RetryBackoff(p, 2, 0.9));
}

// ---- The loop ------------------------------------------------------------------------------------

TEST(CallWithRetries, RetriesRefusalsUntilAnAttemptSucceeds) {
  std::vector<int> attempts;
  std::vector<int> notes;
  const RetriedCall call = CallWithRetries(
      FastPolicy(3), std::chrono::system_clock::time_point::max(), 7,
      [&](int n) {
        attempts.push_back(n);
        if (n == 0) return Failed(Code::UNAVAILABLE);
        if (n == 1) return Failed(Code::CANCELLED);
        return AttemptResult{grpc::Status::OK, true};
      },
      [&](const AttemptResult& failed, nanoseconds wait, int retry) {
        EXPECT_FALSE(failed.status.ok());
        EXPECT_GT(wait, nanoseconds(0));
        notes.push_back(retry);
      });
  EXPECT_TRUE(call.last.status.ok());
  EXPECT_EQ(call.retries, 2);
  EXPECT_EQ(attempts, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(notes, (std::vector<int>{1, 2}));
}

TEST(CallWithRetries, GivesUpAfterMaxRetriesWithTheLastFailure) {
  int attempts = 0;
  const RetriedCall call = CallWithRetries(FastPolicy(4), std::chrono::system_clock::time_point::max(),
                                           1, [&](int) {
                                             ++attempts;
                                             return Failed(Code::UNAVAILABLE);
                                           });
  EXPECT_EQ(attempts, 5);
  EXPECT_EQ(call.retries, 4);
  EXPECT_EQ(call.last.status.error_code(), Code::UNAVAILABLE);
}

TEST(CallWithRetries, AFailureAfterAResponseIsFinal) {
  int attempts = 0;
  const RetriedCall call = CallWithRetries(FastPolicy(3), std::chrono::system_clock::time_point::max(),
                                           1, [&](int) {
                                             ++attempts;
                                             return Failed(Code::UNAVAILABLE, /*response_received=*/true);
                                           });
  EXPECT_EQ(attempts, 1);
  EXPECT_EQ(call.retries, 0);
}

TEST(CallWithRetries, StopsWhenTheWaitWouldPassTheDeadline) {
  RetryPolicy p;
  p.max_retries = 5;
  p.initial_backoff = milliseconds(200);  // the first wait is 100-200 ms
  int attempts = 0;
  const auto start = std::chrono::steady_clock::now();
  const RetriedCall call = CallWithRetries(p, std::chrono::system_clock::now() + milliseconds(50), 1,
                                           [&](int) {
                                             ++attempts;
                                             return Failed(Code::UNAVAILABLE);
                                           });
  EXPECT_EQ(attempts, 1);
  EXPECT_EQ(call.retries, 0);
  EXPECT_EQ(call.last.status.error_code(), Code::UNAVAILABLE);
  EXPECT_LT(std::chrono::steady_clock::now() - start, milliseconds(50));  // no pointless wait
}

// ---- gRPC's retry policy for the unary calls --------------------------------------------------------

TEST(RetryServiceConfig, GivesGetModelInfoAndTokenizeARetryPolicyOnUnavailable) {
  const nlohmann::json config = nlohmann::json::parse(RetryServiceConfigJson(FastPolicy(3)));
  const nlohmann::json& method = config.at("methodConfig").at(0);
  std::vector<std::string> names;
  for (const nlohmann::json& n : method.at("name")) {
    EXPECT_EQ(n.at("service"), "gsa.v1.Generation");
    names.push_back(n.at("method"));
  }
  // Not Generate or Complete: those are retried by the clients, counted, before any response.
  EXPECT_EQ(names, (std::vector<std::string>{"GetModelInfo", "Tokenize"}));
  const nlohmann::json& policy = method.at("retryPolicy");
  EXPECT_EQ(policy.at("maxAttempts"), 4);
  EXPECT_EQ(policy.at("initialBackoff"), "0.001s");
  EXPECT_EQ(policy.at("maxBackoff"), "0.004s");
  EXPECT_EQ(policy.at("retryableStatusCodes"), nlohmann::json::array({"UNAVAILABLE"}));
}

TEST(RetryServiceConfig, AttemptsAreCappedAtGrpcsFiveAndZeroRetriesSetsNone) {
  const nlohmann::json config = nlohmann::json::parse(RetryServiceConfigJson(FastPolicy(10)));
  EXPECT_EQ(config.at("methodConfig").at(0).at("retryPolicy").at("maxAttempts"), 5);
  EXPECT_EQ(RetryServiceConfigJson(FastPolicy(0)), "");
}

}  // namespace
}  // namespace gsa
