#include "clients/bench/bench_options.h"

#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace gsa::bench {
namespace {

// The largest in-flight cap: one thread per in-flight request, so keep it sane.
constexpr int kMaxConcurrency = 4096;

absl::Status BadValue(const std::string& flag, const std::string& value, const std::string& rule) {
  return absl::InvalidArgumentError(
      absl::StrCat("flag ", flag, ": '", value, "' is not ", rule));
}

absl::StatusOr<int64_t> ParseInt(const std::string& flag, const std::string& value, int64_t lo,
                                 int64_t hi) {
  int64_t v = 0;
  if (!absl::SimpleAtoi(value, &v) || v < lo || v > hi) {
    return BadValue(flag, value,
                    hi == std::numeric_limits<int64_t>::max()
                        ? absl::StrCat("an integer ≥ ", lo)
                        : absl::StrCat("an integer in [", lo, ", ", hi, "]"));
  }
  return v;
}

// A finite double in [lo, hi] (hi_open: [lo, hi)); lo_open: (lo, ...).
absl::StatusOr<double> ParseDouble(const std::string& flag, const std::string& value, double lo,
                                   bool lo_open, double hi, bool hi_open) {
  double v = 0.0;
  const bool ok = absl::SimpleAtod(value, &v) && std::isfinite(v) &&
                  (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
  if (!ok) {
    std::string rule = absl::StrCat("a number in ", lo_open ? "(" : "[", lo, ", ");
    if (std::isinf(hi)) {
      absl::StrAppend(&rule, "inf)");
    } else {
      absl::StrAppend(&rule, hi, hi_open ? ")" : "]");
    }
    return BadValue(flag, value, rule);
  }
  return v;
}

absl::StatusOr<bool> ParseBool(const std::string& flag, const std::string& value) {
  if (value == "true" || value == "1" || value == "yes") return true;
  if (value == "false" || value == "0" || value == "no") return false;
  return BadValue(flag, value, "true or false");
}

absl::StatusOr<LengthDistribution> ParseDistribution(const std::string& flag,
                                                     const std::string& value) {
  if (value == "fixed") return LengthDistribution::kFixed;
  if (value == "uniform") return LengthDistribution::kUniform;
  if (value == "normal") return LengthDistribution::kNormal;
  return BadValue(flag, value, "one of fixed, uniform, normal");
}

// One flag: whether it takes a value, and how to apply it.
struct FlagSpec {
  bool is_bool = false;
  std::function<absl::Status(const std::string& flag, const std::string& value, BenchOptions&)>
      apply;
};

// Wraps an assignment of a parsed value so that the table below stays one line a flag.
template <typename T, typename Parse, typename Assign>
FlagSpec Value(Parse parse, Assign assign) {
  FlagSpec spec;
  spec.apply = [parse, assign](const std::string& flag, const std::string& value,
                               BenchOptions& o) -> absl::Status {
    absl::StatusOr<T> v = parse(flag, value);
    if (!v.ok()) return v.status();
    assign(o, *v);
    return absl::OkStatus();
  };
  return spec;
}

FlagSpec Int(int64_t lo, int64_t hi, std::function<void(BenchOptions&, int64_t)> assign) {
  return Value<int64_t>(
      [lo, hi](const std::string& f, const std::string& v) { return ParseInt(f, v, lo, hi); },
      assign);
}

FlagSpec Double(double lo, bool lo_open, double hi, bool hi_open,
                std::function<void(BenchOptions&, double)> assign) {
  return Value<double>(
      [=](const std::string& f, const std::string& v) {
        return ParseDouble(f, v, lo, lo_open, hi, hi_open);
      },
      assign);
}

FlagSpec String(std::function<void(BenchOptions&, const std::string&)> assign) {
  FlagSpec spec;
  spec.apply = [assign](const std::string& flag, const std::string& value,
                        BenchOptions& o) -> absl::Status {
    if (value.empty()) return absl::InvalidArgumentError(absl::StrCat("flag ", flag, ": empty value"));
    assign(o, value);
    return absl::OkStatus();
  };
  return spec;
}

FlagSpec Bool(std::function<void(BenchOptions&, bool)> assign) {
  FlagSpec spec = Value<bool>(ParseBool, assign);
  spec.is_bool = true;
  return spec;
}

std::map<std::string, FlagSpec> FlagTable() {
  constexpr int64_t kMaxInt = std::numeric_limits<int64_t>::max();
  constexpr int64_t kMaxLen = std::numeric_limits<int32_t>::max();
  constexpr double kInf = std::numeric_limits<double>::infinity();
  std::map<std::string, FlagSpec> t;
  t["--target"] = String([](BenchOptions& o, const std::string& v) { o.target = v; });
  t["--tls"] = Bool([](BenchOptions& o, bool v) { o.security.tls = v; });
  t["--tls-ca"] = String([](BenchOptions& o, const std::string& v) { o.security.tls_ca_file = v; });
  t["--tls-cert"] = String([](BenchOptions& o, const std::string& v) { o.security.tls_cert_file = v; });
  t["--tls-key"] = String([](BenchOptions& o, const std::string& v) { o.security.tls_key_file = v; });
  t["--api-key"] = String([](BenchOptions& o, const std::string& v) { o.security.api_key = v; });
  t["--api-key-file"] = String([](BenchOptions& o, const std::string& v) { o.security.api_key_file = v; });
  t["--num-requests"] = Int(1, kMaxInt, [](BenchOptions& o, int64_t v) { o.num_requests = v; });
  t["--concurrency"] = Int(1, kMaxConcurrency, [](BenchOptions& o, int64_t v) {
    o.concurrency = static_cast<int>(v);
  });
  FlagSpec rate;
  rate.apply = [](const std::string& flag, const std::string& value,
                  BenchOptions& o) -> absl::Status {
    if (value == "inf") {
      o.request_rate = std::numeric_limits<double>::infinity();
      return absl::OkStatus();
    }
    absl::StatusOr<double> v = ParseDouble(flag, value, 0.0, true, kInf, true);
    if (!v.ok()) return BadValue(flag, value, "a number of requests per second > 0, or inf");
    o.request_rate = *v;
    return absl::OkStatus();
  };
  t["--request-rate"] = rate;
  t["--input-len"] = Int(1, kMaxLen, [](BenchOptions& o, int64_t v) {
    o.input_len = static_cast<int32_t>(v);
  });
  t["--output-len"] = Int(1, kMaxLen, [](BenchOptions& o, int64_t v) {
    o.output_len = static_cast<int32_t>(v);
  });
  t["--input-len-dist"] = Value<LengthDistribution>(
      ParseDistribution, [](BenchOptions& o, LengthDistribution d) { o.input_len_dist = d; });
  t["--output-len-dist"] = Value<LengthDistribution>(
      ParseDistribution, [](BenchOptions& o, LengthDistribution d) { o.output_len_dist = d; });
  t["--range-ratio"] = Double(0.0, false, 1.0, true,
                              [](BenchOptions& o, double v) { o.range_ratio = v; });
  t["--prompts"] = String([](BenchOptions& o, const std::string& v) { o.prompts_file = v; });
  t["--ignore-eos"] = Bool([](BenchOptions& o, bool v) { o.ignore_eos = v; });
  t["--temperature"] = Double(0.0, false, 100.0, false, [](BenchOptions& o, double v) {
    o.temperature = static_cast<float>(v);
  });
  t["--seed"] = Value<uint64_t>(
      [](const std::string& flag, const std::string& value) -> absl::StatusOr<uint64_t> {
        uint64_t v = 0;
        if (!absl::SimpleAtoi(value, &v)) return BadValue(flag, value, "an integer ≥ 0");
        return v;
      },
      [](BenchOptions& o, uint64_t v) { o.seed = v; });
  t["--attention"] = Value<AttentionMode>(
      [](const std::string& flag, const std::string& value) -> absl::StatusOr<AttentionMode> {
        if (value == "default") return AttentionMode::kDefault;
        if (value == "dense") return AttentionMode::kDense;
        return BadValue(flag, value, "one of default, dense");
      },
      [](BenchOptions& o, AttentionMode m) { o.attention = m; });
  t["--warmup"] = Int(0, kMaxInt, [](BenchOptions& o, int64_t v) { o.warmup = v; });
  t["--timeout-s"] = Double(0.0, true, kInf, true, [](BenchOptions& o, double v) {
    o.timeout_s = v;
  });
  t["--max-retries"] = Int(0, kMaxRetriesLimit, [](BenchOptions& o, int64_t v) {
    o.retry.max_retries = static_cast<int>(v);
  });
  t["--connect-timeout-s"] = Double(0.0, true, kInf, true, [](BenchOptions& o, double v) {
    o.connect_timeout_s = v;
  });
  t["--json"] = String([](BenchOptions& o, const std::string& v) { o.json_file = v; });
  t["--progress"] = Value<ProgressMode>(
      [](const std::string& flag, const std::string& value) -> absl::StatusOr<ProgressMode> {
        if (value == "auto") return ProgressMode::kAuto;
        if (value == "bar") return ProgressMode::kBar;
        if (value == "lines") return ProgressMode::kLines;
        if (value == "off") return ProgressMode::kOff;
        return BadValue(flag, value, "one of auto, bar, lines, off");
      },
      [](BenchOptions& o, ProgressMode m) { o.progress = m; });
  return t;
}

}  // namespace

int BenchOptions::EffectiveConcurrency() const {
  if (concurrency.has_value()) return *concurrency;
  return request_rate.has_value() ? 0 : 1;
}

std::string BenchOptions::ModeName() const {
  if (!request_rate.has_value()) return "closed-loop";
  return concurrency.has_value() ? "open-loop, capped" : "open-loop";
}

absl::StatusOr<BenchOptions> ParseBenchFlags(const std::vector<std::string>& args) {
  const std::map<std::string, FlagSpec> table = FlagTable();
  BenchOptions options;
  std::set<std::string> seen;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h") return absl::CancelledError("help requested");
    if (arg.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected argument '", arg, "' (gsa-bench takes only --flags)"));
    }
    std::string name = arg;
    std::optional<std::string> value;
    if (const size_t eq = arg.find('='); eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
    }
    auto it = table.find(name);
    if (it == table.end() && !value.has_value() && name.rfind("--no-", 0) == 0) {
      // --no-ignore-eos and friends.
      const std::string positive = "--" + name.substr(5);
      auto pos = table.find(positive);
      if (pos != table.end() && pos->second.is_bool) {
        if (absl::Status s = pos->second.apply(positive, "false", options); !s.ok()) return s;
        seen.insert(positive);
        continue;
      }
    }
    if (it == table.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag ", name, " (see gsa-bench --help)"));
    }
    if (!value.has_value()) {
      if (it->second.is_bool) {
        value = "true";
      } else if (i + 1 < args.size()) {
        value = args[++i];
      } else {
        return absl::InvalidArgumentError(absl::StrCat("flag ", name, ": missing value"));
      }
    }
    if (absl::Status s = it->second.apply(name, *value, options); !s.ok()) return s;
    seen.insert(name);
  }

