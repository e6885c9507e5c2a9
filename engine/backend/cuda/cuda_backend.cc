#include "engine/backend/cuda/cuda_backend.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/device_buffer.h"
#include "engine/backend/cuda/gemm.h"
#include "engine/backend/rope.h"
#include "engine/util/status_macros.h"
#include "kernels/attention.h"
#include "kernels/attention_stats.h"
#include "kernels/dense_prefill.h"
#include "kernels/sparse_prefill.h"
#include "kernels/elementwise.h"
#include "kernels/indexer.h"
#include "kernels/selection.h"

namespace gsa {

using kernels::bf16;

namespace {

// Round-to-nearest-even fp32 → bf16 on the host (what __float2bfloat16 does on the device).
uint16_t Bf16Bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) return static_cast<uint16_t>((u >> 16) | ((u & 0xffffu) ? 0x40u : 0u));
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

kernels::GateActivation ToKernel(GateActivation a) {
  switch (a) {
    case GateActivation::kTanh: return kernels::GateActivation::kTanh;
    case GateActivation::kSilu: return kernels::GateActivation::kSilu;
    default: return kernels::GateActivation::kSigmoid;
  }
}

constexpr size_t kAlign = 256;
size_t AlignUp(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// A RAII CUDA stream.
class Stream {
 public:
  Stream() = default;
  ~Stream() {
    if (s_ != nullptr) cudaStreamDestroy(s_);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  absl::Status Create() { return CudaStatus(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking), "cudaStreamCreate"); }
  cudaStream_t get() const { return s_; }

 private:
  cudaStream_t s_ = nullptr;
};

// Packs host arrays into one staging blob (256-byte aligned sections) so a step's metadata goes to
// the device in one copy.
class StagingBlob {
 public:
  template <typename T>
  size_t Add(const std::vector<T>& v) {
    const size_t at = AlignUp(bytes_.size());
    bytes_.resize(at + AlignUp(std::max<size_t>(v.size() * sizeof(T), 1)));
    if (!v.empty()) std::memcpy(bytes_.data() + at, v.data(), v.size() * sizeof(T));
    return at;
  }
  const std::vector<uint8_t>& bytes() const { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
};

// Converts a checkpoint tensor (any float dtype) to bf16 bits, appended to `dst`.
absl::Status AppendBf16(const TensorView* t, std::vector<uint16_t>& dst) {
  std::vector<float> f(static_cast<size_t>(t->numel()));
  GSA_RETURN_IF_ERROR(ConvertToFloat(*t, f.data()));
  const size_t at = dst.size();
  dst.resize(at + f.size());
  for (size_t i = 0; i < f.size(); ++i) dst[at + i] = Bf16Bits(f[i]);
  return absl::OkStatus();
}

absl::StatusOr<DeviceBuffer<bf16>> UploadBf16(const std::vector<uint16_t>& bits) {
  GSA_ASSIGN_OR_RETURN(DeviceBuffer<bf16> d, DeviceBuffer<bf16>::Allocate(bits.size()));
  if (!bits.empty()) {
    GSA_CUDA_RETURN_IF_ERROR(cudaMemcpy(d.get(), bits.data(), bits.size() * 2, cudaMemcpyHostToDevice));
  }
  return d;
}

absl::StatusOr<DeviceBuffer<bf16>> TensorToBf16(const TensorView* t) {
  std::vector<uint16_t> bits;
  GSA_RETURN_IF_ERROR(AppendBf16(t, bits));
  return UploadBf16(bits);
}

absl::StatusOr<DeviceBuffer<float>> TensorToF32(const TensorView* t) {
  std::vector<float> f(static_cast<size_t>(t->numel()));
  GSA_RETURN_IF_ERROR(ConvertToFloat(*t, f.data()));
  return DeviceBuffer<float>::FromHost(f);
}

}  // namespace

std::string CudaUnavailableReason() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return absl::StrCat("no usable CUDA device (", cudaGetErrorName(err), ": ", cudaGetErrorString(err), ")");
  }
  if (n == 0) return "no CUDA device present";
  return "";
}

// Device weights of one layer. The projections that read the normed input run as two products
// into one row of `proj` ([rows, proj_stride] fp32):
//   columns [0, bf16_rows):  [q | k | v | (value gate) | (output gate)], bf16 weights (w_cat);
//   columns [off_qi, …):     [qI | kI | wI], fp32 weights and fp32 input (w_idx), because bf16
//                            rounding there moves which tokens are selected (ties within 1e-3 are
//                            common in the indexer's scores); off_qi and proj_stride are multiples of
//                            64 columns so both products see 256-byte aligned outputs.
struct LayerWeightsGpu {
  DeviceBuffer<float> input_norm, post_norm;  // [d_model]
  DeviceBuffer<bf16> w_cat;                   // [bf16_rows, d_model]
  DeviceBuffer<float> w_idx;                  // [idx_rows, d_model]
  int64_t bf16_rows = 0, idx_rows = 0, proj_stride = 0;
  int64_t off_q = 0, off_k = 0, off_v = 0, off_vg = -1, off_og = -1, off_qi = 0, off_ki = 0, off_wi = 0;
  DeviceBuffer<float> vg_bias, og_bias, wi_bias, idx_bias;
  DeviceBuffer<bf16> o_proj;   // [d_model, q_dim]
  DeviceBuffer<bf16> gate_up;  // [2 d_ffn, d_model]
  DeviceBuffer<bf16> down;     // [d_model, d_ffn]
};

struct LayerCacheGpu {
  DeviceBuffer<bf16> k, v;       // [num_slots, n_kv_heads, d_head]
  DeviceBuffer<bf16> ki;         // [num_slots, d_indexer] (bf16 keys; empty with fp8 keys)
  DeviceBuffer<uint8_t> ki8;     // [num_slots, d_indexer] e4m3 codes (fp8 keys; else empty)
  DeviceBuffer<float> ki_scale;  // [num_slots] (fp8 keys; else empty)
  DeviceBuffer<float> cumvar;    // [num_slots]
};

// The step workspace, sized for `rows` rows (grown on demand, never shrunk).
struct Workspace {
  int64_t rows = 0;
  DeviceBuffer<float> hidden;   // [rows, d_model]
  DeviceBuffer<bf16> xn;        // [rows, d_model] bf16 normed inputs of products
  DeviceBuffer<bf16> act;       // [rows, d_ffn] SwiGLU output, the down product's input (not xn:
                                // the fused gate/up kernel reads xn while it writes this)
  DeviceBuffer<float> proj;     // [rows, proj_stride]
  DeviceBuffer<float> xf32;     // [rows, d_model] fp32 normed input (indexer projections)
  DeviceBuffer<bf16> q;         // [rows, q_dim]
  DeviceBuffer<bf16> attn;      // [rows, q_dim]
  DeviceBuffer<float> gu;       // [rows, 2 d_ffn]
  DeviceBuffer<double> var, entropy;  // [rows]
  DeviceBuffer<int32_t> k_all;  // [n_layers, rows]
  DeviceBuffer<int32_t> sel;    // [rows, sel_stride]
  DeviceBuffer<float> logits;   // [logit_chunk, vocab]
  DeviceBuffer<uint8_t> attn_ws, topk_ws;
  DeviceBuffer<uint32_t> attn_counters;  // GatheredAttention's split counters, zeroed when allocated (its contract)
  DeviceBuffer<uint8_t> select_ws;  // kernels::DecodeSelect's, zeroed when allocated (its contract)
  DeviceBuffer<uint8_t> prefill_ws;  // kernels::PrefillSelect's (empty when contexts are too short for it)
  DeviceBuffer<float> scores;   // one score chunk
  DeviceBuffer<uint8_t> sparse_ws;  // kernels::SparsePrefill's (block lists and masks of its tiles)
  DeviceBuffer<uint8_t> row_skip;   // [rows] rows SparsePrefill computed (GatheredAttention skips them)
  DeviceBuffer<uint8_t> meta;   // the step's metadata blob
};

// Outputs of the attention-statistics pass (kernels/attention_stats.h) for the rows that asked,
// [stats rows, n_layers] each; grown on demand, only by steps that carry such rows.
struct StatsBuffers {
  int64_t rows = 0;  // stats rows the buffers hold
  DeviceBuffer<int32_t> selected;
  DeviceBuffer<double> first_token, value_gate, output_gate;
  DeviceBuffer<uint8_t> workspace;  // [rows, n_heads] fp32 per-head weights
};

struct CudaBackend::Impl {
  int sm_count = 0;
  Stream stream;
  std::unique_ptr<Gemm> gemm;
  DeviceBuffer<float> embed;   // [vocab, d_model] fp32 (see kernels/elementwise.h, EmbedRows)
  DeviceBuffer<bf16> lm_head;  // [vocab, d_model]
  DeviceBuffer<float> final_norm;
  DeviceBuffer<float> inv_freq;
  std::vector<LayerWeightsGpu> layers;
  std::vector<LayerCacheGpu> cache;
  Workspace ws;
  StatsBuffers stats;
  int64_t max_proj_stride = 0;
  int64_t sel_stride = 0;
  int64_t logit_chunk = 0;
  int64_t max_candidates = 0;  // bound of any row's candidates (max_position_embeddings)
  int64_t score_floats = 0;
  // Occupancy of the kernels whose launchers size their grids by it, asked once at creation
  // (kernels' plan/run split): GatheredAttention's, and DecodeSelect's (0: not usable here).
  int32_t attn_resident_blocks = 0;
  int32_t select_resident_blocks = 0;
  // Page-locked staging for graph-replayed steps: the step's metadata on its way in, the logits
  // and every row's k_t per layer on their way out (copies that need no host wait).
  PinnedBuffer<uint8_t> meta_host;
  PinnedBuffer<float> logits_host;
  PinnedBuffer<int32_t> k_host;
  // The launched step (Launch … Collect).
  struct Launched {
    StepOutput out;              // complete, except what a graph step still has on the device
    bool on_device = false;      // a graph step: logits and k_t arrive in logits_host / k_host
    int64_t plan_rows = 0;       // rows of the padded plan (k_host's row stride)
    int64_t real_rows = 0;       // the batch's rows
    std::vector<uint8_t> dense;  // the plan's dense flags (rows not counted in selected_sum)
  };
  std::optional<Launched> launched;
};

