// gsa::Tokenizer over sentencepiece. The sentencepiece calls themselves live behind
// internal::SentencePieceImpl (sentencepiece_tokenizer.cc), which keeps Abseil and sentencepiece's
// own `namespace absl` out of each other's way; this file adds the id checks and the Status
// errors.
#include "engine/model/tokenizer.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/model/sentencepiece_impl.h"

namespace gsa {
namespace {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(std::string path, std::unique_ptr<internal::SentencePieceImpl> impl)
      : path_(std::move(path)), impl_(std::move(impl)), vocab_size_(impl_->piece_size()) {}

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const override {
    std::vector<int> ids;
    std::string error;
    if (!impl_->Encode(text, &ids, &error)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer ", path_, ": cannot encode text: ", error));
    }
    return std::vector<int32_t>(ids.begin(), ids.end());
  }

  absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids) const override {
    // sentencepiece would CHECK-fail or read out of bounds on a bad id; ids come from requests
    // and from sampling, so refuse them here with a message a client can act on.
    for (const int32_t id : ids) {
      if (absl::Status s = CheckId(id); !s.ok()) return s;
    }
    std::string text;
    std::string error;
    if (!impl_->Decode(std::vector<int>(ids.begin(), ids.end()), &text, &error)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer ", path_, ": cannot decode ids: ", error));
    }
    return text;
  }

  absl::StatusOr<std::string> IdToPiece(int32_t id) const override {
    if (absl::Status s = CheckId(id); !s.ok()) return s;
    return impl_->IdToPiece(id);
  }

  int32_t vocab_size() const override { return vocab_size_; }
  std::optional<int32_t> bos_id() const override { return OptionalId(impl_->bos_id()); }
  std::optional<int32_t> eos_id() const override { return OptionalId(impl_->eos_id()); }

 private:
  absl::Status CheckId(int32_t id) const {
    if (id < 0 || id >= vocab_size_) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", id,
                                                     " is outside the tokenizer vocabulary of ",
                                                     vocab_size_, " pieces (", path_, ")"));
    }
    return absl::OkStatus();
  }

  // sentencepiece says "disabled" with a negative id.
  static std::optional<int32_t> OptionalId(int id) {
    if (id < 0) return std::nullopt;
    return id;
  }

  const std::string path_;
  const std::unique_ptr<internal::SentencePieceImpl> impl_;
  const int32_t vocab_size_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceTokenizer(const std::string& path) {
  internal::SentencePieceImpl::LoadError code = internal::SentencePieceImpl::LoadError::kNone;
  std::string error;
  std::unique_ptr<internal::SentencePieceImpl> impl = internal::LoadSentencePiece(path, &code, &error);
  if (impl == nullptr) {
    if (code == internal::SentencePieceImpl::LoadError::kModule) {
      return absl::FailedPreconditionError(absl::StrCat("cannot load tokenizer ", path, ": ", error));
    }
    if (code == internal::SentencePieceImpl::LoadError::kNotFound) {
      return absl::NotFoundError(
          absl::StrCat("tokenizer model ", path, " not found (", error, ")"));
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "tokenizer model ", path, " is not a valid sentencepiece model: ", error));
  }
  return std::make_unique<SentencePieceTokenizer>(path, std::move(impl));
}

}  // namespace gsa
