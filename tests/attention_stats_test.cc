// Attention statistics (issue 8). The accumulator's means (position 0 left out of the first-token
// share, gates unset when absent, Reset), and the CPU reference's per-row statistics against an
// independent recomputation: a straightforward float64 forward pass of MODEL.md over the golden
// checkpoints that attends to the reference implementation's own selections (golden.safetensors;
// the pass is first checked against the golden logits), with the softmax weight on position 0,
// the keys counted and the gate activations taken from it directly. Dense requests attend to
// t + 1 keys; only the rows that ask are measured, asking changes no other output, and chunked
// prefill, decode and batching give bitwise the same row statistics.
#include "engine/sched/attention_stats.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <cstdio>
#include <random>
#include <set>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/model/model_loader.h"
#include "engine/tools/random_model.h"
#include "tests/testing/batch_builder.h"
#include "tests/testing/golden.h"
#include "tests/testing/test_support.h"

namespace gsa {
namespace {

using gsa::testing::BatchBuilder;

// ---- The accumulator ------------------------------------------------------------------------

ModelConfig TwoLayers(bool value_gate, bool output_gate) {
  ModelConfig c;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.d_head = 8;
  c.use_value_gate = value_gate;
  c.use_output_gate = output_gate;
  return c;
}

TEST(AttentionStatsAccumulator, MeansOverLayersHeadsPositionsAndChannels) {
  AttentionStatsAccumulator acc(TwoLayers(true, true));
  // Position 0: attends to itself only (weight 1 in each of 4 heads), left out of the share.
  const AttentionRowStats p0[2] = {{1, 4.0, 8.0, 16.0}, {1, 4.0, 4.0, 8.0}};
  const AttentionRowStats p1[2] = {{2, 2.0, 12.0, 24.0}, {2, 1.0, 0.0, 32.0}};
  const AttentionRowStats p2[2] = {{2, 0.0, 4.0, 8.0}, {3, 3.0, 16.0, 24.0}};
  acc.Add(0, p0);
  acc.Add(1, p1);
  acc.Add(2, p2);
  const AttentionStats s = acc.Summary();
  EXPECT_EQ(s.positions, 3);
  ASSERT_EQ(s.layers.size(), 2u);
  // Layer 0: k (1+2+2)/3; share (2+0)/(2 positions × 4 heads); value gate 24/(3 × 16 channels);
  // output gate 48/(3 × 32 channels).
  EXPECT_DOUBLE_EQ(s.layers[0].mean_selected_k, 5.0 / 3.0);
  EXPECT_DOUBLE_EQ(s.layers[0].first_token_share, 2.0 / 8.0);
  EXPECT_DOUBLE_EQ(*s.layers[0].value_gate_mean, 24.0 / 48.0);
  EXPECT_DOUBLE_EQ(*s.layers[0].output_gate_mean, 48.0 / 96.0);
  EXPECT_DOUBLE_EQ(s.layers[1].mean_selected_k, 6.0 / 3.0);
  EXPECT_DOUBLE_EQ(s.layers[1].first_token_share, 4.0 / 8.0);
  EXPECT_DOUBLE_EQ(*s.layers[1].value_gate_mean, 20.0 / 48.0);
  EXPECT_DOUBLE_EQ(*s.layers[1].output_gate_mean, 64.0 / 96.0);
  EXPECT_DOUBLE_EQ(s.mean_selected_k, 11.0 / 6.0);
  EXPECT_DOUBLE_EQ(s.first_token_share, 6.0 / 16.0);
  EXPECT_DOUBLE_EQ(*s.value_gate_mean, 44.0 / 96.0);
  EXPECT_DOUBLE_EQ(*s.output_gate_mean, 112.0 / 192.0);
}

TEST(AttentionStatsAccumulator, ModelsWithoutAGateLeaveItsMeanUnset) {
  AttentionStatsAccumulator only_output(TwoLayers(false, true));
  const AttentionRowStats row[2] = {{1, 4.0, 0.0, 16.0}, {1, 4.0, 0.0, 16.0}};
  only_output.Add(0, row);
  const AttentionStats s = only_output.Summary();
  EXPECT_FALSE(s.value_gate_mean.has_value());
  ASSERT_TRUE(s.output_gate_mean.has_value());
  EXPECT_DOUBLE_EQ(*s.output_gate_mean, 0.5);
  for (const LayerAttentionStats& l : s.layers) {
    EXPECT_FALSE(l.value_gate_mean.has_value());
    EXPECT_TRUE(l.output_gate_mean.has_value());
  }
  const AttentionStats none = AttentionStatsAccumulator(TwoLayers(false, false)).Summary();
  EXPECT_FALSE(none.value_gate_mean.has_value());
  EXPECT_FALSE(none.output_gate_mean.has_value());
}

TEST(AttentionStatsAccumulator, NothingCountedGivesZerosAndResetStartsOver) {
  AttentionStatsAccumulator acc(TwoLayers(true, true));
  AttentionStats s = acc.Summary();
  EXPECT_EQ(s.positions, 0);
  EXPECT_EQ(s.mean_selected_k, 0.0);
  EXPECT_EQ(s.first_token_share, 0.0);
  EXPECT_EQ(*s.value_gate_mean, 0.0);
  // Only position 0: no share to report.
  const AttentionRowStats p0[2] = {{1, 4.0, 8.0, 16.0}, {1, 4.0, 8.0, 16.0}};
  acc.Add(0, p0);
  EXPECT_EQ(acc.Summary().first_token_share, 0.0);
  EXPECT_EQ(acc.Summary().mean_selected_k, 1.0);
  const AttentionRowStats p1[2] = {{2, 1.0, 8.0, 16.0}, {2, 3.0, 8.0, 16.0}};
  acc.Add(1, p1);
  acc.Reset();
  EXPECT_EQ(acc.positions(), 0);
  acc.Add(1, p1);
  s = acc.Summary();
  EXPECT_EQ(s.positions, 1);
  EXPECT_DOUBLE_EQ(s.first_token_share, (1.0 + 3.0) / 2 / 4);
  EXPECT_DOUBLE_EQ(s.mean_selected_k, 2.0);
}

// ---- An independent float64 forward pass ---------------------------------------------------------

std::vector<double> ToDouble(const TensorView* t) {
  std::vector<float> f(static_cast<size_t>(t->numel()));
  EXPECT_TRUE(ConvertToFloat(*t, f.data()).ok());
  return std::vector<double>(f.begin(), f.end());
}

// y[o] = Σ_i W[o, i] x[i]   (W: [out, in], PyTorch's layout).
std::vector<double> Apply(const std::vector<double>& w, const std::vector<double>& x) {
  const size_t in = x.size(), out = w.size() / in;
  std::vector<double> y(out, 0.0);
  for (size_t o = 0; o < out; ++o) {
    for (size_t i = 0; i < in; ++i) y[o] += w[o * in + i] * x[i];
  }
  return y;
}

std::vector<double> RmsNormD(const std::vector<double>& v, const std::vector<double>& w, double eps) {
  double ss = 0.0;
  for (double x : v) ss += x * x;
  const double inv = 1.0 / std::sqrt(ss / static_cast<double>(v.size()) + eps);
  std::vector<double> y(v.size());
  for (size_t i = 0; i < v.size(); ++i) y[i] = v[i] * inv * w[i];
  return y;
}

double SigmoidD(double z) { return 1.0 / (1.0 + std::exp(-z)); }

double GateD(GateActivation a, double z) {
  switch (a) {
    case GateActivation::kTanh: return 0.5 * (std::tanh(z) + 1.0);
    case GateActivation::kSilu: return z * SigmoidD(z);
    default: return SigmoidD(z);
  }
}

// Rotate-half RoPE of `heads` vectors of `d` values for position t, rope_base^(-2i/d) (no scaling).
void RopeD(std::vector<double>& x, int64_t heads, int64_t d, int64_t t, double base) {
  const int64_t half = d / 2;
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<double>(t) * std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(d));
      const double c = std::cos(angle), s = std::sin(angle);
      double& a = x[static_cast<size_t>(h * d + i)];
      double& b = x[static_cast<size_t>(h * d + i + half)];
      const double a0 = a, b0 = b;
      a = a0 * c - b0 * s;
      b = b0 * c + a0 * s;
    }
  }
}

