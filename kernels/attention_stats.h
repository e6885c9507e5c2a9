// Attention statistics, a diagnostics pass (the API's AttentionStats, issue 8): for each listed row
// of one layer, how many key positions it attends to, the softmax weight its query heads put on
// position 0 (the "attention sink"), and the sums of its value- and output-gate activations.
//
// The attention kernels never keep the softmax normaliser, so this pass recomputes it: for each
// (listed row, query head) it reads the row's keys once more from the paged K cache (q·k for the
// same list GatheredAttention attends to, or all s ≤ t for dense rows) and takes max and Σexp in
// fp32. It costs one extra read of those keys per query head; the engine launches it only for the
// rows of requests that asked (a step without such rows launches nothing).
#pragma once

#include "kernels/paged.h"

namespace gsa::kernels {

struct AttentionStatsArgs {
  const bf16* q = nullptr;        // [num_rows, n_heads, d_head] (RoPE applied), as attention reads it
  const bf16* k_cache = nullptr;  // [num_slots, n_kv_heads, d_head]
  PagedLayout paged;
  RowInfo rows;                      // seq, position and dense are read
  const int32_t* row_ids = nullptr;  // [num_row_ids] the rows to measure (absolute row numbers)
  int64_t num_row_ids = 0;
  // The keys of each row, exactly as GatheredAttentionArgs: sparse rows attend to
  // sel[r * sel_stride + i], i < sel_count[r] (count clamped to [0, sel_stride]; an entry outside
  // [0, t] is skipped); dense rows to all s ≤ position[r] (sel and sel_count ignored; they may be
  // null when every listed row is dense).
  const int32_t* sel = nullptr;        // [num_rows, sel_stride]
  const int32_t* sel_count = nullptr;  // [num_rows]
  int64_t sel_stride = 0;
  // Gate pre-activations, each optional (null: the model has no such gate; its sum is 0):
  //   value gate:  z = value_gate_z[r * gate_stride + c] + value_gate_bias[c], c < n_kv_heads·d_head
  //   output gate: z = output_gate_z[r * gate_stride + c] + output_gate_bias[c], c < n_heads·d_head
  // and the activation is act(z) (paged.h, GateActivation). Biases may be null (zero).
  const float* value_gate_z = nullptr;     // [num_rows, gate_stride]
  const float* value_gate_bias = nullptr;  // [n_kv_heads * d_head]
  const float* output_gate_z = nullptr;    // [num_rows, gate_stride]
  const float* output_gate_bias = nullptr; // [n_heads * d_head]
  int64_t gate_stride = 0;
  GateActivation gate_act = GateActivation::kSigmoid;
  int32_t n_heads = 0, n_kv_heads = 0, d_head = 0;  // d_head ∈ {32, 64, 128, 256}; n_heads % n_kv_heads == 0
  float scale = 0.0f;                               // softmax scale, 1 / sqrt(d_head)
  // Outputs for the i-th listed row, at element i * out_stride (so one layer of a
  // [num_row_ids, n_layers] table is written by passing base + layer and out_stride n_layers):
  int32_t* selected = nullptr;   // positions attended: position + 1 (dense) or the clamped count
  double* first_token = nullptr; // Σ over query heads of softmax weight on position 0 (0 if not attended)
  double* value_gate = nullptr;  // Σ over channels of the value gate's activation (0 without it)
  double* output_gate = nullptr; // Σ over channels of the output gate's activation (0 without it)
  int64_t out_stride = 1;
  // Scratch (device, 4-byte aligned): AttentionStatsWorkspaceBytes(num_row_ids, n_heads) bytes.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

size_t AttentionStatsWorkspaceBytes(int64_t num_row_ids, int32_t n_heads);

// Enqueues two kernels on `stream` (per (row, head) softmax weight on position 0; then per row the
// head sum, the count and the gate sums). cudaErrorInvalidValue, launching nothing, for an
// unsupported shape (d_head ∉ {32, 64, 128, 256}, n_heads not a positive multiple of n_kv_heads),
// null q / k_cache / row_ids / outputs, q or k_cache not 16-byte aligned, a workspace smaller than
// AttentionStatsWorkspaceBytes, or a scale that is not positive and finite; cudaSuccess and
// nothing launched when num_row_ids ≤ 0. Bitwise deterministic (fixed reduction orders, no atomics).
cudaError_t AttentionStats(const AttentionStatsArgs& args, cudaStream_t stream);

}  // namespace gsa::kernels
