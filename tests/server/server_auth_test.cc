// The server's security flags on the real server (golden llama fixture from TTT_GOLDEN_DIR):
// combinations that cannot work refused at start with the flag named, the plaintext health-only
// listener, and tokens naming the tenant of the real service's calls. TLS end to end with the
// real binary: tests/e2e/auth_e2e_test.py.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "coord/etcd_client.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "server/server.h"
#include "tests/testing/etcd.h"
#include "tests/testing/server_fixture.h"
#include "tttserve/v1/ttt_service.grpc.pb.h"
#include "util/sha256.h"

namespace ttt::server {
namespace {

namespace fs = std::filesystem;
namespace pb = tttserve::v1;
using ::testing::HasSubstr;

class ServerAuthTest : public ttt::testing::ServerFixture {
 protected:
  void SetUp() override {
    ServerFixture::SetUp();
    fs::create_directories(dir_);
    options_.checkpoint_on_shutdown = false;
    tokens_ = (dir_ / "tokens").string();
    std::ofstream(tokens_) << "alice " << util::Sha256Hex("alice-token") << "\n"
                           << "alice " << util::Sha256Hex("alice-read") << " read\n"
                           << "bob " << util::Sha256Hex("bob-token") << "\n";
  }
  void ExpectRefused(absl::StatusCode code, const std::string& fragment) {
    auto s = Server::Start(options_);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), code) << s.status();
    EXPECT_THAT(std::string(s.status().message()), HasSubstr(fragment));
  }

  std::string tokens_;
};

TEST_F(ServerAuthTest, RefusesSecurityFlagsThatCannotWork) {
  ServerOptions base = options_;
  options_.tls_cert_file = (dir_ / "cert.pem").string();
  ExpectRefused(absl::StatusCode::kInvalidArgument,
                "--tls_cert_file and --tls_key_file go together");
  options_ = base;
  options_.tls_client_ca_file = (dir_ / "ca.pem").string();
  ExpectRefused(absl::StatusCode::kInvalidArgument, "--tls_client_ca_file (mutual TLS) needs");
  options_ = base;
  options_.metrics_auth = true;
  ExpectRefused(absl::StatusCode::kInvalidArgument, "--metrics_auth checks bearer tokens");
  options_ = base;
  options_.reflection = "yes";
  ExpectRefused(absl::StatusCode::kInvalidArgument, "--reflection=yes: must be auto, on or off");
  options_ = base;
  options_.auth_tokens_file = tokens_;
  options_.reflection = "on";
  ExpectRefused(absl::StatusCode::kInvalidArgument,
                "--reflection=on cannot be put behind bearer tokens on a plaintext port");
  options_ = base;
  options_.auth_tokens_file = (dir_ / "missing").string();
  ExpectRefused(absl::StatusCode::kNotFound, "cannot read the tokens file");
  options_ = base;
  std::ofstream(dir_ / "bad-tokens") << "# ok\nal/ice " << std::string(64, 'a') << "\n";
  options_.auth_tokens_file = (dir_ / "bad-tokens").string();
  ExpectRefused(absl::StatusCode::kInvalidArgument, "bad-tokens:2: tenant id (x-tenant-id)");
  options_ = base;
  options_.tls_cert_file = tokens_;
  options_.tls_key_file = tokens_;
  ExpectRefused(absl::StatusCode::kInvalidArgument, "not a PEM file");
  options_ = base;
  options_.metrics_listen = "127.0.0.1:0";
  options_.metrics_tls_cert_file = tokens_;
  ExpectRefused(absl::StatusCode::kInvalidArgument,
                "--metrics_tls_cert_file and --metrics_tls_key_file go together");
  options_.metrics_tls_key_file = tokens_;
  ExpectRefused(absl::StatusCode::kInvalidArgument,
                "libmicrohttpd refused the certificate and key");
}

TEST_F(ServerAuthTest, HealthListenerServesOnlyHealth) {
  options_.health_listen = "127.0.0.1:0";
  auto s = Server::Start(options_);
  ASSERT_TRUE(s.ok()) << s.status();
  server_ = std::move(*s);
  ASSERT_GT(server_->health_port(), 0);
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->health_port()),
                                     grpc::InsecureChannelCredentials());
  auto health = grpc::health::v1::Health::NewStub(channel);
  for (const char* service : {"", "tttserve.v1.TttService"}) {
    grpc::ClientContext ctx;
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(service);
    grpc::health::v1::HealthCheckResponse resp;
    ASSERT_TRUE(health->Check(&ctx, req, &resp).ok()) << service;
    EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  }
  auto stub = pb::TttService::NewStub(channel);
  grpc::ClientContext ctx;
  pb::ListSessionsResponse list;
  grpc::Status st = stub->ListSessions(&ctx, pb::ListSessionsRequest(), &list);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_THAT(st.error_message(), HasSubstr("this port serves only grpc.health.v1"));

  server_->Shutdown();  // the listener reports NOT_SERVING while the gRPC port drains, then goes
  grpc::ClientContext after;
  after.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::health::v1::HealthCheckResponse resp;
  EXPECT_FALSE(health->Check(&after, grpc::health::v1::HealthCheckRequest(), &resp).ok());
}

