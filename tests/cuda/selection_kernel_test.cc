// GPU tests of kernels/selection.h (ScoreStats, SelectionCounts, TopK) against the CPU oracle of
// engine/backend/selection.h, on fresh random inputs (the seed is printed on failure). Outputs are
// poisoned (0xFF bytes) before each launch and every element is checked: written entries equal the
// oracle exactly, everything else keeps the poison.
#include "kernels/selection.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend/cuda/device_buffer.h"
#include "engine/backend/selection.h"
#include "engine/model/config.h"
#include "gtest/gtest.h"
#include "tests/testing/cuda_test_support.h"

namespace gsa {
namespace {

using ::gsa::testing::Bits;
using ::gsa::testing::FreshSeed;
using ::gsa::testing::kPoisonByte;

// ---- Plumbing: failures throw, and the test reports the exception ------------------------------

void CheckCuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
  }
}
#define SEL_CUDA(call) CheckCuda((call), #call)

template <typename T>
DeviceBuffer<T> Upload(const std::vector<T>& host) {
  absl::StatusOr<DeviceBuffer<T>> b = DeviceBuffer<T>::FromHost(host);
  if (!b.ok()) throw std::runtime_error(b.status().ToString());
  return std::move(b).value();
}

template <typename T>
DeviceBuffer<T> AllocPoisoned(size_t count) {
  absl::StatusOr<DeviceBuffer<T>> b = DeviceBuffer<T>::Allocate(count);
  if (!b.ok()) throw std::runtime_error(b.status().ToString());
  if (count > 0) SEL_CUDA(cudaMemset(b->get(), kPoisonByte, count * sizeof(T)));
  return std::move(b).value();
}

template <typename T>
std::vector<T> Download(const DeviceBuffer<T>& b) {
  absl::StatusOr<std::vector<T>> h = b.ToHost();
  if (!h.ok()) throw std::runtime_error(h.status().ToString());
  return std::move(h).value();
}

template <typename T>
bool IsPoison(const T& v) {
  unsigned char bytes[sizeof(T)];
  std::memcpy(bytes, &v, sizeof(T));
  for (unsigned char c : bytes) {
    if (c != static_cast<unsigned char>(kPoisonByte)) return false;
  }
  return true;
}

float FloatFromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ---- Score generators --------------------------------------------------------------------------

enum class Dist {
  kUniform,      // uniform in [-1, 1): almost no ties
  kPositive,     // uniform in [0, 4): sigmoid-indexer-like
  kQuantised,    // a few levels, −0 and +0 among them: heavy ties
  kSpecial,      // uniform with NaN (both signs), ±inf, ±0, denormals, ±FLT_MAX and repeats
  kSignedZeros,  // mostly ±0 (all equal), a few 1.0, some NaN and −inf (equal to each other)
  kAllEqual,     // every score the same
};
constexpr Dist kAllDists[] = {Dist::kUniform, Dist::kPositive, Dist::kQuantised,
                              Dist::kSpecial, Dist::kSignedZeros, Dist::kAllEqual};
constexpr int kNumDists = 6;

const char* DistName(Dist d) {
  switch (d) {
    case Dist::kUniform: return "uniform";
    case Dist::kPositive: return "positive";
    case Dist::kQuantised: return "quantised";
    case Dist::kSpecial: return "special";
    case Dist::kSignedZeros: return "signed-zeros";
    case Dist::kAllEqual: return "all-equal";
  }
  return "?";
}

std::vector<float> MakeScores(int64_t n, Dist dist, std::mt19937_64& rng) {
  std::vector<float> s(static_cast<size_t>(n));
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  std::uniform_real_distribution<float> pos(0.0f, 4.0f);
  std::uniform_int_distribution<int> pct(0, 99);
  const float nan_pos = FloatFromBits(0x7FC00000u);
  const float nan_neg = FloatFromBits(0xFFC00000u);
  const float inf = std::numeric_limits<float>::infinity();
  switch (dist) {
    case Dist::kUniform:
      for (float& x : s) x = uni(rng);
      break;
    case Dist::kPositive:
      for (float& x : s) x = pos(rng);
      break;
    case Dist::kQuantised: {
      static const float kLevels[] = {-1.0f, -0.25f, -0.0f, 0.0f, 0.0f, 0.25f, 0.5f, 0.75f, 1.0f};
      std::uniform_int_distribution<int> lv(0, 8);
      for (float& x : s) x = kLevels[lv(rng)];
      break;
    }
    case Dist::kSpecial: {
      static const float kSpecials[] = {nan_pos, nan_neg, inf, -inf, -0.0f, 0.0f,
                                        std::numeric_limits<float>::denorm_min(),
                                        -std::numeric_limits<float>::denorm_min(),
                                        FLT_MAX, -FLT_MAX, 0.5f, -0.5f};
      std::uniform_int_distribution<int> sp(0, 11);
      for (float& x : s) x = pct(rng) < 3 ? kSpecials[sp(rng)] : uni(rng);
      break;
    }
    case Dist::kSignedZeros:
      for (float& x : s) {
        const int p = pct(rng);
        x = p < 2 ? 1.0f : p < 5 ? nan_pos : p < 8 ? -inf : (p & 1) ? -0.0f : 0.0f;
      }
      break;
    case Dist::kAllEqual: {
      const float v = uni(rng);
      for (float& x : s) x = v;
      break;
    }
  }
  return s;
}

