// kernels/attention_stats.h (AttentionStats) against an fp64 CPU reference computed from the same
// bf16 q and K and fp32 gate inputs: for every listed row, the keys it attends to, Σ over query
// heads of the softmax weight on position 0, and the value- and output-gate sums. Sparse rows with
// and without position 0 in their lists (descending or shuffled, 1 to 2048 entries), position-0
// rows, dense rows up to 3000 positions, d_head 32/64/128/256, GQA 1:1 to 8:1, shuffled block
// tables, each gate activation and no gates, a strided output (one layer column of a table),
// unlisted rows and other columns untouched (poison), bitwise determinism, refused arguments.
//
// Set GSA_TEST_SEED to replay a failure (the seed is printed with every failure).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "engine/backend/cuda/device_buffer.h"
#include "kernels/attention_stats.h"
#include "tests/testing/cuda_test_support.h"

namespace gsa {
namespace {

using kernels::bf16;
using kernels::GateActivation;
using gsa::testing::FromBf16;
using gsa::testing::ToBf16;
using gsa::testing::Upload;

uint64_t TestSeed() {
  if (const char* s = std::getenv("GSA_TEST_SEED"); s != nullptr && *s != '\0') {
    return std::strtoull(s, nullptr, 0);
  }
  return gsa::testing::FreshSeed();
}

struct RowSpec {
  int32_t seq = 0;
  int32_t position = 0;
  bool dense = false;
  int64_t k = 0;             // sparse: list length (clamped to position + 1)
  bool with_first = true;    // sparse: position 0 in the list
  bool shuffled = false;     // sparse: list in random order (else descending)
};

struct Spec {
  int32_t n_heads = 8, n_kv_heads = 4, d_head = 128, block_size = 16;
  std::vector<int64_t> contexts;  // tokens per sequence (> every row's position)
  std::vector<RowSpec> rows;
  bool value_gate = true, output_gate = true;
  GateActivation act = GateActivation::kSigmoid;
};

struct Problem {
  Spec spec;
  int32_t max_blocks = 0;
  int64_t num_slots = 0;
  std::vector<int32_t> tables;
  std::vector<bf16> k, q;
  std::vector<int32_t> seq, position;
  std::vector<uint8_t> dense;
  std::vector<int64_t> slot;
  std::vector<std::vector<int32_t>> lists;
  int64_t sel_stride = 0;
  std::vector<int32_t> sel, sel_count;
  int64_t gate_stride = 0;
  std::vector<float> vg_z, og_z, vg_bias, og_bias;

