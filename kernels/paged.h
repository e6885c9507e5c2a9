// Types shared by every kernel family: how a sequence's positions map to paged cache slots, and
// which rows of a step a launch covers. Plain pointers and sizes only; kernels/ depends on nothing
// else of ours (DESIGN.md). Every launcher returns the launch's cudaError_t and never synchronizes.
//
// Conventions for all launchers:
//  - "rows" are the new tokens of a step, concatenated sequence by sequence (engine StepBatch);
//    arrays documented as [num_rows] are indexed by that absolute row number.
//  - Cache pages (one layer): K and V [num_slots, n_kv_heads, d_head] bf16, indexer keys
//    [num_slots, d_indexer] bf16, statistics [num_slots] fp32; slot = block * block_size + offset,
//    num_slots < 2^31 (slots are int32 in the kernels; offsets into the pages are int64).
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
// The slot of position `pos` of sequence `seq`, in 32-bit unsigned arithmetic (a 64-bit division
// by the block size was most of the integer work of the kernels that look up every key's slot).
// REQUIRES: 0 ≤ pos < max_blocks_per_seq · block_size; the cache has fewer than 2^31 slots (the
// CUDA backend refuses to allocate more), so the slot fits an int32.
// In two halves for kernels that load the block-table entry well ahead of its use (its latency is
// an L2 round trip): BlockOfPosition loads it, SlotInBlock finishes the slot.
__device__ __forceinline__ int32_t BlockOfPosition(const PagedLayout& p, int32_t seq, int32_t pos) {
  const uint32_t page = static_cast<uint32_t>(pos) / static_cast<uint32_t>(p.block_size);
  return p.block_tables[static_cast<int64_t>(seq) * p.max_blocks_per_seq + page];
}
__device__ __forceinline__ int32_t SlotInBlock(const PagedLayout& p, int32_t block, int32_t pos) {
  const uint32_t bs = static_cast<uint32_t>(p.block_size);
  return static_cast<int32_t>(static_cast<uint32_t>(block) * bs + static_cast<uint32_t>(pos) % bs);
}
__device__ __forceinline__ int32_t SlotOfPosition(const PagedLayout& p, int32_t seq, int32_t pos) {
  return SlotInBlock(p, BlockOfPosition(p, seq, pos), pos);
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
