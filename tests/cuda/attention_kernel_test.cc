// kernels/attention.h (GatheredAttention) against an fp64 CPU reference of MODEL.md's o_h and
// output gate (the CPU backend's RunLayer step 5), computed from the same bf16 q, K and V:
// sparse rows (lists of 1, 37, 2048 and adaptive-like counts, descending or shuffled), dense rows
// (contexts 1, 63, 64, 65, 1000), one 131072-token decode row (dense and 2048-sparse), ragged
// batches, d_head 32/64/128/256, groups 1…8 (also 3 and 5), block sizes 16 and 64 with shuffled
// physical blocks shared between sequences, each gate activation and no gate, batch 1 (many
// splits) and 64 (few), small or no workspace, bitwise determinism. Outputs (and the workspace)
// are poisoned with 0xFF bytes before every launch; every element of a listed row is checked and
// every unlisted row must still be poison.
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
#include <utility>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "engine/backend/cuda/device_buffer.h"
#include "kernels/attention.h"
#include "kernels/sparse_prefill.h"
#include "tests/testing/cuda_test_support.h"

namespace gsa {
namespace {

using kernels::bf16;
using kernels::GateActivation;
using gsa::testing::FromBf16;
using gsa::testing::ToBf16;

uint64_t TestSeed() {
  if (const char* s = std::getenv("GSA_TEST_SEED"); s != nullptr && *s != '\0') {
    return std::strtoull(s, nullptr, 0);
  }
  return gsa::testing::FreshSeed();
}

// splitmix64: fast enough to fill 10⁸ values (the 128K-context cache) in well under a second.
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t Next() {
    uint64_t z = (s_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float Uniform(float lo, float hi) {
    return lo + (hi - lo) * static_cast<float>(Next() >> 40) * (1.0f / 16777216.0f);
  }
  int64_t Below(int64_t n) { return static_cast<int64_t>(Next() % static_cast<uint64_t>(n)); }
  int64_t Between(int64_t lo, int64_t hi) { return lo + Below(hi - lo + 1); }  // inclusive

 private:
  uint64_t s_;
};

uint16_t Bits(bf16 b) {
  uint16_t u;
  std::memcpy(&u, &b, 2);
  return u;
}

template <typename T>
DeviceBuffer<T> Upload(const std::vector<T>& v) {
  auto b = DeviceBuffer<T>::FromHost(v);
  EXPECT_TRUE(b.ok()) << b.status();
  if (!b.ok()) return DeviceBuffer<T>();
  return std::move(*b);
}

struct Shape {
  int32_t n_heads = 8, n_kv_heads = 4, d_head = 128, block_size = 64;
};

struct RowSpec {
  int32_t seq = 0;
  int32_t position = 0;
  bool dense = false;
  int64_t k = 0;          // sparse: how many distinct positions ≤ position (clamped to position + 1)
  bool shuffled = false;  // sparse: list in random order (else descending, as TopK writes it)
};

struct Spec {
  Shape shape;
  std::vector<int64_t> contexts;  // per sequence: tokens in the cache (> every row's position)
  std::vector<RowSpec> rows;
  // Per row, when present and not empty: a sparse row's exact positions (distinct, ≤ position).
  std::vector<std::vector<int32_t>> lists;
  bool gate = false;
  GateActivation act = GateActivation::kSigmoid;
  float q_range = 3.0f;  // q ~ U(-q_range, q_range): scores of a few units, softmax far from flat
};

// A step's inputs on the host. K, V and q are bf16; the reference reads the same bf16 values.
struct Problem {
  Shape shape;
  int64_t num_slots = 0;
  int32_t max_blocks_per_seq = 0;
  std::vector<int32_t> block_tables;  // [num_seqs, max_blocks_per_seq]
  std::vector<bf16> k, v;             // [num_slots, n_kv_heads, d_head]
  std::vector<bf16> q;                // [rows, n_heads, d_head]
  std::vector<int32_t> seq, position;
  std::vector<uint8_t> dense;
  std::vector<int64_t> slot;
  std::vector<std::vector<int32_t>> lists;  // per row: the positions it attends to
  int64_t sel_stride = 0;
  std::vector<int32_t> sel, sel_count;
  bool gate = false;
  GateActivation act = GateActivation::kSigmoid;
  int64_t gate_stride = 0;
  std::vector<float> gate_z, gate_bias;

  int64_t rows() const { return static_cast<int64_t>(seq.size()); }
  int64_t SlotOf(int32_t s, int64_t pos) const {
    const int32_t bs = shape.block_size;
    return static_cast<int64_t>(block_tables[static_cast<size_t>(s) * max_blocks_per_seq + pos / bs]) * bs + pos % bs;
  }
};

Problem Build(const Spec& sp, uint64_t seed) {
  Rng rng(seed);
  Problem p;
  p.shape = sp.shape;
  const int32_t bs = sp.shape.block_size;
  const int32_t H = sp.shape.n_heads, Hkv = sp.shape.n_kv_heads, D = sp.shape.d_head;
  // Physical blocks: a pool that fits the longest sequence (plus a few spare); every sequence
  // takes a fresh random permutation of the pool, so tables are shuffled and sequences share
  // physical blocks (reads only: the kernel does not care, and the cache stays small).
  int64_t max_blocks = 1;
  for (int64_t c : sp.contexts) max_blocks = std::max<int64_t>(max_blocks, (c + bs - 1) / bs);
  const int64_t pool = max_blocks + 3;
  p.max_blocks_per_seq = static_cast<int32_t>(max_blocks + 2);  // padding entries: valid but unused
  p.num_slots = pool * bs;
  std::vector<int32_t> perm(static_cast<size_t>(pool));
  for (size_t s = 0; s < sp.contexts.size(); ++s) {
    std::iota(perm.begin(), perm.end(), 0);
    for (int64_t i = pool - 1; i > 0; --i) std::swap(perm[static_cast<size_t>(i)], perm[static_cast<size_t>(rng.Below(i + 1))]);
    for (int32_t b = 0; b < p.max_blocks_per_seq; ++b) {
      p.block_tables.push_back(perm[static_cast<size_t>(b % pool)]);
    }
  }
  const size_t cache_elems = static_cast<size_t>(p.num_slots) * Hkv * D;
  p.k.resize(cache_elems);
  p.v.resize(cache_elems);
  for (size_t i = 0; i < cache_elems; ++i) p.k[i] = ToBf16(rng.Uniform(-1.0f, 1.0f));
  for (size_t i = 0; i < cache_elems; ++i) p.v[i] = ToBf16(rng.Uniform(-1.0f, 1.0f));

  const int64_t rows = static_cast<int64_t>(sp.rows.size());
  std::vector<int32_t> all;
  for (size_t ri = 0; ri < sp.rows.size(); ++ri) {
    const RowSpec& rs = sp.rows[ri];
    const std::vector<int32_t>* explicit_list = ri < sp.lists.size() && !sp.lists[ri].empty() ? &sp.lists[ri] : nullptr;
    const int64_t t = rs.position;
    if (rs.seq < 0 || static_cast<size_t>(rs.seq) >= sp.contexts.size() || t < 0 ||
        t >= sp.contexts[static_cast<size_t>(rs.seq)]) {
      ADD_FAILURE() << "bad test spec: row at position " << t << " of sequence " << rs.seq;
      return p;
    }
    p.seq.push_back(rs.seq);
    p.position.push_back(rs.position);
    p.dense.push_back(rs.dense ? 1 : 0);
    p.slot.push_back(p.SlotOf(rs.seq, t));
    std::vector<int32_t> list;
    if (rs.dense) {
      list.resize(static_cast<size_t>(t + 1));
      std::iota(list.begin(), list.end(), 0);
    } else if (explicit_list != nullptr) {
      list = *explicit_list;
      std::vector<int32_t> sorted = list;
      std::sort(sorted.begin(), sorted.end());
      if (sorted.front() < 0 || sorted.back() > t || std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
        ADD_FAILURE() << "bad test spec: explicit list of the row at position " << t;
        return p;
      }
    } else {
      const int64_t k = std::clamp<int64_t>(rs.k, 1, t + 1);
      all.resize(static_cast<size_t>(t + 1));
      std::iota(all.begin(), all.end(), 0);
      for (int64_t i = 0; i < k; ++i) {  // partial Fisher-Yates: k distinct positions
        std::swap(all[static_cast<size_t>(i)], all[static_cast<size_t>(rng.Between(i, t))]);
      }
      list.assign(all.begin(), all.begin() + k);
      if (!rs.shuffled) std::sort(list.begin(), list.end(), std::greater<int32_t>());
    }
    p.lists.push_back(std::move(list));
  }
  // sel: [rows, sel_stride], stride a little wider than the longest list; unused entries hold
  // values that would be wrong to read. Dense rows get a decoy list (count 1, position 0): the
  // kernel must ignore it.
  int64_t longest = 1;
  for (int64_t r = 0; r < rows; ++r) {
    if (!p.dense[static_cast<size_t>(r)]) longest = std::max<int64_t>(longest, static_cast<int64_t>(p.lists[static_cast<size_t>(r)].size()));
  }
  p.sel_stride = longest + 3;
  p.sel.assign(static_cast<size_t>(rows * p.sel_stride), 0x7fffffff);
  p.sel_count.assign(static_cast<size_t>(rows), 1);
  for (int64_t r = 0; r < rows; ++r) {
    if (p.dense[static_cast<size_t>(r)]) {
      p.sel[static_cast<size_t>(r * p.sel_stride)] = 0;
      continue;
    }
    const std::vector<int32_t>& l = p.lists[static_cast<size_t>(r)];
    std::copy(l.begin(), l.end(), p.sel.begin() + r * p.sel_stride);
    p.sel_count[static_cast<size_t>(r)] = static_cast<int32_t>(l.size());
  }
  p.q.resize(static_cast<size_t>(rows) * H * D);
  for (bf16& x : p.q) x = ToBf16(rng.Uniform(-sp.q_range, sp.q_range));
  p.gate = sp.gate;
  p.act = sp.act;
  p.gate_stride = static_cast<int64_t>(H) * D + 7;
  p.gate_z.resize(static_cast<size_t>(rows * p.gate_stride));
  for (float& z : p.gate_z) z = rng.Uniform(-4.0f, 4.0f);
  p.gate_bias.resize(static_cast<size_t>(H) * D);
  for (float& b : p.gate_bias) b = rng.Uniform(-1.0f, 1.0f);
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

// o for every head of row r, [n_heads * d_head], as RunLayer step 5 computes it (in fp64).
std::vector<double> Reference(const Problem& p, int64_t r) {
  const int32_t H = p.shape.n_heads, Hkv = p.shape.n_kv_heads, D = p.shape.d_head, group = H / Hkv;
  const std::vector<int32_t>& list = p.lists[static_cast<size_t>(r)];
  const size_t n = list.size();
  std::vector<double> o(static_cast<size_t>(H) * D, 0.0);
  std::vector<float> kf(n * D), vf(n * D);
  std::vector<double> sc(n);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  for (int32_t kvh = 0; kvh < Hkv; ++kvh) {
    for (size_t i = 0; i < n; ++i) {  // gather the group's rows once
      const size_t base = (static_cast<size_t>(p.SlotOf(p.seq[static_cast<size_t>(r)], list[i])) * Hkv + kvh) * D;
      for (int32_t d = 0; d < D; ++d) {
        kf[i * D + d] = FromBf16(p.k[base + d]);
        vf[i * D + d] = FromBf16(p.v[base + d]);
      }
    }
    for (int32_t g = 0; g < group; ++g) {
      const int32_t h = kvh * group + g;
      std::vector<double> q(static_cast<size_t>(D));
      for (int32_t d = 0; d < D; ++d) q[d] = FromBf16(p.q[(static_cast<size_t>(r) * H + h) * D + d]);
      double mx = -INFINITY;
      for (size_t i = 0; i < n; ++i) {
        double dot = 0.0;
        for (int32_t d = 0; d < D; ++d) dot += q[d] * kf[i * D + d];
        sc[i] = dot * scale;
        mx = std::max(mx, sc[i]);
      }
      double sum = 0.0;
      for (size_t i = 0; i < n; ++i) {
        sc[i] = std::exp(sc[i] - mx);
        sum += sc[i];
      }
      double* oh = o.data() + static_cast<size_t>(h) * D;
      for (size_t i = 0; i < n; ++i) {
        const double w = sc[i] / sum;
        for (int32_t d = 0; d < D; ++d) oh[d] += w * vf[i * D + d];
      }
      if (p.gate) {
        for (int32_t d = 0; d < D; ++d) {
          const size_t col = static_cast<size_t>(h) * D + d;
          oh[d] *= GateRef(p.act, static_cast<double>(p.gate_z[static_cast<size_t>(r * p.gate_stride) + col]) +
                                      static_cast<double>(p.gate_bias[col]));
        }
      }
    }
  }
  return o;
}

// Device copies of a Problem (uploaded once, launched several times).
struct DeviceProblem {
  DeviceBuffer<bf16> q, k, v;
  DeviceBuffer<int32_t> tables, seq, position, sel, sel_count;
  DeviceBuffer<uint8_t> dense;
  DeviceBuffer<int64_t> slot;
  DeviceBuffer<float> gate_z, gate_bias;
};

DeviceProblem UploadProblem(const Problem& p) {
  DeviceProblem d;
  d.q = Upload(p.q);
  d.k = Upload(p.k);
  d.v = Upload(p.v);
  d.tables = Upload(p.block_tables);
  d.seq = Upload(p.seq);
  d.position = Upload(p.position);
  d.sel = Upload(p.sel);
  d.sel_count = Upload(p.sel_count);
  d.dense = Upload(p.dense);
  d.slot = Upload(p.slot);
  d.gate_z = Upload(p.gate_z);
  d.gate_bias = Upload(p.gate_bias);
  return d;
}

enum class Workspace {
  kFull,      // GatheredAttentionWorkspaceBytes(num_row_ids, …)
  kOneRow,    // sized for one row only: fewer splits when more rows are listed
  kNone,      // null: one split, written directly
};

// One launch over `row_ids` (the output and the workspace poisoned first); the whole output
// buffer [rows, n_heads * d_head] comes back. Empty on a failure (already reported).
std::vector<bf16> Launch(const Problem& p, const DeviceProblem& d, const std::vector<int32_t>& row_ids,
                         Workspace ws = Workspace::kFull, const uint8_t* row_skip = nullptr,
                         const DeviceBuffer<bf16>* out_in = nullptr, int32_t resident_blocks_per_sm = 0,
                         const DeviceBuffer<uint32_t>* split_counters = nullptr) {
  const int32_t H = p.shape.n_heads, D = p.shape.d_head;
  DeviceBuffer<int32_t> ids = Upload(row_ids);
  // The output: a fresh poisoned buffer, or `out_in` as it is (what an earlier kernel wrote).
  DeviceBuffer<bf16> own;
  if (out_in == nullptr) {
    auto o = DeviceBuffer<bf16>::Allocate(static_cast<size_t>(p.rows()) * H * D);
    EXPECT_TRUE(o.ok()) << o.status();
    if (!o.ok()) return {};
    own = std::move(*o);
    EXPECT_EQ(cudaMemset(own.get(), gsa::testing::kPoisonByte, own.bytes()), cudaSuccess);
  }
  const DeviceBuffer<bf16>* out = out_in != nullptr ? out_in : &own;
  size_t ws_bytes = 0;
  if (ws == Workspace::kFull) ws_bytes = kernels::GatheredAttentionWorkspaceBytes(static_cast<int64_t>(row_ids.size()), H, D);
  if (ws == Workspace::kOneRow) ws_bytes = kernels::GatheredAttentionWorkspaceBytes(1, H, D);
  DeviceBuffer<uint8_t> work;
  if (ws_bytes > 0) {
    auto w = DeviceBuffer<uint8_t>::Allocate(ws_bytes);
    EXPECT_TRUE(w.ok()) << w.status();
    if (!w.ok()) return {};
    work = std::move(*w);
    EXPECT_EQ(cudaMemset(work.get(), gsa::testing::kPoisonByte, work.bytes()), cudaSuccess);
  }
  if (::testing::Test::HasFailure()) return {};

  int64_t max_tokens = 0;
  for (int32_t r : row_ids) max_tokens = std::max<int64_t>(max_tokens, static_cast<int64_t>(p.lists[static_cast<size_t>(r)].size()));
  kernels::GatheredAttentionArgs a;
  a.q = d.q.get();
  a.k_cache = d.k.get();
  a.v_cache = d.v.get();
  a.paged.block_tables = d.tables.get();
  a.paged.max_blocks_per_seq = p.max_blocks_per_seq;
  a.paged.block_size = p.shape.block_size;
  a.rows.seq = d.seq.get();
  a.rows.position = d.position.get();
  a.rows.slot = d.slot.get();
  a.rows.dense = d.dense.get();
  a.row_ids = ids.get();
  a.num_row_ids = static_cast<int64_t>(row_ids.size());
  a.row_skip = row_skip;
  a.sel = d.sel.get();
  a.sel_count = d.sel_count.get();
  a.sel_stride = p.sel_stride;
  a.max_tokens = max_tokens;
  if (p.gate) {
    a.gate_z = d.gate_z.get();
    a.gate_stride = p.gate_stride;
    a.gate_bias = d.gate_bias.get();
    a.gate_act = p.act;
  }
  a.n_heads = H;
  a.n_kv_heads = p.shape.n_kv_heads;
  a.d_head = D;
  a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  a.out = out->get();
  a.workspace = ws_bytes > 0 ? work.get() : nullptr;
  a.workspace_bytes = ws_bytes;
  a.resident_blocks_per_sm = resident_blocks_per_sm;
  if (split_counters != nullptr) {
    a.split_counters = split_counters->get();
    a.split_counter_count = split_counters->size();
  }
  EXPECT_EQ(kernels::GatheredAttention(a, nullptr), cudaSuccess);
  const cudaError_t sync = cudaDeviceSynchronize();
  EXPECT_EQ(sync, cudaSuccess) << cudaGetErrorString(sync);
  if (::testing::Test::HasFailure()) return {};
  auto host = out->ToHost();
  EXPECT_TRUE(host.ok()) << host.status();
  if (!host.ok()) return {};
  return std::move(*host);
}

std::vector<int32_t> AllRows(const Problem& p) {
  std::vector<int32_t> ids(static_cast<size_t>(p.rows()));
  std::iota(ids.begin(), ids.end(), 0);
  return ids;
}

// Reference outputs, computed once per row and reused by every launch of a test.
class ReferenceCache {
 public:
  explicit ReferenceCache(const Problem& p) : p_(p), ref_(static_cast<size_t>(p.rows())) {}
  const std::vector<double>& Get(int64_t r) {
    std::vector<double>& v = ref_[static_cast<size_t>(r)];
    if (v.empty()) v = Reference(p_, r);
    return v;
  }

 private:
  const Problem& p_;
  std::vector<std::vector<double>> ref_;
};

// Listed rows: per (row, head) vector, relative L2 error ≤ 1e-2 (or, for O(1) values, max abs
// error ≤ 2e-2), no NaN or inf. Unlisted rows: every element still the 0xFF poison.
void ExpectMatches(const Problem& p, ReferenceCache& refs, const std::vector<int32_t>& row_ids,
                   const std::vector<bf16>& out) {
  const int32_t H = p.shape.n_heads, D = p.shape.d_head;
  ASSERT_EQ(out.size(), static_cast<size_t>(p.rows()) * H * D);
  std::vector<uint8_t> listed(static_cast<size_t>(p.rows()), 0);
  for (int32_t r : row_ids) listed[static_cast<size_t>(r)] = 1;
  int reported = 0;
  int64_t bad = 0, non_finite = 0, unpoisoned = 0;
  double worst = 0.0;
  for (int64_t r = 0; r < p.rows(); ++r) {
    const bf16* o = out.data() + static_cast<size_t>(r) * H * D;
    if (!listed[static_cast<size_t>(r)]) {
      for (int64_t i = 0; i < static_cast<int64_t>(H) * D; ++i) unpoisoned += Bits(o[i]) != 0xFFFFu;
      continue;
    }
    const std::vector<double>& ref = refs.Get(r);
    for (int32_t h = 0; h < H; ++h) {
      double err2 = 0.0, ref2 = 0.0, max_abs = 0.0, ref_inf = 0.0;
      bool finite = true;
      for (int32_t d = 0; d < D; ++d) {
        const double got = FromBf16(o[h * D + d]);
        const double want = ref[static_cast<size_t>(h) * D + d];
        if (!std::isfinite(got)) finite = false;
        err2 += (got - want) * (got - want);
        ref2 += want * want;
        max_abs = std::max(max_abs, std::fabs(got - want));
        ref_inf = std::max(ref_inf, std::fabs(want));
      }
      const double rel = ref2 > 0.0 ? std::sqrt(err2 / ref2) : (err2 > 0.0 ? INFINITY : 0.0);
      const bool ok = finite && (rel <= 1e-2 || (ref_inf >= 0.25 && max_abs <= 2e-2));
      if (finite) worst = std::max(worst, rel);
      non_finite += !finite;
      if (!ok) {
        ++bad;
        if (reported++ < 8) {
          ADD_FAILURE() << "row " << r << " (seq " << p.seq[static_cast<size_t>(r)] << ", position "
                        << p.position[static_cast<size_t>(r)] << (p.dense[static_cast<size_t>(r)] ? ", dense" : ", sparse")
                        << ", " << p.lists[static_cast<size_t>(r)].size() << " positions) head " << h
                        << ": relative L2 error " << rel << ", max abs error " << max_abs << ", |ref|inf " << ref_inf
                        << (finite ? "" : ", NON-FINITE output") << "; got[0] " << FromBf16(o[h * D])
                        << " want[0] " << ref[static_cast<size_t>(h) * D];
        }
      }
    }
  }
  EXPECT_EQ(bad, 0) << "bad (row, head) vectors; worst finite relative error " << worst;
  EXPECT_EQ(non_finite, 0) << "(row, head) vectors with NaN or inf";
  EXPECT_EQ(unpoisoned, 0) << "elements of unlisted rows written";
}

void ExpectBitwiseEqual(const std::vector<bf16>& a, const std::vector<bf16>& b) {
  ASSERT_EQ(a.size(), b.size());
  int64_t diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff += Bits(a[i]) != Bits(b[i]);
  EXPECT_EQ(diff, 0) << "elements differ between two launches of the same batch";
}

// With split counters the last block of each (row, KV head) merges the splits itself: for each
// listing, the same bits as the merge kernel (row `skipped` set in row_skip for both), twice on
// one set of counters, which every launch must leave at zero.
void ExpectMergeInKernelIsTheMergeKernel(const Problem& p, const DeviceProblem& d,
                                         const std::vector<std::vector<int32_t>>& listings, int32_t skipped) {
  auto counters = DeviceBuffer<uint32_t>::Allocate(static_cast<size_t>(p.rows()) * p.shape.n_kv_heads);
  ASSERT_TRUE(counters.ok()) << counters.status();
  ASSERT_EQ(cudaMemset(counters->get(), 0, counters->bytes()), cudaSuccess);
  std::vector<uint8_t> skip(static_cast<size_t>(p.rows()), 0);
  skip[static_cast<size_t>(skipped)] = 1;
  DeviceBuffer<uint8_t> skip_d = Upload(skip);
  for (const std::vector<int32_t>& ids : listings) {
    SCOPED_TRACE(::testing::Message() << "merge in the kernel, " << ids.size() << " listed rows");
    const std::vector<bf16> by_kernel = Launch(p, d, ids, Workspace::kFull, skip_d.get());
    for (int rep = 0; rep < 2; ++rep) {
      ExpectBitwiseEqual(by_kernel, Launch(p, d, ids, Workspace::kFull, skip_d.get(), nullptr, 0, &*counters));
      auto left = counters->ToHost();
      ASSERT_TRUE(left.ok()) << left.status();
      EXPECT_EQ(std::count(left->begin(), left->end(), 0u), static_cast<std::ptrdiff_t>(left->size()))
          << "a split counter was left non-zero";
    }
  }
}

// Launches `row_ids` and checks it against the reference; returns the output.
std::vector<bf16> RunAndCheck(const Problem& p, const DeviceProblem& d, ReferenceCache& refs,
                              const std::vector<int32_t>& row_ids, Workspace ws = Workspace::kFull) {
  std::vector<bf16> out = Launch(p, d, row_ids, ws);
  if (!out.empty()) ExpectMatches(p, refs, row_ids, out);
  return out;
}

#define SEED_TRACE(seed) SCOPED_TRACE(::testing::Message() << "seed " << (seed) << " (GSA_TEST_SEED to replay)")

// ─────────────────────────────────────────────────────────────────────────────────────────────

TEST(AttentionKernel, SparseListsOfManySizes) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SEED_TRACE(seed);
  Rng rng(seed ^ 0x51);
  Spec sp;
  sp.shape = {8, 4, 128, 64};  // GQA 2:1
  sp.contexts = {4096, 3000};
  sp.rows = {
      {0, 4095, false, 1},    {0, 4095, false, 37},          {0, 4095, false, 2048},
      {0, 2047, false, 2048},  // every position
      {1, 2999, false, 700, true}, {1, 1500, false, 256},   {0, 100, false, 37, true},
      {1, 2999, false, 1, true},   {1, 0, false, 1},         {0, 4095, false, 4096},
  };
  for (int i = 0; i < 6; ++i) {  // adaptive-like: k between k_min and k_max, capped at t + 1
    const int32_t s = static_cast<int32_t>(rng.Below(2));
    const int32_t t = static_cast<int32_t>(rng.Between(0, sp.contexts[static_cast<size_t>(s)] - 1));
    sp.rows.push_back({s, t, false, rng.Between(256, 4096), rng.Below(2) == 1});
  }
  const Problem p = Build(sp, seed);
  ASSERT_FALSE(::testing::Test::HasFailure());
  const DeviceProblem d = UploadProblem(p);
  ASSERT_FALSE(::testing::Test::HasFailure());
  ReferenceCache refs(p);
  RunAndCheck(p, d, refs, AllRows(p));
  for (int32_t r : {0, 1, 2, 3, 4}) {  // batch 1: many splits
    SCOPED_TRACE(::testing::Message() << "batch of row " << r);
    RunAndCheck(p, d, refs, {r});
  }
  RunAndCheck(p, d, refs, {9, 2, 14, 5});  // a subset, out of order
}

TEST(AttentionKernel, DenseRowsAtShortContexts) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SEED_TRACE(seed);
  for (int32_t bs : {16, 64}) {
    SCOPED_TRACE(::testing::Message() << "block_size " << bs);
    Spec sp;
    sp.shape = {8, 2, 128, bs};  // GQA 4:1
    sp.contexts = {1, 63, 64, 65, 1000};
    for (int32_t s = 0; s < 5; ++s) sp.rows.push_back({s, static_cast<int32_t>(sp.contexts[static_cast<size_t>(s)] - 1), true});
    for (int32_t t : {0, 1, 15, 16, 62, 63, 64, 127, 128, 999}) sp.rows.push_back({4, t, true});  // prefill-like
    const Problem p = Build(sp, seed + static_cast<uint64_t>(bs));
    ASSERT_FALSE(::testing::Test::HasFailure());
    const DeviceProblem d = UploadProblem(p);
    ASSERT_FALSE(::testing::Test::HasFailure());
    ReferenceCache refs(p);
    RunAndCheck(p, d, refs, AllRows(p));
    for (int32_t r = 0; r < 5; ++r) {
      SCOPED_TRACE(::testing::Message() << "batch of row " << r);
      RunAndCheck(p, d, refs, {r});
    }
  }
}

// A head layout: query heads and KV heads.
struct Heads {
  int32_t n_heads, n_kv_heads;
};

TEST(AttentionKernel, EveryHeadSizeAndGroupSize) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SEED_TRACE(seed);
  int config = 0;
  for (int32_t dh : {32, 64, 128, 256}) {
    for (const Heads hd : {Heads{2, 2}, Heads{4, 2}, Heads{8, 2}, Heads{6, 2}, Heads{8, 1}, Heads{5, 1}, Heads{14, 2}}) {
      ++config;
      SCOPED_TRACE(::testing::Message() << "d_head " << dh << ", " << hd.n_heads << " heads / " << hd.n_kv_heads
                                        << " KV heads");
      Spec sp;
      sp.shape = {hd.n_heads, hd.n_kv_heads, dh, config % 2 == 0 ? 16 : 64};
      sp.contexts = {700, 1300};
      sp.rows = {{1, 1299, true},         {0, 699, false, 300},         {0, 0, false, 1},
                 {1, 1000, false, 37, true}, {1, 64, true},              {1, 1299, false, 1024},
                 {0, 650, false, 651}};
      sp.gate = config % 3 != 0;
      sp.act = static_cast<GateActivation>(config % 3);
      const Problem p = Build(sp, seed + static_cast<uint64_t>(config));
      ASSERT_FALSE(::testing::Test::HasFailure());
      const DeviceProblem d = UploadProblem(p);
      ASSERT_FALSE(::testing::Test::HasFailure());
      ReferenceCache refs(p);
      RunAndCheck(p, d, refs, AllRows(p));
      RunAndCheck(p, d, refs, {5});  // batch 1
      ExpectMergeInKernelIsTheMergeKernel(p, d, {AllRows(p), {5}, {0}, {4, 0, 2}}, 2);
      if (::testing::Test::HasFailure()) return;  // one failing shape is enough output
    }
  }
}

TEST(AttentionKernel, OutputGateEachActivationAndOff) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SEED_TRACE(seed);
  for (int mode = 0; mode < 4; ++mode) {  // 0: no gate; 1…3: sigmoid, tanh, silu
    SCOPED_TRACE(::testing::Message() << "gate mode " << mode);
    Spec sp;
    sp.shape = {8, 4, 128, 64};
    sp.contexts = {5000, 400};
    sp.rows = {{0, 4999, false, 2048}, {1, 333, true}, {0, 2000, false, 37, true}, {1, 399, false, 100}};
    sp.gate = mode > 0;
    sp.act = static_cast<GateActivation>(std::max(mode - 1, 0));
    const Problem p = Build(sp, seed + static_cast<uint64_t>(mode));
    ASSERT_FALSE(::testing::Test::HasFailure());
    const DeviceProblem d = UploadProblem(p);
    ASSERT_FALSE(::testing::Test::HasFailure());
    ReferenceCache refs(p);
    RunAndCheck(p, d, refs, AllRows(p));
    RunAndCheck(p, d, refs, {0});
    RunAndCheck(p, d, refs, {1}, Workspace::kNone);  // the direct (one-split) path gates too
  }
}

