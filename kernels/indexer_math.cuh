// Device-side arithmetic of the lightning indexer (kernels/indexer.h), shared by every kernel that
// computes I(t, s) so that each produces bitwise the same score for the same inputs: IndexerScores
// and the fused decode selection of kernels/selection.h. Include only from .cu files.
//
// Tensor cores, fp32-faithful: a warp scores a tile of 16 candidates against up to 8 heads per
// mma.sync.m16n8k16 (bf16 in, fp32 accumulate). The keys are bf16 already (exact); each fp32 qI is
// split into three bf16 parts q = hi + mid + lo (each the bf16 rounding of what is left), which
// represent it to within 2^-24 relatively, and every key × part product is exact in fp32; the
// accumulation is fp32 (the tensor core's rounding), lo first. So the dot product matches an fp32
// evaluation to a few fp32 ulps of Σ|q·k| (the CPU reference's tolerance), and never depends on
// which tile or lane holds the candidate: equal keys give bitwise equal scores (MODEL.md, "Ties").
//
// Fragment layout (PTX ISA, mma.m16n8k16 .bf16): lane = 4g + t. A (16 candidates × 16 channels):
// a0 = (row g, k 2t..2t+1), a1 = (row g+8, same k), a2 = (row g, k 2t+8..2t+9), a3 = (row g+8, same);
// B (16 × 8 heads): b0 = (k 2t..2t+1, head g), b1 = (k 2t+8..2t+9, head g); C: c0, c1 = (row g,
// heads 2t, 2t+1), c2, c3 = (row g+8, the same heads). The dot product does not care which physical
// channel a logical k is, as long as A and B agree, so lane (g, t) loads whole 16-byte chunks:
// chunk 4P + t (channels 8(4P+t) … +7) of rows g and g+8, for P < D_I/32; k-step 2P+h takes
// channels 8(4P+t) + 4h + {0,1} as logical 2t, 2t+1 and + 4h + {2,3} as logical 2t+8, 2t+9.
#pragma once

#include <cstdint>

#include <cuda_fp8.h>

#include "kernels/paged.h"

