// Union-tile sparse prefill: see kernels/sparse_prefill.h for the contract.
//
// Tiles. A listed sequence's chunk (rows query_start … + num_query, positions pos_first …) is cut
// at absolute multiples of kQ = kMRows / group (kMRows = 256): tile y holds chunk rows
// [y·kQ - off, (y+1)·kQ - off) ∩ [0, num_query), off = pos_first mod kQ. Grids: (…, tiles per
// sequence, listed sequence); a tile with no rows does nothing.
//
// Union blocks. Position p is in block p / 64 (kBlk = 64 = the attention kernel's key tile).
//
// Workspace: headers int32 [slots] (slot = sequence index · tiles per sequence + tile; U ≥ 1 on
// the tile path, -1 otherwise), padded to 16 bytes; marks per slot (MarkBytes: bitmap, rank bases,
// Σ count); then per slot a region of `slot_bytes`: masks uint64 [U_cap][kQ] (mask[u][i] bit b:
// tile row i selected position 64·list[u] + b), then the block list int32 [U_cap] (ascending).
//
// The plan, per tile: MarkKernel (kPassSplit CTAs per tile, warps over the rows, ForEachRun: one
// shared atomic per run of list entries in one block, then the CTA's nonzero words ORed into the
// tile's bitmap) marks the tile's blocks and sums the counts; DecideKernel (one CTA per tile)
// scans the bitmap's popcounts into U and each word's rank base, decides, writes the header, stats
// and row_skip, and on the tile path the list (ascending) and zeroed masks; MasksKernel
// (kPassSplit CTAs per tile) ORs each run's bits into mask[rank(block)][row]. The marks are zeroed
// per launch.
// Attention (TileAttentionKernel<D, kQ>): one CTA of 8 warps per (KV head, tile). The kMRows M
// rows are (query head g, tile row i) = (m / kQ, m mod kQ); warp w owns kAttnAtoms m16 atoms of
// consecutive rows (Q fragments re-read from shared memory per k step; the dense prefill keeps
// them in registers when a warp has one atom). Per union block (in list order): K and V of its 64
// positions (cp.async, double-buffered, the pipeline of kernels/dense_prefill.cu; positions past
// the tile's last row are zero-filled and never read), S = Q Kᵀ, keys the row did not select at
// -inf (the mask words are read from global memory while the scores are computed), online
// softmax, P V. Epilogue: O / l (0 for a row that selected nothing), output gate, bf16 stores of
// valid rows.
#include "kernels/sparse_prefill.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/flash_mma.cuh"