// One 128K-context decode row: dense over all 131072 positions, and sparse over 2048 of them.
TEST(AttentionKernel, LongDecodeRowAt128K) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SEED_TRACE(seed);
  Spec sp;
  sp.shape = {8, 2, 128, 64};  // GQA 4:1
  sp.contexts = {131072};
  sp.rows = {{0, 131071, true}, {0, 131071, false, 2048}};
  sp.gate = true;
  sp.act = GateActivation::kSigmoid;
  const Problem p = Build(sp, seed);
  ASSERT_FALSE(::testing::Test::HasFailure());
  const DeviceProblem d = UploadProblem(p);
  ASSERT_FALSE(::testing::Test::HasFailure());
  ReferenceCache refs(p);
  const std::vector<bf16> dense1 = RunAndCheck(p, d, refs, {0});  // batch 1: many splits
  const std::vector<bf16> sparse1 = RunAndCheck(p, d, refs, {1});
  RunAndCheck(p, d, refs, {1, 0});
  RunAndCheck(p, d, refs, {0}, Workspace::kNone);  // one split per KV head: 131072 tokens per block
  // Same batch twice: the same bits.
  ExpectBitwiseEqual(dense1, Launch(p, d, {0}));
  ExpectBitwiseEqual(sparse1, Launch(p, d, {1}));
  ExpectMergeInKernelIsTheMergeKernel(p, d, {{0}, {1, 0}}, 1);  // the dense row: 64 splits at batch 1
}