CudaBackend::CudaBackend(CreateTag, const ModelConfig& config, const CudaBackendOptions& options)
    : config_(config), options_(options), impl_(std::make_unique<Impl>()) {}

CudaBackend::~CudaBackend() {
  if (impl_ != nullptr && impl_->stream.get() != nullptr) cudaStreamSynchronize(impl_->stream.get());
}

namespace {

absl::Status EnsureWorkspace(const ModelConfig& c, CudaBackend::Impl& im, int64_t rows, int64_t score_floats) {
  Workspace& w = im.ws;
  if (rows <= w.rows) return absl::OkStatus();
  const size_t R = static_cast<size_t>(rows);
  const size_t D = static_cast<size_t>(c.d_model), F = static_cast<size_t>(c.d_ffn);
  const size_t QD = static_cast<size_t>(c.q_dim());
  Workspace n;
  n.rows = rows;
  GSA_ASSIGN_OR_RETURN(n.hidden, DeviceBuffer<float>::Allocate(R * D));
  GSA_ASSIGN_OR_RETURN(n.xn, DeviceBuffer<bf16>::Allocate(R * D));
  GSA_ASSIGN_OR_RETURN(n.act, DeviceBuffer<bf16>::Allocate(R * F));
  GSA_ASSIGN_OR_RETURN(n.proj, DeviceBuffer<float>::Allocate(R * static_cast<size_t>(im.max_proj_stride)));
  GSA_ASSIGN_OR_RETURN(n.xf32, DeviceBuffer<float>::Allocate(R * D));
  GSA_ASSIGN_OR_RETURN(n.q, DeviceBuffer<bf16>::Allocate(R * QD));
  GSA_ASSIGN_OR_RETURN(n.attn, DeviceBuffer<bf16>::Allocate(R * QD));
  GSA_ASSIGN_OR_RETURN(n.gu, DeviceBuffer<float>::Allocate(R * 2 * F));
  GSA_ASSIGN_OR_RETURN(n.var, DeviceBuffer<double>::Allocate(R));
  GSA_ASSIGN_OR_RETURN(n.entropy, DeviceBuffer<double>::Allocate(R));
  GSA_ASSIGN_OR_RETURN(n.k_all, DeviceBuffer<int32_t>::Allocate(R * static_cast<size_t>(c.n_layers)));
  GSA_ASSIGN_OR_RETURN(n.sel, DeviceBuffer<int32_t>::Allocate(R * static_cast<size_t>(im.sel_stride)));
  GSA_ASSIGN_OR_RETURN(n.logits, DeviceBuffer<float>::Allocate(static_cast<size_t>(std::min<int64_t>(rows, im.logit_chunk)) *
                                                              static_cast<size_t>(c.vocab_size)));
  GSA_ASSIGN_OR_RETURN(n.attn_ws, DeviceBuffer<uint8_t>::Allocate(std::max<size_t>(
                                      1, kernels::GatheredAttentionWorkspaceBytes(rows, static_cast<int32_t>(c.n_heads),
                                                                                  static_cast<int32_t>(c.d_head)))));
  GSA_ASSIGN_OR_RETURN(n.topk_ws, DeviceBuffer<uint8_t>::Allocate(
                                      std::max<size_t>(1, kernels::TopKWorkspaceBytes(rows, im.max_candidates))));
  GSA_ASSIGN_OR_RETURN(n.scores, DeviceBuffer<float>::Allocate(static_cast<size_t>(score_floats)));
  GSA_ASSIGN_OR_RETURN(n.select_ws, DeviceBuffer<uint8_t>::Allocate(kernels::DecodeSelectWorkspaceBytes(rows)));
  if (im.max_candidates >= kernels::kPrefillSelectMinCandidates) {
    const int64_t cands = std::min<int64_t>(im.max_candidates, kernels::kPrefillSelectMaxCandidates);
    GSA_ASSIGN_OR_RETURN(n.prefill_ws, DeviceBuffer<uint8_t>::Allocate(kernels::PrefillSelectWorkspaceBytes(rows, cands)));
  }
  const int32_t group = static_cast<int32_t>(c.heads_per_kv());
  if (kernels::SparsePrefillSupports(static_cast<int32_t>(c.d_head), group)) {
    // Room for one sequence's chunk of `rows` rows whose tiles take unions up to what the default
    // cost rule accepts (kQ rows × the longest selection / (64 × cost) blocks), plus headers for
    // many sequences; with more sequences the launcher lowers the cap (more rows gathered).
    const int64_t k_bound = std::max<int64_t>({c.k_base, c.k_max, 1});
    const int64_t kq = kernels::SparsePrefillTileRows(group);
    const int64_t u_cap = static_cast<int64_t>(std::ceil(static_cast<double>(kq * k_bound) /
                                                         (64.0 * kernels::kSparsePrefillTileKeyCost)));
    const int32_t nq = static_cast<int32_t>(std::min<int64_t>(rows, 1 << 30));
    const int32_t ctx = static_cast<int32_t>(std::min<int64_t>(im.max_candidates, kernels::kSparsePrefillMaxContext));
    const size_t bytes =
        kernels::SparsePrefillWorkspaceBytes(1, nq, ctx, group, static_cast<int32_t>(std::min<int64_t>(u_cap, 1 << 20))) +
        kernels::SparsePrefillWorkspaceBytes(static_cast<int32_t>(std::min<int64_t>(rows, 65535)), 1, ctx, group, 0);
    GSA_ASSIGN_OR_RETURN(n.sparse_ws, DeviceBuffer<uint8_t>::Allocate(bytes));
    GSA_ASSIGN_OR_RETURN(n.row_skip, DeviceBuffer<uint8_t>::Allocate(R));
  }
  GSA_ASSIGN_OR_RETURN(n.attn_counters, DeviceBuffer<uint32_t>::Allocate(R * static_cast<size_t>(c.n_kv_heads)));
  GSA_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(n.select_ws.get(), 0, n.select_ws.bytes(), im.stream.get()));
  GSA_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(n.attn_counters.get(), 0, n.attn_counters.bytes(), im.stream.get()));
  n.meta = std::move(w.meta);
  w = std::move(n);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(const ModelConfig& c, const ModelWeights& wts,
                                                                 const CudaBackendOptions& options) {
  if (const std::string why = CudaUnavailableReason(); !why.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("--backend cuda: ", why, "; use --backend cpu"));
  }
  if (static_cast<int64_t>(wts.layers.size()) != c.n_layers) {
    return absl::InvalidArgumentError(absl::StrCat("weights have ", wts.layers.size(), " layers, config says ", c.n_layers));
  }
  if (!kernels::IndexerScoresSupports(static_cast<int32_t>(c.d_indexer), static_cast<int32_t>(c.n_indexer_heads))) {
    return absl::UnimplementedError(absl::StrCat("the CUDA backend supports d_indexer 16, 32, 64 or 128 and at most 16 "
                                                 "indexer heads; this model has d_indexer ", c.d_indexer, " and ",
                                                 c.n_indexer_heads, " heads: use --backend cpu"));
  }
  if (c.d_head != 32 && c.d_head != 64 && c.d_head != 128 && c.d_head != 256) {
    return absl::UnimplementedError(absl::StrCat("the CUDA backend supports d_head 32, 64, 128 or 256; this model has ",
                                                 c.d_head, ": use --backend cpu"));
  }
  if (c.heads_per_kv() > 8) {
    return absl::UnimplementedError(absl::StrCat("the CUDA backend supports up to 8 query heads per KV head; this model has ",
                                                 c.heads_per_kv(), ": use --backend cpu"));
  }
  GSA_CUDA_RETURN_IF_ERROR(cudaSetDevice(options.device));
  auto b = std::make_unique<CudaBackend>(CreateTag(), c, options);
  Impl& im = *b->impl_;
  cudaDeviceProp prop{};
  GSA_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, options.device));
  im.sm_count = prop.multiProcessorCount;
  b->device_description_ = absl::StrFormat("%s, %d SMs, %.1f GiB, sm_%d%d", prop.name, prop.multiProcessorCount,
                                           static_cast<double>(prop.totalGlobalMem) / (1 << 30), prop.major, prop.minor);
  size_t free_bytes = 0, total_bytes = 0;
  GSA_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
  GSA_RETURN_IF_ERROR(im.stream.Create());
  GSA_CUDA_RETURN_IF_ERROR(kernels::GatheredAttentionResidentBlocks(
      static_cast<int32_t>(c.d_head), static_cast<int32_t>(c.heads_per_kv()), &im.attn_resident_blocks));
  if (const cudaError_t e = kernels::DecodeSelectPrepare(static_cast<int32_t>(c.d_indexer), options.fp8_indexer_keys,
                                                         &im.select_resident_blocks);
      e != cudaSuccess && e != cudaErrorNotSupported) {
    return CudaStatus(e, "kernels::DecodeSelectPrepare");
  }
  GSA_ASSIGN_OR_RETURN(im.gemm, Gemm::Create(options.use_small_rows_linear));

  auto fail_memory = [&](const absl::Status& st) -> absl::Status {
    if (!absl::IsResourceExhausted(st)) return st;
    return absl::ResourceExhaustedError(absl::StrCat(
        "the model's weights and step workspace do not fit on ", b->device_description_, " (", free_bytes >> 20,
        " MiB free at start): ", st.message(), "; use a smaller --max-batched-tokens, a larger --gpu-memory-fraction or a GPU with more memory"));
  };
  auto run = [&]() -> absl::Status {
    GSA_ASSIGN_OR_RETURN(im.embed, TensorToF32(wts.embed_tokens));
    GSA_ASSIGN_OR_RETURN(im.lm_head, TensorToBf16(wts.lm_head));  // a bf16 copy of embed when tied
    GSA_ASSIGN_OR_RETURN(im.final_norm, TensorToF32(wts.final_norm));
    GSA_ASSIGN_OR_RETURN(im.inv_freq, DeviceBuffer<float>::FromHost(RopeInvFreq(c)));
    for (const LayerWeights& lw : wts.layers) {
      LayerWeightsGpu L;
      GSA_ASSIGN_OR_RETURN(L.input_norm, TensorToF32(lw.input_layernorm));
      GSA_ASSIGN_OR_RETURN(L.post_norm, TensorToF32(lw.post_attention_layernorm));
      std::vector<uint16_t> cat;
      int64_t rows = 0;
      auto add = [&](const TensorView* t, int64_t& offset) -> absl::Status {
        offset = rows;
        rows += t->shape[0];
        return AppendBf16(t, cat);
      };
      GSA_RETURN_IF_ERROR(add(lw.q_proj, L.off_q));
      GSA_RETURN_IF_ERROR(add(lw.k_proj, L.off_k));
      GSA_RETURN_IF_ERROR(add(lw.v_proj, L.off_v));
      if (c.use_value_gate) {
        GSA_RETURN_IF_ERROR(add(lw.value_gate_w, L.off_vg));
        GSA_ASSIGN_OR_RETURN(L.vg_bias, TensorToF32(lw.value_gate_b));
      }
      if (c.use_output_gate) {
        GSA_RETURN_IF_ERROR(add(lw.output_gate_w, L.off_og));
        GSA_ASSIGN_OR_RETURN(L.og_bias, TensorToF32(lw.output_gate_b));
      }
      L.bf16_rows = rows;
      GSA_ASSIGN_OR_RETURN(L.w_cat, UploadBf16(cat));
      std::vector<float> idx;
      auto add_f32 = [&](const TensorView* t) -> absl::Status {
        const size_t at = idx.size();
        idx.resize(at + static_cast<size_t>(t->numel()));
        return ConvertToFloat(*t, idx.data() + at);
      };
      GSA_RETURN_IF_ERROR(add_f32(lw.indexer_q_proj));
      GSA_RETURN_IF_ERROR(add_f32(lw.indexer_k_proj));
      GSA_RETURN_IF_ERROR(add_f32(lw.indexer_w_proj));
      L.idx_rows = c.n_indexer_heads * c.d_indexer + c.d_indexer + c.n_indexer_heads;
      L.off_qi = (rows + 63) / 64 * 64;
      L.off_ki = L.off_qi + c.n_indexer_heads * c.d_indexer;
      L.off_wi = L.off_ki + c.d_indexer;
      L.proj_stride = (L.off_qi + L.idx_rows + 63) / 64 * 64;
      im.max_proj_stride = std::max(im.max_proj_stride, L.proj_stride);
      GSA_ASSIGN_OR_RETURN(L.w_idx, DeviceBuffer<float>::FromHost(idx));
      GSA_ASSIGN_OR_RETURN(L.wi_bias, TensorToF32(lw.indexer_w_bias));
      GSA_ASSIGN_OR_RETURN(L.idx_bias, TensorToF32(lw.indexer_bias));
      GSA_ASSIGN_OR_RETURN(L.o_proj, TensorToBf16(lw.o_proj));
      std::vector<uint16_t> gu;
      GSA_RETURN_IF_ERROR(AppendBf16(lw.mlp_gate, gu));
      GSA_RETURN_IF_ERROR(AppendBf16(lw.mlp_up, gu));
      GSA_ASSIGN_OR_RETURN(L.gate_up, UploadBf16(gu));
      GSA_ASSIGN_OR_RETURN(L.down, TensorToBf16(lw.mlp_down));
      im.layers.push_back(std::move(L));
    }
    im.sel_stride = std::max<int64_t>({c.k_max, c.k_base, 1});
    im.logit_chunk = 256;
    im.max_candidates = std::max<int64_t>(c.max_position_embeddings, 1);
    im.score_floats = std::max<int64_t>(options.score_budget_bytes / 4, im.max_candidates);
    return EnsureWorkspace(c, im, std::max<int64_t>(options.max_rows, 1), im.score_floats);
  };
  if (absl::Status st = run(); !st.ok()) return fail_memory(st);
  GSA_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  return b;
}

