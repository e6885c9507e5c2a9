#include "engine/backend/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "engine/backend/cpu/cpu_ops.h"
#include "engine/backend/rope.h"
#include "engine/backend/selection.h"
#include "engine/util/status_macros.h"

namespace gsa {

using cpu::Dot;
using cpu::GateAct;
using cpu::Linear;
using cpu::RmsNorm;
using cpu::Sigmoid;
using cpu::Silu;

// One layer's weights in fp32, with every projection that reads the normed input fused into one
// matrix: rows [q | k | v | value gate | output gate | indexer q | indexer k | indexer weights].
struct CpuBackend::Layer {
  std::vector<float> input_norm;  // [d_model]
  std::vector<float> post_norm;   // [d_model]
  std::vector<float> w_cat;       // [cat_out, d_model]
  int64_t cat_out = 0;
  int64_t off_q = 0, off_k = 0, off_v = 0, off_vg = -1, off_og = -1, off_qi = 0, off_ki = 0, off_wi = 0;
  std::vector<float> vg_bias;     // [kv_dim]   (value gate)
  std::vector<float> og_bias;     // [q_dim]    (output gate)
  std::vector<float> wi_bias;     // [n_indexer_heads]
  std::vector<float> idx_bias;    // [n_indexer_heads]
  std::vector<float> o_proj;      // [d_model, q_dim]
  std::vector<float> gate_up;     // [2 * d_ffn, d_model]: gate rows then up rows
  std::vector<float> down;        // [d_model, d_ffn]
};

// One layer's pages (CacheSpec's layout).
struct CpuBackend::LayerCache {
  std::vector<float> k;       // [num_blocks, block_size, n_kv_heads, d_head]
  std::vector<float> v;       // [num_blocks, block_size, n_kv_heads, d_head]
  std::vector<float> ki;      // [num_blocks, block_size, d_indexer]
  std::vector<float> cumvar;  // [num_blocks, block_size]
};

namespace {

absl::Status Append(const TensorView* t, std::vector<float>& dst) {
  const size_t at = dst.size();
  dst.resize(at + static_cast<size_t>(t->numel()));
  return ConvertToFloat(*t, dst.data() + at);
}

absl::StatusOr<std::vector<float>> ToFloat(const TensorView* t) {
  std::vector<float> v;
  GSA_RETURN_IF_ERROR(Append(t, v));
  return v;
}

}  // namespace

CpuBackend::CpuBackend(CreateTag, const ModelConfig& config, int num_threads)
    : config_(config), rope_inv_freq_(RopeInvFreq(config)),
      pool_(std::make_unique<ThreadPool>(num_threads)) {}

CpuBackend::~CpuBackend() = default;

absl::StatusOr<std::unique_ptr<CpuBackend>> CpuBackend::Create(const ModelConfig& c,
                                                               const ModelWeights& w,
                                                               const CpuBackendOptions& options) {
  if (static_cast<int64_t>(w.layers.size()) != c.n_layers) {
    return absl::InvalidArgumentError(absl::StrCat("weights have ", w.layers.size(),
                                                   " layers, config says ", c.n_layers));
  }
  auto b = std::make_unique<CpuBackend>(CreateTag(), c, options.num_threads);
  GSA_ASSIGN_OR_RETURN(b->embed_, ToFloat(w.embed_tokens));
  GSA_ASSIGN_OR_RETURN(b->final_norm_, ToFloat(w.final_norm));
  if (w.lm_head != w.embed_tokens) {
    GSA_ASSIGN_OR_RETURN(b->lm_head_, ToFloat(w.lm_head));
  }
  for (const LayerWeights& lw : w.layers) {
    auto layer = std::make_unique<Layer>();
    Layer& L = *layer;
    GSA_ASSIGN_OR_RETURN(L.input_norm, ToFloat(lw.input_layernorm));
    GSA_ASSIGN_OR_RETURN(L.post_norm, ToFloat(lw.post_attention_layernorm));
    int64_t rows = 0;
    auto add = [&](const TensorView* t, int64_t& offset) -> absl::Status {
      offset = rows;
      rows += t->shape[0];
      return Append(t, L.w_cat);
    };
    GSA_RETURN_IF_ERROR(add(lw.q_proj, L.off_q));
    GSA_RETURN_IF_ERROR(add(lw.k_proj, L.off_k));
    GSA_RETURN_IF_ERROR(add(lw.v_proj, L.off_v));
    if (c.use_value_gate) {
      GSA_RETURN_IF_ERROR(add(lw.value_gate_w, L.off_vg));
      GSA_ASSIGN_OR_RETURN(L.vg_bias, ToFloat(lw.value_gate_b));
    }
    if (c.use_output_gate) {
      GSA_RETURN_IF_ERROR(add(lw.output_gate_w, L.off_og));
      GSA_ASSIGN_OR_RETURN(L.og_bias, ToFloat(lw.output_gate_b));
    }
    GSA_RETURN_IF_ERROR(add(lw.indexer_q_proj, L.off_qi));
    GSA_RETURN_IF_ERROR(add(lw.indexer_k_proj, L.off_ki));
    GSA_RETURN_IF_ERROR(add(lw.indexer_w_proj, L.off_wi));
    L.cat_out = rows;
    GSA_ASSIGN_OR_RETURN(L.wi_bias, ToFloat(lw.indexer_w_bias));
    GSA_ASSIGN_OR_RETURN(L.idx_bias, ToFloat(lw.indexer_bias));
    GSA_ASSIGN_OR_RETURN(L.o_proj, ToFloat(lw.o_proj));
    GSA_RETURN_IF_ERROR(Append(lw.mlp_gate, L.gate_up));
    GSA_RETURN_IF_ERROR(Append(lw.mlp_up, L.gate_up));
    GSA_ASSIGN_OR_RETURN(L.down, ToFloat(lw.mlp_down));
    b->layers_.push_back(std::move(layer));
  }
  return b;
}

absl::Status CpuBackend::AllocateCache(int64_t num_blocks, int64_t block_size) {
  if (num_blocks <= 0 || block_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("cache needs positive num_blocks and block_size, got ",
                                                   num_blocks, " and ", block_size));
  }
  const CacheSpec spec = CacheSpec::ForModel(config_, num_blocks, block_size);
  const double bytes = 4.0 * static_cast<double>(spec.num_slots()) *
                       static_cast<double>(spec.elements_per_slot_per_layer()) *
                       static_cast<double>(spec.n_layers);
  cache_.clear();
  try {
    for (int64_t l = 0; l < config_.n_layers; ++l) {
      auto lc = std::make_unique<LayerCache>();
      const size_t slots = static_cast<size_t>(spec.num_slots());
      lc->k.assign(slots * static_cast<size_t>(spec.kv_row()), 0.0f);
      lc->v.assign(slots * static_cast<size_t>(spec.kv_row()), 0.0f);
      lc->ki.assign(slots * static_cast<size_t>(spec.d_indexer), 0.0f);
      lc->cumvar.assign(slots, 0.0f);
      cache_.push_back(std::move(lc));
    }
  } catch (const std::bad_alloc&) {
    cache_.clear();
    cache_spec_ = CacheSpec{};
    return absl::ResourceExhaustedError(absl::StrCat("cannot allocate a CPU cache of ", num_blocks,
                                                     " blocks × ", block_size, " tokens (", bytes / 1e9,
                                                     " GB); lower the cache size"));
  }
  cache_spec_ = spec;
  return absl::OkStatus();
}

