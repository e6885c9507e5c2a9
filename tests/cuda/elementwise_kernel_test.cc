// kernels/elementwise.h against fp32 CPU references (engine/backend/cpu/cpu_ops.h, rope.h) on
// fresh random inputs, outputs poisoned before each launch and every element checked.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "engine/backend/cpu/cpu_ops.h"
#include "engine/backend/cuda/device_buffer.h"
#include "engine/backend/rope.h"
#include "kernels/elementwise.h"
#include "tests/testing/cuda_test_support.h"

namespace gsa {
namespace {

using gsa::testing::FromBf16;
using gsa::testing::RandomFloats;
using gsa::testing::RoundBf16;
using gsa::testing::ToBf16;
using gsa::testing::Download;
using gsa::testing::Poisoned;
using gsa::testing::Upload;
using kernels::bf16;

// |got − want| within `rel` of |want| (plus a floor for values near zero).
void ExpectClose(float got, float want, float rel, float abs_floor, const std::string& what) {
  ASSERT_FALSE(std::isnan(got)) << what << " is NaN (unwritten?)";
  EXPECT_LE(std::fabs(got - want), rel * std::fabs(want) + abs_floor) << what << ": got " << got << " want " << want;
}

TEST(ElementwiseKernels, EmbedRowsCopiesTheRowsExactly) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = gsa::testing::FreshSeed();
  SCOPED_TRACE(seed);
  const int64_t vocab = 5000, d = 2048, rows = 37;
  const std::vector<float> table = RandomFloats(static_cast<size_t>(vocab * d), seed);
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::vector<int32_t> ids(rows);
  for (auto& i : ids) i = static_cast<int32_t>(rng() % vocab);
  auto d_table = Upload(table);
  auto d_ids = Upload(ids);
  auto d_out = Poisoned<float>(static_cast<size_t>(rows * d));
  ASSERT_EQ(kernels::EmbedRows(d_table.get(), d_ids.get(), rows, d, d_out.get(), nullptr), cudaSuccess);
  const std::vector<float> out = Download(d_out);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < d; ++i) {
      ASSERT_EQ(out[r * d + i], table[ids[r] * d + i]) << "row " << r << " col " << i;
    }
  }
}

TEST(ElementwiseKernels, RmsNormRowsMatchesCpuWithAndWithoutGatherInBf16AndFp32) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = gsa::testing::FreshSeed();
  SCOPED_TRACE(seed);
  for (int64_t d : {128, 2048, 2049, 3000, 4096, 4100}) {
    const int64_t in_rows = 50, rows = 20;
    const std::vector<float> x = RandomFloats(static_cast<size_t>(in_rows * d), seed, -3, 3);
    const std::vector<float> w = RandomFloats(static_cast<size_t>(d), seed + 1, 0.5, 1.5);
    std::vector<int32_t> gather(rows);
    for (int64_t i = 0; i < rows; ++i) gather[i] = static_cast<int32_t>((i * 7 + 3) % in_rows);
    auto d_x = Upload(x);
    auto d_w = Upload(w);
    auto d_g = Upload(gather);
    for (bool use_gather : {false, true}) {
      auto d_out = Poisoned<bf16>(static_cast<size_t>(rows * d));
      auto d_out32 = Poisoned<float>(static_cast<size_t>(rows * d));
      ASSERT_EQ(kernels::RmsNormRows(d_x.get(), use_gather ? d_g.get() : nullptr, d_w.get(), rows, d, 1e-5f,
                                     d_out.get(), nullptr, use_gather ? d_out32.get() : nullptr),
                cudaSuccess);
      const std::vector<bf16> out = Download(d_out);
      const std::vector<float> out32 = Download(d_out32);
      std::vector<float> ref(static_cast<size_t>(d));
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t src = use_gather ? gather[r] : r;
        cpu::RmsNorm(x.data() + src * d, w.data(), d, 1e-5, ref.data());
        for (int64_t i = 0; i < d; ++i) {
          ExpectClose(FromBf16(out[r * d + i]), ref[i], 8e-3f, 1e-6f,
                      "d " + std::to_string(d) + " row " + std::to_string(r) + " col " + std::to_string(i));
          if (use_gather) {
            ExpectClose(out32[r * d + i], ref[i], 2e-5f, 1e-6f,
                        "fp32 d " + std::to_string(d) + " row " + std::to_string(r) + " col " + std::to_string(i));
          }
        }
      }
    }
  }
}

