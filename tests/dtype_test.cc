// Element types: safetensors names and sizes, and the fp32 <-> bf16 / f16 conversions (round to
// nearest even, inf, NaN, subnormals, the largest finite values).
#include "engine/model/dtype.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

namespace gsa {
namespace {

float FromBits(uint32_t bits) { return std::bit_cast<float>(bits); }
[[maybe_unused]] uint32_t Bits(float f) { return std::bit_cast<uint32_t>(f); }

constexpr float kInf = std::numeric_limits<float>::infinity();

TEST(DType, NamesRoundTripForEverySafetensorsDtype) {
  const struct {
    DType dtype;
    const char* name;
    size_t size;
  } kAll[] = {
      {DType::kF32, "F32", 4},     {DType::kF16, "F16", 2},         {DType::kBF16, "BF16", 2},
      {DType::kF64, "F64", 8},     {DType::kI64, "I64", 8},         {DType::kI32, "I32", 4},
      {DType::kI16, "I16", 2},     {DType::kI8, "I8", 1},           {DType::kU8, "U8", 1},
      {DType::kBool, "BOOL", 1},   {DType::kF8E4M3, "F8_E4M3", 1},  {DType::kF8E5M2, "F8_E5M2", 1},
  };
  for (const auto& c : kAll) {
    EXPECT_EQ(DTypeName(c.dtype), c.name);
    ASSERT_TRUE(DTypeFromName(c.name).has_value()) << c.name;
    EXPECT_EQ(*DTypeFromName(c.name), c.dtype) << c.name;
    EXPECT_EQ(DTypeSize(c.dtype), c.size) << c.name;
  }
}

TEST(DType, UnknownNamesAreRefused) {
  EXPECT_FALSE(DTypeFromName("F4").has_value());
  EXPECT_FALSE(DTypeFromName("f32").has_value());  // names are case-sensitive
  EXPECT_FALSE(DTypeFromName("").has_value());
  EXPECT_FALSE(DTypeFromName("F32 ").has_value());
}

TEST(Bf16, ExactValuesConvertBothWays) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3F80);
  EXPECT_EQ(FloatToBf16(-2.0f), 0xC000);
  EXPECT_EQ(FloatToBf16(0.0f), 0x0000);
  EXPECT_EQ(FloatToBf16(-0.0f), 0x8000);
  EXPECT_EQ(Bf16ToFloat(0x3F80), 1.0f);
  EXPECT_EQ(Bf16ToFloat(0x4049), 3.140625f);
  EXPECT_TRUE(std::signbit(Bf16ToFloat(0x8000)));
}

TEST(Bf16, EveryNonNanValueRoundTripsThroughFloat) {
  for (uint32_t b = 0; b <= 0xFFFF; ++b) {
    const auto bits = static_cast<uint16_t>(b);
    const float f = Bf16ToFloat(bits);
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToBf16(f), bits) << std::hex << b;
  }
}

TEST(Bf16, RoundsToNearestWithTiesToEven) {
  // 1 + 2^-8 lies exactly between 0x3F80 (even) and 0x3F81: goes to the even one.
  EXPECT_EQ(FloatToBf16(FromBits(0x3F808000)), 0x3F80);
  // 1 + 3·2^-8 lies between 0x3F81 and 0x3F82 (even): goes up.
  EXPECT_EQ(FloatToBf16(FromBits(0x3F818000)), 0x3F82);
  // Just above or below the midpoint goes to the nearer neighbour.
  EXPECT_EQ(FloatToBf16(FromBits(0x3F808001)), 0x3F81);
  EXPECT_EQ(FloatToBf16(FromBits(0x3F807FFF)), 0x3F80);
  EXPECT_EQ(FloatToBf16(FromBits(0xBF808001)), 0xBF81);  // sign does not change the rule
}

TEST(Bf16, InfinitiesAndLargestValues) {
  EXPECT_EQ(FloatToBf16(kInf), 0x7F80);
  EXPECT_EQ(FloatToBf16(-kInf), 0xFF80);
  EXPECT_EQ(Bf16ToFloat(0x7F80), kInf);
  EXPECT_EQ(Bf16ToFloat(0xFF80), -kInf);
  // The largest finite bf16 converts exactly.
  EXPECT_EQ(Bf16ToFloat(0x7F7F), FromBits(0x7F7F0000));
  EXPECT_EQ(FloatToBf16(FromBits(0x7F7F0000)), 0x7F7F);
  // The largest float is past the midpoint above bf16's largest value: it rounds to inf.
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::max()), 0x7F80);
  EXPECT_EQ(FloatToBf16(-std::numeric_limits<float>::max()), 0xFF80);
}

