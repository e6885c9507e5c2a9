// IncrementalDetokenizer over a sentencepiece model trained here (byte fallback on): the streamed
// text adds up to the decoding of prompt + output minus that of the prompt, every delta is valid
// UTF-8, a character spelled in byte pieces appears once and whole, the leading space of the
// first generated word survives, and each token costs a decode of a small window only.
#include "engine/sample/detokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/model/tokenizer.h"
#include "tests/testing/spm_fixture.h"
#include "tests/testing/test_support.h"

namespace gsa {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD

using gsa::testing::IsValidUtf8;

TEST(Utf8Validator, AcceptsAndRejectsWhatItShould) {
  EXPECT_TRUE(IsValidUtf8("plain, é, €, 日本, 🙂"));
  EXPECT_TRUE(IsValidUtf8(kReplacement));
  EXPECT_FALSE(IsValidUtf8("\xE2\x82"));          // truncated €
  EXPECT_FALSE(IsValidUtf8("\x80"));              // lone continuation
  EXPECT_FALSE(IsValidUtf8("\xC0\xAF"));          // overlong '/'
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));      // surrogate U+D800
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // U+110000
}

std::string Utf8Of(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (cp >> 18));
    s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// Wraps a tokenizer and remembers the longest id list Decode was asked for.
class CountingTokenizer final : public Tokenizer {
 public:
  explicit CountingTokenizer(const Tokenizer& inner) : inner_(inner) {}
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const override {
    return inner_.Encode(text);
  }
  absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids) const override {
    max_decode_size_ = std::max(max_decode_size_, ids.size());
    ++decode_calls_;
    return inner_.Decode(ids);
  }
  absl::StatusOr<std::string> IdToPiece(int32_t id) const override { return inner_.IdToPiece(id); }
  int32_t vocab_size() const override { return inner_.vocab_size(); }
  std::optional<int32_t> bos_id() const override { return inner_.bos_id(); }
  std::optional<int32_t> eos_id() const override { return inner_.eos_id(); }

  size_t max_decode_size() const { return max_decode_size_; }
  size_t decode_calls() const { return decode_calls_; }

 private:
  const Tokenizer& inner_;
  mutable size_t max_decode_size_ = 0;
  mutable size_t decode_calls_ = 0;
};

class DetokenizerTest : public gsa::testing::TrainedTokenizerTest {
 protected:
  static const Tokenizer& tok() { return *tokenizer_; }

  static std::string Decode(const std::vector<int32_t>& ids) {
    absl::StatusOr<std::string> text = tokenizer_->Decode(ids);
    EXPECT_TRUE(text.ok()) << text.status();
    return text.ok() ? *text : std::string();
  }

  static std::vector<int32_t> Encode(std::string_view text) {
    absl::StatusOr<std::vector<int32_t>> ids = tokenizer_->Encode(text);
    EXPECT_TRUE(ids.ok()) << ids.status();
    return ids.ok() ? *ids : std::vector<int32_t>();
  }

  // The id of a piece, by scanning the (small) vocabulary; -1 when absent.
  static int32_t IdOf(std::string_view piece) {
    for (int32_t id = 0; id < tokenizer_->vocab_size(); ++id) {
      if (*tokenizer_->IdToPiece(id) == piece) return id;
    }
    return -1;
  }

  static int32_t ByteId(unsigned byte) { return IdOf(absl::StrFormat("<0x%02X>", byte)); }

  static std::vector<int32_t> ByteIds(std::string_view bytes) {
    std::vector<int32_t> ids;
    for (const char c : bytes) ids.push_back(ByteId(static_cast<unsigned char>(c)));
    return ids;
  }

