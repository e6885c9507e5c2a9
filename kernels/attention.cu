// Gathered (paged, sparse or dense) attention for decode and token-level sparse prefill:
// flash-decoding with split-k. See kernels/attention.h for the contract.
//
// Kernel 1 (GatheredAttentionKernel<D, G>): grid (listed row, KV head, split), kThreads threads.
//   A block takes one KV head of one listed row and the entries [begin, end) of the row's list
//   that its split owns, and computes all query heads of that KV group over them:
//   - in chunks of kSlotChunk list entries, the block first resolves every entry's cache slot into
//     shared memory (one sel read and one block-table read per entry, all in parallel), then
//   - each warp takes tokens: a token's K row (D bf16 = 2·D bytes, contiguous) is read by
//     kLanes = D/8 lanes with one 16-byte load each, so a warp holds kSub = 32/kLanes tokens side by
//     side, and kUnroll such groups in flight (K and V loads all issued before the first use). Every
//     lane keeps the 8 channels it loaded of q (fp32, pre-scaled by scale·log2 e), and for each of
//     the group's heads an fp32 running max m, sum l and accumulator acc[8] (online softmax in
//     base 2). The K/V row is gathered once and used for all G heads of the group.
//   - the warp then merges its kSub token subgroups (xor shuffles, fixed order), the block merges its
//     warps in warp order through shared memory, and writes per query head either
//       (m, l, acc[D]) to the workspace (several splits; a split past the row's end writes an empty
//       partial m = -inf, l = 0, acc = 0), or
//       the normalised, gated bf16 output (one split).
//   G is the group size padded to 1, 2, 4 or 8 (padded heads get q = 0 and are never written).
// Kernel 2 (MergeSplitsKernel): grid (listed row, query head), D threads: merges every split in
//   split order, normalises, applies the output gate and writes bf16. On Hopper it is launched as
//   a programmatic dependent (PDL) of kernel 1 and waits for it with griddepcontrol.wait.
// Splits (host, ChooseSplits): enough to fill one wave of resident blocks (occupancy calculator ×
//   SMs) when rows × KV heads are fewer than that, each split ≥ kMinTokensPerSplit entries,
//   ≤ kMaxSplits, rows × splits ≤ kMaxSplitRows, and no more than the workspace holds.
// No atomics; every reduction has a fixed order, so a given launch is bitwise reproducible.
#include <algorithm>
#include <cstdint>
#include <cmath>

#include "kernels/attention.h"
#include "kernels/pdl.cuh"

