#include "engine/model/model_loader.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "engine/util/status_macros.h"

namespace gsa {

absl::StatusOr<const Tokenizer*> LoadedModel::RequireTokenizer() const {
  if (tokenizer == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model ", dir, " has no tokenizer.model, so text cannot be tokenized; send the prompt as "
        "token ids, or add a sentencepiece tokenizer.model to the model directory"));
  }
  return tokenizer.get();
}

absl::StatusOr<LoadedModel> LoadModel(const std::string& model_dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(model_dir, ec)) {
    return absl::NotFoundError(absl::StrCat("model directory ", model_dir, " does not exist"));
  }
  LoadedModel m;
  m.dir = model_dir;
  GSA_ASSIGN_OR_RETURN(m.config, LoadModelConfig(model_dir + "/config.json"));
  GSA_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(model_dir));
  GSA_ASSIGN_OR_RETURN(m.weights,
                       BindWeights(m.config, std::shared_ptr<const Checkpoint>(std::move(checkpoint))));
  const std::string tok_path = model_dir + "/tokenizer.model";
  if (std::filesystem::exists(tok_path, ec)) {
    GSA_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, LoadSentencePieceTokenizer(tok_path));
    if (tok->vocab_size() > m.config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          tok_path, ": tokenizer has ", tok->vocab_size(), " pieces but config.json vocab_size is ",
          m.config.vocab_size, "; the tokenizer and the model do not belong together"));
    }
    m.tokenizer = std::move(tok);
  }
  return m;
}

}  // namespace gsa
