// Dense causal prefill attention over the paged cache, two FlashAttention-style kernels with the
// same function and launch shape rules (DensePrefillArgs::kernel picks one):
//  - the mma.sync kernel: the sm_80+ tensor-core instructions (mma.sync m16n8k16 bf16 → fp32,
//    ldmatrix, cp.async), every supported head size, on Ampere and Hopper alike (sm_90a machine
//    code and compute_80 PTX);
//  - the warpgroup kernel (below, "wgk"): Hopper's wgmma with K/V tiles in 128-byte swizzled
//    shared memory, d_head 128, compute capability 9.0 only; 1.27-1.4x the mma.sync kernel's
//    throughput on gsa-1.7b shapes (README, dense prefill against SDPA).
//
// mma.sync kernel
//
// Work decomposition
//   grid = (n_heads, query tiles, listed sequences); one CTA computes kBlockM consecutive query
//   rows of one sequence for one query head. Query tiles are taken last-first (blockIdx.y is
//   reversed) so that the long causal tiles start first; all heads of a tile are adjacent in the
//   launch order, so the heads of a GQA group read the same K/V tiles at about the same time (L2).
//   Warp w owns the tile's rows [w·16·kMAtoms, (w+1)·16·kMAtoms): kMAtoms m16 "atoms" of 16 rows;
//   every B fragment (K or V) a warp loads from shared memory serves all its atoms.
//
// Per key tile of kBlockN keys (keys 0 … the tile's last position, in order), in sub-tiles of
// kSubN keys (32 at d_head 128: S's registers are what the 255-register budget cannot spare):
//   S = Q Kᵀ (mma, fp32), causal mask (compiled only into the step used for the tiles that reach
//   past the tile's first query position), online softmax in fp32: m = max(m, rowmax(S)·c),
//   P = exp2(S·c − m) with c = scale·log2(e) folded into one FFMA (so scale must be > 0), P rounded
//   to bf16 and fed straight from the S accumulators into the A operand of O += P V (mma); O, m and
//   the row sum l stay in fp32 registers (O is rescaled only where a row of the warp has a new max).
//   At the end O / l, the optional output gate, bf16 stores. No atomics, one fixed order: the
//   result is deterministic, and the same for every query tile height with the same kSubN.
//
// Shared memory: Q [kBlockM][D], K and V [2 stages][kBlockN][D], all bf16, each row padded to
//   D + 8 elements (a row stride of 16 bytes mod 128): the 8 row addresses of one ldmatrix 8×8
//   matrix then fall on 8 distinct 16-byte bank groups (conflict-free), and every 16-byte cp.async
//   destination stays 16-byte aligned.
//
// Paged cache: each thread copies fixed 16-byte chunks of its key rows; the slot of every key row
//   is looked up on its own (SlotOfPosition), so any block_size works (smaller or larger than the
//   key tile, shuffled block tables). Keys past the tile's last query position are never read (the
//   block table may not cover them): their shared-memory rows are zero-filled (cp.async with
//   src-size 0) and masked. Query rows past the sequence's num_query are zero-filled, computed
//   and not stored.
//
// Pipeline (cp.async groups, per thread; wait_group N = all but the newest N groups are complete):
//   prologue: {Q, K0} commit, {V0} commit
//   iteration it (buffer b = it & 1):
//     wait_group 1 → K[it] (and Q) landed;  __syncthreads (B1)  groups: … V[it]
//     issue K[it+1], V[it+1] into buffers b^1 (if any), one commit each
//     per sub-tile: S = Q K[it]ᵀ, softmax; before the first P V: wait_group 2 → V[it] landed,
//     __syncthreads (B2); O += P V[it]
//   Empty commits keep the counts fixed at the tail. Buffer reuse: buffers b^1 were last read by
//   iteration it-1, which every thread finished before B1 of it.
//
// Fragment layouts and the shared step pieces (S = Q Kᵀ, online softmax, P V): kernels/flash_mma.cuh.
#include "kernels/dense_prefill.h"

#include <cstdint>
#include <type_traits>

#include "kernels/device_caps.h"
#include "kernels/flash_mma.cuh"
#include "kernels/wgmma.cuh"

