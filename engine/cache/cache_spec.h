// CacheSpec: the shape of the paged cache (DESIGN.md, Cache), shared by every backend.
//
// Per layer, with num_blocks blocks of block_size token slots (slot = block * block_size + offset):
//   K pages      [num_blocks][block_size][n_kv_heads][d_head]
//   V pages      [num_blocks][block_size][n_kv_heads][d_head]
//   kI pages     [num_blocks][block_size][d_indexer]        the compact indexer keys
//   stats pages  [num_blocks][block_size]                   Σ_{u≤s} var_u of the sequence (fp32),
//                the running sum adaptive-k "variance" needs (MODEL.md); kept per slot so that a
//                prefix-cached or recomputed block carries it with its keys.
// One block table per sequence, shared by all layers.
#pragma once

#include <cstdint>

#include "engine/model/config.h"

namespace gsa {

struct CacheSpec {
  int64_t num_blocks = 0;
  int64_t block_size = 64;
  int64_t n_layers = 0;
  int64_t n_kv_heads = 0;
  int64_t d_head = 0;
  int64_t d_indexer = 0;

  static CacheSpec ForModel(const ModelConfig& c, int64_t num_blocks, int64_t block_size) {
    return CacheSpec{num_blocks, block_size, c.n_layers, c.n_kv_heads, c.d_head, c.d_indexer};
  }
  int64_t num_slots() const { return num_blocks * block_size; }
  int64_t kv_row() const { return n_kv_heads * d_head; }  // elements of one token's K (or V)
  // Elements of one token slot in one layer, all pages together.
  int64_t elements_per_slot_per_layer() const { return 2 * kv_row() + d_indexer + 1; }
};

}  // namespace gsa
