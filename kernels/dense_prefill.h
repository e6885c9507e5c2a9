// Dense causal attention for prefill chunks over the paged cache, flash-style on the tensor cores
// (bf16 mma, fp32 accumulation, online softmax): the `--attention dense` path and the baseline
// rows of MODEL.md, and the yardstick of the speed claims. Each listed sequence's chunk of
// queries attends to its cached prefix and causally within the chunk; its K and V (the chunk's
// own included) are already in the cache.
#pragma once

#include "kernels/paged.h"

namespace gsa::kernels {

struct DensePrefillArgs {
  const bf16* q = nullptr;        // [num_rows, n_heads, d_head] (RoPE applied)
  const bf16* k_cache = nullptr;  // [num_slots, n_kv_heads, d_head]
  const bf16* v_cache = nullptr;  // [num_slots, n_kv_heads, d_head]
  PagedLayout paged;              // block_tables row = sequence index; entries past a sequence's
                                  // context_len are never read (any block_size ≥ 1)
  // Per sequence of the step, [num_seqs]: its rows are [query_start, query_start + num_query),
  // row j at position context_len - num_query + j, attending to every s ≤ its position.
  const int32_t* query_start = nullptr;
  const int32_t* num_query = nullptr;
  const int32_t* context_len = nullptr;
  const int32_t* seq_ids = nullptr;  // [num_seq_ids] the sequences this launch computes
  int32_t num_seq_ids = 0;
  int32_t max_num_query = 0;  // host: max num_query over the listed sequences (grid size)
  // Output gate (G1), optional, as GatheredAttentionArgs (null gate_z: no gate; null gate_bias: no bias).
  const float* gate_z = nullptr;
  int64_t gate_stride = 0;
  const float* gate_bias = nullptr;
  GateActivation gate_act = GateActivation::kSigmoid;
  int32_t n_heads = 0, n_kv_heads = 0, d_head = 0;
  float scale = 0.0f;  // > 0, normally 1 / sqrt(d_head); anything else is refused (cudaErrorInvalidValue)
                       // (the kernel takes the row max before scaling)
  bf16* out = nullptr;  // [num_rows, n_heads * d_head]; rows of listed sequences are written
  // Which kernel computes it (both the same function, to fp32 rounding):
  //  - kWarpgroup: Hopper wgmma (compute capability 9.0, d_head 128): a CTA of two warpgroups
  //    computes 128 query rows against 128-key tiles; where it cannot run, forcing it returns
  //    cudaErrorNotSupported.
  //  - kMmaSync: the sm_80+ mma.sync kernel (every supported d_head), with `query_tile`'s rows a CTA.
  //  - kAuto (the default): kWarpgroup where it runs and query_tile is 0, else kMmaSync.
  enum class Kernel : int32_t { kAuto = 0, kMmaSync, kWarpgroup };
  Kernel kernel = Kernel::kAuto;
  // Query rows per CTA of the mma.sync kernel. 0 (the default): the launcher picks the biggest of
  // 256, 128 and 64 that still gives 3/4 of the SMs a CTA (64 when none does). 64, 128 or 256
  // force one (tests, tuning; all compute the same function); any other value is refused, and so
  // is a nonzero one with kWarpgroup.
  int32_t query_tile = 0;
};

// True when DensePrefill supports this head size (others go through GatheredAttention).
bool DensePrefillSupports(int32_t d_head);

// Launches on `stream` (no synchronization). cudaErrorInvalidValue for an unsupported d_head, bad
// head counts, null pointers, scale ≤ 0, an unknown query_tile or a grid past 65535 query tiles or
// sequences; cudaErrorNotSupported for kWarpgroup where it cannot run; cudaSuccess without a
// launch when nothing is listed.
cudaError_t DensePrefill(const DensePrefillArgs& args, cudaStream_t stream);

}  // namespace gsa::kernels