  static std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  }

  struct Streamed {
    std::vector<std::string> deltas;  // one per generated token
    std::string flushed;
    std::string all;  // deltas and flush, joined
  };

  // Streams `generated` after `prompt`, checking that every Push succeeds and every delta (and the
  // flush) is valid UTF-8.
  static Streamed Stream(const Tokenizer& tokenizer, const std::vector<int32_t>& prompt,
                         const std::vector<int32_t>& generated) {
    Streamed out;
    IncrementalDetokenizer detok(tokenizer, prompt);
    for (const int32_t id : generated) {
      absl::StatusOr<std::string> delta = detok.Push(id);
      EXPECT_TRUE(delta.ok()) << "token " << id << ": " << delta.status();
      out.deltas.push_back(delta.ok() ? *delta : std::string());
      EXPECT_TRUE(IsValidUtf8(out.deltas.back()))
          << "delta after token " << id << " is not valid UTF-8: " << out.deltas.back();
      out.all += out.deltas.back();
    }
    out.flushed = detok.Flush();
    EXPECT_TRUE(IsValidUtf8(out.flushed)) << "flush is not valid UTF-8: " << out.flushed;
    out.all += out.flushed;
    return out;
  }
  static Streamed Stream(const std::vector<int32_t>& prompt,
                         const std::vector<int32_t>& generated) {
    return Stream(tok(), prompt, generated);
  }

  // The contract: T(prompt without a trailing unfinished character) + stream == T(prompt + gen).
  // When T(prompt) has no trailing U+FFFD (no unfinished character), that prefix is T(prompt);
  // otherwise it is T(prompt minus its last k ids) for some k <= 3.
  static void ExpectStreamMatchesDecode(const std::vector<int32_t>& prompt,
                                        const std::vector<int32_t>& generated) {
    const std::string full = Decode(Concat(prompt, generated));
    const Streamed s = Stream(prompt, generated);
    const std::string prompt_text = Decode(prompt);
    ASSERT_LE(s.all.size(), full.size()) << "streamed \"" << s.all << "\", full \"" << full << "\"";
    ASSERT_EQ(full.substr(full.size() - s.all.size()), s.all) << "full \"" << full << "\"";
    const std::string before = full.substr(0, full.size() - s.all.size());
    if (!std::string_view(prompt_text).ends_with(kReplacement)) {
      EXPECT_EQ(before, prompt_text) << "full \"" << full << "\", streamed \"" << s.all << "\"";
      return;
    }
    bool matched = false;
    for (size_t k = 0; k <= std::min<size_t>(3, prompt.size()) && !matched; ++k) {
      matched = before == Decode(std::vector<int32_t>(prompt.begin(), prompt.end() - k));
    }
    EXPECT_TRUE(matched) << "text before the stream \"" << before
                         << "\" is not the decoding of the prompt less up to 3 trailing ids";
  }

};

TEST_F(DetokenizerTest, TrainedModelSpellsRareCharactersInBytes) {
  // Preconditions of the tests below, checked so that a changed corpus fails loudly here.
  ASSERT_GE(IdOf("\xE2\x96\x81world"), 0) << "expected a piece \"▁world\"";
  std::vector<std::string> pieces;
  for (const int32_t id : Encode("€")) pieces.push_back(*tok().IdToPiece(id));
  EXPECT_THAT(std::vector<std::string>(pieces.end() - 3, pieces.end()),
              ElementsAre("<0xE2>", "<0x82>", "<0xAC>"));
  for (const unsigned byte : {0x80u, 0xE2u, 0xF0u, 0xFFu}) EXPECT_GE(ByteId(byte), 0) << byte;
}

TEST_F(DetokenizerTest, LeadingSpaceOfFirstTokenAfterPromptIsKept) {
  IncrementalDetokenizer detok(tok(), Encode("Hello"));
  absl::StatusOr<std::string> delta = detok.Push(IdOf("\xE2\x96\x81world"));
  ASSERT_TRUE(delta.ok()) << delta.status();
  EXPECT_EQ(*delta, " world");
  EXPECT_EQ(detok.Flush(), "");
}

