// Between the public API (gsa.v1 messages) and the engine's types: request validation and
// conversion, and filling responses from engine deltas. Pure functions, no gRPC server state.
#pragma once

#include <chrono>
#include <optional>

#include "absl/status/statusor.h"
#include "engine/engine.h"
#include "engine/model/tokenizer.h"
#include "gsa/v1/generation.pb.h"

namespace gsa {

// Validates an API request and converts it: the prompt (text through `tokenizer`, or ids), every
// sampling and stopping value, logprob counts, the attention enum and the attention-statistics flag. InvalidArgument naming the
// field for anything out of range; FailedPrecondition for text without a tokenizer. The engine
// checks what depends on its state (lengths against max_model_len and the cache) at Submit.
absl::StatusOr<GenerateRequest> ToEngineRequest(const v1::GenerateRequest& request,
                                                const Tokenizer* tokenizer, int64_t vocab_size,
                                                int32_t max_logprobs);

// Appends a delta to a response (token ids, text, logprobs, prompt logprobs; and finish reason,
// usage, timings and attention statistics (when asked for) when the delta is final). `tokenizer` may be null (no piece strings then).
void AppendDelta(const GenerationDelta& delta, const Tokenizer* tokenizer,
                 v1::GenerateResponse& response);

v1::FinishReason ToProto(FinishReason reason);

}  // namespace gsa
