// The only translation unit that includes sentencepiece (see sentencepiece_impl.h for why it must
// stay free of Abseil headers, tokenizer.h included).
#include <sentencepiece_processor.h>

#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "engine/model/sentencepiece_impl.h"

namespace gsa::internal {
namespace {

class SentencePieceProcessorImpl final : public SentencePieceImpl {
 public:
  explicit SentencePieceProcessorImpl(std::unique_ptr<sentencepiece::SentencePieceProcessor> p)
      : processor_(std::move(p)) {}
  bool Encode(std::string_view text, std::vector<int>* ids, std::string* error) const override;
  bool Decode(const std::vector<int>& ids, std::string* text, std::string* error) const override;
  std::string IdToPiece(int id) const override;
  int piece_size() const override;
  int bos_id() const override;
  int eos_id() const override;

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
};

std::unique_ptr<SentencePieceImpl> Load(const std::string& path, SentencePieceImpl::LoadError* code,
                                        std::string* error) {
  using LoadError = SentencePieceImpl::LoadError;
  // Check existence ourselves: sentencepiece reports a missing file and a broken one with codes
  // that have varied between releases, and callers need to tell the two apart.
  std::error_code ec;
  const std::filesystem::file_status st = std::filesystem::status(path, ec);
  if (!std::filesystem::exists(st)) {
    *code = LoadError::kNotFound;
    *error = ec ? ec.message() : "no such file";
    return nullptr;
  }
  if (!std::filesystem::is_regular_file(st)) {
    *code = LoadError::kInvalid;
    *error = "not a regular file";
    return nullptr;
  }
  auto processor = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const sentencepiece::util::Status status = processor->Load(path);
  if (!status.ok()) {
    *code = status.code() == sentencepiece::util::StatusCode::kNotFound ? LoadError::kNotFound
                                                                         : LoadError::kInvalid;
    *error = status.ToString();
    return nullptr;
  }
  // A protobuf parser accepts some garbage as an empty message; a model without pieces is as
  // unusable as an unparsable one.
  if (processor->GetPieceSize() <= 0) {
    *code = LoadError::kInvalid;
    *error = "the model has no pieces";
    return nullptr;
  }
  *code = LoadError::kNone;
  error->clear();
  return std::make_unique<SentencePieceProcessorImpl>(std::move(processor));
}

bool SentencePieceProcessorImpl::Encode(std::string_view text, std::vector<int>* ids,
                               std::string* error) const {
  const sentencepiece::util::Status status = processor_->Encode(text, ids);
  if (!status.ok()) {
    *error = status.ToString();
    return false;
  }
  return true;
}

bool SentencePieceProcessorImpl::Decode(const std::vector<int>& ids, std::string* text,
                               std::string* error) const {
  const sentencepiece::util::Status status = processor_->Decode(ids, text);
  if (!status.ok()) {
    *error = status.ToString();
    return false;
  }
  return true;
}

std::string SentencePieceProcessorImpl::IdToPiece(int id) const { return processor_->IdToPiece(id); }

int SentencePieceProcessorImpl::piece_size() const { return processor_->GetPieceSize(); }
int SentencePieceProcessorImpl::bos_id() const { return processor_->bos_id(); }
int SentencePieceProcessorImpl::eos_id() const { return processor_->eos_id(); }

}  // namespace
}  // namespace gsa::internal

// The module's entry point. The pointer crosses a C boundary, so ownership passes by release();
// the caller wraps it in a unique_ptr at once (the virtual destructor runs this module's code).
extern "C" __attribute__((visibility("default"))) gsa::internal::SentencePieceImpl* gsa_spm_load(
    const char* path, int* code, std::string* error) {
  gsa::internal::SentencePieceImpl::LoadError c = gsa::internal::SentencePieceImpl::LoadError::kNone;
  std::unique_ptr<gsa::internal::SentencePieceImpl> impl = gsa::internal::Load(path, &c, error);
  *code = static_cast<int>(c);
  return impl.release();
}