struct Recomputed {
  std::vector<double> logits;  // [T, vocab]
  // [layer][t][head] softmax weight on position 0 (0 where not attended), keys attended, and the
  // gate activations' sums over channels ([layer][t]).
  std::vector<std::vector<std::vector<double>>> first_weight;
  std::vector<std::vector<int64_t>> selected;
  std::vector<std::vector<double>> value_gate, output_gate;
};

using SelectionFn = std::function<std::vector<int32_t>(int64_t layer, int64_t t)>;

// MODEL.md's decoder over `ids` in float64, attending to `select(layer, t)` at each query.
Recomputed Recompute(const LoadedModel& m, const std::vector<int32_t>& ids, const SelectionFn& select) {
  const ModelConfig& c = m.config;
  const int64_t T = static_cast<int64_t>(ids.size());
  const int64_t D = c.d_model, H = c.n_heads, dh = c.d_head, group = c.heads_per_kv();
  const std::vector<double> embed = ToDouble(m.weights.embed_tokens);
  std::vector<std::vector<double>> h(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) {
    h[static_cast<size_t>(t)].assign(embed.begin() + ids[static_cast<size_t>(t)] * D,
                                     embed.begin() + (ids[static_cast<size_t>(t)] + 1) * D);
  }
  Recomputed r;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const LayerWeights& lw = m.weights.layers[static_cast<size_t>(l)];
    const std::vector<double> w_in = ToDouble(lw.input_layernorm), wq = ToDouble(lw.q_proj), wk = ToDouble(lw.k_proj),
                              wv = ToDouble(lw.v_proj), wo = ToDouble(lw.o_proj), w_post = ToDouble(lw.post_attention_layernorm),
                              wg = ToDouble(lw.mlp_gate), wu = ToDouble(lw.mlp_up), wd = ToDouble(lw.mlp_down);
    std::vector<double> wvg, bvg, wog, bog;
    if (c.use_value_gate) {
      wvg = ToDouble(lw.value_gate_w);
      bvg = ToDouble(lw.value_gate_b);
    }
    if (c.use_output_gate) {
      wog = ToDouble(lw.output_gate_w);
      bog = ToDouble(lw.output_gate_b);
    }
    std::vector<std::vector<double>> x(static_cast<size_t>(T)), q(static_cast<size_t>(T)), k(static_cast<size_t>(T)),
        v(static_cast<size_t>(T));
    r.value_gate.emplace_back(static_cast<size_t>(T), 0.0);
    r.output_gate.emplace_back(static_cast<size_t>(T), 0.0);
    r.first_weight.emplace_back(static_cast<size_t>(T), std::vector<double>(static_cast<size_t>(H), 0.0));
    r.selected.emplace_back(static_cast<size_t>(T), 0);
    for (int64_t t = 0; t < T; ++t) {
      const size_t ts = static_cast<size_t>(t);
      x[ts] = RmsNormD(h[ts], w_in, c.norm_eps);
      q[ts] = Apply(wq, x[ts]);
      k[ts] = Apply(wk, x[ts]);
      v[ts] = Apply(wv, x[ts]);
      if (c.use_value_gate) {
        const std::vector<double> z = Apply(wvg, x[ts]);
        for (size_t i = 0; i < z.size(); ++i) {
          const double a = GateD(c.gate_activation, z[i] + bvg[i]);
          v[ts][i] *= a;
          r.value_gate.back()[ts] += a;
        }
      }
      RopeD(q[ts], H, dh, t, c.rope_base);
      RopeD(k[ts], c.n_kv_heads, dh, t, c.rope_base);
    }
    std::vector<std::vector<double>> next = h;
    for (int64_t t = 0; t < T; ++t) {
      const size_t ts = static_cast<size_t>(t);
      const std::vector<int32_t> sel = select(l, t);
      r.selected.back()[ts] = static_cast<int64_t>(sel.size());
      std::vector<double> o(static_cast<size_t>(H * dh), 0.0);
      std::vector<double> og_z;
      if (c.use_output_gate) og_z = Apply(wog, x[ts]);
      for (int64_t hh = 0; hh < H; ++hh) {
        const int64_t g = hh / group;
        std::vector<double> s(sel.size());
        double mx = -INFINITY;
        for (size_t i = 0; i < sel.size(); ++i) {
          double dot = 0.0;
          for (int64_t d = 0; d < dh; ++d) {
            dot += q[ts][static_cast<size_t>(hh * dh + d)] * k[static_cast<size_t>(sel[i])][static_cast<size_t>(g * dh + d)];
          }
          s[i] = dot / std::sqrt(static_cast<double>(dh));
          mx = std::max(mx, s[i]);
        }
        double z = 0.0;
        for (double& e : s) z += (e = std::exp(e - mx));
        for (size_t i = 0; i < sel.size(); ++i) {
          const double p = s[i] / z;
          if (sel[i] == 0) r.first_weight.back()[ts][static_cast<size_t>(hh)] = p;
          for (int64_t d = 0; d < dh; ++d) {
            o[static_cast<size_t>(hh * dh + d)] += p * v[static_cast<size_t>(sel[i])][static_cast<size_t>(g * dh + d)];
          }
        }
      }
      if (c.use_output_gate) {
        for (size_t i = 0; i < o.size(); ++i) {
          const double a = GateD(c.gate_activation, og_z[i] + bog[i]);
          o[i] *= a;
          r.output_gate.back()[ts] += a;
        }
      }
      const std::vector<double> attn = Apply(wo, o);
      for (int64_t d = 0; d < D; ++d) next[ts][static_cast<size_t>(d)] += attn[static_cast<size_t>(d)];
      const std::vector<double> y = RmsNormD(next[ts], w_post, c.norm_eps);
      const std::vector<double> gate = Apply(wg, y), up = Apply(wu, y);
      std::vector<double> act(gate.size());
      for (size_t i = 0; i < act.size(); ++i) act[i] = gate[i] * SigmoidD(gate[i]) * up[i];
      const std::vector<double> down = Apply(wd, act);
      for (int64_t d = 0; d < D; ++d) next[ts][static_cast<size_t>(d)] += down[static_cast<size_t>(d)];
    }
    h = std::move(next);
  }
  const std::vector<double> w_norm = ToDouble(m.weights.final_norm), head = ToDouble(m.weights.lm_head);
  for (int64_t t = 0; t < T; ++t) {
    const std::vector<double> logits = Apply(head, RmsNormD(h[static_cast<size_t>(t)], w_norm, c.norm_eps));
    r.logits.insert(r.logits.end(), logits.begin(), logits.end());
  }
  return r;
}

