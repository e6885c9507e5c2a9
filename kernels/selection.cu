// Token selection kernels (kernels/selection.h): per-row score statistics, k_t per row with the
// per-sequence running variance sum, and exact top-k with the tie rule of MODEL.md.
//
// Top-k design (both paths compute the same exact function, so results are bitwise identical):
//  - Every score maps to an order-preserving uint32 key (OrderKey): −0 → +0 and NaN → −inf first,
//    so equal keys ⇔ scores the CPU oracle treats as equal.
//  - Radix select of the k-th largest key, most significant digit first, in 3 passes of 11/11/10
//    bits. The state (mask, prefix, kneed) describes the threshold found so far: keys with
//    (key & mask) > prefix are certainly selected ("gt"); among keys with (key & mask) == prefix
//    ("eq"), kneed more are needed. A pass histograms the eq keys by their next digit, picks the
//    digit bucket that holds the kneed-th largest and refines the state. It stops early once every
//    eq key is needed (bucket count == kneed); after the last pass mask = ~0 and prefix is the key.
//    Invariant: #gt = kk − kneed, where kk = min(k, n).
//  - Ordered compaction: walk positions from the highest down ("descending index" j = n − 1 − p);
//    a position is selected if gt, or eq and fewer than kneed eq positions come before it in that
//    walk (the tie rule: later positions first). Its output slot is
//      #gt before it + min(#eq before it, kneed),
//    so the output comes out sorted by position descending without a sort. Counts "before" come
//    from warp ballots + a block scan per tile (single block) and, in the multi-block path, from
//    per-block counts summed over the preceding blocks.
//  - Single-block path: one block per row does everything (histograms in shared memory).
//  - Multi-block path (few long rows): each row split over many blocks; one kernel per radix pass
//    (per-block shared histograms added into a global per-row histogram with integer atomics, which
//    is order-independent; the last block to finish, by an atomic ticket, picks the digit and stores
//    the next state), then a counting kernel and a writing kernel. No kernel waits for another
//    block, so nothing assumes co-residency.
#include "kernels/selection.h"

#include <algorithm>
#include <cstdint>

#include "kernels/device_caps.h"
#include "kernels/indexer_math.cuh"
#include "kernels/pdl.cuh"

namespace gsa::kernels {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;

// ---- Radix select constants --------------------------------------------------------------------
constexpr int kRadixBits = 11;
constexpr int kRadix = 1 << kRadixBits;  // histogram bins (the 10-bit pass uses the lower half)
constexpr int kNumPasses = 3;

__host__ __device__ constexpr int PassShift(int p) { return p == 0 ? 21 : (p == 1 ? 10 : 0); }
__host__ __device__ constexpr uint32_t PassDigitMask(int p) { return p == 2 ? 0x3FFu : 0x7FFu; }

// Single-block path.
constexpr int kSbThreads = 512;
constexpr int kSbItems = 8;  // per thread per compaction tile: a tile is 4096 positions

// Multi-block path.
constexpr int kMbThreads = 256;
constexpr int kMbItems = 4;                    // compaction tile: 1024 positions
constexpr int64_t kMbMinCandidates = 16384;    // below this one block per row is fast enough
constexpr int64_t kMbMaxRows = 64;             // above this, one block per row fills the GPU
constexpr int64_t kMbSegMin = 1024;            // fewest positions per block (per row)
constexpr int64_t kMbMaxGridBlocks = 1024;     // blocks per row × rows, at most (also per row)

// Per-row workspace layout of the multi-block path, in uint32 words.
constexpr int64_t kWsHistOff = 0;                                    // [kNumPasses][kRadix]
constexpr int64_t kWsCounterOff = kWsHistOff + kNumPasses * kRadix;  // [kNumPasses] tickets (+pad)
constexpr int64_t kWsStateOff = kWsCounterOff + 4;                   // [kNumPasses + 1][4]
constexpr int64_t kWsCountsOff = kWsStateOff + 4 * (kNumPasses + 1); // [nb][2] (gt, eq) per block
static_assert(kNumPasses <= 4, "counter area holds 4 words");

__host__ __device__ constexpr int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks per row the workspace must allow for rows of up to `max_candidates`.
int64_t MbMaxBlocksPerRow(int64_t max_candidates) {
  const int64_t nb = CeilDiv(max_candidates, kMbSegMin);
  return nb < 1 ? 1 : (nb > kMbMaxGridBlocks ? kMbMaxGridBlocks : nb);
}

int64_t MbRowWords(int64_t nb_max) {
  const int64_t words = kWsCountsOff + 2 * nb_max;
  return CeilDiv(words, 64) * 64;  // 256-byte aligned rows
}

// ---- Score sources ---------------------------------------------------------------------------
// Where a kernel reads a row's scores from: src(p) is the score of position p.
struct GlobalScores {  // written by an earlier kernel: read-only path
  const float* p;
  __device__ __forceinline__ float operator()(int64_t i) const { return __ldg(p + i); }
};
struct CoherentScores {  // written earlier in the same kernel (by this block): through L2
  const float* p;
  __device__ __forceinline__ float operator()(int64_t i) const { return __ldcg(p + i); }
};
struct SharedScores {  // positions [base, base + size) held in shared memory
  const float* s;
  int64_t base;
  __device__ __forceinline__ float operator()(int64_t i) const { return s[i - base]; }
};

// ---- Keys --------------------------------------------------------------------------------------

// Order-preserving key: a > b (as the CPU oracle compares scores, −0 == +0, NaN as −inf) ⇔
// OrderKey(a) > OrderKey(b), and equal scores ⇔ equal keys. Bit operations only (no FTZ effects).
__device__ __forceinline__ uint32_t OrderKey(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) u = 0xFF800000u;  // NaN → −inf
  if (u == 0x80000000u) u = 0u;                          // −0 → +0
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// OrderKey(f) ≥ key as one float comparison: f ≥ the smallest score whose key reaches `key`. Keys
// are dense in the uint32 order except −0's (never a key: −0 → +0) and NaN's (→ −inf), so: a
// threshold at or below −inf's key passes everything (NaN included); one above +inf's passes
// nothing; −0's pattern means f ≥ +0 (and −0 ≥ +0 holds as floats, as its key says); any other
// inverts to a non-NaN float F, and for non-NaN f, OrderKey(f) ≥ key ⇔ f ≥ F; a NaN f fails, as
// its key (−inf's) is below key.
struct KeyAtLeast {
  float bound;
  int mode;  // 0: compare with bound, 1: everything passes, 2: nothing passes
  __device__ __forceinline__ explicit KeyAtLeast(uint32_t key) {
    const uint32_t u = (key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key;  // OrderKey's inverse
    bound = 0.0f;
    if (key <= OrderKey(-__int_as_float(0x7F800000))) {
      mode = 1;
    } else if (key > OrderKey(__int_as_float(0x7F800000))) {
      mode = 2;
    } else {
      mode = 0;
      bound = u == 0x80000000u ? 0.0f : __uint_as_float(u);
    }
  }
  __device__ __forceinline__ bool operator()(float f) const { return mode == 0 ? f >= bound : mode == 1; }
};

// The radix-select state; see the file comment.
struct SelectState {
  uint32_t mask;
  uint32_t prefix;
  int32_t kneed;
  int32_t done;
};

__device__ __forceinline__ SelectState InitState(int32_t kk, int64_t n) {
  SelectState s;
  s.mask = 0u;
  s.prefix = 0u;
  s.kneed = kk;
  // k ≥ n: every position; with mask 0 every key is "eq" and all n are needed.
  s.done = (static_cast<int64_t>(kk) >= n) ? 1 : 0;
  return s;
}

// One chunk row of a top-k launch, validated.
struct TopKRow {
  const float* scores;  // scores of positions 0 … n-1
  int64_t n;            // position + 1
  int32_t kk;           // positions to write: min(k, n, sel_stride)
  int32_t* out;         // sel + r * sel_stride
};

// False for rows that write nothing: dense rows, and (contract violations, skipped defensively)
// k ≤ 0 or a negative position.
__device__ __forceinline__ bool LoadTopKRow(const ScoreChunk& chunk, const RowInfo& rows, const int32_t* k,
                                            int32_t* sel, int64_t sel_stride, int64_t chunk_row, TopKRow* row) {
  const int64_t r = chunk.row_begin + chunk_row;
  if (rows.dense[r] != 0) return false;
  const int64_t n = static_cast<int64_t>(rows.position[r]) + 1;
  int64_t kk = k[r];
  if (n <= 0 || kk <= 0) return false;
  if (kk > n) kk = n;
  if (kk > sel_stride) kk = sel_stride;  // contract violation; never write past the row
  row->scores = chunk.scores + chunk.score_offset[chunk_row];
  row->n = n;
  row->kk = static_cast<int32_t>(kk);
  row->out = sel + r * sel_stride;
  return true;
}

// ---- Block primitives (blockDim.x must equal NT) -----------------------------------------------

// Exclusive prefix sum of v over threads in threadIdx order; *total = the sum over the block.
// Contains two __syncthreads (all threads must call it); s_warp: [NT / 32]. T: int32_t or int64_t.
template <int NT, typename T>
__device__ __forceinline__ T BlockExclusiveSum(T v, T* s_warp, T* total) {
  static_assert(NT % 32 == 0 && NT <= 1024, "block size");
  constexpr int kWarps = NT / 32;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  T incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const T y = __shfl_up_sync(kFullMask, incl, o);
    if (lane >= o) incl += y;
  }
  if (lane == 31) s_warp[warp] = incl;
  __syncthreads();
  T before = 0, all = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    const T x = s_warp[w];
    if (w < warp) before += x;
    all += x;
  }
  __syncthreads();  // s_warp may be reused after return
  *total = all;
  return before + incl - v;
}

// Histogram into s_hist of the keys of positions [p0, p1) with (key & mask) == prefix, by digit
// (key >> shift) & dmask. Threads (tid of nthreads) take positions p0 + tid + q·nthreads, four
// loads in flight. Shared-memory integer atomics: the result does not depend on order.
template <typename Src>
__device__ __forceinline__ void HistogramRange(const Src& scores, int64_t p0, int64_t p1,
                                               uint32_t mask, uint32_t prefix, int shift, uint32_t dmask,
                                               int32_t* s_hist, int tid, int nthreads) {
  constexpr int kUnroll = 4;
  const int64_t step = static_cast<int64_t>(nthreads);
  for (int64_t base = p0 + tid; base < p1; base += step * kUnroll) {
    float v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t p = base + u * step;
      v[u] = p < p1 ? scores(p) : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t p = base + u * step;
      if (p < p1) {
        const uint32_t key = OrderKey(v[u]);
        if ((key & mask) == prefix) atomicAdd(&s_hist[(key >> shift) & dmask], 1);
      }
    }
  }
}

// AdvanceState (below) with the histogram already in registers: c[i] = the count of digit
// kRadix-1 - (threadIdx.x·B + i), B = kRadix / NT (thread t owns bins in descending digit order,
// so the exclusive sum over threads is the number of eq keys with a larger digit). Ends with a
// __syncthreads after s_result is written.
template <int NT>
__device__ SelectState AdvanceStateFromCounts(SelectState st, int pass, const int32_t (&c)[kRadix / NT],
                                              int32_t* s_warp, int32_t* s_result) {
  static_assert(kRadix % NT == 0, "bins per thread");
  constexpr int kBinsPerThread = kRadix / NT;
  const int tid = threadIdx.x;
  int32_t local = 0;
#pragma unroll
  for (int i = 0; i < kBinsPerThread; ++i) local += c[i];
  if (tid == 0) s_result[0] = -1;  // "not found" unless a thread finds the bucket below
  int32_t total;
  int32_t running = BlockExclusiveSum<NT>(local, s_warp, &total);  // barriers order the write above
  const int32_t kneed = st.kneed;
#pragma unroll
  for (int i = 0; i < kBinsPerThread; ++i) {
    if (running < kneed && kneed <= running + c[i]) {  // exactly one (thread, i) satisfies this
      s_result[0] = kRadix - 1 - (tid * kBinsPerThread + i);
      s_result[1] = running;
      s_result[2] = c[i];
    }
    running += c[i];
  }
  __syncthreads();
  const int32_t digit = s_result[0];
  const int32_t above = s_result[1];
  const int32_t count = s_result[2];
  // s_result is written again only in the next AdvanceState, after at least two more barriers.
  if (digit < 0) {
    // Unreachable while the invariant (eq count ≥ kneed) holds; keep the state usable.
    st.done = 1;
    return st;
  }
  const int shift = PassShift(pass);
  st.prefix |= static_cast<uint32_t>(digit) << shift;
  st.mask |= PassDigitMask(pass) << shift;
  st.kneed = kneed - above;
  st.done = (count == st.kneed || pass == kNumPasses - 1) ? 1 : 0;
  return st;
}

// Given the complete histogram of pass p in s_hist (visible to all threads: caller synced after
// filling it), finds the digit bucket holding the kneed-th largest eq key and returns the refined
// state. All threads must call it; all get the same result. s_warp: [NT/32]; s_result: [3].
// Ends with a __syncthreads after s_result is written; s_hist is only read before the first
// internal barrier, so the caller may overwrite it after return.
template <int NT>
__device__ SelectState AdvanceState(SelectState st, int pass, const int32_t* s_hist, int32_t* s_warp,
                                    int32_t* s_result) {
  int32_t c[kRadix / NT];
#pragma unroll
  for (int i = 0; i < kRadix / NT; ++i) c[i] = s_hist[kRadix - 1 - (static_cast<int>(threadIdx.x) * (kRadix / NT) + i)];
  return AdvanceStateFromCounts<NT>(st, pass, c, s_warp, s_result);
}

