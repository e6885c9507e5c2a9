#include "engine/backend/cpu/cpu_ops.h"

#include <algorithm>

namespace gsa::cpu {

float Dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  }
  for (int j = 0; i < n; ++i, ++j) acc[j] += a[i] * b[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

void Linear(ThreadPool& pool, const float* x, int64_t rows, int64_t in, const float* w, int64_t out,
            float* y) {
  // Tile output columns so a tile of weight rows stays in cache while every input row passes.
  constexpr int64_t kTile = 16;
  const int64_t tiles = (out + kTile - 1) / kTile;
  // Hand a thread at least ~256K multiply-adds, so tiny products stay on the caller.
  const int64_t macs_per_tile = std::max<int64_t>(1, rows * in * kTile);
  const int64_t min_tiles = std::max<int64_t>(1, (int64_t{1} << 18) / macs_per_tile);
  pool.ParallelFor(tiles, min_tiles, [&](int64_t tb, int64_t te) {
    for (int64_t tile = tb; tile < te; ++tile) {
      const int64_t n0 = tile * kTile;
      const int64_t n1 = std::min(out, n0 + kTile);
      for (int64_t t = 0; t < rows; ++t) {
        const float* xr = x + t * in;
        float* yr = y + t * out;
        for (int64_t n = n0; n < n1; ++n) yr[n] = Dot(xr, w + n * in, in);
      }
    }
  });
}

void RmsNorm(const float* x, const float* weight, int64_t n, double eps, float* y) {
  const float ms = Dot(x, x, n) / static_cast<float>(n);
  const float inv = 1.0f / std::sqrt(ms + static_cast<float>(eps));
  for (int64_t i = 0; i < n; ++i) y[i] = (x[i] * inv) * weight[i];
}

}  // namespace gsa::cpu