// The CPU backend's statistics of one sequence fed in chunks of `chunk`: [t][layer].
std::vector<std::vector<AttentionRowStats>> BackendRows(Backend& backend, const std::vector<int32_t>& tokens,
                                                        int64_t chunk, AttentionMode mode) {
  BatchBuilder builder(backend.cache_spec().num_blocks, backend.cache_spec().block_size);
  const int64_t T = static_cast<int64_t>(tokens.size()), L = backend.config().n_layers;
  std::vector<std::vector<AttentionRowStats>> rows;
  for (int64_t start = 0; start < T; start += chunk) {
    BatchBuilder::Chunk c;
    c.tokens.assign(tokens.begin() + start, tokens.begin() + std::min(T, start + chunk));
    c.start = start;
    c.attention = mode;
    c.attention_stats = true;
    auto out = backend.Step(builder.Make({c}));
    EXPECT_TRUE(out.ok()) << out.status();
    if (!out.ok()) return rows;
    EXPECT_EQ(out->stats_rows.size(), c.tokens.size());
    EXPECT_EQ(out->attention_stats.size(), c.tokens.size() * static_cast<size_t>(L));
    for (size_t i = 0; i < out->stats_rows.size(); ++i) {
      EXPECT_EQ(out->stats_rows[i], static_cast<int32_t>(i));
      rows.emplace_back(out->attention_stats.begin() + static_cast<int64_t>(i) * L,
                        out->attention_stats.begin() + static_cast<int64_t>(i + 1) * L);
    }
  }
  return rows;
}

