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
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 fragments (PTX ISA "Matrix Fragments for
// mma.m16n8k16 with floating point type"); lane = 0..31, g = lane >> 2 (groupID),
// t = lane & 3 (threadID_in_group); each .b32 register holds two bf16, the lower column/row index
// in the low half:
//   A (16×16, row-major): a0 = (row g,   cols 2t, 2t+1)   a1 = (row g+8, cols 2t, 2t+1)
//                         a2 = (row g,   cols 2t+8, 2t+9) a3 = (row g+8, cols 2t+8, 2t+9)
//   B (16×8, "col"):      b0 = (rows 2t, 2t+1, col g)     b1 = (rows 2t+8, 2t+9, col g)
//   C/D (16×8 fp32):      c0, c1 = (row g, cols 2t, 2t+1) c2, c3 = (row g+8, cols 2t, 2t+1)
// ldmatrix.sync.aligned.m8n8.x4.shared.b16: lanes 8i … 8i+7 give the addresses of rows 0 … 7 of
//   matrix i (16 contiguous bytes each); register ri of lane L receives matrix i's
//   (row L>>2, cols 2(L&3), 2(L&3)+1); with .trans it receives (rows 2(L&3), 2(L&3)+1, col L>>2).
//   Q (A operand, Q[row][d]):   matrices (rows 0-7, d 0-7), (rows 8-15, d 0-7), (rows 0-7, d 8-15),
//                               (rows 8-15, d 8-15) → a0..a3; lane L: row L & 15, d (L >> 4)·8.
//   K (B operand of S = Q Kᵀ, B[d][key] = K[key][d], no .trans): matrices (keys 0-7, d 0-7),
//                               (keys 0-7, d 8-15), (keys 8-15, d 0-7), (keys 8-15, d 8-15)
//                               → b0, b1 of key n-tile 2j and b0, b1 of n-tile 2j+1;
//                               lane L: key ((L >> 4) << 3) + (L & 7), d ((L >> 3) & 1)·8.
//   V (B operand of O = P V, B[key][d] = V[key][d], .trans): matrices (keys 0-7, d 0-7),
//                               (keys 8-15, d 0-7), (keys 0-7, d 8-15), (keys 8-15, d 8-15)
//                               → b0, b1 of d n-tile 2j and b0, b1 of d n-tile 2j+1;
//                               lane L: key L & 15, d (L >> 4)·8.
//   P (A operand of P V) comes from the S accumulators of key n-tiles 2k and 2k+1:
//     a0 = (c0, c1) of tile 2k, a1 = (c2, c3) of tile 2k, a2 = (c0, c1) of 2k+1, a3 = (c2, c3) of 2k+1.
#include "kernels/dense_prefill.h"

#include <cstdint>
#include <type_traits>

namespace gsa::kernels {
namespace {

constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global → shared copy; with valid = false nothing is read and the 16 bytes are zeroed
// (src-size 0). `src` must still be a valid address (callers pass the array's base then).
__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src, bool valid) {
  const int src_size = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_size) : "memory");
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// d += a · b for one m16n8k16 tile (fragments as in the file comment).
__device__ __forceinline__ void MmaBf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats → one register of two bf16 (round to nearest even), `lo` in the low half.
__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// 2^x (ex2.approx: 2 ulp, 2^-inf = +0).
__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

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

  // ldmatrix lane offsets (elements) within a 16×16 block, as in the file comment.
  const int a_lane_off = (lane & 15) * kStride + (lane >> 4) * 8;                      // Q
  const int k_lane_off = (((lane >> 4) << 3) + (lane & 7)) * kStride + ((lane >> 3) & 1) * 8;  // K
  const int v_lane_off = (lane & 15) * kStride + (lane >> 4) * 8;                      // V (.trans)
  const uint32_t sQ_warp = SmemAddr(sQ + wrow0 * kStride + a_lane_off);

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

    // ---- S = Q Kᵀ (raw scores; the scale is folded into the exponent below)
    float acc_s[kMAtoms][kNTiles][4];
#pragma unroll
    for (int mi = 0; mi < kMAtoms; ++mi) {
#pragma unroll
      for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_s[mi][j][e] = 0.0f;
      }
    }
    const uint32_t sK_lane = SmemAddr(sK + buf * C::kSmemKv + k_lane_off);
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
      uint32_t qa[kMAtoms][4];