struct PostProjShape {
  int32_t n_heads, n_kv_heads, d_head, d_indexer, n_ih;
  bool value_gate;
  kernels::GateActivation act;
};

TEST(ElementwiseKernels, PostProjectionRotatesGatesAndWritesSlots) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = gsa::testing::FreshSeed();
  SCOPED_TRACE(seed);
  for (const PostProjShape& s : {PostProjShape{16, 8, 128, 64, 4, true, kernels::GateActivation::kSigmoid},
                                 PostProjShape{8, 2, 64, 64, 4, true, kernels::GateActivation::kTanh},
                                 PostProjShape{4, 2, 32, 16, 2, true, kernels::GateActivation::kSilu},
                                 PostProjShape{4, 4, 64, 32, 1, false, kernels::GateActivation::kSigmoid},
                                 // odd head counts: the last q and KV part blocks hold one head
                                 PostProjShape{5, 1, 64, 32, 3, true, kernels::GateActivation::kSilu}}) {
    SCOPED_TRACE(::testing::Message() << "d_head " << s.d_head << " heads " << s.n_heads << "/" << s.n_kv_heads);
    const int64_t qd = s.n_heads * s.d_head, kvd = s.n_kv_heads * s.d_head;
    const int64_t off_q = 0, off_k = qd, off_v = qd + kvd, off_vg = s.value_gate ? qd + 2 * kvd : -1;
    const int64_t off_ki = (s.value_gate ? qd + 3 * kvd : qd + 2 * kvd) + s.n_ih * s.d_indexer;
    const int64_t off_wi = off_ki + s.d_indexer;
    const int64_t stride = off_wi + s.n_ih + 3;  // padding columns stay untouched
    const int64_t rows = 9, num_slots = 4096;
    // Positions include long-context ones (large RoPE angles).
    const std::vector<int32_t> pos = {0, 1, 63, 64, 65, 1000, 32767, 131071, 131070};
    std::vector<int64_t> slot = {5, 4095, 64, 0, 77, 1234, 2048, 3000, 17};
    const std::vector<float> proj = RandomFloats(static_cast<size_t>(rows * stride), seed, -2, 2);
    const std::vector<float> vg_bias = RandomFloats(static_cast<size_t>(kvd), seed + 2);
    const std::vector<float> wi_bias = RandomFloats(static_cast<size_t>(s.n_ih), seed + 3);
    ModelConfig c;
    c.d_head = s.d_head;
    c.rope_base = 500000.0;
    const std::vector<float> inv_freq = RopeInvFreq(c);

    auto d_proj = Upload(proj);
    auto d_vgb = Upload(vg_bias);
    auto d_wib = Upload(wi_bias);
    auto d_freq = Upload(inv_freq);
    auto d_pos = Upload(pos);
    auto d_slot = Upload(slot);
    auto d_q = Poisoned<bf16>(static_cast<size_t>(rows * qd));
    auto d_k = Poisoned<bf16>(static_cast<size_t>(num_slots * kvd));
    auto d_v = Poisoned<bf16>(static_cast<size_t>(num_slots * kvd));
    auto d_ki = Poisoned<bf16>(static_cast<size_t>(num_slots * s.d_indexer));
    kernels::PostProjectionArgs a;
    a.proj = d_proj.get();
    a.proj_stride = stride;
    a.off_q = off_q;
    a.off_k = off_k;
    a.off_v = off_v;
    a.off_vg = off_vg;
    a.off_ki = off_ki;
    a.off_wi = off_wi;
    a.vg_bias = d_vgb.get();
    a.wi_bias = d_wib.get();
    a.inv_freq = d_freq.get();
    a.gate_act = s.act;
    a.n_heads = s.n_heads;
    a.n_kv_heads = s.n_kv_heads;
    a.d_head = s.d_head;
    a.d_indexer = s.d_indexer;
    a.n_indexer_heads = s.n_ih;
    a.rows.position = d_pos.get();
    a.rows.slot = d_slot.get();
    a.num_rows = rows;
    a.q_out = d_q.get();
    a.k_cache = d_k.get();
    a.v_cache = d_v.get();
    a.ki_cache = d_ki.get();
    ASSERT_EQ(kernels::PostProjection(a, nullptr), cudaSuccess);
    const std::vector<bf16> q = Download(d_q), k = Download(d_k), v = Download(d_v), ki = Download(d_ki);
    const std::vector<float> proj_after = Download(d_proj);
    const GateActivation cpu_act = s.act == kernels::GateActivation::kTanh  ? GateActivation::kTanh
                                   : s.act == kernels::GateActivation::kSilu ? GateActivation::kSilu
                                                                             : GateActivation::kSigmoid;
    std::vector<bool> written(static_cast<size_t>(num_slots), false);
    for (int64_t r = 0; r < rows; ++r) {
      const float* p = proj.data() + r * stride;
      std::vector<float> qr(p + off_q, p + off_q + qd), kr(p + off_k, p + off_k + kvd);
      ApplyRope(qr.data(), s.n_heads, s.d_head, pos[r], inv_freq.data());
      ApplyRope(kr.data(), s.n_kv_heads, s.d_head, pos[r], inv_freq.data());
      for (int64_t i = 0; i < qd; ++i) {
        ExpectClose(FromBf16(q[r * qd + i]), qr[i], 8e-3f, 2e-4f, "q row " + std::to_string(r) + " i " + std::to_string(i));
      }
      const int64_t sl = slot[r];
      written[sl] = true;
      for (int64_t i = 0; i < kvd; ++i) {
        ExpectClose(FromBf16(k[sl * kvd + i]), kr[i], 8e-3f, 2e-4f, "k row " + std::to_string(r) + " i " + std::to_string(i));
        float vv = p[off_v + i];
        if (s.value_gate) vv *= cpu::GateAct(cpu_act, p[off_vg + i] + vg_bias[i]);
        ExpectClose(FromBf16(v[sl * kvd + i]), vv, 8e-3f, 1e-6f, "v row " + std::to_string(r) + " i " + std::to_string(i));
      }
      for (int64_t i = 0; i < s.d_indexer; ++i) {
        ASSERT_EQ(FromBf16(ki[sl * s.d_indexer + i]), RoundBf16(p[off_ki + i]));
      }
      for (int64_t j = 0; j < s.n_ih; ++j) {
        ExpectClose(proj_after[r * stride + off_wi + j], cpu::Sigmoid(p[off_wi + j] + wi_bias[j]), 1e-5f, 1e-7f, "wI");
      }
      // Every other column of the row is unchanged.
      for (int64_t col = 0; col < stride; ++col) {
        if (col >= off_wi && col < off_wi + s.n_ih) continue;
        ASSERT_EQ(proj_after[r * stride + col], p[col]) << "proj row " << r << " col " << col << " changed";
      }
    }
    // Slots no row owns keep the poison.
    for (int64_t sl = 0; sl < num_slots; ++sl) {
      if (written[sl]) continue;
      ASSERT_TRUE(std::isnan(FromBf16(k[sl * kvd]))) << "slot " << sl << " of K written";
      ASSERT_TRUE(std::isnan(FromBf16(v[sl * kvd + kvd - 1]))) << "slot " << sl << " of V written";
      ASSERT_TRUE(std::isnan(FromBf16(ki[sl * s.d_indexer]))) << "slot " << sl << " of kI written";
    }
  }
}

