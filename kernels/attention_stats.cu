// Attention statistics (see kernels/attention_stats.h for the contract).
//
// Kernel 1 (FirstTokenWeightKernel): grid (listed row, query head), kThreads threads. The head's
//   q (bf16 → fp32) sits in shared memory; a token's K row (d_head bf16, contiguous) is read by
//   d_head / 8 lanes with one 16-byte load each, so a warp scores 32 / (d_head / 8) tokens at once.
//   Each lane group keeps an online (max m, Σexp l) of its tokens' scores q·k·scale and, for the
//   token at position 0, its score. The block then merges the groups in group order and writes
//   the weight on position 0, exp(s0 − M) / L, to the workspace ([listed row, head] fp32).
// Kernel 2 (RowStatsKernel): grid (listed row), kRowThreads threads: the count, the head sum of
//   kernel 1's weights (in head order, double) and the two gate sums (threads stride over the
//   channels, double, then a fixed tree).
// No atomics; every reduction has a fixed order, so a launch is bitwise reproducible.
#include <cmath>
#include <cstdint>

#include "kernels/attention_stats.h"

namespace gsa::kernels {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRowThreads = 256;
constexpr int kMaxHeadDim = 256;
constexpr int kMaxGroups = kThreads / 4;  // lane groups of a block (d_head 32: 4 lanes a token)

__device__ __forceinline__ int64_t RowKeyCount(const AttentionStatsArgs& a, int32_t r) {
  if (a.rows.dense[r] != 0) return static_cast<int64_t>(a.rows.position[r]) + 1;
  if (a.sel == nullptr || a.sel_count == nullptr) return 0;
  const int64_t count = a.sel_count[r];
  return count < 0 ? 0 : (count > a.sel_stride ? a.sel_stride : count);
}

__global__ void __launch_bounds__(kThreads) FirstTokenWeightKernel(const AttentionStatsArgs a, float* weights) {
  __shared__ float s_q[kMaxHeadDim];
  __shared__ float s_m[kMaxGroups];
  __shared__ float s_l[kMaxGroups];
  __shared__ float s_first;
  __shared__ int s_found;

  const int64_t li = blockIdx.x;
  const int32_t h = static_cast<int32_t>(blockIdx.y);
  const int32_t r = a.row_ids[li];
  const int32_t seq = a.rows.seq[r];
  const int64_t t = a.rows.position[r];
  const bool dense = a.rows.dense[r] != 0;
  const int64_t n = RowKeyCount(a, r);
  const int32_t kvh = h / (a.n_heads / a.n_kv_heads);
  const int64_t kv_dim = static_cast<int64_t>(a.n_kv_heads) * a.d_head;

  const bf16* q = a.q + (static_cast<int64_t>(r) * a.n_heads + h) * a.d_head;
  for (int d = threadIdx.x; d < a.d_head; d += blockDim.x) s_q[d] = __bfloat162float(q[d]);
  if (threadIdx.x == 0) {
    s_first = 0.0f;
    s_found = 0;
  }
  __syncthreads();

  const int lanes = a.d_head / 8;  // 4, 8, 16 or 32 lanes a token
  const int per_warp = 32 / lanes;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int part = lane % lanes;
  const int group = warp * per_warp + lane / lanes;
  const int groups = kWarps * per_warp;
  float qv[8];
#pragma unroll
  for (int c = 0; c < 8; ++c) qv[c] = s_q[part * 8 + c];

  float m = -INFINITY, l = 0.0f;
  // The trip count is the same for every thread, so whole warps reach each shuffle together.
  for (int64_t base = 0; base < n; base += groups) {
    const int64_t j = base + group;
    int64_t pos = -1;
    if (j < n) pos = dense ? j : a.sel[static_cast<int64_t>(r) * a.sel_stride + j];
    const bool valid = j < n && pos >= 0 && pos <= t;
    float dot = 0.0f;
    if (valid) {
      const int64_t slot = SlotOfPosition(a.paged, seq, static_cast<int32_t>(pos));  // 0 ≤ pos ≤ t
      const uint4 raw = *reinterpret_cast<const uint4*>(a.k_cache + slot * kv_dim + static_cast<int64_t>(kvh) * a.d_head +
                                                        part * 8);
      const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        dot += qv[2 * i] * __uint_as_float(w[i] << 16);
        dot += qv[2 * i + 1] * __uint_as_float(w[i] & 0xffff0000u);
      }
    }
    for (int o = lanes / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    if (valid) {
      const float s = dot * a.scale;
      const float m_new = fmaxf(m, s);
      l = l * expf(m - m_new) + expf(s - m_new);
      m = m_new;
      if (pos == 0 && part == 0) {  // one entry at most: the list holds distinct positions
        s_first = s;
        s_found = 1;
      }
    }
  }
  if (part == 0) {
    s_m[group] = m;
    s_l[group] = l;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float mx = -INFINITY;
    for (int g = 0; g < groups; ++g) mx = fmaxf(mx, s_m[g]);
    float sum = 0.0f;
    for (int g = 0; g < groups; ++g) {
      if (s_l[g] > 0.0f) sum += s_l[g] * expf(s_m[g] - mx);
    }
    weights[li * a.n_heads + h] = (s_found != 0 && sum > 0.0f) ? expf(s_first - mx) / sum : 0.0f;
  }
}

// Σ act(z[c] + bias[c]) over this thread's channels c (stride blockDim.x).
__device__ __forceinline__ double GateSum(const AttentionStatsArgs& a, const float* z, const float* bias, int32_t r,
                                          int64_t channels) {
  if (z == nullptr) return 0.0;
  double sum = 0.0;
  const float* zr = z + static_cast<int64_t>(r) * a.gate_stride;
  for (int64_t c = threadIdx.x; c < channels; c += blockDim.x) {
    sum += GateActF(a.gate_act, zr[c] + (bias != nullptr ? bias[c] : 0.0f));
  }
  return sum;
}

__global__ void __launch_bounds__(kRowThreads) RowStatsKernel(const AttentionStatsArgs a, const float* weights) {
  __shared__ double s_v[kRowThreads];
  __shared__ double s_o[kRowThreads];
  const int64_t li = blockIdx.x;
  const int32_t r = a.row_ids[li];
  s_v[threadIdx.x] = GateSum(a, a.value_gate_z, a.value_gate_bias, r, static_cast<int64_t>(a.n_kv_heads) * a.d_head);
  s_o[threadIdx.x] = GateSum(a, a.output_gate_z, a.output_gate_bias, r, static_cast<int64_t>(a.n_heads) * a.d_head);
  __syncthreads();
  for (int stride = kRowThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      s_v[threadIdx.x] += s_v[threadIdx.x + stride];
      s_o[threadIdx.x] += s_o[threadIdx.x + stride];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    double first = 0.0;
    for (int32_t h = 0; h < a.n_heads; ++h) first += weights[li * a.n_heads + h];
    const int64_t at = li * a.out_stride;
    a.selected[at] = static_cast<int32_t>(RowKeyCount(a, r));
    a.first_token[at] = first;
    a.value_gate[at] = s_v[0];
    a.output_gate[at] = s_o[0];
  }
}

}  // namespace

