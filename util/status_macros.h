// Local absl::Status helpers: Debian's Abseil (20220623) ships no status macros. Header-only, in
// util/ because every module above it (engine, session, server, auth, train) uses them.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define TTT_CONCAT_INNER(a, b) a##b
#define TTT_CONCAT(a, b) TTT_CONCAT_INNER(a, b)

// Returns `expr`'s status from the enclosing function when it is not OK.
#define RETURN_IF_ERROR(expr)                  \
  do {                                         \
    ::absl::Status ttt_status_ = (expr);       \
    if (!ttt_status_.ok()) return ttt_status_; \
  } while (false)

// `ASSIGN_OR_RETURN(auto x, F())` declares x from F()'s value, or returns its status.
#define ASSIGN_OR_RETURN(lhs, expr) \
  TTT_ASSIGN_OR_RETURN_IMPL(TTT_CONCAT(ttt_statusor_, __LINE__), lhs, expr)
#define TTT_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()
