// See grpc_auth.h.
#include "auth/grpc_auth.h"

#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace ttt::auth {
namespace {

using Metadata = std::multimap<grpc::string_ref, grpc::string_ref>;

std::optional<std::string> Header(const Metadata& metadata, const char* name) {
  auto it = metadata.find(name);
  if (it == metadata.end()) return std::nullopt;
  return std::string(it->second.data(), it->second.size());
}

std::optional<std::string> Property(const grpc::AuthContext& context, const char* name) {
  std::vector<grpc::string_ref> values = context.FindPropertyValues(name);
  if (values.empty()) return std::nullopt;
  return std::string(values[0].data(), values[0].size());
}

CallCredentials CredentialsFrom(const Metadata& metadata, const grpc::AuthContext* context) {
  CallCredentials call;
  call.authorization = Header(metadata, kAuthorizationHeader);
  call.tenant_header = Header(metadata, kTenantHeader);
  // Only a certificate the handshake verified: with a client CA configured gRPC requires and
  // verifies it, and only then is the peer "authenticated".
  // (The TLS credentials name their transport "tls", the older SSL credentials "ssl".)
  if (context == nullptr || !context->IsPeerAuthenticated()) return call;
  const std::optional<std::string> transport =
      Property(*context, GRPC_TRANSPORT_SECURITY_TYPE_PROPERTY_NAME);
  if (transport == std::optional<std::string>("tls") ||
      transport == std::optional<std::string>(GRPC_SSL_TRANSPORT_SECURITY_TYPE)) {
    // The leaf certificate itself: the authorizer reads its structure (x509_identity.h), never
    // gRPC's string forms of its names.
    call.cert_pem = Property(*context, GRPC_X509_PEM_CERT_PROPERTY_NAME);
  }
  return call;
}

grpc::Status ToGrpc(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

}  // namespace

CallCredentials CredentialsOf(const grpc::ServerContextBase& context) {
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  return CredentialsFrom(context.client_metadata(), auth.get());
}

absl::StatusOr<Principal> AuthorizeCall(const Authorizer& authorizer,
                                        const grpc::ServerContextBase& context,
                                        absl::string_view full_method) {
  return authorizer.Authorize(CredentialsOf(context), full_method);
}

grpc::Status AuthGate::Process(const InputMetadata& metadata, grpc::AuthContext* context,
                               OutputMetadata* consumed, OutputMetadata* response) {
  auto path = metadata.find(":path");
  const std::string method = path == metadata.end()
                                 ? std::string()
                                 : std::string(path->second.data(), path->second.size());
  auto principal = authorizer_->Authorize(CredentialsFrom(metadata, context), method);
  return principal.ok() ? grpc::Status::OK : ToGrpc(principal.status());
}

std::shared_ptr<grpc::ServerCredentials> TlsServerCredentials(
    const TlsMaterial& material, unsigned refresh_interval_s,
    std::shared_ptr<const Authorizer> authorizer) {
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      material.staged_key_file(), material.staged_cert_file(), material.staged_client_ca_file(),
      refresh_interval_s);
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (material.mutual()) {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  std::shared_ptr<grpc::ServerCredentials> credentials =
      grpc::experimental::TlsServerCredentials(options);
  if (authorizer != nullptr && authorizer->enabled()) {
    credentials->SetAuthMetadataProcessor(std::make_shared<AuthGate>(std::move(authorizer)));
  }
  return credentials;
}

}  // namespace ttt::auth
