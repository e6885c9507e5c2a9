// Backend: executes one engine step on some device. Implementations: the fp32 CPU reference
// (backend/cpu) and CUDA (backend/cuda). A test that passes on one backend runs unchanged on the
// other.
//
// Thread-safety: a Backend is owned and driven by the engine thread only.
#pragma once

#include <optional>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/backend/batch.h"
#include "engine/cache/cache_spec.h"
#include "engine/model/config.h"

namespace gsa {

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string_view name() const = 0;
  virtual const ModelConfig& config() const = 0;

  // Reserves the paged cache (all layers) once; a second call replaces it (contents lost).
  // ResourceExhausted, naming the bytes, when it does not fit.
  virtual absl::Status AllocateCache(int64_t num_blocks, int64_t block_size) = 0;
  virtual const CacheSpec& cache_spec() const = 0;

  // Runs the model over the batch's new tokens: writes their K, V, indexer keys (and indexer
  // statistics) into their cache slots and returns the requested outputs. A batch that fails
  // ValidateBatch is refused before anything is written.
  virtual absl::StatusOr<StepOutput> Step(const StepBatch& batch) = 0;

  // The same step in two halves, so the host can work while the device computes (the engine
  // streams one step's tokens while the next runs). Launch checks the batch as Step does and
  // enqueues the step, returning once the device has it; Collect waits for that step and returns
  // what Step would have. One step at a time: Launch, Collect, Launch, … — a second Launch before
  // Collect, or a Collect with nothing launched, is FailedPrecondition. An error from Launch means
  // nothing is in flight. While a step is in flight the caller must not hand its cache slots to
  // other sequences (the device may still write them), and `batch` need not outlive Launch.
  // The defaults run the whole step inside Launch (a backend with nothing to overlap).
  virtual absl::Status Launch(const StepBatch& batch);
  virtual absl::StatusOr<StepOutput> Collect();

 private:
  // The defaults' result between Launch and Collect.
  std::optional<StepOutput> launched_;
};

}  // namespace gsa
