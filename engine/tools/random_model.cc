#include "engine/tools/random_model.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/model/safetensors_writer.h"
#include "engine/model/weights.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace gsa {
namespace {

// ---- Counter-based random numbers -----------------------------------------------------------
//
// Every element's value is a pure function of (seed, tensor name, element index), so the bytes do
// not depend on how many threads fill a tensor, on shard boundaries or on the order tensors are
// written. The transcendental functions are our own polynomial evaluations in plain IEEE double
// arithmetic rather than libm's: glibc picks FMA or non-FMA variants of log/sin/cos at run time,
// and different glibc versions may round the last bit differently, which would break "the same
// seed gives byte-identical files on any machine" for F32 output.

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

// splitmix64's output function.
uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t Fnv1a64(std::string_view s) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (const char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001B3ull;
  }
  return h;
}

uint64_t TensorKey(uint64_t seed, std::string_view name) {
  return Mix64(Mix64(seed + kGolden) ^ Fnv1a64(name));
}

// Series coefficients, folded at compile time so the hot loops multiply instead of divide:
// log[j] = 1/(2j+1) (atanh), sin[j] = (−1)^j/(2j+1)!, cos[j] = (−1)^j/(2j)!. The evaluations rely
// on no fused multiply-add contraction, which GCC leaves off in ISO mode (-std=c++20, as the
// build sets CMAKE_CXX_EXTENSIONS OFF).
constexpr int kSeriesTerms = 11;
struct Series {
  double log[kSeriesTerms];
  double sin[kSeriesTerms];
  double cos[kSeriesTerms];
};
constexpr Series MakeSeries() {
  Series s{};
  double factorial = 1.0;  // (2j)!
  for (int j = 0; j < kSeriesTerms; ++j) {
    if (j > 0) factorial *= (2.0 * j - 1.0) * (2.0 * j);
    const double sign = (j % 2 == 0) ? 1.0 : -1.0;
    s.log[j] = 1.0 / (2 * j + 1);
    s.cos[j] = sign / factorial;
    s.sin[j] = sign / (factorial * (2 * j + 1));
  }
  return s;
}
constexpr Series kSeries = MakeSeries();

// Natural log for x > 0: x = m·2^e with m in [√½, √2), ln m = 2·atanh(s), s = (m−1)/(m+1),
// |s| ≤ 0.172; the series to s^21 is accurate to ~1e-16 relative.
double DeterministicLog(double x) {
  int e = 0;
  double m = std::frexp(x, &e);  // exact: m in [0.5, 1)
  if (m < 0.70710678118654752440) {
    m *= 2.0;
    --e;
  }
  const double s = (m - 1.0) / (m + 1.0);
  const double s2 = s * s;
  double sum = kSeries.log[kSeriesTerms - 1];
  for (int j = kSeriesTerms - 2; j >= 0; --j) sum = sum * s2 + kSeries.log[j];
  return e * 0.69314718055994530942 + 2.0 * s * sum;
}

// cos and sin of 2π·u for u in [0, 1): quadrant from u exactly, Taylor series on [0, π/2)
// (terms to a^21 keep the error below 1e-15).
void DeterministicSinCos2Pi(double u, double* c, double* s) {
  const double t = u * 4.0;  // exact
  const int quadrant = static_cast<int>(t);
  const double a = (t - quadrant) * 1.57079632679489661923;
  const double a2 = a * a;
  double sin_sum = kSeries.sin[kSeriesTerms - 1];
  double cos_sum = kSeries.cos[kSeriesTerms - 1];
  for (int j = kSeriesTerms - 2; j >= 0; --j) {
    sin_sum = sin_sum * a2 + kSeries.sin[j];
    cos_sum = cos_sum * a2 + kSeries.cos[j];
  }
  const double sa = a * sin_sum;
  const double ca = cos_sum;
  switch (quadrant & 3) {
    case 0: *c = ca; *s = sa; break;
    case 1: *c = -sa; *s = ca; break;
    case 2: *c = -ca; *s = -sa; break;
    default: *c = sa; *s = -ca; break;
  }
}