namespace gsa::kernels {
namespace {

using flash::CpAsync16;
using flash::CpAsyncCommit;
using flash::CpAsyncWait;
using flash::SmemAddr;

constexpr int kBlk = 64;            // positions per union block = keys per attention tile
constexpr int kAttnWarps = 8;
// m16 atoms per warp. Two (256 M rows: 128 queries × 2 heads at gsa-1.7b) against one, H200,
// gsa-1.7b chunk of 2048 rows: union tiles of every block at 32K context 2.36 against 2.91 ms (the
// per-iteration barriers and loads amortized over twice the rows); clustered 0.32 against 0.31 ms.
constexpr int kAttnAtoms = 2;
constexpr int kMRows = kAttnWarps * 16 * kAttnAtoms;  // M rows of a CTA: kQ tile rows × group heads
constexpr int kPlanUnroll = 8;      // list entries per lane in flight
constexpr int kPassSplit = 8;       // CTAs per tile of the two passes over the lists
constexpr int kPassThreads = 256;
constexpr int kPassWarps = kPassThreads / 32;
constexpr int kDecideThreads = 1024;
constexpr int kDecideWarps = kDecideThreads / 32;
constexpr int kAttnThreads = kAttnWarps * 32;

// Where a tile's rows are, computed the same way by both kernels.
struct Tile {
  int32_t seq = 0;
  int64_t row0 = 0;      // absolute row of chunk row 0
  int32_t pos_first = 0; // position of chunk row 0
  int32_t j0 = 0;        // chunk row of tile row 0 (may be negative for the first tile)
  int32_t lo = 0, hi = 0;  // chunk rows [lo, hi) are real (lo < hi unless the tile is empty)
};

template <int kQ>
__device__ __forceinline__ Tile TileOf(const SparsePrefillArgs& a, int tile_y, int seq_index) {
  Tile tl;
  tl.seq = a.seq_ids[seq_index];
  const int32_t nq = a.num_query[tl.seq];
  tl.pos_first = a.context_len[tl.seq] - nq;
  tl.row0 = a.query_start[tl.seq];
  tl.j0 = tile_y * kQ - tl.pos_first % kQ;
  tl.lo = max(tl.j0, 0);
  tl.hi = min(tl.j0 + kQ, nq);
  return tl;
}

// Bitmap words covering the tile's blocks (those of positions 0 … its last row's).
__device__ __forceinline__ int32_t TileWords(const Tile& tl) { return ((tl.pos_first + tl.hi - 1) / kBlk) / 32 + 1; }

// Launch-wide constants of every kernel.
struct Plan {
  int32_t tiles_per_seq = 0;
  int32_t bitmap_words = 0;  // bitmap words per slot: ceil(ceil(max_context / 64) / 32)
  int32_t u_cap = 0;         // the most union blocks a tile's slot holds (0: no tile path)
  float key_cost = 0.0f;
  int32_t* headers = nullptr;   // [slots]
  unsigned char* marks = nullptr;  // [slots] × mark_bytes: bitmap, rank bases, Σ count (zeroed per launch)
  size_t mark_bytes = 0;
  unsigned char* slots = nullptr;
  size_t slot_bytes = 0;
  size_t list_offset = 0;  // bytes from a slot's start to its block list
};

__device__ __forceinline__ uint32_t* MarkBitmap(const Plan& p, int64_t slot) {
  return reinterpret_cast<uint32_t*>(p.marks + static_cast<size_t>(slot) * p.mark_bytes);
}
__device__ __forceinline__ int32_t* MarkRank(const Plan& p, int64_t slot) {
  return reinterpret_cast<int32_t*>(MarkBitmap(p, slot) + p.bitmap_words);
}
__device__ __forceinline__ unsigned long long* MarkSelected(const Plan& p, int64_t slot) {
  return reinterpret_cast<unsigned long long*>(p.marks + (static_cast<size_t>(slot) + 1) * p.mark_bytes - 8);
}

__device__ __forceinline__ uint64_t* SlotMasks(const Plan& p, int64_t slot) {
  return reinterpret_cast<uint64_t*>(p.slots + static_cast<size_t>(slot) * p.slot_bytes);
}
__device__ __forceinline__ int32_t* SlotList(const Plan& p, int64_t slot) {
  return reinterpret_cast<int32_t*>(p.slots + static_cast<size_t>(slot) * p.slot_bytes + p.list_offset);
}

// Exclusive prefix sum over the CTA (kDecideThreads threads, every thread calls it); *total gets
// the sum.
__device__ __forceinline__ int32_t BlockExclusiveSum(int32_t v, int32_t* s_warp, int32_t* total) {
  const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  int32_t incl = v;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const int32_t up = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += up;
  }
  if (lane == 31) s_warp[warp] = incl;
  __syncthreads();
  int32_t base = 0, sum = 0;
#pragma unroll
  for (int w = 0; w < kDecideWarps; ++w) {
    const int32_t x = s_warp[w];
    base += w < warp ? x : 0;
    sum += x;
  }
  *total = sum;
  return base + incl - v;
}

// Row r's selection count clamped to [0, sel_stride].
__device__ __forceinline__ int32_t RowCount(const SparsePrefillArgs& a, int64_t r) {
  const int64_t c = a.sel_count[r];
  return static_cast<int32_t>(c < 0 ? 0 : (c > a.sel_stride ? a.sel_stride : c));
}

// Calls run(block, bits) for runs of entries of row list sel_row[0, count) that fall in one
// 64-position block (bits: their positions' bits in the block); entries outside [0, t] are
// skipped; every entry is in exactly one run, a block may come in several runs. The warp reads the
// list in batches of 32 · kPlanUnroll entries, coalesced, through `stage` (the warp's
// kPlanUnroll · 32 ints of shared memory), and lane ℓ walks entries [kPlanUnroll·ℓ, kPlanUnroll·(ℓ+1))
// of each batch: a sorted list (TopK writes them sorted) gives each lane few runs. Every lane of the
// warp must call it (same row).
template <typename Run>
__device__ __forceinline__ void ForEachRun(const int32_t* sel_row, int32_t count, int32_t t, int lane, int32_t* stage,
                                           Run run) {
  static_assert(kPlanUnroll == 8, "two 16-byte shared loads per lane");
  int32_t cur = -1;
  uint64_t bits = 0ull;
  int32_t next[kPlanUnroll];  // the next batch, loaded while this one is processed
  auto load = [&](int32_t i0) {
#pragma unroll
    for (int u = 0; u < kPlanUnroll; ++u) {
      const int32_t i = i0 + u * 32 + lane;
      next[u] = i < count ? sel_row[i] : -1;
    }
  };
  load(0);
  for (int32_t i0 = 0; i0 < count; i0 += 32 * kPlanUnroll) {  // warp-uniform trip count
    int32_t pos[kPlanUnroll];
#pragma unroll
    for (int u = 0; u < kPlanUnroll; ++u) pos[u] = next[u];
    if (i0 + 32 * kPlanUnroll < count) load(i0 + 32 * kPlanUnroll);
#pragma unroll
    for (int u = 0; u < kPlanUnroll; ++u) stage[u * 32 + lane] = pos[u];
    __syncwarp();
    const int4 lo = reinterpret_cast<const int4*>(stage)[2 * lane];
    const int4 hi = reinterpret_cast<const int4*>(stage)[2 * lane + 1];
    __syncwarp();  // every lane has its entries before the next batch is staged
    const int32_t mine[kPlanUnroll] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
    for (int u = 0; u < kPlanUnroll; ++u) {
      const int32_t p = mine[u];
      if (p < 0 || p > t) continue;
      const int32_t blk = p / kBlk;
      if (blk != cur) {
        if (cur >= 0) run(cur, bits);
        cur = blk;
        bits = 0ull;
      }
      bits |= 1ull << (p % kBlk);
    }
  }
  if (cur >= 0) run(cur, bits);
}

// The rows of part `part` (of kPassSplit) of a tile: [*b, *e).
__device__ __forceinline__ void PartRows(const Tile& tl, int part, int32_t* b, int32_t* e) {
  const int32_t per = (tl.hi - tl.lo + kPassSplit - 1) / kPassSplit;
  *b = min(tl.lo + part * per, tl.hi);
  *e = min(*b + per, tl.hi);
}

// A tile the plan cannot take (a context past max_context, a caller bug, or a negative position):
// its rows are left to GatheredAttention rather than overrun the bitmap.
__device__ __forceinline__ bool TileTooLong(const Tile& tl, const Plan& p) {
  return tl.pos_first < 0 || TileWords(tl) > p.bitmap_words;
}

// Pass 1, grid (kPassSplit, tiles, sequences): marks the blocks the part's rows select in a
// shared bitmap (one shared atomic per run), then ORs its nonzero words into the tile's bitmap and
// adds the part's counts to the tile's Σ (a few global atomics per CTA: the tile's words are few
// and every part hits the same ones). Dynamic shared memory: bitmap_words words.
template <int kQ>
__global__ void __launch_bounds__(kPassThreads) MarkKernel(const SparsePrefillArgs a, const Plan p) {
  extern __shared__ uint32_t s_bitmap[];
  __shared__ __align__(16) int32_t s_stage[kPassWarps][32 * kPlanUnroll];
  __shared__ unsigned long long s_selected;
  const int64_t slot = static_cast<int64_t>(blockIdx.z) * p.tiles_per_seq + blockIdx.y;
  const Tile tl = TileOf<kQ>(a, static_cast<int>(blockIdx.y), static_cast<int>(blockIdx.z));
  if (tl.lo >= tl.hi || TileTooLong(tl, p)) return;  // whole CTA, before any barrier
  int32_t jb = 0, je = 0;
  PartRows(tl, static_cast<int>(blockIdx.x), &jb, &je);
  if (jb >= je) return;
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid & 31, warp = tid >> 5;
  const int32_t words = TileWords(tl);
  for (int w = tid; w < words; w += kPassThreads) s_bitmap[w] = 0u;
  if (tid == 0) s_selected = 0ull;
  __syncthreads();
  for (int32_t j = jb + warp; j < je; j += kPassWarps) {
    const int64_t r = tl.row0 + j;
    const int32_t count = RowCount(a, r);
    if (lane == 0) atomicAdd(&s_selected, static_cast<unsigned long long>(count));
    ForEachRun(a.sel + r * a.sel_stride, count, tl.pos_first + j, lane, s_stage[warp],
               [&](int32_t blk, uint64_t) { atomicOr(&s_bitmap[blk >> 5], 1u << (blk & 31)); });
  }
  __syncthreads();
  uint32_t* const bitmap = MarkBitmap(p, slot);
  for (int w = tid; w < words; w += kPassThreads) {
    if (s_bitmap[w] != 0u) atomicOr(&bitmap[w], s_bitmap[w]);
  }
  if (tid == 0) atomicAdd(MarkSelected(p, slot), s_selected);
}

// Grid (1, tiles, sequences): U from the bitmap (a block-wide scan of the words' popcounts, whose
// bases go to the rank array for pass 2), the decision, header, stats and row_skip; on the tile
// path the ascending block list and zeroed masks.
template <int kQ>
__global__ void __launch_bounds__(kDecideThreads) DecideKernel(const SparsePrefillArgs a, const Plan p) {
  __shared__ int32_t s_warp[kDecideWarps];
  const int64_t slot = static_cast<int64_t>(blockIdx.z) * p.tiles_per_seq + blockIdx.y;
  const Tile tl = TileOf<kQ>(a, static_cast<int>(blockIdx.y), static_cast<int>(blockIdx.z));
  const int tid = static_cast<int>(threadIdx.x);
  const bool empty = tl.lo >= tl.hi;
  if (empty || TileTooLong(tl, p)) {  // whole CTA, before any barrier
    if (tid == 0) {
      p.headers[slot] = -1;
      if (a.tile_stats != nullptr) a.tile_stats[slot] = SparsePrefillTileStat{-1, 0, 0};
    }
    if (!empty) {
      for (int32_t j = tl.lo + tid; j < tl.hi; j += kDecideThreads) a.row_skip[tl.row0 + j] = 0;
    }
    return;
  }
  const int32_t words = TileWords(tl);
  const uint32_t* const bitmap = MarkBitmap(p, slot);
  int32_t* const rank_base = MarkRank(p, slot);
  // Thread tid takes words [tid·per, (tid+1)·per).
  const int per = (words + kDecideThreads - 1) / kDecideThreads;
  const int w_begin = min(tid * per, words), w_end = min(w_begin + per, words);
  int32_t mine = 0;
  for (int w = w_begin; w < w_end; ++w) mine += __popc(bitmap[w]);
  int32_t union_blocks = 0;
  int32_t base = BlockExclusiveSum(mine, s_warp, &union_blocks);
  for (int w = w_begin; w < w_end; ++w) {
    rank_base[w] = base;
    base += __popc(bitmap[w]);
  }
  const int64_t selected = static_cast<int64_t>(*MarkSelected(p, slot));
  const bool on_tiles = union_blocks >= 1 && union_blocks <= p.u_cap &&
                        static_cast<double>(union_blocks) * kBlk * p.key_cost <= static_cast<double>(selected);
  if (tid == 0) {
    p.headers[slot] = on_tiles ? union_blocks : -1;
    if (a.tile_stats != nullptr) {
      a.tile_stats[slot] = SparsePrefillTileStat{union_blocks, on_tiles ? 1 : 0, selected};
    }
  }
  for (int32_t j = tl.lo + tid; j < tl.hi; j += kDecideThreads) a.row_skip[tl.row0 + j] = on_tiles ? 1 : 0;
  if (!on_tiles) return;
  int32_t* const list = SlotList(p, slot);
  for (int w = w_begin; w < w_end; ++w) {
    uint32_t bits = bitmap[w];
    int32_t k = rank_base[w];
    while (bits != 0u) {
      list[k++] = w * 32 + (__ffs(bits) - 1);
      bits &= bits - 1u;
    }
  }
  uint64_t* const masks = SlotMasks(p, slot);
  const int64_t mask_words = static_cast<int64_t>(union_blocks) * kQ;
  for (int64_t i = tid; i < mask_words; i += kDecideThreads) masks[i] = 0ull;
}

// Pass 2, grid (kPassSplit, tiles, sequences), for tiles on the tile path: ORs every run's bits
// into mask[rank(block)][tile row] (one 64-bit atomic per run). Dynamic shared memory: the tile's
// bitmap and rank bases (2 · bitmap_words words).
template <int kQ>
__global__ void __launch_bounds__(kPassThreads) MasksKernel(const SparsePrefillArgs a, const Plan p) {
  extern __shared__ uint32_t s_dyn[];
  __shared__ __align__(16) int32_t s_stage[kPassWarps][32 * kPlanUnroll];
  const int64_t slot = static_cast<int64_t>(blockIdx.z) * p.tiles_per_seq + blockIdx.y;
  if (p.headers[slot] <= 0) return;  // not on the tile path (whole CTA, before any barrier)
  const Tile tl = TileOf<kQ>(a, static_cast<int>(blockIdx.y), static_cast<int>(blockIdx.z));
  int32_t jb = 0, je = 0;
  PartRows(tl, static_cast<int>(blockIdx.x), &jb, &je);
  const int32_t words = TileWords(tl);
  uint32_t* const bitmap = s_dyn;
  int32_t* const rank_base = reinterpret_cast<int32_t*>(s_dyn + words);
  const uint32_t* const g_bitmap = MarkBitmap(p, slot);
  const int32_t* const g_rank = MarkRank(p, slot);
  for (int w = static_cast<int>(threadIdx.x); w < words; w += kPassThreads) {
    bitmap[w] = g_bitmap[w];
    rank_base[w] = g_rank[w];
  }
  __syncthreads();
  const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  uint64_t* const masks = SlotMasks(p, slot);
  for (int32_t j = jb + warp; j < je; j += kPassWarps) {
    const int64_t r = tl.row0 + j;
    uint64_t* const row_masks = masks + (j - tl.j0);
    ForEachRun(a.sel + r * a.sel_stride, RowCount(a, r), tl.pos_first + j, lane, s_stage[warp],
               [&](int32_t blk, uint64_t bits) {
                 const int32_t ub = rank_base[blk >> 5] + __popc(bitmap[blk >> 5] & ((1u << (blk & 31)) - 1u));
                 atomicOr(reinterpret_cast<unsigned long long*>(row_masks + static_cast<int64_t>(ub) * kQ),
                          static_cast<unsigned long long>(bits));
               });
  }
}

template <int D>
struct AttnCfg {
  static constexpr int kStride = D + 8;
  static constexpr int kChunks = D / 8;                   // 16-byte chunks per row
  static constexpr int kRowStep = kAttnThreads / kChunks; // rows between one thread's chunks
  static constexpr int kQRowsPerThread = kMRows / kRowStep;
  static constexpr int kKvRowsPerThread = kBlk / kRowStep;
  static constexpr int kSmemQ = kMRows * kStride;  // elements
  static constexpr int kSmemKv = kBlk * kStride;   // elements, one stage of K or of V
  static constexpr size_t kSmemBytes = sizeof(bf16) * (static_cast<size_t>(kSmemQ) + 4 * kSmemKv);
  static_assert(kAttnThreads % kChunks == 0 && kMRows % kRowStep == 0 && kBlk % kRowStep == 0, "copy rounds");
  static_assert((kStride * sizeof(bf16)) % 128 == 16, "conflict-free ldmatrix rows");
};

template <int D, int kQ>
__global__ void __launch_bounds__(kAttnThreads) TileAttentionKernel(const SparsePrefillArgs a, const Plan p) {
  using C = AttnCfg<D>;
  constexpr int kStride = C::kStride;
  constexpr int kNTiles = kBlk / 8;
  constexpr int kDTiles = D / 8;
  constexpr int kKSteps = D / 16;
  constexpr int kPSteps = kBlk / 16;
  constexpr int kGroup = kMRows / kQ;
  constexpr int kMAtoms = kAttnAtoms;

  const int kvh = static_cast<int>(blockIdx.x);
  const int64_t slot = static_cast<int64_t>(blockIdx.z) * p.tiles_per_seq + blockIdx.y;
  const int32_t n_union = p.headers[slot];
  if (n_union <= 0) return;  // not on the tile path (whole CTA, before any barrier)
  const Tile tl = TileOf<kQ>(a, static_cast<int>(blockIdx.y), static_cast<int>(blockIdx.z));
  const int32_t last_pos = tl.pos_first + tl.hi - 1;  // no key past it is read
  const int32_t* const list = SlotList(p, slot);
  const uint64_t* const masks = SlotMasks(p, slot);
  const float scale_log2 = a.scale * flash::kLog2e;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* const sQ = reinterpret_cast<bf16*>(smem_raw);
  bf16* const sK = sQ + C::kSmemQ;       // [2][kBlk][kStride]
  bf16* const sV = sK + 2 * C::kSmemKv;  // [2][kBlk][kStride]

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int g = lane >> 2;
  const int t = lane & 3;

  // ---- copies: thread tid copies chunk column cc of rows cr, cr + kRowStep, …
  const int cc = tid % C::kChunks;
  const int cr = tid / C::kChunks;
  const int64_t q_row_stride = static_cast<int64_t>(a.n_heads) * D;
  const int64_t kv_slot_stride = static_cast<int64_t>(a.n_kv_heads) * D;
  const bf16* const k_base = a.k_cache + static_cast<int64_t>(kvh) * D + cc * 8;
  const bf16* const v_base = a.v_cache + static_cast<int64_t>(kvh) * D + cc * 8;

  // M row m → query head kvh·group + m / kQ, tile row m mod kQ (chunk row j0 + m mod kQ).
#pragma unroll
  for (int i = 0; i < C::kQRowsPerThread; ++i) {
    const int m = cr + i * C::kRowStep;
    const int32_t j = tl.j0 + m % kQ;
    const bool valid = j >= tl.lo && j < tl.hi;
    const int64_t h = static_cast<int64_t>(kvh) * kGroup + m / kQ;
    const bf16* src = valid ? a.q + (tl.row0 + j) * q_row_stride + h * D + cc * 8 : a.q;
    CpAsync16(SmemAddr(sQ + m * kStride + cc * 8), src, valid);
  }

  int32_t slots[C::kKvRowsPerThread];  // slot of each of this thread's key rows, -1: not read
  auto find_slots = [&](int32_t block) {
    const int32_t first = block * kBlk;
#pragma unroll
    for (int i = 0; i < C::kKvRowsPerThread; ++i) {
      const int32_t s = first + cr + i * C::kRowStep;
      slots[i] = s <= last_pos ? SlotOfPosition(a.paged, tl.seq, s) : -1;
    }
  };
  auto issue_kv = [&](const bf16* base, bf16* stage) {
#pragma unroll
    for (int i = 0; i < C::kKvRowsPerThread; ++i) {
      const int r = cr + i * C::kRowStep;
      const bool valid = slots[i] >= 0;
      const bf16* src = valid ? base + static_cast<int64_t>(slots[i]) * kv_slot_stride : base;
      CpAsync16(SmemAddr(stage + r * kStride + cc * 8), src, valid);
    }
  };

  find_slots(list[0]);
  int32_t next_block = n_union > 1 ? list[1] : 0;  // the list is read one block ahead of its use
  issue_kv(k_base, sK);
  CpAsyncCommit();  // {Q, K0}
  issue_kv(v_base, sV);
  CpAsyncCommit();  // {V0}

  // ---- per-warp state (atom mi: rows 16·(kMAtoms·warp + mi) + g and + 8)
  const int wrow0 = warp * 16 * kMAtoms;
  int qi[kMAtoms][2];  // tile rows of this thread's rows
  float acc_o[kMAtoms][kDTiles][4];
  float row_max[kMAtoms][2];
  float row_sum[kMAtoms][2];
#pragma unroll
  for (int mi = 0; mi < kMAtoms; ++mi) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      qi[mi][hf] = (wrow0 + mi * 16 + g + 8 * hf) % kQ;
      row_max[mi][hf] = -INFINITY;
      row_sum[mi][hf] = 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kDTiles; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_o[mi][j][e] = 0.0f;
    }
  }
  const uint32_t q_frag[1][4] = {};  // unused: Q fragments are re-read from shared memory per k step
  const uint32_t sQ_warp = SmemAddr(sQ + wrow0 * kStride + flash::QLaneOffset<kStride>(lane));
  const int k_lane_off = flash::KLaneOffset<kStride>(lane);
  const int v_lane_off = flash::VLaneOffset<kStride>(lane);

  for (int it = 0; it < n_union; ++it) {
    const int buf = it & 1;
    if (it + 1 < n_union) {
      find_slots(next_block);
      issue_kv(k_base, sK + (buf ^ 1) * C::kSmemKv);
      if (it + 2 < n_union) next_block = list[it + 2];
    }
    CpAsyncCommit();
    // This block's selection bits of the thread's rows, shifted to its columns 2t, 2t + 1 (read
    // while S is computed).
    uint64_t mask[kMAtoms][2];
#pragma unroll
    for (int mi = 0; mi < kMAtoms; ++mi) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) mask[mi][hf] = masks[static_cast<int64_t>(it) * kQ + qi[mi][hf]];
    }
    CpAsyncWait<2>();
    __syncthreads();  // B1: K[it] (and Q) visible; every thread is past PV of it-1
    if (it + 1 < n_union) issue_kv(v_base, sV + (buf ^ 1) * C::kSmemKv);
    CpAsyncCommit();

    float acc_s[kMAtoms][kNTiles][4];
    flash::QkScores<kMAtoms, kNTiles, kKSteps, kStride, false>(acc_s, q_frag, sQ_warp,
                                                               SmemAddr(sK + buf * C::kSmemKv + k_lane_off));
    uint32_t p_frag[kMAtoms][kPSteps][4];
    // Key 8j + 2t + e of the block counts for a row iff the row selected it.
