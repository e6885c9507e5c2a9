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
  bool enforce_eager = false;     // CUDA backend: no decode graphs
  bool fp8_indexer_keys = false;  // CUDA backend: --indexer-key-dtype fp8
  int metrics_port = -1;          // Prometheus /metrics over HTTP on host:metrics_port; -1: off, 0: pick one
  // Security (server/security.h): TLS when tls_cert_file and tls_key_file are set, mutual TLS with
  // tls_client_ca_file; API keys required on Generation calls when api_key_file is set.
  std::string tls_cert_file;      // PEM certificate chain
  std::string tls_key_file;       // PEM private key of its first certificate
  std::string tls_client_ca_file; // PEM CA certificate(s) that must have signed a client's certificate
  std::string api_key_file;       // keys, one a line
  // Limits (server/limits.h).
  int64_t max_request_bytes = 64 << 20;  // largest request message
  int64_t max_prompt_tokens = 0;         // 0: the engine's max_model_len
  int64_t max_concurrent_streams = 128;  // HTTP/2 streams (calls) at once per client connection
};

// Parses argv (flags as documented by ServerUsage()). InvalidArgument naming the flag for an
// unknown flag, a missing value or a value that does not parse; `--help` is reported as
// Cancelled so that the caller prints the usage and exits 0.
absl::StatusOr<ServerOptions> ParseServerFlags(const std::vector<std::string>& args);
std::string ServerUsage();

}  // namespace gsa