namespace gsa::kernels {
namespace {

using flash::CpAsync16;
using flash::CpAsyncCommit;
using flash::CpAsyncWait;
using flash::kLog2e;
using flash::LdMatrixX4;
using flash::SmemAddr;

// Both kernels' pieces outside the key loop.

// Copies the tile's kRows query rows of head h (rows row0 …; rows ≥ rows_valid zero-filled) into
// sQ, row stride kStride elements: thread tid copies 16-byte chunk tid % (D / 8) of rows
// tid / (D / 8) + i · kThreads / (D / 8). Issued, not committed.
template <int kRows, int kThreads, int D, int kStride>
__device__ __forceinline__ void CopyQTile(const DensePrefillArgs& a, bf16* sQ, int64_t row0, int h, int rows_valid) {
  constexpr int kChunks = D / 8;
  constexpr int kRowStep = kThreads / kChunks;
  static_assert(kThreads % kChunks == 0 && kRows % kRowStep == 0, "whole copy rounds");
  const int cc = static_cast<int>(threadIdx.x) % kChunks;
  const int cr = static_cast<int>(threadIdx.x) / kChunks;
  const int64_t q_row_stride = static_cast<int64_t>(a.n_heads) * D;
#pragma unroll
  for (int i = 0; i < kRows / kRowStep; ++i) {
    const int r = cr + i * kRowStep;
    const bool valid = r < rows_valid;
    const bf16* src = valid ? a.q + (row0 + r) * q_row_stride + static_cast<int64_t>(h) * D + cc * 8 : a.q;
    CpAsync16(SmemAddr(sQ + r * kStride + cc * 8), src, valid);
  }
}

// Stores tile row r (row g + 8·hf of an m16 atom whose O accumulators are acc_o) of head h: O / l
// with l the quad's row sum (0 for a row that attended to nothing), times the output gate. Every
// lane of the quad must call it (the row-sum shuffles); rows ≥ rows_valid are not stored.
template <int D>
__device__ __forceinline__ void StoreTileRow(const DensePrefillArgs& a, const float (&acc_o)[D / 8][4], int hf,
                                             float row_sum_part, int64_t row0, int r, int rows_valid, int h, int t) {
  const float l = flash::QuadRowSum(row_sum_part);
  if (r >= rows_valid) return;
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;  // l ≥ 1 for every real row
  const int64_t row = row0 + r;
  const bool gated = a.gate_z != nullptr;
  bf16* const out = a.out + row * static_cast<int64_t>(a.n_heads) * D + static_cast<int64_t>(h) * D;
  const float* const gz = gated ? a.gate_z + row * a.gate_stride + static_cast<int64_t>(h) * D : nullptr;
  const float* const gb = (gated && a.gate_bias != nullptr) ? a.gate_bias + static_cast<int64_t>(h) * D : nullptr;
  flash::StoreRow<D / 8>(acc_o, hf, inv, t, out, gated, gz, gb, a.gate_act);
}

// Launches `kernel` over (heads, query tiles of kBlockM rows, listed sequences) with `smem` bytes
// of dynamic shared memory.
template <int kBlockM>
cudaError_t LaunchTiles(void (*kernel)(DensePrefillArgs), int threads, size_t smem, const DensePrefillArgs& a,
                        cudaStream_t stream) {
  const int64_t m_tiles = (static_cast<int64_t>(a.max_num_query) + kBlockM - 1) / kBlockM;
  if (m_tiles > 65535 || a.num_seq_ids > 65535) return cudaErrorInvalidValue;
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(a.n_heads), static_cast<unsigned>(m_tiles),
                  static_cast<unsigned>(a.num_seq_ids));
  kernel<<<grid, threads, smem, stream>>>(a);
  return cudaGetLastError();
}

template <int D_, int kWarps_, int kMAtoms_, int kBlockN_, int kSubN_ = kBlockN_>
struct Cfg {
  static constexpr int D = D_;
  static constexpr int kWarps = kWarps_;
  static constexpr int kMAtoms = kMAtoms_;  // 16-row m atoms per warp
  static constexpr int kBlockN = kBlockN_;  // keys per tile (copied and waited for together)
  static constexpr int kSubN = kSubN_;      // keys per score sub-tile (S's registers: kMAtoms · kSubN / 2)
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBlockM = kWarps * 16 * kMAtoms;  // query rows per CTA
  static constexpr int kStride = D + 8;                  // shared row stride in elements (padding)
  static constexpr int kChunks = D / 8;                  // 16-byte chunks per row
  static constexpr int kRowStep = kThreads / kChunks;    // rows between one thread's chunks
  static constexpr int kKvRowsPerThread = kBlockN / kRowStep;
  // Q fragments live in registers for one m atom per warp (D/16 × 4 registers); with more atoms
  // they are re-read from shared memory per key tile to keep the register count down.
  static constexpr bool kQInRegs = kMAtoms == 1;
  static constexpr int kSmemQ = kBlockM * kStride;  // elements
  static constexpr int kSmemKv = kBlockN * kStride;  // elements, one stage of K or of V
  static constexpr size_t kSmemBytes = sizeof(bf16) * (static_cast<size_t>(kSmemQ) + 4 * kSmemKv);

