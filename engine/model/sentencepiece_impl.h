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

namespace gsa::internal {

// What the tokenizer needs of sentencepiece, in std types only. The implementation lives in the
// module libgsa_spm.so (sentencepiece_tokenizer.cc), loaded at run time in its own symbol scope:
// Debian's libsentencepiece exports its bundled copy of protobuf, whose symbols would otherwise
// interpose on the real libprotobuf that gRPC uses (a crash at start-up) or the other way round.
class SentencePieceImpl {
 public:
  enum class LoadError { kNone, kNotFound, kInvalid, kModule };  // kModule: libgsa_spm.so unusable

  virtual ~SentencePieceImpl() = default;

  // False with `*error` set when sentencepiece refuses the input.
  virtual bool Encode(std::string_view text, std::vector<int>* ids, std::string* error) const = 0;
  // REQUIRES: every id in [0, piece_size()).
  virtual bool Decode(const std::vector<int>& ids, std::string* text, std::string* error) const = 0;
  // REQUIRES: 0 <= id < piece_size().
  virtual std::string IdToPiece(int id) const = 0;

  virtual int piece_size() const = 0;
  virtual int bos_id() const = 0;  // -1 when the model has none
  virtual int eos_id() const = 0;  // -1 when the model has none
};

// Loads the sentencepiece module (once per call; the dynamic loader shares it) and the model at
// `path`. Returns nullptr with `*code` and `*error` (a readable reason) on failure; a module that
// cannot be loaded is kModule with an error naming where it was looked for.
// The module is found beside the running executable (libgsa_spm.so) unless $GSA_SPM_MODULE names it.
std::unique_ptr<SentencePieceImpl> LoadSentencePiece(const std::string& path, SentencePieceImpl::LoadError* code,
                                                     std::string* error);

// The module's one exported entry point (C linkage so that dlsym finds it by name). Returns an
// owning pointer, or nullptr with *code (a LoadError value) and *error set.
using LoadSentencePieceFn = SentencePieceImpl* (*)(const char* path, int* code, std::string* error);
inline constexpr const char kLoadSentencePieceSymbol[] = "gsa_spm_load";

}  // namespace gsa::internal