namespace gsa::kernels {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
// List entries whose slots a block resolves at once into shared memory (int64 each: 4 KB).
constexpr int kSlotChunk = 512;
// Split-k limits (the workspace is sized from these, see GatheredAttentionWorkspaceBytes):
constexpr int kMaxSplits = 64;             // splits of one row
constexpr int64_t kMaxSplitRows = 1024;    // listed rows × splits, whenever splits > 1
constexpr int64_t kMinTokensPerSplit = 64; // a split gets at least this many list entries
constexpr int kMaxGroup = 8;               // n_heads / n_kv_heads
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kNegInf = -INFINITY;

// By value (std::min/max return references, which put operands in local memory on the device).
__host__ __device__ __forceinline__ int64_t Min64(int64_t x, int64_t y) { return x < y ? x : y; }
__host__ __device__ __forceinline__ int64_t Max64(int64_t x, int64_t y) { return x > y ? x : y; }

// Compile-time shape of the attention kernel for head size D and (padded) group size G.
template <int D, int G>
struct Shape {
  static_assert(D == 32 || D == 64 || D == 128 || D == 256, "d_head");
  static_assert(G == 1 || G == 2 || G == 4 || G == 8, "padded group");
  static constexpr int kLanes = D / 8;          // lanes per token: each loads 8 channels (16 bytes)
  static constexpr int kSub = 32 / kLanes;      // tokens side by side in one warp
  static constexpr int kUnroll = G <= 2 ? 8 : G <= 4 ? 4 : 2;  // token groups per warp in flight
  static constexpr int kTokensPerIter = kWarps * kSub * kUnroll;
  static_assert(kLanes >= 4 && kLanes <= 32 && 32 % kLanes == 0, "lanes per token");
};

// Host-chosen launch plan, identical for both kernels of a launch.
struct Plan {
  int32_t splits = 1;   // ≥ 1
  int32_t group = 1;    // n_heads / n_kv_heads (≤ G of the instantiation)
  int64_t chunk = 1;    // list entries per split (the last split takes the rest)
  float* ws_acc = nullptr;  // [num_row_ids, splits, n_heads, d_head]
  float* ws_m = nullptr;    // [num_row_ids, splits, n_heads]  running max (base-2 logits)
  float* ws_l = nullptr;    // [num_row_ids, splits, n_heads]  sum of 2^(s - m)
  // GatheredAttentionArgs::split_counters when the attention kernel merges (no merge kernel).
  uint32_t* counters = nullptr;  // [num_row_ids, n_kv_heads]
};

// Number of list entries of row r: position + 1 for dense rows, else sel_count clamped to
// [0, sel_stride] (0 when the row has no list). The three reads are independent (one round trip).
__device__ __forceinline__ int64_t RowTokenCount(const GatheredAttentionArgs& a, int32_t r) {
  const bool has_list = a.sel != nullptr && a.sel_count != nullptr;
  const uint8_t dense = a.rows.dense[r];
  const int64_t position = a.rows.position[r];
  const int64_t count = has_list ? a.sel_count[r] : 0;
  if (dense != 0) return Max64(0, position + 1);
  return Min64(Max64(count, 0), a.sel_stride);
}

__device__ __forceinline__ float ApplyGate(const GatheredAttentionArgs& a, int32_t r, int64_t col, float o) {
  if (a.gate_z != nullptr) {
    float z = a.gate_z[static_cast<int64_t>(r) * a.gate_stride + col];
    if (a.gate_bias != nullptr) z += a.gate_bias[col];
    o *= GateActF(a.gate_act, z);
  }
  return o;
}

__device__ __forceinline__ void StoreOut(const GatheredAttentionArgs& a, int32_t r, int32_t h, int32_t d, float o) {
  const int64_t col = static_cast<int64_t>(h) * a.d_head + d;
  o = ApplyGate(a, r, col, o);
  a.out[static_cast<int64_t>(r) * a.n_heads * a.d_head + col] = __float2bfloat16_rn(o);
}

// 8 packed bf16 (little-endian: element 0 in the low half of .x) → 8 fp32.
__device__ __forceinline__ void Bf16x8ToFloat(const uint4& v, float (&f)[8]) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

static_assert(kMaxSplits <= 64, "a warp holds two splits per lane");

// The merge weights of one (listed row, query head), by warp 0 of the block (lane l takes splits l
// and l + 32): s_w[s] = 2^(m_s − max m) for every split s < splits, and *s_inv = 1 / Σ l_s s_w[s]
// (0 when nothing was attended). p0 is the head's partial of split 0 (split s: p0 + s · n_heads).
// Fixed order: both merges (the kernel and the fused one) call it, so they agree bitwise.
__device__ __forceinline__ void SplitWeights(const Plan& p, int64_t p0, int32_t n_heads, int lane, float* s_w,
                                             float* s_inv) {
  const int splits = p.splits;
  const int s0 = lane, s1 = lane + 32;
  const int64_t i0 = p0 + static_cast<int64_t>(s0) * n_heads, i1 = p0 + static_cast<int64_t>(s1) * n_heads;
  const float m0 = s0 < splits ? __ldcg(p.ws_m + i0) : kNegInf;
  const float l0 = s0 < splits ? __ldcg(p.ws_l + i0) : 0.0f;
  const float m1 = s1 < splits ? __ldcg(p.ws_m + i1) : kNegInf;
  const float l1 = s1 < splits ? __ldcg(p.ws_l + i1) : 0.0f;
  float mx = fmaxf(m0, m1);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  const float mu = (mx == kNegInf) ? 0.0f : mx;
  const float w0 = exp2f(m0 - mu), w1 = exp2f(m1 - mu);  // 0 for empty / absent splits
  if (s0 < splits) s_w[s0] = w0;
  if (s1 < splits) s_w[s1] = w1;
  float sum = fmaf(l1, w1, l0 * w0);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  if (lane == 0) *s_inv = sum > 0.0f ? 1.0f / sum : 0.0f;
}

// Kernel 1's ending with split_counters: the block's partials are written; the last block of the
// (row, KV head) to get here merges every split of the group's heads (SplitWeights, then each
// channel summed over splits in split order, as MergeSplitsKernel) and resets the counter.
// Ordering as CUTLASS's semaphore: the block's barrier puts every thread's partials before thread
// 0's acq_rel increment (release: this block's partials; acquire, for the last block: every other
// block's), and the barrier after it puts that before the merge's reads. The group's heads are
// weighed at once (warp w takes heads w, w + kWarps, …) and their channels merged together.
template <int G>
__device__ __forceinline__ void MergeIfLast(const GatheredAttentionArgs& a, const Plan& p, int64_t li, int32_t r,
                                            int32_t kvh) {
  __shared__ bool s_last;
  __shared__ float s_w[G][kMaxSplits];
  __shared__ float s_inv[G];
  __syncthreads();
  uint32_t* counter = p.counters + li * a.n_kv_heads + kvh;
  if (threadIdx.x == 0) {
    uint32_t before;
    asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;" : "=r"(before) : "l"(counter) : "memory");
    s_last = before == static_cast<uint32_t>(p.splits - 1);
  }
  __syncthreads();
  if (!s_last) return;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  const int64_t p0 = li * p.splits * a.n_heads + static_cast<int64_t>(kvh) * p.group;  // head g: p0 + g
  for (int g = warp; g < p.group; g += kWarps) SplitWeights(p, p0 + g, a.n_heads, lane, s_w[g], &s_inv[g]);
  __syncthreads();
  for (int e = static_cast<int>(threadIdx.x); e < p.group * a.d_head; e += static_cast<int>(blockDim.x)) {
    const int g = e / a.d_head, d = e % a.d_head;
    float o = 0.0f;
    for (int j = 0; j < p.splits; ++j) {
      o = fmaf(s_w[g][j], __ldcg(p.ws_acc + (p0 + g + static_cast<int64_t>(j) * a.n_heads) * a.d_head + d), o);
    }
    StoreOut(a, r, kvh * p.group + g, d, o * s_inv[g]);
  }
  if (threadIdx.x == 0) *counter = 0;  // ready for the next launch
}

template <int D, int G>
__global__ void __launch_bounds__(kThreads) GatheredAttentionKernel(const GatheredAttentionArgs a, const Plan p) {
  using S = Shape<D, G>;
  constexpr int kLanes = S::kLanes;
  constexpr int kSub = S::kSub;
  constexpr int kUnroll = S::kUnroll;

  __shared__ int64_t s_slot[kSlotChunk];
  __shared__ float s_acc[kWarps][G][D];
  __shared__ float s_m[kWarps][G];
  __shared__ float s_l[kWarps][G];

  // Launched as a programmatic dependent (the launcher): everything below may read what the kernel
  // before wrote (the selection, row_skip), so wait for it first; the launch itself, and this
  // block's scheduling, overlapped that kernel's tail.
  PdlWaitForPrerequisites();
  const int64_t li = blockIdx.x;  // index into row_ids
  const int32_t kvh = static_cast<int32_t>(blockIdx.y);
  const int32_t split = static_cast<int32_t>(blockIdx.z);
  const int32_t r = a.row_ids[li];
  if (a.row_skip != nullptr && a.row_skip[r] != 0) return;  // whole CTA, before any barrier
  const int64_t n = RowTokenCount(a, r);
  const int64_t begin = Min64(static_cast<int64_t>(split) * p.chunk, n);
  const int64_t end = (split == p.splits - 1) ? n : Min64(n, begin + p.chunk);
  // A split past the row's entries (a short row in a launch split for longer ones) runs the same
  // code with an empty range: it writes an empty partial (m = -inf, l = 0, acc = 0), so the merge
  // reads every split without knowing the row's length.
  // The merge kernel (launched with programmatic stream serialization) may be scheduled now; it
  // waits for this whole grid's completion (griddepcontrol.wait) before reading anything.
  PdlLaunchDependents();

  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  const int sg = lane / kLanes;  // token subgroup within the warp
  const int cl = lane % kLanes;  // channels [8 cl, 8 cl + 8)

  // q of the group's heads, this lane's 8 channels, in fp32, scaled so that scores are log2-based.
  const float qscale = a.scale * kLog2e;
  float q[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
#pragma unroll
    for (int c = 0; c < 8; ++c) q[g][c] = 0.0f;
    if (g < p.group) {
      const int64_t h = static_cast<int64_t>(kvh) * p.group + g;
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(a.q + (static_cast<int64_t>(r) * a.n_heads + h) * D) + cl);
      Bf16x8ToFloat(raw, q[g]);
#pragma unroll
      for (int c = 0; c < 8; ++c) q[g][c] *= qscale;
    }
  }

