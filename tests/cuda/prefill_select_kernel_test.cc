// kernels/selection.h PrefillSelect (the thresholded prefill selection: a sampled threshold per row,
// a list of the candidates at or above it, full scores only for the rows whose list misses) against
// the separate launches it replaces (IndexerScores → ScoreStats (variance rule) → SelectionCounts →
// TopK, each checked against the CPU oracle by indexer_kernel_test and selection_kernel_test), on
// prefill chunks over fresh random paged indexer keys (shuffled block tables, block size 64, 4
// heads × 64, score regions at odd offsets in a random order with poisoned gaps): one sequence of
// 256 rows at 40K, both k rules; several sequences in one chunk with dense sequences, a row at
// position 0, rows too short for a sample and a chunk that starts and ends inside sequences, both
// k rules; a sequence whose keys are all 0 (every score tied) next to a random one; the 128K shape
// (2048 rows at 129024 … 131071), every row; and the arguments it must refuse without launching.
// Outputs poisoned, every element checked: for the fixed rule k, sel (all sel_stride entries of
// every row, so entries TopK leaves stay poison) and cumvar bitwise; for the variance rule var
// within 1e-7 relative of ScoreStats', cumvar within 1e-6 relative, k equal but on at most two
// rows off by one (k_base · factor within rounding of an integer: var is summed another way), sel
// bitwise where k is equal, else a valid top-k nested with the reference's. var untouched where the
// rule does not use it, the rest of cumvar unchanged, the score buffer outside the sparse rows'
// regions still poison. Which path each row took (PrefillSelectArgs::full_rows): dense rows 0, tied
// rows 1 (their lists overflow; they keep the latest positions, descending), ≥ 90% of the random
// rows 0. Three runs on one workspace (poisoned, it needs no initialisation) agree bit for bit,
// the third without full_rows (as the engine runs it). Off compute capability 9.0 the launch must
// return cudaErrorNotSupported and write nothing; the comparison is then skipped.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <utility>
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
constexpr int32_t kDIndexer = 64;
// Variance rule: rows whose k may be off by one from the separate path's (see the header).
constexpr int64_t kMaxKOffByOne = 2;
// Random-key rows at least this long that must take the list (full_rows 0), as a share.
constexpr double kMinListShare = 0.9;

// One sequence's rows in the step: consecutive positions first_position, first_position + 1, ….
struct SeqSpec {
  int32_t first_position = 0;
  int32_t rows = 0;
  bool zero_keys = false;  // every indexer key of the sequence 0: all its scores equal
  bool dense = false;      // a dense sequence: its rows have no scores and no selection
};

struct Scenario {
  std::string name;
  std::vector<SeqSpec> seqs;    // the step's rows, sequence by sequence (seq_first_row)
  int32_t method = 0;           // 0: fixed k, 1: variance (k_base 2048, k_min 64, k_max 4096)
  int64_t row_begin = 0;        // the chunk: rows [row_begin, row_begin + row_count) of the step;
  int64_t rows_after = 0;       // row_count = rows - row_begin - rows_after
  int64_t max_candidates = 0;   // 0: the longest chunk row's position + 1
  bool shuffle_regions = true;  // score regions in a random order (else in row order, as the engine)
  int32_t n_heads = 4;
  bool relu = false;  // φ = relu (ties at 0 are common)
  bool fp8 = false;   // fp8 indexer keys (random codes and per-slot scales)
};

kernels::SelectionRule Rule(int32_t method) {
  kernels::SelectionRule rule;
  rule.method = method;
  rule.k_base = 2048;
  rule.k_min = 64;
  rule.k_max = kSelStride;
  rule.temperature = 1.0;
  return rule;
}

// Host inputs of one scenario and their device copies.
struct Inputs {
  int64_t rows = 0, row_begin = 0, row_count = 0, max_cand = 0, num_slots = 0, score_total = 0;
  int64_t sequence_runs = 0;  // runs of same-sequence rows in the chunk (IndexerScoresArgs::sequence_runs)
  int64_t proj_stride = 0, off_qi = 0, off_wi = 0;
  int32_t max_blocks = 0, num_seqs = 0, n_heads = 4;
  std::vector<int32_t> seq, pos, first, tables;
  std::vector<int64_t> slot, offsets;    // offsets: [row_count], the chunk's rows
  std::vector<uint8_t> dense, zero_row;  // [rows]
  std::vector<float> cumvar0;            // [num_slots] cumvar before every launch
  DeviceBuffer<bf16> keys;
  DeviceBuffer<int32_t> d_tables, d_seq, d_pos, d_first;
  DeviceBuffer<int64_t> d_slot, d_off;
  DeviceBuffer<uint8_t> d_dense;
  DeviceBuffer<float> d_proj, d_bias;
  bool relu = false;
  DeviceBuffer<uint8_t> codes;  // fp8 keys (empty: bf16 keys)
  DeviceBuffer<float> scales;

