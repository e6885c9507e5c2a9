// Device-side arithmetic of the lightning indexer (kernels/indexer.h), shared by every kernel that
// computes I(t, s) so that each produces bitwise the same score for the same inputs: IndexerScores
// and the fused decode selection of kernels/selection.h. Include only from .cu files.
//
// Tensor cores, fp32-faithful: a warp scores a tile of 8 candidates (the mma's 8 columns, n) for
// one query row per mma.sync.m16n8k16 (bf16 in, fp32 accumulate). The keys are bf16 already
// (exact); each fp32 qI is split into three bf16 parts q = hi + mid + lo (each the bf16 rounding of
// what is left), which represent it to within 2^-24 relatively, and every key × part product is
// exact in fp32. The A operand's 16 rows are (part, head) pairs, row = part · HP + head, with the
// heads padded to HP = 4 (≤ 4 heads: one m-tile, rows 12-15 zero) or HP = 16 (three m-tiles, one
// per part); each (part, head) dot product is accumulated by the tensor core over the k-steps in
// order, and a head's dot is (lo + mid) + hi in fp32. So it matches an fp32 evaluation to a few fp32
// ulps of Σ|q·k| (the CPU reference's tolerance), and a candidate's score depends only on its key and
// the row, never on the tile, column or lane that held it: equal keys give bitwise equal scores
// (MODEL.md, "Ties").
//
// Why keys are the B operand: a lane's B fragment (b0, b1) is two adjacent 32-bit words of ONE
// candidate's key, so a 16-byte load of a key chunk feeds two k-steps with no register moves
// (with keys as A, each mma needed its 4 A registers gathered from two rows' loads).
//
// Fragment layout (PTX ISA, mma.m16n8k16 .bf16): lane = 4g + t. A (16 rows × 16 k): a0 = (row g, k
// 2t..2t+1), a1 = (row g+8, same k), a2 = (row g, k 2t+8..2t+9), a3 = (row g+8, same); B (16 k × 8
// candidates): b0 = (k 2t..2t+1, candidate g), b1 = (k 2t+8..2t+9, candidate g); C: c0, c1 = (row g,
// candidates 2t, 2t+1), c2, c3 = (row g+8, the same candidates). The dot product does not care which
// physical channel a logical k is, as long as A and B agree, so lane (g, t) loads whole 16-byte
// chunks 4P + t (channels 8(4P+t) … +7) of candidate g's key, for P < D_I/32 (D_I = 16: chunks ≥ 2
// read as zeros); k-step 2P + h takes channels 8(4P+t) + 4h + {0,1} as logical 2t, 2t+1 (b0 = the
// chunk's word 2h) and + 4h + {2,3} as logical 2t+8, 2t+9 (b1 = word 2h + 1). The query is stored
// once per row in shared memory already in A-fragment order (QueryFragments), one 16-byte load per
// lane per (m-tile, k-step).
#pragma once

#include <cstdint>

#include <cuda_fp8.h>

#include "kernels/paged.h"

