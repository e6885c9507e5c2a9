#include "server/generation_service.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "server/limits.h"
#include "server/request_conversion.h"
#include "server/security.h"

namespace gsa {
namespace {

using namespace std::chrono_literals;

// Counts a call as in flight for its lifetime (for draining).
class InFlight {
 public:
  explicit InFlight(std::atomic<int64_t>& n) : n_(n) { ++n_; }
  ~InFlight() { --n_; }
  InFlight(const InFlight&) = delete;
  InFlight& operator=(const InFlight&) = delete;

 private:
  std::atomic<int64_t>& n_;
};

}  // namespace

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

void GenerationService::SetRequestPolicy(const ApiKeys* api_keys, int64_t max_prompt_tokens) {
  api_keys_ = api_keys;
  max_prompt_tokens_ = max_prompt_tokens;
}

grpc::Status GenerationService::Authenticate(const grpc::ServerContext& context) const {
  return api_keys_ == nullptr ? grpc::Status::OK : api_keys_->Check(context.client_metadata());
}

GenerationService::GenerationService(const LoadedModel& model, Engine& engine, std::string backend_name,
                                     ServerMetrics& metrics, JsonLog& log)
    : model_(model), engine_(engine), backend_name_(std::move(backend_name)), metrics_(metrics), log_(log) {}

namespace {

std::string CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "ok";
    case grpc::StatusCode::CANCELLED: return "cancelled";
    case grpc::StatusCode::INVALID_ARGUMENT: return "invalid_argument";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "deadline_exceeded";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "resource_exhausted";
    case grpc::StatusCode::FAILED_PRECONDITION: return "failed_precondition";
    case grpc::StatusCode::UNAVAILABLE: return "unavailable";
    case grpc::StatusCode::UNAUTHENTICATED: return "unauthenticated";
    case grpc::StatusCode::INTERNAL: return "internal";
    default: return absl::StrCat("code_", static_cast<int>(code));
  }
}

}  // namespace

template <typename OnDelta>
grpc::Status GenerationService::Serve(grpc::ServerContext* context, const v1::GenerateRequest& request,
                                      OnDelta on_delta) {
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  std::optional<Clock::time_point> last_token;
  bool first = true;
  // Latencies as the client sees them: measured where the server hands each delta to gRPC.
  auto timed = [&](const std::string& id, const GenerationDelta& d) {
    if (!d.token_ids.empty()) {
      const Clock::time_point now = Clock::now();
      if (first) {
        metrics_.ObserveTimeToFirstToken(std::chrono::duration<double>(now - start).count());
        first = false;
      } else if (last_token) {
        const double gap = std::chrono::duration<double>(now - *last_token).count();
        for (size_t i = 0; i < d.token_ids.size(); ++i) {
          metrics_.ObserveInterTokenLatency(gap / static_cast<double>(d.token_ids.size()));
        }
      }
      last_token = now;
    }
    return on_delta(id, d);
  };
  std::string request_id = request.request_id();
  GenerationDelta final_delta;
  grpc::Status status = Run(context, request, timed, request_id, final_delta);
  const double e2e = std::chrono::duration<double>(Clock::now() - start).count();
  metrics_.RecordRequest(CodeName(status.error_code()));
  nlohmann::json fields = {{"request_id", request_id}, {"outcome", CodeName(status.error_code())},
                           {"e2e_ms", e2e * 1e3}};
  if (status.ok()) {
    metrics_.ObserveEndToEnd(e2e);
    fields["finish_reason"] = ToString(final_delta.finish_reason);
    fields["prompt_tokens"] = final_delta.usage.prompt_tokens;
    fields["completion_tokens"] = final_delta.usage.completion_tokens;
    fields["cached_tokens"] = final_delta.usage.cached_tokens;
    fields["ttft_ms"] = final_delta.timings.first_token_s * 1e3;
    fields["queued_ms"] = final_delta.timings.queued_s * 1e3;
    log_.Info("request_finished", std::move(fields));
  } else {
    fields["error"] = status.error_message();
    log_.Warn("request_failed", std::move(fields));
  }
  return status;
}