  static_assert(D % 16 == 0 && kSubN % 16 == 0 && kBlockN % kSubN == 0, "mma tiles");
  static_assert(kThreads % kChunks == 0, "a thread copies a fixed chunk column");
  static_assert(kBlockN % kRowStep == 0, "whole copy rounds");
  static_assert((kStride * sizeof(bf16)) % 16 == 0, "16-byte aligned shared rows");
  static_assert((kStride * sizeof(bf16)) % 128 == 16, "conflict-free ldmatrix rows");
};

template <class C>
__global__ void __launch_bounds__(C::kThreads) DensePrefillKernel(const DensePrefillArgs a) {
  constexpr int D = C::D;
  constexpr int kBlockM = C::kBlockM;
  constexpr int kBlockN = C::kBlockN;
  constexpr int kMAtoms = C::kMAtoms;
  constexpr int kStride = C::kStride;
  constexpr int kSubN = C::kSubN;         // keys per S = Q Kᵀ, softmax and P V
  constexpr int kSubs = kBlockN / kSubN;  // sub-tiles per key tile
  constexpr int kNTiles = kSubN / 8;      // key n-tiles of S
  constexpr int kDTiles = D / 8;          // d n-tiles of O
  constexpr int kKSteps = D / 16;         // k steps of S = Q Kᵀ
  constexpr int kPSteps = kSubN / 16;     // k steps of O = P V

  const int h = blockIdx.x;
  const int m_block = static_cast<int>(gridDim.y) - 1 - static_cast<int>(blockIdx.y);
  const int32_t seq = a.seq_ids[blockIdx.z];
  const int32_t nq = a.num_query[seq];
  const int m0 = m_block * kBlockM;
  if (m0 >= nq) return;  // whole CTA: no barrier has been reached yet

  const int64_t row0 = static_cast<int64_t>(a.query_start[seq]) + m0;  // absolute row of tile row 0
  const int32_t ctx = a.context_len[seq];
  const int32_t pos0 = ctx - nq + m0;                // position of tile row 0
  const int rows_valid = min(kBlockM, nq - m0);      // tile rows that are real queries
  const int32_t pos_last = pos0 + rows_valid - 1;    // the last key any real row attends to
  const int n_tiles = pos_last / kBlockN + 1;
  const int kvh = h / (a.n_heads / a.n_kv_heads);
  const float scale_log2 = a.scale * kLog2e;  // > 0 (checked by the launcher)

  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* const sQ = reinterpret_cast<bf16*>(smem_raw);
  bf16* const sK = sQ + C::kSmemQ;         // [2][kBlockN][kStride]
  bf16* const sV = sK + 2 * C::kSmemKv;    // [2][kBlockN][kStride]

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int g = lane >> 2;
  const int t = lane & 3;

  // ---- copies: thread tid copies chunk column cc of rows cr, cr + kRowStep, …
  const int cc = tid % C::kChunks;
  const int cr = tid / C::kChunks;
  const int64_t kv_slot_stride = static_cast<int64_t>(a.n_kv_heads) * D;
  const bf16* const k_base = a.k_cache + static_cast<int64_t>(kvh) * D + cc * 8;
  const bf16* const v_base = a.v_cache + static_cast<int64_t>(kvh) * D + cc * 8;

  CopyQTile<kBlockM, C::kThreads, D, kStride>(a, sQ, row0, h, rows_valid);

  // Key rows of tile `tile` into `stage`; each row's slot is looked up where it is used (kept
  // between the K and V copies, the slots cost registers this kernel does not have).
  auto issue_kv = [&](int tile, const bf16* base, bf16* stage) {
#pragma unroll
    for (int i = 0; i < C::kKvRowsPerThread; ++i) {
      const int r = cr + i * C::kRowStep;
      const int32_t s = tile * kBlockN + r;
      const bool valid = s <= pos_last;
      const bf16* src =
          valid ? base + static_cast<int64_t>(SlotOfPosition(a.paged, seq, s)) * kv_slot_stride : base;
      CpAsync16(SmemAddr(stage + r * kStride + cc * 8), src, valid);
    }
  };

  issue_kv(0, k_base, sK);
  CpAsyncCommit();  // {Q, K0}
  issue_kv(0, v_base, sV);
  CpAsyncCommit();  // {V0}

  // ---- per-warp state
  const int wrow0 = warp * 16 * kMAtoms;  // the warp's first tile row
  float acc_o[kMAtoms][kDTiles][4];
  float row_max[kMAtoms][2];  // running max of row g / g+8 of each atom, in the log2 domain
  float row_sum[kMAtoms][2];  // this thread's part of the running sum (quad-reduced at the end)
#pragma unroll
  for (int mi = 0; mi < kMAtoms; ++mi) {
#pragma unroll
    for (int j = 0; j < kDTiles; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_o[mi][j][e] = 0.0f;
    }
    row_max[mi][0] = row_max[mi][1] = -INFINITY;
    row_sum[mi][0] = row_sum[mi][1] = 0.0f;
  }
  uint32_t q_frag[C::kQInRegs ? kKSteps : 1][4];  // used only when kQInRegs (then kMAtoms == 1)

  const uint32_t sQ_warp = SmemAddr(sQ + wrow0 * kStride + flash::QLaneOffset<kStride>(lane));
  const int k_lane_off = flash::KLaneOffset<kStride>(lane);
  const int v_lane_off = flash::VLaneOffset<kStride>(lane);

  // One key tile; kMask: the tile reaches past the tile's first query position (causal mask).
  auto step = [&](const int it, auto mask_tag) {
    constexpr bool kMask = decltype(mask_tag)::value;
    const int buf = it & 1;
    CpAsyncWait<1>();
    __syncthreads();  // B1: K[it] (and Q) visible; every thread is past all of it-1 (buffers b^1 free)
    if (it + 1 < n_tiles) issue_kv(it + 1, k_base, sK + (buf ^ 1) * C::kSmemKv);
    CpAsyncCommit();
    if (it + 1 < n_tiles) issue_kv(it + 1, v_base, sV + (buf ^ 1) * C::kSmemKv);
    CpAsyncCommit();

    if constexpr (C::kQInRegs) {
      if (it == 0) {
#pragma unroll
        for (int kk = 0; kk < kKSteps; ++kk) LdMatrixX4(q_frag[kk], sQ_warp + kk * 16 * sizeof(bf16));
      }
    }

#pragma unroll 1
    for (int sub = 0; sub < kSubs; ++sub) {
      // ---- S = Q Kᵀ of keys n0 … n0 + kSubN - 1 (raw scores; the scale is folded into the exponent)
      const int key0 = sub * kSubN;  // first key of the sub-tile within the tile
      float acc_s[kMAtoms][kNTiles][4];
      flash::QkScores<kMAtoms, kNTiles, kKSteps, kStride, C::kQInRegs>(
          acc_s, q_frag, sQ_warp, SmemAddr(sK + buf * C::kSmemKv + key0 * kStride + k_lane_off));

      // ---- causal mask (key n0 + 8j + 2t + e against the row's position), online softmax
      const int32_t n0 = it * kBlockN + key0;
      uint32_t p_frag[kMAtoms][kPSteps][4];
      auto causal = [&](int mi, int hf, int j, int e) {
        if constexpr (kMask) {
          const int32_t limit = pos0 + wrow0 + mi * 16 + g + hf * 8 - n0 - 2 * t;
          return j * 8 + e <= limit;
        } else {
          return true;
        }
      };
      flash::SoftmaxStep<kMAtoms, kNTiles, kDTiles>(acc_s, row_max, row_sum, acc_o, scale_log2, causal, p_frag);

      if (sub == 0) {
        CpAsyncWait<2>();
        __syncthreads();  // B2: V[it] visible
      }

      // ---- O += P V
      flash::PvAccumulate<kMAtoms, kPSteps, kDTiles, kStride>(
          acc_o, p_frag, SmemAddr(sV + buf * C::kSmemKv + key0 * kStride + v_lane_off));
    }
  };

  // Tiles whose every key is ≤ pos0 need no mask: keys n0 … n0 + kBlockN - 1 ≤ pos0.
  const int n_unmasked = min(n_tiles, (pos0 + 1) / kBlockN);
  for (int it = 0; it < n_unmasked; ++it) step(it, std::false_type{});
  for (int it = n_unmasked; it < n_tiles; ++it) step(it, std::true_type{});

  // ---- epilogue: O / l, output gate, bf16 stores (row g / g+8, channels 8j + 2t, 8j + 2t + 1)
#pragma unroll
  for (int mi = 0; mi < kMAtoms; ++mi) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      StoreTileRow<D>(a, acc_o[mi], hf, row_sum[mi][hf], row0, wrow0 + mi * 16 + g + hf * 8, rows_valid, h, t);
    }
  }
}

