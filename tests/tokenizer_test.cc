// Tokenizer over a sentencepiece model trained here (spm_train on a small generated corpus):
// round trips, byte fallback, and the errors a server relies on (missing file, garbage file,
// out-of-range ids), each naming what is wrong.
#include "engine/model/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/testing/test_support.h"

namespace gsa {
namespace {

using ::testing::HasSubstr;

// A few hundred varied lines: ASCII words, accented Latin, CJK and emoji, so the trained model
// has multi-byte pieces; a vocabulary of 400 leaves the rarer characters to byte fallback.
std::string MakeCorpus() {
  const std::vector<std::string> subjects = {"the cat",    "a dog",          "my friend",
                                             "the old man", "our teacher",   "this program",
                                             "the server", "every model",    "a small bird",
                                             "the river",  "la señora",      "el niño"};
  const std::vector<std::string> verbs = {"runs to", "jumps over", "reads", "writes", "sees",
                                          "likes",   "drinks",     "builds", "remembers",
                                          "watches", "visits"};
  const std::vector<std::string> objects = {
      "the fence",  "a book",          "the code",    "coffee at the café", "the mountains of 日本",
      "a tiny token", "the moon 🌙",  "fresh bread", "the naïve plan",     "old letters",
      "東京 and 大阪", "a crème brûlée", "42 apples",   "the über-fast GPU"};
  std::string corpus;
  // A fixed linear congruential walk instead of <random>: the corpus must not depend on the
  // standard library's distribution implementations.
  uint32_t state = 12345;
  auto next = [&state](size_t n) {
    state = state * 1664525u + 1013904223u;
    return static_cast<size_t>((state >> 8) % n);
  };
  for (int i = 0; i < 400; ++i) {
    absl::StrAppend(&corpus, subjects[next(subjects.size())], " ", verbs[next(verbs.size())], " ",
                    objects[next(objects.size())], ", and ", subjects[next(subjects.size())], " ",
                    verbs[next(verbs.size())], " ", objects[next(objects.size())], ". 🙂 ", i,
                    "\n");
  }
  return corpus;
}

class TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = std::make_unique<gsa::testing::TempDir>();
    if (std::system("command -v spm_train > /dev/null 2>&1") != 0) {
      setup_error_ = new_string(
          "spm_train (the sentencepiece trainer) is not on PATH; run deploy/install-deps.sh "
          "(Debian package `sentencepiece`)");
      return;
    }
    const std::string corpus = dir_->File("corpus.txt");
    gsa::testing::WriteFile(corpus, MakeCorpus());
    // identity normalisation and kept whitespace make Decode(Encode(text)) == text exactly.
    const std::string log = dir_->File("spm_train.log");
    const std::string command = absl::StrCat(
        "spm_train --input=", corpus, " --model_prefix=", dir_->File("spm"),
        " --vocab_size=400 --model_type=bpe --byte_fallback=true --character_coverage=1.0",
        " --normalization_rule_name=identity --remove_extra_whitespaces=false",
        " --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 > ", log, " 2>&1");
    if (std::system(command.c_str()) != 0) {
      setup_error_ = new_string(absl::StrCat("spm_train failed: ", command, "\n",
                                             gsa::testing::ReadFile(log)));
      return;
    }
    model_path_ = new_string(dir_->File("spm.model"));
  }

  static void TearDownTestSuite() {
    dir_.reset();
    setup_error_.reset();
    model_path_.reset();
  }

  void SetUp() override {
    if (setup_error_ != nullptr) FAIL() << *setup_error_;
    ASSERT_NE(model_path_, nullptr);
    auto tokenizer = LoadSentencePieceTokenizer(*model_path_);
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = std::move(tokenizer).value();
  }

  static std::unique_ptr<std::string> new_string(std::string s) {
    return std::make_unique<std::string>(std::move(s));
  }

  static std::string Roundtrip(const Tokenizer& t, const std::string& text) {
    auto ids = t.Encode(text);
    if (!ids.ok()) return absl::StrCat("encode failed: ", ids.status().ToString());
    auto back = t.Decode(*ids);
    if (!back.ok()) return absl::StrCat("decode failed: ", back.status().ToString());
    return *back;
  }

