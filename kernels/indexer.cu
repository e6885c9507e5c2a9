#include "kernels/indexer.h"

#include "kernels/device_caps.h"
#include "kernels/indexer_math.cuh"
#include "kernels/wgmma.cuh"

namespace gsa::kernels {
namespace {

using indexer_math::kMaxDIndexer;
using indexer_math::kMaxHeads;

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kTilesPerWarp = 2;                                // 16-candidate tiles per warp
constexpr int kCandPerTile = kWarps * kTilesPerWarp * 16;       // 256: one pass of the block's warps
constexpr int kMaxTilesPerBlock = 8;                            // passes per block, at most
constexpr int kRowsPerBlock = 16;
// Fewest blocks a launch should have (about four waves of resident blocks on a 132-SM card): a
// launch with fewer candidates or rows gives each block fewer passes instead (decode rows: one).
constexpr int64_t kMinBlocks = 2048;

// Dynamic shared memory of a block: the split queries of its rows, then w and b of each row.
size_t SmemBytes(int32_t n_heads, int32_t d_indexer) {
  return static_cast<size_t>(kRowsPerBlock) *
         (static_cast<size_t>(indexer_math::SplitQueryElems(n_heads, d_indexer)) * sizeof(bf16) +
          2 * kMaxHeads * sizeof(float));
}

// Grid: (candidate ranges of `tiles` × 256, groups of kRowsPerBlock chunk rows). A block splits its
// live rows' queries once and then takes its range in `tiles` passes of 256 candidates: in
// each, every warp holds the keys of its 32 candidates (two 16-candidate tiles) in registers and
// scores them for every row of the group with tensor cores (indexer_math::TileScores); consecutive
// rows of one sequence (a prefill chunk) reuse the keys, loaded once for the largest position among
// them, and with ≤ 4 indexer heads two such rows share each mma (indexer_math::TileScoresPair). The
// per-block work (row metadata, the query split) is spread over 16 rows × up to 2048 candidates:
// at 8 × 256 it took ~35% of the issued instructions of a 2048-row chunk at 128K (Nsight Compute).
template <int D_I, bool kFp8, bool kRelu>
__global__ void __launch_bounds__(kThreads, D_I <= 64 ? 4 : 1) IndexerScoresKernel(IndexerScoresArgs a, int tiles) {
  extern __shared__ __align__(16) unsigned char smem[];
  // The group's rows: position (-1: dense), sequence, score offset, and the largest position of the
  // run of same-sequence rows from here (keys are loaded once per run, up to it).
  __shared__ int32_t s_pos[kRowsPerBlock], s_seq[kRowsPerBlock], s_limit[kRowsPerBlock];
  __shared__ int64_t s_off[kRowsPerBlock];
  __shared__ int32_t s_max_pos;
  const int64_t r0 = a.row_begin + static_cast<int64_t>(blockIdx.y) * kRowsPerBlock;
  const int nrows = static_cast<int>(min(static_cast<int64_t>(kRowsPerBlock), a.row_begin + a.row_count - r0));
  const int64_t block_c0 = static_cast<int64_t>(blockIdx.x) * tiles * kCandPerTile;
  const int32_t q_elems = static_cast<int32_t>(indexer_math::SplitQueryElems(a.n_indexer_heads, D_I));
  const int32_t per_row = a.n_indexer_heads * D_I;  // qI elements of a row
  bf16* s_q = reinterpret_cast<bf16*>(smem);
  float* s_wb = reinterpret_cast<float*>(smem + kRowsPerBlock * q_elems * sizeof(bf16));

  // Every row's metadata in one round of loads.
  if (threadIdx.x < nrows) {
    const int64_t r = r0 + threadIdx.x;
    s_pos[threadIdx.x] = a.rows.dense[r] ? -1 : a.rows.position[r];
    s_seq[threadIdx.x] = a.rows.seq[r];
    s_off[threadIdx.x] = a.score_offset[r - a.row_begin];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t lim = -1, max_pos = -1;
    for (int i = nrows - 1; i >= 0; --i) {
      if (i == nrows - 1 || s_seq[i] != s_seq[i + 1]) lim = -1;
      lim = max(lim, s_pos[i]);
      s_limit[i] = lim;
      max_pos = max(max_pos, s_pos[i]);
    }
    s_max_pos = max_pos;
  }
  __syncthreads();
  const int32_t max_pos = s_max_pos;
  if (max_pos < block_c0) return;  // uniform: every row of the group is dense or ends before this block
  // The live rows' split queries: each thread loads its element of every row first (all loads in
  // flight together), then splits and stores them. D_I is a power of two: e / D_I and e % D_I are a
  // shift and a mask.
  for (int32_t e0 = 0; e0 < per_row; e0 += kThreads) {
    const int32_t e = e0 + static_cast<int32_t>(threadIdx.x);
    float v[kRowsPerBlock];
#pragma unroll
    for (int i = 0; i < kRowsPerBlock; ++i) {
      const bool live = i < nrows && e < per_row && s_pos[i] >= block_c0;
      v[i] = live ? __ldg(a.proj + (r0 + i) * a.proj_stride + a.off_qi + e) : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < kRowsPerBlock; ++i) {
      if (i < nrows && e < per_row && s_pos[i] >= block_c0) {
        indexer_math::StoreSplit<D_I>(v[i], s_q + i * q_elems, a.n_indexer_heads, e / D_I, e % D_I);
      }
    }
  }
  for (int idx = threadIdx.x; idx < nrows * a.n_indexer_heads; idx += blockDim.x) {
    const int i = idx / a.n_indexer_heads, j = idx % a.n_indexer_heads;
    if (s_pos[i] < block_c0) continue;
    s_wb[i * 2 * kMaxHeads + j] = a.proj[(r0 + i) * a.proj_stride + a.off_wi + j];
    s_wb[i * 2 * kMaxHeads + kMaxHeads + j] = a.bias[j];
  }
  __syncthreads();

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const indexer_math::KeySource src{a.ki_cache, a.ki_fp8, a.ki_scale};
  const bool pairable = a.n_indexer_heads <= indexer_math::kPairMaxHeads;
  for (int tile = 0; tile < tiles; ++tile) {
    const int64_t tile0 = block_c0 + static_cast<int64_t>(tile) * kCandPerTile;
    if (tile0 > max_pos) break;  // uniform
    const int64_t wc0 = tile0 + static_cast<int64_t>(warp) * kTilesPerWarp * 16;  // the warp's first candidate
    indexer_math::KeyFragment<D_I> keys[kTilesPerWarp];
    float key_scale[kTilesPerWarp][2];
    int32_t loaded_seq = -1;
    for (int i = 0; i < nrows;) {  // warp-uniform control flow throughout
      const int32_t pos = s_pos[i];  // -1 for a dense row
      if (wc0 > pos) {
        ++i;
        continue;
      }
      const int32_t seq = s_seq[i];
      if (seq != loaded_seq) {
        const int32_t lim = s_limit[i];  // ≥ pos; every position ≤ lim belongs to this sequence's context
#pragma unroll
        for (int u = 0; u < kTilesPerWarp; ++u) {
          const int64_t c_lo = wc0 + u * 16 + g, c_hi = c_lo + 8;
          const int64_t slot_lo = c_lo <= lim ? SlotOfPosition(a.paged, seq, static_cast<int32_t>(c_lo)) : -1;
          const int64_t slot_hi = c_hi <= lim ? SlotOfPosition(a.paged, seq, static_cast<int32_t>(c_hi)) : -1;
          indexer_math::LoadKeys<D_I, kFp8, indexer_math::KeyLoads::kWords>(src, slot_lo, slot_hi, &keys[u],
                                                                               &key_scale[u][0], &key_scale[u][1]);
        }
        loaded_seq = seq;
      }
      float2 vs[kTilesPerWarp];
      // The next row shares the keys (same sequence, also live here): score both with one set of mma.
      if (pairable && i + 1 < nrows && s_seq[i + 1] == seq && wc0 <= s_pos[i + 1]) {
        const float* w0 = s_wb + i * 2 * kMaxHeads;
        const float* w1 = w0 + 2 * kMaxHeads;
        indexer_math::TileScoresPair<D_I, kTilesPerWarp, kRelu, kFp8>(keys, key_scale, s_q + i * q_elems, w0,
                                                                      w0 + kMaxHeads, s_q + (i + 1) * q_elems, w1,
                                                                      w1 + kMaxHeads, a.n_indexer_heads, vs);
        const int row = i + (t >> 1);  // lanes t = 0, 1 hold row i; t = 2, 3 row i + 1
        const int32_t row_pos = s_pos[row];
        float* out = a.scores + s_off[row];
#pragma unroll
        for (int u = 0; u < kTilesPerWarp; ++u) {
          const int64_t c = wc0 + u * 16 + g + ((t & 1) ? 8 : 0);
          if (c <= row_pos) out[c] = (t & 1) ? vs[u].y : vs[u].x;
        }
        i += 2;
        continue;
      }
      const float* w = s_wb + i * 2 * kMaxHeads;
      float* out = a.scores + s_off[i];
      indexer_math::TileScores<D_I, kTilesPerWarp, kRelu, kFp8>(keys, key_scale, s_q + i * q_elems, w, w + kMaxHeads,
                                                                a.n_indexer_heads, vs);
#pragma unroll
      for (int u = 0; u < kTilesPerWarp; ++u) {
        const float2 v = vs[u];
        const int64_t c_lo = wc0 + u * 16 + g, c_hi = c_lo + 8;
        if (t == 0 && c_lo <= pos) out[c_lo] = v.x;
        if (t == 1 && c_hi <= pos) out[c_hi] = v.y;
      }
      ++i;
    }
  }
}

// Grid of a launch: (candidate ranges of `tiles` × kCandPerTile, groups of `rows_per_block` rows),
// with `tiles` as the caller forced it, or else the most passes a block (at most kMaxTilesPerBlock)
// that still leave `min_blocks` blocks.
struct LaunchShape {
  dim3 grid;
  int tiles;
};
LaunchShape ChooseShape(const IndexerScoresArgs& a, int rows_per_block, int64_t min_blocks) {
  const int64_t row_groups = (a.row_count + rows_per_block - 1) / rows_per_block;
  const int64_t tile_ranges = (a.max_candidates + kCandPerTile - 1) / kCandPerTile;
  int tiles = a.tiles_per_block;
  if (tiles == 0) {
    tiles = kMaxTilesPerBlock;
    while (tiles > 1 && (tile_ranges + tiles - 1) / tiles * row_groups < min_blocks) tiles /= 2;
  }
  return {dim3(static_cast<unsigned>((tile_ranges + tiles - 1) / tiles), static_cast<unsigned>(row_groups)), tiles};
}

template <int D_I, bool kFp8, bool kRelu>
cudaError_t LaunchKernel(const IndexerScoresArgs& a, cudaStream_t stream) {
  const size_t smem = SmemBytes(a.n_indexer_heads, D_I);
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(IndexerScoresKernel<D_I, kFp8, kRelu>,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  const LaunchShape shape = ChooseShape(a, kRowsPerBlock, kMinBlocks);
  IndexerScoresKernel<D_I, kFp8, kRelu><<<shape.grid, kThreads, smem, stream>>>(a, shape.tiles);
  return cudaGetLastError();
}

// ---- The warpgroup (wgmma) kernel -----------------------------------------------------------------
//
// A block of kWgGroups warpgroups takes kWgRows consecutive chunk rows and a range of `tiles` × 256
// candidates; its warpgroups take turns over the range's tiles of 64 candidates. For each tile a
// warpgroup holds the 64 candidates' keys in registers (warp w: candidates 16w … 16w + 15, in the
// mma.sync A layout that LoadKeys builds, which is also wgmma's) and multiplies them with the split
// queries of all kWgRows rows at once: B = [4 heads × kWgRows rows] columns in shared memory, one
// matrix per query part, so one m64n128k16 wgmma does what 16 mma.sync of the per-warp kernel do,
// and the query operand never passes through registers. The k-steps run in the per-warp kernel's
// order (lo, mid, hi; then channels), with each k-step's channels in the same logical positions
// (kernels/indexer_math.cuh, "Fragment layout"), and column 4ρ + j is row ρ's head j, so a lane
// holds exactly what TileScoresPair's lane holds: the same two heads of one row, summed in the same
// order, then with the neighbouring lane's two. Rows of other sequences in the block (a run
// boundary) are multiplied too and never stored: each run of same-sequence rows loads its own keys.
// While a tile's wgmma run, the warpgroup looks up the next tile's slots and prefetches its key rows
// into L1; the epilogue (two SFU operations per head and score) is what bounds the kernel, and the
// other warpgroups' products run under it.
constexpr int kWgGroups = 2;                       // warpgroups a block
constexpr int kWgThreads = 128 * kWgGroups;
constexpr int kWgRows = 32;                        // rows a block
constexpr int kWgHeads = indexer_math::kPairMaxHeads;  // head columns a row (heads past n_heads: zero)
constexpr int kWgCols = kWgRows * kWgHeads;        // N of the wgmma: 128
constexpr int kWgCand = 64;                        // candidates a warpgroup tile (M)
static_assert(kWgCols == 128, "the kernel issues m64n128k16");

// Brings the 128-byte line at p into L1 (no register is written, nothing waits for it).
__device__ __forceinline__ void PrefetchL1(const void* p) { asm volatile("prefetch.global.L1 [%0];" ::"l"(p)); }

// Channels of the B operand, padded to whole 32-channel groups as the key fragments are.
template <int D_I>
constexpr int WgKPad() {
  return 32 * indexer_math::KeyShape<D_I>::kGroups;
}
// B operand bytes of one query part: K-major core matrices (8 columns × 8 channels, 128 bytes),
// the kWgCols / 8 = 16 column blocks of each 8-channel block side by side.
template <int D_I>
constexpr int WgPartBytes() {
  return WgKPad<D_I>() * kWgCols * 2;
}
constexpr uint32_t kWgLbo = (kWgCols / 8) * 128;  // between the two 8-channel halves of a k-step
constexpr uint32_t kWgSbo = 128;                  // between column blocks

// Where logical position κ of the 16-deep k-steps sits for channel `ch` (< WgKPad): k-step
// s = 2p + h takes channels 32p + 8t + 4h + {0, 1} as logical 2t, 2t + 1 and + {2, 3} as 2t + 8,
// 2t + 9 (indexer_math.cuh, the mma.sync fragments' order).
__device__ __forceinline__ int WgLogicalK(int ch) {
  const int p = ch >> 5, r = ch & 31, t = r >> 3, h = (r >> 2) & 1, c4 = r & 3;
  return 16 * (2 * p + h) + (c4 < 2 ? 0 : 8) + 2 * t + (c4 & 1);
}

__device__ __forceinline__ int WgOperandOffset(int col, int kappa) {  // bytes within a part
  return ((kappa >> 3) * (kWgCols / 8) + (col >> 3)) * 128 + (col & 7) * 16 + (kappa & 7) * 2;
}

// What the kernel does with a score (kernels/indexer.h): stores it (IndexerScores, and the sampled
// mode: candidate index i stands for position (i / 64) · stride + i % 64), or keeps it in the row's
// list when it reaches the row's threshold (IndexerScoresFiltered), with or without the row's sums.
enum class WgMode { kStore, kFilter, kFilterStats };

// Two blocks (four warpgroups) a multiprocessor at D_I ≤ 64 (128 registers, no spills); one at
// D_I = 128 (~210 registers: the key fragments double).
template <int D_I, bool kFp8, bool kRelu, WgMode kMode>
__global__ void __launch_bounds__(kWgThreads, D_I <= 64 ? 2 : 1)
    IndexerScoresWgmmaKernel(IndexerScoresArgs a, int tiles, int32_t stride, IndexerFilter f) {
  constexpr bool kFilter = kMode != WgMode::kStore;
  constexpr bool kStats = kMode == WgMode::kFilterStats;
#ifndef GSA_WGMMA_AVAILABLE
  __trap();  // the launcher runs this kernel only on compute capability 9.0 (the sm_90a code)
#endif
  extern __shared__ __align__(16) unsigned char smem[];  // the three B parts: hi, mid, lo
  // Per row: where its scores go and its position (-1: nothing to score in this block's range).
  struct __align__(16) RowOut {
    float* out;
    int32_t pos, seq;
  };
  __shared__ RowOut s_rows[kWgRows];
  // Per row and head pair: {w_2p, w_2p+1, b_2p, b_2p+1}, zeros for heads past n_heads and dead
  // rows. A dead head's column of B is zero too, so its term is w · φ(0) = 0 · φ(0): adding it
  // changes no bit, and the epilogue needs no branch on n_heads.
  __shared__ float4 s_wb[kWgRows * kWgHeads / 2];
  __shared__ int32_t s_run_begin[kWgRows], s_run_end[kWgRows], s_run_lim[kWgRows];
  __shared__ int32_t s_runs;
  // Filtered: per row (threshold, shift), its list and where its count goes.
  __shared__ float2 s_ts[kFilter ? kWgRows : 1];
  __shared__ indexer_math::PrefillList s_list[kFilter ? kWgRows : 1];
  // Each warp's kept scores of one tile (at most its 16 candidates × 32 rows).
  __shared__ uint2 s_keep[kFilter ? kWgGroups * 4 : 1][kFilter ? kWgCols / 8 * 32 : 1];
  __shared__ double2 s_stat[kStats ? kWgGroups * 4 : 1][kStats ? kWgRows : 1];
  constexpr int kKPad = WgKPad<D_I>();
  constexpr int kPart = WgPartBytes<D_I>();
  const int64_t r0 = a.row_begin + static_cast<int64_t>(blockIdx.y) * kWgRows;
  const int nrows = static_cast<int>(min(static_cast<int64_t>(kWgRows), a.row_begin + a.row_count - r0));
  const int64_t block_c0 = static_cast<int64_t>(blockIdx.x) * tiles * kCandPerTile;
  const int nh = a.n_indexer_heads;
  // Position of candidate index c (stride 64: c itself).
  auto pos_of = [stride](int64_t c) { return (c >> 6) * stride + (c & 63); };

  if (threadIdx.x < kWgRows) {
    const int i = threadIdx.x;
    RowOut ro{a.scores, -1, -1};
    float2 ts = make_float2(__int_as_float(0x7FC00000), 0.0f);  // NaN: keeps nothing
    if (i < nrows) {
      const int64_t r = r0 + i;
      const int32_t pos = a.rows.dense[r] ? -1 : a.rows.position[r];
      ro.pos = pos < pos_of(block_c0) ? -1 : pos;
      ro.seq = a.rows.seq[r];
      ro.out = a.scores + a.score_offset[r - a.row_begin];
      if constexpr (kFilter) {
        ts = f.thr_shift[r - a.row_begin];
        s_list[i] = indexer_math::PrefillListOf(ro.out, static_cast<int64_t>(pos) + 1, f.list_cap);
      }
    }
    s_rows[i] = ro;
    if constexpr (kFilter) s_ts[i] = ts;
  }
  __syncthreads();
  if (threadIdx.x == 0) {  // runs of consecutive same-sequence rows with something to score
    int runs = 0;
    for (int i = 0; i < nrows;) {
      if (s_rows[i].pos < 0) {
        ++i;
        continue;
      }
      int j = i, lim = -1;
      while (j < nrows && s_rows[j].seq == s_rows[i].seq) lim = max(lim, s_rows[j++].pos);
      s_run_begin[runs] = i;
      s_run_end[runs] = j;
      s_run_lim[runs] = lim;
      ++runs;
      i = j;
    }
    s_runs = runs;
  }
  // The B operand: every (column, channel) of the three parts, zeros for dead rows, heads past
  // n_heads and padding channels. A thread takes groups of 4 channels 32p + 8t + 4h + {0 … 3}:
  // logical positions 2t, 2t + 1 and 2t + 8, 2t + 9 of k-step 2p + h, two 4-byte stores a part.
  // All its loads are issued first.
  constexpr int kQuadsPerCol = kKPad / 4;
  constexpr int kQuads = kWgCols * kQuadsPerCol;
  static_assert(kQuads % kWgThreads == 0, "whole rounds of channel groups");
  constexpr int kRounds = kQuads / kWgThreads;
  float x[kRounds][4];
#pragma unroll
  for (int k = 0; k < kRounds; ++k) {
    const int e = static_cast<int>(threadIdx.x) + k * kWgThreads;
    const int ch = 4 * (e % kQuadsPerCol), col = e / kQuadsPerCol, row = col / kWgHeads, j = col % kWgHeads;
    const bool live = row < nrows && j < nh && ch < D_I && s_rows[row].pos >= 0;
    const float* src_q = a.proj + (r0 + row) * a.proj_stride + a.off_qi + j * D_I + ch;
#pragma unroll
    for (int c = 0; c < 4; ++c) x[k][c] = live ? __ldg(src_q + c) : 0.0f;
  }
#pragma unroll
  for (int k = 0; k < kRounds; ++k) {
    const int e = static_cast<int>(threadIdx.x) + k * kWgThreads;
    const int ch = 4 * (e % kQuadsPerCol), col = e / kQuadsPerCol;
    uint32_t parts[3][2];  // [hi, mid, lo][channels 0-1, 2-3] as bf16 pairs
    auto pair = [](bf16 a, bf16 b) {
      return static_cast<uint32_t>(__bfloat16_as_ushort(a)) | (static_cast<uint32_t>(__bfloat16_as_ushort(b)) << 16);
    };
#pragma unroll
    for (int c = 0; c < 4; c += 2) {
      const indexer_math::SplitParts s0 = indexer_math::SplitQuery(x[k][c]);
      const indexer_math::SplitParts s1 = indexer_math::SplitQuery(x[k][c + 1]);
      parts[0][c / 2] = pair(s0.hi, s1.hi);
      parts[1][c / 2] = pair(s0.mid, s1.mid);
      parts[2][c / 2] = pair(s0.lo, s1.lo);
    }
    const int kappa = WgLogicalK(ch);  // channels ch, ch + 1; ch + 2, ch + 3 sit 8 positions later
    const int off0 = WgOperandOffset(col, kappa), off1 = WgOperandOffset(col, kappa + 8);
#pragma unroll
    for (int part = 0; part < 3; ++part) {
      *reinterpret_cast<uint32_t*>(smem + part * kPart + off0) = parts[part][0];
      *reinterpret_cast<uint32_t*>(smem + part * kPart + off1) = parts[part][1];
    }
  }
  if (threadIdx.x < kWgRows * kWgHeads / 2) {
    const int row = threadIdx.x / (kWgHeads / 2), j0 = 2 * (threadIdx.x % (kWgHeads / 2));
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (row < nrows && s_rows[row].pos >= 0) {
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        if (j0 + u < nh) {
          v[u] = a.proj[(r0 + row) * a.proj_stride + a.off_wi + j0 + u];
          // Sigmoid: b · kNegLog2e, as HeadTerm forms it (indexer_math::SigmoidHeadTerm).
          v[2 + u] = kRelu ? a.bias[j0 + u] : a.bias[j0 + u] * indexer_math::kNegLog2e;
        }
      }
    }
    s_wb[threadIdx.x] = make_float4(v[0], v[1], v[2], v[3]);
  }
  wgmma::FenceProxyAsyncShared();
  __syncthreads();

  const int wg = threadIdx.x >> 7;
  const int warp = (threadIdx.x >> 5) & 3;  // within the warpgroup
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const float rs = rsqrtf(static_cast<float>(D_I));
  const float rs_e = rs * indexer_math::kNegLog2e;
  // HeadTerm's value, with s_wb's bias already times kNegLog2e for sigmoid (one multiply fewer a
  // term; bitwise the same, the product being the one HeadTerm forms).
  auto term = [&](float dot, float key_scale, float w, float b, float sum) {
    if constexpr (kRelu) {
      return indexer_math::HeadTerm<true, kFp8>(dot, key_scale, rs, w, b, sum);
    } else {
      return indexer_math::SigmoidHeadTerm(kFp8 ? dot * key_scale : dot, rs_e, b, w, sum);
    }
  };
  const uint64_t desc0 = wgmma::Descriptor(smem, kWgLbo, kWgSbo);
  const indexer_math::KeySource src{a.ki_cache, a.ki_fp8, a.ki_scale};
  const int wg_tiles = tiles * (kCandPerTile / kWgCand);
  const int runs = s_runs;
  // Filtered with sums: the lane's deviations and squares for row 2i + t / 2 of the columns i with
  // i % 2 = t % 2 (entry i / 2).
  constexpr int kSums = kStats ? kWgCols / 16 : 1;
  float sum_d[kSums], sum_d2[kSums];
#pragma unroll
  for (int i = 0; i < kSums; ++i) sum_d[i] = sum_d2[i] = 0.0f;
  // Filtered: the warp's kept (row << 24 | position, score bits) since its last flush, which appends
  // each to its row's list.
  // The lane's first entry of a flush waits for its list index until the next flush (a tile's
  // products and epilogue later) and is stored then: waiting for the atomic's round trip at every
  // tile made the kernel ~1.5x slower. Entries past a warp's first 32 of a tile (rare unless a
  // row's high scores cluster) are stored at once.
  int32_t kept = 0, p_idx = -1;
  uint2 p_entry = make_uint2(0u, 0u);
  auto store = [&](int32_t idx, uint2 v) {
    const indexer_math::PrefillList list = s_list[v.x >> 24];
    if (idx < list.capacity) __stcg(list.entries + idx, make_int2(static_cast<int32_t>(v.x & 0xFFFFFFu), v.y));
  };
  auto drain = [&]() {
    if (p_idx >= 0) store(p_idx, p_entry);
    p_idx = -1;
  };
  auto flush = [&]() {
    __syncwarp();
    drain();
    const int w = threadIdx.x >> 5;
    if (lane < kept) {
      p_entry = s_keep[w][lane];
      p_idx = atomicAdd(f.count + (r0 - a.row_begin) + (p_entry.x >> 24), 1);
    }
    for (int32_t e = 32 + lane; e < kept; e += 32) {
      const uint2 v = s_keep[w][e];
      store(atomicAdd(f.count + (r0 - a.row_begin) + (v.x >> 24), 1), v);
    }
    __syncwarp();
    kept = 0;
  };
  for (int run = 0; run < runs; ++run) {
    const int i0 = s_run_begin[run], i1 = s_run_end[run];
    const int32_t lim = s_run_lim[run], seq = s_rows[i0].seq;
    // Slots of the lane's two candidates of tile wt (rows g and g + 8 of its warp; -1 past the
    // run's last position).
    auto slots = [&](int wt, int64_t* lo, int64_t* hi) {
      const int32_t c_lo = static_cast<int32_t>(pos_of(block_c0 + static_cast<int64_t>(wt) * kWgCand)) + 16 * warp + g;
      *lo = c_lo <= lim ? SlotOfPosition(a.paged, seq, c_lo) : -1;
      *hi = c_lo + 8 <= lim ? SlotOfPosition(a.paged, seq, c_lo + 8) : -1;
    };
    auto live_tile = [&](int wt) {
      return wt < wg_tiles && pos_of(block_c0 + static_cast<int64_t>(wt) * kWgCand) <= lim;
    };
    int wt = wg;
    if (!live_tile(wt)) continue;  // uniform over the warpgroup
    int64_t slot_lo, slot_hi;
    slots(wt, &slot_lo, &slot_hi);
#pragma unroll 1  // unrolled, the relu kernels spilled
    for (; live_tile(wt); wt += kWgGroups) {
      indexer_math::KeyFragment<D_I> keys;  // L1 hits after the first tile: prefetched below
      float scale[2];
      indexer_math::LoadKeys<D_I, kFp8, indexer_math::KeyLoads::kWide>(src, slot_lo, slot_hi, &keys, &scale[0],
                                                                       &scale[1]);
      float acc[64];
#pragma unroll
      for (int i = 0; i < 64; ++i) acc[i] = 0.0f;
      wgmma::FenceOperands(acc);
      wgmma::WgmmaFence();
#pragma unroll
      for (int part = indexer_math::kQueryParts - 1; part >= 0; --part) {  // lo, mid, hi
#pragma unroll
        for (int p = 0; p < indexer_math::KeyShape<D_I>::kGroups; ++p) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const uint32_t(&k)[4] = keys.a[p][h];
            // Start address advances by 16 bytes a unit: part, then k-step s = 2p + h.
            const uint64_t d = desc0 + static_cast<uint64_t>((part * kPart + (2 * p + h) * 2 * kWgLbo) >> 4);
            wgmma::MmaM64N128K16(acc, k[0], k[1], k[2], k[3], d);
          }
        }
      }
      wgmma::WgmmaCommit();
      if constexpr (kFilter) flush();  // the previous tile's kept scores
      // While the tensor cores work: the next tile's slots (their block-table loads wait here)
      // and its key rows into L1, so that the loads at the top of the next iteration hit L1.
      const bool more = live_tile(wt + kWgGroups);
      if (more) {
        slots(wt + kWgGroups, &slot_lo, &slot_hi);
        if (t == 0) {
          const int64_t next[2] = {slot_lo, slot_hi};
#pragma unroll
          for (int u = 0; u < 2; ++u) {
            if (next[u] < 0) continue;
            if constexpr (kFp8) {
              PrefetchL1(src.fp8 + next[u] * D_I);
            } else {
              PrefetchL1(src.bf16_keys + next[u] * D_I);
              if constexpr (D_I == 128) PrefetchL1(src.bf16_keys + next[u] * D_I + 64);
            }
          }
        }
      }
      wgmma::WgmmaWait<0>();
      wgmma::FenceOperands(acc);

      // Column 8i + 2t + e is row ρ = 2i + t / 2's head 2(t % 2) + e: the lane holds what
      // TileScoresPair's lane holds, and sums it the same way.
      const int64_t c_lo = block_c0 + static_cast<int64_t>(wt) * kWgCand + 16 * warp + g;
      const int64_t c = (t & 1) ? c_lo + 8 : c_lo;
      const int64_t c_pos = pos_of(c);
#pragma unroll
      for (int i = 0; i < kWgCols / 8; ++i) {
        const int row = 2 * i + (t >> 1);
        const float4 wb = s_wb[row * (kWgHeads / 2) + (t & 1)];
        const RowOut ro = s_rows[row];
        float lo = term(acc[4 * i + 0], scale[0], wb.x, wb.z, 0.0f);
        float hi = term(acc[4 * i + 2], scale[1], wb.x, wb.z, 0.0f);
        lo = term(acc[4 * i + 1], scale[0], wb.y, wb.w, lo);
        hi = term(acc[4 * i + 3], scale[1], wb.y, wb.w, hi);
        lo += __shfl_xor_sync(0xffffffffu, lo, 1);
        hi += __shfl_xor_sync(0xffffffffu, hi, 1);
        const bool live = row >= i0 && row < i1 && c_pos <= ro.pos;
        const float x = (t & 1) ? hi : lo;
        if constexpr (!kFilter) {
          // A global store the compiler knows to be global: through the generic pointer it had to
          // assume each store might alias the shared-memory loads of the next column, and ran the
          // columns one after another.
          if (live) __stcg(ro.out + c, x);
        } else {
          const float2 ts = s_ts[row];
          if constexpr (kStats) {
            // Lanes t and t ^ 1 both hold row 2i + t / 2's two scores (candidates c_lo, c_lo + 8):
            // the lane with t % 2 = i % 2 sums both (half the accumulators a lane).
            if ((t & 1) == (i & 1)) {
              const bool in_run = row >= i0 && row < i1;
              const float dl = in_run && c_lo <= ro.pos ? lo - ts.y : 0.0f;
              const float dh = in_run && c_lo + 8 <= ro.pos ? hi - ts.y : 0.0f;
              sum_d[i / 2] += dl + dh;
              sum_d2[i / 2] = fmaf(dl, dl, fmaf(dh, dh, sum_d2[i / 2]));
            }
          }
          // Kept scores go to the warp's buffer (no atomics here: their round trips, one per column,
          // made the kernel twice as slow); the buffer goes to the rows' lists under the next
          // tile's products.
          const bool keep = live && x >= ts.x;
          const uint32_t b = __ballot_sync(0xffffffffu, keep);
          if (keep) {
            s_keep[threadIdx.x >> 5][kept + __popc(b & ((1u << lane) - 1u))] =
                make_uint2((static_cast<uint32_t>(row) << 24) | static_cast<uint32_t>(c_pos), __float_as_uint(x));
          }
          kept += __popc(b);
        }
      }
    }
  }
  if constexpr (kFilter) {
    flush();
    drain();
  }
  if constexpr (kStats) {
    // The block's sums a row, in double from the lanes' fp32 sums (≤ 16 terms each) on: over the
    // warp's lanes of the row (t / 2 fixed), then over the block's 8 warps, in a fixed order.
#pragma unroll
    for (int e = 0; e < kSums; ++e) {
      double s1 = sum_d[e], s2 = sum_d2[e];
#pragma unroll
      for (int m = 4; m < 32; m *= 2) {  // over g: the lanes of the same t hold the same row
        s1 += __shfl_xor_sync(0xffffffffu, s1, m);
        s2 += __shfl_xor_sync(0xffffffffu, s2, m);
      }
      if (lane < 4) s_stat[threadIdx.x >> 5][2 * (2 * e + (t & 1)) + (t >> 1)] = make_double2(s1, s2);
    }
    __syncthreads();
    if (threadIdx.x < nrows) {
      double s1 = 0.0, s2 = 0.0;
#pragma unroll
      for (int w = 0; w < kWgGroups * 4; ++w) {
        const double2 v = s_stat[w][threadIdx.x];
        s1 += v.x;
        s2 += v.y;
      }
      f.stats[(r0 - a.row_begin + threadIdx.x) * gridDim.x + blockIdx.x] = make_double2(s1, s2);
    }
  }
}