namespace gsa::kernels::indexer_math {

constexpr int kMaxHeads = 16;
constexpr int kMaxDIndexer = 128;
constexpr int kQueryParts = 3;  // hi, mid, lo

// Heads padded per part (see the file comment), m-tiles and k-steps of the A operand.
__host__ __device__ constexpr int HeadsPadded(int32_t n_heads) { return n_heads <= 4 ? 4 : 16; }
__host__ __device__ constexpr int MTiles(int hp) { return (kQueryParts * hp + 15) / 16; }
template <int D_I>
struct KeyShape {
  static constexpr int kChunks = D_I / 8;          // 16-byte chunks of a key row
  static constexpr int kGroups = (D_I + 31) / 32;  // chunks a lane holds (4P + t, P < kGroups)
  static constexpr int kKSteps = 2 * kGroups;
};

// bf16 elements of one row's query fragments: [m-tile][k-step][lane][a0..a3][2].
template <int D_I>
__host__ __device__ constexpr int64_t QueryFragElems(int hp) {
  return static_cast<int64_t>(MTiles(hp)) * KeyShape<D_I>::kKSteps * 32 * 8;
}

// Element e of row `q_row`'s query fragments (q_row: the row's fp32 qI, head j's channel c at
// q_row[j · D_I + c], global memory): element (m-tile, k-step, lane (g, t), register, half) is part
// row / HP of head row % HP at physical channel 8(4P + t) + 4h + 2 · (register / 2) + half, with row
// = 16 · m-tile + g + 8 · (register % 2) and k-step 2P + h; zero for padding heads, rows past the
// three parts and channels ≥ D_I. Callers fill QueryFragElems<D_I>(hp) elements and sync.
template <int D_I>
__device__ __forceinline__ bf16 QueryFragmentValue(const float* q_row, int32_t n_heads, int hp, int32_t e) {
  constexpr int kKS = KeyShape<D_I>::kKSteps;
  const int half = e & 1, reg = (e >> 1) & 3, lane = (e >> 3) & 31;
  const int ks = (e >> 8) % kKS, mt = (e >> 8) / kKS;
  const int g = lane >> 2, t = lane & 3;
  const int row = 16 * mt + g + 8 * (reg & 1);
  const int part = row / hp, head = row % hp;
  const int chunk = 4 * (ks >> 1) + t;
  float v = 0.0f;
  if (part < kQueryParts && head < n_heads && chunk < KeyShape<D_I>::kChunks) {
    const int c = 8 * chunk + 4 * (ks & 1) + 2 * (reg >> 1) + half;
    const float x = q_row[head * D_I + c];
    const float hi = __bfloat162float(__float2bfloat16_rn(x));
    const float r1 = x - hi;  // exact
    const float mid = __bfloat162float(__float2bfloat16_rn(r1));
    v = part == 0 ? hi : (part == 1 ? mid : r1 - mid);  // r1 − mid exact; lo is its bf16 rounding
  }
  return __float2bfloat16_rn(v);
}

// Where the keys are: bf16 rows [num_slots, D_I], or (fp8 != nullptr) e4m3 codes [num_slots, D_I]
// with one fp32 scale per slot (key = scale · code).
struct KeySource {
  const bf16* bf16_keys = nullptr;
  const uint8_t* fp8 = nullptr;
  const float* scale = nullptr;
};

// Eight e4m3 codes → eight bf16 (exact: every e4m3 value is a bf16 value), packed as in a bf16 row.
__device__ __forceinline__ uint4 Fp8x8ToBf16x8(uint2 codes) {
  uint32_t out[4];
  const uint32_t in[2] = {codes.x, codes.y};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const uint32_t pair = (in[i / 2] >> (16 * (i % 2))) & 0xFFFFu;
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(pair), __NV_E4M3);
    const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&h));
    const __nv_bfloat162 b = __floats2bfloat162_rn(f.x, f.y);
    out[i] = *reinterpret_cast<const uint32_t*>(&b);
  }
  return make_uint4(out[0], out[1], out[2], out[3]);
}

__device__ __forceinline__ void MmaBf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                        uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

// φ = sigmoid for the indexer: e^-z from the SFU (__expf: within a few ulp for the |z| the indexer
// sees) and the SFU's reciprocal (rcp.approx: within 1 ulp; 1 + e^-z ≥ 1 is never subnormal, and
// infinity gives 0). Two SFU operations and two FP instructions, where expf and IEEE division took
// about forty and a correctly rounded reciprocal a slow-path check and call. Shared by every indexer
// kernel, so all agree bitwise.
__device__ __forceinline__ float IndexerSigmoid(float z) {
  const float d = 1.0f + __expf(-z);
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(d));
  return r;
}

// One head's term w · φ(z) with z = (dot · key scale) · rsqrt(D_I) + b, added to acc. bf16 keys
// (kScaled false) have scale exactly 1, so skipping the product changes no bit.
template <bool kRelu, bool kScaled>
__device__ __forceinline__ float HeadTerm(float dot, float key_scale, float rs, float w, float b, float acc) {
  const float z = (kScaled ? dot * key_scale : dot) * rs + b;
  return fmaf(w, kRelu ? fmaxf(z, 0.0f) : IndexerSigmoid(z), acc);
}

// The keys of one tile of 8 candidates as lane (g, t) holds them: candidate g's chunks 4P + t, and
// its key scale (1 for bf16 keys).
template <int D_I>
struct KeyTile {
  uint4 c[KeyShape<D_I>::kGroups];
  float scale;
};

// Loads candidate g's chunks of a tile (slot < 0: a zero key with scale 0, whose score is never
// stored).
template <int D_I, bool kFp8>
__device__ __forceinline__ void LoadKeyTile(const KeySource& src, int64_t slot, KeyTile<D_I>* k) {
  const int t = threadIdx.x & 3;
  const int64_t row = slot >= 0 ? slot : 0;
#pragma unroll
  for (int p = 0; p < KeyShape<D_I>::kGroups; ++p) {
    const int chunk = 4 * p + t;
    const bool ok = slot >= 0 && chunk < KeyShape<D_I>::kChunks;
    if constexpr (kFp8) {
      const uint2* a = reinterpret_cast<const uint2*>(src.fp8 + row * D_I);
      k->c[p] = Fp8x8ToBf16x8(ok ? __ldg(a + chunk) : make_uint2(0u, 0u));
    } else {
      const uint4* a = reinterpret_cast<const uint4*>(src.bf16_keys + row * D_I);
      k->c[p] = ok ? __ldg(a + chunk) : make_uint4(0u, 0u, 0u, 0u);
    }
  }
  if constexpr (kFp8) {
    k->scale = slot >= 0 ? __ldg(src.scale + slot) : 0.0f;
  } else {
    k->scale = 1.0f;
  }
}

