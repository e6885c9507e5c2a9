// kernels/indexer.h against an fp32 CPU reference of MODEL.md's I(t, s) on the same bf16 keys:
// a 128K-token decode row, causal prefill rows, dense rows skipped, shuffled block tables, every
// supported d_indexer, both activations; outputs poisoned, every element checked; each row scored
// alone equals it scored in the chunk, bit for bit (paired and single-row tensor-core paths); the
// warpgroup (wgmma) kernel passes every check the per-warp kernel does and gives its scores bit for
// bit; its filtered mode (IndexerScoresFiltered) lists exactly the scores at or above each row's
// threshold.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <random>

#include "engine/backend/cuda/device_buffer.h"
#include "kernels/elementwise.h"
#include "kernels/indexer.h"
#include "tests/testing/cuda_test_support.h"

namespace gsa {
namespace {

using gsa::testing::FromBf16;
using gsa::testing::RandomFloats;
using gsa::testing::ToBf16;
using gsa::testing::Upload;
using kernels::bf16;

struct Case {
  int32_t d_indexer, n_heads;
  bool relu;
  int32_t block_size;
  bool fp8 = false;  // keys as e4m3 codes with per-slot scales (kernels/elementwise.h quantization)
};

// The value of an e4m3 code (host).
float Fp8Value(uint8_t code) {
  const __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(code), __NV_E4M3);
  return __half2float(__half(h));
}

// Whether the warpgroup kernel runs here: compute capability 9.0 and at most 4 indexer heads.
bool WarpgroupKernelRuns(int32_t n_heads) { return ::gsa::testing::WgmmaKernelsRun() && n_heads <= 4; }

// Bitwise equality of two score buffers (NaN poison included), naming the first difference.
void ExpectBitwiseEqual(const std::vector<float>& got, const std::vector<float>& want, const char* what) {
  ASSERT_EQ(got.size(), want.size());
  if (std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0) return;
  size_t i = 0, n = 0;
  for (size_t j = 0; j < got.size(); ++j) {
    if (std::memcmp(&got[j], &want[j], sizeof(float)) != 0 && n++ == 0) i = j;
  }
  ADD_FAILURE() << what << ": " << n << " of " << got.size() << " differ, first at " << i << ": " << got[i]
                << " against " << want[i];
}

// Fused projection rows as the indexer reads them: random qI, and wI (post-sigmoid) in [0.5, 1.5).
std::vector<float> RandomProj(int64_t rows, int64_t stride, int64_t off_wi, int32_t n_heads, uint64_t seed) {
  std::vector<float> proj = RandomFloats(static_cast<size_t>(rows * stride), seed, -2, 2);
  for (int64_t r = 0; r < rows; ++r) {
    for (int j = 0; j < n_heads; ++j) {
      proj[r * stride + off_wi + j] = 0.5f + 0.5f * std::fabs(proj[r * stride + off_wi + j]);
    }
  }
  return proj;
}

// Score offsets of rows packed one after another, `gap` floats apart (to catch overruns); *total:
// the floats the buffer needs.
std::vector<int64_t> PackedOffsets(const std::vector<int32_t>& pos, const std::vector<uint8_t>& dense, int64_t gap,
                                   int64_t* total) {
  std::vector<int64_t> offsets(pos.size());
  *total = 0;
  for (size_t r = 0; r < pos.size(); ++r) {
    offsets[r] = *total;
    *total += (dense[r] ? 0 : pos[r] + 1) + gap;
  }
  return offsets;
}

TEST(IndexerKernel, ScoresMatchCpuForDecodeAndCausalPrefillRows) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = gsa::testing::FreshSeed();
  SCOPED_TRACE(seed);
  for (const Case& cs : {Case{64, 4, false, 64}, Case{16, 2, true, 16}, Case{32, 16, false, 64},
                         Case{128, 1, true, 64}, Case{64, 4, false, 64, true}, Case{16, 2, true, 16, true},
                         Case{128, 9, false, 64, true}}) {
    SCOPED_TRACE(::testing::Message() << "d_indexer " << cs.d_indexer << " heads " << cs.n_heads << " relu " << cs.relu
                                      << " fp8 " << cs.fp8);
    const int32_t bs = cs.block_size, di = cs.d_indexer, nh = cs.n_heads;
    // Sequence 0: a long decode row at position 131071. Sequence 1: prefill rows at positions
    // 0…299 (causal). Sequence 2: a dense row (no scores). Row order mixes them.
    const int64_t ctx0 = 131072, ctx1 = 300, ctx2 = 50;
    const int64_t blocks0 = (ctx0 + bs - 1) / bs, blocks1 = (ctx1 + bs - 1) / bs, blocks2 = (ctx2 + bs - 1) / bs;
    const int64_t num_blocks = blocks0 + blocks1 + blocks2 + 5;
    std::vector<int32_t> perm(static_cast<size_t>(num_blocks));
    std::iota(perm.begin(), perm.end(), 0);
    std::mt19937 rng(static_cast<uint32_t>(seed));
    std::shuffle(perm.begin(), perm.end(), rng);
    const int32_t max_blocks = static_cast<int32_t>(blocks0);
    std::vector<int32_t> tables(3 * static_cast<size_t>(max_blocks), 0);
    int64_t next = 0;
    for (int64_t b = 0; b < blocks0; ++b) tables[b] = perm[next++];
    for (int64_t b = 0; b < blocks1; ++b) tables[max_blocks + b] = perm[next++];
    for (int64_t b = 0; b < blocks2; ++b) tables[2 * max_blocks + b] = perm[next++];

    const int64_t num_slots = num_blocks * bs;
    const std::vector<float> keys_f = RandomFloats(static_cast<size_t>(num_slots * di), seed + 1);
    std::vector<bf16> keys(keys_f.size());
    std::vector<float> keys_r(keys_f.size());
    for (size_t i = 0; i < keys.size(); ++i) {
      keys[i] = ToBf16(keys_f[i]);
      keys_r[i] = FromBf16(keys[i]);
    }
    // Repeated tokens: sequence 0's positions 1000, 77777 and 131071 carry position 5's key, so
    // their scores must equal position 5's bit for bit (MODEL.md, "Ties").
    const int64_t kDupPositions[] = {1000, 77777, 131071};
    auto slot0 = [&](int64_t p) { return static_cast<int64_t>(tables[p / bs]) * bs + p % bs; };
    for (int64_t p : kDupPositions) {
      for (int i = 0; i < di; ++i) {
        keys[slot0(p) * di + i] = keys[slot0(5) * di + i];
        keys_r[slot0(p) * di + i] = keys_r[slot0(5) * di + i];
      }
    }
    // fp8: every slot's key quantized as PostProjection does; the reference uses the dequantized
    // values (the kernel factors the scale out of the dot product: equal up to rounding).
    std::vector<uint8_t> codes;
    std::vector<float> scales;
    if (cs.fp8) {
      codes.resize(keys.size());
      scales.resize(static_cast<size_t>(num_slots));
      for (int64_t sl = 0; sl < num_slots; ++sl) {
        float amax = 0.0f;
        for (int i = 0; i < di; ++i) amax = std::max(amax, std::fabs(keys_f[sl * di + i]));
        scales[sl] = kernels::Fp8KeyScale(amax);
        for (int i = 0; i < di; ++i) {
          codes[sl * di + i] = kernels::Fp8KeyCode(keys_f[sl * di + i], scales[sl]);
          keys_r[sl * di + i] = Fp8Value(codes[sl * di + i]) * scales[sl];
        }
      }
      for (int64_t p : kDupPositions) {
        for (int i = 0; i < di; ++i) {
          codes[slot0(p) * di + i] = codes[slot0(5) * di + i];
          keys_r[slot0(p) * di + i] = keys_r[slot0(5) * di + i];
        }
        scales[slot0(p)] = scales[slot0(5)];
      }
    }
    std::vector<int32_t> seq, pos;
    std::vector<uint8_t> dense;
    auto add = [&](int32_t s, int32_t p, bool d) {
      seq.push_back(s);
      pos.push_back(p);
      dense.push_back(d ? 1 : 0);
    };
    add(1, 0, false);
    add(0, static_cast<int32_t>(ctx0 - 1), false);
    add(2, static_cast<int32_t>(ctx2 - 1), true);
    for (int32_t p = 1; p < ctx1; ++p) add(1, p, false);
    const int64_t rows = static_cast<int64_t>(seq.size());
    const int64_t stride = nh * di + nh + 5, off_qi = 2, off_wi = 2 + nh * di;
    const std::vector<float> proj = RandomProj(rows, stride, off_wi, nh, seed + 2);
    const std::vector<float> bias = RandomFloats(static_cast<size_t>(nh), seed + 3, -0.5, 0.5);
    int64_t total = 0;
    const std::vector<int64_t> offsets = PackedOffsets(pos, dense, 7, &total);
    auto d_keys = Upload(keys);
    auto d_tables = Upload(tables);
    auto d_seq = Upload(seq);
    auto d_pos = Upload(pos);
    auto d_dense = Upload(dense);
    auto d_proj = Upload(proj);
    auto d_bias = Upload(bias);
    auto d_off = Upload(offsets);
    auto scores_buf = DeviceBuffer<float>::Allocate(static_cast<size_t>(total));
    ASSERT_TRUE(scores_buf.ok());
    ASSERT_EQ(cudaMemset(scores_buf->get(), 0xFF, scores_buf->bytes()), cudaSuccess);

    kernels::IndexerScoresArgs a;
    a.proj = d_proj.get();
    a.proj_stride = stride;
    a.off_qi = off_qi;
    a.off_wi = off_wi;
    a.bias = d_bias.get();
    a.ki_cache = d_keys.get();
    auto d_codes = Upload(codes.empty() ? std::vector<uint8_t>(1) : codes);
    auto d_scales = Upload(scales.empty() ? std::vector<float>(1) : scales);
    if (cs.fp8) {
      a.ki_cache = nullptr;
      a.ki_fp8 = d_codes.get();
      a.ki_scale = d_scales.get();
    }
    a.paged = {d_tables.get(), max_blocks, bs};
    a.rows.seq = d_seq.get();
    a.rows.position = d_pos.get();
    a.rows.dense = d_dense.get();
    a.n_indexer_heads = nh;
    a.d_indexer = di;
    a.relu = cs.relu;
    a.scores = scores_buf->get();
    a.score_offset = d_off.get();
    a.row_begin = 0;
    a.row_count = rows;
    a.max_candidates = ctx0;
    ASSERT_TRUE(kernels::IndexerScoresSupports(di, nh));
    std::vector<float> per_warp;  // the per-warp kernel's scores, which the warpgroup kernel must equal
    for (const auto kernel :
         {kernels::IndexerScoresArgs::Kernel::kPerWarp, kernels::IndexerScoresArgs::Kernel::kWarpgroup}) {
      const bool warpgroup = kernel == kernels::IndexerScoresArgs::Kernel::kWarpgroup;
      SCOPED_TRACE(warpgroup ? "warpgroup kernel" : "per-warp kernel");
      a.kernel = kernel;
      ASSERT_EQ(cudaMemset(scores_buf->get(), 0xFF, scores_buf->bytes()), cudaSuccess);
      if (warpgroup && !WarpgroupKernelRuns(nh)) {
        EXPECT_EQ(kernels::IndexerScores(a, nullptr), cudaErrorNotSupported) << "forced where it cannot run";
        continue;
      }
      ASSERT_EQ(kernels::IndexerScores(a, nullptr), cudaSuccess);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      auto got = scores_buf->ToHost();
      ASSERT_TRUE(got.ok());

      // Every split of the candidates over blocks (1, 2, 4 or 8 passes of 256 per block; the launch
      // chose one of them above) gives bitwise the same scores.
      for (int32_t tiles : {1, 2, 4, 8}) {
        SCOPED_TRACE(::testing::Message() << "tiles per block " << tiles);
        auto tiles_buf = DeviceBuffer<float>::Allocate(static_cast<size_t>(total));
        ASSERT_TRUE(tiles_buf.ok());
        ASSERT_EQ(cudaMemset(tiles_buf->get(), 0xFF, tiles_buf->bytes()), cudaSuccess);
        kernels::IndexerScoresArgs forced = a;
        forced.scores = tiles_buf->get();
        forced.tiles_per_block = tiles;
        ASSERT_EQ(kernels::IndexerScores(forced, nullptr), cudaSuccess);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        auto again = tiles_buf->ToHost();
        ASSERT_TRUE(again.ok());
        ASSERT_EQ(std::memcmp(again->data(), got->data(), static_cast<size_t>(total) * sizeof(float)), 0)
            << "the scores depend on how the candidates are split over blocks";
      }
      {
        kernels::IndexerScoresArgs bad = a;
        bad.tiles_per_block = 3;
        EXPECT_EQ(kernels::IndexerScores(bad, nullptr), cudaErrorInvalidValue);
      }
      // Each row scored alone (its own launch: with ≤ 4 heads the chunk launch scores two rows per
      // mma, a lone row one) gives bitwise the chunk's scores.
      {
        auto alone_buf = DeviceBuffer<float>::Allocate(static_cast<size_t>(total));
        ASSERT_TRUE(alone_buf.ok());
        ASSERT_EQ(cudaMemset(alone_buf->get(), 0xFF, alone_buf->bytes()), cudaSuccess);
        kernels::IndexerScoresArgs one = a;
        one.scores = alone_buf->get();
        for (int64_t r = 0; r < rows; ++r) {
          one.row_begin = r;
          one.row_count = 1;
          one.score_offset = d_off.get() + r;
          one.max_candidates = dense[r] ? 1 : pos[r] + 1;
          ASSERT_EQ(kernels::IndexerScores(one, nullptr), cudaSuccess);
        }
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        auto alone = alone_buf->ToHost();
        ASSERT_TRUE(alone.ok());
        ASSERT_EQ(std::memcmp(alone->data(), got->data(), static_cast<size_t>(total) * sizeof(float)), 0)
            << "a row scored alone differs from the same row scored in the chunk";
      }
      for (int64_t p : kDupPositions) {
        uint32_t a, b;
        std::memcpy(&a, &(*got)[offsets[1] + p], 4);
        std::memcpy(&b, &(*got)[offsets[1] + 5], 4);
        ASSERT_EQ(a, b) << "position " << p << " repeats position 5's key";
      }
      const float scale = 1.0f / std::sqrt(static_cast<float>(di));
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t span_end = r + 1 < rows ? offsets[r + 1] : total;
        if (dense[r]) {
          for (int64_t i = offsets[r]; i < span_end; ++i) {
            ASSERT_TRUE(std::isnan((*got)[i])) << "dense row " << r << " written";
          }
          continue;
        }
        const float* q = proj.data() + r * stride + off_qi;
        const float* w = proj.data() + r * stride + off_wi;
        for (int64_t s = 0; s <= pos[r]; ++s) {
          const int64_t slot = static_cast<int64_t>(tables[seq[r] * max_blocks + s / bs]) * bs + s % bs;
          double acc = 0.0;
          for (int j = 0; j < nh; ++j) {
            double dot = 0.0;
            for (int i = 0; i < di; ++i) dot += static_cast<double>(q[j * di + i]) * keys_r[slot * di + i];
            const double z = dot * scale + bias[j];
            const double phi = cs.relu ? std::max(z, 0.0) : 1.0 / (1.0 + std::exp(-z));
            acc += w[j] * phi;
          }
          const float g = (*got)[offsets[r] + s];
          ASSERT_FALSE(std::isnan(g)) << "row " << r << " s " << s << " unwritten";
          ASSERT_NEAR(g, acc, 2e-5 * (1.0 + std::fabs(acc)) * nh) << "row " << r << " s " << s;
        }
        for (int64_t i = offsets[r] + pos[r] + 1; i < span_end; ++i) {
          ASSERT_TRUE(std::isnan((*got)[i])) << "row " << r << " wrote past its position";
        }
      }
      if (!warpgroup) {
        per_warp = *got;
      } else {
        ExpectBitwiseEqual(*got, per_warp, "the warpgroup kernel's scores differ from the per-warp kernel's");
      }
    }
  }
}

