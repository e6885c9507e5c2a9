// SentencePieceImpl: a thin, Abseil-free wrapper around sentencepiece::SentencePieceProcessor.
//
// Private to engine/model (tokenizer.cc is its only user). It exists because Debian's
// sentencepiece_processor.h declares its own `namespace absl`, which clashes with real Abseil
// headers in one translation unit. So this header and sentencepiece_tokenizer.cc use only std
// types, and tokenizer.cc turns the results into absl::Status on the other side of the wall.
//
// Thread-safety: after Load, all methods are const and safe to call concurrently (the processor
// keeps no mutable state on the encode/decode paths).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}  // namespace sentencepiece

namespace gsa::internal {

class SentencePieceImpl {
 public:
  enum class LoadError { kNone, kNotFound, kInvalid };

  // Returns nullptr on failure with `*code` saying why and `*error` a human-readable reason
  // (sentencepiece's own message). Both out-parameters are required.
  static std::unique_ptr<SentencePieceImpl> Load(const std::string& path, LoadError* code,
                                                 std::string* error);

  // Only Load constructs one (the tag is private); public so that std::make_unique can.
  struct PrivateTag;
  SentencePieceImpl(const PrivateTag&,
                    std::unique_ptr<sentencepiece::SentencePieceProcessor> processor);
  ~SentencePieceImpl();
  SentencePieceImpl(const SentencePieceImpl&) = delete;
  SentencePieceImpl& operator=(const SentencePieceImpl&) = delete;

  // False with `*error` set when sentencepiece refuses the input.
  bool Encode(std::string_view text, std::vector<int>* ids, std::string* error) const;
  // REQUIRES: every id in [0, piece_size()).
  bool Decode(const std::vector<int>& ids, std::string* text, std::string* error) const;
  // REQUIRES: 0 <= id < piece_size().
  std::string IdToPiece(int id) const;

  int piece_size() const;
  int bos_id() const;  // -1 when the model has none
  int eos_id() const;  // -1 when the model has none

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
};

}  // namespace gsa::internal
