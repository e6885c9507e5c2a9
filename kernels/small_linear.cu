#include "kernels/small_linear.h"

#include "kernels/pdl.cuh"

namespace gsa::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kWarpRows = 2;  // rows of W per warp (kSwiGlu: one output column's gate and up rows)
constexpr int kBatch = 8;     // 16-byte chunks per lane per row loaded before any is used

// 16 bytes of W, streamed (evict-first: every weight byte is read once per step).
__device__ __forceinline__ uint4 LoadStream(const void* p) { return __ldcs(static_cast<const uint4*>(p)); }
// 16 bytes of x, through the read-only cache (every CTA reads the same rows).
__device__ __forceinline__ uint4 LoadShared(const void* p) { return __ldg(static_cast<const uint4*>(p)); }

// acc += Σ over the chunk's elements of w · x (8 bf16 or 4 fp32 per 16 bytes), in element order.
__device__ __forceinline__ void Dot(float& acc, const uint4& w, const uint4& x, bf16) {
  const uint32_t wv[4] = {w.x, w.y, w.z, w.w};
  const uint32_t xv[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    // bf16 → fp32 is a 16-bit shift: low half first (element 2i), then the high half.
    acc = fmaf(__uint_as_float(wv[i] << 16), __uint_as_float(xv[i] << 16), acc);
    acc = fmaf(__uint_as_float(wv[i] & 0xffff0000u), __uint_as_float(xv[i] & 0xffff0000u), acc);
  }
}
__device__ __forceinline__ void Dot(float& acc, const uint4& w, const uint4& x, float) {
  acc = fmaf(__uint_as_float(w.x), __uint_as_float(x.x), acc);
  acc = fmaf(__uint_as_float(w.y), __uint_as_float(x.y), acc);
  acc = fmaf(__uint_as_float(w.z), __uint_as_float(x.z), acc);
  acc = fmaf(__uint_as_float(w.w), __uint_as_float(x.w), acc);
}

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

// T: bf16 or float (inputs and weights alike). MT: rows handled (a power of two ≥ args.rows).
// Warp w of the grid owns kWarpRows rows of W and walks K in batches: every lane loads kBatch
// 16-byte chunks of each row (consecutive lanes, consecutive chunks: whole 512-byte runs per
// instruction), all in flight at once, then multiplies them by x's chunks (from the read-only
// cache: every warp reads the same few rows). Per lane the sums run in chunk order; then a
// butterfly across the warp. No shared memory, no block barrier.
template <typename T, int MT, SmallLinearEpilogue E>
__global__ void __launch_bounds__(kThreads) SmallLinearKernel(SmallLinearArgs a) {
  constexpr int kVec = 16 / sizeof(T);  // elements per 16-byte chunk
  constexpr int kN = kWarpRows * MT;    // partial sums per lane: v[j * MT + m]
  const T* x;
  const T* w;
  if constexpr (sizeof(T) == 2) {
    x = reinterpret_cast<const T*>(a.x_bf16);
    w = reinterpret_cast<const T*>(a.w_bf16);
  } else {
    x = reinterpret_cast<const T*>(a.x_f32);
    w = reinterpret_cast<const T*>(a.w_f32);
  }
  PdlLaunchDependents();  // the next product may stream its weights while this one runs
  const int lane = threadIdx.x & 31;
  const int64_t unit = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  // The warp's rows of W (row < 0: past the end, contributes nothing and is not stored).
  int64_t row[kWarpRows];
  if constexpr (E == SmallLinearEpilogue::kSwiGlu) {
    const int64_t f = a.n / 2;
    if (unit >= f) return;  // whole warps
    row[0] = unit;
    row[1] = f + unit;
  } else {
    if (unit * kWarpRows >= a.n) return;
#pragma unroll
    for (int j = 0; j < kWarpRows; ++j) row[j] = unit * kWarpRows + j < a.n ? unit * kWarpRows + j : -1;
  }

  float v[kN];
#pragma unroll
  for (int i = 0; i < kN; ++i) v[i] = 0.0f;
  const int64_t chunks = a.k / kVec;
  const int rows = static_cast<int>(a.rows);
  for (int64_t base = 0; base < chunks; base += 32 * kBatch) {
    uint4 wc[kWarpRows][kBatch];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int64_t c = base + b * 32 + lane;
#pragma unroll
      for (int j = 0; j < kWarpRows; ++j) {
        wc[j][b] = (row[j] >= 0 && c < chunks) ? LoadStream(w + row[j] * a.k + c * kVec) : make_uint4(0u, 0u, 0u, 0u);
      }
    }
    // Launched as a programmatic dependent: the first batch of weights (which no kernel writes)
    // is in flight before waiting for the kernels that write x and y.
    if (base == 0) PdlWaitForPrerequisites();
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int64_t c = base + b * 32 + lane;
      if (c >= chunks) break;
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        if (m < rows) {
          const uint4 xc = LoadShared(x + m * a.ldx + c * kVec);
#pragma unroll
          for (int j = 0; j < kWarpRows; ++j) Dot(v[j * MT + m], wc[j][b], xc, T{});
        }
      }
    }
  }

  static_assert(kWarpRows == 2, "the epilogue names row[0] and row[1]");
  // Lane l now holds the warp's total of value index l >> kShift (ButterflyReduce).
  const float total = ButterflyReduce<kN>(v, lane);
  constexpr int kShift = 5 - Log2<kN>();
  const int idx = lane >> kShift;
  const int j = idx / MT, m = idx % MT;
  const bool owner = (lane & ((1 << kShift) - 1)) == 0;
  if constexpr (E == SmallLinearEpilogue::kSwiGlu) {
    // The gate (j = 0) lane of row m fetches its up value (index MT + m) from the lane that holds it.
    const float u = __shfl_sync(0xffffffffu, total, ((MT + m) << kShift) & 31);
    if (!owner || j != 0 || m >= rows) return;
    a.out[m * a.ldo + row[0]] = __float2bfloat16(total * SigmoidF(total) * u);  // as SwiGlu (elementwise.h)
  } else {
    if (!owner || m >= rows) return;
    const int64_t n = j == 0 ? row[0] : row[1];
    if (n < 0) return;
    float* y = a.y + m * a.ldy + n;
    if constexpr (E == SmallLinearEpilogue::kAccumulate) {
      *y += total;
    } else {
      *y = total;
    }
  }
}