template <class C>
cudaError_t Launch(const DensePrefillArgs& a, cudaStream_t stream) {
  return LaunchTiles<C::kBlockM>(DensePrefillKernel<C>, C::kThreads, C::kSmemBytes, a, stream);
}

// ---- The warpgroup kernel (Hopper wgmma), d_head 128 -------------------------------------------
//
// A CTA = 2 warpgroups (256 threads) and 128 consecutive query rows of one head (the grid and the
// tile order as the mma.sync kernel's); warpgroup wg owns rows [64·wg, 64·wg + 64), its warp w rows
// 16w … 16w + 15 of those (the mma.sync A layout, which is wgmma's register-A layout). Per key tile
// of 128 keys, every warpgroup computes
//   S[64 × 128] = Q Kᵀ   8 × wgmma m64n128k16, A = Q from registers (loaded once), B = the K tile
//                        from shared memory, K-major;
//   the same mask and online softmax as the mma.sync kernel (flash::SoftmaxExp/RescaleAndPack,
//   the S accumulators of a warp being one m16 atom's 16 key n-tiles);
//   O[64 × 128] += P V   8 × wgmma m64n128k16, A = P from registers (the S accumulators rounded to
//                        bf16: the accumulator layout of keys 16k … 16k + 15 is the A layout of k
//                        step k), B = the V tile from shared memory, N-major (imm-trans-b).
// K and V tiles share one shared-memory layout: two 64-channel halves, each 128 key rows of 128
//   bytes in 128-byte swizzle atoms of 8 rows: byte (key r, chunk c of 8 channels) =
//   (c / 8)·16384 + r·128 + ((c % 8) ^ (r % 8))·16. K (N = keys, k = channels; K-major): sbo 1024
//   between atoms, a k step is 32 bytes within a row, the second half 16384 on. V (k = keys, N =
//   channels; N-major): lbo 16384 between the halves, sbo 1024 between atoms, a k step is 2 atoms.
//   A warp's copy instruction moves 4 keys × 128 contiguous bytes (one half) of the cache into 4
//   whole 128-byte lines of shared memory. (A no-swizzle layout of 8 × 16-byte core matrices
//   needed 8 keys × 64 bytes per instruction: twice the shared-memory wavefronts, and the cp.async
//   issue, not the tensor cores, bound the kernel: 8.9 ms for the 128K chunk against 6.5.)
// Pipeline, 3 stages of K/V: tiles it+1 and it+2 are on their way while tile it is used. At the top
//   of iteration it (P of it in registers), tile it+1 has landed (wait_group 0, fence.proxy.async
//   so that wgmma sees the copies, barrier: every thread also finished P V of it-1, whose stage
//   tile it+2 reuses); S of it+1 and P V of it are issued together, then the copies of tile it+2
//   (their block-table entries were loaded a tile earlier), then both wgmma groups are waited for
//   and the softmax of it+1 runs; the second warpgroup runs that softmax half an iteration later,
//   at the top of the next iteration before its own products, so that one warpgroup's softmax can
//   overlap the other's products (128K chunk 6.50 → 6.37 ms; the whole prompt unchanged).
//   (Running the softmax while the same warpgroup's P V still runs, FlashAttention-3's
//   intra-warpgroup overlap, writes the S accumulators between a wgmma's start and end: ptxas then
//   serializes every wgmma (C7515) and it measured slower.)
namespace wgk {

constexpr int kD = 128;
constexpr int kWgs = 2;
constexpr int kThreads = 128 * kWgs;
constexpr int kBlockM = 64 * kWgs;  // query rows per CTA
constexpr int kBlockN = 128;        // keys per tile
constexpr int kQStride = kD + 8;    // padded Q rows (conflict-free ldmatrix)
constexpr uint32_t kRowBytes = 128;                            // 64 channels of one key
constexpr uint32_t kAtomBytes = 8 * kRowBytes;                 // 8 keys: one swizzle atom
constexpr uint32_t kHalfBytes = kBlockN * kRowBytes;           // one 64-channel half of a tile
constexpr uint32_t kTileBytes = 2 * kHalfBytes;                // 32 KiB
constexpr size_t kSmemQ = static_cast<size_t>(kBlockM) * kQStride * sizeof(bf16);
constexpr int kStages = 3;  // K/V tiles in shared memory: the one in use, the next, the one after
constexpr size_t kSmemBytes = kSmemQ + 2 * kStages * kTileBytes;  // Q, K and V × 3 stages
static_assert(kSmemQ % kAtomBytes == 0 && kTileBytes % kAtomBytes == 0, "swizzle atoms 1024-byte aligned");

}  // namespace wgk

