#include "clients/bench/benchmark.h"

#include <algorithm>
#include <chrono>
#include <memory>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "clients/bench/arrivals.h"
#include "clients/bench/load_driver.h"
#include "clients/bench/progress.h"
#include "clients/bench/stream_request.h"
#include "clients/bench/workload.h"
#include "clients/retry_policy.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"

namespace gsa::bench {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int64_t kDefaultNumRequests = 100;

// GetModelInfo, retried until `connect_timeout_s` has passed while the server is unreachable or
// answers UNAVAILABLE (still starting).
absl::StatusOr<gsa::v1::ModelInfo> FetchModelInfo(gsa::v1::Generation::StubInterface& stub,
                                                  const BenchOptions& options, std::ostream* log) {
  const auto deadline =
      std::chrono::system_clock::now() +
      std::chrono::duration_cast<std::chrono::system_clock::duration>(
          std::chrono::duration<double>(options.connect_timeout_s));
  bool said_waiting = false;
  std::string last_unavailable;  // why the server could not be reached, kept past a deadline
  for (int attempt = 0;; ++attempt) {
    grpc::ClientContext context;
    context.set_deadline(deadline);
    // First attempt fails fast (connection refused is reported at once); later ones wait.
    context.set_wait_for_ready(attempt > 0);
    gsa::v1::ModelInfo info;
    const grpc::Status status = stub.GetModelInfo(&context, gsa::v1::GetModelInfoRequest(), &info);
    if (status.ok()) return info;
    const bool retryable = status.error_code() == grpc::StatusCode::UNAVAILABLE;
    if (retryable) last_unavailable = status.error_message();
    const bool time_left = std::chrono::system_clock::now() + std::chrono::milliseconds(250) < deadline;
    if (!retryable || !time_left) {
      if (status.error_code() == grpc::StatusCode::UNAVAILABLE ||
          status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
        return absl::UnavailableError(absl::StrFormat(
            "cannot reach gsa-server at %s within %gs (--connect-timeout-s): %s", options.target,
            options.connect_timeout_s,
            last_unavailable.empty()
                ? StatusCodeName(status.error_code()) + ": " + status.error_message()
                : "UNAVAILABLE: " + last_unavailable));
      }
      return absl::UnavailableError(absl::StrCat(
          "gsa-server at ", options.target, ": GetModelInfo failed: ",
          StatusCodeName(status.error_code()), ": ", status.error_message()));
    }
    if (!said_waiting && log != nullptr) {
      *log << absl::StrFormat("gsa-bench: waiting up to %gs for gsa-server at %s (%s: %s)\n",
                              options.connect_timeout_s, options.target,
                              StatusCodeName(status.error_code()), status.error_message());
      said_waiting = true;
    }
    if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
}

ModelLimits LimitsOf(const gsa::v1::ModelInfo& info) {
  ModelLimits limits;
  limits.vocab_size = info.vocab_size();
  limits.max_model_len = info.max_model_len();
  limits.has_tokenizer = info.has_tokenizer();
  if (info.has_bos_token_id()) limits.special_ids.push_back(info.bos_token_id());
  if (info.has_eos_token_id()) limits.special_ids.push_back(info.eos_token_id());
  return limits;
}

// Runs items [first, first + count) under `plan` (whose num_requests is `count`).
LoadResult RunItems(gsa::v1::Generation::StubInterface& stub, const BenchOptions& options,
                    const std::vector<WorkItem>& items, int64_t first, LoadPlan plan,
                    const std::string& id_prefix, ProgressReporter* progress) {
  const RequestFn send = [&](int64_t i) {
    const gsa::v1::GenerateRequest request = BuildGenerateRequest(
        items[static_cast<size_t>(first + i)], options, i, id_prefix);
    return SendStreamingRequest(stub, request, options.timeout_s, options.retry,
                                options.seed + static_cast<uint64_t>(first + i));
  };
  const DoneFn done = [progress](const RequestRecord& r) {
    if (progress != nullptr) progress->OnRequestDone(r.ok);
  };
  LoadResult result = RunLoad(plan, send, done);
  if (progress != nullptr) progress->Finish();
  return result;
}

std::string FirstError(const std::vector<RequestRecord>& records) {
  for (const RequestRecord& r : records) {
    if (!r.ok) return absl::StrCat(r.status, ": ", r.error);
  }
  return "none";
}

}  // namespace

absl::StatusOr<BenchReport> RunBenchmark(const BenchOptions& options, const RunEnvironment& env) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  // gRPC retries GetModelInfo itself; Generate is retried by SendStreamingRequest (counted).
  if (const std::string config = RetryServiceConfigJson(options.retry); !config.empty()) {
    args.SetServiceConfigJSON(config);
  }
  const absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      CreateClientChannel(options.target, options.security, args);
  if (!channel.ok()) return channel.status();
  const std::unique_ptr<gsa::v1::Generation::Stub> stub = gsa::v1::Generation::NewStub(*channel);

