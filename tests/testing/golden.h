// The reference implementation's golden cases (MODEL.md, Golden parity data) as test data:
// the prompt, the float64 logits and each layer's selected positions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace gsa::testing {

struct Golden {
  std::vector<int32_t> input_ids;                      // [T]
  std::vector<float> logits;                           // [T, vocab]
  std::vector<std::vector<std::vector<int32_t>>> sel;  // [layer][t] kept positions, descending
};

// Reads DIR/golden.safetensors; failures are recorded as gtest failures (and give an empty Golden).
Golden ReadGolden(const std::string& dir, int64_t n_layers, int64_t vocab);

}  // namespace gsa::testing
