#include "server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "engine/model/model_loader.h"
#include "server/backend_factory.h"
#include "server/generation_service.h"
#include "server/json_log.h"
#include "server/limits.h"
#include "server/metrics.h"
#include "server/security.h"

namespace gsa {

struct GsaServer::Impl {
  ServerOptions options;
  JsonLog log{std::cerr};
  ServerMetrics metrics;
  std::unique_ptr<ApiKeys> api_keys;  // null: none required; read by the service
  std::unique_ptr<LoadedModel> model;
  std::string backend_name;    // "cpu" or "cuda"
  std::string backend_device;  // what it runs on, for logs
  std::unique_ptr<Engine> engine;
  std::unique_ptr<GenerationService> service;
  std::unique_ptr<grpc::Server> server;
  // Last, so it is destroyed first: its callback reads the engine and the service.
  std::unique_ptr<MetricsHttpServer> metrics_http;
};

GsaServer::GsaServer(CreateTag, std::unique_ptr<Impl> impl, int port) : impl_(std::move(impl)), port_(port) {}

GsaServer::~GsaServer() {
  if (impl_ && impl_->server) {
    impl_->service->SetDraining();
    impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  }
}

int GsaServer::metrics_port() const { return impl_->metrics_http ? impl_->metrics_http->port() : -1; }
JsonLog& GsaServer::log() { return impl_->log; }

const std::string& GsaServer::backend_name() const { return impl_->backend_name; }
const std::string& GsaServer::backend_device() const { return impl_->backend_device; }

std::string GsaServer::address() const { return absl::StrCat(impl_->options.host, ":", port_); }
Engine& GsaServer::engine() { return *impl_->engine; }
int64_t GsaServer::in_flight() const { return impl_->service->in_flight(); }

namespace {

// Runs one tiny greedy request end to end so that the first real request does not pay for
// first-touch costs, and so that a broken backend is found before health says SERVING.
absl::Status WarmUp(Engine& engine) {
  GenerateRequest r;
  r.request_id = "warmup";
  r.prompt = {0};
  r.sampling.temperature = 0;
  r.stopping.max_tokens = 1;
  r.stopping.ignore_eos = true;
  auto stream = engine.Submit(std::move(r));
  if (!stream.ok()) return stream.status();
  for (int i = 0; i < 600; ++i) {
    auto d = (*stream)->Next(std::chrono::milliseconds(100));
    if (d && d->finished) {
      if (d->finish_reason == FinishReason::kError) return absl::InternalError(d->error);
      return absl::OkStatus();
    }
  }
  return absl::DeadlineExceededError("warm-up request did not finish within 60 s");
}

}  // namespace

absl::StatusOr<std::unique_ptr<GsaServer>> GsaServer::Start(const ServerOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  if (options.backend != "auto" && options.backend != "cpu" && options.backend != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat("--backend ", options.backend,
                                                   ": expected auto, cpu or cuda"));
  }
  // TLS files and API keys first: a bad file is reported before the model loads.
  absl::StatusOr<ServerSecurity> security = LoadServerSecurity(options);
  if (!security.ok()) return security.status();
  impl->api_keys = std::move(security->api_keys);
  absl::StatusOr<LoadedModel> model = LoadModel(options.model_dir);
  if (!model.ok()) return model.status();
  impl->model = std::make_unique<LoadedModel>(std::move(*model));
  absl::StatusOr<BackendChoice> backend = MakeBackend(options, *impl->model);
  if (!backend.ok()) return backend.status();
  impl->backend_name = std::string(backend->backend->name());
  impl->backend_device = backend->device;
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Create(std::move(backend->backend), impl->model->tokenizer, backend->engine_options);
  if (!engine.ok()) return engine.status();
  impl->engine = std::move(*engine);
  impl->service = std::make_unique<GenerationService>(*impl->model, *impl->engine, impl->backend_name,
                                                      impl->metrics, impl->log);
  impl->service->SetRequestPolicy(impl->api_keys.get(), options.max_prompt_tokens);
  if (options.metrics_port >= 0) {
    Impl* raw = impl.get();  // the HTTP server is a member of *raw and stops before it dies
    auto http = MetricsHttpServer::Start(options.host, options.metrics_port, [raw] {
      return raw->metrics.Render(raw->engine->Stats(), raw->service->in_flight());
    });
    if (!http.ok()) return http.status();
    impl->metrics_http = std::move(*http);
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::StrCat(options.host, ":", options.port), security->credentials, &port);
  builder.RegisterService(impl->service.get());
  ApplyTransportLimits(options, builder);
  impl->server = builder.BuildAndStart();
  if (!impl->server || port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.host, ":", options.port,
                                               " (in use, or not an address of this machine); "
                                               "choose another --host/--port, or --port 0"));
  }
  grpc::HealthCheckServiceInterface* health = impl->server->GetHealthCheckService();
  health->SetServingStatus(false);
  if (absl::Status w = WarmUp(*impl->engine); !w.ok()) {
    impl->server->Shutdown();
    return absl::Status(w.code(), absl::StrCat("warm-up failed: ", w.message()));
  }
  health->SetServingStatus(true);
  return std::make_unique<GsaServer>(CreateTag{}, std::move(impl), port);
}

bool GsaServer::Drain(double timeout_s) {
  // New calls get UNAVAILABLE from the service at once and health turns NOT_SERVING; the calls in
  // flight then run to their end on a server that is otherwise untouched, and only when none is
  // left (or at the deadline) does Shutdown close the listener and the connections, cancelling
  // what still runs. Shutting down first (GOAWAY while streams still run) let a connection be
  // reset under a finished stream's last messages when the client had opened another call on it
  // meanwhile: the request finished on the server and the client saw "Connection reset by peer"
  // (ServerTest.DrainFinishesInFlightRequestsAndRefusesNewOnes, a few runs in a hundred under load).
  impl_->service->SetDraining();
  impl_->server->GetHealthCheckService()->SetServingStatus(false);
  const auto deadline =
      std::chrono::system_clock::now() +
      std::chrono::duration_cast<std::chrono::system_clock::duration>(std::chrono::duration<double>(timeout_s));
  while (impl_->service->in_flight() > 0 && std::chrono::system_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  const bool finished = impl_->service->in_flight() == 0;
  // A call that ended just now may still be sending its status: Shutdown waits for that (and, past
  // the deadline, cancels whatever is left at once).
  impl_->server->Shutdown(finished ? std::chrono::system_clock::now() + std::chrono::seconds(1) : deadline);
  return finished;
}

}  // namespace gsa