// A step as the engine builds it: a sparse prefill chunk of many short rows, a dense prefill
// chunk, and a few long decode rows; only some rows listed, in scrambled order; block size 16.
TEST(AttentionKernel, RaggedBatchOfPrefillChunksAndDecodeRows) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SEED_TRACE(seed);
  Rng rng(seed ^ 0x7a);
  Spec sp;
  sp.shape = {16, 8, 128, 16};  // the gsa-1.7b attention shape
  sp.contexts = {900, 300, 20000, 9000, 5000};
  for (int32_t t = 700; t < 900; ++t) sp.rows.push_back({0, t, false, rng.Between(1, 300), rng.Below(2) == 1});
  for (int32_t t = 236; t < 300; ++t) sp.rows.push_back({1, t, true});
  const int32_t decode0 = static_cast<int32_t>(sp.rows.size());
  sp.rows.push_back({2, 19999, false, 2048});
  sp.rows.push_back({3, 8999, true});
  sp.rows.push_back({4, 4999, false, 4096, true});
  sp.gate = true;
  sp.act = GateActivation::kTanh;
  const Problem p = Build(sp, seed);
  ASSERT_FALSE(::testing::Test::HasFailure());
  const DeviceProblem d = UploadProblem(p);
  ASSERT_FALSE(::testing::Test::HasFailure());
  ReferenceCache refs(p);

  // About 80% of the rows, scrambled: one split (many rows).
  std::vector<int32_t> ids;
  for (int32_t r = 0; r < p.rows(); ++r) {
    if (r >= decode0 || rng.Below(5) != 0) ids.push_back(r);
  }
  for (size_t i = ids.size() - 1; i > 0; --i) std::swap(ids[i], ids[static_cast<size_t>(rng.Below(static_cast<int64_t>(i) + 1))]);
  RunAndCheck(p, d, refs, ids);
  // The decode rows with a few short rows: several splits, short rows use only the first.
  RunAndCheck(p, d, refs, {decode0 + 2, 3, decode0, 250, decode0 + 1, 0, 199});
}

