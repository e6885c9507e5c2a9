#include "server/server_options.h"

#include <charconv>
#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace gsa {
namespace {

absl::Status BadValue(const std::string& flag, const std::string& value, const char* want) {
  return absl::InvalidArgumentError(absl::StrCat(flag, " ", value, ": expected ", want));
}

}  // namespace

std::string ServerUsage() {
  return R"(gsa-server: serve a GSA model over gRPC (gsa.v1.Generation, grpc.health.v1.Health, reflection)

  --model DIR                 model directory (config.json, model.safetensors, tokenizer.model);
                              default: the bundled demo model built with the project
  --host ADDR                 listen address (default 127.0.0.1; 0.0.0.0 for all interfaces)
  --port N                    listen port (default 50051; 0 picks a free one and prints it)
  --backend auto|cpu|cuda     compute backend (default auto: cuda when available, else cpu)
  --attention default|dense   attention for requests that do not choose (default: the model's)
  --block-size N              tokens per KV-cache block (default 64)
  --max-model-len N           prompt + max_tokens limit (default: the model's max_position_embeddings)
  --max-cache-tokens N        CPU backend: KV-cache size in tokens (default 65536)
  --gpu-memory-fraction F     CUDA backend: share of GPU memory to reserve (default 0.9)
  --enforce-eager             CUDA backend: no CUDA graphs for decode steps (launch each kernel)
  --indexer-key-dtype bf16|fp8  CUDA backend: cache the indexer keys as bf16 (default, exact) or
                              as fp8 e4m3 with a per-token scale (half the indexer's bytes;
                              selections change slightly: README, "fp8 indexer keys")
  --max-batched-tokens N      tokens per engine step (default 2048)
  --max-num-seqs N            sequences running at once (default 64)
  --max-queue N               waiting requests before RESOURCE_EXHAUSTED (default 1024)
  --no-prefix-caching         do not reuse cached prompt prefixes
  --drain-timeout S           on SIGTERM, seconds to let in-flight requests finish (default 30)
  --cpu-threads N             CPU backend threads (default: all cores)
  --metrics-port N            serve Prometheus metrics at http://HOST:N/metrics (default: off;
                              0 picks a free port and logs it)
  --tls-cert FILE             PEM certificate chain: serve gRPC over TLS (needs --tls-key)
  --tls-key FILE              PEM private key of --tls-cert (unencrypted)
  --tls-client-ca FILE        PEM CA(s): require client certificates signed by it (mutual TLS)
  --api-key-file FILE         API keys, one a line (# comments): Generation calls need metadata
                              "authorization: Bearer <key>" (health and reflection stay open)
  --max-request-bytes N       largest request message, else RESOURCE_EXHAUSTED (default 67108864)
  --max-prompt-tokens N       longest prompt, else INVALID_ARGUMENT (default: --max-model-len)
  --max-concurrent-streams N  calls at once per client connection (default 128)
  --help                      this text
)";
}

absl::StatusOr<ServerOptions> ParseServerFlags(const std::vector<std::string>& args) {
  ServerOptions o;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string flag = args[i];
    std::string value;
    bool has_inline = false;
    if (const size_t eq = flag.find('='); flag.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
      has_inline = true;
    }
    if (flag == "--help" || flag == "-h") return absl::CancelledError("help");
    if (flag == "--enforce-eager") {
      o.enforce_eager = true;
      continue;
    }
    if (flag == "--no-prefix-caching") {
      o.engine.enable_prefix_caching = false;
      continue;
    }
    auto take = [&]() -> absl::StatusOr<std::string> {
      if (has_inline) return value;
      if (i + 1 >= args.size()) return absl::InvalidArgumentError(absl::StrCat(flag, " needs a value"));
      return args[++i];
    };
    auto int_flag = [&](int64_t& out, int64_t min) -> absl::Status {
      auto v = take();
      if (!v.ok()) return v.status();
      int64_t x;
      if (!absl::SimpleAtoi(*v, &x) || x < min) {
        return BadValue(flag, *v, min == 0 ? "an integer ≥ 0" : "a positive integer");
      }
      out = x;
      return absl::OkStatus();
    };
    auto double_flag = [&](double& out, double lo, double hi) -> absl::Status {
      auto v = take();
      if (!v.ok()) return v.status();
      double x;
      if (!absl::SimpleAtod(*v, &x) || !(x >= lo && x <= hi)) {
        return BadValue(flag, *v, absl::StrCat("a number in [", lo, ", ", hi, "]").c_str());
      }
      out = x;
      return absl::OkStatus();
    };
    absl::Status st;
    int64_t tmp = 0;
    if (flag == "--model") {
      auto v = take();
      if (!v.ok()) return v.status();
      o.model_dir = *v;
    } else if (flag == "--host") {
      auto v = take();
      if (!v.ok()) return v.status();
      o.host = *v;
    } else if (flag == "--port") {
      st = int_flag(tmp, 0);
      if (st.ok() && tmp > 65535) st = BadValue(flag, std::to_string(tmp), "a port in [0, 65535]");
      o.port = static_cast<int>(tmp);
    } else if (flag == "--backend") {
      auto v = take();
      if (!v.ok()) return v.status();
      if (*v != "auto" && *v != "cpu" && *v != "cuda") return BadValue(flag, *v, "auto, cpu or cuda");
      o.backend = *v;
    } else if (flag == "--attention") {
      auto v = take();
      if (!v.ok()) return v.status();
      if (*v == "default") {
        o.engine.attention = AttentionMode::kModelDefault;
      } else if (*v == "dense") {
        o.engine.attention = AttentionMode::kDense;
      } else {
        return BadValue(flag, *v, "default or dense");
      }
    } else if (flag == "--indexer-key-dtype") {
      auto v = take();
      if (!v.ok()) return v.status();
      if (*v != "bf16" && *v != "fp8") return BadValue(flag, *v, "bf16 or fp8");
      o.fp8_indexer_keys = *v == "fp8";
    } else if (flag == "--block-size") {
      st = int_flag(o.engine.block_size, 1);
    } else if (flag == "--max-model-len") {
      st = int_flag(o.engine.max_model_len, 1);
    } else if (flag == "--max-cache-tokens") {
      st = int_flag(o.engine.max_cache_tokens, 1);
    } else if (flag == "--gpu-memory-fraction") {
      st = double_flag(o.gpu_memory_fraction, 0.01, 1.0);
    } else if (flag == "--max-batched-tokens") {
      st = int_flag(o.engine.max_batched_tokens, 1);
    } else if (flag == "--max-num-seqs") {
      st = int_flag(o.engine.max_num_seqs, 1);
    } else if (flag == "--max-queue") {
      st = int_flag(o.engine.max_queue, 0);
    } else if (flag == "--drain-timeout") {
      st = double_flag(o.drain_timeout_s, 0, 86400);
    } else if (flag == "--metrics-port") {
      st = int_flag(tmp, 0);
      if (st.ok() && tmp > 65535) st = BadValue(flag, std::to_string(tmp), "a port in [0, 65535]");
      o.metrics_port = static_cast<int>(tmp);
    } else if (flag == "--cpu-threads") {
      st = int_flag(tmp, 0);
      o.cpu_threads = static_cast<int>(tmp);
    } else if (flag == "--tls-cert" || flag == "--tls-key" || flag == "--tls-client-ca" ||
               flag == "--api-key-file") {
      auto v = take();
      if (!v.ok()) return v.status();
      if (v->empty()) return BadValue(flag, "''", "a file");
      std::string& file = flag == "--tls-cert"  ? o.tls_cert_file
                          : flag == "--tls-key" ? o.tls_key_file
                          : flag == "--tls-client-ca" ? o.tls_client_ca_file
                                                      : o.api_key_file;
      file = *v;
    } else if (flag == "--max-request-bytes") {
      st = int_flag(o.max_request_bytes, 1);
      if (st.ok() && o.max_request_bytes > INT32_MAX) {
        st = BadValue(flag, std::to_string(o.max_request_bytes), "at most 2147483647");
      }
    } else if (flag == "--max-prompt-tokens") {
      st = int_flag(o.max_prompt_tokens, 1);
    } else if (flag == "--max-concurrent-streams") {
      st = int_flag(o.max_concurrent_streams, 1);
      if (st.ok() && o.max_concurrent_streams > INT32_MAX) {
        st = BadValue(flag, std::to_string(o.max_concurrent_streams), "at most 2147483647");
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag ", args[i], "; see --help"));
    }
    if (!st.ok()) return st;
  }
  return o;
}

}  // namespace gsa
