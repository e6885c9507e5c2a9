#include "clients/attention_stats_table.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace gsa {
namespace {

std::string Gate(bool has, double value) { return has ? absl::StrFormat("%.4f", value) : "-"; }

template <typename Stats>
std::string Row(const std::string& label, const Stats& s) {
  return absl::StrFormat("%7s %8.2f %18.4f %11s %12s\n", label, s.mean_selected_k(), s.first_token_share(),
                         Gate(s.has_value_gate_mean(), s.value_gate_mean()),
                         Gate(s.has_output_gate_mean(), s.output_gate_mean()));
}

}  // namespace

std::string AttentionStatsTable(const v1::AttentionStats& stats) {
  std::string out = absl::StrCat("attention over ", stats.positions(), " positions\n");
  absl::StrAppendFormat(&out, "%7s %8s %18s %11s %12s\n", "layer", "mean k", "first-token share", "value gate",
                        "output gate");
  for (int l = 0; l < stats.layers_size(); ++l) out += Row(absl::StrCat(l), stats.layers(l));
  out += Row("all", stats);
  return out;
}

}  // namespace gsa
