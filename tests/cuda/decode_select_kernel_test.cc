// kernels/selection.h DecodeSelect (the fused, cooperative decode selection) against the separate
// launches it replaces (IndexerScores → ScoreStats → SelectionCounts → TopK, each checked against
// the CPU oracle by indexer_kernel_test and selection_kernel_test), on fresh random paged indexer
// keys: a 128K-token row with shorter ones, a dense row, max_candidates above every row's length (the
// graph-captured step's shape), many rows whose slices spill out of shared memory, all-equal
// scores (the tie rule alone decides), both k rules. Outputs poisoned, every element checked.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "engine/backend/cuda/device_buffer.h"
#include "kernels/indexer.h"
#include "kernels/selection.h"
#include "tests/testing/cuda_test_support.h"

namespace gsa {
namespace {

using gsa::testing::Bits;
using gsa::testing::Download;
using gsa::testing::Poisoned;
using gsa::testing::RandomFloats;
using gsa::testing::ToBf16;
using gsa::testing::Upload;
using kernels::bf16;

constexpr int32_t kBlockSize = 64;
constexpr int32_t kSelStride = 4096;

struct Scenario {
  std::string name;
  std::vector<int64_t> lengths;  // context length of each row's sequence (row i ↔ sequence i)
  int dense_row = -1;            // this row is dense (attends to everything, no selection)
  int64_t max_candidates = 0;    // 0: the longest row
  bool zero_keys = false;        // every indexer key 0: all scores of a row equal
  int32_t method = 0;            // 0: fixed k, 1: variance
  bool fp8 = false;              // fp8 indexer keys (random codes and per-slot scales)
  bool zero_odd_rows = false;    // the keys of odd rows' sequences 0: those rows all ties, the others random
  bool relu = false;             // relu indexer (scores unbounded: no coarse histogram)
  // Per row (empty: none): > 0 gives row r's positions only distinct[r] different keys (position p
  // repeats position p mod distinct[r]'s key), so each score value comes many times.
  std::vector<int32_t> distinct{};
  // Per row (empty: none), the coarse-bucket path the row must reach (CoarseBucket in
  // kernels/selection.cu, recomputed here from the reference scores): 1 the bucket holding the k-th
  // score has ≤ 512 keys (ranked directly), 2 in (512, 4096] (radix passes on the list), 3 more
  // (the global radix passes); 0 not checked.
  std::vector<int> expect_coarse{};
};

// The buffers of one run of the selection for a scenario.
struct Outputs {
  std::vector<float> scores, cumvar;
  std::vector<double> var;
  std::vector<int32_t> k, sel;
};

class DecodeSelectTest : public ::testing::Test {
 protected:
  void Run(const Scenario& sc) {
    SCOPED_TRACE(sc.name);
    const uint64_t seed = gsa::testing::FreshSeed();
    SCOPED_TRACE(::testing::Message() << "seed " << seed);
    std::mt19937_64 rng(seed);
    const int64_t rows = static_cast<int64_t>(sc.lengths.size());
    constexpr int32_t di = 64, nh = 4;
    int64_t max_len = 0, total_blocks = 0;
    for (int64_t len : sc.lengths) {
      max_len = std::max(max_len, len);
      total_blocks += (len + kBlockSize - 1) / kBlockSize;
    }
    const int64_t max_cand = sc.max_candidates > 0 ? sc.max_candidates : max_len;
    const int32_t max_blocks = static_cast<int32_t>((max_cand + kBlockSize - 1) / kBlockSize);
    const int64_t num_blocks = total_blocks + 3;
    std::vector<int32_t> perm(static_cast<size_t>(num_blocks));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<int32_t> tables(static_cast<size_t>(rows * max_blocks), 0);
    std::vector<int32_t> seq(static_cast<size_t>(rows)), pos(static_cast<size_t>(rows));
    std::vector<int64_t> slot(static_cast<size_t>(rows)), offsets(static_cast<size_t>(rows));
    std::vector<uint8_t> dense(static_cast<size_t>(rows), 0);
    auto slot_of = [&](int64_t r, int64_t p) {
      return static_cast<int64_t>(tables[r * max_blocks + p / kBlockSize]) * kBlockSize + p % kBlockSize;
    };
    int64_t next = 0, score_total = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t len = sc.lengths[r];
      for (int64_t b = 0; b < (len + kBlockSize - 1) / kBlockSize; ++b) tables[r * max_blocks + b] = perm[next++];
      seq[r] = static_cast<int32_t>(r);
      pos[r] = static_cast<int32_t>(len - 1);
      slot[r] = slot_of(r, pos[r]);
      dense[r] = r == sc.dense_row ? 1 : 0;
      offsets[r] = score_total;
      score_total += len + 5;  // a gap after each row catches overruns
    }
    const int64_t num_slots = num_blocks * kBlockSize;
    // Slots whose keys are 0: every slot (zero_keys) or those of odd rows' sequences.
    std::vector<uint8_t> zero_slot(static_cast<size_t>(num_slots), sc.zero_keys ? 1 : 0);
    auto zero_row = [&](int64_t r) { return sc.zero_keys || (sc.zero_odd_rows && r % 2 == 1); };
    for (int64_t r = 0; r < rows; ++r) {
      if (!zero_row(r)) continue;
      for (int64_t b = 0; b < (sc.lengths[r] + kBlockSize - 1) / kBlockSize; ++b) {
        for (int64_t o = 0; o < kBlockSize; ++o) zero_slot[tables[r * max_blocks + b] * kBlockSize + o] = 1;
      }
    }
    std::vector<bf16> keys(static_cast<size_t>(num_slots * di));
    {
      const std::vector<float> kf = RandomFloats(keys.size(), seed + 1);
      for (size_t i = 0; i < keys.size(); ++i) keys[i] = ToBf16(zero_slot[i / di] ? 0.0f : kf[i]);
    }
    for (int64_t r = 0; r < static_cast<int64_t>(sc.distinct.size()); ++r) {
      const int32_t d = sc.distinct[r];
      if (d <= 0) continue;
      for (int64_t p = d; p < sc.lengths[r]; ++p) {
        std::copy_n(keys.begin() + slot_of(r, p % d) * di, di, keys.begin() + slot_of(r, p) * di);
      }
    }
    std::vector<uint8_t> codes(sc.fp8 ? keys.size() : 1, 0);
    std::vector<float> scales(sc.fp8 ? static_cast<size_t>(num_slots) : 1, 1.0f);
    if (sc.fp8) {
      std::uniform_int_distribution<int> code(0, 255);
      std::uniform_real_distribution<float> scale(0.001f, 0.01f);
      for (uint8_t& c : codes) {
        c = static_cast<uint8_t>(code(rng));
        if ((c & 0x7F) == 0x7F) c = 0;  // e4m3 NaN codes: PostProjection never writes them
      }
      for (size_t i = 0; i < codes.size(); ++i) {
        if (zero_slot[i / di]) codes[i] = 0;
      }
      for (float& x : scales) x = scale(rng);
    }
    const int64_t stride = nh * di + nh + 3, off_qi = 1, off_wi = 1 + nh * di;
    std::vector<float> proj = RandomFloats(static_cast<size_t>(rows * stride), seed + 2, -2, 2);
    for (int64_t r = 0; r < rows; ++r) {
      for (int j = 0; j < nh; ++j) proj[r * stride + off_wi + j] = 0.5f + 0.5f * std::fabs(proj[r * stride + off_wi + j]);
    }
    const std::vector<float> bias = RandomFloats(nh, seed + 3, -0.5, 0.5);
    // Running variance sums of earlier positions: random, so the k rule has something to read.
    const std::vector<float> cumvar0 = RandomFloats(static_cast<size_t>(num_slots), seed + 4, 0.0f, 0.02f);
    std::vector<int32_t> first(static_cast<size_t>(rows + 1));
    std::iota(first.begin(), first.end(), 0);

