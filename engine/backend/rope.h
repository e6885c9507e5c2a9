// Rotary position embedding as MODEL.md defines it: rotate-half pairs (i, i + d_head/2), inverse
// frequencies from rope_base with optional NTK or YaRN scaling, angle = position × inv_freq in
// fp32. Shared by the CPU reference and the CUDA backend (which uploads the same table).
#pragma once

#include <cstdint>
#include <vector>

#include "engine/model/config.h"

namespace gsa {

// [d_head / 2] inverse frequencies after `config.rope_scaling`, computed in double and rounded
// to fp32 once.
std::vector<float> RopeInvFreq(const ModelConfig& config);

// Rotates `n_heads` vectors of `d_head` values (contiguous) in place for `position`.
// `inv_freq` has d_head / 2 entries.
void ApplyRope(float* x, int64_t n_heads, int64_t d_head, int64_t position, const float* inv_freq);

}  // namespace gsa
