// Element types of checkpoint tensors, in safetensors' spelling, and the scalar conversions
// between fp32 and the 16-bit float formats that the reader, the writer and the backends share.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace gsa {

enum class DType { kF32, kF16, kBF16, kF64, kI64, kI32, kI16, kI8, kU8, kBool, kF8E4M3, kF8E5M2 };

// The safetensors spelling ("F32", "BF16", ...).
std::string_view DTypeName(DType dtype);
// nullopt for a name safetensors does not define.
std::optional<DType> DTypeFromName(std::string_view name);
size_t DTypeSize(DType dtype);

float Bf16ToFloat(uint16_t bits);
uint16_t FloatToBf16(float value);  // round to nearest even; NaN stays NaN
float F16ToFloat(uint16_t bits);
uint16_t FloatToF16(float value);   // round to nearest even; overflow → ±inf

}  // namespace gsa
