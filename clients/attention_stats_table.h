// The human form of a response's attention statistics (gsa-cli --attention-stats): one line per
// layer and a totals line, fixed-width columns; a gate the model lacks prints as "-".
#pragma once

#include <string>

#include "gsa/v1/generation.pb.h"

namespace gsa {

// For example, for a two-layer model with both gates:
//   attention over 57 positions
//   layer   mean k  first-token share  value gate  output gate
//       0     7.63             0.1234      0.6123       0.5981
//       1     7.63             0.0876      0.5877       0.6012
//     all     7.63             0.1055      0.6000       0.5997
std::string AttentionStatsTable(const v1::AttentionStats& stats);

}  // namespace gsa
