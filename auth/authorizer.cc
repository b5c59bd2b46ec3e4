// See authorizer.h.
#include "auth/authorizer.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "auth/internal/x509_identity.h"
#include "util/status_macros.h"

namespace ttt::auth {
namespace {

// RFC 6750's b64token: the only characters a bearer token may have.
bool IsTokenChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_' ||
         c == '~' || c == '+' || c == '/' || c == '=';
}

std::string MethodShortName(absl::string_view full_method) {
  const size_t slash = full_method.rfind('/');
  return std::string(slash == absl::string_view::npos ? full_method
                                                      : full_method.substr(slash + 1));
}

}  // namespace

const char* AuthFailureName(AuthFailure reason) {
  switch (reason) {
    case AuthFailure::kMissingCredentials:
      return "missing_credentials";
    case AuthFailure::kMalformedToken:
      return "malformed_token";
    case AuthFailure::kUnknownToken:
      return "unknown_token";
    case AuthFailure::kBadCertificate:
      return "bad_certificate";
    case AuthFailure::kUnknownCertificate:
      return "unknown_certificate";
    case AuthFailure::kRevokedCertificate:
      return "revoked_certificate";
    case AuthFailure::kScopeDenied:
      return "scope_denied";
    case AuthFailure::kTenantMismatch:
      return "tenant_mismatch";
  }
  return "unknown";
}

absl::Status Authorizer::Fail(AuthFailure reason, absl::Status status) const {
  if (options_.on_failure) options_.on_failure(reason);
  return status;
}

absl::StatusOr<Principal> Authorizer::FromToken(absl::string_view header) const {
  absl::string_view token = header;
  if (token.size() < 7 || !absl::EqualsIgnoreCase(token.substr(0, 7), "bearer ")) {
    return Fail(AuthFailure::kMalformedToken,
                absl::UnauthenticatedError(
                    "the authorization header must be 'Bearer <token>' (no other scheme)"));
  }
  token = absl::StripAsciiWhitespace(token.substr(7));
  bool well_formed = !token.empty();
  for (char c : token) well_formed = well_formed && IsTokenChar(c);
  if (!well_formed) {
    return Fail(AuthFailure::kMalformedToken,
                absl::UnauthenticatedError("the bearer token is empty or has characters outside "
                                           "[A-Za-z0-9-._~+/=]"));
  }
  if (options_.tokens == nullptr) {
    return Fail(AuthFailure::kUnknownToken,
                absl::UnauthenticatedError("this server accepts no bearer tokens (it has no "
                                           "--auth_tokens_file); present a client certificate"));
  }
  auto found = options_.tokens->Lookup(token);
  if (!found) {
    return Fail(AuthFailure::kUnknownToken,
                absl::UnauthenticatedError("unknown bearer token (revoked, mistyped, or not in "
                                           "the server's tokens file)"));
  }
  return Principal{found->tenant, found->scopes, CredentialKind::kBearerToken, ""};
}

absl::StatusOr<Principal> Authorizer::FromCertificate(const CallCredentials& call) const {
  auto cert = internal::IdentityFromPem(*call.cert_pem);
  if (!cert.ok()) return Fail(AuthFailure::kBadCertificate, cert.status());
  if (options_.revocations != nullptr &&
      options_.revocations->IsRevoked(cert->issuer_der, cert->serial_hex)) {
    return Fail(AuthFailure::kRevokedCertificate,
                absl::UnauthenticatedError(absl::StrCat(
                    "client certificate '", cert->identity, "' (serial ", cert->serial_hex,
                    ") is revoked by the server's certificate revocation list")));
  }
  auto found = options_.tokens == nullptr ? std::nullopt
                                          : options_.tokens->LookupCertificate(cert->identity);
  if (!found) {
    return Fail(AuthFailure::kUnknownCertificate,
                absl::UnauthenticatedError(absl::StrCat(
                    "client certificate identity '", cert->identity,
                    "' is not in the server's credentials file (--auth_tokens_file): the "
                    "operator adds a line '<tenant> ",
                    cert->identity, " <scopes>'")));
  }
  return Principal{found->tenant, found->scopes, CredentialKind::kClientCertificate,
                   cert->identity};
}

