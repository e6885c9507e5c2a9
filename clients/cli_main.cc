// gsa-cli: one request against a gsa-server. Streams the completion's text as it arrives (or,
// with --json, prints every response message as protobuf JSON, one a line), then a summary
// line on stderr (and, with --attention-stats, the attention statistics table). Also --tokenize
// and --model-info.
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "clients/attention_stats_table.h"
#include "clients/client_channel.h"
#include "clients/retry_policy.h"
#include "gsa/v1/generation.grpc.pb.h"

namespace {

const char kUsage[] = R"(gsa-cli: send one request to a gsa-server

  gsa-cli [flags] "prompt text"           stream a completion
  gsa-cli --prompt-ids 1,2,3 [flags]      prompt as token ids
  gsa-cli --prompt-file FILE [flags]      prompt text from FILE ("-": stdin), for long prompts
  gsa-cli --tokenize "text"               token ids and pieces
  gsa-cli --model-info                    what the server serves

  --target HOST:PORT          server (default 127.0.0.1:50051)
  --max-tokens N              tokens to generate (default 64)
  --temperature T  --top-p P  --top-k K  --min-p P
  --repetition-penalty R  --presence-penalty P  --frequency-penalty F
  --seed N                    reproducible sampling
  --stop STR                  stop string (repeatable)
  --stop-token-ids 1,2        stop tokens
  --ignore-eos                keep going past end-of-sequence
  --logprobs N                logprob of each token and N alternatives
  --prompt-logprobs N         logprobs of the prompt's tokens
  --attention default|dense   the model's sparse attention (default) or dense
  --attention-stats           measure how the request's queries attend (keys per query, weight on
                              the first token, gate means); printed per layer on stderr after the
                              summary (with --json: in the last message's attention_stats). The
                              whole prompt is then computed (no prefix-cache reuse)
  --request-id ID
  --timeout S                 deadline in seconds, retries included (default: none)
  --max-retries N             send the request again, up to N times (0 to 10, default 3), when it
                              fails with UNAVAILABLE or CANCELLED before any response arrived
                              (it never started: a draining replica refused it), so no text is
                              printed twice; waits 25-50 ms, doubling up to 0.5-1 s. 0: off
  --unary                     use Complete (one response) instead of streaming Generate
  --json                      print each response message as JSON, one a line

  --tls                       connect over TLS, verifying the server with the system's CAs
  --tls-ca FILE               PEM CA that signed the server's certificate (implies --tls)
  --tls-cert FILE --tls-key FILE   client certificate and key, for servers with --tls-client-ca
  --api-key KEY               sent as metadata "authorization: Bearer KEY"
  --api-key-file FILE         the same, with the first key in FILE (keeps it out of `ps`)
)";

bool ParseIds(const std::string& s, google::protobuf::RepeatedField<int32_t>* out) {
  for (absl::string_view part : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    int32_t v;
    if (!absl::SimpleAtoi(part, &v)) return false;
    out->Add(v);
  }
  return !out->empty();
}

int Fail(const std::string& message, int code = 2) {
  std::cerr << "gsa-cli: " << message << "\n";
  return code;
}

