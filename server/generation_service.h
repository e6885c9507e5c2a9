// GenerationService: the gsa.v1.Generation gRPC service over an Engine (sync API: each call runs
// on a gRPC thread that submits to the engine and relays its RequestStream). Client
// cancellation and deadlines are forwarded to the engine, which frees the request's blocks.
//
// Thread-safety: all methods are called concurrently by gRPC; state is atomic or immutable.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "engine/engine.h"
#include "engine/model/model_loader.h"
#include "gsa/v1/generation.grpc.pb.h"
#include "server/json_log.h"
#include "server/metrics.h"

namespace gsa {

class ApiKeys;

class GenerationService final : public v1::Generation::Service {
 public:
  // `model`, `engine`, `metrics` and `log` must outlive the service.
  GenerationService(const LoadedModel& model, Engine& engine, std::string backend_name,
                    ServerMetrics& metrics, JsonLog& log);

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;
  grpc::Status Complete(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        v1::GenerateResponse* response) override;
  grpc::Status Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                        v1::TokenizeResponse* response) override;
  grpc::Status GetModelInfo(grpc::ServerContext* context, const v1::GetModelInfoRequest* request,
                            v1::ModelInfo* response) override;

  // Once set, new Generate/Complete calls get UNAVAILABLE.
  void SetDraining() { draining_ = true; }
  int64_t in_flight() const { return in_flight_; }

  // Access and size policy (server/security.h, server/limits.h): with `api_keys`, every
  // Generation call needs a known key (UNAUTHENTICATED otherwise); prompts longer than
  // `max_prompt_tokens` (0: the engine's max_model_len) get INVALID_ARGUMENT.
  // REQUIRES: called before the service is registered; `api_keys` outlives the service.
  void SetRequestPolicy(const ApiKeys* api_keys, int64_t max_prompt_tokens);

 private:
  // Runs one request; `on_delta` is called with each engine delta and returns false when the
  // client is gone. Returns the call's final status.
  // Run plus metrics (outcome, latencies) and one structured log line per call.
  template <typename OnDelta>
  grpc::Status Serve(grpc::ServerContext* context, const v1::GenerateRequest& request, OnDelta on_delta);
  template <typename OnDelta>
  grpc::Status Run(grpc::ServerContext* context, const v1::GenerateRequest& request, OnDelta on_delta,
                   std::string& request_id, GenerationDelta& final_delta);

  const LoadedModel& model_;
  Engine& engine_;
  const std::string backend_name_;
  ServerMetrics& metrics_;
  JsonLog& log_;
  // OK, or UNAUTHENTICATED when API keys are required and the call has none that is known.
  grpc::Status Authenticate(const grpc::ServerContext& context) const;

  const ApiKeys* api_keys_ = nullptr;
  int64_t max_prompt_tokens_ = 0;
  std::atomic<bool> draining_{false};
  std::atomic<int64_t> in_flight_{0};
  std::atomic<uint64_t> next_id_{1};
};

// absl::Status → grpc::Status (the codes are the same numbers).
grpc::Status ToGrpc(const absl::Status& status);

}  // namespace gsa
