// gsa-make-model: writes a model directory with random weights (config.json + safetensors,
// optionally sharded, optionally a tokenizer.model), for tests, demos and speed benchmarks.
// Flags are parsed by hand to keep the tool free of extra dependencies. Strings are
// absl::string_view throughout: Debian's Abseil has its own string_view type, which the absl
// string helpers need and std::string_view does not convert to.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "engine/model/config.h"
#include "engine/model/dtype.h"
#include "engine/model/weights.h"
#include "engine/tools/random_model.h"

namespace gsa {
namespace {

constexpr int kExitWriteFailed = 1;
constexpr int kExitUsage = 2;

constexpr char kUsage[] = R"(usage: gsa-make-model --out DIR [--shape NAME] [options]

Writes a Gated Sparse Attention model with random weights to DIR: config.json and
model.safetensors (or model-0000i-of-0000N.safetensors shards + model.safetensors.index.json).
The same flags and seed always give byte-identical files.

  --out DIR                  output directory (required; created if missing; an earlier
                             checkpoint in it is replaced)
  --shape NAME               starting shape, default gsa-tiny; one of: %s
  --dtype f32|bf16|f16       weight dtype (default f32)
  --seed N                   random seed (default 0)
  --init-std X               std of projection and embedding weights (default 0.02)
  --max-shard-bytes N        shard the weights into files of at most N bytes (0 = one file);
                             suffixes KB/MB/GB (powers of 1000) and KiB/MiB/GiB (powers of 1024)
  --tokenizer PATH           copy this sentencepiece model to DIR/tokenizer.model

Config overrides (applied on top of --shape, in any order; MODEL.md describes each key):
  --d-model N  --n-layers N  --n-heads N  --n-kv-heads N  --d-head N  --d-ffn N  --vocab-size N
  --d-indexer N  --n-indexer-heads N  --indexer-activation sigmoid|relu
  --k-base N  --k-min N  --k-max N  --adaptive-k true|false  --adaptive-k-method variance|entropy
  --adaptive-k-temperature X  --value-gate true|false  --output-gate true|false
  --gate-activation sigmoid|tanh|silu  --rope-base X  --rope-scaling none|ntk|yarn
  --rope-scaling-factor X  --rope-scaling-original-max-position-embeddings N
  --rope-scaling-beta-fast X  --rope-scaling-beta-slow X  --max-position-embeddings N
  --norm-eps X  --tie-word-embeddings [true|false]  --bos-token-id N|none  --eos-token-id N|none

Boolean flags also accept a bare --flag (true). Flags take "--flag VALUE" or "--flag=VALUE".
Exit status: 0 written, 1 writing failed, 2 bad flags or config.

example (GPU.md's benchmark shape, ~4.5 GB):
  gsa-make-model --out /tmp/gsa-1.7b --shape gsa-1.7b --dtype bf16 --max-shard-bytes 2GB
)";

void PrintUsage(std::FILE* to) {
  std::fprintf(to, kUsage, absl::StrJoin(NamedShapes(), ", ").c_str());
}

absl::Status FlagError(absl::string_view flag, absl::string_view value, absl::string_view expected) {
  return absl::InvalidArgumentError(
      absl::StrCat(flag, ": invalid value \"", value, "\", expected ", expected));
}

absl::StatusOr<int64_t> ParseInt(absl::string_view flag, absl::string_view value) {
  int64_t v = 0;
  if (!absl::SimpleAtoi(value, &v)) return FlagError(flag, value, "an integer");
  return v;
}

absl::StatusOr<uint64_t> ParseUint64(absl::string_view flag, absl::string_view value) {
  uint64_t v = 0;
  if (!absl::SimpleAtoi(value, &v)) return FlagError(flag, value, "a non-negative integer");
  return v;
}

absl::StatusOr<double> ParseDouble(absl::string_view flag, absl::string_view value) {
  double v = 0;
  if (!absl::SimpleAtod(value, &v) || !std::isfinite(v)) {
    return FlagError(flag, value, "a finite number");
  }
  return v;
}

absl::StatusOr<bool> ParseBool(absl::string_view flag, absl::string_view value) {
  const std::string v = absl::AsciiStrToLower(value);
  if (v == "true" || v == "1" || v == "yes" || v == "on") return true;
  if (v == "false" || v == "0" || v == "no" || v == "off") return false;
  return FlagError(flag, value, "true or false");
}

// "2GB" → 2e9, "500MiB" → 500·2^20, "123" → 123.
absl::StatusOr<size_t> ParseBytes(absl::string_view flag, absl::string_view value) {
  size_t digits = 0;
  while (digits < value.size() && value[digits] >= '0' && value[digits] <= '9') ++digits;
  uint64_t number = 0;
  if (digits == 0 || !absl::SimpleAtoi(value.substr(0, digits), &number)) {
    return FlagError(flag, value, "a byte count such as 2000000000, 2GB or 500MiB");
  }
  const std::string suffix = absl::AsciiStrToLower(value.substr(digits));
  uint64_t scale = 0;
  if (suffix.empty() || suffix == "b") scale = 1;
  else if (suffix == "k" || suffix == "kb") scale = 1000;
  else if (suffix == "m" || suffix == "mb") scale = 1000 * 1000;
  else if (suffix == "g" || suffix == "gb") scale = 1000 * 1000 * 1000;
  else if (suffix == "kib") scale = uint64_t{1} << 10;
  else if (suffix == "mib") scale = uint64_t{1} << 20;
  else if (suffix == "gib") scale = uint64_t{1} << 30;
  else return FlagError(flag, value, "a byte count with suffix B, KB, MB, GB, KiB, MiB or GiB");
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(number, scale, &bytes)) return FlagError(flag, value, "a smaller size");
  return static_cast<size_t>(bytes);
}

absl::StatusOr<DType> ParseDType(absl::string_view flag, absl::string_view value) {
  const std::string v = absl::AsciiStrToLower(value);
  if (v == "f32" || v == "fp32" || v == "float32") return DType::kF32;
  if (v == "bf16" || v == "bfloat16") return DType::kBF16;
  if (v == "f16" || v == "fp16" || v == "float16") return DType::kF16;
  return FlagError(flag, value, "f32, bf16 or f16");
}

template <typename E, size_t N>
absl::StatusOr<E> ParseEnum(absl::string_view flag, absl::string_view value,
                            const char* const (&names)[N], const E (&values)[N]) {
  const std::string v = absl::AsciiStrToLower(value);
  for (size_t i = 0; i < N; ++i) {
    if (v == names[i]) return values[i];
  }
  return FlagError(flag, value, absl::StrCat("one of ", absl::StrJoin(names, ", ")));
}

// One flag: whether it is boolean (may stand alone) and how it changes the options.
struct FlagDef {
  const char* name;
  bool is_bool;
  std::function<absl::Status(absl::string_view flag, absl::string_view value,
                             RandomModelOptions& options)>
      apply;
};

// Binds an int64 config field.
FlagDef IntField(const char* name, int64_t ModelConfig::*field) {
  return {name, false, [field](absl::string_view flag, absl::string_view value, RandomModelOptions& o) {
            absl::StatusOr<int64_t> v = ParseInt(flag, value);
            if (!v.ok()) return v.status();
            o.config.*field = *v;
            return absl::OkStatus();
          }};
}

FlagDef BoolField(const char* name, bool ModelConfig::*field) {
  return {name, true, [field](absl::string_view flag, absl::string_view value, RandomModelOptions& o) {
            absl::StatusOr<bool> v = ParseBool(flag, value);
            if (!v.ok()) return v.status();
            o.config.*field = *v;
            return absl::OkStatus();
          }};
}

FlagDef DoubleField(const char* name, double ModelConfig::*field) {
  return {name, false, [field](absl::string_view flag, absl::string_view value, RandomModelOptions& o) {
            absl::StatusOr<double> v = ParseDouble(flag, value);
            if (!v.ok()) return v.status();
            o.config.*field = *v;
            return absl::OkStatus();
          }};
}

FlagDef OptionalIdField(const char* name, std::optional<int64_t> ModelConfig::*field) {
  return {name, false, [field](absl::string_view flag, absl::string_view value, RandomModelOptions& o) {
            if (absl::AsciiStrToLower(value) == "none") {
              o.config.*field = std::nullopt;
              return absl::OkStatus();
            }
            absl::StatusOr<int64_t> v = ParseInt(flag, value);
            if (!v.ok()) return v.status();
            o.config.*field = *v;
            return absl::OkStatus();
          }};
}

// Applies a parsed value to a field of type T through `parse`.
template <typename T, typename Parse>
FlagDef Custom(const char* name, Parse parse, std::function<void(RandomModelOptions&, T)> set) {
  return {name, false,
          [parse, set](absl::string_view flag, absl::string_view value, RandomModelOptions& o) {
            absl::StatusOr<T> v = parse(flag, value);
            if (!v.ok()) return v.status();
            set(o, *v);
            return absl::OkStatus();
          }};
}

std::vector<FlagDef> OverrideFlags() {
  static constexpr const char* kIndexerNames[] = {"sigmoid", "relu"};
  static constexpr IndexerActivation kIndexerValues[] = {IndexerActivation::kSigmoid,
                                                         IndexerActivation::kRelu};
  static constexpr const char* kGateNames[] = {"sigmoid", "tanh", "silu"};
  static constexpr GateActivation kGateValues[] = {GateActivation::kSigmoid, GateActivation::kTanh,
                                                   GateActivation::kSilu};
  static constexpr const char* kMethodNames[] = {"variance", "entropy"};
  static constexpr AdaptiveKMethod kMethodValues[] = {AdaptiveKMethod::kVariance,
                                                      AdaptiveKMethod::kEntropy};
  static constexpr const char* kRopeNames[] = {"none", "ntk", "yarn"};
  static constexpr RopeScalingType kRopeValues[] = {RopeScalingType::kNone, RopeScalingType::kNtk,
                                                    RopeScalingType::kYarn};
  auto enum_parser = [](const auto& names, const auto& values) {
    return [&names, &values](absl::string_view flag, absl::string_view value) {
      return ParseEnum(flag, value, names, values);
    };
  };
  return {
      IntField("--d-model", &ModelConfig::d_model),
      IntField("--n-layers", &ModelConfig::n_layers),
      IntField("--n-heads", &ModelConfig::n_heads),
      IntField("--n-kv-heads", &ModelConfig::n_kv_heads),
      IntField("--d-head", &ModelConfig::d_head),
      IntField("--d-ffn", &ModelConfig::d_ffn),
      IntField("--vocab-size", &ModelConfig::vocab_size),
      IntField("--d-indexer", &ModelConfig::d_indexer),
      IntField("--n-indexer-heads", &ModelConfig::n_indexer_heads),
      Custom<IndexerActivation>(
          "--indexer-activation", enum_parser(kIndexerNames, kIndexerValues),
          [](RandomModelOptions& o, IndexerActivation v) { o.config.indexer_activation = v; }),
      IntField("--k-base", &ModelConfig::k_base),
      IntField("--k-min", &ModelConfig::k_min),
      IntField("--k-max", &ModelConfig::k_max),
      BoolField("--adaptive-k", &ModelConfig::use_adaptive_k),
      Custom<AdaptiveKMethod>(
          "--adaptive-k-method", enum_parser(kMethodNames, kMethodValues),
          [](RandomModelOptions& o, AdaptiveKMethod v) { o.config.adaptive_k_method = v; }),
      DoubleField("--adaptive-k-temperature", &ModelConfig::adaptive_k_temperature),
      BoolField("--value-gate", &ModelConfig::use_value_gate),
      BoolField("--output-gate", &ModelConfig::use_output_gate),
      Custom<GateActivation>(
          "--gate-activation", enum_parser(kGateNames, kGateValues),
          [](RandomModelOptions& o, GateActivation v) { o.config.gate_activation = v; }),
      DoubleField("--rope-base", &ModelConfig::rope_base),
      Custom<RopeScalingType>(
          "--rope-scaling", enum_parser(kRopeNames, kRopeValues),
          [](RandomModelOptions& o, RopeScalingType v) { o.config.rope_scaling.type = v; }),
      Custom<double>("--rope-scaling-factor", ParseDouble,
                     [](RandomModelOptions& o, double v) { o.config.rope_scaling.factor = v; }),
      Custom<int64_t>("--rope-scaling-original-max-position-embeddings", ParseInt,
                      [](RandomModelOptions& o, int64_t v) {
                        o.config.rope_scaling.original_max_position_embeddings = v;
                      }),
      Custom<double>("--rope-scaling-beta-fast", ParseDouble,
                     [](RandomModelOptions& o, double v) { o.config.rope_scaling.beta_fast = v; }),
      Custom<double>("--rope-scaling-beta-slow", ParseDouble,
                     [](RandomModelOptions& o, double v) { o.config.rope_scaling.beta_slow = v; }),
      IntField("--max-position-embeddings", &ModelConfig::max_position_embeddings),
      DoubleField("--norm-eps", &ModelConfig::norm_eps),
      BoolField("--tie-word-embeddings", &ModelConfig::tie_word_embeddings),
      OptionalIdField("--bos-token-id", &ModelConfig::bos_token_id),
      OptionalIdField("--eos-token-id", &ModelConfig::eos_token_id),
      Custom<DType>("--dtype", ParseDType, [](RandomModelOptions& o, DType v) { o.dtype = v; }),
      Custom<uint64_t>("--seed", ParseUint64, [](RandomModelOptions& o, uint64_t v) { o.seed = v; }),
      Custom<double>("--init-std", ParseDouble, [](RandomModelOptions& o, double v) { o.init_std = v; }),
      Custom<size_t>("--max-shard-bytes", ParseBytes,
                     [](RandomModelOptions& o, size_t v) { o.max_shard_bytes = v; }),
      {"--tokenizer", false,
       [](absl::string_view, absl::string_view value, RandomModelOptions& o) {
         o.tokenizer_path = std::string(value);
         return absl::OkStatus();
       }},
  };
}

// ValidateModelConfig names config.json keys (`key "n_kv_heads"`); point at the flag that sets it.
std::string FlagHint(absl::string_view message) {
  constexpr absl::string_view kMarker = "key \"";
  const size_t start = message.find(kMarker);
  if (start == absl::string_view::npos) return "";
  const size_t begin = start + kMarker.size();
  const size_t end = message.find('"', begin);
  if (end == absl::string_view::npos) return "";
  std::string key(message.substr(begin, end - begin));
  if (key == "use_adaptive_k") key = "adaptive_k";
  if (key == "use_value_gate") key = "value_gate";
  if (key == "use_output_gate") key = "output_gate";
  std::replace(key.begin(), key.end(), '_', '-');
  return absl::StrCat(" (see --", key, ")");
}

struct CommandLine {
  bool help = false;
  std::string out;
  std::string shape = "gsa-tiny";
  RandomModelOptions options;
};

absl::StatusOr<CommandLine> ParseCommandLine(const std::vector<absl::string_view>& args) {
  const std::vector<FlagDef> defs = OverrideFlags();
  CommandLine cl;
  // Overrides apply after --shape wherever it appears, so collect them first.
  std::vector<std::pair<const FlagDef*, std::pair<absl::string_view, std::string>>> overrides;
  for (size_t i = 0; i < args.size(); ++i) {
    absl::string_view arg = args[i];
    if (arg == "--help" || arg == "-h") {
      cl.help = true;
      return cl;
    }
    if (arg.substr(0, 2) != "--") {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument \"", arg,
                                                     "\" (flags start with --; see --help)"));
    }
    absl::string_view name = arg;
    std::optional<std::string> value;
    if (const size_t eq = arg.find('='); eq != absl::string_view::npos) {
      name = arg.substr(0, eq);
      value = std::string(arg.substr(eq + 1));
    }
    const FlagDef* def = nullptr;
    for (const FlagDef& d : defs) {
      if (name == d.name) def = &d;
    }
    const bool known_plain = name == "--out" || name == "--shape";
    if (def == nullptr && !known_plain) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag ", name, " (see --help)"));
    }
    if (!value.has_value()) {
      const bool is_bool = def != nullptr && def->is_bool;
      // A boolean flag may stand alone; anything after it that is not another flag is its value
      // (so "--adaptive-k maybe" is reported against --adaptive-k, not as a stray argument).
      if (i + 1 < args.size() && (!is_bool || args[i + 1].substr(0, 2) != "--")) {
        value = std::string(args[++i]);
      } else if (is_bool) {
        value = "true";
      } else {
        return absl::InvalidArgumentError(absl::StrCat(name, ": missing value"));
      }
    }
    if (name == "--out") {
      if (value->empty()) return absl::InvalidArgumentError("--out: empty directory name");
      cl.out = *value;
    } else if (name == "--shape") {
      cl.shape = *value;
    } else {
      overrides.push_back({def, {name, *value}});
    }
  }
  if (cl.out.empty()) return absl::InvalidArgumentError("--out DIR is required (see --help)");
  absl::StatusOr<ModelConfig> shape = NamedShape(cl.shape);
  if (!shape.ok()) return absl::InvalidArgumentError(absl::StrCat("--shape: ", shape.status().message()));
  cl.options.config = *shape;
  for (const auto& [def, flag_value] : overrides) {
    if (absl::Status s = def->apply(flag_value.first, flag_value.second, cl.options); !s.ok()) {
      return s;
    }
  }
  std::error_code ec;
  if (!cl.options.tokenizer_path.empty() &&
      !std::filesystem::is_regular_file(cl.options.tokenizer_path, ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tokenizer: no such file ", cl.options.tokenizer_path));
  }
  if (cl.options.init_std < 0) {
    return FlagError("--init-std", absl::StrCat(cl.options.init_std), "a non-negative number");
  }
  if (absl::Status s = ValidateModelConfig(cl.options.config); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--shape ", cl.shape,
                                                   " with the given flags is not a valid model",
                                                   FlagHint(s.message()), ": ", s.message()));
  }
  return cl;
}