#pragma unroll
    for (int mi = 0; mi < kMAtoms; ++mi) {
      mask[mi][0] >>= 2 * t;
      mask[mi][1] >>= 2 * t;
    }
    auto selected = [&](int mi, int hf, int j, int e) { return ((mask[mi][hf] >> (8 * j + e)) & 1ull) != 0ull; };
    flash::SoftmaxStep<kMAtoms, kNTiles, kDTiles>(acc_s, row_max, row_sum, acc_o, scale_log2, selected, p_frag);

    CpAsyncWait<2>();
    __syncthreads();  // B2: V[it] visible; every thread is past S of it (K buffer free)
    flash::PvAccumulate<kMAtoms, kPSteps, kDTiles, kStride>(acc_o, p_frag,
                                                            SmemAddr(sV + buf * C::kSmemKv + v_lane_off));
  }

  // ---- epilogue: O / l, output gate, bf16 stores of the real rows
  const bool gated = a.gate_z != nullptr;
#pragma unroll
  for (int mi = 0; mi < kMAtoms; ++mi) {
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const float l = flash::QuadRowSum(row_sum[mi][hf]);
    const int m = wrow0 + mi * 16 + g + hf * 8;
    const int32_t j = tl.j0 + m % kQ;
    if (j < tl.lo || j >= tl.hi) continue;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;  // 0: the row selected nothing
    const int64_t row = tl.row0 + j;
    const int64_t col = (static_cast<int64_t>(kvh) * kGroup + m / kQ) * D;
    const float* const gz = gated ? a.gate_z + row * a.gate_stride + col : nullptr;
    const float* const gb = (gated && a.gate_bias != nullptr) ? a.gate_bias + col : nullptr;
    flash::StoreRow<kDTiles>(acc_o[mi], hf, inv, t, a.out + row * q_row_stride + col, gated, gz, gb, a.gate_act);
  }
  }
}

