// gsa-bench: flag parsing, length distributions, Poisson arrivals, the workload and prompts
// files, the load driver's concurrency and pacing, statistics, metrics and the JSON report; and
// whole runs against a small fake Generation service in process, including requests it refuses
// before they start (retried) and streams it breaks after the first tokens (not retried).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "clients/bench/arrivals.h"
#include "clients/bench/bench_options.h"
#include "clients/bench/benchmark.h"
#include "clients/bench/length_sampler.h"
#include "clients/bench/load_driver.h"
#include "clients/bench/progress.h"
#include "clients/bench/report.h"
#include "clients/bench/statistics.h"
#include "clients/bench/stream_request.h"
#include "clients/bench/workload.h"
#include "clients/retry_policy.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "gsa/v1/generation.grpc.pb.h"

namespace gsa::bench {
namespace {

using ::testing::AllOf;
using ::testing::ContainsRegex;
using ::testing::HasSubstr;

absl::StatusOr<BenchOptions> Parse(std::vector<std::string> args) { return ParseBenchFlags(args); }

// ---- Flags ---------------------------------------------------------------------------------------

TEST(BenchFlags, DefaultsAreAClosedLoopOfOne) {
  absl::StatusOr<BenchOptions> o = Parse({});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->target, "127.0.0.1:50051");
  EXPECT_FALSE(o->num_requests.has_value());
  EXPECT_EQ(o->EffectiveConcurrency(), 1);
  EXPECT_EQ(o->ModeName(), "closed-loop");
  EXPECT_TRUE(o->ignore_eos);
  EXPECT_EQ(o->input_len_dist, LengthDistribution::kFixed);
  EXPECT_EQ(o->attention, AttentionMode::kDefault);
  EXPECT_EQ(o->retry.max_retries, 3);
}

TEST(BenchFlags, AcceptsSpaceAndEqualsForms) {
  absl::StatusOr<BenchOptions> o =
      Parse({"--target", "host:1234", "--num-requests=7", "--concurrency", "16", "--input-len=300",
             "--output-len", "20", "--input-len-dist", "uniform", "--output-len-dist=normal",
             "--range-ratio", "0.25", "--temperature=0.7", "--seed", "42", "--attention", "dense",
             "--warmup", "3", "--timeout-s", "2.5", "--json", "/tmp/x.json", "--progress", "off",
             "--max-retries=0"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->target, "host:1234");
  EXPECT_EQ(o->num_requests, 7);
  EXPECT_EQ(o->concurrency, 16);
  EXPECT_EQ(o->input_len, 300);
  EXPECT_EQ(o->output_len, 20);
  EXPECT_EQ(o->input_len_dist, LengthDistribution::kUniform);
  EXPECT_EQ(o->output_len_dist, LengthDistribution::kNormal);
  EXPECT_DOUBLE_EQ(o->range_ratio, 0.25);
  EXPECT_FLOAT_EQ(o->temperature, 0.7f);
  EXPECT_EQ(o->seed, 42u);
  EXPECT_EQ(o->attention, AttentionMode::kDense);
  EXPECT_EQ(o->warmup, 3);
  EXPECT_DOUBLE_EQ(o->timeout_s, 2.5);
  EXPECT_EQ(o->json_file, "/tmp/x.json");
  EXPECT_EQ(o->progress, ProgressMode::kOff);
  EXPECT_EQ(o->retry.max_retries, 0);
}

TEST(BenchFlags, RequestRateMakesAnOpenLoopOptionallyCapped) {
  absl::StatusOr<BenchOptions> open = Parse({"--request-rate", "12.5"});
  ASSERT_TRUE(open.ok()) << open.status();
  EXPECT_DOUBLE_EQ(*open->request_rate, 12.5);
  EXPECT_EQ(open->EffectiveConcurrency(), 0);
  EXPECT_EQ(open->ModeName(), "open-loop");

  absl::StatusOr<BenchOptions> capped = Parse({"--request-rate=inf", "--concurrency=8"});
  ASSERT_TRUE(capped.ok()) << capped.status();
  EXPECT_TRUE(std::isinf(*capped->request_rate));
  EXPECT_EQ(capped->EffectiveConcurrency(), 8);
  EXPECT_EQ(capped->ModeName(), "open-loop, capped");
}

TEST(BenchFlags, BooleansTakeNoValueOrAnExplicitOne) {
  EXPECT_FALSE(Parse({"--no-ignore-eos"})->ignore_eos);
  EXPECT_FALSE(Parse({"--ignore-eos=false"})->ignore_eos);
  EXPECT_TRUE(Parse({"--no-ignore-eos", "--ignore-eos"})->ignore_eos);
  // A bare boolean does not swallow the next flag.
  absl::StatusOr<BenchOptions> o = Parse({"--ignore-eos", "--num-requests", "3"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->num_requests, 3);
}

TEST(BenchFlags, HelpIsReportedAsCancelled) {
  EXPECT_TRUE(absl::IsCancelled(Parse({"--num-requests", "3", "--help"}).status()));
  EXPECT_THAT(BenchUsage(),
              AllOf(HasSubstr("--request-rate"), HasSubstr("--prompts"), HasSubstr("--max-retries")));
}

// Each bad input is InvalidArgument and the message names the flag (and the value).
struct BadFlagCase {
  std::vector<std::string> args;
  std::string expected;
};

TEST(BenchFlags, ErrorsNameTheFlag) {
  const std::vector<BadFlagCase> cases = {
      {{"--bogus", "1"}, "--bogus"},
      {{"--num-requests"}, "--num-requests: missing value"},
      {{"--num-requests", "abc"}, "--num-requests: 'abc'"},
      {{"--num-requests", "0"}, "--num-requests"},
      {{"--concurrency", "-4"}, "--concurrency"},
      {{"--concurrency", "100000"}, "--concurrency"},
      {{"--request-rate", "0"}, "--request-rate"},
      {{"--request-rate", "fast"}, "--request-rate"},
      {{"--input-len", "0"}, "--input-len"},
      {{"--output-len", "1.5"}, "--output-len"},
      {{"--input-len-dist", "zipf"}, "--input-len-dist: 'zipf'"},
      {{"--range-ratio", "1"}, "--range-ratio"},
      {{"--temperature", "-1"}, "--temperature"},
      {{"--temperature", "nan"}, "--temperature"},
      {{"--attention", "sparse"}, "--attention"},
      {{"--timeout-s", "0"}, "--timeout-s"},
      {{"--max-retries", "-1"}, "--max-retries"},
      {{"--max-retries", "11"}, "--max-retries: '11' is not an integer in [0, 10]"},
      {{"--ignore-eos=maybe"}, "--ignore-eos"},
      {{"--progress", "loud"}, "--progress"},
      {{"--target", ""}, "--target"},
      {{"--prompts", "p.jsonl", "--input-len", "5"}, "--input-len"},
      {{"stray"}, "stray"},
  };
  for (const BadFlagCase& c : cases) {
    const absl::StatusOr<BenchOptions> o = Parse(c.args);
    ASSERT_FALSE(o.ok()) << c.args[0];
    EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument) << o.status();
    EXPECT_THAT(std::string(o.status().message()), HasSubstr(c.expected));
  }
}

// ---- Length distributions -------------------------------------------------------------------------

std::vector<int32_t> Lengths(LengthDistribution d, int32_t len, double ratio, int64_t n,
                             uint64_t seed = 1) {
  std::mt19937_64 rng(seed);
  absl::StatusOr<std::vector<int32_t>> v = SampleLengths(d, len, ratio, n, rng);
  EXPECT_TRUE(v.ok()) << v.status();
  return v.ok() ? *v : std::vector<int32_t>{};
}

double Mean(const std::vector<int32_t>& v) {
  double s = 0;
  for (int32_t x : v) s += x;
  return s / static_cast<double>(v.size());
}

TEST(LengthSampler, FixedIsExactlyTheLength) {
  for (int32_t x : Lengths(LengthDistribution::kFixed, 128, 0.5, 100)) EXPECT_EQ(x, 128);
}

TEST(LengthSampler, UniformRangeMatchesVllmsRandomDataset) {
  EXPECT_EQ(UniformLengthRange(100, 0.5).lo, 50);
  EXPECT_EQ(UniformLengthRange(100, 0.5).hi, 150);
  EXPECT_EQ(UniformLengthRange(3, 0.9).lo, 1);  // never below 1
  EXPECT_EQ(UniformLengthRange(3, 0.9).hi, 5);
  EXPECT_EQ(UniformLengthRange(64, 0.0).lo, 64);
  EXPECT_EQ(UniformLengthRange(64, 0.0).hi, 64);
}

TEST(LengthSampler, UniformCoversItsRangeWithTheRightMean) {
  const std::vector<int32_t> v = Lengths(LengthDistribution::kUniform, 100, 0.5, 20000);
  std::set<int32_t> seen(v.begin(), v.end());
  EXPECT_EQ(*seen.begin(), 50);
  EXPECT_EQ(*seen.rbegin(), 150);
  EXPECT_EQ(seen.size(), 101u);  // every value in [50, 150] drawn
  EXPECT_NEAR(Mean(v), 100.0, 1.0);
}

TEST(LengthSampler, NormalHasTheRightMeanAndSpreadAndStaysPositive) {
  const std::vector<int32_t> v = Lengths(LengthDistribution::kNormal, 200, 0.2, 20000);
  const double mean = Mean(v);
  double sq = 0;
  for (int32_t x : v) sq += (x - mean) * (x - mean);
  EXPECT_NEAR(mean, 200.0, 1.0);
  EXPECT_NEAR(std::sqrt(sq / v.size()), 40.0, 1.5);
  for (int32_t x : Lengths(LengthDistribution::kNormal, 2, 0.99, 5000)) {
    EXPECT_GE(x, 1);
    EXPECT_LE(x, 4);
  }
}

TEST(LengthSampler, SameSeedSameLengths) {
  EXPECT_EQ(Lengths(LengthDistribution::kUniform, 100, 0.5, 50, 7),
            Lengths(LengthDistribution::kUniform, 100, 0.5, 50, 7));
  EXPECT_NE(Lengths(LengthDistribution::kUniform, 100, 0.5, 50, 7),
            Lengths(LengthDistribution::kUniform, 100, 0.5, 50, 8));
}

TEST(LengthSampler, RejectsBadParameters) {
  std::mt19937_64 rng(0);
  EXPECT_FALSE(SampleLengths(LengthDistribution::kFixed, 0, 0.0, 1, rng).ok());
  EXPECT_FALSE(SampleLengths(LengthDistribution::kUniform, 10, 1.5, 1, rng).ok());
}

// ---- Poisson arrivals -------------------------------------------------------------------------------

TEST(PoissonArrivals, MeanGapIsOneOverTheRate) {
  const int64_t n = 50000;
  const double rate = 20.0;
  const std::vector<double> t = PoissonArrivalTimes(rate, n, 3);
  ASSERT_EQ(t.size(), static_cast<size_t>(n));
  EXPECT_EQ(t[0], 0.0);
  std::vector<double> gaps;
  for (size_t i = 1; i < t.size(); ++i) {
    ASSERT_GE(t[i], t[i - 1]);
    gaps.push_back(t[i] - t[i - 1]);
  }
  const Summary s = Summarize(gaps);
  EXPECT_NEAR(s.mean, 1.0 / rate, 0.02 / rate);
  // Exponential gaps: standard deviation equals the mean, median is ln 2 × mean.
  EXPECT_NEAR(s.stddev / s.mean, 1.0, 0.03);
  EXPECT_NEAR(s.p50 / s.mean, std::log(2.0), 0.03);
}

TEST(PoissonArrivals, SeededAndInfiniteRateSendsAllAtOnce) {
  EXPECT_EQ(PoissonArrivalTimes(5.0, 100, 9), PoissonArrivalTimes(5.0, 100, 9));
  EXPECT_NE(PoissonArrivalTimes(5.0, 100, 9), PoissonArrivalTimes(5.0, 100, 10));
  for (double x : PoissonArrivalTimes(std::numeric_limits<double>::infinity(), 10, 1)) {
    EXPECT_EQ(x, 0.0);
  }
  EXPECT_TRUE(PoissonArrivalTimes(1.0, 0, 1).empty());
}

// ---- Statistics ---------------------------------------------------------------------------------------

TEST(Statistics, PercentilesInterpolateLikeNumpy) {
  const std::vector<double> v = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  EXPECT_DOUBLE_EQ(PercentileOfSorted(v, 0), 1.0);
  EXPECT_DOUBLE_EQ(PercentileOfSorted(v, 50), 5.5);
  EXPECT_NEAR(PercentileOfSorted(v, 90), 9.1, 1e-12);
  EXPECT_NEAR(PercentileOfSorted(v, 99), 9.91, 1e-12);
  EXPECT_DOUBLE_EQ(PercentileOfSorted(v, 100), 10.0);
  EXPECT_DOUBLE_EQ(PercentileOfSorted({42.0}, 99), 42.0);
}

TEST(Statistics, SummarizeKnownData) {
  const Summary s = Summarize({4, 2, 8, 6});  // any order
  EXPECT_EQ(s.count, 4);
  EXPECT_DOUBLE_EQ(s.mean, 5.0);
  EXPECT_DOUBLE_EQ(s.stddev, std::sqrt(5.0));
  EXPECT_DOUBLE_EQ(s.min, 2.0);
  EXPECT_DOUBLE_EQ(s.max, 8.0);
  EXPECT_DOUBLE_EQ(s.p50, 5.0);
  EXPECT_NEAR(s.p90, 7.4, 1e-12);
  EXPECT_NEAR(s.p99, 7.94, 1e-12);
  const Summary ms = Scaled(s, 1000.0);
  EXPECT_EQ(ms.count, 4);
  EXPECT_DOUBLE_EQ(ms.p50, 5000.0);
}

TEST(Statistics, EmptyIsAllZero) {
  const Summary s = Summarize({});
  EXPECT_EQ(s.count, 0);
  EXPECT_EQ(s.mean, 0.0);
  EXPECT_EQ(s.p99, 0.0);
}

// ---- Workload -------------------------------------------------------------------------------------------

ModelLimits Limits(int32_t vocab = 50, int32_t max_len = 4096) {
  ModelLimits l;
  l.vocab_size = vocab;
  l.max_model_len = max_len;
  l.special_ids = {1, 2};
  l.has_tokenizer = false;
  return l;
}

TEST(Workload, RandomPromptsAreOrdinaryIdsOfTheSampledLengths) {
  BenchOptions o;
  o.input_len = 40;
  o.output_len = 9;
  o.input_len_dist = LengthDistribution::kUniform;
  o.range_ratio = 0.5;
  absl::StatusOr<std::vector<WorkItem>> items = RandomWorkload(o, Limits(), 200);
  ASSERT_TRUE(items.ok()) << items.status();
  ASSERT_EQ(items->size(), 200u);
  std::set<int32_t> ids;
  for (const WorkItem& item : *items) {
    EXPECT_FALSE(item.is_text);
    EXPECT_GE(item.prompt_ids.size(), 20u);
    EXPECT_LE(item.prompt_ids.size(), 60u);
    EXPECT_EQ(item.max_tokens, 9);
    ids.insert(item.prompt_ids.begin(), item.prompt_ids.end());
  }
  EXPECT_EQ(ids.count(1), 0u);  // BOS and EOS never drawn
  EXPECT_EQ(ids.count(2), 0u);
  EXPECT_EQ(*ids.begin(), 0);
  EXPECT_EQ(*ids.rbegin(), 49);
  EXPECT_EQ(ids.size(), 48u);
}

TEST(Workload, RandomPromptsAreSeeded) {
  BenchOptions a;
  a.input_len = 16;
  BenchOptions b = a;
  b.seed = 1;
  EXPECT_EQ(RandomWorkload(a, Limits(), 3)->at(2).prompt_ids,
            RandomWorkload(a, Limits(), 3)->at(2).prompt_ids);
  EXPECT_NE(RandomWorkload(a, Limits(), 3)->at(2).prompt_ids,
            RandomWorkload(b, Limits(), 3)->at(2).prompt_ids);
}

TEST(Workload, TooLongForTheServerNamesTheFlags) {
  BenchOptions o;
  o.input_len = 100;
  o.output_len = 30;
  const absl::StatusOr<std::vector<WorkItem>> items = RandomWorkload(o, Limits(50, 128), 4);
  ASSERT_EQ(items.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(items.status().message()),
              AllOf(HasSubstr("--input-len 100"), HasSubstr("--output-len 30"),
                    HasSubstr("max_model_len 128")));
}

TEST(Workload, AVocabularyOfOnlySpecialTokensIsAnError) {
  BenchOptions o;
  ModelLimits l = Limits(2);
  l.special_ids = {0, 1};
  EXPECT_EQ(RandomWorkload(o, l, 1).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(PromptsFile, ParsesTextAndIdLinesAndSkipsBlankOnes) {
  const std::string text =
      "{\"prompt\": \"Hello\", \"max_tokens\": 5}\n"
      "\n"
      "{\"prompt_ids\": [3, 4, 5]}\n";
  absl::StatusOr<std::vector<PromptLine>> lines = ParsePromptsJsonl(text, "p.jsonl");
  ASSERT_TRUE(lines.ok()) << lines.status();
  ASSERT_EQ(lines->size(), 2u);
  EXPECT_TRUE((*lines)[0].item.is_text);
  EXPECT_EQ((*lines)[0].item.text, "Hello");
  EXPECT_EQ((*lines)[0].item.max_tokens, 5);
  EXPECT_EQ((*lines)[1].line_number, 3);
  EXPECT_EQ((*lines)[1].item.prompt_ids, (std::vector<int32_t>{3, 4, 5}));
  EXPECT_EQ((*lines)[1].item.max_tokens, 0);  // not given
}

TEST(PromptsFile, ErrorsNameTheFileAndLine) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{\"prompt\": \"a\"}\nnot json\n", "p.jsonl:2: not valid JSON"},
      {"[1, 2]\n", "p.jsonl:1: not a JSON object"},
      {"{\"max_tokens\": 3}\n", "p.jsonl:1: needs exactly one of"},
      {"{\"prompt\": \"a\", \"prompt_ids\": [1]}\n", "p.jsonl:1: needs exactly one of"},
      {"{\"prompt\": \"\"}\n", "p.jsonl:1: \"prompt\" must be a non-empty string"},
      {"{\"prompt_ids\": [1, -2]}\n", "p.jsonl:1: \"prompt_ids\"[1]"},
      {"{\"prompt_ids\": []}\n", "p.jsonl:1: \"prompt_ids\" must be a non-empty array"},
      {"{\"prompt\": \"a\", \"max_tokens\": 0}\n", "p.jsonl:1: \"max_tokens\""},
      {"\n\n", "p.jsonl: no prompts"},
  };
  for (const auto& [text, expected] : cases) {
    const absl::StatusOr<std::vector<PromptLine>> lines = ParsePromptsJsonl(text, "p.jsonl");
    ASSERT_FALSE(lines.ok()) << text;
    EXPECT_EQ(lines.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(lines.status().message()), HasSubstr(expected));
  }
  EXPECT_EQ(LoadPromptsFile("/nonexistent/prompts.jsonl").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(PromptsFile, WorkloadCyclesLinesAndFillsDefaultMaxTokens) {
  const absl::StatusOr<std::vector<PromptLine>> lines =
      ParsePromptsJsonl("{\"prompt_ids\": [3]}\n{\"prompt_ids\": [4], \"max_tokens\": 2}\n", "p");
  ASSERT_TRUE(lines.ok());
  const absl::StatusOr<std::vector<WorkItem>> items =
      WorkloadFromPrompts(*lines, "p", 5, 11, Limits());
  ASSERT_TRUE(items.ok()) << items.status();
  ASSERT_EQ(items->size(), 5u);
  EXPECT_EQ((*items)[0].prompt_ids[0], 3);
  EXPECT_EQ((*items)[0].max_tokens, 11);
  EXPECT_EQ((*items)[3].prompt_ids[0], 4);
  EXPECT_EQ((*items)[3].max_tokens, 2);
  EXPECT_EQ((*items)[4].prompt_ids[0], 3);
}

TEST(PromptsFile, WorkloadChecksPromptsAgainstTheServer) {
  auto check = [](const std::string& text, const ModelLimits& limits) {
    return WorkloadFromPrompts(*ParsePromptsJsonl(text, "p.jsonl"), "p.jsonl", 1, 8, limits)
        .status();
  };
  const absl::Status text = check("{\"prompt\": \"hi\"}", Limits());
  EXPECT_EQ(text.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(text.message()), HasSubstr("no tokenizer"));
  const absl::Status vocab = check("{\"prompt_ids\": [7, 50]}", Limits());
  EXPECT_THAT(std::string(vocab.message()), HasSubstr("p.jsonl:1: \"prompt_ids\"[1] = 50"));
  const absl::Status length = check("{\"prompt_ids\": [7, 8], \"max_tokens\": 9}", Limits(50, 10));
  EXPECT_THAT(std::string(length.message()), HasSubstr("max_model_len 10"));
  ModelLimits with_tokenizer = Limits();
  with_tokenizer.has_tokenizer = true;
  EXPECT_TRUE(check("{\"prompt\": \"hi\"}", with_tokenizer).ok());
}

// ---- Load driver ----------------------------------------------------------------------------------------

// A fake request: sleeps, and tracks how many run at once.
struct FakeLoad {
  std::atomic<int> in_flight{0};
  std::atomic<int> peak{0};
  std::atomic<int> calls{0};
  std::chrono::milliseconds sleep{5};

  RequestRecord operator()(int64_t index) {
    const int now = ++in_flight;
    int prev = peak.load();
    while (now > prev && !peak.compare_exchange_weak(prev, now)) {
    }
    ++calls;
    std::this_thread::sleep_for(sleep);
    --in_flight;
    RequestRecord r;
    r.ok = index % 5 != 4;
    r.status = r.ok ? "OK" : "UNAVAILABLE";
    r.output_tokens = index;
    return r;
  }
};

TEST(LoadDriver, ClosedLoopKeepsExactlyTheCapInFlight) {
  FakeLoad fake;
  fake.sleep = std::chrono::milliseconds(20);
  LoadPlan plan;
  plan.num_requests = 40;
  plan.max_in_flight = 4;
  std::atomic<int> done{0};
  const LoadResult r =
      RunLoad(plan, [&](int64_t i) { return fake(i); }, [&](const RequestRecord&) { ++done; });
  EXPECT_EQ(fake.calls.load(), 40);
  EXPECT_EQ(done.load(), 40);
  EXPECT_EQ(fake.peak.load(), 4);
  EXPECT_EQ(r.peak_in_flight, 4);
  EXPECT_LE(r.threads_used, 4);
  ASSERT_EQ(r.records.size(), 40u);
  for (int64_t i = 0; i < 40; ++i) {
    EXPECT_EQ(r.records[i].index, i);
    EXPECT_EQ(r.records[i].output_tokens, i);  // each record lands at its own index
  }
  // 40 requests of 20 ms, 4 at a time: at least 10 rounds.
  EXPECT_GE(r.duration_s, 0.2);
}

TEST(LoadDriver, OpenLoopSendsOnScheduleWithoutACap) {
  FakeLoad fake;
  fake.sleep = std::chrono::milliseconds(200);
  LoadPlan plan;
  plan.num_requests = 10;
  for (int i = 0; i < 10; ++i) plan.arrival_s.push_back(0.005 * i);
  const LoadResult r = RunLoad(plan, [&](int64_t i) { return fake(i); }, nullptr);
  EXPECT_EQ(fake.calls.load(), 10);
  // Requests of 200 ms arriving every 5 ms overlap: nothing waits for a slot, and none is sent
  // before its time (the upper bound is loose for busy machines).
  EXPECT_GE(fake.peak.load(), 5);
  for (int64_t i = 0; i < 10; ++i) {
    EXPECT_GE(r.records[i].start_s, plan.arrival_s[i] - 1e-4) << i;
    EXPECT_LT(r.records[i].start_s, plan.arrival_s[i] + 0.1) << i;
  }
}

TEST(LoadDriver, OpenLoopWithACapNeverExceedsIt) {
  FakeLoad fake;
  LoadPlan plan;
  plan.num_requests = 30;
  plan.arrival_s.assign(30, 0.0);  // all at once
  plan.max_in_flight = 3;
  const LoadResult r = RunLoad(plan, [&](int64_t i) { return fake(i); }, nullptr);
  EXPECT_EQ(fake.calls.load(), 30);
  EXPECT_LE(fake.peak.load(), 3);
  EXPECT_EQ(r.peak_in_flight, 3);
}

TEST(LoadDriver, NoRequestsIsANoOp) {
  LoadPlan plan;
  plan.max_in_flight = 2;
  const LoadResult r = RunLoad(plan, [](int64_t) { return RequestRecord{}; }, nullptr);
  EXPECT_TRUE(r.records.empty());
  EXPECT_EQ(r.threads_used, 0);
}

// ---- Metrics and report ------------------------------------------------------------------------------------

RequestRecord Ok(int64_t index, double ttft, double e2e, int64_t in, int64_t out) {
  RequestRecord r;
  r.index = index;
  r.ok = true;
  r.status = "OK";
  r.finish_reason = "length";
  r.ttft_s = ttft;
  r.e2e_s = e2e;
  r.prompt_tokens = in;
  r.output_tokens = out;
  for (int64_t k = 1; k < out; ++k) r.itl_s.push_back((e2e - ttft) / (out - 1));
  return r;
}

RequestRecord Failed(int64_t index, const std::string& status) {
  RequestRecord r;
  r.index = index;
  r.status = status;
  r.error = "nope";
  r.e2e_s = 0.001;
  return r;
}

std::vector<RequestRecord> KnownRecords() {
  return {Ok(0, 0.1, 1.1, 10, 11), Ok(1, 0.3, 2.3, 30, 5), Failed(2, "RESOURCE_EXHAUSTED"),
          Failed(3, "RESOURCE_EXHAUSTED"), Failed(4, "DEADLINE_EXCEEDED")};
}

TEST(Metrics, ThroughputAndLatenciesFromKnownRecords) {
  const BenchMetrics m = ComputeMetrics(KnownRecords(), 2.0);
  EXPECT_EQ(m.completed, 2);
  EXPECT_EQ(m.failed, 3);
  EXPECT_EQ(m.errors_by_status.at("RESOURCE_EXHAUSTED"), 2);
  EXPECT_EQ(m.errors_by_status.at("DEADLINE_EXCEEDED"), 1);
  EXPECT_EQ(m.total_input_tokens, 40);
  EXPECT_EQ(m.total_output_tokens, 16);
  EXPECT_DOUBLE_EQ(m.request_throughput, 1.0);
  EXPECT_DOUBLE_EQ(m.input_throughput, 20.0);
  EXPECT_DOUBLE_EQ(m.output_throughput, 8.0);
  EXPECT_DOUBLE_EQ(m.total_token_throughput, 28.0);
  EXPECT_DOUBLE_EQ(m.ttft_ms.mean, 200.0);
  EXPECT_DOUBLE_EQ(m.e2e_ms.p50, 1700.0);
  // TPOT: (1.1 − 0.1) / 10 = 100 ms and (2.3 − 0.3) / 4 = 500 ms.
  EXPECT_EQ(m.tpot_ms.count, 2);
  EXPECT_NEAR(m.tpot_ms.mean, 300.0, 1e-9);
  // ITL: 10 gaps of 100 ms and 4 of 500 ms.
  EXPECT_EQ(m.itl_ms.count, 14);
  EXPECT_NEAR(m.itl_ms.mean, (10 * 100.0 + 4 * 500.0) / 14, 1e-9);
  EXPECT_NEAR(m.itl_ms.p50, 100.0, 1e-9);
}

TEST(Metrics, RetriesAreCountedOverSuccessfulAndFailedRequests) {
  std::vector<RequestRecord> records = KnownRecords();
  records[0].retries = 2;  // completed after two refusals
  records[4].retries = 1;  // refused, retried, then failed for good
  const BenchMetrics m = ComputeMetrics(records, 2.0);
  EXPECT_EQ(m.retries, 3);
  EXPECT_EQ(m.retried_requests, 2);
  EXPECT_EQ(m.completed, 2);
  EXPECT_EQ(m.failed, 3);
}

TEST(Metrics, TimePerOutputTokenNeedsTwoTokensAndSuccess) {
  EXPECT_FALSE(TimePerOutputToken(Ok(0, 0.1, 0.1, 1, 1)).has_value());
  EXPECT_FALSE(TimePerOutputToken(Failed(0, "UNAVAILABLE")).has_value());
  EXPECT_NEAR(*TimePerOutputToken(Ok(0, 0.1, 0.5, 1, 5)), 0.1, 1e-12);
}

BenchReport KnownReport() {
  BenchReport report;
  report.options.num_requests = 5;
  report.options.concurrency = 2;
  report.model_info.set_model_dir("models/tiny");
  report.model_info.set_backend("cpu");
  report.model_info.set_vocab_size(512);
  report.model_info.set_eos_token_id(2);
  report.model_info.set_cache_tokens(1 << 20);
  report.records = KnownRecords();
  report.records[1].retries = 2;
  report.metrics = ComputeMetrics(report.records, 2.0);
  report.num_requests = 5;
  report.peak_in_flight = 2;
  report.command_line = "gsa-bench --concurrency 2";
  report.timestamp = "2025-01-01T00:00:00.000Z";
  return report;
}

TEST(Report, JsonHasConfigResultsRecordsAndModelInfo) {
  const nlohmann::ordered_json j = ReportToJson(KnownReport());
  EXPECT_EQ(j["tool"], "gsa-bench");
  EXPECT_EQ(j["timestamp"], "2025-01-01T00:00:00.000Z");
  EXPECT_EQ(j["command_line"], "gsa-bench --concurrency 2");
  EXPECT_EQ(j["config"]["concurrency"], 2);
  EXPECT_EQ(j["config"]["mode"], "closed-loop");
  EXPECT_EQ(j["config"]["num_requests"], 5);
  EXPECT_TRUE(j["config"]["request_rate"].is_null());
  EXPECT_EQ(j["config"]["input_len_dist"], "fixed");
  EXPECT_EQ(j["model_info"]["model_dir"], "models/tiny");
  EXPECT_EQ(j["model_info"]["vocab_size"], 512);
  EXPECT_EQ(j["model_info"]["eos_token_id"], 2);
  EXPECT_TRUE(j["model_info"]["bos_token_id"].is_null());
  EXPECT_EQ(j["model_info"]["cache_tokens"], 1 << 20);

  const nlohmann::ordered_json& res = j["results"];
  EXPECT_EQ(res["completed"], 2);
  EXPECT_EQ(res["failed"], 3);
  EXPECT_EQ(res["errors"]["RESOURCE_EXHAUSTED"], 2);
  EXPECT_EQ(res["retries"], 2);
  EXPECT_EQ(res["retried_requests"], 1);
  EXPECT_EQ(j["config"]["max_retries"], 3);
  EXPECT_DOUBLE_EQ(res["request_throughput"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(res["output_throughput"].get<double>(), 8.0);
  EXPECT_EQ(res["total_output_tokens"], 16);
  for (const char* key : {"ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"}) {
    for (const char* stat : {"count", "mean", "p50", "p90", "p99"}) {
      EXPECT_TRUE(res[key].contains(stat)) << key << "." << stat;
    }
  }
  EXPECT_DOUBLE_EQ(res["ttft_ms"]["mean"].get<double>(), 200.0);

  ASSERT_EQ(j["requests"].size(), 5u);
  const nlohmann::ordered_json& first = j["requests"][0];
  EXPECT_EQ(first["status"], "OK");
  EXPECT_EQ(first["retries"], 0);
  EXPECT_EQ(j["requests"][1]["retries"], 2);
  EXPECT_EQ(first["output_tokens"], 11);
  EXPECT_NEAR(first["ttft_ms"].get<double>(), 100.0, 1e-9);
  EXPECT_NEAR(first["e2e_ms"].get<double>(), 1100.0, 1e-9);
  EXPECT_NEAR(first["tpot_ms"].get<double>(), 100.0, 1e-9);
  const nlohmann::ordered_json& failed = j["requests"][4];
  EXPECT_EQ(failed["status"], "DEADLINE_EXCEEDED");
  EXPECT_EQ(failed["error"], "nope");
  EXPECT_TRUE(failed["ttft_ms"].is_null());
}

TEST(Report, EmptySummaryIsNullsInJsonAndDashesInTheTable) {
  const nlohmann::ordered_json j = SummaryToJson(Summary{});
  EXPECT_EQ(j["count"], 0);
  EXPECT_TRUE(j["mean"].is_null());
  BenchReport report = KnownReport();
  report.records = {Failed(0, "UNAVAILABLE")};
  report.metrics = ComputeMetrics(report.records, 1.0);
  EXPECT_THAT(FormatSummaryTable(report), ContainsRegex("TTFT +- +- +- +-\n"));
}

TEST(Report, TableShowsCountsThroughputAndLatencies) {
  const std::string table = FormatSummaryTable(KnownReport());
  EXPECT_THAT(table, ContainsRegex("Successful requests: +2\n"));
  EXPECT_THAT(table, ContainsRegex("Failed requests: +3\n"));
  EXPECT_THAT(table, ContainsRegex("  RESOURCE_EXHAUSTED: +2\n"));
  EXPECT_THAT(table, ContainsRegex("  DEADLINE_EXCEEDED: +1\n"));
  EXPECT_THAT(table, ContainsRegex("Retries \\(requests retried\\): +2 \\(1\\)\n"));
  EXPECT_THAT(table, ContainsRegex("Request throughput \\(req/s\\): +1\\.00\n"));
  EXPECT_THAT(table, ContainsRegex("Output token throughput \\(tok/s\\): +8\\.00\n"));
  EXPECT_THAT(table, HasSubstr("closed loop, concurrency 2"));
  // mean, p50, p90, p99 of TTFT 100 and 300 ms.
  EXPECT_THAT(table, ContainsRegex("TTFT +200\\.00 +200\\.00 +280\\.00 +298\\.00\n"));
}

TEST(Report, CommandLineIsShellQuotedAndTimestampIsIso8601) {
  EXPECT_EQ(JoinCommandLine({"gsa-bench", "--target=h:1", "--prompts", "my file.jsonl", "it's"}),
            "gsa-bench --target=h:1 --prompts 'my file.jsonl' 'it'\\''s'");
  EXPECT_EQ(Iso8601Utc(std::chrono::system_clock::time_point(std::chrono::milliseconds(1500))),
            "1970-01-01T00:00:01.500Z");
}

TEST(Report, WriteJsonFileNamesAnUnwritablePath) {
  const absl::Status s = WriteJsonFile("/nonexistent/dir/out.json", nlohmann::ordered_json::object());
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("/nonexistent/dir/out.json"));
}

TEST(Progress, BarAndModeResolution) {
  EXPECT_EQ(ResolveProgressMode(ProgressMode::kAuto, true), ProgressMode::kBar);
  EXPECT_EQ(ResolveProgressMode(ProgressMode::kAuto, false), ProgressMode::kLines);
  EXPECT_EQ(ResolveProgressMode(ProgressMode::kOff, true), ProgressMode::kOff);
  EXPECT_EQ(RenderProgressBar(5, 1, 10, 2.0, 10),
            "[#####.....] 5/10  ok 4  failed 1  2.5 req/s  2.0 s");
}

TEST(Progress, LinesModePrintsEveryTenPercent) {
  std::ostringstream out;
  ProgressReporter p(out, ProgressMode::kLines, 20, "benchmark");
  for (int i = 0; i < 20; ++i) p.OnRequestDone(i != 3);
  p.Finish();
  const std::string s = out.str();
  EXPECT_EQ(std::count(s.begin(), s.end(), '\n'), 10);
  EXPECT_THAT(s, HasSubstr("benchmark: 20/20 requests done (1 failed)"));
}

TEST(Progress, BarRedrawsInPlaceAndEndsWithOneNewline) {
  std::ostringstream out;
  ProgressReporter p(out, ProgressMode::kBar, 2, "benchmark");
  p.OnRequestDone(true);   // first frame
  p.OnRequestDone(false);  // 100%: always drawn
  p.Finish();              // already drawn: only ends the line
  const std::string s = out.str();
  EXPECT_EQ(std::count(s.begin(), s.end(), '\r'), 2);
  EXPECT_EQ(std::count(s.begin(), s.end(), '\n'), 1);
  EXPECT_THAT(s, HasSubstr("2/2  ok 1  failed 1"));
  EXPECT_EQ(s.back(), '\n');
}

// ---- Requests -------------------------------------------------------------------------------------------------

TEST(Request, BuildsTheGenerateRequestFromTheOptions) {
  WorkItem item;
  item.prompt_ids = {5, 6, 7};
  item.max_tokens = 12;
  BenchOptions o;
  o.attention = AttentionMode::kDense;
  o.seed = 100;
  gsa::v1::GenerateRequest greedy = BuildGenerateRequest(item, o, 3, "bench-");
  EXPECT_EQ(greedy.request_id(), "bench-3");
  EXPECT_EQ(greedy.token_ids().ids_size(), 3);
  EXPECT_EQ(greedy.stopping().max_tokens(), 12);
  EXPECT_TRUE(greedy.stopping().ignore_eos());
  EXPECT_EQ(greedy.sampling().temperature(), 0.0f);
  EXPECT_FALSE(greedy.sampling().has_seed());
  EXPECT_EQ(greedy.attention(), gsa::v1::ATTENTION_DENSE);

  o.temperature = 0.8f;
  o.ignore_eos = false;
  item.is_text = true;
  item.text = "hello";
  gsa::v1::GenerateRequest sampled = BuildGenerateRequest(item, o, 3, "bench-");
  EXPECT_EQ(sampled.text(), "hello");
  EXPECT_EQ(sampled.sampling().seed(), 103u);
  EXPECT_FALSE(sampled.stopping().ignore_eos());
}

TEST(Request, StatusCodeNames) {
  EXPECT_EQ(StatusCodeName(grpc::StatusCode::OK), "OK");
  EXPECT_EQ(StatusCodeName(grpc::StatusCode::RESOURCE_EXHAUSTED), "RESOURCE_EXHAUSTED");
  EXPECT_EQ(StatusCodeName(grpc::StatusCode::UNAUTHENTICATED), "UNAUTHENTICATED");
  EXPECT_EQ(StatusCodeName(static_cast<grpc::StatusCode>(99)), "CODE_99");
}

// ---- Whole runs against a fake server ---------------------------------------------------------------------------

// Streams max_tokens tokens two per message, 2 ms apart, then a final message with usage.
// By the prompt's first token:
//   999  refused with RESOURCE_EXHAUSTED;
//   998  refused with UNAVAILABLE (trailers-only, as a draining gsa-server does) on the request
//        id's first N attempts, N = the prompt's second token, then streamed;
//   997  refused with CANCELLED on the request id's first attempt, then streamed;
//   996  one message of one token, then UNAVAILABLE (a stream broken after it started).
// GetModelInfo is refused with UNAVAILABLE while refuse_model_info > 0 (counting down).
class FakeGeneration final : public gsa::v1::Generation::Service {
 public:
  std::atomic<int> refuse_model_info{0};
  std::atomic<int> model_info_calls{0};

  // Generate calls received for `request_id`.
  int Attempts(const std::string& request_id) {
    std::lock_guard<std::mutex> lock(mu_);
    return attempts_[request_id];
  }

  grpc::Status GetModelInfo(grpc::ServerContext*, const gsa::v1::GetModelInfoRequest*,
                            gsa::v1::ModelInfo* info) override {
    ++model_info_calls;
    if (refuse_model_info.fetch_sub(1) > 0) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is draining");
    }
    info->set_model_dir("fake-model");
    info->set_backend("cpu");
    info->set_vocab_size(1000);
    info->set_max_model_len(512);
    info->set_bos_token_id(1);
    info->set_eos_token_id(2);
    return grpc::Status::OK;
  }

  grpc::Status Generate(grpc::ServerContext*, const gsa::v1::GenerateRequest* req,
                        grpc::ServerWriter<gsa::v1::GenerateResponse>* writer) override {
    if (!req->has_token_ids() || req->token_ids().ids_size() == 0) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no prompt ids");
    }
    int attempt = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      attempt = attempts_[req->request_id()]++;
    }
    const int32_t first = req->token_ids().ids(0);
    if (first == 999) {
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "queue full");
    }
    if (first == 998 && req->token_ids().ids_size() > 1 && attempt < req->token_ids().ids(1)) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is draining");
    }
    if (first == 997 && attempt == 0) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "shutting down");
    }
    if (first == 996) {
      gsa::v1::GenerateResponse msg;
      msg.add_token_ids(10);
      writer->Write(msg);
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection lost");
    }
    const int n = req->stopping().max_tokens();
    for (int sent = 0; sent < n;) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      gsa::v1::GenerateResponse msg;
      msg.set_request_id(req->request_id());
      for (int k = 0; k < 2 && sent < n; ++k, ++sent) msg.add_token_ids(10 + sent);
      writer->Write(msg);
    }
    gsa::v1::GenerateResponse last;
    last.set_finish_reason(gsa::v1::FINISH_REASON_LENGTH);
    last.mutable_usage()->set_prompt_tokens(req->token_ids().ids_size());
    last.mutable_usage()->set_completion_tokens(n);
    writer->Write(last);
    return grpc::Status::OK;
  }

 private:
  std::mutex mu_;
  std::map<std::string, int> attempts_;  // request id → Generate calls
};

class FakeServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
  }

  BenchOptions Options() const {
    BenchOptions o;
    o.target = "127.0.0.1:" + std::to_string(port_);
    o.progress = ProgressMode::kOff;
    o.connect_timeout_s = 5;
    o.retry = FastRetries(3);
    return o;
  }

  static RetryPolicy FastRetries(int max_retries) {
    RetryPolicy p;
    p.max_retries = max_retries;
    p.initial_backoff = std::chrono::milliseconds(1);
    p.max_backoff = std::chrono::milliseconds(4);
    return p;
  }

  // One request with prompt `ids` and max_tokens `max_tokens`, id "t-<index>".
  RequestRecord Send(std::vector<int32_t> ids, int index, int max_retries, int max_tokens = 4) {
    const std::unique_ptr<gsa::v1::Generation::Stub> stub = gsa::v1::Generation::NewStub(
        grpc::CreateChannel(Options().target, grpc::InsecureChannelCredentials()));
    WorkItem item;
    item.prompt_ids = std::move(ids);
    item.max_tokens = max_tokens;
    return SendStreamingRequest(*stub, BuildGenerateRequest(item, Options(), index, "t-"), 10.0,
                                FastRetries(max_retries), 1);
  }

  FakeGeneration service_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

TEST_F(FakeServerTest, MeasuresTtftItlAndTokensOfAStream) {
  const std::unique_ptr<gsa::v1::Generation::Stub> stub = gsa::v1::Generation::NewStub(
      grpc::CreateChannel(Options().target, grpc::InsecureChannelCredentials()));
  WorkItem item;
  item.prompt_ids = {5, 6, 7, 8};
  item.max_tokens = 7;
  const RequestRecord r = SendStreamingRequest(
      *stub, BuildGenerateRequest(item, Options(), 0, "t-"), 10.0, Options().retry, 1);
  ASSERT_TRUE(r.ok) << r.status << " " << r.error;
  EXPECT_EQ(r.status, "OK");
  EXPECT_EQ(r.finish_reason, "length");
  EXPECT_EQ(r.prompt_tokens, 4);
  EXPECT_EQ(r.output_tokens, 7);
  ASSERT_TRUE(r.ttft_s.has_value());
  EXPECT_GE(*r.ttft_s, 0.002);
  // Messages of 2, 2, 2, 1 tokens: the first message's two tokens give TTFT, the other 5 an ITL
  // each (≈ 1 ms for the pairs, ≈ 2 ms for the last single token).
  // (The network may deliver messages together, so only the structure is exact.)
  ASSERT_EQ(r.itl_s.size(), 5u);
  EXPECT_EQ(r.itl_s[0], r.itl_s[1]);  // one message's gap shared by its tokens
  EXPECT_EQ(r.itl_s[2], r.itl_s[3]);
  double itl_sum = 0.0;
  for (double gap : r.itl_s) {
    EXPECT_GE(gap, 0.0);
    itl_sum += gap;
  }
  // TTFT + the gaps = send → last token message, which the server writes after 4 × 2 ms.
  EXPECT_GE(*r.ttft_s + itl_sum, 0.008 - 1e-6);
  EXPECT_LE(itl_sum, r.e2e_s - *r.ttft_s + 1e-9);
}