TEST_F(DetokenizerTest, LeadingSpaceIsDroppedAtTheStartOfTheText) {
  // As Decode does: with no visible prompt text, the generated text is the start of the text.
  const int32_t world = IdOf("\xE2\x96\x81world");
  EXPECT_EQ(Stream({}, {world}).all, "world");
  EXPECT_EQ(Stream({*tok().bos_id()}, {world}).all, "world");
  EXPECT_EQ(Stream({}, {world, world}).deltas, (std::vector<std::string>{"world", " world"}));
  // A lone "▁" at the start: sentencepiece drops only the first leading marker.
  const int32_t space = IdOf("\xE2\x96\x81");
  ASSERT_GE(space, 0);
  for (const std::vector<int32_t>& gen : std::vector<std::vector<int32_t>>{
           {space, world}, {space, space, world}, {*tok().eos_id(), space, world}}) {
    EXPECT_EQ(Stream({}, gen).all, Decode(gen));
  }
}

TEST_F(DetokenizerTest, ControlTokensInTheMiddleDoNotEatTheNextSpace) {
  // An EOS generated under ignore_eos decodes to nothing; the word after it keeps its space.
  const int32_t world = IdOf("\xE2\x96\x81world");
  const std::vector<int32_t> prompt = Encode("Hello");
  const Streamed s = Stream(prompt, {*tok().eos_id(), world, *tok().bos_id(), world});
  EXPECT_EQ(s.all, " world world");
  EXPECT_EQ(s.all, Decode(Concat(prompt, {*tok().eos_id(), world, *tok().bos_id(), world}))
                       .substr(Decode(prompt).size()));
}

TEST_F(DetokenizerTest, CharacterSplitOverByteTokensAppearsOnceAndWhole) {
  const std::vector<int32_t> prompt = Encode("it costs 5");
  EXPECT_THAT(Stream(prompt, ByteIds("€")).deltas, ElementsAre("", "", "€"));
  EXPECT_THAT(Stream(prompt, ByteIds("🙂")).deltas, ElementsAre("", "", "", "🙂"));
  EXPECT_THAT(Stream(prompt, ByteIds("日本")).deltas, ElementsAre("", "", "日", "", "", "本"));
  EXPECT_EQ(Stream(prompt, Concat(ByteIds("é"), Encode("the"))).deltas.front(), "");
  // Whatever the split, the streamed text has the character once.
  const Streamed s = Stream(prompt, Concat(ByteIds("€"), ByteIds("€")));
  EXPECT_EQ(s.all, "€€");
  EXPECT_EQ(s.flushed, "");
}

TEST_F(DetokenizerTest, UnfinishedCharacterNeverShowsAsReplacementWhileItCanComplete) {
  // Random valid characters spelled in bytes, mixed with whole pieces: the final text has no
  // U+FFFD, so no delta may have one either.
  std::mt19937 rng(7);
  const std::vector<int32_t> words = Encode("the cat reads a book");
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<int32_t> gen;
    for (int i = 0; i < 12; ++i) {
      const uint32_t kind = rng() % 4;
      if (kind == 0) {
        gen.push_back(words[rng() % words.size()]);
      } else {
        uint32_t cp;
        do {
          cp = kind == 1   ? 0x80 + rng() % 0x780
               : kind == 2 ? 0x800 + rng() % 0xF800
                           : 0x10000 + rng() % 0x100000;
        } while (cp >= 0xD800 && cp <= 0xDFFF);
        const std::vector<int32_t> bytes = ByteIds(Utf8Of(cp));
        gen.insert(gen.end(), bytes.begin(), bytes.end());
      }
    }
    const Streamed s = Stream(Encode("Hello"), gen);
    for (const std::string& delta : s.deltas) {
      ASSERT_EQ(delta.find(kReplacement), std::string::npos) << "trial " << trial;
    }
    EXPECT_EQ(s.all, Decode(Concat(Encode("Hello"), gen)).substr(5)) << "trial " << trial;
  }
}

