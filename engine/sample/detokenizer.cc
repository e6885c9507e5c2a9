#include "engine/sample/detokenizer.h"

#include <algorithm>
#include <optional>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"

namespace gsa {
namespace {

// Prompt tokens taken as the first window's context (vLLM uses a handful too).
constexpr size_t kPromptContextTokens = 4;
// The longest run of bytes that can still be the start of an unfinished character.
constexpr size_t kMaxIncompleteBytes = 3;
// Text whose encoding serves as the anchor; any text with a non-empty decoding would do.
constexpr char kAnchorText[] = "a";

// The byte of a byte-fallback piece ("<0xE2>" → 0xE2), or -1 for any other piece.
int ByteOfPiece(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
  int value = 0;
  for (const char c : piece.substr(3, 2)) {
    int digit;
    if (c >= '0' && c <= '9') {
      digit = c - '0';
    } else if (c >= 'A' && c <= 'F') {
      digit = c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      digit = c - 'a' + 10;
    } else {
      return -1;
    }
    value = value * 16 + digit;
  }
  return value;
}

bool IsContinuationByte(int b) { return (b & 0xC0) == 0x80; }

// Length of the UTF-8 sequence that `lead` starts, or 0 when no valid sequence starts with it
// (continuation bytes, C0/C1 which only spell overlong forms, F5..FF beyond U+10FFFF).
size_t SequenceLength(int lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

// Whether bytes[0, n) is a proper prefix of some valid UTF-8 character, i.e. more bytes could
// still complete it. The second-byte ranges exclude overlong forms, surrogates and code points
// past U+10FFFF, matching what the decoder accepts.
bool IsIncompleteCharacter(const int* bytes, size_t n) {
  const size_t length = SequenceLength(bytes[0]);
  if (length <= n) return false;
  if (n >= 2) {
    int low = 0x80;
    int high = 0xBF;
    switch (bytes[0]) {
      case 0xE0:
        low = 0xA0;
        break;
      case 0xED:
        high = 0x9F;
        break;
      case 0xF0:
        low = 0x90;
        break;
      case 0xF4:
        high = 0x8F;
        break;
      default:
        break;
    }
    if (bytes[1] < low || bytes[1] > high) return false;
  }
  for (size_t i = 2; i < n; ++i) {
    if (!IsContinuationByte(bytes[i])) return false;
  }
  return true;
}

}  // namespace

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tokenizer,
                                               std::vector<int32_t> prompt_ids)
    : tokenizer_(&tokenizer), tokens_(std::move(prompt_ids)), num_prompt_(tokens_.size()) {}

absl::Status IncrementalDetokenizer::InitFromPrompt() {
  absl::StatusOr<std::vector<int32_t>> anchor = tokenizer_->Encode(kAnchorText);
  if (!anchor.ok()) return anchor.status();
  absl::StatusOr<std::string> anchor_text = tokenizer_->Decode(*anchor);
  if (!anchor_text.ok()) return anchor_text.status();
  if (anchor->empty() || anchor_text->empty()) {
    return absl::InternalError(absl::StrCat("detokenizer: the tokenizer decodes its encoding of \"",
                                            kAnchorText, "\" to \"", *anchor_text,
                                            "\"; incremental decoding needs a non-empty text"));
  }
  anchor_ids_ = std::move(anchor).value();
  anchor_text_ = std::move(anchor_text).value();

  // A prompt given as ids may end inside a character: those bytes are not final text yet, so the
  // emitted text starts before them.
  const size_t n = tokens_.size();
  const size_t looked_at = std::min(n, kPromptContextTokens + kMaxIncompleteBytes);
  std::vector<int> bytes;  // ByteOfPiece of tokens_[n - looked_at, n)
  for (size_t i = n - looked_at; i < n; ++i) {
    absl::StatusOr<std::string> piece = tokenizer_->IdToPiece(tokens_[i]);
    if (!piece.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt position ", i, ": ", piece.status().message()));
    }
    bytes.push_back(ByteOfPiece(*piece));
  }
  pending_bytes_ = bytes;
  read_offset_ = n - looked_at;
  const size_t tail = IncompleteTailLength();
  read_offset_ = n - tail;
  pending_bytes_.assign(bytes.end() - static_cast<std::ptrdiff_t>(tail), bytes.end());

  // A few prompt tokens before read_offset_ as context, starting on a character boundary: skip
  // continuation bytes, which may belong to a character begun further back.
  size_t begin = read_offset_ - std::min(read_offset_, kPromptContextTokens);
  while (begin < read_offset_ && IsContinuationByte(bytes[begin - (n - looked_at)])) ++begin;
  absl::StatusOr<bool> has_text = PrefixHasText(begin);
  if (!has_text.ok()) return has_text.status();
  text_before_prefix_ = *has_text;
  prefix_offset_ = text_before_prefix_ ? begin : 0;
  absl::StatusOr<std::string> prefix_text =
      DecodeWindow(prefix_offset_, read_offset_, text_before_prefix_);
  if (!prefix_text.ok()) return prefix_text.status();
  prefix_text_ = std::move(prefix_text).value();
  return absl::OkStatus();
}

absl::StatusOr<std::string> IncrementalDetokenizer::DecodeWindow(size_t begin, size_t end,
                                                                 bool anchored) const {
  std::vector<int32_t> ids;
  ids.reserve((anchored ? anchor_ids_.size() : 0) + (end - begin));
  if (anchored) ids.insert(ids.end(), anchor_ids_.begin(), anchor_ids_.end());
  ids.insert(ids.end(), tokens_.begin() + static_cast<std::ptrdiff_t>(begin),
             tokens_.begin() + static_cast<std::ptrdiff_t>(end));
  absl::StatusOr<std::string> text = tokenizer_->Decode(ids);
  if (!text.ok() || !anchored) return text;
  if (!std::string_view(*text).starts_with(anchor_text_)) {
    return absl::InternalError(absl::StrCat(
        "detokenizer: the text of tokens [", begin, ", ", end, ") behind the anchor \"",
        anchor_text_, "\" does not start with the anchor's text: \"", *text, "\""));
  }
  text->erase(0, anchor_text_.size());
  return text;
}

absl::StatusOr<bool> IncrementalDetokenizer::PrefixHasText(size_t end) const {
  // Text only grows as tokens are added, so the shortest prefix with text answers; doubling keeps
  // the cost near the length of that prefix (usually BOS and a word) rather than the prompt's.
  for (size_t n = std::min<size_t>(end, 8);; n = std::min(end, 2 * n)) {
    absl::StatusOr<std::string> text = DecodeWindow(0, n, /*anchored=*/false);
    if (!text.ok()) return text.status();
    if (!text->empty()) return true;
    if (n == end) return false;
  }
}

size_t IncrementalDetokenizer::IncompleteTailLength() const {
  // Only a lead byte among the last three can start an unfinished character; lead bytes never
  // continue another character, so the decoder starts a character there whatever precedes it.
  const size_t size = pending_bytes_.size();
  for (size_t k = 1; k <= std::min(size, kMaxIncompleteBytes); ++k) {
    const int b = pending_bytes_[size - k];
    if (b < 0) return 0;  // a whole piece: the byte run (if any) before it is final
    if (!IsContinuationByte(b)) {
      return IsIncompleteCharacter(&pending_bytes_[size - k], k) ? k : 0;
    }
  }
  return 0;
}

absl::StatusOr<std::string> IncrementalDetokenizer::Push(int32_t token) {
  if (flushed_) {
    return absl::FailedPreconditionError(
        absl::StrCat("detokenizer: token ", token, " pushed after Flush ended the stream"));
  }
  if (!initialized_) {
    if (absl::Status s = InitFromPrompt(); !s.ok()) return s;
    initialized_ = true;
  }
  absl::StatusOr<std::string> piece = tokenizer_->IdToPiece(token);
  if (!piece.ok()) return piece.status();

  tokens_.push_back(token);
  pending_bytes_.push_back(ByteOfPiece(*piece));
  const size_t stable_end = tokens_.size() - IncompleteTailLength();
  if (stable_end == read_offset_) return std::string();

  absl::StatusOr<std::string> text = DecodeWindow(prefix_offset_, stable_end, text_before_prefix_);
  if (text.ok() && !std::string_view(*text).starts_with(prefix_text_)) {
    text = absl::InternalError(
        absl::StrCat("detokenizer: after token ", token, " the text of tokens [", prefix_offset_,
                     ", ", stable_end, ") \"", *text, "\" does not extend that of [",
                     prefix_offset_, ", ", read_offset_, ") \"", prefix_text_, "\""));
  }
  if (!text.ok()) {
    tokens_.pop_back();
    pending_bytes_.pop_back();
    return text.status();
  }
  std::string delta = text->substr(prefix_text_.size());

  // The chunk just emitted becomes the next window's context. Its text read on its own equals
  // `delta`: it starts on a character boundary and, when the text before it is non-empty, is
  // decoded behind the anchor. While nothing visible precedes it, the window stays at token 0.
  const auto emitted = static_cast<std::ptrdiff_t>(stable_end - read_offset_);
  pending_bytes_.erase(pending_bytes_.begin(), pending_bytes_.begin() + emitted);
  if (text_before_prefix_ || !prefix_text_.empty()) {
    text_before_prefix_ = true;
    prefix_offset_ = read_offset_;
    prefix_text_ = delta;
  } else {
    prefix_text_ = std::move(text).value();
  }
  read_offset_ = stable_end;
  return delta;
}

std::string IncrementalDetokenizer::Flush() {
  if (flushed_) return std::string();
  flushed_ = true;
  if (!initialized_) {
    if (!InitFromPrompt().ok()) return std::string();
    initialized_ = true;
  }
  if (read_offset_ == tokens_.size()) return std::string();
  // Every id here passed IdToPiece (or the prompt checks), so decoding cannot fail; a failure
  // would leave nothing sensible to return, and the text so far is already out.
  absl::StatusOr<std::string> text =
      DecodeWindow(prefix_offset_, tokens_.size(), text_before_prefix_);
  if (!text.ok() || !std::string_view(*text).starts_with(prefix_text_)) return std::string();
  read_offset_ = tokens_.size();
  pending_bytes_.clear();
  return text->substr(prefix_text_.size());
}

}  // namespace gsa