  float m[G], l[G], acc[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = kNegInf;
    l[g] = 0.0f;
#pragma unroll
    for (int c = 0; c < 8; ++c) acc[g][c] = 0.0f;
  }

  const int32_t seq = a.rows.seq[r];
  const int64_t t_row = a.rows.position[r];
  const bool dense = a.rows.dense[r] != 0;
  const int32_t* sel_row = dense ? nullptr : a.sel + static_cast<int64_t>(r) * a.sel_stride;
  const int32_t bs = a.paged.block_size;
  const int32_t* table = a.paged.block_tables + static_cast<int64_t>(seq) * a.paged.max_blocks_per_seq;
  const int64_t kv_stride = static_cast<int64_t>(a.n_kv_heads) * D;  // elements per slot
  const bf16* k_base = a.k_cache + static_cast<int64_t>(kvh) * D + cl * 8;
  const bf16* v_base = a.v_cache + static_cast<int64_t>(kvh) * D + cl * 8;

  for (int64_t c0 = begin; c0 < end; c0 += kSlotChunk) {
    const int cn = static_cast<int>(Min64(kSlotChunk, end - c0));
    __syncthreads();  // every warp is done with the previous chunk's slots
    // Resolve the chunk's slots: all list reads, then all block-table reads, in flight together.
    constexpr int kPerThread = kSlotChunk / kThreads;
    static_assert(kSlotChunk % kThreads == 0, "slot chunk");
    int64_t pos[kPerThread];
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const int i = static_cast<int>(threadIdx.x) + j * kThreads;
      pos[j] = -1;
      if (i < cn) pos[j] = dense ? c0 + i : static_cast<int64_t>(sel_row[c0 + i]);
    }
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const int i = static_cast<int>(threadIdx.x) + j * kThreads;
      int64_t slot = -1;  // an out-of-range position (caller bug) is skipped, never read
      if (pos[j] >= 0 && pos[j] <= t_row) {  // then 0 ≤ pos < 2^31: 32-bit division
        const int32_t p32 = static_cast<int32_t>(pos[j]);
        const int32_t blk = p32 / bs, off = p32 % bs;
        if (blk < a.paged.max_blocks_per_seq) slot = static_cast<int64_t>(table[blk]) * bs + off;
      }
      if (i < cn) s_slot[i] = slot;
    }
    __syncthreads();

    // Block-uniform trip count: every lane reaches every shuffle below.
    for (int i0 = 0; i0 < cn; i0 += S::kTokensPerIter) {
      uint4 kraw[kUnroll], vraw[kUnroll];
      bool valid[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int i = i0 + (u * kWarps + warp) * kSub + sg;
        const int64_t slot = i < cn ? s_slot[i] : -1;
        valid[u] = slot >= 0;
        if (valid[u]) {
          kraw[u] = __ldg(reinterpret_cast<const uint4*>(k_base + slot * kv_stride));
          vraw[u] = __ldg(reinterpret_cast<const uint4*>(v_base + slot * kv_stride));
        } else {
          kraw[u] = make_uint4(0u, 0u, 0u, 0u);
          vraw[u] = make_uint4(0u, 0u, 0u, 0u);
        }
      }
      // Scores (base 2), reduced over the token's kLanes lanes: every lane of the subgroup ends
      // with the same value (xor butterfly).
      float s[kUnroll][G];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        float kf[8];
        Bf16x8ToFloat(kraw[u], kf);
#pragma unroll
        for (int g = 0; g < G; ++g) {
          float dot = 0.0f;
#pragma unroll
          for (int c = 0; c < 8; ++c) dot = fmaf(q[g][c], kf[c], dot);
#pragma unroll
          for (int off = 1; off < kLanes; off <<= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
          s[u][g] = valid[u] ? dot : kNegInf;
        }
      }
      // Online softmax update; m_use = 0 while nothing valid has been seen (avoids -inf - -inf).
      float m_use[G];
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float mx = m[g];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) mx = fmaxf(mx, s[u][g]);
        m_use[g] = (mx == kNegInf) ? 0.0f : mx;
        const float alpha = exp2f(m[g] - m_use[g]);  // 0 when m[g] = -inf
        l[g] *= alpha;
