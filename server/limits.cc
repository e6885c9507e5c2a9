#include "server/limits.h"

#include <algorithm>
#include <climits>

#include "absl/strings/str_cat.h"

namespace gsa {

void ApplyTransportLimits(const ServerOptions& options, grpc::ServerBuilder& builder) {
  builder.SetMaxReceiveMessageSize(static_cast<int>(std::min<int64_t>(options.max_request_bytes, INT_MAX)));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             static_cast<int>(std::min<int64_t>(options.max_concurrent_streams, INT_MAX)));
}

absl::Status CheckPromptTokens(int64_t prompt_tokens, int64_t max_prompt_tokens) {
  if (prompt_tokens <= max_prompt_tokens) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("prompt: ", prompt_tokens,
                                                 " tokens, over this server's limit of ", max_prompt_tokens,
                                                 " (--max-prompt-tokens); shorten the prompt"));
}

}  // namespace gsa
