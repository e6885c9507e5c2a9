// Tokenizer: the engine's view of text ↔ token ids. The sentencepiece implementation lives in one
// .cc (sentencepiece_tokenizer.cc) because Debian's sentencepiece header clashes with Abseil in
// the same translation unit; nothing else includes sentencepiece.
//
// Thread-safety: all methods are const and safe to call concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace gsa {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Text → ids, without BOS/EOS (callers add BOS when the model wants it).
  virtual absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const = 0;
  // Ids → text (byte-fallback pieces joined into UTF-8, leading-space marker turned into spaces).
  // An id outside the vocabulary is InvalidArgument naming it.
  virtual absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids) const = 0;
  // The raw piece for one id (e.g. "▁the", "<0xE2>"), for incremental detokenisation.
  virtual absl::StatusOr<std::string> IdToPiece(int32_t id) const = 0;

  virtual int32_t vocab_size() const = 0;
  virtual std::optional<int32_t> bos_id() const = 0;
  virtual std::optional<int32_t> eos_id() const = 0;
};

// Loads a sentencepiece model file. A missing file is NotFound; an unparsable one is
// InvalidArgument; both name the path.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceTokenizer(const std::string& path);

}  // namespace gsa