  int64_t SlotOf(int32_t s, int64_t pos) const {
    const int32_t bs = spec.block_size;
    return static_cast<int64_t>(tables[static_cast<size_t>(s) * max_blocks + pos / bs]) * bs + pos % bs;
  }
};

Problem Build(const Spec& sp, uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto uniform = [&](float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); };
  Problem p;
  p.spec = sp;
  const int32_t bs = sp.block_size, H = sp.n_heads, Hkv = sp.n_kv_heads, D = sp.d_head;
  int64_t longest = 1;
  for (int64_t c : sp.contexts) longest = std::max(longest, c);
  p.max_blocks = static_cast<int32_t>((longest + bs - 1) / bs);
  const int64_t pool = static_cast<int64_t>(p.max_blocks) * static_cast<int64_t>(sp.contexts.size());
  p.num_slots = pool * bs;
  std::vector<int32_t> perm(static_cast<size_t>(pool));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);  // every sequence its own shuffled blocks
  p.tables = perm;
  p.k.resize(static_cast<size_t>(p.num_slots) * Hkv * D);
  for (bf16& x : p.k) x = ToBf16(uniform(-1.0f, 1.0f));
  const int64_t rows = static_cast<int64_t>(sp.rows.size());
  for (const RowSpec& rs : sp.rows) {
    const int64_t t = rs.position;
    p.seq.push_back(rs.seq);
    p.position.push_back(rs.position);
    p.dense.push_back(rs.dense ? 1 : 0);
    p.slot.push_back(p.SlotOf(rs.seq, t));
    std::vector<int32_t> list;
    if (rs.dense) {
      for (int64_t s = 0; s <= t; ++s) list.push_back(static_cast<int32_t>(s));
    } else {
      std::vector<int32_t> all;
      for (int64_t s = rs.with_first ? 0 : 1; s <= t; ++s) all.push_back(static_cast<int32_t>(s));
      std::shuffle(all.begin(), all.end(), rng);
      const int64_t k = std::clamp<int64_t>(rs.k, 1, static_cast<int64_t>(all.size()));
      list.assign(all.begin(), all.begin() + k);
      if (rs.with_first && std::find(list.begin(), list.end(), 0) == list.end()) list.back() = 0;
      if (rs.shuffled) {
        std::shuffle(list.begin(), list.end(), rng);
      } else {
        std::sort(list.begin(), list.end(), std::greater<int32_t>());
      }
    }
    p.lists.push_back(std::move(list));
  }
  int64_t widest = 1;
  for (int64_t r = 0; r < rows; ++r) {
    if (!p.dense[static_cast<size_t>(r)]) widest = std::max(widest, static_cast<int64_t>(p.lists[static_cast<size_t>(r)].size()));
  }
  p.sel_stride = widest + 2;
  p.sel.assign(static_cast<size_t>(rows * p.sel_stride), 0x7fffffff);  // unused entries: wrong to read
  p.sel_count.assign(static_cast<size_t>(rows), 1);
  for (int64_t r = 0; r < rows; ++r) {
    if (p.dense[static_cast<size_t>(r)]) {
      p.sel[static_cast<size_t>(r * p.sel_stride)] = 5;  // a decoy the kernel must ignore
      continue;
    }
    const std::vector<int32_t>& l = p.lists[static_cast<size_t>(r)];
    std::copy(l.begin(), l.end(), p.sel.begin() + r * p.sel_stride);
    p.sel_count[static_cast<size_t>(r)] = static_cast<int32_t>(l.size());
  }
  p.q.resize(static_cast<size_t>(rows) * H * D);
  for (bf16& x : p.q) x = ToBf16(uniform(-3.0f, 3.0f));  // scores of a few units: a peaked softmax
  p.gate_stride = static_cast<int64_t>(H) * D + 5;
  p.vg_z.resize(static_cast<size_t>(rows * p.gate_stride));
  p.og_z.resize(static_cast<size_t>(rows * p.gate_stride));
  for (float& z : p.vg_z) z = uniform(-4.0f, 4.0f);
  for (float& z : p.og_z) z = uniform(-4.0f, 4.0f);
  p.vg_bias.resize(static_cast<size_t>(Hkv) * D);
  p.og_bias.resize(static_cast<size_t>(H) * D);
  for (float& b : p.vg_bias) b = uniform(-1.0f, 1.0f);
  for (float& b : p.og_bias) b = uniform(-1.0f, 1.0f);
  return p;
}

double GateRef(GateActivation a, double z) {
  const double sig = 1.0 / (1.0 + std::exp(-z));
  switch (a) {
    case GateActivation::kTanh: return 0.5 * (std::tanh(z) + 1.0);
    case GateActivation::kSilu: return z * sig;
    default: return sig;
  }
}

struct RowRef {
  int32_t selected = 0;
  double first_token = 0, value_gate = 0, output_gate = 0;
};

