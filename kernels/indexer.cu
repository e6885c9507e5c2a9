#include "kernels/indexer.h"

#include "kernels/indexer_math.cuh"

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
          const int64_t slot_lo = c_lo <= lim ? SlotOfPosition(a.paged, seq, c_lo) : -1;
          const int64_t slot_hi = c_hi <= lim ? SlotOfPosition(a.paged, seq, c_hi) : -1;
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

template <int D_I, bool kFp8, bool kRelu>
cudaError_t LaunchKernel(const IndexerScoresArgs& a, cudaStream_t stream) {
  const size_t smem = SmemBytes(a.n_indexer_heads, D_I);
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(IndexerScoresKernel<D_I, kFp8, kRelu>,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  const int64_t row_groups = (a.row_count + kRowsPerBlock - 1) / kRowsPerBlock;
  const int64_t tile_ranges = (a.max_candidates + kCandPerTile - 1) / kCandPerTile;
  int tiles = a.tiles_per_block;
  if (tiles == 0) {
    tiles = kMaxTilesPerBlock;
    while (tiles > 1 && (tile_ranges + tiles - 1) / tiles * row_groups < kMinBlocks) tiles /= 2;
  }
  const dim3 grid(static_cast<unsigned>((tile_ranges + tiles - 1) / tiles), static_cast<unsigned>(row_groups));
  IndexerScoresKernel<D_I, kFp8, kRelu><<<grid, kThreads, smem, stream>>>(a, tiles);
  return cudaGetLastError();
}

template <int D_I>
cudaError_t Launch(const IndexerScoresArgs& a, cudaStream_t stream) {
  if (a.ki_fp8 != nullptr) {
    return a.relu ? LaunchKernel<D_I, true, true>(a, stream) : LaunchKernel<D_I, true, false>(a, stream);
  }
  return a.relu ? LaunchKernel<D_I, false, true>(a, stream) : LaunchKernel<D_I, false, false>(a, stream);
}

}  // namespace

bool IndexerScoresSupports(int32_t d_indexer, int32_t n_indexer_heads) {
  const bool d_ok = d_indexer == 16 || d_indexer == 32 || d_indexer == 64 || d_indexer == 128;
  return d_ok && n_indexer_heads >= 1 && n_indexer_heads <= kMaxHeads;
}

cudaError_t IndexerScores(const IndexerScoresArgs& a, cudaStream_t stream) {
  if (a.row_count <= 0 || a.max_candidates <= 0) return cudaSuccess;
  if (!IndexerScoresSupports(a.d_indexer, a.n_indexer_heads) || a.row_count > 65535 ||
      (a.tiles_per_block != 0 && a.tiles_per_block != 1 && a.tiles_per_block != 2 &&
       a.tiles_per_block != 4 && a.tiles_per_block != kMaxTilesPerBlock)) {
    return cudaErrorInvalidValue;
  }
  if (a.ki_fp8 != nullptr ? a.ki_scale == nullptr : a.ki_cache == nullptr) return cudaErrorInvalidValue;
  switch (a.d_indexer) {
    case 16: return Launch<16>(a, stream);
    case 32: return Launch<32>(a, stream);
    case 64: return Launch<64>(a, stream);
    default: return Launch<128>(a, stream);
  }
}

}  // namespace gsa::kernels
