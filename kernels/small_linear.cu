#include "kernels/small_linear.h"

#include "kernels/flash_mma.cuh"
#include "kernels/pdl.cuh"

namespace gsa::kernels {
namespace {

// 16 bytes of W, streamed (evict-first: every weight byte is read once per step).
__device__ __forceinline__ uint4 LoadStream(const void* p) { return __ldcs(static_cast<const uint4*>(p)); }
// 16 bytes of x (every block reads the same few rows: cached at all levels). A coherent load, not
// the read-only path (__ldg, ld.global.nc): these kernels start before the kernel that writes x has
// finished (programmatic dependent launch), and .nc promises the data is constant for the kernel's
// whole lifetime, which lets the compiler and the cache serve it from before the wait.
__device__ __forceinline__ uint4 LoadShared(const void* p) { return __ldca(static_cast<const uint4*>(p)); }

// ---------------------------------------------------------------------------------------------
// bf16: tensor cores. A block owns a tile of 16 rows of W (kSwiGlu: 8 output columns' gate rows
// as fragment rows 0-7 and their up rows as 8-15, so a lane holds a column's gate and up sums);
// x's rows are the mma's 8 columns (rows ≥ args.rows are zeros). K is walked in 32-element blocks,
// block kb by warp (kb / kMmaUnroll) % kMmaWarps, kMmaUnroll blocks per step with all their loads
// in flight. Lane (g, t) loads 16 bytes — elements 8t … 8t+7 of the block — of W rows g and g+8
// and of x row g; the mma's logical k order inside a block is a permutation of the physical one,
// the same for A and B (k-step h takes elements 8t+4h+{0,1} as logical 2t, 2t+1 and 8t+4h+{2,3}
// as 2t+8, 2t+9), which a dot product does not see. So every load is a whole 16-byte chunk and no
// shuffle or shared-memory staging is needed. The warps' C fragments are summed through shared
// memory in warp order. kWarps: 8, or 16 when there are too few tiles to give every SM more than
// one block (n = 2048: the o_proj and down products), so that each SM still has enough loads in
// flight.
constexpr int kMmaUnroll = 4;
constexpr int kMmaTileRows = 16;

template <int kWarps, SmallLinearEpilogue E>
__global__ void __launch_bounds__(32 * kWarps, kWarps == 8 ? 4 : 1) SmallLinearMmaKernel(SmallLinearArgs a) {
  PdlLaunchDependents();  // the next product may stream its weights while this one runs
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  int64_t r_lo, r_hi;  // rows of W at fragment rows g and g + 8 (< 0: none)
  if constexpr (E == SmallLinearEpilogue::kSwiGlu) {
    const int64_t f = a.n / 2, col = static_cast<int64_t>(blockIdx.x) * (kMmaTileRows / 2) + g;
    r_lo = col < f ? col : -1;
    r_hi = col < f ? f + col : -1;
  } else {
    const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kMmaTileRows + g;
    r_lo = r0 < a.n ? r0 : -1;
    r_hi = r0 + 8 < a.n ? r0 + 8 : -1;
  }
  // Rows as arrays of 16-byte chunks, walked with 32-bit chunk indices (fewer live registers:
  // with 4 blocks of 8 warps an SM, 64 a thread).
  const uint4* w_lo = reinterpret_cast<const uint4*>(a.w_bf16 + (r_lo >= 0 ? r_lo : 0) * a.k);
  const uint4* w_hi = reinterpret_cast<const uint4*>(a.w_bf16 + (r_hi >= 0 ? r_hi : 0) * a.k);
  const bool has_x = g < a.rows;
  const uint4* xg = reinterpret_cast<const uint4*>(a.x_bf16 + (has_x ? g : 0) * a.ldx);
  const int32_t chunks = static_cast<int32_t>(a.k / 8);  // 16-byte chunks of a row
  const int32_t blocks = (chunks + 3) / 4;                // 32-element blocks (the last may be partial)

  float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  bool waited = false;
  for (int32_t kb0 = warp * kMmaUnroll; kb0 < blocks; kb0 += kWarps * kMmaUnroll) {
    uint4 wl[kMmaUnroll], wh[kMmaUnroll];
#pragma unroll
    for (int u = 0; u < kMmaUnroll; ++u) {
      const int32_t ch = (kb0 + u) * 4 + t;
      const bool ok = kb0 + u < blocks && ch < chunks;
      wl[u] = ok && r_lo >= 0 ? LoadStream(w_lo + ch) : make_uint4(0u, 0u, 0u, 0u);
      wh[u] = ok && r_hi >= 0 ? LoadStream(w_hi + ch) : make_uint4(0u, 0u, 0u, 0u);
    }
    // Launched as a programmatic dependent: the first weights (which no kernel writes) are in
    // flight before waiting for the kernels that write x and y.
    if (!waited) {
      PdlWaitForPrerequisites();
      waited = true;
    }
#pragma unroll
    for (int u = 0; u < kMmaUnroll; ++u) {
      const int32_t ch = (kb0 + u) * 4 + t;
      const bool ok = kb0 + u < blocks && ch < chunks;
      const uint4 xc = ok && has_x ? LoadShared(xg + ch) : make_uint4(0u, 0u, 0u, 0u);
      const uint32_t a0[4] = {wl[u].x, wh[u].x, wl[u].y, wh[u].y};
      flash::MmaBf16(c, a0, xc.x, xc.y);
      const uint32_t a1[4] = {wl[u].z, wh[u].z, wl[u].w, wh[u].w};
      flash::MmaBf16(c, a1, xc.z, xc.w);
    }
  }
  if (!waited) PdlWaitForPrerequisites();  // a warp with no blocks still must not write early

  // C fragment: c0, c1 = (row g, x rows 2t, 2t+1); c2, c3 = (row g + 8, the same x rows).
  __shared__ float4 s_c[kWarps][32];
  s_c[warp][lane] = make_float4(c[0], c[1], c[2], c[3]);
  __syncthreads();
  if (warp != 0) return;
  float4 sum = s_c[0][lane];
#pragma unroll
  for (int q = 1; q < kWarps; ++q) {
    const float4 p = s_c[q][lane];
    sum.x += p.x;
    sum.y += p.y;
    sum.z += p.z;
    sum.w += p.w;
  }
  const int m0 = 2 * t, m1 = 2 * t + 1;
  if constexpr (E == SmallLinearEpilogue::kSwiGlu) {
    if (r_lo < 0) return;
    // as SwiGlu (elementwise.h): silu(g) · u
    if (m0 < a.rows) a.out[m0 * a.ldo + r_lo] = __float2bfloat16(sum.x * SigmoidF(sum.x) * sum.z);
    if (m1 < a.rows) a.out[m1 * a.ldo + r_lo] = __float2bfloat16(sum.y * SigmoidF(sum.y) * sum.w);
  } else {
    auto put = [&](int m, int64_t r, float v) {
      if (m >= a.rows || r < 0) return;
      float* y = a.y + m * a.ldy + r;
      if constexpr (E == SmallLinearEpilogue::kAccumulate) {
        *y += v;
      } else {
        *y = v;
      }
    };
    put(m0, r_lo, sum.x);
    put(m1, r_lo, sum.y);
    put(m0, r_hi, sum.z);
    put(m1, r_hi, sum.w);
  }
}

// ---------------------------------------------------------------------------------------------
// fp32 (the indexer's projections: a few hundred rows of W): CUDA-core FMAs. A block of 256
// threads owns kF32TileRows rows of W; its threads split K in 16-byte chunks (in chunk order per
// thread), then a butterfly across each warp's lanes and a sum over warps in warp order.
constexpr int kF32Threads = 256;
constexpr int kF32Warps = kF32Threads / 32;
constexpr int kF32TileRows = 4;

// Butterfly reduction of N values (a power of two ≤ 32) over the warp: at each level a lane keeps
// half of its values and adds its partner's copy of that half, so after log2(N) levels lane l holds
// one partial of value index l >> (5 - log2 N), and the remaining levels sum the lanes that share
// it. Returns the lane's total; the order of additions is fixed.
template <int N>
__device__ __forceinline__ float ButterflyReduce(float (&v)[N], int lane) {
  int n = N;
#pragma unroll
  for (int o = 16; o >= 1; o >>= 1) {
    if (n > 1) {
      const bool upper = (lane & o) != 0;
#pragma unroll
      for (int i = 0; i < N / 2; ++i) {
        if (i < n / 2) {
          const float send = upper ? v[i] : v[i + n / 2];
          const float keep = upper ? v[i + n / 2] : v[i];
          v[i] = keep + __shfl_xor_sync(0xffffffffu, send, o);
        }
      }
      n /= 2;
    } else {
      v[0] += __shfl_xor_sync(0xffffffffu, v[0], o);
    }
  }
  return v[0];
}

template <int N>
constexpr int Log2() {
  return N <= 1 ? 0 : 1 + Log2<N / 2>();
}

// MT: x rows handled (a power of two ≥ args.rows).
template <int MT, SmallLinearEpilogue E>
__global__ void __launch_bounds__(kF32Threads) SmallLinearF32Kernel(SmallLinearArgs a) {
  static_assert(E != SmallLinearEpilogue::kSwiGlu, "fp32 products store or accumulate");
  constexpr int kN = kF32TileRows * MT;  // partial sums per thread: v[j * MT + m]
  PdlLaunchDependents();
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kF32TileRows;
  float v[kN];
#pragma unroll
  for (int i = 0; i < kN; ++i) v[i] = 0.0f;
  const int64_t chunks = a.k / 4;
  const int rows = static_cast<int>(a.rows);
  bool waited = false;
  for (int64_t c = threadIdx.x; c < chunks; c += kF32Threads) {
    uint4 wc[kF32TileRows];
#pragma unroll
    for (int j = 0; j < kF32TileRows; ++j) {
      wc[j] = n0 + j < a.n ? LoadStream(a.w_f32 + (n0 + j) * a.k + c * 4) : make_uint4(0u, 0u, 0u, 0u);
    }
    if (!waited) {
      PdlWaitForPrerequisites();
      waited = true;
    }
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m < rows) {
        const uint4 xc = LoadShared(a.x_f32 + m * a.ldx + c * 4);
#pragma unroll
        for (int j = 0; j < kF32TileRows; ++j) {
          float& acc = v[j * MT + m];
          acc = fmaf(__uint_as_float(wc[j].x), __uint_as_float(xc.x), acc);
          acc = fmaf(__uint_as_float(wc[j].y), __uint_as_float(xc.y), acc);
          acc = fmaf(__uint_as_float(wc[j].z), __uint_as_float(xc.z), acc);
          acc = fmaf(__uint_as_float(wc[j].w), __uint_as_float(xc.w), acc);
        }
      }
    }
  }
  if (!waited) PdlWaitForPrerequisites();

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const float part = ButterflyReduce<kN>(v, lane);
  constexpr int kShift = 5 - Log2<kN>();
  __shared__ float s_part[kF32Warps][kN];
  if ((lane & ((1 << kShift) - 1)) == 0) s_part[warp][lane >> kShift] = part;
  __syncthreads();
  const int idx = threadIdx.x;
  if (idx >= kN) return;
  float total = 0.0f;
#pragma unroll
  for (int q = 0; q < kF32Warps; ++q) total += s_part[q][idx];
  const int j = idx / MT, m = idx % MT;
  const int64_t n = n0 + j;
  if (m >= rows || n >= a.n) return;
  float* y = a.y + m * a.ldy + n;
  if constexpr (E == SmallLinearEpilogue::kAccumulate) {
    *y += total;
  } else {
    *y = total;
  }
}