RowRef Reference(const Problem& p, int64_t r) {
  const Spec& sp = p.spec;
  const int32_t H = sp.n_heads, Hkv = sp.n_kv_heads, D = sp.d_head, group = H / Hkv;
  const std::vector<int32_t>& list = p.lists[static_cast<size_t>(r)];
  RowRef out;
  out.selected = static_cast<int32_t>(list.size());
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> s(list.size());
  for (int32_t h = 0; h < H; ++h) {
    const int32_t kvh = h / group;
    double mx = -INFINITY;
    for (size_t i = 0; i < list.size(); ++i) {
      const size_t base = (static_cast<size_t>(p.SlotOf(p.seq[static_cast<size_t>(r)], list[i])) * Hkv + kvh) * D;
      double dot = 0.0;
      for (int32_t d = 0; d < D; ++d) {
        dot += static_cast<double>(FromBf16(p.q[(static_cast<size_t>(r) * H + h) * D + d])) * FromBf16(p.k[base + d]);
      }
      s[i] = dot * scale;
      mx = std::max(mx, s[i]);
    }
    double sum = 0.0, first = 0.0;
    for (size_t i = 0; i < list.size(); ++i) {
      const double e = std::exp(s[i] - mx);
      sum += e;
      if (list[i] == 0) first = e;
    }
    out.first_token += first / sum;
  }
  if (sp.value_gate) {
    for (int64_t c = 0; c < static_cast<int64_t>(Hkv) * D; ++c) {
      out.value_gate += GateRef(sp.act, static_cast<double>(p.vg_z[static_cast<size_t>(r * p.gate_stride + c)]) +
                                            p.vg_bias[static_cast<size_t>(c)]);
    }
  }
  if (sp.output_gate) {
    for (int64_t c = 0; c < static_cast<int64_t>(H) * D; ++c) {
      out.output_gate += GateRef(sp.act, static_cast<double>(p.og_z[static_cast<size_t>(r * p.gate_stride + c)]) +
                                             p.og_bias[static_cast<size_t>(c)]);
    }
  }
  return out;
}

struct Outputs {
  std::vector<int32_t> selected;
  std::vector<double> first_token, value_gate, output_gate;
};

constexpr int64_t kStride = 3;  // outputs go to column kColumn of a [listed rows, kStride] table
constexpr int64_t kColumn = 1;

// One launch over `row_ids`, outputs poisoned first; the whole tables come back.
Outputs Launch(const Problem& p, const std::vector<int32_t>& row_ids, cudaError_t* status = nullptr) {
  const Spec& sp = p.spec;
  const size_t n = row_ids.size() * kStride;
  DeviceBuffer<bf16> q = Upload(p.q), k = Upload(p.k);
  DeviceBuffer<int32_t> tables = Upload(p.tables), seq = Upload(p.seq), position = Upload(p.position), ids = Upload(row_ids),
                        sel = Upload(p.sel), sel_count = Upload(p.sel_count);
  DeviceBuffer<uint8_t> dense = Upload(p.dense);
  DeviceBuffer<int64_t> slot = Upload(p.slot);
  DeviceBuffer<float> vg_z = Upload(p.vg_z), og_z = Upload(p.og_z), vg_b = Upload(p.vg_bias), og_b = Upload(p.og_bias);
  DeviceBuffer<int32_t> selected = gsa::testing::Poisoned<int32_t>(n);
  DeviceBuffer<double> first = gsa::testing::Poisoned<double>(n), vg = gsa::testing::Poisoned<double>(n),
                       og = gsa::testing::Poisoned<double>(n);
  DeviceBuffer<uint8_t> ws = gsa::testing::Poisoned<uint8_t>(
      std::max<size_t>(1, kernels::AttentionStatsWorkspaceBytes(static_cast<int64_t>(row_ids.size()), sp.n_heads)));
  kernels::AttentionStatsArgs a;
  a.q = q.get();
  a.k_cache = k.get();
  a.paged.block_tables = tables.get();
  a.paged.max_blocks_per_seq = p.max_blocks;
  a.paged.block_size = sp.block_size;
  a.rows.seq = seq.get();
  a.rows.position = position.get();
  a.rows.slot = slot.get();
  a.rows.dense = dense.get();
  a.row_ids = ids.get();
  a.num_row_ids = static_cast<int64_t>(row_ids.size());
  a.sel = sel.get();
  a.sel_count = sel_count.get();
  a.sel_stride = p.sel_stride;
  a.value_gate_z = sp.value_gate ? vg_z.get() : nullptr;
  a.value_gate_bias = vg_b.get();
  a.output_gate_z = sp.output_gate ? og_z.get() : nullptr;
  a.output_gate_bias = og_b.get();
  a.gate_stride = p.gate_stride;
  a.gate_act = sp.act;
  a.n_heads = sp.n_heads;
  a.n_kv_heads = sp.n_kv_heads;
  a.d_head = sp.d_head;
  a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(sp.d_head)));
  a.selected = selected.get() + kColumn;
  a.first_token = first.get() + kColumn;
  a.value_gate = vg.get() + kColumn;
  a.output_gate = og.get() + kColumn;
  a.out_stride = kStride;
  a.workspace = ws.get();
  a.workspace_bytes = ws.bytes();
  const cudaError_t e = kernels::AttentionStats(a, nullptr);
  if (status != nullptr) *status = e;
  if (status == nullptr) {
    EXPECT_EQ(e, cudaSuccess) << cudaGetErrorString(e);
  }
  Outputs o;
  o.selected = gsa::testing::Download(selected);
  o.first_token = gsa::testing::Download(first);
  o.value_gate = gsa::testing::Download(vg);
  o.output_gate = gsa::testing::Download(og);
  return o;
}

