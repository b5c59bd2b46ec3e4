// Per-tenant quotas (--quotas_file) on the real server and its real service (golden llama
// fixture from TTT_GOLDEN_DIR), tenants by x-tenant-id: each quota refused at its limit with the
// quota, limit and use named, other tenants unaffected, nothing lost by a refused call, streams
// released when a call is cancelled, the ingest rate's retry trailers, the file reloaded (a bad
// one keeps the last good limits), and usage in GetServerInfo. The real binary with
// authentication and /metrics: tests/e2e/quotas_e2e_test.py.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "server/server.h"
#include "tests/testing/server_fixture.h"
#include "tttserve/v1/ttt_service.grpc.pb.h"

namespace ttt::server {
namespace {

namespace fs = std::filesystem;
namespace pb = tttserve::v1;
using ::testing::HasSubstr;

class ServerQuotasTest : public ttt::testing::ServerFixture {
 protected:
  void SetUp() override {
    ServerFixture::SetUp();
    fs::create_directories(dir_);
    quotas_ = (dir_ / "quotas").string();
    options_.checkpoint_on_shutdown = false;
    options_.quotas_file = quotas_;
    options_.quotas_poll_ms = 20;
  }
  // Replaces the quotas file at once (as a ConfigMap update does).
  void WriteQuotas(const std::string& text) {
    std::ofstream(quotas_ + ".tmp") << text;
    fs::rename(quotas_ + ".tmp", quotas_);
  }
  void Start(const std::string& quotas) {
    WriteQuotas(quotas);
    auto s = Server::Start(options_);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    stub_ = pb::TttService::NewStub(server_->InProcessChannel());
  }
  grpc::Status Create(const std::string& tenant, std::string* id = nullptr) {
    pb::Session s;
    grpc::Status st = stub_->CreateSession(Ctx(tenant).get(), pb::CreateSessionRequest(), &s);
    if (id != nullptr) *id = s.session_id();
    return st;
  }
  grpc::Status Checkpoint(const std::string& tenant, const std::string& session,
                          const std::string& checkpoint, pb::CheckpointInfo* info = nullptr) {
    pb::CheckpointRequest req;
    req.set_session_id(session);
    req.set_checkpoint_id(checkpoint);
    pb::CheckpointInfo out;
    grpc::Status st = stub_->Checkpoint(Ctx(tenant).get(), req, info ? info : &out);
    return st;
  }
  // Ingests `n` token ids in one message; the response (when one came) in `resp`.
  grpc::Status IngestOnce(const std::string& tenant, const std::string& session, int n,
                          grpc::ClientContext* ctx, pb::IngestResponse* resp) {
    ctx->AddMetadata("x-tenant-id", tenant);
    auto stream = stub_->Ingest(ctx);
    pb::IngestRequest req;
    req.set_session_id(session);
    for (int i = 0; i < n; ++i) req.add_token_ids(1 + i % 90);
    stream->Write(req);
    stream->WritesDone();
    while (stream->Read(resp)) {
    }
    return stream->Finish();
  }
  // The tenant's row of GetServerInfo (without authentication every caller is an admin and
  // sees every listed tenant and "*"; tests/e2e/quotas_e2e_test.py checks a tenant's own view).
  pb::TenantUsage UsageOf(const std::string& tenant) {
    pb::ServerInfo info;
    EXPECT_TRUE(stub_->GetServerInfo(Ctx(tenant).get(), pb::GetServerInfoRequest(), &info).ok());
    for (const pb::TenantUsage& row : info.tenant_usage()) {
      if (row.tenant() == tenant) return row;
    }
    ADD_FAILURE() << "no usage row for " << tenant;
    return pb::TenantUsage();
  }
  static void ExpectExhausted(const grpc::Status& st, const std::string& fragment) {
    ttt::testing::ExpectStatus(st, grpc::StatusCode::RESOURCE_EXHAUSTED, fragment);
  }

