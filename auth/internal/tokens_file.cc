// See tokens_file.h.
#include "auth/internal/tokens_file.h"

#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace ttt::auth::internal {
namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The hash field as 32 bytes; the message never repeats the field.
absl::StatusOr<Digest> ParseDigest(absl::string_view hex) {
  if (hex.size() != 64) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the token hash must be 64 hex digits (the SHA-256 of the token: printf %s \"$TOKEN\" | "
        "sha256sum), got ",
        hex.size(), " characters"));
  }
  Digest d{};
  for (size_t i = 0; i < 32; ++i) {
    const int hi = HexValue(hex[2 * i]), lo = HexValue(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      return absl::InvalidArgumentError("the token hash has a character that is not a hex digit");
    }
    d[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return d;
}

absl::StatusOr<Scope> ParseScopes(absl::string_view field) {
  Scope highest = Scope::kMetrics;
  for (absl::string_view name : absl::StrSplit(field, ',')) {
    auto scope = ParseScope(name);
    if (!scope.ok()) return scope.status();
    if (*scope > highest) highest = *scope;
  }
  return highest;
}

absl::StatusOr<TokenEntry> ParseLine(absl::string_view line, const TenantValidator& validate) {
  std::vector<absl::string_view> fields =
      absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
  if (fields.size() < 2 || fields.size() > 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        "expected '<tenant> <sha256-hex-of-token> [scopes]', got ", fields.size(), " fields"));
  }
  TokenEntry entry;
  entry.tenant = std::string(fields[0]);
  if (validate) {
    absl::Status valid = validate(entry.tenant);
    if (!valid.ok()) return valid;
  }
  auto digest = ParseDigest(fields[1]);
  if (!digest.ok()) return digest.status();
  entry.token_sha256 = *digest;
  if (fields.size() == 3) {
    auto scope = ParseScopes(fields[2]);
    if (!scope.ok()) return scope.status();
    entry.scope = *scope;
  }
  return entry;
}

}  // namespace

absl::StatusOr<std::vector<TokenEntry>> ParseTokensFile(absl::string_view text,
                                                        absl::string_view source,
                                                        const TenantValidator& validate_tenant) {
  if (text.size() > kMaxTokensFileBytes) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", text.size(),
                                                   " bytes is over the limit of ",
                                                   kMaxTokensFileBytes, " for a tokens file"));
  }
  std::vector<TokenEntry> entries;
  std::map<Digest, int> line_of;  // duplicate hashes would make the tenant ambiguous
  int number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++number;
    const size_t hash = line.find('#');
    if (hash != absl::string_view::npos) line = line.substr(0, hash);
    line = absl::StripAsciiWhitespace(line);  // also a trailing '\r'
    if (line.empty()) continue;
    auto entry = ParseLine(line, validate_tenant);
    if (!entry.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ":", number, ": ", entry.status().message()));
    }
    auto [it, inserted] = line_of.emplace(entry->token_sha256, number);
    if (!inserted) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ":", number, ": the same token hash is already on line ", it->second,
          " (one token must name one tenant)"));
    }
    entry->line = number;
    entries.push_back(std::move(*entry));
  }
  return entries;
}

}  // namespace ttt::auth::internal