__global__ void __launch_bounds__(wgk::kThreads) DensePrefillWgmmaKernel(const DensePrefillArgs a) {
#ifdef GSA_WGMMA_AVAILABLE
  using namespace wgk;
  constexpr int kKSteps = kD / 16;        // k steps of S = Q Kᵀ
  constexpr int kPSteps = kBlockN / 16;   // k steps of O = P V
  constexpr int kNTiles = kBlockN / 8;    // key n-tiles of S
  constexpr int kDTiles = kD / 8;         // channel n-tiles of O

  const int h = blockIdx.x;
  const int m_block = static_cast<int>(gridDim.y) - 1 - static_cast<int>(blockIdx.y);
  const int32_t seq = a.seq_ids[blockIdx.z];
  const int32_t nq = a.num_query[seq];
  const int m0 = m_block * kBlockM;
  if (m0 >= nq) return;  // whole CTA

  const int64_t row0 = static_cast<int64_t>(a.query_start[seq]) + m0;
  const int32_t ctx = a.context_len[seq];
  const int32_t pos0 = ctx - nq + m0;
  const int rows_valid = min(kBlockM, nq - m0);
  const int32_t pos_last = pos0 + rows_valid - 1;
  const int n_tiles = pos_last / kBlockN + 1;
  const int kvh = h / (a.n_heads / a.n_kv_heads);
  const float scale_log2 = a.scale * kLog2e;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* const sQ = reinterpret_cast<bf16*>(smem_raw);
  unsigned char* const sK = smem_raw + kSmemQ;  // [kStages][kTileBytes]
  unsigned char* const sV = sK + kStages * kTileBytes;

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int wg = warp >> 2;
  const int wrow0 = wg * 64 + (warp & 3) * 16;  // the warp's first tile row

  CopyQTile<kBlockM, kThreads, kD, kQStride>(a, sQ, row0, h, rows_valid);  // padded rows

  // ---- K/V copies: instruction j of warp w moves keys 4q … 4q + 3, q = 8 (j % 4) + w, channel
  // half j / 4: 128 contiguous bytes of each key row from the cache, 4 whole 128-byte lines of
  // shared memory. A thread's key rows (the same for K and V and both halves) are
  // 32 jj + 4w + lane / 8, jj < 4; its chunk within the half is lane % 8.
  const int64_t kv_slot_stride = static_cast<int64_t>(a.n_kv_heads) * kD;
  const bf16* const k_base = a.k_cache + static_cast<int64_t>(kvh) * kD;
  const bf16* const v_base = a.v_cache + static_cast<int64_t>(kvh) * kD;
  const int key_lo = 4 * warp + (lane >> 3);  // the thread's first key row within a tile
  const int chunk = lane & 7;
  // Block-table entries of the thread's key rows of a tile (-1: past pos_last), loaded a tile
  // ahead of the copies that use them, so that their L2 round trip is not waited for.
  int32_t blocks[4];
  auto load_blocks = [&](int tile) {
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {
      const int32_t s = tile * kBlockN + key_lo + 32 * jj;
      blocks[jj] = s <= pos_last ? BlockOfPosition(a.paged, seq, s) : -1;
    }
  };
  // Tile `tile`'s keys and values into stage tile % kStages, one commit group; `blocks` must hold
  // the tile's entries. Then loads the next tile's entries.
  auto issue_tile = [&](int tile) {
    const uint32_t off = static_cast<uint32_t>(tile % kStages) * kTileBytes;
    int32_t slots[4];
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {
      slots[jj] = blocks[jj] >= 0 ? SlotInBlock(a.paged, blocks[jj], tile * kBlockN + key_lo + 32 * jj) : -1;
    }
#pragma unroll
    for (int kv = 0; kv < 2; ++kv) {
      const bf16* const base = kv == 0 ? k_base : v_base;
      unsigned char* const stage = (kv == 0 ? sK : sV) + off;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) {
          const int r = key_lo + 32 * jj;
          const bool valid = slots[jj] >= 0;
          const bf16* src =
              valid ? base + static_cast<int64_t>(slots[jj]) * kv_slot_stride + (half * 8 + chunk) * 8 : base;
          CpAsync16(SmemAddr(stage + half * kHalfBytes + r * kRowBytes + ((chunk ^ (r & 7)) << 4)), src, valid);
        }
      }
    }
    CpAsyncCommit();
    if (tile + 1 < n_tiles) load_blocks(tile + 1);
  };
  load_blocks(0);
  issue_tile(0);  // with Q: one group
  if (n_tiles > 1) issue_tile(1);

  float acc_o[1][kDTiles][4];
  float row_max[1][2] = {{-INFINITY, -INFINITY}};
  float row_sum[1][2] = {{0.0f, 0.0f}};