TEST_F(FakeServerTest, ErrorsAreRecordedByStatusName) {
  const std::unique_ptr<gsa::v1::Generation::Stub> stub = gsa::v1::Generation::NewStub(
      grpc::CreateChannel(Options().target, grpc::InsecureChannelCredentials()));
  WorkItem item;
  item.prompt_ids = {999};
  const RequestRecord r = SendStreamingRequest(
      *stub, BuildGenerateRequest(item, Options(), 0, "t-"), 10.0, Options().retry, 1);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.status, "RESOURCE_EXHAUSTED");
  EXPECT_EQ(r.error, "queue full");
  EXPECT_FALSE(r.ttft_s.has_value());
  EXPECT_EQ(r.prompt_tokens, 1);  // no usage: the prompt sent
  EXPECT_EQ(r.retries, 0);        // not a refusal before the start: never retried
  EXPECT_EQ(service_.Attempts("t-0"), 1);
}

TEST_F(FakeServerTest, ARequestRefusedBeforeItStartedIsRetriedAndCounted) {
  const RequestRecord r = Send({998, 2, 5}, 0, 3);  // refused twice with UNAVAILABLE
  ASSERT_TRUE(r.ok) << r.status << " " << r.error;
  EXPECT_EQ(r.retries, 2);
  EXPECT_EQ(r.output_tokens, 4);
  EXPECT_EQ(r.finish_reason, "length");
  EXPECT_EQ(service_.Attempts("t-0"), 3);
  // Timed from the first attempt: TTFT includes the refusals and the waits.
  ASSERT_TRUE(r.ttft_s.has_value());
  EXPECT_GE(*r.ttft_s, 0.0005 + 0.001);  // waits of at least 0.5 and 1 ms, then the first 2 ms
}