// How the warpgroup kernel runs: its mode, the sampled mode's stride (64: every candidate) and the
// filter.
struct WgLaunch {
  WgMode mode = WgMode::kStore;
  int32_t stride = kWgCand;
  IndexerFilter filter;
};

template <int D_I, bool kFp8, bool kRelu, WgMode kMode>
cudaError_t LaunchWgmmaKernel(const IndexerScoresArgs& a, const WgLaunch& w, cudaStream_t stream) {
  const size_t smem = 3 * static_cast<size_t>(WgPartBytes<D_I>());
  const cudaError_t err = cudaFuncSetAttribute(IndexerScoresWgmmaKernel<D_I, kFp8, kRelu, kMode>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  // Two blocks a multiprocessor instead of four: half the blocks make as many waves. Filtered: always
  // 2048 candidates a block (the sums' layout, IndexerFilterBlocks).
  IndexerScoresArgs shaped = a;
  if (kMode != WgMode::kStore) shaped.tiles_per_block = kMaxTilesPerBlock;
  const LaunchShape shape = ChooseShape(shaped, kWgRows, kMinBlocks / 2);
  IndexerScoresWgmmaKernel<D_I, kFp8, kRelu, kMode><<<shape.grid, kWgThreads, smem, stream>>>(a, shape.tiles, w.stride,
                                                                                               w.filter);
  return cudaGetLastError();
}

template <int D_I, bool kFp8, bool kRelu>
cudaError_t LaunchWgmmaMode(const IndexerScoresArgs& a, const WgLaunch& w, cudaStream_t stream) {
  switch (w.mode) {
    case WgMode::kFilter: return LaunchWgmmaKernel<D_I, kFp8, kRelu, WgMode::kFilter>(a, w, stream);
    case WgMode::kFilterStats: return LaunchWgmmaKernel<D_I, kFp8, kRelu, WgMode::kFilterStats>(a, w, stream);
    default: return LaunchWgmmaKernel<D_I, kFp8, kRelu, WgMode::kStore>(a, w, stream);
  }
}

template <int D_I>
cudaError_t Launch(const IndexerScoresArgs& a, bool warpgroup, cudaStream_t stream, const WgLaunch& w = WgLaunch()) {
  if (warpgroup) {
    if (a.ki_fp8 != nullptr) {
      return a.relu ? LaunchWgmmaMode<D_I, true, true>(a, w, stream) : LaunchWgmmaMode<D_I, true, false>(a, w, stream);
    }
    return a.relu ? LaunchWgmmaMode<D_I, false, true>(a, w, stream) : LaunchWgmmaMode<D_I, false, false>(a, w, stream);
  }
  if (a.ki_fp8 != nullptr) {
    return a.relu ? LaunchKernel<D_I, true, true>(a, stream) : LaunchKernel<D_I, true, false>(a, stream);
  }
  return a.relu ? LaunchKernel<D_I, false, true>(a, stream) : LaunchKernel<D_I, false, false>(a, stream);
}

// Whether the warpgroup kernel scores this chunk (IndexerScoresArgs::kernel); cudaErrorNotSupported
// when it is forced where it cannot run.
cudaError_t UseWarpgroupKernel(const IndexerScoresArgs& a, bool* use) {
  *use = false;
  if (a.kernel == IndexerScoresArgs::Kernel::kPerWarp) return cudaSuccess;
  bool supported = false;
  const cudaError_t err = OnCurrentDevice(WgmmaSupported, &supported);
  if (err != cudaSuccess) return err;
  supported = supported && a.n_indexer_heads <= kWgHeads;
  if (a.kernel == IndexerScoresArgs::Kernel::kWarpgroup) {
    *use = supported;
    return supported ? cudaSuccess : cudaErrorNotSupported;
  }
  *use = supported && a.sequence_runs > 0 && a.row_count >= 2 * kWgRows && a.row_count >= 16 * a.sequence_runs;
  return cudaSuccess;
}

}  // namespace

