// A small sentencepiece model trained for a test: spm_train (Debian package `sentencepiece`) on a
// generated corpus in a temporary directory. BPE with byte fallback and a character coverage
// below 1, so the corpus' rare characters ("€", "日本", emoji) and every unseen one are spelled
// in byte pieces (<0xE2><0x82><0xAC>); identity normalisation and kept whitespace, so that
// Decode(Encode(text)) == text.
//
// Thread-safety: the functions are independent; run them from one thread per directory.
#pragma once

#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "absl/status/statusor.h"
#include "engine/model/tokenizer.h"
#include "tests/testing/test_support.h"

namespace gsa::testing {

struct SpmTrainOptions {
  int vocab_size = 320;  // 256 byte pieces + 3 control pieces + the corpus' characters + merges
  std::string model_type = "bpe";
  double character_coverage = 0.9995;
};

// English-like lines over a small alphabet ("Hello world, the cat reads a book. ..."), so that
// pieces such as "▁world" and "▁the" exist, plus one line with "€", "日本" and "🙂".
std::string SpmTestCorpus();

// Trains on `corpus` in `dir` and returns the path of the .model file. FailedPrecondition naming
// deploy/install-deps.sh when spm_train is not installed; Internal with spm_train's log when
// training fails.
absl::StatusOr<std::string> TrainSentencePieceModel(const TempDir& dir, const std::string& corpus,
                                                    const SpmTrainOptions& options = {});

// A test suite fixture holding one tokenizer trained (once per suite) on SpmTestCorpus().
// Training or loading problems fail every test of the suite with the reason.
class TrainedTokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite();
  static void TearDownTestSuite();
  void SetUp() override;

  static inline std::unique_ptr<TempDir> dir_;
  static inline std::unique_ptr<std::string> setup_error_;
  static inline std::unique_ptr<Tokenizer> tokenizer_;
};

}  // namespace gsa::testing