    auto d_keys = Upload(keys);
    auto d_tables = Upload(tables);
    auto d_seq = Upload(seq);
    auto d_pos = Upload(pos);
    auto d_slot = Upload(slot);
    auto d_dense = Upload(dense);
    auto d_proj = Upload(proj);
    auto d_bias = Upload(bias);
    auto d_off = Upload(offsets);
    auto d_first = Upload(first);
    auto d_codes = Upload(codes);
    auto d_scales = Upload(scales);

    kernels::SelectionRule rule;
    rule.method = sc.method;
    rule.k_base = 2048;
    rule.k_min = 64;
    rule.k_max = kSelStride;
    rule.temperature = 1.0;

    auto make_index = [&](float* scores) {
      kernels::IndexerScoresArgs a;
      a.proj = d_proj.get();
      a.proj_stride = stride;
      a.off_qi = off_qi;
      a.off_wi = off_wi;
      a.bias = d_bias.get();
      a.ki_cache = d_keys.get();
      if (sc.fp8) {
        a.ki_cache = nullptr;
        a.ki_fp8 = d_codes.get();
        a.ki_scale = d_scales.get();
      }
      a.paged = {d_tables.get(), max_blocks, kBlockSize};
      a.rows.seq = d_seq.get();
      a.rows.position = d_pos.get();
      a.rows.slot = d_slot.get();
      a.rows.dense = d_dense.get();
      a.n_indexer_heads = nh;
      a.d_indexer = di;
      a.relu = sc.relu;
      a.scores = scores;
      a.score_offset = d_off.get();
      a.row_begin = 0;
      a.row_count = rows;
      a.max_candidates = max_cand;
      return a;
    };