bool IsPoison(double x) {
  uint64_t u;
  std::memcpy(&u, &x, 8);
  return u == ~uint64_t{0};
}

void Check(const Spec& sp, const std::vector<int32_t>& row_ids, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "seed " << seed << " (GSA_TEST_SEED=" << seed << " replays it)");
  const Problem p = Build(sp, seed);
  const Outputs o = Launch(p, row_ids);
  ASSERT_EQ(o.selected.size(), row_ids.size() * kStride);
  for (size_t i = 0; i < row_ids.size(); ++i) {
    const int32_t r = row_ids[i];
    const RowRef want = Reference(p, r);
    const size_t at = i * kStride + kColumn;
    EXPECT_EQ(o.selected[at], want.selected) << "row " << r;
    EXPECT_NEAR(o.first_token[at], want.first_token, 2e-5 * sp.n_heads) << "row " << r;
    EXPECT_NEAR(o.value_gate[at], want.value_gate, 1e-5 * std::max(1.0, std::fabs(want.value_gate))) << "row " << r;
    EXPECT_NEAR(o.output_gate[at], want.output_gate, 1e-5 * std::max(1.0, std::fabs(want.output_gate))) << "row " << r;
    for (int64_t c = 0; c < kStride; ++c) {
      if (c == kColumn) continue;
      const size_t other = i * kStride + static_cast<size_t>(c);
      EXPECT_EQ(o.selected[other], -1) << "column " << c << " written";
      EXPECT_TRUE(IsPoison(o.first_token[other]) && IsPoison(o.value_gate[other]) && IsPoison(o.output_gate[other]))
          << "column " << c << " written";
    }
  }
}

std::vector<int32_t> AllRows(const Spec& sp) {
  std::vector<int32_t> ids(sp.rows.size());
  std::iota(ids.begin(), ids.end(), 0);
  return ids;
}

// Rows of every kind over three sequences.
Spec Mixed(int32_t n_heads, int32_t n_kv_heads, int32_t d_head) {
  Spec sp;
  sp.n_heads = n_heads;
  sp.n_kv_heads = n_kv_heads;
  sp.d_head = d_head;
  sp.contexts = {1, 70, 3000};
  sp.rows = {
      {0, 0, false, 1, true, false},       // position 0 (sparse): only itself, weight 1 per head
      {1, 0, true, 0, true, false},        // position 0 (dense)
      {1, 69, false, 12, true, false},     // sparse, descending, with position 0
      {1, 40, false, 12, false, true},     // sparse, shuffled, without position 0
      {1, 69, true, 0, true, false},       // dense, 70 keys
      {2, 2999, false, 2048, true, true},  // sparse, 2048 keys, shuffled
      {2, 2999, false, 300, false, false}, // sparse without position 0
      {2, 2999, true, 0, true, false},     // dense, 3000 keys
      {2, 1234, false, 1235, true, false}, // sparse keeping everything
  };
  return sp;
}