bool IndexerScoresSupports(int32_t d_indexer, int32_t n_indexer_heads) {
  const bool d_ok = d_indexer == 16 || d_indexer == 32 || d_indexer == 64 || d_indexer == 128;
  return d_ok && n_indexer_heads >= 1 && n_indexer_heads <= kMaxHeads;
}

namespace {

// Every mode's launch: the argument checks, then the kernel UseWarpgroupKernel picks (the other
// modes force the warpgroup kernel: cudaErrorNotSupported where it cannot run).
cudaError_t Run(const IndexerScoresArgs& a, const WgLaunch& w, cudaStream_t stream) {
  if (a.row_count <= 0 || a.max_candidates <= 0) return cudaSuccess;
  if (!IndexerScoresSupports(a.d_indexer, a.n_indexer_heads) || a.row_count > 65535 ||
      (a.tiles_per_block != 0 && a.tiles_per_block != 1 && a.tiles_per_block != 2 &&
       a.tiles_per_block != 4 && a.tiles_per_block != kMaxTilesPerBlock)) {
    return cudaErrorInvalidValue;
  }
  if (a.ki_fp8 != nullptr ? a.ki_scale == nullptr : a.ki_cache == nullptr) return cudaErrorInvalidValue;
  bool warpgroup = false;
  const cudaError_t err = UseWarpgroupKernel(a, &warpgroup);
  if (err != cudaSuccess) return err;
  switch (a.d_indexer) {
    case 16: return Launch<16>(a, warpgroup, stream, w);
    case 32: return Launch<32>(a, warpgroup, stream, w);
    case 64: return Launch<64>(a, warpgroup, stream, w);
    default: return Launch<128>(a, warpgroup, stream, w);
  }
}

// The warpgroup kernel's other modes: Hopper only, whatever args.kernel says.
cudaError_t LaunchMode(IndexerScoresArgs a, const WgLaunch& w, cudaStream_t stream) {
  a.kernel = IndexerScoresArgs::Kernel::kWarpgroup;
  return Run(a, w, stream);
}

}  // namespace