size_t AttentionStatsWorkspaceBytes(int64_t num_row_ids, int32_t n_heads) {
  if (num_row_ids <= 0 || n_heads <= 0) return 0;
  return static_cast<size_t>(num_row_ids) * static_cast<size_t>(n_heads) * sizeof(float);
}

cudaError_t AttentionStats(const AttentionStatsArgs& a, cudaStream_t stream) {
  if (a.num_row_ids <= 0) return cudaSuccess;
  const bool shape_ok = (a.d_head == 32 || a.d_head == 64 || a.d_head == 128 || a.d_head == 256) && a.n_kv_heads > 0 &&
                        a.n_heads > 0 && a.n_heads % a.n_kv_heads == 0 && a.n_heads <= 65535;
  const bool pointers_ok = a.q != nullptr && a.k_cache != nullptr && a.row_ids != nullptr && a.rows.seq != nullptr &&
                           a.rows.position != nullptr && a.rows.dense != nullptr && a.paged.block_tables != nullptr &&
                           a.selected != nullptr && a.first_token != nullptr && a.value_gate != nullptr &&
                           a.output_gate != nullptr && a.workspace != nullptr && Aligned16(a.q) &&
                           Aligned16(a.k_cache) && a.out_stride >= 1 && a.num_row_ids <= 0x7fffffff;
  const bool workspace_ok = a.workspace_bytes >= AttentionStatsWorkspaceBytes(a.num_row_ids, a.n_heads);
  if (!shape_ok || !pointers_ok || !workspace_ok || !(a.scale > 0.0f) || !std::isfinite(a.scale)) {
    return cudaErrorInvalidValue;
  }
  float* weights = static_cast<float*>(a.workspace);
  const dim3 grid(static_cast<unsigned>(a.num_row_ids), static_cast<unsigned>(a.n_heads));
  FirstTokenWeightKernel<<<grid, kThreads, 0, stream>>>(a, weights);
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  RowStatsKernel<<<static_cast<unsigned>(a.num_row_ids), kRowThreads, 0, stream>>>(a, weights);
  return cudaGetLastError();
}

}  // namespace gsa::kernels
