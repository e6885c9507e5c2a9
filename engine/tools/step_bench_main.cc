// gsa-step-bench: whole engine steps straight through CudaBackend, without the server, gRPC or
// the scheduler, so that a decode step's time can be split into what the GPU does and what the
// host adds. Issue 6: the end-to-end decode step at 128K is the target, and the time outside
// attention (projections, norms, MLP, launches) decides it at batch 4.
//
// For each context L: the batch's sequences get distinct random prompts of L - 64 tokens,
// prefilled in chunks (the model's attention); then B sequences decode one token per step at
// positions L - 64 … L - 1 (cycling within their own last block), as a server's decode steps
// would, through CUDA graphs unless --eager. Reported per case: the wall time of Step() (plan,
// upload, graph launch, logits copy, synchronize), mean / p50 / p90 / min, and tokens per second.
//
// --profile: one more decode step per case runs between cudaProfilerStart and cudaProfilerStop,
// so `ncu --profile-from-start off` times every kernel of exactly that step
// (deploy/gpu/step-profile.sh sums them by kind).
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/backend/cuda/cuda_backend.h"
#include "engine/model/model_loader.h"

namespace gsa {
namespace {

struct Options {
  std::string model_dir;
  std::vector<int64_t> contexts = {4096, 32768, 131072};
  std::vector<int64_t> batches = {1, 4};
  std::vector<std::string> attention = {"gsa", "dense"};
  int steps = 64;
  int warmup = 8;
  bool eager = false;
  bool cublas_only = false;
  bool merge_kernel = false;
  bool profile = false;
  double gpu_memory_fraction = 0.9;
  std::string json_path;
  std::string commit = "unknown";
};

constexpr int64_t kPrefillChunk = 2048;

// Exit status 2 for a bad command line (BadFlag), 1 for anything that fails after it (Die).
[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "gsa-step-bench: %s\n", message.c_str());
  std::exit(1);
}
[[noreturn]] void BadFlag(const std::string& message) {
  std::fprintf(stderr, "gsa-step-bench: %s\n", message.c_str());
  std::exit(2);
}

void Usage() {
  std::printf(
      "gsa-step-bench: decode steps through CudaBackend alone (no server), wall time per step.\n\n"
      "usage: gsa-step-bench --model DIR [options]\n"
      "  --model DIR              checkpoint directory (MODEL.md format; gsa-make-model writes one)\n"
      "  --contexts L1,L2,...     context lengths, each a multiple of 64 and >= 128 (default 4096,32768,131072)\n"
      "  --batch B1,B2,...        decode batch sizes (default 1,4)\n"
      "  --attention M1,...       gsa (the model's attention) and/or dense (default gsa,dense)\n"
      "  --steps N                timed decode steps per case (default 64)\n"
      "  --warmup N               untimed decode steps first (default 8; graph capture happens here)\n"
      "  --eager                  no CUDA graphs (CudaBackendOptions::use_cuda_graphs = false)\n"
      "  --cublas-only            every product through cuBLASLt, none through kernels::SmallLinear\n"
      "                           (CudaBackendOptions::use_small_rows_linear = false)\n"
      "  --merge-kernel           the sparse attention's splits merged by a separate kernel\n"
      "                           (CudaBackendOptions::attention_merge_in_kernel = false)\n"
      "  --profile                one more step per case inside cudaProfilerStart/Stop (for ncu)\n"
      "  --gpu-memory-fraction F  share of the GPU this process may use (default 0.9)\n"
      "  --json FILE              write the settings, card, commit and every case to FILE\n"
      "  --commit STR             the commit measured, recorded in the JSON\n\n"
      "Exit status: 0 measured; 1 a failure after the command line was read (no GPU, the model, memory);\n"
      "2 a bad command line.\n\n"
      "Example: gsa-step-bench --model /tmp/gsa-1.7b --contexts 131072 --batch 1,4 --json step.json\n");
}

std::vector<int64_t> ParseInts(const std::string& flag, const std::string& value) {
  std::vector<int64_t> out;
  for (absl::string_view part : absl::StrSplit(value, ',', absl::SkipEmpty())) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(part, &v) || v <= 0) {
      BadFlag(absl::StrCat(flag, ": '", std::string(part), "' is not a positive integer (expected a comma-separated list)"));
    }
    out.push_back(v);
  }
  if (out.empty()) BadFlag(absl::StrCat(flag, " needs at least one value"));
  return out;
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) BadFlag(absl::StrCat(a, " needs a value (see --help)"));
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      Usage();
      std::exit(0);
    } else if (a == "--model") {
      o.model_dir = value();
    } else if (a == "--contexts") {
      o.contexts = ParseInts(a, value());
    } else if (a == "--batch") {
      o.batches = ParseInts(a, value());
    } else if (a == "--attention") {
      o.attention.clear();
      for (absl::string_view m : absl::StrSplit(value(), ',', absl::SkipEmpty())) {
        if (m != "gsa" && m != "dense") BadFlag(absl::StrCat("--attention: '", std::string(m), "' is neither gsa nor dense"));
        o.attention.emplace_back(m);
      }
      if (o.attention.empty()) BadFlag("--attention needs gsa and/or dense");
    } else if (a == "--steps" || a == "--warmup") {
      const std::vector<int64_t> v = ParseInts(a, value());
      if (v.size() != 1 || v[0] > 100000) BadFlag(absl::StrCat(a, " takes one count between 1 and 100000"));
      (a == "--steps" ? o.steps : o.warmup) = static_cast<int>(v[0]);
    } else if (a == "--eager") {
      o.eager = true;
    } else if (a == "--cublas-only") {
      o.cublas_only = true;
    } else if (a == "--merge-kernel") {
      o.merge_kernel = true;
    } else if (a == "--profile") {
      o.profile = true;
    } else if (a == "--gpu-memory-fraction") {
      const std::string v = value();
      if (!absl::SimpleAtod(v, &o.gpu_memory_fraction) || !(o.gpu_memory_fraction > 0 && o.gpu_memory_fraction <= 1)) {
        BadFlag(absl::StrCat("--gpu-memory-fraction: '", v, "' is not a number in (0, 1]"));
      }
    } else if (a == "--json") {
      o.json_path = value();
    } else if (a == "--commit") {
      o.commit = value();
    } else {
      BadFlag(absl::StrCat("unknown flag '", a, "' (see --help)"));
    }
  }
  if (o.model_dir.empty()) BadFlag("--model DIR is required (gsa-make-model --shape gsa-1.7b --out DIR writes one)");
  for (int64_t L : o.contexts) {
    if (L % 64 != 0 || L < 128) BadFlag(absl::StrCat("--contexts: ", L, " is not a multiple of 64 of at least 128"));
  }
  std::sort(o.contexts.begin(), o.contexts.end());
  if (!o.json_path.empty() && !std::ofstream(o.json_path, std::ios::app)) {
    BadFlag(absl::StrCat("--json: cannot write '", o.json_path, "'"));  // before minutes of measuring
  }
  return o;
}