// Two sequences' paged indexer keys: max_blocks blocks of bs slots each, the block tables a shuffle
// of all 2 · max_blocks blocks (sequence s: entries [s · max_blocks, …)), random bf16 keys, and the
// same keys as e4m3 codes with per-slot scales (the cache's quantizer).
struct PagedKeys {
  std::vector<int32_t> tables;
  std::vector<bf16> keys;
  std::vector<uint8_t> codes;
  std::vector<float> scales;
};
PagedKeys RandomPagedKeys(int32_t max_blocks, int32_t bs, int32_t di, uint64_t seed) {
  PagedKeys pk;
  const int64_t num_blocks = 2 * int64_t{max_blocks};
  pk.tables.resize(static_cast<size_t>(num_blocks));
  std::iota(pk.tables.begin(), pk.tables.end(), 0);
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::shuffle(pk.tables.begin(), pk.tables.end(), rng);
  const int64_t num_slots = num_blocks * bs;
  const std::vector<float> keys_f = RandomFloats(static_cast<size_t>(num_slots * di), seed + 1);
  pk.keys.resize(keys_f.size());
  for (size_t i = 0; i < keys_f.size(); ++i) pk.keys[i] = ToBf16(keys_f[i]);
  pk.codes.resize(keys_f.size());
  pk.scales.resize(static_cast<size_t>(num_slots));
  for (int64_t sl = 0; sl < num_slots; ++sl) {
    float amax = 0.0f;
    for (int i = 0; i < di; ++i) amax = std::max(amax, std::fabs(keys_f[sl * di + i]));
    pk.scales[sl] = kernels::Fp8KeyScale(amax);
    for (int i = 0; i < di; ++i) pk.codes[sl * di + i] = kernels::Fp8KeyCode(keys_f[sl * di + i], pk.scales[sl]);
  }
  return pk;
}