namespace gsa::kernels::indexer_math {

constexpr int kMaxHeads = 16;
constexpr int kMaxDIndexer = 128;
constexpr int kQueryParts = 3;  // hi, mid, lo

// One row's indexer query in shared memory: part (hi, mid, lo) of head j's element i at
// q[part · QueryPartStride + j · QueryHeadStride + i] (bf16), with w[j] (sigmoid already applied)
// and b[j] beside it. The padding keeps the mma's B-fragment loads free of bank conflicts: a lane
// (g, t) reads word 4t (+ a per-instruction constant) of head g's run, so the head stride is an odd
// number of words (heads 0 … 3 land on banks 4t + j), and whole rows are 16 words apart modulo 32
// (TileScoresPair's second row lands on the other 16 banks).
__host__ __device__ constexpr int64_t QueryHeadStride(int32_t d_indexer) { return d_indexer + 2; }
__host__ __device__ constexpr int64_t QueryPartStride(int32_t n_heads, int32_t d_indexer) {
  return static_cast<int64_t>(n_heads) * QueryHeadStride(d_indexer);
}
// bf16 elements of one row's split query, rows placed back to back (an odd multiple of 16 words).
__host__ __device__ constexpr int64_t SplitQueryElems(int32_t n_heads, int32_t d_indexer) {
  const int64_t words = kQueryParts * QueryPartStride(n_heads, d_indexer) / 2;
  return 2 * (words + ((16 - words) % 32 + 32) % 32);
}

// An fp32 query element as three bf16 parts: x = hi + mid + lo, each the bf16 rounding of what is
// left (the subtractions are exact). Every indexer kernel splits through this, whatever layout it
// stores the parts in.
struct SplitParts {
  bf16 hi, mid, lo;
};
__device__ __forceinline__ SplitParts SplitQuery(float x) {
  const bf16 hi = __float2bfloat16_rn(x);
  const float r1 = x - __bfloat162float(hi);  // exact
  const bf16 mid = __float2bfloat16_rn(r1);
  const float r2 = r1 - __bfloat162float(mid);  // exact
  return {hi, mid, __float2bfloat16_rn(r2)};
}

// Element i of head j of one row's split query (SplitQuery) in the per-warp kernels' layout.
template <int D_I>
__device__ __forceinline__ void StoreSplit(float x, bf16* q, int32_t n_heads, int32_t j, int32_t i) {
  const int32_t part = static_cast<int32_t>(QueryPartStride(n_heads, D_I));
  const int32_t at = j * static_cast<int32_t>(QueryHeadStride(D_I)) + i;
  const SplitParts s = SplitQuery(x);
  q[at] = s.hi;
  q[part + at] = s.mid;
  q[2 * part + at] = s.lo;
}

// Splits proj row `r`'s qI into q (the three parts) and copies wI and the bias into w, b. Every
// thread of the block calls it; the caller syncs before use.
template <int D_I>
__device__ __forceinline__ void LoadSplitQuery(const float* proj, int64_t proj_stride, int64_t off_qi, int64_t off_wi,
                                               const float* bias, int32_t n_heads, int64_t r, bf16* q, float* w,
                                               float* b) {
  const float* prow = proj + r * proj_stride;
  const int32_t count = n_heads * D_I;
  for (int32_t e = threadIdx.x; e < count; e += blockDim.x) StoreSplit<D_I>(prow[off_qi + e], q, n_heads, e / D_I, e % D_I);
  for (int j = threadIdx.x; j < n_heads; j += blockDim.x) {
    w[j] = prow[off_wi + j];
    b[j] = bias[j];
  }
}

// 16-byte chunks of a key row, and how many 32-channel groups P the fragments span (D_I = 16 uses
// half of one: chunks 4P + t ≥ D_I / 8 read as zeros on both sides).
template <int D_I>
struct KeyShape {
  static constexpr int kChunks = D_I / 8;
  static constexpr int kGroups = (D_I + 31) / 32;
};

// The key chunks one lane holds for a tile of 16 candidates, already in the mma's A-operand order:
// a[p][h] = {a0, a1, a2, a3} of k-step 2p + h (rows g and g + 8 interleaved, see the header). Held
// this way, every mma can read its four A registers as one aligned quad (see KeyLoads for when the
// compiler actually gets them there without moves).
template <int D_I>
struct KeyFragment {
  uint32_t a[KeyShape<D_I>::kGroups][2][4];
};

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

// How LoadKeys reads bf16 keys (fp8 keys are always read 8 bytes at a time and converted).
enum class KeyLoads {
  // One 16-byte load per row chunk, interleaved into the quads by register moves (which the
  // compiler places at each mma): fewest load instructions, for keys used by one row (decode).
  kWide,
  // One 32-bit load per register, each straight into its place in the quads, so no mma needs a
  // move: for keys that several rows reuse (a prefill chunk's block of rows), where the moves would
  // repeat for every row (Nsight Compute, a 2048-row chunk at 128K: ~30% of the scoring loop's instructions). The
  // other words of a row's sectors come from L1.
  kWords,
};

// Loads the tile's key chunks (row g: slot_lo, row g + 8: slot_hi) and the two rows' scales (1
// for bf16 keys); a negative slot reads as a zero key with scale 0 (its score is never stored).
template <int D_I, bool kFp8, KeyLoads kLoads = KeyLoads::kWide>
__device__ __forceinline__ void LoadKeys(const KeySource& src, int64_t slot_lo, int64_t slot_hi, KeyFragment<D_I>* f,
                                         float* scale_lo, float* scale_hi) {
  const int t = threadIdx.x & 3;
  const int64_t row_lo = slot_lo >= 0 ? slot_lo : 0, row_hi = slot_hi >= 0 ? slot_hi : 0;
#pragma unroll
  for (int p = 0; p < KeyShape<D_I>::kGroups; ++p) {
    const int chunk = 4 * p + t;
    const bool ok_lo = slot_lo >= 0 && chunk < KeyShape<D_I>::kChunks;
    const bool ok_hi = slot_hi >= 0 && chunk < KeyShape<D_I>::kChunks;
    // k-step 2p + h takes words 2h and 2h + 1 of each row's chunk (a0/a1: logical k 2t, 2t + 1;
    // a2/a3: 2t + 8, 2t + 9).
    if constexpr (kFp8 || kLoads == KeyLoads::kWide) {
      uint4 lo, hi;  // channels 8 chunk … 8 chunk + 7 of rows g and g + 8, as bf16
      if constexpr (kFp8) {
        const uint2* a = reinterpret_cast<const uint2*>(src.fp8 + row_lo * D_I);
        const uint2* c = reinterpret_cast<const uint2*>(src.fp8 + row_hi * D_I);
        const uint2 zero = make_uint2(0u, 0u);
        lo = Fp8x8ToBf16x8(ok_lo ? __ldg(a + chunk) : zero);
        hi = Fp8x8ToBf16x8(ok_hi ? __ldg(c + chunk) : zero);
      } else {
        const uint4* a = reinterpret_cast<const uint4*>(src.bf16_keys + row_lo * D_I);
        const uint4* c = reinterpret_cast<const uint4*>(src.bf16_keys + row_hi * D_I);
        const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
        lo = ok_lo ? __ldg(a + chunk) : zero;
        hi = ok_hi ? __ldg(c + chunk) : zero;
      }
      f->a[p][0][0] = lo.x;
      f->a[p][0][1] = hi.x;
      f->a[p][0][2] = lo.y;
      f->a[p][0][3] = hi.y;
      f->a[p][1][0] = lo.z;
      f->a[p][1][1] = hi.z;
      f->a[p][1][2] = lo.w;
      f->a[p][1][3] = hi.w;
    } else {
      const uint32_t* a = reinterpret_cast<const uint32_t*>(src.bf16_keys + row_lo * D_I) + 4 * chunk;
      const uint32_t* c = reinterpret_cast<const uint32_t*>(src.bf16_keys + row_hi * D_I) + 4 * chunk;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        f->a[p][h][0] = ok_lo ? __ldg(a + 2 * h) : 0u;
        f->a[p][h][1] = ok_hi ? __ldg(c + 2 * h) : 0u;
        f->a[p][h][2] = ok_lo ? __ldg(a + 2 * h + 1) : 0u;
        f->a[p][h][3] = ok_hi ? __ldg(c + 2 * h + 1) : 0u;
      }
    }
  }
  if constexpr (kFp8) {
    *scale_lo = slot_lo >= 0 ? __ldg(src.scale + slot_lo) : 0.0f;
    *scale_hi = slot_hi >= 0 ? __ldg(src.scale + slot_hi) : 0.0f;
  } else {
    *scale_lo = 1.0f;
    *scale_hi = 1.0f;
  }
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

// φ = sigmoid for the indexer, from t = -log2(e) · z: e^-z = 2^t from the SFU (within a few ulp for
// the |z| the indexer sees) and the SFU's reciprocal (rcp.approx: within 1 ulp; 1 + e^-z ≥ 1 is
// never subnormal, and infinity gives 0). Two SFU operations and one FP add, where expf and IEEE
// division took about forty instructions and a correctly rounded reciprocal a slow-path check and
// call. Shared by every indexer kernel, so all agree bitwise.
//
// ex2 in its flush-to-zero form: __expf (no ftz) wraps ex2 in a range check, a halving and a
// squaring so that results below 2^-126 come out subnormal. Here such an e^-z only ever meets
// 1 + e^-z, which is exactly 1 either way, so the flush changes no bit of the score.
constexpr float kNegLog2e = -1.4426950408889634f;
__device__ __forceinline__ float IndexerSigmoidOfExponent(float t) {
  float e;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(t));
  const float d = 1.0f + e;
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(d));
  return r;
}

