#include "engine/model/config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace gsa {
namespace {

using nlohmann::json;

absl::Status KeyError(absl::string_view key, absl::string_view rule) {
  return absl::InvalidArgumentError(absl::StrCat("config.json: key \"", key, "\": ", rule));
}

std::string TypeName(const json& v) { return std::string(v.type_name()); }

// Each reader leaves `out` alone when the key is absent or null (the default stays).
absl::Status ReadInt(const json& obj, const char* key, int64_t& out) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return absl::OkStatus();
  if (it->is_number_integer()) {
    out = it->get<int64_t>();
    return absl::OkStatus();
  }
  // The reference sometimes writes integral floats (e.g. 4096.0); accept those exactly.
  if (it->is_number_float()) {
    const double d = it->get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) {
      out = static_cast<int64_t>(d);
      return absl::OkStatus();
    }
  }
  return KeyError(key, absl::StrCat("expected an integer, got ", it->dump(), " (", TypeName(*it), ")"));
}

absl::Status ReadDouble(const json& obj, const char* key, double& out) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number()) {
    return KeyError(key, absl::StrCat("expected a number, got ", it->dump(), " (", TypeName(*it), ")"));
  }
  out = it->get<double>();
  if (!std::isfinite(out)) return KeyError(key, "must be finite");
  return absl::OkStatus();
}

absl::Status ReadBool(const json& obj, const char* key, bool& out) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_boolean()) {
    return KeyError(key, absl::StrCat("expected true or false, got ", it->dump()));
  }
  out = it->get<bool>();
  return absl::OkStatus();
}

absl::Status ReadOptionalInt(const json& obj, const char* key, std::optional<int64_t>& out) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return absl::OkStatus();
  int64_t v = 0;
  GSA_RETURN_IF_ERROR(ReadInt(obj, key, v));
  out = v;
  return absl::OkStatus();
}

// Reads a string enum; `names` and `values` are parallel.
template <typename E, size_t N>
absl::Status ReadEnum(const json& obj, const char* key, const char* const (&names)[N],
                      const E (&values)[N], E& out) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return absl::OkStatus();
  std::string allowed;
  for (size_t i = 0; i < N; ++i) absl::StrAppend(&allowed, i ? ", " : "", "\"", names[i], "\"");
  if (!it->is_string()) {
    return KeyError(key, absl::StrCat("expected one of ", allowed, ", got ", it->dump()));
  }
  const std::string s = it->get<std::string>();
  for (size_t i = 0; i < N; ++i) {
    if (s == names[i]) {
      out = values[i];
      return absl::OkStatus();
    }
  }
  return KeyError(key, absl::StrCat("unknown value \"", s, "\"; expected one of ", allowed));
}

absl::Status ReadRopeScaling(const json& obj, RopeScaling& out) {
  auto it = obj.find("rope_scaling");
  if (it == obj.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_object()) {
    return KeyError("rope_scaling", absl::StrCat("expected null or an object with \"type\" and "
                                                 "\"factor\", got ",
                                                 it->dump()));
  }
  const json& rs = *it;
  // Transformers-style configs spell it "rope_type"; accept either.
  std::string type;
  for (const char* k : {"type", "rope_type"}) {
    auto t = rs.find(k);
    if (t != rs.end() && !t->is_null()) {
      if (!t->is_string()) return KeyError("rope_scaling.type", "expected a string");
      type = t->get<std::string>();
      break;
    }
  }
  if (type.empty() || type == "dynamic_ntk" || type == "default") {
    // MODEL.md: the reference does nothing dynamic; plain inverse frequencies.
    out = RopeScaling{};
    return absl::OkStatus();
  }
  if (type == "ntk") {
    out.type = RopeScalingType::kNtk;
  } else if (type == "yarn") {
    out.type = RopeScalingType::kYarn;
  } else {
    return KeyError("rope_scaling.type",
                    absl::StrCat("unknown value \"", type,
                                 "\"; expected \"ntk\", \"yarn\", \"dynamic_ntk\" or null"));
  }
  auto f = rs.find("factor");
  if (f == rs.end() || f->is_null()) {
    return KeyError("rope_scaling.factor", absl::StrCat("required for type \"", type, "\""));
  }
  GSA_RETURN_IF_ERROR(ReadDouble(rs, "factor", out.factor));
  if (!(out.factor >= 1.0)) {
    return KeyError("rope_scaling.factor", absl::StrCat("must be >= 1, got ", out.factor));
  }
  GSA_RETURN_IF_ERROR(ReadInt(rs, "original_max_position_embeddings",
                              out.original_max_position_embeddings));
  GSA_RETURN_IF_ERROR(ReadDouble(rs, "beta_fast", out.beta_fast));
  GSA_RETURN_IF_ERROR(ReadDouble(rs, "beta_slow", out.beta_slow));
  if (out.type == RopeScalingType::kYarn) {
    if (out.original_max_position_embeddings <= 0) {
      return KeyError("rope_scaling.original_max_position_embeddings", "must be positive");
    }
    if (!(out.beta_fast > 0) || !(out.beta_slow > 0)) {
      return KeyError("rope_scaling.beta_fast", "beta_fast and beta_slow must be positive");
    }
  }
  return absl::OkStatus();
}

}  // namespace