TEST_F(FakeServerTest, CancelledBeforeItStartedIsRetried) {
  const RequestRecord r = Send({997, 5}, 0, 3);
  ASSERT_TRUE(r.ok) << r.status << " " << r.error;
  EXPECT_EQ(r.retries, 1);
  EXPECT_EQ(service_.Attempts("t-0"), 2);
}

TEST_F(FakeServerTest, RefusalsBeyondMaxRetriesFailWithTheLastStatus) {
  const RequestRecord r = Send({998, 5, 5}, 0, 2);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.status, "UNAVAILABLE");
  EXPECT_EQ(r.error, "the server is draining");
  EXPECT_EQ(r.retries, 2);
  EXPECT_EQ(service_.Attempts("t-0"), 3);

  const RequestRecord off = Send({998, 1, 5}, 1, 0);  // --max-retries 0
  EXPECT_EQ(off.status, "UNAVAILABLE");
  EXPECT_EQ(off.retries, 0);
  EXPECT_EQ(service_.Attempts("t-1"), 1);
}

TEST_F(FakeServerTest, AStreamBrokenAfterItsFirstTokensIsNeverRetried) {
  const RequestRecord r = Send({996, 5}, 0, 3);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.status, "UNAVAILABLE");
  EXPECT_EQ(r.retries, 0);
  EXPECT_EQ(r.output_tokens, 1);  // the token it streamed, which a retry would have repeated
  EXPECT_EQ(service_.Attempts("t-0"), 1);
}