TEST_F(DetokenizerTest, BytesThatCannotFormACharacterAreFinalAtOnce) {
  const std::vector<int32_t> prompt = Encode("Hello");
  // A stray continuation byte can never become part of a character: shown right away.
  EXPECT_THAT(Stream(prompt, ByteIds("\x80")).deltas, ElementsAre(kReplacement));
  // A lead byte waits; a whole piece after it settles it as invalid.
  EXPECT_THAT(Stream(prompt, {ByteId(0xE2), IdOf("\xE2\x96\x81world")}).deltas,
              ElementsAre("", absl::StrCat(kReplacement, " world")));
  // E0 80 can never be completed (overlong): both bytes are final when the 80 arrives.
  EXPECT_THAT(Stream(prompt, ByteIds("\xE0\x80")).deltas,
              ElementsAre("", absl::StrCat(kReplacement, kReplacement)));
  // A new lead byte ends the previous unfinished character.
  EXPECT_THAT(Stream(prompt, ByteIds("\xE2\x82\xE2\x82\xAC")).deltas,
              ElementsAre("", "", absl::StrCat(kReplacement, kReplacement), "", "€"));
}

TEST_F(DetokenizerTest, FlushReleasesAnUnfinishedCharacterAsReplacements) {
  IncrementalDetokenizer detok(tok(), Encode("Hello"));
  EXPECT_EQ(*detok.Push(ByteId(0xE2)), "");
  EXPECT_EQ(*detok.Push(ByteId(0x82)), "");
  EXPECT_EQ(detok.Flush(), Decode(ByteIds("\xE2\x82")));
  EXPECT_EQ(Decode(ByteIds("\xE2\x82")), absl::StrCat(kReplacement, kReplacement));
  EXPECT_EQ(detok.Flush(), "");  // a second Flush has nothing left
}

TEST_F(DetokenizerTest, PromptEndingInsideACharacterLetsTheOutputFinishIt) {
  // Given as ids, a prompt can stop inside "€"; the character then belongs to the output.
  const std::vector<int32_t> prompt = Concat(Encode("it costs 5"), ByteIds("\xE2\x82"));
  EXPECT_THAT(Stream(prompt, ByteIds("\xAC")).deltas, ElementsAre("€"));
  // Not finished after all: the prompt's bytes are final once a whole piece follows.
  EXPECT_EQ(Stream(prompt, Encode("the")).all, absl::StrCat(kReplacement, kReplacement, " the"));
  // Nothing generated: Flush releases them.
  EXPECT_EQ(Stream(prompt, {}).all, absl::StrCat(kReplacement, kReplacement));
  ExpectStreamMatchesDecode(prompt, ByteIds("\xAC"));
}

TEST_F(DetokenizerTest, StreamedEncodedTextEqualsItsDecoding) {
  for (const std::string text :
       {"Hello world, the cat reads a book.", "it costs 5€ in 日本 🙂",
        "naïve café — 東京 🦀!", "€€€ 🙂🙂 日本日本",
        "  two  spaces, then\ttabs\nand newlines", "🦀", "é"}) {
    SCOPED_TRACE(text);
    const std::vector<int32_t> ids = Encode(text);
    ASSERT_EQ(Decode(ids), text);
    // Every split into prompt and output, including splits inside a character's bytes.
    for (size_t split = 0; split <= ids.size(); ++split) {
      SCOPED_TRACE(absl::StrCat("prompt of ", split, " ids"));
      const std::vector<int32_t> prompt(ids.begin(), ids.begin() + split);
      const std::vector<int32_t> gen(ids.begin() + split, ids.end());
      ExpectStreamMatchesDecode(prompt, gen);
      if (split == 0) {
        EXPECT_EQ(Stream(prompt, gen).all, text);
      }
    }
  }
}