// Ordered compaction over descending indices [j_begin, j_end) of a row (position = n-1-j), with
// carry_g / carry_e the gt / eq counts of all descending indices before j_begin. Writes each
// selected position p to out[#gt before + min(#eq before, kneed)] (as pos_of(p): index p of the
// scanned scores may stand for another position, as in TopKSampledKernel's buffer). Tiles of
// NT*ITEMS: warp w takes the w-th run of 32*ITEMS indices, in ITEMS sub-rows of 32 lanes
// (coalesced loads, descending addresses). All threads must call it with identical scalar
// arguments (loop and break uniform).
// s_tot: [2 buffers][gt, eq][NT/32], double-buffered so one barrier per tile suffices.
struct IdentityPos {  // index p of the scanned scores is position p
  __device__ __forceinline__ int32_t operator()(int64_t p) const { return static_cast<int32_t>(p); }
};

template <int NT, int ITEMS, typename Src, typename PosOf = IdentityPos>
__device__ void OrderedCompact(const Src& scores, int64_t n, int64_t j_begin, int64_t j_end,
                               const SelectState& st, int32_t carry_g, int32_t carry_e, int32_t* __restrict__ out,
                               int32_t out_limit, int32_t (*s_tot)[2][NT / 32], PosOf pos_of = PosOf{}) {
  constexpr int kWarps = NT / 32;
  constexpr int64_t kTile = static_cast<int64_t>(NT) * ITEMS;
  constexpr int kWarpSpan = 32 * ITEMS;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const uint32_t lt_mask = (1u << lane) - 1u;
  const int32_t kneed = st.kneed;
  const int32_t cnt_gt = out_limit - kneed;  // #gt over the whole row (invariant)
  int buf = 0;
  for (int64_t tile = j_begin; tile < j_end; tile += kTile) {
    if (carry_g >= cnt_gt && carry_e >= kneed) break;  // everything selected has been written
    const int64_t j0 = tile + static_cast<int64_t>(warp) * kWarpSpan + lane;
    float v[ITEMS];
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int64_t j = j0 + i * 32;
      v[i] = j < j_end ? scores(n - 1 - j) : 0.0f;
    }
    uint32_t bg[ITEMS], be[ITEMS];
    int32_t wg = 0, we = 0;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int64_t j = j0 + i * 32;
      const uint32_t km = OrderKey(v[i]) & st.mask;
      const bool valid = j < j_end;
      bg[i] = __ballot_sync(kFullMask, valid && km > st.prefix);
      be[i] = __ballot_sync(kFullMask, valid && km == st.prefix);
      wg += __popc(bg[i]);
      we += __popc(be[i]);
    }
    if (lane == 0) {
      s_tot[buf][0][warp] = wg;
      s_tot[buf][1][warp] = we;
    }
    __syncthreads();
    int32_t pre_g = 0, pre_e = 0, tot_g = 0, tot_e = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const int32_t xg = s_tot[buf][0][w];
      const int32_t xe = s_tot[buf][1][w];
      if (w < warp) {
        pre_g += xg;
        pre_e += xe;
      }
      tot_g += xg;
      tot_e += xe;
    }
    int32_t run_g = carry_g + pre_g;
    int32_t run_e = carry_e + pre_e;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const bool gt = ((bg[i] >> lane) & 1u) != 0;
      const bool eq = ((be[i] >> lane) & 1u) != 0;
      const int32_t g_before = run_g + __popc(bg[i] & lt_mask);
      const int32_t e_before = run_e + __popc(be[i] & lt_mask);
      int32_t idx = -1;
      if (gt) {
        idx = g_before + min(e_before, kneed);
      } else if (eq && e_before < kneed) {
        idx = g_before + e_before;
      }
      if (idx >= 0 && idx < out_limit) {
        const int64_t j = j0 + i * 32;
        out[idx] = pos_of(n - 1 - j);
      }
      run_g += __popc(bg[i]);
      run_e += __popc(be[i]);
    }
    carry_g += tot_g;
    carry_e += tot_e;
    // The next tile writes the other buffer; this buffer is rewritten two tiles on, after the next
    // tile's barrier, which every thread reaches only after finishing its reads above.
    buf ^= 1;
  }
}

// Counts (gt, eq) over positions [p0, p1) of a row: per thread, then summed over the block.
template <int NT, typename Src>
__device__ void CountRange(const Src& scores, int64_t p0, int64_t p1, const SelectState& st,
                           int32_t* s_warp, int32_t* gt_total, int32_t* eq_total) {
  int32_t g = 0, e = 0;
  constexpr int kUnroll = 4;
  const int tid = threadIdx.x;
  for (int64_t base = p0 + tid; base < p1; base += static_cast<int64_t>(NT) * kUnroll) {
    float v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t p = base + static_cast<int64_t>(u) * NT;
      v[u] = p < p1 ? scores(p) : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t p = base + static_cast<int64_t>(u) * NT;
      if (p < p1) {
        const uint32_t km = OrderKey(v[u]) & st.mask;
        g += km > st.prefix ? 1 : 0;
        e += km == st.prefix ? 1 : 0;
      }
    }
  }
  BlockExclusiveSum<NT>(g, s_warp, gt_total);
  BlockExclusiveSum<NT>(e, s_warp, eq_total);
}

// ---- Single-block top-k ------------------------------------------------------------------------

// Radix select of the kneed-th largest of scores [0, n): the final state. All threads call it;
// s_hist is reused.
template <typename Src>
__device__ SelectState SelectInBlock(const Src& scores, int64_t n, int32_t kneed, int32_t* s_hist, int32_t* s_warp,
                                     int32_t* s_result) {
  const int tid = threadIdx.x;
  SelectState st = InitState(kneed, n);
  for (int pass = 0; pass < kNumPasses && !st.done; ++pass) {  // st is uniform across the block
    for (int i = tid; i < kRadix; i += kSbThreads) s_hist[i] = 0;
    __syncthreads();
    HistogramRange(scores, 0, n, st.mask, st.prefix, PassShift(pass), PassDigitMask(pass), s_hist, tid, kSbThreads);
    __syncthreads();
    st = AdvanceState<kSbThreads>(st, pass, s_hist, s_warp, s_result);
  }
  return st;
}

// The whole single-block selection of one row: radix passes over the row, then the ordered
// compaction. All threads call it.
__device__ void SingleBlockSelect(const TopKRow& row, int32_t* s_hist, int32_t* s_warp, int32_t* s_result,
                                  int32_t (*s_tot)[2][kSbThreads / 32]) {
  const GlobalScores src{row.scores};
  const SelectState st = SelectInBlock(src, row.n, row.kk, s_hist, s_warp, s_result);
  OrderedCompact<kSbThreads, kSbItems>(src, row.n, 0, row.n, st, 0, 0, row.out, row.kk, s_tot);
}

__global__ void __launch_bounds__(kSbThreads) TopKSingleBlockKernel(ScoreChunk chunk, RowInfo rows, const int32_t* k,
                                                                    int32_t* sel, int64_t sel_stride) {
  __shared__ int32_t s_hist[kRadix];
  __shared__ int32_t s_warp[kSbThreads / 32];
  __shared__ int32_t s_result[3];
  __shared__ int32_t s_tot[2][2][kSbThreads / 32];

  TopKRow row;
  if (!LoadTopKRow(chunk, rows, k, sel, sel_stride, blockIdx.x, &row)) return;  // uniform per block
  SingleBlockSelect(row, s_hist, s_warp, s_result, s_tot);
}

// ---- Sampled single-block top-k (long rows) --------------------------------------------------
// The radix passes of SingleBlockSelect each read the whole row from memory (four reads of a
// 128K-candidate row: 2 MB). Here one read suffices: a stratified sample of kSmpSamples scores (runs
// of kSmpRun, one sector each) gives a threshold T (the key of its m-th largest, m well above the
// kk·S/n samples expected above the true k-th score), one ordered pass copies every score with key
// ≥ T and its position into shared memory, and the exact selection runs there. Exact whatever the
// sample: when fewer than kk or more than kSmpCap scores reach T (ties, odd distributions), the row
// takes SingleBlockSelect.
constexpr int kSmpCap = 8192;                           // scores kept in shared memory
constexpr int kSmpSamples = kSmpCap;                     // the sample is held in the same buffer
constexpr int kSmpRun = 8;                               // consecutive samples (one 32-byte sector)
constexpr int64_t kSmpMinCandidates = 2 * kSmpSamples;   // shorter rows: SingleBlockSelect
constexpr size_t kSmpSmemBytes = static_cast<size_t>(kSmpCap) * (sizeof(float) + sizeof(int32_t));

struct BufferPos {  // index p of the buffer holds position pos[p]
  const int32_t* pos;
  __device__ __forceinline__ int32_t operator()(int64_t p) const { return pos[p]; }
};

__global__ void __launch_bounds__(kSbThreads) TopKSampledKernel(ScoreChunk chunk, RowInfo rows, const int32_t* k,
                                                                int32_t* sel, int64_t sel_stride) {
  extern __shared__ __align__(16) unsigned char smp_smem[];
  float* s_val = reinterpret_cast<float*>(smp_smem);                        // [kSmpCap]
  int32_t* s_pos = reinterpret_cast<int32_t*>(smp_smem + kSmpCap * sizeof(float));  // [kSmpCap]
  __shared__ int32_t s_hist[kRadix];
  __shared__ int32_t s_warp[kSbThreads / 32];
  __shared__ int32_t s_result[3];
  __shared__ int32_t s_tot[2][2][kSbThreads / 32];
  constexpr int kWarps = kSbThreads / 32;

  TopKRow row;
  if (!LoadTopKRow(chunk, rows, k, sel, sel_stride, blockIdx.x, &row)) return;  // uniform per block
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t n = row.n;
  // Samples expected above the k-th score: mu = kk·S/n; take the m-th largest sample with m about
  // mu + 6·sqrt(mu) + 16, so that fewer than kk scores reach it with negligible probability, while
  // about m·n/S do (the buffer must hold them).
  const double mu = static_cast<double>(row.kk) * kSmpSamples / static_cast<double>(n);
  const int32_t m = static_cast<int32_t>(min(static_cast<double>(kSmpSamples), ceil(mu + 6.0 * sqrt(mu) + 16.0)));
  const bool try_sample = n >= kSmpMinCandidates && static_cast<double>(m) * n / kSmpSamples <= 0.75 * kSmpCap;
  if (!try_sample) {
    SingleBlockSelect(row, s_hist, s_warp, s_result, s_tot);
    return;
  }
  const GlobalScores src{row.scores};
  // Stratified: run j of kSmpRun scores starts at the sector at or below j·n / (runs).
  constexpr int kRuns = kSmpSamples / kSmpRun;
  for (int i = tid; i < kSmpSamples; i += kSbThreads) {
    const int64_t start = (static_cast<int64_t>(i / kSmpRun) * n / kRuns) & ~static_cast<int64_t>(kSmpRun - 1);
    s_val[i] = src(start + i % kSmpRun);
  }
  __syncthreads();
  const SelectState ts = SelectInBlock(SharedScores{s_val, 0}, kSmpSamples, m, s_hist, s_warp, s_result);
  const uint32_t threshold = ts.prefix;  // ts.mask covers the top bits: key ≥ prefix ⇔ (key & mask) ≥ prefix
  __syncthreads();  // every thread has read the samples before the buffer is overwritten

  // Ordered copy, ascending positions, of every score with key ≥ threshold.
  constexpr int kItems = kSbItems;
  constexpr uint32_t kTile = static_cast<uint32_t>(kSbThreads) * kItems;
  // The pass is bound by integer instructions (Nsight Compute: the ALU pipe at 85%), so it keeps
  // them few: 32-bit positions (n ≤ 2^31), bounds checks only in the last tile, the key test as one
  // float comparison (KeyAtLeast), and the warp totals summed with two reductions.
  const KeyAtLeast pass(threshold);
  const uint32_t n32 = static_cast<uint32_t>(n);
  // The next tile's scores are loaded before this tile's ballots and barrier, so a tile's loads
  // are in flight while the one before it is scanned (Nsight Compute: without that, the pass waited
  // on each tile's loads in turn, ~3.5 us a tile of 4096 at 128K, most of the kernel).
  int32_t carry = 0;
  int buf = 0;
  const uint32_t lane0 = static_cast<uint32_t>(warp) * 32 * kItems + lane;
  float next[kItems];
#pragma unroll
  for (int i = 0; i < kItems; ++i) next[i] = lane0 + i * 32 < n32 ? src(lane0 + i * 32) : 0.0f;
  for (uint32_t tile = 0; tile < n32 && carry <= kSmpCap; tile += kTile) {  // carry is uniform
    const uint32_t p0 = tile + lane0;
    float v[kItems];
    if (tile + 2 * kTile <= n32) {  // uniform: the next tile is whole
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        v[i] = next[i];
        next[i] = src(p0 + kTile + i * 32);
      }
    } else {
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        v[i] = next[i];
        const uint32_t p = p0 + kTile + i * 32;
        next[i] = p < n32 ? src(p) : 0.0f;
      }
    }
    uint32_t bits[kItems];
    int32_t wc = 0;
    if (tile + kTile <= n32) {  // uniform: this tile is whole
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        bits[i] = __ballot_sync(kFullMask, pass(v[i]));
        wc += __popc(bits[i]);
      }
    } else {
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        bits[i] = __ballot_sync(kFullMask, p0 + i * 32 < n32 && pass(v[i]));
        wc += __popc(bits[i]);
      }
    }
    if (lane == 0) s_tot[buf][0][warp] = wc;
    __syncthreads();
    const int32_t x = lane < kWarps ? s_tot[buf][0][lane] : 0;
    const int32_t total = static_cast<int32_t>(__reduce_add_sync(kFullMask, static_cast<uint32_t>(x)));
    int32_t before = carry + static_cast<int32_t>(__reduce_add_sync(kFullMask, static_cast<uint32_t>(lane < warp ? x : 0)));
    const uint32_t lt_mask = (1u << lane) - 1u;
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int32_t idx = before + __popc(bits[i] & lt_mask);
      if (((bits[i] >> lane) & 1u) != 0 && idx < kSmpCap) {
        s_val[idx] = v[i];
        s_pos[idx] = static_cast<int32_t>(p0 + i * 32);
      }
      before += __popc(bits[i]);
    }
    carry += total;
    buf ^= 1;
  }
  if (carry < row.kk || carry > kSmpCap) {  // uniform: the sample missed; select the usual way
    __syncthreads();
    SingleBlockSelect(row, s_hist, s_warp, s_result, s_tot);
    return;
  }
  __syncthreads();
  const SelectState st = SelectInBlock(SharedScores{s_val, 0}, carry, row.kk, s_hist, s_warp, s_result);
  OrderedCompact<kSbThreads, kSbItems>(SharedScores{s_val, 0}, carry, 0, carry, st, 0, 0, row.out, row.kk, s_tot,
                                       BufferPos{s_pos});
}