void CpuBackend::IndexerScores(const Layer& w, const LayerCache& cache, const SequenceInBatch& seq,
                               const float* proj_row, int64_t position, float* scores) const {
  const int64_t n_ih = config_.n_indexer_heads;
  const int64_t d_i = config_.d_indexer;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d_i)));
  const bool relu = config_.indexer_activation == IndexerActivation::kRelu;
  const float* qi = proj_row + w.off_qi;  // [n_ih, d_i]
  const float* wi = proj_row + w.off_wi;  // [n_ih], already sigmoid(x Wᵀ + b)
  for (int64_t s = 0; s <= position; ++s) {
    const float* ks = cache.ki.data() + SlotOf(seq, s, cache_spec_.block_size) * d_i;
    float acc = 0.0f;
    for (int64_t j = 0; j < n_ih; ++j) {
      const float z = Dot(qi + j * d_i, ks, d_i) * scale + w.idx_bias[static_cast<size_t>(j)];
      const float phi = relu ? std::max(z, 0.0f) : Sigmoid(z);
      acc += wi[j] * phi;
    }
    scores[s] = acc;
  }
}

void CpuBackend::RunLayer(int64_t li, const StepBatch& batch, const std::vector<int64_t>& positions,
                          const std::vector<int32_t>& row_seq, const std::vector<int32_t>& stats_index,
                          std::vector<float>& hidden, StepOutput& out) {
  const Layer& w = *layers_[static_cast<size_t>(li)];
  LayerCache& cache = *cache_[static_cast<size_t>(li)];
  const ModelConfig& c = config_;
  const int64_t rows = batch.num_rows();
  const int64_t D = c.d_model, H = c.n_heads, Hkv = c.n_kv_heads, dh = c.d_head;
  const int64_t group = c.heads_per_kv();
  const int64_t kv_row = c.kv_dim();
  const int64_t bs = cache_spec_.block_size;
  ThreadPool& pool = *pool_;
  // Attention statistics of the rows that asked: the row's entry in this layer, or null.
  const int64_t n_layers = c.n_layers;
  auto stats_of = [&](int64_t r) -> AttentionRowStats* {
    const int32_t i = stats_index[static_cast<size_t>(r)];
    return i < 0 ? nullptr : &out.attention_stats[static_cast<size_t>(i * n_layers + li)];
  };

  // 1. Input norm and the fused projections.
  std::vector<float> xn(static_cast<size_t>(rows * D));
  pool.ParallelFor(rows, 8, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      RmsNorm(hidden.data() + r * D, w.input_norm.data(), D, c.norm_eps, xn.data() + r * D);
    }
  });
  std::vector<float> proj(static_cast<size_t>(rows * w.cat_out));
  Linear(pool, xn.data(), rows, D, w.w_cat.data(), w.cat_out, proj.data());

  // 2. Value gate, RoPE, indexer head weights; write k, v, kI into the paged cache.
  pool.ParallelFor(rows, 16, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      float* p = proj.data() + r * w.cat_out;
      float* v = p + w.off_v;
      if (w.off_vg >= 0) {
        const float* g = p + w.off_vg;
        AttentionRowStats* st = stats_of(r);
        double gate_sum = 0.0;
        for (int64_t i = 0; i < kv_row; ++i) {
          const float a = GateAct(c.gate_activation, g[i] + w.vg_bias[static_cast<size_t>(i)]);
          v[i] *= a;
          if (st != nullptr) gate_sum += a;
        }
        if (st != nullptr) st->value_gate = gate_sum;
      }
      ApplyRope(p + w.off_q, H, dh, positions[static_cast<size_t>(r)], rope_inv_freq_.data());
      ApplyRope(p + w.off_k, Hkv, dh, positions[static_cast<size_t>(r)], rope_inv_freq_.data());
      float* wi = p + w.off_wi;
      for (int64_t j = 0; j < c.n_indexer_heads; ++j) wi[j] = Sigmoid(wi[j] + w.wi_bias[static_cast<size_t>(j)]);
      const SequenceInBatch& seq = batch.seqs[static_cast<size_t>(row_seq[static_cast<size_t>(r)])];
      const int64_t slot = SlotOf(seq, positions[static_cast<size_t>(r)], bs);
      std::copy_n(p + w.off_k, kv_row, cache.k.data() + slot * kv_row);
      std::copy_n(v, kv_row, cache.v.data() + slot * kv_row);
      std::copy_n(p + w.off_ki, c.d_indexer, cache.ki.data() + slot * c.d_indexer);
    }
  });

  // 3. Adaptive k, variance method: var_t per row, then the running sum per sequence in position
  //    order (sequential, so chunked and one-shot prefill add in the same order).
  const bool variance_k = c.use_adaptive_k && c.adaptive_k_method == AdaptiveKMethod::kVariance;
  std::vector<double> var(static_cast<size_t>(rows), 0.0);
  if (variance_k) {
    pool.ParallelFor(rows, 1, [&](int64_t b, int64_t e) {
      std::vector<float> scores;
      for (int64_t r = b; r < e; ++r) {
        const SequenceInBatch& seq = batch.seqs[static_cast<size_t>(row_seq[static_cast<size_t>(r)])];
        if (seq.attention == AttentionMode::kDense) continue;
        const int64_t pos = positions[static_cast<size_t>(r)];
        scores.resize(static_cast<size_t>(pos + 1));
        IndexerScores(w, cache, seq, proj.data() + r * w.cat_out, pos, scores.data());
        var[static_cast<size_t>(r)] = ScoreVariance(scores.data(), pos + 1);
      }
    });
  }
  for (int64_t r = 0; r < rows; ++r) {
    const SequenceInBatch& seq = batch.seqs[static_cast<size_t>(row_seq[static_cast<size_t>(r)])];
    const int64_t pos = positions[static_cast<size_t>(r)];
    float& cum = cache.cumvar[static_cast<size_t>(SlotOf(seq, pos, bs))];
    if (seq.attention == AttentionMode::kDense) {
      // Dense sequences never score; poison the statistic so that misuse cannot go unnoticed.
      cum = std::numeric_limits<float>::quiet_NaN();
    } else {
      const double prev = pos > 0 ? cache.cumvar[static_cast<size_t>(SlotOf(seq, pos - 1, bs))] : 0.0;
      cum = static_cast<float>(prev + var[static_cast<size_t>(r)]);
    }
  }

  // 4. Selection per row: indexer scores, k_t, top-k with the tie rule.
  std::vector<std::vector<int32_t>> selected(static_cast<size_t>(rows));
  pool.ParallelFor(rows, 1, [&](int64_t b, int64_t e) {
    std::vector<float> scores;
    std::vector<int32_t> scratch;
    for (int64_t r = b; r < e; ++r) {
      const SequenceInBatch& seq = batch.seqs[static_cast<size_t>(row_seq[static_cast<size_t>(r)])];
      const int64_t pos = positions[static_cast<size_t>(r)];
      std::vector<int32_t>& sel = selected[static_cast<size_t>(r)];
      int64_t k = pos + 1;
      if (seq.attention != AttentionMode::kDense) {
        scores.resize(static_cast<size_t>(pos + 1));
        IndexerScores(w, cache, seq, proj.data() + r * w.cat_out, pos, scores.data());
        double ref = 0.0, entropy = 0.0;
        if (variance_k) {
          ref = static_cast<double>(cache.cumvar[static_cast<size_t>(SlotOf(seq, pos, bs))]) /
                static_cast<double>(pos + 1);
        } else if (c.use_adaptive_k) {
          entropy = ScoreEntropy(scores.data(), pos + 1);
        }
        k = SelectedCount(c, pos, var[static_cast<size_t>(r)], ref, entropy);
      }
      if (k >= pos + 1) {
        sel.resize(static_cast<size_t>(pos + 1));
        for (int64_t s = 0; s <= pos; ++s) sel[static_cast<size_t>(s)] = static_cast<int32_t>(pos - s);
      } else {
        SelectTopK(scores.data(), pos + 1, k, sel, scratch);
      }
      if (AttentionRowStats* st = stats_of(r)) st->selected = static_cast<int32_t>(sel.size());
    }
  });

  // 5. Attention over the selected positions, per (row, query head), then the output gate. Rows
  //    that asked for statistics also keep, per head, the weight on position 0 and the output
  //    gate's sum (summed over heads in head order below, so the result is thread-independent).
  std::vector<float> attn(static_cast<size_t>(rows * H * dh));
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dh)));
  const size_t num_stats = out.stats_rows.size();
  std::vector<double> head_first(num_stats * static_cast<size_t>(H), 0.0);
  std::vector<double> head_gate(num_stats * static_cast<size_t>(H), 0.0);
  pool.ParallelFor(rows * H, 1, [&](int64_t b, int64_t e) {
    std::vector<float> p;
    for (int64_t idx = b; idx < e; ++idx) {
      const int64_t r = idx / H, h = idx % H, g = h / group;
      const int32_t si = stats_index[static_cast<size_t>(r)];
      const SequenceInBatch& seq = batch.seqs[static_cast<size_t>(row_seq[static_cast<size_t>(r)])];
      const std::vector<int32_t>& sel = selected[static_cast<size_t>(r)];
      const float* q = proj.data() + r * w.cat_out + w.off_q + h * dh;
      p.resize(sel.size());
      float mx = -std::numeric_limits<float>::infinity();
      for (size_t i = 0; i < sel.size(); ++i) {
        const float* k = cache.k.data() + SlotOf(seq, sel[i], bs) * kv_row + g * dh;
        p[i] = Dot(q, k, dh) * scale;
        mx = std::max(mx, p[i]);
      }
      float sum = 0.0f;
      for (float& x : p) {
        x = std::exp(x - mx);
        sum += x;
      }
      float* o = attn.data() + (r * H + h) * dh;
      std::fill_n(o, dh, 0.0f);
      for (size_t i = 0; i < sel.size(); ++i) {
        const float* v = cache.v.data() + SlotOf(seq, sel[i], bs) * kv_row + g * dh;
        const float pi = p[i] / sum;
        for (int64_t d = 0; d < dh; ++d) o[d] += pi * v[d];
        if (si >= 0 && sel[i] == 0) head_first[static_cast<size_t>(si * H + h)] = pi;
      }
      if (w.off_og >= 0) {
        const float* gz = proj.data() + r * w.cat_out + w.off_og + h * dh;
        const float* gb = w.og_bias.data() + h * dh;
        double gate_sum = 0.0;
        for (int64_t d = 0; d < dh; ++d) {
          const float a = GateAct(c.gate_activation, gz[d] + gb[d]);
          o[d] *= a;
          gate_sum += a;
        }
        if (si >= 0) head_gate[static_cast<size_t>(si * H + h)] = gate_sum;
      }
    }
  });
  for (size_t i = 0; i < num_stats; ++i) {
    AttentionRowStats& st = out.attention_stats[i * static_cast<size_t>(n_layers) + static_cast<size_t>(li)];
    for (int64_t h = 0; h < H; ++h) {
      st.first_token += head_first[i * static_cast<size_t>(H) + static_cast<size_t>(h)];
      st.output_gate += head_gate[i * static_cast<size_t>(H) + static_cast<size_t>(h)];
    }
  }
  int64_t kept = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const SequenceInBatch& seq = batch.seqs[static_cast<size_t>(row_seq[static_cast<size_t>(r)])];
    if (seq.attention != AttentionMode::kDense) kept += static_cast<int64_t>(selected[static_cast<size_t>(r)].size());
  }
  out.selected_sum[static_cast<size_t>(li)] = kept;
  if (batch.record_selection) out.selections[static_cast<size_t>(li)] = std::move(selected);

  // 6. Output projection and residual; post norm, SwiGLU MLP, residual.
  std::vector<float> tmp(static_cast<size_t>(rows * D));
  Linear(pool, attn.data(), rows, H * dh, w.o_proj.data(), D, tmp.data());
  for (size_t i = 0; i < hidden.size(); ++i) hidden[i] += tmp[i];
  pool.ParallelFor(rows, 8, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      RmsNorm(hidden.data() + r * D, w.post_norm.data(), D, c.norm_eps, xn.data() + r * D);
    }
  });
  const int64_t F = c.d_ffn;
  std::vector<float> gu(static_cast<size_t>(rows * 2 * F));
  Linear(pool, xn.data(), rows, D, w.gate_up.data(), 2 * F, gu.data());
  std::vector<float> act(static_cast<size_t>(rows * F));
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = gu.data() + r * 2 * F;
    for (int64_t i = 0; i < F; ++i) act[static_cast<size_t>(r * F + i)] = Silu(g[i]) * g[F + i];
  }
  Linear(pool, act.data(), rows, F, w.down.data(), D, tmp.data());
  for (size_t i = 0; i < hidden.size(); ++i) hidden[i] += tmp[i];
}

