#include "server/backend_factory.h"

#include <thread>

#include "absl/strings/str_cat.h"
#include "engine/backend/cpu/cpu_backend.h"
#ifdef GSA_HAVE_CUDA_BACKEND
#include "engine/backend/cuda/cuda_backend.h"
#endif

namespace gsa {

absl::StatusOr<BackendChoice> MakeBackend(const ServerOptions& options, const LoadedModel& model) {
  BackendChoice choice;
  choice.engine_options = options.engine;
  std::string name = options.backend;
  if (name == "auto") {
#ifdef GSA_HAVE_CUDA_BACKEND
    choice.why = CudaUnavailableReason();
    name = choice.why.empty() ? "cuda" : "cpu";
#else
    choice.why = "this build has no CUDA backend";
    name = "cpu";
#endif
  }
  if (name == "cuda") {
#ifdef GSA_HAVE_CUDA_BACKEND
    CudaBackendOptions co;
    co.gpu_memory_fraction = options.gpu_memory_fraction;
    co.max_rows = std::max(options.engine.max_batched_tokens, options.engine.max_num_seqs);
    co.use_cuda_graphs = !options.enforce_eager;
    co.fp8_indexer_keys = options.fp8_indexer_keys;
    absl::StatusOr<std::unique_ptr<CudaBackend>> b = CudaBackend::Create(model.config, model.weights, co);
    if (!b.ok()) return b.status();
    absl::StatusOr<int64_t> blocks = (*b)->MaxCacheBlocks(options.engine.block_size);
    if (!blocks.ok()) return blocks.status();
    choice.engine_options.max_cache_tokens = *blocks * options.engine.block_size;
    choice.device = (*b)->device_description();
    choice.backend = std::move(*b);
    return choice;
#else
    return absl::FailedPreconditionError(
        "--backend cuda: this build has no CUDA backend (nvcc was not found when it was built, or it "
        "was configured with -DGSA_CUDA=OFF); use --backend cpu (or auto)");
#endif
  }
  if (name != "cpu") {
    return absl::InvalidArgumentError(absl::StrCat("--backend ", options.backend, ": expected auto, cpu or cuda"));
  }
  if (options.fp8_indexer_keys) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--indexer-key-dtype fp8 needs the CUDA backend, but this server runs on the CPU",
        choice.why.empty() ? "" : absl::StrCat(" (", choice.why, ")"), "; drop the flag (the CPU backend keeps bf16 keys)"));
  }
  absl::StatusOr<std::unique_ptr<CpuBackend>> b =
      CpuBackend::Create(model.config, model.weights, {options.cpu_threads});
  if (!b.ok()) return b.status();
  const int threads = options.cpu_threads > 0 ? options.cpu_threads
                                              : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  choice.device = absl::StrCat("cpu (", threads, " threads)");
  choice.backend = std::move(*b);
  return choice;
}

}  // namespace gsa
