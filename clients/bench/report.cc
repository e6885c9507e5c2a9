#include "clients/bench/report.h"

#include <cmath>
#include <ctime>
#include <fstream>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "clients/bench/stream_request.h"

namespace gsa::bench {
namespace {

constexpr double kMs = 1000.0;

double PerSecond(double amount, double duration_s) {
  return duration_s > 0.0 ? amount / duration_s : 0.0;
}

nlohmann::ordered_json OptionalMs(const std::optional<double>& seconds) {
  return seconds.has_value() ? nlohmann::ordered_json(*seconds * kMs) : nlohmann::ordered_json(nullptr);
}

std::string LoadDescription(const BenchOptions& o) {
  std::string s;
  if (!o.request_rate.has_value()) {
    s = absl::StrCat("closed loop, concurrency ", o.EffectiveConcurrency());
  } else {
    s = std::isinf(*o.request_rate)
            ? std::string("open loop, all requests at once")
            : absl::StrFormat("open loop, Poisson %.4g req/s (seed %d)", *o.request_rate, o.seed);
    if (o.concurrency.has_value()) absl::StrAppend(&s, ", at most ", *o.concurrency, " in flight");
  }
  return s;
}

std::string WorkloadDescription(const BenchOptions& o) {
  if (!o.prompts_file.empty()) return absl::StrCat("prompts from ", o.prompts_file);
  auto one = [&](int32_t len, LengthDistribution d) {
    return d == LengthDistribution::kFixed
               ? absl::StrCat(len)
               : absl::StrFormat("%d (%s, ratio %.2f)", len, LengthDistributionName(d),
                                 o.range_ratio);
  };
  return absl::StrCat("random ids, input ", one(o.input_len, o.input_len_dist), ", output ",
                      one(o.output_len, o.output_len_dist));
}

std::string Row(const std::string& label, const std::string& value) {
  return absl::StrFormat("%-34s %s\n", label, value);
}

std::string LatencyRow(const std::string& label, const Summary& s) {
  if (s.count == 0) return absl::StrFormat("%-10s %10s %10s %10s %10s\n", label, "-", "-", "-", "-");
  return absl::StrFormat("%-10s %10.2f %10.2f %10.2f %10.2f\n", label, s.mean, s.p50, s.p90,
                         s.p99);
}

bool NeedsShellQuoting(const std::string& s) {
  if (s.empty()) return true;
  for (char c : s) {
    const bool safe = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      std::string("-_./=:,+@%").find(c) != std::string::npos;
    if (!safe) return true;
  }
  return false;
}

}  // namespace

BenchMetrics ComputeMetrics(const std::vector<RequestRecord>& records, double duration_s) {
  BenchMetrics m;
  m.duration_s = duration_s;
  std::vector<double> ttft;
  std::vector<double> tpot;
  std::vector<double> itl;
  std::vector<double> e2e;
  for (const RequestRecord& r : records) {
    m.retries += r.retries;
    m.retried_requests += r.retries > 0 ? 1 : 0;
    if (!r.ok) {
      ++m.failed;
      ++m.errors_by_status[r.status.empty() ? std::string("UNKNOWN") : r.status];
      continue;
    }
    ++m.completed;
    m.total_input_tokens += r.prompt_tokens;
    m.total_output_tokens += r.output_tokens;
    if (r.ttft_s.has_value()) ttft.push_back(*r.ttft_s * kMs);
    if (const std::optional<double> t = TimePerOutputToken(r)) tpot.push_back(*t * kMs);
    for (double gap : r.itl_s) itl.push_back(gap * kMs);
    e2e.push_back(r.e2e_s * kMs);
  }
  m.request_throughput = PerSecond(static_cast<double>(m.completed), duration_s);
  m.input_throughput = PerSecond(static_cast<double>(m.total_input_tokens), duration_s);
  m.output_throughput = PerSecond(static_cast<double>(m.total_output_tokens), duration_s);
  m.total_token_throughput =
      PerSecond(static_cast<double>(m.total_input_tokens + m.total_output_tokens), duration_s);
  m.ttft_ms = Summarize(std::move(ttft));
  m.tpot_ms = Summarize(std::move(tpot));
  m.itl_ms = Summarize(std::move(itl));
  m.e2e_ms = Summarize(std::move(e2e));
  return m;
}

std::string FormatSummaryTable(const BenchReport& report) {
  const BenchMetrics& m = report.metrics;
  const gsa::v1::ModelInfo& info = report.model_info;
  const std::string rule(60, '-');
  std::string out = std::string(18, '=') + " gsa-bench results " + std::string(23, '=') + "\n";
  out += Row("Target:", report.options.target);
  out += Row("Model:", absl::StrCat(info.model_dir().empty() ? "?" : info.model_dir(), " (",
                                    info.backend(), ", attention ",
                                    AttentionModeName(report.options.attention), ")"));
  out += Row("Load:", LoadDescription(report.options));
  out += Row("Workload:", WorkloadDescription(report.options));
  out += rule + "\n";
  out += Row("Successful requests:", absl::StrCat(m.completed));
  out += Row("Failed requests:", absl::StrCat(m.failed));
  for (const auto& [status, count] : m.errors_by_status) {
    out += Row(absl::StrCat("  ", status, ":"), absl::StrCat(count));
  }
  out += Row("Retries (requests retried):", absl::StrCat(m.retries, " (", m.retried_requests, ")"));
  out += Row("Benchmark duration (s):", absl::StrFormat("%.2f", m.duration_s));
  out += Row("Total input tokens:", absl::StrCat(m.total_input_tokens));
  out += Row("Total generated tokens:", absl::StrCat(m.total_output_tokens));
  out += Row("Request throughput (req/s):", absl::StrFormat("%.2f", m.request_throughput));
  out += Row("Input token throughput (tok/s):", absl::StrFormat("%.2f", m.input_throughput));
  out += Row("Output token throughput (tok/s):", absl::StrFormat("%.2f", m.output_throughput));
  out += Row("Total token throughput (tok/s):", absl::StrFormat("%.2f", m.total_token_throughput));
  out += Row("Peak requests in flight:", absl::StrCat(report.peak_in_flight));
  out += rule + "\n";
  out += absl::StrFormat("%-10s %10s %10s %10s %10s\n", "Latency ms", "mean", "p50", "p90", "p99");
  out += LatencyRow("TTFT", m.ttft_ms);
  out += LatencyRow("TPOT", m.tpot_ms);
  out += LatencyRow("ITL", m.itl_ms);
  out += LatencyRow("E2E", m.e2e_ms);
  out += std::string(60, '=') + "\n";
  return out;
}

nlohmann::ordered_json SummaryToJson(const Summary& s) {
  nlohmann::ordered_json j;
  j["count"] = s.count;
  const bool any = s.count > 0;
  for (const auto& [key, value] : {std::pair<const char*, double>{"mean", s.mean},
                                   {"stddev", s.stddev},
                                   {"min", s.min},
                                   {"p50", s.p50},
                                   {"p90", s.p90},
                                   {"p99", s.p99},
                                   {"max", s.max}}) {
    j[key] = any ? nlohmann::ordered_json(value) : nlohmann::ordered_json(nullptr);
  }
  return j;
}

nlohmann::ordered_json OptionsToJson(const BenchOptions& o) {
  nlohmann::ordered_json j;
  j["target"] = o.target;
  j["mode"] = o.ModeName();
  j["num_requests"] = o.num_requests.has_value() ? nlohmann::ordered_json(*o.num_requests) : nullptr;
  j["concurrency"] = o.concurrency.has_value() ? nlohmann::ordered_json(*o.concurrency) : nullptr;
  j["effective_concurrency"] = o.EffectiveConcurrency();  // 0: unbounded
  if (o.request_rate.has_value()) {
    // JSON has no infinity: "inf" as a string, like the flag.
    j["request_rate"] = std::isinf(*o.request_rate) ? nlohmann::ordered_json("inf")
                                                     : nlohmann::ordered_json(*o.request_rate);
  } else {
    j["request_rate"] = nullptr;
  }
  j["input_len"] = o.input_len;
  j["output_len"] = o.output_len;
  j["input_len_dist"] = LengthDistributionName(o.input_len_dist);
  j["output_len_dist"] = LengthDistributionName(o.output_len_dist);
  j["range_ratio"] = o.range_ratio;
  j["prompts_file"] = o.prompts_file.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(o.prompts_file);
  j["ignore_eos"] = o.ignore_eos;
  j["temperature"] = o.temperature;
  j["seed"] = o.seed;
  j["attention"] = AttentionModeName(o.attention);
  j["warmup"] = o.warmup;
  j["timeout_s"] = o.timeout_s;
  j["max_retries"] = o.retry.max_retries;
  j["connect_timeout_s"] = o.connect_timeout_s;
  return j;
}

nlohmann::ordered_json ModelInfoToJson(const gsa::v1::ModelInfo& info) {
  nlohmann::ordered_json j;
  j["model_dir"] = info.model_dir();
  j["backend"] = info.backend();
  j["vocab_size"] = info.vocab_size();
  j["max_model_len"] = info.max_model_len();
  j["n_layers"] = info.n_layers();
  j["d_model"] = info.d_model();
  j["n_heads"] = info.n_heads();
  j["n_kv_heads"] = info.n_kv_heads();
  j["d_head"] = info.d_head();
  j["indexer_activation"] = info.indexer_activation();
  j["k_base"] = info.k_base();
  j["k_min"] = info.k_min();
  j["k_max"] = info.k_max();
  j["adaptive_k"] = info.adaptive_k();
  j["adaptive_k_method"] = info.adaptive_k_method();
  j["value_gate"] = info.value_gate();
  j["output_gate"] = info.output_gate();
  j["default_attention"] =
      info.default_attention() == gsa::v1::ATTENTION_DENSE ? "dense" : "default";
  j["has_tokenizer"] = info.has_tokenizer();
  j["bos_token_id"] = info.has_bos_token_id() ? nlohmann::ordered_json(info.bos_token_id()) : nullptr;
  j["eos_token_id"] = info.has_eos_token_id() ? nlohmann::ordered_json(info.eos_token_id()) : nullptr;
  j["block_size"] = info.block_size();
  j["cache_tokens"] = info.cache_tokens();
  return j;
}

nlohmann::ordered_json RecordToJson(const RequestRecord& r) {
  nlohmann::ordered_json j;
  j["index"] = r.index;
  j["start_ms"] = r.start_s * kMs;
  j["status"] = r.status;
  if (!r.error.empty()) j["error"] = r.error;
  j["retries"] = r.retries;
  j["finish_reason"] = r.finish_reason.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(r.finish_reason);
  j["prompt_tokens"] = r.prompt_tokens;
  j["output_tokens"] = r.output_tokens;
  j["ttft_ms"] = OptionalMs(r.ttft_s);
  j["tpot_ms"] = OptionalMs(TimePerOutputToken(r));
  j["e2e_ms"] = r.e2e_s * kMs;
  return j;
}

nlohmann::ordered_json ReportToJson(const BenchReport& report) {
  const BenchMetrics& m = report.metrics;
  nlohmann::ordered_json j;
  j["tool"] = "gsa-bench";
  j["timestamp"] = report.timestamp;
  j["command_line"] = report.command_line;
  j["config"] = OptionsToJson(report.options);
  j["config"]["num_requests"] = report.num_requests;  // as run (after defaults)
  j["model_info"] = ModelInfoToJson(report.model_info);

  nlohmann::ordered_json results;
  results["num_requests"] = report.num_requests;
  results["completed"] = m.completed;
  results["failed"] = m.failed;
  results["errors"] = nlohmann::ordered_json::object();
  for (const auto& [status, count] : m.errors_by_status) results["errors"][status] = count;
  results["retries"] = m.retries;
  results["retried_requests"] = m.retried_requests;
  results["warmup_requests"] = report.warmup_requests;
  results["warmup_failed"] = report.warmup_failed;
  results["duration_s"] = m.duration_s;
  results["total_input_tokens"] = m.total_input_tokens;
  results["total_output_tokens"] = m.total_output_tokens;
  results["request_throughput"] = m.request_throughput;
  results["input_throughput"] = m.input_throughput;
  results["output_throughput"] = m.output_throughput;
  results["total_token_throughput"] = m.total_token_throughput;
  results["peak_in_flight"] = report.peak_in_flight;
  results["ttft_ms"] = SummaryToJson(m.ttft_ms);
  results["tpot_ms"] = SummaryToJson(m.tpot_ms);
  results["itl_ms"] = SummaryToJson(m.itl_ms);
  results["e2e_ms"] = SummaryToJson(m.e2e_ms);
  j["results"] = std::move(results);

  nlohmann::ordered_json requests = nlohmann::ordered_json::array();
  for (const RequestRecord& r : report.records) requests.push_back(RecordToJson(r));
  j["requests"] = std::move(requests);
  return j;
}

absl::Status WriteJsonFile(const std::string& path, const nlohmann::ordered_json& j) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::NotFoundError(absl::StrCat("--json ", path, ": cannot open for writing"));
  out << j.dump(2) << '\n';
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat("--json ", path, ": write failed"));
  return absl::OkStatus();
}

std::string JoinCommandLine(const std::vector<std::string>& argv) {
  std::string out;
  for (const std::string& arg : argv) {
    if (!out.empty()) out += ' ';
    if (!NeedsShellQuoting(arg)) {
      out += arg;
      continue;
    }
    out += '\'';
    for (char c : arg) {
      if (c == '\'') {
        out += "'\\''";
      } else {
        out += c;
      }
    }
    out += '\'';
  }
  return out;
}

std::string Iso8601Utc(std::chrono::system_clock::time_point t) {
  const auto since_epoch = t.time_since_epoch();
  const auto secs = std::chrono::duration_cast<std::chrono::seconds>(since_epoch);
  const auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(since_epoch - secs);
  const std::time_t tt = static_cast<std::time_t>(secs.count());
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  return absl::StrFormat("%s.%03dZ", buf, static_cast<int>(millis.count()));
}

}  // namespace gsa::bench
