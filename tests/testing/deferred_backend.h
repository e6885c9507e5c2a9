// Test helper: a Backend whose Launch only checks the batch and keeps a copy, and whose Collect
// runs the step on the wrapped backend. The work a real asynchronous backend does on its device
// then happens as late as it could: after everything the engine does between the two calls
// (streaming, cancels, finishing requests). An engine that changed what a launched step reads or
// writes in between (cache blocks handed to another sequence, tokens rewritten) gives different
// outputs on it than on the wrapped backend alone.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <utility>

#include "engine/backend/backend.h"

namespace gsa::testing {

class DeferredBackend : public Backend {
 public:
  explicit DeferredBackend(std::unique_ptr<Backend> inner) : inner_(std::move(inner)) {}

  std::string_view name() const override { return inner_->name(); }
  const ModelConfig& config() const override { return inner_->config(); }
  absl::Status AllocateCache(int64_t num_blocks, int64_t block_size) override {
    return inner_->AllocateCache(num_blocks, block_size);
  }
  const CacheSpec& cache_spec() const override { return inner_->cache_spec(); }
  absl::StatusOr<StepOutput> Step(const StepBatch& batch) override { return inner_->Step(batch); }

  absl::Status Launch(const StepBatch& batch) override {
    if (pending_) return absl::FailedPreconditionError("DeferredBackend: Launch while a step is in flight");
    if (absl::Status ok = ValidateBatch(batch, cache_spec(), config().vocab_size); !ok.ok()) return ok;
    pending_ = batch;
    ++launches_;
    return absl::OkStatus();
  }
  absl::StatusOr<StepOutput> Collect() override {
    if (!pending_) return absl::FailedPreconditionError("DeferredBackend: Collect with no step in flight");
    const StepBatch batch = std::move(*pending_);
    pending_.reset();
    return inner_->Step(batch);
  }

  // Steps launched so far (read it once the engine is idle).
  int64_t launches() const { return launches_; }

 private:
  std::unique_ptr<Backend> inner_;
  std::optional<StepBatch> pending_;
  int64_t launches_ = 0;
};

}  // namespace gsa::testing
