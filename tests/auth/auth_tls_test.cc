// auth/ over a real gRPC transport on loopback: TLS and mutual TLS with certificates that
// Debian's openssl makes at test time, bearer tokens, scopes, the tenant header, health without
// credentials, the gate in front of reflection, and certificate rotation while a stream is open.
// The service is a small TttService with two handlers (GetSession: read, CreateSession: write)
// that authorize exactly as the server's handlers do and answer with the tenant they got.
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <thread>

#include <gmock/gmock.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <gtest/gtest.h>

#include "auth/authorizer.h"
#include "auth/client_credentials.h"
#include "auth/grpc_auth.h"
#include "auth/scopes.h"
#include "auth/tls_material.h"
#include "auth/token_store.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "tttserve/v1/ttt_service.grpc.pb.h"
#include "util/sha256.h"

namespace ttt::auth {
namespace {

namespace fs = std::filesystem;
namespace pb = tttserve::v1;
using ::testing::HasSubstr;

// ------------------------------------------------------------------------ certificates

std::string ReadAll(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Runs one openssl command in `dir`; the test fails (and says which) when it does.
void Openssl(const fs::path& dir, const std::string& args) {
  const std::string cmd = "cd '" + dir.string() + "' && openssl " + args + " >openssl.log 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd << "\n" << ReadAll(dir / "openssl.log");
}

// A CA `name`.pem/.key, and leaf certificates it signs (EC P-256: fast to make).
void MakeCa(const fs::path& dir, const std::string& name) {
  Openssl(dir,
          "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
          "-keyout " +
              name + ".key -out " + name + ".pem -subj /CN=" + name);
}
void MakeLeaf(const fs::path& dir, const std::string& ca, const std::string& name,
              const std::string& subject, const std::string& san) {
  Openssl(dir, "req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout " + name +
                   ".key -out " + name + ".csr -subj '" + subject + "'");
  std::ofstream(dir / (name + ".ext")) << (san.empty() ? "" : "subjectAltName=" + san + "\n");
  Openssl(dir, "x509 -req -in " + name + ".csr -CA " + ca + ".pem -CAkey " + ca +
                   ".key -CAcreateserial -days 2 -out " + name + ".pem -extfile " + name + ".ext");
}

// ------------------------------------------------------------------------ test service

// Answers with the tenant the authorizer gave, in Session.tenant.
class EchoTenantService final : public pb::TttService::CallbackService {
 public:
  explicit EchoTenantService(std::shared_ptr<const Authorizer> authorizer)
      : authorizer_(std::move(authorizer)) {}

  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* ctx,
                                       const pb::GetSessionRequest*, pb::Session* out) override {
    return Answer(ctx, "GetSession", out);
  }
  grpc::ServerUnaryReactor* CreateSession(grpc::CallbackServerContext* ctx,
                                          const pb::CreateSessionRequest*,
                                          pb::Session* out) override {
    return Answer(ctx, "CreateSession", out);
  }

 private:
  grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* ctx, const char* method,
                                   pb::Session* out) {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    auto principal = AuthorizeCall(*authorizer_, *ctx, TttMethod(method));
    if (!principal.ok()) {
      reactor->Finish(grpc::Status(static_cast<grpc::StatusCode>(principal.status().code()),
                                   std::string(principal.status().message())));
    } else {
      out->set_tenant(principal->tenant);
      reactor->Finish(grpc::Status::OK);
    }
    return reactor;
  }