  // Shared by every test in the suite: training takes a moment, and the model is read-only.
  static inline std::unique_ptr<gsa::testing::TempDir> dir_;
  static inline std::unique_ptr<std::string> setup_error_;
  static inline std::unique_ptr<std::string> model_path_;

  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_F(TokenizerTest, EncodeDecodeRoundTripsText) {
  for (const std::string text :
       {"the cat reads a book", "Coffee at the café in 日本 🌙", "el niño visits 東京 and 大阪",
        "unseen words: zebra quokka xylophone", "two  spaces and\ttabs", "🦀 crabs are new here",
        "42 apples, 7 pears."}) {
    EXPECT_EQ(Roundtrip(*tokenizer_, text), text);
  }
}

TEST_F(TokenizerTest, EncodedIdsAreInsideTheVocabulary) {
  EXPECT_EQ(tokenizer_->vocab_size(), 400);
  auto ids = tokenizer_->Encode("the über-fast GPU drinks coffee at the café 🙂 ✨ Ωmega");
  ASSERT_TRUE(ids.ok()) << ids.status();
  ASSERT_FALSE(ids->empty());
  for (const int32_t id : *ids) {
    EXPECT_GE(id, 0);
    EXPECT_LT(id, tokenizer_->vocab_size());
  }
}

TEST_F(TokenizerTest, EmptyTextEncodesToNoIds) {
  auto ids = tokenizer_->Encode("");
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_TRUE(ids->empty());
}

TEST_F(TokenizerTest, UnseenCharacterFallsBackToBytePieces) {
  // 🦀 (U+1F980, F0 9F A6 80) is not in the corpus, so it can only be spelled in bytes.
  auto ids = tokenizer_->Encode("🦀");
  ASSERT_TRUE(ids.ok()) << ids.status();
  std::vector<std::string> pieces;
  for (const int32_t id : *ids) {
    auto piece = tokenizer_->IdToPiece(id);
    ASSERT_TRUE(piece.ok()) << piece.status();
    pieces.push_back(*piece);
  }
  // A leading "▁" piece may come first (sentencepiece's dummy prefix); the bytes follow.
  ASSERT_GE(pieces.size(), 4u);
  const std::vector<std::string> bytes(pieces.end() - 4, pieces.end());
  EXPECT_THAT(bytes, ::testing::ElementsAre("<0xF0>", "<0x9F>", "<0xA6>", "<0x80>"));
  auto text = tokenizer_->Decode(*ids);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "🦀");
}

TEST_F(TokenizerTest, IdToPieceShowsWordPieces) {
  auto ids = tokenizer_->Encode("the");
  ASSERT_TRUE(ids.ok()) << ids.status();
  std::string joined;
  for (const int32_t id : *ids) {
    auto piece = tokenizer_->IdToPiece(id);
    ASSERT_TRUE(piece.ok()) << piece.status();
    joined += *piece;
  }
  EXPECT_EQ(joined, "\xE2\x96\x81the");  // "▁the": the leading-space marker, then the word
}

TEST_F(TokenizerTest, BosAndEosComeFromTheModel) {
  ASSERT_TRUE(tokenizer_->bos_id().has_value());
  ASSERT_TRUE(tokenizer_->eos_id().has_value());
  EXPECT_EQ(*tokenizer_->bos_id(), 1);
  EXPECT_EQ(*tokenizer_->eos_id(), 2);
  EXPECT_EQ(*tokenizer_->IdToPiece(1), "<s>");
  EXPECT_EQ(*tokenizer_->IdToPiece(2), "</s>");
  // Control tokens decode to nothing, so a generated EOS never shows up in the text.
  auto ids = tokenizer_->Encode("the cat");
  ASSERT_TRUE(ids.ok());
  std::vector<int32_t> with_controls = {1};
  with_controls.insert(with_controls.end(), ids->begin(), ids->end());
  with_controls.push_back(2);
  EXPECT_EQ(*tokenizer_->Decode(with_controls), "the cat");
}

TEST_F(TokenizerTest, OutOfRangeIdIsInvalidArgumentNamingIt) {
  auto piece = tokenizer_->IdToPiece(400);
  ASSERT_FALSE(piece.ok());
  EXPECT_EQ(piece.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(piece.status().message(), HasSubstr("400"));

  auto negative = tokenizer_->IdToPiece(-3);
  ASSERT_FALSE(negative.ok());
  EXPECT_THAT(negative.status().message(), HasSubstr("-3"));

  auto text = tokenizer_->Decode({5, 6, 123456});
  ASSERT_FALSE(text.ok());
  EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(text.status().message(), HasSubstr("123456"));
  EXPECT_THAT(text.status().message(), HasSubstr("400"));  // the vocabulary size
}

TEST(TokenizerLoad, MissingFileIsNotFoundNamingThePath) {
  gsa::testing::TempDir dir;
  const std::string path = dir.File("no-such.model");
  auto t = LoadSentencePieceTokenizer(path);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(t.status().message(), HasSubstr(path));
}

TEST(TokenizerLoad, GarbageFileIsInvalidArgumentNamingThePath) {
  gsa::testing::TempDir dir;
  for (const std::string& bytes : {std::string("this is not a sentencepiece model\n"),
                                  std::string(), std::string("\x0a\xff\xff\xff\xff\x0f", 6)}) {
    const std::string path = dir.File("garbage.model");
    gsa::testing::WriteFile(path, bytes);
    auto t = LoadSentencePieceTokenizer(path);
    ASSERT_FALSE(t.ok()) << "accepted " << bytes.size() << " bytes of garbage";
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(t.status().message(), HasSubstr(path));
  }
}

TEST(TokenizerLoad, DirectoryIsNotAModel) {
  gsa::testing::TempDir dir;
  auto t = LoadSentencePieceTokenizer(dir.path());
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr(dir.path()));
}

}  // namespace
}  // namespace gsa
