// Attention statistics of one request (GenerateRequest.attention_stats in the API, issue 8): the
// engine adds up what the backend measured for each of the request's query positions
// (AttentionRowStats, engine/backend/batch.h) and reports the means on the final output.
//
// Counted positions are the positions the model computed for the request, each once: the caller
// adds every computed position exactly once (a preempted request's statistics restart with its
// recompute: Reset). Sums are kept in double and added in the order of the calls, so a request
// fed position by position in order gets the same result however its positions were batched or
// chunked.
//
// Thread-safety: none; owned by the engine thread (inside a Request).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "engine/backend/batch.h"
#include "engine/model/config.h"

namespace gsa {

// Means over one layer (API: LayerAttentionStats).
struct LayerAttentionStats {
  double mean_selected_k = 0;                // keys attended per query: k_t, or t + 1 when dense
  double first_token_share = 0;              // weight on position 0, over heads and positions t ≥ 1
  std::optional<double> value_gate_mean;     // unset: the model has no value gate
  std::optional<double> output_gate_mean;    // unset: the model has no output gate
};

// Means over the layers too (API: AttentionStats).
struct AttentionStats {
  int64_t positions = 0;  // query positions counted
  double mean_selected_k = 0;
  double first_token_share = 0;  // 0 when no position t ≥ 1 was counted
  std::optional<double> value_gate_mean;
  std::optional<double> output_gate_mean;
  std::vector<LayerAttentionStats> layers;  // [n_layers]
};

class AttentionStatsAccumulator {
 public:
  // Shapes from the model: layers, query heads, and the channels each gate has (n_kv_heads·d_head
  // for the value gate, n_heads·d_head for the output gate; none when the gate is off).
  explicit AttentionStatsAccumulator(const ModelConfig& config);

  // Adds the statistics of the query at `position` (layers[0 … n_layers), one per layer).
  // Position 0 counts for everything but the first-token share (it can only attend to itself).
  // REQUIRES: `layers` holds n_layers entries.
  void Add(int64_t position, const AttentionRowStats* layers);

  // Forgets everything added (a preempted request, recomputed from the start).
  void Reset();

  int64_t positions() const { return positions_; }
  int64_t n_layers() const { return static_cast<int64_t>(layers_.size()); }

  AttentionStats Summary() const;

 private:
  struct LayerSums {
    int64_t selected = 0;
    double first_token = 0;
    double value_gate = 0;
    double output_gate = 0;
  };
  int64_t n_heads_ = 0;
  int64_t value_gate_channels_ = 0;   // 0: no value gate
  int64_t output_gate_channels_ = 0;  // 0: no output gate
  int64_t positions_ = 0;
  int64_t positions_after_first_ = 0;  // counted positions t ≥ 1
  std::vector<LayerSums> layers_;
};

}  // namespace gsa
