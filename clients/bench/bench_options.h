// BenchOptions: everything gsa-bench is configured with (its flags), and the flag parser.
//
// Pure data and a pure function: no I/O, safe to use from any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "clients/client_channel.h"
#include "clients/retry_policy.h"

namespace gsa::bench {

// How a synthetic length (input or output) varies around its mean `len` (see length_sampler.h).
enum class LengthDistribution {
  kFixed,    // exactly len
  kUniform,  // integers uniform in [len·(1 − r), len·(1 + r)], r = range_ratio (vLLM's random set)
  kNormal,   // round(N(len, (len·r)²)), clamped to ≥ 1
};

enum class ProgressMode {
  kAuto,   // a bar when stderr is a terminal, periodic lines otherwise
  kBar,
  kLines,
  kOff,
};

enum class AttentionMode {
  kDefault,  // the model's own attention (GSA's top-k selection for sparse models)
  kDense,    // attention over every earlier position, same weights
};

struct BenchOptions {
  std::string target = "127.0.0.1:50051";
  ClientSecurity security;  // --tls, --tls-ca, --tls-cert, --tls-key, --api-key, --api-key-file
  // Measured requests. Unset: 100, or with --prompts the number of lines in the file.
  std::optional<int64_t> num_requests;
  // In-flight cap. Unset with no request rate: 1 (a closed loop with one client).
  std::optional<int> concurrency;
  // Mean arrivals per second of a Poisson process (open loop). Unset: closed loop. +inf: every
  // request is sent at once (bounded only by `concurrency`).
  std::optional<double> request_rate;

  int32_t input_len = 128;
  int32_t output_len = 128;
  LengthDistribution input_len_dist = LengthDistribution::kFixed;
  LengthDistribution output_len_dist = LengthDistribution::kFixed;
  double range_ratio = 0.5;  // spread of the uniform and normal distributions (see above)
  std::string prompts_file;  // JSONL prompts instead of random token ids; empty: random

  bool ignore_eos = true;    // every request generates exactly its max_tokens
  float temperature = 0.0f;  // 0: greedy
  uint64_t seed = 0;         // workload, arrival times and (temperature > 0) per-request sampling
  AttentionMode attention = AttentionMode::kDefault;

  int64_t warmup = 0;          // requests sent (and waited for) first, not counted
  double timeout_s = 600.0;    // per-request deadline, retries included
  RetryPolicy retry;           // --max-retries: requests refused before they started (retry_policy.h)
  double connect_timeout_s = 10.0;  // how long to wait for the server to answer GetModelInfo
  std::string json_file;       // where to write the JSON report; empty: none
  ProgressMode progress = ProgressMode::kAuto;

  // The in-flight cap actually used: `concurrency`, else 1 for a closed loop, else unbounded (0).
  int EffectiveConcurrency() const;
  // "closed-loop", "open-loop" or "open-loop, capped".
  std::string ModeName() const;
};

// Parses argv without the program name. Flags take `--flag value` or `--flag=value`; booleans
// also `--flag` and `--no-flag`. InvalidArgument naming the flag for an unknown flag, a missing
// value, a value that does not parse or is out of range; `--help` is reported as Cancelled so
// that the caller prints BenchUsage() and exits 0.
absl::StatusOr<BenchOptions> ParseBenchFlags(const std::vector<std::string>& args);
std::string BenchUsage();

// `argv` with the value of --api-key replaced by "<redacted>", for the report's command line.
std::vector<std::string> RedactSecretFlags(const std::vector<std::string>& argv);

std::string LengthDistributionName(LengthDistribution d);
std::string ProgressModeName(ProgressMode m);
std::string AttentionModeName(AttentionMode m);

}  // namespace gsa::bench