    // Reference: the four separate launches.
    Outputs ref;
    {
      auto scores = Poisoned<float>(static_cast<size_t>(score_total));
      auto var = DeviceBuffer<double>::Allocate(static_cast<size_t>(rows));
      ASSERT_TRUE(var.ok());
      ASSERT_EQ(cudaMemset(var->get(), 0, var->bytes()), cudaSuccess);
      auto cumvar = Upload(cumvar0);
      auto k = Poisoned<int32_t>(static_cast<size_t>(rows));
      auto sel = Poisoned<int32_t>(static_cast<size_t>(rows * kSelStride));
      const size_t ws_bytes = std::max<size_t>(1, kernels::TopKWorkspaceBytes(rows, max_cand));
      auto ws = DeviceBuffer<uint8_t>::Allocate(ws_bytes);
      ASSERT_TRUE(ws.ok());
      const kernels::IndexerScoresArgs ia = make_index(scores.get());
      ASSERT_EQ(kernels::IndexerScores(ia, nullptr), cudaSuccess);
      kernels::ScoreChunk ch;
      ch.scores = scores.get();
      ch.score_offset = d_off.get();
      ch.row_begin = 0;
      ch.row_count = rows;
      ch.max_candidates = max_cand;
      if (sc.method == 1) {
        ASSERT_EQ(kernels::ScoreStats(ch, ia.rows, var->get(), nullptr, nullptr), cudaSuccess);
      }
      ASSERT_EQ(kernels::SelectionCounts(ch, ia.rows, ia.paged, d_first.get(), static_cast<int32_t>(rows), rule,
                                         var->get(), nullptr, cumvar.get(), k.get(), nullptr),
                cudaSuccess);
      ASSERT_EQ(kernels::TopK(ch, ia.rows, k.get(), sel.get(), kSelStride, ws->get(), ws->bytes(), nullptr),
                cudaSuccess);
      ref.scores = Download(scores);
      ref.var = Download(*var);
      ref.cumvar = Download(cumvar);
      ref.k = Download(k);
      ref.sel = Download(sel);
    }
    // The scenario reaches the coarse-bucket paths it is written for: the bucket holding each row's
    // k-th largest score, as the kernel computes it (inv = 2048 / Σ wI in float, then ⌊score · inv⌋).
    for (int64_t r = 0; r < static_cast<int64_t>(sc.expect_coarse.size()); ++r) {
      if (sc.expect_coarse[r] == 0) continue;
      float wsum = 0.0f;
      for (int j = 0; j < nh; ++j) wsum += proj[r * stride + off_wi + j];
      const float inv = 2048.0f / wsum;
      auto bucket = [&](float v) { return v > 0.0f ? static_cast<int32_t>(std::fmin(v * inv, 2047.0f)) : 0; };
      std::vector<float> row(ref.scores.begin() + offsets[r], ref.scores.begin() + offsets[r] + sc.lengths[r]);
      std::vector<float> sorted = row;
      std::sort(sorted.begin(), sorted.end(), std::greater<float>());
      const int32_t b = bucket(sorted[static_cast<size_t>(ref.k[r] - 1)]);
      const int64_t in_bucket = std::count_if(row.begin(), row.end(), [&](float v) { return bucket(v) == b; });
      const int reached = in_bucket <= 512 ? 1 : (in_bucket <= 4096 ? 2 : 3);
      ASSERT_EQ(reached, sc.expect_coarse[r]) << "row " << r << ": " << in_bucket << " keys in the k-th score's coarse bucket";
    }

