#include "kernels/small_linear.h"

namespace gsa::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTileRows = 4;  // rows of W per CTA (kSwiGlu: 2 output columns' gate and up rows)

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
template <typename T, int MT, SmallLinearEpilogue E>
__global__ void __launch_bounds__(kThreads) SmallLinearKernel(SmallLinearArgs a) {
  constexpr int kVec = 16 / sizeof(T);  // elements per 16-byte chunk
  constexpr int kN = kTileRows * MT;    // partial sums per thread: v[r * MT + m]
  const T* x;
  const T* w;
  if constexpr (sizeof(T) == 2) {
    x = reinterpret_cast<const T*>(a.x_bf16);
    w = reinterpret_cast<const T*>(a.w_bf16);
  } else {
    x = reinterpret_cast<const T*>(a.x_f32);
    w = reinterpret_cast<const T*>(a.w_f32);
  }
  // The tile's rows of W (row < 0: past the end, contributes nothing and is not stored).
  int64_t row[kTileRows];
  if constexpr (E == SmallLinearEpilogue::kSwiGlu) {
    const int64_t f = a.n / 2, c0 = static_cast<int64_t>(blockIdx.x) * (kTileRows / 2);
#pragma unroll
    for (int j = 0; j < kTileRows / 2; ++j) {
      row[j] = c0 + j < f ? c0 + j : -1;
      row[j + kTileRows / 2] = c0 + j < f ? f + c0 + j : -1;
    }
  } else {
    const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
#pragma unroll
    for (int j = 0; j < kTileRows; ++j) row[j] = n0 + j < a.n ? n0 + j : -1;
  }

  float v[kN];
#pragma unroll
  for (int i = 0; i < kN; ++i) v[i] = 0.0f;
  const int64_t chunks = a.k / kVec;
  const int rows = static_cast<int>(a.rows);
  for (int64_t c = threadIdx.x; c < chunks; c += kThreads) {
    uint4 wc[kTileRows];
#pragma unroll
    for (int j = 0; j < kTileRows; ++j) {
      wc[j] = row[j] >= 0 ? LoadStream(w + row[j] * a.k + c * kVec) : make_uint4(0u, 0u, 0u, 0u);
    }
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m < rows) {
        const uint4 xc = LoadShared(x + m * a.ldx + c * kVec);
#pragma unroll
        for (int j = 0; j < kTileRows; ++j) Dot(v[j * MT + m], wc[j], xc, T{});
      }
    }
  }

  // Lanes, then warps (in warp order), then the epilogue by the first kN threads.
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const float part = ButterflyReduce<kN>(v, lane);
  constexpr int kShift = 5 - Log2<kN>();
  __shared__ float s_part[kWarps][kN];
  if ((lane & ((1 << kShift) - 1)) == 0) s_part[warp][lane >> kShift] = part;
  __syncthreads();
  const int idx = threadIdx.x;
  float total = 0.0f;
  if (idx < kN) {
#pragma unroll
    for (int q = 0; q < kWarps; ++q) total += s_part[q][idx];
  }
  const int j = idx / MT, m = idx % MT;
  if constexpr (E == SmallLinearEpilogue::kSwiGlu) {
    // Thread (j, m) with j < kTileRows / 2 holds a gate; its up value is thread (j + kTileRows / 2, m)'s.
    __shared__ float s_total[kN];
    if (idx < kN) s_total[idx] = total;
    __syncthreads();
    if (idx >= kN || j >= kTileRows / 2 || m >= rows) return;
    const int64_t col = static_cast<int64_t>(blockIdx.x) * (kTileRows / 2) + j;
    if (col >= a.n / 2) return;
    const float u = s_total[(j + kTileRows / 2) * MT + m];
    a.out[m * a.ldo + col] = __float2bfloat16(total * SigmoidF(total) * u);  // as SwiGlu (elementwise.h)
  } else {
    if (idx >= kN || m >= rows) return;
    const int64_t n = static_cast<int64_t>(blockIdx.x) * kTileRows + j;
    if (n >= a.n) return;
    float* y = a.y + m * a.ldy + n;
    if constexpr (E == SmallLinearEpilogue::kAccumulate) {
      *y += total;
    } else {
      *y = total;
    }
  }
}

template <typename T, SmallLinearEpilogue E>
cudaError_t LaunchRows(const SmallLinearArgs& a, unsigned grid, cudaStream_t stream) {
  if (a.rows <= 1) {
    SmallLinearKernel<T, 1, E><<<grid, kThreads, 0, stream>>>(a);
  } else if (a.rows <= 2) {
    SmallLinearKernel<T, 2, E><<<grid, kThreads, 0, stream>>>(a);
  } else if (a.rows <= 4) {
    SmallLinearKernel<T, 4, E><<<grid, kThreads, 0, stream>>>(a);
  } else {
    SmallLinearKernel<T, 8, E><<<grid, kThreads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchEpilogue(const SmallLinearArgs& a, cudaStream_t stream) {
  const int64_t tiles = a.epilogue == SmallLinearEpilogue::kSwiGlu ? (a.n / 2 + kTileRows / 2 - 1) / (kTileRows / 2)
                                                                   : (a.n + kTileRows - 1) / kTileRows;
  const unsigned grid = static_cast<unsigned>(tiles);
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
  if (a.n > int64_t{kTileRows} * 0x7fffffff) return "n is too large for one grid";
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
