// ModelWeights: every tensor of MODEL.md bound by name, shape-checked, as views into an open
// Checkpoint. Binding is all-or-nothing: a missing, unexpected (extra), mis-shaped,
// unsupported-dtype or non-finite tensor is an error naming the tensor, and no ModelWeights exists.
//
// Views keep the checkpoint's own dtype (F32, BF16 or F16); each backend converts what it needs
// (fp32 for the CPU reference, bf16 for CUDA). Thread-safe for concurrent reads.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/config.h"
#include "engine/model/safetensors.h"

namespace gsa {

struct LayerWeights {
  const TensorView* input_layernorm = nullptr;     // [d_model]
  const TensorView* q_proj = nullptr;              // [n_heads*d_head, d_model]
  const TensorView* k_proj = nullptr;              // [n_kv_heads*d_head, d_model]
  const TensorView* v_proj = nullptr;              // [n_kv_heads*d_head, d_model]
  const TensorView* o_proj = nullptr;              // [d_model, n_heads*d_head]
  const TensorView* indexer_q_proj = nullptr;      // [n_indexer_heads*d_indexer, d_model]
  const TensorView* indexer_k_proj = nullptr;      // [d_indexer, d_model]
  const TensorView* indexer_w_proj = nullptr;      // [n_indexer_heads, d_model]
  const TensorView* indexer_w_bias = nullptr;      // [n_indexer_heads]
  const TensorView* indexer_bias = nullptr;        // [n_indexer_heads]
  const TensorView* value_gate_w = nullptr;        // [n_kv_heads*d_head, d_model]  (use_value_gate)
  const TensorView* value_gate_b = nullptr;        // [n_kv_heads*d_head]           (use_value_gate)
  const TensorView* output_gate_w = nullptr;       // [n_heads*d_head, d_model]     (use_output_gate)
  const TensorView* output_gate_b = nullptr;       // [n_heads*d_head]              (use_output_gate)
  const TensorView* post_attention_layernorm = nullptr;  // [d_model]
  const TensorView* mlp_gate = nullptr;            // [d_ffn, d_model]
  const TensorView* mlp_up = nullptr;              // [d_ffn, d_model]
  const TensorView* mlp_down = nullptr;            // [d_model, d_ffn]
};

struct ModelWeights {
  std::shared_ptr<const Checkpoint> checkpoint;  // owns the mappings the views point into
  const TensorView* embed_tokens = nullptr;      // [vocab, d_model]
  std::vector<LayerWeights> layers;              // [n_layers]
  const TensorView* final_norm = nullptr;        // [d_model]
  const TensorView* lm_head = nullptr;           // [vocab, d_model]; == embed_tokens when tied
};

// One expected tensor: its name, shape and whether the config requires it.
struct WeightSpec {
  std::string name;
  std::vector<int64_t> shape;
};

// The exact set of tensor names and shapes MODEL.md requires for `config` (lm_head included only
// when embeddings are not tied).
std::vector<WeightSpec> ExpectedWeights(const ModelConfig& config);

// Binds and checks every tensor. Checks finiteness of every element (one pass over the data).
absl::StatusOr<ModelWeights> BindWeights(const ModelConfig& config,
                                         std::shared_ptr<const Checkpoint> checkpoint);

}  // namespace gsa
