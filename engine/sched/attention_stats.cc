#include "engine/sched/attention_stats.h"

namespace gsa {

AttentionStatsAccumulator::AttentionStatsAccumulator(const ModelConfig& config)
    : n_heads_(config.n_heads),
      value_gate_channels_(config.use_value_gate ? config.kv_dim() : 0),
      output_gate_channels_(config.use_output_gate ? config.q_dim() : 0),
      layers_(static_cast<size_t>(config.n_layers)) {}

void AttentionStatsAccumulator::Add(int64_t position, const AttentionRowStats* layers) {
  ++positions_;
  if (position >= 1) ++positions_after_first_;
  for (size_t l = 0; l < layers_.size(); ++l) {
    LayerSums& s = layers_[l];
    s.selected += layers[l].selected;
    if (position >= 1) s.first_token += layers[l].first_token;
    s.value_gate += layers[l].value_gate;
    s.output_gate += layers[l].output_gate;
  }
}

void AttentionStatsAccumulator::Reset() {
  positions_ = 0;
  positions_after_first_ = 0;
  for (LayerSums& s : layers_) s = LayerSums{};
}

AttentionStats AttentionStatsAccumulator::Summary() const {
  AttentionStats out;
  out.positions = positions_;
  const size_t L = layers_.size();
  if (value_gate_channels_ > 0) out.value_gate_mean = 0.0;
  if (output_gate_channels_ > 0) out.output_gate_mean = 0.0;
  // Means of nothing are 0 (a request can finish before any position was computed).
  auto mean = [](double sum, double count) { return count > 0 ? sum / count : 0.0; };
  const double n = static_cast<double>(positions_);
  const double first_count = static_cast<double>(positions_after_first_) * static_cast<double>(n_heads_);
  for (const LayerSums& s : layers_) {
    LayerAttentionStats l;
    l.mean_selected_k = mean(static_cast<double>(s.selected), n);
    l.first_token_share = mean(s.first_token, first_count);
    if (value_gate_channels_ > 0) {
      l.value_gate_mean = mean(s.value_gate, n * static_cast<double>(value_gate_channels_));
    }
    if (output_gate_channels_ > 0) {
      l.output_gate_mean = mean(s.output_gate, n * static_cast<double>(output_gate_channels_));
    }
    out.mean_selected_k += l.mean_selected_k;
    out.first_token_share += l.first_token_share;
    if (l.value_gate_mean) *out.value_gate_mean += *l.value_gate_mean;
    if (l.output_gate_mean) *out.output_gate_mean += *l.output_gate_mean;
    out.layers.push_back(l);
  }
  // Every layer counts the same positions, heads and channels: the mean over everything is the
  // mean of the layers' means.
  if (L > 0) {
    const double layers = static_cast<double>(L);
    out.mean_selected_k /= layers;
    out.first_token_share /= layers;
    if (out.value_gate_mean) *out.value_gate_mean /= layers;
    if (out.output_gate_mean) *out.output_gate_mean /= layers;
  }
  return out;
}

}  // namespace gsa