  if (!options.prompts_file.empty()) {
    for (const char* flag : {"--input-len", "--input-len-dist"}) {
      if (seen.count(flag) > 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "flag ", flag, ": does not apply with --prompts (the file gives the prompts)"));
      }
    }
  }
  return options;
}

std::string BenchUsage() {
  return R"(gsa-bench: load-test a gsa-server deployment (streaming Generate RPCs).

Usage: gsa-bench [--flag value | --flag=value]...

Target and load
  --target HOST:PORT        server address (default 127.0.0.1:50051)
  --num-requests N          measured requests (default 100; with --prompts, the file's lines)
  --concurrency C           at most C requests in flight (closed loop; default 1 when no
                            --request-rate is given)
  --request-rate R          open loop: Poisson arrivals, R requests/s on average (seeded), or
                            inf to send everything at once; with --concurrency, also capped
  --warmup N                requests sent first and not counted (default 0)
  --timeout-s S             per-request deadline in seconds, retries included (default 600)
  --max-retries N           send a request again, up to N times (0 to 10, default 3), when it
                            fails with UNAVAILABLE or CANCELLED before any response message
                            arrived: it never started (a draining replica refused it), so no
                            token is duplicated; waits 25-50 ms, doubling up to 0.5-1 s, within
                            --timeout-s. Counted in the summary and the JSON (retries). 0: off
  --connect-timeout-s S     how long to wait for the server at start (default 10)

Security (servers started with --tls-cert or --api-key-file)
  --tls                     connect over TLS, verifying the server with the system's CAs
  --tls-ca FILE             PEM CA that signed the server's certificate (implies --tls)
  --tls-cert FILE           PEM client certificate, for servers with --tls-client-ca (with
  --tls-key FILE            its PEM private key)
  --api-key KEY             sent as metadata "authorization: Bearer KEY" (kept out of --json)
  --api-key-file FILE       the same, with the first key in FILE

Workload (random token-id prompts within the server's vocabulary, so any model works)
  --input-len N             prompt tokens (default 128)
  --output-len N            generated tokens, sent as max_tokens (default 128)
  --input-len-dist D        fixed | uniform | normal (default fixed)
  --output-len-dist D       fixed | uniform | normal (default fixed)
  --range-ratio F           spread in [0, 1): uniform draws from [len*(1-F), len*(1+F)],
                            normal has standard deviation len*F (default 0.5)
  --prompts FILE.jsonl      prompts from a file instead, one JSON object a line:
                            {"prompt": "text", "max_tokens": N} or
                            {"prompt_ids": [1, 2, 3], "max_tokens": N}
                            (max_tokens optional: default --output-len); lines are used in
                            order, cycling when --num-requests is larger

Sampling
  --ignore-eos[=BOOL]       keep generating past EOS so each request makes exactly its
                            max_tokens (default true; --no-ignore-eos to turn off)
  --temperature F           0 = greedy (default 0)
  --seed N                  seed of the workload, the arrival times and per-request sampling
                            seeds (seed + request index) (default 0)
  --attention MODE          default | dense (default: the model's own attention)

Output
  --json FILE               also write the results, configuration, per-request records and the
                            server's model info as JSON
  --progress MODE           auto | bar | lines | off (default auto: a bar when stderr is a
                            terminal, otherwise a line every 10%)
  --help                    this text

Exit status: 0 when the benchmark ran (the summary counts failed requests), 1 when the server
cannot be reached or every measured request failed, 2 for bad flags or a bad workload.
)";
}

std::vector<std::string> RedactSecretFlags(const std::vector<std::string>& argv) {
  std::vector<std::string> out = argv;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] == "--api-key" && i + 1 < out.size()) {
      out[++i] = "<redacted>";
    } else if (out[i].rfind("--api-key=", 0) == 0) {
      out[i] = "--api-key=<redacted>";
    }
  }
  return out;
}

std::string LengthDistributionName(LengthDistribution d) {
  switch (d) {
    case LengthDistribution::kFixed: return "fixed";
    case LengthDistribution::kUniform: return "uniform";
    case LengthDistribution::kNormal: return "normal";
  }
  return "unknown";
}

std::string ProgressModeName(ProgressMode m) {
  switch (m) {
    case ProgressMode::kAuto: return "auto";
    case ProgressMode::kBar: return "bar";
    case ProgressMode::kLines: return "lines";
    case ProgressMode::kOff: return "off";
  }
  return "unknown";
}

std::string AttentionModeName(AttentionMode m) {
  switch (m) {
    case AttentionMode::kDefault: return "default";
    case AttentionMode::kDense: return "dense";
  }
  return "unknown";
}

}  // namespace gsa::bench
