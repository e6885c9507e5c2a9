// The pieces of a FlashAttention-2 style key-tile step on the sm_80+ tensor-core instructions
// (mma.sync m16n8k16 bf16 → fp32, ldmatrix, cp.async), shared by the dense prefill kernel
// (kernels/dense_prefill.cu) and the union-tile sparse prefill kernel (kernels/sparse_prefill.cu).
// Include only from .cu files.
//
// Shapes: a warp owns kMAtoms m16 "atoms" of 16 query rows; a key tile has kNTiles n8 tiles
// (kBlockN = 8 kNTiles keys); the head size D gives kKSteps = D/16 k steps of S = Q Kᵀ and
// kDTiles = D/8 n8 tiles of O. Shared rows are kStride elements apart (D + 8: conflict-free
// ldmatrix, 16-byte aligned cp.async destinations).
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
#pragma once

#include <cstdint>

#include "kernels/paged.h"

namespace gsa::kernels::flash {

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

// ldmatrix lane offsets (elements) within a 16×16 block of a shared array with row stride kStride,
// as in the file comment.
template <int kStride>
__device__ __forceinline__ int QLaneOffset(int lane) { return (lane & 15) * kStride + (lane >> 4) * 8; }
template <int kStride>
__device__ __forceinline__ int KLaneOffset(int lane) {
  return (((lane >> 4) << 3) + (lane & 7)) * kStride + ((lane >> 3) & 1) * 8;
}
template <int kStride>
__device__ __forceinline__ int VLaneOffset(int lane) { return (lane & 15) * kStride + (lane >> 4) * 8; }

// S = Q Kᵀ of one key tile, raw (unscaled) scores. Q comes from q_frag (kQInRegs: one atom, all k
// steps loaded once) or from shared memory at sQ_warp (+ atom and k-step offsets); K at sK_lane
// (the tile's buffer + KLaneOffset).
template <int kMAtoms, int kNTiles, int kKSteps, int kStride, bool kQInRegs>
__device__ __forceinline__ void QkScores(float (&acc_s)[kMAtoms][kNTiles][4],
                                         const uint32_t (&q_frag)[kQInRegs ? kKSteps : 1][4], uint32_t sQ_warp,
                                         uint32_t sK_lane) {
#pragma unroll
  for (int mi = 0; mi < kMAtoms; ++mi) {
#pragma unroll
    for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_s[mi][j][e] = 0.0f;
    }
  }
#pragma unroll
  for (int kk = 0; kk < kKSteps; ++kk) {
    uint32_t qa[kMAtoms][4];
#pragma unroll
    for (int mi = 0; mi < kMAtoms; ++mi) {
      if constexpr (kQInRegs) {
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
}

// Online softmax over one key tile, first part (scale > 0, so the max commutes with the scaling):
// keep(mi, hf, j, e) says whether key 8j + 2t + e counts for row g + 8·hf of atom mi (a key that
// does not is set to -inf). Updates the running max (log2 domain) and this thread's part of the
// row sum, turns acc_s into the (fp32) probabilities, and gives each row's alpha, the factor that
// brings O to the new max (exactly 1 where the max did not move).
template <int kMAtoms, int kNTiles, class Keep>
__device__ __forceinline__ void SoftmaxExp(float (&acc_s)[kMAtoms][kNTiles][4], float (&row_max)[kMAtoms][2],
                                           float (&row_sum)[kMAtoms][2], float scale_log2, Keep keep,
                                           float (&alpha)[kMAtoms][2]) {
#pragma unroll
  for (int mi = 0; mi < kMAtoms; ++mi) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {  // hf 0: row g (c0, c1); hf 1: row g + 8 (c2, c3)
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          if (!keep(mi, hf, j, e)) acc_s[mi][j][2 * hf + e] = -INFINITY;
          mx = fmaxf(mx, acc_s[mi][j][2 * hf + e]);
        }
      }
      // The 4 lanes of a quad (same g) hold the row's kBlockN values.
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_old = row_max[mi][hf];
      const float m_new = fmaxf(m_old, mx * scale_log2);  // log2 domain
      // A row with no key yet (m_new = -inf) keeps everything at 0: subtract 0, not -inf.
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;
      const float a = m_new == m_old ? 1.0f : Exp2(m_old - m_use);  // 0 on the first tile (−inf)
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
      row_sum[mi][hf] = row_sum[mi][hf] * a + sum;
      alpha[mi][hf] = a;
    }
  }
}