// ---- Multi-block top-k -------------------------------------------------------------------------

struct MbArgs {
  ScoreChunk chunk;
  RowInfo rows;
  const int32_t* k;
  int32_t* sel;
  int64_t sel_stride;
  uint32_t* ws;       // [row_count][row_words]
  int64_t row_words;
  int64_t seg;        // descending indices per block; the last block also takes the rest of the row
};

// Block b of a row (gridDim.x blocks) covers descending indices [*jb, *je) of a row of n.
__device__ __forceinline__ void MbSegment(int64_t seg, int64_t n, int64_t* jb, int64_t* je) {
  const int64_t b = blockIdx.x;
  *jb = min(b * seg, n);
  *je = (b == static_cast<int64_t>(gridDim.x) - 1) ? n : min((b + 1) * seg, n);
}

__device__ __forceinline__ SelectState MbLoadState(const uint32_t* ws, int slot) {
  const uint32_t* s = ws + kWsStateOff + 4 * slot;
  SelectState st;
  st.mask = s[0];
  st.prefix = s[1];
  st.kneed = static_cast<int32_t>(s[2]);
  st.done = static_cast<int32_t>(s[3]);
  return st;
}

__device__ __forceinline__ void MbStoreState(uint32_t* ws, int slot, const SelectState& st) {
  uint32_t* s = ws + kWsStateOff + 4 * slot;
  s[0] = st.mask;
  s[1] = st.prefix;
  s[2] = static_cast<uint32_t>(st.kneed);
  s[3] = static_cast<uint32_t>(st.done);
}

// Adds the block's shared histogram into the global one (integer atomics: order-independent).
template <int NT>
__device__ __forceinline__ void FlushHistogram(const int32_t* s_hist, uint32_t* g_hist) {
  for (int i = threadIdx.x; i < kRadix; i += NT) {
    const int32_t c = s_hist[i];
    if (c != 0) atomicAdd(&g_hist[i], static_cast<uint32_t>(c));
  }
}

// The carries of part `before` of a row: the summed (gt, eq) counts of parts [0, before), stored
// as counts[2b], counts[2b + 1] earlier in this launch or by an earlier one (read through L2). All
// threads call it; all get both sums.
template <int NT>
__device__ __forceinline__ void PrecedingCounts(const uint32_t* counts, int before, int32_t* s_warp, int32_t* carry_g,
                                                int32_t* carry_e) {
  int32_t g = 0, e = 0;
  for (int b = threadIdx.x; b < before; b += NT) {
    g += static_cast<int32_t>(__ldcg(counts + 2 * b));
    e += static_cast<int32_t>(__ldcg(counts + 2 * b + 1));
  }
  BlockExclusiveSum<NT>(g, s_warp, carry_g);
  BlockExclusiveSum<NT>(e, s_warp, carry_e);
}

// Radix pass `pass` for every row of the grid (gridDim.y rows, gridDim.x blocks each). State slot
// `pass` is the state before the pass (slot 0 is computed, not stored); slot pass+1 after it.
// Workspace histograms and tickets must be zero at launch (TopK memsets them).
__global__ void __launch_bounds__(kMbThreads) TopKMbHistogramKernel(MbArgs a, int pass) {
  __shared__ int32_t s_hist[kRadix];
  __shared__ int32_t s_warp[kMbThreads / 32];
  __shared__ int32_t s_result[3];
  __shared__ int32_t s_is_last;

  TopKRow row;
  if (!LoadTopKRow(a.chunk, a.rows, a.k, a.sel, a.sel_stride, blockIdx.y, &row)) return;  // whole row skips
  uint32_t* ws = a.ws + static_cast<int64_t>(blockIdx.y) * a.row_words;
  const int tid = threadIdx.x;
  const SelectState st = pass == 0 ? InitState(row.kk, row.n) : MbLoadState(ws, pass);
  if (st.done) {  // uniform over the row's blocks: one of them carries the state forward
    if (blockIdx.x == 0 && tid == 0) MbStoreState(ws, pass + 1, st);
    return;
  }
  int64_t jb, je;
  MbSegment(a.seg, row.n, &jb, &je);

  for (int i = tid; i < kRadix; i += kMbThreads) s_hist[i] = 0;
  __syncthreads();
  // Descending indices [jb, je) are positions [n - je, n - jb).
  HistogramRange(GlobalScores{row.scores}, row.n - je, row.n - jb, st.mask, st.prefix, PassShift(pass), PassDigitMask(pass),
                 s_hist, tid, kMbThreads);
  __syncthreads();
  uint32_t* g_hist = ws + kWsHistOff + static_cast<int64_t>(pass) * kRadix;
  FlushHistogram<kMbThreads>(s_hist, g_hist);
  // Last-block pattern (CUDA programming guide, "memory fence functions"): every thread fences its
  // histogram atomics, the block syncs, one thread fences again and takes a ticket.
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    __threadfence();
    const uint32_t ticket = atomicAdd(ws + kWsCounterOff + pass, 1u);
    s_is_last = (ticket == gridDim.x - 1) ? 1 : 0;
  }
  __syncthreads();
  if (!s_is_last) return;
  __threadfence();
  for (int i = tid; i < kRadix; i += kMbThreads) s_hist[i] = static_cast<int32_t>(__ldcg(&g_hist[i]));
  __syncthreads();
  const SelectState next = AdvanceState<kMbThreads>(st, pass, s_hist, s_warp, s_result);
  if (tid == 0) MbStoreState(ws, pass + 1, next);
}

// (gt, eq) counts of each block's segment under the final state.
__global__ void __launch_bounds__(kMbThreads) TopKMbCountKernel(MbArgs a) {
  __shared__ int32_t s_warp[kMbThreads / 32];
  TopKRow row;
  if (!LoadTopKRow(a.chunk, a.rows, a.k, a.sel, a.sel_stride, blockIdx.y, &row)) return;
  uint32_t* ws = a.ws + static_cast<int64_t>(blockIdx.y) * a.row_words;
  const SelectState st = MbLoadState(ws, kNumPasses);
  int64_t jb, je;
  MbSegment(a.seg, row.n, &jb, &je);
  int32_t g, e;
  CountRange<kMbThreads>(GlobalScores{row.scores}, row.n - je, row.n - jb, st, s_warp, &g, &e);
  if (threadIdx.x == 0) {
    ws[kWsCountsOff + 2 * static_cast<int64_t>(blockIdx.x)] = static_cast<uint32_t>(g);
    ws[kWsCountsOff + 2 * static_cast<int64_t>(blockIdx.x) + 1] = static_cast<uint32_t>(e);
  }
}

// Writes each block's selected positions: carries are the counts of the preceding blocks.
__global__ void __launch_bounds__(kMbThreads) TopKMbWriteKernel(MbArgs a) {
  __shared__ int32_t s_warp[kMbThreads / 32];
  __shared__ int32_t s_tot[2][2][kMbThreads / 32];
  TopKRow row;
  if (!LoadTopKRow(a.chunk, a.rows, a.k, a.sel, a.sel_stride, blockIdx.y, &row)) return;
  const uint32_t* ws = a.ws + static_cast<int64_t>(blockIdx.y) * a.row_words;
  const SelectState st = MbLoadState(ws, kNumPasses);
  int32_t carry_g, carry_e;
  PrecedingCounts<kMbThreads>(ws + kWsCountsOff, static_cast<int>(blockIdx.x), s_warp, &carry_g, &carry_e);
  int64_t jb, je;
  MbSegment(a.seg, row.n, &jb, &je);
  OrderedCompact<kMbThreads, kMbItems>(GlobalScores{row.scores}, row.n, jb, je, st, carry_g, carry_e, row.out, row.kk, s_tot);
}

// ---- Statistics --------------------------------------------------------------------------------

constexpr int kStatsThreads = 512;

// Deterministic block sum: warp shuffle tree, then the warp sums added in warp order by every
// thread. All threads get the total. s_warp: [NT/32]; two barriers.
template <int NT>
__device__ __forceinline__ double BlockSumDouble(double v, double* s_warp) {
  constexpr int kWarps = NT / 32;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(kFullMask, v, o);
  if (lane == 0) s_warp[warp] = v;
  __syncthreads();
  double total = 0.0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) total += s_warp[w];
  __syncthreads();
  return total;
}

template <int NT>
__device__ __forceinline__ float BlockMaxFloat(float v, float* s_warp) {
  constexpr int kWarps = NT / 32;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(kFullMask, v, o));
  if (lane == 0) s_warp[warp] = v;
  __syncthreads();
  float m = s_warp[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) m = fmaxf(m, s_warp[w]);
  __syncthreads();
  return m;
}

// One block per chunk row. Pass 1: Σx (double) and max x; pass 2: Σ(x − mean)² and, for the
// entropy, Z = Σ e^(x−m), EZ = Σ e^(x−m)(x−m) — the formulas of ScoreVariance / ScoreEntropy.
__global__ void __launch_bounds__(kStatsThreads) ScoreStatsKernel(ScoreChunk chunk, RowInfo rows, double* var,
                                                                  double* entropy) {
  __shared__ double s_dwarp[kStatsThreads / 32];
  __shared__ float s_fwarp[kStatsThreads / 32];
  const int64_t r = chunk.row_begin + blockIdx.x;
  if (rows.dense[r] != 0) return;
  const int64_t n = static_cast<int64_t>(rows.position[r]) + 1;
  if (n <= 0) {  // not a valid row; the CPU functions return 0 for an empty row
    if (threadIdx.x == 0) {
      var[r] = 0.0;
      if (entropy != nullptr) entropy[r] = 0.0;
    }
    return;
  }
  const float* __restrict__ s = chunk.scores + chunk.score_offset[blockIdx.x];
  const bool want_entropy = entropy != nullptr;
  const int tid = threadIdx.x;

  double sum = 0.0;
  float mx = -INFINITY;
  for (int64_t i = tid; i < n; i += kStatsThreads) {
    const float x = __ldg(s + i);
    sum += static_cast<double>(x);
    mx = fmaxf(mx, x);
  }
  sum = BlockSumDouble<kStatsThreads>(sum, s_dwarp);
  const double mean = sum / static_cast<double>(n);
  double m = 0.0;
  if (want_entropy) {
    m = static_cast<double>(BlockMaxFloat<kStatsThreads>(mx, s_fwarp));
    // The CPU's max ignores NaN at i > 0 but not at i = 0; either way a NaN score makes the
    // entropy NaN below, as on the CPU.
  }

  double acc_v = 0.0;
  for (int64_t i = tid; i < n; i += kStatsThreads) {
    const double d = static_cast<double>(__ldg(s + i)) - mean;
    acc_v += d * d;
  }
  acc_v = BlockSumDouble<kStatsThreads>(acc_v, s_dwarp);
  double z = 0.0, ez = 0.0;
  if (want_entropy) {  // a separate loop keeps exp()'s register needs out of the variance loop
    for (int64_t i = tid; i < n; i += kStatsThreads) {
      const double dm = static_cast<double>(__ldg(s + i)) - m;
      const double e = exp(dm);
      z += e;
      ez += e * dm;
    }
    z = BlockSumDouble<kStatsThreads>(z, s_dwarp);
    ez = BlockSumDouble<kStatsThreads>(ez, s_dwarp);
  }
  if (tid == 0) {
    var[r] = acc_v / static_cast<double>(n);
    if (want_entropy) entropy[r] = log(z) - ez / z;
  }
}

// ---- k_t ---------------------------------------------------------------------------------------

// Device mirror of SelectedCount (engine/backend/selection.cc), operation for operation; the
// intrinsics keep the compiler from contracting into FMAs, so every rounding matches the host.
// log() is CUDA's (≤ 1 ulp), which can differ from the host's in the last bit (entropy method).
__device__ int64_t SelectedCountDevice(const SelectionRule& rule, int64_t position, double var_t, double ref_t,
                                       double entropy_t) {
  const int64_t available = position + 1;
  if (rule.method == 0) return min(rule.k_base, available);
  double factor;
  if (rule.method == 1) {
    // 0.5 + 1.0 / (1.0 + T * var / (ref + 1e-8))
    const double ratio = __ddiv_rn(__dmul_rn(rule.temperature, var_t), __dadd_rn(ref_t, 1e-8));
    factor = __dadd_rn(0.5, __ddiv_rn(1.0, __dadd_rn(1.0, ratio)));
  } else {
    // 0.5 + T * H / log(position + 2)
    const double lg = log(__dadd_rn(static_cast<double>(position), 2.0));
    factor = __dadd_rn(0.5, __ddiv_rn(__dmul_rn(rule.temperature, entropy_t), lg));
  }
  const double raw = floor(__dmul_rn(static_cast<double>(rule.k_base), factor));
  // std::clamp(raw, lo, hi): raw < lo ? lo : (hi < raw ? hi : raw).
  const double lo = static_cast<double>(rule.k_min);
  const double hi = static_cast<double>(rule.k_max);
  const double clamped = raw < lo ? lo : (hi < raw ? hi : raw);
  return min(static_cast<int64_t>(clamped), available);
}

