// StopMatcher: stop strings are found across token boundaries and never sent, possible prefixes
// are held back and released when they turn out not to be one, the match that completes first
// wins whatever the chunking, cuts never split a UTF-8 character; and, end to end with the
// incremental detokenizer over a sentencepiece model trained here, a stop string spelled across
// byte-fallback tokens stops the stream.
#include "engine/sample/stop_matcher.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/model/tokenizer.h"
#include "engine/sample/detokenizer.h"
#include "tests/testing/spm_fixture.h"
#include "tests/testing/test_support.h"

namespace gsa {
namespace {

using ::testing::ElementsAre;

struct Outcome {
  std::vector<std::string> emits;  // one per Push
  std::string text;                // all emits, then the flush when not stopped
  bool stopped = false;
};

Outcome Feed(const std::vector<std::string>& stops, const std::vector<std::string>& pieces) {
  StopMatcher matcher(stops);
  Outcome out;
  for (const std::string& piece : pieces) {
    StopMatcher::Result r = matcher.Push(piece);
    out.emits.push_back(r.emit);
    out.text += r.emit;
    if (r.stopped) {
      out.stopped = true;
      break;
    }
  }
  if (!out.stopped) out.text += matcher.Flush();
  return out;
}

// Reference: scan the whole text for the occurrence that ends first (then starts first).
Outcome Reference(const std::vector<std::string>& stops, const std::string& text) {
  for (size_t end = 1; end <= text.size(); ++end) {
    size_t best = std::string::npos;
    for (const std::string& s : stops) {
      if (!s.empty() && s.size() <= end && text.compare(end - s.size(), s.size(), s) == 0) {
        best = std::min(best, end - s.size());
      }
    }
    if (best != std::string::npos) return Outcome{{}, text.substr(0, best), true};
  }
  return Outcome{{}, text, false};
}

bool EndsInsideACharacter(std::string_view s) {
  // The last lead byte among the final 3 bytes announces more bytes than follow it.
  for (size_t k = 1; k <= std::min<size_t>(4, s.size()); ++k) {
    const auto b = static_cast<unsigned char>(s[s.size() - k]);
    if ((b & 0xC0) == 0x80) continue;
    const size_t length = b < 0x80 ? 1 : b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : 2;
    return length > k;
  }
  return false;
}

TEST(StopMatcher, StopStringAcrossTokenBoundariesStopsBeforeIt) {
  const Outcome out = Feed({"bc"}, {"ab", "c", "d"});
  EXPECT_THAT(out.emits, ElementsAre("a", ""));
  EXPECT_TRUE(out.stopped);
  EXPECT_EQ(out.text, "a");
}

TEST(StopMatcher, StopStringIsNeverEmittedWhateverTheChunking) {
  const std::string text = "the answer is 42. STOP and then more";
  const std::vector<std::string> stops = {"STOP"};
  // Every way of cutting the text in two, and one byte at a time.
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    const Outcome out = Feed(stops, {text.substr(0, cut), text.substr(cut)});
    EXPECT_EQ(out.text, "the answer is 42. ") << "cut at " << cut;
    EXPECT_TRUE(out.stopped);
    for (const std::string& emit : out.emits) {
      EXPECT_EQ(emit.find_first_of("STOP"), std::string::npos) << emit;
    }
  }
  std::vector<std::string> bytes;
  for (const char c : text) bytes.emplace_back(1, c);
  const Outcome out = Feed(stops, bytes);
  EXPECT_EQ(out.text, "the answer is 42. ");
  EXPECT_TRUE(out.stopped);
}

TEST(StopMatcher, PartialPrefixIsHeldThenReleasedOnMismatch) {
  StopMatcher matcher({"abc"});
  StopMatcher::Result r = matcher.Push("xa");
  EXPECT_EQ(r.emit, "x");
  EXPECT_FALSE(r.stopped);
  EXPECT_EQ(matcher.held_bytes(), 1u);
  r = matcher.Push("b");
  EXPECT_EQ(r.emit, "");
  EXPECT_EQ(matcher.held_bytes(), 2u);
  r = matcher.Push("d");
  EXPECT_EQ(r.emit, "abd");
  EXPECT_FALSE(r.stopped);
  EXPECT_EQ(matcher.held_bytes(), 0u);
}

TEST(StopMatcher, HeldPrefixMayRestartInsideItself) {
  // Stop "aab" on "aaab": "aa" is held; with the third "a", "aaa" is no prefix of the stop string
  // but its tail "aa" still is, so only the first "a" goes out.
  const Outcome out = Feed({"aab"}, {"a", "a", "a", "b", "x"});
  EXPECT_THAT(out.emits, ElementsAre("", "", "a", ""));
  EXPECT_EQ(out.text, "a");
  EXPECT_TRUE(out.stopped);
}

TEST(StopMatcher, OfTwoStopStringsTheEarliestWins) {
  EXPECT_EQ(Feed({"world", "lo w"}, {"hello world"}).text, "hel");
  EXPECT_EQ(Feed({"lo w", "world"}, {"hello world"}).text, "hel");
  EXPECT_EQ(Feed({"world", "lo w"}, {"hel", "lo", " wor", "ld"}).text, "hel");
  // The one that is complete first wins, as it would had the text come a byte at a time...
  EXPECT_EQ(Feed({"cd", "bcde"}, {"abcdef"}).text, "ab");
  EXPECT_EQ(Feed({"cd", "bcde"}, {"a", "b", "c", "d", "e", "f"}).text, "ab");
  // ...and of two complete at the same byte, the longer one.
  EXPECT_EQ(Feed({"c", "bc"}, {"abc"}).text, "a");
  EXPECT_EQ(Feed({"c", "bc"}, {"a", "b", "c"}).text, "a");
}

TEST(StopMatcher, FlushReleasesHeldText) {
  StopMatcher matcher({"abc"});
  StopMatcher::Result r = matcher.Push("hello ab");
  EXPECT_EQ(r.emit, "hello ");
  EXPECT_FALSE(r.stopped);
  EXPECT_EQ(matcher.Flush(), "ab");
  EXPECT_EQ(matcher.Flush(), "");
}

TEST(StopMatcher, AfterStoppingNothingMoreComesOut) {
  StopMatcher matcher({"."});
  EXPECT_EQ(matcher.Push("one. two").emit, "one");
  EXPECT_TRUE(matcher.stopped());
  const StopMatcher::Result r = matcher.Push("three");
  EXPECT_EQ(r.emit, "");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(matcher.Flush(), "");
}

TEST(StopMatcher, WithoutStopStringsTextPassesThrough) {
  StopMatcher matcher({});
  EXPECT_EQ(matcher.Push("abc").emit, "abc");
  EXPECT_EQ(matcher.Push("€").emit, "€");
  EXPECT_EQ(matcher.Flush(), "");
  // Empty stop strings are ignored rather than stopping at once.
  EXPECT_EQ(Feed({"", "zz"}, {"abc", "z"}).text, "abcz");
}

TEST(StopMatcher, HeldTextNeverSplitsACharacter) {
  // "€" (E2 82 AC) starts the stop string "€uro": held whole, then released whole.
  StopMatcher matcher({"€uro"});
  StopMatcher::Result r = matcher.Push("5€");
  EXPECT_EQ(r.emit, "5");
  EXPECT_EQ(matcher.held_bytes(), 3u);
  r = matcher.Push("s");
  EXPECT_EQ(r.emit, "€s");
  // Safeguard against stop strings that are not valid UTF-8 (the server rejects them): a stop
  // string made of the last two bytes of "€" must neither split "€" when held...
  StopMatcher odd({"\x82\xAC!"});
  r = odd.Push("a€");
  EXPECT_EQ(r.emit, "a");
  EXPECT_EQ(odd.Flush(), "€");
  // ...nor when a match starts inside it.
  StopMatcher odd2({"\x82\xAC"});
  r = odd2.Push("a€b");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.emit, "a");
}

