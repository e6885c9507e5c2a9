// CpuBackend: the fp32 reference implementation of MODEL.md over the paged cache of DESIGN.md.
// Written for clarity and exactness; it is the oracle for every GPU test, the backend of CI and
// what gsa-server runs on a machine without a GPU. Uses a thread pool for the dense products and
// the per-row attention work; results do not depend on the thread count or the batch.
//
// Thread-safety: driven by one thread (the engine thread).
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/model/model_loader.h"
#include "engine/util/thread_pool.h"

namespace gsa {

struct CpuBackendOptions {
  int num_threads = 0;  // 0: all hardware threads
};

class CpuBackend : public Backend {
 public:
  // Converts the weights to fp32 (they may be F32, BF16 or F16 in the checkpoint).
  static absl::StatusOr<std::unique_ptr<CpuBackend>> Create(const ModelConfig& config,
                                                            const ModelWeights& weights,
                                                            const CpuBackendOptions& options = {});
  ~CpuBackend() override;

  std::string_view name() const override { return "cpu"; }
  const ModelConfig& config() const override { return config_; }
  absl::Status AllocateCache(int64_t num_blocks, int64_t block_size) override;
  const CacheSpec& cache_spec() const override { return cache_spec_; }
  absl::StatusOr<StepOutput> Step(const StepBatch& batch) override;

 private:
  struct Layer;
  struct LayerCache;

 public:
  // Use Create; the tag keeps construction inside it while letting make_unique build the object.
  struct CreateTag {
    explicit CreateTag() = default;
  };
  CpuBackend(CreateTag, const ModelConfig& config, int num_threads);

 private:
  // stats_index[r]: row r's index in out.stats_rows, or -1 (no attention statistics).
  void RunLayer(int64_t layer_index, const StepBatch& batch, const std::vector<int64_t>& positions,
                const std::vector<int32_t>& row_seq, const std::vector<int32_t>& stats_index,
                std::vector<float>& hidden, StepOutput& out);
  void AttendRow(int64_t layer_index, const StepBatch& batch, int64_t row, int64_t position,
                 const SequenceInBatch& seq, const float* proj_row, const float* cumvar_prev,
                 float* attn_out, std::vector<int32_t>* selection_out, std::vector<float>& scores,
                 std::vector<int32_t>& selected, std::vector<int32_t>& scratch) const;
  // Indexer scores I(t, s) for s ≤ position into scores[0 … position].
  void IndexerScores(const Layer& w, const LayerCache& cache, const SequenceInBatch& seq,
                     const float* proj_row, int64_t position, float* scores) const;

  ModelConfig config_;
  CacheSpec cache_spec_;
  std::vector<float> rope_inv_freq_;
  std::vector<float> embed_;       // [vocab, d_model]
  std::vector<float> final_norm_;  // [d_model]
  std::vector<float> lm_head_;     // [vocab, d_model] (empty when tied: embed_ is used)
  std::vector<std::unique_ptr<Layer>> layers_;
  std::vector<std::unique_ptr<LayerCache>> cache_;
  std::unique_ptr<ThreadPool> pool_;
};

}  // namespace gsa
