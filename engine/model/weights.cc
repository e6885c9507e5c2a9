#include "engine/model/weights.h"

#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/util/status_macros.h"

namespace gsa {
namespace {

std::string LayerName(int64_t layer, absl::string_view suffix) {
  return absl::StrCat("model.layers.", layer, ".", suffix);
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

}  // namespace

std::vector<WeightSpec> ExpectedWeights(const ModelConfig& c) {
  std::vector<WeightSpec> specs;
  specs.push_back({"model.embed_tokens.weight", {c.vocab_size, c.d_model}});
  for (int64_t l = 0; l < c.n_layers; ++l) {
    auto add = [&](absl::string_view suffix, std::vector<int64_t> shape) {
      specs.push_back({LayerName(l, suffix), std::move(shape)});
    };
    add("input_layernorm.weight", {c.d_model});
    add("self_attn.q_proj.weight", {c.q_dim(), c.d_model});
    add("self_attn.k_proj.weight", {c.kv_dim(), c.d_model});
    add("self_attn.v_proj.weight", {c.kv_dim(), c.d_model});
    add("self_attn.o_proj.weight", {c.d_model, c.q_dim()});
    add("self_attn.indexer.q_proj.weight", {c.n_indexer_heads * c.d_indexer, c.d_model});
    add("self_attn.indexer.k_proj.weight", {c.d_indexer, c.d_model});
    add("self_attn.indexer.weight_proj.weight", {c.n_indexer_heads, c.d_model});
    add("self_attn.indexer.weight_proj.bias", {c.n_indexer_heads});
    add("self_attn.indexer.bias", {c.n_indexer_heads});
    if (c.use_value_gate) {
      add("self_attn.value_gate.gate_proj.weight", {c.kv_dim(), c.d_model});
      add("self_attn.value_gate.gate_proj.bias", {c.kv_dim()});
    }
    if (c.use_output_gate) {
      add("self_attn.output_gate.gate_proj.weight", {c.q_dim(), c.d_model});
      add("self_attn.output_gate.gate_proj.bias", {c.q_dim()});
    }
    add("post_attention_layernorm.weight", {c.d_model});
    add("mlp.gate_proj.weight", {c.d_ffn, c.d_model});
    add("mlp.up_proj.weight", {c.d_ffn, c.d_model});
    add("mlp.down_proj.weight", {c.d_model, c.d_ffn});
  }
  specs.push_back({"model.norm.weight", {c.d_model}});
  if (!c.tie_word_embeddings) specs.push_back({"lm_head.weight", {c.vocab_size, c.d_model}});
  return specs;
}

absl::StatusOr<ModelWeights> BindWeights(const ModelConfig& config,
                                         std::shared_ptr<const Checkpoint> checkpoint) {
  if (checkpoint == nullptr) return absl::InvalidArgumentError("BindWeights: no checkpoint");
  const std::vector<WeightSpec> specs = ExpectedWeights(config);
  std::set<std::string, std::less<>> expected;
  for (const WeightSpec& s : specs) expected.insert(s.name);

  // Tied checkpoints may still carry lm_head.weight (the reference saves both); accept it only
  // when it is the embedding, byte for byte, since otherwise the config and weights disagree.
  const TensorView* tied_lm_head = nullptr;
  if (config.tie_word_embeddings) tied_lm_head = checkpoint->Find("lm_head.weight");

  for (const auto& [name, view] : checkpoint->tensors()) {
    if (expected.count(name) == 0 && view != tied_lm_head) {
      std::string why = "is not part of this model";
      if (name.find("value_gate") != std::string::npos && !config.use_value_gate) {
        why = "is present but config.json has use_value_gate=false";
      } else if (name.find("output_gate") != std::string::npos && !config.use_output_gate) {
        why = "is present but config.json has use_output_gate=false";
      }
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint ", checkpoint->dir(), ": unexpected tensor ", name, " (", view->file, ") ", why,
          "; fix config.json (n_layers, gates) or remove the tensor"));
    }
  }

  std::map<std::string, const TensorView*, std::less<>> bound;
  for (const WeightSpec& spec : specs) {
    const TensorView* t = checkpoint->Find(spec.name);
    if (t == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("checkpoint ", checkpoint->dir(),
                                                     ": missing tensor ", spec.name, ", expected shape ",
                                                     ShapeString(spec.shape)));
    }
    if (t->dtype != DType::kF32 && t->dtype != DType::kBF16 && t->dtype != DType::kF16) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", spec.name, " (", t->file, "): dtype ",
                                                     std::string(DTypeName(t->dtype)),
                                                     " is not supported; weights must be F32, BF16 or F16"));
    }
    if (t->shape != spec.shape) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", spec.name, " (", t->file, "): shape ",
                                                     t->ShapeString(), ", expected ",
                                                     ShapeString(spec.shape), " from config.json"));
    }
    if (!AllFinite(*t)) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", spec.name, " (", t->file,
                                                     "): contains NaN or infinite values"));
    }
    bound[spec.name] = t;
  }
  if (tied_lm_head != nullptr) {
    const TensorView* embed = bound.at("model.embed_tokens.weight");
    if (tied_lm_head->shape != embed->shape || tied_lm_head->dtype != embed->dtype ||
        std::memcmp(tied_lm_head->data, embed->data, embed->nbytes) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor lm_head.weight (", tied_lm_head->file,
          ") differs from model.embed_tokens.weight but config.json has tie_word_embeddings=true; "
          "set it to false or drop lm_head.weight"));
    }
  }

  ModelWeights w;
  w.checkpoint = std::move(checkpoint);
  w.embed_tokens = bound.at("model.embed_tokens.weight");
  w.final_norm = bound.at("model.norm.weight");
  w.lm_head = config.tie_word_embeddings ? w.embed_tokens : bound.at("lm_head.weight");
  w.layers.resize(static_cast<size_t>(config.n_layers));
  for (int64_t l = 0; l < config.n_layers; ++l) {
    auto get = [&](absl::string_view suffix) -> const TensorView* {
      auto it = bound.find(LayerName(l, suffix));
      return it == bound.end() ? nullptr : it->second;
    };
    LayerWeights& lw = w.layers[static_cast<size_t>(l)];
    lw.input_layernorm = get("input_layernorm.weight");
    lw.q_proj = get("self_attn.q_proj.weight");
    lw.k_proj = get("self_attn.k_proj.weight");
    lw.v_proj = get("self_attn.v_proj.weight");
    lw.o_proj = get("self_attn.o_proj.weight");
    lw.indexer_q_proj = get("self_attn.indexer.q_proj.weight");
    lw.indexer_k_proj = get("self_attn.indexer.k_proj.weight");
    lw.indexer_w_proj = get("self_attn.indexer.weight_proj.weight");
    lw.indexer_w_bias = get("self_attn.indexer.weight_proj.bias");
    lw.indexer_bias = get("self_attn.indexer.bias");
    lw.value_gate_w = get("self_attn.value_gate.gate_proj.weight");
    lw.value_gate_b = get("self_attn.value_gate.gate_proj.bias");
    lw.output_gate_w = get("self_attn.output_gate.gate_proj.weight");
    lw.output_gate_b = get("self_attn.output_gate.gate_proj.bias");
    lw.post_attention_layernorm = get("post_attention_layernorm.weight");
    lw.mlp_gate = get("mlp.gate_proj.weight");
    lw.mlp_up = get("mlp.up_proj.weight");
    lw.mlp_down = get("mlp.down_proj.weight");
  }
  return w;
}

}  // namespace gsa