TEST_F(FakeServerTest, WholeClosedLoopRun) {
  BenchOptions o = Options();
  o.num_requests = 12;
  o.concurrency = 3;
  o.warmup = 2;
  o.input_len = 20;
  o.output_len = 6;
  o.input_len_dist = LengthDistribution::kUniform;
  absl::StatusOr<BenchReport> report = RunBenchmark(o, RunEnvironment{});
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->num_requests, 12);
  EXPECT_EQ(report->records.size(), 12u);
  EXPECT_EQ(report->metrics.completed, 12);
  EXPECT_EQ(report->metrics.failed, 0);
  EXPECT_EQ(report->metrics.total_output_tokens, 12 * 6);
  EXPECT_GE(report->metrics.total_input_tokens, 12 * 10);
  EXPECT_LE(report->peak_in_flight, 3);
  EXPECT_EQ(report->model_info.model_dir(), "fake-model");
  EXPECT_EQ(report->metrics.ttft_ms.count, 12);
  EXPECT_EQ(report->metrics.itl_ms.count, 12 * 4);
  EXPECT_GT(report->metrics.output_throughput, 0.0);
  const nlohmann::ordered_json j = ReportToJson(*report);
  EXPECT_EQ(j["requests"].size(), 12u);
  EXPECT_EQ(j["results"]["warmup_requests"], 2);
}

