// Request limits of gsa-server: what the gRPC transport enforces (--max-request-bytes,
// --max-concurrent-streams) and the prompt-length check the Generation service makes
// (--max-prompt-tokens).
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>

#include <grpcpp/server_builder.h>

#include "absl/status/status.h"
#include "server/server_options.h"

namespace gsa {

// Sets the largest request message (larger ones get RESOURCE_EXHAUSTED from gRPC itself) and the
// HTTP/2 concurrent-stream limit per connection (further calls on that connection wait for a
// free stream) on `builder`.
void ApplyTransportLimits(const ServerOptions& options, grpc::ServerBuilder& builder);

// OK when a prompt of `prompt_tokens` tokens is within `max_prompt_tokens`; otherwise
// InvalidArgument naming the limit and the flag.
absl::Status CheckPromptTokens(int64_t prompt_tokens, int64_t max_prompt_tokens);

}  // namespace gsa