  bool InChunk(int64_t r) const { return r >= row_begin && r < row_begin + row_count; }
  bool SparseInChunk(int64_t r) const { return InChunk(r) && dense[static_cast<size_t>(r)] == 0; }
  int64_t SlotOf(int32_t table_row, int64_t p) const {
    return int64_t{tables[static_cast<size_t>(table_row * int64_t{max_blocks} + p / kBlockSize)]} * kBlockSize +
           p % kBlockSize;
  }

  kernels::IndexerScoresArgs Index(float* scores) const {
    kernels::IndexerScoresArgs a;
    a.proj = d_proj.get();
    a.proj_stride = proj_stride;
    a.off_qi = off_qi;
    a.off_wi = off_wi;
    a.bias = d_bias.get();
    a.ki_cache = keys.get();
    if (codes.size() > 0) {
      a.ki_cache = nullptr;
      a.ki_fp8 = codes.get();
      a.ki_scale = scales.get();
    }
    a.paged = {d_tables.get(), max_blocks, kBlockSize};
    a.rows.seq = d_seq.get();
    a.rows.position = d_pos.get();
    a.rows.slot = d_slot.get();
    a.rows.dense = d_dense.get();
    a.n_indexer_heads = n_heads;
    a.d_indexer = kDIndexer;
    a.relu = relu;
    a.scores = scores;
    a.score_offset = d_off.get();
    a.row_begin = row_begin;
    a.row_count = row_count;
    a.max_candidates = max_cand;
    a.sequence_runs = sequence_runs;  // as the engine passes it
    return a;
  }
  kernels::ScoreChunk Chunk(const float* scores) const {
    kernels::ScoreChunk ch;
    ch.scores = scores;
    ch.score_offset = d_off.get();
    ch.row_begin = row_begin;
    ch.row_count = row_count;
    ch.max_candidates = max_cand;
    return ch;
  }
  // [begin, end) ranges of the score buffer that no launch may write: all but the sparse chunk
  // rows' regions (the gaps, dense rows' regions).
  std::vector<std::pair<int64_t, int64_t>> Untouched() const {
    std::vector<std::pair<int64_t, int64_t>> regions, out;
    for (int64_t j = 0; j < row_count; ++j) {
      const int64_t r = row_begin + j;
      if (dense[static_cast<size_t>(r)] != 0) continue;
      const int64_t b = offsets[static_cast<size_t>(j)];
      regions.push_back({b, b + pos[static_cast<size_t>(r)] + 1});
    }
    std::sort(regions.begin(), regions.end());
    int64_t at = 0;
    for (const auto& [b, e] : regions) {
      if (b > at) out.push_back({at, b});
      at = std::max(at, e);
    }
    if (at < score_total) out.push_back({at, score_total});
    return out;
  }
};