int64_t CudaBackend::CacheBytesPerToken() const {
  const CacheSpec s = CacheSpec::ForModel(config_, 1, 1);
  const int64_t indexer = options_.fp8_indexer_keys ? s.d_indexer + 4 : s.d_indexer * 2;
  return s.n_layers * (2 * s.kv_row() * 2 + indexer + 4);
}

absl::StatusOr<int64_t> CudaBackend::MaxCacheBlocks(int64_t block_size) const {
  GSA_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  size_t free_bytes = 0, total_bytes = 0;
  GSA_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
  // What we may still take: the allowed share minus what is already in use (ours and others'),
  // less a margin for the CUDA context's and cuBLASLt's own growth.
  constexpr double kMargin = 512.0 * (1 << 20);
  const double used = static_cast<double>(total_bytes - free_bytes);
  const double allowed = static_cast<double>(total_bytes) * options_.gpu_memory_fraction - used - kMargin;
  const double per_block = static_cast<double>(CacheBytesPerToken()) * static_cast<double>(block_size);
  const double blocks = std::floor(std::min(allowed, static_cast<double>(free_bytes) - kMargin) / per_block);
  if (blocks < 1) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "no room for a KV cache on %s: %.2f GiB in use of %.2f GiB, --gpu-memory-fraction %.2f allows %.2f GiB, one "
        "block of %d tokens needs %.1f MiB; raise --gpu-memory-fraction or use a GPU with more memory",
        device_description_, used / (1 << 30), static_cast<double>(total_bytes) / (1 << 30), options_.gpu_memory_fraction,
        static_cast<double>(total_bytes) * options_.gpu_memory_fraction / (1 << 30), block_size, per_block / (1 << 20)));
  }
  return static_cast<int64_t>(blocks);
}

absl::Status CudaBackend::AllocateCache(int64_t num_blocks, int64_t block_size) {
  if (num_blocks <= 0 || block_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("cache needs positive num_blocks and block_size, got ", num_blocks,
                                                   " and ", block_size));
  }
  GSA_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  GSA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(impl_->stream.get()));
  graphs_.clear();  // they address the old pages
  impl_->cache.clear();
  cache_spec_ = CacheSpec{};
  const CacheSpec spec = CacheSpec::ForModel(config_, num_blocks, block_size);
  if (spec.num_slots() > int64_t{INT32_MAX} - block_size) {  // kernels/paged.h: slots are int32
    return absl::InvalidArgumentError(absl::StrCat("a cache of ", num_blocks, " blocks x ", block_size,
                                                   " tokens has more than 2^31 - 1 slots, the most the CUDA kernels "
                                                   "address; lower the cache size"));
  }
  // One block more than the engine sees: the scratch block that padding rows of decode graphs write.
  const size_t slots = static_cast<size_t>(spec.num_slots() + block_size);
  auto alloc = [&]() -> absl::Status {
    for (int64_t l = 0; l < config_.n_layers; ++l) {
      LayerCacheGpu lc;
      GSA_ASSIGN_OR_RETURN(lc.k, DeviceBuffer<bf16>::Allocate(slots * static_cast<size_t>(spec.kv_row())));
      GSA_ASSIGN_OR_RETURN(lc.v, DeviceBuffer<bf16>::Allocate(slots * static_cast<size_t>(spec.kv_row())));
      if (options_.fp8_indexer_keys) {
        GSA_ASSIGN_OR_RETURN(lc.ki8, DeviceBuffer<uint8_t>::Allocate(slots * static_cast<size_t>(spec.d_indexer)));
        GSA_ASSIGN_OR_RETURN(lc.ki_scale, DeviceBuffer<float>::Allocate(slots));
        GSA_CUDA_RETURN_IF_ERROR(cudaMemset(lc.ki8.get(), 0, lc.ki8.bytes()));
        GSA_CUDA_RETURN_IF_ERROR(cudaMemset(lc.ki_scale.get(), 0, lc.ki_scale.bytes()));
      } else {
        GSA_ASSIGN_OR_RETURN(lc.ki, DeviceBuffer<bf16>::Allocate(slots * static_cast<size_t>(spec.d_indexer)));
        GSA_CUDA_RETURN_IF_ERROR(cudaMemset(lc.ki.get(), 0, lc.ki.bytes()));
      }
      GSA_ASSIGN_OR_RETURN(lc.cumvar, DeviceBuffer<float>::Allocate(slots));
      // Zero the pages: a bug that reads an unwritten slot then reads zeros, never old data.
      GSA_CUDA_RETURN_IF_ERROR(cudaMemset(lc.k.get(), 0, lc.k.bytes()));
      GSA_CUDA_RETURN_IF_ERROR(cudaMemset(lc.v.get(), 0, lc.v.bytes()));
      GSA_CUDA_RETURN_IF_ERROR(cudaMemset(lc.cumvar.get(), 0, lc.cumvar.bytes()));
      impl_->cache.push_back(std::move(lc));
    }
    return absl::OkStatus();
  };
  if (absl::Status st = alloc(); !st.ok()) {
    impl_->cache.clear();
    if (absl::IsResourceExhausted(st)) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "cannot allocate a KV cache of %d blocks x %d tokens (%.2f GiB) on %s: %s; lower the cache size", num_blocks,
          block_size, static_cast<double>(CacheBytesPerToken()) * static_cast<double>(spec.num_slots()) / (1 << 30),
          device_description_, st.message()));
    }
    return st;
  }
  cache_spec_ = spec;
  scratch_block_ = num_blocks;
  return absl::OkStatus();
}

