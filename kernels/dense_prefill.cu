// Dense causal prefill attention over the paged cache: a FlashAttention-2 style kernel on the
// sm_80+ tensor-core instructions (mma.sync m16n8k16 bf16 → fp32, ldmatrix, cp.async), so the
// same source runs on Ampere and Hopper (sm_90a machine code and compute_80 PTX).
//
// Work decomposition
//   grid = (n_heads, query tiles, listed sequences); one CTA computes kBlockM consecutive query
//   rows of one sequence for one query head. Query tiles are taken last-first (blockIdx.y is
//   reversed) so that the long causal tiles start first; all heads of a tile are adjacent in the
//   launch order, so the heads of a GQA group read the same K/V tiles at about the same time (L2).
//   Warp w owns the tile's rows [w·16·kMAtoms, (w+1)·16·kMAtoms): kMAtoms m16 "atoms" of 16 rows;
//   every B fragment (K or V) a warp loads from shared memory serves all its atoms.
//
// Per key tile of kBlockN keys (keys 0 … the tile's last position, in order):
//   S = Q Kᵀ (mma, fp32), causal mask (compiled only into the step used for the tiles that reach
//   past the tile's first query position), online softmax in fp32: m = max(m, rowmax(S)·c),
//   P = exp2(S·c − m) with c = scale·log2(e) folded into one FFMA (so scale must be > 0), P rounded
//   to bf16 and fed straight from the S accumulators into the A operand of O += P V (mma); O, m and
//   the row sum l stay in fp32 registers. At the end O / l, the optional output gate, bf16 stores.
//   No atomics, one fixed order: the result is deterministic, and the same for every query tile
//   height with the same kBlockN.
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
//     issue K[it+1] into K buffer b^1 (if any); commit        groups: … K[it] V[it] K[it+1]
//     wait_group 2 → K[it] (and Q) landed;  __syncthreads (B1)
//     issue V[it+1] into V buffer b^1 (if any); commit        groups: … V[it] K[it+1] V[it+1]
//     S = Q K[it]ᵀ, softmax
//     wait_group 2 → V[it] landed;  __syncthreads (B2)
//     O += P V[it]
//   Empty commits keep the counts fixed at the tail. Buffer reuse: K buffer b^1 was last read by
//   S of iteration it-1, which every thread finished before B2 of it-1; V buffer b^1 was last read
//   by PV of it-1, which every thread finished before B1 of it.
//
// Fragment layouts and the shared step pieces (S = Q Kᵀ, online softmax, P V): kernels/flash_mma.cuh.
#include "kernels/dense_prefill.h"

#include <cstdint>
#include <type_traits>

#include "kernels/flash_mma.cuh"

namespace gsa::kernels {
namespace {

using flash::CpAsync16;
using flash::CpAsyncCommit;
using flash::CpAsyncWait;
using flash::kLog2e;
using flash::LdMatrixX4;
using flash::SmemAddr;

template <int D_, int kWarps_, int kMAtoms_, int kBlockN_>
struct Cfg {
  static constexpr int D = D_;
  static constexpr int kWarps = kWarps_;
  static constexpr int kMAtoms = kMAtoms_;  // 16-row m atoms per warp
  static constexpr int kBlockN = kBlockN_;  // keys per tile
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBlockM = kWarps * 16 * kMAtoms;  // query rows per CTA
  static constexpr int kStride = D + 8;                  // shared row stride in elements (padding)
  static constexpr int kChunks = D / 8;                  // 16-byte chunks per row
  static constexpr int kRowStep = kThreads / kChunks;    // rows between one thread's chunks
  static constexpr int kQRowsPerThread = kBlockM / kRowStep;
  static constexpr int kKvRowsPerThread = kBlockN / kRowStep;
  // Q fragments live in registers for one m atom per warp (D/16 × 4 registers); with more atoms
  // they are re-read from shared memory per key tile to keep the register count down.
  static constexpr bool kQInRegs = kMAtoms == 1;
  static constexpr int kSmemQ = kBlockM * kStride;  // elements
  static constexpr int kSmemKv = kBlockN * kStride;  // elements, one stage of K or of V
  static constexpr size_t kSmemBytes = sizeof(bf16) * (static_cast<size_t>(kSmemQ) + 4 * kSmemKv);