void Build(const Scenario& sc, uint64_t seed, Inputs* in) {
  std::mt19937_64 rng(seed);
  const int32_t nh = sc.n_heads;
  in->n_heads = nh;
  in->num_seqs = static_cast<int32_t>(sc.seqs.size());
  // Rows: sequence i of the step reads row num_seqs - 1 - i of the block tables (rows.seq is not
  // the step's sequence index).
  int64_t max_len = 0;
  for (int32_t i = 0; i < in->num_seqs; ++i) {
    const SeqSpec& s = sc.seqs[static_cast<size_t>(i)];
    in->first.push_back(static_cast<int32_t>(in->seq.size()));
    for (int32_t j = 0; j < s.rows; ++j) {
      in->seq.push_back(in->num_seqs - 1 - i);
      in->pos.push_back(s.first_position + j);
      in->dense.push_back(s.dense ? 1 : 0);
      in->zero_row.push_back(s.zero_keys ? 1 : 0);
    }
    max_len = std::max<int64_t>(max_len, int64_t{s.first_position} + s.rows);
  }
  in->rows = static_cast<int64_t>(in->seq.size());
  in->first.push_back(static_cast<int32_t>(in->rows));
  in->row_begin = sc.row_begin;
  in->row_count = in->rows - sc.row_begin - sc.rows_after;
  ASSERT_GT(in->row_count, 0);
  int64_t longest = 0;
  for (int64_t r = in->row_begin; r < in->row_begin + in->row_count; ++r) {
    longest = std::max<int64_t>(longest, int64_t{in->pos[static_cast<size_t>(r)]} + 1);
    if (r == in->row_begin || in->seq[static_cast<size_t>(r)] != in->seq[static_cast<size_t>(r - 1)]) {
      ++in->sequence_runs;
    }
  }
  in->max_cand = sc.max_candidates > 0 ? sc.max_candidates : longest;
  ASSERT_GE(in->max_cand, longest);

  // Shuffled block tables: each sequence's blocks cover its positions 0 … first_position + rows - 1.
  in->max_blocks = static_cast<int32_t>((std::max(max_len, in->max_cand) + kBlockSize - 1) / kBlockSize);
  int64_t total_blocks = 0;
  for (const SeqSpec& s : sc.seqs) total_blocks += (int64_t{s.first_position} + s.rows + kBlockSize - 1) / kBlockSize;
  const int64_t num_blocks = total_blocks + 3;
  std::vector<int32_t> perm(static_cast<size_t>(num_blocks));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  in->tables.assign(static_cast<size_t>(in->num_seqs) * static_cast<size_t>(in->max_blocks), 0);
  in->num_slots = num_blocks * kBlockSize;
  std::vector<uint8_t> zero_slot(static_cast<size_t>(in->num_slots), 0);
  int64_t next = 0;
  for (int32_t i = 0; i < in->num_seqs; ++i) {
    const SeqSpec& s = sc.seqs[static_cast<size_t>(i)];
    const int64_t t = in->num_seqs - 1 - i;
    for (int64_t b = 0; b < (int64_t{s.first_position} + s.rows + kBlockSize - 1) / kBlockSize; ++b) {
      const int32_t block = perm[static_cast<size_t>(next++)];
      in->tables[static_cast<size_t>(t * in->max_blocks + b)] = block;
      if (s.zero_keys) std::fill_n(zero_slot.begin() + int64_t{block} * kBlockSize, kBlockSize, uint8_t{1});
    }
  }
  for (int64_t r = 0; r < in->rows; ++r) {
    in->slot.push_back(in->SlotOf(in->seq[static_cast<size_t>(r)], in->pos[static_cast<size_t>(r)]));
  }

  // Score regions: position + 1 floats per chunk row (dense rows too, which must stay untouched),
  // 1 … 7 poisoned floats before each (odd offsets too), in row order or shuffled.
  std::vector<int64_t> order(static_cast<size_t>(in->row_count));
  std::iota(order.begin(), order.end(), 0);
  if (sc.shuffle_regions) std::shuffle(order.begin(), order.end(), rng);
  in->offsets.assign(static_cast<size_t>(in->row_count), 0);
  std::uniform_int_distribution<int64_t> gap(1, 7);
  int64_t at = 0;
  for (int64_t j : order) {
    at += gap(rng);
    in->offsets[static_cast<size_t>(j)] = at;
    at += int64_t{in->pos[static_cast<size_t>(in->row_begin + j)]} + 1;
  }
  in->score_total = at + gap(rng);

  std::vector<bf16> keys(static_cast<size_t>(in->num_slots * kDIndexer));
  {
    const std::vector<float> kf = RandomFloats(keys.size(), seed + 1);
    for (size_t i = 0; i < keys.size(); ++i) keys[i] = ToBf16(zero_slot[i / kDIndexer] ? 0.0f : kf[i]);
  }
  in->relu = sc.relu;
  if (sc.fp8) {
    std::uniform_int_distribution<int> code(0, 255);
    std::uniform_real_distribution<float> scale(0.001f, 0.01f);
    std::vector<uint8_t> codes(keys.size());
    for (size_t i = 0; i < codes.size(); ++i) {
      codes[i] = static_cast<uint8_t>(code(rng));
      if ((codes[i] & 0x7F) == 0x7F || zero_slot[i / kDIndexer]) codes[i] = 0;  // no NaN codes (PostProjection)
    }
    std::vector<float> scales(static_cast<size_t>(in->num_slots));
    for (float& x : scales) x = scale(rng);
    in->codes = Upload(codes);
    in->scales = Upload(scales);
  }
  in->proj_stride = int64_t{nh} * kDIndexer + nh + 3;
  in->off_qi = 1;
  in->off_wi = 1 + int64_t{nh} * kDIndexer;
  std::vector<float> proj = RandomFloats(static_cast<size_t>(in->rows * in->proj_stride), seed + 2, -2, 2);
  for (int64_t r = 0; r < in->rows; ++r) {
    for (int64_t j = 0; j < nh; ++j) {
      float& w = proj[static_cast<size_t>(r * in->proj_stride + in->off_wi + j)];
      w = 0.5f + 0.5f * std::fabs(w);
    }
  }
  const std::vector<float> bias = RandomFloats(static_cast<size_t>(nh), seed + 3, -0.5, 0.5);
  // Running variance sums of earlier positions: random, so the k rule has something to read (the
  // variance rule's reference then sets the slot before each sequence's first chunk row to a
  // plausible sum: see Reference).
  in->cumvar0 = RandomFloats(static_cast<size_t>(in->num_slots), seed + 4, 0.0f, 0.02f);

  in->keys = Upload(keys);
  in->d_tables = Upload(in->tables);
  in->d_seq = Upload(in->seq);
  in->d_pos = Upload(in->pos);
  in->d_first = Upload(in->first);
  in->d_slot = Upload(in->slot);
  in->d_off = Upload(in->offsets);
  in->d_dense = Upload(in->dense);
  in->d_proj = Upload(proj);
  in->d_bias = Upload(bias);
}

size_t WorkspaceBytes(const Inputs& in) {
  return kernels::PrefillSelectWorkspaceBytes(in.row_begin + in.row_count, in.max_cand);
}

// The output buffers of one launch sequence: poisoned, cumvar = cumvar0.
struct Buffers {
  DeviceBuffer<float> scores, cumvar;
  DeviceBuffer<double> var;
  DeviceBuffer<int32_t> k, sel;
  DeviceBuffer<uint8_t> full_rows;  // [row_count]
};

