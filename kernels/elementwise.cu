#include "kernels/elementwise.h"
#include "kernels/pdl.cuh"

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

// Σ over the block of each thread's `acc`, in a fixed order (lanes by butterfly, then warps in order).
__device__ __forceinline__ float BlockSum(float acc) {
  __shared__ float partial[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = acc;
  __syncthreads();
  float total = 0.0f;
  for (int i = 0; i < kThreads / 32; ++i) total += partial[i];
  return total;
}

// One block per row: Σx² in a fixed tree, then the scaled store. kVec4 > 0: the row is read once,
// as up to kVec4 float4 per thread kept in registers (d % 4 == 0, d ≤ kThreads · 4 · kVec4), so its
// loads are all in flight at once — a decode step runs this on a handful of rows, where each
// dependent round trip to memory is the cost. kVec4 == 0: any d, strided loops.
template <int kVec4>
// x and gather are not __restrict__: as a programmatic dependent this kernel must not read them
// through the read-only (non-coherent) path, which may assume they are constant for its lifetime.
__global__ void RmsNormRowsKernel(const float* x, const int32_t* gather, const float* __restrict__ w, int64_t d,
                                  float eps, bf16* __restrict__ out, float* __restrict__ out_f32) {
  // The product that reads `out` next (kernels::SmallLinear in decode steps) is a programmatic
  // dependent: let it start streaming its weights while this runs (it waits for `out`).
  PdlLaunchDependents();
  // Itself launched as a programmatic dependent (its launch overlaps the tail of the kernel that
  // writes x): nothing is read or written before the kernels before it have finished.
  PdlWaitForPrerequisites();
  const int64_t r = blockIdx.x;
  const int64_t src_row = gather != nullptr ? gather[r] : r;
  const float* xr = x + src_row * d;
  bf16* o = out + r * d;
  float* of = out_f32 != nullptr ? out_f32 + r * d : nullptr;
  if constexpr (kVec4 > 0) {
    const int64_t n4 = d / 4;
    float4 xv[kVec4], wv[kVec4];
    float acc = 0.0f;
#pragma unroll
    for (int j = 0; j < kVec4; ++j) {
      const int64_t i = threadIdx.x + static_cast<int64_t>(j) * kThreads;
      xv[j] = i < n4 ? reinterpret_cast<const float4*>(xr)[i] : make_float4(0.f, 0.f, 0.f, 0.f);
      wv[j] = i < n4 ? reinterpret_cast<const float4*>(w)[i] : make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll
    for (int j = 0; j < kVec4; ++j) acc += xv[j].x * xv[j].x + xv[j].y * xv[j].y + xv[j].z * xv[j].z + xv[j].w * xv[j].w;
    const float inv = 1.0f / sqrtf(BlockSum(acc) / static_cast<float>(d) + eps);
#pragma unroll
    for (int j = 0; j < kVec4; ++j) {
      const int64_t i = threadIdx.x + static_cast<int64_t>(j) * kThreads;
      if (i >= n4) break;
      const float4 y = make_float4((xv[j].x * inv) * wv[j].x, (xv[j].y * inv) * wv[j].y, (xv[j].z * inv) * wv[j].z,
                                   (xv[j].w * inv) * wv[j].w);
      reinterpret_cast<__nv_bfloat162*>(o)[2 * i] = __floats2bfloat162_rn(y.x, y.y);
      reinterpret_cast<__nv_bfloat162*>(o)[2 * i + 1] = __floats2bfloat162_rn(y.z, y.w);
      if (of != nullptr) reinterpret_cast<float4*>(of)[i] = y;
    }
  } else {
    float acc = 0.0f;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) acc += xr[i] * xr[i];
    const float inv = 1.0f / sqrtf(BlockSum(acc) / static_cast<float>(d) + eps);
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const float y = (xr[i] * inv) * w[i];
      o[i] = __float2bfloat16(y);
      if (of != nullptr) of[i] = y;
    }
  }
}

// Grid (row, part): a row's work is split over several blocks so that a decode step's few rows
// still fill the GPU. Parts: pairs of q heads, pairs of KV heads (RoPE; these blocks compute the
// row's angles once into shared memory — [cos | sin] for i < d_head / 2 — and every head reads
// them: at long positions cosf/sinf take their slow argument reduction, once per (head, i) that
// was most of this kernel's time), the gated values, and the indexer key with the head weights.
constexpr int kPostProjectionThreads = 128;
__host__ __device__ inline int32_t PostProjectionRopeParts(int32_t n_heads, int32_t n_kv_heads) {
  return (n_heads + 1) / 2 + (n_kv_heads + 1) / 2;
}