// A chunk's device inputs for the indexer: the paged keys (both forms), the rows (sequence,
// position, dense) and their score offsets, packed 3 floats apart; Args() points an
// IndexerScoresArgs at them (qI at column 0 of each projection row, wI at off_wi).
struct DeviceChunk {
  DeviceChunk(const PagedKeys& pk, const std::vector<int32_t>& seq, const std::vector<int32_t>& pos,
              const std::vector<uint8_t>& dense)
      : offsets(PackedOffsets(pos, dense, 3, &total)),
        keys(Upload(pk.keys)),
        codes(Upload(pk.codes)),
        scales(Upload(pk.scales)),
        tables(Upload(pk.tables)),
        d_seq(Upload(seq)),
        d_pos(Upload(pos)),
        d_dense(Upload(dense)),
        d_off(Upload(offsets)) {}

  kernels::IndexerScoresArgs Args(const float* proj, int64_t stride, int64_t off_wi, const float* bias, int32_t nh,
                                  int32_t di, bool fp8, bool relu, int32_t max_blocks, int32_t bs,
                                  int64_t max_candidates, int32_t runs) const {
    kernels::IndexerScoresArgs a;
    a.proj = proj;
    a.proj_stride = stride;
    a.off_qi = 0;
    a.off_wi = off_wi;
    a.bias = bias;
    if (fp8) {
      a.ki_fp8 = codes.get();
      a.ki_scale = scales.get();
    } else {
      a.ki_cache = keys.get();
    }
    a.paged = {tables.get(), max_blocks, bs};
    a.rows.seq = d_seq.get();
    a.rows.position = d_pos.get();
    a.rows.dense = d_dense.get();
    a.n_indexer_heads = nh;
    a.d_indexer = di;
    a.relu = relu;
    a.score_offset = d_off.get();
    a.row_begin = 0;
    a.row_count = static_cast<int64_t>(offsets.size());
    a.max_candidates = max_candidates;
    a.sequence_runs = runs;
    return a;
  }

