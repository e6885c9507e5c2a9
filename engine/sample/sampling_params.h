// Per-request sampling and stopping parameters (the API's request fields, validated by the
// server before they reach the engine; ValidateSamplingParams is the one place the rules live).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace gsa {

struct SamplingParams {
  float temperature = 1.0f;          // 0: greedy (argmax); else softmax(logits / temperature)
  float top_p = 1.0f;                // (0, 1]: keep the smallest set with cumulative prob ≥ top_p
  int32_t top_k = 0;                 // 0: off; else keep the k most likely tokens
  float min_p = 0.0f;                // [0, 1]: drop tokens with prob < min_p · max prob
  float repetition_penalty = 1.0f;   // > 0; 1: off (applies to prompt and output tokens)
  float presence_penalty = 0.0f;     // [-2, 2]; applies to output tokens
  float frequency_penalty = 0.0f;    // [-2, 2]; applies to output tokens
  std::optional<uint64_t> seed;      // same seed, same output, whatever the batch
  int32_t logprobs = 0;              // top-N alternatives per generated token (0: only the token's own when requested)
  bool return_logprobs = false;      // include the sampled token's logprob (+ top-N)
};

struct StoppingParams {
  int32_t max_tokens = 16;                 // ≥ 1
  std::vector<std::string> stop;           // stop strings: matched on text, never emitted
  std::vector<int32_t> stop_token_ids;     // finish when one is generated (not emitted as text)
  bool ignore_eos = false;
};

// Checks ranges; InvalidArgument naming the field and its allowed range. `vocab_size` bounds
// stop_token_ids; `max_logprobs` bounds logprobs.
absl::Status ValidateSamplingParams(const SamplingParams& p, int32_t max_logprobs);
absl::Status ValidateStoppingParams(const StoppingParams& p, int64_t vocab_size);

}  // namespace gsa