// Batch 64 decode: few (or no) splits.
TEST(AttentionKernel, Batch64DecodeRows) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SEED_TRACE(seed);
  for (const Heads hd : {Heads{16, 8}, Heads{4, 1}}) {  // 512 blocks at one split; 64 blocks
    SCOPED_TRACE(::testing::Message() << hd.n_heads << " heads / " << hd.n_kv_heads << " KV heads");
    Rng rng(seed ^ static_cast<uint64_t>(hd.n_kv_heads));
    Spec sp;
    sp.shape = {hd.n_heads, hd.n_kv_heads, 128, 16};
    for (int s = 0; s < 64; ++s) {
      const int64_t ctx = rng.Between(2100, 6000);
      sp.contexts.push_back(ctx);
      const int32_t t = static_cast<int32_t>(ctx - 1);
      if (s % 8 == 5) {
        sp.rows.push_back({s, t, true});
      } else if (s % 8 == 3) {
        sp.rows.push_back({s, t, false, rng.Between(256, 4096)});
      } else {
        sp.rows.push_back({s, t, false, 2048});
      }
    }
    sp.gate = true;
    sp.act = GateActivation::kSilu;
    const Problem p = Build(sp, seed + static_cast<uint64_t>(hd.n_heads));
    ASSERT_FALSE(::testing::Test::HasFailure());
    const DeviceProblem d = UploadProblem(p);
    ASSERT_FALSE(::testing::Test::HasFailure());
    ReferenceCache refs(p);
    const std::vector<bf16> first = RunAndCheck(p, d, refs, AllRows(p));
    ExpectBitwiseEqual(first, Launch(p, d, AllRows(p)));
  }
}