// Two independent N(0, 1) values for pair `pair` of the stream `key` (Box–Muller).
void NormalPair(uint64_t key, uint64_t pair, double* z0, double* z1) {
  const uint64_t h1 = Mix64(key + (2 * pair + 1) * kGolden);
  const uint64_t h2 = Mix64(key + (2 * pair + 2) * kGolden);
  constexpr double kTwoPowMinus53 = 1.0 / 9007199254740992.0;
  const double u1 = static_cast<double>((h1 >> 11) + 1) * kTwoPowMinus53;  // (0, 1]
  const double u2 = static_cast<double>(h2 >> 11) * kTwoPowMinus53;        // [0, 1)
  const double r = std::sqrt(-2.0 * DeterministicLog(u1));  // sqrt is correctly rounded
  double c = 0, s = 0;
  DeterministicSinCos2Pi(u2, &c, &s);
  *z0 = r * c;
  *z1 = r * s;
}

// ---- How each tensor is initialised ----------------------------------------------------------

struct InitSpec {
  double mean;
  double stddev;
};

// Norm scales near 1 and biases near 0 (gate biases near +0.5, the reference's gate_bias_init,
// so gates start mostly open) keep a random model's activations and logits finite and varied;
// the perturbations make every tensor matter, so a test that swaps two tensors notices.
InitSpec InitFor(std::string_view name, double init_std) {
  if (name.ends_with("layernorm.weight") || name == "model.norm.weight") return {1.0, 0.1};
  if (name.ends_with("gate.gate_proj.bias")) return {0.5, 0.1};  // value / output gate
  if (name.ends_with(".bias")) return {0.0, 0.1};
  return {0.0, init_std};
}

void StoreLe(std::byte* out, uint64_t bits, size_t nbytes) {
  for (size_t b = 0; b < nbytes; ++b) out[b] = static_cast<std::byte>((bits >> (8 * b)) & 0xFF);
}

// Writes elements [begin, end) of the tensor into `out` (which points at element 0).
void FillRange(std::byte* out, DType dtype, uint64_t key, InitSpec init, size_t begin, size_t end) {
  const size_t esize = DTypeSize(dtype);
  auto store = [&](size_t i, double z) {
    const float v = static_cast<float>(init.mean + init.stddev * z);
    std::byte* p = out + i * esize;
    switch (dtype) {
      case DType::kBF16: StoreLe(p, FloatToBf16(v), 2); break;
      case DType::kF16: StoreLe(p, FloatToF16(v), 2); break;
      default: StoreLe(p, std::bit_cast<uint32_t>(v), 4); break;
    }
  };
  for (size_t pair = begin / 2; 2 * pair < end; ++pair) {
    double z0 = 0, z1 = 0;
    NormalPair(key, pair, &z0, &z1);
    const size_t i0 = 2 * pair;
    if (i0 >= begin) store(i0, z0);
    if (i0 + 1 >= begin && i0 + 1 < end) store(i0 + 1, z1);
  }
}

// Fills a whole tensor, in parallel for big ones. Each thread owns a contiguous range, and values
// depend only on the element index, so the split does not change a byte.
void FillTensor(std::byte* out, size_t nbytes, DType dtype, uint64_t key, InitSpec init) {
  const size_t numel = nbytes / DTypeSize(dtype);
  constexpr size_t kMinPerThread = size_t{1} << 16;
  const size_t hw = std::max<size_t>(2, std::thread::hardware_concurrency());
  const size_t n_threads = std::clamp<size_t>(numel / kMinPerThread, 1, hw);
  if (n_threads == 1) {
    FillRange(out, dtype, key, init, 0, numel);
    return;
  }
  const size_t per = (numel + n_threads - 1) / n_threads;
  std::vector<std::jthread> workers;
  workers.reserve(n_threads);
  for (size_t t = 0; t < n_threads; ++t) {
    const size_t begin = std::min(numel, t * per);
    const size_t end = std::min(numel, begin + per);
    if (begin == end) break;
    workers.emplace_back([=] { FillRange(out, dtype, key, init, begin, end); });
  }
}  // jthreads join here

// ---- Directory layout --------------------------------------------------------------------------

std::string ShardName(size_t index, size_t count) {
  return absl::StrFormat("model-%05d-of-%05d.safetensors", index + 1, count);
}

bool IsShardName(const std::string& name) {
  return name.starts_with("model-") && name.ends_with(".safetensors") &&
         name.find("-of-") != std::string::npos;
}