#pragma unroll
  for (int j = 0; j < kDTiles; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) acc_o[0][j][e] = 0.0f;
  }
  float(&o_flat)[64] = reinterpret_cast<float(&)[64]>(acc_o);
  float acc_s[1][kNTiles][4];
  float(&s_flat)[64] = reinterpret_cast<float(&)[64]>(acc_s);
  uint32_t p_frag[1][kPSteps][4];
  float alpha[1][2];
  uint32_t q_frag[kKSteps][4];
  const uint32_t sQ_warp = SmemAddr(sQ + wrow0 * kQStride + flash::QLaneOffset<kQStride>(lane));
  const int n_unmasked = min(n_tiles, (pos0 + 1) / kBlockN);  // tiles whose keys are all ≤ pos0

  // S = Q K[tile]ᵀ, issued (not waited for).
  auto issue_scores = [&](int tile) {
    const uint64_t k_desc =
        wgmma::Descriptor(sK + (tile % kStages) * kTileBytes, 16, kAtomBytes, wgmma::Swizzle::k128B);
    wgmma::FenceOperands(s_flat);
    wgmma::WgmmaFence();
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {  // k step kk: channels 16kk … 16kk + 15 (half kk / 4)
      const uint32_t step_off = (kk / 4) * kHalfBytes + (kk % 4) * 32;
      wgmma::MmaM64N128K16(s_flat, q_frag[kk][0], q_frag[kk][1], q_frag[kk][2], q_frag[kk][3],
                           k_desc + (step_off >> 4), /*accumulate=*/kk > 0);
    }
    wgmma::WgmmaCommit();
  };
  // O += P V[tile], issued (not waited for).
  auto issue_pv = [&](int tile) {
    const uint64_t v_desc =
        wgmma::Descriptor(sV + (tile % kStages) * kTileBytes, kHalfBytes, kAtomBytes, wgmma::Swizzle::k128B);
    wgmma::FenceOperands(o_flat);
    wgmma::WgmmaFence();
#pragma unroll
    for (int kk = 0; kk < kPSteps; ++kk) {  // k step kk: keys 16kk … 16kk + 15, atoms 2kk and 2kk + 1
      wgmma::MmaM64N128K16<true>(o_flat, p_frag[0][kk][0], p_frag[0][kk][1], p_frag[0][kk][2], p_frag[0][kk][3],
                                 v_desc + ((2 * kk * kAtomBytes) >> 4));
    }
    wgmma::WgmmaCommit();
  };
  // The softmax of tile `tile`'s scores (its S group complete): probabilities in acc_s, alpha.
  auto softmax = [&](int tile) {
    const int32_t n0 = tile * kBlockN;
    if (tile < n_unmasked) {
      flash::SoftmaxExp<1, kNTiles>(acc_s, row_max, row_sum, scale_log2, [](int, int, int, int) { return true; },
                                    alpha);
    } else {  // causal mask: key n0 + 8j + 2t + e against the row's position
      flash::SoftmaxExp<1, kNTiles>(
          acc_s, row_max, row_sum, scale_log2,
          [&](int, int hf, int j, int e) { return j * 8 + e <= pos0 + wrow0 + g + hf * 8 - n0 - 2 * t; }, alpha);
    }
  };

  CpAsyncWait<0>();
  wgmma::FenceProxyAsyncShared();
  __syncthreads();  // Q and tiles 0 (and 1) visible to every thread and to wgmma
