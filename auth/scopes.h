// Scopes and the per-method rule: which scope each RPC of the public API needs. One table, so
// the transport gate (a TLS listener's metadata processor) and the handlers agree.
#pragma once

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace ttt::auth {

// One permission a credential may hold.
//   metrics: scrape /metrics (no tenant data, no API calls by itself).
//   read:  the calls that change nothing (GetServerInfo, Get/ListSessions, Score, Generate
//          without commit, ListCheckpoints, ExportSession, reflection).
//   write: everything a tenant may do to its own sessions and checkpoints.
//   admin: write, for every tenant (an admin's `x-tenant-id` picks the tenant).
enum class Scope : uint8_t { kMetrics = 0, kRead = 1, kWrite = 2, kAdmin = 3 };

// The scopes a credential holds: any combination ("read,metrics" reads and scrapes). The API
// scopes nest by implication: `admin` implies `write` and `metrics`, `write` implies `read`;
// `metrics` implies nothing. A value type; the empty set may do nothing.
class ScopeSet {
 public:
  constexpr ScopeSet() = default;
  // The set holding `scope` and what it implies.
  static ScopeSet Of(Scope scope) { return ScopeSet().With(scope); }
  // This set plus `scope` and what it implies.
  ScopeSet With(Scope scope) const;
  bool Has(Scope scope) const { return (bits_ >> static_cast<int>(scope)) & 1u; }
  bool empty() const { return bits_ == 0; }
  bool operator==(const ScopeSet& other) const { return bits_ == other.bits_; }
  bool operator!=(const ScopeSet& other) const { return bits_ != other.bits_; }

 private:
  uint8_t bits_ = 0;
};

// What a method needs: nothing (health), or at least a scope.
enum class MethodRule : uint8_t { kPublic, kRead, kWrite, kAdmin };

// "metrics" / "read" / "write" / "admin".
const char* ScopeName(Scope scope);
// The set as written in a credentials file, highest first, implied scopes left out: "admin",
// "write,metrics", "read,metrics"; "none" for the empty set.
std::string ScopeSetName(ScopeSet scopes);
// Parses a scope name (exact, lower case). INVALID_ARGUMENT names the valid ones.
absl::StatusOr<Scope> ParseScope(absl::string_view name);
// Parses a comma-separated list of scope names ("read,metrics"); INVALID_ARGUMENT for an empty
// list, an empty item or an unknown name.
absl::StatusOr<ScopeSet> ParseScopeSet(absl::string_view names);

// The rule for a full gRPC method name ("/tttserve.v1.TttService/Score"). Methods not in the
// table (a service added later, a typo) need `admin`: deny by default.
MethodRule RuleFor(absl::string_view full_method);
// Whether a credential holding `scopes` may call a method with `rule`.
bool Allows(ScopeSet scopes, MethodRule rule);
// Whether a credential holding `scopes` may scrape the metrics endpoint (scope `metrics`).
bool AllowsScrape(ScopeSet scopes);
// The scope a rule needs, for messages ("needs scope 'write'"); kPublic answers "none".
const char* RuleName(MethodRule rule);

// Full method names the server's handlers pass (one spelling, shared with the table).
inline constexpr char kTttServicePrefix[] = "/tttserve.v1.TttService/";
std::string TttMethod(absl::string_view name);  // "Score" -> "/tttserve.v1.TttService/Score"

}  // namespace ttt::auth
