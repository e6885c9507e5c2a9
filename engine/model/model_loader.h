// LoadedModel: everything read from a model directory (MODEL.md, Checkpoint directory): the
// validated config, the bound weights and, when tokenizer.model is present, the tokenizer.
// Loading is all-or-nothing: any problem is an error naming the file, key or tensor.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/model/config.h"
#include "engine/model/tokenizer.h"
#include "engine/model/weights.h"

namespace gsa {

struct LoadedModel {
  std::string dir;
  ModelConfig config;
  ModelWeights weights;
  std::shared_ptr<const Tokenizer> tokenizer;  // null when the directory has no tokenizer.model

  // The tokenizer, or FailedPrecondition saying that this model has none and that requests must
  // send token ids (or the directory needs a tokenizer.model).
  absl::StatusOr<const Tokenizer*> RequireTokenizer() const;
};

absl::StatusOr<LoadedModel> LoadModel(const std::string& model_dir);

}  // namespace gsa
