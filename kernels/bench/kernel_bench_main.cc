// gsa-kernel-bench: times the GSA kernels (kernels/*.h) at the gsa-1.7b layer shapes against the
// card's own ceilings, measured in the same run (KERNELS.md has the byte and FLOP budgets; GPU.md and
// the device METHOD.md how to measure). Run with --help for what it measures and the flags.
//
// Method, for every case: inputs are random (a hash of the index, never zeros) and filled on the
// device; block tables are a random permutation of the physical blocks; every timed region runs
// `--warmup` times, then `--reps` times between two CUDA events, each rep preceded by a busy-wait
// kernel so that the region is fully enqueued before the GPU reaches its start event; the median is
// reported. Where one set of inputs would fit in L2, reps rotate among several copies (of the K/V
// cache, the indexer keys, the score rows, the selections) so that the total rotated over is at
// least --rotate-mib (default 4 × L2).
#include <algorithm>
#include <charconv>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <nlohmann/json.hpp>

#include "kernels/attention.h"
#include "kernels/bench/bench_kernels.h"
#include "kernels/bench/bench_util.h"
#include "kernels/bench/ceilings.h"
#include "kernels/dense_prefill.h"
#include "kernels/device_caps.h"
#include "kernels/indexer.h"
#include "kernels/paged.h"
#include "kernels/selection.h"
#include "kernels/sparse_prefill.h"

namespace gsa::bench {
namespace {

using json = nlohmann::ordered_json;
using bf16 = __nv_bfloat16;

// ---- gsa-1.7b layer shapes ---------------------------------------------------------------------
constexpr int32_t kHeads = 16;
constexpr int32_t kKvHeads = 8;
constexpr int32_t kDHead = 128;
constexpr int32_t kDIndexer = 64;
constexpr int32_t kIndexerHeads = 4;
constexpr int32_t kTopK = 2048;
// The variance rule of gsa-1.7b's config (prefill_select_chunk_variance): k_base kTopK, k in
// [kKMinVariance, kKMaxVariance]; its selections' row stride is kKMaxVariance.
constexpr int32_t kKMinVariance = 256;
constexpr int32_t kKMaxVariance = 4096;
constexpr int32_t kBlockSize = 64;
constexpr int64_t kPrefillChunk = 2048;                          // query rows of the sparse prefill chunk
constexpr int64_t kKvElemsPerSlot = int64_t{kKvHeads} * kDHead;  // one token's K (or V), all KV heads
constexpr int64_t kKvBytesPerSlot = kKvElemsPerSlot * 2;         // 2 KiB
constexpr int64_t kKiBytesPerSlot = int64_t{kDIndexer} * 2;      // 128 B
constexpr int64_t kQBytesPerRow = int64_t{kHeads} * kDHead * 2;  // q or out row: 4 KiB
constexpr int64_t kGateCols = int64_t{kHeads} * kDHead;          // output gate pre-activations per row
// Fused projection row as the indexer reads it: qI [4 × 64] | wI [4].
constexpr int64_t kProjStride = int64_t{kIndexerHeads} * kDIndexer + kIndexerHeads;
constexpr int64_t kOffQi = 0;
constexpr int64_t kOffWi = int64_t{kIndexerHeads} * kDIndexer;
// Clustered prefill pattern: the recent window and 3 shared spans, 512 positions each.
constexpr int64_t kSpan = 512;
// Rotation caps (sets beyond these would only add setup time).
constexpr int64_t kMaxScoreSets = 16384;
constexpr int64_t kMaxSelSets = 1024;
constexpr double kPrefillBudgetMs = 1500;  // per prefill case: reps are cut to fit (at least 3)
constexpr int64_t kCopyBytes = int64_t{1} << 31;  // the copy ceiling moves 2 GiB each way
constexpr int64_t kGemmN = 8192;
constexpr int64_t kMaxContext = int64_t{1} << 20;

const float kScale = 1.0f / std::sqrt(static_cast<float>(kDHead));

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
double Gib(double bytes) { return bytes / (1024.0 * 1024.0 * 1024.0); }

// ---- Flags -------------------------------------------------------------------------------------

struct Options {
  std::vector<int64_t> contexts{4096, 16384, 32768, 65536, 131072};
  std::vector<int64_t> batches{1, 4, 8};
  int reps = 20;
  int warmup = 3;
  int ceiling_reps = 10;
  double max_gib = 100;
  int64_t prefill_max = 32768;
  std::string json_path;
  std::string commit = "unknown";
  int device = 0;
  int64_t rotate_mib = 0;  // 0: 4 × L2
  int64_t spin_us = 200;
  uint64_t seed = 1;
  bool skip_ceilings = false;
  bool skip_decode = false;
  int32_t dense_query_tile = 0;  // DensePrefillArgs::query_tile of the prefill_dense cases
  std::string command_line;
};

void PrintHelp() {
  std::printf(
      "gsa-kernel-bench: GPU kernel benchmarks of gsa-serve at the gsa-1.7b layer shapes\n"
      "(16 query heads, 8 KV heads, d_head 128, 4 indexer heads x 64, sigmoid, k = 2048, block_size 64, bf16\n"
      "caches, output gate on), against the card's ceilings measured in the same run.\n"
      "\n"
      "Ceilings: device-to-device cudaMemcpyAsync of 2 GiB (bytes read + written); cuBLASLt 8192^3 bf16\n"
      "product with fp32 accumulation; cuBLASLt 8192^3 fp32 product (CUDA cores, no TF32).\n"
      "\n"
      "Decode cases, for every context L and batch B (one layer; B rows, each at position L-1):\n"
      "  decode_indexer            IndexerScores over L candidates per row   bytes B*L*(64*2 + 4)\n"
      "  decode_topk               TopK of B rows x L scores, k = 2048       bytes B*L*4\n"
      "  decode_sparse_attention   GatheredAttention, 2048 random positions  bytes B*2048*8*128*2*2\n"
      "  decode_dense_attention    GatheredAttention, dense rows over all L  bytes B*L*8*128*2*2\n"
      "                            (every GatheredAttention as the engine launches it: split counters, so the\n"
      "                            last split block merges, and the resident block count planned once)\n"
      "  decode_select_fused       indexer + k + top-k in one cooperative launch (DecodeSelect); also\n"
      "                            its per-block phase timeline (clock64 at each phase boundary, 20\n"
      "                            more launches), printed and recorded as \"timeline\"\n"
      "  gsa_decode                fused selection + sparse attention on its selection, one timed\n"
      "                            region; its note gives dense_decode / gsa_decode\n"
      "  gsa_decode_unfused        the same with IndexerScores + TopK as separate launches\n"
      "  decode_select_fused_fp8, gsa_decode_fp8   the same with fp8 indexer keys (68 bytes a token);\n"
      "                            the note gives the share of the bf16 keys' selection they keep\n"
      "Prefill cases, B = 1, for contexts L <= --prefill-max (a chunk = the last 2048 rows of the prompt):\n"
      "  prefill_dense_full        DensePrefill of the whole causal prompt   FLOPs 2*2*(L^2/2)*16*128\n"
      "  prefill_dense_chunk       DensePrefill of the chunk (2048 queries after L-2048 cached tokens)\n"
      "  prefill_dense_chunk_mma_sync   the same forced onto the mma.sync kernel (Hopper runs wgmma)\n"
      "  prefill_indexer_chunk     IndexerScores of the chunk, causal        FLOPs scores*4*64*2 (fp32 cores)\n"
      "  prefill_indexer_chunk_per_warp   the same forced onto the per-warp (mma.sync) kernel\n"
      "  prefill_topk_chunk        TopK of the chunk's causal score rows     bytes scores*4\n"
      "  prefill_select_rows64, _rows256, _rows512   IndexerScores + TopK of the chunk in score chunks of\n"
      "                            64, 256 or 512 rows (the engine's score buffer holds a few hundred rows)\n"
      "  prefill_select_chunk      PrefillSelect of the chunk, fixed k = 2048: a sampled threshold per row,\n"
      "                            a list of the candidates above it, full scores only for the rows whose\n"
      "                            list misses (recorded: full_rows, list_rows); checked equal to the\n"
      "                            separate launches' selection. Skipped, with the reason, where PrefillSelect\n"
      "                            does not run: compute capability other than 9.0, or L outside\n"
      "                            [16384, 262144] (the separate launches then serve the chunk)\n"
      "  prefill_select_chunk_variance   the same with the variance rule (k_base 2048, k_min 256, k_max 4096,\n"
      "                            the running variance sums set so that k spreads around k_base); time,\n"
      "                            full_rows and the mean k\n"
      "  prefill_sparse_random     GatheredAttention of the chunk, 2048 distinct uniform positions <= t per\n"
      "                            row; bytes = gathered K+V, rows*2048*8*128*2*2 (over 100%% of the copy\n"
      "                            ceiling means L2 served part of them)\n"
      "  prefill_sparse_clustered  the same, selection = the row's 512 most recent positions + 3 spans of\n"
      "                            512 at fixed offsets shared by every row of the chunk\n"
      "  prefill_gsa_chunk         selection + sparse attention of the chunk (random-weight selection), as\n"
      "                            the engine runs it: PrefillSelect where it runs, else IndexerScores + TopK\n"
      "                            (recorded as selection_path); its note gives prefill_dense_chunk /\n"
      "                            prefill_gsa_chunk\n"
      "  prefill_gsa_chunk_separate   the same with IndexerScores + SelectionCounts + TopK always\n"
      "Every case: median of --reps timed runs (CUDA events) after --warmup runs; prefill cases cut their\n"
      "reps to about 1.5 s each (at least 3). Outputs are checked (top-k selections valid, attention\n"
      "outputs finite); a failed check is reported and makes the exit status 3.\n"
      "\n"
      "Flags (--flag VALUE or --flag=VALUE):\n"
      "  --contexts LIST     contexts L, comma-separated, multiples of 64 in [4096, %" PRId64 "]\n"
      "                      (default 4096,16384,32768,65536,131072)\n"
      "  --batches LIST      decode batch sizes, comma-separated, in [1, 256] (default 1,4,8)\n"
      "  --reps N            timed runs per case, median reported (default 20)\n"
      "  --warmup N          untimed runs before them, >= 1 (default 3)\n"
      "  --ceiling-reps N    timed runs of each ceiling (default 10)\n"
      "  --max-gib X         skip a (L, B) whose buffers would need more than X GiB of device memory\n"
      "                      (default 100); a case that does not fit in free memory is skipped too\n"
      "  --prefill-max L     run the prefill cases for contexts <= L (default 32768; 0: none)\n"
      "  --json FILE         write every figure, the card, versions, settings and shapes to FILE\n"
      "  --commit STR        the commit measured, recorded in the JSON (pass `git rev-parse --short HEAD`)\n"
      "  --device N          CUDA device ordinal (default 0)\n"
      "  --rotate-mib N      rotate inputs so that each case cycles through at least N MiB\n"
      "                      (default 0: four times the card's L2)\n"
      "  --spin-us N         busy-wait before each timed run, in microseconds (default 200)\n"
      "  --seed N            seed of the random data, tables and selections (default 1)\n"
      "  --skip-ceilings     do not measure the ceilings (quick runs; no fractions are reported)\n"
      "  --skip-decode       run no decode case (prefill only: e.g. to point ncu --launch-skip at prefill kernels)\n"
      "  --dense-query-tile N  query rows per CTA of the prefill_dense cases: 64, 128 or 256 (the mma.sync\n"
      "                      kernel) or 0 (default: the launcher's choice), to compare configurations\n"
      "  --help              this text\n"
      "\n"
      "Exit status: 0 done; 1 no GPU or a CUDA/cuBLAS error (the message names the call); 2 bad flags;\n"
      "3 an output check failed.\n"
      "Example: gsa-kernel-bench --json kernel-bench.json --commit $(git rev-parse --short HEAD)\n",
      kMaxContext);
}

[[noreturn]] void BadFlag(const std::string& message) {
  std::fprintf(stderr, "gsa-kernel-bench: %s\nRun gsa-kernel-bench --help for the flags.\n", message.c_str());
  std::exit(2);
}

bool ParseInt(const std::string& s, int64_t* out) {
  if (s.empty()) return false;
  const char* b = s.data();
  const char* e = s.data() + s.size();
  const auto r = std::from_chars(b, e, *out);
  return r.ec == std::errc() && r.ptr == e;
}

bool ParseDouble(const std::string& s, double* out) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s.c_str(), &end);
  if (errno != 0 || end != s.c_str() + s.size() || !std::isfinite(v)) return false;
  *out = v;
  return true;
}