// ---- Top-k harness -----------------------------------------------------------------------------

constexpr int64_t kRowsAfter = 3;  // rows past the chunk (never touched)

// The rows of one step: [0, row_begin) and kRowsAfter rows after the chunk lie outside it.
struct TopKRows {
  int64_t row_begin = 0;
  std::vector<int64_t> n;  // per chunk row: position + 1
  std::vector<int32_t> k;
  std::vector<uint8_t> dense;
  std::vector<std::vector<float>> scores;  // empty for dense rows
  std::vector<std::string> label;

  void Add(std::vector<float> s, int32_t kk, const std::string& what) {
    n.push_back(static_cast<int64_t>(s.size()));
    k.push_back(kk);
    dense.push_back(0);
    scores.push_back(std::move(s));
    label.push_back(what);
  }
  void AddDense(int64_t candidates) {
    n.push_back(candidates);
    k.push_back(7);  // a dense row's k must be ignored
    dense.push_back(1);
    scores.emplace_back();
    label.push_back("dense");
  }
  int64_t row_count() const { return static_cast<int64_t>(n.size()); }
  int64_t num_rows() const { return row_begin + row_count() + kRowsAfter; }
  int64_t max_candidates() const {
    int64_t m = 0;
    for (int64_t i = 0; i < row_count(); ++i) {
      if (!dense[static_cast<size_t>(i)]) m = std::max(m, n[static_cast<size_t>(i)]);
    }
    return m;
  }
};

struct TopKDevice {
  DeviceBuffer<float> scores;
  DeviceBuffer<int64_t> offset;
  DeviceBuffer<int32_t> seq, position, k;
  DeviceBuffer<int64_t> slot;
  DeviceBuffer<uint8_t> dense;
  kernels::ScoreChunk chunk;
  kernels::RowInfo rows;
  int64_t num_rows = 0;
};

// Chunk rows laid out in shuffled order with NaN gaps: neither packed, ordered nor aligned. Rows
// outside the chunk look like ordinary sparse rows (position 9, k 5), so touching them shows.
TopKDevice UploadRows(const TopKRows& in, std::mt19937_64& rng) {
  const int64_t rc = in.row_count();
  const int64_t nr = in.num_rows();
  std::vector<int64_t> order(static_cast<size_t>(rc));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  std::uniform_int_distribution<int> gap(0, 37);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> flat;
  std::vector<int64_t> offset(static_cast<size_t>(rc), 0);
  for (int64_t i : order) {
    flat.insert(flat.end(), static_cast<size_t>(gap(rng)), nan);
    offset[static_cast<size_t>(i)] = static_cast<int64_t>(flat.size());
    const std::vector<float>& s = in.scores[static_cast<size_t>(i)];
    flat.insert(flat.end(), s.begin(), s.end());
  }
  flat.push_back(nan);
  std::vector<int32_t> seq(static_cast<size_t>(nr), 0), position(static_cast<size_t>(nr), 9),
      k(static_cast<size_t>(nr), 5);
  std::vector<int64_t> slot(static_cast<size_t>(nr), 0);
  std::vector<uint8_t> dense(static_cast<size_t>(nr), 0);
  for (int64_t i = 0; i < rc; ++i) {
    const size_t r = static_cast<size_t>(in.row_begin + i);
    position[r] = static_cast<int32_t>(in.n[static_cast<size_t>(i)] - 1);
    k[r] = in.k[static_cast<size_t>(i)];
    dense[r] = in.dense[static_cast<size_t>(i)];
    slot[r] = static_cast<int64_t>(r);
  }
  TopKDevice d;
  d.scores = Upload(flat);
  d.offset = Upload(offset);
  d.seq = Upload(seq);
  d.position = Upload(position);
  d.k = Upload(k);
  d.slot = Upload(slot);
  d.dense = Upload(dense);
  d.chunk.scores = d.scores.get();
  d.chunk.score_offset = d.offset.get();
  d.chunk.row_begin = in.row_begin;
  d.chunk.row_count = rc;
  d.chunk.max_candidates = in.max_candidates();
  d.rows.seq = d.seq.get();
  d.rows.position = d.position.get();
  d.rows.slot = d.slot.get();
  d.rows.dense = d.dense.get();
  d.num_rows = nr;
  return d;
}

struct TopKResult {
  std::vector<int32_t> sel;
  bool multi_block = false;
};