int32_t GroupOf(const SparsePrefillArgs& a) { return a.n_kv_heads > 0 ? a.n_heads / a.n_kv_heads : 0; }

size_t HeaderBytes(int64_t slots) { return (static_cast<size_t>(slots) * sizeof(int32_t) + 15) / 16 * 16; }

int32_t BitmapWords(int32_t max_context) { return ((max_context + kBlk - 1) / kBlk + 31) / 32; }

// Bytes of one slot's marks: bitmap and rank bases (a word each per 32 blocks), Σ count (8 bytes);
// a multiple of 16.
size_t MarkBytes(int32_t bitmap_words) {
  return (static_cast<size_t>(bitmap_words) * 2 * sizeof(uint32_t) + 8 + 15) / 16 * 16;
}

// Bytes of one slot holding up to u_cap blocks of kQ rows (a multiple of 16).
size_t SlotBytes(int32_t u_cap, int32_t kq) {
  const size_t masks = static_cast<size_t>(u_cap) * kq * sizeof(uint64_t);
  const size_t list = (static_cast<size_t>(u_cap) * sizeof(int32_t) + 15) / 16 * 16;
  return masks + list;
}

template <int D, int kQ>
cudaError_t Launch(const SparsePrefillArgs& a, cudaStream_t stream) {
  Plan p;
  p.tiles_per_seq = SparsePrefillTilesPerSeq(a.max_num_query, kMRows / kQ);
  if (p.tiles_per_seq > 65535) return cudaErrorInvalidValue;
  const int64_t slots = static_cast<int64_t>(a.num_seq_ids) * p.tiles_per_seq;
  const int32_t max_blocks = (a.max_context + kBlk - 1) / kBlk;
  p.bitmap_words = BitmapWords(a.max_context);
  p.key_cost = a.tile_key_cost > 0.0f ? a.tile_key_cost : kSparsePrefillTileKeyCost;
  // The largest union a slot can hold within the workspace (never more than the context's blocks).
  p.mark_bytes = MarkBytes(p.bitmap_words);
  const size_t header = HeaderBytes(slots) + static_cast<size_t>(slots) * p.mark_bytes;
  if (a.workspace == nullptr || a.workspace_bytes < header) return cudaErrorInvalidValue;  // headers at least
  const size_t per_slot = (a.workspace_bytes - header) / static_cast<size_t>(slots);
  const size_t per_block = static_cast<size_t>(kQ) * sizeof(uint64_t) + sizeof(int32_t);
  int64_t cap = static_cast<int64_t>(per_slot / per_block);
  cap = std::min<int64_t>(cap, max_blocks);
  while (cap > 0 && SlotBytes(static_cast<int32_t>(cap), kQ) > per_slot) --cap;
  p.u_cap = static_cast<int32_t>(cap);
  p.headers = static_cast<int32_t*>(a.workspace);
  p.marks = static_cast<unsigned char*>(a.workspace) + HeaderBytes(slots);
  p.slots = static_cast<unsigned char*>(a.workspace) + header;
  p.slot_bytes = SlotBytes(p.u_cap, kQ);
  p.list_offset = static_cast<size_t>(p.u_cap) * kQ * sizeof(uint64_t);

  // The plan: zeroed marks, pass 1, the decision, pass 2 (only tiles on the tile path do work).
  cudaError_t err = cudaMemsetAsync(p.marks, 0, static_cast<size_t>(slots) * p.mark_bytes, stream);
  if (err != cudaSuccess) return err;
  const dim3 pass_grid(kPassSplit, static_cast<unsigned>(p.tiles_per_seq), static_cast<unsigned>(a.num_seq_ids));
  const dim3 decide_grid(1, static_cast<unsigned>(p.tiles_per_seq), static_cast<unsigned>(a.num_seq_ids));
  const size_t bitmap_smem = static_cast<size_t>(p.bitmap_words) * sizeof(uint32_t);  // ≤ 16 KB
  MarkKernel<kQ><<<pass_grid, kPassThreads, bitmap_smem, stream>>>(a, p);
  DecideKernel<kQ><<<decide_grid, kDecideThreads, 0, stream>>>(a, p);
  err = cudaGetLastError();
  if (err != cudaSuccess || p.u_cap == 0) return err;
  const size_t masks_smem = static_cast<size_t>(p.bitmap_words) * 2 * sizeof(uint32_t);  // ≤ 32 KB (max_context ≤ 2^23)
  MasksKernel<kQ><<<pass_grid, kPassThreads, masks_smem, stream>>>(a, p);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;

  using C = AttnCfg<D>;
  err = cudaFuncSetAttribute(TileAttentionKernel<D, kQ>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(C::kSmemBytes));
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(a.n_kv_heads), static_cast<unsigned>(p.tiles_per_seq),
                  static_cast<unsigned>(a.num_seq_ids));
  TileAttentionKernel<D, kQ><<<grid, kAttnThreads, C::kSmemBytes, stream>>>(a, p);
  return cudaGetLastError();
}

