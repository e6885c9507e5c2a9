#include "kernels/bench/ceilings.h"

#include <cublasLt.h>
#include <cuda_bf16.h>

#include "kernels/bench/bench_kernels.h"

namespace gsa::bench {

CopyCeiling MeasureCopy(int64_t bytes, int reps, EventTimer& timer, cudaStream_t stream, uint64_t seed) {
  const int64_t words = bytes / 4;
  CopyCeiling c;
  c.bytes_copied = words * 4;
  DevBuf<uint32_t> src(words, "copy ceiling source"), dst(words, "copy ceiling destination");
  BENCH_CUDA(FillRandomU32(src.get(), words, seed, stream));
  BENCH_CUDA(FillRandomU32(dst.get(), words, seed + 1, stream));
  BENCH_CUDA(cudaStreamSynchronize(stream));
  const size_t n = static_cast<size_t>(c.bytes_copied);
  c.timing = timer.Run(
      [&](int64_t) { BENCH_CUDA(cudaMemcpyAsync(dst.get(), src.get(), n, cudaMemcpyDeviceToDevice, stream)); }, 3, reps,
      0);
  c.gbps = 2.0 * static_cast<double>(c.bytes_copied) / (c.timing.median_us * 1e-6) / 1e9;
  return c;
}

namespace {

// RAII for the cuBLASLt objects of one product.
struct LtObjects {
  cublasLtHandle_t handle = nullptr;
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtObjects() {
    if (pref != nullptr) cublasLtMatmulPreferenceDestroy(pref);
    if (d != nullptr) cublasLtMatrixLayoutDestroy(d);
    if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
    if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
    if (op != nullptr) cublasLtMatmulDescDestroy(op);
    if (handle != nullptr) cublasLtDestroy(handle);
  }
};

}  // namespace

GemmCeiling MeasureGemm(bool bf16, int64_t n, int reps, EventTimer& timer, cudaStream_t stream, uint64_t seed) {
  GemmCeiling g;
  g.n = n;
  g.what = bf16 ? "bf16 x bf16 -> bf16, CUBLAS_COMPUTE_32F (fp32 accumulate), m=n=k=" + std::to_string(n) + ", A transposed"
                : "fp32 x fp32 -> fp32, CUBLAS_COMPUTE_32F (no TF32), m=n=k=" + std::to_string(n) + ", A transposed";
  const size_t elem = bf16 ? 2 : 4;
  const int64_t count = n * n;
  DevBuf<uint8_t> a(count * static_cast<int64_t>(elem), "gemm A"), b(count * static_cast<int64_t>(elem), "gemm B"),
      d(count * static_cast<int64_t>(elem), "gemm D");
  const int64_t ws_bytes = 64ll << 20;
  DevBuf<uint8_t> ws(ws_bytes, "gemm workspace");
  if (bf16) {
    BENCH_CUDA(FillUniformBf16(reinterpret_cast<__nv_bfloat16*>(a.get()), count, seed, -1.0f, 1.0f, stream));
    BENCH_CUDA(FillUniformBf16(reinterpret_cast<__nv_bfloat16*>(b.get()), count, seed + 1, -1.0f, 1.0f, stream));
    BENCH_CUDA(FillUniformBf16(reinterpret_cast<__nv_bfloat16*>(d.get()), count, seed + 2, -1.0f, 1.0f, stream));
  } else {
    BENCH_CUDA(FillUniformF32(reinterpret_cast<float*>(a.get()), count, seed, -1.0f, 1.0f, stream));
    BENCH_CUDA(FillUniformF32(reinterpret_cast<float*>(b.get()), count, seed + 1, -1.0f, 1.0f, stream));
    BENCH_CUDA(FillUniformF32(reinterpret_cast<float*>(d.get()), count, seed + 2, -1.0f, 1.0f, stream));
  }
  BENCH_CUDA(cudaStreamSynchronize(stream));

  LtObjects lt;
  BENCH_CUBLAS(cublasLtCreate(&lt.handle));
  BENCH_CUBLAS(cublasLtMatmulDescCreate(&lt.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  BENCH_CUBLAS(cublasLtMatmulDescSetAttribute(lt.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  BENCH_CUBLAS(cublasLtMatmulDescSetAttribute(lt.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  const cudaDataType_t t = bf16 ? CUDA_R_16BF : CUDA_R_32F;
  const uint64_t un = static_cast<uint64_t>(n);
  // Column-major: A stored [k, m] (op T), B [k, n], D [m, n].
  BENCH_CUBLAS(cublasLtMatrixLayoutCreate(&lt.a, t, un, un, n));
  BENCH_CUBLAS(cublasLtMatrixLayoutCreate(&lt.b, t, un, un, n));
  BENCH_CUBLAS(cublasLtMatrixLayoutCreate(&lt.d, t, un, un, n));
  BENCH_CUBLAS(cublasLtMatmulPreferenceCreate(&lt.pref));
  const uint64_t max_ws = static_cast<uint64_t>(ws_bytes);
  BENCH_CUBLAS(cublasLtMatmulPreferenceSetAttribute(lt.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &max_ws,
                                                    sizeof(max_ws)));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(lt.handle, lt.op, lt.a, lt.b, lt.d, lt.d, lt.pref, 1, &result, &found);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
    g.error = st != CUBLAS_STATUS_SUCCESS ? std::string("cublasLtMatmulAlgoGetHeuristic: ") + cublasLtGetStatusName(st)
                                          : std::string("cublasLtMatmulAlgoGetHeuristic found no algorithm");
    if (bf16) Fatal(g.error + " for the " + g.what + " product");
    return g;
  }
  const float alpha = 1.0f, beta = 0.0f;
  g.timing = timer.Run(
      [&](int64_t) {
        BENCH_CUBLAS(cublasLtMatmul(lt.handle, lt.op, &alpha, a.get(), lt.a, b.get(), lt.b, &beta, d.get(), lt.d,
                                    d.get(), lt.d, &result.algo, ws.get(), ws.bytes(), stream));
      },
      3, reps, 0);
  const double flops = 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n);
  g.tflops = flops / (g.timing.median_us * 1e-6) / 1e12;
  g.ok = true;
  return g;
}

}  // namespace gsa::bench
