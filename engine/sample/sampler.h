// Token sampling for one sequence from its logits row, with vLLM's semantics: penalties,
// temperature, top-k / top-p / min-p filtering and a seeded draw that is a pure function of
// (seed, step), so a request's tokens never depend on the batch it ran in or on preemption.
#pragma once

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "absl/types/span.h"
#include "engine/sample/sampling_params.h"

namespace gsa {

// The log-probability of one token under a distribution, plus the most likely alternatives.
struct TokenLogprob {
  int32_t token_id = 0;
  float logprob = 0.0f;
  // The N most likely (id, logprob), most likely first; equal logits: lower id first.
  std::vector<std::pair<int32_t, float>> top;
};

// log_softmax of raw model logits (before any penalty or temperature), as vLLM reports by
// default: `token`'s logprob and the `top_n` most likely tokens (fewer when vocab < top_n).
// Computed in double; NaN logits count as -inf. If the maximum logit is not finite (all -inf,
// or some +inf), the tokens equal to it share the probability equally. A `token` outside
// [0, vocab) gets logprob -inf. Allocates O(top_n); thread-safe (pure).
// REQUIRES: logits[0 … vocab) readable, 1 ≤ vocab ≤ INT32_MAX, top_n ≥ 0.
TokenLogprob RawLogprobs(const float* logits, int64_t vocab, int32_t token, int32_t top_n);

// The uniform in [0, 1) that decoding step `step` of a request seeded `seed` draws: a
// counter-based hash (splitmix64 finalizers) of (seed, step), 53 random bits. Pure function.
double SamplingUniform(uint64_t seed, uint64_t step);

struct SampleResult {
  int32_t token = 0;
  // RawLogprobs of `token` with params.logprobs alternatives; set iff params.return_logprobs.
  std::optional<TokenLogprob> logprob;
};

// Samples next tokens. Holds O(vocab) scratch reused across calls, so a call allocates only
// when the vocabulary grows (and for the logprob result); results never depend on earlier calls.
// Not thread-safe: the engine thread owns one Sampler (use one per thread otherwise).
class Sampler {
 public:
  Sampler() = default;
  Sampler(const Sampler&) = delete;
  Sampler& operator=(const Sampler&) = delete;

  // Samples one token for one sequence from its logits row. In order (all in double):
  //  1. repetition penalty, once per distinct token of prompt ∪ output: logit > 0 → logit / r,
  //     else logit · r;
  //  2. on output tokens: logit -= count · frequency_penalty + (count > 0) · presence_penalty;
  //  3. temperature < 1e-5 (vLLM's epsilon; 0 in practice): argmax, equal logits → lowest id,
  //     and steps 4-5 are skipped; else logit / temperature;
  //  4. filters under the total order (probability desc, id asc), each on the distribution the
  //     previous one left: top_k (keep the k first), top_p (keep the shortest prefix whose
  //     probability sums to ≥ top_p), min_p (drop tokens with prob < min_p · max prob);
  //  5. draw from the softmax of what is kept, by inverse CDF over ids ascending, with
  //     SamplingUniform(seed, step).
  // `prompt` / `output` are the sequence's tokens so far (ids outside [0, vocab) are ignored);
  // `step` is the number of tokens generated so far; `seed` the request's seed (its own or one
  // the engine drew). NaN logits count as -inf.
  // `vocab` may be shorter than the model's row: ids past it are as if their logit were -inf (the
  // engine passes the tokenizer's piece count for a model vocabulary padded past it).
  // REQUIRES: logits[0 … vocab) readable, 1 ≤ vocab ≤ INT32_MAX, params valid
  // (ValidateSamplingParams).
  SampleResult Sample(const float* logits, int64_t vocab, const SamplingParams& params,
                      uint64_t seed, absl::Span<const int32_t> prompt,
                      absl::Span<const int32_t> output, uint64_t step);

 private:
  // Resizes the scratch for `vocab`; marks_ and counts_ stay all zero between calls.
  void Reserve(int64_t vocab);
  // Steps 1-2 on scores_.
  void ApplyPenalties(const SamplingParams& params, absl::Span<const int32_t> prompt,
                      absl::Span<const int32_t> output);
  // Step 4: zeroes weights_ of filtered tokens.
  void Filter(const SamplingParams& params, int64_t vocab);
  // The length of the shortest prefix of the order, among the n tokens in order_[0 … n), whose
  // weight reaches top_p of theirs; rearranges order_[0 … n) so that prefix comes first.
  int64_t TopPPrefix(float top_p, int64_t n);
  // The total order of step 4 on token ids: score desc, then id asc.
  bool Before(int32_t a, int32_t b) const;

  std::vector<double> scores_;   // [vocab] penalized logits, then divided by temperature
  std::vector<double> weights_;  // [vocab] exp(score - max score); 0 once filtered out
  std::vector<int32_t> order_;   // [vocab] token ids, partitioned by the order (kept first)
  std::vector<int32_t> counts_;  // [vocab] output counts while penalizing; all 0 between calls
  std::vector<uint8_t> marks_;   // [vocab] "already penalized"; all 0 between calls
};

}  // namespace gsa
