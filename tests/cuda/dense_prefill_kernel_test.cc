// DensePrefill (kernels/dense_prefill.h): dense causal attention of prefill chunks over the paged
// cache, against an fp32 CPU reference on the same bf16-rounded inputs. Every output element of a
// listed sequence is checked (relative error per output vector ≤ 1e-2: P is rounded to bf16 on the
// tensor cores; no NaN), and every element of an unlisted sequence must still hold the poison.
// Cache slots that no listed position maps to (tails of blocks, unused blocks) hold NaN, so a read
// of a wrong slot, or of a key past a row's position that is not zeroed, shows up as NaN.
#include "kernels/dense_prefill.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "engine/backend/cuda/device_buffer.h"
#include "gtest/gtest.h"
#include "tests/testing/cuda_test_support.h"

namespace gsa::kernels {
namespace {

using ::gsa::testing::FreshSeed;
using ::gsa::testing::kPoisonByte;
using ::gsa::testing::RoundBf16;
using ::gsa::testing::ToBf16;

struct SeqSpec {
  int32_t prefix = 0;     // cached positions before the chunk
  int32_t num_query = 0;  // the chunk (its K/V are in the cache too)
  bool listed = true;     // computed by this launch
};

enum class Data {
  kRandom,  // q, k, v uniform in [-1, 1) (q in [-2, 2)): broad attention
  // q_t and k_s are the same RoPE-like rotations of a constant vector (pairs at frequencies
  // 10000^(-2i/d), amplitude 4.5), so the score peaks sharply at s = t and falls by about 3 per
  // step away from it: every row attends mostly to its own and its previous key, and a key past
  // the row's position (or a missing diagonal key) changes the output far beyond the tolerance.
  kLocal,
};

struct Case {
  int32_t n_heads = 4;
  int32_t n_kv_heads = 2;
  int32_t d_head = 128;
  int32_t block_size = 64;
  bool shuffle_blocks = false;
  bool gate = false;
  GateActivation gate_act = GateActivation::kSigmoid;
  Data data = Data::kRandom;
  std::vector<SeqSpec> seqs;
  std::vector<int32_t> listed_order;  // order of seq_ids; empty: the listed sequences in order
  int32_t sample_rows = 0;            // > 0: check only this many rows per sequence (spread, incl. ends)
};

// Runs `fn(i)` for i in [0, n) on a few threads.
template <typename Fn>
void ParallelFor(int64_t n, Fn fn) {
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(16, std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  for (int64_t w = 0; w < threads; ++w) {
    pool.emplace_back([&, w] {
      for (int64_t i = w; i < n; i += threads) fn(i);
    });
  }
  for (std::thread& th : pool) th.join();
}

float Dot(const float* a, const float* b, int n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  }
  for (; i < n; ++i) acc[0] += a[i] * b[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// A bf16 bit pattern as fp32 (exact).
float BitsToFloat(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

float GateActHost(GateActivation a, float z) {
  const float sig = 1.0f / (1.0f + std::exp(-z));
  switch (a) {
    case GateActivation::kTanh: return 0.5f * (std::tanh(z) + 1.0f);
    case GateActivation::kSilu: return z * sig;
    default: return sig;
  }
}

struct Result {
  std::vector<uint16_t> out_bits;  // the kernel's output, bf16 bit patterns [num_rows, n_heads * d_head]
  std::string failure;             // empty on success
  int64_t vectors_checked = 0;
  double max_rel = 0.0;
};

class Runner {
 public:
  Runner(Case c, uint64_t seed) : c_(std::move(c)), seed_(seed) { Build(); }

  // Uploads, poisons the output, launches with `kernel` and `query_tile` (DensePrefillArgs: kAuto
  // and 0 let the launcher pick), and downloads. Fills `r.failure` on any CUDA error.
  Result Launch(int32_t query_tile, DensePrefillArgs::Kernel kernel = DensePrefillArgs::Kernel::kAuto) {
    Result r;
    auto fail = [&](const std::string& what, const absl::Status& s) {
      r.failure = what + ": " + std::string(s.message());
      return r;
    };
    auto q = DeviceBuffer<bf16>::FromHost(q_bf16_);
    if (!q.ok()) return fail("q", q.status());
    auto kc = DeviceBuffer<bf16>::FromHost(k_cache_);
    if (!kc.ok()) return fail("k", kc.status());
    auto vc = DeviceBuffer<bf16>::FromHost(v_cache_);
    if (!vc.ok()) return fail("v", vc.status());
    auto bt = DeviceBuffer<int32_t>::FromHost(block_tables_);
    if (!bt.ok()) return fail("block tables", bt.status());
    auto qs = DeviceBuffer<int32_t>::FromHost(query_start_);
    if (!qs.ok()) return fail("query_start", qs.status());
    auto nq = DeviceBuffer<int32_t>::FromHost(num_query_);
    if (!nq.ok()) return fail("num_query", nq.status());
    auto cl = DeviceBuffer<int32_t>::FromHost(context_len_);
    if (!cl.ok()) return fail("context_len", cl.status());
    auto ids = DeviceBuffer<int32_t>::FromHost(seq_ids_);
    if (!ids.ok()) return fail("seq_ids", ids.status());
    auto gz = DeviceBuffer<float>::FromHost(gate_z_);
    if (!gz.ok()) return fail("gate_z", gz.status());
    auto gb = DeviceBuffer<float>::FromHost(gate_bias_);
    if (!gb.ok()) return fail("gate_bias", gb.status());
    auto out = DeviceBuffer<bf16>::Allocate(static_cast<size_t>(num_rows_) * c_.n_heads * c_.d_head);
    if (!out.ok()) return fail("out", out.status());
    if (out->bytes() > 0) {
      const cudaError_t e = cudaMemset(out->get(), kPoisonByte, out->bytes());
      if (e != cudaSuccess) return fail("poison", CudaStatus(e, "cudaMemset"));
    }

    DensePrefillArgs a;
    a.q = q->get();
    a.k_cache = kc->get();
    a.v_cache = vc->get();
    a.paged.block_tables = bt->get();
    a.paged.max_blocks_per_seq = max_blocks_per_seq_;
    a.paged.block_size = c_.block_size;
    a.query_start = qs->get();
    a.num_query = nq->get();
    a.context_len = cl->get();
    a.seq_ids = ids->get();
    a.num_seq_ids = static_cast<int32_t>(seq_ids_.size());
    a.max_num_query = max_num_query_;
    if (c_.gate) {
      a.gate_z = gz->get();
      a.gate_stride = gate_stride_;
      a.gate_bias = gb->get();
      a.gate_act = c_.gate_act;
    }
    a.n_heads = c_.n_heads;
    a.n_kv_heads = c_.n_kv_heads;
    a.d_head = c_.d_head;
    a.scale = 1.0f / std::sqrt(static_cast<float>(c_.d_head));
    a.out = out->get();
    a.query_tile = query_tile;
    a.kernel = kernel;
    cudaError_t e = DensePrefill(a, nullptr);
    if (e != cudaSuccess) return fail("launch", CudaStatus(e, "DensePrefill"));
    e = cudaDeviceSynchronize();
    if (e != cudaSuccess) return fail("run", CudaStatus(e, "DensePrefill (synchronize)"));
    auto host = out->ToHost();
    if (!host.ok()) return fail("download", host.status());
    r.out_bits.resize(host->size());
    if (!host->empty()) std::memcpy(r.out_bits.data(), host->data(), host->size() * sizeof(bf16));
    return r;
  }

  // Checks `r.out_bits` against the reference (listed sequences) and the poison (the others).
  void Check(Result& r) {
    const int D = c_.d_head;
    const int H = c_.n_heads;
    const int64_t row_elems = static_cast<int64_t>(H) * D;

    // Poison of unlisted sequences' rows.
    for (size_t si = 0; si < c_.seqs.size(); ++si) {
      if (c_.seqs[si].listed) continue;
      for (int64_t row = query_start_[si]; row < query_start_[si] + num_query_[si]; ++row) {
        for (int64_t e = 0; e < row_elems; ++e) {
          if (r.out_bits[row * row_elems + e] != 0xFFFFu) {
            std::ostringstream os;
            os << "unlisted sequence " << si << " row " << row << " element " << e << " was written";
            r.failure = os.str();
            return;
          }
        }
      }
    }

    if (ref_.empty()) ComputeReference();
    const size_t n_items = items_.size();
    std::vector<double> rel(n_items * H, 0.0);
    ParallelFor(static_cast<int64_t>(n_items), [&](int64_t ii) {
      const int64_t row = query_start_[items_[ii].seq] + items_[ii].j;
      for (int h = 0; h < H; ++h) {
        const float* ref = &ref_[(ii * H + h) * D];
        double num = 0.0, den = 0.0;
        bool nan = false;
        for (int d = 0; d < D; ++d) {
          const float got = BitsToFloat(r.out_bits[row * row_elems + static_cast<int64_t>(h) * D + d]);
          if (!std::isfinite(got)) nan = true;
          num += (static_cast<double>(got) - ref[d]) * (static_cast<double>(got) - ref[d]);
          den += static_cast<double>(ref[d]) * ref[d];
        }
        rel[ii * H + h] = nan ? INFINITY : std::sqrt(num) / std::max(std::sqrt(den), 1e-6);
      }
    });
    r.vectors_checked = static_cast<int64_t>(rel.size());
    int64_t n_bad = 0;
    std::ostringstream os;
    for (size_t ii = 0; ii < n_items; ++ii) {
      for (int h = 0; h < H; ++h) {
        const double e = rel[ii * H + h];
        r.max_rel = std::max(r.max_rel, std::isfinite(e) ? e : 1e30);
        if (e <= 1e-2) continue;
        if (n_bad < 8) {
          const Item it = items_[ii];
          os << "\n  seq " << it.seq << " query " << it.j << " (row " << query_start_[it.seq] + it.j << ", position "
             << context_len_[it.seq] - num_query_[it.seq] + it.j << ") head " << h << ": relative error " << e;
        }
        ++n_bad;
      }
    }
    if (n_bad > 0) {
      std::ostringstream head;
      head << n_bad << " of " << rel.size() << " output vectors off (relative error > 1e-2 or not finite):";
      r.failure = head.str() + os.str();
    }
  }

 private:
  struct Item {
    int32_t seq;
    int32_t j;
  };

  // The rows to check (all rows of listed sequences, or a sample) and their reference outputs,
  // ref_[(item · n_heads + h) · d_head + d], gate applied.
  void ComputeReference() {
    const int D = c_.d_head;
    const int H = c_.n_heads;
    const int group = c_.n_heads / c_.n_kv_heads;
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    items_.clear();
    for (size_t si = 0; si < c_.seqs.size(); ++si) {
      if (!c_.seqs[si].listed) continue;
      const int32_t nq = num_query_[si];
      if (c_.sample_rows > 0 && nq > c_.sample_rows) {
        std::vector<int32_t> js;
        for (int32_t i = 0; i < c_.sample_rows; ++i) {
          js.push_back(static_cast<int32_t>((static_cast<int64_t>(nq - 1) * i) / (c_.sample_rows - 1)));
        }
        // Tile edges near the start and the end as well.
        for (int32_t j : {1, 63, 64, 127, 128, 129, 255, 256, nq - 257, nq - 256, nq - 129, nq - 128, nq - 65,
                          nq - 64, nq - 2}) {
          if (j >= 0 && j < nq) js.push_back(j);
        }
        std::sort(js.begin(), js.end());
        js.erase(std::unique(js.begin(), js.end()), js.end());
        for (int32_t j : js) items_.push_back({static_cast<int32_t>(si), j});
      } else {
        for (int32_t j = 0; j < nq; ++j) items_.push_back({static_cast<int32_t>(si), j});
      }
    }
    ref_.assign(items_.size() * H * D, 0.0f);
    ParallelFor(static_cast<int64_t>(items_.size()), [&](int64_t ii) {
      const Item it = items_[ii];
      const int32_t pos = context_len_[it.seq] - num_query_[it.seq] + it.j;
      const int64_t row = query_start_[it.seq] + it.j;
      const std::vector<float>& kf = k_pos_[it.seq];
      const std::vector<float>& vf = v_pos_[it.seq];
      std::vector<float> scores(pos + 1);
      std::vector<double> o(D);
      for (int h = 0; h < H; ++h) {
        const int kvh = h / group;
        const float* qv = &q_f_[(row * H + h) * D];
        float mx = -INFINITY;
        for (int32_t s = 0; s <= pos; ++s) {
          scores[s] = Dot(qv, &kf[(static_cast<int64_t>(s) * c_.n_kv_heads + kvh) * D], D) * scale;
          mx = std::max(mx, scores[s]);
        }
        std::fill(o.begin(), o.end(), 0.0);
        double sum = 0.0;
        for (int32_t s = 0; s <= pos; ++s) {
          const float p = std::exp(scores[s] - mx);
          sum += p;
          const float* v = &vf[(static_cast<int64_t>(s) * c_.n_kv_heads + kvh) * D];
          for (int d = 0; d < D; ++d) o[d] += static_cast<double>(p) * v[d];
        }
        float* ref = &ref_[(ii * H + h) * D];
        for (int d = 0; d < D; ++d) {
          double x = o[d] / sum;
          if (c_.gate) {
            const float z = gate_z_[row * gate_stride_ + h * D + d] + gate_bias_[h * D + d];
            x *= GateActHost(c_.gate_act, z);
          }
          ref[d] = static_cast<float>(x);
        }
      }
    });
  }

  void Build() {
    const int D = c_.d_head;
    const int KV = c_.n_kv_heads;
    const int H = c_.n_heads;
    std::mt19937_64 rng(seed_);
    auto uniform = [&](float lo, float hi) {
      return std::uniform_real_distribution<float>(lo, hi)(rng);
    };
    const size_t n = c_.seqs.size();
    query_start_.resize(n);
    num_query_.resize(n);
    context_len_.resize(n);
    int64_t rows = 0;
    int32_t total_blocks = 0;
    max_blocks_per_seq_ = 1;
    std::vector<int32_t> blocks_of(n);
    for (size_t si = 0; si < n; ++si) {
      query_start_[si] = static_cast<int32_t>(rows);
      num_query_[si] = c_.seqs[si].num_query;
      context_len_[si] = c_.seqs[si].prefix + c_.seqs[si].num_query;
      rows += c_.seqs[si].num_query;
      blocks_of[si] = (context_len_[si] + c_.block_size - 1) / c_.block_size;
      total_blocks += blocks_of[si];
      max_blocks_per_seq_ = std::max(max_blocks_per_seq_, blocks_of[si] + 2);  // spare entries: -1
      if (c_.seqs[si].listed) max_num_query_ = std::max(max_num_query_, c_.seqs[si].num_query);
    }
    num_rows_ = rows;
    // Physical blocks: a permutation of [0, total + 3) (3 blocks no sequence owns), shuffled or in order.
    std::vector<int32_t> phys(total_blocks + 3);
    std::iota(phys.begin(), phys.end(), 0);
    if (c_.shuffle_blocks) std::shuffle(phys.begin(), phys.end(), rng);
    const int64_t num_slots = static_cast<int64_t>(phys.size()) * c_.block_size;
    block_tables_.assign(n * max_blocks_per_seq_, -1);
    {
      int32_t next = 0;
      for (size_t si = 0; si < n; ++si) {
        for (int32_t b = 0; b < blocks_of[si]; ++b) block_tables_[si * max_blocks_per_seq_ + b] = phys[next++];
      }
    }

    __nv_bfloat16_raw nan_raw;
    nan_raw.x = 0xFFFF;  // the poison pattern: NaN
    const bf16 nan_bf16(nan_raw);
    k_cache_.assign(num_slots * KV * D, nan_bf16);
    v_cache_.assign(num_slots * KV * D, nan_bf16);
    k_pos_.resize(n);
    v_pos_.resize(n);
    constexpr float kAmp = 4.5f;
    auto local_vec = [&](int32_t t, float* dst) {  // pairs (2i, 2i+1) rotated by t · 10000^(-2i/D)
      for (int i = 0; i < D / 2; ++i) {
        const double theta = std::pow(10000.0, -2.0 * i / D);
        dst[2 * i] = RoundBf16(kAmp * static_cast<float>(std::cos(theta * t)));
        dst[2 * i + 1] = RoundBf16(kAmp * static_cast<float>(std::sin(theta * t)));
      }
    };
    for (size_t si = 0; si < n; ++si) {
      const int32_t ctx = context_len_[si];
      k_pos_[si].resize(static_cast<size_t>(ctx) * KV * D);
      v_pos_[si].resize(static_cast<size_t>(ctx) * KV * D);
      for (int32_t s = 0; s < ctx; ++s) {
        const int64_t slot = static_cast<int64_t>(block_tables_[si * max_blocks_per_seq_ + s / c_.block_size]) *
                                 c_.block_size +
                             s % c_.block_size;
        for (int kvh = 0; kvh < KV; ++kvh) {
          float* kf = &k_pos_[si][(static_cast<int64_t>(s) * KV + kvh) * D];
          float* vf = &v_pos_[si][(static_cast<int64_t>(s) * KV + kvh) * D];
          if (c_.data == Data::kLocal) {
            local_vec(s, kf);
          } else {
            for (int d = 0; d < D; ++d) kf[d] = RoundBf16(uniform(-1.0f, 1.0f));
          }
          for (int d = 0; d < D; ++d) vf[d] = RoundBf16(uniform(-1.0f, 1.0f));
          for (int d = 0; d < D; ++d) {
            k_cache_[(slot * KV + kvh) * D + d] = ToBf16(kf[d]);
            v_cache_[(slot * KV + kvh) * D + d] = ToBf16(vf[d]);
          }
        }
      }
    }

    q_f_.resize(static_cast<size_t>(rows) * H * D);
    for (size_t si = 0; si < n; ++si) {
      for (int32_t j = 0; j < num_query_[si]; ++j) {
        const int64_t row = query_start_[si] + j;
        const int32_t pos = context_len_[si] - num_query_[si] + j;
        for (int h = 0; h < H; ++h) {
          float* qv = &q_f_[(row * H + h) * D];
          if (c_.data == Data::kLocal) {
            local_vec(pos, qv);
          } else {
            for (int d = 0; d < D; ++d) qv[d] = RoundBf16(uniform(-2.0f, 2.0f));
          }
        }
      }
    }
    q_bf16_.resize(q_f_.size());
    for (size_t i = 0; i < q_f_.size(); ++i) q_bf16_[i] = ToBf16(q_f_[i]);

    gate_stride_ = static_cast<int64_t>(H) * D + 3;  // not the packed width: the stride is honoured
    if (c_.gate) {
      gate_z_.resize(static_cast<size_t>(rows) * gate_stride_);
      for (float& z : gate_z_) z = uniform(-3.0f, 3.0f);
      gate_bias_.resize(static_cast<size_t>(H) * D);
      for (float& b : gate_bias_) b = uniform(-1.0f, 1.0f);
    }

    if (!c_.listed_order.empty()) {
      seq_ids_ = c_.listed_order;
    } else {
      for (size_t si = 0; si < n; ++si) {
        if (c_.seqs[si].listed) seq_ids_.push_back(static_cast<int32_t>(si));
      }
    }
  }

  Case c_;
  uint64_t seed_;
  int64_t num_rows_ = 0;
  int32_t max_num_query_ = 0;
  int32_t max_blocks_per_seq_ = 0;
  int64_t gate_stride_ = 0;
  std::vector<int32_t> query_start_, num_query_, context_len_, seq_ids_, block_tables_;
  std::vector<bf16> q_bf16_, k_cache_, v_cache_;
  std::vector<float> q_f_;
  std::vector<std::vector<float>> k_pos_, v_pos_;  // per sequence [ctx, n_kv_heads, d_head], rounded
  std::vector<float> gate_z_, gate_bias_;
  std::vector<Item> items_;
  std::vector<float> ref_;
};

std::string Describe(const Case& c) {
  std::ostringstream os;
  os << "d_head " << c.d_head << ", heads " << c.n_heads << "/" << c.n_kv_heads << ", block_size " << c.block_size
     << (c.shuffle_blocks ? " (shuffled)" : "") << ", gate " << (c.gate ? static_cast<int>(c.gate_act) : -1)
     << ", data " << (c.data == Data::kLocal ? "local" : "random") << ", seqs";
  for (const SeqSpec& s : c.seqs) os << " {" << s.prefix << "+" << s.num_query << (s.listed ? "" : " unlisted") << "}";
  return os.str();
}

// Whether the warpgroup kernel runs this case here (else forcing it must be refused).
bool WarpgroupRuns(const Case& c) { return ::gsa::testing::WgmmaKernelsRun() && c.d_head == 128; }

// Runs one case with a fresh seed and checks it, once with the launcher's own choice, once with
// the mma.sync kernel at each query tile and once with the warpgroup kernel forced (so every
// kernel configuration sees every case).
void RunAndCheck(const Case& c) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed << "; " << Describe(c));
  Runner runner(c, seed);
  using K = DensePrefillArgs::Kernel;
  const std::pair<int32_t, K> configs[] = {{0, K::kAuto}, {0, K::kMmaSync},   {64, K::kAuto},
                                           {128, K::kAuto}, {256, K::kAuto}, {0, K::kWarpgroup}};
  for (const auto& [tile, kernel] : configs) {
    SCOPED_TRACE(::testing::Message() << "query_tile " << tile << ", kernel " << static_cast<int>(kernel));
    Result r = runner.Launch(tile, kernel);
    if (kernel == K::kWarpgroup && !WarpgroupRuns(c)) {
      EXPECT_NE(r.failure.find("cudaErrorNotSupported"), std::string::npos) << "forced where it cannot run: "
                                                                            << r.failure;
      continue;
    }
    if (!r.failure.empty()) {
      ADD_FAILURE() << r.failure;
      continue;
    }
    runner.Check(r);
    EXPECT_TRUE(r.failure.empty()) << r.failure;
    EXPECT_GT(r.vectors_checked, 0);
  }
}

Case SingleSequence(int32_t d_head, int32_t n_heads, int32_t n_kv_heads, int32_t prefix, int32_t num_query) {
  Case c;
  c.d_head = d_head;
  c.n_heads = n_heads;
  c.n_kv_heads = n_kv_heads;
  c.seqs = {{prefix, num_query, true}};
  return c;
}

TEST(DensePrefillKernelTest, SupportsHeadSizes64And128Only) {
  EXPECT_TRUE(DensePrefillSupports(64));
  EXPECT_TRUE(DensePrefillSupports(128));
  for (int32_t d : {0, 16, 32, 80, 96, 256}) EXPECT_FALSE(DensePrefillSupports(d)) << d;
}

TEST(DensePrefillKernelTest, EmptyLaunchIsANoOpAndBadArgumentsAreRefused) {
  GSA_REQUIRE_GPU();
  DensePrefillArgs a;  // nothing listed
  EXPECT_EQ(DensePrefill(a, nullptr), cudaSuccess);
  a.num_seq_ids = 1;
  a.max_num_query = 1;
  a.n_heads = 2;
  a.n_kv_heads = 1;
  a.d_head = 96;  // unsupported
  EXPECT_EQ(DensePrefill(a, nullptr), cudaErrorInvalidValue);
  a.d_head = 128;  // pointers still null
  EXPECT_EQ(DensePrefill(a, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

TEST(DensePrefillKernelTest, UnknownQueryTileIsRefused) {
  GSA_REQUIRE_GPU();
  Runner runner(SingleSequence(128, 2, 1, 0, 10), FreshSeed());
  for (int32_t tile : {-1, 32, 96, 512}) {
    const Result r = runner.Launch(tile);
    EXPECT_NE(r.failure.find("cudaErrorInvalidValue"), std::string::npos) << "query_tile " << tile << ": " << r.failure;
  }
  // A query tile belongs to the mma.sync kernel: with the warpgroup kernel forced it is refused.
  const Result r = runner.Launch(128, DensePrefillArgs::Kernel::kWarpgroup);
  EXPECT_NE(r.failure.find("cudaErrorInvalidValue"), std::string::npos) << r.failure;
}

TEST(DensePrefillKernelTest, SingleSequencePrefillHead128Gqa2) {
  GSA_REQUIRE_GPU();
  for (int32_t len : {1, 17, 64, 65, 1000, 4096}) {
    SCOPED_TRACE(::testing::Message() << "prefill of " << len << " tokens");
    RunAndCheck(SingleSequence(128, 2, 1, 0, len));
  }
}

TEST(DensePrefillKernelTest, SingleSequencePrefillHead64Gqa4) {
  GSA_REQUIRE_GPU();
  for (int32_t len : {1, 17, 64, 65, 1000, 4096}) {
    SCOPED_TRACE(::testing::Message() << "prefill of " << len << " tokens");
    RunAndCheck(SingleSequence(64, 4, 1, 0, len));
  }
}

TEST(DensePrefillKernelTest, ChunkAfterCachedPrefix) {
  GSA_REQUIRE_GPU();
  for (int32_t d : {128, 64}) {
    for (Data data : {Data::kRandom, Data::kLocal}) {
      Case c = SingleSequence(d, 4, 2, 3000, 512);
      c.data = data;
      c.block_size = 16;
      c.shuffle_blocks = true;
      RunAndCheck(c);
    }
  }
}

// Rows near every kind of tile boundary: prefixes that put the chunk's first position at, just
// before and just after multiples of the key and query tiles; local data, so that a key one past
// the row's position, or a missing diagonal key, is far outside the tolerance.
TEST(DensePrefillKernelTest, CausalBoundaryIsExact) {
  GSA_REQUIRE_GPU();
  for (int32_t d : {128, 64}) {
    Case c;
    c.d_head = d;
    c.n_heads = 2;
    c.n_kv_heads = 1;
    c.data = Data::kLocal;
    c.block_size = 16;
    c.shuffle_blocks = true;
    for (int32_t prefix : {0, 1, 15, 31, 32, 63, 64, 65, 100, 127, 128, 129, 191, 255, 256, 500}) {
      c.seqs.push_back({prefix, 150 + prefix % 7, true});
    }
    c.seqs.push_back({0, 1, true});
    c.seqs.push_back({700, 1, true});
    RunAndCheck(c);
  }
}

TEST(DensePrefillKernelTest, RaggedBatchWithUnlistedSequencesAndShuffledBlocks) {
  GSA_REQUIRE_GPU();
  for (int32_t block_size : {16, 64, 256, 1}) {
    for (int32_t d : {128, 64}) {
      Case c;
      c.d_head = d;
      c.n_heads = 4;
      c.n_kv_heads = 2;
      c.block_size = block_size;
      c.shuffle_blocks = true;
      c.seqs = {{0, 200, true},  {700, 130, false}, {50, 1, true},   {1000, 77, true},
                {0, 1, false},   {333, 300, true},  {129, 64, true}, {5, 129, false}};
      c.listed_order = {5, 0, 3, 2, 6};  // not in row order
      SCOPED_TRACE(::testing::Message() << "block_size " << block_size);
      RunAndCheck(c);
    }
  }
}

TEST(DensePrefillKernelTest, GroupSizes1To8) {
  GSA_REQUIRE_GPU();
  for (auto [h, kv] : {std::pair{4, 4}, std::pair{6, 2}, std::pair{8, 1}, std::pair{16, 2}}) {
    for (int32_t d : {128, 64}) {
      Case c;
      c.d_head = d;
      c.n_heads = h;
      c.n_kv_heads = kv;
      c.shuffle_blocks = true;
      c.seqs = {{0, 150, true}, {90, 70, true}};
      RunAndCheck(c);
    }
  }
}

TEST(DensePrefillKernelTest, OutputGate) {
  GSA_REQUIRE_GPU();
  for (GateActivation act : {GateActivation::kSigmoid, GateActivation::kTanh, GateActivation::kSilu}) {
    for (int32_t d : {128, 64}) {
      Case c;
      c.d_head = d;
      c.n_heads = 4;
      c.n_kv_heads = 2;
      c.gate = true;
      c.gate_act = act;
      c.shuffle_blocks = true;
      c.block_size = 16;
      c.seqs = {{0, 130, true}, {40, 200, true}, {10, 20, false}};
      RunAndCheck(c);
    }
  }
}

TEST(DensePrefillKernelTest, Deterministic) {
  GSA_REQUIRE_GPU();
  Case c;
  c.d_head = 128;
  c.n_heads = 8;
  c.n_kv_heads = 2;
  c.gate = true;
  c.shuffle_blocks = true;
  c.seqs = {{0, 700, true}, {1500, 333, true}, {3, 64, true}};
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  Runner runner(c, seed);
  for (int32_t tile : {0, 64, 128, 256}) {  // 0: the warpgroup kernel where it runs
    SCOPED_TRACE(::testing::Message() << "query_tile " << tile);
    Result first = runner.Launch(tile);
    ASSERT_TRUE(first.failure.empty()) << first.failure;
    Result second = runner.Launch(tile);
    ASSERT_TRUE(second.failure.empty()) << second.failure;
    ASSERT_EQ(first.out_bits.size(), second.out_bits.size());
    EXPECT_TRUE(first.out_bits == second.out_bits) << "two launches on the same inputs differ";
    runner.Check(first);
    EXPECT_TRUE(first.failure.empty()) << first.failure;
  }
}

// The model's shape at a longer prompt: 16384 tokens, 16 query heads over 8 KV heads, d_head 128;
// a sample of rows (both ends, tile edges, spread over the range) against the reference.
TEST(DensePrefillKernelTest, LongPrefillSampledRows) {
  GSA_REQUIRE_GPU();
  Case c = SingleSequence(128, 16, 8, 0, 16384);
  c.block_size = 64;
  c.shuffle_blocks = true;
  c.sample_rows = 48;
  RunAndCheck(c);
}

// A 2048-row prefill chunk at the end of a 128K-token context (the shape of the kernel bench's
// prefill_dense_chunk), the model's heads; sampled rows against the reference, once with random
// data (broad attention over 128K keys) and once with the local pattern (a wrong or missing key
// anywhere in the 128K shows).
TEST(DensePrefillKernelTest, ChunkAt128KSampledRows) {
  GSA_REQUIRE_GPU();
  for (Data data : {Data::kRandom, Data::kLocal}) {
    SCOPED_TRACE(data == Data::kRandom ? "random data" : "local data");
    Case c = SingleSequence(128, 16, 8, 131072 - 2048, 2048);
    c.block_size = 64;
    c.shuffle_blocks = true;
    c.gate = true;
    c.data = data;
    c.sample_rows = 24;
    RunAndCheck(c);
  }
}

}  // namespace
}  // namespace gsa::kernels
