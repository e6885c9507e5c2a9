// /metrics after known traffic: every metric the operators' dashboards use, checked by value.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include <map>
#include <sstream>
#include <thread>

#include "engine/engine.h"
#include "gsa/v1/generation.grpc.pb.h"
#include "server/server.h"
#include "tests/testing/test_support.h"

namespace gsa {
namespace {

using namespace std::chrono_literals;

// "name{labels}" → value, from Prometheus' text format.
std::map<std::string, double> Parse(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t sp = line.rfind(' ');
    out[line.substr(0, sp)] = std::stod(line.substr(sp + 1));
  }
  return out;
}

class MetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions o;
    o.model_dir = gsa::testing::GoldenDir("gsa-tiny");
    o.port = 0;
    o.metrics_port = 0;
    o.cpu_threads = 2;
    o.engine.block_size = 4;
    o.engine.max_cache_tokens = 4 * 256;
    auto s = GsaServer::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    ASSERT_GT(server_->metrics_port(), 0);
    stub_ = v1::Generation::NewStub(grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));
  }

  grpc::Status Complete(std::vector<int32_t> ids, int max_tokens, v1::GenerateResponse* out = nullptr) {
    v1::GenerateRequest r;
    r.mutable_token_ids();
    for (int32_t id : ids) r.mutable_token_ids()->add_ids(id);
    r.mutable_stopping()->set_max_tokens(max_tokens);
    r.mutable_stopping()->set_ignore_eos(true);
    grpc::ClientContext ctx;
    v1::GenerateResponse resp;
    return stub_->Complete(&ctx, r, out ? out : &resp);
  }

  std::map<std::string, double> Scrape(std::string* raw = nullptr) {
    httplib::Client client("127.0.0.1", server_->metrics_port());
    auto res = client.Get("/metrics");
    EXPECT_TRUE(res) << "GET /metrics failed";
    if (!res) return {};
    EXPECT_EQ(res->status, 200);
    EXPECT_THAT(res->get_header_value("Content-Type"), ::testing::HasSubstr("text/plain"));
    if (raw) *raw = res->body;
    return Parse(res->body);
  }

  std::unique_ptr<GsaServer> server_;
  std::unique_ptr<v1::Generation::Stub> stub_;
};

TEST_F(MetricsTest, EveryMetricReflectsKnownTraffic) {
  // Warm-up ran one request inside the engine but not through gRPC.
  const std::vector<int32_t> prompt = {11, 12, 13, 14, 15, 16, 17, 18, 19, 20};  // 2 full blocks + 2
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Complete(prompt, 6).ok());
  EXPECT_EQ(Complete({}, 4).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Complete({1, 2}, 0).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // Stats are published at the end of each engine step.
  for (int i = 0; i < 100 && server_->engine().Stats().running != 0; ++i) std::this_thread::sleep_for(10ms);

  std::string raw;
  auto m = Scrape(&raw);
  EXPECT_EQ(m["gsa_requests_total{outcome=\"ok\"}"], 3) << raw;
  EXPECT_EQ(m["gsa_requests_total{outcome=\"invalid_argument\"}"], 2);
  EXPECT_EQ(m["gsa_time_to_first_token_seconds_count"], 3);
  EXPECT_EQ(m["gsa_e2e_request_latency_seconds_count"], 3);
  EXPECT_EQ(m["gsa_time_to_first_token_seconds_bucket{le=\"+Inf\"}"], 3);
  EXPECT_GT(m["gsa_e2e_request_latency_seconds_sum"], 0);
  // One token per engine step: 5 gaps in each 6-token completion.
  EXPECT_EQ(m["gsa_inter_token_latency_seconds_count"], 15);
  EXPECT_EQ(m["gsa_queue_depth"], 0);
  EXPECT_EQ(m["gsa_running_sequences"], 0);
  EXPECT_EQ(m["gsa_requests_in_flight"], 0);
  EXPECT_EQ(m["gsa_cache_blocks_total"], 256);
  EXPECT_EQ(m["gsa_cache_blocks_used"], 0);
  EXPECT_EQ(m["gsa_cache_blocks_free"], 256);
  EXPECT_EQ(m["gsa_preemptions_total"], 0);
  // 3 requests × 6 tokens, plus the warm-up's 1.
  EXPECT_EQ(m["gsa_generation_tokens_total"], 19);
  // Prompt tokens: 3 × 10 + the warm-up's 1; the 2nd and 3rd reuse 2 full blocks (8 tokens).
  EXPECT_EQ(m["gsa_prompt_tokens_total"], 31);
  EXPECT_EQ(m["gsa_prefix_cache_hit_tokens_total"], 16);
  EXPECT_NEAR(m["gsa_prefix_cache_hit_rate"], 16.0 / 31.0, 1e-9);
  EXPECT_GT(m["gsa_cache_blocks_cached"], 0);
  EXPECT_GT(m["gsa_engine_steps_total"], 0);
  EXPECT_GT(m["gsa_engine_step_seconds_total{part=\"backend\"}"], 0) << raw;
  EXPECT_GT(m["gsa_engine_step_seconds_total{part=\"engine\"}"], 0) << raw;
  // GSA: each sparse query kept min(k_base = 8, t + 1) positions in both layers.
  EXPECT_GT(m["gsa_selected_queries_total"], 0);
  for (const char* layer : {"0", "1"}) {
    const double k = m[std::string("gsa_selected_k_mean{layer=\"") + layer + "\"}"];
    EXPECT_GT(k, 1.0) << layer;
    EXPECT_LE(k, 8.0) << layer;
  }
}

TEST_F(MetricsTest, StreamingRecordsInterTokenLatencyAndCancellations) {
  v1::GenerateRequest r;
  for (int32_t id : {3, 4, 5}) r.mutable_token_ids()->add_ids(id);
  r.mutable_stopping()->set_max_tokens(12);
  r.mutable_stopping()->set_ignore_eos(true);
  {
    grpc::ClientContext ctx;
    auto reader = stub_->Generate(&ctx, r);
    v1::GenerateResponse m;
    int tokens = 0;
    while (reader->Read(&m)) tokens += m.token_ids_size();
    ASSERT_TRUE(reader->Finish().ok());
    ASSERT_EQ(tokens, 12);
  }
  {
    r.mutable_stopping()->set_max_tokens(900);  // fits the 1024-token cache
    grpc::ClientContext ctx;
    auto reader = stub_->Generate(&ctx, r);
    v1::GenerateResponse m;
    ASSERT_TRUE(reader->Read(&m));
    ctx.TryCancel();
    while (reader->Read(&m)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  for (int i = 0; i < 200; ++i) {
    if (Scrape()["gsa_requests_total{outcome=\"cancelled\"}"] == 1) break;
    std::this_thread::sleep_for(10ms);
  }
  auto m = Scrape();
  EXPECT_EQ(m["gsa_requests_total{outcome=\"ok\"}"], 1);
  EXPECT_EQ(m["gsa_requests_total{outcome=\"cancelled\"}"], 1);
  // 11 gaps in the finished stream, and at least none in the cancelled one.
  EXPECT_GE(m["gsa_inter_token_latency_seconds_count"], 11);
  EXPECT_EQ(m["gsa_time_to_first_token_seconds_count"], 2);
  EXPECT_EQ(m["gsa_e2e_request_latency_seconds_count"], 1);  // only successful calls
}

}  // namespace
}  // namespace gsa
