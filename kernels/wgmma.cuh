// Hopper warpgroup matrix multiply (wgmma, PTX ISA "Asynchronous Warpgroup Level Matrix
// Multiply-Accumulate"), the pieces our kernels use. Only the sm_90a build has these instructions:
// device code is compiled only where GSA_WGMMA_AVAILABLE is set (elsewhere the functions are empty
// and a kernel built on them must never run), and host code asks WgmmaSupported()
// (kernels/device_caps.h) before launching such a kernel. Include only from .cu files.
//
// Shapes: D[64 × N] (fp32) += A[64 × 16] (bf16) · B[16 × N] (bf16), issued by the 128 threads of a
// warpgroup together. A comes from registers: warp w of the warpgroup holds rows 16w … 16w + 15 in
// the m16n8k16 mma.sync A layout (lane 4g + t: a0 = (row g, k 2t, 2t+1), a1 = (row g+8, same k),
// a2 = (row g, k 2t+8, 2t+9), a3 = (row g+8, same k)). B comes from shared memory through a matrix
// descriptor (Descriptor, Swizzle below), K-major or N-major. D: warp w holds rows 16w + g and
// 16w + g + 8, d[4i + 0, 1] = (row g, columns 8i + 2t, + 1), d[4i + 2, 3] = (row g + 8, the same
// columns), i < N / 8 (the m16n8 accumulator layout of each 8-column block).
//
// Ordering: shared memory that threads wrote (the generic proxy) must be made visible to wgmma
// (the async proxy) with FenceProxyAsyncShared() before the barrier that precedes the wgmma. Before
// a group of wgmma that reads registers written since the last wgmma, call WgmmaFence(); the
// accumulators may be read only after WgmmaWait<0>() (and WgmmaCommit() of the group).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define GSA_WGMMA_AVAILABLE 1
#endif

namespace gsa::kernels::wgmma {

// Shared-memory layouts a descriptor can name (PTX ISA "Shared Memory Matrix Layout"; the
// descriptor's bits 62-63).
enum class Swizzle : uint32_t {
  // "Core matrices" of 8 rows × 16 bytes, 128 contiguous bytes each. K-major: a row is 8 k values
  // of one N index, `lbo` bytes between the two core matrices of a 16-deep k step, `sbo` between
  // core matrices adjacent in N. N-major: a row is 8 N values of one k, `lbo` between core matrices
  // adjacent in k, `sbo` between those adjacent in N.
  kNone = 0,
  // 128-byte rows in atoms of 8 rows (1024 bytes, 1024-byte aligned); the 16-byte chunk c of row r
  // of an atom lies at chunk c ^ (r % 8). K-major: a row holds 64 bf16 of k, sbo = bytes between
  // atoms along M/N, lbo unused; N-major (B with imm-trans-b): a row holds 64 bf16 of N and a
  // k-row follows every 128 bytes, lbo = bytes between 64-wide N blocks, sbo = bytes between atoms
  // along k. A k step of 16 advances the start address by 32 bytes (K-major) within the atom.
  k128B = 1,
};

// A shared-memory matrix descriptor: start address, leading (k) and stride (n) byte offsets, each
// stored divided by 16 in 14 bits; base offset 0.
__device__ __forceinline__ uint64_t Descriptor(const void* smem, uint32_t lbo_bytes, uint32_t sbo_bytes,
                                               Swizzle swizzle = Swizzle::kNone) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  uint64_t d = 0;
  d |= static_cast<uint64_t>((addr >> 4) & 0x3FFFu);
  d |= static_cast<uint64_t>((lbo_bytes >> 4) & 0x3FFFu) << 16;
  d |= static_cast<uint64_t>((sbo_bytes >> 4) & 0x3FFFu) << 32;
  d |= static_cast<uint64_t>(swizzle) << 62;
  return d;
}

__device__ __forceinline__ void FenceProxyAsyncShared() {
#ifdef GSA_WGMMA_AVAILABLE
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}

__device__ __forceinline__ void WgmmaFence() {
#ifdef GSA_WGMMA_AVAILABLE
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#endif
}

__device__ __forceinline__ void WgmmaCommit() {
#ifdef GSA_WGMMA_AVAILABLE
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
#endif
}

template <int kPending>
__device__ __forceinline__ void WgmmaWait() {
#ifdef GSA_WGMMA_AVAILABLE
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(kPending) : "memory");
#endif
}

// Keeps the compiler from moving accesses of the accumulators across the asynchronous wgmma
// (CUTLASS's warpgroup_fence_operand): call on every accumulator after issuing and after waiting.
template <int kN>
__device__ __forceinline__ void FenceOperands(float (&d)[kN]) {
#pragma unroll
  for (int i = 0; i < kN; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// d[64] += A (registers a0 … a3) · B (descriptor b), m64n128k16, bf16 in, fp32 accumulate; B K-major,
// or N-major with kTransB.
// With accumulate = false, d = A · B (d's old values are not read: no zeroing beforehand, which
// would be a non-wgmma write of the accumulators that makes ptxas serialize the wgmma pipeline).
template <bool kTransB = false>
__device__ __forceinline__ void MmaM64N128K16(float (&d)[64], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                              uint64_t b, bool accumulate = true) {
#ifdef GSA_WGMMA_AVAILABLE
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %70, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64, %65, %66, %67}, %68, p, 1, 1, %69;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(b), "n"(kTransB ? 1 : 0), "r"(accumulate ? 1 : 0));
#endif
}

}  // namespace gsa::kernels::wgmma
