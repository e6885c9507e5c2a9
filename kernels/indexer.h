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

// ---- The warpgroup kernel's other two modes, for PrefillSelect (kernels/selection.h) --------------
// Both run the warpgroup kernel only: cudaErrorNotSupported where it cannot run (args.kernel is
// ignored). Scores are bitwise those IndexerScores computes for the same (row, position).
//
// Sampled: candidate index i of a row stands for position (i / 64) · sample_stride + i % 64 (tiles of
// 64 consecutive positions, one every sample_stride ≥ 64, a multiple of 64); its score goes to
// scores[score_offset[r - row_begin] + i] for every i whose position is ≤ position[r].
// args.max_candidates counts indices: IndexerSampleCount(positions, sample_stride).
int64_t IndexerSampleCount(int64_t positions, int64_t sample_stride);
cudaError_t IndexerScoresSampled(const IndexerScoresArgs& args, int64_t sample_stride, cudaStream_t stream);

// Filtered (args.max_candidates ≤ 2^24): nothing is written to args.scores; instead every score x of row r (chunk row
// i = r - row_begin) with x ≥ thr_shift[i].x is appended as (position, float bits of x) to the row's
// list, PrefillList(region of the row, position[r] + 1, list_cap): count[i] (zero at launch) ends as
// the number of such scores, the first min(count, capacity) of them stored, in no particular order.
// A NaN threshold keeps nothing. With `stats` non-null, stats[i · stats_blocks + blockIdx.x] =
// (Σ (x − K), Σ (x − K)²) over the block's candidates of row i, K = thr_shift[i].y (fp32 terms and
// partial sums, summed in double per block; deterministic); the launch takes stats_blocks = the
// number of 2048-candidate ranges, IndexerFilterBlocks(max_candidates).
struct IndexerFilter {
  const float2* thr_shift = nullptr;  // [row_count] (threshold, shift)
  int32_t* count = nullptr;           // [row_count]
  int64_t list_cap = 0;
  double2* stats = nullptr;           // [row_count, stats_blocks] or null
};
int64_t IndexerFilterBlocks(int64_t max_candidates);
cudaError_t IndexerScoresFiltered(const IndexerScoresArgs& args, const IndexerFilter& filter, cudaStream_t stream);

}  // namespace gsa::kernels