  static_assert(D % 16 == 0 && kBlockN % 16 == 0, "mma tiles");
  static_assert(kThreads % kChunks == 0, "a thread copies a fixed chunk column");
  static_assert(kBlockM % kRowStep == 0 && kBlockN % kRowStep == 0, "whole copy rounds");
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
  constexpr int kNTiles = kBlockN / 8;   // key n-tiles of S
  constexpr int kDTiles = D / 8;         // d n-tiles of O
  constexpr int kKSteps = D / 16;        // k steps of S = Q Kᵀ
  constexpr int kPSteps = kBlockN / 16;  // k steps of O = P V

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
  const int64_t q_row_stride = static_cast<int64_t>(a.n_heads) * D;
  const int64_t kv_slot_stride = static_cast<int64_t>(a.n_kv_heads) * D;
  const bf16* const k_base = a.k_cache + static_cast<int64_t>(kvh) * D + cc * 8;
  const bf16* const v_base = a.v_cache + static_cast<int64_t>(kvh) * D + cc * 8;

#pragma unroll
  for (int i = 0; i < C::kQRowsPerThread; ++i) {
    const int r = cr + i * C::kRowStep;
    const bool valid = r < rows_valid;
    const bf16* src = valid ? a.q + (row0 + r) * q_row_stride + static_cast<int64_t>(h) * D + cc * 8 : a.q;
    CpAsync16(SmemAddr(sQ + r * kStride + cc * 8), src, valid);
  }

  int64_t slots[C::kKvRowsPerThread];  // slot of each of this thread's key rows, -1: not read
  auto find_slots = [&](int tile) {
#pragma unroll
    for (int i = 0; i < C::kKvRowsPerThread; ++i) {
      const int32_t s = tile * kBlockN + cr + i * C::kRowStep;
      slots[i] = s <= pos_last ? SlotOfPosition(a.paged, seq, s) : int64_t{-1};
    }
  };
  auto issue_kv = [&](const bf16* base, bf16* stage) {
#pragma unroll
    for (int i = 0; i < C::kKvRowsPerThread; ++i) {
      const int r = cr + i * C::kRowStep;
      const bool valid = slots[i] >= 0;
      const bf16* src = valid ? base + slots[i] * kv_slot_stride : base;
      CpAsync16(SmemAddr(stage + r * kStride + cc * 8), src, valid);
    }
  };

  find_slots(0);
  issue_kv(k_base, sK);
  CpAsyncCommit();  // {Q, K0}
  issue_kv(v_base, sV);
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
    if (it + 1 < n_tiles) {
      find_slots(it + 1);
      issue_kv(k_base, sK + (buf ^ 1) * C::kSmemKv);
    }
    CpAsyncCommit();
    CpAsyncWait<2>();
    __syncthreads();  // B1: K[it] (and Q) visible; every thread is past PV of it-1
    if (it + 1 < n_tiles) issue_kv(v_base, sV + (buf ^ 1) * C::kSmemKv);
    CpAsyncCommit();

    if constexpr (C::kQInRegs) {
      if (it == 0) {
#pragma unroll
        for (int kk = 0; kk < kKSteps; ++kk) LdMatrixX4(q_frag[kk], sQ_warp + kk * 16 * sizeof(bf16));
      }
    }

    // ---- S = Q Kᵀ (raw scores; the scale is folded into the exponent)
    float acc_s[kMAtoms][kNTiles][4];
    flash::QkScores<kMAtoms, kNTiles, kKSteps, kStride, C::kQInRegs>(
        acc_s, q_frag, sQ_warp, SmemAddr(sK + buf * C::kSmemKv + k_lane_off));

    // ---- causal mask (key n0 + 8j + 2t + e against the row's position), online softmax
    const int32_t n0 = it * kBlockN;
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

    CpAsyncWait<2>();
    __syncthreads();  // B2: V[it] visible; every thread is past S of it (K buffer free)