class CpuAttentionStatsGolden : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    auto m = LoadModel(gsa::testing::GoldenDir(GetParam()));
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = std::make_unique<LoadedModel>(std::move(*m));
    golden_ = gsa::testing::ReadGolden(model_->dir, model_->config.n_layers, model_->config.vocab_size);
    ASSERT_FALSE(golden_.input_ids.empty());
    auto b = CpuBackend::Create(model_->config, model_->weights, {2});
    ASSERT_TRUE(b.ok()) << b.status();
    ASSERT_TRUE((*b)->AllocateCache(64, 4).ok());
    backend_ = std::move(*b);
  }

  // Compares the backend's rows with the recomputation, and the accumulator's summary with means
  // taken directly from the recomputation.
  void ExpectMatches(const std::vector<std::vector<AttentionRowStats>>& rows, const Recomputed& want) {
    const ModelConfig& c = model_->config;
    const int64_t T = static_cast<int64_t>(golden_.input_ids.size()), L = c.n_layers, H = c.n_heads;
    ASSERT_EQ(rows.size(), static_cast<size_t>(T));
    AttentionStatsAccumulator acc(c);
    double share_all = 0.0, k_all = 0.0, vg_all = 0.0, og_all = 0.0;
    std::vector<double> share(static_cast<size_t>(L)), kmean(static_cast<size_t>(L)), vg(static_cast<size_t>(L)),
        og(static_cast<size_t>(L));
    for (int64_t t = 0; t < T; ++t) {
      acc.Add(t, rows[static_cast<size_t>(t)].data());
      for (int64_t l = 0; l < L; ++l) {
        const AttentionRowStats& got = rows[static_cast<size_t>(t)][static_cast<size_t>(l)];
        const size_t ls = static_cast<size_t>(l), ts = static_cast<size_t>(t);
        double first = 0.0;
        for (int64_t h = 0; h < H; ++h) first += want.first_weight[ls][ts][static_cast<size_t>(h)];
        EXPECT_EQ(got.selected, want.selected[ls][ts]) << "layer " << l << " position " << t;
        EXPECT_NEAR(got.first_token, first, 1e-5) << "layer " << l << " position " << t;
        EXPECT_NEAR(got.value_gate, want.value_gate[ls][ts], 1e-4) << "layer " << l << " position " << t;
        EXPECT_NEAR(got.output_gate, want.output_gate[ls][ts], 1e-4) << "layer " << l << " position " << t;
        kmean[ls] += static_cast<double>(want.selected[ls][ts]) / static_cast<double>(T);
        if (t >= 1) share[ls] += first / static_cast<double>((T - 1) * H);
        vg[ls] += want.value_gate[ls][ts] / static_cast<double>(T * c.kv_dim());
        og[ls] += want.output_gate[ls][ts] / static_cast<double>(T * c.q_dim());
      }
    }
    const AttentionStats s = acc.Summary();
    EXPECT_EQ(s.positions, T);
    ASSERT_EQ(s.layers.size(), static_cast<size_t>(L));
    for (int64_t l = 0; l < L; ++l) {
      const size_t ls = static_cast<size_t>(l);
      EXPECT_NEAR(s.layers[ls].mean_selected_k, kmean[ls], 1e-12) << "layer " << l;
      EXPECT_NEAR(s.layers[ls].first_token_share, share[ls], 1e-6) << "layer " << l;
      EXPECT_EQ(s.layers[ls].value_gate_mean.has_value(), c.use_value_gate);
      EXPECT_EQ(s.layers[ls].output_gate_mean.has_value(), c.use_output_gate);
      if (c.use_value_gate) {
        EXPECT_NEAR(*s.layers[ls].value_gate_mean, vg[ls], 1e-6) << "layer " << l;
      }
      if (c.use_output_gate) {
        EXPECT_NEAR(*s.layers[ls].output_gate_mean, og[ls], 1e-6) << "layer " << l;
      }
      k_all += kmean[ls] / static_cast<double>(L);
      share_all += share[ls] / static_cast<double>(L);
      vg_all += vg[ls] / static_cast<double>(L);
      og_all += og[ls] / static_cast<double>(L);
    }
    EXPECT_NEAR(s.mean_selected_k, k_all, 1e-12);
    EXPECT_NEAR(s.first_token_share, share_all, 1e-6);
    EXPECT_EQ(s.value_gate_mean.has_value(), c.use_value_gate);
    EXPECT_EQ(s.output_gate_mean.has_value(), c.use_output_gate);
    if (c.use_value_gate) {
      EXPECT_NEAR(*s.value_gate_mean, vg_all, 1e-6);
    }
    if (c.use_output_gate) {
      EXPECT_NEAR(*s.output_gate_mean, og_all, 1e-6);
    }
    // Not trivially zero: these models put real weight on the first token.
    EXPECT_GT(s.first_token_share, 0.01);
    std::printf("[ %s ] positions %lld, mean k %.4f, first-token share %.4f\n", GetParam(),
                static_cast<long long>(s.positions), s.mean_selected_k, s.first_token_share);
  }

  std::unique_ptr<LoadedModel> model_;
  gsa::testing::Golden golden_;
  std::unique_ptr<CpuBackend> backend_;
};