// What a dense row leaves in the running Σvar at its slot: a quiet NaN, as the CPU writes.
__device__ __forceinline__ float DenseRowCumvar() { return __uint_as_float(0x7FC00000u); }

// The running Σvar of sequence `seq` at position − 1 (0 at position 0). That slot was written by
// an earlier launch or earlier in the caller's own loop, so a plain load sees it.
__device__ __forceinline__ double PreviousCumvar(const PagedLayout& paged, const float* cumvar, int32_t seq,
                                                 int64_t position) {
  return position > 0 ? static_cast<double>(cumvar[SlotOfPosition(paged, seq, static_cast<int32_t>(position - 1))]) : 0.0;
}

// k_t of a selecting row at `position` with statistic v (variance rule) or ent (entropy rule), given
// prev = PreviousCumvar: adds v to it, rounds to fp32 (*cum, which the caller stores at the row's
// slot) and uses ref = cum / (position + 1).
__device__ __forceinline__ int64_t SelectedCountAfter(const SelectionRule& rule, double prev, int64_t position,
                                                      double v, double ent, float* cum) {
  *cum = __double2float_rn(__dadd_rn(prev, v));
  const double ref = __ddiv_rn(static_cast<double>(*cum), static_cast<double>(position + 1));
  return SelectedCountDevice(rule, position, v, ref, ent);
}

// SelectionCounts in two kernels. The running sum is a chain through a sequence's rows (each step
// a double add and a rounding to fp32, bitwise the CPU's order), so it takes one warp a sequence,
// 32 rows a round: every lane loads its row's inputs (the next round's while this one's chain
// runs), the chain steps through the 32 rows in every lane with each row's operands shuffled in
// (independent of the chain), and the sums are stored. Then k_t of every row in parallel, from its
// sum. One thread a sequence doing all of it took ~0.8 ms for a 2048-row prefill chunk: every step
// waited for its loads and for the divisions of k_t.
constexpr int kCountsThreads = 128;
struct CountsRow {  // one lane's row of a round, as loaded (no branch waits for these loads)
  int64_t pos = 0, slot = 0;
  int64_t pos_before = -2;  // position of the sequence's row before it in the chunk (none: -2)
  double v = 0.0;
  int32_t dense = 1;        // rows past the sequence's last act as dense and store nothing
};

__device__ __forceinline__ CountsRow LoadCountsRow(const RowInfo& rows, const double* var, int64_t r, int64_t r0,
                                                   int64_t r1) {
  CountsRow c;
  if (r >= r1) return c;
  c.pos = rows.position[r];
  c.slot = rows.slot[r];
  c.dense = rows.dense[r];
  c.v = var != nullptr ? var[r] : 0.0;  // read for dense rows too (not used): no branch on dense
  if (r > r0) c.pos_before = rows.position[r - 1];
  return c;
}

// One step of the chain for row j of the round: code 0 dense (the sum becomes NaN), 1 the row
// follows the chain's last, 2 it starts from `prev` (the sum at position − 1 from an earlier launch).
__device__ __forceinline__ float ChainStep(int32_t code, double prev, double v, double* chain) {
  const float cum = code == 0 ? DenseRowCumvar() : __double2float_rn(__dadd_rn(code == 1 ? *chain : prev, v));
  *chain = static_cast<double>(cum);
  return cum;
}

__global__ void __launch_bounds__(kCountsThreads) SelectionChainKernel(ScoreChunk chunk, RowInfo rows, PagedLayout paged,
                                                                   const int32_t* seq_first_row, int32_t num_seqs,
                                                                   const double* var, float* cumvar) {
  const int lane = threadIdx.x & 31;
  const int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (i >= num_seqs) return;  // warp-uniform
  const int64_t chunk_end = chunk.row_begin + chunk.row_count;
  const int64_t r0 = max(static_cast<int64_t>(seq_first_row[i]), chunk.row_begin);
  const int64_t r1 = min(static_cast<int64_t>(seq_first_row[i + 1]), chunk_end);
  double chain = 0.0;  // the running sum after the last row so far (every lane)
  CountsRow next = LoadCountsRow(rows, var, r0 + lane, r0, r1);
  for (int64_t base = r0; base < r1; base += 32) {
    const CountsRow row = next;
    next = LoadCountsRow(rows, var, base + 32 + lane, r0, r1);
    // Rows are in position order: a row not at the previous row's position + 1 is the chunk's
    // first of its sequence, whose sum at position − 1 an earlier launch wrote.
    const int32_t code = row.dense != 0 ? 0 : (row.pos_before == row.pos - 1 ? 1 : 2);
    const double prev = code == 2 ? PreviousCumvar(paged, cumvar, rows.seq[base + lane], row.pos) : 0.0;
    const int n = static_cast<int>(min(static_cast<int64_t>(32), r1 - base));
    float mine = 0.0f;
    if (var == nullptr) {
      // Nothing is added (the fixed rule): a step rounds the previous sum to itself (f32(double(c)
      // + 0) = c; −0, the one exception, never is a sum: −0 + 0 = +0), so every row's sum is that of
      // the latest row at or before it that starts from memory (f32(prev + 0)) or is dense (NaN),
      // or, with none in this round, the chain's. No chain to walk.
      const float own = code == 0 ? DenseRowCumvar() : __double2float_rn(__dadd_rn(prev, 0.0));
      const uint32_t resets = __ballot_sync(kFullMask, lane < n && code != 1);
      const uint32_t upto = resets & (lane == 31 ? kFullMask : ((2u << lane) - 1u));
      const float from = __shfl_sync(kFullMask, own, upto != 0u ? 31 - __clz(upto) : 0);
      mine = upto != 0u ? from : static_cast<float>(chain);
      chain = static_cast<double>(__shfl_sync(kFullMask, mine, n - 1));
    } else {
      auto step = [&](int j) {  // row j of the round, its operands from lane j
        const float cum = ChainStep(__shfl_sync(kFullMask, code, j), __shfl_sync(kFullMask, prev, j),
                                    __shfl_sync(kFullMask, row.v, j), &chain);
        if (lane == j) mine = cum;
      };
      if (n == 32) {  // uniform; no bounds in the unrolled steps, so their shuffles can go first
#pragma unroll
        for (int j = 0; j < 32; ++j) step(j);
      } else {
        for (int j = 0; j < n; ++j) step(j);
      }
    }
    if (lane < n) cumvar[row.slot] = mine;
  }
}

// k_t of every chunk row from the sum at its slot (written by SelectionChainKernel).
__global__ void __launch_bounds__(kCountsThreads) SelectionKKernel(ScoreChunk chunk, RowInfo rows, SelectionRule rule,
                                                               const double* var, const double* entropy,
                                                               const float* cumvar, int32_t* k) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= chunk.row_count) return;
  const int64_t r = chunk.row_begin + i;
  const int64_t pos = rows.position[r];
  if (rows.dense[r] != 0) {
    k[r] = static_cast<int32_t>(pos + 1);
    return;
  }
  const double v = var != nullptr ? var[r] : 0.0;
  const double ent = (rule.method == 2 && entropy != nullptr) ? entropy[r] : 0.0;
  const double ref = __ddiv_rn(static_cast<double>(cumvar[rows.slot[r]]), static_cast<double>(pos + 1));
  k[r] = static_cast<int32_t>(SelectedCountDevice(rule, pos, v, ref, ent));
}


// ---- Fused decode selection --------------------------------------------------------------------
// Grid: row_count × nbr blocks (block b: chunk row b / nbr, part b % nbr), all co-resident
// (cooperative launch). Part x owns descending indices [x·seg, (x+1)·seg) of its row (the last
// part also the rest), i.e. a contiguous run of positions, kept in shared memory when it fits.
// Phases, separated by barriers among the row's blocks (RowBarrier): (A) scores, Σx (variance
// rule), pass-0 histogram and (sigmoid) the coarse histogram; (B, variance rule) Σ(x − mean)²;
// then k_t, and either (coarse path: the coarse bucket of the k-th score holds ≤ kDsListCap keys)
// the bucket's keys appended to a per-row list, then (D'') every block selects in the list, derives
// its carries and compacts; or radix pass 1 on the eq keys; then either (eq-list path, few keys
// still tied) the tied keys appended to a per-row list,
// pass 2, the carries and (D) in every block without another barrier, or (C) radix pass 2, per-part
// (gt, eq) counts and (D) ordered compaction with the preceding parts' counts as carries. Every
// block of a row computes the same state from the same global histograms (no "last block"), so no
// block waits on a particular other block except at the barriers.

constexpr int kDsThreads = 512;
constexpr int64_t kDsMaxRows = 64;
constexpr int64_t kDsMaxParts = 1024;     // blocks per row, at most (workspace sizing)
constexpr int64_t kDsMinSeg = 256;        // fewest positions per part
constexpr int64_t kDsSmemFloats = 8192;   // scores a part keeps in shared memory (32 KB)
// The radix passes' histograms, then the coarse histogram (CoarseBucket).
constexpr int64_t kDsHistWords = (kNumPasses + 1) * kRadix;
// Keys of one bucket that a row may collect in a list for the rest of its selection done in every
// block: the coarse bucket (64-bit entries) or the eq keys after two radix passes (32-bit); more
// take the global passes.
constexpr int64_t kDsListCap = 4096;
// Per-row workspace, bytes: hist [kNumPasses + 1][kRadix] u32 | sum [kDsMaxParts] f64 |
// sq [kDsMaxParts] f64 | counts [kDsMaxParts][2] u32 | barrier [2] u32 (arrivals, departures) |
// list length u32 (+ pad) | list [kDsListCap] u64. Barrier words: RowBarrier.
constexpr int64_t kDsBarrierOff = kDsHistWords * 4 + kDsMaxParts * (8 + 8 + 8);
constexpr int64_t kDsRowBytes = kDsBarrierOff + 16 + kDsListCap * 8;
static_assert(kDsRowBytes % 16 == 0 && (kDsBarrierOff + 16) % 8 == 0, "16-byte histogram loads, 8-byte list entries");

// The coarse bucket of a sigmoid indexer's score: scores lie in [0, Σ_j wI_j] (each term is
// wI_j · sigmoid(·) with wI_j > 0), so bucket = ⌊score · inv⌋ clamped to [0, kRadix - 1], inv =
// kRadix / Σ_j wI_j, spreads them over the histogram whatever their exponent — where the float
// key's top 11 bits (sign, exponent, 2 mantissa bits) put most of a row in one bucket. Monotone
// in the score (OrderKey's order: NaN, −inf, negatives and zeros all go to bucket 0), so a bucket
// above another holds only larger scores; bounds that do not hold only cost speed.
__device__ __forceinline__ int32_t CoarseBucket(float v, float inv) {
  return v > 0.0f ? static_cast<int32_t>(fminf(v * inv, static_cast<float>(kRadix - 1))) : 0;
}

// Barrier `index` (0, 1, … in order) of the `count` blocks of one row, all co-resident (the launch
// is cooperative). bar[0] only grows during a launch: barrier i opens when it reaches
// (i + 1) · count, so one atomic per block and no reset between barriers. Orders every global
// write before it against every read after it, as grid.sync does, but only among the row's blocks
// (rows never wait for each other, and may take different paths). RowBarrierDepart/Reset reset it.
__device__ __forceinline__ void RowBarrier(uint32_t* bar, uint32_t count, uint32_t index) {
  __syncthreads();  // the block's writes happen before thread 0's release below
  if (threadIdx.x == 0) {
    // Arrive with release semantics (the block's writes before it), poll with acquire (every
    // arrived block's writes after it), gpu scope — as CUTLASS's GenericBarrier, lighter than
    // a full fence on each side.
    asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(bar) : "memory");
    const uint32_t target = (index + 1) * count;
    uint32_t arrived;
    while (true) {
      asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(arrived) : "l"(bar) : "memory");
      if (arrived >= target) break;
      __nanosleep(20);
    }
  }
  __syncthreads();
}

// Right after the row's last barrier: the block counts itself out (bar[1]), and the ticket comes
// back while the block does its last work. Thread 0's ticket; 0 in other threads.
__device__ __forceinline__ uint32_t RowBarrierDepart(uint32_t* bar) {
  return threadIdx.x == 0 ? atomicAdd(bar + 1, 1u) : 0u;
}

// At the block's end: the block whose ticket was the last has seen every block of the row leave
// every barrier, so it puts both words back to zero for the next launch.
__device__ __forceinline__ void RowBarrierReset(uint32_t* bar, uint32_t count, uint32_t ticket) {
  if (threadIdx.x == 0 && ticket == count - 1) {
    bar[0] = 0u;
    bar[1] = 0u;
  }
}

// The list paths' carries, summed over the block in one scan: gt1 (this thread's share of the
// preceding parts' counts above the list) and cge (its list entries of preceding parts above the
// threshold | equal to it << 16; the list's totals stay below 2^16) packed in 64 bits.
__device__ __forceinline__ void ListCarries(int32_t gt1, int32_t cge, int64_t* s_warp64, int32_t* carry_g,
                                            int32_t* carry_e) {
  static_assert(kDsListCap < (1 << 16), "packed list counts");
  int64_t total;
  BlockExclusiveSum<kDsThreads>((static_cast<int64_t>(gt1) << 32) + cge, s_warp64, &total);
  *carry_g = static_cast<int32_t>(total >> 32) + static_cast<int32_t>(total & 0xFFFF);
  *carry_e = static_cast<int32_t>((total >> 16) & 0xFFFF);
}

