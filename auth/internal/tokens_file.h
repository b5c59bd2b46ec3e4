// The tokens file: which bearer token belongs to which tenant, with what scope. It holds only
// SHA-256 hashes of tokens, never a token, so a leaked file (or a log of it) grants nothing.
//
// Format, one credential per line; `#` starts a comment, blank lines are skipped:
//   <tenant> <sha256-hex-of-token> [scope[,scope...]]
//   alice    2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824 read
// The hash is 64 hex digits (`printf %s "$TOKEN" | sha256sum`). Scopes: read, write, admin,
// metrics (see scopes.h); absent means `write`; several mean the highest. For a scraper the
// "tenant" column is just its name (a metrics token reaches no tenant's data). A tenant may have several
// lines (token rotation: old and new both valid until the old line is removed).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "auth/scopes.h"

namespace ttt::auth::internal {

using Digest = std::array<uint8_t, 32>;

struct TokenEntry {
  std::string tenant;
  Digest token_sha256{};
  Scope scope = Scope::kWrite;
  int line = 0;  // in the file, for messages
};

// Checks a tenant name (the server passes SessionManager::ValidateTenant: one owner for the
// rule). Null: any name without whitespace.
using TenantValidator = std::function<absl::Status(const std::string&)>;

// Parses the file's text. `source` names it in messages ("tokens.txt:3: ..."). INVALID_ARGUMENT
// on the first bad line: wrong field count, a hash that is not 64 hex digits, an unknown scope,
// a tenant the validator refuses, a hash listed twice. Messages never quote a hash.
absl::StatusOr<std::vector<TokenEntry>> ParseTokensFile(absl::string_view text,
                                                        absl::string_view source,
                                                        const TenantValidator& validate_tenant);

// Most bytes a tokens file may have (a guard against pointing the flag at the wrong file).
inline constexpr size_t kMaxTokensFileBytes = 4 << 20;

}  // namespace ttt::auth::internal