#pragma unroll
      for (int mi = 0; mi < kMAtoms; ++mi) {
        if constexpr (C::kQInRegs) {
#pragma unroll
          for (int e = 0; e < 4; ++e) qa[mi][e] = q_frag[kk][e];
        } else {
          LdMatrixX4(qa[mi], sQ_warp + (mi * 16 * kStride + kk * 16) * sizeof(bf16));
        }
      }
#pragma unroll
      for (int jp = 0; jp < kNTiles / 2; ++jp) {
        uint32_t kb[4];
        LdMatrixX4(kb, sK_lane + (jp * 16 * kStride + kk * 16) * sizeof(bf16));
#pragma unroll
        for (int mi = 0; mi < kMAtoms; ++mi) {
          MmaBf16(acc_s[mi][2 * jp], qa[mi], kb[0], kb[1]);
          MmaBf16(acc_s[mi][2 * jp + 1], qa[mi], kb[2], kb[3]);
        }
      }
    }

    // ---- causal mask, online softmax (scale > 0, so max commutes with the scaling)
    const int32_t n0 = it * kBlockN;
    uint32_t p_frag[kMAtoms][kPSteps][4];
#pragma unroll
    for (int mi = 0; mi < kMAtoms; ++mi) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {  // hf 0: row g (c0, c1); hf 1: row g + 8 (c2, c3)
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            if constexpr (kMask) {
              // key n0 + 8j + 2t + e against the row's position pos0 + (tile row)
              const int32_t limit = pos0 + wrow0 + mi * 16 + g + hf * 8 - n0 - 2 * t;
              if (j * 8 + e > limit) acc_s[mi][j][2 * hf + e] = -INFINITY;
            }
            mx = fmaxf(mx, acc_s[mi][j][2 * hf + e]);
          }
        }
        // The 4 lanes of a quad (same g) hold the row's kBlockN values.
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(row_max[mi][hf], mx * scale_log2);  // log2 domain
        // A row with no key yet (m_new = -inf) keeps everything at 0: subtract 0, not -inf.
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;
        const float alpha = Exp2(row_max[mi][hf] - m_use);  // 0 on the first tile (−inf)
        row_max[mi][hf] = m_new;
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float p = Exp2(fmaf(acc_s[mi][j][2 * hf + e], scale_log2, -m_use));
            acc_s[mi][j][2 * hf + e] = p;
            sum += p;
          }
        }
        row_sum[mi][hf] = row_sum[mi][hf] * alpha + sum;
#pragma unroll
        for (int j = 0; j < kDTiles; ++j) {
          acc_o[mi][j][2 * hf] *= alpha;
          acc_o[mi][j][2 * hf + 1] *= alpha;
        }
      }
#pragma unroll
      for (int kk = 0; kk < kPSteps; ++kk) {
        p_frag[mi][kk][0] = PackBf16(acc_s[mi][2 * kk][0], acc_s[mi][2 * kk][1]);
        p_frag[mi][kk][1] = PackBf16(acc_s[mi][2 * kk][2], acc_s[mi][2 * kk][3]);
        p_frag[mi][kk][2] = PackBf16(acc_s[mi][2 * kk + 1][0], acc_s[mi][2 * kk + 1][1]);
        p_frag[mi][kk][3] = PackBf16(acc_s[mi][2 * kk + 1][2], acc_s[mi][2 * kk + 1][3]);
      }
    }

    CpAsyncWait<2>();
    __syncthreads();  // B2: V[it] visible; every thread is past S of it (K buffer free)

    // ---- O += P V
    const uint32_t sV_lane = SmemAddr(sV + buf * C::kSmemKv + v_lane_off);
#pragma unroll
    for (int kk = 0; kk < kPSteps; ++kk) {
#pragma unroll
      for (int jp = 0; jp < kDTiles / 2; ++jp) {
        uint32_t vb[4];
        LdMatrixX4Trans(vb, sV_lane + (kk * 16 * kStride + jp * 16) * sizeof(bf16));
#pragma unroll
        for (int mi = 0; mi < kMAtoms; ++mi) {
          MmaBf16(acc_o[mi][2 * jp], p_frag[mi][kk], vb[0], vb[1]);
          MmaBf16(acc_o[mi][2 * jp + 1], p_frag[mi][kk], vb[2], vb[3]);
        }
      }
    }
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
