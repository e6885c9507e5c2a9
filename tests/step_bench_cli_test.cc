// gsa-step-bench's command line: bad flags exit 2 naming the flag and what to change; anything
// that fails after the command line (no GPU here, or a missing model) exits 1 with the reason.
// The measuring itself needs a GPU (deploy/gpu/step-profile.sh runs it there).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>
#include <utility>

namespace gsa {
namespace {

// Runs the binary with `args` (already shell-quoted), returns (exit status, stdout + stderr).
std::pair<int, std::string> RunStepBench(const std::string& args) {
  const std::string cmd = std::string(GSA_STEP_BENCH_BINARY) + " " + args + " 2>&1";
  FILE* f = popen(cmd.c_str(), "r");
  if (f == nullptr) return {-1, "popen failed"};
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), f)) > 0) out.append(buf.data(), n);
  const int st = pclose(f);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

TEST(StepBenchCli, HelpExitsZero) {
  const auto [rc, out] = RunStepBench("--help");
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("--contexts"), std::string::npos) << out;
  EXPECT_NE(out.find("--cublas-only"), std::string::npos) << out;
}

TEST(StepBenchCli, BadFlagsExitTwoNamingTheProblem) {
  const std::pair<const char*, const char*> cases[] = {
      {"--model m --contexts 100", "not a multiple of 64"},
      {"--model m --contexts 4096,abc", "'abc' is not a positive integer"},
      {"--model m --batch 0", "'0' is not a positive integer"},
      {"--model m --attention sparse", "'sparse' is neither gsa nor dense"},
      {"--model m --steps", "--steps needs a value"},
      {"--model m --gpu-memory-fraction 1.5", "is not a number in (0, 1]"},
      {"--model m --frobnicate", "unknown flag '--frobnicate'"},
      {"--contexts 4096", "--model DIR is required"},
      {"--model m --json /nonexistent-dir/x.json", "--json: cannot write"},
  };
  for (const auto& [args, want] : cases) {
    const auto [rc, out] = RunStepBench(args);
    EXPECT_EQ(rc, 2) << args << ": " << out;
    EXPECT_NE(out.find(want), std::string::npos) << args << ": " << out;
  }
}

TEST(StepBenchCli, FailuresAfterTheCommandLineExitOneWithTheReason) {
  // Without a GPU: "no usable GPU: ..."; with one: the model directory that does not exist.
  const auto [rc, out] = RunStepBench("--model /nonexistent/model --contexts 4096 --batch 1");
  EXPECT_EQ(rc, 1) << out;
  EXPECT_TRUE(out.find("no usable GPU") != std::string::npos || out.find("/nonexistent/model") != std::string::npos)
      << out;
}

}  // namespace
}  // namespace gsa
