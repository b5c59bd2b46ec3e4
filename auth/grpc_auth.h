// The gRPC face of auth/: the call's credentials out of a gRPC call, TLS server credentials
// that re-read their files, and a gate that refuses unauthenticated calls on a TLS listener
// before any handler runs.
//
// Why both a gate and a per-handler check: the gate (an AuthMetadataProcessor) sees every call
// with its method (`:path`), so it also covers services with no handler of ours (reflection);
// but gRPC only runs it on secure listeners, and the AuthContext it may write is shared by all
// calls of a connection (gRPC 1.51: a property added for one call is seen by the next, with
// whatever token that one sends), so it cannot hand a per-call tenant to the handler. The
// handlers therefore derive the tenant themselves (AuthorizeCall) from the call's own metadata
// and the connection's verified certificate; the gate only refuses.
//
// Thread-safety: everything here is thread-safe.
#pragma once

#include <memory>
#include <string>
#include "absl/strings/string_view.h"

#include <grpcpp/security/auth_metadata_processor.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_context.h>

#include "absl/status/statusor.h"
#include "auth/authorizer.h"
#include "auth/tls_material.h"

namespace ttt::auth {

inline constexpr char kAuthorizationHeader[] = "authorization";
inline constexpr char kTenantHeader[] = "x-tenant-id";

// The credentials of a call: its `authorization` and `x-tenant-id` headers and, when the
// connection is TLS with a client certificate that the handshake verified, the certificate (PEM).
CallCredentials CredentialsOf(const grpc::ServerContextBase& context);

// Authorizer::Authorize for a gRPC call (see authorizer.h).
absl::StatusOr<Principal> AuthorizeCall(const Authorizer& authorizer,
                                        const grpc::ServerContextBase& context,
                                        absl::string_view full_method);

// TLS server credentials over `material`'s staged files (tls_material.h), which gRPC's provider
// re-reads every `refresh_interval_s`: new handshakes use the new certificate, established
// connections and their calls go on; a broken set never reaches them. With a client CA, clients
// must present a certificate that CA signed (the handshake fails otherwise). When `authorizer`
// is given and enabled, its gate refuses every call it would refuse (see the file comment).
// REQUIRES: `material` outlives the credentials and every server built with them.
std::shared_ptr<grpc::ServerCredentials> TlsServerCredentials(
    const TlsMaterial& material, unsigned refresh_interval_s,
    std::shared_ptr<const Authorizer> authorizer);

// The gate installed by TlsServerCredentials, exposed for tests.
class AuthGate final : public grpc::AuthMetadataProcessor {
 public:
  explicit AuthGate(std::shared_ptr<const Authorizer> authorizer)
      : authorizer_(std::move(authorizer)) {}
  // Runs on gRPC's transport thread: hashing a token is cheap and nothing blocks.
  bool IsBlocking() const override { return false; }
  grpc::Status Process(const InputMetadata& metadata, grpc::AuthContext* context,
                       OutputMetadata* consumed, OutputMetadata* response) override;

 private:
  std::shared_ptr<const Authorizer> authorizer_;
};

}  // namespace ttt::auth
