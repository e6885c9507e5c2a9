// Helpers for the GPU suites: skip with the reason where no usable GPU is present (so the same
// suites run in CI), bf16 rounding for references, poison patterns, and fresh random inputs.
#pragma once

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "engine/backend/cuda/device_buffer.h"
#include "gtest/gtest.h"
#include "kernels/device_caps.h"

namespace gsa::testing {

// Empty when a CUDA device can run kernels; otherwise why not (no driver, no device, …).
inline std::string GpuUnavailableReason() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("no usable CUDA device (cudaGetDeviceCount: ") + cudaGetErrorName(err) + ": " +
           cudaGetErrorString(err) + ")";
  }
  if (n == 0) return "no CUDA device present";
  return "";
}

// In a TEST body: skips the test, with the reason, where there is no usable GPU.
#define GSA_REQUIRE_GPU()                                                        \
  do {                                                                           \
    const std::string gsa_gpu_why_ = ::gsa::testing::GpuUnavailableReason();    \
    if (!gsa_gpu_why_.empty()) GTEST_SKIP() << "GPU test skipped: " << gsa_gpu_why_; \
  } while (0)

// Whether the current device runs the kernels built on Hopper's wgmma (kernels/device_caps.h);
// where not, forcing one of them must return cudaErrorNotSupported.
inline bool WgmmaKernelsRun() {
  bool supported = false;
  return ::gsa::kernels::OnCurrentDevice(::gsa::kernels::WgmmaSupported, &supported) == cudaSuccess && supported;
}

// Round-to-nearest-even fp32 → bf16 → fp32, as the device's __float2bfloat16 does.
inline float RoundBf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) {  // inf / nan: keep
    u &= 0xffff0000u;
  } else {
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
  }
  float y;
  std::memcpy(&y, &u, 4);
  return y;
}

inline __nv_bfloat16 ToBf16(float x) {
  const float r = RoundBf16(x);
  uint32_t u;
  std::memcpy(&u, &r, 4);
  __nv_bfloat16_raw raw;
  raw.x = static_cast<unsigned short>(u >> 16);
  return __nv_bfloat16(raw);
}

inline float FromBf16(__nv_bfloat16 b) {
  const __nv_bfloat16_raw raw = b;
  const uint32_t u = static_cast<uint32_t>(raw.x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// `n` values uniform in [lo, hi) from a fresh generator seeded from `seed`.
inline std::vector<float> RandomFloats(size_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// A seed that differs run to run (fresh random inputs), printed by the caller on failure.
// The bit patterns of a float and a double: for bitwise comparisons (NaN == NaN, -0 != +0).
inline uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline uint64_t Bits(double d) {
  uint64_t u;
  std::memcpy(&u, &d, 8);
  return u;
}

inline uint64_t FreshSeed() { return std::random_device{}() * 0x9E3779B97F4A7C15ull ^ std::random_device{}(); }

// Byte patterns written over outputs before a kernel runs, so unwritten elements are caught:
// 0xFF bytes read as NaN in fp32 and bf16, and as −1 in int32.
inline constexpr int kPoisonByte = 0xFF;

// Device copies for tests; failures are recorded as gtest failures (and give an empty buffer).
template <typename T>
DeviceBuffer<T> Upload(const std::vector<T>& v) {
  auto b = DeviceBuffer<T>::FromHost(v);
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? std::move(*b) : DeviceBuffer<T>();
}

// `n` elements filled with kPoisonByte.
template <typename T>
DeviceBuffer<T> Poisoned(size_t n) {
  auto b = DeviceBuffer<T>::Allocate(n);
  EXPECT_TRUE(b.ok()) << b.status();
  if (!b.ok()) return DeviceBuffer<T>();
  EXPECT_EQ(cudaMemset(b->get(), kPoisonByte, b->bytes()), cudaSuccess);
  return std::move(*b);
}

// Waits for the device, then copies the buffer back.
template <typename T>
std::vector<T> Download(const DeviceBuffer<T>& b) {
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  auto h = b.ToHost();
  EXPECT_TRUE(h.ok()) << h.status();
  return h.ok() ? std::move(*h) : std::vector<T>();
}

}  // namespace gsa::testing
