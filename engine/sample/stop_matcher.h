// StopMatcher: finds a request's stop strings in its streamed text, across token boundaries, and
// decides what of the text may be sent now.
//
// Text is pushed in pieces as the detokenizer produces it. The matcher never sends any part of a
// stop string: a suffix of the text that could still grow into a stop string (the longest suffix
// that is a proper prefix of one) is held back until the next piece shows whether it does. When
// a stop string appears, the text up to where it starts is released and the stream is stopped;
// the stop string and anything after it are dropped.
//
// Which match stops the stream: the one that is complete first, i.e. the stop string occurrence
// that ends earliest in the text; among occurrences ending at the same place, the longest (it
// starts earliest). That is where generation would have stopped had the text arrived one byte at
// a time, so the result does not depend on how the text was cut into pieces. Example: stop
// strings {"cd", "bcde"} on "abcdef" stop after "ab" (at "cd").
//
// UTF-8: with valid UTF-8 text and stop strings, every cut falls on a character boundary anyway;
// as a safeguard the held-back text is widened, and a release before a match shortened, to the
// nearest character boundary, so no emitted piece ever ends inside a character.
//
// Thread-safety: not thread-safe (one per request, used by the engine thread).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace gsa {

class StopMatcher {
 public:
  struct Result {
    std::string emit;      // text that may be sent now (never part of a stop string)
    bool stopped = false;  // a stop string was found: finish the request (reason "stop")
  };

  // Empty stop strings are ignored (they would stop before any text; the server rejects them).
  // REQUIRES: stop strings are valid UTF-8 (the server checks).
  explicit StopMatcher(std::vector<std::string> stop_strings);

  // Appends `new_text` (REQUIRES: valid UTF-8, as IncrementalDetokenizer::Push returns). Once
  // stopped, every later Push returns {"", true} and ignores its text.
  Result Push(std::string_view new_text);

  // Releases the text held back as a possible stop-string prefix, for a request that ends for
  // another reason (length, EOS, stop token, cancellation). Returns "" once stopped.
  std::string Flush();

  bool stopped() const { return stopped_; }
  // Bytes held back right now (at most the longest stop string's length - 1, unless a character
  // boundary needs a few more).
  size_t held_bytes() const { return held_.size(); }

 private:
  std::vector<std::string> stops_;
  size_t max_stop_size_ = 0;
  std::string held_;  // text received but not yet emitted
  bool stopped_ = false;
};

}  // namespace gsa