TEST(AttentionKernel, RepeatedLaunchesAreBitwiseEqual) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SEED_TRACE(seed);
  Spec sp;
  sp.shape = {8, 4, 64, 16};
  sp.contexts = {32768, 3000, 700};
  sp.rows = {{0, 32767, false, 2048}, {1, 2999, true}, {2, 699, false, 300, true}, {0, 20000, true}};
  const Problem p = Build(sp, seed);
  ASSERT_FALSE(::testing::Test::HasFailure());
  const DeviceProblem d = UploadProblem(p);
  ASSERT_FALSE(::testing::Test::HasFailure());
  ReferenceCache refs(p);
  for (const std::vector<int32_t>& ids : {std::vector<int32_t>{0}, std::vector<int32_t>{3}, AllRows(p)}) {
    const std::vector<bf16> a = RunAndCheck(p, d, refs, ids);
    for (int rep = 0; rep < 3; ++rep) ExpectBitwiseEqual(a, Launch(p, d, ids));
  }
}

// The occupancy asked once (GatheredAttentionResidentBlocks, what the backend passes) plans the
// same launch as a launch that asks itself: the same bits.
TEST(AttentionKernel, ResidentBlocksFromThePlanGiveTheSameLaunch) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SEED_TRACE(seed);
  int32_t blocks = 0;
  ASSERT_EQ(kernels::GatheredAttentionResidentBlocks(128, 2, &blocks), cudaSuccess);
  EXPECT_GE(blocks, 1);
  int32_t unused = 0;
  EXPECT_EQ(kernels::GatheredAttentionResidentBlocks(48, 2, &unused), cudaErrorInvalidValue);
  EXPECT_EQ(kernels::GatheredAttentionResidentBlocks(128, 9, &unused), cudaErrorInvalidValue);
  Spec sp;
  sp.shape = {16, 8, 128, 64};
  sp.contexts = {131072, 5000};
  sp.rows = {{0, 131071, false, 2048}, {1, 4999, true}};
  const Problem p = Build(sp, seed);
  ASSERT_FALSE(::testing::Test::HasFailure());
  const DeviceProblem d = UploadProblem(p);
  ASSERT_FALSE(::testing::Test::HasFailure());
  ReferenceCache refs(p);
  for (const std::vector<int32_t>& ids : {std::vector<int32_t>{0}, AllRows(p)}) {
    const std::vector<bf16> asked = RunAndCheck(p, d, refs, ids);
    ExpectBitwiseEqual(asked, Launch(p, d, ids, Workspace::kFull, nullptr, nullptr, blocks));
  }
}

// A workspace too small for the preferred split count, or none at all, gives fewer splits and
// the same function.
TEST(AttentionKernel, SmallOrMissingWorkspaceStillCorrect) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SEED_TRACE(seed);
  Spec sp;
  sp.shape = {8, 2, 128, 64};
  sp.contexts = {16384, 4000};
  sp.rows = {{0, 16383, true}, {0, 16383, false, 2048}, {1, 3999, false, 2048, true}, {1, 1234, true},
             {0, 9000, false, 37}, {1, 10, false, 11}};
  sp.gate = true;
  const Problem p = Build(sp, seed);
  ASSERT_FALSE(::testing::Test::HasFailure());
  const DeviceProblem d = UploadProblem(p);
  ASSERT_FALSE(::testing::Test::HasFailure());
  ReferenceCache refs(p);
  for (Workspace ws : {Workspace::kFull, Workspace::kOneRow, Workspace::kNone}) {
    SCOPED_TRACE(::testing::Message() << "workspace mode " << static_cast<int>(ws));
    RunAndCheck(p, d, refs, AllRows(p), ws);
    RunAndCheck(p, d, refs, {0}, ws);
  }
}

TEST(AttentionKernel, WorkspaceBytesAreBoundedAndMonotone) {
  GSA_REQUIRE_GPU();
  EXPECT_EQ(kernels::GatheredAttentionWorkspaceBytes(0, 16, 128), 0u);
  size_t prev = 0;
  for (int64_t rows = 1; rows <= 4096; rows *= 2) {
    const size_t b = kernels::GatheredAttentionWorkspaceBytes(rows, 16, 128);
    EXPECT_GE(b, prev) << rows;
    EXPECT_GT(b, 0u) << rows;
    prev = b;
  }
  // Bounded however many rows: the split count is capped in rows × splits.
  EXPECT_EQ(kernels::GatheredAttentionWorkspaceBytes(1 << 20, 16, 128),
            kernels::GatheredAttentionWorkspaceBytes(4096, 16, 128));
  EXPECT_LE(kernels::GatheredAttentionWorkspaceBytes(1 << 20, 32, 256), size_t{64} << 20);
}