const char* ToString(IndexerActivation a) {
  return a == IndexerActivation::kRelu ? "relu" : "sigmoid";
}
const char* ToString(GateActivation a) {
  switch (a) {
    case GateActivation::kTanh: return "tanh";
    case GateActivation::kSilu: return "silu";
    default: return "sigmoid";
  }
}
const char* ToString(AdaptiveKMethod m) {
  return m == AdaptiveKMethod::kEntropy ? "entropy" : "variance";
}

absl::Status ValidateModelConfig(const ModelConfig& c) {
  struct Positive {
    const char* key;
    int64_t value;
  };
  for (const Positive& p : {Positive{"d_model", c.d_model}, Positive{"n_heads", c.n_heads},
                            Positive{"n_kv_heads", c.n_kv_heads}, Positive{"d_head", c.d_head},
                            Positive{"n_layers", c.n_layers}, Positive{"d_ffn", c.d_ffn},
                            Positive{"vocab_size", c.vocab_size}, Positive{"d_indexer", c.d_indexer},
                            Positive{"n_indexer_heads", c.n_indexer_heads},
                            Positive{"k_base", c.k_base}, Positive{"k_min", c.k_min},
                            Positive{"k_max", c.k_max},
                            Positive{"max_position_embeddings", c.max_position_embeddings}}) {
    if (p.value <= 0) return KeyError(p.key, absl::StrCat("must be positive, got ", p.value));
  }
  // Sizes far past anything real would overflow the byte arithmetic downstream.
  constexpr int64_t kMaxDim = int64_t{1} << 24;
  for (const Positive& p : {Positive{"d_model", c.d_model}, Positive{"d_ffn", c.d_ffn},
                            Positive{"vocab_size", c.vocab_size}, Positive{"d_head", c.d_head},
                            Positive{"n_heads", c.n_heads}, Positive{"n_layers", c.n_layers}}) {
    if (p.value > kMaxDim) {
      return KeyError(p.key, absl::StrCat("value ", p.value, " is larger than the supported ", kMaxDim));
    }
  }
  if (c.d_model % c.n_heads != 0) {
    return KeyError("n_heads", absl::StrCat("d_model (", c.d_model, ") must be divisible by n_heads (",
                                            c.n_heads, ")"));
  }
  if (c.n_heads % c.n_kv_heads != 0) {
    return KeyError("n_kv_heads", absl::StrCat("n_heads (", c.n_heads,
                                               ") must be divisible by n_kv_heads (", c.n_kv_heads, ")"));
  }
  if (c.d_head % 2 != 0) {
    return KeyError("d_head", absl::StrCat("must be even for rotary embeddings, got ", c.d_head));
  }
  if (!(c.k_min <= c.k_base && c.k_base <= c.k_max)) {
    return KeyError("k_base", absl::StrCat("need k_min <= k_base <= k_max, got k_min=", c.k_min,
                                           " k_base=", c.k_base, " k_max=", c.k_max));
  }
  if (!(c.adaptive_k_temperature > 0)) {
    return KeyError("adaptive_k_temperature",
                    absl::StrCat("must be positive, got ", c.adaptive_k_temperature));
  }
  if (!(c.rope_base > 1.0)) {
    return KeyError("rope_base", absl::StrCat("must be greater than 1, got ", c.rope_base));
  }
  if (!(c.norm_eps > 0)) return KeyError("norm_eps", absl::StrCat("must be positive, got ", c.norm_eps));
  for (const auto& [key, id] : {std::pair<const char*, std::optional<int64_t>>{"bos_token_id", c.bos_token_id},
                                {"eos_token_id", c.eos_token_id}}) {
    if (id && (*id < 0 || *id >= c.vocab_size)) {
      return KeyError(key, absl::StrCat("token id ", *id, " is outside the vocabulary [0, ",
                                        c.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text) {
  json obj = json::parse(json_text.begin(), json_text.end(), /*cb=*/nullptr,
                         /*allow_exceptions=*/false);
  if (obj.is_discarded()) {
    return absl::InvalidArgumentError("config.json: not valid JSON (check for a truncated file or a "
                                      "trailing comma)");
  }
  if (!obj.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: expected a JSON object at the top level, got ", obj.type_name()));
  }
  ModelConfig c;
  GSA_RETURN_IF_ERROR(ReadInt(obj, "d_model", c.d_model));
  GSA_RETURN_IF_ERROR(ReadInt(obj, "n_heads", c.n_heads));
  GSA_RETURN_IF_ERROR(ReadInt(obj, "n_kv_heads", c.n_kv_heads));
  GSA_RETURN_IF_ERROR(ReadInt(obj, "n_layers", c.n_layers));
  GSA_RETURN_IF_ERROR(ReadInt(obj, "d_ffn", c.d_ffn));
  GSA_RETURN_IF_ERROR(ReadInt(obj, "vocab_size", c.vocab_size));
  GSA_RETURN_IF_ERROR(ReadInt(obj, "d_indexer", c.d_indexer));
  GSA_RETURN_IF_ERROR(ReadInt(obj, "n_indexer_heads", c.n_indexer_heads));
  GSA_RETURN_IF_ERROR(ReadInt(obj, "k_base", c.k_base));
  GSA_RETURN_IF_ERROR(ReadInt(obj, "k_min", c.k_min));
  GSA_RETURN_IF_ERROR(ReadInt(obj, "k_max", c.k_max));
  GSA_RETURN_IF_ERROR(ReadInt(obj, "max_position_embeddings", c.max_position_embeddings));
  GSA_RETURN_IF_ERROR(ReadBool(obj, "use_adaptive_k", c.use_adaptive_k));
  GSA_RETURN_IF_ERROR(ReadBool(obj, "use_value_gate", c.use_value_gate));
  GSA_RETURN_IF_ERROR(ReadBool(obj, "use_output_gate", c.use_output_gate));
  GSA_RETURN_IF_ERROR(ReadBool(obj, "tie_word_embeddings", c.tie_word_embeddings));
  GSA_RETURN_IF_ERROR(ReadDouble(obj, "adaptive_k_temperature", c.adaptive_k_temperature));
  GSA_RETURN_IF_ERROR(ReadDouble(obj, "rope_base", c.rope_base));
  GSA_RETURN_IF_ERROR(ReadDouble(obj, "norm_eps", c.norm_eps));
  GSA_RETURN_IF_ERROR(ReadOptionalInt(obj, "bos_token_id", c.bos_token_id));
  GSA_RETURN_IF_ERROR(ReadOptionalInt(obj, "eos_token_id", c.eos_token_id));
  {
    static constexpr const char* kNames[] = {"sigmoid", "relu"};
    static constexpr IndexerActivation kValues[] = {IndexerActivation::kSigmoid,
                                                    IndexerActivation::kRelu};
    GSA_RETURN_IF_ERROR(ReadEnum(obj, "indexer_activation", kNames, kValues, c.indexer_activation));
  }
  {
    static constexpr const char* kNames[] = {"sigmoid", "tanh", "silu"};
    static constexpr GateActivation kValues[] = {GateActivation::kSigmoid, GateActivation::kTanh,
                                                 GateActivation::kSilu};
    GSA_RETURN_IF_ERROR(ReadEnum(obj, "gate_activation", kNames, kValues, c.gate_activation));
  }
  {
    static constexpr const char* kNames[] = {"variance", "entropy"};
    static constexpr AdaptiveKMethod kValues[] = {AdaptiveKMethod::kVariance,
                                                  AdaptiveKMethod::kEntropy};
    GSA_RETURN_IF_ERROR(ReadEnum(obj, "adaptive_k_method", kNames, kValues, c.adaptive_k_method));
  }
  GSA_RETURN_IF_ERROR(ReadRopeScaling(obj, c.rope_scaling));

  // d_head: null or absent → d_model / n_heads (checked for divisibility below).
  auto dh = obj.find("d_head");
  if (dh == obj.end() || dh->is_null()) {
    if (c.n_heads > 0 && c.d_model % c.n_heads != 0) {
      return KeyError("n_heads", absl::StrCat("d_model (", c.d_model, ") must be divisible by n_heads (",
                                              c.n_heads, ")"));
    }
    c.d_head = c.n_heads > 0 ? c.d_model / c.n_heads : 0;
  } else {
    GSA_RETURN_IF_ERROR(ReadInt(obj, "d_head", c.d_head));
  }
  GSA_RETURN_IF_ERROR(ValidateModelConfig(c));
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open config file ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  auto parsed = ParseModelConfig(ss.str());
  if (!parsed.ok()) {
    // Parse errors say "config.json: …"; name the actual file instead.
    absl::string_view msg = parsed.status().message();
    absl::ConsumePrefix(&msg, "config.json: ");
    return absl::Status(parsed.status().code(), absl::StrCat(path, ": ", msg));
  }
  return parsed;
}

std::string ModelConfigToJson(const ModelConfig& c) {
  json j;
  j["d_model"] = c.d_model;
  j["n_heads"] = c.n_heads;
  j["n_kv_heads"] = c.n_kv_heads;
  j["d_head"] = c.d_head;
  j["n_layers"] = c.n_layers;
  j["d_ffn"] = c.d_ffn;
  j["vocab_size"] = c.vocab_size;
  j["d_indexer"] = c.d_indexer;
  j["n_indexer_heads"] = c.n_indexer_heads;
  j["indexer_activation"] = ToString(c.indexer_activation);
  j["k_base"] = c.k_base;
  j["k_min"] = c.k_min;
  j["k_max"] = c.k_max;
  j["use_adaptive_k"] = c.use_adaptive_k;
  j["adaptive_k_temperature"] = c.adaptive_k_temperature;
  j["adaptive_k_method"] = ToString(c.adaptive_k_method);
  j["use_value_gate"] = c.use_value_gate;
  j["use_output_gate"] = c.use_output_gate;
  j["gate_activation"] = ToString(c.gate_activation);
  j["rope_base"] = c.rope_base;
  switch (c.rope_scaling.type) {
    case RopeScalingType::kNone:
      j["rope_scaling"] = nullptr;
      break;
    case RopeScalingType::kNtk:
      j["rope_scaling"] = {{"type", "ntk"}, {"factor", c.rope_scaling.factor}};
      break;
    case RopeScalingType::kYarn:
      j["rope_scaling"] = {{"type", "yarn"},
                           {"factor", c.rope_scaling.factor},
                           {"original_max_position_embeddings",
                            c.rope_scaling.original_max_position_embeddings},
                           {"beta_fast", c.rope_scaling.beta_fast},
                           {"beta_slow", c.rope_scaling.beta_slow}};
      break;
  }
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["norm_eps"] = c.norm_eps;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  if (c.bos_token_id) j["bos_token_id"] = *c.bos_token_id;
  if (c.eos_token_id) j["eos_token_id"] = *c.eos_token_id;
  return j.dump(2);
}

}  // namespace gsa