// One TopK launch. allow_multi: a workspace sized by TopKWorkspaceBytes (poisoned) is passed;
// otherwise none. max_candidates: chunk.max_candidates (−1: the true maximum).
TopKResult RunTopK(const TopKDevice& d, int64_t stride, bool allow_multi, int64_t max_candidates = -1) {
  DeviceBuffer<int32_t> sel = AllocPoisoned<int32_t>(static_cast<size_t>(d.num_rows * stride));
  kernels::ScoreChunk chunk = d.chunk;
  if (max_candidates >= 0) chunk.max_candidates = max_candidates;
  const size_t ws_bytes = allow_multi ? kernels::TopKWorkspaceBytes(chunk.row_count, chunk.max_candidates) : 0;
  DeviceBuffer<uint8_t> ws = AllocPoisoned<uint8_t>(ws_bytes);
  TopKResult res;
  res.multi_block = kernels::TopKUsesMultiBlock(chunk.row_count, chunk.max_candidates, ws.get(), ws_bytes);
  SEL_CUDA(kernels::TopK(chunk, d.rows, d.k.get(), sel.get(), stride, ws.get(), ws_bytes, nullptr));
  SEL_CUDA(cudaDeviceSynchronize());
  res.sel = Download(sel);
  return res;
}

// The CPU oracle per chunk row (empty for dense rows).
std::vector<std::vector<int32_t>> TopKOracle(const TopKRows& in) {
  std::vector<std::vector<int32_t>> want(static_cast<size_t>(in.row_count()));
  std::vector<int32_t> scratch;
  for (int64_t i = 0; i < in.row_count(); ++i) {
    const size_t u = static_cast<size_t>(i);
    if (in.dense[u]) continue;
    SelectTopK(in.scores[u].data(), in.n[u], in.k[u], want[u], scratch);  // k ≥ n: every position, descending
  }
  return want;
}

void ExpectTopK(const TopKRows& in, const std::vector<std::vector<int32_t>>& want, int64_t stride,
                const std::vector<int32_t>& sel, const std::string& what) {
  ASSERT_EQ(static_cast<int64_t>(sel.size()), in.num_rows() * stride);
  int reported = 0;
  for (int64_t r = 0; r < in.num_rows(); ++r) {
    const int64_t i = r - in.row_begin;
    const bool in_chunk = i >= 0 && i < in.row_count();
    const std::vector<int32_t>* w =
        in_chunk && !in.dense[static_cast<size_t>(i)] ? &want[static_cast<size_t>(i)] : nullptr;
    int64_t bad = 0, first = -1;
    for (int64_t j = 0; j < stride; ++j) {
      const int32_t got = sel[static_cast<size_t>(r * stride + j)];
      const int32_t expect = (w != nullptr && j < static_cast<int64_t>(w->size())) ? (*w)[static_cast<size_t>(j)] : -1;
      if (got != expect) {
        if (first < 0) first = j;
        ++bad;
      }
    }
    if (bad > 0) {
      const int32_t got = sel[static_cast<size_t>(r * stride + first)];
      const int32_t expect =
          (w != nullptr && first < static_cast<int64_t>(w->size())) ? (*w)[static_cast<size_t>(first)] : -1;
      ADD_FAILURE() << what << ": row " << r
                    << (in_chunk ? " (" + in.label[static_cast<size_t>(i)] + ", n=" +
                                       std::to_string(in.n[static_cast<size_t>(i)]) +
                                       ", k=" + std::to_string(in.k[static_cast<size_t>(i)]) + ")"
                                 : std::string(" (outside the chunk)"))
                    << ": " << bad << " wrong entries; first at " << first << ": want " << expect << ", got " << got;
      if (++reported >= 10) return;
    }
  }
}

// ---- Top-k tests -------------------------------------------------------------------------------

TEST(SelectionTopKKernel, RealShapesRaggedBatchBothPaths) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  TopKRows in;
  in.row_begin = 2;
  const int64_t sizes[] = {1, 7, 64, 2047, 2048, 2049, 4095, 4096, 4097, 131072, 1048576};
  const int32_t ks[] = {1, 256, 2048, 4096, 8192};
  int d = 0;
  for (int64_t n : sizes) {
    for (int32_t k : ks) {
      const Dist dist = kAllDists[d % kNumDists];
      ++d;
      in.Add(MakeScores(n, dist, rng), k, DistName(dist));
      if (d % 11 == 0) in.AddDense(1000 + d);
    }
  }
  ASSERT_LE(in.row_count(), 64);
  const int64_t stride = 8192;
  const std::vector<std::vector<int32_t>> want = TopKOracle(in);
  const TopKDevice dev = UploadRows(in, rng);

  const TopKResult single = RunTopK(dev, stride, /*allow_multi=*/false);
  EXPECT_FALSE(single.multi_block);
  ExpectTopK(in, want, stride, single.sel, "one block per row");

  const TopKResult multi = RunTopK(dev, stride, /*allow_multi=*/true);
  EXPECT_TRUE(multi.multi_block) << "a ragged batch of ≤ 64 rows up to 1M candidates should split rows";
  ExpectTopK(in, want, stride, multi.sel, "multi-block");
  EXPECT_TRUE(single.sel == multi.sel);
}