#pragma unroll
        for (int c = 0; c < 8; ++c) acc[g][c] *= alpha;
        m[g] = mx;
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        float vf[8];
        Bf16x8ToFloat(vraw[u], vf);
#pragma unroll
        for (int g = 0; g < G; ++g) {
          const float pr = exp2f(s[u][g] - m_use[g]);  // 0 for an invalid token
          l[g] += pr;
#pragma unroll
          for (int c = 0; c < 8; ++c) acc[g][c] = fmaf(pr, vf[c], acc[g][c]);
        }
      }
    }
  }

  // Merge the warp's token subgroups (lanes cl, cl + kLanes, …): xor butterfly, fixed order;
  // subgroup 0's result is the one used.
#pragma unroll
  for (int off = kLanes; off < 32; off <<= 1) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m[g], off);
      const float l2 = __shfl_xor_sync(0xffffffffu, l[g], off);
      const float mx = fmaxf(m[g], m2);
      const float mu = (mx == kNegInf) ? 0.0f : mx;
      const float a1 = exp2f(m[g] - mu), a2 = exp2f(m2 - mu);
      l[g] = l[g] * a1 + l2 * a2;
#pragma unroll
      for (int c = 0; c < 8; ++c) {
        const float acc2 = __shfl_xor_sync(0xffffffffu, acc[g][c], off);
        acc[g][c] = acc[g][c] * a1 + acc2 * a2;
      }
      m[g] = mx;
    }
  }
  if (sg == 0) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
