#include "engine/model/dtype.h"

#include <array>
#include <bit>
#include <utility>

namespace gsa {
namespace {

// One table drives both directions so a name can never be added to one and not the other.
constexpr std::array<std::pair<DType, std::string_view>, 12> kNames = {{
    {DType::kF32, "F32"},
    {DType::kF16, "F16"},
    {DType::kBF16, "BF16"},
    {DType::kF64, "F64"},
    {DType::kI64, "I64"},
    {DType::kI32, "I32"},
    {DType::kI16, "I16"},
    {DType::kI8, "I8"},
    {DType::kU8, "U8"},
    {DType::kBool, "BOOL"},
    {DType::kF8E4M3, "F8_E4M3"},
    {DType::kF8E5M2, "F8_E5M2"},
}};

}  // namespace

std::string_view DTypeName(DType dtype) {
  for (const auto& [d, name] : kNames) {
    if (d == dtype) return name;
  }
  return "UNKNOWN";  // only reachable with an out-of-range enum value
}

std::optional<DType> DTypeFromName(std::string_view name) {
  for (const auto& [d, n] : kNames) {
    if (n == name) return d;
  }
  return std::nullopt;
}

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF64:
    case DType::kI64:
      return 8;
    case DType::kF32:
    case DType::kI32:
      return 4;
    case DType::kF16:
    case DType::kBF16:
    case DType::kI16:
      return 2;
    case DType::kI8:
    case DType::kU8:
    case DType::kBool:
    case DType::kF8E4M3:
    case DType::kF8E5M2:
      return 1;
  }
  return 0;
}

float Bf16ToFloat(uint16_t bits) {
  // bf16 is the top half of an fp32, so widening is exact for every value, NaN payloads included.
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

uint16_t FloatToBf16(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) {
    // Truncating a NaN whose payload lives only in the low 16 bits would give inf; forcing the
    // quiet bit keeps it a NaN (and the sign is preserved).
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  }
  // Round to nearest even: add just under half an ulp, plus one more when the kept part is odd.
  // A carry out of the mantissa correctly bumps the exponent, up to inf for values past bf16 max.
  const uint32_t rounding_bias = 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding_bias) >> 16);
}

float F16ToFloat(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1Fu;
  const uint32_t mantissa = bits & 0x3FFu;
  if (exponent == 0) {
    // Zero or subnormal: mantissa · 2^-24, exact in fp32.
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 0x1F) {
    // inf (mantissa 0) or NaN (payload kept in the top mantissa bits).
    return std::bit_cast<float>(sign | 0x7F800000u | (mantissa << 13));
  }
  // Normal: rebias the exponent from 15 to 127.
  return std::bit_cast<float>(sign | ((exponent + (127 - 15)) << 23) | (mantissa << 13));
}

uint16_t FloatToF16(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs = bits & 0x7FFFFFFFu;

  if (abs > 0x7F800000u) {
    // NaN: keep the top payload bits and force the quiet bit so it cannot collapse into inf.
    return static_cast<uint16_t>(sign | 0x7E00u | ((abs >> 13) & 0x3FFu));
  }
  if (abs >= 0x47800000u) return static_cast<uint16_t>(sign | 0x7C00u);  // ≥ 2^16 (or inf): inf

  if (abs >= 0x38800000u) {
    // Normal in f16 (≥ 2^-14): rebias the exponent, then round the 13 dropped bits to nearest
    // even. A carry may ripple into the exponent; reaching 0x7C00 is the correct overflow to inf.
    const uint32_t rebased = abs - ((127u - 15u) << 23);
    uint32_t half = rebased >> 13;
    const uint32_t dropped = rebased & 0x1FFFu;
    if (dropped > 0x1000u || (dropped == 0x1000u && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);
  }

  // Subnormal in f16 (units of 2^-24). At or below 2^-25 (half the smallest subnormal, a tie that
  // goes to the even value 0) the result is a signed zero.
  if (abs <= 0x33000000u) return sign;
  const uint32_t exponent = abs >> 23;                      // 102 … 112 here
  const uint32_t mantissa = (abs & 0x7FFFFFu) | 0x800000u;  // implicit leading 1
  const uint32_t shift = 126u - exponent;                   // 14 … 24
  uint32_t half = mantissa >> shift;
  const uint32_t dropped = mantissa & ((1u << shift) - 1u);
  const uint32_t halfway = 1u << (shift - 1u);
  // Rounding up out of the largest subnormal yields 0x400, which is exactly the smallest normal.
  if (dropped > halfway || (dropped == halfway && (half & 1u))) ++half;
  return static_cast<uint16_t>(sign | half);
}

}  // namespace gsa