int64_t IntFlag(const std::string& flag, const std::string& value, int64_t lo, int64_t hi) {
  int64_t v = 0;
  if (!ParseInt(value, &v)) BadFlag(flag + ": '" + value + "' is not an integer");
  if (v < lo || v > hi) {
    BadFlag(flag + ": " + value + " is outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  }
  return v;
}

std::vector<int64_t> ListFlag(const std::string& flag, const std::string& value, int64_t lo, int64_t hi,
                              int64_t multiple_of) {
  std::vector<int64_t> out;
  size_t start = 0;
  while (true) {
    const size_t comma = value.find(',', start);
    const std::string item = value.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    const int64_t v = IntFlag(flag, item, lo, hi);
    if (v % multiple_of != 0) BadFlag(flag + ": " + item + " is not a multiple of " + std::to_string(multiple_of));
    if (std::find(out.begin(), out.end(), v) == out.end()) out.push_back(v);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    const bool quote = a.empty() || a.find_first_of(" \t'\"$") != std::string::npos;
    if (i > 0) o.command_line.push_back(' ');
    if (quote) o.command_line.push_back('\'');
    o.command_line.append(a);
    if (quote) o.command_line.push_back('\'');
  }
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      PrintHelp();
      std::exit(0);
    }
    if (arg == "--skip-ceilings") {
      o.skip_ceilings = true;
      continue;
    }
    if (arg == "--skip-decode") {
      o.skip_decode = true;
      continue;
    }
    if (arg.rfind("--", 0) != 0) BadFlag("unexpected argument '" + arg + "'");
    std::string name = arg, value;
    bool has_value = false;
    const size_t eq = arg.find('=');
    if (eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      has_value = true;
    }
    static const char* const kKnown[] = {"--contexts", "--batches",     "--reps",   "--warmup", "--ceiling-reps",
                                         "--max-gib",  "--prefill-max", "--json",   "--commit", "--device",
                                         "--rotate-mib", "--spin-us",   "--seed",   "--dense-query-tile"};
    if (name == "--skip-ceilings") BadFlag("--skip-ceilings takes no value");
    if (name == "--skip-decode") BadFlag("--skip-decode takes no value");
    bool known = false;
    for (const char* k : kKnown) known = known || name == k;
    if (!known) BadFlag("unknown flag '" + name + "'");
    if (!has_value) {
      if (i + 1 >= argc) BadFlag(name + " needs a value");
      value = argv[++i];
    }
    if (name == "--contexts") {
      o.contexts = ListFlag(name, value, 4096, kMaxContext, kBlockSize);
    } else if (name == "--batches") {
      o.batches = ListFlag(name, value, 1, 256, 1);
    } else if (name == "--reps") {
      o.reps = static_cast<int>(IntFlag(name, value, 1, 10000));
    } else if (name == "--warmup") {
      o.warmup = static_cast<int>(IntFlag(name, value, 1, 1000));
    } else if (name == "--ceiling-reps") {
      o.ceiling_reps = static_cast<int>(IntFlag(name, value, 1, 10000));
    } else if (name == "--max-gib") {
      if (!ParseDouble(value, &o.max_gib) || o.max_gib <= 0) BadFlag(name + ": '" + value + "' is not a number > 0");
    } else if (name == "--prefill-max") {
      o.prefill_max = IntFlag(name, value, 0, kMaxContext);
    } else if (name == "--json") {
      if (value.empty()) BadFlag("--json needs a file name");
      o.json_path = value;
    } else if (name == "--commit") {
      o.commit = value;
    } else if (name == "--device") {
      o.device = static_cast<int>(IntFlag(name, value, 0, 1024));
    } else if (name == "--rotate-mib") {
      o.rotate_mib = IntFlag(name, value, 0, 1 << 20);
    } else if (name == "--spin-us") {
      o.spin_us = IntFlag(name, value, 0, 1000000);
    } else if (name == "--seed") {
      o.seed = static_cast<uint64_t>(IntFlag(name, value, 0, INT64_MAX));
    } else if (name == "--dense-query-tile") {
      o.dense_query_tile = static_cast<int32_t>(IntFlag(name, value, 0, 256));
      if (o.dense_query_tile != 0 && o.dense_query_tile != 64 && o.dense_query_tile != 128 &&
          o.dense_query_tile != 256) {
        BadFlag("--dense-query-tile: '" + value + "' is not 0, 64, 128 or 256");
      }
    }
  }
  if (!o.json_path.empty()) {
    // Probe that the file can be written, without truncating or leaving behind a file.
    const bool existed = static_cast<bool>(std::ifstream(o.json_path));
    bool ok = false;
    {
      std::ofstream probe(o.json_path, std::ios::out | std::ios::app);
      ok = static_cast<bool>(probe);
    }
    if (!existed) std::remove(o.json_path.c_str());
    if (!ok) BadFlag("--json: cannot write '" + o.json_path + "'");
  }
  return o;
}

// ---- Results -----------------------------------------------------------------------------------

enum class Bound { kMemory, kBf16Mma, kFp32, kNone };

const char* BoundName(Bound b) {
  switch (b) {
    case Bound::kMemory: return "memory";
    case Bound::kBf16Mma: return "bf16_mma";
    case Bound::kFp32: return "fp32";
    default: return "none";
  }
}

struct Ceilings {
  CopyCeiling copy;
  GemmCeiling bf16;
  GemmCeiling fp32;
};

struct Record {
  std::string name;
  std::string group;  // ceiling, decode, prefill
  int64_t L = 0, B = 0;
  Timing t;
  double bytes = 0, flops = 0;
  Bound bound = Bound::kNone;
  std::string note;
  json extra = json::object();
};

struct Ctx {
  Options opt;
  cudaStream_t stream = nullptr;
  EventTimer* timer = nullptr;
  std::mt19937_64 rng;
  uint64_t next_seed = 0;
  int64_t rotate_bytes = 0;
  Ceilings ceil;
  bool have_ceilings = false;
  json meta = json::object();
  std::vector<Record> records;
  json skipped = json::array();
  json checks = json::array();
  int checks_failed = 0;
  std::time_t started = 0;

  uint64_t Seed() { return opt.seed * 0x9E3779B97F4A7C15ull + (++next_seed); }
};

Ctx* g_ctx = nullptr;  // for the fatal hook

double Gbps(const Record& r) { return r.t.median_us > 0 ? r.bytes / (r.t.median_us * 1e-6) / 1e9 : 0; }
double Tflops(const Record& r) { return r.t.median_us > 0 ? r.flops / (r.t.median_us * 1e-6) / 1e12 : 0; }

// Fraction of the measured ceiling for the record's bound; < 0 when there is none.
double Fraction(const Ctx& ctx, const Record& r) {
  if (!ctx.have_ceilings) return -1;
  switch (r.bound) {
    case Bound::kMemory: return ctx.ceil.copy.gbps > 0 ? Gbps(r) / ctx.ceil.copy.gbps : -1;
    case Bound::kBf16Mma: return ctx.ceil.bf16.tflops > 0 ? Tflops(r) / ctx.ceil.bf16.tflops : -1;
    case Bound::kFp32: return ctx.ceil.fp32.ok && ctx.ceil.fp32.tflops > 0 ? Tflops(r) / ctx.ceil.fp32.tflops : -1;
    default: return -1;
  }
}

const char* FractionTag(Bound b) {
  switch (b) {
    case Bound::kMemory: return "copy";
    case Bound::kBf16Mma: return "bf16";
    case Bound::kFp32: return "fp32";
    default: return "";
  }
}

std::string HumanBytes(double b) {
  char buf[32];
  if (b <= 0) return "-";
  if (b >= 1e9) {
    std::snprintf(buf, sizeof(buf), "%.2f GB", b / 1e9);
  } else if (b >= 1e6) {
    std::snprintf(buf, sizeof(buf), "%.2f MB", b / 1e6);
  } else {
    std::snprintf(buf, sizeof(buf), "%.1f KB", b / 1e3);
  }
  return buf;
}

void PrintTable(const Ctx& ctx) {
  std::printf("\n%-26s %7s %3s %4s %11s %10s %8s %9s %8s %11s  %s\n", "case", "L", "B", "reps", "median_us", "bytes",
              "GB/s", "FLOPs", "TFLOP/s", "of_ceiling", "note");
  for (const Record& r : ctx.records) {
    char flops[32] = "-", tf[32] = "-", gb[32] = "-", frac[32] = "-";
    if (r.flops > 0) {
      std::snprintf(flops, sizeof(flops), "%.3g", r.flops);
      std::snprintf(tf, sizeof(tf), "%.1f", Tflops(r));
    }
    if (r.bytes > 0) std::snprintf(gb, sizeof(gb), "%.1f", Gbps(r));
    const double f = Fraction(ctx, r);
    if (f >= 0) std::snprintf(frac, sizeof(frac), "%5.1f%% %s", 100.0 * f, FractionTag(r.bound));
    std::printf("%-26s %7" PRId64 " %3" PRId64 " %4d %11.2f %10s %8s %9s %8s %11s  %s\n", r.name.c_str(), r.L, r.B,
                r.t.reps, r.t.median_us, HumanBytes(r.bytes).c_str(), gb, flops, tf, frac, r.note.c_str());
  }
  std::fflush(stdout);
}

json ShapesJson() {
  return json{{"n_heads", kHeads},           {"n_kv_heads", kKvHeads},
              {"d_head", kDHead},             {"d_indexer", kDIndexer},
              {"n_indexer_heads", kIndexerHeads}, {"indexer_activation", "sigmoid"},
              {"k", kTopK},                   {"block_size", kBlockSize},
              {"cache_dtype", "bf16"},        {"output_gate", "sigmoid"}};
}

json RecordJson(const Ctx& ctx, const Record& r) {
  json j;
  j["case"] = r.name;
  j["group"] = r.group;
  j["L"] = r.L;
  j["B"] = r.B;
  j["time_us"] = r.t.median_us;
  j["time_us_min"] = r.t.min_us;
  j["time_us_max"] = r.t.max_us;
  j["reps"] = r.t.reps;
  j["bytes"] = r.bytes;
  j["flops"] = r.flops;
  j["gbps"] = Gbps(r);
  j["tflops"] = Tflops(r);
  j["bound"] = BoundName(r.bound);
  const double f = Fraction(ctx, r);
  j["fraction_of_ceiling"] = f >= 0 ? json(f) : json(nullptr);
  j["note"] = r.note;
  if (r.group != "ceiling") j["shapes"] = ShapesJson();
  for (auto it = r.extra.begin(); it != r.extra.end(); ++it) j[it.key()] = it.value();
  j["samples_us"] = r.t.samples_us;
  return j;
}

