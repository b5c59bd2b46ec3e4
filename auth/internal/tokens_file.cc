// See tokens_file.h.
#include "auth/internal/tokens_file.h"

#include <map>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "util/status_macros.h"

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

// A certificate identity field (one with a ':'): "cn:<value>" or "uri:<value>", non-empty.
absl::Status CheckIdentity(absl::string_view field) {
  for (absl::string_view prefix : {"cn:", "uri:"}) {
    if (!absl::StartsWith(field, prefix)) continue;
    if (field.size() > prefix.size()) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("the certificate identity '", field, "' has an empty value"));
  }
  return absl::InvalidArgumentError(
      "a certificate identity starts with 'cn:' (the subject CN) or 'uri:' (a URI SAN)");
}

// One credential line, as a token or a certificate entry (the other left empty).
struct ParsedLine {
  std::optional<TokenEntry> token;
  std::optional<CertificateEntry> certificate;
};

absl::StatusOr<ParsedLine> ParseLine(absl::string_view line, const TenantValidator& validate) {
  std::vector<absl::string_view> fields =
      absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
  if (fields.size() < 2 || fields.size() > 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        "expected '<tenant> <sha256-hex-of-token | cn:<name> | uri:<uri>> [scopes]', got ",
        fields.size(), " fields"));
  }
  const std::string tenant(fields[0]);
  if (validate) {
    RETURN_IF_ERROR(validate(tenant));
  }
  ScopeSet scopes = ScopeSet::Of(Scope::kWrite);
  if (fields.size() == 3) {
    ASSIGN_OR_RETURN(scopes, ParseScopeSet(fields[2]));
  }
  ParsedLine out;
  if (absl::StrContains(fields[1], ':')) {
    RETURN_IF_ERROR(CheckIdentity(fields[1]));
    out.certificate = CertificateEntry{tenant, std::string(fields[1]), scopes, 0};
    return out;
  }
  ASSIGN_OR_RETURN(auto digest, ParseDigest(fields[1]));
  out.token = TokenEntry{tenant, digest, scopes, 0};
  return out;
}

}  // namespace

absl::StatusOr<CredentialsFile> ParseTokensFile(absl::string_view text, absl::string_view source,
                                                const TenantValidator& validate_tenant) {
  if (text.size() > kMaxTokensFileBytes) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", text.size(),
                                                   " bytes is over the limit of ",
                                                   kMaxTokensFileBytes, " for a tokens file"));
  }
  CredentialsFile file;
  // A hash or identity listed twice would make the tenant ambiguous.
  std::map<Digest, int> line_of_hash;
  std::map<std::string, int> line_of_identity;
  int number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++number;
    const size_t hash = line.find('#');
    if (hash != absl::string_view::npos) line = line.substr(0, hash);
    line = absl::StripAsciiWhitespace(line);  // also a trailing '\r'
    if (line.empty()) continue;
    auto parsed = ParseLine(line, validate_tenant);
    if (!parsed.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ":", number, ": ", parsed.status().message()));
    }
    if (parsed->token) {
      auto [it, inserted] = line_of_hash.emplace(parsed->token->token_sha256, number);
      if (!inserted) {
        return absl::InvalidArgumentError(
            absl::StrCat(source, ":", number, ": the same token hash is already on line ",
                         it->second, " (one token must name one tenant)"));
      }
      parsed->token->line = number;
      file.tokens.push_back(std::move(*parsed->token));
    } else {
      auto [it, inserted] = line_of_identity.emplace(parsed->certificate->identity, number);
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat(
            source, ":", number, ": the certificate identity '", it->first, "' is already on line ",
            it->second, " (one identity must name one tenant)"));
      }
      parsed->certificate->line = number;
      file.certificates.push_back(std::move(*parsed->certificate));
    }
  }
  return file;
}

}  // namespace ttt::auth::internal