TEST_F(DetokenizerTest, StreamedRandomIdsEqualTheirDecoding) {
  // Uniform ids of this vocabulary are mostly byte pieces, so these sequences are full of
  // unfinished, invalid and completed characters, control tokens and lone "▁" pieces.
  std::mt19937 rng(1234);
  const int32_t vocab = tok().vocab_size();
  const std::vector<int32_t> text_ids = Encode("Hello world, the cat reads a book.");
  for (int trial = 0; trial < 2000; ++trial) {
    SCOPED_TRACE(absl::StrCat("trial ", trial));
    std::vector<int32_t> prompt;
    if (trial % 3 == 1) prompt = text_ids;
    const size_t prompt_extra = rng() % 6;
    for (size_t i = 0; i < prompt_extra; ++i) prompt.push_back(static_cast<int32_t>(rng() % vocab));
    std::vector<int32_t> gen;
    const size_t n = rng() % 40;
    for (size_t i = 0; i < n; ++i) {
      switch (rng() % 5) {
        case 0:
          gen.push_back(static_cast<int32_t>(rng() % 3));
          break;  // unk, bos, eos
        case 1:
          gen.push_back(text_ids[rng() % text_ids.size()]);
          break;
        default:
          gen.push_back(static_cast<int32_t>(rng() % vocab));
          break;
      }
    }
    ExpectStreamMatchesDecode(prompt, gen);
    if (prompt.empty()) {
      EXPECT_EQ(Stream(prompt, gen).all, Decode(gen));
    }
  }
}

TEST_F(DetokenizerTest, DecodesOnlyASmallWindowPerToken) {
  // A long prompt and a long output: the ids per Decode stay bounded (O(window), not O(length)).
  std::string long_text;
  for (int i = 0; i < 200; ++i)
    absl::StrAppend(&long_text, "the cat reads a book € 日本 🙂 ");
  const std::vector<int32_t> ids = Encode(long_text);
  ASSERT_GT(ids.size(), 2000u);
  const CountingTokenizer counting(tok());
  const std::vector<int32_t> prompt(ids.begin(), ids.begin() + ids.size() / 2);
  const std::vector<int32_t> gen(ids.begin() + ids.size() / 2, ids.end());
  const Streamed s = Stream(counting, prompt, gen);
  EXPECT_EQ(s.all, Decode(ids).substr(Decode(prompt).size()));
  EXPECT_LE(counting.max_decode_size(), 12u);
  EXPECT_LE(counting.decode_calls(), gen.size() + 8);  // at most one per token, plus setup
}

TEST_F(DetokenizerTest, OutOfRangeIdIsInvalidArgumentAndTheStreamGoesOn) {
  IncrementalDetokenizer detok(tok(), Encode("Hello"));
  EXPECT_EQ(*detok.Push(ByteId(0xE2)), "");
  for (const int32_t bad : {tok().vocab_size(), -1, 100000}) {
    absl::StatusOr<std::string> delta = detok.Push(bad);
    ASSERT_FALSE(delta.ok());
    EXPECT_EQ(delta.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(delta.status().message(), HasSubstr(absl::StrCat(bad)));
  }
  EXPECT_EQ(*detok.Push(ByteId(0x82)), "");
  EXPECT_EQ(*detok.Push(ByteId(0xAC)), "€");
  EXPECT_EQ(detok.num_generated(), 3u);
}

TEST_F(DetokenizerTest, BadPromptIdIsInvalidArgumentNamingIt) {
  IncrementalDetokenizer detok(tok(), {IdOf("\xE2\x96\x81world"), 777777});
  absl::StatusOr<std::string> delta = detok.Push(IdOf("\xE2\x96\x81world"));
  ASSERT_FALSE(delta.ok());
  EXPECT_EQ(delta.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(delta.status().message(), HasSubstr("777777"));
  EXPECT_THAT(delta.status().message(), HasSubstr("prompt"));
}

TEST_F(DetokenizerTest, PushAfterFlushIsFailedPrecondition) {
  IncrementalDetokenizer detok(tok(), Encode("Hello"));
  EXPECT_EQ(*detok.Push(IdOf("\xE2\x96\x81world")), " world");
  EXPECT_EQ(detok.Flush(), "");
  absl::StatusOr<std::string> delta = detok.Push(IdOf("\xE2\x96\x81world"));
  ASSERT_FALSE(delta.ok());
  EXPECT_EQ(delta.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(delta.status().message(), HasSubstr("Flush"));
}

}  // namespace
}  // namespace gsa