TEST_F(ServerAuthTest, HealthListenerAddressInUseIsRefused) {
  options_.health_listen = "127.0.0.1:0";
  auto first = Server::Start(options_);
  ASSERT_TRUE(first.ok()) << first.status();
  options_.health_listen = "127.0.0.1:" + std::to_string((*first)->health_port());
  ExpectRefused(absl::StatusCode::kFailedPrecondition, "cannot listen on --health_listen=");
}

// Issue 13 with authentication: the tenant comes from the credential, and a client-chosen id
// and the shared store are both scoped by it, so no id and no store file lets one tenant reach
// another tenant's session (nor take it over on another replica).
TEST_F(ServerAuthTest, ChosenIdsAndTheSharedStoreStayWithinTheCredentialsTenant) {
  testing::TempDir etcd_dir("server_auth_test");
  testing::EtcdCluster etcd(1, etcd_dir.path());
  ASSERT_NO_FATAL_FAILURE(etcd.Start());
  options_.auth_tokens_file = tokens_;
  options_.sync_durability = true;
  options_.checkpoint_on_shutdown = true;  // a shutdown hands the sessions over
  auto a = Server::Start(testing::OnCluster(options_, etcd, "replica-a"));
  ASSERT_TRUE(a.ok()) << a.status();
  auto b = Server::Start(testing::OnCluster(options_, etcd, "replica-b"));
  ASSERT_TRUE(b.ok()) << b.status();
  auto stub = [](const std::unique_ptr<Server>& s) {
    return pb::TttService::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(s->port()),
                                                       grpc::InsecureChannelCredentials()));
  };
  auto stub_a = stub(*a);
  auto stub_b = stub(*b);
  auto ctx = [](const std::string& token, const std::string& tenant = "") {
    auto c = std::make_unique<grpc::ClientContext>();
    c->AddMetadata("authorization", "Bearer " + token);
    if (!tenant.empty()) c->AddMetadata("x-tenant-id", tenant);
    return c;
  };
  pb::CreateSessionRequest create;
  create.set_session_id("doc");
  pb::Session s;
  ASSERT_TRUE(stub_a->CreateSession(ctx("alice-token").get(), create, &s).ok());
  {
    auto c = ctx("alice-token");
    auto stream = stub_a->Ingest(c.get());
    pb::IngestRequest req;
    req.set_session_id("doc");
    for (int32_t t : {5, 6, 7}) req.add_token_ids(t);
    req.set_end_of_document(true);  // sync durability: acknowledged once in the store
    ASSERT_TRUE(stream->Write(req));
    stream->WritesDone();
    pb::IngestResponse r;
    while (stream->Read(&r)) {
    }
    ASSERT_TRUE(stream->Finish().ok());
  }
  // Bob's "doc" is his own, on either replica; alice's stays hers.
  ASSERT_TRUE(stub_b->CreateSession(ctx("bob-token").get(), create, &s).ok());
  pb::GetSessionRequest get;
  get.set_session_id("doc");
  ASSERT_TRUE(stub_b->GetSession(ctx("bob-token").get(), get, &s).ok());
  EXPECT_EQ(s.counters().tokens_received(), 0);
  // Replica-a holds alice's "doc"; bob asking it gets his own, which replica-b hands over (the
  // asking replica waits for the handover), not alice's.
  grpc::Status held = stub_a->GetSession(ctx("bob-token").get(), get, &s);
  ASSERT_TRUE(held.ok()) << held.error_message();
  EXPECT_EQ(s.tenant(), "bob");
  EXPECT_EQ(s.counters().tokens_received(), 0);
  // Naming alice's tenant with bob's credential is refused before any session is looked at.
  grpc::Status st = stub_b->GetSession(ctx("bob-token", "alice").get(), get, &s);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  // Alice on the other replica: her session, handed over by replica-a, not bob's.
  st = stub_b->GetSession(ctx("alice-token").get(), get, &s);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(s.tenant(), "alice");
  EXPECT_EQ(s.counters().tokens_received(), 3);
  // A read-scoped credential of alice's cannot create over her id either.
  st = stub_b->CreateSession(ctx("alice-read").get(), create, &s);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);

  stub_a.reset();
  a->reset();  // hands alice's session over through the store
  st = stub_b->GetSession(ctx("alice-token").get(), get, &s);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(s.counters().tokens_received(), 3);
  ASSERT_TRUE(stub_b->GetSession(ctx("bob-token").get(), get, &s).ok());
  EXPECT_EQ(s.counters().tokens_received(), 0);
}

}  // namespace
}  // namespace ttt::server