// One sigmoid head's term w · φ(z) with z = x · rs + b, added to acc, given rs_e = rs · kNegLog2e and
// b_e = b · kNegLog2e (each one fp32 product, the same wherever it is computed): the exponent
// t = -log2(e) · z is one FMA, x · rs_e + b_e, instead of an FMA and a multiply a term (the
// multiply was ~10% of the prefill indexer's epilogue instructions).
__device__ __forceinline__ float SigmoidHeadTerm(float x, float rs_e, float b_e, float w, float acc) {
  return fmaf(w, IndexerSigmoidOfExponent(fmaf(x, rs_e, b_e)), acc);
}

// One head's term w · φ(z) with z = (dot · key scale) · rsqrt(D_I) + b, added to acc. bf16 keys
// (kScaled false) have scale exactly 1, so skipping the product changes no bit. For sigmoid, the
// products with kNegLog2e are loop-invariant where this is called in a loop over candidates.
template <bool kRelu, bool kScaled>
__device__ __forceinline__ float HeadTerm(float dot, float key_scale, float rs, float w, float b, float acc) {
  const float x = kScaled ? dot * key_scale : dot;
  if constexpr (kRelu) {
    return fmaf(w, fmaxf(x * rs + b, 0.0f), acc);
  } else {
    return SigmoidHeadTerm(x, rs * kNegLog2e, b * kNegLog2e, w, acc);
  }
}