std::string IsoDate(std::time_t t) {
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

void WriteJson(const Ctx& ctx, const std::string& status) {
  if (ctx.opt.json_path.empty()) return;
  json out = ctx.meta;
  out["status"] = status;
  out["wall_seconds"] = static_cast<double>(std::time(nullptr) - ctx.started);
  json ce = json::object();
  if (ctx.have_ceilings) {
    ce["copy_gbps"] = ctx.ceil.copy.gbps;
    ce["copy_bytes_each_way"] = ctx.ceil.copy.bytes_copied;
    ce["copy_time_us"] = ctx.ceil.copy.timing.median_us;
    ce["bf16_tflops"] = ctx.ceil.bf16.tflops;
    ce["bf16_what"] = ctx.ceil.bf16.what;
    ce["bf16_time_us"] = ctx.ceil.bf16.timing.median_us;
    ce["fp32_tflops"] = ctx.ceil.fp32.ok ? json(ctx.ceil.fp32.tflops) : json(nullptr);
    ce["fp32_what"] = ctx.ceil.fp32.what;
    if (!ctx.ceil.fp32.ok) ce["fp32_error"] = ctx.ceil.fp32.error;
  }
  out["ceilings"] = ce;
  json recs = json::array();
  for (const Record& r : ctx.records) recs.push_back(RecordJson(ctx, r));
  out["records"] = recs;
  out["skipped"] = ctx.skipped;
  out["checks_failed"] = ctx.checks_failed;
  out["checks"] = ctx.checks;
  std::ofstream f(ctx.opt.json_path, std::ios::out | std::ios::trunc);
  f << out.dump(2) << "\n";
  f.close();
  if (!f) {
    std::fprintf(stderr, "gsa-kernel-bench: writing %s failed\n", ctx.opt.json_path.c_str());
  } else {
    std::printf("wrote %s\n", ctx.opt.json_path.c_str());
  }
}

void AddRecord(Ctx& ctx, Record r) {
  const double f = Fraction(ctx, r);
  std::printf("  %-26s L=%-7" PRId64 " B=%-3" PRId64 " %10.2f us  (min %.2f, max %.2f, %d reps)", r.name.c_str(), r.L,
              r.B, r.t.median_us, r.t.min_us, r.t.max_us, r.t.reps);
  if (f >= 0) std::printf("  %.1f%% of %s", 100.0 * f, FractionTag(r.bound));
  if (!r.note.empty()) std::printf("  %s", r.note.c_str());
  std::printf("\n");
  std::fflush(stdout);
  ctx.records.push_back(std::move(r));
}

void AddCheck(Ctx& ctx, const std::string& what, int64_t L, int64_t B, const std::string& problem) {
  const bool ok = problem.empty();
  ctx.checks.push_back(json{{"case", what}, {"L", L}, {"B", B}, {"ok", ok}, {"detail", ok ? "ok" : problem}});
  if (!ok) {
    ++ctx.checks_failed;
    std::printf("  CHECK FAILED: %s L=%" PRId64 " B=%" PRId64 ": %s\n", what.c_str(), L, B, problem.c_str());
    std::fflush(stdout);
  }
}

// ---- Inputs ------------------------------------------------------------------------------------

// Copies of one input, enough that cycling through them touches at least `target` bytes.
int64_t Instances(int64_t bytes_each, int64_t target) { return std::max<int64_t>(1, CeilDiv(target, bytes_each)); }

// The paged caches of one layer for B sequences of L tokens: `kv_instances` copies of K and V and
// `ki_instances` copies of the indexer keys (a copy = the same block table at another base address).
struct PagedCache {
  int64_t L = 0, B = 0, nblk = 0, slots = 0;  // slots of one copy = B · nblk · block_size
  int64_t kv_instances = 1, ki_instances = 1;
  std::vector<int32_t> tables_host;  // [B, nblk] a random permutation of the B · nblk blocks
  DevBuf<int32_t> tables;
  DevBuf<bf16> k, v, ki;

  kernels::PagedLayout Layout() const {
    kernels::PagedLayout p;
    p.block_tables = tables.get();
    p.max_blocks_per_seq = static_cast<int32_t>(nblk);
    p.block_size = kBlockSize;
    return p;
  }
  const bf16* K(int64_t it) const { return k.get() + (it % kv_instances) * slots * kKvElemsPerSlot; }
  const bf16* V(int64_t it) const { return v.get() + (it % kv_instances) * slots * kKvElemsPerSlot; }
  const bf16* KI(int64_t it) const { return ki.get() + (it % ki_instances) * slots * kDIndexer; }
  int64_t SlotOf(int64_t seq, int64_t pos) const {
    return static_cast<int64_t>(tables_host[static_cast<size_t>(seq * nblk + pos / kBlockSize)]) * kBlockSize +
           pos % kBlockSize;
  }
  static int64_t Bytes(int64_t L, int64_t B, int64_t rotate) {
    const int64_t slots = B * (L / kBlockSize) * kBlockSize;
    return Instances(2 * slots * kKvBytesPerSlot, rotate) * 2 * slots * kKvBytesPerSlot +
           Instances(slots * kKiBytesPerSlot, rotate) * slots * kKiBytesPerSlot + B * (L / kBlockSize) * 4;
  }
};

void BuildCache(Ctx& ctx, int64_t L, int64_t B, PagedCache* c) {
  c->L = L;
  c->B = B;
  c->nblk = L / kBlockSize;
  c->slots = B * c->nblk * kBlockSize;
  c->kv_instances = Instances(2 * c->slots * kKvBytesPerSlot, ctx.rotate_bytes);
  c->ki_instances = Instances(c->slots * kKiBytesPerSlot, ctx.rotate_bytes);
  c->tables_host.resize(static_cast<size_t>(B * c->nblk));
  std::iota(c->tables_host.begin(), c->tables_host.end(), 0);
  std::shuffle(c->tables_host.begin(), c->tables_host.end(), ctx.rng);
  c->tables = Upload(c->tables_host, "block tables");
  const int64_t kv_elems = c->kv_instances * c->slots * kKvElemsPerSlot;
  const int64_t ki_elems = c->ki_instances * c->slots * kDIndexer;
  c->k.Alloc(kv_elems, "K cache");
  c->v.Alloc(kv_elems, "V cache");
  c->ki.Alloc(ki_elems, "indexer key cache");
  BENCH_CUDA(FillUniformBf16(c->k.get(), kv_elems, ctx.Seed(), -1.0f, 1.0f, ctx.stream));
  BENCH_CUDA(FillUniformBf16(c->v.get(), kv_elems, ctx.Seed(), -1.0f, 1.0f, ctx.stream));
  BENCH_CUDA(FillUniformBf16(c->ki.get(), ki_elems, ctx.Seed(), -1.0f, 1.0f, ctx.stream));
}

// RowInfo of one step's rows, on the device.
struct Rows {
  int64_t n = 0;
  int64_t sequence_runs = 0;  // runs of consecutive same-sequence rows (IndexerScoresArgs::sequence_runs)
  std::vector<int32_t> position_host;
  DevBuf<int32_t> seq, position, row_ids;
  DevBuf<int64_t> slot;
  DevBuf<uint8_t> dense;
  kernels::RowInfo Info() const {
    kernels::RowInfo r;
    r.seq = seq.get();
    r.position = position.get();
    r.slot = slot.get();
    r.dense = dense.get();
    return r;
  }
};

void MakeRows(const PagedCache& c, const std::vector<int32_t>& seq, const std::vector<int32_t>& pos, uint8_t dense,
              Rows* r) {
  r->n = static_cast<int64_t>(seq.size());
  r->position_host = pos;
  std::vector<int64_t> slot(seq.size());
  std::vector<int32_t> ids(seq.size());
  for (size_t i = 0; i < seq.size(); ++i) {
    if (seq[i] < 0 || seq[i] >= c.B || pos[i] < 0 || pos[i] >= c.L) Fatal("internal: row outside the cache");
    slot[i] = c.SlotOf(seq[i], pos[i]);
    ids[i] = static_cast<int32_t>(i);
    if (i == 0 || seq[i] != seq[i - 1]) ++r->sequence_runs;
  }
  r->seq = Upload(seq, "rows.seq");
  r->position = Upload(pos, "rows.position");
  r->slot = Upload(slot, "rows.slot");
  r->dense = Upload(std::vector<uint8_t>(seq.size(), dense), "rows.dense");
  r->row_ids = Upload(ids, "row ids");
}

// Fused projection rows as the indexer reads them: qI uniform in [-1, 1], wI (post-sigmoid) in (0, 1).
std::vector<float> MakeProj(std::mt19937_64& rng, int64_t rows) {
  std::uniform_real_distribution<float> q(-1.0f, 1.0f), w(0.05f, 0.95f);
  std::vector<float> p(static_cast<size_t>(rows * kProjStride));
  for (int64_t r = 0; r < rows; ++r) {
    float* row = p.data() + r * kProjStride;
    for (int64_t i = 0; i < int64_t{kIndexerHeads} * kDIndexer; ++i) row[kOffQi + i] = q(rng);
    for (int64_t j = 0; j < kIndexerHeads; ++j) row[kOffWi + j] = w(rng);
  }
  return p;
}

// k distinct positions of [0, n), sorted descending (the order TopK writes), into out[0, k).
// mark: n zeros on entry and on return.
void SampleDistinct(std::mt19937_64& rng, int64_t n, int64_t k, std::vector<uint8_t>& mark, int32_t* out) {
  if (k > n || static_cast<int64_t>(mark.size()) < n) Fatal("internal: SampleDistinct k > n");
  // Floyd's algorithm: k draws, no rejection loop.
  int64_t got = 0;
  for (int64_t j = n - k; j < n; ++j) {
    std::uniform_int_distribution<int64_t> d(0, j);
    int64_t x = d(rng);
    if (mark[static_cast<size_t>(x)]) x = j;
    mark[static_cast<size_t>(x)] = 1;
    out[got++] = static_cast<int32_t>(x);
  }
  for (int64_t i = 0; i < k; ++i) mark[static_cast<size_t>(out[i])] = 0;
  std::sort(out, out + k, std::greater<int32_t>());
}

// Every row i: sel[i · stride + j], j < count, strictly descending (so distinct) and within
// [0, position(i)]. Returns "" or the first problem.
std::string CheckSelection(const std::vector<int32_t>& sel, int64_t rows, int64_t stride, int64_t count,
                           const std::vector<int32_t>& position) {
  for (int64_t i = 0; i < rows; ++i) {
    const int32_t* s = sel.data() + i * stride;
    const int64_t t = position[static_cast<size_t>(i)];
    for (int64_t j = 0; j < count; ++j) {
      if (s[j] < 0 || s[j] > t) {
        return "row " + std::to_string(i) + " entry " + std::to_string(j) + " = " + std::to_string(s[j]) +
               " is outside [0, " + std::to_string(t) + "]";
      }
      if (j > 0 && s[j] >= s[j - 1]) {
        return "row " + std::to_string(i) + " entries " + std::to_string(j - 1) + ", " + std::to_string(j) + " (" +
               std::to_string(s[j - 1]) + ", " + std::to_string(s[j]) + ") are not strictly descending";
      }
    }
  }
  return "";
}

// Attention output check: no NaN / Inf, and (random inputs) almost no exact zeros.
std::string CheckOutput(Ctx& ctx, const bf16* out, int64_t n) {
  DevBuf<unsigned long long> counts(2, "check counters");
  BENCH_CUDA(cudaMemsetAsync(counts.get(), 0, 2 * sizeof(unsigned long long), ctx.stream));
  BENCH_CUDA(CountBf16(out, n, counts.get(), ctx.stream));
  BENCH_CUDA(cudaStreamSynchronize(ctx.stream));
  const std::vector<unsigned long long> c = Download(counts.get(), 2);
  if (c[0] != 0) return std::to_string(c[0]) + " of " + std::to_string(n) + " outputs are NaN or Inf";
  if (c[1] * 100 > static_cast<unsigned long long>(n)) {
    return std::to_string(c[1]) + " of " + std::to_string(n) + " outputs are exactly zero";
  }
  return "";
}

std::string CheckSelDevice(const int32_t* sel, int64_t rows, const std::vector<int32_t>& position) {
  BENCH_CUDA(cudaDeviceSynchronize());
  return CheckSelection(Download(sel, rows * kTopK), rows, kTopK, kTopK, position);
}

// Two selections on the device, [rows, stride] each: "" when every row's first `count` entries
// agree, else how many rows differ and the first difference.
std::string CheckSameSelection(const int32_t* got, const int32_t* want, int64_t rows, int64_t stride, int64_t count) {
  BENCH_CUDA(cudaDeviceSynchronize());
  const std::vector<int32_t> g = Download(got, rows * stride), w = Download(want, rows * stride);
  int64_t differing = 0, first_row = -1, first_entry = -1;
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < count; ++j) {
      if (g[static_cast<size_t>(i * stride + j)] == w[static_cast<size_t>(i * stride + j)]) continue;
      if (differing++ == 0) {
        first_row = i;
        first_entry = j;
      }
      break;
    }
  }
  if (differing == 0) return "";
  const size_t at = static_cast<size_t>(first_row * stride + first_entry);
  return std::to_string(differing) + " of " + std::to_string(rows) + " rows differ; first row " +
         std::to_string(first_row) + " entry " + std::to_string(first_entry) + ": " + std::to_string(g[at]) +
         " against " + std::to_string(w[at]);
}

// PrefillSelectArgs::full_rows of one run over `rows` rows: rows scored in full, rows whose top-k
// came from the list, and entries that are neither 0 nor 1 (not written).
struct SelectPaths {
  int64_t full = 0, list = 0, unwritten = 0;
};

SelectPaths CountSelectPaths(const uint8_t* full_rows, int64_t rows) {
  BENCH_CUDA(cudaDeviceSynchronize());
  SelectPaths p;
  for (const uint8_t f : Download(full_rows, rows)) {
    if (f == 0) {
      ++p.list;
    } else if (f == 1) {
      ++p.full;
    } else {
      ++p.unwritten;
    }
  }
  return p;
}

// Why PrefillSelect returned cudaErrorNotSupported for chunk rows of up to `max_candidates`
// candidates: "" where its contract says it should have run (then the caller reports a failure).
std::string PrefillSelectWhyNot(int64_t max_candidates) {
  bool wgmma = false;
  (void)kernels::OnCurrentDevice(kernels::WgmmaSupported, &wgmma);
  if (!wgmma) return "PrefillSelect needs compute capability 9.0 (the indexer's wgmma kernel)";
  if (max_candidates < kernels::kPrefillSelectMinCandidates || max_candidates > kernels::kPrefillSelectMaxCandidates) {
    return "PrefillSelect takes chunks of " + std::to_string(kernels::kPrefillSelectMinCandidates) + " to " +
           std::to_string(kernels::kPrefillSelectMaxCandidates) + " candidates per row, not " +
           std::to_string(max_candidates) + " (the separate launches serve this chunk)";
  }
  return "";
}

bool FitsMemory(Ctx& ctx, const std::string& group, int64_t L, int64_t B, double need_bytes) {
  size_t free_b = 0, total_b = 0;
  BENCH_CUDA(cudaMemGetInfo(&free_b, &total_b));
  std::string why;
  if (Gib(need_bytes) > ctx.opt.max_gib) {
    char buf[160];
    std::snprintf(buf, sizeof(buf), "needs %.2f GiB, over --max-gib %.2f", Gib(need_bytes), ctx.opt.max_gib);
    why = buf;
  } else if (need_bytes + (1ll << 30) > static_cast<double>(free_b)) {
    char buf[160];
    std::snprintf(buf, sizeof(buf), "needs %.2f GiB (+1 GiB margin), %.2f GiB free", Gib(need_bytes),
                  Gib(static_cast<double>(free_b)));
    why = buf;
  }
  if (why.empty()) return true;
  std::printf("[%s L=%" PRId64 " B=%" PRId64 "] skipped: %s\n", group.c_str(), L, B, why.c_str());
  ctx.skipped.push_back(json{{"group", group}, {"L", L}, {"B", B}, {"reason", why}});
  return false;
}

// Attention launch over the cache copy `it`.
// The fields every attention launcher's arguments share, at the gsa-1.7b shape: q, K/V copy `it`
// of the cache, the sigmoid output gate, the heads, the scale and the output.
template <typename Args>
void SetAttentionCommon(Args& x, const PagedCache& c, int64_t it, const bf16* q, const float* gate_z,
                        const float* gate_bias, bf16* out) {
  x.q = q;
  x.k_cache = c.K(it);
  x.v_cache = c.V(it);
  x.paged = c.Layout();
  x.gate_z = gate_z;
  x.gate_stride = kGateCols;
  x.gate_bias = gate_bias;
  x.gate_act = kernels::GateActivation::kSigmoid;
  x.n_heads = kHeads;
  x.n_kv_heads = kKvHeads;
  x.d_head = kDHead;
  x.scale = kScale;
  x.out = out;
}

// GatheredAttention's workspace as the engine sets it (CudaBackend): split partials, split counters
// (zeroed once; the last split block of a (row, KV head) merges, no merge kernel) and the resident
// block count planned once.
struct AttnWs {
  DevBuf<uint8_t> ws;
  DevBuf<uint32_t> counters;
  int32_t resident = 0;
  AttnWs(Ctx& ctx, size_t bytes, int64_t max_rows)
      : ws(static_cast<int64_t>(bytes), "attention workspace"),
        counters(max_rows * kKvHeads, "attention split counters") {
    BENCH_CUDA(cudaMemsetAsync(counters.get(), 0, counters.bytes(), ctx.stream));
    BENCH_CUDA(kernels::GatheredAttentionResidentBlocks(kDHead, kHeads / kKvHeads, &resident));
  }
};

void Attend(Ctx& ctx, const PagedCache& c, const Rows& rows, const bf16* q, const int32_t* sel, const int32_t* count,
            int64_t max_tokens, const float* gate_z, const float* gate_bias, bf16* out, const AttnWs& ws,
            int64_t it, const uint8_t* row_skip = nullptr) {
  kernels::GatheredAttentionArgs ga;
  SetAttentionCommon(ga, c, it, q, gate_z, gate_bias, out);
  ga.rows = rows.Info();
  ga.row_ids = rows.row_ids.get();
  ga.num_row_ids = rows.n;
  ga.row_skip = row_skip;
  ga.sel = sel;
  ga.sel_count = count;
  ga.sel_stride = kTopK;
  ga.max_tokens = max_tokens;
  ga.workspace = ws.ws.get();
  ga.workspace_bytes = ws.ws.bytes();
  ga.split_counters = ws.counters.get();
  ga.split_counter_count = static_cast<size_t>(ws.counters.size());
  ga.resident_blocks_per_sm = ws.resident;
  BENCH_CUDA(kernels::GatheredAttention(ga, ctx.stream));
}

