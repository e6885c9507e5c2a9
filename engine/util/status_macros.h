// Helpers for absl::Status plumbing. The two macros below are the usual Abseil-style idioms
// (early return on error), nothing more.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define GSA_STATUS_CONCAT_INNER_(a, b) a##b
#define GSA_STATUS_CONCAT_(a, b) GSA_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function when `expr` (an absl::Status) is not OK.
#define GSA_RETURN_IF_ERROR(expr)                      \
  do {                                                 \
    ::absl::Status gsa_status_ = (expr);               \
    if (!gsa_status_.ok()) return gsa_status_;         \
  } while (0)

// `lhs` = value of `rexpr` (an absl::StatusOr<T>), or returns its error.
#define GSA_ASSIGN_OR_RETURN(lhs, rexpr) \
  GSA_ASSIGN_OR_RETURN_IMPL_(GSA_STATUS_CONCAT_(gsa_statusor_, __LINE__), lhs, rexpr)
#define GSA_ASSIGN_OR_RETURN_IMPL_(var, lhs, rexpr) \
  auto var = (rexpr);                               \
  if (!var.ok()) return std::move(var).status();    \
  lhs = std::move(var).value()