// Second part: O *= alpha per row (skipped where no row of the warp has a new max: multiplying by
// 1 would change nothing, and at long contexts a row's max rarely moves); the probabilities,
// rounded to bf16, become the A fragments of P V.
template <int kMAtoms, int kNTiles, int kDTiles>
__device__ __forceinline__ void RescaleAndPack(const float (&acc_s)[kMAtoms][kNTiles][4],
                                               const float (&alpha)[kMAtoms][2], float (&acc_o)[kMAtoms][kDTiles][4],
                                               uint32_t (&p_frag)[kMAtoms][kNTiles / 2][4]) {
#pragma unroll
  for (int mi = 0; mi < kMAtoms; ++mi) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      if (__any_sync(0xffffffffu, alpha[mi][hf] != 1.0f)) {
#pragma unroll
        for (int j = 0; j < kDTiles; ++j) {
          acc_o[mi][j][2 * hf] *= alpha[mi][hf];
          acc_o[mi][j][2 * hf + 1] *= alpha[mi][hf];
        }
      }
    }
#pragma unroll
    for (int kk = 0; kk < kNTiles / 2; ++kk) {
      p_frag[mi][kk][0] = PackBf16(acc_s[mi][2 * kk][0], acc_s[mi][2 * kk][1]);
      p_frag[mi][kk][1] = PackBf16(acc_s[mi][2 * kk][2], acc_s[mi][2 * kk][3]);
      p_frag[mi][kk][2] = PackBf16(acc_s[mi][2 * kk + 1][0], acc_s[mi][2 * kk + 1][1]);
      p_frag[mi][kk][3] = PackBf16(acc_s[mi][2 * kk + 1][2], acc_s[mi][2 * kk + 1][3]);
    }
  }
}

// Both parts, for kernels whose previous P V has completed (mma.sync).
template <int kMAtoms, int kNTiles, int kDTiles, class Keep>
__device__ __forceinline__ void SoftmaxStep(float (&acc_s)[kMAtoms][kNTiles][4], float (&row_max)[kMAtoms][2],
                                            float (&row_sum)[kMAtoms][2], float (&acc_o)[kMAtoms][kDTiles][4],
                                            float scale_log2, Keep keep, uint32_t (&p_frag)[kMAtoms][kNTiles / 2][4]) {
  float alpha[kMAtoms][2];
  SoftmaxExp<kMAtoms, kNTiles>(acc_s, row_max, row_sum, scale_log2, keep, alpha);
  RescaleAndPack<kMAtoms, kNTiles, kDTiles>(acc_s, alpha, acc_o, p_frag);
}

// O += P V of one key tile, V at sV_lane (the tile's buffer + VLaneOffset).
template <int kMAtoms, int kPSteps, int kDTiles, int kStride>
__device__ __forceinline__ void PvAccumulate(float (&acc_o)[kMAtoms][kDTiles][4],
                                             const uint32_t (&p_frag)[kMAtoms][kPSteps][4], uint32_t sV_lane) {
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
}

// The full row sum of row g + 8·hf: this thread's part summed over its quad (every lane of the
// quad must call it).
__device__ __forceinline__ float QuadRowSum(float part) {
  part += __shfl_xor_sync(0xffffffffu, part, 1);
  part += __shfl_xor_sync(0xffffffffu, part, 2);
  return part;
}

// Stores row g + 8·hf of one atom's O (channels 8j + 2t, 8j + 2t + 1) as bf16 at `out` (the row's
// head): O · inv (inv = 1 / the row sum, or 0 for a row that attended to nothing) times the output
// gate act(gz[d] + gb[d]) when `gated` (gz then valid; gb may be null).
template <int kDTiles>
__device__ __forceinline__ void StoreRow(const float (&acc_o)[kDTiles][4], int hf, float inv, int t, bf16* out,
                                         bool gated, const float* gz, const float* gb, GateActivation act) {
#pragma unroll
  for (int j = 0; j < kDTiles; ++j) {
    const int d = j * 8 + 2 * t;
    float v0 = acc_o[j][2 * hf] * inv;
    float v1 = acc_o[j][2 * hf + 1] * inv;
    if (gated) {
      const float z0 = gz[d] + (gb != nullptr ? gb[d] : 0.0f);
      const float z1 = gz[d + 1] + (gb != nullptr ? gb[d + 1] : 0.0f);
      v0 *= GateActF(act, z0);
      v1 *= GateActF(act, z1);
    }
    *reinterpret_cast<__nv_bfloat162*>(out + d) = __floats2bfloat162_rn(v0, v1);
  }
}

}  // namespace gsa::kernels::flash
