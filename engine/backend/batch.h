// StepBatch: the plain-data description of one engine step that a Backend executes (the
// scheduler's output, translated). It says which new tokens of which sequences run, where their
// keys go in the paged cache, and which outputs to keep. Backends know nothing of queues.
//
// Layout: the new tokens of all sequences are concatenated in `token_ids` ("rows"); sequence i
// owns rows [seqs[i].query_start, seqs[i].query_start + seqs[i].num_query), in order. A sequence's
// new tokens sit at positions context_len - num_query … context_len - 1; positions 0 …
// context_len - num_query - 1 must already be in the cache (written by earlier steps, or by
// another sequence that shares those prefix blocks).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "engine/cache/cache_spec.h"

namespace gsa {

enum class AttentionMode {
  kModelDefault,  // the checkpoint's sparse top-k_t selection (MODEL.md)
  kDense,         // attention over all s ≤ t (the baseline / gated-only rows, and comparisons)
};

struct SequenceInBatch {
  int32_t query_start = 0;            // first row of this sequence in StepBatch::token_ids
  int32_t num_query = 0;              // new tokens this step, ≥ 1
  int32_t context_len = 0;            // tokens in the cache after this step, new ones included
  std::vector<int32_t> block_table;   // [≥ ceil(context_len / block_size)] physical block ids
  AttentionMode attention = AttentionMode::kModelDefault;
  // Measure how this sequence's new rows attend (StepOutput::attention_stats). Costs nothing for
  // sequences that leave it false.
  bool attention_stats = false;
};

struct StepBatch {
  std::vector<int32_t> token_ids;     // [num_rows] new tokens of all sequences, concatenated
  std::vector<SequenceInBatch> seqs;  // [num_seqs]
  std::vector<int32_t> logits_rows;   // rows whose logits the step returns, in this order
  bool record_selection = false;      // return each row's selected positions per layer

  int64_t num_rows() const { return static_cast<int64_t>(token_ids.size()); }
};

// How one query row attended in one layer, for a sequence that asked (SequenceInBatch::
// attention_stats). Sums over heads and channels, so that the engine can average them over a
// request's positions (engine/sched/attention_stats.h).
struct AttentionRowStats {
  int32_t selected = 0;      // key positions attended: k_t (sparse rows), t + 1 (dense rows)
  double first_token = 0;    // Σ over query heads of the softmax weight on position 0 (0 where not attended)
  double value_gate = 0;     // Σ over the n_kv_heads·d_head value-gate activations (0 without the gate)
  double output_gate = 0;    // Σ over the n_heads·d_head output-gate activations (0 without the gate)
};

struct StepOutput {
  int64_t vocab_size = 0;
  std::vector<float> logits;  // [logits_rows.size(), vocab_size]
  // When record_selection: selections[layer][row] = the positions that row attended to, sorted
  // descending (all positions ≤ its own when dense or when k_t covers the whole prefix).
  std::vector<std::vector<std::vector<int32_t>>> selections;
  // Per layer: Σ over this step's sparse-attention rows of the number of positions kept (k_t),
  // and how many rows that sums over (dense rows are not counted). For metrics.
  std::vector<int64_t> selected_sum;  // [n_layers]
  int64_t selected_rows = 0;
  // The rows of the sequences that asked for attention statistics, ascending, and their
  // statistics: attention_stats[i * n_layers + l] is row stats_rows[i] in layer l. Both empty when
  // no sequence asked.
  std::vector<int32_t> stats_rows;
  std::vector<AttentionRowStats> attention_stats;  // [stats_rows.size(), n_layers]
};

// Checks a batch against the cache shape and vocabulary: rows contiguous and fully covered,
// token ids in range, block tables long enough with ids in range, no two new tokens writing the
// same cache slot, logits rows in range. Errors are InvalidArgument naming the sequence or row.
absl::Status ValidateBatch(const StepBatch& batch, const CacheSpec& cache, int64_t vocab_size);

// The rows of the sequences with attention_stats set, ascending (StepOutput::stats_rows).
std::vector<int32_t> AttentionStatsRows(const StepBatch& batch);

// Physical cache slot of `position` for a sequence (REQUIRES: the table covers the position).
inline int64_t SlotOf(const SequenceInBatch& seq, int64_t position, int64_t block_size) {
  return static_cast<int64_t>(seq.block_table[static_cast<size_t>(position / block_size)]) *
             block_size +
         position % block_size;
}

}  // namespace gsa