// The engine's sparse prefill of one chunk (rows.n rows of sequence 0, the last of its L
// positions): SparsePrefill (union tiles where they pay), then GatheredAttention over the rows it
// left (row_skip). seq: query_start = {0}, num_query = {rows.n}, context_len = {L}, seq_ids = {0}.
struct ChunkSeq {
  const int32_t *zero = nullptr, *num_query = nullptr, *context_len = nullptr;
  int32_t rows = 0, context = 0;
};

void SparseAttend(Ctx& ctx, const PagedCache& c, const Rows& rows, const ChunkSeq& seq, const bf16* q,
                  const int32_t* sel, const int32_t* count, const float* gate_z, const float* gate_bias, bf16* out,
                  const AttnWs& attn_ws, const DevBuf<uint8_t>& sp_ws, uint8_t* row_skip,
                  kernels::SparsePrefillTileStat* stats, int64_t it) {
  kernels::SparsePrefillArgs sp;
  SetAttentionCommon(sp, c, it, q, gate_z, gate_bias, out);
  sp.query_start = seq.zero;
  sp.num_query = seq.num_query;
  sp.context_len = seq.context_len;
  sp.seq_ids = seq.zero;
  sp.num_seq_ids = 1;
  sp.max_num_query = seq.rows;
  sp.max_context = seq.context;
  sp.sel = sel;
  sp.sel_count = count;
  sp.sel_stride = kTopK;
  sp.row_skip = row_skip;
  sp.workspace = sp_ws.get();
  sp.workspace_bytes = sp_ws.bytes();
  sp.tile_stats = stats;
  BENCH_CUDA(kernels::SparsePrefill(sp, ctx.stream));
  Attend(ctx, c, rows, q, sel, count, kTopK, gate_z, gate_bias, out, attn_ws, it, row_skip);
}

// The indexer's arguments for rows.n rows (row r: proj row r, candidates 0 … position[r]) over
// bf16 key copy `it`.
kernels::IndexerScoresArgs IndexArgs(const PagedCache& c, const Rows& rows, const float* proj, const float* bias,
                                     float* scores, const int64_t* offsets, int64_t max_candidates, int64_t it) {
  kernels::IndexerScoresArgs ia;
  ia.proj = proj;
  ia.proj_stride = kProjStride;
  ia.off_qi = kOffQi;
  ia.off_wi = kOffWi;
  ia.bias = bias;
  ia.ki_cache = c.KI(it);
  ia.paged = c.Layout();
  ia.rows = rows.Info();
  ia.n_indexer_heads = kIndexerHeads;
  ia.d_indexer = kDIndexer;
  ia.relu = false;
  ia.scores = scores;
  ia.score_offset = offsets;
  ia.row_begin = 0;
  ia.row_count = rows.n;
  ia.max_candidates = max_candidates;
  ia.sequence_runs = rows.sequence_runs;  // as the engine passes it: a prefill chunk takes the wgmma kernel
  return ia;
}

// Indexer scores of rows.n rows from key copy `it`.
void Index(Ctx& ctx, const PagedCache& c, const Rows& rows, const float* proj, const float* bias, float* scores,
           const int64_t* offsets, int64_t max_candidates, int64_t it) {
  BENCH_CUDA(kernels::IndexerScores(IndexArgs(c, rows, proj, bias, scores, offsets, max_candidates, it), ctx.stream));
}

// The score chunk of all rows.n rows (row r's scores at offsets[r]).
kernels::ScoreChunk ChunkOf(const Rows& rows, const float* scores, const int64_t* offsets, int64_t max_candidates) {
  kernels::ScoreChunk ch;
  ch.scores = scores;
  ch.score_offset = offsets;
  ch.row_begin = 0;
  ch.row_count = rows.n;
  ch.max_candidates = max_candidates;
  return ch;
}

void Select(Ctx& ctx, const Rows& rows, const float* scores, const int64_t* offsets, int64_t max_candidates,
            const int32_t* k, int32_t* sel, const DevBuf<uint8_t>& ws, size_t ws_bytes) {
  BENCH_CUDA(kernels::TopK(ChunkOf(rows, scores, offsets, max_candidates), rows.Info(), k, sel, kTopK,
                           ws_bytes > 0 ? ws.get() : nullptr, ws_bytes, ctx.stream));
}

// The fused decode selection (kernels::DecodeSelect): indexer scores, k (fixed 2048) and top-k of
// rows.n rows in one cooperative launch. cumvar: [slots] running-variance scratch; ws zeroed.
// fp8: codes / scales are ki_instances copies of the keys quantized (null: the bf16 keys).
void FusedSelect(Ctx& ctx, const PagedCache& c, const Rows& rows, const float* proj, const float* bias, float* scores,
                 const int64_t* offsets, int64_t max_candidates, int64_t it, float* cumvar, int32_t* k, int32_t* sel,
                 const DevBuf<uint8_t>& ws, const uint8_t* codes = nullptr, const float* scales = nullptr,
                 int64_t* marks = nullptr, int64_t* marks_ns = nullptr) {
  kernels::DecodeSelectArgs a;
  a.marks = marks;
  a.marks_globaltimer = marks_ns;
  a.index = IndexArgs(c, rows, proj, bias, scores, offsets, max_candidates, it);
  if (codes != nullptr) {
    const int64_t inst = it % c.ki_instances;
    a.index.ki_fp8 = codes + inst * c.slots * kDIndexer;
    a.index.ki_scale = scales + inst * c.slots;
  }
  a.rule.method = 0;
  a.rule.k_base = a.rule.k_min = a.rule.k_max = kTopK;
  a.cumvar = cumvar;
  a.k = k;
  a.sel = sel;
  a.sel_stride = kTopK;
  a.workspace = ws.get();
  a.workspace_bytes = static_cast<size_t>(ws.bytes());
  BENCH_CUDA(kernels::DecodeSelect(a, ctx.stream));
}

// Where one fused selection launch spends its time: `launch(it, marks, marks_ns)` runs it with
// DecodeSelectArgs::marks set, kTimelineRuns times. Per phase (between consecutive marks), the
// mean over blocks and runs of each block's duration and the mean over runs of the slowest
// block's, in µs: clock64 cycles scaled by each block's own cycles per globaltimer ns over the
// whole launch. Also the spread of block start times (launch skew) and first start → last end.
// Printed as a table and returned for the record.
json FusedSelectTimeline(Ctx& ctx, const std::function<void(int64_t, int64_t*, int64_t*)>& launch, int64_t rows) {
  constexpr int kTimelineRuns = 20;
  constexpr int kM = kernels::kDecodeSelectMarks;
  const int64_t max_blocks = kernels::DecodeSelectMaxBlocks(rows);
  DevBuf<int64_t> marks(max_blocks * kM, "selection timeline marks"), ns(2 * max_blocks, "selection timeline ns");
  std::vector<double> mean_us(kM, 0.0), max_us(kM, 0.0);
  double skew_us = 0, span_us = 0;
  int64_t blocks_seen = 0;
  for (int run = 0; run < kTimelineRuns; ++run) {
    BENCH_CUDA(cudaMemsetAsync(marks.get(), 0, marks.bytes(), ctx.stream));
    BENCH_CUDA(cudaMemsetAsync(ns.get(), 0, ns.bytes(), ctx.stream));
    launch(run, marks.get(), ns.get());
    BENCH_CUDA(cudaStreamSynchronize(ctx.stream));
    const std::vector<int64_t> m = Download(marks.get(), max_blocks * kM);
    const std::vector<int64_t> t = Download(ns.get(), 2 * max_blocks);
    int64_t first = std::numeric_limits<int64_t>::max(), last_start = 0, last_end = 0, used = 0;
    std::vector<double> run_max(kM, 0.0);
    for (int64_t b = 0; b < max_blocks; ++b) {
      const int64_t* mb = m.data() + b * kM;
      const int64_t t0 = t[static_cast<size_t>(b)], t1 = t[static_cast<size_t>(max_blocks + b)];
      if (mb[0] == 0 || t0 == 0 || t1 <= t0) continue;
      ++used;
      first = std::min(first, t0);
      last_start = std::max(last_start, t0);
      last_end = std::max(last_end, t1);
      const double us_per_cycle = static_cast<double>(t1 - t0) * 1e-3 / static_cast<double>(mb[kM - 1] - mb[0]);
      for (int i = 1; i < kM; ++i) {
        const double us = static_cast<double>(mb[i] - mb[i - 1]) * us_per_cycle;
        mean_us[static_cast<size_t>(i)] += us;
        run_max[static_cast<size_t>(i)] = std::max(run_max[static_cast<size_t>(i)], us);
      }
    }
    if (used == 0) Fatal("internal: the fused selection recorded no timeline marks");
    blocks_seen += used;
    for (int i = 1; i < kM; ++i) max_us[static_cast<size_t>(i)] += run_max[static_cast<size_t>(i)] / kTimelineRuns;
    skew_us += static_cast<double>(last_start - first) * 1e-3 / kTimelineRuns;
    span_us += static_cast<double>(last_end - first) * 1e-3 / kTimelineRuns;
  }
  json phases = json::array();
  std::printf("  fused selection timeline (%d launches, %" PRId64 " blocks each; µs per block):\n", kTimelineRuns,
              blocks_seen / kTimelineRuns);
  for (int i = 1; i < kM; ++i) {
    const double mean = mean_us[static_cast<size_t>(i)] / static_cast<double>(blocks_seen);
    std::printf("    %-36s mean %7.2f  slowest block %7.2f\n", kernels::DecodeSelectMarkName(i), mean,
                max_us[static_cast<size_t>(i)]);
    phases.push_back({{"until", kernels::DecodeSelectMarkName(i)}, {"mean_us", mean},
                      {"slowest_block_us", max_us[static_cast<size_t>(i)]}});
  }
  std::printf("    block start skew %.2f µs; first start to last end %.2f µs\n", skew_us, span_us);
  return json{{"launches", kTimelineRuns},
              {"blocks", blocks_seen / kTimelineRuns},
              {"phases", phases},
              {"start_skew_us", skew_us},
              {"first_start_to_last_end_us", span_us}};
}

// Output gate pre-activations [rows, 2048] and bias [2048], random.
void MakeGate(Ctx& ctx, int64_t rows, DevBuf<float>* gate_z, DevBuf<float>* gate_bias) {
  gate_z->Alloc(rows * kGateCols, "output gate z");
  gate_bias->Alloc(kGateCols, "output gate bias");
  BENCH_CUDA(FillUniformF32(gate_z->get(), rows * kGateCols, ctx.Seed(), -2.0f, 2.0f, ctx.stream));
  BENCH_CUDA(FillUniformF32(gate_bias->get(), kGateCols, ctx.Seed(), -0.5f, 0.5f, ctx.stream));
}

// ---- Decode ------------------------------------------------------------------------------------