#pragma unroll
      for (int c = 0; c < 8; ++c) s_acc[warp][g][cl * 8 + c] = acc[g][c];
      if (cl == 0) {
        s_m[warp][g] = m[g];
        s_l[warp][g] = l[g];
      }
    }
  }
  __syncthreads();

  // Merge the warps in warp order; one thread per (head of the group, channel).
  const bool direct = p.splits == 1;
  for (int e = static_cast<int>(threadIdx.x); e < p.group * D; e += kThreads) {
    const int g = e / D, d = e % D;
    float mx = kNegInf;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, s_m[w][g]);
    const float mu = (mx == kNegInf) ? 0.0f : mx;
    float sum = 0.0f, o = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float wt = exp2f(s_m[w][g] - mu);
      sum = fmaf(s_l[w][g], wt, sum);
      o = fmaf(s_acc[w][g][d], wt, o);
    }
    const int32_t h = kvh * p.group + g;
    if (direct) {
      StoreOut(a, r, h, d, sum > 0.0f ? o / sum : 0.0f);
    } else {
      const int64_t pi = (li * p.splits + split) * a.n_heads + h;
      p.ws_acc[pi * D + d] = o;
      if (d == 0) {
        p.ws_m[pi] = mx;
        p.ws_l[pi] = sum;
      }
    }
  }
  if (!direct && p.counters != nullptr) MergeIfLast<G>(a, p, li, r, kvh);
}