TEST(StopMatcher, MatchesTheReferenceForRandomTextsAndChunkings) {
  // Small alphabets (with multi-byte characters) make prefixes, overlaps and repeats common.
  const std::vector<std::string> alphabet = {"a", "b", "c", "é", "€", "🙂"};
  std::mt19937 rng(99);
  auto random_string = [&](size_t max_chars) {
    std::string s;
    const size_t n = rng() % (max_chars + 1);
    for (size_t i = 0; i < n; ++i) s += alphabet[rng() % alphabet.size()];
    return s;
  };
  for (int trial = 0; trial < 5000; ++trial) {
    std::vector<std::string> stops;
    const size_t num_stops = rng() % 4;
    for (size_t i = 0; i < num_stops; ++i) stops.push_back(random_string(4));
    const std::string text = random_string(24);
    // Cut at character boundaries only, as the detokenizer's deltas are.
    std::vector<std::string> pieces(1);
    for (size_t i = 0; i < text.size(); ++i) {
      const bool boundary = (static_cast<unsigned char>(text[i]) & 0xC0) != 0x80;
      if (boundary && rng() % 3 == 0) pieces.emplace_back();
      pieces.back() += text[i];
    }
    const Outcome out = Feed(stops, pieces);
    const Outcome want = Reference(stops, text);
    SCOPED_TRACE(absl::StrCat("trial ", trial, " text \"", text, "\" stops \"",
                              absl::StrJoin(stops, "\", \""), "\""));
    EXPECT_EQ(out.text, want.text);
    EXPECT_EQ(out.stopped, want.stopped);
    for (const std::string& emit : out.emits) EXPECT_FALSE(EndsInsideACharacter(emit)) << emit;
  }
}

class StopMatcherWithTokenizerTest : public gsa::testing::TrainedTokenizerTest {};

TEST_F(StopMatcherWithTokenizerTest, StopStringSpelledInByteTokensStopsTheStream) {
  const std::string text = "Hello world, it costs 5€ in 日本 🙂 and the cat reads a book.";
  absl::StatusOr<std::vector<int32_t>> ids = tokenizer_->Encode(text);
  ASSERT_TRUE(ids.ok()) << ids.status();
  for (const std::string stop : {"€ in", "日本", "5€", " the cat", "🙂 and"}) {
    SCOPED_TRACE(stop);
    const std::vector<int32_t> prompt(ids->begin(), ids->begin() + 3);
    const std::string prompt_text = *tokenizer_->Decode(prompt);
    ASSERT_TRUE(text.starts_with(prompt_text));
    const std::string output = text.substr(prompt_text.size());
    IncrementalDetokenizer detok(*tokenizer_, prompt);
    StopMatcher matcher({stop});
    std::string sent;
    bool stopped = false;
    for (size_t i = prompt.size(); i < ids->size() && !stopped; ++i) {
      absl::StatusOr<std::string> delta = detok.Push((*ids)[i]);
      ASSERT_TRUE(delta.ok()) << delta.status();
      StopMatcher::Result r = matcher.Push(*delta);
      sent += r.emit;
      stopped = r.stopped;
    }
    EXPECT_TRUE(stopped);
    EXPECT_EQ(sent, output.substr(0, output.find(stop)));
  }
}

}  // namespace
}  // namespace gsa