namespace {

// The host's plan for one step (reused by every layer).
struct StepPlan {
  int64_t rows = 0;
  std::vector<int32_t> token_ids;
  std::vector<int32_t> row_seq, position;
  std::vector<int64_t> slot;
  std::vector<uint8_t> dense;
  bool any_sparse = false;
  struct Chunk {
    int64_t row_begin = 0, row_count = 0, offset_index = 0, max_candidates = 0;
    bool one_row_per_seq = true;  // no two rows of one sequence (kernels::DecodeSelect's precondition)
    int64_t sequence_runs = 0;     // runs of consecutive same-sequence rows (kernels::IndexerScoresArgs)
    // Sparse rows, and those with fewer candidates than kernels::PrefillSelect samples (it scores
    // them in full after the sample: right for a few, not for most).
    int64_t sparse_rows = 0, short_rows = 0;
  };
  std::vector<Chunk> chunks;
  std::vector<int64_t> score_offset;    // all chunks' offsets, concatenated
  std::vector<int32_t> gathered_rows;   // rows for GatheredAttention
  int64_t gathered_max_tokens = 0;
  std::vector<int32_t> prefill_seqs;    // sequences for DensePrefill
  int32_t prefill_max_query = 0;
  // Sparse sequences with a chunk of several rows, for SparsePrefill (their rows stay in
  // gathered_rows: the ones SparsePrefill leaves are computed there).
  std::vector<int32_t> sparse_prefill_seqs;
  int32_t sparse_prefill_max_query = 0, sparse_prefill_max_context = 0;
  int32_t max_blocks = 0;
  std::vector<int32_t> block_tables, seq_first_row, query_start, num_query, context_len;
  std::vector<int32_t> logits_rows;
  std::vector<int32_t> stats_rows;      // rows whose attention statistics the step returns
};

// Fixed sizes for a graph-captured decode step: every array has the same length every time, so
// the device addresses the graph was captured with stay valid.
struct FixedShape {
  int64_t max_context = 0;  // every row's candidates and attended tokens are ≤ this
  // False when every row attends to at most SparseTokenBound(config) tokens (sparse rows, and
  // dense rows that short): the attention's split-k is then sized for that, not for max_context
  // (sized for max_context, a 2048-token selection would run in one split per head).
  bool long_dense_rows = true;
};

// The most tokens a sparse row attends to (k_t ≤ max(k_base, k_max)).
int64_t SparseTokenBound(const ModelConfig& c) { return std::max<int64_t>({c.k_base, c.k_max, 1}); }

// Which prefill kernels a step may use (CudaBackendOptions).
static_assert(CudaBackendOptions().prefill_select_min_candidates == kernels::kPrefillSelectFasterFrom,
              "CudaBackendOptions' default is kernels/selection.h's measured crossover");

struct PrefillKernels {
  bool dense = true;
  bool sparse_tiles = true;
  int64_t select_min_candidates = kernels::kPrefillSelectFasterFrom;  // StepPlan::Chunk::short_rows
};

PrefillKernels PrefillKernelsOf(const CudaBackendOptions& o) {
  return PrefillKernels{o.use_dense_prefill_kernel, o.use_sparse_prefill_tiles, o.prefill_select_min_candidates};
}

StepPlan PlanStep(const StepBatch& batch, const ModelConfig& c, int64_t block_size, int64_t score_floats,
                  PrefillKernels kernels_on, const FixedShape* fixed) {
  StepPlan p;
  p.rows = batch.num_rows();
  p.token_ids = batch.token_ids;
  p.logits_rows = batch.logits_rows;
  p.stats_rows = AttentionStatsRows(batch);
  const size_t R = static_cast<size_t>(p.rows);
  p.row_seq.resize(R);
  p.position.resize(R);
  p.slot.resize(R);
  p.dense.resize(R);
  const size_t S = batch.seqs.size();
  for (const SequenceInBatch& s : batch.seqs) {
    p.max_blocks = std::max<int32_t>(p.max_blocks, static_cast<int32_t>((s.context_len + block_size - 1) / block_size));
  }
  if (fixed != nullptr) p.max_blocks = static_cast<int32_t>((fixed->max_context + block_size - 1) / block_size);
  p.max_blocks = std::max(p.max_blocks, 1);
  p.block_tables.assign(S * static_cast<size_t>(p.max_blocks), 0);
  p.seq_first_row.resize(S + 1);
  p.query_start.resize(S);
  p.num_query.resize(S);
  p.context_len.resize(S);
  const bool use_prefill_kernel = kernels_on.dense && kernels::DensePrefillSupports(static_cast<int32_t>(c.d_head));
  const bool use_sparse_tiles =
      kernels_on.sparse_tiles &&
      kernels::SparsePrefillSupports(static_cast<int32_t>(c.d_head), static_cast<int32_t>(c.heads_per_kv()));
  for (size_t i = 0; i < S; ++i) {
    const SequenceInBatch& s = batch.seqs[i];
    const int64_t nb = (s.context_len + block_size - 1) / block_size;
    std::copy_n(s.block_table.begin(), nb, p.block_tables.begin() + static_cast<int64_t>(i) * p.max_blocks);
    p.seq_first_row[i] = s.query_start;
    p.query_start[i] = s.query_start;
    p.num_query[i] = s.num_query;
    p.context_len[i] = s.context_len;
    const bool dense = s.attention == AttentionMode::kDense;
    for (int32_t j = 0; j < s.num_query; ++j) {
      const size_t r = static_cast<size_t>(s.query_start + j);
      p.row_seq[r] = static_cast<int32_t>(i);
      p.position[r] = s.context_len - s.num_query + j;
      p.slot[r] = SlotOf(s, p.position[r], block_size);
      p.dense[r] = dense ? 1 : 0;
    }
    if (dense && s.num_query > 1 && use_prefill_kernel) {
      p.prefill_seqs.push_back(static_cast<int32_t>(i));
      p.prefill_max_query = std::max(p.prefill_max_query, s.num_query);
    } else {
      if (!dense && s.num_query > 1 && use_sparse_tiles && s.context_len <= kernels::kSparsePrefillMaxContext) {
        p.sparse_prefill_seqs.push_back(static_cast<int32_t>(i));
        p.sparse_prefill_max_query = std::max(p.sparse_prefill_max_query, s.num_query);
        p.sparse_prefill_max_context = std::max(p.sparse_prefill_max_context, s.context_len);
      }
      for (int32_t j = 0; j < s.num_query; ++j) {
        const int32_t r = s.query_start + j;
        p.gathered_rows.push_back(r);
        const int64_t avail = s.context_len - s.num_query + j + 1;
        p.gathered_max_tokens = std::max<int64_t>(p.gathered_max_tokens, dense ? avail : std::min<int64_t>(avail, std::max(c.k_max, c.k_base)));
      }
    }
    if (!dense) p.any_sparse = true;
  }
  p.seq_first_row[S] = static_cast<int32_t>(p.rows);
  if (fixed != nullptr) {
    // One chunk of every row at a fixed stride; the same launch sizes every step.
    p.any_sparse = true;
    p.gathered_max_tokens =
        fixed->long_dense_rows ? fixed->max_context : std::min(fixed->max_context, SparseTokenBound(c));
    StepPlan::Chunk ch;
    ch.row_begin = 0;
    ch.row_count = p.rows;
    ch.offset_index = 0;
    ch.max_candidates = fixed->max_context;
    p.chunks.push_back(ch);
    for (int64_t r = 0; r < p.rows; ++r) p.score_offset.push_back(r * fixed->max_context);
    return p;
  }
  // Score chunks: consecutive rows whose sparse candidates fit the score buffer.
  StepPlan::Chunk cur;
  int64_t used = 0;
  std::vector<int64_t> seq_chunk(S, -1);  // the last chunk that holds a row of each sequence
  auto close = [&]() {
    if (cur.row_count > 0) p.chunks.push_back(cur);
    cur = StepPlan::Chunk{};
    used = 0;
  };
  for (int64_t r = 0; r < p.rows; ++r) {
    const int64_t cand = p.dense[static_cast<size_t>(r)] ? 0 : p.position[static_cast<size_t>(r)] + 1;
    if (cur.row_count > 0 && (used + cand > score_floats || cur.row_count >= 65535)) close();
    if (cur.row_count == 0) {
      cur.row_begin = r;
      cur.offset_index = static_cast<int64_t>(p.score_offset.size());
    }
    p.score_offset.push_back(used);
    used += cand;
    cur.row_count += 1;
    const size_t si = static_cast<size_t>(p.row_seq[static_cast<size_t>(r)]);
    const int64_t chunk_id = static_cast<int64_t>(p.chunks.size());
    if (seq_chunk[si] == chunk_id) cur.one_row_per_seq = false;
    if (cur.row_count == 1 || p.row_seq[static_cast<size_t>(r)] != p.row_seq[static_cast<size_t>(r - 1)]) {
      ++cur.sequence_runs;
    }
    seq_chunk[si] = chunk_id;
    cur.max_candidates = std::max(cur.max_candidates, cand);
    if (cand > 0) {
      ++cur.sparse_rows;
      if (cand < std::max(kernels_on.select_min_candidates, kernels::kPrefillSelectMinCandidates)) ++cur.short_rows;
    }
  }
  close();
  return p;
}

// Device addresses of a step's metadata, uploaded as one blob.
struct StepDevice {
  const int32_t* tokens = nullptr;
  kernels::RowInfo rows;
  kernels::PagedLayout paged;
  const int32_t *first = nullptr, *qstart = nullptr, *nq = nullptr, *ctx = nullptr;
  const int64_t* offsets = nullptr;
  const int32_t *grows = nullptr, *pseqs = nullptr, *spseqs = nullptr, *logit_rows = nullptr, *stats_rows = nullptr;
};

// A step's metadata packed for one upload: the blob, and where each array sits in it.
struct PackedStep {
  StagingBlob blob;
  size_t tokens = 0, seq = 0, pos = 0, slot = 0, dense = 0, tables = 0, first = 0, qstart = 0, nq = 0, ctx = 0,
         offsets = 0, grows = 0, pseqs = 0, spseqs = 0, logit_rows = 0, stats_rows = 0;
  int32_t max_blocks = 0, block_size = 0;