TEST_F(FakeServerTest, OpenLoopRunFromAPromptsFileCountsErrors) {
  const std::string path = ::testing::TempDir() + "/bench_prompts.jsonl";
  {
    std::ofstream f(path);
    f << "{\"prompt_ids\": [5, 6], \"max_tokens\": 4}\n{\"prompt_ids\": [999, 6]}\n";
  }
  BenchOptions o = Options();
  o.prompts_file = path;
  o.request_rate = 200.0;
  o.output_len = 3;
  absl::StatusOr<BenchReport> report = RunBenchmark(o, RunEnvironment{});
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->num_requests, 2);  // the file's lines
  EXPECT_EQ(report->metrics.completed, 1);
  EXPECT_EQ(report->metrics.failed, 1);
  EXPECT_EQ(report->metrics.errors_by_status.at("RESOURCE_EXHAUSTED"), 1);
  EXPECT_EQ(report->metrics.total_output_tokens, 4);
  std::remove(path.c_str());
}

TEST_F(FakeServerTest, GrpcRetriesGetModelInfoUnderTheRetryServiceConfig) {
  grpc::ChannelArguments args;
  args.SetServiceConfigJSON(RetryServiceConfigJson(FastRetries(3)));
  const std::unique_ptr<gsa::v1::Generation::Stub> stub = gsa::v1::Generation::NewStub(
      grpc::CreateCustomChannel(Options().target, grpc::InsecureChannelCredentials(), args));
  service_.refuse_model_info = 2;
  grpc::ClientContext context;
  gsa::v1::ModelInfo info;
  const grpc::Status s = stub->GetModelInfo(&context, gsa::v1::GetModelInfoRequest(), &info);
  ASSERT_TRUE(s.ok()) << s.error_message();  // one call for the application, three for the server
  EXPECT_EQ(info.model_dir(), "fake-model");
  EXPECT_EQ(service_.model_info_calls, 3);
}