    // The fused launch, twice on the same workspace (the first must leave it zeroed); the first
    // asks the occupancy itself, the second gets it from DecodeSelectPrepare (the backend's way).
    auto ws = DeviceBuffer<uint8_t>::Allocate(kernels::DecodeSelectWorkspaceBytes(rows));
    ASSERT_TRUE(ws.ok());
    ASSERT_EQ(cudaMemset(ws->get(), 0, ws->bytes()), cudaSuccess);
    Outputs got[2];
    for (int run = 0; run < 2; ++run) {
      auto scores = Poisoned<float>(static_cast<size_t>(score_total));
      auto var = Poisoned<double>(static_cast<size_t>(rows));
      auto cumvar = Upload(cumvar0);
      auto k = Poisoned<int32_t>(static_cast<size_t>(rows));
      auto sel = Poisoned<int32_t>(static_cast<size_t>(rows * kSelStride));
      kernels::DecodeSelectArgs a;
      a.index = make_index(scores.get());
      a.rule = rule;
      a.var = var.get();
      a.cumvar = cumvar.get();
      a.k = k.get();
      a.sel = sel.get();
      a.sel_stride = kSelStride;
      a.workspace = ws->get();
      a.workspace_bytes = ws->bytes();
      if (run == 1) {
        ASSERT_EQ(kernels::DecodeSelectPrepare(a.index.d_indexer, a.index.ki_fp8 != nullptr, &a.resident_blocks_per_sm),
                  cudaSuccess);
        ASSERT_GE(a.resident_blocks_per_sm, 1);
      }
      const cudaError_t err = kernels::DecodeSelect(a, nullptr);
      ASSERT_EQ(err, cudaSuccess) << cudaGetErrorString(err);
      got[run].scores = Download(scores);
      got[run].var = Download(var);
      got[run].cumvar = Download(cumvar);
      got[run].k = Download(k);
      got[run].sel = Download(sel);
    }

