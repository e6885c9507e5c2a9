// ModelConfig: the validated contents of a GSA checkpoint's config.json (MODEL.md).
//
// Parsing is strict about values and lenient about keys: unknown keys are ignored (the reference
// writes training-only keys such as `use_indexer_warmup`), missing keys take the reference
// defaults, and every value that would make the model ill-defined is refused with a message that
// names the key and the rule.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace gsa {

enum class IndexerActivation { kSigmoid, kRelu };
enum class GateActivation { kSigmoid, kTanh, kSilu };
enum class AdaptiveKMethod { kVariance, kEntropy };
enum class RopeScalingType { kNone, kNtk, kYarn };

struct RopeScaling {
  RopeScalingType type = RopeScalingType::kNone;
  double factor = 1.0;
  int64_t original_max_position_embeddings = 4096;  // YaRN only
  double beta_fast = 32.0;                           // YaRN only
  double beta_slow = 1.0;                            // YaRN only
};

struct ModelConfig {
  int64_t d_model = 4096;
  int64_t n_heads = 32;
  int64_t n_kv_heads = 8;
  int64_t d_head = 128;  // config value null → d_model / n_heads
  int64_t n_layers = 32;
  int64_t d_ffn = 11008;
  int64_t vocab_size = 128256;
  int64_t d_indexer = 64;
  int64_t n_indexer_heads = 4;
  IndexerActivation indexer_activation = IndexerActivation::kSigmoid;
  int64_t k_base = 2048;
  int64_t k_min = 256;
  int64_t k_max = 4096;
  bool use_adaptive_k = true;
  double adaptive_k_temperature = 1.0;
  AdaptiveKMethod adaptive_k_method = AdaptiveKMethod::kVariance;
  bool use_value_gate = true;
  bool use_output_gate = true;
  GateActivation gate_activation = GateActivation::kSigmoid;
  double rope_base = 10000.0;
  RopeScaling rope_scaling;
  int64_t max_position_embeddings = 131072;
  double norm_eps = 1e-5;
  bool tie_word_embeddings = false;
  std::optional<int64_t> bos_token_id;
  std::optional<int64_t> eos_token_id;

  int64_t q_dim() const { return n_heads * d_head; }
  int64_t kv_dim() const { return n_kv_heads * d_head; }
  int64_t heads_per_kv() const { return n_heads / n_kv_heads; }
};

// Parses and validates config.json text. Errors are InvalidArgument naming the key.
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text);

// Reads `path` and parses it; a missing or unreadable file is NotFound naming the path.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);

// Checks the cross-field rules of MODEL.md on an already-filled config (used by the parser and by
// tools that build configs in code).
absl::Status ValidateModelConfig(const ModelConfig& config);

// Serialises a config to JSON in the reference's key names (round-trips through ParseModelConfig).
std::string ModelConfigToJson(const ModelConfig& config);

const char* ToString(IndexerActivation a);
const char* ToString(GateActivation a);
const char* ToString(AdaptiveKMethod m);

}  // namespace gsa