TEST(SelectionTopKKernel, BatchOne128KRowMultiBlock) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t n = 131072;
  const int64_t stride = 8192;
  for (Dist dist : kAllDists) {
    for (int32_t k : {2048, 1, 256, 4096, 8192}) {
      SCOPED_TRACE(::testing::Message() << DistName(dist) << " k=" << k);
      TopKRows in;
      in.Add(MakeScores(n, dist, rng), k, DistName(dist));
      const std::vector<std::vector<int32_t>> want = TopKOracle(in);
      const TopKDevice dev = UploadRows(in, rng);
      const TopKResult multi = RunTopK(dev, stride, true);
      EXPECT_TRUE(multi.multi_block);
      ExpectTopK(in, want, stride, multi.sel, "multi-block");
      const TopKResult single = RunTopK(dev, stride, false);
      EXPECT_FALSE(single.multi_block);
      ExpectTopK(in, want, stride, single.sel, "one block");
    }
  }
}

TEST(SelectionTopKKernel, MaxCandidatesOnlyChangesTheSplit) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t stride = 4096;
  TopKRows in;
  in.row_begin = 1;
  in.Add(MakeScores(131072, Dist::kQuantised, rng), 4096, "quantised");
  in.Add(MakeScores(90001, Dist::kSignedZeros, rng), 3000, "signed-zeros");
  const std::vector<std::vector<int32_t>> want = TopKOracle(in);
  const TopKDevice dev = UploadRows(in, rng);
  // An under-estimate (the last block of each row takes the rest), an over-estimate (blocks past
  // the row's end do nothing) and "unknown".
  for (int64_t mc : {int64_t{20000}, int64_t{1} << 20, int64_t{0}}) {
    SCOPED_TRACE(::testing::Message() << "max_candidates " << mc);
    const TopKResult res = RunTopK(dev, stride, true, mc);
    EXPECT_EQ(res.multi_block, mc != 0);
    ExpectTopK(in, want, stride, res.sel, "max_candidates");
  }
}

TEST(SelectionTopKKernel, SmallBatchMixedRowsMultiBlock) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  TopKRows in;
  in.row_begin = 1;
  in.Add(MakeScores(131072, Dist::kUniform, rng), 2048, "uniform");
  in.Add(MakeScores(70001, Dist::kQuantised, rng), 4096, "quantised");
  in.AddDense(131072);
  in.Add(MakeScores(16384, Dist::kSpecial, rng), 8192, "special");
  in.Add(MakeScores(4097, Dist::kSignedZeros, rng), 256, "signed-zeros");
  in.Add(MakeScores(1, Dist::kUniform, rng), 2048, "one candidate");
  in.Add(MakeScores(2049, Dist::kPositive, rng), 8192, "k > n");
  in.Add(MakeScores(100000, Dist::kAllEqual, rng), 1, "all-equal");
  in.AddDense(5);
  in.Add(MakeScores(131072, Dist::kQuantised, rng), 8192, "quantised");
  in.Add(MakeScores(50000, Dist::kSignedZeros, rng), 300, "signed-zeros");
  in.Add(MakeScores(8192, Dist::kPositive, rng), 8192, "k == n");
  const int64_t stride = 8192;
  const std::vector<std::vector<int32_t>> want = TopKOracle(in);
  const TopKDevice dev = UploadRows(in, rng);
  const TopKResult multi = RunTopK(dev, stride, true);
  EXPECT_TRUE(multi.multi_block);
  ExpectTopK(in, want, stride, multi.sel, "multi-block");
  const TopKResult single = RunTopK(dev, stride, false);
  ExpectTopK(in, want, stride, single.sel, "one block per row");
}

// A prefill chunk: consecutive positions of two sequences, adaptive-like k per row, dense rows in
// between; too many rows for the multi-block path.
TEST(SelectionTopKKernel, PrefillChunkAdaptiveK) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  TopKRows in;
  in.row_begin = 7;
  std::uniform_int_distribution<int32_t> kd(256, 4096);
  std::uniform_int_distribution<int> pick(0, 9);
  auto adaptive_k = [&](int64_t n) -> int32_t {
    switch (pick(rng)) {
      case 0: return 1;
      case 1: return 8192;
      case 2: return static_cast<int32_t>(std::min<int64_t>(n, 8192));
      default: return kd(rng);
    }
  };
  for (int64_t pos = 3000; pos < 3200; ++pos) {
    in.Add(MakeScores(pos + 1, pos % 3 == 0 ? Dist::kQuantised : Dist::kPositive, rng), adaptive_k(pos + 1),
           "seq A");
  }
  for (int64_t pos = 0; pos < 20; ++pos) in.AddDense(pos + 1);
  for (int64_t pos = 20000; pos < 20040; ++pos) {
    in.Add(MakeScores(pos + 1, pos % 2 == 0 ? Dist::kSpecial : Dist::kUniform, rng), adaptive_k(pos + 1), "seq B");
  }
  const int64_t stride = 8192;
  const std::vector<std::vector<int32_t>> want = TopKOracle(in);
  const TopKDevice dev = UploadRows(in, rng);
  const TopKResult res = RunTopK(dev, stride, true);
  EXPECT_FALSE(res.multi_block);
  ExpectTopK(in, want, stride, res.sel, "prefill chunk");
}

