// Backend: executes one engine step on some device. Implementations: the fp32 CPU reference
// (backend/cpu) and CUDA (backend/cuda). A test that passes on one backend runs unchanged on the
// other.
//
// Thread-safety: a Backend is owned and driven by the engine thread only.
#pragma once

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
};

}  // namespace gsa
