// kernels/small_linear.h against an fp64 reference on fresh random inputs: every row count 1 … 8,
// bf16 and fp32, all three epilogues, shapes whose n is not a whole number of tiles and whose k is
// not a whole number of CTA strides; outputs poisoned (and the padding between rows checked to stay
// poisoned); unsupported arguments refused without a write; bitwise repeatable.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>

#include "kernels/elementwise.h"
#include "kernels/small_linear.h"
#include "tests/testing/cuda_test_support.h"

namespace gsa {
namespace {

using gsa::testing::Download;
using gsa::testing::FromBf16;
using gsa::testing::Poisoned;
using gsa::testing::RandomFloats;
using gsa::testing::RoundBf16;
using gsa::testing::ToBf16;
using gsa::testing::Upload;
using kernels::bf16;
using kernels::SmallLinearArgs;
using kernels::SmallLinearEpilogue;

bool IsPoison(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  return bits == 0xFFFFFFFFu;
}

struct Problem {
  int64_t rows, k, n, ldx;
  std::vector<float> x, w;  // already rounded to bf16 when the case is bf16
};

Problem MakeProblem(int64_t rows, int64_t k, int64_t n, int64_t ldx, bool bf, uint64_t seed) {
  Problem p{rows, k, n, ldx, RandomFloats(static_cast<size_t>(rows * ldx), seed),
            RandomFloats(static_cast<size_t>(n * k), seed ^ 0x5bd1e995u, -0.05f, 0.05f)};
  if (bf) {
    for (float& v : p.x) v = RoundBf16(v);
    for (float& v : p.w) v = RoundBf16(v);
  }
  return p;
}

// (x · Wᵀ)[m, j] in fp64, and Σ |x · w| for the tolerance.
void Reference(const Problem& p, int64_t m, int64_t j, double* dot, double* mag) {
  double s = 0, a = 0;
  for (int64_t i = 0; i < p.k; ++i) {
    const double t = static_cast<double>(p.x[m * p.ldx + i]) * p.w[j * p.k + i];
    s += t;
    a += std::fabs(t);
  }
  *dot = s;
  *mag = a;
}

std::vector<bf16> ToBf16Vec(const std::vector<float>& v) {
  std::vector<bf16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = ToBf16(v[i]);
  return out;
}

// The bf16 product of x [rows, k] (contiguous) with W [n, k] into y [rows, n] (contiguous).
SmallLinearArgs Bf16Product(const bf16* x, const bf16* w, int64_t rows, int64_t k, int64_t n, float* y,
                            SmallLinearEpilogue epilogue = SmallLinearEpilogue::kStore) {
  SmallLinearArgs a;
  a.x_bf16 = x;
  a.w_bf16 = w;
  a.rows = rows;
  a.k = k;
  a.n = n;
  a.ldx = k;
  a.epilogue = epilogue;
  a.y = y;
  a.ldy = n;
  return a;
}

// Outputs of launches chained back to back on one stream against the same launches synchronized
// one by one: bitwise equal; a mismatch names its iteration (per_iteration elements each).
void ExpectChainedEqualsSeparated(const std::vector<float>& chained, const std::vector<float>& separated,
                                  int64_t per_iteration) {
  ASSERT_EQ(chained.size(), separated.size());
  for (size_t i = 0; i < chained.size(); ++i) {
    ASSERT_EQ(std::memcmp(&chained[i], &separated[i], 4), 0)
        << "iteration " << static_cast<int64_t>(i) / per_iteration << " element "
        << static_cast<int64_t>(i) % per_iteration << ": " << chained[i] << " vs " << separated[i];
  }
}

// Runs one product with kStore or kAccumulate into a [rows, ldy] buffer (ldy = n + 5, so stores
// past a row's n would land in poisoned padding) and checks every element.
void CheckLinear(const Problem& p, bool bf, SmallLinearEpilogue epi, uint64_t seed) {
  const int64_t ldy = p.n + 5;
  std::vector<float> y0(static_cast<size_t>(p.rows * ldy));
  {
    const std::vector<float> init = RandomFloats(y0.size(), seed ^ 0x77u);
    for (int64_t m = 0; m < p.rows; ++m) {
      for (int64_t j = 0; j < ldy; ++j) {
        float v = init[m * ldy + j];
        if (epi == SmallLinearEpilogue::kStore || j >= p.n) std::memset(&v, 0xFF, 4);
        y0[m * ldy + j] = v;
      }
    }
  }
  auto d_y = Upload(y0);
  auto d_xb = Upload(ToBf16Vec(p.x));
  auto d_wb = Upload(ToBf16Vec(p.w));
  auto d_xf = Upload(p.x);
  auto d_wf = Upload(p.w);
  SmallLinearArgs a;
  if (bf) {
    a.x_bf16 = d_xb.get();
    a.w_bf16 = d_wb.get();
  } else {
    a.x_f32 = d_xf.get();
    a.w_f32 = d_wf.get();
  }
  a.rows = p.rows;
  a.k = p.k;
  a.n = p.n;
  a.ldx = p.ldx;
  a.epilogue = epi;
  a.y = d_y.get();
  a.ldy = ldy;
  ASSERT_EQ(kernels::SmallLinearUnsupported(a), nullptr);
  ASSERT_EQ(kernels::SmallLinear(a, nullptr), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> y = Download(d_y);
  for (int64_t m = 0; m < p.rows; ++m) {
    for (int64_t j = 0; j < ldy; ++j) {
      const float got = y[m * ldy + j];
      const std::string where = "row " + std::to_string(m) + " col " + std::to_string(j);
      if (j >= p.n) {
        ASSERT_TRUE(IsPoison(got)) << where << ": padding past n was written";
        continue;
      }
      double dot, mag;
      Reference(p, m, j, &dot, &mag);
      const double want = (epi == SmallLinearEpilogue::kAccumulate ? y0[m * ldy + j] : 0.0) + dot;
      ASSERT_FALSE(std::isnan(got)) << where << " unwritten";
      ASSERT_LE(std::fabs(got - want), 5e-5 * mag + 1e-6 + 1e-7 * std::fabs(want)) << where << ": got " << got << " want " << want;
    }
  }
}

TEST(SmallLinearKernel, MatchesFp64ForEveryRowCountDtypeAndShape) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = gsa::testing::FreshSeed();
  SCOPED_TRACE(seed);
  struct Shape {
    int64_t k, n, ldx_pad;
  };
  // gsa-1.7b's o_proj (k 2048 → 2048) and down (6144 → 2048) shapes trimmed in n; odd n; k under one
  // CTA stride; a padded x stride; n large enough for the 8-warp bf16 kernel (the others take 16).
  const Shape shapes[] = {{2048, 2048 + 3, 0}, {6144, 37, 8}, {8, 5, 0}, {1000, 130, 24}, {512, 4500, 0}};
  for (bool bf : {true, false}) {
    for (const Shape& s : shapes) {
      for (int64_t rows = 1; rows <= kernels::kSmallLinearMaxRows; ++rows) {
        for (SmallLinearEpilogue epi : {SmallLinearEpilogue::kStore, SmallLinearEpilogue::kAccumulate}) {
          SCOPED_TRACE(std::string(bf ? "bf16" : "fp32") + " k " + std::to_string(s.k) + " n " + std::to_string(s.n) +
                       " rows " + std::to_string(rows) + (epi == SmallLinearEpilogue::kStore ? " store" : " accumulate"));
          const Problem p = MakeProblem(rows, s.k, s.n, s.k + s.ldx_pad, bf, seed + static_cast<uint64_t>(rows * 131 + s.k));
          CheckLinear(p, bf, epi, seed + static_cast<uint64_t>(rows));
        }
      }
    }
  }
}

TEST(SmallLinearKernel, SwiGluEpilogueMatchesTheUnfusedFunction) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = gsa::testing::FreshSeed();
  SCOPED_TRACE(seed);
  for (int64_t f : {int64_t{6144}, int64_t{7}}) {
    for (int64_t rows = 1; rows <= kernels::kSmallLinearMaxRows; ++rows) {
      SCOPED_TRACE("f " + std::to_string(f) + " rows " + std::to_string(rows));
      const int64_t k = 2048, ldo = f + 3;
      Problem p = MakeProblem(rows, k, 2 * f, k, true, seed + static_cast<uint64_t>(rows));
      // Larger weights so that the gates cover silu's curved range.
      for (float& v : p.w) v = RoundBf16(v * 20.0f);
      auto d_x = Upload(ToBf16Vec(p.x));
      auto d_w = Upload(ToBf16Vec(p.w));
      auto d_out = Poisoned<bf16>(static_cast<size_t>(rows * ldo));
      SmallLinearArgs a;
      a.x_bf16 = d_x.get();
      a.w_bf16 = d_w.get();
      a.rows = rows;
      a.k = k;
      a.n = 2 * f;
      a.ldx = k;
      a.epilogue = SmallLinearEpilogue::kSwiGlu;
      a.out = d_out.get();
      a.ldo = ldo;
      ASSERT_EQ(kernels::SmallLinear(a, nullptr), cudaSuccess);
      const std::vector<bf16> out = Download(d_out);
      for (int64_t m = 0; m < rows; ++m) {
        for (int64_t i = 0; i < ldo; ++i) {
          const uint16_t bits = *reinterpret_cast<const uint16_t*>(&out[m * ldo + i]);
          if (i >= f) {
            ASSERT_EQ(bits, 0xFFFFu) << "row " << m << " padding col " << i << " was written";
            continue;
          }
          double g, gm, u, um;
          Reference(p, m, i, &g, &gm);
          Reference(p, m, f + i, &u, &um);
          const double sig = 1.0 / (1.0 + std::exp(-g));
          const double want = g * sig * u;
          // bf16 rounding of the output, plus the fp32 sums' error carried through silu(g)·u.
          const double tol = 8e-3 * std::fabs(want) + 5e-5 * (gm * std::fabs(u) * 1.2 + um * std::fabs(g * sig)) + 1e-6;
          ASSERT_LE(std::fabs(FromBf16(out[m * ldo + i]) - want), tol) << "row " << m << " col " << i;
        }
      }
    }
  }
}

TEST(SmallLinearKernel, BitwiseRepeatable) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = gsa::testing::FreshSeed();
  SCOPED_TRACE(seed);
  const Problem p = MakeProblem(4, 6144, 2048, 6144, true, seed);
  auto d_x = Upload(ToBf16Vec(p.x));
  auto d_w = Upload(ToBf16Vec(p.w));
  std::vector<std::vector<float>> runs;
  for (int rep = 0; rep < 2; ++rep) {
    auto d_y = Poisoned<float>(static_cast<size_t>(4 * 2048));
    ASSERT_EQ(kernels::SmallLinear(Bf16Product(d_x.get(), d_w.get(), 4, 6144, 2048, d_y.get()), nullptr), cudaSuccess);
    runs.push_back(Download(d_y));
  }
  ASSERT_EQ(std::memcmp(runs[0].data(), runs[1].data(), runs[0].size() * 4), 0);
}