// One block per row on long rows samples a threshold first (kernels/selection.cu, "Sampled"):
// rows whose sample is unrepresentative must still come out exact. The sample reads runs of 8
// scores every n/1024 positions, so at n = 131072 the positions p with p % 128 < 8 are sampled:
// high there and low elsewhere (too few scores reach the threshold), low there and high elsewhere
// (too many do), and ordinary rows around them (the sample works).
TEST(SelectionTopKKernel, SampledThresholdStaysExactWhenTheSampleMisleads) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t n = 131072;
  std::uniform_real_distribution<float> uni(0.0f, 1.0f);
  TopKRows in;
  for (int32_t k : {2048, 256, 4096}) {
    std::vector<float> high_sampled(static_cast<size_t>(n)), low_sampled(static_cast<size_t>(n));
    for (int64_t p = 0; p < n; ++p) {
      const bool sampled = p % 128 < 8;
      high_sampled[static_cast<size_t>(p)] = uni(rng) + (sampled ? 10.0f : 0.0f);
      low_sampled[static_cast<size_t>(p)] = uni(rng) - (sampled ? 10.0f : 0.0f);
    }
    in.Add(std::move(high_sampled), k, "sampled positions high");
    in.Add(std::move(low_sampled), k, "sampled positions low");
    in.Add(MakeScores(n, Dist::kPositive, rng), k, "positive");
    in.Add(MakeScores(n, Dist::kUniform, rng), k, "uniform");
  }
  const int64_t stride = 4096;
  const std::vector<std::vector<int32_t>> want = TopKOracle(in);
  const TopKDevice dev = UploadRows(in, rng);
  const TopKResult single = RunTopK(dev, stride, /*allow_multi=*/false);
  EXPECT_FALSE(single.multi_block);
  ExpectTopK(in, want, stride, single.sel, "one block per row, sampled threshold");
}

// The tie rule spelled out (independently of the oracle): equal scores → the later position.
TEST(SelectionTopKKernel, TiesPreferTheLaterPosition) {
  GSA_REQUIRE_GPU();
  const int64_t n = 131072;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  TopKRows in;
  // 1: all 0.25 except position 5 = 1.0; k = 3 → {n-1, n-2, 5}.
  std::vector<float> a(n, 0.25f);
  a[5] = 1.0f;
  in.Add(a, 3, "one high");
  // 2: −0 and +0 alternate (equal); NaN everywhere else ranks as −inf; k = 4 → the 4 latest zeros.
  std::vector<float> b(n, nan);
  for (int64_t p = 100; p < 110; ++p) b[p] = (p & 1) ? -0.0f : 0.0f;
  in.Add(b, 4, "signed zeros");
  // 3: NaN and −inf only (equal): k = 2 → {n-1, n-2}.
  std::vector<float> c(n, -inf);
  for (int64_t p = 0; p < n; p += 3) c[p] = nan;
  in.Add(c, 2, "nan = -inf");
  // 4: the 5 largest are across the row; the sixth is tied 3 ways; k = 6 → the latest of the three.
  std::vector<float> e(n, -1.0f);
  for (int64_t p : {7, 50000, 90000, 120000, 131000}) e[static_cast<size_t>(p)] = 2.0f;
  for (int64_t p : {3, 60000, 100000}) e[static_cast<size_t>(p)] = 1.5f;
  in.Add(e, 6, "tie at the threshold");
  const std::vector<std::vector<int32_t>> explicit_want = {
      {static_cast<int32_t>(n - 1), static_cast<int32_t>(n - 2), 5},
      {109, 108, 107, 106},
      {static_cast<int32_t>(n - 1), static_cast<int32_t>(n - 2)},
      {131000, 120000, 100000, 90000, 50000, 7}};
  ASSERT_EQ(TopKOracle(in), explicit_want) << "the CPU oracle disagrees with the tie rule";
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  const TopKDevice dev = UploadRows(in, rng);
  const int64_t stride = 16;
  const TopKResult multi = RunTopK(dev, stride, true);
  EXPECT_TRUE(multi.multi_block);
  ExpectTopK(in, explicit_want, stride, multi.sel, "multi-block");
  const TopKResult single = RunTopK(dev, stride, false);
  ExpectTopK(in, explicit_want, stride, single.sel, "one block per row");
}

