// The credentials file (--auth_tokens_file): which bearer token, and which client-certificate
// identity, belongs to which tenant with which scopes. It holds only SHA-256 hashes of tokens,
// never a token, so a leaked file (or a log of it) grants nothing.
//
// Format, one credential per line; `#` starts a comment, blank lines are skipped:
//   <tenant> <sha256-hex-of-token> [scope[,scope...]]
//   <tenant> cn:<certificate common name> [scope[,scope...]]
//   <tenant> uri:<certificate URI SAN> [scope[,scope...]]
//   alice    2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824 read
//   alice    cn:alice-laptop read,metrics
//   bob      uri:spiffe://example.org/ns/prod/sa/bob
// The hash is 64 hex digits (`printf %s "$TOKEN" | sha256sum`). A certificate's identity is
// its URI SAN when it has one, else its subject CN (x509_identity.h); only a listed identity
// authenticates, and only as the line says: no certificate field grants a tenant or a scope by
// itself. Scopes: read, write, admin, metrics, any combination (scopes.h); absent means
// `write`. For a scraper the "tenant" column is just its name (a metrics-only credential
// reaches no tenant's data). A tenant may have several lines (rotation: old and new both valid
// until the old line is removed).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "auth/scopes.h"

namespace ttt::auth::internal {

using Digest = std::array<uint8_t, 32>;

struct TokenEntry {
  std::string tenant;
  Digest token_sha256{};
  ScopeSet scopes = ScopeSet::Of(Scope::kWrite);
  int line = 0;  // in the file, for messages
};

// A client-certificate identity's line.
struct CertificateEntry {
  std::string tenant;
  std::string identity;  // "cn:<common name>" or "uri:<URI SAN>", as x509_identity.h makes it
  ScopeSet scopes = ScopeSet::Of(Scope::kWrite);
  int line = 0;
};

struct CredentialsFile {
  std::vector<TokenEntry> tokens;
  std::vector<CertificateEntry> certificates;
};

// Checks a tenant name (the server passes SessionManager::ValidateTenant: one owner for the
// rule). Null: any name without whitespace.
using TenantValidator = std::function<absl::Status(const std::string&)>;

// Parses the file's text. `source` names it in messages ("tokens.txt:3: ..."). INVALID_ARGUMENT
// on the first bad line: wrong field count, a hash that is not 64 hex digits, an identity with
// an unknown prefix or an empty value, an unknown scope, a tenant the validator refuses, a hash
// or an identity listed twice. Messages never quote a hash.
absl::StatusOr<CredentialsFile> ParseTokensFile(absl::string_view text, absl::string_view source,
                                                const TenantValidator& validate_tenant);

// Most bytes a tokens file may have (a guard against pointing the flag at the wrong file).
inline constexpr size_t kMaxTokensFileBytes = 4 << 20;

}  // namespace ttt::auth::internal