template <typename OnDelta>
grpc::Status GenerationService::Run(grpc::ServerContext* context, const v1::GenerateRequest& request,
                                    OnDelta on_delta, std::string& request_id_out,
                                    GenerationDelta& final_delta) {
  if (grpc::Status auth = Authenticate(*context); !auth.ok()) return auth;
  InFlight guard(in_flight_);
  if (draining_) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is draining; retry on another replica");
  }
  absl::StatusOr<GenerateRequest> req = ToEngineRequest(
      request, model_.tokenizer.get(), model_.config.vocab_size, engine_.options().max_logprobs);
  if (!req.ok()) return ToGrpc(req.status());
  const int64_t max_prompt = max_prompt_tokens_ > 0 ? max_prompt_tokens_ : engine_.max_model_len();
  if (absl::Status s = CheckPromptTokens(static_cast<int64_t>(req->prompt.size()), max_prompt); !s.ok()) {
    return ToGrpc(s);
  }
  if (req->request_id.empty()) req->request_id = absl::StrCat("req-", next_id_++);
  // The client's deadline becomes the engine's, so an expired request frees its blocks.
  const auto deadline = context->deadline();
  if (deadline != std::chrono::system_clock::time_point::max()) {
    req->deadline = std::chrono::steady_clock::now() + (deadline - std::chrono::system_clock::now());
  }
  const std::string request_id = req->request_id;
  request_id_out = request_id;
  absl::StatusOr<std::shared_ptr<RequestStream>> stream = engine_.Submit(std::move(*req));
  if (!stream.ok()) return ToGrpc(stream.status());

  for (;;) {
    std::optional<GenerationDelta> d = (*stream)->Next(50ms);
    if (context->IsCancelled()) {
      engine_.Cancel((*stream)->id());
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the call");
    }
    if (!d) continue;
    if (d->finished && d->finish_reason == FinishReason::kError) {
      return grpc::Status(grpc::StatusCode::INTERNAL, absl::StrCat("request ", request_id, " failed: ", d->error));
    }
    if (d->finished && d->finish_reason == FinishReason::kCancelled) {
      if (d->error.find("deadline") != std::string::npos) {
        return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "deadline exceeded");
      }
      return grpc::Status(grpc::StatusCode::CANCELLED, d->error);
    }
    const bool finished = d->finished;
    if (finished) {
      final_delta.finish_reason = d->finish_reason;
      final_delta.usage = d->usage;
      final_delta.timings = d->timings;
    }
    if (!on_delta(request_id, *d)) {
      engine_.Cancel((*stream)->id());
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
    }
    if (finished) return grpc::Status::OK;
  }
}

grpc::Status GenerationService::Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                         grpc::ServerWriter<v1::GenerateResponse>* writer) {
  const Tokenizer* tok = model_.tokenizer.get();
  return Serve(context, *request, [&](const std::string& id, const GenerationDelta& d) {
    v1::GenerateResponse r;
    r.set_request_id(id);
    AppendDelta(d, tok, r);
    return writer->Write(r);
  });
}

grpc::Status GenerationService::Complete(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                         v1::GenerateResponse* response) {
  const Tokenizer* tok = model_.tokenizer.get();
  return Serve(context, *request, [&](const std::string& id, const GenerationDelta& d) {
    response->set_request_id(id);
    AppendDelta(d, tok, *response);
    return true;
  });
}

grpc::Status GenerationService::Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                                         v1::TokenizeResponse* response) {
  if (grpc::Status auth = Authenticate(*context); !auth.ok()) return auth;
  absl::StatusOr<const Tokenizer*> tok = model_.RequireTokenizer();
  if (!tok.ok()) return ToGrpc(tok.status());
  absl::StatusOr<std::vector<int32_t>> ids = (*tok)->Encode(request->text());
  if (!ids.ok()) return ToGrpc(ids.status());
  for (int32_t id : *ids) {
    response->add_token_ids(id);
    auto piece = (*tok)->IdToPiece(id);
    response->add_tokens(piece.ok() ? *piece : "");
  }
  return grpc::Status::OK;
}

grpc::Status GenerationService::GetModelInfo(grpc::ServerContext* context, const v1::GetModelInfoRequest*,
                                             v1::ModelInfo* r) {
  if (grpc::Status auth = Authenticate(*context); !auth.ok()) return auth;
  const ModelConfig& c = model_.config;
  r->set_model_dir(model_.dir);
  r->set_backend(backend_name_);
  r->set_vocab_size(static_cast<int32_t>(c.vocab_size));
  r->set_max_model_len(static_cast<int32_t>(engine_.max_model_len()));
  r->set_n_layers(static_cast<int32_t>(c.n_layers));
  r->set_d_model(static_cast<int32_t>(c.d_model));
  r->set_n_heads(static_cast<int32_t>(c.n_heads));
  r->set_n_kv_heads(static_cast<int32_t>(c.n_kv_heads));
  r->set_d_head(static_cast<int32_t>(c.d_head));
  r->set_indexer_activation(ToString(c.indexer_activation));
  r->set_k_base(static_cast<int32_t>(c.k_base));
  r->set_k_min(static_cast<int32_t>(c.k_min));
  r->set_k_max(static_cast<int32_t>(c.k_max));
  r->set_adaptive_k(c.use_adaptive_k);
  r->set_adaptive_k_method(ToString(c.adaptive_k_method));
  r->set_value_gate(c.use_value_gate);
  r->set_output_gate(c.use_output_gate);
  r->set_default_attention(engine_.options().attention == AttentionMode::kDense ? v1::ATTENTION_DENSE
                                                                                 : v1::ATTENTION_DEFAULT);
  r->set_has_tokenizer(model_.tokenizer != nullptr);
  if (c.bos_token_id) {
    r->set_bos_token_id(static_cast<int32_t>(*c.bos_token_id));
  } else if (model_.tokenizer && model_.tokenizer->bos_id()) {
    r->set_bos_token_id(*model_.tokenizer->bos_id());
  }
  if (c.eos_token_id) {
    r->set_eos_token_id(static_cast<int32_t>(*c.eos_token_id));
  } else if (model_.tokenizer && model_.tokenizer->eos_id()) {
    r->set_eos_token_id(*model_.tokenizer->eos_id());
  }
  r->set_block_size(static_cast<int32_t>(engine_.options().block_size));
  r->set_cache_tokens(engine_.num_cache_blocks() * engine_.options().block_size);
  return grpc::Status::OK;
}

}  // namespace gsa
