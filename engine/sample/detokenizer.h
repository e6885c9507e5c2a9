// IncrementalDetokenizer: turns a request's generated token ids, one at a time, into the text each
// one makes visible, for the streaming API's text deltas.
//
// What the stream adds up to. Let T(ids) be Tokenizer::Decode(ids) and let `prompt'` be the prompt
// without a trailing incomplete UTF-8 character (a prompt given as text never has one; a prompt
// given as ids may end in the first byte-fallback pieces of a character). Then
//
//     T(prompt') + Push(g1) + Push(g2) + ... + Flush()  ==  T(prompt + generated)
//
// so the streamed text is "the decoding of prompt + output minus the decoding of the prompt", not
// T(generated) on its own. The two differ exactly where it matters: sentencepiece drops the
// leading-space marker of the first piece of a text, so T({"▁world"}) is "world", while after the
// prompt "Hello" the same token reads " world", and that space belongs in the stream. With an empty
// prompt (or one that decodes to nothing, such as a lone BOS) both definitions agree.
//
// What each Push returns: only complete, valid UTF-8. A character spelled in byte-fallback pieces
// (<0xE2><0x82><0xAC> for "€") is held back until its last byte arrives and then appears once,
// whole; U+FFFD never shows up merely because the text so far ends inside a character. Bytes that
// can no longer become a valid character (a stray continuation byte, a lead byte followed by a
// non-continuation) are final at once and stream as U+FFFD, as Decode spells them. Flush returns
// what is still held at the end (an unfinished character becomes U+FFFD per byte, as in Decode).
//
// How (vLLM's prefix_offset / read_offset scheme). The text up to `read_offset` has been emitted;
// each Push decodes only the window [prefix_offset, end): the previously emitted chunk as context
// plus the tokens not yet emitted, and returns what the window's text adds beyond the text of
// [prefix_offset, read_offset). Both offsets only ever sit on character boundaries, where
// sentencepiece's decoding of what follows does not depend on what precedes, with one exception:
// the leading-space marker is dropped at the start of a text. So once the text before the window
// is non-empty, the window is decoded behind a fixed "anchor" token (whose text is then cut off),
// which makes the window never look like the start of a text. Until then the window starts at
// token 0 and the decoding is exact. Cost per Push: one Decode of a few tokens (O(window), not
// O(sequence)); the window grows only while nothing visible has been produced yet.
//
// Byte-fallback pieces are recognised by their sentencepiece spelling "<0xHH>" (IdToPiece).
//
// Thread-safety: not thread-safe (one per request, used by the engine thread); the Tokenizer is
// only read and may be shared.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/model/tokenizer.h"

namespace gsa {

class IncrementalDetokenizer {
 public:
  // REQUIRES: `tokenizer` outlives this object; prompt ids inside the vocabulary (the server
  // checks them; the few prompt ids read here are checked again, and the first Push fails naming
  // a bad one).
  IncrementalDetokenizer(const Tokenizer& tokenizer, std::vector<int32_t> prompt_ids);

  IncrementalDetokenizer(const IncrementalDetokenizer&) = delete;
  IncrementalDetokenizer& operator=(const IncrementalDetokenizer&) = delete;
  IncrementalDetokenizer(IncrementalDetokenizer&&) = default;
  IncrementalDetokenizer& operator=(IncrementalDetokenizer&&) = default;

  // Appends one generated token; returns the text it makes visible (possibly empty).
  // InvalidArgument naming the id when it is outside the vocabulary (the token is then not taken,
  // and the stream may go on); InvalidArgument for a bad prompt id; FailedPrecondition after Flush.
  absl::StatusOr<std::string> Push(int32_t token);

  // Returns the text still held back (a trailing incomplete character, as U+FFFD per byte) and
  // ends the stream: later Pushes fail. Returns "" when nothing is held or on a second call.
  std::string Flush();

  // The ids pushed so far (prompt not included).
  size_t num_generated() const { return tokens_.size() - num_prompt_; }

 private:
  absl::Status InitFromPrompt();
  // Decodes tokens_[begin, end) as it reads inside the whole sequence. `anchored`: the text before
  // `begin` is non-empty, so decode behind the anchor; REQUIRES then that `begin` is a character
  // boundary. Otherwise REQUIRES begin == 0.
  absl::StatusOr<std::string> DecodeWindow(size_t begin, size_t end, bool anchored) const;
  // Whether T(tokens_[0, end)) is non-empty, decoding only as much of the prefix as needed.
  absl::StatusOr<bool> PrefixHasText(size_t end) const;
  // How many trailing tokens of [read_offset_, end) are the bytes of a character not yet complete.
  size_t IncompleteTailLength() const;

  const Tokenizer* tokenizer_;
  std::vector<int32_t> tokens_;  // prompt ids, then generated ids
  size_t num_prompt_;
  bool initialized_ = false;
  bool flushed_ = false;

  // Anchor: a few ids with non-empty text, decoded in front of windows that are not at the start.
  std::vector<int32_t> anchor_ids_;
  std::string anchor_text_;

  size_t prefix_offset_ = 0;         // window start; 0 while the text before it would be empty
  size_t read_offset_ = 0;           // everything before this has been emitted
  bool text_before_prefix_ = false;  // T(tokens_[0, prefix_offset_)) is non-empty
  std::string prefix_text_;          // DecodeWindow(prefix_offset_, read_offset_)
  // For tokens_[read_offset_, end): the byte value of a byte-fallback piece, else -1.
  std::vector<int> pending_bytes_;
};

}  // namespace gsa