TEST(AttentionKernel, RejectsUnsupportedShapesWithoutLaunching) {
  GSA_REQUIRE_GPU();
  kernels::GatheredAttentionArgs a;
  a.n_heads = 8;
  a.n_kv_heads = 2;
  a.d_head = 128;
  a.scale = 0.088f;
  a.num_row_ids = 0;
  EXPECT_EQ(kernels::GatheredAttention(a, nullptr), cudaSuccess);  // nothing to do
  a.num_row_ids = 1;
  EXPECT_EQ(kernels::GatheredAttention(a, nullptr), cudaErrorInvalidValue);  // null pointers
  kernels::GatheredAttentionArgs b = a;
  b.d_head = 48;
  EXPECT_EQ(kernels::GatheredAttention(b, nullptr), cudaErrorInvalidValue);
  b = a;
  b.d_head = 512;
  EXPECT_EQ(kernels::GatheredAttention(b, nullptr), cudaErrorInvalidValue);
  b = a;
  b.n_heads = 9;
  b.n_kv_heads = 1;  // group 9 > 8
  EXPECT_EQ(kernels::GatheredAttention(b, nullptr), cudaErrorInvalidValue);
  b = a;
  b.n_heads = 6;
  b.n_kv_heads = 4;  // not a whole group
  EXPECT_EQ(kernels::GatheredAttention(b, nullptr), cudaErrorInvalidValue);
  b = a;
  b.scale = 0.0f;
  EXPECT_EQ(kernels::GatheredAttention(b, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // nothing sticky left behind
}


// ─────────────────────────────────────────────────────────────────────────────────────────────
// SparsePrefill (kernels/sparse_prefill.h) followed by GatheredAttention with row_skip over the
// same rows: the engine's path for sparse prefill chunks. Every row must match the reference
// whichever kernel computed it; the tile plan (union sizes, choices) is checked against the host.

// A listed row whose row_skip entry is set is neither computed nor written.
TEST(AttentionKernel, RowSkipLeavesThoseRowsUntouched) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SEED_TRACE(seed);
  Spec sp;
  sp.shape = {8, 4, 128, 16};
  sp.contexts = {3000, 9000};
  sp.rows = {{0, 2999, false, 2048}, {1, 8999, true}, {0, 1000, false, 37, true}, {1, 8000, false, 2048},
             {1, 5, true},           {0, 2998, false, 300}};
  const Problem p = Build(sp, seed);
  ASSERT_FALSE(::testing::Test::HasFailure());
  const DeviceProblem d = UploadProblem(p);
  ASSERT_FALSE(::testing::Test::HasFailure());
  ReferenceCache refs(p);
  const std::vector<uint8_t> skip = {1, 0, 0, 1, 1, 0};
  DeviceBuffer<uint8_t> skip_d = Upload(skip);
  for (const std::vector<int32_t>& ids : {AllRows(p), std::vector<int32_t>{3}, std::vector<int32_t>{1}}) {
    const std::vector<bf16> out = Launch(p, d, ids, Workspace::kFull, skip_d.get());
    std::vector<int32_t> computed;
    for (int32_t r : ids) {
      if (skip[static_cast<size_t>(r)] == 0) computed.push_back(r);
    }
    if (!out.empty()) ExpectMatches(p, refs, computed, out);  // skipped rows must still be poison
  }
}

struct SparseChunkSpec {
  int32_t seq = 0;
  int32_t first = 0;  // position of the chunk's first row
  int32_t rows = 0;
  bool listed = true;  // in SparsePrefill's seq_ids (else only GatheredAttention computes it)
};

enum class Pattern {
  kClustered,  // the row's `window` most recent positions + shared spans + a few random ones
  kRandom,     // `k` distinct uniform positions ≤ t
};

// Selection of row t: clustered = min(t + 1, window) most recent positions, the positions of
// `spans` (shared by every row; those ≤ t), and `extras` random ones; random = k uniform ones.
std::vector<int32_t> PatternList(Pattern pat, int32_t t, int32_t window, const std::vector<std::pair<int32_t, int32_t>>& spans,
                                 int64_t k, Rng& rng, int extras = 8) {
  std::vector<uint8_t> in(static_cast<size_t>(t + 1), 0);
  std::vector<int32_t> list;
  auto add = [&](int32_t pos) {
    if (pos >= 0 && pos <= t && !in[static_cast<size_t>(pos)]) {
      in[static_cast<size_t>(pos)] = 1;
      list.push_back(pos);
    }
  };
  if (pat == Pattern::kClustered) {
    for (int32_t s = std::max(0, t - window + 1); s <= t; ++s) add(s);
    for (const auto& [b, e] : spans) {
      for (int32_t s = b; s < e; ++s) add(s);
    }
    for (int i = 0; i < extras; ++i) add(static_cast<int32_t>(rng.Below(t + 1)));
  } else {
    const int64_t want = std::min<int64_t>(k, t + 1);
    while (static_cast<int64_t>(list.size()) < want) add(static_cast<int32_t>(rng.Below(t + 1)));
  }
  return list;
}

struct SparseLaunch {
  std::vector<bf16> out;            // after both kernels
  std::vector<bf16> tiles_only;     // after SparsePrefill alone (same poison first)
  std::vector<uint8_t> row_skip;
  std::vector<kernels::SparsePrefillTileStat> stats;
  int32_t tiles_per_seq = 0;
};

struct SparseOptions {
  float key_cost = 0.0f;     // SparsePrefillArgs::tile_key_cost
  int32_t union_cap = -1;    // workspace for unions of this many blocks (-1: the context's blocks)
};

// SparsePrefill over `chunks` (listed ones), then GatheredAttention with its row_skip over every
// row. The problem's rows must be the chunks' rows in order.
SparseLaunch LaunchSparse(const Problem& p, const DeviceProblem& d, const std::vector<SparseChunkSpec>& chunks,
                          SparseOptions o) {
  SparseLaunch res;
  const int32_t H = p.shape.n_heads, Hkv = p.shape.n_kv_heads, D = p.shape.d_head;
  const int32_t group = H / Hkv;
  const size_t S = chunks.size();
  std::vector<int32_t> qstart(S), nq(S), ctx(S), seq_ids;
  int32_t row = 0, max_nq = 0, max_ctx = 1;
  for (size_t i = 0; i < S; ++i) {
    qstart[i] = row;
    nq[i] = chunks[i].rows;
    ctx[i] = chunks[i].first + chunks[i].rows;
    row += chunks[i].rows;
    if (chunks[i].listed) {
      seq_ids.push_back(static_cast<int32_t>(i));
      max_nq = std::max(max_nq, nq[i]);
      max_ctx = std::max(max_ctx, ctx[i]);
    }
  }
  EXPECT_EQ(row, p.rows()) << "internal: chunk rows vs problem rows";
  // block_tables rows are the Problem's sequences; the chunks' sequences must be 0, 1, … in order.
  for (size_t i = 0; i < S; ++i) EXPECT_EQ(chunks[i].seq, static_cast<int32_t>(i)) << "internal: chunk order";
  DeviceBuffer<int32_t> qs_d = Upload(qstart), nq_d = Upload(nq), ctx_d = Upload(ctx), ids_d = Upload(seq_ids);
  const int32_t cap = o.union_cap >= 0 ? o.union_cap : (max_ctx + 63) / 64;
  const size_t ws_bytes = std::max<size_t>(
      16, kernels::SparsePrefillWorkspaceBytes(static_cast<int32_t>(seq_ids.size()), max_nq, max_ctx, group, cap));
  res.tiles_per_seq = kernels::SparsePrefillTilesPerSeq(max_nq, group);
  const size_t n_stats = seq_ids.size() * static_cast<size_t>(res.tiles_per_seq);
  auto ws = DeviceBuffer<uint8_t>::Allocate(ws_bytes);
  auto skip = DeviceBuffer<uint8_t>::Allocate(static_cast<size_t>(p.rows()));
  auto stats = DeviceBuffer<kernels::SparsePrefillTileStat>::Allocate(std::max<size_t>(n_stats, 1));
  auto out = DeviceBuffer<bf16>::Allocate(static_cast<size_t>(p.rows()) * H * D);
  EXPECT_TRUE(ws.ok() && skip.ok() && stats.ok() && out.ok());
  if (::testing::Test::HasFailure()) return res;
  EXPECT_EQ(cudaMemset(ws->get(), gsa::testing::kPoisonByte, ws->bytes()), cudaSuccess);
  EXPECT_EQ(cudaMemset(skip->get(), 0, skip->bytes()), cudaSuccess);  // as the engine does per step
  EXPECT_EQ(cudaMemset(out->get(), gsa::testing::kPoisonByte, out->bytes()), cudaSuccess);

  kernels::SparsePrefillArgs a;
  a.q = d.q.get();
  a.k_cache = d.k.get();
  a.v_cache = d.v.get();
  a.paged.block_tables = d.tables.get();
  a.paged.max_blocks_per_seq = p.max_blocks_per_seq;
  a.paged.block_size = p.shape.block_size;
  a.query_start = qs_d.get();
  a.num_query = nq_d.get();
  a.context_len = ctx_d.get();
  a.seq_ids = ids_d.get();
  a.num_seq_ids = static_cast<int32_t>(seq_ids.size());
  a.max_num_query = max_nq;
  a.max_context = max_ctx;
  a.sel = d.sel.get();
  a.sel_count = d.sel_count.get();
  a.sel_stride = p.sel_stride;
  if (p.gate) {
    a.gate_z = d.gate_z.get();
    a.gate_stride = p.gate_stride;
    a.gate_bias = d.gate_bias.get();
    a.gate_act = p.act;
  }
  a.n_heads = H;
  a.n_kv_heads = Hkv;
  a.d_head = D;
  a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  a.out = out->get();
  a.row_skip = skip->get();
  a.tile_key_cost = o.key_cost;
  a.workspace = ws->get();
  a.workspace_bytes = ws_bytes;
  a.tile_stats = stats->get();
  EXPECT_EQ(kernels::SparsePrefill(a, nullptr), cudaSuccess);
  const cudaError_t sync = cudaDeviceSynchronize();
  EXPECT_EQ(sync, cudaSuccess) << cudaGetErrorString(sync);
  if (::testing::Test::HasFailure()) return res;
  auto tiles_only = out->ToHost();
  auto skip_h = skip->ToHost();
  auto stats_h = stats->ToHost();
  EXPECT_TRUE(tiles_only.ok() && skip_h.ok() && stats_h.ok());
  if (::testing::Test::HasFailure()) return res;
  res.tiles_only = std::move(*tiles_only);
  res.row_skip = std::move(*skip_h);
  res.stats.assign(stats_h->begin(), stats_h->begin() + static_cast<int64_t>(n_stats));
  res.out = Launch(p, d, AllRows(p), Workspace::kFull, skip->get(), &*out);
  return res;
}

// The host's view of the plan: per (listed chunk, tile) the union of the rows' blocks and Σ counts,
// and whether the rule (with `key_cost`, `cap`) puts it on the tile path. Checks the device's
// stats and row_skip against it, and that SparsePrefill wrote exactly the tile rows.
void ExpectPlan(const Problem& p, const std::vector<SparseChunkSpec>& chunks, const SparseLaunch& res, float key_cost,
                int32_t cap_at_least, int64_t* tile_rows_out) {
  const int32_t H = p.shape.n_heads, D = p.shape.d_head, group = H / p.shape.n_kv_heads;
  const int32_t kq = kernels::SparsePrefillTileRows(group);
  const float cost = key_cost > 0.0f ? key_cost : kernels::kSparsePrefillTileKeyCost;
  int64_t row = 0, listed_index = 0, tile_rows = 0;
  int reported = 0;
  for (const SparseChunkSpec& c : chunks) {
    const int64_t chunk_row0 = row;
    row += c.rows;
    if (!c.listed) {
      for (int64_t r = chunk_row0; r < row; ++r) {
        EXPECT_EQ(res.row_skip[static_cast<size_t>(r)], 0) << "row " << r << " of an unlisted chunk";
      }
      continue;
    }
    const int32_t off = c.first % kq;
    for (int32_t y = 0; y < res.tiles_per_seq; ++y) {
      const kernels::SparsePrefillTileStat& st = res.stats[static_cast<size_t>(listed_index * res.tiles_per_seq + y)];
      const int32_t j0 = y * kq - off, lo = std::max(j0, 0), hi = std::min(j0 + kq, c.rows);
      if (lo >= hi) {
        EXPECT_EQ(st.union_blocks, -1) << "empty tile " << y;
        continue;
      }
      std::vector<int32_t> blocks;
      int64_t selected = 0;
      for (int32_t j = lo; j < hi; ++j) {
        const std::vector<int32_t>& l = p.lists[static_cast<size_t>(chunk_row0 + j)];
        selected += p.sel_count[static_cast<size_t>(chunk_row0 + j)];
        for (int32_t pos : l) blocks.push_back(pos / 64);
      }
      std::sort(blocks.begin(), blocks.end());
      blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());
      const int32_t u = static_cast<int32_t>(blocks.size());
      const bool rule = u >= 1 && static_cast<double>(u) * 64 * cost <= static_cast<double>(selected);
      EXPECT_EQ(st.union_blocks, u) << "chunk " << c.seq << " tile " << y;
      EXPECT_EQ(st.selected, selected) << "chunk " << c.seq << " tile " << y;
      if (u <= cap_at_least) {
        EXPECT_EQ(st.on_tiles, rule ? 1 : 0) << "chunk " << c.seq << " tile " << y << " U " << u;
      }
      if (st.on_tiles != 0) {
        EXPECT_TRUE(rule) << "tile path against the rule: chunk " << c.seq << " tile " << y;
      }
      for (int32_t j = lo; j < hi; ++j) {
        const size_t r = static_cast<size_t>(chunk_row0 + j);
        EXPECT_EQ(res.row_skip[r], st.on_tiles) << "row " << r;
        // SparsePrefill wrote the tile rows, and nothing else.
        int64_t poison = 0;
        for (int64_t e = 0; e < static_cast<int64_t>(H) * D; ++e) {
          poison += Bits(res.tiles_only[r * H * D + static_cast<size_t>(e)]) == 0xFFFFu;
        }
        const bool ok = st.on_tiles ? poison == 0 : poison == static_cast<int64_t>(H) * D;
        if (!ok && reported++ < 5) ADD_FAILURE() << "row " << r << " (tile path " << st.on_tiles << "): " << poison << " poison elements after SparsePrefill";
      }
      tile_rows += st.on_tiles ? hi - lo : 0;
    }
    ++listed_index;
  }
  if (tile_rows_out != nullptr) *tile_rows_out = tile_rows;
}