void RunDecode(Ctx& ctx, int64_t L, int64_t B) {
  const int64_t R = ctx.rotate_bytes;
  const int64_t score_set = B * L;  // floats of one set of B score rows
  const int64_t nsc = std::min<int64_t>(Instances(score_set * 4, R), kMaxScoreSets);
  const int64_t nsel = std::min<int64_t>(Instances(B * kTopK * 2 * kKvBytesPerSlot, R), kMaxSelSets);
  const size_t topk_ws_bytes = kernels::TopKWorkspaceBytes(B, L);
  const size_t attn_ws_bytes = kernels::GatheredAttentionWorkspaceBytes(B, kHeads, kDHead);
  const double need = static_cast<double>(PagedCache::Bytes(L, B, R)) + static_cast<double>(nsc * score_set * 4) +
                      static_cast<double>(nsc * B * 8) + static_cast<double>(nsel * B * kTopK * 4) +
                      static_cast<double>(nsc * B * kProjStride * 4) +
                      static_cast<double>(B * (2 * kQBytesPerRow + kGateCols * 4 + 3 * kTopK * 4)) +
                      static_cast<double>(topk_ws_bytes + attn_ws_bytes);
  if (!FitsMemory(ctx, "decode", L, B, need)) return;
  std::printf("[decode L=%" PRId64 " B=%" PRId64 "] %.2f GiB of buffers\n", L, B, Gib(need));
  std::fflush(stdout);

  PagedCache cache;
  BuildCache(ctx, L, B, &cache);
  std::vector<int32_t> seq(static_cast<size_t>(B)), pos(static_cast<size_t>(B), static_cast<int32_t>(L - 1));
  std::iota(seq.begin(), seq.end(), 0);
  Rows rows, dense_rows;
  MakeRows(cache, seq, pos, 0, &rows);
  MakeRows(cache, seq, pos, 1, &dense_rows);

  DevBuf<bf16> q(B * kHeads * kDHead, "q"), out(B * kHeads * kDHead, "attention out");
  BENCH_CUDA(FillUniformBf16(q.get(), q.size(), ctx.Seed(), -1.0f, 1.0f, ctx.stream));
  DevBuf<float> gate_z, gate_bias;
  MakeGate(ctx, B, &gate_z, &gate_bias);
  DevBuf<float> proj = Upload(MakeProj(ctx.rng, B), "indexer projections");
  DevBuf<float> proj_fill = Upload(MakeProj(ctx.rng, nsc * B), "indexer projections (score sets)");
  std::uniform_real_distribution<float> bias_d(-0.5f, 0.5f);
  std::vector<float> bias_h(kIndexerHeads);
  for (float& b : bias_h) b = bias_d(ctx.rng);
  DevBuf<float> bias = Upload(bias_h, "indexer bias");
  DevBuf<int32_t> kbuf = Upload(std::vector<int32_t>(static_cast<size_t>(B), kTopK), "k per row");

  // Score sets: set s holds rows r at scores[(s · B + r) · L].
  DevBuf<float> scores(nsc * score_set, "scores");
  std::vector<int64_t> off_h(static_cast<size_t>(nsc * B));
  for (int64_t i = 0; i < nsc * B; ++i) off_h[static_cast<size_t>(i)] = i * L;
  DevBuf<int64_t> offsets = Upload(off_h, "score offsets");

  // Random selection sets for the standalone sparse attention.
  std::vector<int32_t> sel_h(static_cast<size_t>(nsel * B * kTopK));
  std::vector<uint8_t> mark(static_cast<size_t>(L), 0);
  for (int64_t i = 0; i < nsel * B; ++i) SampleDistinct(ctx.rng, L, kTopK, mark, sel_h.data() + i * kTopK);
  for (int64_t s = 0; s < nsel; ++s) {
    const std::vector<int32_t> one(sel_h.begin() + s * B * kTopK, sel_h.begin() + (s + 1) * B * kTopK);
    const std::string bad = CheckSelection(one, B, kTopK, kTopK, pos);
    if (!bad.empty()) Fatal("internal: random decode selection: " + bad);
  }
  DevBuf<int32_t> sel_sets = Upload(sel_h, "random selections");
  DevBuf<int32_t> sel_topk(B * kTopK, "top-k selection"), sel_fused(B * kTopK, "fused selection");
  BENCH_CUDA(cudaMemsetAsync(sel_topk.get(), 0xFF, sel_topk.bytes(), ctx.stream));
  BENCH_CUDA(cudaMemsetAsync(sel_fused.get(), 0xFF, sel_fused.bytes(), ctx.stream));
  DevBuf<uint8_t> topk_ws(static_cast<int64_t>(topk_ws_bytes), "top-k workspace");
  DevBuf<uint8_t> select_ws(static_cast<int64_t>(kernels::DecodeSelectWorkspaceBytes(B)), "fused selection workspace");
  BENCH_CUDA(cudaMemsetAsync(select_ws.get(), 0, select_ws.bytes(), ctx.stream));
  DevBuf<float> cumvar(cache.slots, "running variance sums");
  BENCH_CUDA(cudaMemsetAsync(cumvar.get(), 0, cumvar.bytes(), ctx.stream));
  DevBuf<int32_t> kfused(B, "k per row (fused)");
  DevBuf<int32_t> sel_onelaunch(B * kTopK, "fused selection (one launch)");
  BENCH_CUDA(cudaMemsetAsync(sel_onelaunch.get(), 0xFF, sel_onelaunch.bytes(), ctx.stream));
  AttnWs attn_ws(ctx, attn_ws_bytes, B);

  // Fill every score set (each from its own projections and key copy).
  for (int64_t s = 0; s < nsc; ++s) {
    Index(ctx, cache, rows, proj_fill.get() + s * B * kProjStride, bias.get(), scores.get(), offsets.get() + s * B, L,
          s);
  }
  BENCH_CUDA(cudaDeviceSynchronize());  // setup (fills, uploads) done before anything is timed

  const json rotation{{"kv_cache_copies", cache.kv_instances},
                      {"indexer_key_copies", cache.ki_instances},
                      {"score_sets", nsc},
                      {"selection_sets", nsel}};
  auto base = [&](const char* name) {
    Record r;
    r.name = name;
    r.group = "decode";
    r.L = L;
    r.B = B;
    r.extra["rows"] = B;
    r.extra["candidates_per_row"] = L;
    r.extra["rotation"] = rotation;
    return r;
  };
  const int reps = ctx.opt.reps, warm = ctx.opt.warmup;
  const double b_indexer = static_cast<double>(B) * L * (kKiBytesPerSlot + 4);
  const double b_topk = static_cast<double>(B) * L * 4;
  const double b_sparse = static_cast<double>(B) * kTopK * 2 * kKvBytesPerSlot;
  const double b_dense = static_cast<double>(B) * L * 2 * kKvBytesPerSlot;

  // 1. Indexer.
  {
    Record r = base("decode_indexer");
    r.t = ctx.timer->Run(
        [&](int64_t it) {
          Index(ctx, cache, rows, proj.get(), bias.get(), scores.get(), offsets.get() + (it % nsc) * B, L, it);
        },
        warm, reps, 0);
    r.bytes = b_indexer;
    r.flops = static_cast<double>(B) * L * kIndexerHeads * kDIndexer * 2;
    r.bound = Bound::kMemory;
    AddRecord(ctx, std::move(r));
  }
  // 2. Top-k.
  {
    Record r = base("decode_topk");
    const bool multi = kernels::TopKUsesMultiBlock(B, L, topk_ws_bytes > 0 ? topk_ws.get() : nullptr, topk_ws_bytes);
    r.t = ctx.timer->Run(
        [&](int64_t it) {
          Select(ctx, rows, scores.get(), offsets.get() + (it % nsc) * B, L, kbuf.get(), sel_topk.get(), topk_ws,
                 topk_ws_bytes);
        },
        warm, reps, 0);
    r.bytes = b_topk;
    r.bound = Bound::kMemory;
    r.note = multi ? "multi-block" : "one block per row";
    r.extra["topk_path"] = r.note;
    AddRecord(ctx, std::move(r));
    AddCheck(ctx, "decode_topk", L, B, CheckSelDevice(sel_topk.get(), B, pos));
  }
  // 2b. Indexer + k + top-k in one cooperative launch (what the engine runs for decode).
  {
    Record r = base("decode_select_fused");
    r.t = ctx.timer->Run(
        [&](int64_t it) {
          FusedSelect(ctx, cache, rows, proj.get(), bias.get(), scores.get(), offsets.get() + (it % nsc) * B, L, it,
                      cumvar.get(), kfused.get(), sel_onelaunch.get(), select_ws);
        },
        warm, reps, 0);
    r.bytes = b_indexer + b_topk;
    r.flops = static_cast<double>(B) * L * kIndexerHeads * kDIndexer * 2;
    r.bound = Bound::kMemory;
    r.note = "DecodeSelect: one cooperative launch";
    r.extra["timeline"] = FusedSelectTimeline(ctx, [&](int64_t it, int64_t* marks, int64_t* marks_ns) {
      FusedSelect(ctx, cache, rows, proj.get(), bias.get(), scores.get(), offsets.get() + (it % nsc) * B, L, it,
                  cumvar.get(), kfused.get(), sel_onelaunch.get(), select_ws, nullptr, nullptr, marks, marks_ns);
    }, B);
    AddRecord(ctx, std::move(r));
    AddCheck(ctx, "decode_select_fused", L, B, CheckSelDevice(sel_onelaunch.get(), B, pos));
  }
  // 2c. The same with fp8 indexer keys (CudaBackendOptions::fp8_indexer_keys): time, and how many
  // of the bf16 keys' selected positions the fp8 keys' selection keeps (same projections, key copy 0).
  DevBuf<uint8_t> codes(cache.ki_instances * cache.slots * kDIndexer, "fp8 indexer key codes");
  DevBuf<float> key_scales(cache.ki_instances * cache.slots, "fp8 indexer key scales");
  BENCH_CUDA(QuantizeKeysFp8(cache.ki.get(), cache.ki_instances * cache.slots, kDIndexer, codes.get(),
                             key_scales.get(), ctx.stream));
  const double b_indexer_fp8 = static_cast<double>(B) * L * (kDIndexer + 4 + 4);
  double fp8_overlap = 0;
  {
    Record r = base("decode_select_fused_fp8");
    r.t = ctx.timer->Run(
        [&](int64_t it) {
          FusedSelect(ctx, cache, rows, proj.get(), bias.get(), scores.get(), offsets.get() + (it % nsc) * B, L, it,
                      cumvar.get(), kfused.get(), sel_onelaunch.get(), select_ws, codes.get(), key_scales.get());
        },
        warm, reps, 0);
    AddCheck(ctx, "decode_select_fused_fp8", L, B, CheckSelDevice(sel_onelaunch.get(), B, pos));
    FusedSelect(ctx, cache, rows, proj.get(), bias.get(), scores.get(), offsets.get(), L, 0, cumvar.get(), kfused.get(),
                sel_onelaunch.get(), select_ws);
    BENCH_CUDA(cudaDeviceSynchronize());
    const std::vector<int32_t> sel_b = Download(sel_onelaunch.get(), B * kTopK);
    FusedSelect(ctx, cache, rows, proj.get(), bias.get(), scores.get(), offsets.get(), L, 0, cumvar.get(), kfused.get(),
                sel_onelaunch.get(), select_ws, codes.get(), key_scales.get());
    BENCH_CUDA(cudaDeviceSynchronize());
    const std::vector<int32_t> sel_f = Download(sel_onelaunch.get(), B * kTopK);
    int64_t common = 0;
    for (int64_t row = 0; row < B; ++row) {
      std::vector<int32_t> x(sel_b.begin() + row * kTopK, sel_b.begin() + (row + 1) * kTopK);
      std::vector<int32_t> y(sel_f.begin() + row * kTopK, sel_f.begin() + (row + 1) * kTopK);
      std::sort(x.begin(), x.end());
      std::sort(y.begin(), y.end());
      std::vector<int32_t> both;
      std::set_intersection(x.begin(), x.end(), y.begin(), y.end(), std::back_inserter(both));
      common += static_cast<int64_t>(both.size());
    }
    fp8_overlap = static_cast<double>(common) / static_cast<double>(B * kTopK);
    r.bytes = b_indexer_fp8 + b_topk;
    r.flops = static_cast<double>(B) * L * kIndexerHeads * kDIndexer * 2;
    r.bound = Bound::kMemory;
    char note[96];
    std::snprintf(note, sizeof(note), "fp8 keys; keeps %.4f of the bf16 keys' selection", fp8_overlap);
    r.note = note;
    r.extra["selection_overlap_vs_bf16"] = fp8_overlap;
    r.extra["key_bytes_per_token"] = kDIndexer + 4;
    AddRecord(ctx, std::move(r));
  }
  // 3. Sparse attention over random selections.
  {
    Record r = base("decode_sparse_attention");
    r.t = ctx.timer->Run(
        [&](int64_t it) {
          Attend(ctx, cache, rows, q.get(), sel_sets.get() + (it % nsel) * B * kTopK, kbuf.get(), kTopK, gate_z.get(),
                 gate_bias.get(), out.get(), attn_ws, it);
        },
        warm, reps, 0);
    r.bytes = b_sparse;
    r.flops = static_cast<double>(B) * kTopK * kHeads * kDHead * 4;
    r.bound = Bound::kMemory;
    r.extra["selected_per_row"] = kTopK;
    AddRecord(ctx, std::move(r));
    AddCheck(ctx, "decode_sparse_attention", L, B, CheckOutput(ctx, out.get(), out.size()));
  }
  // 4. Dense attention.
  double dense_us = 0;
  {
    Record r = base("decode_dense_attention");
    r.t = ctx.timer->Run(
        [&](int64_t it) {
          Attend(ctx, cache, dense_rows, q.get(), sel_sets.get(), kbuf.get(), L, gate_z.get(), gate_bias.get(),
                 out.get(), attn_ws, it);
        },
        warm, reps, 0);
    r.bytes = b_dense;
    r.flops = static_cast<double>(B) * L * kHeads * kDHead * 4;
    r.bound = Bound::kMemory;
    dense_us = r.t.median_us;
    AddRecord(ctx, std::move(r));
    AddCheck(ctx, "decode_dense_attention", L, B, CheckOutput(ctx, out.get(), out.size()));
  }
  // 5. The GSA step of one layer: a selection (`select(it, set)` fills sel_fused) → sparse attention
  // on it, one timed region; `extra` annotates the note and the record.
  auto gsa_step = [&](const char* name, double indexer_bytes, const char* region, const std::string& note_extra,
                      const std::function<void(int64_t, int64_t)>& select) {
    Record r = base(name);
    r.t = ctx.timer->Run(
        [&](int64_t it) {
          select(it, it % nsc);
          Attend(ctx, cache, rows, q.get(), sel_fused.get(), kbuf.get(), kTopK, gate_z.get(), gate_bias.get(),
                 out.get(), attn_ws, it);
        },
        warm, reps, 0);
    r.bytes = indexer_bytes + b_topk + b_sparse;
    r.flops = static_cast<double>(B) * (static_cast<double>(L) * kIndexerHeads * kDIndexer * 2 +
                                        static_cast<double>(kTopK) * kHeads * kDHead * 4);
    r.bound = Bound::kMemory;
    const double ratio = r.t.median_us > 0 ? dense_us / r.t.median_us : 0;
    char note[64];
    std::snprintf(note, sizeof(note), "dense/gsa %.2fx", ratio);
    r.note = std::string(note) + note_extra;
    r.extra["dense_decode_us"] = dense_us;
    r.extra["dense_over_gsa"] = ratio;
    r.extra["region"] = region;
    if (!note_extra.empty()) r.extra["selection_overlap_vs_bf16"] = fp8_overlap;
    AddRecord(ctx, std::move(r));
    AddCheck(ctx, std::string(name) + " selection", L, B, CheckSelDevice(sel_fused.get(), B, pos));
    AddCheck(ctx, std::string(name) + " output", L, B, CheckOutput(ctx, out.get(), out.size()));
  };
  // As the engine runs it: the fused selection.
  gsa_step("gsa_decode", b_indexer, "DecodeSelect + GatheredAttention (eager launches, one stream)", "",
           [&](int64_t it, int64_t set) {
             FusedSelect(ctx, cache, rows, proj.get(), bias.get(), scores.get(), offsets.get() + set * B, L, it,
                         cumvar.get(), kfused.get(), sel_fused.get(), select_ws);
           });
  // With fp8 indexer keys.
  char kept[64];
  std::snprintf(kept, sizeof(kept), "; fp8 keys keep %.4f of the selection", fp8_overlap);
  gsa_step("gsa_decode_fp8", b_indexer_fp8, "DecodeSelect (fp8 keys) + GatheredAttention (eager launches, one stream)",
           kept, [&](int64_t it, int64_t set) {
             FusedSelect(ctx, cache, rows, proj.get(), bias.get(), scores.get(), offsets.get() + set * B, L, it,
                         cumvar.get(), kfused.get(), sel_fused.get(), select_ws, codes.get(), key_scales.get());
           });
  // With the selection as separate launches (IndexerScores, TopK).
  gsa_step("gsa_decode_unfused", b_indexer, "IndexerScores + TopK + GatheredAttention (eager launches, one stream)",
           "", [&](int64_t it, int64_t set) {
             Index(ctx, cache, rows, proj.get(), bias.get(), scores.get(), offsets.get() + set * B, L, it);
             Select(ctx, rows, scores.get(), offsets.get() + set * B, L, kbuf.get(), sel_fused.get(), topk_ws,
                    topk_ws_bytes);
           });
  BENCH_CUDA(cudaDeviceSynchronize());
}

