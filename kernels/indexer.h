// The lightning indexer's scores over the paged indexer keys (MODEL.md):
//   I(t, s) = Σ_j wI_j · φ(qI_j · kI_s / sqrt(d_indexer) + bI_j),  s ≤ t,  φ = sigmoid or relu,
// for the rows of one score chunk (kernels/selection.h, ScoreChunk), decode and prefill alike:
// every (row, candidate) pair is independent, so one kernel covers a single long decode row
// (split across the whole GPU) and a chunk of prefill rows (causal: row r scores s ≤ position[r]).
// Only one chunk of scores ever exists; its size is the caller's choice. The dot products run on
// tensor cores with each fp32 qI split into three bf16 parts (kernels/indexer_math.cuh): within a few
// fp32 ulps of an fp32 evaluation, and equal keys always score bitwise equal. A block scores up to
// 8 × 256 candidates for up to 16 (per-warp kernel) or 32 (warpgroup kernel) consecutive chunk rows;
// rows of one sequence reuse the keys it loaded.
#pragma once

#include "kernels/paged.h"

namespace gsa::kernels {

struct IndexerScoresArgs {
  const float* proj = nullptr;  // [num_rows, proj_stride] fused projection rows (fp32)
  int64_t proj_stride = 0;
  int64_t off_qi = 0;           // qI at proj[r * proj_stride + off_qi + j * d_indexer + i]
  int64_t off_wi = 0;           // wI at proj[r * proj_stride + off_wi + j], sigmoid already applied
  const float* bias = nullptr;  // [n_indexer_heads] bI
  const bf16* ki_cache = nullptr;  // [num_slots, d_indexer] bf16 keys, or (ki_fp8 set) unused
  // fp8 keys (CudaBackendOptions::indexer_key_dtype): e4m3 codes [num_slots, d_indexer] and one
  // fp32 scale per slot, key = ki_scale[slot] · code (written by PostProjection). Null: bf16 keys.
  const uint8_t* ki_fp8 = nullptr;
  const float* ki_scale = nullptr;
  PagedLayout paged;
  RowInfo rows;                    // seq, position and dense are read; dense rows are skipped
  int32_t n_indexer_heads = 0;     // ≤ 16
  int32_t d_indexer = 0;           // 16, 32, 64 or 128
  bool relu = false;               // φ = relu (else sigmoid)
  // Output: row r's scores at scores[score_offset[r - row_begin] + s], s ≤ position[r].
  float* scores = nullptr;
  const int64_t* score_offset = nullptr;  // [row_count]
  int64_t row_begin = 0, row_count = 0;
  int64_t max_candidates = 0;  // host: ≥ position[r] + 1 for every chunk row (grid size)
  // Passes of 256 candidates each block makes (1, 2, 4 or 8); 0: the launch chooses (more per block
  // for big chunks, to spread each block's setup; one for a few decode rows, to fill the GPU). Every
  // choice gives bitwise the same scores; tests force each.
  int32_t tiles_per_block = 0;
  // Which kernel scores the chunk (both give bitwise the same scores; tests force each):
  //  - kPerWarp: every warp scores 32 candidates for one or two rows at a time (mma.sync); right
  //    for decode rows, where each sequence has one row.
  //  - kWarpgroup: Hopper wgmma (compute capability 9.0, ≤ 4 indexer heads): a warpgroup scores 64
  //    candidates for 32 consecutive rows with each key it loads, so it pays when the rows come in
  //    long runs of one sequence (prefill chunks). Forced where it cannot run: cudaErrorNotSupported.
  //  - kAuto: kWarpgroup where it can run and `sequence_runs` (host: how many runs of consecutive
  //    same-sequence rows the chunk has; 0 = unknown) says the runs average ≥ 16 rows; else kPerWarp.
  enum class Kernel : int32_t { kAuto = 0, kPerWarp, kWarpgroup };
  Kernel kernel = Kernel::kAuto;
  int64_t sequence_runs = 0;
};

bool IndexerScoresSupports(int32_t d_indexer, int32_t n_indexer_heads);

cudaError_t IndexerScores(const IndexerScoresArgs& args, cudaStream_t stream);

}  // namespace gsa::kernels