// The engine's pattern: RmsNormRows writes x and lets the product start early (programmatic
// dependent launch); the product must read what this RmsNormRows wrote, never what the previous
// iteration left in the same buffer. Back-to-back launches on one stream against the same
// launches with a synchronize between them: bitwise equal.
TEST(SmallLinearKernel, ReadsWhatTheKernelBeforeItWrote) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = gsa::testing::FreshSeed();
  SCOPED_TRACE(seed);
  const int64_t rows = 4, d = 2048, n = 4096, iters = 24;
  const std::vector<float> w = RandomFloats(static_cast<size_t>(n * d), seed, -0.05f, 0.05f);
  const std::vector<float> norm_w = RandomFloats(static_cast<size_t>(d), seed + 1, 0.5f, 1.5f);
  auto d_w = Upload(ToBf16Vec(w));
  auto d_norm_w = Upload(norm_w);
  std::vector<decltype(Upload(std::vector<float>()))> xs;
  for (int64_t i = 0; i < iters; ++i) {
    xs.push_back(Upload(RandomFloats(static_cast<size_t>(rows * d), seed + 100 + static_cast<uint64_t>(i), -3, 3)));
  }
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  auto run = [&](bool sync_between) {
    auto d_xn = Poisoned<bf16>(static_cast<size_t>(rows * d));
    auto d_y = Poisoned<float>(static_cast<size_t>(iters * rows * n));
    for (int64_t i = 0; i < iters; ++i) {
      EXPECT_EQ(kernels::RmsNormRows(xs[static_cast<size_t>(i)].get(), nullptr, d_norm_w.get(), rows, d, 1e-5f,
                                     d_xn.get(), stream),
                cudaSuccess);
      if (sync_between) {
        EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
      }
      EXPECT_EQ(kernels::SmallLinear(Bf16Product(d_xn.get(), d_w.get(), rows, d, n, d_y.get() + i * rows * n), stream),
                cudaSuccess);
    }
    EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    return Download(d_y);
  };
  const std::vector<float> chained = run(false);
  const std::vector<float> separated = run(true);
  cudaStreamDestroy(stream);
  ExpectChainedEqualsSeparated(chained, separated, rows * n);
}

