// Who is calling and may they: the one decision every call of the public API goes through.
// Input is plain data taken from the call (the `authorization` and `x-tenant-id` headers, the
// verified client certificate's names); grpc_auth.h extracts it from a gRPC call.
//
// Authentication, first that applies:
//   1. `authorization: Bearer <token>`: the tokens file's tenant and scope for that token. A
//      token that is present but unknown or malformed is refused even when a client certificate
//      would do: an explicit credential that fails is an error, never a fallback.
//   2. a client certificate verified by mutual TLS: its identity, read from the certificate's
//      structure (internal/x509_identity.h: the URI SAN, else the one subject CN), names a line
//      of the credentials file, which gives the tenant and the scopes. A certificate whose
//      identity has no line, or that is revoked (RevocationCheck), is refused: no certificate
//      field grants a tenant or a scope by itself.
//   3. nothing: UNAUTHENTICATED.
// Then authorization: the method's scope (scopes.h) or PERMISSION_DENIED; `x-tenant-id`, when
// sent, must equal the credential's tenant (PERMISSION_DENIED otherwise) except for `admin`,
// whose `x-tenant-id` selects the tenant to act on.
//
// With neither tokens nor client certificates configured authentication is off: the tenant is
// `x-tenant-id` (or "default") as before, and every call is allowed.
//
// Thread-safety: thread-safe (immutable after construction; the TokenStore is thread-safe).
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "auth/scopes.h"
#include "auth/token_store.h"

namespace ttt::auth {

// Why a call was refused: the label of tttserve_auth_failures_total{reason}. A closed set, so
// the metric's cardinality is bounded; never a token, never a tenant.
enum class AuthFailure {
  kMissingCredentials,  // no token, no client certificate
  kMalformedToken,      // `authorization` is not `Bearer <token>`
  kUnknownToken,        // a token not in the tokens file (or tokens not accepted)
  kBadCertificate,      // no usable identity in the client certificate (x509_identity.h)
  kUnknownCertificate,  // a certificate identity the credentials file does not list
  kRevokedCertificate,  // a certificate the revocation list names
  kScopeDenied,         // the credential's scopes do not allow the call
  kTenantMismatch,      // x-tenant-id names another tenant
};
inline constexpr AuthFailure kAllAuthFailures[] = {
    AuthFailure::kMissingCredentials, AuthFailure::kMalformedToken,
    AuthFailure::kUnknownToken,       AuthFailure::kBadCertificate,
    AuthFailure::kUnknownCertificate, AuthFailure::kRevokedCertificate,
    AuthFailure::kScopeDenied,        AuthFailure::kTenantMismatch};
// "missing_credentials", "malformed_token", ...
const char* AuthFailureName(AuthFailure reason);

// What a call presents, as plain data.
struct CallCredentials {
  std::optional<std::string> authorization;  // the `authorization` header's value
  std::optional<std::string> tenant_header;  // `x-tenant-id`
  // The PEM of the client certificate that the TLS handshake verified; unset otherwise.
  std::optional<std::string> cert_pem;
};

enum class CredentialKind { kNone, kBearerToken, kClientCertificate };

// The caller, once authorized.
struct Principal {
  std::string tenant;  // whose sessions the call touches (empty for a public method)
  ScopeSet scopes;
  CredentialKind kind = CredentialKind::kNone;
  std::string identity;  // a certificate's identity ("cn:alice"); empty for other kinds
};

// Whether a verified client certificate has been revoked (a CRL; see tls_files.h). Thread-safe.
class RevocationCheck {
 public:
  virtual ~RevocationCheck() = default;
  // `issuer_der`: the certificate's issuer name, DER; `serial_hex`: its serial, upper-case hex.
  virtual bool IsRevoked(absl::string_view issuer_der, absl::string_view serial_hex) const = 0;
};

struct AuthorizerOptions {
  // Not owned; null: neither bearer tokens nor certificate identities are accepted.
  const TokenStore* tokens = nullptr;
  bool client_certificates = false;  // mutual TLS on: a verified certificate authenticates
  const RevocationCheck* revocations = nullptr;  // not owned; null: nothing is revoked
  TenantValidator validate_tenant;               // for x-tenant-id
  std::string default_tenant = "default";        // authentication off, no x-tenant-id
  std::function<void(AuthFailure)> on_failure;   // for metrics; may be null
};

class Authorizer {
 public:
  explicit Authorizer(AuthorizerOptions options) : options_(std::move(options)) {}

  // Whether any authentication is configured.
  bool enabled() const { return options_.tokens != nullptr || options_.client_certificates; }

  // The principal for a call of `full_method` ("/tttserve.v1.TttService/Score"), or
  // UNAUTHENTICATED / PERMISSION_DENIED (INVALID_ARGUMENT for a malformed x-tenant-id) with a
  // message that says what to send instead. Messages never contain the token.
  absl::StatusOr<Principal> Authorize(const CallCredentials& call,
                                      absl::string_view full_method) const;

  // A scrape of the metrics endpoint with this `authorization` header value (nullopt: none):
  // OK for a token of scope `metrics` or `admin`; UNAUTHENTICATED for a missing, malformed or
  // unknown token (HTTP 401), PERMISSION_DENIED for another scope (HTTP 403). Counted in
  // on_failure like calls.
  absl::Status AuthorizeScrape(const std::optional<std::string>& authorization) const;

  // PERMISSION_DENIED unless `principal` has at least `needed` (for a call whose arguments need
  // more than its method: a committing Generate needs `write`). `what` names the call.
  absl::Status RequireScope(const Principal& principal, Scope needed, absl::string_view what) const;

 private:
  absl::StatusOr<Principal> Authenticate(const CallCredentials& call) const;
  absl::StatusOr<Principal> FromToken(absl::string_view header) const;
  absl::StatusOr<Principal> FromCertificate(const CallCredentials& call) const;
  absl::Status Fail(AuthFailure reason, absl::Status status) const;

  const AuthorizerOptions options_;
};

}  // namespace ttt::auth