#pragma unroll
  for (int kk = 0; kk < kKSteps; ++kk) LdMatrixX4(q_frag[kk], sQ_warp + kk * 16 * sizeof(bf16));
  // The two warpgroups run half an iteration apart: the leading one (wg 0) runs a tile's softmax
  // right after its products, the trailing one (wg 1) at the top of the next iteration, before
  // its own products. So while one warpgroup's softmax runs on the FP32 pipe and the SFU, the
  // other's products keep the tensor cores busy (in step, both softmaxes ran while the tensor
  // cores idled).
  const bool lead = wg == 0;
  issue_scores(0);
  wgmma::WgmmaWait<0>();
  wgmma::FenceOperands(s_flat);
  if (lead) {
    softmax(0);
    flash::RescaleAndPack<1, kNTiles, kDTiles>(acc_s, alpha, acc_o, p_frag);
  }

  // Iteration it: the scores of tile it are done (lead: already P(it) in p_frag); tile it+1 is in
  // shared memory or on its way. The scores of it+1 and P V of it run on the tensor cores together
  // while the copies of tile it+2 are issued; both are waited for before the lead's softmax (a
  // softmax on the S accumulators while P V still runs makes ptxas serialize every wgmma: C7515).
  for (int it = 0; it < n_tiles; ++it) {
    const bool next = it + 1 < n_tiles;
    if (next) {
      CpAsyncWait<0>();
      wgmma::FenceProxyAsyncShared();
      __syncthreads();  // tile it+1 visible; every thread is past P V of it-1 (stage of it+2 free)
    }
    if (!lead) {  // the trailing warpgroup's softmax of tile it (its P V of it-1 is complete)
      softmax(it);
      flash::RescaleAndPack<1, kNTiles, kDTiles>(acc_s, alpha, acc_o, p_frag);
    }
    if (next) issue_scores(it + 1);
    issue_pv(it);
    if (it + 2 < n_tiles) issue_tile(it + 2);
    wgmma::WgmmaWait<0>();
    wgmma::FenceOperands(o_flat);
    wgmma::FenceOperands(s_flat);
    if (lead && next) {
      softmax(it + 1);
      flash::RescaleAndPack<1, kNTiles, kDTiles>(acc_s, alpha, acc_o, p_frag);
    }
  }

  // ---- epilogue
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    StoreTileRow<kD>(a, acc_o[0], hf, row_sum[0][hf], row0, wrow0 + g + hf * 8, rows_valid, h, t);
  }
