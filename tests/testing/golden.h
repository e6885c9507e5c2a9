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

// The bundled default model (deploy/default-model, found from the test data directory, so it
// works on a machine the tree was copied to) and its parity fixture, written by
// engine/tools/train/train_gsa.py --make-fixture in float64: a held-out prompt, the logits at
// some of its positions, and greedy tokens after BOS + "In the beginning".
std::string DefaultModelDir();
struct DefaultModelFixture {
  std::vector<int32_t> input_ids;      // [T]
  std::vector<int32_t> positions;      // [P] positions whose logits are kept
  std::vector<float> logits;           // [P, vocab]
  std::vector<int32_t> greedy_prompt;  // BOS + "In the beginning"
  std::vector<int32_t> greedy_tokens;  // what the float64 forward pass picks, fed back
};
// Failures are recorded as gtest failures (and give empty fields).
DefaultModelFixture ReadDefaultModelFixture(int64_t vocab);

}  // namespace gsa::testing
