// CudaBackend: MODEL.md on one NVIDIA GPU. bf16 weights, activations that feed matrix products and
// cache pages; fp32 residual stream, projections' outputs, scores and softmax; fp32 accumulation
// everywhere. Dense projections through cuBLASLt (the q, k, v and gate projections fused into one
// bf16 product; the residual adds fused into the o_proj and down products); the indexer,
// selection and attention through kernels/.
//
// One exception to bf16: the indexer's projections (qI, kI, wI: a few hundred output columns)
// run in fp32 from the fp32 normed input. Indexer scores of neighbouring tokens often differ by
// less than bf16 rounding of the input would move them, and every such flip swaps a token in or
// out of the selection: on the golden cases bf16 there kept only 98% of the selections and moved
// logits by up to 1.0, fp32 keeps 100% (measured by rounding the CPU reference the same ways).
// The cached indexer keys stay bf16: their rounding alone flipped none. The embedding table is
// kept in fp32 for the same reason (a bf16 first-layer input flipped 1.4% of sparse-relu-tiny's
// selections). What remains is the bf16 K/V cache: its rounding moves later layers' inputs and
// flips about 0.3% of gsa-tiny's selections (random weights make near-ties common); the tests
// measure both the agreement and the logits of the rows whose selections agree.
//
// One step (Step), per layer: RMSNorm → fused projection → PostProjection (value gate, RoPE,
// cache writes) → for sparse rows, per score chunk: indexer scores → statistics → k_t (running
// variance sum per cache slot) → top-k → attention (dense prefill chunks: the flash kernel;
// everything else: gathered split-k attention; output gate fused) → for the rows of sequences that
// asked for attention statistics only, the statistics pass (kernels/attention_stats.h) → o_proj
// (+= residual) → RMSNorm → gate/up product → SwiGLU → down (+= residual). The host plans the score
// chunks and the attention routing once per step; every layer reuses the plan.
//
// Memory: weights and the step workspace (sized for `max_rows` rows) are allocated by Create;
// MaxCacheBlocks says how many cache blocks fit in the share of the GPU the options allow, and
// AllocateCache takes them. Deterministic: the same batch gives bitwise the same outputs.
//
// Thread-safety: driven by one thread (the engine thread); the CUDA stream is its own.
#pragma once

#include <map>
#include <tuple>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/model/model_loader.h"