// Adds head column e of the mma outputs (c[u][e]: candidate g, c[u][2 + e]: candidate g + 8) to
// both candidates' sums of every tile, with that head's w and b.
template <int N, bool kRelu, bool kScaled>
__device__ __forceinline__ void AddHeadColumn(const float (&c)[N][4], int e, const float (&scale)[N][2], float rs,
                                              float w, float b, float (&acc)[N][2]) {
#pragma unroll
  for (int u = 0; u < N; ++u) {
    acc[u][0] = HeadTerm<kRelu, kScaled>(c[u][e], scale[u][0], rs, w, b, acc[u][0]);
    acc[u][1] = HeadTerm<kRelu, kScaled>(c[u][2 + e], scale[u][1], rs, w, b, acc[u][1]);
  }
}

// c[u] += keys of tile u × this lane's B column over all D_I channels and the three query parts
// (lo first). qw: the lane's head run in the split query (32-bit words, QueryHeadStride apart per
// head), part_words apart per part. A lane whose column is a head past n_heads passes head 0's run:
// that column's sums are never read, and real, finite values there keep the loads unconditional (no
// zeroing and predication at every k-step).
template <int D_I, int N>
__device__ __forceinline__ void MmaQueryParts(const KeyFragment<D_I> (&f)[N], const uint32_t* qw, int32_t part_words,
                                              float (&c)[N][4]) {
  const int t = threadIdx.x & 3;
#pragma unroll
  for (int part = kQueryParts - 1; part >= 0; --part) {  // lo, mid, hi
    const uint32_t* qp = qw + part * part_words + 4 * t;
#pragma unroll
    for (int p = 0; p < KeyShape<D_I>::kGroups; ++p) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        // Channels 8(4p + t) + 4h + {0, 1} and + {2, 3}: words 16p + 4t + 2h and + 1.
        uint32_t b0 = 0u, b1 = 0u;
        if (4 * p + t < KeyShape<D_I>::kChunks) {  // always, unless D_I = 16
          b0 = qp[16 * p + 2 * h];
          b1 = qp[16 * p + 2 * h + 1];
        }
#pragma unroll
        for (int u = 0; u < N; ++u) {
          const uint32_t(&a)[4] = f[u].a[p][h];
          MmaBf16(c[u], a[0], a[1], a[2], a[3], b0, b1);
        }
      }
    }
  }
}

// Scores of N tiles of 16 candidates for the row whose split query is q, w, b: out[u].x is tile
// u's candidate g, .y its candidate g + 8; every lane of the quad (lanes 4g … 4g+3) gets both. The
// query fragments are loaded once for all N tiles. scale[u]: the key scales of tile u's rows g and
// g+8 (fp8 keys, kScaled; bf16 keys pass 1 and kScaled false). kRelu: φ = relu, else sigmoid. All
// 32 lanes must call it together.
//   I = Σ_j w_j · φ(dot_j · rsqrt(D_I) + b_j): per lane its heads 2t, 2t+1 of each group of eight
//   in head order, then the quad's sum in a fixed xor order. A candidate's score depends only on
//   its key and the row (not on N or the tile it is in).
template <int D_I, int N, bool kRelu, bool kScaled>
__device__ __forceinline__ void TileScores(const KeyFragment<D_I> (&f)[N], const float (&scale)[N][2], const bf16* q,
                                           const float* w, const float* b, int32_t n_heads, float2 (&out)[N]) {
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const float rs = rsqrtf(static_cast<float>(D_I));
  const int32_t part_words = static_cast<int32_t>(QueryPartStride(n_heads, D_I) / 2);
  const uint32_t* qw = reinterpret_cast<const uint32_t*>(q);
  float acc[N][2];
#pragma unroll
  for (int u = 0; u < N; ++u) acc[u][0] = acc[u][1] = 0.0f;
  for (int nt = 0; nt * 8 < n_heads; ++nt) {
    const int head_b = nt * 8 + g;  // the head whose column this lane feeds
    float c[N][4];
#pragma unroll
    for (int u = 0; u < N; ++u) c[u][0] = c[u][1] = c[u][2] = c[u][3] = 0.0f;
    MmaQueryParts<D_I, N>(f, qw + (head_b < n_heads ? head_b : 0) * static_cast<int32_t>(QueryHeadStride(D_I) / 2),
                          part_words, c);
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int head = nt * 8 + 2 * t + e;
      if (head < n_heads) AddHeadColumn<N, kRelu, kScaled>(c, e, scale, rs, w[head], b[head], acc);
    }
  }