void AllocateBuffers(const Inputs& in, Buffers* b) {
  b->scores = Poisoned<float>(static_cast<size_t>(in.score_total));
  b->cumvar = Upload(in.cumvar0);
  b->var = Poisoned<double>(static_cast<size_t>(in.rows));
  b->k = Poisoned<int32_t>(static_cast<size_t>(in.rows));
  b->sel = Poisoned<int32_t>(static_cast<size_t>(in.rows * kSelStride));
  b->full_rows = Poisoned<uint8_t>(static_cast<size_t>(in.row_count));
}

struct Result {
  std::vector<float> cumvar;
  std::vector<double> var;
  std::vector<int32_t> k, sel;
  std::vector<uint8_t> full_rows;
};

void DownloadResult(const Buffers& b, Result* r) {
  r->cumvar = Download(b.cumvar);
  r->var = Download(b.var);
  r->k = Download(b.k);
  r->sel = Download(b.sel);
  r->full_rows = Download(b.full_rows);
}

kernels::PrefillSelectArgs Args(const Inputs& in, int32_t method, Buffers* b, void* workspace, size_t workspace_bytes,
                                bool with_full_rows) {
  kernels::PrefillSelectArgs a;
  a.index = in.Index(b->scores.get());
  a.rule = Rule(method);
  a.seq_first_row = in.d_first.get();
  a.num_seqs = in.num_seqs;
  a.var = b->var.get();
  a.cumvar = b->cumvar.get();
  a.k = b->k.get();
  a.sel = b->sel.get();
  a.sel_stride = kSelStride;
  a.workspace = workspace;
  a.workspace_bytes = workspace_bytes;
  a.full_rows = with_full_rows ? b->full_rows.get() : nullptr;
  return a;
}

// Every float of scores[begin, end) still poison (copied back in pieces: the 128K chunk's buffer
// is 1 GB).
void ExpectPoisonScores(const float* scores, int64_t begin, int64_t end) {
  constexpr int64_t kPiece = int64_t{1} << 24;
  std::vector<float> host;
  for (int64_t b = begin; b < end; b += kPiece) {
    const int64_t n = std::min(kPiece, end - b);
    host.resize(static_cast<size_t>(n));
    ASSERT_EQ(cudaMemcpy(host.data(), scores + b, static_cast<size_t>(n) * sizeof(float), cudaMemcpyDeviceToHost),
              cudaSuccess);
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(Bits(host[static_cast<size_t>(i)]), ~uint32_t{0})
          << "score element " << b + i << " written, outside every sparse chunk row's region";
    }
  }
}

// Index of the first element where a and b differ bitwise, or -1.
template <typename T>
int64_t FirstDifference(const T* a, const T* b, int64_t n) {
  if (std::memcmp(a, b, static_cast<size_t>(n) * sizeof(T)) == 0) return -1;
  for (int64_t i = 0; i < n; ++i) {
    if (std::memcmp(a + i, b + i, sizeof(T)) != 0) return i;
  }
  return -1;
}

// After a refused launch: every output as it was before it.
void ExpectNothingWritten(const Inputs& in, const Buffers& b) {
  Result r;
  DownloadResult(b, &r);
  const auto poisoned = [](const auto& v) {
    using T = typename std::decay_t<decltype(v)>::value_type;
    for (size_t i = 0; i < v.size(); ++i) {
      T p;
      std::memset(&p, gsa::testing::kPoisonByte, sizeof(T));
      if (std::memcmp(&v[i], &p, sizeof(T)) != 0) return static_cast<int64_t>(i);
    }
    return int64_t{-1};
  };
  ASSERT_EQ(poisoned(r.k), -1) << "k written";
  ASSERT_EQ(poisoned(r.sel), -1) << "sel written";
  ASSERT_EQ(poisoned(r.var), -1) << "var written";
  ASSERT_EQ(poisoned(r.full_rows), -1) << "full_rows written";
  ASSERT_EQ(FirstDifference(r.cumvar.data(), in.cumvar0.data(), in.num_slots), -1) << "cumvar written";
  ExpectPoisonScores(b.scores.get(), 0, in.score_total);
}

