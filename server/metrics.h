// Server metrics in Prometheus' text format (version 0.0.4), served over HTTP on --metrics-port.
//
// ServerMetrics holds what the gRPC side measures (request outcomes, TTFT, inter-token and
// end-to-end latency histograms); Render adds the engine's counters and gauges from an
// EngineStats snapshot (queue depth, running sequences, cache blocks, preemptions, prefix-cache
// hits, tokens) and GSA's own: the mean number of positions each query kept, per layer.
// MetricsHttpServer serves GET /metrics from a render callback on its own thread.
//
// Thread-safety: ServerMetrics methods may be called from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/engine.h"

namespace httplib {
class Server;
}

namespace gsa {

// A cumulative histogram with fixed upper bounds (Prometheus semantics: le buckets + _sum/_count).
class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void Observe(double value);
  // Appends the metric's HELP, TYPE and samples.
  void Render(const std::string& name, const std::string& help, std::string& out) const;
  int64_t count() const;

 private:
  const std::vector<double> bounds_;
  mutable std::mutex mu_;
  std::vector<int64_t> counts_;  // guarded by mu_; [bounds + 1], the last is +Inf
  double sum_ = 0;               // guarded by mu_
  int64_t count_ = 0;            // guarded by mu_
};

class ServerMetrics {
 public:
  ServerMetrics();

  // One finished Generate/Complete call, by its gRPC status code name in lower case
  // ("ok", "invalid_argument", "cancelled", ...).
  void RecordRequest(absl::string_view outcome);
  void ObserveTimeToFirstToken(double seconds) { ttft_.Observe(seconds); }
  void ObserveInterTokenLatency(double seconds) { itl_.Observe(seconds); }
  void ObserveEndToEnd(double seconds) { e2e_.Observe(seconds); }

  // The whole exposition: request metrics plus the engine's, from `stats`.
  std::string Render(const EngineStats& stats, int64_t in_flight) const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, int64_t> requests_;  // guarded by mu_; outcome → count
  Histogram ttft_;
  Histogram itl_;
  Histogram e2e_;
};

class MetricsHttpServer {
 public:
  // Listens on host:port (0 picks a port) and serves GET /metrics with `render()`.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(const std::string& host, int port,
                                                                  std::function<std::string()> render);
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;
  int port() const { return port_; }

  struct CreateTag {};
  MetricsHttpServer(CreateTag, std::unique_ptr<httplib::Server> server, int port);

 private:
  std::unique_ptr<httplib::Server> server_;
  int port_;
  std::thread thread_;
};

}  // namespace gsa