template <int D>
cudaError_t LaunchForGroup(const SparsePrefillArgs& a, cudaStream_t stream) {
  switch (GroupOf(a)) {
    case 1: return Launch<D, kMRows>(a, stream);
    case 2: return Launch<D, kMRows / 2>(a, stream);
    case 4: return Launch<D, kMRows / 4>(a, stream);
    default: return Launch<D, kMRows / 8>(a, stream);
  }
}

}  // namespace

bool SparsePrefillSupports(int32_t d_head, int32_t group) {
  return (d_head == 64 || d_head == 128) && (group == 1 || group == 2 || group == 4 || group == 8);
}

int32_t SparsePrefillTileRows(int32_t group) { return group > 0 ? kMRows / group : 0; }

int32_t SparsePrefillTilesPerSeq(int32_t max_num_query, int32_t group) {
  const int32_t kq = SparsePrefillTileRows(group);
  if (kq <= 0 || max_num_query <= 0) return 0;
  // Absolute alignment: a chunk's rows may start anywhere in a tile, so one more tile than
  // ceil(max_num_query / kq) can be touched.
  return static_cast<int32_t>((static_cast<int64_t>(max_num_query) + 2 * kq - 2) / kq);
}

size_t SparsePrefillWorkspaceBytes(int32_t num_seq_ids, int32_t max_num_query, int32_t max_context, int32_t group,
                                   int32_t max_union_blocks) {
  const int32_t kq = SparsePrefillTileRows(group);
  const int64_t slots = static_cast<int64_t>(std::max(num_seq_ids, 0)) * SparsePrefillTilesPerSeq(max_num_query, group);
  if (slots <= 0 || kq <= 0 || max_context <= 0) return 0;
  return HeaderBytes(slots) +
         static_cast<size_t>(slots) * (MarkBytes(BitmapWords(max_context)) + SlotBytes(std::max(max_union_blocks, 0), kq));
}

