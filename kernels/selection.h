// Token selection on the GPU (MODEL.md, "How many tokens each query keeps" and "Ties"): per-row
// statistics of the indexer scores, k_t per row with the per-sequence running variance sum, and
// exact top-k_t with the tie rule. The CPU oracle is engine/backend/selection.h.
//
// Scores of one launch ("a score chunk"): rows [row_begin, row_begin + row_count) of the step;
// row r's score for candidate position s ∈ [0, position[r]] is
//   scores[score_offset[r - row_begin] + s]      (fp32; rows need not be packed or ordered).
// Dense rows (RowInfo::dense[r] = 1) have no scores; every kernel here skips them, except
// SelectionCounts which writes their k and statistic as documented there.
#pragma once

#include "kernels/indexer.h"
#include "kernels/paged.h"

namespace gsa::kernels {

struct ScoreChunk {
  const float* scores = nullptr;          // see above
  const int64_t* score_offset = nullptr;  // [row_count]
  int64_t row_begin = 0;
  int64_t row_count = 0;
  // Host value: an upper bound of position[r] + 1 over the chunk's sparse rows (as
  // IndexerScoresArgs::max_candidates). Only TopK reads it, to choose between one block per row and
  // splitting each row over many blocks; 0 (unknown) means one block per row. A value below a row's
  // true length costs speed, never correctness.
  int64_t max_candidates = 0;
};

// var[r]: population variance of row r's scores (two passes: mean, then Σ(x - mean)²), and, when
// entropy != nullptr, entropy[r]: the entropy in nats of softmax over row r's scores. Both in
// double, matching ScoreVariance / ScoreEntropy up to summation order. Deterministic (fixed
// reduction tree). var, entropy: [num_rows] (absolute row index; only the chunk's sparse rows are
// written). One block per row (a 128K-candidate row at batch 1 uses one SM).
cudaError_t ScoreStats(const ScoreChunk& chunk, const RowInfo& rows, double* var, double* entropy,
                       cudaStream_t stream);

// How a checkpoint picks k_t (engine's ModelConfig, flattened).
struct SelectionRule {
  int32_t method = 0;  // 0: fixed k (use_adaptive_k false), 1: adaptive "variance", 2: adaptive "entropy"
  int64_t k_base = 0, k_min = 0, k_max = 0;
  double temperature = 1.0;
};

// For each chunk row, in position order within each sequence (one thread per sequence, so the
// running sum adds in exactly the CPU's order):
//  - sparse rows: cumvar[slot[r]] = float(double(prev) + var[r]) where prev = cumvar at the slot of
//    position[r] - 1 of the same sequence (0 when position[r] == 0); then k[r] = SelectedCount of
//    engine/backend/selection.cc with var_t = var[r], ref_t = cumvar[slot[r]] / (position[r] + 1),
//    entropy_t = entropy[r] (entropy may be null unless rule.method == 2; var is read for every
//    method, the CPU adds 0 for fixed k: pass zeros).
//  - dense rows: cumvar[slot[r]] = NaN, k[r] = position[r] + 1.
// seq_first_row: [num_seqs + 1]; the rows of sequence i are [seq_first_row[i], seq_first_row[i+1]),
// in position order; only those inside the chunk are processed. rows.seq, position, slot and dense
// are read; chunk.scores is not. var == nullptr reads as zeros, and then the running sums need no
// serial walk through the rows (pass null for the fixed rule). rule.method 2 with entropy ==
// nullptr, or an unknown method, is cudaErrorInvalidValue. The entropy method's log() is CUDA's,
// which may differ from the host's in the last bit (k can differ only at an exact floor boundary).
cudaError_t SelectionCounts(const ScoreChunk& chunk, const RowInfo& rows, const PagedLayout& paged,
                            const int32_t* seq_first_row, int32_t num_seqs, const SelectionRule& rule,
                            const double* var, const double* entropy, float* cumvar, int32_t* k,
                            cudaStream_t stream);

// Exact top-k per sparse chunk row: the k[r] positions with the largest scores, where the order is
// strict and total: higher score first; equal scores (−0 equals +0; NaN ranks as −inf) → the
// later position first. Writes them to sel[r * sel_stride + i], i < k[r], sorted by position
// descending; when k[r] ≥ position[r] + 1 writes every position, descending. Other entries are
// untouched. REQUIRES: 1 ≤ k[r] ≤ sel_stride, position[r] + 1 ≤ 2^30. Deterministic.
// Rows with k[r] ≤ 0 write nothing; k[r] > sel_stride is treated as sel_stride (both are contract
// violations, handled so that nothing is written out of bounds).
// `workspace` (device, workspace_bytes) is scratch for the multi-block path; size it with
// TopKWorkspaceBytes (0 when the multi-block path is never used for such chunks). The multi-block
// path (each row split over many blocks: for a few long rows, e.g. decode at small batch) is used
// when TopKUsesMultiBlock says so, i.e. chunk.max_candidates is large, row_count small and the
// workspace large enough; otherwise one block per row (workspace may be null), which for rows of
// ≥ 16K candidates first tries a sampled threshold so that the row is read from memory once
// (falling back to the plain radix passes when the sample does not bracket the k-th score). All
// paths give the same result. The multi-block path is 1 memset + 5 kernel launches on `stream`, all capturable in a
// CUDA graph; the workspace must not be shared with concurrently running work.
size_t TopKWorkspaceBytes(int64_t max_rows, int64_t max_candidates);
bool TopKUsesMultiBlock(int64_t row_count, int64_t max_candidates, const void* workspace, size_t workspace_bytes);
cudaError_t TopK(const ScoreChunk& chunk, const RowInfo& rows, const int32_t* k, int32_t* sel,
                 int64_t sel_stride, void* workspace, size_t workspace_bytes, cudaStream_t stream);

// ---- Fused decode selection --------------------------------------------------------------------
// IndexerScores + ScoreStats (variance) + SelectionCounts + TopK of one chunk in ONE cooperative
// launch, for a few long rows (decode at small batch): each row's candidates are split over many
// blocks across the whole GPU, every block keeps its slice of scores in shared memory, and the
// phases meet at barriers among the row's blocks instead of kernel boundaries: 2 with a fixed k
// (3 with the variance rule) when, for a sigmoid indexer, the 1/2048 slice of the score range
// [0, Σ wI] holding the k-th score has at most a few thousand keys (the usual case), which every
// block of the row then ranks locally; else (relu, or scores that crowd into one slice) 3 (4) when
// the keys still tied after two radix passes number at most a few thousand, and 4 (5) otherwise.
// Same outputs as the four launches in sequence:
//  - scores (args.index.scores) bitwise equal (the same arithmetic, kernels/indexer_math.cuh);
//  - sel and, for the fixed-k rule, k and cumvar bitwise equal;
//  - the variance rule: var[r] is the same two-pass formula summed in another fixed order (equal
//    up to rounding, deterministic for a given launch), so k can differ from the separate path's
//    only where k_base · factor lies within rounding of an integer; cumvar / k follow from var
//    exactly as in SelectionCounts.
// Dense rows of the chunk get cumvar[slot[r]] = NaN and k[r] = position[r] + 1, as SelectionCounts.
//
// REQUIRES (the caller guarantees; not checked on the device): every sparse row of the chunk
// belongs to a different sequence (decode), so no row's running variance depends on another
// row of the same launch; position[r] + 1 ≤ index.max_candidates for every chunk row.
struct DecodeSelectArgs {
  IndexerScoresArgs index;   // the chunk: rows, scores, offsets, row_begin/row_count, max_candidates
  SelectionRule rule;        // method 0 (fixed k) or 1 (variance); 2 (entropy) is not supported
  double* var = nullptr;     // [num_rows]: written for sparse rows under method 1, untouched otherwise
  float* cumvar = nullptr;   // [num_slots] per-slot running variance sum (SelectionCounts)
  int32_t* k = nullptr;      // [num_rows]
  int32_t* sel = nullptr;    // [num_rows, sel_stride], as TopK
  int64_t sel_stride = 0;
  // Scratch of DecodeSelectWorkspaceBytes(row_count) bytes, zeroed (cudaMemset 0) once after
  // allocation; every completed launch leaves it ready for the next (its counters back to zero).
  // Not shared with concurrent work.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  // Blocks of the fused kernel one multiprocessor holds, from DecodeSelectPrepare on this device
  // (plan once, launch many: the backend asks at creation). 0: this launch prepares and asks
  // itself (a few driver calls on the host, nothing different on the device).
  int32_t resident_blocks_per_sm = 0;
  // Benchmarks only (null in the engine): every block of the launch records clock64() at each
  // phase boundary i < kDecodeSelectMarks (DecodeSelectMarkName(i)) into
  // marks[block * kDecodeSelectMarks + i], blocks numbered row-major (row, part). Sized for
  // DecodeSelectMaxBlocks(row_count) blocks; entries of blocks the launch did not use stay as they
  // were. Mark 0 also goes to marks_globaltimer[block] as %globaltimer (ns, comparable across
  // multiprocessors) when that is non-null, and the last mark to marks_globaltimer[max blocks + block].
  int64_t* marks = nullptr;
  int64_t* marks_globaltimer = nullptr;
};

constexpr int kDecodeSelectMarks = 15;
// "start", "query loaded", ..., "compacted": what mark i follows.
const char* DecodeSelectMarkName(int i);
int64_t DecodeSelectMaxBlocks(int64_t rows);

size_t DecodeSelectWorkspaceBytes(int64_t max_rows);

// Prepares the fused kernel for (d_indexer, fp8 keys) on the current device (its shared-memory
// opt-in) and returns in *per_sm how many of its blocks one multiprocessor holds: pass that as
// DecodeSelectArgs::resident_blocks_per_sm. cudaErrorNotSupported for an unsupported d_indexer.
cudaError_t DecodeSelectPrepare(int32_t d_indexer, bool fp8_keys, int32_t* per_sm);

// Enqueues the fused launch, or returns cudaErrorNotSupported having launched nothing when this
// chunk or device does not suit it (then run the four kernels above): method 2, an unsupported
// indexer shape, more than 64 rows, the grid would not be co-resident on the device, cooperative
// launch unsupported, or a workspace too small. Other errors are launch errors. Capturable in a
// CUDA graph (a cooperative kernel node).
cudaError_t DecodeSelect(const DecodeSelectArgs& args, cudaStream_t stream);

// ---- Thresholded prefill selection ---------------------------------------------------------------
// IndexerScores + ScoreStats (variance rule) + SelectionCounts + TopK of one chunk of long rows
// (prefill), without writing every score and reading it back (2048 rows at 128K: 1 GB each way):
//  1. the indexer scores a sample of each row's candidates: tiles of 64 consecutive positions, one
//     tile every kPrefillSampleStride positions (1/32 of the candidates);
//  2. per row a threshold T, the m-th largest sampled score, m well above the samples expected
//     above the row's k-th largest score (k: k_base for the fixed rule, k_max for the variance rule),
//     and the sample's mean;
//  3. the indexer scores every candidate again and appends (position, score) of each score ≥ T to
//     the row's list (and, for the variance rule, sums the scores' deviations from the sample mean
//     and their squares per row);
//  4. var from those sums; SelectionCounts as usual (k, cumvar);
//  5. each row whose list holds at least its k and at most kPrefillListCap entries — then it holds
//     every score that can be selected — takes its exact top-k from the list; the other rows (the
//     sample missed: ties, odd distributions, rows too short for a sample) are scored in full into
//     their score regions and take TopK: two more launches, which do nothing when no row needs them.
// Same outputs as the separate launches: k, cumvar and sel bitwise for the fixed rule; for the
// variance rule var is a one-pass sum about a shift (relative difference ~1e-9 from ScoreStats'
// two passes; deterministic), so k can differ from the separate path's only where k_base · factor
// lies within that of an integer, and cumvar by rounding. Not every score is written: each sparse
// row's score region (position[r] + 1 floats at score_offset) is scratch, holding the sample, then
// the list, or, for a row scored in full, its scores; dense rows' regions are never touched.
// REQUIRES: as SelectionCounts (seq_first_row) and TopK (1 ≤ k ≤ sel_stride); the score regions of
// the chunk's sparse rows do not overlap.
constexpr int64_t kPrefillSampleStride = 2048;      // positions per sampled tile of 64
constexpr int64_t kPrefillListCap = 8192;           // list entries a row keeps, at most
constexpr int64_t kPrefillSelectMinCandidates = 16384;   // shorter chunks: the separate launches
constexpr int64_t kPrefillSelectMaxCandidates = 1 << 18; // longer ones too (the list sort's bitmap)
// Where PrefillSelect is faster than the separate launches (H200, gsa-1.7b indexer shapes, k 2048,
// 2048-row chunks, tests/gpu-record/kernel-bench.json): its per-row threshold and list top-k cost
// about the same at every context, the top-k pass it saves grows with it; 32K 0.66 against 0.60 ms,
// 64K 1.08 against 0.98, 128K 1.72 against 1.81. Callers choosing between the two use this.
constexpr int64_t kPrefillSelectFasterFrom = 98304;

struct PrefillSelectArgs {
  IndexerScoresArgs index;  // the chunk; index.scores / score_offset: the rows' score regions (scratch)
  SelectionRule rule;       // method 0 (fixed k) or 1 (variance); 2 (entropy) is not supported
  const int32_t* seq_first_row = nullptr;  // as SelectionCounts
  int32_t num_seqs = 0;
  double* var = nullptr;    // [num_rows]: written for sparse rows under method 1, untouched otherwise
  float* cumvar = nullptr;  // [num_slots] per-slot running variance sum (SelectionCounts)
  int32_t* k = nullptr;     // [num_rows]
  int32_t* sel = nullptr;   // [num_rows, sel_stride], as TopK
  int64_t sel_stride = 0;
  // Scratch of PrefillSelectWorkspaceBytes(row_begin + row_count, max_candidates) bytes; needs no
  // initialisation. Not shared with concurrent work.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  // Tests and benchmarks (null in the engine): full_rows[r - row_begin] = 1 where the chunk's row r
  // was scored in full (its list missed), 0 where its top-k came from the list; dense rows 0.
  uint8_t* full_rows = nullptr;
};

size_t PrefillSelectWorkspaceBytes(int64_t num_rows, int64_t max_candidates);

// Enqueues the launches, or returns cudaErrorNotSupported having launched nothing when the chunk or
// device does not suit them (then run the separate launches): rule method 2, a rule whose k can
// exceed kPrefillListCap / 2 (k_base for the fixed rule, k_max for the variance rule), not compute capability
// 9.0 (the indexer's wgmma kernel), more than 4 indexer heads, index.max_candidates outside
// [kPrefillSelectMinCandidates, kPrefillSelectMaxCandidates], or a workspace too small. Other errors
// are launch errors (cudaErrorInvalidValue for arguments IndexerScores or TopK would refuse).
cudaError_t PrefillSelect(const PrefillSelectArgs& args, cudaStream_t stream);

}  // namespace gsa::kernels