// The separate launches: IndexerScores → ScoreStats (variance rule) → SelectionCounts → TopK.
// Under the variance rule the slot before each sequence's first chunk row first gets a running sum
// of position × (the sequence's mean var) × U(0.3, 3) (in cumvar0, for every later launch too), so
// ref_t is of the order of var_t and k spreads around k_base as in a real prompt (with the random
// sums of Build, ref_t ≈ 0 and every k would be k_base / 2).
void Reference(const Scenario& sc, uint64_t seed, Inputs* in, Result* out) {
  Buffers b;
  AllocateBuffers(*in, &b);
  ASSERT_EQ(cudaMemset(b.var.get(), 0, b.var.bytes()), cudaSuccess);  // the fixed rule reads zeros
  const kernels::IndexerScoresArgs ia = in->Index(b.scores.get());
  ASSERT_EQ(kernels::IndexerScores(ia, nullptr), cudaSuccess);
  const kernels::ScoreChunk ch = in->Chunk(b.scores.get());
  if (sc.method == 1) {
    ASSERT_EQ(kernels::ScoreStats(ch, ia.rows, b.var.get(), nullptr, nullptr), cudaSuccess);
    const std::vector<double> var = Download(b.var);
    std::mt19937_64 rng(seed + 5);
    std::uniform_real_distribution<double> u(0.3, 3.0);
    for (int32_t i = 0; i < in->num_seqs; ++i) {
      const int64_t r0 = std::max<int64_t>(in->first[static_cast<size_t>(i)], in->row_begin);
      const int64_t r1 = std::min<int64_t>(in->first[static_cast<size_t>(i) + 1], in->row_begin + in->row_count);
      double sum = 0;
      int64_t n = 0;
      for (int64_t r = r0; r < r1; ++r) {
        if (in->dense[static_cast<size_t>(r)] != 0) continue;
        sum += var[static_cast<size_t>(r)];
        ++n;
      }
      const int64_t p = r0 < r1 ? in->pos[static_cast<size_t>(r0)] : 0;
      if (n == 0 || p == 0) continue;
      in->cumvar0[static_cast<size_t>(in->SlotOf(in->seq[static_cast<size_t>(r0)], p - 1))] =
          static_cast<float>(static_cast<double>(p) * (sum / static_cast<double>(n)) * u(rng));
    }
    ASSERT_EQ(cudaMemcpy(b.cumvar.get(), in->cumvar0.data(), b.cumvar.bytes(), cudaMemcpyHostToDevice), cudaSuccess);
  }
  ASSERT_EQ(kernels::SelectionCounts(ch, ia.rows, ia.paged, in->d_first.get(), in->num_seqs, Rule(sc.method),
                                     b.var.get(), nullptr, b.cumvar.get(), b.k.get(), nullptr),
            cudaSuccess);
  const size_t ws_bytes = kernels::TopKWorkspaceBytes(in->row_begin + in->row_count, in->max_cand);
  auto ws = DeviceBuffer<uint8_t>::Allocate(std::max<size_t>(1, ws_bytes));
  ASSERT_TRUE(ws.ok());
  ASSERT_EQ(kernels::TopK(ch, ia.rows, b.k.get(), b.sel.get(), kSelStride, ws->get(), ws_bytes, nullptr), cudaSuccess);
  DownloadResult(b, out);
}

// got against the reference, row by row (see the header for what is exact and what is not).
void Compare(const Scenario& sc, const Inputs& in, const Result& ref, const Result& got) {
  int64_t k_off_by_one = 0;
  for (int64_t r = 0; r < in.rows; ++r) {
    const size_t ur = static_cast<size_t>(r);
    SCOPED_TRACE(::testing::Message() << "row " << r << " position " << in.pos[ur]
                                      << (in.InChunk(r) ? "" : " (outside the chunk)")
                                      << (in.dense[ur] ? " dense" : "") << (in.zero_row[ur] ? " zero keys" : ""));
    const bool sparse = in.SparseInChunk(r);
    if (sc.method == 1 && sparse) {
      ASSERT_NEAR(got.var[ur], ref.var[ur], 1e-7 * std::fabs(ref.var[ur]) + 1e-15);
    } else {
      ASSERT_EQ(Bits(got.var[ur]), ~uint64_t{0}) << "var written although the rule or row does not use it";
    }
    const int32_t gk = got.k[ur], rk = ref.k[ur];
    const int32_t* gs = got.sel.data() + r * kSelStride;
    const int32_t* rs = ref.sel.data() + r * kSelStride;
    if (gk == rk) {
      const int64_t d = FirstDifference(gs, rs, kSelStride);
      ASSERT_EQ(d, -1) << "sel entry " << d << ": " << gs[std::max<int64_t>(d, 0)] << " against "
                       << rs[std::max<int64_t>(d, 0)] << " (k " << gk << ")";
    } else {
      // The variance rule: var summed another way moved k_base · factor across an integer.
      ASSERT_TRUE(sc.method == 1 && sparse && std::abs(gk - rk) == 1) << "k " << gk << " against " << rk;
      ++k_off_by_one;
      ASSERT_LE(k_off_by_one, kMaxKOffByOne) << "k off by one on more rows than rounding explains";
      ASSERT_GE(gk, 1);
      for (int32_t i = 0; i < gk; ++i) {
        ASSERT_GE(gs[i], 0) << "sel entry " << i;
        ASSERT_LE(gs[i], in.pos[ur]) << "sel entry " << i;
        if (i > 0) {
          ASSERT_LT(gs[i], gs[i - 1]) << "sel entry " << i << " not strictly descending";
        }
      }
      for (int64_t i = gk; i < kSelStride; ++i) ASSERT_EQ(gs[i], -1) << "sel entry " << i << " past k written";
      // The top-k sets of one strict order are nested.
      const int32_t *small = gk < rk ? gs : rs, *large = gk < rk ? rs : gs;
      ASSERT_TRUE(
          std::includes(large, large + std::max(gk, rk), small, small + std::min(gk, rk), std::greater<int32_t>()))
          << "the top-" << std::min(gk, rk) << " is not inside the top-" << std::max(gk, rk);
    }
    if (in.InChunk(r)) {
      const float g = got.cumvar[static_cast<size_t>(in.slot[ur])], w = ref.cumvar[static_cast<size_t>(in.slot[ur])];
      if (sc.method == 0 || !sparse) {
        ASSERT_EQ(Bits(g), Bits(w)) << "cumvar " << g << " against " << w;
      } else if (std::isnan(w)) {
        ASSERT_TRUE(std::isnan(g)) << "cumvar " << g << " against NaN";
      } else {
        ASSERT_NEAR(g, w, 1e-6 * std::fabs(w)) << "cumvar";
      }
    }
    if (sparse && in.zero_row[ur]) {  // all scores equal: the latest k positions, descending
      for (int32_t i = 0; i < gk; ++i) ASSERT_EQ(gs[i], in.pos[ur] - i) << "sel entry " << i;
    }
  }
  // Nothing else of cumvar changed.
  std::vector<uint8_t> row_slot(static_cast<size_t>(in.num_slots), 0);
  for (int64_t r = in.row_begin; r < in.row_begin + in.row_count; ++r) {
    row_slot[static_cast<size_t>(in.slot[static_cast<size_t>(r)])] = 1;
  }
  for (int64_t s = 0; s < in.num_slots; ++s) {
    if (row_slot[static_cast<size_t>(s)]) continue;
    ASSERT_EQ(Bits(got.cumvar[static_cast<size_t>(s)]), Bits(in.cumvar0[static_cast<size_t>(s)])) << "slot " << s;
  }
}