// The residual stream's loop in a decode step: RmsNormRows reads h, which the product before it
// accumulated into, and is itself a programmatic dependent of that product (it waits at its top);
// the next product reads RmsNormRows' output. Back-to-back on one stream against the same launches
// with a synchronize after each: every iteration's normalized rows (fp32 copy) and the final h are
// bitwise equal. A norm that read h before the accumulation finished would differ.
TEST(SmallLinearKernel, NormReadsWhatTheAccumulatingProductBeforeItWrote) {
  GSA_REQUIRE_GPU();
  const uint64_t seed = gsa::testing::FreshSeed();
  SCOPED_TRACE(seed);
  const int64_t rows = 4, d = 2048, iters = 24;
  const std::vector<float> w = RandomFloats(static_cast<size_t>(d * d), seed, -0.05f, 0.05f);
  const std::vector<float> norm_w = RandomFloats(static_cast<size_t>(d), seed + 1, 0.5f, 1.5f);
  const std::vector<float> h0 = RandomFloats(static_cast<size_t>(rows * d), seed + 2, -3, 3);
  auto d_w = Upload(ToBf16Vec(w));
  auto d_norm_w = Upload(norm_w);
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  auto run = [&](bool sync_between, std::vector<float>* h_end) {
    auto d_h = Upload(h0);
    auto d_xn = Poisoned<bf16>(static_cast<size_t>(rows * d));
    auto d_xn32 = Poisoned<float>(static_cast<size_t>(iters * rows * d));
    for (int64_t i = 0; i < iters; ++i) {
      EXPECT_EQ(kernels::RmsNormRows(d_h.get(), nullptr, d_norm_w.get(), rows, d, 1e-5f, d_xn.get(), stream,
                                     d_xn32.get() + i * rows * d),
                cudaSuccess);
      if (sync_between) {
        EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
      }
      EXPECT_EQ(kernels::SmallLinear(
                    Bf16Product(d_xn.get(), d_w.get(), rows, d, d, d_h.get(), SmallLinearEpilogue::kAccumulate), stream),
                cudaSuccess);
      if (sync_between) {
        EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
      }
    }
    EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    *h_end = Download(d_h);
    return Download(d_xn32);
  };
  std::vector<float> h_chained, h_separated;
  const std::vector<float> chained = run(false, &h_chained);
  const std::vector<float> separated = run(true, &h_separated);
  cudaStreamDestroy(stream);
  ASSERT_NO_FATAL_FAILURE(ExpectChainedEqualsSeparated(chained, separated, rows * d));
  ASSERT_EQ(std::memcmp(h_chained.data(), h_separated.data(), h_chained.size() * 4), 0);
}