cudaError_t SparsePrefill(const SparsePrefillArgs& a, cudaStream_t stream) {
  if (a.num_seq_ids <= 0 || a.max_num_query <= 0) return cudaSuccess;
  if (!SparsePrefillSupports(a.d_head, GroupOf(a)) || a.n_kv_heads <= 0 || a.n_heads % a.n_kv_heads != 0 ||
      a.n_kv_heads > 65535 || a.num_seq_ids > 65535 || a.paged.block_size <= 0 || a.paged.max_blocks_per_seq <= 0 ||
      a.max_context <= 0 || a.max_context > kSparsePrefillMaxContext || a.sel_stride < 0 ||
      !(a.scale > 0.0f) || !std::isfinite(a.scale) || !(a.tile_key_cost >= 0.0f) ||
      !std::isfinite(a.tile_key_cost)) {
    return cudaErrorInvalidValue;
  }
  if (a.q == nullptr || a.k_cache == nullptr || a.v_cache == nullptr || a.out == nullptr || a.seq_ids == nullptr ||
      a.query_start == nullptr || a.num_query == nullptr || a.context_len == nullptr ||
      a.paged.block_tables == nullptr || a.sel == nullptr || a.sel_count == nullptr || a.row_skip == nullptr ||
      a.workspace == nullptr || !Aligned16(a.q) || !Aligned16(a.k_cache) || !Aligned16(a.v_cache) ||
      !Aligned16(a.workspace)) {
    return cudaErrorInvalidValue;
  }
  if (a.d_head == 128) return LaunchForGroup<128>(a, stream);
  return LaunchForGroup<64>(a, stream);
}

}  // namespace gsa::kernels