// Which path the chunk's rows took (full_rows of a run that passed it).
void CheckPaths(const std::string& name, const Inputs& in, const Result& got) {
  int64_t eligible = 0, listed = 0, full = 0;
  for (int64_t j = 0; j < in.row_count; ++j) {
    const size_t r = static_cast<size_t>(in.row_begin + j);
    const uint8_t f = got.full_rows[static_cast<size_t>(j)];
    SCOPED_TRACE(::testing::Message() << "row " << r << " position " << in.pos[r]);
    ASSERT_TRUE(f == 0 || f == 1) << "full_rows[" << j << "] = " << int{f} << " (0xFF: not written)";
    full += f;
    if (in.dense[r] != 0) {
      ASSERT_EQ(f, 0) << "a dense row marked as scored in full";
    } else if (in.zero_row[r] != 0) {
      // Every score is tied at the threshold: the list would need position + 1 entries.
      if (in.pos[r] + 1 > kernels::kPrefillListCap) {
        ASSERT_EQ(f, 1) << "a fully tied row did not take the full path";
      }
    } else if (in.pos[r] + 1 >= kernels::kPrefillSelectMinCandidates) {
      ++eligible;
      listed += f == 0 ? 1 : 0;
    }
  }
  // In the test's XML record: how many rows each path took.
  std::string key = name;
  for (char& c : key) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  ::testing::Test::RecordProperty(key + "_rows_scored_in_full", static_cast<int>(full));
  ::testing::Test::RecordProperty(key + "_random_rows_from_the_list", static_cast<int>(listed));
  ::testing::Test::RecordProperty(key + "_random_rows", static_cast<int>(eligible));
  EXPECT_GE(static_cast<double>(listed), kMinListShare * static_cast<double>(eligible))
      << listed << " of " << eligible << " random-key rows of ≥ " << kernels::kPrefillSelectMinCandidates
      << " candidates took their top-k from the list; the rest were scored in full";
}

std::string DeviceName() {
  int device = 0, major = 0, minor = 0;
  (void)cudaGetDevice(&device);
  (void)cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  (void)cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  return "compute capability " + std::to_string(major) + "." + std::to_string(minor);
}