  // The device addresses of the arrays once the blob is copied to `base`.
  StepDevice At(const uint8_t* base) const {
    auto at = [base](size_t off) { return base + off; };
    StepDevice d;
    d.tokens = reinterpret_cast<const int32_t*>(at(tokens));
    d.rows.seq = reinterpret_cast<const int32_t*>(at(seq));
    d.rows.position = reinterpret_cast<const int32_t*>(at(pos));
    d.rows.slot = reinterpret_cast<const int64_t*>(at(slot));
    d.rows.dense = reinterpret_cast<const uint8_t*>(at(dense));
    d.paged.block_tables = reinterpret_cast<const int32_t*>(at(tables));
    d.paged.max_blocks_per_seq = max_blocks;
    d.paged.block_size = block_size;
    d.first = reinterpret_cast<const int32_t*>(at(first));
    d.qstart = reinterpret_cast<const int32_t*>(at(qstart));
    d.nq = reinterpret_cast<const int32_t*>(at(nq));
    d.ctx = reinterpret_cast<const int32_t*>(at(ctx));
    d.offsets = reinterpret_cast<const int64_t*>(at(offsets));
    d.grows = reinterpret_cast<const int32_t*>(at(grows));
    d.pseqs = reinterpret_cast<const int32_t*>(at(pseqs));
    d.spseqs = reinterpret_cast<const int32_t*>(at(spseqs));
    d.logit_rows = reinterpret_cast<const int32_t*>(at(logit_rows));
    d.stats_rows = reinterpret_cast<const int32_t*>(at(stats_rows));
    return d;
  }
};

PackedStep PackStep(const StepPlan& plan, int64_t block_size) {
  PackedStep p;
  p.tokens = p.blob.Add(plan.token_ids);
  p.seq = p.blob.Add(plan.row_seq);
  p.pos = p.blob.Add(plan.position);
  p.slot = p.blob.Add(plan.slot);
  p.dense = p.blob.Add(plan.dense);
  p.tables = p.blob.Add(plan.block_tables);
  p.first = p.blob.Add(plan.seq_first_row);
  p.qstart = p.blob.Add(plan.query_start);
  p.nq = p.blob.Add(plan.num_query);
  p.ctx = p.blob.Add(plan.context_len);
  p.offsets = p.blob.Add(plan.score_offset);
  p.grows = p.blob.Add(plan.gathered_rows);
  p.pseqs = p.blob.Add(plan.prefill_seqs);
  p.spseqs = p.blob.Add(plan.sparse_prefill_seqs);
  p.logit_rows = p.blob.Add(plan.logits_rows);
  p.stats_rows = p.blob.Add(plan.stats_rows);
  p.max_blocks = plan.max_blocks;
  p.block_size = static_cast<int32_t>(block_size);
  return p;
}

// Pads a decode batch to `rows` rows with idle ones: one-token dense sequences at position 0 on
// the scratch block (what they write there is never read by a real sequence).
void AppendIdleDecodeRows(StepBatch& batch, int64_t rows, int64_t scratch_block) {
  for (int64_t r = batch.num_rows(); r < rows; ++r) {
    SequenceInBatch s;
    s.query_start = static_cast<int32_t>(r);
    s.num_query = 1;
    s.context_len = 1;
    s.block_table = {static_cast<int32_t>(scratch_block)};
    s.attention = AttentionMode::kDense;
    batch.token_ids.push_back(0);
    batch.seqs.push_back(std::move(s));
    batch.logits_rows.push_back(static_cast<int32_t>(r));
  }
}

// Decode batch sizes that get a CUDA graph, and the context caps graphs are captured for.
constexpr int64_t kGraphBuckets[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};
// Caps at most 1.5x apart: a dense row's split-k is sized for the cap, so a context far below its
// cap would leave splits empty (fewer busy blocks at batch 1).
constexpr int64_t kGraphContextCaps[] = {4096,   8192,   12288,  16384,  24576,  32768,   49152,  65536,
                                         98304,  131072, 196608, 262144, 393216, 524288, 786432, 1048576};

}  // namespace

// A captured decode step for `bucket` rows whose contexts are ≤ `max_context`: its own metadata
// buffer (fixed layout) and the instantiated graph.
struct DecodeGraph {
  int64_t bucket = 0, max_context = 0;
  bool long_dense_rows = true;  // FixedShape::long_dense_rows it was captured with
  DeviceBuffer<uint8_t> meta;
  cudaGraphExec_t exec = nullptr;
  ~DecodeGraph() {
    if (exec != nullptr) cudaGraphExecDestroy(exec);
  }
};

struct CudaBackend::StepRunner {
  static absl::Status EnqueueLayers(CudaBackend& b, const StepPlan& plan, const StepDevice& d, int32_t num_seqs,
                                    bool record_selection, StepOutput* out);
  static absl::Status EnqueueLogits(CudaBackend& b, const StepDevice& d, int64_t r0, int64_t n);
};

