// Writing model directories with random weights (gsa-make-model and the tests use this), in the
// reference checkpoint format of MODEL.md: config.json + model.safetensors (or shards with
// model.safetensors.index.json), optionally a copied tokenizer.model.
//
// Deterministic: the same options (seed included) give byte-identical files on any machine; each
// tensor's values come from its own counter-based stream keyed by (seed, tensor name), so the
// bytes do not depend on dtype order, sharding or threads.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/config.h"
#include "engine/model/dtype.h"

namespace gsa {

struct RandomModelOptions {
  ModelConfig config;
  DType dtype = DType::kF32;  // kF32, kBF16 or kF16
  uint64_t seed = 0;
  double init_std = 0.02;       // N(0, init_std) for projection and embedding weights
  size_t max_shard_bytes = 0;   // 0: one model.safetensors; else shards of at most this many bytes
  std::string tokenizer_path;   // copied to DIR/tokenizer.model when non-empty
};

// Creates `dir` if needed and writes the model. An earlier checkpoint in `dir` (model.safetensors,
// its index, model-*-of-*.safetensors shards) is removed first, so the directory never holds two.
// Errors name the path.
absl::Status WriteRandomModel(const RandomModelOptions& options, const std::string& dir);

// Named shapes: "gsa-1.7b" (GPU.md's reference shape), "gsa-tiny" (the golden case's shape) and
// others listed by NamedShapes(). Unknown names are InvalidArgument listing the known ones.
absl::StatusOr<ModelConfig> NamedShape(std::string_view name);
std::vector<std::string> NamedShapes();

}  // namespace gsa