class PrefillSelectTest : public ::testing::Test {
 protected:
  void Run(const Scenario& sc) {
    SCOPED_TRACE(sc.name);
    const uint64_t seed = gsa::testing::FreshSeed();
    SCOPED_TRACE(::testing::Message() << "seed " << seed);
    Inputs in;
    ASSERT_NO_FATAL_FAILURE(Build(sc, seed, &in));
    // One workspace for every run, poisoned: it needs no initialisation.
    auto ws = Poisoned<uint8_t>(WorkspaceBytes(in));
    if (!gsa::testing::WgmmaKernelsRun()) {
      Buffers b;
      AllocateBuffers(in, &b);
      const cudaError_t err = kernels::PrefillSelect(Args(in, sc.method, &b, ws.get(), ws.bytes(), true), nullptr);
      ASSERT_EQ(err, cudaErrorNotSupported) << cudaGetErrorName(err);
      ASSERT_EQ(cudaGetLastError(), cudaSuccess);
      ASSERT_NO_FATAL_FAILURE(ExpectNothingWritten(in, b));
      GTEST_SKIP() << "PrefillSelect needs compute capability 9.0 (the indexer's wgmma kernel); on this device ("
                   << DeviceName() << ") it returned cudaErrorNotSupported and wrote nothing, as its contract says: "
                   << "no selection to compare";
    }
    Result ref;
    ASSERT_NO_FATAL_FAILURE(Reference(sc, seed, &in, &ref));

    // Three runs on the same workspace: two with full_rows, one without (as the engine runs it).
    constexpr int kRuns = 3;
    Result got[kRuns];
    const std::vector<std::pair<int64_t, int64_t>> untouched = in.Untouched();
    for (int run = 0; run < kRuns; ++run) {
      SCOPED_TRACE(::testing::Message() << "run " << run);
      Buffers b;
      AllocateBuffers(in, &b);
      const cudaError_t err =
          kernels::PrefillSelect(Args(in, sc.method, &b, ws.get(), ws.bytes(), run < 2), nullptr);
      ASSERT_EQ(err, cudaSuccess) << cudaGetErrorName(err) << ": " << cudaGetErrorString(err);
      DownloadResult(b, &got[run]);
      for (const auto& [begin, end] : untouched) {
        ASSERT_NO_FATAL_FAILURE(ExpectPoisonScores(b.scores.get(), begin, end));
      }
    }
    for (int run = 0; run < kRuns; ++run) {
      SCOPED_TRACE(::testing::Message() << "run " << run);
      ASSERT_NO_FATAL_FAILURE(Compare(sc, in, ref, got[run]));
    }
    ASSERT_NO_FATAL_FAILURE(CheckPaths(sc.name, in, got[0]));
    // Deterministic: every run agrees bit for bit; full_rows == nullptr writes nothing there.
    for (int run = 1; run < kRuns; ++run) {
      SCOPED_TRACE(::testing::Message() << "run " << run << " against run 0");
      ASSERT_EQ(FirstDifference(got[run].k.data(), got[0].k.data(), in.rows), -1) << "k";
      ASSERT_EQ(FirstDifference(got[run].sel.data(), got[0].sel.data(), in.rows * kSelStride), -1) << "sel";
      ASSERT_EQ(FirstDifference(got[run].var.data(), got[0].var.data(), in.rows), -1) << "var";
      ASSERT_EQ(FirstDifference(got[run].cumvar.data(), got[0].cumvar.data(), in.num_slots), -1) << "cumvar";
    }
    ASSERT_EQ(got[1].full_rows, got[0].full_rows);
    ASSERT_TRUE(std::all_of(got[2].full_rows.begin(), got[2].full_rows.end(), [](uint8_t f) { return f == 0xFF; }))
        << "full_rows written by a launch that passed none";
  }
};

// The mixed step of (c) and (b): a chunk that begins inside a sequence (rows 30 … 47 of a prompt
// at 5000, too short for a sample) and ends inside another (its last 20 rows are outside); a
// sequence from position 0; a dense decode row and a dense 20-row prefill between the long
// sequences, which straddle the indexer's 32-row groups; max_candidates above every row.
Scenario MixedStep(const char* name, int32_t method) {
  Scenario sc;
  sc.name = name;
  sc.seqs = {{5000, 48}, {0, 64}, {20000, 128}, {9000, 1, false, true}, {30000, 20, false, true}, {70000, 160}};
  sc.method = method;
  sc.row_begin = 30;
  sc.rows_after = 20;
  sc.max_candidates = 131072;
  return sc;
}

// (a) Fixed k, one sequence: 256 rows at positions 40000 … 40255.
TEST_F(PrefillSelectTest, FixedKOneSequence) {
  GSA_REQUIRE_GPU();
  Run({"fixed k, 256 rows at 40000", {{40000, 256}}, 0});
}

// (b) The variance rule (k_base 2048, k_min 64, k_max 4096), the same shape; then the mixed step.
TEST_F(PrefillSelectTest, VarianceRule) {
  GSA_REQUIRE_GPU();
  Run({"variance, 256 rows at 40000", {{40000, 256}}, 1});
  if (HasFatalFailure() || IsSkipped()) return;
  Run(MixedStep("variance, mixed step", 1));
}

// (c) Two sequences (128 rows at 20000, 160 at 70000) and a dense row between them, fixed k; then
// the mixed step.
TEST_F(PrefillSelectTest, FixedKSeveralSequencesAndDenseRows) {
  GSA_REQUIRE_GPU();
  Run({"fixed k, two sequences and a dense row", {{20000, 128}, {9000, 1, false, true}, {70000, 160}}, 0});
  if (HasFatalFailure() || IsSkipped()) return;
  Run(MixedStep("fixed k, mixed step", 0));
}

// fp8 indexer keys and the relu activation (exact zeros: ties), fixed k, then the variance rule.
TEST_F(PrefillSelectTest, Fp8KeysAndRelu) {
  GSA_REQUIRE_GPU();
  Scenario fp8{"fp8 keys, 256 rows at 40000", {{40000, 256}}, 0};
  fp8.fp8 = true;
  Run(fp8);
  if (HasFatalFailure() || IsSkipped()) return;
  Scenario relu{"relu, variance, 192 rows at 33000", {{33000, 192}}, 1};
  relu.relu = true;
  Run(relu);
}

// (d) A sequence whose keys are all 0 (every score of its rows equal: the list overflows, the rows
// take the full path and keep their latest k positions) next to a random one; 100 + 156 rows, so
// one indexer row group holds both.
TEST_F(PrefillSelectTest, AllTiedRowsTakeTheFullPath) {
  GSA_REQUIRE_GPU();
  Run({"ties", {{30000, 100, true}, {50000, 156}}, 0});
}

