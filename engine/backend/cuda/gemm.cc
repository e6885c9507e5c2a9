#include "engine/backend/cuda/gemm.h"

#include "absl/strings/str_cat.h"
#include "engine/backend/cuda/cuda_status.h"
#include "engine/util/status_macros.h"
#include "kernels/elementwise.h"
#include "kernels/small_linear.h"

namespace gsa {
namespace {

absl::Status LtStatus(cublasStatus_t st, const char* what) {
  if (st == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": cuBLASLt status ", static_cast<int>(st), " (",
                                          cublasLtGetStatusName(st), ": ", cublasLtGetStatusString(st), ")"));
}

#define GSA_LT_RETURN_IF_ERROR(call)                    \
  do {                                                  \
    const cublasStatus_t gsa_lt_st_ = (call);           \
    if (gsa_lt_st_ != CUBLAS_STATUS_SUCCESS) return LtStatus(gsa_lt_st_, #call); \
  } while (0)

// The shape fields of a product of `rows` rows of x ([rows, in], dense) with W [out, in].
kernels::SmallLinearArgs SmallArgs(int64_t rows, int64_t in, int64_t out) {
  kernels::SmallLinearArgs a;
  a.rows = rows;
  a.k = in;
  a.n = out;
  a.ldx = in;
  return a;
}

}  // namespace

// One shape's descriptors and chosen algorithm. Column-major view (cuBLASLt's): the row-major
// y[rows, out] is yᵀ[out, rows] with ld = ldy; yᵀ = op(W) · xᵀ with W seen as [in, out] (ld in,
// transposed) and x as [in, rows] (ld in).
struct Gemm::Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  ~Plan() {
    if (c != nullptr) cublasLtMatrixLayoutDestroy(c);
    if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
    if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
    if (op != nullptr) cublasLtMatmulDescDestroy(op);
  }
};

absl::StatusOr<std::unique_ptr<Gemm>> Gemm::Create(bool small_rows, size_t workspace_bytes) {
  cublasLtHandle_t handle = nullptr;
  GSA_LT_RETURN_IF_ERROR(cublasLtCreate(&handle));
  absl::StatusOr<DeviceBuffer<uint8_t>> ws = DeviceBuffer<uint8_t>::Allocate(workspace_bytes);
  if (!ws.ok()) {
    cublasLtDestroy(handle);
    return ws.status();
  }
  return std::make_unique<Gemm>(CreateTag(), handle, std::move(*ws), small_rows);
}

Gemm::Gemm(CreateTag, cublasLtHandle_t handle, DeviceBuffer<uint8_t> workspace, bool small_rows)
    : handle_(handle), workspace_(std::move(workspace)), small_rows_(small_rows) {}

Gemm::~Gemm() {
  plans_.clear();
  if (handle_ != nullptr) cublasLtDestroy(handle_);
}

absl::StatusOr<const Gemm::Plan*> Gemm::PlanFor(int64_t rows, int64_t in, int64_t out, int64_t ldy,
                                                bool accumulate, bool fp32) {
  const auto key = std::make_tuple(rows, in, out, ldy, accumulate, fp32);
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second.get();
  auto plan = std::make_unique<Plan>();
  GSA_LT_RETURN_IF_ERROR(cublasLtMatmulDescCreate(&plan->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  GSA_LT_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  GSA_LT_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  const cudaDataType_t ab = fp32 ? CUDA_R_32F : CUDA_R_16BF;
  GSA_LT_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan->a, ab, static_cast<uint64_t>(in),
                                                    static_cast<uint64_t>(out), in));
  GSA_LT_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan->b, ab, static_cast<uint64_t>(in),
                                                    static_cast<uint64_t>(rows), in));
  GSA_LT_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan->c, CUDA_R_32F, static_cast<uint64_t>(out),
                                                    static_cast<uint64_t>(rows), ldy));
  cublasLtMatmulPreference_t pref = nullptr;
  GSA_LT_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = workspace_.bytes();
  cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = cublasLtMatmulAlgoGetHeuristic(handle_, plan->op, plan->a, plan->b, plan->c, plan->c, pref, 1,
                                        &result, &found);
  }
  cublasLtMatmulPreferenceDestroy(pref);
  GSA_RETURN_IF_ERROR(LtStatus(st, "cublasLtMatmulAlgoGetHeuristic"));
  if (found == 0) {
    return absl::InternalError(absl::StrCat("cuBLASLt has no algorithm for a ", fp32 ? "fp32" : "bf16", " product of [", rows, ", ",
                                            in, "] x [", out, ", ", in, "]ᵀ"));
  }
  plan->algo = result.algo;
  const Plan* p = plan.get();
  plans_.emplace(key, std::move(plan));
  return p;
}

