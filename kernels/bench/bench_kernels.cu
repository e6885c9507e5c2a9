#include "kernels/bench/bench_kernels.h"

#include "kernels/elementwise.h"

namespace gsa::bench {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 16384;  // grid-stride loops beyond this

__device__ __forceinline__ uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Uniform in [0, 1) with 24 random bits.
__device__ __forceinline__ float Unit(uint64_t seed, int64_t i) {
  const uint64_t h = SplitMix64(seed ^ SplitMix64(static_cast<uint64_t>(i)));
  return static_cast<float>(h >> 40) * (1.0f / 16777216.0f);
}

unsigned Blocks(int64_t n) {
  int64_t b = (n + kThreads - 1) / kThreads;
  if (b > kMaxBlocks) b = kMaxBlocks;
  if (b < 1) b = 1;
  return static_cast<unsigned>(b);
}

__global__ void FillBf16Kernel(__nv_bfloat16* p, int64_t n, uint64_t seed, float lo, float span) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    p[i] = __float2bfloat16_rn(lo + span * Unit(seed, i));
  }
}

__global__ void FillF32Kernel(float* p, int64_t n, uint64_t seed, float lo, float span) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    p[i] = lo + span * Unit(seed, i);
  }
}

__global__ void FillU32Kernel(uint32_t* p, int64_t n, uint64_t seed) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    p[i] = static_cast<uint32_t>(SplitMix64(seed ^ SplitMix64(static_cast<uint64_t>(i))) >> 32);
  }
}

__device__ __forceinline__ uint64_t GlobalTimerNs() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__global__ void SpinKernel(int64_t ns) {
  const uint64_t t0 = GlobalTimerNs();
  const long long c0 = clock64();
  // The cap (8 cycles per requested ns) only matters if %globaltimer does not advance.
  const long long cap = 8 * static_cast<long long>(ns);
  while (static_cast<int64_t>(GlobalTimerNs() - t0) < ns) {
    if (clock64() - c0 > cap) break;
  }
}

__global__ void CountBf16Kernel(const __nv_bfloat16* p, int64_t n, unsigned long long* counts) {
  unsigned long long bad = 0, zero = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float x = __bfloat162float(p[i]);
    if (!isfinite(x)) ++bad;
    if (x == 0.0f) ++zero;
  }
  if (bad != 0) atomicAdd(&counts[0], bad);
  if (zero != 0) atomicAdd(&counts[1], zero);
}

}  // namespace

cudaError_t FillUniformBf16(__nv_bfloat16* p, int64_t n, uint64_t seed, float lo, float hi, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  FillBf16Kernel<<<Blocks(n), kThreads, 0, stream>>>(p, n, seed, lo, hi - lo);
  return cudaGetLastError();
}

cudaError_t FillUniformF32(float* p, int64_t n, uint64_t seed, float lo, float hi, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  FillF32Kernel<<<Blocks(n), kThreads, 0, stream>>>(p, n, seed, lo, hi - lo);
  return cudaGetLastError();
}

cudaError_t FillRandomU32(uint32_t* p, int64_t n, uint64_t seed, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  FillU32Kernel<<<Blocks(n), kThreads, 0, stream>>>(p, n, seed);
  return cudaGetLastError();
}

cudaError_t Spin(int64_t ns, cudaStream_t stream) {
  if (ns <= 0) return cudaSuccess;
  SpinKernel<<<1, 1, 0, stream>>>(ns);
  return cudaGetLastError();
}

cudaError_t CountBf16(const __nv_bfloat16* p, int64_t n, unsigned long long* counts, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  CountBf16Kernel<<<Blocks(n), kThreads, 0, stream>>>(p, n, counts);
  return cudaGetLastError();
}

namespace {
__global__ void QuantizeKeysFp8Kernel(const __nv_bfloat16* keys, int64_t slots, int32_t d, uint8_t* codes,
                                      float* scales) {
  const int64_t slot = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (slot >= slots) return;
  const __nv_bfloat16* k = keys + slot * d;
  float amax = 0.0f;
  for (int32_t i = 0; i < d; ++i) amax = fmaxf(amax, fabsf(__bfloat162float(k[i])));
  const float scale = kernels::Fp8KeyScale(amax);
  for (int32_t i = 0; i < d; ++i) codes[slot * d + i] = kernels::Fp8KeyCode(__bfloat162float(k[i]), scale);
  scales[slot] = scale;
}
}  // namespace

cudaError_t QuantizeKeysFp8(const __nv_bfloat16* keys, int64_t slots, int32_t d, uint8_t* codes, float* scales,
                            cudaStream_t stream) {
  if (slots <= 0) return cudaSuccess;
  QuantizeKeysFp8Kernel<<<static_cast<unsigned>((slots + 255) / 256), 256, 0, stream>>>(keys, slots, d, codes, scales);
  return cudaGetLastError();
}

}  // namespace gsa::bench