// AdvanceState from one of a row's global histograms (complete: read after the barrier that follows
// its flushes) with one 16-byte load a thread, a single L2 round trip: thread t's four bins in
// descending digit order are words kRadix-1-4t … kRadix-4-4t, the (kRadix/4 - 1 - t)-th uint4
// reversed.
__device__ __forceinline__ SelectState AdvanceStateFromRowHist(SelectState st, int pass, const uint32_t* hist,
                                                               int32_t* s_warp, int32_t* s_result) {
  static_assert(kDsThreads * 4 == kRadix, "one uint4 of the histogram per thread");
  const uint4 w = __ldcg(reinterpret_cast<const uint4*>(hist) + (kRadix / 4 - 1 - static_cast<int>(threadIdx.x)));
  const int32_t c[4] = {static_cast<int32_t>(w.w), static_cast<int32_t>(w.z), static_cast<int32_t>(w.y),
                        static_cast<int32_t>(w.x)};
  return AdvanceStateFromCounts<kDsThreads>(st, pass, c, s_warp, s_result);
}

struct DsArgs {
  DecodeSelectArgs a;
  uint8_t* ws;
  int32_t nbr;  // parts per row
  int64_t seg;  // descending indices per part
  int64_t max_blocks;  // DecodeSelectMaxBlocks(rows): the stride of marks_globaltimer's halves
};

// Deterministic sum over parts [0, count) of vals (written earlier in this launch): a fixed
// per-thread stride, then BlockSumDouble's fixed tree. All threads call it; all get the total.
__device__ __forceinline__ double SumParts(const double* vals, int64_t count, double* s_dwarp) {
  double v = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += kDsThreads) v += __ldcg(vals + i);
  return BlockSumDouble<kDsThreads>(v, s_dwarp);
}