// ---- Prefill -----------------------------------------------------------------------------------

void RunPrefill(Ctx& ctx, int64_t L) {
  const int64_t C = kPrefillChunk;
  const int64_t c0 = L - C;  // the chunk's first position
  const int64_t R = ctx.rotate_bytes;
  const size_t topk_ws_bytes = kernels::TopKWorkspaceBytes(C, L);
  const size_t attn_ws_bytes = kernels::GatheredAttentionWorkspaceBytes(C, kHeads, kDHead);
  const size_t select_ws_bytes = kernels::PrefillSelectWorkspaceBytes(C, L);
  const double need = static_cast<double>(PagedCache::Bytes(L, 1, R)) +
                      static_cast<double>(L) * (2 * kQBytesPerRow + kGateCols * 4) +
                      static_cast<double>(C) * L * 4 + static_cast<double>(C) * (8 + kProjStride * 4 + 4) +
                      static_cast<double>(3 * C * kTopK * 4) + static_cast<double>(topk_ws_bytes + attn_ws_bytes) +
                      static_cast<double>(C) * L / 64 * 8 +  // SparsePrefill workspace (generous bound)
                      // PrefillSelect: workspace, its two selections, k, var, full_rows, running sums.
                      static_cast<double>(select_ws_bytes) + static_cast<double>(C) * (kTopK + kKMaxVariance) * 4 +
                      static_cast<double>(C) * (4 + 8 + 1) + static_cast<double>(L) * 4;
  if (!FitsMemory(ctx, "prefill", L, 1, need)) return;
  std::printf("[prefill L=%" PRId64 " B=1] %.2f GiB of buffers\n", L, Gib(need));
  std::fflush(stdout);

  PagedCache cache;
  BuildCache(ctx, L, 1, &cache);
  std::vector<int32_t> seq(static_cast<size_t>(C), 0), pos(static_cast<size_t>(C));
  for (int64_t j = 0; j < C; ++j) pos[static_cast<size_t>(j)] = static_cast<int32_t>(c0 + j);
  Rows rows;  // the chunk: row j at position c0 + j (q row j, out row j)
  MakeRows(cache, seq, pos, 0, &rows);

  DevBuf<bf16> q(L * kHeads * kDHead, "q"), out(L * kHeads * kDHead, "attention out");
  BENCH_CUDA(FillUniformBf16(q.get(), q.size(), ctx.Seed(), -1.0f, 1.0f, ctx.stream));
  DevBuf<float> gate_z, gate_bias;
  MakeGate(ctx, L, &gate_z, &gate_bias);
  DevBuf<float> proj = Upload(MakeProj(ctx.rng, C), "indexer projections");
  std::uniform_real_distribution<float> bias_d(-0.5f, 0.5f);
  std::vector<float> bias_h(kIndexerHeads);
  for (float& b : bias_h) b = bias_d(ctx.rng);
  DevBuf<float> bias = Upload(bias_h, "indexer bias");
  DevBuf<int32_t> kbuf = Upload(std::vector<int32_t>(static_cast<size_t>(C), kTopK), "k per row");
  DevBuf<float> scores(C * L, "chunk scores");
  std::vector<int64_t> off_h(static_cast<size_t>(C));
  for (int64_t j = 0; j < C; ++j) off_h[static_cast<size_t>(j)] = j * L;
  DevBuf<int64_t> offsets = Upload(off_h, "score offsets");
  DevBuf<uint8_t> topk_ws(static_cast<int64_t>(topk_ws_bytes), "top-k workspace");
  AttnWs attn_ws(ctx, attn_ws_bytes, C);
  // SparsePrefill: the engine's workspace rule (unions up to kQ · k / (64 · cost) blocks).
  constexpr int32_t kGroup = kHeads / kKvHeads;
  const int32_t kq = kernels::SparsePrefillTileRows(kGroup);
  const int32_t u_cap =
      static_cast<int32_t>(std::ceil(static_cast<double>(kq) * kTopK / (64.0 * kernels::kSparsePrefillTileKeyCost)));
  DevBuf<uint8_t> sp_ws(
      static_cast<int64_t>(kernels::SparsePrefillWorkspaceBytes(1, static_cast<int32_t>(C), static_cast<int32_t>(L), kGroup, u_cap)),
      "sparse prefill workspace");
  DevBuf<uint8_t> row_skip(C, "row_skip");
  const int32_t n_tiles = kernels::SparsePrefillTilesPerSeq(static_cast<int32_t>(C), kGroup);
  DevBuf<kernels::SparsePrefillTileStat> tile_stats(n_tiles, "tile stats");

  // Selections: random (distinct uniform positions ≤ t) and clustered (recent 512 + 3 shared spans).
  std::vector<int32_t> rand_h(static_cast<size_t>(C * kTopK)), clus_h(static_cast<size_t>(C * kTopK));
  std::vector<uint8_t> mark(static_cast<size_t>(L), 0);
  for (int64_t j = 0; j < C; ++j) SampleDistinct(ctx.rng, c0 + j + 1, kTopK, mark, rand_h.data() + j * kTopK);
  // Spans end before the first row's recent window [c0 - 511, c0]: starts 0, X/2, X with X = c0 - 1023
  // (X ≥ 1024 since L ≥ 4096), so the spans are disjoint from each other and from every row's window.
  const int64_t X = c0 - 2 * kSpan + 1;
  const int64_t span_start[3] = {0, X / 2, X};
  for (int64_t j = 0; j < C; ++j) {
    int32_t* s = clus_h.data() + j * kTopK;
    const int64_t t = c0 + j;
    int64_t n = 0;
    for (int64_t i = 0; i < kSpan; ++i) s[n++] = static_cast<int32_t>(t - i);
    for (int64_t sp = 0; sp < 3; ++sp) {
      for (int64_t i = 0; i < kSpan; ++i) s[n++] = static_cast<int32_t>(span_start[sp] + i);
    }
    std::sort(s, s + kTopK, std::greater<int32_t>());
  }
  for (const std::vector<int32_t>* v : {&rand_h, &clus_h}) {
    const std::string bad = CheckSelection(*v, C, kTopK, kTopK, pos);
    if (!bad.empty()) Fatal("internal: prefill selection pattern: " + bad);
  }
  DevBuf<int32_t> sel_rand = Upload(rand_h, "random prefill selections");
  DevBuf<int32_t> sel_clus = Upload(clus_h, "clustered prefill selections");
  DevBuf<int32_t> sel_topk(C * kTopK, "prefill top-k selection");
  BENCH_CUDA(cudaMemsetAsync(sel_topk.get(), 0xFF, sel_topk.bytes(), ctx.stream));
  // PrefillSelect of the chunk (cases 4c, 4d, 7): its workspace, its selections (fixed k; the
  // variance rule's, k_max wide), k, var, the per-slot running variance sums and full_rows.
  DevBuf<uint8_t> select_ws(static_cast<int64_t>(select_ws_bytes), "prefill selection workspace");
  DevBuf<int32_t> sel_ps(C * kTopK, "PrefillSelect selection");
  DevBuf<int32_t> sel_ps_var(C * kKMaxVariance, "PrefillSelect selection (variance rule)");
  BENCH_CUDA(cudaMemsetAsync(sel_ps.get(), 0xFF, sel_ps.bytes(), ctx.stream));
  BENCH_CUDA(cudaMemsetAsync(sel_ps_var.get(), 0xFF, sel_ps_var.bytes(), ctx.stream));
  DevBuf<int32_t> ps_k(C, "k per row (PrefillSelect)");
  DevBuf<double> ps_var(C, "score variance per row (PrefillSelect)");
  DevBuf<uint8_t> ps_full(C, "full_rows (PrefillSelect)");
  DevBuf<float> ps_cumvar(cache.slots, "running variance sums (PrefillSelect)");
  BENCH_CUDA(cudaMemsetAsync(ps_cumvar.get(), 0, ps_cumvar.bytes(), ctx.stream));
  DevBuf<int32_t> ps_first = Upload(std::vector<int32_t>{0, static_cast<int32_t>(C)}, "seq_first_row");

  // DensePrefill per-sequence arrays: the whole prompt, and the chunk after c0 cached tokens.
  DevBuf<int32_t> zero = Upload(std::vector<int32_t>{0}, "dense prefill zero");
  DevBuf<int32_t> full_len = Upload(std::vector<int32_t>{static_cast<int32_t>(L)}, "dense prefill L");
  DevBuf<int32_t> chunk_len = Upload(std::vector<int32_t>{static_cast<int32_t>(C)}, "dense prefill chunk");
  // Σ over chunk rows of (position + 1): the chunk's causal (row, candidate) pairs.
  const double chunk_pairs = static_cast<double>(C) * static_cast<double>(c0) + static_cast<double>(C) * (C + 1) / 2.0;
  ChunkSeq chunk_seq;
  chunk_seq.zero = zero.get();
  chunk_seq.num_query = chunk_len.get();
  chunk_seq.context_len = full_len.get();
  chunk_seq.rows = static_cast<int32_t>(C);
  chunk_seq.context = static_cast<int32_t>(L);
  // What SparsePrefill's plan decided in the last run: tiles on the union path, their union
  // tokens, rows left to GatheredAttention; the K+V bytes actually loaded and the (row, key) score
  // pairs computed (a tile computes all its rows against all its union's keys).
  auto plan_extra = [&](Record& r) {
    BENCH_CUDA(cudaStreamSynchronize(ctx.stream));
    std::vector<kernels::SparsePrefillTileStat> st(static_cast<size_t>(n_tiles));
    BENCH_CUDA(cudaMemcpy(st.data(), tile_stats.get(), st.size() * sizeof(st[0]), cudaMemcpyDeviceToHost));
    int64_t tiles = 0, on = 0, union_tokens = 0, rows_on = 0, selected_off = 0;
    for (int32_t y = 0; y < n_tiles; ++y) {
      const kernels::SparsePrefillTileStat& t = st[static_cast<size_t>(y)];
      if (t.union_blocks < 0) continue;
      ++tiles;
      const int64_t j0 = static_cast<int64_t>(y) * kq - c0 % kq;
      const int64_t n = std::min<int64_t>(j0 + kq, C) - std::max<int64_t>(j0, 0);
      if (t.on_tiles != 0) {
        ++on;
        union_tokens += static_cast<int64_t>(t.union_blocks) * 64;
        rows_on += n;
      } else {
        selected_off += t.selected;
      }
    }
    const double loaded = static_cast<double>(union_tokens + selected_off) * 2 * kKvBytesPerSlot;
    const double pairs = static_cast<double>(union_tokens) * kq + static_cast<double>(selected_off);
    r.extra["tiles"] = tiles;
    r.extra["tiles_on_union_path"] = on;
    r.extra["rows_on_union_path"] = rows_on;
    r.extra["mean_union_tokens"] = on > 0 ? static_cast<double>(union_tokens) / static_cast<double>(on) : 0.0;
    r.extra["kv_bytes_loaded"] = loaded;
    r.extra["score_pairs_computed"] = pairs;
    r.extra["work_skipped_vs_dense_chunk"] = 1.0 - pairs / chunk_pairs;
    return loaded;
  };
  BENCH_CUDA(cudaDeviceSynchronize());  // setup (fills, uploads) done before anything is timed

  const json rotation{{"kv_cache_copies", cache.kv_instances}, {"indexer_key_copies", cache.ki_instances}};
  auto base = [&](const char* name, int64_t rows_n) {
    Record r;
    r.name = name;
    r.group = "prefill";
    r.L = L;
    r.B = 1;
    r.extra["rows"] = rows_n;
    r.extra["chunk_first_position"] = rows_n == L ? 0 : c0;
    r.extra["rotation"] = rotation;
    return r;
  };
  auto dense = [&](int64_t it, int32_t num_query,
                   kernels::DensePrefillArgs::Kernel kernel = kernels::DensePrefillArgs::Kernel::kAuto) {
    kernels::DensePrefillArgs da;
    SetAttentionCommon(da, cache, it, q.get(), gate_z.get(), gate_bias.get(), out.get());
    da.query_start = zero.get();
    da.num_query = num_query == L ? full_len.get() : chunk_len.get();
    da.context_len = full_len.get();
    da.seq_ids = zero.get();
    da.num_seq_ids = 1;
    da.max_num_query = num_query;
    da.query_tile = ctx.opt.dense_query_tile;
    da.kernel = kernel;
    BENCH_CUDA(kernels::DensePrefill(da, ctx.stream));
  };
  const int reps = ctx.opt.reps, warm = ctx.opt.warmup;
  const double attn_flop_per_pair = static_cast<double>(kHeads) * kDHead * 4;  // QKᵀ and PV, multiply-add = 2
  const double b_gather = static_cast<double>(C) * kTopK * 2 * kKvBytesPerSlot;

  // 1. Dense prefill of the whole prompt.
  {
    Record r = base("prefill_dense_full", L);
    r.t = ctx.timer->Run([&](int64_t it) { dense(it, static_cast<int32_t>(L)); }, warm, reps, kPrefillBudgetMs);
    r.flops = 2.0 * 2.0 * (static_cast<double>(L) * L / 2.0) * kHeads * kDHead;
    r.bytes = static_cast<double>(L) * (2 * kQBytesPerRow + 2 * kKvBytesPerSlot);  // q, out, K, V once
    r.bound = Bound::kBf16Mma;
    AddRecord(ctx, std::move(r));
    AddCheck(ctx, "prefill_dense_full", L, 1, CheckOutput(ctx, out.get(), L * kHeads * kDHead));
  }
  // 2. Dense prefill of the last chunk.
  double dense_chunk_us = 0;
  {
    Record r = base("prefill_dense_chunk", C);
    r.t = ctx.timer->Run([&](int64_t it) { dense(it, static_cast<int32_t>(C)); }, warm, reps, kPrefillBudgetMs);
    r.flops = chunk_pairs * attn_flop_per_pair;
    r.bytes = static_cast<double>(C) * 2 * kQBytesPerRow + static_cast<double>(L) * 2 * kKvBytesPerSlot;
    r.bound = Bound::kBf16Mma;
    dense_chunk_us = r.t.median_us;
    AddRecord(ctx, std::move(r));
    AddCheck(ctx, "prefill_dense_chunk", L, 1, CheckOutput(ctx, out.get(), C * kHeads * kDHead));
  }
  // 2b. The same on the mma.sync kernel (what runs where wgmma does not), for comparison.
  {
    Record r = base("prefill_dense_chunk_mma_sync", C);
    r.t = ctx.timer->Run(
        [&](int64_t it) { dense(it, static_cast<int32_t>(C), kernels::DensePrefillArgs::Kernel::kMmaSync); }, warm,
        reps, kPrefillBudgetMs);
    r.flops = chunk_pairs * attn_flop_per_pair;
    r.bytes = static_cast<double>(C) * 2 * kQBytesPerRow + static_cast<double>(L) * 2 * kKvBytesPerSlot;
    r.bound = Bound::kBf16Mma;
    AddRecord(ctx, std::move(r));
    AddCheck(ctx, "prefill_dense_chunk_mma_sync", L, 1, CheckOutput(ctx, out.get(), C * kHeads * kDHead));
  }
  // 3. Indexer scores of the chunk (causal).
  const double b_index = chunk_pairs * 4 + static_cast<double>(L) * kKiBytesPerSlot;
  {
    Record r = base("prefill_indexer_chunk", C);
    r.t = ctx.timer->Run(
        [&](int64_t it) { Index(ctx, cache, rows, proj.get(), bias.get(), scores.get(), offsets.get(), L, it); }, warm,
        reps, kPrefillBudgetMs);
    r.flops = chunk_pairs * kIndexerHeads * kDIndexer * 2;
    r.bytes = b_index;
    r.bound = Bound::kFp32;
    r.extra["scores"] = chunk_pairs;
    AddRecord(ctx, std::move(r));
  }
  // 3b. The same with the per-warp (mma.sync) kernel, which the engine uses for decode rows and on
  // cards without wgmma.
  {
    Record r = base("prefill_indexer_chunk_per_warp", C);
    r.t = ctx.timer->Run(
        [&](int64_t it) {
          kernels::IndexerScoresArgs ia = IndexArgs(cache, rows, proj.get(), bias.get(), scores.get(), offsets.get(), L, it);
          ia.kernel = kernels::IndexerScoresArgs::Kernel::kPerWarp;
          BENCH_CUDA(kernels::IndexerScores(ia, ctx.stream));
        },
        warm, reps, kPrefillBudgetMs);
    r.flops = chunk_pairs * kIndexerHeads * kDIndexer * 2;
    r.bytes = b_index;
    r.bound = Bound::kFp32;
    r.extra["scores"] = chunk_pairs;
    AddRecord(ctx, std::move(r));
  }
  // 4. Top-k of the chunk's score rows (one block per row: 2048 rows).
  {
    Record r = base("prefill_topk_chunk", C);
    const bool multi = kernels::TopKUsesMultiBlock(C, L, topk_ws_bytes > 0 ? topk_ws.get() : nullptr, topk_ws_bytes);
    r.t = ctx.timer->Run(
        [&](int64_t) {
          Select(ctx, rows, scores.get(), offsets.get(), L, kbuf.get(), sel_topk.get(), topk_ws, topk_ws_bytes);
        },
        warm, reps, kPrefillBudgetMs);
    r.bytes = chunk_pairs * 4;
    r.bound = Bound::kMemory;
    r.note = multi ? "multi-block" : "one block per row";
    r.extra["topk_path"] = r.note;
    AddRecord(ctx, std::move(r));
    AddCheck(ctx, "prefill_topk_chunk", L, 1, CheckSelDevice(sel_topk.get(), C, pos));
  }
  // 4b. Indexer + top-k of the chunk in score chunks of R rows (the engine's score buffer holds
  // score_budget_bytes / (4 L) rows at a time): which R the chunk's selection is fastest at.
  for (const int64_t R : {int64_t{64}, int64_t{256}, int64_t{512}}) {
    std::vector<int64_t> sub_h(static_cast<size_t>(R));
    for (int64_t j = 0; j < R; ++j) sub_h[static_cast<size_t>(j)] = j * L;
    DevBuf<int64_t> sub_off = Upload(sub_h, "score-chunk offsets");
    const std::string name = "prefill_select_rows" + std::to_string(R);
    Record r = base(name.c_str(), C);
    r.t = ctx.timer->Run(
        [&](int64_t it) {
          for (int64_t j = 0; j < C; j += R) {
            kernels::IndexerScoresArgs ia = IndexArgs(cache, rows, proj.get(), bias.get(), scores.get(), sub_off.get(), L, it);
            ia.row_begin = j;
            ia.row_count = std::min(R, C - j);
            BENCH_CUDA(kernels::IndexerScores(ia, ctx.stream));
            kernels::ScoreChunk ch;
            ch.scores = scores.get();
            ch.score_offset = sub_off.get();
            ch.row_begin = j;
            ch.row_count = ia.row_count;
            ch.max_candidates = L;
            BENCH_CUDA(kernels::TopK(ch, rows.Info(), kbuf.get(), sel_topk.get(), kTopK,
                                     topk_ws_bytes > 0 ? topk_ws.get() : nullptr, topk_ws_bytes, ctx.stream));
          }
        },
        warm, reps, kPrefillBudgetMs);
    r.bytes = b_index + chunk_pairs * 4;
    r.bound = Bound::kNone;
    r.note = "indexer + top-k, score chunks of " + std::to_string(R) + " rows";
    r.extra["score_chunk_rows"] = R;
    AddRecord(ctx, std::move(r));
    AddCheck(ctx, name, L, 1, CheckSelDevice(sel_topk.get(), C, pos));
  }
  // 4c, 4d. PrefillSelect of the chunk (indexer + k + top-k without writing every score and reading it
  // back), fixed k and the variance rule, into its own k / selections. Where it does not run
  // (cudaErrorNotSupported: not Hopper, or L outside its candidate range) both are skipped with the
  // reason, and case 7 runs the separate launches. Every call overwrites `scores` (its scratch).
  kernels::SelectionRule fixed_rule;
  fixed_rule.method = 0;
  fixed_rule.k_base = fixed_rule.k_min = fixed_rule.k_max = kTopK;
  kernels::SelectionRule variance_rule;
  variance_rule.method = 1;
  variance_rule.k_base = kTopK;
  variance_rule.k_min = kKMinVariance;
  variance_rule.k_max = kKMaxVariance;
  variance_rule.temperature = 1.0;
  auto prefill_select = [&](int64_t it, const kernels::SelectionRule& rule, int32_t* sel, int64_t sel_stride,
                            uint8_t* full_rows) {
    kernels::PrefillSelectArgs a;
    a.index = IndexArgs(cache, rows, proj.get(), bias.get(), scores.get(), offsets.get(), L, it);
    a.rule = rule;
    a.seq_first_row = ps_first.get();
    a.num_seqs = 1;
    a.var = ps_var.get();
    a.cumvar = ps_cumvar.get();
    a.k = ps_k.get();
    a.sel = sel;
    a.sel_stride = sel_stride;
    a.workspace = select_ws.get();
    a.workspace_bytes = select_ws.bytes();
    a.full_rows = full_rows;
    return kernels::PrefillSelect(a, ctx.stream);
  };
  std::string select_why_not;  // non-empty: PrefillSelect does not take this chunk
  {
    const cudaError_t err = prefill_select(0, fixed_rule, sel_ps.get(), kTopK, nullptr);
    if (err == cudaErrorNotSupported) {
      select_why_not = PrefillSelectWhyNot(L);
      if (select_why_not.empty()) {
        select_why_not = "PrefillSelect returned cudaErrorNotSupported on a chunk its contract says it takes";
        AddCheck(ctx, "prefill_select_chunk supported", L, 1, select_why_not);
      }
    } else {
      BENCH_CUDA(err);
    }
    BENCH_CUDA(cudaStreamSynchronize(ctx.stream));
  }
  auto skip_select_case = [&](const char* name) {
    std::printf("  %-26s L=%-7" PRId64 " skipped: %s\n", name, L, select_why_not.c_str());
    std::fflush(stdout);
    ctx.skipped.push_back(json{{"group", "prefill"}, {"case", name}, {"L", L}, {"B", 1}, {"reason", select_why_not}});
  };
  // Rows scored in full / from the list in one run on key copy 0 (full_rows), into the record.
  auto record_paths = [&](Record& r, const std::string& name, const kernels::SelectionRule& rule, int32_t* sel,
                          int64_t sel_stride) {
    BENCH_CUDA(cudaMemsetAsync(ps_full.get(), 0xFF, ps_full.bytes(), ctx.stream));
    BENCH_CUDA(prefill_select(0, rule, sel, sel_stride, ps_full.get()));
    const SelectPaths paths = CountSelectPaths(ps_full.get(), C);
    r.extra["full_rows"] = paths.full;
    r.extra["list_rows"] = paths.list;
    AddCheck(ctx, name + " full_rows", L, 1,
             paths.unwritten == 0 ? "" : std::to_string(paths.unwritten) + " entries of full_rows not written");
    return paths;
  };
  if (!select_why_not.empty()) {
    skip_select_case("prefill_select_chunk");
  } else {
    const std::string name = "prefill_select_chunk";
    Record r = base(name.c_str(), C);
    r.t = ctx.timer->Run(
        [&](int64_t it) { BENCH_CUDA(prefill_select(it, fixed_rule, sel_ps.get(), kTopK, nullptr)); }, warm, reps,
        kPrefillBudgetMs);
    r.flops = chunk_pairs * kIndexerHeads * kDIndexer * 2;  // one scoring pass (the sample adds 1/32)
    r.bound = Bound::kNone;
    // Checked on key copy 0: PrefillSelect's selection against the separate launches' on the same inputs.
    const SelectPaths paths = record_paths(r, name, fixed_rule, sel_ps.get(), kTopK);
    Index(ctx, cache, rows, proj.get(), bias.get(), scores.get(), offsets.get(), L, 0);
    Select(ctx, rows, scores.get(), offsets.get(), L, kbuf.get(), sel_topk.get(), topk_ws, topk_ws_bytes);
    r.note = "PrefillSelect, fixed k; " + std::to_string(paths.full) + " of " + std::to_string(C) + " rows in full";
    r.extra["rule"] = "fixed k = 2048";
    AddRecord(ctx, std::move(r));
    AddCheck(ctx, name, L, 1, CheckSelDevice(sel_ps.get(), C, pos));
    AddCheck(ctx, name + " = IndexerScores + TopK", L, 1,
             CheckSameSelection(sel_ps.get(), sel_topk.get(), C, kTopK, kTopK));
  }
  if (!select_why_not.empty()) {
    skip_select_case("prefill_select_chunk_variance");
  } else {
    const std::string name = "prefill_select_chunk_variance";
    // The running variance sum before the chunk (slot of position c0 - 1): c0 × the chunk's mean
    // score variance, so ref_t ~ var_t and k spreads around k_base as in a real prompt (with 0 there,
    // every k would be about k_base / 2).
    Index(ctx, cache, rows, proj.get(), bias.get(), scores.get(), offsets.get(), L, 0);
    BENCH_CUDA(kernels::ScoreStats(ChunkOf(rows, scores.get(), offsets.get(), L), rows.Info(), ps_var.get(), nullptr,
                                   ctx.stream));
    BENCH_CUDA(cudaStreamSynchronize(ctx.stream));
    const std::vector<double> var = Download(ps_var.get(), C);
    const double mean_var = std::accumulate(var.begin(), var.end(), 0.0) / static_cast<double>(C);
    const float before = static_cast<float>(static_cast<double>(c0) * mean_var);
    BENCH_CUDA(cudaMemcpy(ps_cumvar.get() + cache.SlotOf(0, c0 - 1), &before, sizeof(float), cudaMemcpyHostToDevice));
    Record r = base(name.c_str(), C);
    r.t = ctx.timer->Run(
        [&](int64_t it) {
          BENCH_CUDA(prefill_select(it, variance_rule, sel_ps_var.get(), kKMaxVariance, nullptr));
        },
        warm, reps, kPrefillBudgetMs);
    r.flops = chunk_pairs * kIndexerHeads * kDIndexer * 2;
    r.bound = Bound::kNone;
    const SelectPaths paths = record_paths(r, name, variance_rule, sel_ps_var.get(), kKMaxVariance);
    const std::vector<int32_t> k = Download(ps_k.get(), C);
    const double k_mean = std::accumulate(k.begin(), k.end(), 0.0) / static_cast<double>(C);
    char note[96];
    std::snprintf(note, sizeof(note), "PrefillSelect, variance rule (mean k %.0f); %" PRId64 " of %" PRId64
                  " rows in full", k_mean, paths.full, C);
    r.note = note;
    r.extra["rule"] = "variance: k_base 2048, k_min 256, k_max 4096";
    r.extra["k_mean"] = k_mean;
    AddRecord(ctx, std::move(r));
  }
  // 5, 6. Sparse prefill of the chunk, random and clustered selections: the engine's path
  // (union tiles where they pay, the rest per row), and every row gathered on its own (_rows).
  for (int variant = 0; variant < 4; ++variant) {
    const int pattern = variant % 2;
    const bool per_row = variant >= 2;
    const char* const names[4] = {"prefill_sparse_random", "prefill_sparse_clustered", "prefill_sparse_random_rows",
                                  "prefill_sparse_clustered_rows"};
    const char* name = names[variant];
    const int32_t* sel = pattern == 0 ? sel_rand.get() : sel_clus.get();
    Record r = base(name, C);
    r.t = ctx.timer->Run(
        [&](int64_t it) {
          if (per_row) {
            Attend(ctx, cache, rows, q.get(), sel, kbuf.get(), kTopK, gate_z.get(), gate_bias.get(), out.get(),
                   attn_ws, it);
          } else {
            SparseAttend(ctx, cache, rows, chunk_seq, q.get(), sel, kbuf.get(), gate_z.get(), gate_bias.get(),
                         out.get(), attn_ws, sp_ws, row_skip.get(), tile_stats.get(), it);
          }
        },
        warm, reps, kPrefillBudgetMs);
    r.flops = static_cast<double>(C) * kTopK * attn_flop_per_pair;
    r.bound = Bound::kMemory;
    if (per_row) {
      r.bytes = b_gather;
      r.note = "GatheredAttention per row; bytes = K+V gathered";
    } else {
      r.bytes = plan_extra(r);
      r.note = "SparsePrefill + GatheredAttention; bytes = K+V loaded";
    }
    r.extra["selected_per_row"] = kTopK;
    if (pattern == 0) {
      r.extra["pattern"] = "random: 2048 distinct uniform positions <= t per row";
    } else {
      r.extra["pattern"] = "clustered: positions t-511..t, plus 3 spans of 512 shared by all rows";
      r.extra["span_starts"] = json::array({span_start[0], span_start[1], span_start[2]});
      r.extra["distinct_positions_in_chunk"] = (L - 1) - (c0 - kSpan + 1) + 1 + 3 * kSpan;
    }
    AddRecord(ctx, std::move(r));
    AddCheck(ctx, name, L, 1, CheckOutput(ctx, out.get(), C * kHeads * kDHead));
  }
  // 7. GSA prefill of the chunk: selection → sparse attention on it. As the engine runs it
  // (prefill_gsa_chunk: PrefillSelect where it runs, else the separate launches), and with
  // IndexerScores + TopK always (prefill_gsa_chunk_separate).
  auto gsa_chunk = [&](const std::string& name, bool prefill_selects) {
    int32_t* sel = prefill_selects ? sel_ps.get() : sel_topk.get();
    const int32_t* count = prefill_selects ? ps_k.get() : kbuf.get();
    Record r = base(name.c_str(), C);
    r.t = ctx.timer->Run(
        [&](int64_t it) {
          if (prefill_selects) {
            BENCH_CUDA(prefill_select(it, fixed_rule, sel, kTopK, nullptr));
          } else {
            // The engine's separate launches: scores, k (SelectionCounts: the fixed rule writes
            // k = 2048 as kbuf holds), top-k.
            const kernels::IndexerScoresArgs ia = IndexArgs(cache, rows, proj.get(), bias.get(), scores.get(),
                                                            offsets.get(), L, it);
            BENCH_CUDA(kernels::IndexerScores(ia, ctx.stream));
            BENCH_CUDA(kernels::SelectionCounts(ChunkOf(rows, scores.get(), offsets.get(), L), ia.rows, ia.paged,
                                                ps_first.get(), 1, fixed_rule, nullptr, nullptr, ps_cumvar.get(),
                                                kbuf.get(), ctx.stream));
            Select(ctx, rows, scores.get(), offsets.get(), L, kbuf.get(), sel, topk_ws, topk_ws_bytes);
          }
          SparseAttend(ctx, cache, rows, chunk_seq, q.get(), sel, count, gate_z.get(), gate_bias.get(), out.get(),
                       attn_ws, sp_ws, row_skip.get(), tile_stats.get(), it);
        },
        warm, reps, kPrefillBudgetMs);
    // The selection's bytes: the keys, plus every score written and read back on the separate path.
    r.bytes = (prefill_selects ? static_cast<double>(L) * kKiBytesPerSlot : b_index + chunk_pairs * 4) + plan_extra(r);
    r.bound = Bound::kNone;
    const double ratio = r.t.median_us > 0 ? dense_chunk_us / r.t.median_us : 0;
    char note[64];
    std::snprintf(note, sizeof(note), "dense_chunk/gsa %.2fx", ratio);
    r.note = std::string(note) + (prefill_selects ? "; PrefillSelect" : "; IndexerScores + SelectionCounts + TopK");
    r.extra["dense_chunk_us"] = dense_chunk_us;
    r.extra["dense_over_gsa"] = ratio;
    r.extra["selection"] = "top-k of random-weight indexer scores (near-random positions)";
    r.extra["selection_path"] = prefill_selects ? "PrefillSelect" : "separate";
    if (!prefill_selects && !select_why_not.empty()) r.extra["prefill_select_not_run"] = select_why_not;
    if (!prefill_selects && select_why_not.empty() && name == "prefill_gsa_chunk") {
      r.extra["prefill_select_not_run"] = "rows below kPrefillSelectFasterFrom candidates (the engine's rule)";
    }
    AddRecord(ctx, std::move(r));
    AddCheck(ctx, name + " selection", L, 1, CheckSelDevice(sel, C, pos));
    AddCheck(ctx, name + " output", L, 1, CheckOutput(ctx, out.get(), C * kHeads * kDHead));
  };
  // The engine's rule (cuda_backend.cc): PrefillSelect when at most 1/8 of the chunk's rows have
  // fewer than kPrefillSelectFasterFrom candidates (where it measured faster); row r has L - C + 1 + r.
  const int64_t short_rows = std::clamp<int64_t>(kernels::kPrefillSelectFasterFrom - (L - C + 1), 0, C);
  gsa_chunk("prefill_gsa_chunk", select_why_not.empty() && short_rows * 8 <= C);
  gsa_chunk("prefill_gsa_chunk_separate", false);
  BENCH_CUDA(cudaDeviceSynchronize());
}