  int64_t total = 0;  // floats the score buffer needs
  std::vector<int64_t> offsets;
  DeviceBuffer<bf16> keys;
  DeviceBuffer<uint8_t> codes;
  DeviceBuffer<float> scales;
  DeviceBuffer<int32_t> tables, d_seq, d_pos;
  DeviceBuffer<uint8_t> d_dense;
  DeviceBuffer<int64_t> d_off;
};

// A prefill chunk at 128K as the engine sends it (kAuto with the chunk's sequence runs, which picks
// the warpgroup kernel where it runs): 40 rows of a short prompt, a dense row, then 320 rows of a
// 128K-token prompt, so row groups straddle the runs. Both kernels, every split of the candidates
// over blocks, bitwise equal (poisoned gaps included); the per-warp kernel is checked against the
// CPU in the test above.
TEST(IndexerKernel, WarpgroupKernelEqualsPerWarpOnA128KPrefillChunk) {
  GSA_REQUIRE_GPU();
  if (!WarpgroupKernelRuns(4)) GTEST_SKIP() << "the warpgroup (wgmma) kernel needs compute capability 9.0";
  const uint64_t seed = gsa::testing::FreshSeed();
  SCOPED_TRACE(seed);
  for (const bool fp8_relu : {false, true}) {
    SCOPED_TRACE(fp8_relu ? "fp8 keys, relu" : "bf16 keys, sigmoid");
    constexpr int32_t bs = 64, di = 64, nh = 4;
    const int64_t ctx0 = 131072, rows0 = 320, rows1 = 40;
    const int32_t max_blocks = static_cast<int32_t>(ctx0 / bs);
    const PagedKeys pk = RandomPagedKeys(max_blocks, bs, di, seed);
    std::vector<int32_t> seq, pos;
    std::vector<uint8_t> dense;
    for (int32_t p = 0; p < rows1; ++p) {
      seq.push_back(1);
      pos.push_back(p);
      dense.push_back(0);
    }
    seq.push_back(1);
    pos.push_back(rows1);
    dense.push_back(1);
    for (int64_t i = 0; i < rows0; ++i) {
      seq.push_back(0);
      pos.push_back(static_cast<int32_t>(ctx0 - rows0 + i));
      dense.push_back(0);
    }
    const int64_t rows = static_cast<int64_t>(seq.size());
    const int64_t stride = nh * di + nh, off_wi = nh * di;
    const std::vector<float> proj = RandomProj(rows, stride, off_wi, nh, seed + 2);
    const std::vector<float> bias = RandomFloats(nh, seed + 3, -0.5, 0.5);
    const DeviceChunk chunk(pk, seq, pos, dense);
    const int64_t total = chunk.total;
    const std::vector<int64_t>& offsets = chunk.offsets;
    auto d_proj = Upload(proj);
    auto d_bias = Upload(bias);
    const kernels::IndexerScoresArgs a =
        chunk.Args(d_proj.get(), stride, off_wi, d_bias.get(), nh, di, fp8_relu, fp8_relu, max_blocks, bs, ctx0, 3);
    auto run = [&](kernels::IndexerScoresArgs::Kernel kernel, int32_t tiles, std::vector<float>* out) {
      auto buf = DeviceBuffer<float>::Allocate(static_cast<size_t>(total));
      ASSERT_TRUE(buf.ok());
      ASSERT_EQ(cudaMemset(buf->get(), 0xFF, buf->bytes()), cudaSuccess);
      kernels::IndexerScoresArgs x = a;
      x.kernel = kernel;
      x.tiles_per_block = tiles;
      x.scores = buf->get();
      ASSERT_EQ(kernels::IndexerScores(x, nullptr), cudaSuccess);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      auto host = buf->ToHost();
      ASSERT_TRUE(host.ok());
      *out = std::move(*host);
    };
    std::vector<float> want, got;
    run(kernels::IndexerScoresArgs::Kernel::kPerWarp, 0, &want);
    run(kernels::IndexerScoresArgs::Kernel::kAuto, 0, &got);
    ExpectBitwiseEqual(got, want, "the chunk's scores (kAuto) differ from the per-warp kernel's");
    for (int32_t tiles : {1, 8}) {
      SCOPED_TRACE(::testing::Message() << "warpgroup kernel, tiles per block " << tiles);
      run(kernels::IndexerScoresArgs::Kernel::kWarpgroup, tiles, &got);
      ExpectBitwiseEqual(got, want, "the warpgroup kernel's scores differ from the per-warp kernel's");
    }
    // Nothing past a row's position and nothing for the dense row (the poison survives).
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t end = r + 1 < rows ? offsets[r + 1] : total;
      for (int64_t i = offsets[r] + (dense[r] ? 0 : pos[r] + 1); i < end; ++i) {
        ASSERT_TRUE(std::isnan(want[i])) << "row " << r << " wrote past its position";
      }
      if (!dense[r]) {
        ASSERT_FALSE(std::isnan(want[offsets[r] + pos[r]])) << "row " << r << " unwritten";
      }
    }
  }
}