template <int D_I, bool kFp8>
__global__ void __launch_bounds__(kDsThreads, D_I <= 64 ? 2 : 1) DecodeSelectKernel(DsArgs d) {
  extern __shared__ float s_sc[];  // [kDsSmemFloats]
  __shared__ __align__(16) bf16 s_q[indexer_math::SplitQueryElems(indexer_math::kMaxHeads, D_I)];
  __shared__ float s_w[indexer_math::kMaxHeads], s_b[indexer_math::kMaxHeads];
  __shared__ int32_t s_hist[kRadix];
  __shared__ int32_t s_hist_c[kRadix];  // (A)'s coarse histogram (sigmoid indexers)
  __shared__ double s_dwarp[kDsThreads / 32];
  __shared__ int32_t s_warp[kDsThreads / 32];
  __shared__ int32_t s_result[3];
  __shared__ int32_t s_tot[2][2][kDsThreads / 32];

  // A programmatic dependent (Hopper and later): nothing is read or written before the kernels
  // before it have finished. It never calls PdlLaunchDependents: letting the sparse attention's
  // blocks be scheduled early (to wait on SMs this kernel leaves) made the decode step slower,
  // 2.98 -> 3.13 ms at 128K batch 4 (pdl-trigger-tried.json).
  PdlWaitForPrerequisites();
  const DecodeSelectArgs& a = d.a;
  const IndexerScoresArgs& ia = a.index;
  const int tid = threadIdx.x;
  const int64_t cr = blockIdx.x / d.nbr;
  const int32_t part = static_cast<int32_t>(blockIdx.x % d.nbr);
  const int64_t r = ia.row_begin + cr;
  uint8_t* wsr = d.ws + cr * kDsRowBytes;
  uint32_t* g_hist = reinterpret_cast<uint32_t*>(wsr);
  double* g_sum = reinterpret_cast<double*>(wsr + kDsHistWords * 4);
  double* g_sq = g_sum + kDsMaxParts;
  uint32_t* g_cnt = reinterpret_cast<uint32_t*>(g_sq + kDsMaxParts);
  uint32_t* g_bar = reinterpret_cast<uint32_t*>(wsr + kDsBarrierOff);
  uint32_t* g_hist_c = g_hist + kNumPasses * kRadix;
  uint32_t* g_list_len = g_bar + 2;
  uint32_t* g_list = g_bar + 4;  // the eq list after pass 1: u32 entries
  uint64_t* g_list_c = reinterpret_cast<uint64_t*>(g_bar + 4);  // the coarse list: u64 entries
  const uint32_t nbr = static_cast<uint32_t>(d.nbr);
  uint32_t barriers = 0;  // RowBarrier calls so far (the same sequence in every block of the row)

  const bool dense = ia.rows.dense[r] != 0;
  const int32_t pos = ia.rows.position[r];
  const int64_t n = static_cast<int64_t>(pos) + 1;
  const bool active = !dense && n > 0;  // uniform over the row's blocks
  // This part's descending indices [jb, je) = positions [pb, pe).
  const int64_t jb = active ? min(static_cast<int64_t>(part) * d.seg, n) : 0;
  const int64_t je = active ? (part == d.nbr - 1 ? n : min((static_cast<int64_t>(part) + 1) * d.seg, n)) : 0;
  const int64_t pb = n - je, pe = n - jb;
  const bool in_smem = je - jb <= kDsSmemFloats;
  // The running Σvar before this position, for k_t after the barrier(s): loaded now (this launch
  // writes only the rows' own slots, never a row's previous one) so its chain of dependent loads
  // (block table, then the value) is not on the path after barrier 1.
  const double prev_cum = active ? PreviousCumvar(ia.paged, a.cumvar, ia.rows.seq[r], pos) : 0.0;
  float* row_scores = ia.scores + (active ? ia.score_offset[cr] : 0);
  // Benchmark timeline (DecodeSelectArgs::marks): thread 0 after the block's threads met.
  const bool timed = a.marks != nullptr;  // uniform
  auto mark = [&](int i) {
    if (!timed) return;
    __syncthreads();
    if (tid != 0) return;
    a.marks[static_cast<int64_t>(blockIdx.x) * kDecodeSelectMarks + i] = clock64();
    if (a.marks_globaltimer != nullptr && (i == 0 || i == kDecodeSelectMarks - 1)) {
      uint64_t ns;
      asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(ns));
      a.marks_globaltimer[(i == 0 ? 0 : d.max_blocks) + blockIdx.x] = static_cast<int64_t>(ns);
    }
  };
  mark(0);

  // (A) Scores of the part, Σx and the pass-0 histogram of every key.
  for (int i = tid; i < kRadix; i += kDsThreads) {
    s_hist[i] = 0;
    s_hist_c[i] = 0;
  }
  if (active) {
    indexer_math::LoadSplitQuery<D_I>(ia.proj, ia.proj_stride, ia.off_qi, ia.off_wi, ia.bias, ia.n_indexer_heads, r,
                                      s_q, s_w, s_b);
  }
  __syncthreads();
  // CoarseBucket's scale, the same in every block of the row (the same wI summed in the same
  // order); 0: no coarse histogram (relu scores have no bound).
  float coarse_inv = 0.0f;
  if (active && !ia.relu) {
    float wsum = 0.0f;
    for (int j = 0; j < ia.n_indexer_heads; ++j) wsum += s_w[j];
    if (wsum > 0.0f && wsum < INFINITY) coarse_inv = static_cast<float>(kRadix) / wsum;
  }
  mark(1);
  double sum = 0.0;
  const bool want_sum = a.rule.method == 1;  // Σx feeds only the variance rule
  if (active) {
    // Each warp scores 32 consecutive positions per step (two 16-candidate tiles, keys loaded
    // together); lane 4g stores candidate g of a tile, lane 4g+1 candidate g+8. Positions are
    // 32-bit (RowInfo::position), and a power-of-two block size maps them to slots by shift/mask.
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    constexpr int kTiles = 2;
    const int32_t p_begin = static_cast<int32_t>(pb), p_end = static_cast<int32_t>(pe);
    const int32_t bs = ia.paged.block_size;
    const int32_t* table = ia.paged.block_tables + static_cast<int64_t>(ia.rows.seq[r]) * ia.paged.max_blocks_per_seq;
    const bool pow2 = (bs & (bs - 1)) == 0;
    const int shift = __ffs(bs) - 1;
    auto slot_of = [&](int32_t c) -> int64_t {
      if (c >= p_end) return -1;
      const int32_t blk = pow2 ? c >> shift : c / bs;
      return static_cast<int64_t>(table[blk]) * bs + (c - blk * bs);
    };
    const indexer_math::KeySource src{ia.ki_cache, ia.ki_fp8, ia.ki_scale};
    for (int32_t base = p_begin + warp * 16 * kTiles; base < p_end; base += kDsThreads / 32 * 16 * kTiles) {
      indexer_math::KeyFragment<D_I> keys[kTiles];
      float key_scale[kTiles][2];
#pragma unroll
      for (int u = 0; u < kTiles; ++u) {
        const int32_t c_lo = base + u * 16 + g;
        indexer_math::LoadKeys<D_I, kFp8>(src, slot_of(c_lo), slot_of(c_lo + 8), &keys[u], &key_scale[u][0],
                                          &key_scale[u][1]);
      }
      float2 vs[kTiles];
      if (ia.relu) {
        indexer_math::TileScores<D_I, kTiles, true, kFp8>(keys, key_scale, s_q, s_w, s_b, ia.n_indexer_heads, vs);
      } else {
        indexer_math::TileScores<D_I, kTiles, false, kFp8>(keys, key_scale, s_q, s_w, s_b, ia.n_indexer_heads, vs);
      }
#pragma unroll
      for (int u = 0; u < kTiles; ++u) {
        const float2 v2 = vs[u];
        const int32_t p = base + u * 16 + g + (t == 1 ? 8 : 0);
        if (t < 2 && p < p_end) {
          const float v = t == 0 ? v2.x : v2.y;
          row_scores[p] = v;
          if (in_smem) s_sc[p - pb] = v;
          if (want_sum) sum += static_cast<double>(v);
          atomicAdd(&s_hist[OrderKey(v) >> PassShift(0)], 1);
          if (coarse_inv > 0.0f) atomicAdd(&s_hist_c[CoarseBucket(v, coarse_inv)], 1);
        }
      }
    }
  }
  __syncthreads();
  mark(2);
  if (active) {
    FlushHistogram<kDsThreads>(s_hist, g_hist);
    if (coarse_inv > 0.0f) FlushHistogram<kDsThreads>(s_hist_c, g_hist_c);
    if (want_sum) {
      const double total = BlockSumDouble<kDsThreads>(sum, s_dwarp);
      if (tid == 0) g_sum[part] = total;
    }
  }
  mark(3);
  RowBarrier(g_bar, nbr, barriers++);
  mark(4);

  // Runs f(src) with the part's scores: shared memory when they fit, else this launch's global
  // copy (written by this block in (A), so read through L2).
  auto with_scores = [&](auto&& f) {
    if (in_smem) {
      f(SharedScores{s_sc, pb});
    } else {
      f(CoherentScores{row_scores});
    }
  };

  // The list paths' append: the part's count of keys above the bucket to g_cnt[2·part], and every
  // key in the bucket appended to the row's list as entry(score), room reserved with one atomic a
  // block. side(score): 1 above the bucket, 0 in it, −1 below. All threads call it.
  auto append_bucket = [&](auto side, auto* list, auto entry) {
    int32_t g = 0, e = 0;
    with_scores([&](const auto& src) {
      for (int64_t p = pb + tid; p < pe; p += kDsThreads) {
        const int sd = side(src(p));
        g += sd > 0 ? 1 : 0;
        e += sd == 0 ? 1 : 0;
      }
    });
    int32_t g_total, e_total;
    BlockExclusiveSum<kDsThreads>(g, s_warp, &g_total);
    int32_t e_at = BlockExclusiveSum<kDsThreads>(e, s_warp, &e_total);
    if (tid == 0) {
      g_cnt[2 * part] = static_cast<uint32_t>(g_total);
      s_result[0] = e_total > 0 ? static_cast<int32_t>(atomicAdd(g_list_len, static_cast<uint32_t>(e_total))) : 0;
    }
    __syncthreads();
    e_at += s_result[0];
    __syncthreads();  // s_result is AdvanceState's again after
    if (e > 0) {
      with_scores([&](const auto& src) {
        for (int64_t p = pb + tid; p < pe; p += kDsThreads) {
          const float v = src(p);
          if (side(v) == 0 && e_at < kDsListCap) list[e_at++] = entry(v);
        }
      });
    }
  };

  // After a list path's append: the row's last barrier (this block's departure ticket returned);
  // every histogram read and list append is then done (the list holds exactly the bucket's count
  // of entries), so part 0 leaves the histograms and the length zeroed for the next launch (entries
  // are overwritten before they are read).
  auto meet_last = [&]() {
    mark(9);
    RowBarrier(g_bar, nbr, barriers++);
    const uint32_t t = RowBarrierDepart(g_bar);
    mark(10);
    if (part == 0) {
      for (int64_t i = tid; i < kDsHistWords; i += kDsThreads) g_hist[i] = 0u;
      if (tid == 0) *g_list_len = 0u;
    }
    return t;
  };

  // (B) The variance rule's statistic: mean from the parts' Σx, then Σ(x − mean)² likewise.
  double var = 0.0;
  if (a.rule.method == 1) {
    if (active) {
      const double mean = SumParts(g_sum, d.nbr, s_dwarp) / static_cast<double>(n);
      double acc = 0.0;
      with_scores([&](const auto& src) {
        for (int64_t p = pb + tid; p < pe; p += kDsThreads) {
          const double x = static_cast<double>(src(p)) - mean;
          acc += x * x;
        }
      });
      const double total = BlockSumDouble<kDsThreads>(acc, s_dwarp);
      if (tid == 0) g_sq[part] = total;
    }
    RowBarrier(g_bar, nbr, barriers++);
    if (active) var = SumParts(g_sq, d.nbr, s_dwarp) / static_cast<double>(n);
  }

  // k_t (every block of the row computes it; part 0 stores it), as SelectionKKernel.
  int64_t kk = 0;
  if (dense) {
    if (part == 0 && tid == 0) {
      a.cumvar[ia.rows.slot[r]] = DenseRowCumvar();
      a.k[r] = pos + 1;
    }
  } else if (active) {
    float cum;
    const int64_t kt = SelectedCountAfter(a.rule, prev_cum, pos, var, 0.0, &cum);
    if (part == 0 && tid == 0) {
      a.cumvar[ia.rows.slot[r]] = cum;
      a.k[r] = static_cast<int32_t>(kt);
      if (a.rule.method == 1) a.var[r] = var;
    }
    kk = min(min(kt, n), a.sel_stride);
  }
  const bool selecting = active && kk > 0;

  // Radix passes: pass p's histogram is complete at the barrier after it was built. After pass 1,
  // a row whose eq bucket holds at most kDsListCap keys (every block of the row sees the same
  // histogram, so the choice is uniform) takes the eq-list path instead of a global pass 2: each
  // block appends its eq keys' last digit with its part number to the row's list and stores its gt
  // count; after one barrier every block runs pass 2 on the list locally and derives its carries
  // from the list and the gt counts (two barriers fewer than the global pass 2 and the counts).
  //
  // Before them, a sigmoid row tries the coarse path: when the coarse bucket holding the k-th
  // largest score has at most kDsListCap keys (the usual case: the bucket is 1/2048 of the score
  // range, wherever the scores sit), each block appends that bucket's keys (full key and part) to
  // the row's list and stores its count above the bucket; after one barrier every block selects in
  // the list (ranked directly, or three radix passes in shared memory for more than kDsThreads
  // keys) and derives its carries — the whole selection with two row barriers, one histogram pass
  // and one barrier fewer than the eq-list path. Uniform over the row's blocks (the same coarse
  // histogram).
  SelectState st = InitState(static_cast<int32_t>(kk), n);
  if (!selecting) st.done = 1;
  bool coarse_path = false;
  int32_t c_digit = 0, c_above = 0, c_len = 0;  // the coarse bucket, keys above it, keys in it
  if (!st.done && coarse_inv > 0.0f) {
    AdvanceStateFromRowHist(st, 0, g_hist_c, s_warp, s_result);  // only s_result is used
    c_digit = s_result[0];
    c_above = s_result[1];
    c_len = s_result[2];
    coarse_path = c_digit >= 0 && c_len <= kDsListCap;
    __syncthreads();  // every thread has read s_result before the next AdvanceState writes it
  }
  bool list_path = false;
  int32_t len = 0;  // the eq list's length on the list path: the pass-1 bucket's count
  for (int pass = 0; pass < kNumPasses && !coarse_path; ++pass) {
    int32_t bucket = 0;  // keys in the chosen digit bucket (the new eq count)
    if (!st.done) {  // uniform over the row's blocks
      st = AdvanceStateFromRowHist(st, pass, g_hist + pass * kRadix, s_warp, s_result);
      bucket = s_result[2];  // AdvanceState's last barrier made it visible; rewritten only by the next call
    }
    mark(5 + 3 * pass);
    if (pass == kNumPasses - 1) break;
    if (pass == 1 && !st.done && bucket <= kDsListCap) {
      list_path = true;
      len = bucket;
      break;
    }
    if (!st.done) {
      for (int i = tid; i < kRadix; i += kDsThreads) s_hist[i] = 0;
      __syncthreads();
      with_scores([&](const auto& src) {
        HistogramRange(src, pb, pe, st.mask, st.prefix, PassShift(pass + 1), PassDigitMask(pass + 1), s_hist, tid,
                       kDsThreads);
      });
      __syncthreads();
      FlushHistogram<kDsThreads>(s_hist, g_hist + (pass + 1) * kRadix);
    }
    mark(6 + 3 * pass);
    RowBarrier(g_bar, nbr, barriers++);
    mark(7 + 3 * pass);
  }

  int32_t carry_g = 0, carry_e = 0;
  uint32_t ticket = 0;  // RowBarrierDepart's, taken after the row's last barrier on every path
  if (coarse_path) {
    // (C'') The part's count above the coarse bucket, and the bucket's keys appended as
    // (key << 32 | part).
    mark(5);
    mark(6);
    mark(7);
    mark(8);
    append_bucket(
        [&](float v) {
          const int32_t b = CoarseBucket(v, coarse_inv);
          return b > c_digit ? 1 : (b == c_digit ? 0 : -1);
        },
        g_list_c, [&](float v) { return (static_cast<uint64_t>(OrderKey(v)) << 32) | static_cast<uint32_t>(part); });
    ticket = meet_last();
    // (D'') The (kk − c_above)-th largest key of the list, exactly, and how many keys equal to it
    // the row takes. Each thread's first entry loads in one round trip with its first preceding
    // part's count (a longer list's others in the radix branch, kDsListCap / kDsThreads a thread,
    // held in registers there only: the ranked branch stays light). A list of at most one entry
    // a thread (the usual case: tens of keys) is ranked directly — each entry counts the keys
    // above and equal to its own in shared memory, and the one whose rank range holds k − c_above
    // gives the threshold — in two barriers; a longer one takes three radix passes.
    const uint64_t e0 = tid < c_len ? __ldcg(g_list_c + tid) : 0ull;  // the thread's first entry
    int32_t gt1 = tid < part ? static_cast<int32_t>(__ldcg(g_cnt + 2 * tid)) : 0;
    const int32_t k_list = st.kneed - c_above;  // in [1, c_len]: the bucket holds the kneed-th key
    uint32_t t_key = 0;
    int32_t t_take = 0;  // keys equal to t_key the row takes
    int32_t cge = 0;     // gt count | eq count << 16, of the list entries of parts before this one
    // Entry i's share of the carries, once t_key is known.
    auto tally = [&](uint64_t ent, int32_t i) {
      if (i < c_len && static_cast<int32_t>(static_cast<uint32_t>(ent)) < part) {
        const uint32_t key = static_cast<uint32_t>(ent >> 32);
        cge += key > t_key ? 1 : (key == t_key ? 1 << 16 : 0);
      }
    };
    if (c_len <= kDsThreads) {
      // Keys padded with 0 to a multiple of 4 (no OrderKey is 0: −inf's is 0x007FFFFF), read 4 at
      // a time (broadcast loads: every thread reads the same words).
      static_assert(kRadix >= kDsThreads + 4, "the ranked keys fit in s_hist");
      uint32_t* s_keys = reinterpret_cast<uint32_t*>(s_hist);
      const uint32_t mine = static_cast<uint32_t>(e0 >> 32);
      const int32_t padded = (c_len + 3) & ~3;
      if (tid < padded) s_keys[tid] = tid < c_len ? mine : 0u;
      __syncthreads();
      if (tid < c_len) {
        // A count per lane of the 4-key loads, summed at the end: eight short dependent chains
        // instead of two (or three, with an index test per key) through every key.
        int32_t above4[4] = {0, 0, 0, 0}, equal4[4] = {0, 0, 0, 0};
        for (int32_t j = 0; j < padded; j += 4) {
          const uint4 x = *reinterpret_cast<const uint4*>(s_keys + j);
          const uint32_t xs[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            above4[c] += xs[c] > mine;
            equal4[c] += xs[c] == mine;
          }
        }
        const int32_t above = above4[0] + above4[1] + above4[2] + above4[3];
        const int32_t equal = equal4[0] + equal4[1] + equal4[2] + equal4[3];
        // Every entry equal to the threshold key finds the same two values: each writes them with
        // an atomic exchange (the same result whichever lands last, and no unordered plain writes).
        if (above < k_list && k_list <= above + equal) {
          atomicExch(&s_result[0], static_cast<int32_t>(mine));
          atomicExch(&s_result[1], k_list - above);
        }
      }
      __syncthreads();
      t_key = static_cast<uint32_t>(s_result[0]);
      t_take = s_result[1];
      tally(e0, tid);
    } else {
      constexpr int kPer = static_cast<int>(kDsListCap / kDsThreads);
      static_assert(kDsListCap % kDsThreads == 0, "list entries per thread");
      uint64_t ent[kPer];
      ent[0] = e0;
#pragma unroll
      for (int q = 1; q < kPer; ++q) {
        const int32_t i = tid + q * kDsThreads;
        ent[q] = i < c_len ? __ldcg(g_list_c + i) : 0ull;
      }
      SelectState sl = InitState(k_list, c_len);
      for (int pass = 0; pass < kNumPasses; ++pass) {
        for (int i = tid; i < kRadix; i += kDsThreads) s_hist[i] = 0;
        __syncthreads();
#pragma unroll
        for (int q = 0; q < kPer; ++q) {
          const uint32_t key = static_cast<uint32_t>(ent[q] >> 32);
          if (tid + q * kDsThreads < c_len && (key & sl.mask) == sl.prefix) {
            atomicAdd(&s_hist[(key >> PassShift(pass)) & PassDigitMask(pass)], 1);
          }
        }
        __syncthreads();
        sl = AdvanceState<kDsThreads>(sl, pass, s_hist, s_warp, s_result);
      }
      t_key = sl.prefix;  // sl.mask covers every bit after the three passes
      t_take = sl.kneed;
#pragma unroll
      for (int q = 0; q < kPer; ++q) tally(ent[q], tid + q * kDsThreads);
    }
    mark(11);
    // The final state: every key of the row above the list's threshold key t_key is selected, and
    // the first t_take equal to it; carries as the eq-list path's.
    for (int32_t q = tid + kDsThreads; q < part; q += kDsThreads) gt1 += static_cast<int32_t>(__ldcg(g_cnt + 2 * q));
    ListCarries(gt1, cge, reinterpret_cast<int64_t*>(s_dwarp), &carry_g, &carry_e);
    st.prefix = t_key;
    st.mask = kFullMask;
    st.kneed = t_take;
    st.done = 1;
    mark(12);
    mark(13);
  } else if (list_path) {
    // (C') The part's gt count, and its eq keys appended as (last digit << 10 | part).
    static_assert(kDsMaxParts <= 1024 && PassDigitMask(2) < 1024, "list entries pack digit and part in 20 bits");
    append_bucket(
        [&](float v) {
          const uint32_t km = OrderKey(v) & st.mask;
          return km > st.prefix ? 1 : (km == st.prefix ? 0 : -1);
        },
        g_list, [&](float v) { return ((OrderKey(v) & PassDigitMask(2)) << 10) | static_cast<uint32_t>(part); });
    ticket = meet_last();
    // (D') Pass 2 on the list, in this block. Each thread's first list entry and first preceding
    // part's gt count load together, before the histogram is cleared: one L2 round trip for the
    // usual case of at most kDsThreads of each (the loops below take the rest).
    const uint32_t v0 = tid < len ? __ldcg(g_list + tid) : 0u;
    int32_t gt1 = tid < part ? static_cast<int32_t>(__ldcg(g_cnt + 2 * tid)) : 0;
    for (int i = tid; i < kRadix; i += kDsThreads) s_hist[i] = 0;
    __syncthreads();
    if (tid < len) atomicAdd(&s_hist[v0 >> 10], 1);
    for (int32_t i = tid + kDsThreads; i < len; i += kDsThreads) atomicAdd(&s_hist[__ldcg(g_list + i) >> 10], 1);
    __syncthreads();
    st = AdvanceState<kDsThreads>(st, 2, s_hist, s_warp, s_result);
    mark(11);
    // Carries: gt and eq (under the final state) of the parts before this one; the list's two
    // counts (each ≤ kDsListCap) summed as one packed word.
    static_assert(kDsListCap < (1 << 16), "packed list counts");
    const uint32_t last = st.prefix & PassDigitMask(2);
    int32_t cge = 0;  // gt count | eq count << 16
    auto tally = [&](uint32_t v) {
      if (static_cast<int32_t>(v & 1023u) < part) cge += (v >> 10) > last ? 1 : ((v >> 10) == last ? 1 << 16 : 0);
    };
    if (tid < len) tally(v0);
    for (int32_t i = tid + kDsThreads; i < len; i += kDsThreads) tally(__ldcg(g_list + i));
    for (int32_t q = tid + kDsThreads; q < part; q += kDsThreads) gt1 += static_cast<int32_t>(__ldcg(g_cnt + 2 * q));
    ListCarries(gt1, cge, reinterpret_cast<int64_t*>(s_dwarp), &carry_g, &carry_e);
    mark(12);
    mark(13);
  } else {
    // (C) Per-part (gt, eq) counts under the final state.
    if (selecting) {
      int32_t g = 0, e = 0;
      with_scores([&](const auto& src) { CountRange<kDsThreads>(src, pb, pe, st, s_warp, &g, &e); });
      if (tid == 0) {
        g_cnt[2 * part] = static_cast<uint32_t>(g);
        g_cnt[2 * part + 1] = static_cast<uint32_t>(e);
      }
    }
    mark(12);
    RowBarrier(g_bar, nbr, barriers++);
    ticket = RowBarrierDepart(g_bar);  // the row's last barrier
    mark(13);
    // Every histogram read is done: part 0 leaves the row's histograms zeroed for the next launch.
    if (part == 0) {
      for (int64_t i = tid; i < kDsHistWords; i += kDsThreads) g_hist[i] = 0u;
    }
    if (selecting) PrecedingCounts<kDsThreads>(g_cnt, static_cast<int>(part), s_warp, &carry_g, &carry_e);
  }
  // (D) Ordered compaction, carrying the preceding parts' counts.
  if (selecting) {
    int32_t* out = a.sel + r * a.sel_stride;
    with_scores([&](const auto& src) {
      OrderedCompact<kDsThreads, kMbItems>(src, n, jb, je, st, carry_g, carry_e, out, static_cast<int32_t>(kk), s_tot);
    });
  }
  RowBarrierReset(g_bar, nbr, ticket);
  mark(14);
}

