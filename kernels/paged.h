// Types shared by every kernel family: how a sequence's positions map to paged cache slots, and
// which rows of a step a launch covers. Plain pointers and sizes only; kernels/ depends on nothing
// else of ours (DESIGN.md). Every launcher returns the launch's cudaError_t and never synchronizes.
//
// Conventions for all launchers:
//  - "rows" are the new tokens of a step, concatenated sequence by sequence (engine StepBatch);
//    arrays documented as [num_rows] are indexed by that absolute row number.
//  - Cache pages (one layer): K and V [num_slots, n_kv_heads, d_head] bf16, indexer keys
//    [num_slots, d_indexer] bf16, statistics [num_slots] fp32; slot = block * block_size + offset.
//  - All pointers are device pointers unless a comment says "host".
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace gsa::kernels {

using bf16 = __nv_bfloat16;

// Position p of sequence `seq` lives in slot
//   block_tables[seq * max_blocks_per_seq + p / block_size] * block_size + p % block_size.
struct PagedLayout {
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq] physical block ids
  int32_t max_blocks_per_seq = 0;
  int32_t block_size = 0;
};

// Per-row facts of a step, all [num_rows].
struct RowInfo {
  const int32_t* seq = nullptr;       // [num_rows] the row's sequence (row of block_tables)
  const int32_t* position = nullptr;  // [num_rows] the row's position t; it may attend to s ≤ t
  const int64_t* slot = nullptr;      // [num_rows] the cache slot of position t
  const uint8_t* dense = nullptr;     // [num_rows] 1: dense attention (no indexer, no selection)
};

// Whether `p` is 16-byte aligned: what the kernels' 16-byte vector loads and stores need of their
// pointers (launchers check it before launching).
inline bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// The gate nonlinearity of MODEL.md, applied to z = x Wᵀ + b.
enum class GateActivation : int32_t {
  kSigmoid = 0,  // 1 / (1 + e^-z)
  kTanh = 1,     // (tanh(z) + 1) / 2
  kSilu = 2,     // z · sigmoid(z)
};

#ifdef __CUDACC__
__device__ __forceinline__ int64_t SlotOfPosition(const PagedLayout& p, int32_t seq, int64_t pos) {
  const int32_t block = p.block_tables[static_cast<int64_t>(seq) * p.max_blocks_per_seq + pos / p.block_size];
  return static_cast<int64_t>(block) * p.block_size + pos % p.block_size;
}

__device__ __forceinline__ float SigmoidF(float z) { return 1.0f / (1.0f + expf(-z)); }

__device__ __forceinline__ float GateActF(GateActivation a, float z) {
  switch (a) {
    case GateActivation::kTanh: return 0.5f * (tanhf(z) + 1.0f);
    case GateActivation::kSilu: return z * SigmoidF(z);
    default: return SigmoidF(z);
  }
}
#endif

}  // namespace gsa::kernels
