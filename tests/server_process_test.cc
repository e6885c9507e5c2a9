// The gsa-server binary as an operator runs it: starts on --port 0 and prints its address;
// SIGTERM mid-request drains: the in-flight stream completes, new calls are refused, exit 0.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "gsa/v1/generation.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "tests/testing/test_support.h"

namespace gsa {
namespace {

using namespace std::chrono_literals;

// A child process running gsa-server, killed on destruction if still alive.
class ServerProcess {
 public:
  explicit ServerProcess(const std::vector<std::string>& args) {
    int out[2];
    if (pipe(out) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], STDOUT_FILENO);
      close(out[0]);
      close(out[1]);
      std::vector<char*> argv;
      std::string bin = GSA_SERVER_BINARY;
      argv.push_back(bin.data());
      std::vector<std::string> copy = args;
      for (auto& a : copy) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(bin.c_str(), argv.data());
      _exit(127);
    }
    close(out[1]);
    stdout_ = fdopen(out[0], "r");
  }
  ~ServerProcess() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (stdout_) fclose(stdout_);
  }

  // Reads stdout until the "listening on ADDR" line; returns ADDR (empty on EOF).
  std::string WaitForAddress() {
    char line[512];
    while (stdout_ && fgets(line, sizeof line, stdout_)) {
      std::string s(line);
      const std::string key = "listening on ";
      if (auto p = s.find(key); p != std::string::npos) {
        std::string addr = s.substr(p + key.size());
        while (!addr.empty() && (addr.back() == '\n' || addr.back() == '\r')) addr.pop_back();
        return addr;
      }
    }
    return "";
  }
  void Signal(int sig) { kill(pid_, sig); }
  // Exit status, waiting up to `timeout`; -1 if still running.
  int Wait(std::chrono::seconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(10ms);
    }
    return -1;
  }

 private:
  pid_t pid_ = -1;
  FILE* stdout_ = nullptr;
  bool exited_ = false;
};

v1::GenerateRequest Ids(std::vector<int32_t> ids, int max_tokens) {
  v1::GenerateRequest r;
  for (int32_t id : ids) r.mutable_token_ids()->add_ids(id);
  r.mutable_stopping()->set_max_tokens(max_tokens);
  r.mutable_stopping()->set_ignore_eos(true);
  return r;
}

TEST(ServerProcess, SigtermDrainsInFlightRequestsThenExitsZero) {
  ServerProcess p({"--model", gsa::testing::GoldenDir("gsa-tiny"), "--port", "0", "--cpu-threads", "2",
                   "--block-size", "8", "--max-cache-tokens", "4096", "--drain-timeout", "60"});
  const std::string addr = p.WaitForAddress();
  ASSERT_FALSE(addr.empty()) << "gsa-server did not print its address";
  auto stub = v1::Generation::NewStub(grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));

  grpc::ClientContext ctx;
  auto reader = stub->Generate(&ctx, Ids({1, 2, 3}, 3000));
  v1::GenerateResponse m;
  ASSERT_TRUE(reader->Read(&m));  // in flight
  int tokens = m.token_ids_size();
  p.Signal(SIGTERM);
  std::this_thread::sleep_for(100ms);
  // New calls are refused while draining.
  {
    grpc::ClientContext c2;
    c2.set_deadline(std::chrono::system_clock::now() + 5s);
    v1::GenerateResponse r2;
    grpc::Status s = stub->Complete(&c2, Ids({1, 2}, 2), &r2);
    // Refused without running, by the draining service: the server shuts its connections down
    // only once the calls in flight are done, so this call (made while the stream above still
    // runs) always meets the service.
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  }
  v1::FinishReason reason = v1::FINISH_REASON_UNSPECIFIED;
  while (reader->Read(&m)) {
    tokens += m.token_ids_size();
    reason = m.finish_reason();
  }
  grpc::Status s = reader->Finish();
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(reason, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(tokens, 3000);
  EXPECT_EQ(p.Wait(60s), 0);
}