  BenchReport report;
  report.options = options;
  report.command_line = env.command_line;
  absl::StatusOr<gsa::v1::ModelInfo> info = FetchModelInfo(*stub, options, env.log);
  if (!info.ok()) return info.status();
  report.model_info = *info;
  const ModelLimits limits = LimitsOf(*info);

  // The workload: warm-up requests first, then the measured ones.
  std::vector<PromptLine> lines;
  if (!options.prompts_file.empty()) {
    absl::StatusOr<std::vector<PromptLine>> loaded = LoadPromptsFile(options.prompts_file);
    if (!loaded.ok()) return loaded.status();
    lines = *std::move(loaded);
  }
  const int64_t n = options.num_requests.value_or(
      lines.empty() ? kDefaultNumRequests : static_cast<int64_t>(lines.size()));
  const int64_t total = options.warmup + n;
  absl::StatusOr<std::vector<WorkItem>> items =
      lines.empty()
          ? RandomWorkload(options, limits, total)
          : WorkloadFromPrompts(lines, options.prompts_file, total, options.output_len, limits);
  if (!items.ok()) return items.status();
  report.num_requests = n;
  report.warmup_requests = options.warmup;

  const ProgressMode mode = env.log == nullptr
                                ? ProgressMode::kOff
                                : ResolveProgressMode(options.progress, env.log_is_tty);
  std::unique_ptr<ProgressReporter> progress;  // null: no progress output

  if (options.warmup > 0) {
    LoadPlan plan;
    plan.num_requests = options.warmup;
    const int cap = options.EffectiveConcurrency();
    plan.max_in_flight = static_cast<int>(
        std::min<int64_t>(cap > 0 ? cap : options.warmup, options.warmup));
    if (mode != ProgressMode::kOff) {
      progress = std::make_unique<ProgressReporter>(*env.log, mode, options.warmup, "warmup");
    }
    const LoadResult warm = RunItems(*stub, options, *items, 0, plan, "bench-warmup-",
                                     progress.get());
    for (const RequestRecord& r : warm.records) report.warmup_failed += r.ok ? 0 : 1;
    if (report.warmup_failed == options.warmup) {
      return absl::AbortedError(absl::StrCat("all ", options.warmup,
                                             " warm-up requests failed; the first: ",
                                             FirstError(warm.records)));
    }
    if (report.warmup_failed > 0 && env.log != nullptr) {
      *env.log << "gsa-bench: " << report.warmup_failed << " of " << options.warmup
               << " warm-up requests failed; the first: " << FirstError(warm.records) << "\n";
    }
  }

  LoadPlan plan;
  plan.num_requests = n;
  plan.max_in_flight = options.EffectiveConcurrency();
  if (options.request_rate.has_value()) {
    plan.arrival_s = PoissonArrivalTimes(*options.request_rate, n, options.seed);
  }
  progress.reset();
  if (mode != ProgressMode::kOff) {
    progress = std::make_unique<ProgressReporter>(*env.log, mode, n, "benchmark");
  }
  report.timestamp = Iso8601Utc(std::chrono::system_clock::now());
  LoadResult run = RunItems(*stub, options, *items, options.warmup, plan, "bench-",
                            progress.get());
  report.peak_in_flight = run.peak_in_flight;
  report.metrics = ComputeMetrics(run.records, run.duration_s);
  report.records = std::move(run.records);
  return report;
}

}  // namespace gsa::bench