// fp8 indexer keys: PostProjection writes e4m3 codes and one scale per slot, bitwise as the host
// quantizer (Fp8KeyScale / Fp8KeyCode) computes them, and leaves the bf16 key pages alone.
TEST(ElementwiseKernels, PostProjectionQuantizesFp8IndexerKeys) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = gsa::testing::FreshSeed();
  SCOPED_TRACE(seed);
  for (int32_t di : {16, 64, 128}) {
    SCOPED_TRACE(::testing::Message() << "d_indexer " << di);
    const int32_t n_heads = 4, n_kv = 2, d_head = 64, n_ih = 4;
    const int64_t qd = n_heads * d_head, kvd = n_kv * d_head;
    const int64_t off_ki = qd + 2 * kvd + n_ih * di, off_wi = off_ki + di, stride = off_wi + n_ih;
    const int64_t rows = 5, num_slots = 256;
    const std::vector<int32_t> pos = {0, 7, 100, 131071, 3};
    const std::vector<int64_t> slot = {3, 200, 17, 0, 255};
    std::vector<float> proj = RandomFloats(static_cast<size_t>(rows * stride), seed, -3, 3);
    for (int32_t i = 0; i < di; ++i) proj[4 * stride + off_ki + i] = 0.0f;  // an all-zero key: scale 1
    proj[1 * stride + off_ki + 3] = 1e-30f;  // tiny and large components in one key
    proj[2 * stride + off_ki + 0] = -200.0f;
    ModelConfig c;
    c.d_head = d_head;
    const std::vector<float> inv_freq = RopeInvFreq(c);
    auto d_proj = Upload(proj);
    auto d_wib = Upload(RandomFloats(n_ih, seed + 1));
    auto d_freq = Upload(inv_freq);
    auto d_pos = Upload(pos);
    auto d_slot = Upload(slot);
    auto d_q = Poisoned<bf16>(static_cast<size_t>(rows * qd));
    auto d_k = Poisoned<bf16>(static_cast<size_t>(num_slots * kvd));
    auto d_v = Poisoned<bf16>(static_cast<size_t>(num_slots * kvd));
    auto d_codes = Poisoned<uint8_t>(static_cast<size_t>(num_slots * di));
    auto d_scale = Poisoned<float>(static_cast<size_t>(num_slots));
    kernels::PostProjectionArgs a;
    a.proj = d_proj.get();
    a.proj_stride = stride;
    a.off_q = 0;
    a.off_k = qd;
    a.off_v = qd + kvd;
    a.off_ki = off_ki;
    a.off_wi = off_wi;
    a.wi_bias = d_wib.get();
    a.inv_freq = d_freq.get();
    a.n_heads = n_heads;
    a.n_kv_heads = n_kv;
    a.d_head = d_head;
    a.d_indexer = di;
    a.n_indexer_heads = n_ih;
    a.rows.position = d_pos.get();
    a.rows.slot = d_slot.get();
    a.num_rows = rows;
    a.q_out = d_q.get();
    a.k_cache = d_k.get();
    a.v_cache = d_v.get();
    a.ki_fp8 = d_codes.get();
    a.ki_scale = d_scale.get();
    ASSERT_EQ(kernels::PostProjection(a, nullptr), cudaSuccess);
    const std::vector<uint8_t> codes = Download(d_codes);
    const std::vector<float> scales = Download(d_scale);
    std::vector<bool> written(static_cast<size_t>(num_slots), false);
    for (int64_t r = 0; r < rows; ++r) {
      const float* k = proj.data() + r * stride + off_ki;
      float amax = 0.0f;
      for (int32_t i = 0; i < di; ++i) amax = std::max(amax, std::fabs(k[i]));
      const float scale = kernels::Fp8KeyScale(amax);
      const int64_t sl = slot[r];
      written[sl] = true;
      ASSERT_EQ(scales[sl], scale) << "row " << r;
      if (r == 4) {
        ASSERT_EQ(scale, 1.0f);
      }
      for (int32_t i = 0; i < di; ++i) {
        ASSERT_EQ(codes[sl * di + i], kernels::Fp8KeyCode(k[i], scale)) << "row " << r << " i " << i;
        // Round trip within e4m3's half-ulp (2^-4 relative) plus its subnormal step.
        const __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(codes[sl * di + i]), __NV_E4M3);
        const float back = __half2float(__half(h)) * scale;
        ASSERT_NEAR(back, k[i], std::fabs(k[i]) / 16.0f + scale * 0.001953125f) << "row " << r << " i " << i;
      }
    }
    for (int64_t sl = 0; sl < num_slots; ++sl) {
      if (written[sl]) continue;
      ASSERT_TRUE(std::isnan(scales[sl])) << "slot " << sl << " scale written";
      ASSERT_EQ(codes[sl * di], 0xFF) << "slot " << sl << " codes written";
    }
  }
}

TEST(ElementwiseKernels, SwiGluMatchesCpu) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = gsa::testing::FreshSeed();
  SCOPED_TRACE(seed);
  const int64_t rows = 33, f = 6144;
  const std::vector<float> gu = RandomFloats(static_cast<size_t>(rows * 2 * f), seed, -6, 6);
  auto d_gu = Upload(gu);
  auto d_out = Poisoned<bf16>(static_cast<size_t>(rows * f));
  ASSERT_EQ(kernels::SwiGlu(d_gu.get(), rows, f, d_out.get(), nullptr), cudaSuccess);
  const std::vector<bf16> out = Download(d_out);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < f; ++i) {
      const float want = cpu::Silu(gu[r * 2 * f + i]) * gu[r * 2 * f + f + i];
      ExpectClose(FromBf16(out[r * f + i]), want, 8e-3f, 1e-6f, "row " + std::to_string(r) + " i " + std::to_string(i));
    }
  }
}

}  // namespace
}  // namespace gsa