TEST(SelectionTopKKernel, Deterministic) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  TopKRows in;
  in.Add(MakeScores(131072, Dist::kQuantised, rng), 2048, "quantised");
  in.Add(MakeScores(131072, Dist::kSignedZeros, rng), 4096, "signed-zeros");
  in.Add(MakeScores(50000, Dist::kUniform, rng), 8192, "uniform");
  in.AddDense(77);
  const int64_t stride = 8192;
  const std::vector<std::vector<int32_t>> want = TopKOracle(in);
  const TopKDevice dev = UploadRows(in, rng);
  for (bool multi : {true, false}) {
    SCOPED_TRACE(multi ? "multi-block" : "one block per row");
    const TopKResult a = RunTopK(dev, stride, multi);
    const TopKResult b = RunTopK(dev, stride, multi);
    EXPECT_EQ(a.multi_block, multi);
    EXPECT_TRUE(a.sel == b.sel) << "two runs differ";
    ExpectTopK(in, want, stride, a.sel, "determinism");
  }
}

// ---- ScoreStats --------------------------------------------------------------------------------

void ExpectClose(double got, double want, const std::string& what) {
  if (std::isnan(want)) {
    EXPECT_TRUE(std::isnan(got)) << what << ": want NaN, got " << got;
    return;
  }
  const double tol = 1e-9 * std::fabs(want) + 1e-13;
  EXPECT_NEAR(got, want, tol) << what;
}

TEST(SelectionScoreStatsKernel, MatchesCpuVarianceAndEntropy) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  TopKRows in;
  in.row_begin = 3;
  const int64_t sizes[] = {1, 2, 7, 64, 2047, 2048, 2049, 131072, 1048576};
  int d = 0;
  for (int64_t n : sizes) {
    in.Add(MakeScores(n, d % 2 == 0 ? Dist::kPositive : Dist::kUniform, rng), 1, "stats");
    ++d;
    if (d % 3 == 0) in.AddDense(n);
  }
  in.Add(MakeScores(5000, Dist::kQuantised, rng), 1, "quantised");
  in.Add(MakeScores(3000, Dist::kAllEqual, rng), 1, "all-equal");
  {  // large mean, tiny spread: the two-pass formula matters
    std::vector<float> s = MakeScores(100000, Dist::kPositive, rng);
    for (float& x : s) x = 1000.0f + x * 2.5e-4f;
    in.Add(std::move(s), 1, "offset");
  }
  {  // a NaN makes both statistics NaN, as on the CPU
    std::vector<float> s = MakeScores(1000, Dist::kUniform, rng);
    s[500] = std::numeric_limits<float>::quiet_NaN();
    in.Add(std::move(s), 1, "nan");
  }
  const TopKDevice dev = UploadRows(in, rng);
  const size_t nr = static_cast<size_t>(in.num_rows());

  DeviceBuffer<double> var = AllocPoisoned<double>(nr);
  DeviceBuffer<double> ent = AllocPoisoned<double>(nr);
  SEL_CUDA(kernels::ScoreStats(dev.chunk, dev.rows, var.get(), ent.get(), nullptr));
  SEL_CUDA(cudaDeviceSynchronize());
  const std::vector<double> v1 = Download(var), e1 = Download(ent);

  for (size_t r = 0; r < nr; ++r) {
    const int64_t i = static_cast<int64_t>(r) - in.row_begin;
    const bool writes = i >= 0 && i < in.row_count() && !in.dense[static_cast<size_t>(i)];
    if (!writes) {
      EXPECT_TRUE(IsPoison(v1[r])) << "row " << r << " var written";
      EXPECT_TRUE(IsPoison(e1[r])) << "row " << r << " entropy written";
      continue;
    }
    const std::vector<float>& s = in.scores[static_cast<size_t>(i)];
    const int64_t n = static_cast<int64_t>(s.size());
    const std::string what = "row " + std::to_string(r) + " (" + in.label[static_cast<size_t>(i)] +
                             ", n=" + std::to_string(n) + ")";
    ExpectClose(v1[r], ScoreVariance(s.data(), n), what + " variance");
    ExpectClose(e1[r], ScoreEntropy(s.data(), n), what + " entropy");
  }

  // Without entropy: the same variance bit for bit, entropy untouched; and a rerun is identical.
  DeviceBuffer<double> var2 = AllocPoisoned<double>(nr);
  SEL_CUDA(kernels::ScoreStats(dev.chunk, dev.rows, var2.get(), nullptr, nullptr));
  SEL_CUDA(kernels::ScoreStats(dev.chunk, dev.rows, var.get(), ent.get(), nullptr));
  SEL_CUDA(cudaDeviceSynchronize());
  const std::vector<double> v2 = Download(var2), v3 = Download(var), e3 = Download(ent);
  EXPECT_EQ(std::memcmp(v1.data(), v2.data(), nr * sizeof(double)), 0) << "variance depends on entropy";
  EXPECT_EQ(std::memcmp(v1.data(), v3.data(), nr * sizeof(double)), 0) << "variance not deterministic";
  EXPECT_EQ(std::memcmp(e1.data(), e3.data(), nr * sizeof(double)), 0) << "entropy not deterministic";
}

// ---- SelectionCounts ---------------------------------------------------------------------------

constexpr int32_t kBlockSize = 16;
constexpr int32_t kMaxBlocksPerSeq = 48;  // positions < 768
constexpr int32_t kNumSeqs = 4;