TEST(SmallLinearKernel, RefusesWhatItCannotRunWithoutWriting) {
  GSA_REQUIRE_GPU();
  auto d_x = Upload(std::vector<bf16>(64 * 9, ToBf16(1.0f)));
  auto d_w = Upload(std::vector<bf16>(64 * 16, ToBf16(1.0f)));
  auto d_xf = Upload(std::vector<float>(64 * 9, 1.0f));
  auto d_y = Poisoned<float>(16 * 9);
  auto base = [&] {
    SmallLinearArgs a;
    a.x_bf16 = d_x.get();
    a.w_bf16 = d_w.get();
    a.rows = 2;
    a.k = 64;
    a.n = 16;
    a.ldx = 64;
    a.y = d_y.get();
    a.ldy = 16;
    return a;
  };
  ASSERT_EQ(kernels::SmallLinearUnsupported(base()), nullptr);
  std::vector<std::pair<std::string, SmallLinearArgs>> bad;
  auto add = [&](const std::string& what, auto edit) {
    SmallLinearArgs a = base();
    edit(a);
    bad.emplace_back(what, a);
  };
  add("zero rows", [](SmallLinearArgs& a) { a.rows = 0; });
  add("nine rows", [](SmallLinearArgs& a) { a.rows = 9; });
  add("k not a whole chunk", [](SmallLinearArgs& a) { a.k = 60; });
  add("ldx below k", [](SmallLinearArgs& a) { a.ldx = 56; });
  add("k past 2^30", [](SmallLinearArgs& a) {  // refused before any pointer is read
    a.k = (int64_t{1} << 30) + 8;
    a.ldx = a.k;
  });
  add("misaligned x", [&](SmallLinearArgs& a) { a.x_bf16 = d_x.get() + 1; });
  add("misaligned W", [&](SmallLinearArgs& a) { a.w_bf16 = d_w.get() + 4; });
  add("both input pairs", [&](SmallLinearArgs& a) {
    a.x_f32 = d_xf.get();
    a.w_f32 = d_xf.get();
  });
  add("x without W", [](SmallLinearArgs& a) { a.w_bf16 = nullptr; });
  add("no output", [](SmallLinearArgs& a) { a.y = nullptr; });
  add("ldy below n", [](SmallLinearArgs& a) { a.ldy = 15; });
  add("odd n for SwiGLU", [&](SmallLinearArgs& a) {
    a.epilogue = SmallLinearEpilogue::kSwiGlu;
    a.n = 15;
    a.out = reinterpret_cast<bf16*>(d_y.get());
    a.ldo = 8;
  });
  add("SwiGLU of fp32 inputs", [&](SmallLinearArgs& a) {
    a.x_bf16 = nullptr;
    a.w_bf16 = nullptr;
    a.x_f32 = d_xf.get();
    a.w_f32 = d_xf.get();
    a.epilogue = SmallLinearEpilogue::kSwiGlu;
    a.out = reinterpret_cast<bf16*>(d_y.get());
    a.ldo = 8;
  });
  for (const auto& [what, a] : bad) {
    EXPECT_NE(kernels::SmallLinearUnsupported(a), nullptr) << what;
    EXPECT_EQ(kernels::SmallLinear(a, nullptr), cudaErrorInvalidValue) << what;
  }
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  for (float v : Download(d_y)) ASSERT_TRUE(IsPoison(v)) << "a refused launch wrote its output";
}

}  // namespace
}  // namespace gsa
