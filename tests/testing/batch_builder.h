// Test helper: drives a Backend over whole sequences the way an engine would, without one.
// Each sequence gets its own blocks (handed out in a scrambled order so that tests exercise
// non-contiguous block tables), and Run* helpers build StepBatches for prefill chunks and decodes.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <vector>

#include "engine/backend/backend.h"

namespace gsa::testing {

class BatchBuilder {
 public:
  BatchBuilder(int64_t num_blocks, int64_t block_size) : num_blocks_(num_blocks), block_size_(block_size) {}

  // Blocks of sequence `id` covering `context_len` tokens (allocating more as needed).
  const std::vector<int32_t>& Blocks(int id, int64_t context_len) {
    std::vector<int32_t>& t = tables_[id];
    while (static_cast<int64_t>(t.size()) * block_size_ < context_len) {
      // Stride through the pool so neighbouring logical blocks are not physical neighbours.
      const int64_t n = next_++;
      t.push_back(static_cast<int32_t>((n * 7 + 3) % num_blocks_));
    }
    return t;
  }

  struct Chunk {
    int id = 0;                       // sequence id
    std::vector<int32_t> tokens;      // new tokens this step
    int64_t start = 0;                // position of tokens[0]
    bool all_logits = true;           // logits for every new token (else the last only)
    AttentionMode attention = AttentionMode::kModelDefault;
    bool attention_stats = false;     // SequenceInBatch::attention_stats
  };

  StepBatch Make(const std::vector<Chunk>& chunks, bool record_selection = false) {
    StepBatch b;
    b.record_selection = record_selection;
    for (const Chunk& c : chunks) {
      SequenceInBatch s;
      s.query_start = static_cast<int32_t>(b.token_ids.size());
      s.num_query = static_cast<int32_t>(c.tokens.size());
      s.context_len = static_cast<int32_t>(c.start + static_cast<int64_t>(c.tokens.size()));
      s.block_table = Blocks(c.id, s.context_len);
      s.attention = c.attention;
      s.attention_stats = c.attention_stats;
      for (size_t i = 0; i < c.tokens.size(); ++i) {
        if (c.all_logits || i + 1 == c.tokens.size()) {
          b.logits_rows.push_back(static_cast<int32_t>(b.token_ids.size() + i));
        }
      }
      b.token_ids.insert(b.token_ids.end(), c.tokens.begin(), c.tokens.end());
      b.seqs.push_back(std::move(s));
    }
    return b;
  }

 private:
  int64_t num_blocks_;
  int64_t block_size_;
  int64_t next_ = 0;
  std::map<int, std::vector<int32_t>> tables_;
};

inline int32_t ArgMax(const float* v, int64_t n) {
  return static_cast<int32_t>(std::max_element(v, v + n) - v);
}

// Greedy continuation of `prompt` for `steps` tokens: one prefill step, then one decode per token.
// `logits` (when not null) gets each step's logits, [steps, vocab].
// `sel` (when not null) gets, per step, the selections of the row whose logits chose the token:
// [steps][layer] positions.
inline std::vector<int32_t> Greedy(Backend& backend, const std::vector<int32_t>& prompt, int steps,
                                   int64_t block_size, std::vector<std::vector<float>>* logits = nullptr,
                                   std::vector<std::vector<std::vector<int32_t>>>* sel = nullptr) {
  auto keep_sel = [&](const StepOutput& o) {
    if (sel == nullptr) return;
    std::vector<std::vector<int32_t>> per_layer;
    for (const auto& layer : o.selections) per_layer.push_back(layer.back());
    sel->push_back(std::move(per_layer));
  };
  BatchBuilder builder(backend.cache_spec().num_blocks, block_size);
  const int64_t V = backend.config().vocab_size;
  std::vector<int32_t> out;
  BatchBuilder::Chunk c;
  c.tokens = prompt;
  c.all_logits = false;
  auto step = backend.Step(builder.Make({c}, sel != nullptr));
  EXPECT_TRUE(step.ok()) << step.status();
  if (!step.ok()) return out;
  int64_t pos = static_cast<int64_t>(prompt.size());
  int32_t next = ArgMax(step->logits.data(), V);
  if (logits) logits->push_back(step->logits);
  keep_sel(*step);
  for (int i = 0; i < steps; ++i) {
    out.push_back(next);
    if (i + 1 == steps) break;
    BatchBuilder::Chunk d;
    d.tokens = {next};
    d.start = pos++;
    auto s = backend.Step(builder.Make({d}, sel != nullptr));
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) return out;
    next = ArgMax(s->logits.data(), V);
    if (logits) logits->push_back(s->logits);
    keep_sel(*s);
  }
  return out;
}

}  // namespace gsa::testing