absl::StatusOr<StepOutput> CpuBackend::Step(const StepBatch& batch) {
  if (cache_.empty()) {
    return absl::FailedPreconditionError("CpuBackend::Step before AllocateCache");
  }
  GSA_RETURN_IF_ERROR(ValidateBatch(batch, cache_spec_, config_.vocab_size));
  const int64_t rows = batch.num_rows();
  const int64_t D = config_.d_model;
  std::vector<int64_t> positions(static_cast<size_t>(rows));
  std::vector<int32_t> row_seq(static_cast<size_t>(rows));
  for (size_t i = 0; i < batch.seqs.size(); ++i) {
    const SequenceInBatch& s = batch.seqs[i];
    for (int32_t j = 0; j < s.num_query; ++j) {
      positions[static_cast<size_t>(s.query_start + j)] = s.context_len - s.num_query + j;
      row_seq[static_cast<size_t>(s.query_start + j)] = static_cast<int32_t>(i);
    }
  }

  StepOutput out;
  out.vocab_size = config_.vocab_size;
  out.stats_rows = AttentionStatsRows(batch);
  out.attention_stats.resize(out.stats_rows.size() * static_cast<size_t>(config_.n_layers));
  std::vector<int32_t> stats_index(static_cast<size_t>(rows), -1);
  for (size_t i = 0; i < out.stats_rows.size(); ++i) {
    stats_index[static_cast<size_t>(out.stats_rows[i])] = static_cast<int32_t>(i);
  }
  if (batch.record_selection) out.selections.resize(static_cast<size_t>(config_.n_layers));
  out.selected_sum.assign(static_cast<size_t>(config_.n_layers), 0);
  for (const SequenceInBatch& s : batch.seqs) {
    if (s.attention != AttentionMode::kDense) out.selected_rows += s.num_query;
  }

  std::vector<float> hidden(static_cast<size_t>(rows * D));
  for (int64_t r = 0; r < rows; ++r) {
    std::copy_n(embed_.data() + static_cast<int64_t>(batch.token_ids[static_cast<size_t>(r)]) * D, D,
                hidden.data() + r * D);
  }
  for (int64_t l = 0; l < config_.n_layers; ++l) RunLayer(l, batch, positions, row_seq, stats_index, hidden, out);

  const int64_t n_out = static_cast<int64_t>(batch.logits_rows.size());
  std::vector<float> normed(static_cast<size_t>(n_out * D));
  for (int64_t i = 0; i < n_out; ++i) {
    RmsNorm(hidden.data() + static_cast<int64_t>(batch.logits_rows[static_cast<size_t>(i)]) * D,
            final_norm_.data(), D, config_.norm_eps, normed.data() + i * D);
  }
  out.logits.resize(static_cast<size_t>(n_out * config_.vocab_size));
  const std::vector<float>& head = lm_head_.empty() ? embed_ : lm_head_;
  Linear(*pool_, normed.data(), n_out, D, head.data(), config_.vocab_size, out.logits.data());
  return out;
}

}  // namespace gsa
