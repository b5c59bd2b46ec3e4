// See authorizer.h.
#include "auth/authorizer.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace ttt::auth {
namespace {

// RFC 6750's b64token: the only characters a bearer token may have.
bool IsTokenChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' ||
         c == '_' || c == '~' || c == '+' || c == '/' || c == '=';
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
    case AuthFailure::kBadCertificateTenant:
      return "bad_certificate_tenant";
    case AuthFailure::kScopeDenied:
      return "scope_denied";
    case AuthFailure::kTenantMismatch:
      return "tenant_mismatch";
  }
  return "unknown";
}

Scope ScopeFromSubject(absl::string_view subject) {
  std::optional<Scope> highest;
  // RFC 2253 separates RDNs by unescaped commas; scope names hold no escapes, so a plain split
  // can only mis-split a value that is not a scope name anyway.
  for (absl::string_view rdn : absl::StrSplit(subject, ',')) {
    rdn = absl::StripAsciiWhitespace(rdn);
    if (!absl::ConsumePrefix(&rdn, "O=")) continue;
    auto scope = ParseScope(rdn);
    if (scope.ok() && (!highest || *scope > *highest)) highest = *scope;
  }
  return highest.value_or(Scope::kWrite);
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
  return Principal{found->tenant, found->scope, CredentialKind::kBearerToken};
}

absl::StatusOr<Principal> Authorizer::FromCertificate(const CallCredentials& call) const {
  const std::string& cn = *call.cert_common_name;
  if (options_.validate_tenant) {
    absl::Status valid = options_.validate_tenant(cn);
    if (!valid.ok()) {
      return Fail(AuthFailure::kBadCertificateTenant,
                  absl::UnauthenticatedError(absl::StrCat(
                      "the client certificate's subject CN is not a usable tenant: ",
                      valid.message())));
    }
  }
  return Principal{cn, ScopeFromSubject(call.cert_subject.value_or("")),
                   CredentialKind::kClientCertificate};
}

absl::StatusOr<Principal> Authorizer::Authenticate(const CallCredentials& call) const {
  if (call.authorization) return FromToken(*call.authorization);
  if (options_.client_certificates && call.cert_common_name && !call.cert_common_name->empty()) {
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
    Principal anyone{call.tenant_header.value_or(options_.default_tenant), Scope::kAdmin,
                     CredentialKind::kNone};
    if (call.tenant_header && options_.validate_tenant) {
      absl::Status valid = options_.validate_tenant(anyone.tenant);
      if (!valid.ok()) return valid;
    }
    return anyone;
  }
  if (rule == MethodRule::kPublic) return Principal{};
  auto principal = Authenticate(call);
  if (!principal.ok()) return principal.status();
  if (!Allows(principal->scope, rule)) {
    return Fail(AuthFailure::kScopeDenied,
                absl::PermissionDeniedError(absl::StrCat(
                    "tenant '", principal->tenant, "' (scope '", ScopeName(principal->scope),
                    "') may not call ", MethodShortName(full_method), ": it needs scope '",
                    RuleName(rule), "'")));
  }
  if (call.tenant_header && *call.tenant_header != principal->tenant) {
    if (principal->scope != Scope::kAdmin) {
      return Fail(AuthFailure::kTenantMismatch,
                  absl::PermissionDeniedError(absl::StrCat(
                      "x-tenant-id '", *call.tenant_header, "' does not match the credential's "
                      "tenant '", principal->tenant, "': omit x-tenant-id (the credential names "
                      "the tenant) or use an admin credential")));
    }
    if (options_.validate_tenant) {
      absl::Status valid = options_.validate_tenant(*call.tenant_header);
      if (!valid.ok()) return valid;
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
  auto principal = FromToken(*authorization);
  if (!principal.ok()) return principal.status();
  if (!AllowsScrape(principal->scope)) {
    return Fail(AuthFailure::kScopeDenied,
                absl::PermissionDeniedError(absl::StrCat(
                    "'", principal->tenant, "' (scope '", ScopeName(principal->scope),
                    "') may not read metrics: it needs scope 'metrics' or 'admin'")));
  }
  return absl::OkStatus();
}

absl::Status Authorizer::RequireScope(const Principal& principal, Scope needed,
                                      absl::string_view what) const {
  if (!enabled() || principal.scope >= needed) return absl::OkStatus();
  return Fail(AuthFailure::kScopeDenied,
              absl::PermissionDeniedError(absl::StrCat(
                  "tenant '", principal.tenant, "' (scope '", ScopeName(principal.scope),
                  "') may not ", what, ": it needs scope '", ScopeName(needed), "'")));
}

}  // namespace ttt::auth
