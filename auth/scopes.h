// Scopes and the per-method rule: which scope each RPC of the public API needs. One table, so
// the transport gate (a TLS listener's metadata processor) and the handlers agree.
#pragma once

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace ttt::auth {

// What a credential may do. Scopes nest: `admin` includes `write`, `write` includes `read`.
//   metrics: only scrape /metrics (a Prometheus token: no tenant data, no API calls).
//   read:  the calls that change nothing (GetServerInfo, Get/ListSessions, Score, Generate
//          without commit, ListCheckpoints, ExportSession, reflection).
//   write: everything a tenant may do to its own sessions and checkpoints.
//   admin: write, for every tenant (an admin's `x-tenant-id` picks the tenant).
// `admin` may also scrape; `read` and `write` may not (metrics span every tenant).
enum class Scope : uint8_t { kMetrics = 0, kRead = 1, kWrite = 2, kAdmin = 3 };

// What a method needs: nothing (health), or at least a scope.
enum class MethodRule : uint8_t { kPublic, kRead, kWrite, kAdmin };

// "metrics" / "read" / "write" / "admin".
const char* ScopeName(Scope scope);
// Parses a scope name (exact, lower case). INVALID_ARGUMENT names the valid ones.
absl::StatusOr<Scope> ParseScope(absl::string_view name);

// The rule for a full gRPC method name ("/tttserve.v1.TttService/Score"). Methods not in the
// table (a service added later, a typo) need `admin`: deny by default.
MethodRule RuleFor(absl::string_view full_method);
// Whether a credential with `scope` may call a method with `rule`.
bool Allows(Scope scope, MethodRule rule);
// Whether a credential with `scope` may scrape the metrics endpoint.
bool AllowsScrape(Scope scope);
// The scope a rule needs, for messages ("needs scope 'write'"); kPublic answers "none".
const char* RuleName(MethodRule rule);

// Full method names the server's handlers pass (one spelling, shared with the table).
inline constexpr char kTttServicePrefix[] = "/tttserve.v1.TttService/";
std::string TttMethod(absl::string_view name);  // "Score" -> "/tttserve.v1.TttService/Score"

}  // namespace ttt::auth
