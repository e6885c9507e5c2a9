// ServerOptions: everything gsa-server is configured with (its flags), and the flag parser.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/engine.h"

namespace gsa {

struct ServerOptions {
  std::string model_dir;          // empty: the bundled default model (GSA_DEFAULT_MODEL_DIR)
  std::string host = "127.0.0.1";
  int port = 50051;               // 0: pick a free port
  std::string backend = "auto";   // auto | cpu | cuda
  EngineOptions engine;           // block size, max_model_len, cache, batching, queue, attention
  double gpu_memory_fraction = 0.9;
  double drain_timeout_s = 30;
  int cpu_threads = 0;            // CPU backend threads; 0: all cores
};

// Parses argv (flags as documented by ServerUsage()). InvalidArgument naming the flag for an
// unknown flag, a missing value or a value that does not parse; `--help` is reported as
// Cancelled so that the caller prints the usage and exits 0.
absl::StatusOr<ServerOptions> ParseServerFlags(const std::vector<std::string>& args);
std::string ServerUsage();

}  // namespace gsa
