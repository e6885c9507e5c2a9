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

namespace gsa {

class GenerationService final : public v1::Generation::Service {
 public:
  // `model` and `engine` must outlive the service.
  GenerationService(const LoadedModel& model, Engine& engine, std::string backend_name);

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

 private:
  // Runs one request; `on_delta` is called with each engine delta and returns false when the
  // client is gone. Returns the call's final status.
  template <typename OnDelta>
  grpc::Status Run(grpc::ServerContext* context, const v1::GenerateRequest& request, OnDelta on_delta);

  const LoadedModel& model_;
  Engine& engine_;
  const std::string backend_name_;
  std::atomic<bool> draining_{false};
  std::atomic<int64_t> in_flight_{0};
  std::atomic<uint64_t> next_id_{1};
};

// absl::Status → grpc::Status (the codes are the same numbers).
grpc::Status ToGrpc(const absl::Status& status);

}  // namespace gsa