TEST(AttentionStatsKernel, MatchesTheFp64ReferenceForEveryRowKindAndHeadShape) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  for (int32_t d_head : {32, 64, 128, 256}) {
    for (auto [h, hkv] : {std::pair{4, 4}, std::pair{8, 4}, std::pair{8, 2}, std::pair{16, 2}}) {
      SCOPED_TRACE(::testing::Message() << "d_head " << d_head << ", " << h << " heads / " << hkv);
      const Spec sp = Mixed(h, hkv, d_head);
      Check(sp, AllRows(sp), seed + static_cast<uint64_t>(d_head * 131 + h * 7 + hkv));
    }
  }
}

TEST(AttentionStatsKernel, EachGateActivationAndNoGates) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  for (GateActivation act : {GateActivation::kSigmoid, GateActivation::kTanh, GateActivation::kSilu}) {
    Spec sp = Mixed(8, 2, 64);
    sp.act = act;
    Check(sp, AllRows(sp), seed + static_cast<uint64_t>(act));
  }
  Spec none = Mixed(8, 2, 64);
  none.value_gate = false;
  none.output_gate = false;
  Check(none, AllRows(none), seed);
  Spec only_output = Mixed(8, 2, 64);
  only_output.value_gate = false;
  Check(only_output, AllRows(only_output), seed + 1);
}

TEST(AttentionStatsKernel, OnlyListedRowsInTheirListOrderAndBitwiseDeterministic) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  const Spec sp = Mixed(8, 4, 128);
  const std::vector<int32_t> some = {7, 2, 5};  // any subset, any order
  Check(sp, some, seed);
  const Problem p = Build(sp, seed);
  const Outputs a = Launch(p, some), b = Launch(p, some);
  EXPECT_EQ(a.selected, b.selected);
  EXPECT_EQ(0, std::memcmp(a.first_token.data(), b.first_token.data(), a.first_token.size() * sizeof(double)));
  EXPECT_EQ(0, std::memcmp(a.value_gate.data(), b.value_gate.data(), a.value_gate.size() * sizeof(double)));
  EXPECT_EQ(0, std::memcmp(a.output_gate.data(), b.output_gate.data(), a.output_gate.size() * sizeof(double)));
  // Position 0 attends only to itself: weight 1 in every head.
  const Outputs zero = Launch(p, {0, 1});
  EXPECT_NEAR(zero.first_token[kColumn], 8.0, 1e-6);
  EXPECT_NEAR(zero.first_token[kStride + kColumn], 8.0, 1e-6);
}

TEST(AttentionStatsKernel, RefusesUnsupportedShapesAndASmallWorkspace) {
  GSA_REQUIRE_GPU();
  const Spec sp = Mixed(8, 4, 64);
  const Problem p = Build(sp, 1);
  Problem bad_head = p;
  bad_head.spec.d_head = 48;
  cudaError_t e = cudaSuccess;
  Launch(bad_head, {2}, &e);
  EXPECT_EQ(e, cudaErrorInvalidValue);
  Problem bad_group = p;
  bad_group.spec.n_kv_heads = 3;
  Launch(bad_group, {2}, &e);
  EXPECT_EQ(e, cudaErrorInvalidValue);
  EXPECT_EQ(kernels::AttentionStatsWorkspaceBytes(0, 8), 0u);
  EXPECT_EQ(kernels::AttentionStatsWorkspaceBytes(3, 8), 3u * 8u * sizeof(float));
  kernels::AttentionStatsArgs none;
  EXPECT_EQ(kernels::AttentionStats(none, nullptr), cudaSuccess) << "no listed rows: nothing to do";
  none.num_row_ids = 1;
  EXPECT_EQ(kernels::AttentionStats(none, nullptr), cudaErrorInvalidValue) << "null pointers";
  (void)cudaGetLastError();
}

}  // namespace
}  // namespace gsa