absl::Status CudaBackend::StepRunner::EnqueueLayers(CudaBackend& b, const StepPlan& plan, const StepDevice& d,
                                                    int32_t num_seqs, bool record_selection, StepOutput* out) {
  Impl& im = *b.impl_;
  const ModelConfig& c = b.config_;
  const cudaStream_t st = im.stream.get();
  const int64_t R = plan.rows;
  const int64_t D = c.d_model, F = c.d_ffn, QD = c.q_dim();
  Workspace& w = im.ws;
  kernels::SelectionRule rule;
  rule.method = !c.use_adaptive_k ? 0 : (c.adaptive_k_method == AdaptiveKMethod::kVariance ? 1 : 2);
  rule.k_base = c.k_base;
  rule.k_min = c.k_min;
  rule.k_max = c.k_max;
  rule.temperature = c.adaptive_k_temperature;
  if (rule.method != 1 && plan.any_sparse) {
    GSA_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(w.var.get(), 0, static_cast<size_t>(R) * sizeof(double), st));
  }
  GSA_CUDA_RETURN_IF_ERROR(kernels::EmbedRows(im.embed.get(), d.tokens, R, D, w.hidden.get(), st));
  // SparsePrefill needs its per-tile headers in the workspace: a step with very many short chunks
  // (more tiles than the workspace was sized for) leaves them all to GatheredAttention.
  const bool sparse_tiles =
      !plan.sparse_prefill_seqs.empty() &&
      kernels::SparsePrefillWorkspaceBytes(static_cast<int32_t>(plan.sparse_prefill_seqs.size()),
                                           plan.sparse_prefill_max_query, plan.sparse_prefill_max_context,
                                           static_cast<int32_t>(c.heads_per_kv()), 0) <= w.sparse_ws.bytes();
  if (sparse_tiles) {
    // Rows of other sequences (decodes) are never skipped; SparsePrefill sets its own rows' flags
    // in every layer.
    GSA_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(w.row_skip.get(), 0, static_cast<size_t>(R), st));
  }
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.d_head)));
  const float eps = static_cast<float>(c.norm_eps);
  const kernels::GateActivation gate_act = ToKernel(c.gate_activation);
  for (int64_t li = 0; li < c.n_layers; ++li) {
    const LayerWeightsGpu& L = im.layers[static_cast<size_t>(li)];
    LayerCacheGpu& cache = im.cache[static_cast<size_t>(li)];
    int32_t* k_layer = w.k_all.get() + li * R;

    // 1. Input norm and the two projections (bf16 for q, k, v and the gates; fp32 for the indexer).
    GSA_CUDA_RETURN_IF_ERROR(kernels::RmsNormRows(w.hidden.get(), nullptr, L.input_norm.get(), R, D, eps, w.xn.get(), st,
                                                  w.xf32.get()));
    GSA_RETURN_IF_ERROR(im.gemm->Linear(w.xn.get(), R, D, L.w_cat.get(), L.bf16_rows, w.proj.get(), L.proj_stride, false, st));
    GSA_RETURN_IF_ERROR(im.gemm->LinearF32(w.xf32.get(), R, D, L.w_idx.get(), L.idx_rows, w.proj.get() + L.off_qi,
                                           L.proj_stride, st));

    // 2. Value gate, RoPE, indexer head weights; keys into the cache.
    kernels::PostProjectionArgs pp;
    pp.proj = w.proj.get();
    pp.proj_stride = L.proj_stride;
    pp.off_q = L.off_q;
    pp.off_k = L.off_k;
    pp.off_v = L.off_v;
    pp.off_vg = L.off_vg;
    pp.off_ki = L.off_ki;
    pp.off_wi = L.off_wi;
    pp.vg_bias = L.vg_bias.get();
    pp.wi_bias = L.wi_bias.get();
    pp.inv_freq = im.inv_freq.get();
    pp.gate_act = gate_act;
    pp.n_heads = static_cast<int32_t>(c.n_heads);
    pp.n_kv_heads = static_cast<int32_t>(c.n_kv_heads);
    pp.d_head = static_cast<int32_t>(c.d_head);
    pp.d_indexer = static_cast<int32_t>(c.d_indexer);
    pp.n_indexer_heads = static_cast<int32_t>(c.n_indexer_heads);
    pp.rows = d.rows;
    pp.num_rows = R;
    pp.q_out = w.q.get();
    pp.k_cache = cache.k.get();
    pp.v_cache = cache.v.get();
    pp.ki_cache = cache.ki.get();
    pp.ki_fp8 = cache.ki8.get();
    pp.ki_scale = cache.ki_scale.get();
    GSA_CUDA_RETURN_IF_ERROR(kernels::PostProjection(pp, st));

    // 3. Selection, chunk by chunk: scores → statistics → k_t → top-k.
    if (plan.any_sparse) {
      for (const StepPlan::Chunk& ch : plan.chunks) {
        kernels::ScoreChunk chunk;
        chunk.scores = w.scores.get();
        chunk.score_offset = d.offsets + ch.offset_index;
        chunk.row_begin = ch.row_begin;
        chunk.row_count = ch.row_count;
        chunk.max_candidates = ch.max_candidates;
        if (ch.max_candidates > 0) {
          kernels::IndexerScoresArgs ia;
          ia.proj = w.proj.get();
          ia.proj_stride = L.proj_stride;
          ia.off_qi = L.off_qi;
          ia.off_wi = L.off_wi;
          ia.bias = L.idx_bias.get();
          ia.ki_cache = cache.ki.get();
          ia.ki_fp8 = cache.ki8.get();
          ia.ki_scale = cache.ki_scale.get();
          ia.paged = d.paged;
          ia.rows = d.rows;
          ia.n_indexer_heads = static_cast<int32_t>(c.n_indexer_heads);
          ia.d_indexer = static_cast<int32_t>(c.d_indexer);
          ia.relu = c.indexer_activation == IndexerActivation::kRelu;
          ia.scores = w.scores.get();
          ia.score_offset = chunk.score_offset;
          ia.row_begin = ch.row_begin;
          ia.row_count = ch.row_count;
          ia.max_candidates = ch.max_candidates;
          ia.sequence_runs = ch.sequence_runs;
          // The fields the fused selections share with each other: the chunk, the rule, the outputs.
          auto selection_common = [&](auto& x) {
            x.index = ia;
            x.rule = rule;
            x.var = w.var.get();
            x.cumvar = cache.cumvar.get();
            x.k = k_layer;
            x.sel = w.sel.get();
            x.sel_stride = im.sel_stride;
          };
          // Decode: the whole selection in one cooperative launch when the device and shape allow
          // (at batch 1 below 8K candidates the separate single-block path measured faster).
          if (ch.one_row_per_seq && rule.method != 2 && (ch.max_candidates >= 8192 || ch.row_count > 1)) {
            kernels::DecodeSelectArgs ds;
            selection_common(ds);
            ds.workspace = w.select_ws.get();
            ds.workspace_bytes = w.select_ws.bytes();
            ds.resident_blocks_per_sm = im.select_resident_blocks;
            const cudaError_t err = kernels::DecodeSelect(ds, st);
            if (err == cudaSuccess) continue;
            if (err != cudaErrorNotSupported) GSA_CUDA_RETURN_IF_ERROR(err);
          }
          // Prefill chunks of long rows: the indexer keeps only the scores above a sampled threshold
          // and the top-k reads those (kernels::PrefillSelect; the separate launches elsewhere).
          if (!ch.one_row_per_seq && rule.method != 2 && ch.max_candidates >= kernels::kPrefillSelectMinCandidates &&
              ch.short_rows * 8 <= ch.sparse_rows && w.prefill_ws.bytes() > 0 && b.options_.use_prefill_select) {
            kernels::PrefillSelectArgs ps;
            selection_common(ps);
            ps.seq_first_row = d.first;
            ps.num_seqs = num_seqs;
            ps.workspace = w.prefill_ws.get();
            ps.workspace_bytes = w.prefill_ws.bytes();
            const cudaError_t err = kernels::PrefillSelect(ps, st);
            if (err == cudaSuccess) continue;
            if (err != cudaErrorNotSupported) GSA_CUDA_RETURN_IF_ERROR(err);
          }
          GSA_CUDA_RETURN_IF_ERROR(kernels::IndexerScores(ia, st));
          if (rule.method != 0) {
            GSA_CUDA_RETURN_IF_ERROR(kernels::ScoreStats(chunk, d.rows, w.var.get(),
                                                         rule.method == 2 ? w.entropy.get() : nullptr, st));
          }
        }
        // The fixed rule adds nothing to the running sums: no var (SelectionCounts then skips the chain).
        GSA_CUDA_RETURN_IF_ERROR(kernels::SelectionCounts(chunk, d.rows, d.paged, d.first, num_seqs, rule,
                                                          rule.method == 0 ? nullptr : w.var.get(),
                                                          rule.method == 2 ? w.entropy.get() : nullptr,
                                                          cache.cumvar.get(), k_layer, st));
        if (ch.max_candidates > 0) {
          GSA_CUDA_RETURN_IF_ERROR(kernels::TopK(chunk, d.rows, k_layer, w.sel.get(), im.sel_stride, w.topk_ws.get(),
                                                 w.topk_ws.bytes(), st));
        }
      }
    }

    // 4. Attention (output gate fused).
    const float* gate_z = L.off_og >= 0 ? w.proj.get() + L.off_og : nullptr;
    // The fields every attention launcher shares: q, this layer's cache, the output gate, shape, out.
    auto attention_common = [&](auto& x) {
      x.q = w.q.get();
      x.k_cache = cache.k.get();
      x.v_cache = cache.v.get();
      x.paged = d.paged;
      x.gate_z = gate_z;
      x.gate_stride = L.proj_stride;
      x.gate_bias = L.og_bias.get();
      x.gate_act = gate_act;
      x.n_heads = static_cast<int32_t>(c.n_heads);
      x.n_kv_heads = static_cast<int32_t>(c.n_kv_heads);
      x.d_head = static_cast<int32_t>(c.d_head);
      x.scale = scale;
      x.out = w.attn.get();
    };
    const uint8_t* row_skip = nullptr;
    if (sparse_tiles) {
      kernels::SparsePrefillArgs sp;
      attention_common(sp);
      sp.query_start = d.qstart;
      sp.num_query = d.nq;
      sp.context_len = d.ctx;
      sp.seq_ids = d.spseqs;
      sp.num_seq_ids = static_cast<int32_t>(plan.sparse_prefill_seqs.size());
      sp.max_num_query = plan.sparse_prefill_max_query;
      sp.max_context = plan.sparse_prefill_max_context;
      sp.sel = w.sel.get();
      sp.sel_count = k_layer;
      sp.sel_stride = im.sel_stride;
      sp.row_skip = w.row_skip.get();
      sp.workspace = w.sparse_ws.get();
      sp.workspace_bytes = w.sparse_ws.bytes();
      GSA_CUDA_RETURN_IF_ERROR(kernels::SparsePrefill(sp, st));
      row_skip = w.row_skip.get();
    }
    if (!plan.gathered_rows.empty()) {
      kernels::GatheredAttentionArgs ga;
      attention_common(ga);
      ga.rows = d.rows;
      ga.row_ids = d.grows;
      ga.num_row_ids = static_cast<int64_t>(plan.gathered_rows.size());
      ga.row_skip = row_skip;
      ga.sel = w.sel.get();
      ga.sel_count = k_layer;
      ga.sel_stride = im.sel_stride;
      ga.max_tokens = plan.gathered_max_tokens;
      ga.workspace = w.attn_ws.get();
      ga.workspace_bytes = w.attn_ws.bytes();
      if (b.options_.attention_merge_in_kernel) {
        ga.split_counters = w.attn_counters.get();
        ga.split_counter_count = w.attn_counters.size();
      }
      ga.resident_blocks_per_sm = im.attn_resident_blocks;
      GSA_CUDA_RETURN_IF_ERROR(kernels::GatheredAttention(ga, st));
    }
    if (!plan.prefill_seqs.empty()) {
      kernels::DensePrefillArgs da;
      attention_common(da);
      da.query_start = d.qstart;
      da.num_query = d.nq;
      da.context_len = d.ctx;
      da.seq_ids = d.pseqs;
      da.num_seq_ids = static_cast<int32_t>(plan.prefill_seqs.size());
      da.max_num_query = plan.prefill_max_query;
      GSA_CUDA_RETURN_IF_ERROR(kernels::DensePrefill(da, st));
    }

    // Attention statistics of the rows that asked (none in a graph-captured step).
    if (!plan.stats_rows.empty()) {
      StatsBuffers& sb = im.stats;
      kernels::AttentionStatsArgs sa;
      sa.q = w.q.get();
      sa.k_cache = cache.k.get();
      sa.paged = d.paged;
      sa.rows = d.rows;
      sa.row_ids = d.stats_rows;
      sa.num_row_ids = static_cast<int64_t>(plan.stats_rows.size());
      sa.sel = w.sel.get();
      sa.sel_count = k_layer;
      sa.sel_stride = im.sel_stride;
      sa.value_gate_z = L.off_vg >= 0 ? w.proj.get() + L.off_vg : nullptr;
      sa.value_gate_bias = L.vg_bias.get();
      sa.output_gate_z = gate_z;
      sa.output_gate_bias = L.og_bias.get();
      sa.gate_stride = L.proj_stride;
      sa.gate_act = gate_act;
      sa.n_heads = static_cast<int32_t>(c.n_heads);
      sa.n_kv_heads = static_cast<int32_t>(c.n_kv_heads);
      sa.d_head = static_cast<int32_t>(c.d_head);
      sa.scale = scale;
      sa.selected = sb.selected.get() + li;
      sa.first_token = sb.first_token.get() + li;
      sa.value_gate = sb.value_gate.get() + li;
      sa.output_gate = sb.output_gate.get() + li;
      sa.out_stride = c.n_layers;
      sa.workspace = sb.workspace.get();
      sa.workspace_bytes = sb.workspace.bytes();
      GSA_CUDA_RETURN_IF_ERROR(kernels::AttentionStats(sa, st));
    }

    // 5. Output projection (+= residual); post norm; SwiGLU MLP (+= residual).
    GSA_RETURN_IF_ERROR(im.gemm->Linear(w.attn.get(), R, QD, L.o_proj.get(), D, w.hidden.get(), D, true, st));
    GSA_CUDA_RETURN_IF_ERROR(kernels::RmsNormRows(w.hidden.get(), nullptr, L.post_norm.get(), R, D, eps, w.xn.get(), st));
    GSA_RETURN_IF_ERROR(im.gemm->LinearSwiGlu(w.xn.get(), R, D, L.gate_up.get(), F, w.gu.get(), w.act.get(), st));
    GSA_RETURN_IF_ERROR(im.gemm->Linear(w.act.get(), R, F, L.down.get(), D, w.hidden.get(), D, true, st));

    if (record_selection) {
      std::vector<int32_t> sel_host(static_cast<size_t>(R * im.sel_stride));
      std::vector<int32_t> k_host(static_cast<size_t>(R));
      if (plan.any_sparse) {
        GSA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(sel_host.data(), w.sel.get(), sel_host.size() * 4, cudaMemcpyDeviceToHost, st));
        GSA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(k_host.data(), k_layer, k_host.size() * 4, cudaMemcpyDeviceToHost, st));
      }
      GSA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(st));
      std::vector<std::vector<int32_t>>& layer_sel = out->selections[static_cast<size_t>(li)];
      layer_sel.resize(static_cast<size_t>(R));
      for (int64_t r = 0; r < R; ++r) {
        std::vector<int32_t>& v = layer_sel[static_cast<size_t>(r)];
        const int32_t pos = plan.position[static_cast<size_t>(r)];
        if (plan.dense[static_cast<size_t>(r)]) {
          v.resize(static_cast<size_t>(pos + 1));
          for (int32_t s = 0; s <= pos; ++s) v[static_cast<size_t>(s)] = pos - s;
        } else {
          const int32_t k = k_host[static_cast<size_t>(r)];
          v.assign(sel_host.begin() + r * im.sel_stride, sel_host.begin() + r * im.sel_stride + k);
        }
      }
    }
  }
  return absl::OkStatus();
}