TEST_P(CpuAttentionStatsGolden, SparseStatisticsMatchAFloat64RecomputationOnTheReferenceSelections) {
  const Recomputed want = Recompute(*model_, golden_.input_ids, [&](int64_t l, int64_t t) {
    return golden_.sel[static_cast<size_t>(l)][static_cast<size_t>(t)];
  });
  // The recomputation is MODEL.md's function: it reproduces the reference's float64 logits.
  ASSERT_EQ(want.logits.size(), golden_.logits.size());
  double max_diff = 0.0;
  for (size_t i = 0; i < want.logits.size(); ++i) {
    max_diff = std::max(max_diff, std::fabs(want.logits[i] - static_cast<double>(golden_.logits[i])));
  }
  EXPECT_LE(max_diff, 1e-4);
  // Some queries must leave position 0 out, or the "not selected" case would go untested.
  int64_t without_first = 0;
  for (const auto& layer : golden_.sel) {
    for (const auto& row : layer) without_first += std::find(row.begin(), row.end(), 0) == row.end() ? 1 : 0;
  }
  EXPECT_GT(without_first, 0);
  const int64_t T = static_cast<int64_t>(golden_.input_ids.size());
  ExpectMatches(BackendRows(*backend_, golden_.input_ids, T, AttentionMode::kModelDefault), want);
}