// Builds the problem of `chunks` (each row's list from `list_of(seq, t)`).
template <typename ListOf>
Problem BuildChunks(Shape shape, const std::vector<SparseChunkSpec>& chunks, bool gate, GateActivation act,
                    uint64_t seed, ListOf list_of) {
  Spec sp;
  sp.shape = shape;
  sp.gate = gate;
  sp.act = act;
  for (const SparseChunkSpec& c : chunks) {
    sp.contexts.push_back(c.first + c.rows);
    for (int32_t j = 0; j < c.rows; ++j) {
      RowSpec rs;
      rs.seq = c.seq;
      rs.position = c.first + j;
      rs.k = 1;  // for an empty list: Build draws one position (callers zero the count)
      sp.rows.push_back(rs);
      sp.lists.push_back(list_of(c.seq, c.first + j));
    }
  }
  return Build(sp, seed);
}

void RunSparse(const Problem& p, const std::vector<SparseChunkSpec>& chunks, SparseOptions o, int64_t* tile_rows,
               std::vector<bf16>* out_copy = nullptr) {
  const DeviceProblem d = UploadProblem(p);
  ASSERT_FALSE(::testing::Test::HasFailure());
  ReferenceCache refs(p);
  const SparseLaunch res = LaunchSparse(p, d, chunks, o);
  ASSERT_FALSE(::testing::Test::HasFailure());
  ASSERT_FALSE(res.out.empty());
  ExpectPlan(p, chunks, res, o.key_cost, o.union_cap >= 0 ? o.union_cap : (1 << 30), tile_rows);
  ExpectMatches(p, refs, AllRows(p), res.out);
  if (out_copy != nullptr) *out_copy = res.out;
}