__global__ void PostProjectionKernel(PostProjectionArgs a) {
  // Launched as a programmatic dependent of the product before it: waits for it (and every
  // earlier kernel) before reading or writing anything. The fused selection after it may launch
  // now (it waits for this kernel before reading).
  PdlLaunchDependents();
  PdlWaitForPrerequisites();
  extern __shared__ float s_rope[];
  const int64_t r = blockIdx.x;
  const int32_t part = static_cast<int32_t>(blockIdx.y);
  float* p = a.proj + r * a.proj_stride;
  const int64_t slot = a.rows.slot[r];
  const int32_t half = a.d_head / 2;
  const int32_t kv_dim = a.n_kv_heads * a.d_head;
  const int32_t q_parts = (a.n_heads + 1) / 2;
  const int32_t rope_parts = PostProjectionRopeParts(a.n_heads, a.n_kv_heads);

  if (part < rope_parts) {
    const float fpos = static_cast<float>(a.rows.position[r]);
    float* s_cos = s_rope;
    float* s_sin = s_rope + half;
    for (int32_t i = threadIdx.x; i < half; i += blockDim.x) {
      const float angle = fpos * a.inv_freq[i];  // fp32, as the reference computes it
      s_cos[i] = cosf(angle);
      s_sin[i] = sinf(angle);
    }
    __syncthreads();
    const bool is_q = part < q_parts;
    const int32_t h0 = 2 * (is_q ? part : part - q_parts);
    const int32_t heads = min(2, (is_q ? a.n_heads : a.n_kv_heads) - h0);
    const int64_t off = is_q ? a.off_q : a.off_k;
    // Rotate pairs (i, i + half) of heads h0, h0 + 1: q to q_out, k into the cache.
    for (int32_t idx = threadIdx.x; idx < heads * half; idx += blockDim.x) {
      const int32_t h = h0 + idx / half, i = idx % half;
      const float c = s_cos[i], s = s_sin[i];
      const float x0 = p[off + h * a.d_head + i], x1 = p[off + h * a.d_head + i + half];
      bf16* dst = is_q ? a.q_out + (r * a.n_heads + h) * a.d_head : a.k_cache + slot * kv_dim + h * a.d_head;
      dst[i] = __float2bfloat16(x0 * c - x1 * s);
      dst[i + half] = __float2bfloat16(x1 * c + x0 * s);
    }
    return;
  }
  if (part == rope_parts) {
    // v (value gate), written to the cache.
    for (int32_t i = threadIdx.x; i < kv_dim; i += blockDim.x) {
      float v = p[a.off_v + i];
      if (a.off_vg >= 0) v *= GateActF(a.gate_act, p[a.off_vg + i] + a.vg_bias[i]);
      a.v_cache[slot * kv_dim + i] = __float2bfloat16(v);
    }
    return;
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
  const auto aligned = [](const void* p) { return p == nullptr || Aligned16(p); };  // out_f32 is optional
  const bool vec = d % 4 == 0 && d <= int64_t{kThreads} * 4 * 4 && aligned(x) && aligned(w) && aligned(out) &&
                   aligned(out_f32);
  // Programmatic dependents (Hopper and later): the launch overlaps the previous kernel's tail.
  bool pdl = false;
  if (const cudaError_t err = OnCurrentDevice(ProgrammaticLaunchSupported, &pdl); err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(rows)), block(kThreads);
  if (vec && d <= int64_t{kThreads} * 4 * 2) {
    return LaunchProgrammaticDependent(RmsNormRowsKernel<2>, grid, block, stream, pdl, x, gather, w, d, eps, out, out_f32);
  }
  if (vec) {
    return LaunchProgrammaticDependent(RmsNormRowsKernel<4>, grid, block, stream, pdl, x, gather, w, d, eps, out, out_f32);
  }
  return LaunchProgrammaticDependent(RmsNormRowsKernel<0>, grid, block, stream, pdl, x, gather, w, d, eps, out, out_f32);
}

cudaError_t PostProjection(const PostProjectionArgs& args, cudaStream_t stream) {
  if (args.num_rows <= 0) return cudaSuccess;
  const size_t smem = static_cast<size_t>(args.d_head / 2) * 2 * sizeof(float);
  const dim3 grid(static_cast<unsigned>(args.num_rows),
                  static_cast<unsigned>(PostProjectionRopeParts(args.n_heads, args.n_kv_heads) + 2));
  bool pdl = false;
  if (const cudaError_t err = OnCurrentDevice(ProgrammaticLaunchSupported, &pdl); err != cudaSuccess) return err;
  return LaunchProgrammaticDependentSmem(PostProjectionKernel, grid, dim3(kPostProjectionThreads), smem, stream, pdl,
                                         args);
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
