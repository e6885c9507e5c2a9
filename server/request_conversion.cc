#include "server/request_conversion.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace gsa {
namespace {

// The pieces of ids, for readable logprobs; empty when there is no tokenizer.
std::string Piece(const Tokenizer* tokenizer, int32_t id) {
  if (tokenizer == nullptr) return "";
  auto p = tokenizer->IdToPiece(id);
  return p.ok() ? *p : "";
}

void Fill(const AttentionStats& in, v1::AttentionStats& out) {
  out.set_positions(static_cast<uint64_t>(in.positions));
  out.set_mean_selected_k(in.mean_selected_k);
  out.set_first_token_share(in.first_token_share);
  if (in.value_gate_mean) out.set_value_gate_mean(*in.value_gate_mean);
  if (in.output_gate_mean) out.set_output_gate_mean(*in.output_gate_mean);
  for (const LayerAttentionStats& l : in.layers) {
    v1::LayerAttentionStats* o = out.add_layers();
    o->set_mean_selected_k(l.mean_selected_k);
    o->set_first_token_share(l.first_token_share);
    if (l.value_gate_mean) o->set_value_gate_mean(*l.value_gate_mean);
    if (l.output_gate_mean) o->set_output_gate_mean(*l.output_gate_mean);
  }
}

void Fill(const TokenLogprob& in, const Tokenizer* tokenizer, v1::TokenLogprob& out) {
  out.set_token_id(in.token_id);
  out.set_logprob(in.logprob);
  for (const auto& [id, lp] : in.top) {
    v1::TopLogprob* t = out.add_top_logprobs();
    t->set_token_id(id);
    t->set_logprob(lp);
    t->set_token(Piece(tokenizer, id));
  }
}

}  // namespace

v1::FinishReason ToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength: return v1::FINISH_REASON_LENGTH;
    case FinishReason::kStop: return v1::FINISH_REASON_STOP;
    case FinishReason::kEos: return v1::FINISH_REASON_EOS;
    case FinishReason::kCancelled: return v1::FINISH_REASON_CANCELLED;
    case FinishReason::kError: return v1::FINISH_REASON_ERROR;
    default: return v1::FINISH_REASON_UNSPECIFIED;
  }
}

absl::StatusOr<GenerateRequest> ToEngineRequest(const v1::GenerateRequest& in,
                                                const Tokenizer* tokenizer, int64_t vocab_size,
                                                int32_t max_logprobs) {
  GenerateRequest out;
  out.request_id = in.request_id();
  switch (in.prompt_case()) {
    case v1::GenerateRequest::kText: {
      if (tokenizer == nullptr) {
        return absl::FailedPreconditionError(
            "this model has no tokenizer, so text prompts cannot be used; send token_ids instead");
      }
      if (in.text().empty()) return absl::InvalidArgumentError("prompt text is empty");
      auto ids = tokenizer->Encode(in.text());
      if (!ids.ok()) return ids.status();
      out.prompt = std::move(*ids);
      if (tokenizer->bos_id()) out.prompt.insert(out.prompt.begin(), *tokenizer->bos_id());
      break;
    }
    case v1::GenerateRequest::kTokenIds:
      out.prompt.assign(in.token_ids().ids().begin(), in.token_ids().ids().end());
      if (out.prompt.empty()) return absl::InvalidArgumentError("prompt token_ids is empty");
      break;
    default:
      return absl::InvalidArgumentError("no prompt: set either text or token_ids");
  }
  for (size_t i = 0; i < out.prompt.size(); ++i) {
    if (out.prompt[i] < 0 || out.prompt[i] >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token_ids[", i, "] = ", out.prompt[i],
                                                     " is outside the vocabulary [0, ", vocab_size, ")"));
    }
  }

  const v1::SamplingParams& s = in.sampling();
  if (s.has_temperature()) out.sampling.temperature = s.temperature();
  if (s.has_top_p()) out.sampling.top_p = s.top_p();
  if (s.has_top_k()) out.sampling.top_k = s.top_k();
  if (s.has_min_p()) out.sampling.min_p = s.min_p();
  if (s.has_repetition_penalty()) out.sampling.repetition_penalty = s.repetition_penalty();
  if (s.has_presence_penalty()) out.sampling.presence_penalty = s.presence_penalty();
  if (s.has_frequency_penalty()) out.sampling.frequency_penalty = s.frequency_penalty();
  if (s.has_seed()) out.sampling.seed = s.seed();
  if (in.has_logprobs()) {
    out.sampling.return_logprobs = true;
    out.sampling.logprobs = in.logprobs();
  }
  if (auto st = ValidateSamplingParams(out.sampling, max_logprobs); !st.ok()) return st;

  const v1::StoppingParams& p = in.stopping();
  if (p.has_max_tokens()) out.stopping.max_tokens = p.max_tokens();
  out.stopping.stop.assign(p.stop().begin(), p.stop().end());
  out.stopping.stop_token_ids.assign(p.stop_token_ids().begin(), p.stop_token_ids().end());
  out.stopping.ignore_eos = p.ignore_eos();
  if (auto st = ValidateStoppingParams(out.stopping, vocab_size); !st.ok()) return st;
  if (!out.stopping.stop.empty() && tokenizer == nullptr) {
    return absl::FailedPreconditionError(
        "stop strings need a tokenizer and this model has none; use stop_token_ids");
  }

  if (in.has_prompt_logprobs()) {
    if (in.prompt_logprobs() < 0 || in.prompt_logprobs() > max_logprobs) {
      return absl::InvalidArgumentError(absl::StrCat("prompt_logprobs ", in.prompt_logprobs(),
                                                     " is outside [0, ", max_logprobs, "]"));
    }
    out.prompt_logprobs = in.prompt_logprobs();
  }
  out.attention_stats = in.attention_stats();
  switch (in.attention()) {
    case v1::ATTENTION_DEFAULT: break;  // the engine's default
    case v1::ATTENTION_DENSE: out.attention = AttentionMode::kDense; break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "attention ", static_cast<int>(in.attention()),
          " is not a known value; use ATTENTION_DEFAULT (0) or ATTENTION_DENSE (1)"));
  }
  return out;
}

void AppendDelta(const GenerationDelta& d, const Tokenizer* tokenizer, v1::GenerateResponse& r) {
  for (int32_t id : d.token_ids) r.add_token_ids(id);
  r.mutable_text()->append(d.text);
  for (const TokenLogprob& l : d.logprobs) Fill(l, tokenizer, *r.add_logprobs());
  if (d.prompt_logprobs) {
    for (const auto& e : *d.prompt_logprobs) {
      v1::TokenLogprob* out = r.add_prompt_logprobs();
      if (e) Fill(*e, tokenizer, *out);
    }
  }
  if (d.finished) {
    r.set_finish_reason(ToProto(d.finish_reason));
    r.mutable_usage()->set_prompt_tokens(static_cast<int32_t>(d.usage.prompt_tokens));
    r.mutable_usage()->set_completion_tokens(static_cast<int32_t>(d.usage.completion_tokens));
    r.mutable_usage()->set_cached_tokens(static_cast<int32_t>(d.usage.cached_tokens));
    r.mutable_timings()->set_queued_seconds(d.timings.queued_s);
    r.mutable_timings()->set_first_token_seconds(d.timings.first_token_s);
    r.mutable_timings()->set_total_seconds(d.timings.total_s);
    if (d.attention_stats) Fill(*d.attention_stats, *r.mutable_attention_stats());
  }
}

}  // namespace gsa