    // ---- O += P V
    flash::PvAccumulate<kMAtoms, kPSteps, kDTiles, kStride>(acc_o, p_frag,
                                                            SmemAddr(sV + buf * C::kSmemKv + v_lane_off));
  };

  // Tiles whose every key is ≤ pos0 need no mask: keys n0 … n0 + kBlockN - 1 ≤ pos0.
  const int n_unmasked = min(n_tiles, (pos0 + 1) / kBlockN);
  for (int it = 0; it < n_unmasked; ++it) step(it, std::false_type{});
  for (int it = n_unmasked; it < n_tiles; ++it) step(it, std::true_type{});

  // ---- epilogue: O / l, output gate, bf16 stores (row g / g+8, channels 8j + 2t, 8j + 2t + 1)
  const int64_t out_row_stride = static_cast<int64_t>(a.n_heads) * D;
  const bool gated = a.gate_z != nullptr;
#pragma unroll
  for (int mi = 0; mi < kMAtoms; ++mi) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float l = row_sum[mi][hf];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const int r = wrow0 + mi * 16 + g + hf * 8;
      if (r >= rows_valid) continue;
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;  // l ≥ 1 for every real row
      const int64_t row = row0 + r;
      bf16* const out = a.out + row * out_row_stride + static_cast<int64_t>(h) * D;
      const float* const gz = gated ? a.gate_z + row * a.gate_stride + static_cast<int64_t>(h) * D : nullptr;
      const float* const gb = (gated && a.gate_bias != nullptr) ? a.gate_bias + static_cast<int64_t>(h) * D : nullptr;
#pragma unroll
      for (int j = 0; j < kDTiles; ++j) {
        const int d = j * 8 + 2 * t;
        float v0 = acc_o[mi][j][2 * hf] * inv;
        float v1 = acc_o[mi][j][2 * hf + 1] * inv;
        if (gated) {
          const float z0 = gz[d] + (gb != nullptr ? gb[d] : 0.0f);
          const float z1 = gz[d + 1] + (gb != nullptr ? gb[d + 1] : 0.0f);
          v0 *= GateActF(a.gate_act, z0);
          v1 *= GateActF(a.gate_act, z1);
        }
        *reinterpret_cast<__nv_bfloat162*>(out + d) = __floats2bfloat162_rn(v0, v1);
      }
    }
  }
}

template <class C>
cudaError_t Launch(const DensePrefillArgs& a, cudaStream_t stream) {
  const int64_t m_tiles = (static_cast<int64_t>(a.max_num_query) + C::kBlockM - 1) / C::kBlockM;
  if (m_tiles > 65535 || a.num_seq_ids > 65535) return cudaErrorInvalidValue;
  cudaError_t err =
      cudaFuncSetAttribute(DensePrefillKernel<C>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(C::kSmemBytes));
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(a.n_heads), static_cast<unsigned>(m_tiles),
                  static_cast<unsigned>(a.num_seq_ids));
  DensePrefillKernel<C><<<grid, C::kThreads, C::kSmemBytes, stream>>>(a);
  return cudaGetLastError();
}

// The configurations in use, measured on an H200 (16 query / 8 KV heads, one sequence, causal,
// TFLOP/s at 16K / 128K tokens; PyTorch SDPA flash: 323 / 331 at d 128, 277 / 296 at d 64):
//   256 rows: 8 warps × 32 rows, 64 keys          d 128: 264 / 278   d 64: 252 / 261
//   128 rows: 4 warps × 32 rows, 32 (d 128) or 64 keys   248 / 254         232 / 239
//    64 rows: 4 warps × 16 rows, 64 keys                 172 / 176         179 / 182
// Bigger tiles share each K/V tile among more rows; smaller ones make more CTAs for chunks too
// short to fill the GPU. The launcher takes the biggest tile that still gives 3/4 of the SMs a CTA.
template <int D>
using Cfg256 = Cfg<D, 8, 2, 64>;
template <int D>
using Cfg128 = Cfg<D, 4, 2, (D == 128 ? 32 : 64)>;  // d 128 with 64 keys spills
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
  if (a.d_head == 128) return LaunchForHead<128>(a, stream);
  return LaunchForHead<64>(a, stream);
}

}  // namespace gsa::kernels