#endif
}

cudaError_t LaunchWgmma(const DensePrefillArgs& a, cudaStream_t stream) {
  return LaunchTiles<wgk::kBlockM>(DensePrefillWgmmaKernel, wgk::kThreads, wgk::kSmemBytes, a, stream);
}

// The configurations in use, measured on an H200 (16 query / 8 KV heads, one sequence, causal,
// TFLOP/s at 16K / 128K tokens; PyTorch SDPA flash: 323 / 331 at d 128, 277 / 296 at d 64):
//   256 rows: 8 warps × 32 rows, 64 keys          d 128: 264 / 278   d 64: 252 / 261
//   128 rows: 4 warps × 32 rows, 32 (d 128) or 64 keys   248 / 254         232 / 239
//    64 rows: 4 warps × 16 rows, 64 keys                 172 / 176         179 / 182
// Bigger tiles share each K/V tile among more rows; smaller ones make more CTAs for chunks too
// short to fill the GPU. The launcher takes the biggest tile that still gives 3/4 of the SMs a CTA.
template <int D>
using Cfg256 = Cfg<D, 8, 2, 64, (D == 128 ? 32 : 64)>;
template <int D>
using Cfg128 = Cfg<D, 4, 2, (D == 128 ? 32 : 64)>;  // d 128 with 64-key tiles: 34% slower (H200)
template <int D>
using Cfg64 = Cfg<D, 4, 1, 64>;

template <int D>
cudaError_t LaunchForHead(const DensePrefillArgs& a, cudaStream_t stream) {
  int32_t tile = a.query_tile;
  if (tile == 0) {
    int device = 0, sms = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (err != cudaSuccess) return err;
    auto ctas = [&](int64_t rows) {
      return (static_cast<int64_t>(a.max_num_query) + rows - 1) / rows * a.n_heads * a.num_seq_ids;
    };
    // A bigger tile is worth one wave that leaves up to a quarter of the SMs idle (measured: 2048
    // queries after 30000 keys, 16 heads: 128 CTAs of 256 rows beat 256 CTAs of 128 rows).
    auto fills = [&](int64_t rows) { return 4 * ctas(rows) >= 3 * static_cast<int64_t>(sms); };
    tile = fills(256) ? 256 : fills(128) ? 128 : 64;
  }
  switch (tile) {
    case 256: return Launch<Cfg256<D>>(a, stream);
    case 128: return Launch<Cfg128<D>>(a, stream);
    case 64: return Launch<Cfg64<D>>(a, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

bool DensePrefillSupports(int32_t d_head) { return d_head == 64 || d_head == 128; }

cudaError_t DensePrefill(const DensePrefillArgs& a, cudaStream_t stream) {
  if (a.num_seq_ids <= 0 || a.max_num_query <= 0) return cudaSuccess;
  if (!DensePrefillSupports(a.d_head) || a.n_heads <= 0 || a.n_kv_heads <= 0 || a.n_heads % a.n_kv_heads != 0 ||
      a.paged.block_size <= 0 || a.q == nullptr || a.k_cache == nullptr || a.v_cache == nullptr ||
      a.out == nullptr || a.seq_ids == nullptr || a.query_start == nullptr || a.num_query == nullptr ||
      a.context_len == nullptr || a.paged.block_tables == nullptr || !(a.scale > 0.0f)) {
    return cudaErrorInvalidValue;
  }
  if (a.kernel == DensePrefillArgs::Kernel::kWarpgroup && a.query_tile != 0) return cudaErrorInvalidValue;
  if (a.kernel != DensePrefillArgs::Kernel::kMmaSync && a.query_tile == 0) {
    bool supported = false;
    const cudaError_t err = OnCurrentDevice(WgmmaSupported, &supported);
    if (err != cudaSuccess) return err;
    supported = supported && a.d_head == wgk::kD;
    if (supported) return LaunchWgmma(a, stream);
    if (a.kernel == DensePrefillArgs::Kernel::kWarpgroup) return cudaErrorNotSupported;
  }
  if (a.d_head == 128) return LaunchForHead<128>(a, stream);
  return LaunchForHead<64>(a, stream);
}

}  // namespace gsa::kernels