// Grid (listed row, query head); blockDim.x = d_head (≥ 32), one thread per channel. Reads every
// split's partial (empty ones have m = -inf, l = 0, acc = 0 and weigh 0). Latency: the first
// kMergeBatch partials of the thread's channel are loaded before the weights are known, while warp
// 0 loads all (m, l) at once.
constexpr int kMergeBatch = 16;

__global__ void __launch_bounds__(256) MergeSplitsKernel(const GatheredAttentionArgs a, const Plan p) {
  // Launched as a programmatic dependent of the attention kernel: wait until that grid has
  // completed and its writes are visible. (Without the launch attribute this returns at once.)
  PdlWaitForPrerequisites();
  // The next products (o_proj, kernels::SmallLinear) are programmatic dependents: they may start
  // streaming their weights now.
  PdlLaunchDependents();
  __shared__ float s_w[kMaxSplits];
  __shared__ float s_inv;
  const int64_t li = blockIdx.x;
  const int32_t h = static_cast<int32_t>(blockIdx.y);
  const int32_t r = a.row_ids[li];
  if (a.row_skip != nullptr && a.row_skip[r] != 0) return;  // no partials were written for it
  const int splits = p.splits;                       // 2 ≤ splits ≤ kMaxSplits
  const int64_t p0 = li * splits * a.n_heads + h;    // partial of split s: p0 + s * n_heads
  const int d = static_cast<int>(threadIdx.x);
  const bool has_d = d < a.d_head;

  float v[kMergeBatch];
#pragma unroll
  for (int j = 0; j < kMergeBatch; ++j) {
    v[j] = (has_d && j < splits) ? p.ws_acc[(p0 + static_cast<int64_t>(j) * a.n_heads) * a.d_head + d] : 0.0f;
  }

  if (threadIdx.x < 32) SplitWeights(p, p0, a.n_heads, static_cast<int>(threadIdx.x), s_w, &s_inv);
  __syncthreads();
  if (!has_d) return;  // after the barrier

  float o = 0.0f;
#pragma unroll
  for (int j = 0; j < kMergeBatch; ++j) {
    if (j < splits) o = fmaf(s_w[j], v[j], o);
  }
  for (int b = kMergeBatch; b < splits; b += kMergeBatch) {
#pragma unroll
    for (int j = 0; j < kMergeBatch; ++j) {
      v[j] = b + j < splits ? p.ws_acc[(p0 + static_cast<int64_t>(b + j) * a.n_heads) * a.d_head + d] : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kMergeBatch; ++j) {
      if (b + j < splits) o = fmaf(s_w[b + j], v[j], o);
    }
  }
  StoreOut(a, r, h, d, o * s_inv);
}

size_t PartialBytesPerRowSplit(int32_t n_heads, int32_t d_head) {
  return static_cast<size_t>(n_heads) * (static_cast<size_t>(d_head) + 2) * sizeof(float);
}

int PaddedGroup(int group) { return group <= 1 ? 1 : group <= 2 ? 2 : group <= 4 ? 4 : 8; }