std::string HumanCount(double n, const char* const units[], double step) {
  int u = 0;
  while (n >= step && units[u + 1] != nullptr) {
    n /= step;
    ++u;
  }
  return absl::StrFormat("%.2f%s", n, units[u]);
}

int Main(int argc, char** argv) {
  std::vector<absl::string_view> args(argv + 1, argv + argc);
  absl::StatusOr<CommandLine> cl = ParseCommandLine(args);
  if (!cl.ok()) {
    std::fprintf(stderr, "gsa-make-model: %s\n", std::string(cl.status().message()).c_str());
    return kExitUsage;
  }
  if (cl->help) {
    PrintUsage(stdout);
    return 0;
  }
  const RandomModelOptions& options = cl->options;
  if (absl::Status s = WriteRandomModel(options, cl->out); !s.ok()) {
    std::fprintf(stderr, "gsa-make-model: %s\n", s.ToString().c_str());
    return s.code() == absl::StatusCode::kInvalidArgument ? kExitUsage : kExitWriteFailed;
  }

  int64_t params = 0;
  for (const WeightSpec& spec : ExpectedWeights(options.config)) {
    int64_t n = 1;
    for (const int64_t d : spec.shape) n *= d;
    params += n;
  }
  const double bytes = static_cast<double>(params) * static_cast<double>(DTypeSize(options.dtype));
  std::vector<std::string> files;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(cl->out, ec)) {
    files.push_back(entry.path().filename().string());
  }
  std::sort(files.begin(), files.end());
  static constexpr const char* kCountUnits[] = {"", "K", "M", "B", nullptr};
  static constexpr const char* kByteUnits[] = {" B", " KB", " MB", " GB", " TB", nullptr};
  std::printf("gsa-make-model: wrote %s (shape %s, %s params, %s %s, seed %llu): %s\n",
              cl->out.c_str(), cl->shape.c_str(), HumanCount(params, kCountUnits, 1000).c_str(),
              HumanCount(bytes, kByteUnits, 1000).c_str(),
              std::string(DTypeName(options.dtype)).c_str(),
              static_cast<unsigned long long>(options.seed), absl::StrJoin(files, ", ").c_str());
  return 0;
}

}  // namespace
}  // namespace gsa

int main(int argc, char** argv) { return gsa::Main(argc, argv); }