absl::StatusOr<Principal> Authorizer::Authenticate(const CallCredentials& call) const {
  if (call.authorization) return FromToken(*call.authorization);
  if (options_.client_certificates && call.cert_pem && !call.cert_pem->empty()) {
    return FromCertificate(call);
  }
  const char* how = options_.tokens == nullptr ? "a client certificate"
                    : options_.client_certificates
                        ? "'authorization: Bearer <token>' or a client certificate"
                        : "'authorization: Bearer <token>'";
  return Fail(AuthFailure::kMissingCredentials,
              absl::UnauthenticatedError(absl::StrCat("missing credentials: send ", how)));
}

absl::StatusOr<Principal> Authorizer::Authorize(const CallCredentials& call,
                                                absl::string_view full_method) const {
  const MethodRule rule = RuleFor(full_method);
  if (!enabled()) {
    Principal anyone{call.tenant_header.value_or(options_.default_tenant),
                     ScopeSet::Of(Scope::kAdmin), CredentialKind::kNone, ""};
    if (call.tenant_header && options_.validate_tenant) {
      RETURN_IF_ERROR(options_.validate_tenant(anyone.tenant));
    }
    return anyone;
  }
  if (rule == MethodRule::kPublic) return Principal{};
  auto principal = Authenticate(call);
  if (!principal.ok()) return principal.status();
  if (!Allows(principal->scopes, rule)) {
    return Fail(AuthFailure::kScopeDenied,
                absl::PermissionDeniedError(absl::StrCat(
                    "tenant '", principal->tenant, "' (scope '", ScopeSetName(principal->scopes),
                    "') may not call ", MethodShortName(full_method), ": it needs scope '",
                    RuleName(rule), "'")));
  }
  if (call.tenant_header && *call.tenant_header != principal->tenant) {
    if (!principal->scopes.Has(Scope::kAdmin)) {
      return Fail(AuthFailure::kTenantMismatch, absl::PermissionDeniedError(absl::StrCat(
                                                    "x-tenant-id '", *call.tenant_header,
                                                    "' does not match the credential's "
                                                    "tenant '",
                                                    principal->tenant,
                                                    "': omit x-tenant-id (the credential names "
                                                    "the tenant) or use an admin credential")));
    }
    if (options_.validate_tenant) {
      RETURN_IF_ERROR(options_.validate_tenant(*call.tenant_header));
    }
    principal->tenant = *call.tenant_header;  // an admin acting for a tenant
  }
  return principal;
}

absl::Status Authorizer::AuthorizeScrape(const std::optional<std::string>& authorization) const {
  if (!authorization) {
    return Fail(AuthFailure::kMissingCredentials,
                absl::UnauthenticatedError(
                    "missing credentials: send 'Authorization: Bearer <token>' with a token of "
                    "scope 'metrics'"));
  }
  ASSIGN_OR_RETURN(auto principal, FromToken(*authorization));
  if (!AllowsScrape(principal.scopes)) {
    return Fail(AuthFailure::kScopeDenied,
                absl::PermissionDeniedError(absl::StrCat(
                    "'", principal.tenant, "' (scope '", ScopeSetName(principal.scopes),
                    "') may not read metrics: it needs scope 'metrics' or 'admin'")));
  }
  return absl::OkStatus();
}

absl::Status Authorizer::RequireScope(const Principal& principal, Scope needed,
                                      absl::string_view what) const {
  if (!enabled() || principal.scopes.Has(needed)) return absl::OkStatus();
  return Fail(AuthFailure::kScopeDenied,
              absl::PermissionDeniedError(absl::StrCat(
                  "tenant '", principal.tenant, "' (scope '", ScopeSetName(principal.scopes),
                  "') may not ", what, ": it needs scope '", ScopeName(needed), "'")));
}

}  // namespace ttt::auth
