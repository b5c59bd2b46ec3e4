// See client_credentials.h.
#include "auth/client_credentials.h"

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <vector>

#include <grpcpp/support/client_interceptor.h>

#include "absl/strings/str_cat.h"
#include "util/status_macros.h"

namespace ttt::auth {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(flag, "=", path, ": cannot read"));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Adds the bearer token to each call's initial metadata. (gRPC's AccessTokenCredentials would
// do the same on TLS channels only; the token also serves a plaintext port behind a mesh.)
class BearerInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit BearerInterceptor(const std::string* header) : header_(header) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->emplace("authorization", *header_);
    }
    methods->Proceed();
  }

 private:
  const std::string* header_;  // owned by the factory, which the channel keeps
};

class BearerInterceptorFactory final
    : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit BearerInterceptorFactory(const std::string& token)
      : header_(absl::StrCat("Bearer ", token)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo*) override {
    return new BearerInterceptor(&header_);
  }

 private:
  const std::string header_;
};

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> CredentialsFor(
    const ClientAuthOptions& o) {
  if (!o.tls && o.ca_file.empty() && o.cert_file.empty() && o.key_file.empty()) {
    return grpc::InsecureChannelCredentials();
  }
  if (o.cert_file.empty() != o.key_file.empty()) {
    return absl::InvalidArgumentError(
        "--cert_file and --key_file go together (the client certificate and its key)");
  }
  grpc::SslCredentialsOptions ssl;
  if (!o.ca_file.empty()) {
    ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPem(o.ca_file, "--ca_file"));
  }
  if (!o.cert_file.empty()) {
    ASSIGN_OR_RETURN(auto cert, ReadPem(o.cert_file, "--cert_file"));
    ASSIGN_OR_RETURN(auto key, ReadPem(o.key_file, "--key_file"));
    ssl.pem_cert_chain = std::move(cert);
    ssl.pem_private_key = std::move(key);
  }
  return grpc::SslCredentials(ssl);
}

}  // namespace

std::string TokenFromFlagOrEnvironment(const std::string& flag) {
  if (!flag.empty()) return flag;
  const char* env = std::getenv("TTT_TOKEN");
  return env == nullptr ? std::string() : std::string(env);
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateAuthChannel(
    const std::string& target, const ClientAuthOptions& options,
    const grpc::ChannelArguments& args) {
  ASSIGN_OR_RETURN(auto credentials, CredentialsFor(options));
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> factories;
  if (!options.token.empty()) {
    factories.push_back(std::make_unique<BearerInterceptorFactory>(options.token));
  }
  return grpc::experimental::CreateCustomChannelWithInterceptors(target, credentials, args,
                                                                 std::move(factories));
}

}  // namespace ttt::auth
