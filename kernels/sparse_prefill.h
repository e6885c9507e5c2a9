// Sparse prefill attention by query tiles ("union tiles", KERNELS.md): the rows of a prefill
// chunk attend to their own selections (MODEL.md, o_h over S_t), but a tile of consecutive rows
// of one sequence mostly selects the same positions (the recent window, shared salient spans), so
// instead of gathering every row's K/V rows on its own, a tile loads the union of its rows'
// selections once, in 64-position blocks, and runs flash attention on the tensor cores over those
// blocks with a per-(row, key) selection mask. Where the union is too large for that to pay
// (near-uniform selections at long context, as random weights produce), the tile's rows are left
// to GatheredAttention, which skips the rows this launch computed (GatheredAttentionArgs::row_skip).
//
// Kernels on `stream`:
//  1. plan, per tile: the set of 64-position blocks any row of the tile selected, its size
//     U, the choice (tile path iff U ≤ the workspace's capacity and U · 64 · tile_key_cost ≤ the
//     tile's total selection count), and for the tile path the ascending block list and every
//     row's 64-bit mask per block; row_skip of each row (1: computed here, 0: left to
//     GatheredAttention).
//  2. attention, one CTA per (tile, KV head): the tile's rows × the group's query heads as the M
//     rows of the mma (kQ = 256 / group rows of queries), K/V of each listed block loaded once
//     (cp.async, double-buffered), S = Q Kᵀ, keys outside the row's mask at -inf, online softmax
//     in fp32, P rounded to bf16 for O += P V, output gate, bf16 stores.
// Tiles are aligned to absolute positions (tile j of a sequence holds positions [j·kQ, (j+1)·kQ)),
// so how a prompt is cut into chunks does not change which rows share a tile when the cuts fall
// on multiples of kQ.
#pragma once

#include "kernels/paged.h"

namespace gsa::kernels {

// What the plan decided for one tile (optional output for benchmarks and tests).
struct SparsePrefillTileStat {
  int32_t union_blocks = 0;  // U: distinct 64-position blocks the tile's rows selected (-1: no tile)
  int32_t on_tiles = 0;      // 1: tile path (its rows computed here); 0: left to GatheredAttention
  int64_t selected = 0;      // Σ of the tile's rows' selection counts (clamped as below)
};

struct SparsePrefillArgs {
  const bf16* q = nullptr;        // [num_rows, n_heads, d_head] (RoPE applied), 16-byte aligned
  const bf16* k_cache = nullptr;  // [num_slots, n_kv_heads, d_head], 16-byte aligned
  const bf16* v_cache = nullptr;  // [num_slots, n_kv_heads, d_head], 16-byte aligned
  PagedLayout paged;              // block_tables row = sequence index
  // Per sequence of the step, [num_seqs], as DensePrefillArgs: rows [query_start, query_start +
  // num_query), row j at position context_len - num_query + j.
  const int32_t* query_start = nullptr;
  const int32_t* num_query = nullptr;
  const int32_t* context_len = nullptr;
  const int32_t* seq_ids = nullptr;  // [num_seq_ids] the (sparse) sequences this launch covers
  int32_t num_seq_ids = 0;
  int32_t max_num_query = 0;  // host: ≥ num_query of every listed sequence
  int32_t max_context = 0;    // host: ≥ context_len of every listed sequence, ≤ kSparsePrefillMaxContext
  // Row r attends to sel[r * sel_stride + i], i < sel_count[r] (distinct positions ≤ its
  // position, any order), as GatheredAttentionArgs: a count is clamped to [0, sel_stride], an
  // entry outside [0, position] is skipped, a row left with nothing gets zeros.
  const int32_t* sel = nullptr;        // [num_rows, sel_stride]
  const int32_t* sel_count = nullptr;  // [num_rows]
  int64_t sel_stride = 0;
  // Output gate (G1), optional, as GatheredAttentionArgs.
  const float* gate_z = nullptr;
  int64_t gate_stride = 0;
  const float* gate_bias = nullptr;
  GateActivation gate_act = GateActivation::kSigmoid;
  int32_t n_heads = 0, n_kv_heads = 0, d_head = 0;  // SparsePrefillSupports(d_head, n_heads / n_kv_heads)
  float scale = 0.0f;                               // > 0 and finite
  bf16* out = nullptr;  // [num_rows, n_heads * d_head]; rows on the tile path are written
  // [num_rows]: written for every row of the listed sequences (1: computed here, 0: not); pass
  // it to GatheredAttention (row_skip) over the same rows, launched after this on the same stream.
  uint8_t* row_skip = nullptr;
  // Cost of one key of the tile path relative to one gathered (row, token) pair; the tile path is
  // taken iff U · 64 · tile_key_cost ≤ the tile's Σ selection count. 0: the measured default
  // (kSparsePrefillTileKeyCost). Only speed depends on it, never the function.
  float tile_key_cost = 0.0f;
  // Device scratch (16-byte aligned), at least SparsePrefillWorkspaceBytes(…, 0) (the per-tile
  // headers): per tile a block list and masks. A smaller workspace lowers the largest union a tile
  // may take (down to none: every row left to GatheredAttention), never the result.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  // Optional, [num_seq_ids, SparsePrefillTilesPerSeq(…)]: what the plan decided per tile.
  SparsePrefillTileStat* tile_stats = nullptr;
};

// Measured on an H200 (gsa-1.7b shapes, chunk of 2048 rows): a tile key costs about 6.8 gathered
// (row, token) pairs (union tiles of all 512 blocks at 32K: 2.36 ms; every row gathered: 2.51 ms).
inline constexpr float kSparsePrefillTileKeyCost = 6.5f;
inline constexpr int32_t kSparsePrefillMaxContext = 1 << 23;

// True when the tile path supports this head size and group (n_heads / n_kv_heads): d_head 64 or
// 128, group 1, 2, 4 or 8. Other shapes go through GatheredAttention alone.
bool SparsePrefillSupports(int32_t d_head, int32_t group);

// Query rows per tile for a group size (256 / group).
int32_t SparsePrefillTileRows(int32_t group);

// Tiles per listed sequence for chunks of up to max_num_query rows (the grid's height).
int32_t SparsePrefillTilesPerSeq(int32_t max_num_query, int32_t group);

// Workspace that lets every tile of launches with up to these sequences, rows and context take a
// union of up to `max_union_blocks` blocks.
size_t SparsePrefillWorkspaceBytes(int32_t num_seq_ids, int32_t max_num_query, int32_t max_context, int32_t group,
                                   int32_t max_union_blocks);

// Enqueues the plan (a memset and three kernels) and the attention kernel; cudaErrorInvalidValue (launching nothing) for an
// unsupported shape, null required pointers, misaligned q/K/V, a bad scale or tile_key_cost,
// max_context outside [1, kSparsePrefillMaxContext], a workspace smaller than the headers, or a
// grid past 65535 tiles or sequences;
// cudaSuccess and nothing launched when nothing is listed. Deterministic: no floating-point
// atomics, fixed reduction orders.
cudaError_t SparsePrefill(const SparsePrefillArgs& args, cudaStream_t stream);

}  // namespace gsa::kernels