// ---------------------------------------------------------------------------------------------

// What a launch needs to know of the current device, asked once per launch.
struct Device {
  bool programmatic = false;  // compute capability ≥ 9: launches are programmatic dependents
  int sms = 0;
};

cudaError_t CurrentDevice(Device* d) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = ProgrammaticLaunchSupported(device, &d->programmatic);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&d->sms, cudaDevAttrMultiProcessorCount, device);
  return err;
}

// Every launch is a programmatic dependent of the previous kernel in the stream (Hopper and later).
template <typename Kernel>
cudaError_t LaunchPdl(Kernel kernel, const SmallLinearArgs& a, int64_t blocks, int threads, const Device& d,
                      cudaStream_t stream) {
  return LaunchProgrammaticDependent(kernel, dim3(static_cast<unsigned>(blocks)), dim3(static_cast<unsigned>(threads)),
                                     stream, d.programmatic, a);
}

template <int kWarps>
cudaError_t LaunchBf16Warps(const SmallLinearArgs& a, int64_t tiles, const Device& d, cudaStream_t stream) {
  switch (a.epilogue) {
    case SmallLinearEpilogue::kStore:
      return LaunchPdl(SmallLinearMmaKernel<kWarps, SmallLinearEpilogue::kStore>, a, tiles, 32 * kWarps, d, stream);
    case SmallLinearEpilogue::kAccumulate:
      return LaunchPdl(SmallLinearMmaKernel<kWarps, SmallLinearEpilogue::kAccumulate>, a, tiles, 32 * kWarps, d, stream);
    case SmallLinearEpilogue::kSwiGlu:
      return LaunchPdl(SmallLinearMmaKernel<kWarps, SmallLinearEpilogue::kSwiGlu>, a, tiles, 32 * kWarps, d, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t LaunchBf16(const SmallLinearArgs& a, const Device& d, cudaStream_t stream) {
  const int64_t tiles = a.epilogue == SmallLinearEpilogue::kSwiGlu ? (a.n / 2 + kMmaTileRows / 2 - 1) / (kMmaTileRows / 2)
                                                                   : (a.n + kMmaTileRows - 1) / kMmaTileRows;
  return tiles < 2 * static_cast<int64_t>(d.sms) ? LaunchBf16Warps<16>(a, tiles, d, stream)
                                                 : LaunchBf16Warps<8>(a, tiles, d, stream);
}

template <SmallLinearEpilogue E>
cudaError_t LaunchF32Rows(const SmallLinearArgs& a, const Device& d, cudaStream_t stream) {
  const int64_t blocks = (a.n + kF32TileRows - 1) / kF32TileRows;
  if (a.rows <= 1) return LaunchPdl(SmallLinearF32Kernel<1, E>, a, blocks, kF32Threads, d, stream);
  if (a.rows <= 2) return LaunchPdl(SmallLinearF32Kernel<2, E>, a, blocks, kF32Threads, d, stream);
  if (a.rows <= 4) return LaunchPdl(SmallLinearF32Kernel<4, E>, a, blocks, kF32Threads, d, stream);
  return LaunchPdl(SmallLinearF32Kernel<8, E>, a, blocks, kF32Threads, d, stream);
}

}  // namespace

const char* SmallLinearUnsupported(const SmallLinearArgs& a) {
  const bool bf = a.x_bf16 != nullptr || a.w_bf16 != nullptr;
  const bool f32 = a.x_f32 != nullptr || a.w_f32 != nullptr;
  if (bf == f32) return "set exactly one of the (x_bf16, w_bf16) and (x_f32, w_f32) pairs";
  if (bf ? (a.x_bf16 == nullptr || a.w_bf16 == nullptr) : (a.x_f32 == nullptr || a.w_f32 == nullptr)) {
    return "an input pair needs both x and W";
  }
  if (a.rows < 1 || a.rows > kSmallLinearMaxRows) return "rows must be 1 … kSmallLinearMaxRows";
  if (a.n < 1 || a.k < 1) return "n and k must be positive";
  if (a.n > int64_t{1} << 35) return "n is too large for one grid";
  if (a.k > int64_t{1} << 30) return "k is too large (at most 2^30: chunk indices are 32-bit)";
  const int64_t vec = bf ? 8 : 4;
  if (a.k % vec != 0 || a.ldx % vec != 0 || a.ldx < a.k) {
    return "k and ldx must be whole 16-byte chunks (bf16: multiples of 8; fp32: of 4), ldx ≥ k";
  }
  if (!Aligned16(bf ? static_cast<const void*>(a.x_bf16) : a.x_f32) ||
      !Aligned16(bf ? static_cast<const void*>(a.w_bf16) : a.w_f32)) {
    return "x and W must be 16-byte aligned";
  }
  if (a.epilogue == SmallLinearEpilogue::kSwiGlu) {
    if (!bf) return "kSwiGlu takes bf16 inputs";
    if (a.n % 2 != 0) return "kSwiGlu needs an even n (gate rows, then as many up rows)";
    if (a.out == nullptr || a.ldo < a.n / 2) return "kSwiGlu needs out with ldo ≥ n / 2";
  } else if (a.y == nullptr || a.ldy < a.n) {
    return "kStore and kAccumulate need y with ldy ≥ n";
  }
  return nullptr;
}

cudaError_t SmallLinear(const SmallLinearArgs& a, cudaStream_t stream) {
  if (SmallLinearUnsupported(a) != nullptr) return cudaErrorInvalidValue;
  Device d;
  if (const cudaError_t err = CurrentDevice(&d); err != cudaSuccess) return err;
  if (a.x_bf16 != nullptr) return LaunchBf16(a, d, stream);
  return a.epilogue == SmallLinearEpilogue::kAccumulate ? LaunchF32Rows<SmallLinearEpilogue::kAccumulate>(a, d, stream)
                                                        : LaunchF32Rows<SmallLinearEpilogue::kStore>(a, d, stream);
}

}  // namespace gsa::kernels
