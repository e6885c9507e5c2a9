// RoPE of MODEL.md: plain inverse frequencies, NTK and YaRN scaling (checked against the formulas
// written out independently here), and the rotate-half application.
#include "engine/backend/rope.h"

#include <gtest/gtest.h>

#include <cmath>

namespace gsa {
namespace {

ModelConfig Cfg(int64_t d_head, double base = 10000.0) {
  ModelConfig c;
  c.d_head = d_head;
  c.rope_base = base;
  return c;
}

TEST(RopeInvFreq, PlainIsBasePowerMinusTwoIOverD) {
  ModelConfig c = Cfg(128);
  std::vector<float> f = RopeInvFreq(c);
  ASSERT_EQ(f.size(), 64u);
  for (int i = 0; i < 64; ++i) {
    EXPECT_FLOAT_EQ(f[i], static_cast<float>(std::pow(10000.0, -2.0 * i / 128.0))) << i;
  }
  EXPECT_FLOAT_EQ(f[0], 1.0f);
}

TEST(RopeInvFreq, NtkScalesTheBase) {
  ModelConfig c = Cfg(64, 500000.0);
  c.rope_scaling.type = RopeScalingType::kNtk;
  c.rope_scaling.factor = 8.0;
  std::vector<float> f = RopeInvFreq(c);
  const double base = 500000.0 * std::pow(8.0, 64.0 / 62.0);
  for (int i = 0; i < 32; ++i) {
    EXPECT_FLOAT_EQ(f[i], static_cast<float>(std::pow(base, -2.0 * i / 64.0))) << i;
  }
}

TEST(RopeInvFreq, YarnKeepsHighFrequenciesInterpolatesLowAndBlendsBetween) {
  ModelConfig c = Cfg(128);
  c.rope_scaling.type = RopeScalingType::kYarn;
  c.rope_scaling.factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 4096;
  c.rope_scaling.beta_fast = 32;
  c.rope_scaling.beta_slow = 1;
  std::vector<float> f = RopeInvFreq(c);
  // low = floor(128 ln(4096/(2π·32)) / (2 ln 10000)) = floor(128·3.0/18.42) = 20,
  // high = ceil(128 ln(4096/(2π)) / (2 ln 10000)) = ceil(128·6.48/18.42) = 46.
  const double lb = std::log(10000.0);
  const int low = static_cast<int>(std::floor(128 * std::log(4096 / (2 * M_PI * 32)) / (2 * lb)));
  const int high = static_cast<int>(std::ceil(128 * std::log(4096 / (2 * M_PI * 1)) / (2 * lb)));
  ASSERT_EQ(low, 20);
  ASSERT_EQ(high, 46);
  for (int i = 0; i < 64; ++i) {
    const double e = std::pow(10000.0, -2.0 * i / 128.0);
    double want;
    if (i < low) {
      want = e;
    } else if (i > high) {
      want = e / 4.0;
    } else {
      const double s = double(i - low) / double(high - low);
      want = (1 - s) * e + s * e / 4.0;
    }
    EXPECT_FLOAT_EQ(f[i], static_cast<float>(want)) << i;
  }
  EXPECT_FLOAT_EQ(f[low], static_cast<float>(std::pow(10000.0, -2.0 * low / 128.0)));
  EXPECT_FLOAT_EQ(f[high], static_cast<float>(std::pow(10000.0, -2.0 * high / 128.0) / 4.0));
}

TEST(RopeInvFreq, YarnRampClampsToTheValidRange) {
  // A tiny original context puts `low` below 0 and a huge one puts `high` past d/2 - 1.
  ModelConfig c = Cfg(32);
  c.rope_scaling.type = RopeScalingType::kYarn;
  c.rope_scaling.factor = 2.0;
  c.rope_scaling.original_max_position_embeddings = 1 << 30;
  std::vector<float> f = RopeInvFreq(c);
  ASSERT_EQ(f.size(), 16u);
  for (float v : f) EXPECT_TRUE(std::isfinite(v));
  EXPECT_FLOAT_EQ(f[0], 1.0f);  // i = 0 < low: unchanged
}

TEST(ApplyRope, RotatesPairsIAndIPlusHalf) {
  const int64_t d = 8;
  std::vector<float> inv = {1.0f, 0.5f, 0.25f, 0.125f};
  std::vector<float> x = {1, 2, 3, 4, 5, 6, 7, 8, -1, -2, -3, -4, -5, -6, -7, -8};  // 2 heads
  std::vector<float> orig = x;
  const int64_t pos = 37;
  ApplyRope(x.data(), 2, d, pos, inv.data());
  for (int h = 0; h < 2; ++h) {
    for (int i = 0; i < 4; ++i) {
      const float angle = static_cast<float>(pos) * inv[i];
      const float a = orig[h * d + i], b = orig[h * d + i + 4];
      EXPECT_FLOAT_EQ(x[h * d + i], a * std::cos(angle) - b * std::sin(angle));
      EXPECT_FLOAT_EQ(x[h * d + i + 4], b * std::cos(angle) + a * std::sin(angle));
    }
  }
}

TEST(ApplyRope, PositionZeroIsIdentityAndNormIsPreserved) {
  std::vector<float> inv = RopeInvFreq(Cfg(64));
  std::vector<float> x(64);
  for (int i = 0; i < 64; ++i) x[i] = std::sin(0.3f * i) + 0.1f * i;
  std::vector<float> y = x;
  ApplyRope(y.data(), 1, 64, 0, inv.data());
  EXPECT_EQ(x, y);
  ApplyRope(y.data(), 1, 64, 100000, inv.data());
  double n0 = 0, n1 = 0;
  for (int i = 0; i < 64; ++i) {
    n0 += x[i] * x[i];
    n1 += y[i] * y[i];
  }
  EXPECT_NEAR(n0, n1, 1e-3 * n0);
}

}  // namespace
}  // namespace gsa