// A directory must hold exactly one checkpoint: a stale model.safetensors beside new shards (or
// old shards beside a new single file) would make the loader read the wrong weights.
absl::Status RemoveOldCheckpoint(const std::filesystem::path& dir) {
  std::error_code ec;
  std::vector<std::filesystem::path> doomed;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name == "model.safetensors" || name == "model.safetensors.index.json" || IsShardName(name)) {
      doomed.push_back(entry.path());
    }
  }
  if (ec) return absl::InternalError(absl::StrCat("cannot list ", dir.string(), ": ", ec.message()));
  for (const auto& path : doomed) {
    if (!std::filesystem::remove(path, ec) && ec) {
      return absl::InternalError(
          absl::StrCat("cannot remove old checkpoint file ", path.string(), ": ", ec.message()));
    }
  }
  return absl::OkStatus();
}

absl::Status WriteTextFile(const std::string& path, std::string_view text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

struct PlannedTensor {
  std::string name;
  std::vector<int64_t> shape;
  size_t nbytes;
};

absl::StatusOr<std::vector<PlannedTensor>> PlanTensors(const ModelConfig& config, DType dtype) {
  std::vector<PlannedTensor> planned;
  for (WeightSpec& spec : ExpectedWeights(config)) {
    size_t nbytes = DTypeSize(dtype);
    for (const int64_t d : spec.shape) {
      if (__builtin_mul_overflow(nbytes, static_cast<size_t>(d), &nbytes)) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor ", spec.name, " is too large to write"));
      }
    }
    planned.push_back({std::move(spec.name), std::move(spec.shape), nbytes});
  }
  return planned;
}

// Greedy, in MODEL.md order: a shard is closed when the next tensor would push it past the limit.
// A tensor larger than the limit gets a shard of its own (it cannot be split).
std::vector<std::vector<size_t>> PlanShards(const std::vector<PlannedTensor>& tensors,
                                            size_t max_shard_bytes) {
  std::vector<std::vector<size_t>> shards;
  size_t current_bytes = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (shards.empty() ||
        (!shards.back().empty() && current_bytes + tensors[i].nbytes > max_shard_bytes)) {
      shards.emplace_back();
      current_bytes = 0;
    }
    shards.back().push_back(i);
    current_bytes += tensors[i].nbytes;
  }
  return shards;
}

void AddRandomTensor(SafetensorsWriter& writer, const PlannedTensor& t,
                     const RandomModelOptions& options) {
  const uint64_t key = TensorKey(options.seed, t.name);
  const InitSpec init = InitFor(t.name, options.init_std);
  const DType dtype = options.dtype;
  const size_t expected = t.nbytes;
  writer.AddTensor(t.name, dtype, t.shape, [=](std::byte* out, size_t nbytes) {
    FillTensor(out, std::min(nbytes, expected), dtype, key, init);
  });
}

}  // namespace

absl::Status WriteRandomModel(const RandomModelOptions& options, const std::string& dir) {
  GSA_RETURN_IF_ERROR(ValidateModelConfig(options.config));
  if (options.dtype != DType::kF32 && options.dtype != DType::kBF16 &&
      options.dtype != DType::kF16) {
    return absl::InvalidArgumentError(absl::StrCat(
        "random model dtype must be F32, BF16 or F16, got ", std::string(DTypeName(options.dtype))));
  }
  if (!std::isfinite(options.init_std) || options.init_std < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("init_std must be finite and non-negative, got ", options.init_std));
  }
  std::error_code ec;
  if (!options.tokenizer_path.empty() &&
      !std::filesystem::is_regular_file(options.tokenizer_path, ec)) {
    return absl::NotFoundError(
        absl::StrCat("tokenizer model ", options.tokenizer_path, " not found"));
  }
  GSA_ASSIGN_OR_RETURN(const std::vector<PlannedTensor> tensors,
                       PlanTensors(options.config, options.dtype));

  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  GSA_RETURN_IF_ERROR(RemoveOldCheckpoint(dir));

  GSA_RETURN_IF_ERROR(WriteTextFile(dir + "/config.json", ModelConfigToJson(options.config)));

  if (options.max_shard_bytes == 0) {
    SafetensorsWriter writer;
    writer.SetMetadata("format", "pt");
    for (const PlannedTensor& t : tensors) AddRandomTensor(writer, t, options);
    GSA_RETURN_IF_ERROR(writer.WriteTo(dir + "/model.safetensors"));
  } else {
    const std::vector<std::vector<size_t>> shards = PlanShards(tensors, options.max_shard_bytes);
    nlohmann::json weight_map = nlohmann::json::object();
    size_t total_size = 0;
    for (size_t s = 0; s < shards.size(); ++s) {
      const std::string file = ShardName(s, shards.size());
      SafetensorsWriter writer;
      writer.SetMetadata("format", "pt");
      for (const size_t i : shards[s]) {
        AddRandomTensor(writer, tensors[i], options);
        weight_map[tensors[i].name] = file;
        total_size += tensors[i].nbytes;
      }
      GSA_RETURN_IF_ERROR(writer.WriteTo(dir + "/" + file));
    }
    const nlohmann::json index = {{"metadata", {{"total_size", total_size}}},
                                  {"weight_map", weight_map}};
    GSA_RETURN_IF_ERROR(WriteTextFile(dir + "/model.safetensors.index.json", index.dump(2)));
  }

  if (!options.tokenizer_path.empty()) {
    std::filesystem::copy_file(options.tokenizer_path, dir + "/tokenizer.model",
                               std::filesystem::copy_options::overwrite_existing, ec);
    if (ec) {
      return absl::InternalError(absl::StrCat("cannot copy tokenizer ", options.tokenizer_path,
                                              " to ", dir, "/tokenizer.model: ", ec.message()));
    }
  }
  return absl::OkStatus();
}

