// The requests a benchmark sends: random token-id prompts of sampled lengths (any model works,
// with or without a tokenizer), or prompts read from a JSONL file.
//
// Pure functions apart from LoadPromptsFile (reads one file); safe to call from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "clients/bench/bench_options.h"

namespace gsa::bench {

// One request's prompt and output budget.
struct WorkItem {
  bool is_text = false;             // true: `text` is the prompt; false: `prompt_ids`
  std::string text;                 // tokenized by the server
  std::vector<int32_t> prompt_ids;
  int32_t max_tokens = 1;
};

// What the server allows, from its ModelInfo.
struct ModelLimits {
  int32_t vocab_size = 0;
  int32_t max_model_len = 0;           // 0: unknown (not checked)
  std::vector<int32_t> special_ids;    // never drawn into random prompts (BOS, EOS)
  bool has_tokenizer = false;
};

// One line of a prompts file; max_tokens 0 means "not given" (the caller's default applies).
struct PromptLine {
  WorkItem item;
  int64_t line_number = 0;  // 1-based, for error messages
};

// `n` random prompts: lengths from the --input-len / --output-len distributions, token ids
// uniform over the vocabulary without the special ids. Seeded by options.seed. InvalidArgument
// naming the flags when a prompt + output would not fit the server's max_model_len.
absl::StatusOr<std::vector<WorkItem>> RandomWorkload(const BenchOptions& options,
                                                     const ModelLimits& limits, int64_t n);

// Parses JSONL text: each non-blank line an object with "prompt" (string) or "prompt_ids"
// (array of ints), and optionally "max_tokens" (int ≥ 1). `source` names the file in errors
// ("prompts.jsonl:3: ..."). InvalidArgument when a line is malformed or no line holds a prompt.
absl::StatusOr<std::vector<PromptLine>> ParsePromptsJsonl(const std::string& contents,
                                                          const std::string& source);
// Reads and parses `path`; NotFound when it cannot be read.
absl::StatusOr<std::vector<PromptLine>> LoadPromptsFile(const std::string& path);

// `n` requests from the file's lines, in order, cycling. Lines without max_tokens get
// `default_max_tokens`. Checks each prompt against `limits` (token ids in the vocabulary, length
// + max_tokens within max_model_len; text only on a model with a tokenizer): InvalidArgument
// naming the line, or FailedPrecondition for text prompts on a model without a tokenizer.
absl::StatusOr<std::vector<WorkItem>> WorkloadFromPrompts(const std::vector<PromptLine>& lines,
                                                          const std::string& source, int64_t n,
                                                          int32_t default_max_tokens,
                                                          const ModelLimits& limits);

}  // namespace gsa::bench