namespace gsa {

struct CudaBackendOptions {
  int device = 0;
  double gpu_memory_fraction = 0.9;  // share of the GPU's memory this process may hold in all
  int64_t max_rows = 2048;           // rows (new tokens) per step the workspace is sized for
  int64_t score_budget_bytes = int64_t{256} << 20;  // one chunk of indexer scores, at most
  bool use_dense_prefill_kernel = true;  // false: dense prefill through the gathered kernel (tests)
  // Sparse prefill chunks through the union-tile kernel (kernels/sparse_prefill.h) where a tile's
  // rows share enough of their selections, the rest through the gathered kernel. false: every
  // sparse row through the gathered kernel (tests compare the two).
  bool use_sparse_prefill_tiles = true;
  // Products of at most 8 rows (decode steps) through kernels::SmallLinear, SwiGLU fused (gemm.h).
  // false: cuBLASLt for every product (tests compare the two).
  bool use_small_rows_linear = true;
  // Pure decode steps (one new token per sequence) run as CUDA graphs captured per batch-size
  // bucket (1, 2, 4, … 256, padded with idle rows), context cap (4K … 1M, at most 1.5x apart) and whether
  // a dense row needs more than a sparse row's tokens, captured on first use, when their longest
  // context is ≤ cuda_graph_max_context. (Graphs were once slower than eager launches at long
  // context: the sparse attention's split-k was sized for the cap, so a 2048-token selection ran
  // in one split per head; it is now sized for what the rows can attend to.) false: never. Steps
  // that record selections or carry a sequence asking for attention statistics launch eagerly.
  bool use_cuda_graphs = true;
  int64_t cuda_graph_max_context = 1048576;
  // Cache the indexer keys as fp8 e4m3 codes with one fp32 scale per token (kernels/elementwise.h,
  // Fp8KeyScale) instead of bf16: 68 instead of 128 bytes a token at d_indexer 64, so the decode
  // indexer reads about half the bytes. Not the reference function: selections differ slightly
  // (README, "fp8 indexer keys", gives the measured overlap and logit differences).
  bool fp8_indexer_keys = false;
  // The sparse attention's split-k partials are merged by the last block of each (row, KV head)
  // (kernels::GatheredAttentionArgs::split_counters) instead of a separate merge kernel: one
  // kernel fewer a layer, the same output bitwise. false: the merge kernel (tests compare).
  bool attention_merge_in_kernel = true;
  // Prefill score chunks of long rows through kernels::PrefillSelect: a sampled threshold per row,
  // the indexer keeps only the scores above it, the top-k reads those; the same selections as the
  // separate launches (kernels/selection.h says where the variance rule can differ). Taken when at
  // most 1/8 of a chunk's rows have fewer than prefill_select_min_candidates candidates (default:
  // where it measured faster, kernels::kPrefillSelectFasterFrom; below kPrefillSelectMinCandidates it
  // acts as that). false: the separate launches (tests compare the two).
  bool use_prefill_select = true;
  int64_t prefill_select_min_candidates = 98304;
};

struct DecodeGraph;

// Empty when a CUDA device is usable; otherwise why not (for `--backend auto` and test skips).
std::string CudaUnavailableReason();

class CudaBackend : public Backend {
 public:
  // Uploads the weights (any checkpoint dtype) as bf16 and reserves the step workspace.
  // FailedPrecondition when there is no usable GPU, ResourceExhausted (naming the bytes) when the
  // weights and workspace do not fit in the allowed share of its memory.
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(const ModelConfig& config,
                                                             const ModelWeights& weights,
                                                             const CudaBackendOptions& options = {});
  ~CudaBackend() override;

  std::string_view name() const override { return "cuda"; }
  const ModelConfig& config() const override { return config_; }

  // How many cache blocks of `block_size` tokens fit in the allowed share of the GPU's memory
  // after what this process (and anything else on the GPU) already holds. ResourceExhausted
  // naming the numbers when not even one fits.
  absl::StatusOr<int64_t> MaxCacheBlocks(int64_t block_size) const;
  // Bytes one token slot takes over all layers (K, V, indexer key, statistic).
  int64_t CacheBytesPerToken() const;

  absl::Status AllocateCache(int64_t num_blocks, int64_t block_size) override;
  const CacheSpec& cache_spec() const override { return cache_spec_; }
  absl::StatusOr<StepOutput> Step(const StepBatch& batch) override;
  // Graph-replayed decode steps return from Launch once the graph and the copies of its results
  // (into page-locked buffers) are enqueued; Collect waits for the stream. Other steps run whole
  // inside Launch (their per-chunk copies and statistics synchronize on the way).
  absl::Status Launch(const StepBatch& batch) override;
  absl::StatusOr<StepOutput> Collect() override;

  // The card, for logs and benchmark records ("NVIDIA H200, 132 SMs, 139.8 GiB").
  const std::string& device_description() const { return device_description_; }

  struct Impl;
  struct StepRunner;
  struct CreateTag {
    explicit CreateTag() = default;
  };
  CudaBackend(CreateTag, const ModelConfig& config, const CudaBackendOptions& options);

 private:
  // The decode graph for this batch, captured on first use; null when the batch is not a pure
  // decode step that a graph covers.
  absl::StatusOr<DecodeGraph*> GraphFor(const StepBatch& batch);

  ModelConfig config_;
  CudaBackendOptions options_;
  CacheSpec cache_spec_;
  int64_t scratch_block_ = 0;  // one cache block past the engine's, where graph padding rows write
  // (bucket, context cap, whether a dense row attends to more than a sparse row can)
  using GraphKey = std::tuple<int64_t, int64_t, bool>;
  std::map<GraphKey, std::unique_ptr<DecodeGraph>> graphs_;
  std::string device_description_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace gsa