std::string Json(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  o.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  std::string target = "127.0.0.1:50051";
  gsa::ClientSecurity security;
  gsa::v1::GenerateRequest req;
  req.mutable_stopping()->set_max_tokens(64);
  bool json = false, unary = false, tokenize = false, model_info = false;
  double timeout_s = 0;
  gsa::RetryPolicy retry;
  std::string text;
  bool have_text = false;

  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> const std::string* {
      if (i + 1 >= args.size()) return nullptr;
      return &args[++i];
    };
    auto number = [&](auto& out) -> bool {
      const std::string* v = value();
      if (v == nullptr) return false;
      if constexpr (std::is_floating_point_v<std::remove_reference_t<decltype(out)>>) {
        double d;
        if (!absl::SimpleAtod(*v, &d)) return false;
        out = static_cast<std::remove_reference_t<decltype(out)>>(d);
        return true;
      } else {
        return absl::SimpleAtoi(*v, &out);
      }
    };
    float f = 0;
    int32_t n = 0;
    uint64_t u = 0;
    bool ok = true;
    if (a == "--help" || a == "-h") {
      std::cout << kUsage;
      return 0;
    } else if (a == "--target") {
      const std::string* v = value();
      ok = v != nullptr;
      if (ok) target = *v;
    } else if (a == "--tls") {
      security.tls = true;
    } else if (a == "--tls-ca" || a == "--tls-cert" || a == "--tls-key" || a == "--api-key" ||
               a == "--api-key-file") {
      const std::string* v = value();
      ok = v != nullptr && !v->empty();
      if (ok) {
        (a == "--tls-ca"     ? security.tls_ca_file
         : a == "--tls-cert" ? security.tls_cert_file
         : a == "--tls-key"  ? security.tls_key_file
         : a == "--api-key"  ? security.api_key
                             : security.api_key_file) = *v;
      }
    } else if (a == "--max-tokens") {
      ok = number(n);
      req.mutable_stopping()->set_max_tokens(n);
    } else if (a == "--temperature") {
      ok = number(f);
      req.mutable_sampling()->set_temperature(f);
    } else if (a == "--top-p") {
      ok = number(f);
      req.mutable_sampling()->set_top_p(f);
    } else if (a == "--top-k") {
      ok = number(n);
      req.mutable_sampling()->set_top_k(n);
    } else if (a == "--min-p") {
      ok = number(f);
      req.mutable_sampling()->set_min_p(f);
    } else if (a == "--repetition-penalty") {
      ok = number(f);
      req.mutable_sampling()->set_repetition_penalty(f);
    } else if (a == "--presence-penalty") {
      ok = number(f);
      req.mutable_sampling()->set_presence_penalty(f);
    } else if (a == "--frequency-penalty") {
      ok = number(f);
      req.mutable_sampling()->set_frequency_penalty(f);
    } else if (a == "--seed") {
      ok = number(u);
      req.mutable_sampling()->set_seed(u);
    } else if (a == "--stop") {
      const std::string* v = value();
      ok = v != nullptr;
      if (ok) req.mutable_stopping()->add_stop(*v);
    } else if (a == "--stop-token-ids") {
      const std::string* v = value();
      ok = v != nullptr && ParseIds(*v, req.mutable_stopping()->mutable_stop_token_ids());
    } else if (a == "--ignore-eos") {
      req.mutable_stopping()->set_ignore_eos(true);
    } else if (a == "--logprobs") {
      ok = number(n);
      req.set_logprobs(n);
    } else if (a == "--prompt-logprobs") {
      ok = number(n);
      req.set_prompt_logprobs(n);
    } else if (a == "--attention") {
      const std::string* v = value();
      ok = v != nullptr && (*v == "default" || *v == "dense");
      if (ok) req.set_attention(*v == "dense" ? gsa::v1::ATTENTION_DENSE : gsa::v1::ATTENTION_DEFAULT);
    } else if (a == "--attention-stats") {
      req.set_attention_stats(true);
    } else if (a == "--prompt-ids") {
      const std::string* v = value();
      ok = v != nullptr && ParseIds(*v, req.mutable_token_ids()->mutable_ids());
    } else if (a == "--prompt-file") {
      const std::string* v = value();
      ok = v != nullptr;
      if (ok) {
        if (have_text) return Fail("give the prompt once: as an argument or with --prompt-file");
        std::ifstream file_in;
        if (*v != "-") {
          file_in.open(*v, std::ios::binary);
          if (!file_in) return Fail(absl::StrCat("--prompt-file ", *v, ": cannot open it for reading"));
        }
        std::istream& in = *v == "-" ? std::cin : file_in;
        text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
        have_text = true;
      }
    } else if (a == "--request-id") {
      const std::string* v = value();
      ok = v != nullptr;
      if (ok) req.set_request_id(*v);
    } else if (a == "--timeout") {
      ok = number(timeout_s) && timeout_s > 0;
    } else if (a == "--max-retries") {
      ok = number(retry.max_retries) && retry.max_retries >= 0 &&
           retry.max_retries <= gsa::kMaxRetriesLimit;
    } else if (a == "--unary") {
      unary = true;
    } else if (a == "--json") {
      json = true;
    } else if (a == "--tokenize") {
      tokenize = true;
    } else if (a == "--model-info") {
      model_info = true;
    } else if (a.rfind("--", 0) == 0) {
      return Fail(absl::StrCat("unknown flag ", a, "; see --help"));
    } else {
      if (have_text) return Fail("give the prompt once: as one (quoted) argument or with --prompt-file");
      text = a;
      have_text = true;
    }
    if (!ok) return Fail(absl::StrCat(a, ": missing or invalid value; see --help"));
  }

  // gRPC retries GetModelInfo and Tokenize itself; Generate and Complete are retried below.
  grpc::ChannelArguments channel_args;
  if (const std::string config = gsa::RetryServiceConfigJson(retry); !config.empty()) {
    channel_args.SetServiceConfigJSON(config);
  }
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      gsa::CreateClientChannel(target, security, channel_args);
  if (!channel.ok()) return Fail(std::string(channel.status().message()));
  auto stub = gsa::v1::Generation::NewStub(*channel);
  // One deadline for the whole request, every attempt included.
  const std::chrono::system_clock::time_point deadline =
      timeout_s > 0 ? std::chrono::system_clock::now() +
                          std::chrono::microseconds(static_cast<int64_t>(timeout_s * 1e6))
                    : std::chrono::system_clock::time_point::max();
  auto make_context = [&]() {
    auto ctx = std::make_unique<grpc::ClientContext>();
    if (timeout_s > 0) ctx->set_deadline(deadline);
    return ctx;
  };
  auto rpc_error = [&](const grpc::Status& s) {
    return Fail(absl::StrCat(target, ": ", s.error_code(), " ", s.error_message()), 1);
  };

  if (model_info) {
    gsa::v1::ModelInfo info;
    auto ctx = make_context();
    grpc::Status s = stub->GetModelInfo(ctx.get(), gsa::v1::GetModelInfoRequest(), &info);
    if (!s.ok()) return rpc_error(s);
    std::cout << Json(info) << "\n";
    return 0;
  }
  if (tokenize) {
    gsa::v1::TokenizeRequest t;
    t.set_text(text);
    gsa::v1::TokenizeResponse r;
    auto ctx = make_context();
    grpc::Status s = stub->Tokenize(ctx.get(), t, &r);
    if (!s.ok()) return rpc_error(s);
    std::cout << Json(r) << "\n";
    return 0;
  }
  if (have_text) {
    if (req.has_token_ids()) return Fail("give either a text prompt or --prompt-ids, not both");
    req.set_text(text);
  }
  if (req.prompt_case() == gsa::v1::GenerateRequest::PROMPT_NOT_SET) {
    return Fail("no prompt: pass the text as an argument or use --prompt-ids (see --help)");
  }

  // Each attempt prints what it receives as it arrives; an attempt is retried only when nothing
  // arrived (retry_policy.h), so nothing is ever printed twice.
  gsa::v1::GenerateResponse last;
  const gsa::AttemptFn attempt = [&](int) -> gsa::AttemptResult {
    auto ctx = make_context();
    if (unary) {
      const grpc::Status s = stub->Complete(ctx.get(), req, &last);
      return {s, s.ok()};
    }
    auto reader = stub->Generate(ctx.get(), req);
    gsa::v1::GenerateResponse r;
    bool any = false;
    while (reader->Read(&r)) {
      any = true;
      if (json) {
        std::cout << Json(r) << "\n" << std::flush;
      } else {
        std::cout << r.text() << std::flush;
      }
      last = r;
    }
    return {reader->Finish(), any};
  };
  const gsa::RetryNoteFn note = [&](const gsa::AttemptResult& failed, std::chrono::nanoseconds wait,
                                    int n) {
    std::cerr << "gsa-cli: " << target << ": " << failed.status.error_code() << " "
              << failed.status.error_message() << " (before any response); retry " << n << " of "
              << retry.max_retries << " in "
              << std::chrono::duration_cast<std::chrono::milliseconds>(wait).count() << " ms\n";
  };
  const gsa::RetriedCall call =
      gsa::CallWithRetries(retry, deadline, std::random_device()(), attempt, note);
  const grpc::Status& s = call.last.status;
  if (unary && s.ok()) {
    if (json) {
      std::cout << Json(last) << "\n";
    } else {
      std::cout << last.text() << "\n";
    }
  }
  if (!unary && !json) std::cout << "\n";
  if (!s.ok()) {
    if (call.retries == 0) return rpc_error(s);
    return Fail(absl::StrCat(target, ": ", s.error_code(), " ", s.error_message(), " (after ",
                             call.retries, call.retries == 1 ? " retry)" : " retries)"),
                1);
  }
  if (!json) {
    std::cerr << "[" << gsa::v1::FinishReason_Name(last.finish_reason()) << "] prompt "
              << last.usage().prompt_tokens() << " tokens (" << last.usage().cached_tokens()
              << " cached), completion " << last.usage().completion_tokens() << " tokens, first token "
              << last.timings().first_token_seconds() * 1e3 << " ms, total "
              << last.timings().total_seconds() * 1e3 << " ms\n";
    if (last.has_attention_stats()) std::cerr << gsa::AttentionStatsTable(last.attention_stats());
  }
  return 0;
}