TEST_F(FakeServerTest, WholeRunRetriesRefusedRequestsAndReportsTheRetries) {
  const std::string path = ::testing::TempDir() + "/bench_retry_prompts.jsonl";
  {
    std::ofstream f(path);
    f << "{\"prompt_ids\": [5, 6]}\n{\"prompt_ids\": [998, 1, 6]}\n{\"prompt_ids\": [997, 6]}\n";
  }
  BenchOptions o = Options();
  o.prompts_file = path;
  o.concurrency = 3;
  o.output_len = 3;
  absl::StatusOr<BenchReport> report = RunBenchmark(o, RunEnvironment{});
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->metrics.completed, 3);
  EXPECT_EQ(report->metrics.failed, 0);
  EXPECT_EQ(report->metrics.retries, 2);
  EXPECT_EQ(report->metrics.retried_requests, 2);
  const nlohmann::ordered_json j = ReportToJson(*report);
  EXPECT_EQ(j["results"]["retries"], 2);
  EXPECT_EQ(j["requests"][1]["retries"], 1);
  std::remove(path.c_str());
}

TEST_F(FakeServerTest, RequestsTooLongForTheServerAreRejectedBeforeSending) {
  BenchOptions o = Options();
  o.input_len = 500;
  o.output_len = 100;
  const absl::StatusOr<BenchReport> report = RunBenchmark(o, RunEnvironment{});
  EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(report.status().message()), HasSubstr("max_model_len 512"));
}

TEST(Benchmark, AnUnreachableServerIsUnavailableNamingTheTarget) {
  BenchOptions o;
  o.target = "127.0.0.1:1";
  o.connect_timeout_s = 0.5;
  o.progress = ProgressMode::kOff;
  const auto start = std::chrono::steady_clock::now();
  const absl::StatusOr<BenchReport> report = RunBenchmark(o, RunEnvironment{});
  EXPECT_EQ(report.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(report.status().message()),
              HasSubstr("cannot reach gsa-server at 127.0.0.1:1"));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

}  // namespace
}  // namespace gsa::bench