// The gsa-1.7b attention shape; chunks starting on and off tile boundaries, a 2-row chunk, an
// unlisted chunk (GatheredAttention alone); clustered selections (tile path) next to random ones
// (gathered), sorted descending, ascending or shuffled; out-of-range list entries the kernels must
// skip; a row with an empty selection (zeros).
TEST(AttentionKernel, SparsePrefillTilesAndGatheredRowsTogether) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SEED_TRACE(seed);
  Rng rng(seed ^ 0x5a);
  const std::vector<SparseChunkSpec> chunks = {
      {0, 6000, 300, true}, {1, 2048, 192, true}, {2, 77, 2, true}, {3, 900, 40, false}, {4, 20000, 130, true}};
  const std::vector<std::pair<int32_t, int32_t>> spans = {{100, 356}, {1500, 1600}};
  const Problem base = BuildChunks({16, 8, 128, 16}, chunks, true, GateActivation::kSigmoid, seed, [&](int32_t seq, int32_t t) {
    // Chunk 4 random (2048 of ~20000: its tiles' unions are every block), chunk 1's rows mixed.
    const bool random = seq == 4 || (seq == 1 && t % 3 == 0);
    std::vector<int32_t> l = PatternList(random ? Pattern::kRandom : Pattern::kClustered, t, 700, spans, 2048, rng);
    if (rng.Below(3) == 0) std::shuffle(l.begin(), l.end(), std::mt19937(static_cast<uint32_t>(t)));
    else if (rng.Below(2) == 0) std::sort(l.begin(), l.end());
    else std::sort(l.begin(), l.end(), std::greater<int32_t>());
    return l;
  });
  ASSERT_FALSE(::testing::Test::HasFailure());
  Problem p = base;
  // Junk after the lists (counts raised over them): past t, negative, far out. And one empty row.
  for (int64_t r = 0; r < p.rows(); r += 7) {
    const size_t n = p.lists[static_cast<size_t>(r)].size();
    if (static_cast<int64_t>(n) + 3 > p.sel_stride) continue;
    const int32_t t = p.position[static_cast<size_t>(r)];
    int32_t* row = p.sel.data() + r * p.sel_stride;
    row[n] = t + 1;
    row[n + 1] = -3;
    row[n + 2] = 1 << 30;
    p.sel_count[static_cast<size_t>(r)] = static_cast<int32_t>(n + 3);
  }
  p.lists[5].clear();
  p.sel_count[5] = 0;
  // ExpectPlan counts Σ sel_count (junk included, as the kernel does).
  int64_t tile_rows = 0;
  RunSparse(p, chunks, SparseOptions{}, &tile_rows);
  EXPECT_GT(tile_rows, 300) << "the clustered chunks should mostly run on tiles";
  EXPECT_LT(tile_rows, 624) << "the 2-row chunk's tile is too small to pay";
  // Tiles cost 10 gathered tokens a key: the random chunk's tiles (every block of ~20000
  // positions for 64 × 2048 selections) are gathered, the clustered ones still not.
  RunSparse(p, chunks, SparseOptions{10.0f, -1}, &tile_rows);
  EXPECT_GT(tile_rows, 200);
  EXPECT_LT(tile_rows, 624 - 128);
}

// Every supported head size and group (kQ = 128 / group), gates on and off, block sizes 16 and 64;
// with the tile path forced (cost ~0) and never taken (cost huge): the same function.
TEST(AttentionKernel, SparsePrefillEveryHeadSizeAndGroup) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SEED_TRACE(seed);
  int config = 0;
  for (int32_t dh : {64, 128}) {
    for (const auto& [h, hkv] : std::vector<std::pair<int32_t, int32_t>>{{2, 2}, {4, 2}, {8, 2}, {16, 2}}) {
      ++config;
      SCOPED_TRACE(::testing::Message() << "d_head " << dh << ", " << h << " heads / " << hkv << " KV heads");
      Rng rng(seed + static_cast<uint64_t>(config));
      const std::vector<SparseChunkSpec> chunks = {{0, 1000, 260, true}, {1, 0, 150, true}};
      const Problem p = BuildChunks({h, hkv, dh, config % 2 == 0 ? 16 : 64}, chunks, config % 3 != 0,
                                    static_cast<GateActivation>(config % 3), seed + static_cast<uint64_t>(config),
                                    [&](int32_t, int32_t t) {
                                      return PatternList(Pattern::kClustered, t, 200, {{30, 90}}, 0, rng);
                                    });
      ASSERT_FALSE(::testing::Test::HasFailure());
      std::vector<bf16> forced, never;
      int64_t tile_rows = 0;
      RunSparse(p, chunks, SparseOptions{1e-6f, -1}, &tile_rows, &forced);
      EXPECT_EQ(tile_rows, 410) << "cost ~0: every row on tiles";
      RunSparse(p, chunks, SparseOptions{1e9f, -1}, &tile_rows, &never);
      EXPECT_EQ(tile_rows, 0) << "huge cost: no tiles";
      if (::testing::Test::HasFailure()) return;
    }
  }
}

// Early positions select everything (t < k): one tile covers the whole causal prefix; a workspace
// with no room for unions leaves every row to GatheredAttention, one with room for a few blocks
// only some tiles; repeated launches give the same bits.
TEST(AttentionKernel, SparsePrefillWorkspaceCapsAndDeterminism) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SEED_TRACE(seed);
  Rng rng(seed ^ 0x33);
  const std::vector<SparseChunkSpec> chunks = {{0, 0, 512, true}, {1, 3000, 256, true}};
  const Problem p = BuildChunks({8, 4, 128, 64}, chunks, true, GateActivation::kTanh, seed, [&](int32_t seq, int32_t t) {
    if (seq == 0) {  // everything ≤ t
      std::vector<int32_t> all(static_cast<size_t>(t + 1));
      std::iota(all.begin(), all.end(), 0);
      return all;
    }
    return PatternList(Pattern::kClustered, t, 300, {{0, 64}}, 0, rng);
  });
  ASSERT_FALSE(::testing::Test::HasFailure());
  int64_t tile_rows = 0;
  std::vector<bf16> first, again;
  RunSparse(p, chunks, SparseOptions{1e-6f, 0}, &tile_rows);
  EXPECT_EQ(tile_rows, 0) << "no room for unions: every row gathered";
  RunSparse(p, chunks, SparseOptions{1e-6f, 4}, &tile_rows);
  EXPECT_GT(tile_rows, 0) << "room for 4 blocks: the first tiles";
  EXPECT_LT(tile_rows, 768);
  RunSparse(p, chunks, SparseOptions{1e-6f, -1}, &tile_rows, &first);
  EXPECT_EQ(tile_rows, 768);
  RunSparse(p, chunks, SparseOptions{1e-6f, -1}, &tile_rows, &again);
  if (!first.empty()) ExpectBitwiseEqual(first, again);
}

// A 128-row chunk at the end of a 131072-token context, clustered (recent window + spans spread
// over the whole context, no stray positions: 128 rows × 8 random ones would touch ~900 blocks):
// positions past 2^16, block tables 2048 entries long.
TEST(AttentionKernel, SparsePrefillChunkAt128K) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SEED_TRACE(seed);
  Rng rng(seed ^ 0x128);
  const std::vector<SparseChunkSpec> chunks = {{0, 131072 - 128, 128, true}};
  const Problem p = BuildChunks({4, 2, 128, 64}, chunks, true, GateActivation::kSigmoid, seed, [&](int32_t, int32_t t) {
    return PatternList(Pattern::kClustered, t, 512, {{1000, 1512}, {70000, 70512}, {120000, 120512}}, 0, rng, 0);
  });
  ASSERT_FALSE(::testing::Test::HasFailure());
  int64_t tile_rows = 0;
  RunSparse(p, chunks, SparseOptions{}, &tile_rows);
  EXPECT_EQ(tile_rows, 128) << "clustered at 128K: every row on tiles with the default cost";
}

TEST(AttentionKernel, SparsePrefillRejectsBadArguments) {
  GSA_REQUIRE_GPU();
  EXPECT_TRUE(kernels::SparsePrefillSupports(128, 2));
  EXPECT_TRUE(kernels::SparsePrefillSupports(64, 8));
  EXPECT_FALSE(kernels::SparsePrefillSupports(256, 2));
  EXPECT_FALSE(kernels::SparsePrefillSupports(128, 3));
  const int32_t kq = kernels::SparsePrefillTileRows(2);
  EXPECT_TRUE(kq == 64 || kq == 128) << kq;
  EXPECT_EQ(kernels::SparsePrefillTileRows(8) * 8, kq * 2);
  EXPECT_EQ(kernels::SparsePrefillTilesPerSeq(2048, 2), 2048 / kq + 1);  // + 1 for an unaligned start
  kernels::SparsePrefillArgs a;
  a.n_heads = 16;
  a.n_kv_heads = 8;
  a.d_head = 128;
  a.scale = 0.088f;
  a.num_seq_ids = 0;
  a.max_num_query = 0;
  EXPECT_EQ(kernels::SparsePrefill(a, nullptr), cudaSuccess);  // nothing listed
  a.num_seq_ids = 1;
  a.max_num_query = 64;
  a.max_context = 4096;
  EXPECT_EQ(kernels::SparsePrefill(a, nullptr), cudaErrorInvalidValue);  // null pointers
  kernels::SparsePrefillArgs b = a;
  b.d_head = 256;
  EXPECT_EQ(kernels::SparsePrefill(b, nullptr), cudaErrorInvalidValue);
  b = a;
  b.max_context = kernels::kSparsePrefillMaxContext + 1;
  EXPECT_EQ(kernels::SparsePrefill(b, nullptr), cudaErrorInvalidValue);
  b = a;
  b.tile_key_cost = -1.0f;
  EXPECT_EQ(kernels::SparsePrefill(b, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

}  // namespace
}  // namespace gsa