// IndexerScoresFiltered (the warpgroup kernel's filtered mode, without sums, as PrefillSelect runs
// it) against the stored scores of the same inputs: each row's list holds exactly the (position,
// score bits) whose score reaches the row's threshold, in any order, and its count says how many.
// The thresholds are scores of the row themselves (ties at the threshold are kept), its maximum and
// NaN (nothing kept); bf16 and fp8 keys, wide and narrow score spreads (a narrow row's scores
// crowd its threshold), strongly negative biases (scores well below half the weights' sum); two
// sequences, one of which begins inside the second row block (a run boundary inside a block).
TEST(IndexerKernel, FilteredKernelKeepsExactlyTheScoresAtOrAboveEachThreshold) {
  GSA_REQUIRE_GPU();
  if (!WarpgroupKernelRuns(4)) GTEST_SKIP() << "the filtered mode runs the warpgroup (wgmma) kernel: compute capability 9.0";
  const uint64_t seed = gsa::testing::FreshSeed();
  SCOPED_TRACE(seed);
  struct Variant {
    const char* name;
    bool fp8;
    float q_scale;  // the queries' scale: the spread of each head's z
    float bias_lo, bias_hi;
  };
  const Variant variants[] = {
      {"bf16 keys", false, 1.0f, -0.5f, 0.5f},
      {"fp8 keys", true, 1.0f, -0.5f, 0.5f},
      {"wide spread (queries x6)", false, 6.0f, -0.5f, 0.5f},
      {"narrow spread (queries x0.02, bias 0.3)", false, 0.02f, 0.3f, 0.3f},
      {"negative bias (-3): scores well below half the weights' sum", false, 1.0f, -3.0f, -3.0f},
  };
  constexpr int32_t bs = 64, di = 64, nh = 4;
  // Sequence 0: 48 rows at the end of a 32K context; sequence 1: 40 rows at 1000 … 1039 (the second
  // row block holds both: a run boundary inside it).
  const int64_t ctx0 = 32768, rows0 = 48, rows1 = 40, pos1 = 1000;
  const int32_t max_blocks = static_cast<int32_t>(ctx0 / bs);
  const PagedKeys pk = RandomPagedKeys(max_blocks, bs, di, seed);
  std::vector<int32_t> seq, pos;
  std::vector<uint8_t> dense;
  for (int64_t i = 0; i < rows0; ++i) {
    seq.push_back(0);
    pos.push_back(static_cast<int32_t>(ctx0 - rows0 + i));
    dense.push_back(0);
  }
  for (int64_t i = 0; i < rows1; ++i) {
    seq.push_back(1);
    pos.push_back(static_cast<int32_t>(pos1 + i));
    dense.push_back(0);
  }
  const int64_t rows = static_cast<int64_t>(seq.size());
  const int64_t stride = nh * di + nh, off_wi = nh * di;
  const DeviceChunk chunk(pk, seq, pos, dense);
  const int64_t total = chunk.total;
  const std::vector<int64_t>& offsets = chunk.offsets;
  for (const Variant& v : variants) {
    SCOPED_TRACE(v.name);
    std::vector<float> proj = RandomProj(rows, stride, off_wi, nh, seed + 2);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t i = 0; i < off_wi; ++i) proj[r * stride + i] *= v.q_scale;
    }
    const std::vector<float> bias = RandomFloats(nh, seed + 3, v.bias_lo, v.bias_hi);
    auto d_proj = Upload(proj);
    auto d_bias = Upload(bias);
    kernels::IndexerScoresArgs a =
        chunk.Args(d_proj.get(), stride, off_wi, d_bias.get(), nh, di, v.fp8, false, max_blocks, bs, ctx0, 2);
    a.kernel = kernels::IndexerScoresArgs::Kernel::kWarpgroup;
    // The stored scores.
    auto buf = DeviceBuffer<float>::Allocate(static_cast<size_t>(total));
    ASSERT_TRUE(buf.ok());
    ASSERT_EQ(cudaMemset(buf->get(), 0xFF, buf->bytes()), cudaSuccess);
    a.scores = buf->get();
    ASSERT_EQ(kernels::IndexerScores(a, nullptr), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    auto stored = buf->ToHost();
    ASSERT_TRUE(stored.ok());

    // Thresholds: a score of the row at a rank that cycles with the row (1%, 3%, 10%, the maximum,
    // NaN, 30%, 40%, 0.5%); the first row block takes only the first four kinds.
    std::vector<float2> ts(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<float> sorted(stored->begin() + offsets[r], stored->begin() + offsets[r] + pos[r] + 1);
      std::sort(sorted.begin(), sorted.end(), std::greater<float>());
      const int64_t n = static_cast<int64_t>(sorted.size());
      const int kind = static_cast<int>(r < 32 ? r % 4 : r % 8);
      const double share[8] = {0.01, 0.03, 0.10, 0.0, -1.0, 0.30, 0.40, 0.005};
      float thr = std::numeric_limits<float>::quiet_NaN();
      if (share[kind] >= 0.0) thr = sorted[static_cast<size_t>(std::min<int64_t>(n - 1, share[kind] * n))];
      ts[static_cast<size_t>(r)] = make_float2(thr, 0.0f);
    }
    auto d_ts = Upload(ts);
    auto d_count = DeviceBuffer<int32_t>::Allocate(static_cast<size_t>(rows));
    ASSERT_TRUE(d_count.ok());
    ASSERT_EQ(cudaMemset(d_count->get(), 0, d_count->bytes()), cudaSuccess);
    ASSERT_EQ(cudaMemset(buf->get(), 0xFF, buf->bytes()), cudaSuccess);
    kernels::IndexerFilter f;
    f.thr_shift = d_ts.get();
    f.count = d_count->get();
    f.list_cap = INT32_MAX;
    ASSERT_EQ(kernels::IndexerScoresFiltered(a, f, nullptr), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    auto lists = buf->ToHost();
    auto counts = d_count->ToHost();
    ASSERT_TRUE(lists.ok() && counts.ok());
    for (int64_t r = 0; r < rows; ++r) {
      SCOPED_TRACE(::testing::Message() << "row " << r << ", threshold " << ts[static_cast<size_t>(r)].x);
      const float thr = ts[static_cast<size_t>(r)].x;
      std::vector<std::pair<int32_t, uint32_t>> want, got;
      for (int32_t p = 0; p <= pos[r]; ++p) {
        const float x = (*stored)[static_cast<size_t>(offsets[r] + p)];
        if (x >= thr) {
          uint32_t bits;
          std::memcpy(&bits, &x, sizeof(bits));
          want.emplace_back(p, bits);
        }
      }
      ASSERT_EQ((*counts)[static_cast<size_t>(r)], static_cast<int32_t>(want.size()));
      // The list as PrefillListOf lays it out in the row's region (8-byte aligned entries).
      const uintptr_t at = reinterpret_cast<uintptr_t>(buf->get() + offsets[r]);
      const int64_t skip = (at & 7u) != 0 ? 1 : 0;
      ASSERT_LE(static_cast<int64_t>(want.size()), (pos[r] + 1 - skip) / 2) << "the test's list must fit";
      for (size_t e = 0; e < want.size(); ++e) {
        int32_t entry[2];
        std::memcpy(entry, lists->data() + offsets[r] + skip + 2 * static_cast<int64_t>(e), sizeof(entry));
        got.emplace_back(entry[0], static_cast<uint32_t>(entry[1]));
      }
      std::sort(got.begin(), got.end());
      ASSERT_EQ(got, want) << "the list differs from the scores at or above the threshold";
    }
  }
}

}  // namespace
}  // namespace gsa
