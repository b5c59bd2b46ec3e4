// The method table behind RuleFor (see scopes.h).
#include "auth/scopes.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "util/status_macros.h"

namespace ttt::auth {
namespace {

// Public: Kubernetes probes and load balancers ask without credentials.
constexpr absl::string_view kPublicMethods[] = {
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
};
// Reflection lists the API (no tenant data): any authenticated caller.
constexpr absl::string_view kReadOtherMethods[] = {
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
};
// TttService methods by the scope they need. Generate is `read` here; a committing Generate
// changes the session, and its handler asks for `write` on top (RequireScope).
constexpr std::pair<absl::string_view, MethodRule> kTttMethods[] = {
    {"GetServerInfo", MethodRule::kRead},
    {"GetSession", MethodRule::kRead},
    {"ListSessions", MethodRule::kRead},
    {"Score", MethodRule::kRead},
    {"Generate", MethodRule::kRead},
    {"ListCheckpoints", MethodRule::kRead},
    {"ExportSession", MethodRule::kRead},
    {"CreateSession", MethodRule::kWrite},
    {"DeleteSession", MethodRule::kWrite},
    {"Ingest", MethodRule::kWrite},
    {"Checkpoint", MethodRule::kWrite},
    {"Restore", MethodRule::kWrite},
    {"Reset", MethodRule::kWrite},
    {"Fork", MethodRule::kWrite},
    {"DeleteCheckpoint", MethodRule::kWrite},
    {"ImportSession", MethodRule::kWrite},
    {"Tokenize", MethodRule::kRead},
    {"Detokenize", MethodRule::kRead},
};

}  // namespace

const char* ScopeName(Scope scope) {
  switch (scope) {
    case Scope::kMetrics:
      return "metrics";
    case Scope::kRead:
      return "read";
    case Scope::kWrite:
      return "write";
    case Scope::kAdmin:
      return "admin";
  }
  return "unknown";
}

absl::StatusOr<Scope> ParseScope(absl::string_view name) {
  for (Scope s : {Scope::kMetrics, Scope::kRead, Scope::kWrite, Scope::kAdmin}) {
    if (name == ScopeName(s)) return s;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown scope '", name, "' (valid: read, write, admin, metrics)"));
}

ScopeSet ScopeSet::With(Scope scope) const {
  ScopeSet out = *this;
  out.bits_ |= static_cast<uint8_t>(1u << static_cast<int>(scope));
  switch (scope) {
    case Scope::kAdmin:
      return out.With(Scope::kWrite).With(Scope::kMetrics);
    case Scope::kWrite:
      return out.With(Scope::kRead);
    case Scope::kRead:
    case Scope::kMetrics:
      return out;
  }
  return out;
}

std::string ScopeSetName(ScopeSet scopes) {
  std::string out;
  ScopeSet named;  // what the names so far imply
  for (Scope s : {Scope::kAdmin, Scope::kWrite, Scope::kRead, Scope::kMetrics}) {
    if (!scopes.Has(s) || named.Has(s)) continue;
    absl::StrAppend(&out, out.empty() ? "" : ",", ScopeName(s));
    named = named.With(s);
  }
  return out.empty() ? "none" : out;
}

absl::StatusOr<ScopeSet> ParseScopeSet(absl::string_view names) {
  ScopeSet scopes;
  for (absl::string_view name : absl::StrSplit(names, ',')) {
    if (name.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "empty scope in '", names, "' (a comma-separated list such as 'read,metrics')"));
    }
    ASSIGN_OR_RETURN(auto scope, ParseScope(name));
    scopes = scopes.With(scope);
  }
  return scopes;
}

MethodRule RuleFor(absl::string_view full_method) {
  for (absl::string_view m : kPublicMethods) {
    if (full_method == m) return MethodRule::kPublic;
  }
  for (absl::string_view m : kReadOtherMethods) {
    if (full_method == m) return MethodRule::kRead;
  }
  if (absl::StartsWith(full_method, kTttServicePrefix)) {
    absl::string_view name = full_method.substr(sizeof(kTttServicePrefix) - 1);
    for (const auto& [method, rule] : kTttMethods) {
      if (name == method) return rule;
    }
  }
  return MethodRule::kAdmin;
}

bool Allows(ScopeSet scopes, MethodRule rule) {
  switch (rule) {
    case MethodRule::kPublic:
      return true;
    case MethodRule::kRead:
      return scopes.Has(Scope::kRead);
    case MethodRule::kWrite:
      return scopes.Has(Scope::kWrite);
    case MethodRule::kAdmin:
      return scopes.Has(Scope::kAdmin);
  }
  return false;
}

bool AllowsScrape(ScopeSet scopes) { return scopes.Has(Scope::kMetrics); }

const char* RuleName(MethodRule rule) {
  switch (rule) {
    case MethodRule::kPublic:
      return "none";
    case MethodRule::kRead:
      return "read";
    case MethodRule::kWrite:
      return "write";
    case MethodRule::kAdmin:
      return "admin";
  }
  return "admin";
}

std::string TttMethod(absl::string_view name) { return absl::StrCat(kTttServicePrefix, name); }

}  // namespace ttt::auth