// Splits per row: as many as keep the whole grid (rows × KV heads × splits blocks) within one
// wave of resident blocks (`resident` = blocks per SM × SMs, from the occupancy calculator), so
// one when rows × KV heads already fill half a wave or more; at least kMinTokensPerSplit entries
// per split, at most kMaxSplits, and rows × splits ≤ kMaxSplitRows.
int ChooseSplits(int64_t num_row_ids, int32_t n_kv_heads, int64_t max_tokens, int64_t resident) {
  if (num_row_ids <= 0 || num_row_ids * 2 > kMaxSplitRows) return 1;
  const int64_t blocks_per_split = num_row_ids * n_kv_heads;
  int64_t s = std::max<int64_t>(resident, 1) / blocks_per_split;
  s = std::min<int64_t>(s, std::max<int64_t>(1, max_tokens / kMinTokensPerSplit));
  s = std::min<int64_t>(s, kMaxSplits);
  s = std::min<int64_t>(s, kMaxSplitRows / num_row_ids);
  return static_cast<int>(std::max<int64_t>(s, 1));
}

// Blocks of GatheredAttentionKernel<D, G> one multiprocessor of the current device holds.
template <int D, int G>
cudaError_t ResidentBlocksPerSm(int* blocks) {
  int n = 0;
  const cudaError_t err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, GatheredAttentionKernel<D, G>, kThreads, 0);
  if (err != cudaSuccess) return err;
  *blocks = std::max(n, 1);
  return cudaSuccess;
}

// Plans the launch (splits, workspace layout) and enqueues the attention kernel and, with several
// splits, the merge kernel.
template <int D, int G>
cudaError_t Launch(const GatheredAttentionArgs& a, int device, cudaStream_t stream) {
  int sm_count = 0, per_sm = 0;
  bool pdl = false;
  cudaError_t err = cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  err = ProgrammaticLaunchSupported(device, &pdl);
  if (err != cudaSuccess) return err;
  per_sm = a.resident_blocks_per_sm;
  if (per_sm <= 0) {
    err = ResidentBlocksPerSm<D, G>(&per_sm);
    if (err != cudaSuccess) return err;
  }

  Plan p;
  p.group = a.n_heads / a.n_kv_heads;
  int splits = ChooseSplits(a.num_row_ids, a.n_kv_heads, a.max_tokens,
                            static_cast<int64_t>(sm_count) * per_sm);
  if (splits > 1) {
    // Never more partials than the workspace holds (a smaller workspace only means fewer splits).
    const size_t per_row_split = PartialBytesPerRowSplit(a.n_heads, a.d_head);
    const size_t fit = a.workspace == nullptr ? 0
                                              : a.workspace_bytes / per_row_split / static_cast<size_t>(a.num_row_ids);
    splits = static_cast<int>(std::min<size_t>(static_cast<size_t>(splits), fit));
    if (splits < 2) splits = 1;
  }
  p.splits = splits;
  const int64_t tokens = std::max<int64_t>(a.max_tokens, 1);
  p.chunk = (tokens + splits - 1) / splits;
  if (splits > 1) {
    const int64_t partials = a.num_row_ids * splits * a.n_heads;
    p.ws_acc = static_cast<float*>(a.workspace);
    p.ws_m = p.ws_acc + partials * a.d_head;
    p.ws_l = p.ws_m + partials;
    p.counters = a.split_counters;
  }

  const dim3 grid(static_cast<unsigned>(a.num_row_ids), static_cast<unsigned>(a.n_kv_heads),
                  static_cast<unsigned>(p.splits));
  // A programmatic dependent of the kernel before it (Hopper and later): its launch overlaps that
  // kernel's tail (in decode, the fused selection's last phases); it waits before reading.
  err = LaunchProgrammaticDependent(GatheredAttentionKernel<D, G>, grid, dim3(kThreads), stream, pdl, a, p);
  if (err != cudaSuccess || splits == 1 || p.counters != nullptr) return err;

  // The merge kernel is launched as a programmatic dependent (Hopper and later) so that its launch
  // overlaps the attention kernel's tail; it waits for the attention grid before reading.
  return LaunchProgrammaticDependent(MergeSplitsKernel,
                                     dim3(static_cast<unsigned>(a.num_row_ids), static_cast<unsigned>(a.n_heads)),
                                     dim3(static_cast<unsigned>(a.d_head)), stream, pdl, a, p);
}

