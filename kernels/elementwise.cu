#include "kernels/elementwise.h"

namespace gsa::kernels {
namespace {

constexpr int kThreads = 256;

__global__ void EmbedRowsKernel(const float* __restrict__ table, const int32_t* __restrict__ ids, int64_t d,
                                float* __restrict__ out) {
  const int64_t r = blockIdx.x;
  const float* src = table + static_cast<int64_t>(ids[r]) * d;
  float* dst = out + r * d;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) dst[i] = src[i];
}

// One block per row: Σx² in a fixed tree, then the scaled store.
__global__ void RmsNormRowsKernel(const float* __restrict__ x, const int32_t* __restrict__ gather,
                                  const float* __restrict__ w, int64_t d, float eps, bf16* __restrict__ out,
                                  float* __restrict__ out_f32) {
  const int64_t r = blockIdx.x;
  const int64_t src_row = gather != nullptr ? gather[r] : r;
  const float* xr = x + src_row * d;
  float acc = 0.0f;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) acc += xr[i] * xr[i];
  __shared__ float partial[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = acc;
  __syncthreads();
  float total = 0.0f;
  for (int i = 0; i < kThreads / 32; ++i) total += partial[i];
  const float inv = 1.0f / sqrtf(total / static_cast<float>(d) + eps);
  bf16* o = out + r * d;
  float* of = out_f32 != nullptr ? out_f32 + r * d : nullptr;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    const float y = (xr[i] * inv) * w[i];
    o[i] = __float2bfloat16(y);
    if (of != nullptr) of[i] = y;
  }
}

// One block per row; threads stride over the row's work items.
__global__ void PostProjectionKernel(PostProjectionArgs a) {
  const int64_t r = blockIdx.x;
  float* p = a.proj + r * a.proj_stride;
  const int32_t pos = a.rows.position[r];
  const int64_t slot = a.rows.slot[r];
  const int32_t half = a.d_head / 2;
  const int32_t kv_dim = a.n_kv_heads * a.d_head;
  const float fpos = static_cast<float>(pos);

  // q: rotate pairs (i, i + half) of every head.
  for (int32_t idx = threadIdx.x; idx < a.n_heads * half; idx += blockDim.x) {
    const int32_t h = idx / half, i = idx % half;
    const float angle = fpos * a.inv_freq[i];
    const float c = cosf(angle), s = sinf(angle);
    const float x0 = p[a.off_q + h * a.d_head + i], x1 = p[a.off_q + h * a.d_head + i + half];
    bf16* q = a.q_out + (r * a.n_heads + h) * a.d_head;
    q[i] = __float2bfloat16(x0 * c - x1 * s);
    q[i + half] = __float2bfloat16(x1 * c + x0 * s);
  }
  // k: rotate, write to the cache.
  for (int32_t idx = threadIdx.x; idx < a.n_kv_heads * half; idx += blockDim.x) {
    const int32_t h = idx / half, i = idx % half;
    const float angle = fpos * a.inv_freq[i];
    const float c = cosf(angle), s = sinf(angle);
    const float x0 = p[a.off_k + h * a.d_head + i], x1 = p[a.off_k + h * a.d_head + i + half];
    bf16* k = a.k_cache + slot * kv_dim + h * a.d_head;
    k[i] = __float2bfloat16(x0 * c - x1 * s);
    k[i + half] = __float2bfloat16(x1 * c + x0 * s);
  }
  // v (value gate), write to the cache.
  for (int32_t i = threadIdx.x; i < kv_dim; i += blockDim.x) {
    float v = p[a.off_v + i];
    if (a.off_vg >= 0) v *= GateActF(a.gate_act, p[a.off_vg + i] + a.vg_bias[i]);
    a.v_cache[slot * kv_dim + i] = __float2bfloat16(v);
  }
  // Indexer key (bf16, or fp8 codes with the row's scale) and head weights.
  if (a.ki_fp8 != nullptr) {  // uniform over the block
    __shared__ uint32_t s_amax[32];
    uint32_t m = 0u;  // |x| as bits: for non-negative floats the integer order is the float order
    for (int32_t i = threadIdx.x; i < a.d_indexer; i += blockDim.x) {
      m = max(m, __float_as_uint(fabsf(p[a.off_ki + i])));
    }
    m = __reduce_max_sync(0xffffffffu, m);
    if ((threadIdx.x & 31) == 0) s_amax[threadIdx.x >> 5] = m;
    __syncthreads();
    for (uint32_t w = 0; w < (blockDim.x + 31) / 32; ++w) m = max(m, s_amax[w]);
    const float scale = Fp8KeyScale(__uint_as_float(m));
    for (int32_t i = threadIdx.x; i < a.d_indexer; i += blockDim.x) {
      a.ki_fp8[slot * a.d_indexer + i] = Fp8KeyCode(p[a.off_ki + i], scale);
    }
    if (threadIdx.x == 0) a.ki_scale[slot] = scale;
  } else {
    for (int32_t i = threadIdx.x; i < a.d_indexer; i += blockDim.x) {
      a.ki_cache[slot * a.d_indexer + i] = __float2bfloat16(p[a.off_ki + i]);
    }
  }
  for (int32_t j = threadIdx.x; j < a.n_indexer_heads; j += blockDim.x) {
    p[a.off_wi + j] = SigmoidF(p[a.off_wi + j] + a.wi_bias[j]);
  }
}

__global__ void SwiGluKernel(const float* __restrict__ gu, int64_t rows, int64_t d_ffn, bf16* __restrict__ out) {
  const int64_t n = rows * d_ffn;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = idx / d_ffn, i = idx % d_ffn;
    const float g = gu[r * 2 * d_ffn + i];
    const float u = gu[r * 2 * d_ffn + d_ffn + i];
    out[idx] = __float2bfloat16(g * SigmoidF(g) * u);
  }
}

__global__ void ConvertToBf16Kernel(const float* __restrict__ in, int64_t n, bf16* __restrict__ out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = __float2bfloat16(in[i]);
  }
}

unsigned GridFor(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535 * 8 ? 65535 * 8 : b));
}

}  // namespace

cudaError_t EmbedRows(const float* table, const int32_t* ids, int64_t rows, int64_t d, float* out,
                      cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  EmbedRowsKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(table, ids, d, out);
  return cudaGetLastError();
}

cudaError_t RmsNormRows(const float* x, const int32_t* gather, const float* w, int64_t rows, int64_t d,
                        float eps, bf16* out, cudaStream_t stream, float* out_f32) {
  if (rows <= 0) return cudaSuccess;
  RmsNormRowsKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, gather, w, d, eps, out, out_f32);
  return cudaGetLastError();
}

cudaError_t PostProjection(const PostProjectionArgs& args, cudaStream_t stream) {
  if (args.num_rows <= 0) return cudaSuccess;
  PostProjectionKernel<<<static_cast<unsigned>(args.num_rows), 128, 0, stream>>>(args);
  return cudaGetLastError();
}

cudaError_t SwiGlu(const float* gu, int64_t rows, int64_t d_ffn, bf16* out, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  SwiGluKernel<<<GridFor(rows * d_ffn), kThreads, 0, stream>>>(gu, rows, d_ffn, out);
  return cudaGetLastError();
}

cudaError_t ConvertToBf16(const float* in, int64_t n, bf16* out, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  ConvertToBf16Kernel<<<GridFor(n), kThreads, 0, stream>>>(in, n, out);
  return cudaGetLastError();
}

}  // namespace gsa::kernels