    for (int run = 0; run < 2; ++run) {
      SCOPED_TRACE(::testing::Message() << "run " << run);
      const Outputs& g = got[run];
      for (size_t i = 0; i < ref.scores.size(); ++i) {
        ASSERT_EQ(Bits(g.scores[i]), Bits(ref.scores[i])) << "score element " << i;
      }
      for (int64_t r = 0; r < rows; ++r) {
        SCOPED_TRACE(::testing::Message() << "row " << r << " length " << sc.lengths[r]);
        if (sc.method == 1 && !dense[r]) {
          ASSERT_NEAR(g.var[r], ref.var[r], 1e-12 * std::max(1e-30, std::fabs(ref.var[r])) + 1e-300);
        } else {
          const double v = g.var[r];
          uint64_t u;
          std::memcpy(&u, &v, 8);
          ASSERT_EQ(u, ~uint64_t{0}) << "var written although the rule does not use it";
        }
        ASSERT_EQ(g.k[r], ref.k[r]);
        if (sc.method == 0 || dense[r]) {
          ASSERT_EQ(Bits(g.cumvar[slot[r]]), Bits(ref.cumvar[slot[r]]));
        } else {
          ASSERT_NEAR(g.cumvar[slot[r]], ref.cumvar[slot[r]], 1e-6 * std::fabs(ref.cumvar[slot[r]]));
        }
        for (int64_t i = 0; i < kSelStride; ++i) {
          ASSERT_EQ(g.sel[r * kSelStride + i], ref.sel[r * kSelStride + i]) << "sel entry " << i;
        }
        if (zero_row(r) && !dense[r]) {  // all scores equal: the latest k positions, descending
          for (int32_t i = 0; i < g.k[r]; ++i) ASSERT_EQ(g.sel[r * kSelStride + i], pos[r] - i);
        }
      }
      // Nothing else of cumvar changed.
      for (int64_t s = 0; s < num_slots; ++s) {
        if (std::find(slot.begin(), slot.end(), s) != slot.end()) continue;
        ASSERT_EQ(Bits(g.cumvar[s]), Bits(cumvar0[s])) << "slot " << s;
      }
    }
    // Deterministic: both runs agree bit for bit.
    for (int64_t r = 0; r < rows; ++r) {
      uint64_t a, b;
      std::memcpy(&a, &got[0].var[r], 8);
      std::memcpy(&b, &got[1].var[r], 8);
      ASSERT_EQ(a, b);
    }
    ASSERT_EQ(got[0].sel, got[1].sel);
  }
};

TEST_F(DecodeSelectTest, FixedK128KRowWithShortAndDenseRows) {
  GSA_REQUIRE_GPU();
  Run({"fixed k", {131072, 70001, 4097, 2048, 300, 1, 9000}, 5, 0, false, 0});
}

TEST_F(DecodeSelectTest, VarianceRule128KRowWithShortAndDenseRows) {
  GSA_REQUIRE_GPU();
  Run({"variance", {131072, 70001, 4097, 2049, 300, 1, 9000}, 4, 0, false, 1});
}

TEST_F(DecodeSelectTest, GraphShapeMaxCandidatesAboveEveryRow) {
  GSA_REQUIRE_GPU();
  Run({"graph shape", {65536, 12345, 2}, -1, 131072 + 640, false, 1});
}

TEST_F(DecodeSelectTest, ManyRowsSlicesOutsideSharedMemory) {
  GSA_REQUIRE_GPU();
  std::vector<int64_t> lengths;
  std::mt19937 rng(7);
  for (int i = 0; i < 64; ++i) lengths.push_back(std::uniform_int_distribution<int64_t>(1, 131072)(rng));
  lengths[3] = 131072;
  Run({"64 rows", lengths, 10, 131072, false, 0});
}

TEST_F(DecodeSelectTest, AllEqualScoresKeepTheLatestPositions) {
  GSA_REQUIRE_GPU();
  Run({"ties", {131072, 5000, 2048, 1000}, -1, 0, true, 0});
}

// Rows of one launch taking different paths: all-tied rows need the global third radix pass, rows
// of random keys finish on the eq list (each row's blocks meet at their own barriers).
TEST_F(DecodeSelectTest, TiedAndRandomRowsInOneLaunch) {
  GSA_REQUIRE_GPU();
  Run({"mixed", {131072, 131072, 40000, 70000, 3000, 9000}, -1, 0, false, 0, false, true});
  Run({"mixed, variance", {70000, 131072, 40000, 5000}, 0, 0, false, 1, false, true});
}

// The coarse bucket's three outcomes in one launch: rows whose score values repeat (few distinct
// keys: 156, 1250 and 16384 copies of each value) put a few hundred, a few thousand or tens of
// thousands of keys in the k-th score's bucket (ranked in shared memory, radix passes on the list,
// the global radix passes; up to three values sharing a bucket keep each row on its path), beside
// random rows.
TEST_F(DecodeSelectTest, RepeatedScoresReachEveryCoarseBucketPath) {
  GSA_REQUIRE_GPU();
  Scenario sc{"repeated scores", {20000, 40000, 131072, 70000, 9000}, -1, 0, false, 0};
  sc.distinct = {128, 32, 8, 0, 0};
  sc.expect_coarse = {1, 2, 3, 1, 1};
  Run(sc);
  sc.name = "repeated scores, variance";
  sc.method = 1;
  sc.expect_coarse = {1, 2, 3, 0, 0};
  Run(sc);
}

// Relu indexers have no score bound, so no coarse histogram: the float key's radix passes, ending
// on the eq list (random rows) or the global third pass (all-tied rows).
TEST_F(DecodeSelectTest, ReluRowsTakeTheRadixPasses) {
  GSA_REQUIRE_GPU();
  Scenario sc{"relu", {131072, 131072, 40000, 70000, 3000}, 4, 0, false, 0, false, true};
  sc.relu = true;
  Run(sc);
}

TEST_F(DecodeSelectTest, Fp8KeysVarianceRule) {
  GSA_REQUIRE_GPU();
  Run({"fp8 keys", {131072, 40000, 3000, 1}, 2, 0, false, 1, true});
}

TEST_F(DecodeSelectTest, Fp8KeysAllZeroKeepTheLatestPositions) {
  GSA_REQUIRE_GPU();
  Run({"fp8 ties", {131072, 700}, -1, 0, true, 0, true});
}

TEST(DecodeSelectKernel, UnsupportedShapesLaunchNothing) {
  GSA_REQUIRE_GPU();
  kernels::DecodeSelectArgs a;
  a.index.row_count = 65;
  a.index.max_candidates = 100;
  a.index.d_indexer = 64;
  a.index.n_indexer_heads = 4;
  EXPECT_EQ(kernels::DecodeSelect(a, nullptr), cudaErrorNotSupported);  // more than 64 rows
  a.index.row_count = 2;
  a.rule.method = 2;
  EXPECT_EQ(kernels::DecodeSelect(a, nullptr), cudaErrorNotSupported);  // entropy rule
  a.rule.method = 0;
  EXPECT_EQ(kernels::DecodeSelect(a, nullptr), cudaErrorNotSupported);  // no workspace
  int32_t per_sm = 0;
  EXPECT_EQ(kernels::DecodeSelectPrepare(48, false, &per_sm), cudaErrorNotSupported);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

}  // namespace
}  // namespace gsa