  std::string quotas_;
};

TEST_F(ServerQuotasTest, LiveSessionsRefusedForEveryWayToMakeOneOthersUnaffected) {
  Start("alice live_sessions=2\n");
  std::string first;
  ASSERT_TRUE(Create("alice", &first).ok());
  ASSERT_TRUE(Checkpoint("alice", first, "c1").ok());
  ASSERT_TRUE(Create("alice").ok());
  const std::string why = "tenant 'alice' has 2 live sessions, at its quota of 2 (live_sessions)";
  ExpectExhausted(Create("alice"), why);

  pb::ForkRequest fork;
  fork.set_session_id(first);
  pb::Session out;
  ExpectExhausted(stub_->Fork(Ctx("alice").get(), fork, &out), why);
  pb::RestoreRequest restore;
  restore.set_checkpoint_id("c1");
  ExpectExhausted(stub_->Restore(Ctx("alice").get(), restore, &out), why);
  restore.set_session_id(first);  // over an existing session: no new one, allowed
  EXPECT_TRUE(stub_->Restore(Ctx("alice").get(), restore, &out).ok());
  {
    pb::Session imported;
    auto ctx = Ctx("alice");
    auto writer = stub_->ImportSession(ctx.get(), &imported);
    writer->WritesDone();
    ExpectExhausted(writer->Finish(), why);
  }
  EXPECT_TRUE(Create("bob").ok());  // not listed, no "*": unlimited

  pb::ListSessionsResponse list;
  ASSERT_TRUE(stub_->ListSessions(Ctx("alice").get(), pb::ListSessionsRequest(), &list).ok());
  EXPECT_EQ(list.sessions_size(), 2);  // nothing refused left a session behind or took one
  pb::DeleteSessionRequest del;
  del.set_session_id(first);
  pb::DeleteSessionResponse deleted;
  ASSERT_TRUE(stub_->DeleteSession(Ctx("alice").get(), del, &deleted).ok());
  EXPECT_TRUE(Create("alice").ok());

  const pb::TenantUsage usage = UsageOf("alice");
  EXPECT_EQ(usage.tenant(), "alice");
  EXPECT_EQ(usage.live_sessions(), 2);
  EXPECT_EQ(usage.limits().at("live_sessions"), 2);
  EXPECT_EQ(usage.refusals().at("live_sessions"), 4);
}

TEST_F(ServerQuotasTest, CheckpointBytesRefusedAndTheFileReloads) {
  Start("* checkpoint_bytes=1Gi\n");
  std::string id;
  ASSERT_TRUE(Create("alice", &id).ok());
  pb::IngestResponse resp;
  grpc::ClientContext ctx;
  ASSERT_TRUE(IngestOnce("alice", id, 20, &ctx, &resp).ok());
  pb::CheckpointInfo c1;
  ASSERT_TRUE(Checkpoint("alice", id, "c1", &c1).ok());
  ASSERT_GT(c1.size_bytes(), 0);

  // Room for one and a half checkpoints: a second is refused, replacing the first is not.
  const int64_t limit = c1.size_bytes() * 3 / 2;
  WriteQuotas("* checkpoint_bytes=" + std::to_string(limit) + "\n");
  grpc::Status st;
  for (int i = 0; i < 500; ++i) {  // the watcher polls every 20 ms
    st = Checkpoint("alice", id, "c2");
    if (!st.ok()) break;
    pb::DeleteCheckpointRequest del;
    del.set_checkpoint_id("c2");
    pb::DeleteCheckpointResponse out;
    ASSERT_TRUE(stub_->DeleteCheckpoint(Ctx("alice").get(), del, &out).ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ExpectExhausted(st, "over its quota of " + std::to_string(limit) + " (checkpoint_bytes)");
  EXPECT_THAT(st.error_message(), HasSubstr("tenant 'alice' would hold"));
  EXPECT_TRUE(Checkpoint("alice", id, "c1").ok());
  std::string bobs;
  ASSERT_TRUE(Create("bob", &bobs).ok());
  EXPECT_TRUE(Checkpoint("bob", bobs, "b1").ok());  // "*" is per tenant: bob has his own room

  pb::ListCheckpointsResponse list;
  ASSERT_TRUE(stub_->ListCheckpoints(Ctx("alice").get(), pb::ListCheckpointsRequest(), &list).ok());
  ASSERT_EQ(list.checkpoints_size(), 1);  // the refused one is not on disk
  EXPECT_EQ(list.checkpoints(0).checkpoint_id(), "c1");
  EXPECT_EQ(UsageOf("alice").checkpoint_bytes(), list.checkpoints(0).size_bytes());

  // A bad file keeps the last good limits.
  WriteQuotas("* checkpoint_bytes=lots\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ExpectExhausted(Checkpoint("alice", id, "c3"), "(checkpoint_bytes)");
}

TEST_F(ServerQuotasTest, IngestRateRefusesWithRetryTrailersAndKeepsWhatWasApplied) {
  Start("alice ingest_tokens_per_s=1 ingest_burst=16\n");
  std::string id;
  ASSERT_TRUE(Create("alice", &id).ok());
  auto stream_ctx = Ctx("alice");
  auto stream = stub_->Ingest(stream_ctx.get());
  pb::IngestRequest req;
  req.set_session_id(id);
  for (int i = 0; i < 16; ++i) req.add_token_ids(1 + i);
  ASSERT_TRUE(stream->Write(req));
  pb::IngestResponse resp;
  ASSERT_TRUE(stream->Read(&resp));  // the burst admits the first 16
  EXPECT_EQ(resp.counters().tokens_received(), 16);
  req.clear_session_id();
  stream->Write(req);  // 16 more: the bucket is empty
  stream->WritesDone();
  while (stream->Read(&resp)) {
  }
  grpc::Status st = stream->Finish();
  ExpectExhausted(st, "tenant 'alice' is over its ingest quota of 1 tokens/s (ingest_tokens_per_s");
  EXPECT_THAT(st.error_message(), HasSubstr("retry in"));
  const ttt::testing::StatusDetails details = ttt::testing::DetailsOf(st);  // issue 25
  EXPECT_EQ(details.reason, "QUOTA_EXCEEDED");
  EXPECT_EQ(details.metadata.at("quota"), "ingest_tokens_per_s");
  EXPECT_EQ(details.metadata.at("tenant"), "alice");
  ASSERT_TRUE(details.retry_ms.has_value());
  const auto& trailers = stream_ctx->GetServerTrailingMetadata();
  for (const char* key : {"retry-after-ms", "grpc-retry-pushback-ms"}) {
    auto it = trailers.find(key);
    ASSERT_NE(it, trailers.end()) << key;
    const int ms = std::stoi(std::string(it->second.data(), it->second.size()));
    EXPECT_GT(ms, 0);
    EXPECT_LE(ms, 16000);
    EXPECT_EQ(ms, *details.retry_ms);  // RetryInfo says the same wait
  }
  pb::GetSessionRequest get;
  get.set_session_id(id);
  pb::Session session;
  ASSERT_TRUE(stub_->GetSession(Ctx("alice").get(), get, &session).ok());
  EXPECT_EQ(session.counters().tokens_received(), 16);  // what was acknowledged stays

  std::string other;
  ASSERT_TRUE(Create("bob", &other).ok());
  grpc::ClientContext bob_ctx;
  EXPECT_TRUE(IngestOnce("bob", other, 64, &bob_ctx, &resp).ok());
  EXPECT_EQ(UsageOf("alice").ingest_tokens_total(), 16);
}

// Issue 21: the messages the rate admitted are all acknowledged, in order, before the refusal,
// even when the engine is still applying them as the refused one arrives (sent without waiting:
// 400 + 400 admitted, the third refused, used to give no acknowledgement for 800 tokens applied).
TEST_F(ServerQuotasTest, IngestRefusedByTheRateAcknowledgesEverythingItApplied) {
  Start("alice ingest_tokens_per_s=1 ingest_burst=1000\n");
  std::string id;
  ASSERT_TRUE(Create("alice", &id).ok());
  auto stream_ctx = Ctx("alice");
  auto stream = stub_->Ingest(stream_ctx.get());
  for (int m = 0; m < 3; ++m) {
    pb::IngestRequest req;
    if (m == 0) req.set_session_id(id);
    for (int i = 0; i < 400; ++i) req.add_token_ids(1 + (i + m) % 90);
    if (!stream->Write(req)) break;
  }
  stream->WritesDone();
  std::vector<pb::IngestResponse> responses;
  pb::IngestResponse resp;
  while (stream->Read(&resp)) responses.push_back(resp);
  ExpectExhausted(stream->Finish(), "over its ingest quota");
  ASSERT_EQ(responses.size(), 2u);
  EXPECT_EQ(responses[0].message_index(), 0);
  EXPECT_EQ(responses[1].message_index(), 1);
  EXPECT_EQ(responses[1].stream_tokens(), 800);
  pb::GetSessionRequest get;
  get.set_session_id(id);
  pb::Session session;
  ASSERT_TRUE(stub_->GetSession(Ctx("alice").get(), get, &session).ok());
  EXPECT_EQ(session.counters().position(), 800);
  EXPECT_FALSE(session.writer_active());  // released before the client heard the end
}

TEST_F(ServerQuotasTest, StreamsAreReleasedWhenACallIsCancelled) {
  Start("alice streams=1\n");
  std::string id;
  ASSERT_TRUE(Create("alice", &id).ok());
  auto open_ctx = Ctx("alice");
  auto open = stub_->Ingest(open_ctx.get());
  pb::IngestRequest req;
  req.set_session_id(id);
  req.add_token_ids(1);
  ASSERT_TRUE(open->Write(req));
  pb::IngestResponse resp;
  ASSERT_TRUE(open->Read(&resp));  // the stream is open and counted

  pb::GenerateRequest gen;
  gen.set_session_id(id);
  gen.set_max_tokens(1);
  auto refused_ctx = Ctx("alice");
  auto refused = stub_->Generate(refused_ctx.get(), gen);
  pb::GenerateResponse out;
  while (refused->Read(&out)) {
  }
  ExpectExhausted(refused->Finish(),
                  "tenant 'alice' has 1 streams open, at its quota of 1 (streams)");
  EXPECT_EQ(UsageOf("alice").streams_open(), 1);

  open_ctx->TryCancel();
  EXPECT_EQ(open->Finish().error_code(), grpc::StatusCode::CANCELLED);
  grpc::Status st;
  for (int i = 0; i < 500; ++i) {  // the server sees the cancellation a moment later
    auto ctx = Ctx("alice");
    auto again = stub_->Generate(ctx.get(), gen);
    while (again->Read(&out)) {
    }
    st = again->Finish();
    if (st.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(UsageOf("alice").streams_open(), 0);
}

TEST_F(ServerQuotasTest, AMissingOrBadFileFailsTheStart) {
  options_.quotas_file = (dir_ / "missing").string();
  auto s = Server::Start(options_);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("cannot read the quotas file"));
  WriteQuotas("alice streams=2\nalice/x streams=1\n");
  options_.quotas_file = quotas_;
  s = Server::Start(options_);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.status().message()), HasSubstr(":2: "));
}

}  // namespace
}  // namespace ttt::server
