// server/access_log.h on the real server in-process: one access line per call with its method,
// tenant, session, code and request id (a client's kept, a bad one replaced, the id returned in
// the trailers); tttserve_requests_in_flight while a stream is open; the method labels that keep
// the metrics' cardinality bounded; the message-type table against the service's descriptor.
#include "server/access_log.h"

#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/testing/server_fixture.h"
#include "util/log.h"

namespace ttt::server {
namespace {

namespace pb = tttserve::v1;
using nlohmann::json;

TEST(AccessLogTableTest, MessageTypesMatchTheServiceDescriptor) {
  EXPECT_TRUE(internal::CheckAccessLogMethodTable().ok()) << internal::CheckAccessLogMethodTable();
}

TEST(AccessLogTableTest, MethodLabelsAreABoundedSet) {
  EXPECT_EQ(MethodLabel("/tttserve.v1.TttService/Score"), "Score");
  EXPECT_EQ(MethodLabel("/tttserve.v1.TttService/NoSuchMethod"), "unknown");
  EXPECT_EQ(MethodLabel("/grpc.health.v1.Health/Check"), "grpc.health.v1.Health/Check");
  EXPECT_EQ(MethodLabel("/attacker.Chosen/Name1"), "unknown");
}

class AccessLogTest : public ttt::testing::ServerFixture {
 protected:
  void SetUp() override {
    ServerFixture::SetUp();
    log_ = std::tmpfile();
    ASSERT_NE(log_, nullptr);
    util::ConfigureLog({util::LogFormat::kJson, util::LogLevel::kInfo, log_});
    options_.metrics_listen = "127.0.0.1:0";
    auto s = Server::Start(options_);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    stub_ = pb::TttService::NewStub(grpc::CreateChannel(
        "127.0.0.1:" + std::to_string(server_->port()), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    ServerFixture::TearDown();
    util::ConfigureLog({});  // back to stderr before the file goes
    std::fclose(log_);
  }

  // The access line ("component":"access") whose request_id is `id`; null when none.
  json AccessLine(const std::string& id) {
    std::fflush(log_);
    std::rewind(log_);
    std::string all;
    char buf[4096];
    for (size_t n; (n = std::fread(buf, 1, sizeof(buf), log_)) > 0;) all.append(buf, n);
    std::fseek(log_, 0, SEEK_END);
    size_t start = 0;
    for (size_t end; (end = all.find('\n', start)) != std::string::npos; start = end + 1) {
      json line = json::parse(all.substr(start, end - start));
      if (line["component"] == "access" && line["request_id"] == id) return line;
    }
    return nullptr;
  }

  static std::string RequestIdOf(const grpc::ClientContext& ctx) {
    const auto& trailers = ctx.GetServerTrailingMetadata();
    auto it = trailers.find(kRequestIdHeader);
    return it == trailers.end() ? "" : std::string(it->second.data(), it->second.size());
  }

  // The value of tttserve_requests_in_flight{method="`method`"}, -1 without the sample.
  double InFlight(const std::string& method) {
    const std::string body = ttt::testing::ScrapeMetrics(server_->metrics_port());
    const std::string sample = "tttserve_requests_in_flight{method=\"" + method + "\"} ";
    const size_t at = body.find(sample);
    return at == std::string::npos ? -1 : std::stod(body.substr(at + sample.size()));
  }

  std::FILE* log_ = nullptr;
};

TEST_F(AccessLogTest, AClientsRequestIdIsKeptReturnedAndLoggedWithTheCall) {
  auto ctx = Ctx("acme");
  ctx->AddMetadata(kRequestIdHeader, "req-42.a_b:c");
  pb::Session created;
  ASSERT_TRUE(stub_->CreateSession(ctx.get(), pb::CreateSessionRequest(), &created).ok());
  EXPECT_EQ(RequestIdOf(*ctx), "req-42.a_b:c");
  const json line = AccessLine("req-42.a_b:c");
  ASSERT_FALSE(line.is_null());
  EXPECT_EQ(line["level"], "info");
  EXPECT_EQ(line["method"], "CreateSession");
  EXPECT_EQ(line["tenant"], "acme");
  EXPECT_EQ(line["created"], created.session_id());
  EXPECT_EQ(line["code"], "OK");
  EXPECT_EQ(line["messages_in"], 1);
  EXPECT_EQ(line["messages_out"], 1);
  EXPECT_EQ(line["bytes_out"], created.ByteSizeLong());
  EXPECT_GE(line["duration_ms"].get<double>(), 0);
  EXPECT_NE(line["peer"].get<std::string>().find("127.0.0.1"), std::string::npos);
}

TEST_F(AccessLogTest, AFailedCallIsLoggedWithItsCodeAndAGeneratedRequestId) {
  // None, one with characters outside [A-Za-z0-9._:-], one over 128 characters.
  for (const std::string& sent :
       {std::string(), std::string("a b/c=\"d\""), std::string(129, 'x')}) {
    auto ctx = Ctx("acme");
    if (!sent.empty()) ctx->AddMetadata(kRequestIdHeader, sent);
    pb::GetSessionRequest req;
    req.set_session_id("s-0000000000000000");
    pb::Session out;
    EXPECT_EQ(stub_->GetSession(ctx.get(), req, &out).error_code(), grpc::StatusCode::NOT_FOUND);
    const std::string id = RequestIdOf(*ctx);
    EXPECT_EQ(id.size(), 32u) << id;  // generated: 128 random bits in hex
    const json line = AccessLine(id);
    ASSERT_FALSE(line.is_null()) << id;
    EXPECT_EQ(line["method"], "GetSession");
    EXPECT_EQ(line["session"], "s-0000000000000000");
    EXPECT_EQ(line["code"], "NOT_FOUND");
  }
}

TEST_F(AccessLogTest, AnOpenStreamIsInFlightUntilItEnds) {
  pb::Session created;
  ASSERT_TRUE(stub_->CreateSession(Ctx().get(), pb::CreateSessionRequest(), &created).ok());
  auto ctx = Ctx();
  ctx->AddMetadata(kRequestIdHeader, "ingest-1");
  auto stream = stub_->Ingest(ctx.get());
  pb::IngestRequest msg;
  msg.set_session_id(created.session_id());
  msg.add_token_ids(5);
  msg.add_token_ids(6);
  msg.set_flush(true);
  ASSERT_TRUE(stream->Write(msg));
  pb::IngestResponse answer;
  ASSERT_TRUE(stream->Read(&answer));  // the server has the call: it is in flight
  EXPECT_EQ(InFlight("Ingest"), 1);
  stream->WritesDone();
  while (stream->Read(&answer)) {
  }
  ASSERT_TRUE(stream->Finish().ok());
  // The gauge drops when gRPC destroys the call, just after the client saw its status.
  for (int i = 0; i < 1000 && InFlight("Ingest") != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(InFlight("Ingest"), 0);
  const json line = AccessLine("ingest-1");
  ASSERT_FALSE(line.is_null());
  EXPECT_EQ(line["session"], created.session_id());
  EXPECT_EQ(line["messages_in"], 1);
  EXPECT_EQ(line["bytes_in"], msg.ByteSizeLong());
  EXPECT_GE(line["messages_out"].get<int>(), 1);
  EXPECT_EQ(line["tenant"], "default");
}

}  // namespace
}  // namespace ttt::server