int64_t HostSlot(const std::vector<int32_t>& tables, int32_t seq, int64_t pos) {
  return static_cast<int64_t>(tables[static_cast<size_t>(seq * kMaxBlocksPerSeq + pos / kBlockSize)]) * kBlockSize +
         pos % kBlockSize;
}

// The rows of one step: sequence s contributes positions [begin[s], end[s]), in order.
struct CountStep {
  std::vector<int32_t> seq, position;
  std::vector<int64_t> slot;
  std::vector<uint8_t> dense;
  std::vector<int32_t> seq_first_row;
  std::vector<double> var, entropy;
};

CountStep MakeStep(const std::vector<int32_t>& tables, const int64_t (&begin)[kNumSeqs],
                   const int64_t (&end)[kNumSeqs], const bool (&dense)[kNumSeqs], const ModelConfig& c,
                   std::mt19937_64& rng) {
  CountStep st;
  std::uniform_real_distribution<double> vd(0.0, 0.05);
  std::uniform_real_distribution<double> unit(0.0, 1.2);
  const bool variance = c.use_adaptive_k && c.adaptive_k_method == AdaptiveKMethod::kVariance;
  for (int32_t s = 0; s < kNumSeqs; ++s) {
    st.seq_first_row.push_back(static_cast<int32_t>(st.seq.size()));
    for (int64_t p = begin[s]; p < end[s]; ++p) {
      st.seq.push_back(s);
      st.position.push_back(static_cast<int32_t>(p));
      st.slot.push_back(HostSlot(tables, s, p));
      st.dense.push_back(dense[s] ? 1 : 0);
      // The CPU backend passes var = 0 unless the method is variance; one row has var exactly 0.
      st.var.push_back(variance && p != begin[s] ? vd(rng) : 0.0);
      st.entropy.push_back(unit(rng) * std::log(static_cast<double>(p) + 2.0));
    }
  }
  st.seq_first_row.push_back(static_cast<int32_t>(st.seq.size()));
  return st;
}

// The CPU backend's steps 3-4 (cpu_backend.cc), row by row.
void HostCounts(const CountStep& st, const std::vector<int32_t>& tables, const ModelConfig& c,
                std::vector<float>& cumvar, std::vector<int32_t>& k) {
  k.assign(st.seq.size(), 0);
  for (size_t r = 0; r < st.seq.size(); ++r) {
    const int64_t pos = st.position[r];
    float& cum = cumvar[static_cast<size_t>(st.slot[r])];
    if (st.dense[r]) {
      cum = std::numeric_limits<float>::quiet_NaN();
      k[r] = static_cast<int32_t>(pos + 1);
      continue;
    }
    const double prev = pos > 0 ? cumvar[static_cast<size_t>(HostSlot(tables, st.seq[r], pos - 1))] : 0.0;
    cum = static_cast<float>(prev + st.var[r]);
    const double ref = static_cast<double>(cum) / static_cast<double>(pos + 1);
    k[r] = static_cast<int32_t>(SelectedCount(c, pos, st.var[r], ref, st.entropy[r]));
  }
}

kernels::SelectionRule RuleOf(const ModelConfig& c) {
  kernels::SelectionRule rule;
  rule.method = !c.use_adaptive_k ? 0 : c.adaptive_k_method == AdaptiveKMethod::kVariance ? 1 : 2;
  rule.k_base = c.k_base;
  rule.k_min = c.k_min;
  rule.k_max = c.k_max;
  rule.temperature = c.adaptive_k_temperature;
  return rule;
}