// Final norm and lm_head for logits rows [r0, r0 + n) into the workspace's logits buffer.
absl::Status CudaBackend::StepRunner::EnqueueLogits(CudaBackend& b, const StepDevice& d, int64_t r0, int64_t n) {
  Impl& im = *b.impl_;
  const ModelConfig& c = b.config_;
  Workspace& w = im.ws;
  const cudaStream_t st = im.stream.get();
  GSA_CUDA_RETURN_IF_ERROR(kernels::RmsNormRows(w.hidden.get(), d.logit_rows + r0, im.final_norm.get(), n, c.d_model,
                                                static_cast<float>(c.norm_eps), w.xn.get(), st));
  return im.gemm->Linear(w.xn.get(), n, c.d_model, im.lm_head.get(), c.vocab_size, w.logits.get(), c.vocab_size, false, st);
}

namespace {

// Fills `out.selected_sum` from the per-layer k of every row (dense rows are not counted).
// Per layer, Σ k_t over the real rows that ran sparse: k_all is [n_layers, plan_rows] on the host.
void SumSelected(const std::vector<uint8_t>& dense, int64_t plan_rows, int64_t real_rows, const int32_t* k_all,
                 int64_t n_layers, StepOutput& out) {
  for (int64_t li = 0; li < n_layers; ++li) {
    int64_t kept = 0;
    for (int64_t r = 0; r < real_rows; ++r) {
      if (!dense[static_cast<size_t>(r)]) kept += k_all[static_cast<size_t>(li * plan_rows + r)];
    }
    out.selected_sum[static_cast<size_t>(li)] = kept;
  }
}

absl::Status CollectSelectedSums(const StepPlan& plan, int64_t real_rows, const int32_t* k_all_dev, int64_t n_layers,
                                 cudaStream_t st, StepOutput& out) {
  std::vector<int32_t> k_all(static_cast<size_t>(plan.rows * n_layers));
  GSA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(k_all.data(), k_all_dev, k_all.size() * 4, cudaMemcpyDeviceToHost, st));
  GSA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(st));
  SumSelected(plan.dense, plan.rows, real_rows, k_all.data(), n_layers, out);
  return absl::OkStatus();
}

// Makes room for the attention statistics of `rows` rows (all layers).
absl::Status EnsureStatsBuffers(const ModelConfig& c, StatsBuffers& sb, int64_t rows) {
  if (rows <= sb.rows) return absl::OkStatus();
  const size_t n = static_cast<size_t>(rows * c.n_layers);
  StatsBuffers fresh;
  fresh.rows = rows;
  GSA_ASSIGN_OR_RETURN(fresh.selected, DeviceBuffer<int32_t>::Allocate(n));
  GSA_ASSIGN_OR_RETURN(fresh.first_token, DeviceBuffer<double>::Allocate(n));
  GSA_ASSIGN_OR_RETURN(fresh.value_gate, DeviceBuffer<double>::Allocate(n));
  GSA_ASSIGN_OR_RETURN(fresh.output_gate, DeviceBuffer<double>::Allocate(n));
  GSA_ASSIGN_OR_RETURN(fresh.workspace,
                       DeviceBuffer<uint8_t>::Allocate(std::max<size_t>(
                           1, kernels::AttentionStatsWorkspaceBytes(rows, static_cast<int32_t>(c.n_heads)))));
  sb = std::move(fresh);
  return absl::OkStatus();
}

// Enqueues the copies of the step's attention statistics ([stats rows, n_layers] each) into the
// host vectors; they are valid once `st` is synchronized.
absl::Status CollectAttentionStats(const StepPlan& plan, const StatsBuffers& sb, const ModelConfig& c,
                                   cudaStream_t st, std::vector<int32_t>& selected, std::vector<double>& first,
                                   std::vector<double>& value_gate, std::vector<double>& output_gate) {
  const size_t n = plan.stats_rows.size() * static_cast<size_t>(c.n_layers);
  selected.resize(n);
  first.resize(n);
  value_gate.resize(n);
  output_gate.resize(n);
  GSA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(selected.data(), sb.selected.get(), n * sizeof(int32_t), cudaMemcpyDeviceToHost, st));
  GSA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(first.data(), sb.first_token.get(), n * sizeof(double), cudaMemcpyDeviceToHost, st));
  GSA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(value_gate.data(), sb.value_gate.get(), n * sizeof(double), cudaMemcpyDeviceToHost, st));
  GSA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(output_gate.data(), sb.output_gate.get(), n * sizeof(double), cudaMemcpyDeviceToHost, st));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<StepOutput> CudaBackend::Step(const StepBatch& batch) {
  GSA_RETURN_IF_ERROR(Launch(batch));
  return Collect();
}

absl::StatusOr<StepOutput> CudaBackend::Collect() {
  Impl& im = *impl_;
  if (!im.launched) return absl::FailedPreconditionError("CudaBackend::Collect with no step in flight; Launch one first");
  Impl::Launched l = std::move(*im.launched);
  im.launched.reset();
  if (l.on_device) {
    GSA_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
    GSA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(im.stream.get()));
    std::copy_n(im.logits_host.get(), l.out.logits.size(), l.out.logits.data());
    SumSelected(l.dense, l.plan_rows, l.real_rows, im.k_host.get(), config_.n_layers, l.out);
  }
  return std::move(l.out);
}

