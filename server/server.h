// GsaServer: a running gsa-server: the model loaded, the engine started and warmed up, the gRPC
// Generation service, grpc.health.v1.Health and server reflection listening on a port.
// gsa-server's main is a thin wrapper; tests run it in process on an ephemeral port.
//
// Health is NOT_SERVING until the model is loaded and one warm-up request has run, SERVING while
// requests are accepted, and NOT_SERVING again while draining.
//
// Thread-safety: Drain and the destructor from one controlling thread; the gRPC side is internally
// synchronised.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/server_options.h"

namespace gsa {

class GenerationService;
class JsonLog;
class Engine;
struct LoadedModel;

class GsaServer {
 public:
  // Loads, warms up and starts listening. Errors name what failed (model dir, port, backend).
  static absl::StatusOr<std::unique_ptr<GsaServer>> Start(const ServerOptions& options);
  ~GsaServer();

  int port() const { return port_; }
  // The metrics HTTP port, or -1 when metrics are off.
  int metrics_port() const;
  // The structured log (JSON lines on stderr) the server writes to.
  JsonLog& log();
  std::string address() const;  // host:port
  // The backend serving ("cpu" or "cuda") and what it runs on ("NVIDIA H200, 132 SMs, …").
  const std::string& backend_name() const;
  const std::string& backend_device() const;
  Engine& engine();
  // In-flight Generate/Complete calls.
  int64_t in_flight() const;

  // Stops accepting requests (new ones get UNAVAILABLE, health says NOT_SERVING), waits up to
  // `timeout_s` for in-flight requests to finish while the server otherwise runs as before, then
  // shuts the gRPC server down (the listener and connections; cancelling any call still running).
  // Returns true if everything in flight finished in time.
  bool Drain(double timeout_s);

  struct Impl;
  struct CreateTag {};  // construction goes through Start
  GsaServer(CreateTag, std::unique_ptr<Impl> impl, int port);

 private:
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace gsa
