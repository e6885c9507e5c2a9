#include "tests/testing/spm_fixture.h"

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace gsa::testing {

std::string SpmTestCorpus() {
  const std::vector<std::string> subjects = {"the cat",   "a dog",     "my friend", "the server",
                                             "the model", "the river", "a bird",    "hello world"};
  const std::vector<std::string> verbs = {"runs to", "jumps over", "reads",  "writes",
                                          "sees",    "likes",      "builds", "watches"};
  const std::vector<std::string> objects = {"the fence", "a book",       "the code", "fresh bread",
                                            "the world", "a tiny token", "the moon", "old letters"};
  // A fixed linear congruential walk: the corpus (and so the model) is the same everywhere.
  uint32_t state = 2024;
  auto pick = [&state](const std::vector<std::string>& words) -> const std::string& {
    state = state * 1664525u + 1013904223u;
    return words[(state >> 8) % words.size()];
  };
  std::string corpus;
  for (int i = 0; i < 600; ++i) {
    absl::StrAppend(&corpus, "Hello world, ", pick(subjects), " ", pick(verbs), " ", pick(objects),
                    ". ", pick(subjects), " ", pick(verbs), " ", pick(objects), ".\n");
  }
  // Rare enough to fall outside the character coverage: these go through byte fallback.
  absl::StrAppend(&corpus, "it costs 5€ in 日本 🙂\n");
  return corpus;
}

absl::StatusOr<std::string> TrainSentencePieceModel(const TempDir& dir, const std::string& corpus,
                                                    const SpmTrainOptions& options) {
  if (std::system("command -v spm_train > /dev/null 2>&1") != 0) {
    return absl::FailedPreconditionError(
        "spm_train (the sentencepiece trainer) is not on PATH; run deploy/install-deps.sh "
        "(Debian package `sentencepiece`)");
  }
  const std::string input = dir.File("corpus.txt");
  WriteFile(input, corpus);
  const std::string log = dir.File("spm_train.log");
  const std::string command =
      absl::StrCat("spm_train --input=", input, " --model_prefix=", dir.File("spm"),
                   " --vocab_size=", options.vocab_size, " --model_type=", options.model_type,
                   " --byte_fallback=true --character_coverage=", options.character_coverage,
                   " --normalization_rule_name=identity --remove_extra_whitespaces=false",
                   " --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 > ", log, " 2>&1");
  if (std::system(command.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("spm_train failed: ", command, "\n", ReadFile(log)));
  }
  return dir.File("spm.model");
}

void TrainedTokenizerTest::SetUpTestSuite() {
  dir_ = std::make_unique<TempDir>();
  absl::StatusOr<std::string> path = TrainSentencePieceModel(*dir_, SpmTestCorpus());
  if (!path.ok()) {
    setup_error_ = std::make_unique<std::string>(path.status().ToString());
    return;
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadSentencePieceTokenizer(*path);
  if (!tokenizer.ok()) {
    setup_error_ = std::make_unique<std::string>(tokenizer.status().ToString());
    return;
  }
  tokenizer_ = std::move(tokenizer).value();
}

void TrainedTokenizerTest::TearDownTestSuite() {
  tokenizer_.reset();
  setup_error_.reset();
  dir_.reset();
}

void TrainedTokenizerTest::SetUp() {
  if (setup_error_ != nullptr) FAIL() << *setup_error_;
  ASSERT_NE(tokenizer_, nullptr);
}

}  // namespace gsa::testing
