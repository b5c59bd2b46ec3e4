// Who is calling and may they: the one decision every call of the public API goes through.
// Input is plain data taken from the call (the `authorization` and `x-tenant-id` headers, the
// verified client certificate's names); grpc_auth.h extracts it from a gRPC call.
//
// Authentication, first that applies:
//   1. `authorization: Bearer <token>`: the tokens file's tenant and scope for that token. A
//      token that is present but unknown or malformed is refused even when a client certificate
//      would do: an explicit credential that fails is an error, never a fallback.
//   2. a client certificate verified by mutual TLS: tenant = the certificate's subject Common
//      Name (CN), as the Kubernetes API server and etcd take the user; scope = the highest scope
//      named by the subject's Organization (O) entries (Kubernetes' groups), `write` if none.
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
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "auth/scopes.h"
#include "auth/token_store.h"

namespace ttt::auth {

// Why a call was refused: the label of tttserve_auth_failures_total{reason}. A closed set, so
// the metric's cardinality is bounded; never a token, never a tenant.
enum class AuthFailure {
  kMissingCredentials,    // no token, no client certificate
  kMalformedToken,        // `authorization` is not `Bearer <token>`
  kUnknownToken,          // a token not in the tokens file (or tokens not accepted)
  kBadCertificateTenant,  // the client certificate's CN is not a usable tenant name
  kScopeDenied,           // the credential's scope does not allow the call
  kTenantMismatch,        // x-tenant-id names another tenant
};
inline constexpr AuthFailure kAllAuthFailures[] = {
    AuthFailure::kMissingCredentials, AuthFailure::kMalformedToken,
    AuthFailure::kUnknownToken,       AuthFailure::kBadCertificateTenant,
    AuthFailure::kScopeDenied,        AuthFailure::kTenantMismatch};
// "missing_credentials", "malformed_token", ...
const char* AuthFailureName(AuthFailure reason);

// What a call presents, as plain data.
struct CallCredentials {
  std::optional<std::string> authorization;  // the `authorization` header's value
  std::optional<std::string> tenant_header;  // `x-tenant-id`
  // From a client certificate that the TLS handshake verified; unset otherwise.
  std::optional<std::string> cert_common_name;
  std::optional<std::string> cert_subject;  // RFC 2253, e.g. "CN=alice,O=read"
};

enum class CredentialKind { kNone, kBearerToken, kClientCertificate };

// The caller, once authorized.
struct Principal {
  std::string tenant;  // whose sessions the call touches (empty for a public method)
  Scope scope = Scope::kRead;
  CredentialKind kind = CredentialKind::kNone;
};

struct AuthorizerOptions {
  const TokenStore* tokens = nullptr;  // not owned; null: bearer tokens are not accepted
  bool client_certificates = false;    // mutual TLS on: a verified certificate authenticates
  TenantValidator validate_tenant;     // for x-tenant-id and certificate CNs
  std::string default_tenant = "default";  // authentication off, no x-tenant-id
  std::function<void(AuthFailure)> on_failure;  // for metrics; may be null
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
  absl::Status RequireScope(const Principal& principal, Scope needed,
                            absl::string_view what) const;

 private:
  absl::StatusOr<Principal> Authenticate(const CallCredentials& call) const;
  absl::StatusOr<Principal> FromToken(absl::string_view header) const;
  absl::StatusOr<Principal> FromCertificate(const CallCredentials& call) const;
  absl::Status Fail(AuthFailure reason, absl::Status status) const;

  const AuthorizerOptions options_;
};

// The scope a certificate subject's O entries name (highest wins), `write` when none does.
Scope ScopeFromSubject(absl::string_view subject);

}  // namespace ttt::auth
