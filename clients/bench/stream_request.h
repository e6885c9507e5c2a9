// One benchmark request over the streaming Generate RPC (gRPC sync API, one ClientContext per
// request), timed: time to first token, inter-token latencies, end-to-end latency, and the
// token counts from the final message's usage.
//
// Thread-safety: SendStreamingRequest may be called from many threads at once on one stub (gRPC
// stubs are thread-safe); BuildGenerateRequest and StatusCodeName are pure.
#pragma once

#include <cstdint>
#include <string>

#include "clients/bench/bench_options.h"
#include "clients/bench/request_record.h"
#include "clients/bench/workload.h"
#include "clients/retry_policy.h"
#include "grpcpp/support/status.h"
#include "gsa/v1/generation.grpc.pb.h"

namespace gsa::bench {

// The request for `item`: its prompt and max_tokens, the options' sampling (temperature; a seed
// of options.seed + index when temperature > 0, so sampled runs repeat), ignore_eos and
// attention; request_id `id_prefix` + index.
gsa::v1::GenerateRequest BuildGenerateRequest(const WorkItem& item, const BenchOptions& options,
                                              int64_t index, const std::string& id_prefix);

// Sends `request` and reads the stream to its end, with a deadline of `timeout_s` from now for
// the whole request. An attempt that fails before any response message with UNAVAILABLE or
// CANCELLED is sent again under `retry` (retry_policy.h; jitter seeded with `jitter_seed`); the
// record counts those retries and times the request from its first attempt (TTFT and E2E include
// the refused attempts and the waits). Never fails: errors land in the record (ok = false,
// status = the last attempt's code name). index and start_s are left for the caller.
RequestRecord SendStreamingRequest(gsa::v1::Generation::StubInterface& stub,
                                   const gsa::v1::GenerateRequest& request, double timeout_s,
                                   const RetryPolicy& retry, uint64_t jitter_seed);

// "OK", "CANCELLED", ..., "UNAUTHENTICATED"; "CODE_<n>" for codes outside the standard set.
std::string StatusCodeName(grpc::StatusCode code);

// "length", "stop", "eos", "cancelled", "error"; empty for UNSPECIFIED.
std::string FinishReasonName(gsa::v1::FinishReason reason);

}  // namespace gsa::bench