template <int D_I, bool kFp8>
cudaError_t PrepareDecodeSelect(int* per_sm) {
  // Static + dynamic shared memory exceed the 48 KB that needs no opt-in.
  cudaError_t err = cudaFuncSetAttribute(DecodeSelectKernel<D_I, kFp8>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(kDsSmemFloats * sizeof(float)));
  if (err != cudaSuccess) return err;
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(per_sm, DecodeSelectKernel<D_I, kFp8>, kDsThreads,
                                                       kDsSmemFloats * sizeof(float));
}

template <int D_I, bool kFp8>
cudaError_t LaunchDecodeSelect(const DecodeSelectArgs& a, cudaStream_t stream) {
  int device = 0, coop = 0, sms = 0, per_sm = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device);
  if (err != cudaSuccess) return err;
  if (coop == 0) return cudaErrorNotSupported;
  err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  per_sm = a.resident_blocks_per_sm;
  if (per_sm <= 0) {
    err = PrepareDecodeSelect<D_I, kFp8>(&per_sm);
    if (err != cudaSuccess) return err;
  }
  const int64_t rows = a.index.row_count;
  const int64_t resident = static_cast<int64_t>(per_sm) * sms;
  int64_t nbr = resident / rows;
  nbr = std::min<int64_t>(nbr, std::max<int64_t>(1, CeilDiv(a.index.max_candidates, kDsMinSeg)));
  nbr = std::min<int64_t>(nbr, kDsMaxParts);
  if (nbr < 1) return cudaErrorNotSupported;
  DsArgs d;
  d.a = a;
  d.ws = static_cast<uint8_t*>(a.workspace);
  d.nbr = static_cast<int32_t>(nbr);
  d.seg = CeilDiv(a.index.max_candidates, nbr);
  d.max_blocks = DecodeSelectMaxBlocks(rows);

  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(rows * nbr));
  cfg.blockDim = dim3(kDsThreads);
  cfg.dynamicSmemBytes = kDsSmemFloats * sizeof(float);
  cfg.stream = stream;
  // Cooperative (the row barriers need every block resident), and on Hopper and later also a
  // programmatic dependent of the kernel before it: the launch overlaps that kernel's tail (the
  // blocks wait at the top of the kernel, before reading anything).
  bool pdl = false;
  err = ProgrammaticLaunchSupported(device, &pdl);
  if (err != cudaSuccess) return err;
  cudaLaunchAttribute attr[2];
  attr[0].id = cudaLaunchAttributeCooperative;
  attr[0].val.cooperative = 1;
  attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[1].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 2 : 1;
  const cudaError_t launched = cudaLaunchKernelEx(&cfg, DecodeSelectKernel<D_I, kFp8>, d);
  if (launched == cudaErrorCooperativeLaunchTooLarge) {
    // Fewer blocks fit than the occupancy query said (another context holding SMs): not an error
    // of the step; the caller runs the separate launches instead.
    (void)cudaGetLastError();
    return cudaErrorNotSupported;
  }
  return launched;
}
// ---- Thresholded prefill selection (PrefillSelect) ---------------------------------------------
// The workspace: per absolute row whether the fallback launches skip it; per chunk row the
// (threshold, shift) pair and the list's count; per chunk row and 2048-candidate block the sums.
struct PsWorkspace {
  uint8_t* skip_full;   // [num_rows]: 1 = not scored in full (RowInfo::dense of the fallback)
  float2* thr_shift;    // [row_count]
  int32_t* count;       // [row_count]
  double2* stats;       // [row_count, blocks]
};

constexpr size_t AlignUp(size_t x) { return (x + 255) / 256 * 256; }

size_t PsLayout(int64_t num_rows, int64_t row_count, int64_t max_candidates, void* base, PsWorkspace* ws) {
  const size_t skip = AlignUp(static_cast<size_t>(num_rows));
  const size_t ts = AlignUp(static_cast<size_t>(row_count) * sizeof(float2));
  const size_t count = AlignUp(static_cast<size_t>(row_count) * sizeof(int32_t));
  const size_t stats = static_cast<size_t>(row_count * IndexerFilterBlocks(max_candidates)) * sizeof(double2);
  if (ws != nullptr) {
    unsigned char* p = static_cast<unsigned char*>(base);
    ws->skip_full = p;
    ws->thr_shift = reinterpret_cast<float2*>(p + skip);
    ws->count = reinterpret_cast<int32_t*>(p + skip + ts);
    ws->stats = reinterpret_cast<double2*>(p + skip + ts + count);
  }
  return skip + ts + count + stats;
}

// Samples of a row of n candidates (IndexerScoresSampled with kPrefillSampleStride).
__device__ __forceinline__ int64_t PsSampleCount(int64_t n) {
  const int64_t tiles = n / kPrefillSampleStride, rest = n % kPrefillSampleStride;
  return tiles * 64 + (rest < 64 ? rest : 64);
}
constexpr int64_t kPsMaxSamples = kPrefillSelectMaxCandidates / kPrefillSampleStride * 64;  // 8192

// One block per chunk row: the row's threshold (the key of the m-th largest sample, as a float
// bound; NaN = keep nothing, so that the row is scored in full) and the sample mean; zeroes the
// row's list count and marks the row as not (yet) to be scored in full. k_hi: the largest k the
// rule can give a row.
__global__ void __launch_bounds__(kSbThreads) PsThresholdKernel(IndexerScoresArgs a, int64_t k_hi, int64_t sel_stride,
                                                              PsWorkspace ws) {
  __shared__ float s_val[kPsMaxSamples];
  __shared__ int32_t s_hist[kRadix];
  __shared__ int32_t s_warp[kSbThreads / 32];
  __shared__ double s_dwarp[kSbThreads / 32];
  __shared__ int32_t s_result[3];
  const int64_t i = blockIdx.x, r = a.row_begin + i;
  float2 ts = make_float2(__int_as_float(0x7FC00000), 0.0f);
  if (threadIdx.x == 0) {
    ws.skip_full[r] = 1;
    ws.count[i] = 0;
  }
  if (a.rows.dense[r] != 0) {
    if (threadIdx.x == 0) ws.thr_shift[i] = ts;
    return;  // uniform
  }
  const int64_t n = static_cast<int64_t>(a.rows.position[r]) + 1;
  const int64_t samples = min(PsSampleCount(n), kPsMaxSamples);  // n ≤ 2^18 (the launcher checks)
  int64_t kk = k_hi < n ? k_hi : n;
  if (kk > sel_stride) kk = sel_stride;
  // The m-th largest sample with m = mu + 4·sqrt(mu) + 8, mu = kk·S/n the samples expected above the
  // k-th score: the k-th score lies below it only when the sample count above the k-th score is
  // 4 standard deviations high (then the row is scored in full); about m·n/S scores reach it, which
  // the list must hold.
  const double mu = static_cast<double>(kk) * samples / static_cast<double>(n);
  const int64_t m = static_cast<int64_t>(ceil(mu + 4.0 * sqrt(mu) + 8.0));
  const double room = min(static_cast<double>(kPrefillListCap), static_cast<double>((n - 1) / 2));
  const bool usable = n >= kPrefillSelectMinCandidates && m <= samples &&
                      static_cast<double>(m) * n / samples <= 0.75 * room;
  // The shift of the variance sums: the sample's mean (every row has a sample, n ≤ 2^18; a row of
  // fewer than 64 candidates has all of them, so its shift is their mean).
  const float* src = a.scores + a.score_offset[i];
  double sum = 0.0;
  for (int64_t j = threadIdx.x; j < samples; j += kSbThreads) {
    const float x = __ldg(src + j);
    s_val[j] = x;
    sum += static_cast<double>(x);
  }
  sum = BlockSumDouble<kSbThreads>(sum, s_dwarp);  // its barriers also publish s_val
  ts.y = static_cast<float>(sum / static_cast<double>(samples));
  if (usable) {  // uniform
    const SelectState st = SelectInBlock(SharedScores{s_val, 0}, samples, static_cast<int32_t>(m), s_hist, s_warp,
                                         s_result);
    const KeyAtLeast bound(st.prefix);  // key ≥ prefix ⇔ (key & mask) ≥ prefix for the top bits
    // "Everything passes" needs every score in the list, more than it holds; "nothing" keeps none.
    if (bound.mode == 0) ts.x = bound.bound;
  }
  if (threadIdx.x == 0) ws.thr_shift[i] = ts;
}

// var[r] of the chunk's sparse rows from the filtered indexer's per-block sums, one thread a row:
// Σd and Σd² (d = x − K) over the n scores, var = Σd²/n − (Σd/n)², blocks added in order.
__global__ void PsVarianceKernel(IndexerScoresArgs a, int64_t blocks, PsWorkspace ws, double* var) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= a.row_count) return;
  const int64_t r = a.row_begin + i;
  if (a.rows.dense[r] != 0) return;
  double s1 = 0.0, s2 = 0.0;
  for (int64_t b = 0; b < blocks; ++b) {
    const double2 v = ws.stats[i * blocks + b];
    s1 += v.x;
    s2 += v.y;
  }
  const double n = static_cast<double>(a.rows.position[r]) + 1.0;
  const double mean_d = s1 / n;
  const double v = s2 / n - mean_d * mean_d;
  var[r] = v > 0.0 ? v : 0.0;
}

// Dynamic shared memory of PsListTopKKernel: the sorted list (scores, positions), then the
// positions' bitmap and each bitmap word's count of earlier set bits.
size_t PsListSmemBytes(int64_t max_candidates) {
  const int64_t words = (max_candidates + 31) / 32;
  return static_cast<size_t>(kPrefillListCap) * (sizeof(float) + sizeof(int32_t)) +
         static_cast<size_t>(words) * 2 * sizeof(uint32_t);
}

// One block per chunk row: when the row's list holds every score at or above its threshold
// (count ≤ capacity) and at least kk of them, the exact top-kk of the list is the row's: the list
// is put in position order (a bitmap of its positions, each word's count of earlier positions,
// then every entry to its rank), then selected and compacted as TopKSampledKernel's buffer. Other
// sparse rows are marked to be scored in full.
__global__ void __launch_bounds__(kSbThreads) PsListTopKKernel(IndexerScoresArgs a, const int32_t* k, int32_t* sel,
                                                             int64_t sel_stride, PsWorkspace ws, uint8_t* full_rows) {
  extern __shared__ __align__(16) unsigned char ps_smem[];
  float* s_val = reinterpret_cast<float*>(ps_smem);                                        // [cap]
  int32_t* s_pos = reinterpret_cast<int32_t*>(ps_smem + kPrefillListCap * sizeof(float));  // [cap]
  uint32_t* s_bits = reinterpret_cast<uint32_t*>(ps_smem + kPrefillListCap * 8);          // [words]
  __shared__ int32_t s_hist[kRadix];
  __shared__ int32_t s_warp[kSbThreads / 32];
  __shared__ int32_t s_result[3];
  __shared__ int32_t s_tot[2][2][kSbThreads / 32];
  const int64_t i = blockIdx.x, r = a.row_begin + i;
  ScoreChunk chunk;
  chunk.scores = a.scores;
  chunk.score_offset = a.score_offset;
  chunk.row_begin = a.row_begin;
  chunk.row_count = a.row_count;
  TopKRow row;
  const bool live = LoadTopKRow(chunk, a.rows, k, sel, sel_stride, i, &row);
  const int32_t count = ws.count[i];
  const indexer_math::PrefillList list =
      indexer_math::PrefillListOf(a.scores + a.score_offset[i], live ? row.n : 0, kPrefillListCap);
  const bool from_list = live && count >= row.kk && count <= list.capacity;
  if (threadIdx.x == 0) {
    if (live && !from_list) ws.skip_full[r] = 0;
    if (full_rows != nullptr) full_rows[i] = live && !from_list ? 1 : 0;
  }
  if (!from_list) return;  // uniform
  const int32_t words = static_cast<int32_t>((row.n + 31) / 32);
  uint32_t* s_before = s_bits + words;
  for (int32_t w = threadIdx.x; w < words; w += kSbThreads) s_bits[w] = 0u;
  __syncthreads();
  for (int32_t e = threadIdx.x; e < count; e += kSbThreads) {
    const int32_t p = __ldcg(&list.entries[e].x);
    atomicOr(&s_bits[p >> 5], 1u << (p & 31));
  }
  __syncthreads();
  // Each thread's run of consecutive words, then an exclusive sum over the threads.
  const int32_t per = (words + kSbThreads - 1) / kSbThreads;
  const int32_t w0 = min(words, static_cast<int32_t>(threadIdx.x) * per), w1 = min(words, w0 + per);
  int32_t mine = 0;
  for (int32_t w = w0; w < w1; ++w) mine += __popc(s_bits[w]);
  int32_t total;
  int32_t before = BlockExclusiveSum<kSbThreads>(mine, s_warp, &total);
  for (int32_t w = w0; w < w1; ++w) {
    s_before[w] = static_cast<uint32_t>(before);
    before += __popc(s_bits[w]);
  }
  __syncthreads();
  for (int32_t e = threadIdx.x; e < count; e += kSbThreads) {
    const int2 entry = __ldcg(&list.entries[e]);
    const int32_t p = entry.x;
    const int32_t rank =
        static_cast<int32_t>(s_before[p >> 5]) + __popc(s_bits[p >> 5] & ((1u << (p & 31)) - 1u));
    s_val[rank] = __int_as_float(entry.y);
    s_pos[rank] = p;
  }
  __syncthreads();
  const SelectState st = SelectInBlock(SharedScores{s_val, 0}, count, row.kk, s_hist, s_warp, s_result);
  OrderedCompact<kSbThreads, kSbItems>(SharedScores{s_val, 0}, count, 0, count, st, 0, 0, row.out, row.kk, s_tot,
                                       BufferPos{s_pos});
}

}  // namespace