// ---- Ceilings ----------------------------------------------------------------------------------

void RunCeilings(Ctx& ctx) {
  std::printf("[ceilings]\n");
  std::fflush(stdout);
  ctx.ceil.copy = MeasureCopy(kCopyBytes, ctx.opt.ceiling_reps, *ctx.timer, ctx.stream, ctx.Seed());
  ctx.ceil.bf16 = MeasureGemm(true, kGemmN, ctx.opt.ceiling_reps, *ctx.timer, ctx.stream, ctx.Seed());
  ctx.ceil.fp32 = MeasureGemm(false, kGemmN, ctx.opt.ceiling_reps, *ctx.timer, ctx.stream, ctx.Seed());
  ctx.have_ceilings = true;

  Record c;
  c.name = "ceiling_copy_d2d";
  c.group = "ceiling";
  c.t = ctx.ceil.copy.timing;
  c.bytes = 2.0 * static_cast<double>(ctx.ceil.copy.bytes_copied);
  c.bound = Bound::kMemory;
  c.note = "cudaMemcpyAsync, bytes read + written";
  AddRecord(ctx, std::move(c));
  Record g;
  g.name = "ceiling_bf16_gemm";
  g.group = "ceiling";
  g.t = ctx.ceil.bf16.timing;
  g.flops = 2.0 * std::pow(static_cast<double>(kGemmN), 3);
  g.bound = Bound::kBf16Mma;
  g.note = "cuBLASLt 8192^3 bf16, fp32 acc.";
  AddRecord(ctx, std::move(g));
  if (ctx.ceil.fp32.ok) {
    Record f;
    f.name = "ceiling_fp32_gemm";
    f.group = "ceiling";
    f.t = ctx.ceil.fp32.timing;
    f.flops = 2.0 * std::pow(static_cast<double>(kGemmN), 3);
    f.bound = Bound::kFp32;
    f.note = "cuBLASLt 8192^3 fp32, no TF32";
    AddRecord(ctx, std::move(f));
  } else {
    std::printf("  fp32 ceiling not measured: %s\n", ctx.ceil.fp32.error.c_str());
  }
}