namespace {

// The golden cases' shape (tests/data/golden/gsa-tiny/config.json).
ModelConfig GsaTiny() {
  ModelConfig c;
  c.d_model = 128;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.d_head = 32;
  c.n_layers = 2;
  c.d_ffn = 256;
  c.vocab_size = 512;
  c.d_indexer = 16;
  c.n_indexer_heads = 2;
  c.indexer_activation = IndexerActivation::kSigmoid;
  c.k_base = 8;
  c.k_min = 4;
  c.k_max = 16;
  c.use_adaptive_k = false;
  c.use_value_gate = true;
  c.use_output_gate = true;
  c.gate_activation = GateActivation::kSigmoid;
  c.rope_base = 10000.0;
  c.max_position_embeddings = 4096;
  c.norm_eps = 1e-5;
  c.tie_word_embeddings = false;
  return c;
}

}  // namespace

absl::StatusOr<ModelConfig> NamedShape(std::string_view name) {
  if (name == "gsa-1.7b") {
    // GPU.md's reference shape; everything it does not name takes the reference defaults, except
    // use_adaptive_k: the benchmarks measure fixed k = k_base = 2048 (adaptive k changes how many
    // keys each query reads, which would make decode speed depend on the random weights).
    ModelConfig c;
    c.d_model = 2048;
    c.n_layers = 28;
    c.n_heads = 16;
    c.n_kv_heads = 8;
    c.d_head = 128;
    c.d_ffn = 6144;
    c.vocab_size = 151936;
    c.d_indexer = 64;
    c.n_indexer_heads = 4;
    c.k_base = 2048;
    c.k_min = 256;
    c.k_max = 4096;
    c.use_adaptive_k = false;
    c.max_position_embeddings = 131072;
    return c;
  }
  if (name == "gsa-small") {
    // Big enough that sparse selection matters at a few hundred tokens, small enough for CPU
    // tests and demos.
    ModelConfig c;
    c.d_model = 256;
    c.n_layers = 4;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.d_head = 64;
    c.d_ffn = 768;
    c.vocab_size = 8000;
    c.d_indexer = 64;
    c.n_indexer_heads = 4;
    c.k_base = 64;
    c.k_min = 16;
    c.k_max = 128;
    c.use_adaptive_k = false;
    c.max_position_embeddings = 4096;
    return c;
  }
  if (name == "gsa-tiny") return GsaTiny();
  if (name == "sparse-relu-tiny") {
    // tests/data/golden/sparse-relu-tiny/config.json: the DSA-style row of MODEL.md's table.
    ModelConfig c = GsaTiny();
    c.indexer_activation = IndexerActivation::kRelu;
    c.use_value_gate = false;
    c.use_output_gate = false;
    return c;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown model shape \"", std::string(name),
                                                 "\"; known shapes: ",
                                                 absl::StrJoin(NamedShapes(), ", ")));
}

std::vector<std::string> NamedShapes() {
  return {"gsa-1.7b", "gsa-small", "gsa-tiny", "sparse-relu-tiny"};
}

}  // namespace gsa