TEST_P(CpuAttentionStatsGolden, DenseRequestsAttendToEveryEarlierPosition) {
  const Recomputed want = Recompute(*model_, golden_.input_ids, [](int64_t, int64_t t) {
    std::vector<int32_t> all;
    for (int64_t s = t; s >= 0; --s) all.push_back(static_cast<int32_t>(s));
    return all;
  });
  const std::vector<std::vector<AttentionRowStats>> rows =
      BackendRows(*backend_, golden_.input_ids, 7, AttentionMode::kDense);
  ExpectMatches(rows, want);
  AttentionStatsAccumulator acc(model_->config);
  for (size_t t = 0; t < rows.size(); ++t) acc.Add(static_cast<int64_t>(t), rows[t].data());
  const double T = static_cast<double>(golden_.input_ids.size());
  for (const LayerAttentionStats& l : acc.Summary().layers) EXPECT_EQ(l.mean_selected_k, (T + 1) / 2);  // mean of t + 1
}

INSTANTIATE_TEST_SUITE_P(Cases, CpuAttentionStatsGolden, ::testing::Values("gsa-tiny", "sparse-relu-tiny"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

// ---- Which rows, and invariance ------------------------------------------------------------------

class CpuAttentionStats : public ::testing::Test {
 protected:
  void SetUp() override {
    RandomModelOptions o;
    ModelConfig& c = o.config;
    c.d_model = 64;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.d_head = 16;
    c.n_layers = 2;
    c.d_ffn = 96;
    c.vocab_size = 97;
    c.d_indexer = 16;
    c.n_indexer_heads = 2;
    c.k_base = 12;
    c.k_min = 4;
    c.k_max = 24;
    c.use_adaptive_k = true;  // k_t varies by position
    c.gate_activation = GateActivation::kSilu;
    c.max_position_embeddings = 4096;
    o.seed = 21;
    o.init_std = 0.08;
    ASSERT_TRUE(WriteRandomModel(o, dir_.path()).ok());
    auto m = LoadModel(dir_.path());
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = std::make_unique<LoadedModel>(std::move(*m));
  }
  std::unique_ptr<CpuBackend> Backend() const {
    auto b = CpuBackend::Create(model_->config, model_->weights, {2});
    EXPECT_TRUE(b.ok()) << b.status();
    EXPECT_TRUE((*b)->AllocateCache(128, 8).ok());
    return std::move(*b);
  }
  std::vector<int32_t> Tokens(int64_t n, uint32_t seed) const {
    std::mt19937 rng(seed);
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (auto& x : t) x = static_cast<int32_t>(rng() % static_cast<uint32_t>(model_->config.vocab_size));
    return t;
  }
  gsa::testing::TempDir dir_;
  std::unique_ptr<LoadedModel> model_;
};

bool SameRow(const AttentionRowStats& a, const AttentionRowStats& b) {
  return a.selected == b.selected && a.first_token == b.first_token && a.value_gate == b.value_gate &&
         a.output_gate == b.output_gate;
}

TEST_F(CpuAttentionStats, ChunkedPrefillAndDecodeGiveBitwiseTheSameRowStatistics) {
  const std::vector<int32_t> tokens = Tokens(60, 3);
  const auto one_shot = BackendRows(*Backend(), tokens, 60, AttentionMode::kModelDefault);
  ASSERT_EQ(one_shot.size(), 60u);
  std::set<int32_t> ks;
  for (const auto& row : one_shot) ks.insert(row[1].selected);
  EXPECT_GT(ks.size(), 3u) << "k_t should vary with the position";
  for (int64_t chunk : {1, 3, 16}) {
    const auto chunked = BackendRows(*Backend(), tokens, chunk, AttentionMode::kModelDefault);
    ASSERT_EQ(chunked.size(), one_shot.size());
    for (size_t t = 0; t < chunked.size(); ++t) {
      for (size_t l = 0; l < chunked[t].size(); ++l) {
        EXPECT_TRUE(SameRow(chunked[t][l], one_shot[t][l])) << "chunk " << chunk << " position " << t << " layer " << l;
      }
    }
  }
}

TEST_F(CpuAttentionStats, OnlyTheRowsThatAskAreMeasuredAndAskingChangesNoOtherOutput) {
  const std::vector<int32_t> a = Tokens(30, 5), b = Tokens(25, 6), d = Tokens(20, 7);
  auto run = [&](bool ask_a, bool ask_d) {
    auto be = Backend();
    BatchBuilder builder(128, 8);
    auto chunk = [](int id, const std::vector<int32_t>& t, int64_t from, int64_t to, AttentionMode m, bool ask) {
      BatchBuilder::Chunk c;
      c.id = id;
      c.tokens.assign(t.begin() + from, t.begin() + to);
      c.start = from;
      c.attention = m;
      c.attention_stats = ask;
      return c;
    };
    EXPECT_TRUE(be->Step(builder.Make({chunk(0, a, 0, 20, AttentionMode::kModelDefault, ask_a)})).ok());
    EXPECT_TRUE(be->Step(builder.Make({chunk(1, b, 0, 24, AttentionMode::kModelDefault, false)})).ok());
    // A prefill chunk (asks), a decode (never asks) and a dense prefill (asks or not), in one step.
    auto out = be->Step(builder.Make({chunk(0, a, 20, 30, AttentionMode::kModelDefault, ask_a),
                                      chunk(1, b, 24, 25, AttentionMode::kModelDefault, false),
                                      chunk(2, d, 0, 20, AttentionMode::kDense, ask_d)},
                                     true));
    EXPECT_TRUE(out.ok()) << out.status();
    return std::move(*out);
  };
  const StepOutput none = run(false, false);
  const StepOutput some = run(true, true);
  EXPECT_TRUE(none.stats_rows.empty());
  EXPECT_TRUE(none.attention_stats.empty());
  std::vector<int32_t> want_rows;
  for (int32_t r = 0; r < 10; ++r) want_rows.push_back(r);       // sequence 0's rows 0-9
  for (int32_t r = 11; r < 31; ++r) want_rows.push_back(r);      // sequence 2's rows 11-30
  EXPECT_EQ(some.stats_rows, want_rows);
  EXPECT_EQ(some.attention_stats.size(), want_rows.size() * 2);
  EXPECT_EQ(some.logits, none.logits);
  EXPECT_EQ(some.selections, none.selections);
  EXPECT_EQ(some.selected_sum, none.selected_sum);
  // Each sequence's statistics are those it gets alone.
  const auto alone_d = BackendRows(*Backend(), d, 20, AttentionMode::kDense);
  for (size_t t = 0; t < 20; ++t) {
    for (size_t l = 0; l < 2; ++l) {
      EXPECT_TRUE(SameRow(some.attention_stats[(10 + t) * 2 + l], alone_d[t][l])) << "position " << t;
      EXPECT_EQ(alone_d[t][l].selected, static_cast<int32_t>(t + 1));
    }
  }
  const auto alone_a = BackendRows(*Backend(), a, 30, AttentionMode::kModelDefault);
  for (size_t t = 20; t < 30; ++t) {
    for (size_t l = 0; l < 2; ++l) {
      EXPECT_TRUE(SameRow(some.attention_stats[(t - 20) * 2 + l], alone_a[t][l])) << "position " << t;
    }
  }
}

}  // namespace
}  // namespace gsa
