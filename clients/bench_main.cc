// gsa-bench: load-tests a gsa-server deployment with streaming Generate requests and reports
// throughput and latency (TTFT, TPOT, ITL, E2E). See BenchUsage() or `gsa-bench --help`.
#include <unistd.h>

#include <iostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "clients/bench/bench_options.h"
#include "clients/bench/benchmark.h"
#include "clients/bench/report.h"

namespace {

// 2 for problems with what the user asked for (flags, prompts file), 1 for everything else.
int ExitCodeFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kNotFound:
      return 2;
    default:
      return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> all(argv, argv + argc);
  const std::vector<std::string> args(all.begin() + (all.empty() ? 0 : 1), all.end());
  absl::StatusOr<gsa::bench::BenchOptions> options = gsa::bench::ParseBenchFlags(args);
  if (!options.ok()) {
    if (absl::IsCancelled(options.status())) {
      std::cout << gsa::bench::BenchUsage();
      return 0;
    }
    std::cerr << "gsa-bench: " << options.status().message() << "\n"
              << "Run gsa-bench --help for the flags.\n";
    return 2;
  }

  gsa::bench::RunEnvironment env;
  env.log = &std::cerr;
  env.log_is_tty = isatty(STDERR_FILENO) != 0;
  env.command_line = gsa::bench::JoinCommandLine(gsa::bench::RedactSecretFlags(all));
  absl::StatusOr<gsa::bench::BenchReport> report = gsa::bench::RunBenchmark(*options, env);
  if (!report.ok()) {
    std::cerr << "gsa-bench: " << report.status().message() << "\n";
    return ExitCodeFor(report.status());
  }

  std::cout << gsa::bench::FormatSummaryTable(*report) << std::flush;
  int exit_code = 0;
  if (!options->json_file.empty()) {
    const absl::Status written =
        gsa::bench::WriteJsonFile(options->json_file, gsa::bench::ReportToJson(*report));
    if (!written.ok()) {
      std::cerr << "gsa-bench: " << written.message() << "\n";
      exit_code = 1;
    } else {
      std::cerr << "gsa-bench: wrote " << options->json_file << "\n";
    }
  }
  if (report->metrics.completed == 0 && report->num_requests > 0) {
    for (const gsa::bench::RequestRecord& r : report->records) {
      if (!r.ok) {
        std::cerr << "gsa-bench: every request failed; the first: " << r.status << ": " << r.error
                  << "\n";
        break;
      }
    }
    exit_code = 1;
  }
  return exit_code;
}