TEST(ServerProcess, GsaBenchRunsAgainstTheServerAndWritesSaneJson) {
  ServerProcess p({"--model", gsa::testing::GoldenDir("gsa-tiny"), "--port", "0", "--cpu-threads", "2",
                   "--block-size", "8", "--max-cache-tokens", "4096"});
  const std::string addr = p.WaitForAddress();
  ASSERT_FALSE(addr.empty());
  gsa::testing::TempDir tmp;
  const std::string json_path = tmp.File("bench.json");
  const std::string cmd = std::string(GSA_BENCH_BINARY) + " --target " + addr +
                          " --num-requests 24 --concurrency 4 --input-len 16 --output-len 8" +
                          " --input-len-dist uniform --range-ratio 0.5 --warmup 2 --seed 3 --progress off" +
                          " --json " + json_path + " > " + tmp.File("bench.out") + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << gsa::testing::ReadFile(tmp.File("bench.out"));
  const std::string table = gsa::testing::ReadFile(tmp.File("bench.out"));
  EXPECT_NE(table.find("TTFT"), std::string::npos) << table;

  const nlohmann::json j = nlohmann::json::parse(gsa::testing::ReadFile(json_path));
  const auto& r = j.at("results");
  EXPECT_EQ(r.at("num_requests"), 24);
  EXPECT_EQ(r.at("completed"), 24);
  EXPECT_EQ(r.at("failed"), 0);
  EXPECT_TRUE(r.at("errors").empty());
  EXPECT_EQ(r.at("total_output_tokens"), 24 * 8);  // ignore_eos: exactly output-len each
  EXPECT_GT(r.at("duration_s").get<double>(), 0);
  EXPECT_GT(r.at("request_throughput").get<double>(), 0);
  EXPECT_GT(r.at("output_throughput").get<double>(), 0);
  EXPECT_LE(r.at("peak_in_flight").get<int>(), 4);
  for (const char* metric : {"ttft_ms", "itl_ms", "e2e_ms"}) {
    const auto& m = r.at(metric);
    EXPECT_GT(m.at("count").get<int>(), 0) << metric;
    EXPECT_LE(m.at("p50").get<double>(), m.at("p90").get<double>()) << metric;
    EXPECT_LE(m.at("p90").get<double>(), m.at("p99").get<double>()) << metric;
    EXPECT_GT(m.at("mean").get<double>(), 0) << metric;
  }
  EXPECT_LE(r.at("ttft_ms").at("p50").get<double>(), r.at("e2e_ms").at("p50").get<double>());
  ASSERT_EQ(j.at("requests").size(), 24u);
  for (const auto& req : j.at("requests")) {
    EXPECT_EQ(req.at("status"), "OK");
    EXPECT_EQ(req.at("output_tokens"), 8);
    EXPECT_GE(req.at("prompt_tokens").get<int>(), 8);
    EXPECT_LE(req.at("prompt_tokens").get<int>(), 24);
  }
  EXPECT_EQ(j.at("model_info").at("vocab_size"), 512);
  EXPECT_EQ(j.at("config").at("concurrency"), 4);
}

TEST(ServerProcess, BadFlagsExitTwoNamingTheFlag) {
  ServerProcess p({"--max-num-seqs", "zero"});
  EXPECT_EQ(p.Wait(30s), 2);
}

TEST(ServerProcess, BadIndexerKeyDtypeExitsTwo) {
  ServerProcess p({"--indexer-key-dtype", "fp16"});
  EXPECT_EQ(p.Wait(30s), 2);
}

TEST(ServerProcess, Fp8IndexerKeysOnTheCpuBackendExitOne) {
  // A lossy CUDA-only cache format: the CPU backend refuses it instead of ignoring it.
  ServerProcess p({"--backend", "cpu", "--indexer-key-dtype", "fp8", "--port", "0"});
  EXPECT_EQ(p.Wait(60s), 1);
}

TEST(ServerProcess, MissingModelDirectoryExitsOne) {
  ServerProcess p({"--model", "/nonexistent/model", "--port", "0"});
  EXPECT_EQ(p.Wait(30s), 1);
}

}  // namespace
}  // namespace gsa