absl::Status CudaBackend::Launch(const StepBatch& batch) {
  if (impl_->launched) return absl::FailedPreconditionError("CudaBackend::Launch while a step is in flight; Collect it first");
  if (impl_->cache.empty()) {
    return absl::FailedPreconditionError("CudaBackend::Launch (or Step) before AllocateCache: allocate the cache first");
  }
  GSA_RETURN_IF_ERROR(ValidateBatch(batch, cache_spec_, config_.vocab_size));
  GSA_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  Impl& im = *impl_;
  const ModelConfig& c = config_;
  const cudaStream_t st = im.stream.get();
  const int64_t R = batch.num_rows();
  const int64_t bs = cache_spec_.block_size;

  StepOutput out;
  out.vocab_size = c.vocab_size;
  if (batch.record_selection) out.selections.resize(static_cast<size_t>(c.n_layers));
  out.selected_sum.assign(static_cast<size_t>(c.n_layers), 0);
  for (const SequenceInBatch& s : batch.seqs) {
    if (s.attention != AttentionMode::kDense) out.selected_rows += s.num_query;
  }
  const int64_t n_out = static_cast<int64_t>(batch.logits_rows.size());
  out.logits.resize(static_cast<size_t>(n_out * c.vocab_size));

  // Steps that record selections or measure attention statistics run eagerly: a graph captures
  // neither the per-layer copies nor the statistics pass.
  const bool any_stats = std::any_of(batch.seqs.begin(), batch.seqs.end(),
                                     [](const SequenceInBatch& s) { return s.attention_stats; });
  if (DecodeGraph* g = nullptr; options_.use_cuda_graphs && !batch.record_selection && !any_stats) {
    absl::StatusOr<DecodeGraph*> found = GraphFor(batch);
    if (!found.ok()) return found.status();
    g = *found;
    if (g != nullptr) {
      StepBatch padded = batch;
      AppendIdleDecodeRows(padded, g->bucket, scratch_block_);
      FixedShape fixed{g->max_context, g->long_dense_rows};
      const StepPlan plan = PlanStep(padded, c, bs, im.score_floats, PrefillKernelsOf(options_), &fixed);
      const PackedStep packed = PackStep(plan, bs);
      const std::vector<uint8_t>& bytes = packed.blob.bytes();
      if (bytes.size() > g->meta.bytes()) {
        return absl::InternalError("decode graph metadata outgrew its buffer");
      }
      const size_t n_logits = static_cast<size_t>(n_out * c.vocab_size);
      const size_t n_k = static_cast<size_t>(plan.rows * c.n_layers);
      GSA_RETURN_IF_ERROR(im.meta_host.Reserve(bytes.size()));
      GSA_RETURN_IF_ERROR(im.logits_host.Reserve(n_logits));
      GSA_RETURN_IF_ERROR(im.k_host.Reserve(n_k));
      std::copy(bytes.begin(), bytes.end(), im.meta_host.get());
      // Everything below is asynchronous; if one enqueue fails, wait for the others so nothing
      // is left in flight (the staging buffers are reused by the next launch).
      const absl::Status enqueued = [&]() -> absl::Status {
        GSA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(g->meta.get(), im.meta_host.get(), bytes.size(), cudaMemcpyHostToDevice, st));
        GSA_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(g->exec, st));
        GSA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(im.logits_host.get(), im.ws.logits.get(), n_logits * sizeof(float),
                                                 cudaMemcpyDeviceToHost, st));
        GSA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(im.k_host.get(), im.ws.k_all.get(), n_k * sizeof(int32_t),
                                                 cudaMemcpyDeviceToHost, st));
        GSA_CUDA_RETURN_IF_ERROR(cudaGetLastError());
        return absl::OkStatus();
      }();
      if (!enqueued.ok()) {
        (void)cudaStreamSynchronize(st);
        return enqueued;
      }
      Impl::Launched l;
      l.out = std::move(out);
      l.on_device = true;
      l.plan_rows = plan.rows;
      l.real_rows = R;
      l.dense = plan.dense;
      im.launched = std::move(l);
      return absl::OkStatus();
    }
  }

  if (R > im.ws.rows) {
    graphs_.clear();  // they address the workspace about to be replaced
    GSA_RETURN_IF_ERROR(EnsureWorkspace(c, im, R, im.score_floats));
  }
  Workspace& w = im.ws;
  const StepPlan plan = PlanStep(batch, c, bs, im.score_floats, PrefillKernelsOf(options_), nullptr);
  const PackedStep packed = PackStep(plan, bs);
  const std::vector<uint8_t>& bytes = packed.blob.bytes();
  if (w.meta.bytes() < bytes.size()) {
    GSA_ASSIGN_OR_RETURN(w.meta, DeviceBuffer<uint8_t>::Allocate(bytes.size() * 2));
  }
  const StepDevice d = packed.At(w.meta.get());
  if (!plan.stats_rows.empty()) {
    GSA_RETURN_IF_ERROR(EnsureStatsBuffers(c, im.stats, static_cast<int64_t>(plan.stats_rows.size())));
  }
  GSA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(w.meta.get(), bytes.data(), bytes.size(), cudaMemcpyHostToDevice, st));
  GSA_RETURN_IF_ERROR(StepRunner::EnqueueLayers(*this, plan, d, static_cast<int32_t>(batch.seqs.size()),
                                                batch.record_selection, &out));
  const int64_t chunk_rows = static_cast<int64_t>(w.logits.size() / static_cast<size_t>(c.vocab_size));
  for (int64_t r0 = 0; r0 < n_out; r0 += chunk_rows) {
    const int64_t n = std::min(chunk_rows, n_out - r0);
    GSA_RETURN_IF_ERROR(StepRunner::EnqueueLogits(*this, d, r0, n));
    GSA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out.logits.data() + r0 * c.vocab_size, w.logits.get(),
                                             static_cast<size_t>(n * c.vocab_size) * sizeof(float), cudaMemcpyDeviceToHost, st));
  }
  if (plan.any_sparse) {
    GSA_RETURN_IF_ERROR(CollectSelectedSums(plan, R, w.k_all.get(), c.n_layers, st, out));
  }
  std::vector<int32_t> stats_selected;
  std::vector<double> stats_first, stats_value_gate, stats_output_gate;
  if (!plan.stats_rows.empty()) {
    GSA_RETURN_IF_ERROR(CollectAttentionStats(plan, im.stats, c, st, stats_selected, stats_first, stats_value_gate,
                                              stats_output_gate));
  }
  GSA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(st));
  GSA_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  out.stats_rows = plan.stats_rows;
  out.attention_stats.resize(stats_selected.size());
  for (size_t i = 0; i < stats_selected.size(); ++i) {
    AttentionRowStats& a = out.attention_stats[i];
    a.selected = stats_selected[i];
    a.first_token = stats_first[i];
    a.value_gate = stats_value_gate[i];
    a.output_gate = stats_output_gate[i];
  }
  // Eager steps (prefill chunks, statistics, recorded selections) complete here.
  Impl::Launched l;
  l.out = std::move(out);
  im.launched = std::move(l);
  return absl::OkStatus();
}

absl::StatusOr<DecodeGraph*> CudaBackend::GraphFor(const StepBatch& batch) {
  // Only pure decode steps (one new token per sequence, logits for every row in order).
  const int64_t R = batch.num_rows();
  if (R == 0 || static_cast<int64_t>(batch.seqs.size()) != R) return nullptr;
  int64_t max_context = 0;
  bool long_dense = false;
  for (size_t i = 0; i < batch.seqs.size(); ++i) {
    if (batch.seqs[i].num_query != 1) return nullptr;
    max_context = std::max<int64_t>(max_context, batch.seqs[i].context_len);
    if (batch.seqs[i].attention == AttentionMode::kDense && batch.seqs[i].context_len > SparseTokenBound(config_)) {
      long_dense = true;
    }
  }
  if (max_context > options_.cuda_graph_max_context) return nullptr;
  if (static_cast<int64_t>(batch.logits_rows.size()) != R) return nullptr;
  for (int64_t r = 0; r < R; ++r) {
    if (batch.logits_rows[static_cast<size_t>(r)] != r) return nullptr;
  }
  int64_t bucket = 0;
  for (int64_t b : kGraphBuckets) {
    if (b >= R) {
      bucket = b;
      break;
    }
  }
  int64_t cap = 0;
  for (int64_t ctx : kGraphContextCaps) {
    if (ctx >= max_context) {
      cap = ctx;
      break;
    }
  }
  Impl& im = *impl_;
  if (bucket == 0 || cap == 0 || bucket > im.logit_chunk || bucket * cap > im.score_floats) return nullptr;
  const GraphKey key{bucket, cap, long_dense};
  auto it = graphs_.find(key);
  if (it != graphs_.end()) return it->second.get();

  // Capture: a padded batch of `bucket` dense one-token rows on the scratch block stands in for
  // the real ones (only sizes matter; every step uploads its own metadata before the launch).
  const ModelConfig& c = config_;
  const int64_t bs = cache_spec_.block_size;
  const cudaStream_t st = im.stream.get();
  if (bucket > im.ws.rows) {
    graphs_.clear();
    GSA_RETURN_IF_ERROR(EnsureWorkspace(c, im, bucket, im.score_floats));
  }
  StepBatch shape;
  AppendIdleDecodeRows(shape, bucket, scratch_block_);
  FixedShape fixed{cap, long_dense};
  const StepPlan plan = PlanStep(shape, c, bs, im.score_floats, PrefillKernelsOf(options_), &fixed);
  auto g = std::make_unique<DecodeGraph>();
  g->bucket = bucket;
  g->max_context = cap;
  g->long_dense_rows = long_dense;
  const PackedStep packed = PackStep(plan, bs);
  const std::vector<uint8_t>& bytes = packed.blob.bytes();
  GSA_ASSIGN_OR_RETURN(g->meta, DeviceBuffer<uint8_t>::Allocate(bytes.size()));
  const StepDevice d = packed.At(g->meta.get());
  GSA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(g->meta.get(), bytes.data(), bytes.size(), cudaMemcpyHostToDevice, st));
  // Warm up once outside capture (cuBLASLt plans, kernel attributes, occupancy queries).
  GSA_RETURN_IF_ERROR(StepRunner::EnqueueLayers(*this, plan, d, static_cast<int32_t>(bucket), false, nullptr));
  GSA_RETURN_IF_ERROR(StepRunner::EnqueueLogits(*this, d, 0, bucket));
  GSA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(st));
  GSA_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  absl::Status captured = StepRunner::EnqueueLayers(*this, plan, d, static_cast<int32_t>(bucket), false, nullptr);
  if (captured.ok()) captured = StepRunner::EnqueueLogits(*this, d, 0, bucket);
  cudaGraph_t graph = nullptr;
  const cudaError_t end = cudaStreamEndCapture(st, &graph);
  if (!captured.ok()) {
    if (graph != nullptr) cudaGraphDestroy(graph);
    return captured;
  }
  GSA_RETURN_IF_ERROR(CudaStatus(end, "cudaStreamEndCapture (decode graph)"));
  const cudaError_t inst = cudaGraphInstantiate(&g->exec, graph, 0);
  cudaGraphDestroy(graph);
  GSA_RETURN_IF_ERROR(CudaStatus(inst, "cudaGraphInstantiate (decode graph)"));
  DecodeGraph* raw = g.get();
  graphs_.emplace(key, std::move(g));
  return raw;
}

}  // namespace gsa
