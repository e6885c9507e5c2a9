// gsa-server: loads a model, starts the engine and serves gRPC until SIGTERM or SIGINT, then
// drains: stops accepting, lets in-flight requests finish within --drain-timeout, exits 0.
#include <csignal>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "server/json_log.h"
#include "server/server.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  absl::StatusOr<gsa::ServerOptions> options = gsa::ParseServerFlags(args);
  if (!options.ok()) {
    if (absl::IsCancelled(options.status())) {
      std::cout << gsa::ServerUsage();
      return 0;
    }
    std::cerr << "gsa-server: " << options.status().message() << "\n";
    return 2;
  }
  if (options->model_dir.empty()) options->model_dir = GSA_DEFAULT_MODEL_DIR;

  // Block the stop signals in every thread (gRPC's included) and wait for them here.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  gsa::JsonLog startup_log(std::cerr);
  startup_log.Info("loading", {{"model_dir", options->model_dir}});
  absl::StatusOr<std::unique_ptr<gsa::GsaServer>> server = gsa::GsaServer::Start(*options);
  if (!server.ok()) {
    startup_log.Write("error", "start_failed", {{"error", std::string(server.status().message())}});
    return 1;
  }
  const gsa::Engine& engine = (*server)->engine();
  gsa::JsonLog& log = (*server)->log();
  if (const int64_t extra = engine.config().vocab_size - engine.sampled_vocab_size(); extra > 0) {
    log.Info("vocab_padded", {{"model_vocab_size", engine.config().vocab_size},
                              {"tokenizer_pieces", engine.sampled_vocab_size()},
                              {"extra_ids", extra},
                              {"action", "ids with no tokenizer piece are never sampled: their logits count "
                                         "as -inf for sampling and logprobs; prompt ids up to the model "
                                         "vocabulary are accepted"}});
  }
  log.Info("serving", {{"address", (*server)->address()},
                       {"backend", (*server)->backend_name()},
                       {"device", (*server)->backend_device()},
                       {"metrics_port", (*server)->metrics_port()},
                       {"cache_tokens", engine.num_cache_blocks() * engine.options().block_size},
                       {"cache_blocks", engine.num_cache_blocks()},
                       {"block_size", engine.options().block_size},
                       {"max_model_len", engine.max_model_len()}});
  // The one line scripts parse: the address actually bound (port 0 picks one).
  std::printf("gsa-server: listening on %s\n", (*server)->address().c_str());
  std::fflush(stdout);

  int sig = 0;
  sigwait(&stop_signals, &sig);
  log.Info("draining", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"},
                       {"in_flight", (*server)->in_flight()},
                       {"drain_timeout_s", options->drain_timeout_s}});
  const bool clean = (*server)->Drain(options->drain_timeout_s);
  log.Info("exiting", {{"drained", clean}});
  return 0;
}
