#include "engine/backend/batch.h"

#include <unordered_set>

#include "absl/strings/str_cat.h"

namespace gsa {

absl::Status ValidateBatch(const StepBatch& batch, const CacheSpec& cache, int64_t vocab_size) {
  const int64_t rows = batch.num_rows();
  if (batch.seqs.empty()) return absl::InvalidArgumentError("step batch has no sequences");
  int64_t next_row = 0;
  std::unordered_set<int64_t> written;
  for (size_t i = 0; i < batch.seqs.size(); ++i) {
    const SequenceInBatch& s = batch.seqs[i];
    if (s.query_start != next_row) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", i, ": query_start ", s.query_start,
                                                     ", expected ", next_row, " (rows must be contiguous)"));
    }
    if (s.num_query < 1) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", i, ": num_query ", s.num_query,
                                                     " must be at least 1"));
    }
    if (s.context_len < s.num_query) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", i, ": context_len ", s.context_len,
                                                     " is smaller than num_query ", s.num_query));
    }
    const int64_t blocks_needed = (s.context_len + cache.block_size - 1) / cache.block_size;
    if (static_cast<int64_t>(s.block_table.size()) < blocks_needed) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", i, ": block table has ",
                                                     s.block_table.size(), " blocks, context_len ",
                                                     s.context_len, " needs ", blocks_needed));
    }
    for (int64_t b = 0; b < blocks_needed; ++b) {
      const int32_t id = s.block_table[static_cast<size_t>(b)];
      if (id < 0 || id >= cache.num_blocks) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", i, ": block table entry ", b, " = ",
                                                       id, " is outside the cache's ", cache.num_blocks,
                                                       " blocks"));
      }
    }
    for (int64_t p = s.context_len - s.num_query; p < s.context_len; ++p) {
      if (!written.insert(SlotOf(s, p, cache.block_size)).second) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", i, ": position ", p,
                                                       " writes a cache slot another new token of this "
                                                       "step also writes"));
      }
    }
    next_row += s.num_query;
  }
  if (next_row != rows) {
    return absl::InvalidArgumentError(absl::StrCat("step batch has ", rows,
                                                   " token rows but its sequences cover ", next_row));
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t id = batch.token_ids[static_cast<size_t>(r)];
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("row ", r, ": token id ", id,
                                                     " is outside the vocabulary [0, ", vocab_size, ")"));
    }
  }
  for (int32_t r : batch.logits_rows) {
    if (r < 0 || r >= rows) {
      return absl::InvalidArgumentError(absl::StrCat("logits row ", r, " is outside the batch's ", rows,
                                                     " rows"));
    }
  }
  return absl::OkStatus();
}

std::vector<int32_t> AttentionStatsRows(const StepBatch& batch) {
  std::vector<int32_t> rows;
  for (const SequenceInBatch& s : batch.seqs) {
    if (!s.attention_stats) continue;
    for (int32_t j = 0; j < s.num_query; ++j) rows.push_back(s.query_start + j);
  }
  return rows;
}

}  // namespace gsa
