// The results of a benchmark run: aggregate metrics from the per-request records, the summary
// table printed to stdout, and the JSON report (--json).
//
// Pure functions apart from WriteJsonFile; safe to call from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "clients/bench/bench_options.h"
#include "clients/bench/request_record.h"
#include "clients/bench/statistics.h"
#include "gsa/v1/generation.pb.h"
#include "nlohmann/json.hpp"

namespace gsa::bench {

struct BenchMetrics {
  int64_t completed = 0;                           // successful requests
  int64_t failed = 0;
  std::map<std::string, int64_t> errors_by_status;  // status name → failed requests
  int64_t retries = 0;           // attempts after the first, over all requests (ok or failed)
  int64_t retried_requests = 0;  // requests with at least one retry
  double duration_s = 0.0;
  int64_t total_input_tokens = 0;    // prompt tokens of successful requests
  int64_t total_output_tokens = 0;   // generated tokens of successful requests
  double request_throughput = 0.0;   // successful requests / duration
  double input_throughput = 0.0;     // tokens / s
  double output_throughput = 0.0;
  double total_token_throughput = 0.0;
  // Over successful requests, in milliseconds. ITL: every inter-token gap of every request;
  // TPOT: one value a request (see TimePerOutputToken).
  Summary ttft_ms;
  Summary tpot_ms;
  Summary itl_ms;
  Summary e2e_ms;
};

BenchMetrics ComputeMetrics(const std::vector<RequestRecord>& records, double duration_s);

// Everything one run produced, as reported.
struct BenchReport {
  BenchOptions options;
  gsa::v1::ModelInfo model_info;
  std::vector<RequestRecord> records;
  BenchMetrics metrics;
  int64_t num_requests = 0;
  int64_t warmup_requests = 0;
  int64_t warmup_failed = 0;
  int peak_in_flight = 0;
  std::string command_line;
  std::string timestamp;  // ISO 8601 UTC, when the measured run started
};

// The human-readable summary (what gsa-bench prints to stdout).
std::string FormatSummaryTable(const BenchReport& report);

// The JSON report, keys in this order: "tool", "timestamp", "command_line", "config",
// "model_info", "results" (the metrics) and "requests" (one record each).
nlohmann::ordered_json ReportToJson(const BenchReport& report);
nlohmann::ordered_json OptionsToJson(const BenchOptions& options);
nlohmann::ordered_json ModelInfoToJson(const gsa::v1::ModelInfo& info);
nlohmann::ordered_json SummaryToJson(const Summary& s);  // nulls when count is 0
nlohmann::ordered_json RecordToJson(const RequestRecord& r);

// Writes `j` (indented) to `path`; an error naming the path when it cannot.
absl::Status WriteJsonFile(const std::string& path, const nlohmann::ordered_json& j);

// Arguments joined by spaces, each quoted for a POSIX shell when it needs quoting.
std::string JoinCommandLine(const std::vector<std::string>& argv);
// "2025-01-31T12:34:56.789Z".
std::string Iso8601Utc(std::chrono::system_clock::time_point t);

}  // namespace gsa::bench