// (e) The real shape: the last 2048 rows of a 128K prompt (positions 129024 … 131071), fixed k,
// every row compared; regions in row order, as the engine packs them (1 GB of scores).
TEST_F(PrefillSelectTest, FixedK128KChunk) {
  GSA_REQUIRE_GPU();
  Scenario sc{"128K chunk", {{129024, 2048}}, 0};
  sc.shuffle_regions = false;
  Run(sc);
}

// `edit` applied to valid arguments for `in` (after `valid`) must make PrefillSelect return
// cudaErrorNotSupported without writing anything; the arguments without `edit` run on compute
// capability 9.0 (refused elsewhere).
void ExpectRefused(const char* what, const Scenario& sc, const Inputs& in,
                   const std::function<void(kernels::PrefillSelectArgs&)>& edit,
                   const std::function<void(kernels::PrefillSelectArgs&)>& valid = nullptr) {
  SCOPED_TRACE(what);
  auto ws = Poisoned<uint8_t>(WorkspaceBytes(in));
  {
    Buffers b;
    AllocateBuffers(in, &b);
    kernels::PrefillSelectArgs a = Args(in, sc.method, &b, ws.get(), ws.bytes(), true);
    if (valid) valid(a);
    edit(a);
    const cudaError_t err = kernels::PrefillSelect(a, nullptr);
    ASSERT_EQ(err, cudaErrorNotSupported) << cudaGetErrorName(err);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    ASSERT_NO_FATAL_FAILURE(ExpectNothingWritten(in, b));
  }
  Buffers b;
  AllocateBuffers(in, &b);
  kernels::PrefillSelectArgs a = Args(in, sc.method, &b, ws.get(), ws.bytes(), true);
  if (valid) valid(a);
  const cudaError_t err = kernels::PrefillSelect(a, nullptr);
  if (!gsa::testing::WgmmaKernelsRun()) {
    ASSERT_EQ(err, cudaErrorNotSupported) << "control, " << DeviceName() << ": " << cudaGetErrorName(err);
    return;
  }
  ASSERT_EQ(err, cudaSuccess) << "control (the arguments without the edit): " << cudaGetErrorName(err);
  const std::vector<int32_t> k = Download(b.k);
  ASSERT_NE(k[static_cast<size_t>(in.row_begin)], -1) << "control: k not written";
}

// (f) What PrefillSelect must refuse (cudaErrorNotSupported, nothing launched or written): the
// entropy rule, max_candidates outside [kPrefillSelectMinCandidates, kPrefillSelectMaxCandidates],
// a workspace one byte short or absent, more than 4 indexer heads.
TEST_F(PrefillSelectTest, RefusedArgumentsLaunchNothing) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = gsa::testing::FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  {
    const Scenario sc{"64 rows at 20000", {{20000, 64}}, 0};
    Inputs in;
    ASSERT_NO_FATAL_FAILURE(Build(sc, seed, &in));
    ASSERT_GT(WorkspaceBytes(in), size_t{0});
    ASSERT_NO_FATAL_FAILURE(ExpectRefused("rule method 2 (entropy)", sc, in, [](auto& a) { a.rule.method = 2; }));
    ASSERT_NO_FATAL_FAILURE(ExpectRefused("max_candidates above kPrefillSelectMaxCandidates", sc, in, [](auto& a) {
      a.index.max_candidates = kernels::kPrefillSelectMaxCandidates + 64;
    }));
    ASSERT_NO_FATAL_FAILURE(ExpectRefused("workspace one byte short", sc, in, [](auto& a) { a.workspace_bytes -= 1; }));
    ASSERT_NO_FATAL_FAILURE(ExpectRefused("no workspace", sc, in, [](auto& a) {
      a.workspace = nullptr;
      a.workspace_bytes = 0;
    }));
  }
  {
    // Rows at 10000 … 10063: max_candidates 16384 runs, 16383 (still ≥ every row's length) is refused.
    Scenario sc{"64 rows at 10000", {{10000, 64}}, 0};
    sc.max_candidates = kernels::kPrefillSelectMinCandidates;
    Inputs in;
    ASSERT_NO_FATAL_FAILURE(Build(sc, seed + 10, &in));
    ASSERT_NO_FATAL_FAILURE(ExpectRefused("max_candidates below kPrefillSelectMinCandidates", sc, in, [](auto& a) {
      a.index.max_candidates = kernels::kPrefillSelectMinCandidates - 1;
    }));
  }
  {
    // Projection rows of 8 indexer heads: the first 4 of them run, all 8 are refused.
    Scenario sc{"8 indexer heads", {{20000, 64}}, 0};
    sc.n_heads = 8;
    Inputs in;
    ASSERT_NO_FATAL_FAILURE(Build(sc, seed + 20, &in));
    ASSERT_NO_FATAL_FAILURE(ExpectRefused(
        "8 indexer heads", sc, in, [](auto& a) { a.index.n_indexer_heads = 8; },
        [](auto& a) { a.index.n_indexer_heads = 4; }));
  }
}

}  // namespace
}  // namespace gsa
