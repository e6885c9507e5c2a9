#include "kernels/indexer.h"

namespace gsa::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxHeads = 16;
constexpr int kMaxDIndexer = 128;

// Grid: (candidate tiles of kThreads, chunk rows). One thread per (row, candidate): the key row
// (D_I bf16, contiguous) is loaded with 16-byte loads into registers once and used for every head;
// qI, wI and bI of the row sit in shared memory (read as broadcasts).
template <int D_I>
__global__ void __launch_bounds__(kThreads) IndexerScoresKernel(IndexerScoresArgs a) {
  const int64_t r = a.row_begin + blockIdx.y;
  if (a.rows.dense[r]) return;
  const int32_t pos = a.rows.position[r];
  const int64_t tile0 = static_cast<int64_t>(blockIdx.x) * kThreads;
  if (tile0 > pos) return;  // the whole block is past the causal limit

  __shared__ float q_s[kMaxHeads * kMaxDIndexer];
  __shared__ float w_s[kMaxHeads];
  __shared__ float b_s[kMaxHeads];
  const float* prow = a.proj + r * a.proj_stride;
  const float scale = rsqrtf(static_cast<float>(D_I));
  for (int i = threadIdx.x; i < a.n_indexer_heads * D_I; i += kThreads) q_s[i] = prow[a.off_qi + i];
  for (int j = threadIdx.x; j < a.n_indexer_heads; j += kThreads) {
    w_s[j] = prow[a.off_wi + j];
    b_s[j] = a.bias[j];
  }
  __syncthreads();

  const int64_t s = tile0 + threadIdx.x;
  if (s > pos) return;
  const int64_t slot = SlotOfPosition(a.paged, a.rows.seq[r], s);
  // Key row into registers as packed bf16 pairs.
  uint32_t kreg[D_I / 2];
  const uint4* src = reinterpret_cast<const uint4*>(a.ki_cache + slot * D_I);
#pragma unroll
  for (int c = 0; c < D_I / 8; ++c) {
    const uint4 v = __ldg(src + c);
    kreg[4 * c + 0] = v.x;
    kreg[4 * c + 1] = v.y;
    kreg[4 * c + 2] = v.z;
    kreg[4 * c + 3] = v.w;
  }
  float acc = 0.0f;
  for (int j = 0; j < a.n_indexer_heads; ++j) {
    const float* q = q_s + j * D_I;
    float dot = 0.0f;
#pragma unroll
    for (int c = 0; c < D_I / 2; ++c) {
      const __nv_bfloat162 kk = *reinterpret_cast<const __nv_bfloat162*>(&kreg[c]);
      const float2 kf = __bfloat1622float2(kk);
      dot = fmaf(q[2 * c], kf.x, dot);
      dot = fmaf(q[2 * c + 1], kf.y, dot);
    }
    const float z = dot * scale + b_s[j];
    const float phi = a.relu ? fmaxf(z, 0.0f) : SigmoidF(z);
    acc = fmaf(w_s[j], phi, acc);
  }
  a.scores[a.score_offset[blockIdx.y] + s] = acc;
}

}  // namespace

bool IndexerScoresSupports(int32_t d_indexer, int32_t n_indexer_heads) {
  const bool d_ok = d_indexer == 16 || d_indexer == 32 || d_indexer == 64 || d_indexer == 128;
  return d_ok && n_indexer_heads >= 1 && n_indexer_heads <= kMaxHeads;
}

cudaError_t IndexerScores(const IndexerScoresArgs& a, cudaStream_t stream) {
  if (a.row_count <= 0 || a.max_candidates <= 0) return cudaSuccess;
  if (!IndexerScoresSupports(a.d_indexer, a.n_indexer_heads) || a.row_count > 65535) {
    return cudaErrorInvalidValue;
  }
  const dim3 grid(static_cast<unsigned>((a.max_candidates + kThreads - 1) / kThreads),
                  static_cast<unsigned>(a.row_count));
  switch (a.d_indexer) {
    case 16: IndexerScoresKernel<16><<<grid, kThreads, 0, stream>>>(a); break;
    case 32: IndexerScoresKernel<32><<<grid, kThreads, 0, stream>>>(a); break;
    case 64: IndexerScoresKernel<64><<<grid, kThreads, 0, stream>>>(a); break;
    default: IndexerScoresKernel<128><<<grid, kThreads, 0, stream>>>(a); break;
  }
  return cudaGetLastError();
}

}  // namespace gsa::kernels