#pragma unroll
  for (int u = 0; u < N; ++u) {
    float lo = acc[u][0], hi = acc[u][1];
    lo += __shfl_xor_sync(0xffffffffu, lo, 1);
    hi += __shfl_xor_sync(0xffffffffu, hi, 1);
    lo += __shfl_xor_sync(0xffffffffu, lo, 2);
    hi += __shfl_xor_sync(0xffffffffu, hi, 2);
    out[u] = make_float2(lo, hi);
  }
}

// Heads a TileScoresPair call can take: its two rows share the mma's 8 head columns.
constexpr int kPairMaxHeads = 4;

// TileScores for two rows at once (n_heads ≤ kPairMaxHeads), filling the mma's 8 columns that a
// single row of ≤ 4 heads leaves half empty: column 4ρ + j is row ρ's head j (row 0: q0, w0, b0;
// row 1: q1, w1, b1), so one mma and one epilogue serve both rows. Lane (g, t) gets out[u] = the
// scores of tile u's candidates g (.x) and g + 8 (.y) for row t / 2 (lanes t = 0, 1: row 0; t =
// 2, 3: row 1). Bitwise equal to TileScores for each row: a lane accumulates heads 2(t % 2) and
// 2(t % 2) + 1 of its row in head order, as TileScores' lanes t = 0, 1 do, and the sum of the two
// lanes is the same single addition (TileScores adds the empty lanes' +0 after it, which changes
// no non-negative sum and no sigmoid sum). All 32 lanes must call it together.
template <int D_I, int N, bool kRelu, bool kScaled>
__device__ __forceinline__ void TileScoresPair(const KeyFragment<D_I> (&f)[N], const float (&scale)[N][2],
                                               const bf16* q0, const float* w0, const float* b0, const bf16* q1,
                                               const float* w1, const float* b1, int32_t n_heads, float2 (&out)[N]) {
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const float rs = rsqrtf(static_cast<float>(D_I));
  const int32_t part_words = static_cast<int32_t>(QueryPartStride(n_heads, D_I) / 2);
  const int head_b = g & 3;  // the head whose column this lane feeds, of row g / 4
  const uint32_t* qw = reinterpret_cast<const uint32_t*>(g < 4 ? q0 : q1) +
                       (head_b < n_heads ? head_b : 0) * static_cast<int32_t>(QueryHeadStride(D_I) / 2);
  float c[N][4];
#pragma unroll
  for (int u = 0; u < N; ++u) c[u][0] = c[u][1] = c[u][2] = c[u][3] = 0.0f;
  MmaQueryParts<D_I, N>(f, qw, part_words, c);
  // Column 2t + e is row t / 2's head 2(t % 2) + e.
  const float* w = t < 2 ? w0 : w1;
  const float* b = t < 2 ? b0 : b1;
  float acc[N][2];
#pragma unroll
  for (int u = 0; u < N; ++u) acc[u][0] = acc[u][1] = 0.0f;
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    const int head = 2 * (t & 1) + e;
    if (head < n_heads) AddHeadColumn<N, kRelu, kScaled>(c, e, scale, rs, w[head], b[head], acc);
  }
#pragma unroll
  for (int u = 0; u < N; ++u) {
    float lo = acc[u][0], hi = acc[u][1];
    lo += __shfl_xor_sync(0xffffffffu, lo, 1);
    hi += __shfl_xor_sync(0xffffffffu, hi, 1);
    out[u] = make_float2(lo, hi);
  }
}

// Where PrefillSelect's list of row r lives (kernels/indexer.h, IndexerScoresFiltered): in the
// row's own score region of n floats, from its first 8-byte boundary, (position, score bits) pairs,
// at most min(cap, pairs that fit) of them.
struct PrefillList {
  int2* entries;
  int32_t capacity;
};
__device__ __forceinline__ PrefillList PrefillListOf(float* region, int64_t n, int64_t cap) {
  const uintptr_t u = reinterpret_cast<uintptr_t>(region);
  const int64_t skip = (u & 7u) != 0 ? 1 : 0;  // floats are 4-byte aligned: at most one to skip
  const int64_t fit = (n - skip) / 2;
  return {reinterpret_cast<int2*>(region + skip), static_cast<int32_t>(fit < cap ? fit : cap)};
}

}  // namespace gsa::kernels::indexer_math
