// gsa-cli's --attention-stats table: one line per layer and a totals line, gates the model lacks
// as "-".
#include "clients/attention_stats_table.h"

#include <gtest/gtest.h>

namespace gsa {
namespace {

TEST(AttentionStatsTable, OneLinePerLayerThenTotals) {
  v1::AttentionStats s;
  s.set_positions(57);
  s.set_mean_selected_k(7.625);
  s.set_first_token_share(0.10555);
  s.set_value_gate_mean(0.6);
  s.set_output_gate_mean(0.59975);
  for (double share : {0.1234, 0.0877}) {
    v1::LayerAttentionStats* l = s.add_layers();
    l->set_mean_selected_k(7.625);
    l->set_first_token_share(share);
    l->set_value_gate_mean(0.6);
    l->set_output_gate_mean(0.59975);
  }
  EXPECT_EQ(AttentionStatsTable(s),
            "attention over 57 positions\n"
            "  layer   mean k  first-token share  value gate  output gate\n"
            "      0     7.62             0.1234      0.6000       0.5998\n"
            "      1     7.62             0.0877      0.6000       0.5998\n"
            "    all     7.62             0.1056      0.6000       0.5998\n");
}

TEST(AttentionStatsTable, GatesTheModelLacksPrintAsDashes) {
  v1::AttentionStats s;
  s.set_positions(3);
  s.set_mean_selected_k(2);
  s.set_first_token_share(0.5);
  v1::LayerAttentionStats* l = s.add_layers();
  l->set_mean_selected_k(2);
  l->set_first_token_share(0.5);
  EXPECT_EQ(AttentionStatsTable(s),
            "attention over 3 positions\n"
            "  layer   mean k  first-token share  value gate  output gate\n"
            "      0     2.00             0.5000           -            -\n"
            "    all     2.00             0.5000           -            -\n");
}

}  // namespace
}  // namespace gsa
