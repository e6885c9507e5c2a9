#include "server/generation_service.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "server/request_conversion.h"

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

GenerationService::GenerationService(const LoadedModel& model, Engine& engine, std::string backend_name)
    : model_(model), engine_(engine), backend_name_(std::move(backend_name)) {}

template <typename OnDelta>
grpc::Status GenerationService::Run(grpc::ServerContext* context, const v1::GenerateRequest& request,
                                    OnDelta on_delta) {
  InFlight guard(in_flight_);
  if (draining_) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is draining; retry on another replica");
  }
  absl::StatusOr<GenerateRequest> req = ToEngineRequest(
      request, model_.tokenizer.get(), model_.config.vocab_size, engine_.options().max_logprobs);
  if (!req.ok()) return ToGrpc(req.status());
  if (req->request_id.empty()) req->request_id = absl::StrCat("req-", next_id_++);
  // The client's deadline becomes the engine's, so an expired request frees its blocks.
  const auto deadline = context->deadline();
  if (deadline != std::chrono::system_clock::time_point::max()) {
    req->deadline = std::chrono::steady_clock::now() + (deadline - std::chrono::system_clock::now());
  }
  const std::string request_id = req->request_id;
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
  return Run(context, *request, [&](const std::string& id, const GenerationDelta& d) {
    v1::GenerateResponse r;
    r.set_request_id(id);
    AppendDelta(d, tok, r);
    return writer->Write(r);
  });
}

grpc::Status GenerationService::Complete(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                         v1::GenerateResponse* response) {
  const Tokenizer* tok = model_.tokenizer.get();
  return Run(context, *request, [&](const std::string& id, const GenerationDelta& d) {
    response->set_request_id(id);
    AppendDelta(d, tok, *response);
    return true;
  });
}

grpc::Status GenerationService::Tokenize(grpc::ServerContext*, const v1::TokenizeRequest* request,
                                         v1::TokenizeResponse* response) {
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

grpc::Status GenerationService::GetModelInfo(grpc::ServerContext*, const v1::GetModelInfoRequest*,
                                             v1::ModelInfo* r) {
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