std::optional<absl::Status> Gemm::TrySmallRows(const kernels::SmallLinearArgs& a, cudaStream_t stream) const {
  if (!small_rows_ || a.rows > kernels::kSmallLinearMaxRows || kernels::SmallLinearUnsupported(a) != nullptr) {
    return std::nullopt;
  }
  return CudaStatus(kernels::SmallLinear(a, stream), "kernels::SmallLinear");
}

absl::Status Gemm::Linear(const __nv_bfloat16* x, int64_t rows, int64_t in, const __nv_bfloat16* w,
                          int64_t out, float* y, int64_t ldy, bool accumulate, cudaStream_t stream) {
  if (rows <= 0) return absl::OkStatus();
  kernels::SmallLinearArgs a = SmallArgs(rows, in, out);
  a.x_bf16 = x;
  a.w_bf16 = w;
  a.epilogue = accumulate ? kernels::SmallLinearEpilogue::kAccumulate : kernels::SmallLinearEpilogue::kStore;
  a.y = y;
  a.ldy = ldy;
  if (std::optional<absl::Status> done = TrySmallRows(a, stream)) return *done;
  absl::StatusOr<const Plan*> plan = PlanFor(rows, in, out, ldy, accumulate, /*fp32=*/false);
  if (!plan.ok()) return plan.status();
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  GSA_LT_RETURN_IF_ERROR(cublasLtMatmul(handle_, (*plan)->op, &alpha, w, (*plan)->a, x, (*plan)->b, &beta, y,
                                        (*plan)->c, y, (*plan)->c, &(*plan)->algo, workspace_.get(),
                                        workspace_.bytes(), stream));
  return absl::OkStatus();
}

absl::Status Gemm::LinearF32(const float* x, int64_t rows, int64_t in, const float* w, int64_t out, float* y,
                             int64_t ldy, cudaStream_t stream) {
  if (rows <= 0) return absl::OkStatus();
  kernels::SmallLinearArgs a = SmallArgs(rows, in, out);
  a.x_f32 = x;
  a.w_f32 = w;
  a.y = y;
  a.ldy = ldy;
  if (std::optional<absl::Status> done = TrySmallRows(a, stream)) return *done;
  absl::StatusOr<const Plan*> plan = PlanFor(rows, in, out, ldy, /*accumulate=*/false, /*fp32=*/true);
  if (!plan.ok()) return plan.status();
  const float alpha = 1.0f, beta = 0.0f;
  GSA_LT_RETURN_IF_ERROR(cublasLtMatmul(handle_, (*plan)->op, &alpha, w, (*plan)->a, x, (*plan)->b, &beta, y,
                                        (*plan)->c, y, (*plan)->c, &(*plan)->algo, workspace_.get(),
                                        workspace_.bytes(), stream));
  return absl::OkStatus();
}

absl::Status Gemm::LinearSwiGlu(const __nv_bfloat16* x, int64_t rows, int64_t in, const __nv_bfloat16* w,
                                int64_t d_ffn, float* gu, __nv_bfloat16* out, cudaStream_t stream) {
  if (rows <= 0) return absl::OkStatus();
  kernels::SmallLinearArgs a = SmallArgs(rows, in, 2 * d_ffn);
  a.x_bf16 = x;
  a.w_bf16 = w;
  a.epilogue = kernels::SmallLinearEpilogue::kSwiGlu;
  a.out = out;
  a.ldo = d_ffn;
  if (std::optional<absl::Status> done = TrySmallRows(a, stream)) return *done;
  GSA_RETURN_IF_ERROR(Linear(x, rows, in, w, 2 * d_ffn, gu, 2 * d_ffn, /*accumulate=*/false, stream));
  return CudaStatus(kernels::SwiGlu(gu, rows, d_ffn, out, stream), "kernels::SwiGlu");
}

}  // namespace gsa
