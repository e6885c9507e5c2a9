#include "engine/backend/backend.h"

#include <utility>

namespace gsa {

absl::Status Backend::Launch(const StepBatch& batch) {
  if (launched_) return absl::FailedPreconditionError("Backend::Launch while a step is in flight; Collect it first");
  absl::StatusOr<StepOutput> out = Step(batch);
  if (!out.ok()) return out.status();
  launched_.emplace(*std::move(out));
  return absl::OkStatus();
}

absl::StatusOr<StepOutput> Backend::Collect() {
  if (!launched_) return absl::FailedPreconditionError("Backend::Collect with no step in flight; Launch one first");
  StepOutput out = std::move(*launched_);
  launched_.reset();
  return out;
}

}  // namespace gsa
