// See security.h.
#include "server/security.h"

#include <chrono>
#include <cstdio>
#include <vector>

#include <grpcpp/impl/server_builder_option.h>
#include <grpcpp/support/server_callback.h>

#include "absl/strings/str_cat.h"
#include "auth/grpc_auth.h"
#include "server/server.h"
#include "session/session.h"
#include "util/log.h"

namespace ttt::server {
namespace {

class NoPlugins final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->clear();
  }
};

// Answers every method the health listener has no service for.
class OnlyHealth final : public grpc::CallbackGenericService {
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext*) override {
    class Refuse final : public grpc::ServerGenericBidiReactor {
     public:
      Refuse() {
        Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                            "this port serves only grpc.health.v1 (--health_listen)"));
      }
      void OnDone() override { delete this; }
    };
    return new Refuse();
  }
};

absl::Status CheckCombinations(const ServerOptions& o) {
  if (o.tls_cert_file.empty() != o.tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls_cert_file and --tls_key_file go together (the certificate and its key)");
  }
  if (!o.tls_client_ca_file.empty() && o.tls_cert_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls_client_ca_file (mutual TLS) needs --tls_cert_file and --tls_key_file");
  }
  if (!o.tls_client_ca_file.empty() && o.auth_tokens_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls_client_ca_file (mutual TLS) needs --auth_tokens_file: a client certificate "
        "authenticates only through its line there ('<tenant> cn:<subject CN> [scopes]' or "
        "'<tenant> uri:<URI SAN> [scopes]')");
  }
  if (o.metrics_auth && o.auth_tokens_file.empty()) {
    return absl::InvalidArgumentError(
        "--metrics_auth checks bearer tokens of scope 'metrics': it needs --auth_tokens_file");
  }
  if (o.reflection != "auto" && o.reflection != "on" && o.reflection != "off") {
    return absl::InvalidArgumentError(
        absl::StrCat("--reflection=", o.reflection, ": must be auto, on or off"));
  }
  if (o.tls_refresh_s < 1) {
    return absl::InvalidArgumentError("--tls_refresh_s must be at least 1");
  }
  return absl::OkStatus();
}

}  // namespace

void DropBuilderPlugins(grpc::ServerBuilder& builder) {
  builder.SetOption(std::make_unique<NoPlugins>());
}

absl::StatusOr<Security> SetUpSecurity(const ServerOptions& o,
                                       std::function<void(auth::AuthFailure)> on_failure,
                                       std::function<void(const char* file)> on_reload_failure) {
  absl::Status combos = CheckCombinations(o);
  if (!combos.ok()) return combos;
  auto counted = [on_reload_failure](const char* file) {
    return [on_reload_failure, file](bool ok) {
      if (!ok && on_reload_failure) on_reload_failure(file);
    };
  };
  Security s;
  if (!o.auth_tokens_file.empty()) {
    auth::TokenStoreOptions to;
    to.path = o.auth_tokens_file;
    to.validate_tenant = session::SessionManager::ValidateTenant;
    to.on_reload = counted("tokens");
    auto tokens = auth::TokenStore::Open(std::move(to));
    if (!tokens.ok()) return tokens.status();
    s.tokens = std::move(*tokens);
  }
  s.tls = !o.tls_cert_file.empty();
  s.client_certificates = !o.tls_client_ca_file.empty();
  if (s.tls) {
    auth::TlsMaterialOptions tm;
    tm.cert_file = o.tls_cert_file;
    tm.key_file = o.tls_key_file;
    tm.client_ca_file = o.tls_client_ca_file;
    tm.crl_file = o.tls_crl_file;
    tm.poll_interval_ms = 1000;  // a stat() per file; gRPC re-reads the staged copies
    tm.on_reload = counted("tls");
    auto material = auth::TlsMaterial::Open(std::move(tm));
    if (!material.ok()) return material.status();
    s.tls_material = std::move(*material);
  }
  auth::AuthorizerOptions ao;
  ao.tokens = s.tokens.get();
  ao.client_certificates = s.client_certificates;
  ao.revocations = s.tls_material.get();
  ao.validate_tenant = session::SessionManager::ValidateTenant;
  ao.on_failure = std::move(on_failure);
  s.authorizer = std::make_shared<const auth::Authorizer>(std::move(ao));
  s.credentials = s.tls ? auth::TlsServerCredentials(
                              *s.tls_material, static_cast<unsigned>(o.tls_refresh_s), s.authorizer)
                        : grpc::InsecureServerCredentials();

  // Reflection can be put behind authentication only where the gate runs: TLS ports.
  const bool gated = !s.authorizer->enabled() || s.tls;
  if (o.reflection == "on" && !gated) {
    return absl::InvalidArgumentError(
        "--reflection=on cannot be put behind bearer tokens on a plaintext port (gRPC runs no "
        "authentication gate there): add --tls_cert_file, or pass --reflection=off");
  }
  s.reflection = o.reflection == "on" || (o.reflection == "auto" && gated);

  if (!s.authorizer->enabled()) {
    util::LogWarning(
        "security",
        absl::StrCat("WARNING: no authentication configured: anyone who can reach ", o.listen,
                     " acts as any tenant it names in x-tenant-id. Set "
                     "--auth_tokens_file and/or --tls_client_ca_file "
                     "(docs/contract.md, \"Authentication\")."));
  } else if (!s.tls && s.tokens) {
    util::LogWarning("security", absl::StrCat("bearer tokens travel in plaintext to ", o.listen,
                                              ": add --tls_cert_file unless a mesh encrypts "
                                              "this hop."));
  }
  return s;
}

absl::StatusOr<std::unique_ptr<HealthOnlyServer>> HealthOnlyServer::Start(
    const std::string& address) {
  std::unique_ptr<HealthOnlyServer> h(new HealthOnlyServer());
  h->refuse_ = std::make_unique<OnlyHealth>();
  grpc::ServerBuilder builder;
  DropBuilderPlugins(builder);
  // No SO_REUSEPORT (gRPC's default): another process on the port would answer our probes.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &h->port_);
  builder.RegisterCallbackGenericService(h->refuse_.get());
  h->server_ = builder.BuildAndStart();
  if (h->server_ == nullptr || h->port_ == 0) {
    return absl::FailedPreconditionError(absl::StrCat("cannot listen on --health_listen=", address,
                                                      " (address in use or invalid?)"));
  }
  return h;
}

HealthOnlyServer::~HealthOnlyServer() {
  if (server_) server_->Shutdown(std::chrono::system_clock::now());
}

}  // namespace ttt::server