// Launched as a programmatic dependent of the previous kernel in the stream (Hopper and later).
template <typename T, int MT, SmallLinearEpilogue E>
cudaError_t LaunchOne(const SmallLinearArgs& a, unsigned grid, cudaStream_t stream) {
  int device = 0, cc_major = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&cc_major, cudaDevAttrComputeCapabilityMajor, device);
  if (err != cudaSuccess) return err;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(grid);
  cfg.blockDim = dim3(kThreads);
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = cc_major >= 9 ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, SmallLinearKernel<T, MT, E>, a);
}

template <typename T, SmallLinearEpilogue E>
cudaError_t LaunchRows(const SmallLinearArgs& a, unsigned grid, cudaStream_t stream) {
  if (a.rows <= 1) return LaunchOne<T, 1, E>(a, grid, stream);
  if (a.rows <= 2) return LaunchOne<T, 2, E>(a, grid, stream);
  if (a.rows <= 4) return LaunchOne<T, 4, E>(a, grid, stream);
  return LaunchOne<T, 8, E>(a, grid, stream);
}

template <typename T>
cudaError_t LaunchEpilogue(const SmallLinearArgs& a, cudaStream_t stream) {
  const int64_t units = a.epilogue == SmallLinearEpilogue::kSwiGlu ? a.n / 2 : (a.n + kWarpRows - 1) / kWarpRows;
  const unsigned grid = static_cast<unsigned>((units + kWarps - 1) / kWarps);
  switch (a.epilogue) {
    case SmallLinearEpilogue::kStore:
      return LaunchRows<T, SmallLinearEpilogue::kStore>(a, grid, stream);
    case SmallLinearEpilogue::kAccumulate:
      return LaunchRows<T, SmallLinearEpilogue::kAccumulate>(a, grid, stream);
    case SmallLinearEpilogue::kSwiGlu:
      return LaunchRows<T, SmallLinearEpilogue::kSwiGlu>(a, grid, stream);
  }
  return cudaErrorInvalidValue;
}

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

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
  if (a.n > int64_t{kWarpRows} * kWarps * 0x7fffffff) return "n is too large for one grid";
  const int64_t vec = bf ? 8 : 4;
  if (a.k % vec != 0 || a.ldx % vec != 0 || a.ldx < a.k) {
    return "k and ldx must be whole 16-byte chunks (bf16: multiples of 8; fp32: of 4), ldx ≥ k";
  }
  if (!Aligned16(bf ? static_cast<const void*>(a.x_bf16) : a.x_f32) ||
      !Aligned16(bf ? static_cast<const void*>(a.w_bf16) : a.w_f32)) {
    return "x and W must be 16-byte aligned";
  }
  if (a.epilogue == SmallLinearEpilogue::kSwiGlu) {
    if (a.n % 2 != 0) return "kSwiGlu needs an even n (gate rows, then as many up rows)";
    if (a.out == nullptr || a.ldo < a.n / 2) return "kSwiGlu needs out with ldo ≥ n / 2";
  } else if (a.y == nullptr || a.ldy < a.n) {
    return "kStore and kAccumulate need y with ldy ≥ n";
  }
  return nullptr;
}

cudaError_t SmallLinear(const SmallLinearArgs& args, cudaStream_t stream) {
  if (SmallLinearUnsupported(args) != nullptr) return cudaErrorInvalidValue;
  return args.x_bf16 != nullptr ? LaunchEpilogue<bf16>(args, stream) : LaunchEpilogue<float>(args, stream);
}

}  // namespace gsa::kernels