// ---- Launchers ---------------------------------------------------------------------------------

cudaError_t ScoreStats(const ScoreChunk& chunk, const RowInfo& rows, double* var, double* entropy,
                       cudaStream_t stream) {
  if (chunk.row_count <= 0) return cudaSuccess;
  if (var == nullptr || chunk.row_count > 0x7FFFFFFF) return cudaErrorInvalidValue;
  ScoreStatsKernel<<<static_cast<unsigned>(chunk.row_count), kStatsThreads, 0, stream>>>(chunk, rows, var, entropy);
  return cudaGetLastError();
}

cudaError_t SelectionCounts(const ScoreChunk& chunk, const RowInfo& rows, const PagedLayout& paged,
                            const int32_t* seq_first_row, int32_t num_seqs, const SelectionRule& rule,
                            const double* var, const double* entropy, float* cumvar, int32_t* k,
                            cudaStream_t stream) {
  if (chunk.row_count <= 0 || num_seqs <= 0) return cudaSuccess;
  if (rule.method < 0 || rule.method > 2) return cudaErrorInvalidValue;
  if (rule.method == 2 && entropy == nullptr) return cudaErrorInvalidValue;
  const unsigned blocks = static_cast<unsigned>(CeilDiv(static_cast<int64_t>(num_seqs) * 32, kCountsThreads));
  SelectionChainKernel<<<blocks, kCountsThreads, 0, stream>>>(chunk, rows, paged, seq_first_row, num_seqs, var, cumvar);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  SelectionKKernel<<<static_cast<unsigned>(CeilDiv(chunk.row_count, kCountsThreads)), kCountsThreads, 0, stream>>>(
      chunk, rows, rule, var, entropy, cumvar, k);
  return cudaGetLastError();
}

size_t TopKWorkspaceBytes(int64_t max_rows, int64_t max_candidates) {
  if (max_rows <= 0 || max_candidates < kMbMinCandidates) return 0;
  const int64_t rows = max_rows < kMbMaxRows ? max_rows : kMbMaxRows;
  return static_cast<size_t>(rows * MbRowWords(MbMaxBlocksPerRow(max_candidates)) * 4);
}

bool TopKUsesMultiBlock(int64_t row_count, int64_t max_candidates, const void* workspace, size_t workspace_bytes) {
  if (workspace == nullptr || row_count <= 0 || row_count > kMbMaxRows) return false;
  if (max_candidates < kMbMinCandidates) return false;
  const int64_t needed = row_count * MbRowWords(MbMaxBlocksPerRow(max_candidates)) * 4;
  return workspace_bytes >= static_cast<size_t>(needed);
}

cudaError_t TopK(const ScoreChunk& chunk, const RowInfo& rows, const int32_t* k, int32_t* sel, int64_t sel_stride,
                 void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (chunk.row_count <= 0) return cudaSuccess;
  if (sel_stride <= 0 || chunk.row_count > 0x7FFFFFFF) return cudaErrorInvalidValue;

  if (!TopKUsesMultiBlock(chunk.row_count, chunk.max_candidates, workspace, workspace_bytes)) {
    const unsigned blocks = static_cast<unsigned>(chunk.row_count);
    if (chunk.max_candidates >= kSmpMinCandidates) {
      const cudaError_t err = cudaFuncSetAttribute(TopKSampledKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                   static_cast<int>(kSmpSmemBytes));
      if (err != cudaSuccess) return err;
      TopKSampledKernel<<<blocks, kSbThreads, kSmpSmemBytes, stream>>>(chunk, rows, k, sel, sel_stride);
    } else {
      TopKSingleBlockKernel<<<blocks, kSbThreads, 0, stream>>>(chunk, rows, k, sel, sel_stride);
    }
    return cudaGetLastError();
  }

  const int64_t nb_max = MbMaxBlocksPerRow(chunk.max_candidates);
  int64_t nb = CeilDiv(chunk.max_candidates, kMbSegMin);
  const int64_t nb_cap = kMbMaxGridBlocks / chunk.row_count;  // row_count ≤ kMbMaxRows < kMbMaxGridBlocks
  if (nb > nb_cap) nb = nb_cap;
  if (nb > nb_max) nb = nb_max;
  if (nb < 1) nb = 1;
  MbArgs a;
  a.chunk = chunk;
  a.rows = rows;
  a.k = k;
  a.sel = sel;
  a.sel_stride = sel_stride;
  a.ws = static_cast<uint32_t*>(workspace);
  a.row_words = MbRowWords(nb_max);
  a.seg = CeilDiv(chunk.max_candidates, nb);

  const size_t used = static_cast<size_t>(chunk.row_count * a.row_words * 4);
  cudaError_t err = cudaMemsetAsync(workspace, 0, used, stream);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(nb), static_cast<unsigned>(chunk.row_count));
  for (int pass = 0; pass < kNumPasses; ++pass) {
    TopKMbHistogramKernel<<<grid, kMbThreads, 0, stream>>>(a, pass);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  TopKMbCountKernel<<<grid, kMbThreads, 0, stream>>>(a);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  TopKMbWriteKernel<<<grid, kMbThreads, 0, stream>>>(a);
  return cudaGetLastError();
}


const char* DecodeSelectMarkName(int i) {
  static constexpr const char* kNames[kDecodeSelectMarks] = {
      "start",          "query loaded",  "scored",          "pass-0 histogram", "barrier 1",
      "pass-0 state | coarse bucket",   "pass-1 histogram", "barrier 2",    "pass-1 state",
      "pass-2 histogram | eq list | coarse list",
      "barrier 3 | 2 (coarse)",      "pass-2 state | list ranked",  "counted | carries",
      "barrier 4 (not on the list paths)", "compacted"};
  return i >= 0 && i < kDecodeSelectMarks ? kNames[i] : "?";
}

int64_t DecodeSelectMaxBlocks(int64_t rows) { return std::max<int64_t>(rows, 0) * kDsMaxParts; }

size_t DecodeSelectWorkspaceBytes(int64_t max_rows) {
  if (max_rows <= 0) return 0;
  const int64_t rows = max_rows < kDsMaxRows ? max_rows : kDsMaxRows;
  return static_cast<size_t>(rows * kDsRowBytes);
}

cudaError_t DecodeSelectPrepare(int32_t d_indexer, bool fp8_keys, int32_t* per_sm) {
  int n = 0;
  cudaError_t err = cudaSuccess;
  switch (d_indexer) {
    case 16: err = fp8_keys ? PrepareDecodeSelect<16, true>(&n) : PrepareDecodeSelect<16, false>(&n); break;
    case 32: err = fp8_keys ? PrepareDecodeSelect<32, true>(&n) : PrepareDecodeSelect<32, false>(&n); break;
    case 64: err = fp8_keys ? PrepareDecodeSelect<64, true>(&n) : PrepareDecodeSelect<64, false>(&n); break;
    case 128: err = fp8_keys ? PrepareDecodeSelect<128, true>(&n) : PrepareDecodeSelect<128, false>(&n); break;
    default: return cudaErrorNotSupported;
  }
  if (err == cudaSuccess) *per_sm = n;
  return err;
}

cudaError_t DecodeSelect(const DecodeSelectArgs& a, cudaStream_t stream) {
  const IndexerScoresArgs& ia = a.index;
  if (ia.row_count <= 0) return cudaSuccess;
  if (a.rule.method != 0 && a.rule.method != 1) return cudaErrorNotSupported;
  if (!IndexerScoresSupports(ia.d_indexer, ia.n_indexer_heads)) return cudaErrorNotSupported;
  if (ia.row_count > kDsMaxRows || ia.max_candidates <= 0 || ia.max_candidates > (int64_t{1} << 30)) {
    return cudaErrorNotSupported;
  }
  if (a.workspace == nullptr || a.workspace_bytes < static_cast<size_t>(ia.row_count * kDsRowBytes)) {
    return cudaErrorNotSupported;
  }
  if (a.sel == nullptr || a.k == nullptr || a.cumvar == nullptr || a.sel_stride <= 0 ||
      (a.rule.method == 1 && a.var == nullptr)) {
    return cudaErrorInvalidValue;
  }
  if (ia.ki_fp8 != nullptr ? ia.ki_scale == nullptr : ia.ki_cache == nullptr) return cudaErrorInvalidValue;
  const bool fp8 = ia.ki_fp8 != nullptr;
  switch (ia.d_indexer) {
    case 16: return fp8 ? LaunchDecodeSelect<16, true>(a, stream) : LaunchDecodeSelect<16, false>(a, stream);
    case 32: return fp8 ? LaunchDecodeSelect<32, true>(a, stream) : LaunchDecodeSelect<32, false>(a, stream);
    case 64: return fp8 ? LaunchDecodeSelect<64, true>(a, stream) : LaunchDecodeSelect<64, false>(a, stream);
    default: return fp8 ? LaunchDecodeSelect<128, true>(a, stream) : LaunchDecodeSelect<128, false>(a, stream);
  }
}

// ---- Thresholded prefill selection -------------------------------------------------------------

size_t PrefillSelectWorkspaceBytes(int64_t num_rows, int64_t max_candidates) {
  if (num_rows <= 0 || max_candidates <= 0) return 0;
  return PsLayout(num_rows, num_rows, max_candidates, nullptr, nullptr);
}

cudaError_t PrefillSelect(const PrefillSelectArgs& args, cudaStream_t stream) {
  const IndexerScoresArgs& ia = args.index;
  if (args.rule.method != 0 && args.rule.method != 1) return cudaErrorNotSupported;
  const int64_t k_hi = args.rule.method == 0 ? args.rule.k_base : args.rule.k_max;
  if (k_hi > kPrefillListCap / 2) return cudaErrorNotSupported;  // the lists would hold too few
  if (ia.max_candidates < kPrefillSelectMinCandidates || ia.max_candidates > kPrefillSelectMaxCandidates ||
      ia.n_indexer_heads > indexer_math::kPairMaxHeads || ia.row_count > 65535) {
    return cudaErrorNotSupported;
  }
  if (ia.row_count <= 0) return cudaSuccess;
  bool wgmma = false;
  cudaError_t err = OnCurrentDevice(WgmmaSupported, &wgmma);
  if (err != cudaSuccess) return err;
  if (!wgmma) return cudaErrorNotSupported;
  PsWorkspace ws;
  const size_t need = PsLayout(ia.row_begin + ia.row_count, ia.row_count, ia.max_candidates, args.workspace, &ws);
  if (args.workspace == nullptr || args.workspace_bytes < need) return cudaErrorNotSupported;
  if (args.sel_stride <= 0 || args.k == nullptr || args.sel == nullptr || args.cumvar == nullptr ||
      (args.rule.method == 1 && args.var == nullptr)) {
    return cudaErrorInvalidValue;
  }
  const unsigned rows = static_cast<unsigned>(ia.row_count);
  // 1. The sample: into the first samples of every row's region.
  IndexerScoresArgs sample = ia;
  sample.max_candidates = IndexerSampleCount(ia.max_candidates, kPrefillSampleStride);
  sample.tiles_per_block = 0;
  err = IndexerScoresSampled(sample, kPrefillSampleStride, stream);
  if (err != cudaSuccess) return err;
  // 2. Thresholds.
  PsThresholdKernel<<<rows, kSbThreads, 0, stream>>>(ia, k_hi, args.sel_stride, ws);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  // 3. Every score, kept when it reaches the threshold (and summed for the variance rule).
  IndexerFilter filter;
  filter.thr_shift = ws.thr_shift;
  filter.count = ws.count;
  filter.list_cap = kPrefillListCap;
  filter.stats = args.rule.method == 1 ? ws.stats : nullptr;
  err = IndexerScoresFiltered(ia, filter, stream);
  if (err != cudaSuccess) return err;
  // 4. var, then k and cumvar as ever.
  ScoreChunk chunk;
  chunk.scores = ia.scores;
  chunk.score_offset = ia.score_offset;
  chunk.row_begin = ia.row_begin;
  chunk.row_count = ia.row_count;
  chunk.max_candidates = ia.max_candidates;
  if (args.rule.method == 1) {
    constexpr int kThreads = 128;
    PsVarianceKernel<<<static_cast<unsigned>(CeilDiv(ia.row_count, kThreads)), kThreads, 0, stream>>>(
        ia, IndexerFilterBlocks(ia.max_candidates), ws, args.var);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  err = SelectionCounts(chunk, ia.rows, ia.paged, args.seq_first_row, args.num_seqs, args.rule,
                        args.rule.method == 1 ? args.var : nullptr, nullptr, args.cumvar, args.k, stream);
  if (err != cudaSuccess) return err;
  // 5. Top-k from the lists; the rows they cannot serve are scored in full and take TopK.
  const size_t smem = PsListSmemBytes(ia.max_candidates);
  err = cudaFuncSetAttribute(PsListTopKKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  PsListTopKKernel<<<rows, kSbThreads, smem, stream>>>(ia, args.k, args.sel, args.sel_stride, ws, args.full_rows);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  IndexerScoresArgs full = ia;
  full.rows.dense = ws.skip_full;
  err = IndexerScores(full, stream);
  if (err != cudaSuccess) return err;
  RowInfo fallback = ia.rows;
  fallback.dense = ws.skip_full;
  return TopK(chunk, fallback, args.k, args.sel, args.sel_stride, nullptr, 0, stream);
}

}  // namespace gsa::kernels