cudaError_t IndexerScores(const IndexerScoresArgs& a, cudaStream_t stream) { return Run(a, WgLaunch(), stream); }

int64_t IndexerSampleCount(int64_t positions, int64_t sample_stride) {
  return (positions + sample_stride - 1) / sample_stride * kWgCand;
}

cudaError_t IndexerScoresSampled(const IndexerScoresArgs& a, int64_t sample_stride, cudaStream_t stream) {
  if (sample_stride < kWgCand || sample_stride % kWgCand != 0 || sample_stride > (int64_t{1} << 24)) {
    return cudaErrorInvalidValue;
  }
  WgLaunch w;
  w.stride = static_cast<int32_t>(sample_stride);
  return LaunchMode(a, w, stream);
}

int64_t IndexerFilterBlocks(int64_t max_candidates) {
  const int64_t per_block = static_cast<int64_t>(kMaxTilesPerBlock) * kCandPerTile;
  return (max_candidates + per_block - 1) / per_block;
}

cudaError_t IndexerScoresFiltered(const IndexerScoresArgs& a, const IndexerFilter& f, cudaStream_t stream) {
  if (f.thr_shift == nullptr || f.count == nullptr || f.list_cap < 0 || f.list_cap > INT32_MAX ||
      a.max_candidates > (int64_t{1} << 24)) {
    return cudaErrorInvalidValue;
  }
  WgLaunch w;
  w.mode = f.stats != nullptr ? WgMode::kFilterStats : WgMode::kFilter;
  w.filter = f;
  return LaunchMode(a, w, stream);
}

}  // namespace gsa::kernels