  std::shared_ptr<const Authorizer> authorizer_;
};

// ------------------------------------------------------------------------ fixture

class AuthTlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ =
        new fs::path(fs::temp_directory_path() / ("auth_tls_test_" + std::to_string(::getpid())));
    fs::remove_all(*dir_);
    fs::create_directories(*dir_);
    const fs::path& d = *dir_;
    MakeCa(d, "ca1");
    MakeCa(d, "ca2");
    MakeLeaf(d, "ca1", "server1", "/CN=server", "DNS:localhost,IP:127.0.0.1");
    MakeLeaf(d, "ca2", "server2", "/CN=server", "DNS:localhost,IP:127.0.0.1");
    MakeLeaf(d, "ca1", "carol", "/CN=carol", "");
    MakeLeaf(d, "ca1", "dave", "/O=admin/CN=dave", "");
    MakeLeaf(d, "ca2", "eve", "/CN=eve", "");
    // The attack of the old string split: an escaped comma in another field, `O=admin`.
    MakeLeaf(d, "ca1", "mallory", "/CN=mallory/OU=x,O=admin", "");
    MakeLeaf(d, "ca1", "dave-admin", "/CN=dave/OU=x,O=admin/L=y\\,O=admin", "");
    MakeLeaf(d, "ca1", "frank", "/CN=carol", "URI:spiffe://example.org/sa/frank");
    std::ofstream(d / "tokens.txt") << "alice " << util::Sha256Hex("alice-token") << " write\n"
                                    << "alice " << util::Sha256Hex("alice-read-token") << " read\n"
                                    << "bob " << util::Sha256Hex("bob-token") << "\n"
                                    << "carol cn:carol\n"
                                    << "dave cn:dave read\n"
                                    << "frank uri:spiffe://example.org/sa/frank read\n";
    // The served certificate lives behind a directory symlink, as a Kubernetes Secret volume:
    // rotation swaps the link atomically (key and certificate change together).
    for (const char* v : {"v1", "v2"}) fs::create_directories(d / v);
    fs::copy_file(d / "server1.pem", d / "v1/tls.crt");
    fs::copy_file(d / "server1.key", d / "v1/tls.key");
    fs::copy_file(d / "server2.pem", d / "v2/tls.crt");
    fs::copy_file(d / "server2.key", d / "v2/tls.key");
    fs::create_directory_symlink("v1", d / "current");
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
  }

  // Starts a TLS server: tokens when `tokens`, mutual TLS (client CA ca1) when `mutual`.
  // `plaintext`: no TLS at all (tokens behind a mesh that terminates TLS): the handlers alone
  // authorize, as gRPC runs no metadata processor on insecure ports.
  void StartServer(bool tokens, bool mutual, bool reflection = false, bool plaintext = false,
                   const std::string& crl = "", const fs::path& tls_dir = "") {
    const fs::path& d = *dir_;
    const fs::path files = tls_dir.empty() ? d / "current" : tls_dir;
    if (tokens) {
      auto store = TokenStore::Open({(d / "tokens.txt").string(), nullptr, 0, nullptr});
      ASSERT_TRUE(store.ok()) << store.status();
      store_ = std::move(*store);
    }
    TlsMaterialOptions tls;
    tls.cert_file = (files / "tls.crt").string();
    tls.key_file = (files / "tls.key").string();
    if (mutual)
      tls.client_ca_file = (tls_dir.empty() ? d / "ca1.pem" : tls_dir / "ca.crt").string();
    tls.crl_file = crl;
    tls.poll_interval_ms = 100;
    auto material = TlsMaterial::Open(std::move(tls));
    ASSERT_TRUE(material.ok()) << material.status();
    material_ = std::move(*material);
    AuthorizerOptions options;
    options.tokens = store_.get();
    options.client_certificates = mutual;
    options.revocations = material_.get();
    authorizer_ = std::make_shared<const Authorizer>(std::move(options));
    auto credentials = plaintext ? grpc::InsecureServerCredentials()
                                 : TlsServerCredentials(*material_, 1, authorizer_);

    grpc::EnableDefaultHealthCheckService(true);
    if (reflection) grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    service_ = std::make_unique<EchoTenantService>(authorizer_);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", credentials, &port_);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_NE(port_, 0);
    server_->GetHealthCheckService()->SetServingStatus("rotation", true);
  }

  // A TLS channel trusting `ca`, with the client certificate `client` (none when empty) and a
  // bearer token on every call (none when empty), made as the clients make theirs.
  std::shared_ptr<grpc::Channel> Channel(const std::string& ca, const std::string& client = "",
                                         const std::string& token = "") {
    ClientAuthOptions options;
    options.tls = true;
    options.ca_file = (*dir_ / (ca + ".pem")).string();
    if (!client.empty()) {
      options.cert_file = (*dir_ / (client + ".pem")).string();
      options.key_file = (*dir_ / (client + ".key")).string();
    }
    options.token = token;
    // A fresh connection per channel (no subchannel sharing between the test's channels).
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    auto channel = CreateAuthChannel("localhost:" + std::to_string(port_), options, args);
    EXPECT_TRUE(channel.ok()) << channel.status();
    return channel.ok() ? *channel : nullptr;
  }

  struct Reply {
    grpc::Status status;
    std::string tenant;
  };
  // Calls GetSession (read) or CreateSession (write) with optional token and tenant header.
  Reply Call(const std::shared_ptr<grpc::Channel>& channel, bool write, const std::string& token,
             const std::string& tenant_header = "") {
    auto stub = pb::TttService::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
    if (!tenant_header.empty()) ctx.AddMetadata("x-tenant-id", tenant_header);
    pb::Session out;
    Reply reply;
    if (write) {
      reply.status = stub->CreateSession(&ctx, pb::CreateSessionRequest(), &out);
    } else {
      reply.status = stub->GetSession(&ctx, pb::GetSessionRequest(), &out);
    }
    reply.tenant = out.tenant();
    return reply;
  }

  grpc::Status HealthCheck(const std::shared_ptr<grpc::Channel>& channel) {
    auto stub = grpc::health::v1::Health::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::health::v1::HealthCheckRequest request;
    grpc::health::v1::HealthCheckResponse response;
    grpc::Status st = stub->Check(&ctx, request, &response);
    if (st.ok() && response.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
      return grpc::Status(grpc::StatusCode::INTERNAL, "not SERVING");
    }
    return st;
  }

  static fs::path* dir_;
  std::unique_ptr<TlsMaterial> material_;  // outlives server_
  std::unique_ptr<TokenStore> store_;
  std::shared_ptr<const Authorizer> authorizer_;
  std::unique_ptr<EchoTenantService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

