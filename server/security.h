// The server's security set-up from its flags (docs/contract.md, "Authentication"): the tokens
// store, the authorizer every handler asks, the gRPC port's credentials (TLS that re-reads its
// files, with the auth gate), whether reflection is served, and the plaintext health-only
// listener for Kubernetes' probes. Built once by Server::Start.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "auth/authorizer.h"
#include "auth/tls_material.h"
#include "auth/token_store.h"

namespace ttt::server {

struct ServerOptions;

struct Security {
  std::unique_ptr<auth::TokenStore> tokens;         // null without --auth_tokens_file
  std::unique_ptr<auth::TlsMaterial> tls_material;  // null without --tls_cert_file
  std::shared_ptr<const auth::Authorizer> authorizer;
  std::shared_ptr<grpc::ServerCredentials> credentials;  // of the gRPC port
  bool tls = false;
  bool client_certificates = false;  // mutual TLS
  bool reflection = false;
};

// Reads the flags' files. INVALID_ARGUMENT for combinations that cannot work (a certificate
// without its key, a client CA without TLS, --metrics_auth without tokens, --reflection=on that
// could not be put behind authentication) and for bad files (the tokens file's errors name the
// line). Logs a loud warning when no authentication is configured.
// `on_failure` counts refused calls (tttserve_auth_failures_total); `on_reload_failure` counts
// reloads of a file ("tokens", "tls") that were not applied; either may be null.
absl::StatusOr<Security> SetUpSecurity(
    const ServerOptions& options, std::function<void(auth::AuthFailure)> on_failure,
    std::function<void(const char* file)> on_reload_failure = nullptr);

// Removes every ServerBuilder plugin (reflection) from a builder: for the health-only listener
// and for the gRPC port when reflection is off. (gRPC's reflection plugin is process-wide once
// initialised.)
void DropBuilderPlugins(grpc::ServerBuilder& builder);

// A plaintext server that serves only grpc.health.v1 (everything else: UNIMPLEMENTED), for
// Kubernetes' gRPC probes, which speak neither TLS nor tokens. Thread-safe.
class HealthOnlyServer {
 public:
  // Binds `address` (port 0 picks one). FAILED_PRECONDITION when it cannot be bound.
  // REQUIRES: grpc::EnableDefaultHealthCheckService(true) was called.
  static absl::StatusOr<std::unique_ptr<HealthOnlyServer>> Start(const std::string& address);
  ~HealthOnlyServer();  // stops at once

  grpc::Server* server() { return server_.get(); }
  int port() const { return port_; }

 private:
  HealthOnlyServer() = default;
  // Answers every other method; gRPC lets one instance serve one server. Declared before
  // server_ so that it outlives it.
  std::unique_ptr<grpc::CallbackGenericService> refuse_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace ttt::server
