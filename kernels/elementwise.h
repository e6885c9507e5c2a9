// The small fused kernels of a decoder step around the dense projections (MODEL.md, one decoder
// layer): embedding lookup, RMSNorm (optionally of gathered rows), the post-projection kernel that
// applies the value gate, RoPE and the indexer head weights and writes K, V and the indexer key
// into their paged slots, and SwiGLU. fp32 math; bf16 where a result feeds a matrix product or
// the cache.
#pragma once

#include <cuda_fp8.h>

#include "kernels/paged.h"

namespace gsa::kernels {

// out[r, :] = table[ids[r], :].  table: [vocab, d] fp32 (the embedding stays fp32 on the device:
// rounding the first layer's input to bf16 flips near-tied indexer selections); ids: [rows];
// out: [rows, d].
cudaError_t EmbedRows(const float* table, const int32_t* ids, int64_t rows, int64_t d, float* out,
                      cudaStream_t stream);

// y = x[j, :] / sqrt(mean(x[j, :]²) + eps) * w, j = gather ? gather[i] : i; out[i, :] = bf16(y) and,
// when out_f32 is not null, out_f32[i, :] = y (the indexer's projections read fp32: see cuda_backend.h).
// x: [*, d] fp32; gather: [rows] or null; w: [d] fp32; out: [rows, d] bf16; out_f32: [rows, d] or null.
// On Hopper and later launched as a programmatic dependent (kernels/pdl.cuh): the launch overlaps
// the previous kernel's tail and the kernel waits for it before touching memory; the same holds for
// PostProjection below.
cudaError_t RmsNormRows(const float* x, const int32_t* gather, const float* w, int64_t rows, int64_t d,
                        float eps, bf16* out, cudaStream_t stream, float* out_f32 = nullptr);

// After the fused input projection of one layer. Per row r (num_rows rows), with p = proj + r * proj_stride:
//   v      = p[off_v …] ⊙ act(p[off_vg …] + vg_bias)       (value gate, when off_vg ≥ 0)
//   q, k   = RoPE(p[off_q …], t), RoPE(p[off_k …], t)        t = rows.position[r]; rotate-half pairs
//   p[off_wi + j] ← sigmoid(p[off_wi + j] + wi_bias[j])      (indexer head weights, in place)
//   q_out[r] = bf16(q);  k_cache/v_cache[slot] = bf16(k)/bf16(v);  ki_cache[slot] = bf16(p[off_ki …])
// with slot = rows.slot[r]. Dense rows are treated the same (their keys are cached too).
struct PostProjectionArgs {
  float* proj = nullptr;       // [num_rows, proj_stride] fp32: [q | k | v | (vg) | (og) | qI | kI | wI] columns
  int64_t proj_stride = 0;
  int64_t off_q = 0, off_k = 0, off_v = 0, off_vg = -1, off_ki = 0, off_wi = 0;
  const float* vg_bias = nullptr;   // [n_kv_heads * d_head] (when off_vg ≥ 0)
  const float* wi_bias = nullptr;   // [n_indexer_heads]
  const float* inv_freq = nullptr;  // [d_head / 2] RoPE inverse frequencies (engine/backend/rope.h)
  GateActivation gate_act = GateActivation::kSigmoid;
  int32_t n_heads = 0, n_kv_heads = 0, d_head = 0, d_indexer = 0, n_indexer_heads = 0;
  RowInfo rows;                     // position and slot are read
  int64_t num_rows = 0;
  bf16* q_out = nullptr;     // [num_rows, n_heads, d_head]
  bf16* k_cache = nullptr;   // [num_slots, n_kv_heads, d_head]
  bf16* v_cache = nullptr;   // [num_slots, n_kv_heads, d_head]
  bf16* ki_cache = nullptr;  // [num_slots, d_indexer]
  // fp8 indexer keys instead (both set): ki_fp8[slot] = Fp8KeyCode(kI, scale), ki_scale[slot] =
  // scale = Fp8KeyScale(max |kI|); ki_cache is then unused.
  uint8_t* ki_fp8 = nullptr;  // [num_slots, d_indexer] e4m3 codes
  float* ki_scale = nullptr;  // [num_slots]
};

// fp8 (e4m3) indexer keys, one scale per token: the largest |component| maps to 448, e4m3's
// largest finite value (1 for an all-zero key); code = e4m3(x / scale), round to nearest,
// saturating. Host and device, so tests and the CPU side quantize bitwise alike.
__host__ __device__ inline float Fp8KeyScale(float amax) { return amax > 0.0f ? amax / 448.0f : 1.0f; }
__host__ __device__ inline uint8_t Fp8KeyCode(float x, float scale) {
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(x / scale, __NV_SATFINITE, __NV_E4M3));
}
cudaError_t PostProjection(const PostProjectionArgs& args, cudaStream_t stream);

// out[r, i] = bf16(silu(gu[r, i]) * gu[r, d_ffn + i]).  gu: [rows, 2 * d_ffn] fp32 (gate columns,
// then up columns); out: [rows, d_ffn] bf16.
cudaError_t SwiGlu(const float* gu, int64_t rows, int64_t d_ffn, bf16* out, cudaStream_t stream);

// out[i] = bf16(in[i]) for n values (weights upload, tests).
cudaError_t ConvertToBf16(const float* in, int64_t n, bf16* out, cudaStream_t stream);

}  // namespace gsa::kernels
