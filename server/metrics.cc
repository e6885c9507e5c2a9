#include "server/metrics.h"

#include <httplib.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace gsa {
namespace {

std::string Num(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return absl::StrFormat("%.17g", v);
}

void Header(std::string& out, const std::string& name, const char* type, const std::string& help) {
  absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
}

void Scalar(std::string& out, const std::string& name, const char* type, const std::string& help,
            double value) {
  Header(out, name, type, help);
  absl::StrAppend(&out, name, " ", Num(value), "\n");
}

// Latency buckets in seconds: 1 ms … 60 s.
std::vector<double> LatencyBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}

}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::Observe(double value) {
  std::lock_guard<std::mutex> lock(mu_);
  size_t i = 0;
  while (i < bounds_.size() && value > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += value;
  ++count_;
}

int64_t Histogram::count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return count_;
}

void Histogram::Render(const std::string& name, const std::string& help, std::string& out) const {
  std::lock_guard<std::mutex> lock(mu_);
  Header(out, name, "histogram", help);
  int64_t cumulative = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += counts_[i];
    const std::string le = i < bounds_.size() ? Num(bounds_[i]) : "+Inf";
    absl::StrAppend(&out, name, "_bucket{le=\"", le, "\"} ", cumulative, "\n");
  }
  absl::StrAppend(&out, name, "_sum ", Num(sum_), "\n", name, "_count ", count_, "\n");
}

ServerMetrics::ServerMetrics() : ttft_(LatencyBuckets()), itl_(LatencyBuckets()), e2e_(LatencyBuckets()) {}

void ServerMetrics::RecordRequest(absl::string_view outcome) {
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[std::string(outcome)];
}

std::string ServerMetrics::Render(const EngineStats& s, int64_t in_flight) const {
  std::string out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Header(out, "gsa_requests_total", "counter",
           "Generate and Complete calls finished, by outcome (the gRPC status code)");
    for (const auto& [outcome, n] : requests_) {
      absl::StrAppend(&out, "gsa_requests_total{outcome=\"", outcome, "\"} ", n, "\n");
    }
  }
  ttft_.Render("gsa_time_to_first_token_seconds", "Arrival to first generated token", out);
  itl_.Render("gsa_inter_token_latency_seconds", "Time between generated tokens, per token", out);
  e2e_.Render("gsa_e2e_request_latency_seconds", "Arrival to the final response", out);

  Scalar(out, "gsa_requests_in_flight", "gauge", "Generate and Complete calls being served",
         static_cast<double>(in_flight));
  Scalar(out, "gsa_queue_depth", "gauge", "Requests waiting to be scheduled", static_cast<double>(s.waiting));
  Scalar(out, "gsa_running_sequences", "gauge", "Sequences the engine is running",
         static_cast<double>(s.running));
  Scalar(out, "gsa_cache_blocks_total", "gauge", "KV-cache blocks reserved at start",
         static_cast<double>(s.cache_blocks_total));
  Scalar(out, "gsa_cache_blocks_used", "gauge", "KV-cache blocks held by sequences",
         static_cast<double>(s.cache_blocks_used));
  Scalar(out, "gsa_cache_blocks_free", "gauge", "KV-cache blocks free (cached prefixes included)",
         static_cast<double>(s.cache_blocks_total - s.cache_blocks_used));
  Scalar(out, "gsa_cache_blocks_cached", "gauge", "Free blocks that still hold a reusable prompt prefix",
         static_cast<double>(s.cache_blocks_cached));
  Scalar(out, "gsa_preemptions_total", "counter", "Sequences preempted (blocks freed, recomputed later)",
         static_cast<double>(s.preemptions));
  Scalar(out, "gsa_prompt_tokens_total", "counter", "Prompt tokens of finished requests",
         static_cast<double>(s.prompt_tokens));
  Scalar(out, "gsa_prefix_cache_hit_tokens_total", "counter",
         "Prompt tokens served from the prefix cache instead of computed", static_cast<double>(s.prefix_cached_tokens));
  Scalar(out, "gsa_prefix_cache_hit_rate", "gauge", "Share of prompt tokens served from the prefix cache",
         s.prompt_tokens > 0 ? static_cast<double>(s.prefix_cached_tokens) / static_cast<double>(s.prompt_tokens) : 0.0);
  Scalar(out, "gsa_generation_tokens_total", "counter", "Tokens generated", static_cast<double>(s.generated_tokens));
  Scalar(out, "gsa_engine_steps_total", "counter", "Engine steps run", static_cast<double>(s.steps));
  Header(out, "gsa_engine_step_seconds_total", "counter",
         "Wall time of engine steps: inside Backend::Launch and Collect (backend); host work done "
         "while a launched step ran (overlapped: detokenizing, streaming out); and the rest, host work "
         "the device waits for (engine: sampling, scheduling, building the batch)");
  absl::StrAppend(&out, "gsa_engine_step_seconds_total{part=\"backend\"} ", Num(s.backend_seconds), "\n");
  absl::StrAppend(&out, "gsa_engine_step_seconds_total{part=\"overlapped\"} ", Num(s.overlapped_seconds), "\n");
  absl::StrAppend(&out, "gsa_engine_step_seconds_total{part=\"engine\"} ",
                  Num(std::max(0.0, s.step_seconds - s.backend_seconds - s.overlapped_seconds)), "\n");
  Scalar(out, "gsa_selected_queries_total", "counter",
         "Query rows that ran sparse (top-k) attention, summed over steps", static_cast<double>(s.selected_rows));
  Header(out, "gsa_selected_k_mean", "gauge",
         "Mean number of positions a sparse query kept (k_t), per layer, since start");
  for (size_t l = 0; l < s.selected_k_sum.size(); ++l) {
    const double mean = s.selected_rows > 0 ? static_cast<double>(s.selected_k_sum[l]) /
                                                  static_cast<double>(s.selected_rows)
                                            : 0.0;
    absl::StrAppend(&out, "gsa_selected_k_mean{layer=\"", l, "\"} ", Num(mean), "\n");
  }
  return out;
}

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& host, int port, std::function<std::string()> render) {
  auto server = std::make_unique<httplib::Server>();
  server->Get("/metrics", [render](const httplib::Request&, httplib::Response& res) {
    res.set_content(render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  int bound = port;
  if (port == 0) {
    bound = server->bind_to_any_port(host.c_str());
  } else if (!server->bind_to_port(host.c_str(), port)) {
    bound = -1;
  }
  if (bound <= 0) {
    return absl::UnavailableError(absl::StrCat("--metrics-port: cannot listen on ", host, ":", port,
                                               " (in use?); choose another port, or 0"));
  }
  return std::make_unique<MetricsHttpServer>(CreateTag{}, std::move(server), bound);
}

MetricsHttpServer::MetricsHttpServer(CreateTag, std::unique_ptr<httplib::Server> server, int port)
    : server_(std::move(server)), port_(port) {
  thread_ = std::thread([this] { server_->listen_after_bind(); });
}

MetricsHttpServer::~MetricsHttpServer() {
  server_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace gsa