TEST(SelectionCountsKernel, MatchesCpuAcrossChunksWithPagedRunningSum) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);

  auto config = [](bool adaptive, AdaptiveKMethod method, int64_t k_base, int64_t k_min, int64_t k_max,
                   double temperature) {
    ModelConfig c;
    c.use_adaptive_k = adaptive;
    c.adaptive_k_method = method;
    c.k_base = k_base;
    c.k_min = k_min;
    c.k_max = k_max;
    c.adaptive_k_temperature = temperature;
    return c;
  };
  const std::vector<ModelConfig> configs = {
      config(false, AdaptiveKMethod::kVariance, 64, 16, 128, 1.0),
      config(true, AdaptiveKMethod::kVariance, 64, 16, 128, 1.0),
      config(true, AdaptiveKMethod::kVariance, 2048, 256, 4096, 0.7),
      config(true, AdaptiveKMethod::kEntropy, 64, 16, 128, 1.0),
      config(true, AdaptiveKMethod::kEntropy, 2048, 256, 4096, 1.3),
  };

  for (size_t ci = 0; ci < configs.size(); ++ci) {
    const ModelConfig& c = configs[ci];
    SCOPED_TRACE(::testing::Message() << "config " << ci);
    // A non-identity block table: every sequence gets distinct, shuffled physical blocks.
    const int32_t num_blocks = kNumSeqs * kMaxBlocksPerSeq + 5;
    std::vector<int32_t> perm(static_cast<size_t>(num_blocks));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<int32_t> tables(perm.begin(), perm.begin() + kNumSeqs * kMaxBlocksPerSeq);
    const int64_t num_slots = static_cast<int64_t>(num_blocks) * kBlockSize;
    // Earlier history (e.g. the slots of positions 99 and 499) holds arbitrary running sums.
    std::vector<float> cum_host(static_cast<size_t>(num_slots));
    std::uniform_real_distribution<float> hist(0.0f, 3.0f);
    for (float& x : cum_host) x = hist(rng);

    // Sequences: 0 sparse from position 0; 1 sparse continuing at 100; 2 dense; 3 sparse decode.
    const bool dense[kNumSeqs] = {false, false, true, false};
    const int64_t b1[kNumSeqs] = {0, 100, 0, 500}, e1[kNumSeqs] = {37, 117, 21, 501};
    const int64_t b2[kNumSeqs] = {37, 117, 21, 501}, e2[kNumSeqs] = {66, 118, 26, 502};
    const CountStep step1 = MakeStep(tables, b1, e1, dense, c, rng);
    const CountStep step2 = MakeStep(tables, b2, e2, dense, c, rng);

    DeviceBuffer<int32_t> d_tables = Upload(tables);
    DeviceBuffer<float> d_cum = Upload(cum_host);
    kernels::PagedLayout paged;
    paged.block_tables = d_tables.get();
    paged.max_blocks_per_seq = kMaxBlocksPerSeq;
    paged.block_size = kBlockSize;
    const kernels::SelectionRule rule = RuleOf(c);

    int step_index = 0;
    for (const CountStep* st : {&step1, &step2}) {
      ++step_index;
      SCOPED_TRACE(::testing::Message() << "step " << step_index);
      const int64_t nrows = static_cast<int64_t>(st->seq.size());
      DeviceBuffer<int32_t> d_seq = Upload(st->seq), d_pos = Upload(st->position), d_first = Upload(st->seq_first_row);
      DeviceBuffer<int64_t> d_slot = Upload(st->slot);
      DeviceBuffer<uint8_t> d_dense = Upload(st->dense);
      DeviceBuffer<double> d_var = Upload(st->var), d_ent = Upload(st->entropy);
      DeviceBuffer<int32_t> d_k = AllocPoisoned<int32_t>(static_cast<size_t>(nrows));
      kernels::RowInfo rows;
      rows.seq = d_seq.get();
      rows.position = d_pos.get();
      rows.slot = d_slot.get();
      rows.dense = d_dense.get();
      // Step 2 in two launches split inside sequence 0's rows: the second reads the first's sums.
      const int64_t split = step_index == 1 ? nrows : 13;
      // Fixed k reads var as zeros: exercise var == nullptr there in step 2.
      const double* var_ptr = (rule.method == 0 && step_index == 2) ? nullptr : d_var.get();
      kernels::ScoreChunk chunk;
      chunk.row_begin = 0;
      chunk.row_count = split;
      SEL_CUDA(kernels::SelectionCounts(chunk, rows, paged, d_first.get(), kNumSeqs, rule, var_ptr, d_ent.get(),
                                        d_cum.get(), d_k.get(), nullptr));
      SEL_CUDA(cudaDeviceSynchronize());
      if (split < nrows) {
        const std::vector<int32_t> k_part = Download(d_k);
        for (int64_t r = split; r < nrows; ++r) {
          EXPECT_TRUE(IsPoison(k_part[static_cast<size_t>(r)])) << "row " << r << " outside the chunk was written";
        }
        chunk.row_begin = split;
        chunk.row_count = nrows - split;
        SEL_CUDA(kernels::SelectionCounts(chunk, rows, paged, d_first.get(), kNumSeqs, rule, var_ptr, d_ent.get(),
                                          d_cum.get(), d_k.get(), nullptr));
        SEL_CUDA(cudaDeviceSynchronize());
      }
      std::vector<int32_t> k_want;
      HostCounts(*st, tables, c, cum_host, k_want);
      const std::vector<int32_t> k_got = Download(d_k);
      const std::vector<float> cum_got = Download(d_cum);
      for (int64_t r = 0; r < nrows; ++r) {
        EXPECT_EQ(k_got[static_cast<size_t>(r)], k_want[static_cast<size_t>(r)])
            << "row " << r << " seq " << st->seq[static_cast<size_t>(r)] << " position "
            << st->position[static_cast<size_t>(r)];
      }
      int bad = 0;
      for (int64_t s = 0; s < num_slots && bad < 10; ++s) {
        const uint32_t got = Bits(cum_got[static_cast<size_t>(s)]);
        const uint32_t want = Bits(cum_host[static_cast<size_t>(s)]);
        if (got != want) {
          ++bad;
          ADD_FAILURE() << "cumvar slot " << s << ": want " << cum_host[static_cast<size_t>(s)] << " (0x" << std::hex
                        << want << "), got " << cum_got[static_cast<size_t>(s)] << " (0x" << got << ")" << std::dec;
        }
      }
    }
  }
}

}  // namespace
}  // namespace gsa