// Scores of N tiles of 8 candidates for the row whose query fragments are `frag` (shared memory,
// StoreQueryFragments) with weights w and biases b (n_heads each): out[u][j] is tile u's candidate
// 2t + j, valid in lanes g < 4 (HP = 4) or every lane (HP = 16). kRelu: φ = relu, else sigmoid.
// kScaled: fp8 keys (each dot times its key's scale). All 32 lanes must call it together.
//   I = Σ_j w_j · φ(dot_j · rsqrt(D_I) + b_j), dot_j = (lo + mid) + hi; the head sum in a fixed
//   butterfly order over the lanes that hold the heads.
template <int D_I, int HP, int N, bool kRelu, bool kScaled>
__device__ __forceinline__ void TileScores(const KeyTile<D_I> (&k)[N], const bf16* frag, const float* w,
                                           const float* b, int32_t n_heads, float (&out)[N][2]) {
  static_assert(HP == 4 || HP == 16, "heads padded to 4 or 16");
  constexpr int kMT = MTiles(HP);
  constexpr int kKS = KeyShape<D_I>::kKSteps;
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const float rs = rsqrtf(static_cast<float>(D_I));
  const uint4* fa = reinterpret_cast<const uint4*>(frag) + lane;
  float c[kMT][N][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int u = 0; u < N; ++u) c[mt][u][0] = c[mt][u][1] = c[mt][u][2] = c[mt][u][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < kKS; ++ks) {
      const uint4 a = fa[(mt * kKS + ks) * 32];
#pragma unroll
      for (int u = 0; u < N; ++u) {
        const uint4& kc = k[u].c[ks >> 1];
        const uint32_t b0 = (ks & 1) ? kc.z : kc.x;
        const uint32_t b1 = (ks & 1) ? kc.w : kc.y;
        MmaBf16(c[mt][u], a.x, a.y, a.z, a.w, b0, b1);
      }
    }
  }
  // Key scales of this lane's columns 2t, 2t + 1 (held by the lanes that loaded them: g = 2t, 2t+1).
  float scale[N][2];
#pragma unroll
  for (int u = 0; u < N; ++u) {
    if constexpr (kScaled) {
      scale[u][0] = __shfl_sync(0xffffffffu, k[u].scale, 8 * t);
      scale[u][1] = __shfl_sync(0xffffffffu, k[u].scale, 8 * t + 4);
    } else {
      scale[u][0] = scale[u][1] = 1.0f;
    }
  }
#pragma unroll
  for (int u = 0; u < N; ++u) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      float s;
      if constexpr (HP == 4) {
        // Lane g < 4: head g; hi in row g (c0/c1), lo in row g + 8 (c2/c3), mid in row g + 4 (lane + 16).
        const float mid = __shfl_xor_sync(0xffffffffu, c[0][u][j], 16);
        const float dot = (c[0][u][2 + j] + mid) + c[0][u][j];
        s = (g < n_heads) ? HeadTerm<kRelu, kScaled>(dot, scale[u][j], rs, w[g & 3], b[g & 3], 0.0f) : 0.0f;
        s += __shfl_xor_sync(0xffffffffu, s, 4);
        s += __shfl_xor_sync(0xffffffffu, s, 8);
      } else {
        // Lane g: heads g (rows g, c0/c1) and g + 8 (rows g + 8, c2/c3) of m-tiles hi, mid, lo.
        const float dot0 = (c[2][u][j] + c[1][u][j]) + c[0][u][j];
        const float dot1 = (c[2][u][2 + j] + c[1][u][2 + j]) + c[0][u][2 + j];
        const float s0 = g < n_heads ? HeadTerm<kRelu, kScaled>(dot0, scale[u][j], rs, w[g], b[g], 0.0f) : 0.0f;
        const float s1 =
            g + 8 < n_heads ? HeadTerm<kRelu, kScaled>(dot1, scale[u][j], rs, w[g + 8], b[g + 8], 0.0f) : 0.0f;
        s = s0 + s1;
        s += __shfl_xor_sync(0xffffffffu, s, 4);
        s += __shfl_xor_sync(0xffffffffu, s, 8);
        s += __shfl_xor_sync(0xffffffffu, s, 16);
      }
      out[u][j] = s;
    }
  }
}

}  // namespace gsa::kernels::indexer_math
