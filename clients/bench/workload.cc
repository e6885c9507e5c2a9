#include "clients/bench/workload.h"

#include <algorithm>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "clients/bench/length_sampler.h"
#include "clients/bench/rng.h"
#include "nlohmann/json.hpp"

namespace gsa::bench {
namespace {

bool IsBlank(const std::string& line) {
  return std::all_of(line.begin(), line.end(),
                     [](unsigned char c) { return c == ' ' || c == '\t' || c == '\r'; });
}

}  // namespace

absl::StatusOr<std::vector<WorkItem>> RandomWorkload(const BenchOptions& options,
                                                     const ModelLimits& limits, int64_t n) {
  const std::set<int32_t> special(limits.special_ids.begin(), limits.special_ids.end());
  int64_t usable = limits.vocab_size;
  for (int32_t id : special) {
    if (id >= 0 && id < limits.vocab_size) --usable;
  }
  if (usable < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the server's vocabulary (vocab_size ", limits.vocab_size,
        ") has no ordinary token ids to build random prompts from; use --prompts"));
  }
  std::mt19937_64 rng(options.seed);
  absl::StatusOr<std::vector<int32_t>> input_lens =
      SampleLengths(options.input_len_dist, options.input_len, options.range_ratio, n, rng);
  if (!input_lens.ok()) return input_lens.status();
  absl::StatusOr<std::vector<int32_t>> output_lens =
      SampleLengths(options.output_len_dist, options.output_len, options.range_ratio, n, rng);
  if (!output_lens.ok()) return output_lens.status();

  if (limits.max_model_len > 0) {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t total = int64_t{(*input_lens)[i]} + (*output_lens)[i];
      if (total > limits.max_model_len) {
        std::string spread;
        if (options.input_len_dist != LengthDistribution::kFixed ||
            options.output_len_dist != LengthDistribution::kFixed) {
          spread = absl::StrCat(" (--input-len-dist ", LengthDistributionName(options.input_len_dist),
                                ", --output-len-dist ",
                                LengthDistributionName(options.output_len_dist),
                                ", --range-ratio ", options.range_ratio, ")");
        }
        return absl::InvalidArgumentError(absl::StrCat(
            "flags --input-len ", options.input_len, " and --output-len ", options.output_len,
            spread, " give a request of ", (*input_lens)[i], " + ", (*output_lens)[i], " = ",
            total, " tokens, over the server's max_model_len ",
            limits.max_model_len));
      }
    }
  }

  std::vector<WorkItem> items(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    WorkItem& item = items[static_cast<size_t>(i)];
    item.max_tokens = (*output_lens)[i];
    item.prompt_ids.reserve(static_cast<size_t>((*input_lens)[i]));
    while (static_cast<int32_t>(item.prompt_ids.size()) < (*input_lens)[i]) {
      const auto id = static_cast<int32_t>(UniformInt(rng, 0, limits.vocab_size - 1));
      if (special.count(id) == 0) item.prompt_ids.push_back(id);
    }
  }
  return items;
}

absl::StatusOr<std::vector<PromptLine>> ParsePromptsJsonl(const std::string& contents,
                                                          const std::string& source) {
  std::vector<PromptLine> lines;
  std::istringstream in(contents);
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (IsBlank(line)) continue;
    const std::string where = absl::StrCat(source, ":", number, ": ");
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return absl::InvalidArgumentError(where + "not valid JSON");
    if (!j.is_object()) return absl::InvalidArgumentError(where + "not a JSON object");
    PromptLine p;
    p.line_number = number;
    const bool has_text = j.contains("prompt");
    const bool has_ids = j.contains("prompt_ids");
    if (has_text == has_ids) {
      return absl::InvalidArgumentError(
          where + "needs exactly one of \"prompt\" (a string) or \"prompt_ids\" (an array of "
                  "token ids)");
    }
    if (has_text) {
      const nlohmann::json& t = j["prompt"];
      if (!t.is_string() || t.get<std::string>().empty()) {
        return absl::InvalidArgumentError(where + "\"prompt\" must be a non-empty string");
      }
      p.item.is_text = true;
      p.item.text = t.get<std::string>();
    } else {
      const nlohmann::json& ids = j["prompt_ids"];
      if (!ids.is_array() || ids.empty()) {
        return absl::InvalidArgumentError(where + "\"prompt_ids\" must be a non-empty array");
      }
      for (size_t k = 0; k < ids.size(); ++k) {
        if (!ids[k].is_number_integer() || ids[k].get<int64_t>() < 0 ||
            ids[k].get<int64_t>() > std::numeric_limits<int32_t>::max()) {
          return absl::InvalidArgumentError(absl::StrCat(
              where, "\"prompt_ids\"[", k, "] is not a token id (an integer ≥ 0)"));
        }
        p.item.prompt_ids.push_back(ids[k].get<int32_t>());
      }
    }
    p.item.max_tokens = 0;
    if (j.contains("max_tokens")) {
      const nlohmann::json& m = j["max_tokens"];
      if (!m.is_number_integer() || m.get<int64_t>() < 1 ||
          m.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
        return absl::InvalidArgumentError(where + "\"max_tokens\" must be an integer ≥ 1");
      }
      p.item.max_tokens = m.get<int32_t>();
    }
    lines.push_back(std::move(p));
  }
  if (lines.empty()) return absl::InvalidArgumentError(source + ": no prompts in the file");
  return lines;
}

absl::StatusOr<std::vector<PromptLine>> LoadPromptsFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("--prompts ", path, ": cannot open the file"));
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) return absl::NotFoundError(absl::StrCat("--prompts ", path, ": read error"));
  return ParsePromptsJsonl(contents.str(), path);
}

absl::StatusOr<std::vector<WorkItem>> WorkloadFromPrompts(const std::vector<PromptLine>& lines,
                                                          const std::string& source, int64_t n,
                                                          int32_t default_max_tokens,
                                                          const ModelLimits& limits) {
  if (lines.empty()) return absl::InvalidArgumentError(source + ": no prompts in the file");
  std::vector<WorkItem> used;
  used.reserve(lines.size());
  for (const PromptLine& line : lines) {
    const std::string where = absl::StrCat(source, ":", line.line_number, ": ");
    WorkItem item = line.item;
    if (item.max_tokens == 0) item.max_tokens = default_max_tokens;
    if (item.is_text && !limits.has_tokenizer) {
      return absl::FailedPreconditionError(
          where + "a text \"prompt\", but the server's model has no tokenizer; give "
                  "\"prompt_ids\" instead");
    }
    for (size_t k = 0; k < item.prompt_ids.size(); ++k) {
      if (limits.vocab_size > 0 && item.prompt_ids[k] >= limits.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, "\"prompt_ids\"[", k, "] = ", item.prompt_ids[k],
            " is outside the server's vocabulary [0, ", limits.vocab_size, ")"));
      }
    }
    if (!item.is_text && limits.max_model_len > 0) {
      const int64_t total = static_cast<int64_t>(item.prompt_ids.size()) + item.max_tokens;
      if (total > limits.max_model_len) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, item.prompt_ids.size(), " prompt tokens + max_tokens ", item.max_tokens, " = ",
            total, ", over the server's max_model_len ", limits.max_model_len));
      }
    }
    used.push_back(std::move(item));
  }
  std::vector<WorkItem> items;
  items.reserve(static_cast<size_t>(std::max<int64_t>(n, 0)));
  for (int64_t i = 0; i < n; ++i) items.push_back(used[static_cast<size_t>(i) % used.size()]);
  return items;
}

}  // namespace gsa::bench