std::string VersionString(int v) { return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10); }

int Main(int argc, char** argv) {
  Ctx ctx;
  ctx.opt = ParseArgs(argc, argv);
  ctx.started = std::time(nullptr);
  ctx.rng.seed(ctx.opt.seed);

  int count = 0;
  const cudaError_t cerr = cudaGetDeviceCount(&count);
  if (cerr != cudaSuccess || count == 0) {
    std::fprintf(stderr, "gsa-kernel-bench: no CUDA GPU available (%s)\n",
                 cerr != cudaSuccess ? cudaGetErrorString(cerr) : "cudaGetDeviceCount found 0 devices");
    return 1;
  }
  if (ctx.opt.device >= count) {
    std::fprintf(stderr, "gsa-kernel-bench: --device %d, but only %d CUDA device(s) are visible\n", ctx.opt.device,
                 count);
    return 2;
  }
  BENCH_CUDA(cudaSetDevice(ctx.opt.device));
  cudaDeviceProp prop{};
  BENCH_CUDA(cudaGetDeviceProperties(&prop, ctx.opt.device));
  int driver = 0, runtime = 0;
  BENCH_CUDA(cudaDriverGetVersion(&driver));
  BENCH_CUDA(cudaRuntimeGetVersion(&runtime));
  const int64_t l2 = prop.l2CacheSize > 0 ? prop.l2CacheSize : (50ll << 20);
  ctx.rotate_bytes = ctx.opt.rotate_mib > 0 ? (ctx.opt.rotate_mib << 20) : 4 * l2;

  ctx.meta["tool"] = "gsa-kernel-bench";
  ctx.meta["card"] = prop.name;
  ctx.meta["sm_count"] = prop.multiProcessorCount;
  ctx.meta["compute_capability"] = std::to_string(prop.major) + "." + std::to_string(prop.minor);
  ctx.meta["memory_bytes"] = static_cast<int64_t>(prop.totalGlobalMem);
  ctx.meta["l2_bytes"] = static_cast<int64_t>(prop.l2CacheSize);
  ctx.meta["driver_version"] = VersionString(driver);
  ctx.meta["runtime_version"] = VersionString(runtime);
  ctx.meta["cublaslt_version"] = static_cast<int64_t>(cublasLtGetVersion());
  ctx.meta["commit"] = ctx.opt.commit;
  ctx.meta["date"] = IsoDate(ctx.started);
  ctx.meta["command_line"] = ctx.opt.command_line;
  ctx.meta["settings"] = json{{"contexts", ctx.opt.contexts},
                              {"batches", ctx.opt.batches},
                              {"reps", ctx.opt.reps},
                              {"warmup", ctx.opt.warmup},
                              {"ceiling_reps", ctx.opt.ceiling_reps},
                              {"max_gib", ctx.opt.max_gib},
                              {"prefill_max", ctx.opt.prefill_max},
                              {"rotate_bytes", ctx.rotate_bytes},
                              {"spin_us", ctx.opt.spin_us},
                              {"seed", ctx.opt.seed},
                              {"skip_ceilings", ctx.opt.skip_ceilings},
                              {"skip_decode", ctx.opt.skip_decode},
                              {"dense_query_tile", ctx.opt.dense_query_tile},
                              {"prefill_reps_budget_ms", kPrefillBudgetMs}};
  ctx.meta["shapes"] = ShapesJson();
  ctx.meta["method"] =
      "median of timed reps between CUDA events after warm-up; a busy-wait kernel before each rep keeps host launch "
      "gaps out; random bf16 inputs (hash of the index); block tables a random permutation; inputs rotated over at "
      "least rotate_bytes where one copy would fit in L2; launches are eager (no CUDA graph)";

  std::printf("gsa-kernel-bench: %s, %d SMs, %.1f GiB, L2 %.1f MiB, driver %s, runtime %s, commit %s\n", prop.name,
              prop.multiProcessorCount, Gib(static_cast<double>(prop.totalGlobalMem)),
              static_cast<double>(prop.l2CacheSize) / (1 << 20), VersionString(driver).c_str(),
              VersionString(runtime).c_str(), ctx.opt.commit.c_str());
  std::printf("rotating inputs over >= %.0f MiB; %d warm-up + %d timed reps per case\n",
              static_cast<double>(ctx.rotate_bytes) / (1 << 20), ctx.opt.warmup, ctx.opt.reps);
  std::fflush(stdout);

  g_ctx = &ctx;
  SetFatalHook([](const std::string& message) {
    if (g_ctx == nullptr) return;
    PrintTable(*g_ctx);
    WriteJson(*g_ctx, "aborted: " + message);
  });

  // A blocking stream: it is ordered with the legacy default stream, where the setup's cudaMemcpy
  // uploads and downloads run.
  BENCH_CUDA(cudaStreamCreate(&ctx.stream));
  EventTimer timer(ctx.stream, ctx.opt.spin_us * 1000);
  ctx.timer = &timer;

  if (!ctx.opt.skip_ceilings) RunCeilings(ctx);
  for (int64_t L : ctx.opt.contexts) {
    if (ctx.opt.skip_decode) break;
    for (int64_t B : ctx.opt.batches) RunDecode(ctx, L, B);
  }
  for (int64_t L : ctx.opt.contexts) {
    if (L <= ctx.opt.prefill_max) RunPrefill(ctx, L);
  }
  BENCH_CUDA(cudaStreamSynchronize(ctx.stream));
  BENCH_CUDA(cudaGetLastError());

  const std::string status = ctx.checks_failed == 0 ? "ok" : std::to_string(ctx.checks_failed) + " checks failed";
  WriteJson(ctx, status);
  char ceil_line[160] = "ceilings not measured";
  if (ctx.have_ceilings) {
    std::snprintf(ceil_line, sizeof(ceil_line), "ceilings: copy %.0f GB/s, bf16 %.0f TFLOP/s, fp32 %.1f TFLOP/s",
                  ctx.ceil.copy.gbps, ctx.ceil.bf16.tflops, ctx.ceil.fp32.ok ? ctx.ceil.fp32.tflops : 0.0);
  }
  std::printf("\ncard %s; %s; %lld s; %s\n", prop.name, ceil_line,
              static_cast<long long>(std::time(nullptr) - ctx.started), status.c_str());
  PrintTable(ctx);
  g_ctx = nullptr;
  ctx.timer = nullptr;
  BENCH_CUDA(cudaStreamDestroy(ctx.stream));
  return ctx.checks_failed == 0 ? 0 : 3;
}

}  // namespace
}  // namespace gsa::bench

int main(int argc, char** argv) { return gsa::bench::Main(argc, argv); }