TEST(Bf16, NanStaysNan) {
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(std::numeric_limits<float>::quiet_NaN()))));
  // A NaN whose payload is only in the low 16 bits must not truncate to inf.
  const uint16_t low_payload = FloatToBf16(FromBits(0x7F800001));
  EXPECT_TRUE(std::isnan(Bf16ToFloat(low_payload))) << std::hex << low_payload;
  const uint16_t negative = FloatToBf16(FromBits(0xFF800001));
  EXPECT_TRUE(std::isnan(Bf16ToFloat(negative)));
  EXPECT_TRUE(std::signbit(Bf16ToFloat(negative)));
  // Largest-payload NaN must not carry into the sign bit.
  EXPECT_EQ(FloatToBf16(FromBits(0x7FFFFFFF)) & 0x8000, 0);
  EXPECT_TRUE(std::isnan(Bf16ToFloat(0x7FC0)));
  EXPECT_TRUE(std::isnan(Bf16ToFloat(0x7F81)));
}

TEST(Bf16, SubnormalsConvert) {
  // bf16 has fp32's exponent range, so fp32 subnormals with a non-zero top half survive.
  EXPECT_EQ(Bf16ToFloat(0x0001), FromBits(0x00010000));
  EXPECT_EQ(FloatToBf16(FromBits(0x00010000)), 0x0001);
  // The smallest fp32 subnormal is far below half of bf16's smallest: it rounds to zero.
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::denorm_min()), 0x0000);
  // Rounding up out of the largest subnormal gives the smallest normal.
  EXPECT_EQ(FloatToBf16(FromBits(0x007FFFFF)), 0x0080);
}

TEST(F16, ExactValuesConvertBothWays) {
  EXPECT_EQ(FloatToF16(1.0f), 0x3C00);
  EXPECT_EQ(FloatToF16(-2.0f), 0xC000);
  EXPECT_EQ(FloatToF16(0.5f), 0x3800);
  EXPECT_EQ(FloatToF16(0.0f), 0x0000);
  EXPECT_EQ(FloatToF16(-0.0f), 0x8000);
  EXPECT_EQ(F16ToFloat(0x3C00), 1.0f);
  EXPECT_EQ(F16ToFloat(0x4248), 3.140625f);
  EXPECT_TRUE(std::signbit(F16ToFloat(0x8000)));
}

TEST(F16, EveryNonNanValueRoundTripsThroughFloat) {
  for (uint32_t b = 0; b <= 0xFFFF; ++b) {
    const auto bits = static_cast<uint16_t>(b);
    const float f = F16ToFloat(bits);
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToF16(f), bits) << std::hex << b;
  }
}

TEST(F16, RoundsToNearestWithTiesToEven) {
  // 1 + 2^-11 is halfway between 0x3C00 (even) and 0x3C01.
  EXPECT_EQ(FloatToF16(1.0f + 0x1p-11f), 0x3C00);
  // 1 + 3·2^-11 is halfway between 0x3C01 and 0x3C02 (even).
  EXPECT_EQ(FloatToF16(1.0f + 3 * 0x1p-11f), 0x3C02);
  EXPECT_EQ(FloatToF16(1.0f + 0x1p-11f + 0x1p-20f), 0x3C01);
  EXPECT_EQ(FloatToF16(-(1.0f + 0x1p-11f + 0x1p-20f)), 0xBC01);
  // A carry out of the mantissa moves to the next binade: 2 - 2^-12 rounds to 2.
  EXPECT_EQ(FloatToF16(2.0f - 0x1p-12f), 0x4000);
}