void Check(const absl::Status& s, const std::string& what) {
  if (!s.ok()) Die(absl::StrCat(what, ": ", s.ToString()));
}

struct Stats {
  double mean = 0, p50 = 0, p90 = 0, min = 0;
};

Stats Summarize(std::vector<double> v) {
  Stats s;
  std::sort(v.begin(), v.end());
  double sum = 0;
  for (double x : v) sum += x;
  s.mean = sum / static_cast<double>(v.size());
  s.p50 = v[v.size() / 2];
  s.p90 = v[std::min(v.size() - 1, v.size() * 9 / 10)];
  s.min = v.front();
  return s;
}

int Main(int argc, char** argv) {
  const Options opt = ParseArgs(argc, argv);
  const std::string why = CudaUnavailableReason();
  if (!why.empty()) Die(absl::StrCat("no usable GPU: ", why));

  absl::StatusOr<LoadedModel> model = LoadModel(opt.model_dir);
  Check(model.status(), absl::StrCat("loading ", opt.model_dir));
  const ModelConfig& c = model->config;
  const int64_t max_batch = *std::max_element(opt.batches.begin(), opt.batches.end());
  const int64_t max_context = opt.contexts.back();

  CudaBackendOptions co;
  co.gpu_memory_fraction = opt.gpu_memory_fraction;
  co.max_rows = std::max<int64_t>(kPrefillChunk, max_batch);
  co.use_cuda_graphs = !opt.eager;
  co.use_small_rows_linear = !opt.cublas_only;
  co.attention_merge_in_kernel = !opt.merge_kernel;
  absl::StatusOr<std::unique_ptr<CudaBackend>> created = CudaBackend::Create(c, model->weights, co);
  Check(created.status(), "CudaBackend::Create");
  CudaBackend& backend = **created;

  constexpr int64_t kBlock = 64;
  const int64_t blocks_per_seq = max_context / kBlock;
  const int64_t need = max_batch * blocks_per_seq;
  absl::StatusOr<int64_t> fit = backend.MaxCacheBlocks(kBlock);
  Check(fit.status(), "MaxCacheBlocks");
  if (*fit < need) {
    Die(absl::StrCat("the cache needs ", need, " blocks of ", kBlock, " tokens (", max_batch, " sequences of ",
                     max_context, ") but only ", *fit, " fit; lower --batch or --contexts, or raise --gpu-memory-fraction"));
  }
  Check(backend.AllocateCache(need, kBlock), "AllocateCache");

  std::printf("gsa-step-bench: %s; model %s (%lld layers, d_model %lld, vocab %lld); graphs %s; products %s; commit %s\n",
              backend.device_description().c_str(), opt.model_dir.c_str(), static_cast<long long>(c.n_layers),
              static_cast<long long>(c.d_model), static_cast<long long>(c.vocab_size), opt.eager ? "off" : "on",
              opt.cublas_only ? "cuBLASLt only" : "SmallLinear for <= 8 rows", opt.commit.c_str());
  std::printf("%8s %5s %6s %10s %10s %10s %10s %10s\n", "context", "batch", "attn", "mean ms", "p50 ms", "p90 ms",
              "min ms", "tokens/s");

  // Sequence s owns blocks [s * blocks_per_seq, (s + 1) * blocks_per_seq).
  auto table = [&](int64_t s, int64_t context_len) {
    std::vector<int32_t> t(static_cast<size_t>((context_len + kBlock - 1) / kBlock));
    for (size_t i = 0; i < t.size(); ++i) t[i] = static_cast<int32_t>(s * blocks_per_seq + static_cast<int64_t>(i));
    return t;
  };

  nlohmann::json cases = nlohmann::json::array();
  nlohmann::json prefills = nlohmann::json::array();
  for (int64_t L : opt.contexts) {
    const int64_t prefix = L - kBlock;
    // Distinct prompts per sequence (a shared one would let the batch's rows share cache lines).
    for (int64_t s = 0; s < max_batch; ++s) {
      std::mt19937_64 rng(static_cast<uint64_t>(L * 1000 + s));
      std::uniform_int_distribution<int32_t> tok(3, static_cast<int32_t>(c.vocab_size - 1));
      const auto t0 = std::chrono::steady_clock::now();
      for (int64_t start = 0; start < prefix; start += kPrefillChunk) {
        const int64_t n = std::min(kPrefillChunk, prefix - start);
        StepBatch b;
        SequenceInBatch seq;
        seq.query_start = 0;
        seq.num_query = static_cast<int32_t>(n);
        seq.context_len = static_cast<int32_t>(start + n);
        seq.block_table = table(s, seq.context_len);
        b.seqs.push_back(std::move(seq));
        for (int64_t j = 0; j < n; ++j) b.token_ids.push_back(tok(rng));
        b.logits_rows.push_back(static_cast<int32_t>(n - 1));
        Check(backend.Step(b).status(), absl::StrCat("prefill of sequence ", s, " at ", start));
      }
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      prefills.push_back({{"context", L}, {"sequence", s}, {"prompt_tokens", prefix}, {"ms", ms}});
    }

    for (const std::string& mode : opt.attention) {
      for (int64_t B : opt.batches) {
        std::mt19937_64 rng(static_cast<uint64_t>(L + B));
        std::uniform_int_distribution<int32_t> tok(3, static_cast<int32_t>(c.vocab_size - 1));
        auto step = [&](int j) {
          StepBatch b;
          const int64_t pos = prefix + j % kBlock;
          for (int64_t s = 0; s < B; ++s) {
            SequenceInBatch seq;
            seq.query_start = static_cast<int32_t>(s);
            seq.num_query = 1;
            seq.context_len = static_cast<int32_t>(pos + 1);
            seq.block_table = table(s, pos + 1);
            seq.attention = mode == "dense" ? AttentionMode::kDense : AttentionMode::kModelDefault;
            b.seqs.push_back(std::move(seq));
            b.token_ids.push_back(tok(rng));
            b.logits_rows.push_back(static_cast<int32_t>(s));
          }
          const auto t0 = std::chrono::steady_clock::now();
          Check(backend.Step(b).status(), absl::StrCat("decode step at context ", L, ", batch ", B, ", ", mode));
          return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        };
        int j = 0;
        for (int w = 0; w < opt.warmup; ++w) step(j++);
        std::vector<double> ms;
        for (int i = 0; i < opt.steps; ++i) ms.push_back(step(j++));
        const Stats s = Summarize(ms);
        std::printf("%8lld %5lld %6s %10.3f %10.3f %10.3f %10.3f %10.1f\n", static_cast<long long>(L),
                    static_cast<long long>(B), mode.c_str(), s.mean, s.p50, s.p90, s.min,
                    1000.0 * static_cast<double>(B) / s.mean);
        std::fflush(stdout);
        nlohmann::json row = {{"context", L},   {"batch", B},       {"attention", mode},   {"steps", opt.steps},
                              {"step_ms_mean", s.mean}, {"step_ms_p50", s.p50}, {"step_ms_p90", s.p90},
                              {"step_ms_min", s.min},   {"tokens_per_s", 1000.0 * static_cast<double>(B) / s.mean}};
        if (opt.profile) {
          cudaProfilerStart();
          row["profiled_step_ms"] = step(j++);
          cudaProfilerStop();
          std::printf("profiled one step: context %lld, batch %lld, %s\n", static_cast<long long>(L),
                      static_cast<long long>(B), mode.c_str());
        }
        cases.push_back(std::move(row));
      }
    }
  }

  if (!opt.json_path.empty()) {
    int runtime = 0, driver = 0;
    cudaRuntimeGetVersion(&runtime);
    cudaDriverGetVersion(&driver);
    nlohmann::json j = {
        {"tool", "gsa-step-bench"},
        {"what", "wall time of CudaBackend::Step for decode steps (plan, metadata upload, graph launch or eager "
                 "launches, logits copy, synchronize), no server; distinct random prompts of context - 64 "
                 "tokens per sequence, then one token per sequence per step"},
        {"card", backend.device_description()},
        {"cuda_runtime", runtime},
        {"cuda_driver", driver},
        {"commit", opt.commit},
        {"date", [] {
           char buf[32];
           const std::time_t now = std::time(nullptr);
           std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
           return std::string(buf);
         }()},
        {"model", {{"dir", opt.model_dir}, {"n_layers", c.n_layers}, {"d_model", c.d_model}, {"d_ffn", c.d_ffn},
                   {"n_heads", c.n_heads}, {"n_kv_heads", c.n_kv_heads}, {"d_head", c.d_head},
                   {"vocab_size", c.vocab_size}, {"k_base", c.k_base}}},
        {"settings", {{"graphs", !opt.eager}, {"small_rows_linear", !opt.cublas_only}, {"attention_merge_in_kernel", !opt.merge_kernel}, {"steps", opt.steps}, {"warmup", opt.warmup}, {"block_size", kBlock}}},
        {"command", [&] {
           std::string cmd;
           for (int i = 0; i < argc; ++i) absl::StrAppend(&cmd, i ? " " : "", argv[i]);
           return cmd;
         }()},
        {"prefills", prefills},
        {"cases", cases}};
    std::ofstream f(opt.json_path);
    f << j.dump(2) << "\n";
    if (!f) Die(absl::StrCat("--json: cannot write '", opt.json_path, "'"));
  }
  return 0;
}

}  // namespace
}  // namespace gsa

int main(int argc, char** argv) { return gsa::Main(argc, argv); }
