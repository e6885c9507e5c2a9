// Device helpers of gsa-kernel-bench (kernels/bench/kernel_bench_main.cc): random fills from a
// counter-based hash (no cuRAND), a busy-wait kernel that keeps the stream ahead of the host while a
// timed region is enqueued, and an output check. Plain pointers; every launcher returns the
// launch's cudaError_t and never synchronizes.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace gsa::bench {

// p[i] = bf16(lo + (hi - lo) · u_i), u_i uniform in [0, 1) from hash(seed, i). n elements.
cudaError_t FillUniformBf16(__nv_bfloat16* p, int64_t n, uint64_t seed, float lo, float hi, cudaStream_t stream);

// p[i] = lo + (hi - lo) · u_i (fp32).
cudaError_t FillUniformF32(float* p, int64_t n, uint64_t seed, float lo, float hi, cudaStream_t stream);

// p[i] = 32 random bits.
cudaError_t FillRandomU32(uint32_t* p, int64_t n, uint64_t seed, cudaStream_t stream);

// One thread spins for `ns` nanoseconds of %globaltimer (bounded by a clock64 cap, so it always ends).
cudaError_t Spin(int64_t ns, cudaStream_t stream);

// counts[0] += number of non-finite values among p[0, n), counts[1] += number of exact zeros.
// counts: 2 device words; the caller zeroes them.
cudaError_t CountBf16(const __nv_bfloat16* p, int64_t n, unsigned long long* counts, cudaStream_t stream);

// fp8 copies of bf16 indexer keys [slots, d] (d ≤ 128), quantized as PostProjection does
// (kernels/elementwise.h, Fp8KeyScale / Fp8KeyCode): codes [slots, d], scales [slots].
cudaError_t QuantizeKeysFp8(const __nv_bfloat16* keys, int64_t slots, int32_t d, uint8_t* codes, float* scales,
                            cudaStream_t stream);

}  // namespace gsa::bench