template <int D>
cudaError_t LaunchForGroup(const GatheredAttentionArgs& a, int device, cudaStream_t stream) {
  switch (PaddedGroup(a.n_heads / a.n_kv_heads)) {
    case 1: return Launch<D, 1>(a, device, stream);
    case 2: return Launch<D, 2>(a, device, stream);
    case 4: return Launch<D, 4>(a, device, stream);
    default: return Launch<D, 8>(a, device, stream);
  }
}

}  // namespace

namespace {
template <int D>
cudaError_t ResidentForGroup(int32_t group, int32_t* blocks) {
  int n = 0;
  cudaError_t err = cudaSuccess;
  switch (PaddedGroup(group)) {
    case 1: err = ResidentBlocksPerSm<D, 1>(&n); break;
    case 2: err = ResidentBlocksPerSm<D, 2>(&n); break;
    case 4: err = ResidentBlocksPerSm<D, 4>(&n); break;
    default: err = ResidentBlocksPerSm<D, 8>(&n); break;
  }
  if (err == cudaSuccess) *blocks = n;
  return err;
}
}  // namespace

cudaError_t GatheredAttentionResidentBlocks(int32_t d_head, int32_t group, int32_t* blocks) {
  if (group < 1 || group > kMaxGroup || blocks == nullptr) return cudaErrorInvalidValue;
  switch (d_head) {
    case 32: return ResidentForGroup<32>(group, blocks);
    case 64: return ResidentForGroup<64>(group, blocks);
    case 128: return ResidentForGroup<128>(group, blocks);
    case 256: return ResidentForGroup<256>(group, blocks);
    default: return cudaErrorInvalidValue;
  }
}

size_t GatheredAttentionWorkspaceBytes(int64_t max_row_ids, int32_t n_heads, int32_t d_head) {
  if (max_row_ids <= 0 || n_heads <= 0 || d_head <= 0) return 0;
  const int64_t row_splits =
      max_row_ids >= kMaxSplitRows ? kMaxSplitRows : std::min<int64_t>(max_row_ids * kMaxSplits, kMaxSplitRows);
  return static_cast<size_t>(row_splits) * PartialBytesPerRowSplit(n_heads, d_head);
}

cudaError_t GatheredAttention(const GatheredAttentionArgs& a, cudaStream_t stream) {
  if (a.num_row_ids <= 0) return cudaSuccess;
  const bool d_ok = a.d_head == 32 || a.d_head == 64 || a.d_head == 128 || a.d_head == 256;
  if (!d_ok || a.n_heads <= 0 || a.n_kv_heads <= 0 || a.n_heads % a.n_kv_heads != 0 ||
      a.n_heads / a.n_kv_heads > kMaxGroup || a.n_kv_heads > 65535 || a.n_heads > 65535 ||
      a.num_row_ids > 0x7fffffff || a.paged.block_size <= 0 || a.paged.max_blocks_per_seq <= 0 ||
      !(a.scale > 0.0f) || !std::isfinite(a.scale)) {
    return cudaErrorInvalidValue;
  }
  if (a.q == nullptr || a.k_cache == nullptr || a.v_cache == nullptr || a.out == nullptr || a.row_ids == nullptr ||
      a.paged.block_tables == nullptr || a.rows.seq == nullptr || a.rows.position == nullptr ||
      a.rows.dense == nullptr || !Aligned16(a.q) || !Aligned16(a.k_cache) || !Aligned16(a.v_cache)) {
    return cudaErrorInvalidValue;
  }
  if (a.split_counters != nullptr &&
      a.split_counter_count < static_cast<size_t>(a.num_row_ids) * static_cast<size_t>(a.n_kv_heads)) {
    return cudaErrorInvalidValue;
  }

  int device = 0;
  const cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  switch (a.d_head) {
    case 32: return LaunchForGroup<32>(a, device, stream);
    case 64: return LaunchForGroup<64>(a, device, stream);
    case 128: return LaunchForGroup<128>(a, device, stream);
    default: return LaunchForGroup<256>(a, device, stream);
  }
}

}  // namespace gsa::kernels