TEST(F16, LargestValueAndOverflowToInfinity) {
  EXPECT_EQ(F16ToFloat(0x7BFF), 65504.0f);
  EXPECT_EQ(FloatToF16(65504.0f), 0x7BFF);
  EXPECT_EQ(FloatToF16(65519.0f), 0x7BFF);  // below the midpoint to the next (2^16) binade
  EXPECT_EQ(FloatToF16(65520.0f), 0x7C00);  // the midpoint; 0x7BFF is odd, so it rounds up: inf
  EXPECT_EQ(FloatToF16(1.0e6f), 0x7C00);
  EXPECT_EQ(FloatToF16(-1.0e6f), 0xFC00);
  EXPECT_EQ(FloatToF16(std::numeric_limits<float>::max()), 0x7C00);
  EXPECT_EQ(FloatToF16(kInf), 0x7C00);
  EXPECT_EQ(FloatToF16(-kInf), 0xFC00);
  EXPECT_EQ(F16ToFloat(0x7C00), kInf);
  EXPECT_EQ(F16ToFloat(0xFC00), -kInf);
}

TEST(F16, NanStaysNan) {
  EXPECT_TRUE(std::isnan(F16ToFloat(FloatToF16(std::numeric_limits<float>::quiet_NaN()))));
  // Payload bits only below what f16 keeps: still NaN, not inf.
  EXPECT_TRUE(std::isnan(F16ToFloat(FloatToF16(FromBits(0x7F800001)))));
  const uint16_t negative = FloatToF16(FromBits(0xFFC00000));
  EXPECT_TRUE(std::isnan(F16ToFloat(negative)));
  EXPECT_TRUE(std::signbit(F16ToFloat(negative)));
  EXPECT_TRUE(std::isnan(F16ToFloat(0x7E00)));
  EXPECT_TRUE(std::isnan(F16ToFloat(0x7C01)));
}

TEST(F16, SubnormalsConvertAndRoundToEven) {
  const float kMinSubnormal = 0x1p-24f;
  EXPECT_EQ(F16ToFloat(0x0001), kMinSubnormal);
  EXPECT_EQ(F16ToFloat(0x03FF), 1023 * kMinSubnormal);  // largest subnormal
  EXPECT_EQ(F16ToFloat(0x0400), 0x1p-14f);               // smallest normal
  EXPECT_EQ(F16ToFloat(0x8001), -kMinSubnormal);
  EXPECT_EQ(FloatToF16(kMinSubnormal), 0x0001);
  EXPECT_EQ(FloatToF16(1023 * kMinSubnormal), 0x03FF);
  EXPECT_EQ(FloatToF16(0x1p-14f), 0x0400);
  // Half the smallest subnormal is a tie between 0 (even) and 0x0001: zero, keeping the sign.
  EXPECT_EQ(FloatToF16(0x1p-25f), 0x0000);
  EXPECT_EQ(FloatToF16(-0x1p-25f), 0x8000);
  EXPECT_EQ(FloatToF16(0x1p-25f * 1.0001f), 0x0001);
  // 1.5 and 2.5 units: ties that go to the even neighbour, 2 in both cases.
  EXPECT_EQ(FloatToF16(1.5f * kMinSubnormal), 0x0002);
  EXPECT_EQ(FloatToF16(2.5f * kMinSubnormal), 0x0002);
  // Rounding up out of the largest subnormal gives the smallest normal.
  EXPECT_EQ(FloatToF16(1023.5f * kMinSubnormal), 0x0400);
  // Far below: zero.
  EXPECT_EQ(FloatToF16(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(FloatToF16(1e-30f), 0x0000);
}

#ifdef __FLT16_MAX__
// The compiler's own _Float16 conversion is IEEE round-to-nearest-even; agreeing with it across a
// sweep of every fp32 binade checks the cases the hand-picked tests above might miss.
TEST(F16, MatchesCompilerConversionAcrossAllFloatBinades) {
  for (uint64_t b = 0; b <= 0xFFFFFFFFull; b += 4093) {
    const float f = FromBits(static_cast<uint32_t>(b));
    if (std::isnan(f)) continue;
    const auto expected = std::bit_cast<uint16_t>(static_cast<_Float16>(f));
    ASSERT_EQ(FloatToF16(f), expected) << std::hex << "float bits 0x" << b;
    ASSERT_EQ(Bits(F16ToFloat(expected)), Bits(static_cast<float>(std::bit_cast<_Float16>(expected))));
  }
}
#endif

}  // namespace
}  // namespace gsa