fs::path* AuthTlsTest::dir_ = nullptr;

// ------------------------------------------------------------------------ tests

TEST_F(AuthTlsTest, TlsServesAndPlaintextToTheTlsPortFails) {
  StartServer(/*tokens=*/true, /*mutual=*/false);
  Reply ok = Call(Channel("ca1"), false, "alice-token");
  ASSERT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(ok.tenant, "alice");

  auto plaintext =
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port_), grpc::InsecureChannelCredentials());
  Reply refused = Call(plaintext, false, "alice-token");
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  // A client that does not trust the server's CA refuses the handshake itself.
  EXPECT_EQ(Call(Channel("ca2"), false, "alice-token").status.error_code(),
            grpc::StatusCode::UNAVAILABLE);
}

TEST_F(AuthTlsTest, EachTokenReachesOnlyItsTenantOnOneConnection) {
  StartServer(true, false);
  auto channel = Channel("ca1");
  // One connection, several callers: the tenant is per call, never left over from the last.
  EXPECT_EQ(Call(channel, true, "alice-token").tenant, "alice");
  EXPECT_EQ(Call(channel, true, "bob-token").tenant, "bob");
  Reply none = Call(channel, true, "");
  EXPECT_EQ(none.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(none.status.error_message(), HasSubstr("missing credentials"));
  Reply wrong = Call(channel, false, "alice-tokem");
  EXPECT_EQ(wrong.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(wrong.status.error_message(), HasSubstr("unknown bearer token"));
  EXPECT_THAT(wrong.status.error_message(), ::testing::Not(HasSubstr("alice-tokem")));
}

TEST_F(AuthTlsTest, ReadScopeCannotCallAWriteMethod) {
  StartServer(true, false);
  auto channel = Channel("ca1");
  EXPECT_TRUE(Call(channel, false, "alice-read-token").status.ok());
  Reply write = Call(channel, true, "alice-read-token");
  EXPECT_EQ(write.status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(write.status.error_message(),
              HasSubstr("may not call CreateSession: it needs scope 'write'"));
}

TEST_F(AuthTlsTest, TenantHeaderCannotOverrideTheCredential) {
  StartServer(true, false);
  auto channel = Channel("ca1");
  Reply other = Call(channel, false, "alice-token", "bob");
  EXPECT_EQ(other.status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(other.status.error_message(),
              HasSubstr("x-tenant-id 'bob' does not match the credential's tenant 'alice'"));
  EXPECT_EQ(Call(channel, false, "alice-token", "alice").tenant, "alice");
}

TEST_F(AuthTlsTest, HealthAnswersWithoutCredentialsAndReflectionDoesNot) {
  StartServer(true, false, /*reflection=*/true);
  auto channel = Channel("ca1");
  EXPECT_TRUE(HealthCheck(channel).ok());

  // Reflection has no handler of ours: the gate refuses it before it runs. A one-message call
  // asking to list services (ServerReflectionRequest.list_services = "", field 7).
  auto reflect = [&](const std::string& token) {
    grpc::GenericStub stub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
    const std::string request("\x3a\x00", 2);
    grpc::Slice slice(request);
    grpc::ByteBuffer in(&slice, 1), out;
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    grpc::Status status;
    stub.UnaryCall(&ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                   grpc::StubOptions(), &in, &out, [&](grpc::Status s) {
                     std::lock_guard<std::mutex> lock(mu);
                     status = s;
                     done = true;
                     cv.notify_all();
                   });
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done; });
    return std::make_pair(status, out.Length());
  };
  auto anonymous = reflect("");
  EXPECT_EQ(anonymous.first.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(anonymous.first.error_message(), HasSubstr("missing credentials"));
  auto authenticated = reflect("alice-read-token");
  EXPECT_TRUE(authenticated.first.ok()) << authenticated.first.error_message();
  EXPECT_GT(authenticated.second, 0u);  // the service list
}

TEST_F(AuthTlsTest, MutualTlsTakesTheTenantFromTheCertificatesLine) {
  StartServer(/*tokens=*/true, /*mutual=*/true);
  Reply carol = Call(Channel("ca1", "carol"), true, "");
  ASSERT_TRUE(carol.status.ok()) << carol.status.error_message();
  EXPECT_EQ(carol.tenant, "carol");
  // The line says read; O=admin in the subject grants nothing.
  auto dave = Channel("ca1", "dave");
  EXPECT_EQ(Call(dave, false, "").tenant, "dave");
  EXPECT_EQ(Call(dave, true, "").status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Call(dave, false, "", "bob").status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  // A URI SAN is the identity; its CN (carol) is ignored.
  auto frank = Channel("ca1", "frank");
  EXPECT_EQ(Call(frank, false, "").tenant, "frank");
  EXPECT_EQ(Call(frank, true, "").status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  // A token on a certificate's connection names its own tenant.
  EXPECT_EQ(Call(Channel("ca1", "carol"), false, "bob-token").tenant, "bob");
  EXPECT_EQ(Call(Channel("ca1", "carol"), false, "", "bob").status.error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
}

TEST_F(AuthTlsTest, EscapedCommasInTheSubjectGrantNothing) {
  StartServer(/*tokens=*/true, /*mutual=*/true);
  Reply mallory = Call(Channel("ca1", "mallory"), false, "", "bob");
  EXPECT_EQ(mallory.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(mallory.status.error_message(),
              HasSubstr("client certificate identity 'cn:mallory' is not in the server's "
                        "credentials file"));
  EXPECT_EQ(Call(Channel("ca1", "mallory"), true, "").status.error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  auto dave = Channel("ca1", "dave-admin");  // dave's line says read, whatever O and L say
  EXPECT_EQ(Call(dave, false, "").tenant, "dave");
  EXPECT_EQ(Call(dave, true, "").status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Call(dave, false, "", "bob").status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
}

TEST_F(AuthTlsTest, MutualTlsRefusesClientsWithoutACertificateOrFromAnotherCa) {
  StartServer(false, true);
  EXPECT_EQ(Call(Channel("ca1"), false, "").status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(Call(Channel("ca1", "eve"), false, "").status.error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(HealthCheck(Channel("ca1")).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(HealthCheck(Channel("ca1", "carol")).ok());
}

TEST_F(AuthTlsTest, RotatedCertificateTakesEffectWhileAStreamStaysOpen) {
  StartServer(true, false);
  const fs::path& d = *dir_;
  auto old_channel = Channel("ca1");
  auto stub = grpc::health::v1::Health::NewStub(old_channel);
  grpc::ClientContext watch_ctx;
  grpc::health::v1::HealthCheckRequest request;
  request.set_service("rotation");
  auto watch = stub->Watch(&watch_ctx, request);
  grpc::health::v1::HealthCheckResponse update;
  ASSERT_TRUE(watch->Read(&update));
  EXPECT_EQ(update.status(), grpc::health::v1::HealthCheckResponse::SERVING);

  // Swap the served certificate to one from ca2, as a Secret update does.
  fs::create_directory_symlink("v2", d / "next");
  fs::rename(d / "next", d / "current");
  bool rotated = false;
  for (int i = 0; i < 300 && !rotated; ++i) {  // the provider looks every second
    rotated = Call(Channel("ca2"), false, "alice-token").status.ok();
    if (!rotated) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(rotated) << "new handshakes still present the old certificate";
  EXPECT_EQ(Call(Channel("ca1"), false, "alice-token").status.error_code(),
            grpc::StatusCode::UNAVAILABLE);

  // The stream opened before the rotation still delivers, and its connection still serves.
  server_->GetHealthCheckService()->SetServingStatus("rotation", false);
  ASSERT_TRUE(watch->Read(&update));
  EXPECT_EQ(update.status(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(Call(old_channel, false, "alice-token").tenant, "alice");
  watch_ctx.TryCancel();
  watch->Finish().IgnoreError();

  fs::create_directory_symlink("v1", d / "next");  // put v1 back for the other tests
  fs::rename(d / "next", d / "current");
}

TEST_F(AuthTlsTest, ClientChannelSendsItsTokenOnEveryCall) {
  StartServer(true, false);
  auto bob = Channel("ca1", "", "bob-token");
  EXPECT_EQ(Call(bob, true, "").tenant, "bob");
  EXPECT_EQ(Call(bob, false, "").tenant, "bob");
  ::setenv("TTT_TOKEN", "alice-token", 1);
  EXPECT_EQ(TokenFromFlagOrEnvironment(""), "alice-token");
  EXPECT_EQ(TokenFromFlagOrEnvironment("bob-token"), "bob-token");
  ::unsetenv("TTT_TOKEN");
  EXPECT_EQ(TokenFromFlagOrEnvironment(""), "");
}

TEST_F(AuthTlsTest, TokensAlsoWorkOnAPlaintextPort) {
  StartServer(/*tokens=*/true, /*mutual=*/false, /*reflection=*/false, /*plaintext=*/true);
  ClientAuthOptions options;
  options.token = "alice-read-token";
  auto channel = CreateAuthChannel("127.0.0.1:" + std::to_string(port_), options);
  ASSERT_TRUE(channel.ok());
  EXPECT_EQ(Call(*channel, false, "").tenant, "alice");
  EXPECT_EQ(Call(*channel, true, "").status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  auto anonymous =
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port_), grpc::InsecureChannelCredentials());
  EXPECT_EQ(Call(anonymous, false, "").status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(HealthCheck(anonymous).ok());
}

TEST(ClientCredentialsTest, RefusesACertificateWithoutItsKeyOrAnUnreadableFile) {
  ClientAuthOptions options;
  options.cert_file = "/nonexistent/client.pem";
  auto half = CreateAuthChannel("localhost:1", options);
  EXPECT_EQ(half.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(half.status().message()), HasSubstr("--cert_file and --key_file go"));
  options.cert_file.clear();
  options.ca_file = "/nonexistent/ca.pem";
  auto unreadable = CreateAuthChannel("localhost:1", options);
  EXPECT_EQ(unreadable.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(unreadable.status().message()),
              HasSubstr("--ca_file=/nonexistent/ca.pem: cannot read"));
}

TEST_F(AuthTlsTest, BadCertificateFilesFailAtStartNamingTheFlag) {
  TlsMaterialOptions files;
  files.cert_file = (*dir_ / "missing.pem").string();
  files.key_file = (*dir_ / "server1.key").string();
  files.poll_interval_ms = 0;
  auto missing = TlsMaterial::Open(files);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("--tls_cert_file="));
  files.cert_file = (*dir_ / "tokens.txt").string();
  auto not_pem = TlsMaterial::Open(files);
  EXPECT_THAT(std::string(not_pem.status().message()), HasSubstr("not a PEM file"));
  files.cert_file = (*dir_ / "server2.pem").string();  // server1's key
  auto mismatch = TlsMaterial::Open(files);
  EXPECT_THAT(std::string(mismatch.status().message()),
              HasSubstr("the key does not match --tls_cert_file's certificate"));
  files.cert_file = (*dir_ / "server1.pem").string();
  files.crl_file = (*dir_ / "server1.pem").string();
  auto crl_alone = TlsMaterial::Open(files);
  EXPECT_THAT(std::string(crl_alone.status().message()), HasSubstr("needs --tls_client_ca_file"));
}

// Writes `text` to `path` by rename, as a Secret update replaces a file.
void Replace(const fs::path& path, const std::string& text) {
  std::ofstream(path.string() + ".new", std::ios::binary) << text;
  fs::rename(path.string() + ".new", path);
}

bool Eventually(const std::function<bool()>& done) {
  for (int i = 0; i < 300 && !done(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return done();
}

TEST_F(AuthTlsTest, BrokenTlsFilesAreNotAppliedAndTheLastGoodSetServes) {
  const fs::path live = *dir_ / "live-broken";
  fs::create_directories(live);
  fs::copy_file(*dir_ / "server1.pem", live / "tls.crt");
  fs::copy_file(*dir_ / "server1.key", live / "tls.key");
  fs::copy_file(*dir_ / "ca1.pem", live / "ca.crt");
  StartServer(true, true, false, false, "", live);
  ASSERT_EQ(Call(Channel("ca1", "carol"), false, "").tenant, "carol");

  Replace(live / "ca.crt", "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n");
  ASSERT_TRUE(Eventually([&] { return material_->failed_reloads() >= 1; }));
  // A certificate replaced before its key: not applied either.
  fs::copy_file(*dir_ / "server2.pem", live / "tls.crt", fs::copy_options::overwrite_existing);
  ASSERT_TRUE(Eventually([&] { return material_->failed_reloads() >= 2; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // past the provider's refresh
  EXPECT_EQ(Call(Channel("ca1", "carol"), false, "").tenant, "carol");

  // The rest of the rotation arrives: the good new set applies.
  fs::copy_file(*dir_ / "server2.key", live / "tls.key", fs::copy_options::overwrite_existing);
  fs::copy_file(*dir_ / "ca1.pem", live / "ca.crt", fs::copy_options::overwrite_existing);
  EXPECT_TRUE(Eventually([&] { return Call(Channel("ca2", "carol"), false, "").status.ok(); }));
}

// `openssl ca` over ca1 with a throw-away database, to revoke certificates and write CRLs.
void GenerateCrl(const fs::path& dir, const fs::path& out) {
  Openssl(dir, "ca -config ca.cnf -keyfile ca1.key -cert ca1.pem -gencrl -out " + out.string());
}

TEST_F(AuthTlsTest, RevokedCertificateIsRefusedOnItsNextCallAndTheCrlReloads) {
  const fs::path d = *dir_;
  std::ofstream(d / "ca.cnf") << "[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\n"
                                 "crlnumber = crlnumber\ndefault_md = sha256\n"
                                 "default_crl_days = 2\n";
  std::ofstream(d / "index.txt").close();
  std::ofstream(d / "crlnumber") << "01\n";
  GenerateCrl(d, d / "empty.crl");
  fs::copy_file(d / "empty.crl", d / "clients.crl", fs::copy_options::overwrite_existing);
  StartServer(true, true, false, false, (d / "clients.crl").string());
  auto carol = Channel("ca1", "carol");  // one connection, before and after the revocation
  ASSERT_EQ(Call(carol, false, "").tenant, "carol");

  Openssl(d, "ca -config ca.cnf -keyfile ca1.key -cert ca1.pem -revoke carol.pem");
  GenerateCrl(d, d / "next.crl");
  fs::rename(d / "next.crl", d / "clients.crl");
  ASSERT_TRUE(Eventually([&] { return material_->revoked_count() == 1; }));
  Reply revoked = Call(carol, false, "");
  EXPECT_EQ(revoked.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(revoked.status.error_message(), HasSubstr("is revoked"));
  EXPECT_EQ(Call(Channel("ca1", "carol"), false, "").status.error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Call(Channel("ca1", "dave"), false, "").tenant, "dave");

  // A CRL that does not parse, or one from another CA, is not applied: carol stays revoked.
  Replace(d / "clients.crl", "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n");
  ASSERT_TRUE(Eventually([&] { return material_->failed_reloads() >= 1; }));
  EXPECT_EQ(material_->revoked_count(), 1u);
  EXPECT_EQ(Call(carol, false, "").status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

}  // namespace
}  // namespace ttt::auth
