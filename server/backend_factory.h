// MakeBackend: turns --backend (auto | cpu | cuda) and the loaded model into the backend the
// engine runs, with the engine options that depend on it (the CUDA backend sizes the KV cache
// from --gpu-memory-fraction; the CPU backend from --max-cache-tokens).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/engine.h"
#include "engine/model/model_loader.h"
#include "server/server_options.h"

namespace gsa {

struct BackendChoice {
  std::unique_ptr<Backend> backend;
  EngineOptions engine_options;  // options.engine, with the cache size the backend allows
  std::string device;            // "cpu (16 threads)" or the GPU's description
  std::string why;               // for auto: why this backend ("no usable CUDA device (…)")
};

// auto: cuda when this build has the CUDA backend and a GPU is usable, else cpu.
// cuda: FailedPrecondition naming the reason when the build or the machine cannot.
absl::StatusOr<BackendChoice> MakeBackend(const ServerOptions& options, const LoadedModel& model);

}  // namespace gsa
