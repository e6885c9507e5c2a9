#include "clients/bench/stream_request.h"

#include <chrono>
#include <memory>

#include "absl/strings/str_cat.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/sync_stream.h"

namespace gsa::bench {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// One attempt of `request`, recorded into `record` (timed from `sent`, the first attempt's send).
AttemptResult StreamOnce(gsa::v1::Generation::StubInterface& stub,
                         const gsa::v1::GenerateRequest& request,
                         std::chrono::system_clock::time_point deadline, Clock::time_point sent,
                         RequestRecord& record) {
  grpc::ClientContext context;
  context.set_deadline(deadline);
  std::unique_ptr<grpc::ClientReaderInterface<gsa::v1::GenerateResponse>> reader =
      stub.Generate(&context, request);
  gsa::v1::GenerateResponse msg;
  Clock::time_point last_tokens = sent;
  int64_t tokens_seen = 0;
  bool any_message = false;
  bool have_usage = false;
  gsa::v1::FinishReason finish = gsa::v1::FINISH_REASON_UNSPECIFIED;
  while (reader->Read(&msg)) {
    any_message = true;
    const Clock::time_point now = Clock::now();
    const int n = msg.token_ids_size();
    if (n > 0) {
      if (!record.ttft_s.has_value()) {
        record.ttft_s = Seconds(now - sent);
      } else {
        const double per_token = Seconds(now - last_tokens) / n;
        record.itl_s.insert(record.itl_s.end(), static_cast<size_t>(n), per_token);
      }
      last_tokens = now;
      tokens_seen += n;
    }
    if (msg.has_usage()) {
      have_usage = true;
      record.prompt_tokens = msg.usage().prompt_tokens();
      record.output_tokens = msg.usage().completion_tokens();
    }
    if (msg.finish_reason() != gsa::v1::FINISH_REASON_UNSPECIFIED) finish = msg.finish_reason();
  }
  const grpc::Status status = reader->Finish();
  record.e2e_s = Seconds(Clock::now() - sent);
  record.finish_reason = FinishReasonName(finish);
  if (!have_usage) {
    record.prompt_tokens = request.has_token_ids() ? request.token_ids().ids_size() : 0;
    record.output_tokens = tokens_seen;
  }
  if (!status.ok()) {
    record.ok = false;
    record.status = StatusCodeName(status.error_code());
    record.error = status.error_message();
  } else if (finish == gsa::v1::FINISH_REASON_ERROR) {
    record.ok = false;
    record.status = "FINISH_REASON_ERROR";
    record.error = "the stream ended with finish_reason ERROR";
  } else {
    record.ok = true;
    record.status = "OK";
  }
  return AttemptResult{status, any_message};
}

}  // namespace

gsa::v1::GenerateRequest BuildGenerateRequest(const WorkItem& item, const BenchOptions& options,
                                              int64_t index, const std::string& id_prefix) {
  gsa::v1::GenerateRequest req;
  req.set_request_id(absl::StrCat(id_prefix, index));
  if (item.is_text) {
    req.set_text(item.text);
  } else {
    req.mutable_token_ids()->mutable_ids()->Add(item.prompt_ids.begin(), item.prompt_ids.end());
  }
  req.mutable_sampling()->set_temperature(options.temperature);
  if (options.temperature > 0.0f) {
    req.mutable_sampling()->set_seed(options.seed + static_cast<uint64_t>(index));
  }
  req.mutable_stopping()->set_max_tokens(item.max_tokens);
  req.mutable_stopping()->set_ignore_eos(options.ignore_eos);
  req.set_attention(options.attention == AttentionMode::kDense ? gsa::v1::ATTENTION_DENSE
                                                               : gsa::v1::ATTENTION_DEFAULT);
  return req;
}

RequestRecord SendStreamingRequest(gsa::v1::Generation::StubInterface& stub,
                                   const gsa::v1::GenerateRequest& request, double timeout_s,
                                   const RetryPolicy& retry, uint64_t jitter_seed) {
  const std::chrono::system_clock::time_point deadline =
      std::chrono::system_clock::now() +
      std::chrono::duration_cast<std::chrono::system_clock::duration>(
          std::chrono::duration<double>(timeout_s));
  const Clock::time_point sent = Clock::now();
  RequestRecord record;
  const RetriedCall call = CallWithRetries(retry, deadline, jitter_seed, [&](int) {
    record = RequestRecord();
    return StreamOnce(stub, request, deadline, sent, record);
  });
  record.retries = call.retries;
  return record;
}

std::string StatusCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: break;
  }
  return absl::StrCat("CODE_", static_cast<int>(code));
}

std::string FinishReasonName(gsa::v1::FinishReason reason) {
  switch (reason) {
    case gsa::v1::FINISH_REASON_LENGTH: return "length";
    case gsa::v1::FINISH_REASON_STOP: return "stop";
    case gsa::v1::FINISH_REASON_EOS: return "eos";
    case gsa::v1::FINISH_REASON_CANCELLED: return "cancelled";
    case gsa::v1::FINISH_REASON_ERROR: return "error";
    default: break;
  }
  return "";
}

}  // namespace gsa::bench
