// Paged attention over a per-row list of positions (MODEL.md, o_h): the sparse rows attend to
// their selected positions, the dense rows to every s ≤ t. One kernel serves decode and the
// token-level sparse prefill; the KV group's query heads share each gathered K/V row; the key
// range is split across blocks when there are few rows (split-k, merged in a fixed order, so the
// result is deterministic), and the output gate is fused into the merge.
#pragma once

#include "kernels/paged.h"

namespace gsa::kernels {

struct GatheredAttentionArgs {
  const bf16* q = nullptr;        // [num_rows, n_heads, d_head] (RoPE applied)
  const bf16* k_cache = nullptr;  // [num_slots, n_kv_heads, d_head]
  const bf16* v_cache = nullptr;  // [num_slots, n_kv_heads, d_head]
  PagedLayout paged;
  RowInfo rows;                   // seq, position and dense are read
  const int32_t* row_ids = nullptr;  // [num_row_ids] the rows this launch computes
  int64_t num_row_ids = 0;
  // Optional, [num_rows]: a listed row whose entry is nonzero is skipped (not computed, not
  // written): SparsePrefill computed it. Null: every listed row is computed.
  const uint8_t* row_skip = nullptr;
  // Sparse rows attend to sel[r * sel_stride + i], i < sel_count[r] (distinct positions ≤ t, any
  // order); dense rows to all s ≤ position[r] (sel and sel_count ignored). Defensive, not part of
  // the function: a count is clamped to [0, sel_stride], an entry outside [0, t] is skipped, and a
  // row left with nothing to attend to gets zeros.
  const int32_t* sel = nullptr;        // [num_rows, sel_stride]
  const int32_t* sel_count = nullptr;  // [num_rows]
  int64_t sel_stride = 0;
  // host: an upper bound of the number of positions any listed row attends to (sel_count or
  // position + 1); it sets the split size. Too small is slower (the last split takes the rest),
  // never wrong.
  int64_t max_tokens = 0;
  // Output gate (G1), optional: out *= act(gate_z[r * gate_stride + h * d_head + d] + gate_bias[h * d_head + d]).
  const float* gate_z = nullptr;     // [num_rows, gate_stride] or null (no gate)
  int64_t gate_stride = 0;
  const float* gate_bias = nullptr;  // [n_heads * d_head] (null: zero)
  GateActivation gate_act = GateActivation::kSigmoid;
  int32_t n_heads = 0, n_kv_heads = 0, d_head = 0;  // d_head ∈ {32, 64, 128, 256}; n_heads % n_kv_heads == 0
  float scale = 0.0f;                               // 1 / sqrt(d_head); must be > 0 and finite
  bf16* out = nullptr;  // [num_rows, n_heads * d_head]; only listed rows are written
  // Split-k partials (device, 4-byte aligned), GatheredAttentionWorkspaceBytes. The launcher never
  // uses more splits than this holds: a smaller workspace (or none) means fewer splits (one: the
  // output is written directly), never a wrong result.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  // Optional, with several splits: one counter per (listed row, KV head), at least
  // num_row_ids × n_kv_heads of them (split_counter_count), zeroed (cudaMemset 0) once after
  // allocation; every completed launch leaves them zero. With them, the last block of a (row, KV
  // head) to finish merges that group's splits itself (the same arithmetic, in the same order, as
  // the merge kernel: bitwise the same output) and no merge kernel runs. Null: the merge kernel.
  // Not shared with concurrent launches.
  uint32_t* split_counters = nullptr;
  size_t split_counter_count = 0;
  // Blocks of the attention kernel for this d_head and group one multiprocessor holds, from
  // GatheredAttentionResidentBlocks on this device (plan once, launch many); it sets the split
  // count. 0: this launch asks the occupancy calculator itself.
  int32_t resident_blocks_per_sm = 0;
};

// How many blocks of the attention kernel for (d_head, n_heads / n_kv_heads) one multiprocessor
// of the current device holds, for GatheredAttentionArgs::resident_blocks_per_sm.
// cudaErrorInvalidValue for an unsupported shape.
cudaError_t GatheredAttentionResidentBlocks(int32_t d_head, int32_t group, int32_t* blocks);

// Workspace for launches of up to `max_row_ids` listed rows (at most 1024 row-splits × n_heads ×
// (d_head + 2) floats, however many rows).
size_t GatheredAttentionWorkspaceBytes(int64_t max_row_ids, int32_t n_heads, int32_t d_head);

// Enqueues one or two kernels on `stream`; returns cudaErrorInvalidValue (launching nothing) for
// an unsupported shape (d_head ∉ {32, 64, 128, 256}, n_heads / n_kv_heads ∉ [1, 8] or not whole),
// null required pointers, q / k_cache / v_cache not 16-byte aligned, or a bad scale; cudaSuccess
// and nothing launched when num_row_ids ≤ 0. Bitwise deterministic for a given launch (same
// arguments, same device): fixed reduction orders, no atomics.
cudaError_t GatheredAttention(const GatheredAttentionArgs& args, cudaStream_t stream);

}  // namespace gsa::kernels
