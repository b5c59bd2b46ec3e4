// The real gRPC service in-process on a loopback port, over a real tiny model (the golden llama
// fixture from TTT_GOLDEN_DIR): every bad input of issue 3 answered with its code and a message
// that says what to fix; concurrent writers; cancellation mid-ingest; max sessions; checkpoint
// and restore across a server restart with bit-identical scores; text input through a tokenizer
// (a byte-level BPE tokenizer.json written by the test).
#include "server/server.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <thread>

#include <arpa/inet.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "coord/etcd_client.h"
#include "server/status.h"
#include "tests/testing/byte_level_tokenizer.h"
#include "tests/testing/etcd.h"
#include "tests/testing/server_fixture.h"
#include "tokenizer/tokenizer.h"
#include "tttserve/v1/ttt_service.grpc.pb.h"
#include "util/sha256.h"

namespace ttt::server {
namespace {

namespace fs = std::filesystem;
namespace pb = tttserve::v1;
using ttt::testing::ExpectStatus;
using ttt::testing::GoldenLlama;

class ServerTest : public ttt::testing::ServerFixture {
 protected:
  void Start() {
    stub_.reset();
    server_.reset();
    auto s = Server::Start(options_);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->port()),
                                   grpc::InsecureChannelCredentials());
    stub_ = pb::TttService::NewStub(channel_);
    pb::ServerInfo info;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->GetServerInfo(&ctx, pb::GetServerInfoRequest(), &info).ok());
    vocab_ = info.vocab_size();
    chunk_ = info.ttt_chunk();
  }

  std::string Create(const std::string& tenant = "") {
    pb::Session s;
    grpc::Status st = stub_->CreateSession(Ctx(tenant).get(), pb::CreateSessionRequest(), &s);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return s.session_id();
  }
  // Sends `msgs` on one Ingest stream and returns the final status and the responses.
  grpc::Status IngestAll(std::vector<pb::IngestRequest> msgs,
                         std::vector<pb::IngestResponse>* out = nullptr) {
    auto ctx = Ctx();
    auto stream = stub_->Ingest(ctx.get());
    for (const auto& m : msgs) {
      if (!stream->Write(m)) break;
    }
    stream->WritesDone();
    pb::IngestResponse r;
    while (stream->Read(&r)) {
      if (out) out->push_back(r);
    }
    return stream->Finish();
  }
  static pb::IngestRequest Tokens(const std::string& id, std::vector<int32_t> ids) {
    pb::IngestRequest r;
    r.set_session_id(id);
    for (int32_t t : ids) r.add_token_ids(t);
    return r;
  }
  std::vector<int32_t> Doc(int n, int salt = 0) {
    std::vector<int32_t> v;
    for (int i = 0; i < n; ++i) v.push_back(3 + (i * 7 + salt * 13) % (vocab_ - 3));
    return v;
  }
  pb::ScoreResponse Score(const std::string& id, const std::vector<int32_t>& ids) {
    pb::ScoreRequest req;
    req.set_session_id(id);
    for (int32_t t : ids) req.add_token_ids(t);
    pb::ScoreResponse resp;
    grpc::Status st = stub_->Score(Ctx().get(), req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return resp;
  }
  grpc::Status GenerateStatus(pb::GenerateRequest req) {
    auto ctx = Ctx();
    auto reader = stub_->Generate(ctx.get(), req);
    pb::GenerateResponse r;
    while (reader->Read(&r)) {
    }
    return reader->Finish();
  }
  // Reads a session's whole export into `bytes`; returns the call's status.
  grpc::Status ExportStatus(const std::string& id, std::string* bytes) {
    auto ctx = Ctx();
    pb::ExportSessionRequest er;
    er.set_session_id(id);
    auto reader = stub_->ExportSession(ctx.get(), er);
    pb::ExportSessionResponse r;
    while (reader->Read(&r)) *bytes += r.data();
    return reader->Finish();
  }
  std::string Export(const std::string& id) {
    std::string bytes;
    grpc::Status st = ExportStatus(id, &bytes);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return bytes;
  }
  // Imports `bytes` in one message.
  grpc::Status Import(const std::string& bytes, pb::Session* out) {
    auto ctx = Ctx();
    auto w = stub_->ImportSession(ctx.get(), out);
    pb::ImportSessionRequest r;
    r.set_data(bytes);
    w->Write(r);
    w->WritesDone();
    return w->Finish();
  }

  // A model folder with a tokenizer: the llama fixture plus the byte-level test tokenizer (the 97
  // ids of the fixture's vocabulary: printable ASCII, space, newline and "é"). `added_tokens`
  // (tokenizer.json's JSON array) and `config` (tokenizer_config.json's text, none when empty)
  // let a test add special tokens and a bos.
  void StartWithTokenizer(const std::string& added_tokens = "[]", const std::string& config = "") {
    const fs::path model = dir_ / "model";
    fs::create_directories(model);
    for (const char* f : {"config.json", "model.safetensors"}) {
      fs::copy_file(GoldenLlama() / f, model / f);
    }
    ttt::testing::WriteByteLevelTokenizer(model, added_tokens);
    if (!config.empty()) std::ofstream(model / "tokenizer_config.json") << config;
    options_.model_dir = model.string();
    Start();
  }

  // The tokens a stream's responses acknowledge (the last one's stream_tokens; 0 without one),
  // after checking that they answer messages 0, 1, 2, ... in order.
  static int64_t AckedTokens(const std::vector<pb::IngestResponse>& responses) {
    for (size_t i = 0; i < responses.size(); ++i) {
      EXPECT_EQ(responses[i].message_index(), static_cast<int64_t>(i));
    }
    return responses.empty() ? 0 : responses.back().stream_tokens();
  }
  // The session once no writer holds it (bounded wait: the server winds a stream the client
  // cancelled down a little after the client's Finish; one that it ended is released already).
  // `token`: the bearer token to ask with (none when empty).
  pb::Session Settled(const std::string& id, const std::string& token = "") {
    pb::GetSessionRequest get;
    get.set_session_id(id);
    pb::Session s;
    for (int i = 0; i < 1000; ++i) {
      auto ctx = Ctx();
      if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
      grpc::Status st = stub_->GetSession(ctx.get(), get, &s);
      EXPECT_TRUE(st.ok()) << st.error_message();
      if (!st.ok() || !s.writer_active()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_FALSE(s.writer_active());
    return s;
  }
  // Issue 21: `good` messages, each applied, then `bad`, which fails with `code` and
  // `fragment`, then one more that must never be applied; all sent without waiting for answers,
  // so the engine is still applying the good ones when the bad one arrives. Every good message
  // is answered, in order, before the error, and the answers add up to the session's position.
  void ExpectEveryAppliedMessageAcknowledged(std::vector<pb::IngestRequest> good,
                                             const pb::IngestRequest& bad, grpc::StatusCode code,
                                             const std::string& fragment, int64_t expected_tokens) {
    const std::string id = good.front().session_id();
    const size_t applied = good.size();
    good.push_back(bad);
    good.push_back(Tokens("", Doc(20, 99)));
    std::vector<pb::IngestResponse> responses;
    ExpectStatus(IngestAll(good, &responses), code, fragment);
    EXPECT_EQ(responses.size(), applied);
    EXPECT_EQ(AckedTokens(responses), expected_tokens);
    EXPECT_EQ(Settled(id).counters().position(), expected_tokens);
  }

  std::shared_ptr<grpc::Channel> channel_;
  int64_t vocab_ = 0;
  int64_t chunk_ = 0;
};

TEST_F(ServerTest, BadInputGetsAClearStatusAndNothingAppliedIsLost) {
  Start();
  const std::string id = Create();
  pb::Session s;
  pb::GetSessionRequest get;
  get.set_session_id("s-doesnotexist");
  ExpectStatus(stub_->GetSession(Ctx().get(), get, &s), grpc::StatusCode::NOT_FOUND, "not found");
  get.set_session_id(id);
  ExpectStatus(stub_->GetSession(Ctx("other").get(), get, &s), grpc::StatusCode::NOT_FOUND,
               "not found");
  ExpectStatus(stub_->GetSession(Ctx("bad/tenant").get(), get, &s),
               grpc::StatusCode::INVALID_ARGUMENT, "x-tenant-id");

  // Ingest: valid first message applied, then a bad one; the first stays applied.
  ExpectStatus(IngestAll({Tokens(id, {5, 6, 7}), pb::IngestRequest()}),
               grpc::StatusCode::INVALID_ARGUMENT, "empty");
  ASSERT_TRUE(stub_->GetSession(Ctx().get(), get, &s).ok());
  EXPECT_EQ(s.counters().position(), 3);
  ExpectStatus(IngestAll({Tokens("", {5})}), grpc::StatusCode::INVALID_ARGUMENT, "session_id");
  ExpectStatus(IngestAll({Tokens(id, std::vector<int32_t>(65537, 5))}),
               grpc::StatusCode::INVALID_ARGUMENT, "limit");
  ExpectStatus(IngestAll({Tokens(id, {5, static_cast<int32_t>(vocab_) + 1})}),
               grpc::StatusCode::INVALID_ARGUMENT, "outside the vocabulary");
  ExpectStatus(IngestAll({Tokens(id, {-1})}), grpc::StatusCode::INVALID_ARGUMENT,
               "outside the vocabulary");
  pb::IngestRequest both = Tokens(id, {5});
  both.set_text("hi");
  ExpectStatus(IngestAll({both}), grpc::StatusCode::INVALID_ARGUMENT, "both");
  pb::IngestRequest text;
  text.set_session_id(id);
  text.set_text("hello");
  ExpectStatus(IngestAll({text}), grpc::StatusCode::FAILED_PRECONDITION, "no tokenizer");
  ExpectStatus(IngestAll({Tokens("s-unknown", {5})}), grpc::StatusCode::NOT_FOUND, "not found");
  ASSERT_TRUE(stub_->GetSession(Ctx().get(), get, &s).ok());
  EXPECT_EQ(s.counters().position(), 3);

  // Generate: negative or absurd sampling parameters.
  pb::GenerateRequest g;
  g.set_session_id(id);
  g.set_temperature(-1);
  ExpectStatus(GenerateStatus(g), grpc::StatusCode::INVALID_ARGUMENT, "temperature");
  g.set_temperature(1e9);
  ExpectStatus(GenerateStatus(g), grpc::StatusCode::INVALID_ARGUMENT, "temperature");
  g.set_temperature(1);
  g.set_top_p(0);
  ExpectStatus(GenerateStatus(g), grpc::StatusCode::INVALID_ARGUMENT, "top_p");
  g.set_top_p(1);
  g.set_top_k(-3);
  ExpectStatus(GenerateStatus(g), grpc::StatusCode::INVALID_ARGUMENT, "top_k");
  g.set_top_k(0);
  g.set_max_tokens(1000000);
  ExpectStatus(GenerateStatus(g), grpc::StatusCode::INVALID_ARGUMENT, "max_tokens");
  g.set_max_tokens(-2);
  ExpectStatus(GenerateStatus(g), grpc::StatusCode::INVALID_ARGUMENT, "max_tokens");
  g.set_max_tokens(4);
  g.add_stop("x");
  ExpectStatus(GenerateStatus(g), grpc::StatusCode::FAILED_PRECONDITION, "tokenizer");

  // Score.
  pb::ScoreRequest sr;
  sr.set_session_id(id);
  pb::ScoreResponse sresp;
  ExpectStatus(stub_->Score(Ctx().get(), sr, &sresp), grpc::StatusCode::INVALID_ARGUMENT,
               "nothing to score");

  // Checkpoints: unknown, corrupt, garbage import.
  pb::RestoreRequest rr;
  rr.set_checkpoint_id("nope");
  ExpectStatus(stub_->Restore(Ctx().get(), rr, &s), grpc::StatusCode::NOT_FOUND, "not found");
  rr.set_checkpoint_id("../etc");
  ExpectStatus(stub_->Restore(Ctx().get(), rr, &s), grpc::StatusCode::INVALID_ARGUMENT,
               "checkpoint_id");
  pb::CheckpointRequest cr;
  cr.set_session_id(id);
  cr.set_checkpoint_id("c");
  pb::CheckpointInfo ci;
  ASSERT_TRUE(stub_->Checkpoint(Ctx().get(), cr, &ci).ok());
  const fs::path file = dir_ / "ckpt" / "default" / "checkpoints" / "c.safetensors";
  ASSERT_TRUE(fs::exists(file));
  {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-3, std::ios::end);
    f.put('\x5a');
  }
  rr.set_checkpoint_id("c");
  ExpectStatus(stub_->Restore(Ctx().get(), rr, &s), grpc::StatusCode::DATA_LOSS, "checksum");
  {
    auto ctx = Ctx();
    pb::Session out;
    auto w = stub_->ImportSession(ctx.get(), &out);
    pb::ImportSessionRequest ir;
    ir.set_data("this is not a checkpoint at all");
    w->Write(ir);
    w->WritesDone();
    ExpectStatus(w->Finish(), grpc::StatusCode::DATA_LOSS, "corrupt");
  }
  // Delete, then everything about it is NOT_FOUND.
  pb::DeleteSessionRequest del;
  del.set_session_id(id);
  pb::DeleteSessionResponse dr;
  ASSERT_TRUE(stub_->DeleteSession(Ctx().get(), del, &dr).ok());
  ExpectStatus(stub_->DeleteSession(Ctx().get(), del, &dr), grpc::StatusCode::NOT_FOUND,
               "not found");
  ExpectStatus(IngestAll({Tokens(id, {5})}), grpc::StatusCode::NOT_FOUND, "not found");
}

// Issue 23 #4: an idempotent resend. A stream whose first message says how many tokens the
// session has received applies only when that is so; otherwise nothing of it applies and the
// status names the session's value, from which the client resends.
TEST_F(ServerTest, ExpectedTokensReceivedMakesAResendIdempotent) {
  Start();
  const std::string id = Create();
  ASSERT_TRUE(IngestAll({Tokens(id, Doc(40))}).ok());
  auto resend = [&](int64_t expected, std::vector<int32_t> tokens) {
    pb::IngestRequest first = Tokens(id, std::move(tokens));
    first.set_expected_tokens_received(expected);
    pb::IngestRequest more = Tokens(id, Doc(5, 1));
    return IngestAll({first, more});
  };
  // A client that believes the session is at 20 (its acknowledgement of 40 was lost... or not):
  // refused, nothing applied, the message says where to resume.
  ExpectStatus(resend(20, Doc(20, 2)), grpc::StatusCode::FAILED_PRECONDITION,
               "has received 40 tokens, not 20");
  EXPECT_EQ(Settled(id).counters().tokens_received(), 40);
  // Resent from the session's value: applied once, with the messages after it.
  ASSERT_TRUE(resend(40, Doc(10, 3)).ok());
  EXPECT_EQ(Settled(id).counters().tokens_received(), 55);
  // A second resend of the same input is refused: nothing is applied twice.
  ExpectStatus(resend(40, Doc(10, 3)), grpc::StatusCode::FAILED_PRECONDITION,
               "resend from token 55");
  EXPECT_EQ(Settled(id).counters().tokens_received(), 55);
  // Only the first message may carry it.
  pb::IngestRequest later = Tokens(id, Doc(3));
  later.set_expected_tokens_received(55);
  ExpectStatus(IngestAll({Tokens(id, Doc(3)), later}), grpc::StatusCode::INVALID_ARGUMENT,
               "only the first message");
}

TEST_F(ServerTest, OversizeMessageIsResourceExhausted) {
  options_.max_message_bytes = 1 << 20;
  Start();
  const std::string id = Create();
  pb::IngestRequest big;
  big.set_session_id(id);
  big.set_text(std::string(2 << 20, 'a'));
  grpc::Status st = IngestAll({big});
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
}

TEST_F(ServerTest, SecondConcurrentWriterIsAborted) {
  Start();
  const std::string id = Create();
  auto ctx = Ctx();
  auto first = stub_->Ingest(ctx.get());
  ASSERT_TRUE(first->Write(Tokens(id, {5, 6})));
  pb::IngestResponse r;
  ASSERT_TRUE(first->Read(&r));  // the first writer holds the session now
  const grpc::Status busy = IngestAll({Tokens(id, {7})});
  ExpectStatus(busy, grpc::StatusCode::ABORTED, "busy");
  ttt::testing::ExpectReason(busy, "SESSION_BUSY", 1000);  // issue 25: a program can act on it
  pb::GenerateRequest g;
  g.set_session_id(id);
  g.set_commit(true);
  g.set_max_tokens(2);
  ExpectStatus(GenerateStatus(g), grpc::StatusCode::ABORTED, "busy");
  // A reader is fine meanwhile.
  EXPECT_EQ(Score(id, {5, 6}).logprobs_size(), 2);
  first->WritesDone();
  while (first->Read(&r)) {
  }
  ASSERT_TRUE(first->Finish().ok());
  // Once it finished, the next writer gets in.
  EXPECT_TRUE(IngestAll({Tokens(id, {7})}).ok());
}

TEST_F(ServerTest, CancelMidIngestKeepsAcknowledgedChunks) {
  Start();
  const std::string id = Create();
  auto ctx = Ctx();
  auto stream = stub_->Ingest(ctx.get());
  int64_t acked = 0;
  for (int i = 0; i < 3; ++i) {
    pb::IngestRequest m = Tokens(i == 0 ? id : "", Doc(static_cast<int>(chunk_), i));
    ASSERT_TRUE(stream->Write(m));
    pb::IngestResponse r;
    ASSERT_TRUE(stream->Read(&r));
    acked = r.stream_tokens();
  }
  ctx->TryCancel();
  pb::IngestResponse r;
  while (stream->Read(&r)) {
  }
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(acked, 3 * chunk_);
  pb::Session s;
  pb::GetSessionRequest get;
  get.set_session_id(id);
  // The writer lease goes once the server has wound the stream down.
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(stub_->GetSession(Ctx().get(), get, &s).ok());
    if (!s.writer_active()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_GE(s.counters().position(), acked);
  EXPECT_GE(s.counters().chunks_applied(), 3);
  EXPECT_FALSE(s.writer_active());
}

// Issue 27 item 3: GetSession tells where a session's state is held, and memory_bytes what it
// holds there: fp32 in memory, compact (bf16) once idle past --compact_idle_s, evicted to disk
// when another session needs its place (--max_resident_sessions 1).
TEST_F(ServerTest, GetSessionTellsWhetherASessionIsResidentCompactOrEvicted) {
  options_.compact_idle_s = 1;
  options_.reaper_interval_ms = 50;
  options_.max_resident_sessions = 1;
  Start();
  const std::string id = Create();
  ASSERT_TRUE(IngestAll({Tokens(id, Doc(static_cast<int>(3 * chunk_ + 2)))}).ok());
  pb::GetSessionRequest get;
  get.set_session_id(id);
  auto session = [&] {
    pb::Session s;
    EXPECT_TRUE(stub_->GetSession(Ctx().get(), get, &s).ok());
    return s;
  };
  pb::Session s = session();
  EXPECT_EQ(s.residency(), pb::RESIDENCY_RESIDENT);
  EXPECT_TRUE(s.resident());
  const int64_t fp32_bytes = s.memory_bytes();
  ASSERT_GT(fp32_bytes, 0);
  // Polls until the session is held as `residency` (compaction and eviction run on the engine
  // thread after the call or reaper pass that asks for them); at most 20 s.
  auto await = [&](pb::Residency residency) {
    pb::Session now = session();
    for (int i = 0; i < 1000 && now.residency() != residency; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      now = session();
    }
    return now;
  };
  // GetSession is no use of the session: it stays idle, and the reaper compacts it.
  s = await(pb::RESIDENCY_COMPACT);
  ASSERT_EQ(s.residency(), pb::RESIDENCY_COMPACT);
  EXPECT_TRUE(s.resident());
  const int64_t compact_bytes = s.memory_bytes();
  EXPECT_GT(compact_bytes, 0);
  EXPECT_LT(compact_bytes, fp32_bytes);
  // Its next use restores fp32.
  Score(id, Doc(5, 1));
  s = session();
  EXPECT_EQ(s.residency(), pb::RESIDENCY_RESIDENT);
  EXPECT_GT(s.memory_bytes(), compact_bytes);
  // Another session takes the one resident place: this one goes to disk.
  Create();
  s = await(pb::RESIDENCY_EVICTED);
  ASSERT_EQ(s.residency(), pb::RESIDENCY_EVICTED);
  EXPECT_FALSE(s.resident());
  EXPECT_EQ(s.memory_bytes(), 0);
}

// Issue 13: the client chooses the id, so a proxy hashing x-session-id routes CreateSession too.
TEST_F(ServerTest, CreateSessionTakesAClientChosenId) {
  Start();
  pb::CreateSessionRequest req;
  req.set_session_id("user-7.conv_1");
  pb::Session s;
  ASSERT_TRUE(stub_->CreateSession(Ctx().get(), req, &s).ok());
  EXPECT_EQ(s.session_id(), "user-7.conv_1");
  ASSERT_TRUE(IngestAll({Tokens("user-7.conv_1", Doc(static_cast<int>(chunk_ + 3)))}).ok());
  ExpectStatus(stub_->CreateSession(Ctx().get(), req, &s), grpc::StatusCode::ALREADY_EXISTS,
               "already exists");
  // Nothing of the existing session was lost to the refused create.
  pb::GetSessionRequest get;
  get.set_session_id("user-7.conv_1");
  ASSERT_TRUE(stub_->GetSession(Ctx().get(), get, &s).ok());
  EXPECT_EQ(s.counters().tokens_received(), chunk_ + 3);
  // Another tenant may use the same id.
  EXPECT_TRUE(stub_->CreateSession(Ctx("other").get(), req, &s).ok());
  req.set_session_id("bad id");
  ExpectStatus(stub_->CreateSession(Ctx().get(), req, &s), grpc::StatusCode::INVALID_ARGUMENT,
               "outside [A-Za-z0-9._-]");
  req.set_session_id(std::string(200, 'a'));
  ExpectStatus(stub_->CreateSession(Ctx().get(), req, &s), grpc::StatusCode::INVALID_ARGUMENT,
               "1..128 characters");
}

// Issues 13 and 23: two replicas sharing sessions through etcd (one real member). Sync durability
// acknowledges end_of_document only once the state is committed; a live owner hands an idle
// session over when the other replica is asked for it, and a shutdown hands it over, each time
// with the committed state (bit-identical scores).
TEST_F(ServerTest, ReplicasSharingSessionsThroughEtcdHandASessionOverWithItsCommittedState) {
  testing::TempDir etcd_dir("server_test");
  testing::EtcdCluster etcd(1, etcd_dir.path());
  ASSERT_NO_FATAL_FAILURE(etcd.Start());
  options_ = testing::OnCluster(options_, etcd, "replica-a");
  options_.sync_durability = true;
  Start();
  pb::CreateSessionRequest create;
  create.set_session_id("doc-1");
  pb::Session s;
  ASSERT_TRUE(stub_->CreateSession(Ctx().get(), create, &s).ok());
  pb::IngestRequest doc = Tokens("doc-1", Doc(static_cast<int>(2 * chunk_ + 5)));
  doc.set_end_of_document(true);
  ASSERT_TRUE(IngestAll({doc}).ok());
  // Acknowledged, so already committed (no shutdown, no write-behind pass needed): one blob.
  int blobs = 0;
  for (const auto& tenant : fs::directory_iterator(dir_ / "ckpt")) {
    if (!fs::exists(tenant.path() / "blobs" / "doc-1")) continue;
    for (const auto& blob : fs::directory_iterator(tenant.path() / "blobs" / "doc-1")) {
      blobs += blob.path().extension() == ".safetensors";
    }
  }
  EXPECT_EQ(blobs, 1);
  const auto probe = Doc(static_cast<int>(chunk_ + 2), 5);
  const auto before = Score("doc-1", probe);

  ServerOptions other = testing::OnCluster(options_, etcd, "replica-b");
  auto b = Server::Start(other);
  ASSERT_TRUE(b.ok()) << b.status();
  auto stub_b = pb::TttService::NewStub(grpc::CreateChannel(
      "127.0.0.1:" + std::to_string((*b)->port()), grpc::InsecureChannelCredentials()));
  pb::GetSessionRequest get;
  get.set_session_id("doc-1");
  // Asked for a session replica-a holds idle, replica-b waits for replica-a to hand it over (no
  // UNAVAILABLE to retry); the id stays taken.
  ASSERT_TRUE(stub_b->GetSession(Ctx().get(), get, &s).ok());
  EXPECT_EQ(s.counters().tokens_received(), 2 * chunk_ + 5);
  ExpectStatus(stub_b->CreateSession(Ctx().get(), create, &s), grpc::StatusCode::ALREADY_EXISTS,
               "already exists");
  // Back to replica-a the same way; then its shutdown commits and gives the session up.
  ASSERT_TRUE(stub_->GetSession(Ctx().get(), get, &s).ok());
  stub_.reset();
  server_.reset();
  ASSERT_TRUE(stub_b->GetSession(Ctx().get(), get, &s).ok());
  EXPECT_EQ(s.counters().tokens_received(), 2 * chunk_ + 5);
  EXPECT_EQ(s.counters().documents_completed(), 1);
  pb::ScoreRequest score;
  score.set_session_id("doc-1");
  for (int32_t t : probe) score.add_token_ids(t);
  pb::ScoreResponse after;
  ASSERT_TRUE(stub_b->Score(Ctx().get(), score, &after).ok());
  ASSERT_EQ(after.logprobs_size(), before.logprobs_size());
  for (int i = 0; i < after.logprobs_size(); ++i) {
    const float x = after.logprobs(i), y = before.logprobs(i);
    EXPECT_TRUE(std::memcmp(&x, &y, sizeof x) == 0 || (std::isnan(x) && std::isnan(y))) << i;
  }
}

// The writer lease (docs/contract.md, "The writer lease after a cancellation"): a writer call the
// server ends, OK or with an error, has released the session before the client hears its end, so
// the next writer gets in at once; after a call the client cancels, the next writer gets in by
// retrying ABORTED ("busy") with backoff, within a bounded time.
TEST_F(ServerTest, WriterLeaseIsFreeWhenTheCallEnds) {
  Start();
  const std::string id = Create();
  pb::GenerateRequest g;
  g.set_session_id(id);
  g.set_commit(true);
  g.set_max_tokens(2);
  g.set_temperature(0);
  // Ended by the server: OK, then an error after an applied message; the next writer at once.
  ASSERT_TRUE(IngestAll({Tokens(id, {5, 6})}).ok());
  EXPECT_TRUE(GenerateStatus(g).ok());
  ExpectStatus(IngestAll({Tokens(id, {5, 6}), pb::IngestRequest()}),
               grpc::StatusCode::INVALID_ARGUMENT, "empty");
  EXPECT_TRUE(GenerateStatus(g).ok());
  pb::ResetRequest rr;
  rr.set_session_id(id);
  pb::Session s;
  EXPECT_TRUE(stub_->Reset(Ctx().get(), rr, &s).ok());

  // Cancelled by the client: ABORTED "busy" at most until the server has wound the call down.
  auto retry_busy = [&](const std::function<grpc::Status()>& call) {
    std::chrono::milliseconds backoff(2);
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    grpc::Status st = call();
    while (st.error_code() == grpc::StatusCode::ABORTED &&
           std::chrono::steady_clock::now() < give_up) {
      EXPECT_NE(st.error_message().find("busy"), std::string::npos) << st.error_message();
      std::this_thread::sleep_for(backoff);
      backoff = std::min(backoff * 2, std::chrono::milliseconds(200));
      st = call();
    }
    return st;
  };
  for (int round = 0; round < 3; ++round) {
    {
      auto ctx = Ctx();
      auto stream = stub_->Ingest(ctx.get());
      ASSERT_TRUE(stream->Write(Tokens(id, Doc(static_cast<int>(4 * chunk_), round))));
      ctx->TryCancel();
      pb::IngestResponse r;
      while (stream->Read(&r)) {
      }
      EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
    }
    EXPECT_TRUE(retry_busy([&] { return GenerateStatus(g); }).ok());
    {
      pb::GenerateRequest long_gen = g;
      long_gen.set_max_tokens(64);
      long_gen.set_ignore_eos(true);
      std::unique_ptr<grpc::ClientContext> ctx;
      std::unique_ptr<grpc::ClientReader<pb::GenerateResponse>> reader;
      pb::GenerateResponse r;
      // A writer after a cancelled call like the others: the cancelled Ingest's message may
      // reach the server after the Generate above and hold the lease a little longer.
      const grpc::Status opened = retry_busy([&] {
        reader.reset();
        ctx = Ctx();
        reader = stub_->Generate(ctx.get(), long_gen);
        return reader->Read(&r) ? grpc::Status::OK : reader->Finish();
      });
      ASSERT_TRUE(opened.ok()) << opened.error_code() << " " << opened.error_message();
      ctx->TryCancel();
      while (reader->Read(&r)) {
      }
      const grpc::StatusCode code = reader->Finish().error_code();  // OK if it won the race
      EXPECT_TRUE(code == grpc::StatusCode::CANCELLED || code == grpc::StatusCode::OK) << code;
    }
    EXPECT_TRUE(retry_busy([&] { return IngestAll({Tokens(id, {7, 8})}); }).ok());
  }
}

TEST_F(ServerTest, MaxSessionsIsResourceExhausted) {
  options_.max_sessions = 2;
  Start();
  Create();
  Create("other");
  pb::Session s;
  ExpectStatus(stub_->CreateSession(Ctx().get(), pb::CreateSessionRequest(), &s),
               grpc::StatusCode::RESOURCE_EXHAUSTED, "max_sessions");
}

TEST_F(ServerTest, CheckpointRestoreAfterRestartGivesBitIdenticalScores) {
  Start();
  const std::string id = Create();
  ASSERT_TRUE(IngestAll({Tokens(id, Doc(static_cast<int>(3 * chunk_ + 2)))}).ok());
  const auto probe = Doc(static_cast<int>(chunk_ + 5), 9);
  const auto before = Score(id, probe);
  pb::CheckpointRequest cr;
  cr.set_session_id(id);
  cr.set_checkpoint_id("keep");
  pb::CheckpointInfo ci;
  ASSERT_TRUE(stub_->Checkpoint(Ctx().get(), cr, &ci).ok());
  Start();  // a new server over the same checkpoint directory
  pb::RestoreRequest rr;
  rr.set_checkpoint_id("keep");
  pb::Session restored;
  ASSERT_TRUE(stub_->Restore(Ctx().get(), rr, &restored).ok());
  const auto after = Score(restored.session_id(), probe);
  ASSERT_EQ(before.logprobs_size(), after.logprobs_size());
  EXPECT_EQ(std::memcmp(before.logprobs().data(), after.logprobs().data(),
                        sizeof(float) * before.logprobs_size()),
            0);
  // Another tenant cannot see or restore it.
  pb::ListCheckpointsResponse lc;
  ASSERT_TRUE(stub_->ListCheckpoints(Ctx("other").get(), pb::ListCheckpointsRequest(), &lc).ok());
  EXPECT_EQ(lc.checkpoints_size(), 0);
  pb::Session s;
  ExpectStatus(stub_->Restore(Ctx("other").get(), rr, &s), grpc::StatusCode::NOT_FOUND,
               "not found");
}

TEST_F(ServerTest, AnotherModelsCheckpointIsRefused) {
  Start();
  const std::string id = Create();
  ASSERT_TRUE(IngestAll({Tokens(id, Doc(static_cast<int>(chunk_ + 1)))}).ok());
  pb::CheckpointRequest cr;
  cr.set_session_id(id);
  cr.set_checkpoint_id("llama-ck");
  pb::CheckpointInfo ci;
  ASSERT_TRUE(stub_->Checkpoint(Ctx().get(), cr, &ci).ok());
  std::string exported;
  {
    auto ctx = Ctx();
    pb::ExportSessionRequest er;
    er.set_session_id(id);
    auto reader = stub_->ExportSession(ctx.get(), er);
    pb::ExportSessionResponse r;
    while (reader->Read(&r)) exported += r.data();
    ASSERT_TRUE(reader->Finish().ok());
  }
  // The same checkpoint directory under a server of another model (the qwen3 fixture).
  options_.model_dir = (GoldenLlama().parent_path() / "qwen3").string();
  options_.checkpoint_on_shutdown = false;
  Start();
  pb::RestoreRequest rr;
  rr.set_checkpoint_id("llama-ck");
  pb::Session s;
  const grpc::Status other = stub_->Restore(Ctx().get(), rr, &s);
  ExpectStatus(other, grpc::StatusCode::FAILED_PRECONDITION, "another model");
  ttt::testing::ExpectReason(other, "STATE_FROM_OTHER_MODEL", std::nullopt);
  auto ctx = Ctx();
  auto w = stub_->ImportSession(ctx.get(), &s);
  pb::ImportSessionRequest ir;
  ir.set_data(exported);
  w->Write(ir);
  w->WritesDone();
  ExpectStatus(w->Finish(), grpc::StatusCode::FAILED_PRECONDITION, "another model");
}

TEST_F(ServerTest, TextInputIsTokenizedAndInvalidUtf8IsRefused) {
  StartWithTokenizer();
  ASSERT_TRUE(server_->has_tokenizer());
  const std::string a = Create(), b = Create();
  // Text split across messages gives the same tokens as one message (tokenized at flush).
  pb::IngestRequest whole;
  whole.set_session_id(a);
  whole.set_text("the quick brown fox jumps over the lazy dog");
  whole.set_flush(true);
  pb::IngestRequest p1, p2;
  p1.set_session_id(b);
  p1.set_text("the quick bro");
  p2.set_text("wn fox jumps over the lazy dog");
  p2.set_flush(true);
  std::vector<pb::IngestResponse> ra, rb;
  ASSERT_TRUE(IngestAll({whole}, &ra).ok());
  ASSERT_TRUE(IngestAll({p1, p2}, &rb).ok());
  ASSERT_EQ(rb.size(), 2u);
  EXPECT_EQ(rb[0].stream_tokens(), 0);
  EXPECT_GT(rb[0].buffered_text_bytes(), 0);
  EXPECT_EQ(ra.back().stream_tokens(), rb.back().stream_tokens());
  EXPECT_GT(ra.back().stream_tokens(), 0);
  pb::ScoreRequest sr;
  sr.set_session_id(a);
  sr.set_text(std::string("bad \xff\xfe bytes"));
  pb::ScoreResponse resp;
  ExpectStatus(stub_->Score(Ctx().get(), sr, &resp), grpc::StatusCode::INVALID_ARGUMENT, "UTF-8");
  pb::IngestRequest bad;
  bad.set_session_id(a);
  bad.set_text(std::string("ok \xc3"));
  bad.set_end_of_document(true);
  ExpectStatus(IngestAll({bad}), grpc::StatusCode::INVALID_ARGUMENT, "UTF-8");
  // Generation streams text and stops at a stop string.
  pb::GenerateRequest g;
  g.set_session_id(a);
  g.set_max_tokens(8);
  g.set_temperature(0);
  g.set_ignore_eos(true);
  auto run = [&](const pb::GenerateRequest& req, std::string* text, pb::FinishReason* reason) {
    auto ctx = Ctx();
    auto reader = stub_->Generate(ctx.get(), req);
    pb::GenerateResponse r;
    int tokens = 0;
    while (reader->Read(&r)) {
      tokens += r.has_token_id();
      *text += r.text();
      if (r.finish_reason() != pb::FINISH_REASON_UNSPECIFIED) *reason = r.finish_reason();
    }
    EXPECT_TRUE(reader->Finish().ok());
    return tokens;
  };
  std::string full;
  pb::FinishReason reason = pb::FINISH_REASON_UNSPECIFIED;
  EXPECT_EQ(run(g, &full, &reason), 8);
  EXPECT_EQ(reason, pb::FINISH_REASON_LENGTH);
  ASSERT_GE(full.size(), 4u) << full;
  // Greedy again with a stop string taken from that output: the text ends right before it.
  const std::string stop = full.substr(2, 2);
  g.add_stop(stop);
  std::string cut;
  run(g, &cut, &reason);
  EXPECT_EQ(reason, pb::FINISH_REASON_STOP);
  EXPECT_EQ(cut, full.substr(0, full.find(stop)));
}

// Issue 25 item 5: every error carries google.rpc.ErrorInfo (a tagged reason, else the code's
// default), and RetryInfo only where retrying the same call later can succeed.
TEST_F(ServerTest, ErrorsCarryErrorInfoAndRetryInfo) {
  options_.max_sessions = 1;
  Start();
  const std::string id = Create();
  const grpc::Status vocab = IngestAll({Tokens(id, {5, static_cast<int32_t>(vocab_) + 3})});
  ExpectStatus(vocab, grpc::StatusCode::INVALID_ARGUMENT, "outside the vocabulary");
  ttt::testing::ExpectReason(vocab, "TOKEN_OUT_OF_VOCAB", std::nullopt);
  EXPECT_EQ(ttt::testing::DetailsOf(vocab).metadata["token_id"], std::to_string(vocab_ + 3));
  EXPECT_EQ(ttt::testing::DetailsOf(vocab).metadata["vocab_size"], std::to_string(vocab_));

  pb::GetSessionRequest get;
  get.set_session_id("no-such-session");
  pb::Session s;
  const grpc::Status missing = stub_->GetSession(Ctx().get(), get, &s);
  ExpectStatus(missing, grpc::StatusCode::NOT_FOUND, "not found");
  ttt::testing::ExpectReason(missing, "NOT_FOUND", std::nullopt);
  pb::TokenizeRequest tokenize;
  tokenize.set_text("hello");
  pb::TokenizeResponse ids;
  ExpectStatus(stub_->Tokenize(Ctx().get(), tokenize, &ids), grpc::StatusCode::FAILED_PRECONDITION,
               "the model has no tokenizer");

  // Full: waiting does not free a session, so no RetryInfo.
  const grpc::Status full = stub_->CreateSession(Ctx().get(), pb::CreateSessionRequest(), &s);
  ExpectStatus(full, grpc::StatusCode::RESOURCE_EXHAUSTED, "max_sessions");
  ttt::testing::ExpectReason(full, "RESOURCE_EXHAUSTED", std::nullopt);
}

// Refusals gRPC makes itself carry ErrorInfo too: a method no service registers (the server's
// generic service answers it) and a request gRPC cannot parse (the status-details interceptor).
TEST_F(ServerTest, GrpcsOwnRefusalsCarryErrorInfo) {
  Start();
  grpc::GenericStub generic(channel_);
  auto call = [&generic](const std::string& method, const std::string& bytes) {
    grpc::Slice slice(bytes);
    grpc::ByteBuffer request(&slice, 1), response;
    grpc::ClientContext ctx;
    std::promise<grpc::Status> done;
    generic.UnaryCall(&ctx, method, grpc::StubOptions(), &request, &response,
                      [&done](grpc::Status st) { done.set_value(std::move(st)); });
    return done.get_future().get();
  };
  for (const char* method : {"/tttserve.v1.TttService/NoSuchMethod", "/no.Such/Method"}) {
    const grpc::Status unknown = call(method, "");
    ExpectStatus(unknown, grpc::StatusCode::UNIMPLEMENTED, method);
    ttt::testing::ExpectReason(unknown, "UNIMPLEMENTED", std::nullopt);
  }
  const grpc::Status garbled = call("/tttserve.v1.TttService/GetSession", "\xff\xff\xff");
  EXPECT_NE(garbled.error_code(), grpc::StatusCode::OK);
  ttt::testing::ExpectReason(garbled, ttt::server::GrpcCodeName(garbled.error_code()),
                             std::nullopt);
  // The services that are registered still answer.
  pb::Session s;
  EXPECT_TRUE(stub_->CreateSession(Ctx().get(), pb::CreateSessionRequest(), &s).ok());
}

// Issue 25 item 6: Fork, Restore and Import take the new session's id from the client, as
// CreateSession does, so a proxy hashing x-session-id routes the new session's calls.
TEST_F(ServerTest, ForkRestoreAndImportTakeAClientChosenId) {
  Start();
  const std::string source = Create();
  ASSERT_TRUE(IngestAll({Tokens(source, Doc(static_cast<int>(chunk_ + 3)))}).ok());
  pb::ForkRequest fork;
  fork.set_session_id(source);
  fork.set_new_session_id("fork.1");
  pb::Session s;
  ASSERT_TRUE(stub_->Fork(Ctx().get(), fork, &s).ok());
  EXPECT_EQ(s.session_id(), "fork.1");
  EXPECT_EQ(s.counters().tokens_received(), chunk_ + 3);
  ExpectStatus(stub_->Fork(Ctx().get(), fork, &s), grpc::StatusCode::ALREADY_EXISTS,
               "already exists");
  fork.set_new_session_id("bad id");
  ExpectStatus(stub_->Fork(Ctx().get(), fork, &s), grpc::StatusCode::INVALID_ARGUMENT,
               "outside [A-Za-z0-9._-]");

  pb::CheckpointRequest ck;
  ck.set_session_id(source);
  ck.set_checkpoint_id("ck");
  pb::CheckpointInfo info;
  ASSERT_TRUE(stub_->Checkpoint(Ctx().get(), ck, &info).ok());
  pb::RestoreRequest restore;
  restore.set_checkpoint_id("ck");
  restore.set_new_session_id("restored-1");
  ASSERT_TRUE(stub_->Restore(Ctx().get(), restore, &s).ok());
  EXPECT_EQ(s.session_id(), "restored-1");
  ExpectStatus(stub_->Restore(Ctx().get(), restore, &s), grpc::StatusCode::ALREADY_EXISTS,
               "already exists");
  restore.set_session_id(source);
  ExpectStatus(stub_->Restore(Ctx().get(), restore, &s), grpc::StatusCode::INVALID_ARGUMENT,
               "set one of them");

  const std::string bytes = Export(source);
  auto ctx = Ctx();
  auto writer = stub_->ImportSession(ctx.get(), &s);
  pb::ImportSessionRequest piece;
  piece.set_data(bytes);
  piece.set_session_id("imported-1");
  ASSERT_TRUE(writer->Write(piece));
  writer->WritesDone();
  ASSERT_TRUE(writer->Finish().ok());
  EXPECT_EQ(s.session_id(), "imported-1");
  EXPECT_EQ(s.counters().tokens_received(), chunk_ + 3);
}

// Issue 25 item 6: behind a proxy that routes by x-session-id, a header naming another session
// than the body would reach the wrong replica: refused, naming both.
TEST_F(ServerTest, SessionHeaderThatDisagreesWithTheBodyIsInvalid) {
  Start();
  const std::string id = Create();
  const auto routed_to = [](const std::string& header) {
    auto ctx = Ctx();
    ctx->AddMetadata("x-session-id", header);
    return ctx;
  };
  pb::GetSessionRequest get;
  get.set_session_id(id);
  pb::Session s;
  EXPECT_TRUE(stub_->GetSession(routed_to(id).get(), get, &s).ok());
  const std::string expected =
      "the x-session-id header names session 'elsewhere' but the "
      "request names '" +
      id + "'";
  ExpectStatus(stub_->GetSession(routed_to("elsewhere").get(), get, &s),
               grpc::StatusCode::INVALID_ARGUMENT, expected);
  {
    auto ctx = routed_to("elsewhere");
    auto stream = stub_->Ingest(ctx.get());
    stream->Write(Tokens(id, {5}));
    stream->WritesDone();
    pb::IngestResponse r;
    while (stream->Read(&r)) {
    }
    ExpectStatus(stream->Finish(), grpc::StatusCode::INVALID_ARGUMENT, expected);
  }
  EXPECT_EQ(Settled(id).counters().tokens_received(), 0);  // nothing applied
  // Fork names two sessions: the header may route by either.
  pb::ForkRequest fork;
  fork.set_session_id(id);
  fork.set_new_session_id("child");
  EXPECT_TRUE(stub_->Fork(routed_to("child").get(), fork, &s).ok());
  fork.set_new_session_id("child2");
  EXPECT_TRUE(stub_->Fork(routed_to(id).get(), fork, &s).ok());
  fork.set_new_session_id("child3");
  ExpectStatus(stub_->Fork(routed_to("elsewhere").get(), fork, &s),
               grpc::StatusCode::INVALID_ARGUMENT, "x-session-id header names session");
}

// Issue 25 item 6: the model's tokenizer as an RPC, converting as the other RPCs do.
TEST_F(ServerTest, TokenizeAndDetokenizeUseTheServedTokenizer) {
  StartWithTokenizer(R"([{"id": 93, "content": "<s>", "special": true}])",
                     R"({"bos_token": "<s>", "add_bos_token": true})");
  const int32_t kA = 'a' - 33, kB = 'b' - 33, kSpace = 94, kEAcute = 96;
  pb::TokenizeRequest tokenize;
  tokenize.set_text("ab é");
  pb::TokenizeResponse ids;
  ASSERT_TRUE(stub_->Tokenize(Ctx().get(), tokenize, &ids).ok());
  EXPECT_EQ(std::vector<int32_t>(ids.token_ids().begin(), ids.token_ids().end()),
            (std::vector<int32_t>{93, kA, kB, kSpace, kEAcute}));  // bos: a text stands alone
  tokenize.mutable_text_options()->set_add_bos(false);
  ASSERT_TRUE(stub_->Tokenize(Ctx().get(), tokenize, &ids).ok());
  EXPECT_EQ(ids.token_ids_size(), 4);

  pb::DetokenizeRequest detokenize;
  detokenize.mutable_token_ids()->CopyFrom(ids.token_ids());
  pb::DetokenizeResponse text;
  ASSERT_TRUE(stub_->Detokenize(Ctx().get(), detokenize, &text).ok());
  EXPECT_EQ(text.text(), "ab é");
  detokenize.add_token_ids(static_cast<int32_t>(vocab_));
  const grpc::Status outside = stub_->Detokenize(Ctx().get(), detokenize, &text);
  ExpectStatus(outside, grpc::StatusCode::INVALID_ARGUMENT, "outside the vocabulary");
  ttt::testing::ExpectReason(outside, "TOKEN_OUT_OF_VOCAB", std::nullopt);
  tokenize.set_text("bad \xff");
  ExpectStatus(stub_->Tokenize(Ctx().get(), tokenize, &ids), grpc::StatusCode::INVALID_ARGUMENT,
               "the Tokenize request: text is not valid UTF-8");
}

// Issue 29: special tokens in text stay text unless the request parses them, and the model's
// bos goes before text that starts a context (by default as tokenizer_config.json says).
TEST_F(ServerTest, TextOptionsChooseSpecialTokensAndBos) {
  // "<s>" is special token 93 (the fixture's "~") and the bos; add_bos_token says to add it.
  StartWithTokenizer(R"([{"id": 93, "content": "<s>", "special": true}])",
                     R"({"bos_token": "<s>", "add_bos_token": true})");
  pb::ServerInfo info;
  ASSERT_TRUE(stub_->GetServerInfo(Ctx().get(), pb::GetServerInfoRequest(), &info).ok());
  EXPECT_EQ(info.tokenizer_info().unicode_version(), ttt::tokenizer::UnicodeVersion());
  EXPECT_EQ(info.tokenizer_info().unicode_version().rfind("15.", 0), 0u);
  EXPECT_EQ(info.tokenizer_info().bos_token_id(), 93);
  EXPECT_TRUE(info.tokenizer_info().adds_bos());

  const auto score_ids = [&](const std::string& id, const std::string& text,
                             const pb::TextOptions& options) {
    pb::ScoreRequest req;
    req.set_session_id(id);
    req.set_text(text);
    *req.mutable_text_options() = options;
    pb::ScoreResponse resp;
    grpc::Status st = stub_->Score(Ctx().get(), req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return std::vector<int32_t>(resp.token_ids().begin(), resp.token_ids().end());
  };
  const int32_t kLt = '<' - 33, kS = 's' - 33, kGt = '>' - 33, kA = 'a' - 33, kB = 'b' - 33;
  const std::string fresh = Create();
  pb::TextOptions defaults;
  EXPECT_EQ(score_ids(fresh, "<s>ab", defaults),
            (std::vector<int32_t>{93, kLt, kS, kGt, kA, kB}));  // bos, then "<s>" as text
  pb::TextOptions parse_no_bos;
  parse_no_bos.set_parse_special_tokens(true);
  parse_no_bos.set_add_bos(false);
  EXPECT_EQ(score_ids(fresh, "<s>ab", parse_no_bos), (std::vector<int32_t>{93, kA, kB}));

  // Ingest: bos before the first text of a session at position 0, never later in its context.
  const std::string read = Create();
  pb::IngestRequest first;
  first.set_session_id(read);
  first.set_text("ab");
  first.set_flush(true);
  std::vector<pb::IngestResponse> acks;
  ASSERT_TRUE(IngestAll({first}, &acks).ok());
  EXPECT_EQ(acks.back().counters().position(), 3);  // bos, a, b
  ASSERT_TRUE(IngestAll({first}, &acks).ok());
  EXPECT_EQ(acks.back().counters().position(), 5);  // a, b: the context had begun
  EXPECT_EQ(score_ids(read, "ab", defaults), (std::vector<int32_t>{kA, kB}));
  const std::string no_bos = Create();
  first.set_session_id(no_bos);
  first.mutable_text_options()->set_add_bos(false);
  ASSERT_TRUE(IngestAll({first}, &acks).ok());
  EXPECT_EQ(acks.back().counters().position(), 2);

  // A session that resets at each document end: the text after one starts a new context and
  // gets the bos again, within the same stream.
  pb::CreateSessionRequest resetting;
  resetting.mutable_options()->set_reset_at_document_end(true);
  pb::Session created;
  ASSERT_TRUE(stub_->CreateSession(Ctx().get(), resetting, &created).ok());
  pb::IngestRequest document;
  document.set_session_id(created.session_id());
  document.set_text("ab");
  document.set_end_of_document(true);
  pb::IngestRequest next;
  next.set_text("a");
  next.set_flush(true);
  std::vector<pb::IngestResponse> doc_acks;
  ASSERT_TRUE(IngestAll({document, next}, &doc_acks).ok());
  ASSERT_EQ(doc_acks.size(), 2u);
  EXPECT_EQ(doc_acks[0].counters().position(), 0);  // reset after bos, a, b
  EXPECT_EQ(doc_acks[1].counters().position(), 2);  // bos, a
  EXPECT_EQ(doc_acks[1].stream_tokens(), 5);

  // A session that fades its fast weights at document ends keeps its context (no new bos) and
  // says so; a fraction outside [0, 1] is refused naming the field.
  pb::CreateSessionRequest fading;
  fading.mutable_options()->set_fade_at_document_end(0.5f);
  pb::Session faded;
  ASSERT_TRUE(stub_->CreateSession(Ctx().get(), fading, &faded).ok());
  EXPECT_EQ(faded.options().fade_at_document_end(), 0.5f);
  document.set_session_id(faded.session_id());
  ASSERT_TRUE(IngestAll({document, next}, &doc_acks).ok());
  EXPECT_EQ(doc_acks.back().counters().position(), 4);  // bos, a, b, a
  fading.mutable_options()->set_fade_at_document_end(1.5f);
  ExpectStatus(stub_->CreateSession(Ctx().get(), fading, &faded),
               grpc::StatusCode::INVALID_ARGUMENT, "fade_at_document_end must be in [0, 1]");

  // Only a stream's first message chooses how its text is encoded.
  pb::IngestRequest later;
  later.set_text("ab");
  later.mutable_text_options()->set_parse_special_tokens(true);
  ExpectStatus(IngestAll({Tokens(no_bos, {kA}), later}), grpc::StatusCode::INVALID_ARGUMENT,
               "Ingest message 1 sets text_options: only the first message of a stream may");
}

// Issue 9: a stream that ends with text still buffered (no flush on its last message) applies
// that text before it ends OK, and still answers each message exactly once (the end of the
// stream used to answer the last message a second time).
TEST_F(ServerTest, StreamEndingWithBufferedTextAnswersEachMessageOnce) {
  StartWithTokenizer();
  ASSERT_TRUE(server_ && server_->has_tokenizer());
  const std::string flushed = Create(), unflushed = Create();
  pb::IngestRequest whole;
  whole.set_session_id(flushed);
  whole.set_text("the quick brown fox jumps over the lazy dog");
  whole.set_flush(true);
  std::vector<pb::IngestResponse> rf;
  ASSERT_TRUE(IngestAll({whole}, &rf).ok());
  ASSERT_EQ(rf.size(), 1u);
  const int64_t tokens = rf[0].stream_tokens();
  ASSERT_GT(tokens, 0);

  pb::IngestRequest p1, p2;
  p1.set_session_id(unflushed);
  p1.set_text("the quick brown fox ");
  p2.set_text("jumps over the lazy dog");
  std::vector<pb::IngestResponse> ru;
  ASSERT_TRUE(IngestAll({p1, p2}, &ru).ok());
  ASSERT_EQ(ru.size(), 2u);
  EXPECT_EQ(ru[0].message_index(), 0);
  EXPECT_EQ(ru[1].message_index(), 1);
  EXPECT_EQ(ru[1].stream_tokens(), 0);  // nothing tokenized before the end of the stream
  EXPECT_EQ(ru[1].buffered_text_bytes(), static_cast<int64_t>(whole.text().size()));
  // The OK status came after the buffered text was applied.
  pb::Session s;
  pb::GetSessionRequest get;
  get.set_session_id(unflushed);
  ASSERT_TRUE(stub_->GetSession(Ctx().get(), get, &s).ok());
  EXPECT_EQ(s.counters().position(), tokens);
  EXPECT_FALSE(s.writer_active());
}

// Issue 9: a flush inside a multi-byte character tokenizes up to the last whole character and
// carries the character's first bytes to the next message: the same tokens as a flush right
// before the character. Where the text ends (end of stream, token ids, end_of_document) a cut
// character is still malformed UTF-8.
TEST_F(ServerTest, FlushInsideACharacterCarriesItsFirstBytes) {
  StartWithTokenizer();
  ASSERT_TRUE(server_ && server_->has_tokenizer());
  // 26 characters, each one token ("é", bytes C3 A9, by the test tokenizer's merge).
  const std::string text = "the caf\xC3\xA9, the caf\xC3\xA9 au lait";
  const size_t e1 = text.find('\xC3'), e2 = text.find('\xC3', e1 + 1);
  auto ingest_cut = [&](const std::string& id, std::vector<size_t> cuts,
                        std::vector<pb::IngestResponse>* out) {
    cuts.insert(cuts.begin(), 0);
    cuts.push_back(text.size());
    std::vector<pb::IngestRequest> msgs;
    for (size_t i = 0; i + 1 < cuts.size(); ++i) {
      pb::IngestRequest m;
      if (i == 0) m.set_session_id(id);
      m.set_text(text.substr(cuts[i], cuts[i + 1] - cuts[i]));
      m.set_flush(true);
      msgs.push_back(m);
    }
    return IngestAll(msgs, out);
  };
  const std::string inside = Create(), before = Create(), whole = Create();
  std::vector<pb::IngestResponse> ri, rb, rw;
  grpc::Status st = ingest_cut(inside, {e1 + 1, e2 + 1}, &ri);  // each cut after a C3
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_TRUE(ingest_cut(before, {e1, e2}, &rb).ok());
  ASSERT_TRUE(ingest_cut(whole, {}, &rw).ok());
  ASSERT_EQ(ri.size(), 3u);
  ASSERT_EQ(rb.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(ri[i].message_index(), static_cast<int64_t>(i));
    EXPECT_EQ(ri[i].stream_tokens(), rb[i].stream_tokens()) << i;
  }
  EXPECT_EQ(ri[0].buffered_text_bytes(), 1);  // the C3 waits
  EXPECT_EQ(ri[2].buffered_text_bytes(), 0);
  EXPECT_EQ(ri[2].stream_tokens(), 26);
  EXPECT_EQ(rw[0].stream_tokens(), 26);
  const auto probe = Doc(static_cast<int>(chunk_ + 3), 5);
  const auto si = Score(inside, probe), sb = Score(before, probe), sw = Score(whole, probe);
  ASSERT_EQ(si.logprobs_size(), sb.logprobs_size());
  ASSERT_EQ(si.logprobs_size(), sw.logprobs_size());
  for (int i = 1; i < si.logprobs_size(); ++i) {
    EXPECT_NEAR(si.logprobs(i), sb.logprobs(i), 1e-4) << i;
    EXPECT_NEAR(si.logprobs(i), sw.logprobs(i), 1e-4) << i;
  }

  // A cut character where the text ends is malformed; so is a byte no character starts with.
  const std::string id = Create();
  pb::IngestRequest cut;
  cut.set_session_id(id);
  cut.set_text("ok \xC3");
  cut.set_flush(true);
  ExpectStatus(IngestAll({cut}), grpc::StatusCode::INVALID_ARGUMENT, "UTF-8");
  ExpectStatus(IngestAll({cut, Tokens("", {5})}), grpc::StatusCode::INVALID_ARGUMENT, "UTF-8");
  pb::IngestRequest bad = cut;
  bad.set_text("bad \xFF");
  ExpectStatus(IngestAll({bad}), grpc::StatusCode::INVALID_ARGUMENT, "UTF-8");
}

// The value of the sample `name` (no labels) in the server's /metrics, or -1 without one.
double ScrapeGauge(int port, const std::string& name) {
  const std::string body = testing::ScrapeMetrics(port);
  const size_t at = body.find("\n" + name + " ");
  return at == std::string::npos ? -1 : std::strtod(body.c_str() + at + name.size() + 2, nullptr);
}

// Issue 9 #5: both memory figures are exported, the budgeted one and the one really held.
TEST_F(ServerTest, MetricsExportBudgetedAndHeldSessionMemory) {
  options_.metrics_listen = "127.0.0.1:0";
  Start();
  const std::string id = Create();
  ASSERT_TRUE(IngestAll({Tokens(id, Doc(static_cast<int>(3 * chunk_ + 1)))}).ok());
  double budgeted = -1, held = -1;
  for (int i = 0; i < 100 && budgeted <= 0; ++i) {  // the gauges refresh every 0.5 s
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    budgeted = ScrapeGauge(server_->metrics_port(), "tttserve_session_memory_bytes");
    held = ScrapeGauge(server_->metrics_port(), "tttserve_session_memory_held_bytes");
  }
  EXPECT_GT(budgeted, 0);
  EXPECT_GE(held, budgeted);  // nothing in flight now: no copies beyond the resident states
  EXPECT_GT(ScrapeGauge(server_->metrics_port(), "tttserve_memory_budget_bytes"), budgeted);
}

// Issue 27 item 2: --state_cache_mb turns the cache of adapted states on; a second session
// reading the same tokens adopts the first one's state, and the metrics count it.
TEST_F(ServerTest, StateCacheServesASecondReaderAndExportsItsCounters) {
  options_.metrics_listen = "127.0.0.1:0";
  options_.state_cache_mb = 16;
  Start();
  const std::vector<int32_t> doc = Doc(static_cast<int>(4 * chunk_ + 3));
  ASSERT_TRUE(IngestAll({Tokens(Create(), doc)}).ok());
  ASSERT_TRUE(IngestAll({Tokens(Create(), doc)}).ok());
  const int port = server_->metrics_port();
  double hits = -1;
  for (int i = 0; i < 100 && hits < 1; ++i) {  // the figures refresh every 0.5 s
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    hits = ScrapeGauge(port, "tttserve_state_cache_hits_total");
  }
  EXPECT_EQ(hits, 1);
  EXPECT_EQ(ScrapeGauge(port, "tttserve_state_cache_misses_total"), 1);
  EXPECT_EQ(ScrapeGauge(port, "tttserve_state_cache_tokens_skipped_total"), 4 * chunk_);
  EXPECT_EQ(ScrapeGauge(port, "tttserve_state_cache_entries"), 1);
  // Chunk updates computed: the first reader's; the second adopted its 4.
  EXPECT_EQ(ScrapeGauge(port, "tttserve_ttt_chunk_updates_total"), 4);
  EXPECT_GT(ScrapeGauge(port, "tttserve_state_cache_bytes"), 0);
  EXPECT_EQ(ScrapeGauge(port, "tttserve_state_cache_budget_bytes"), 16 << 20);

  options_.state_cache_mb = -1;
  auto refused = Server::Start(options_);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("--state_cache_mb must be in [0, 2^40]"),
            std::string::npos)
      << refused.status();
}

// --compact_kv_dtype names the compact KV cache's form: bf16 or int8, anything else refused at
// start with the flag's name (the old bool --compact_kv_cache alone still means bf16).
TEST_F(ServerTest, CompactKvDtypeIsBf16OrInt8) {
  for (const char* bad : {"fp8", "off", "true", ""}) {
    options_.compact_kv_dtype = bad;
    auto refused = Server::Start(options_);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(refused.status().message().find(
                  absl::StrCat("--compact_kv_dtype=", bad, ": must be bf16 or int8")),
              std::string::npos)
        << refused.status();
  }
  options_.compact_kv_dtype = "int8";
  options_.compact_kv_cache = true;
  options_.compact_idle_s = 1;
  Start();
  const std::string id = Create();
  EXPECT_TRUE(IngestAll({Tokens(id, Doc(static_cast<int>(chunk_ + 1)))}).ok());
}

// Issue 9 #3: an import is checked as its bytes arrive, against limits derived from the model:
// a huge declared header length is refused after 8 bytes (the stream still open), a deeply
// nested header before anything parses it, and a total past the largest valid state.
TEST_F(ServerTest, ImportIsCheckedAsItsBytesArrive) {
  options_.memory_budget_mb = 1;  // the llama fixture has no window: its limit follows the budget
  Start();
  auto import_status = [&](const std::vector<std::string>& pieces, bool writes_done) {
    auto ctx = Ctx();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    pb::Session s;
    auto w = stub_->ImportSession(ctx.get(), &s);
    for (const auto& p : pieces) {
      pb::ImportSessionRequest r;
      r.set_data(p);
      if (!w->Write(r)) break;
    }
    if (writes_done) w->WritesDone();
    return w->Finish();
  };
  auto le64 = [](uint64_t n) {
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    return out;
  };
  // 8 bytes declaring a 1 TiB header, and the stream left open: refused without waiting for more.
  ExpectStatus(import_status({le64(uint64_t{1} << 40)}, /*writes_done=*/false),
               grpc::StatusCode::RESOURCE_EXHAUSTED, "header of 1099511627776 bytes; the limit");
  // A header nested 50k deep (within the header length limit): refused before parsing.
  const std::string deep = "{\"a\":" + std::string(50000, '[') + std::string(50000, ']') + "}";
  ExpectStatus(import_status({le64(deep.size()) + deep}, true), grpc::StatusCode::INVALID_ARGUMENT,
               "nests objects or arrays more than");
  // One level past a checkpoint's limit: refused here with the reader's own limit, not later.
  const std::string five = "{\"a\":[[[[]]]]}";
  ExpectStatus(import_status({le64(five.size()) + five}, true), grpc::StatusCode::INVALID_ARGUMENT,
               "more than 4 deep");
  // More bytes than the largest state of this model under this budget: refused mid-stream.
  const std::string header = "{}";
  std::vector<std::string> pieces = {le64(header.size()) + header};
  for (int i = 0; i < 8; ++i) pieces.push_back(std::string(1 << 20, '\0'));
  ExpectStatus(import_status(pieces, true), grpc::StatusCode::RESOURCE_EXHAUSTED,
               "import exceeds the limit of");
  // A real export still imports.
  const std::string id = Create();
  ASSERT_TRUE(IngestAll({Tokens(id, Doc(static_cast<int>(3 * chunk_ + 1)))}).ok());
  const std::string bytes = Export(id);
  pb::Session imported;
  ASSERT_TRUE(Import(bytes, &imported).ok());
  EXPECT_EQ(imported.counters().position(), 3 * chunk_ + 1);
}

// Issue 9 #3: at most --max_concurrent_imports imports at once; the next is refused at once.
TEST_F(ServerTest, ConcurrentImportsAreCapped) {
  options_.max_concurrent_imports = 1;
  Start();
  const std::string id = Create();
  ASSERT_TRUE(IngestAll({Tokens(id, Doc(static_cast<int>(chunk_ + 1)))}).ok());
  const std::string bytes = Export(id);
  // A held import (its first bytes sent, never half-closed) and a second, whole import beside
  // it. The server may start the second first (its calls start on a pool of threads), so the held
  // one is what gets refused: then both go and the pair is tried again (bounded).
  grpc::Status second;
  std::unique_ptr<grpc::ClientContext> held_ctx;
  std::unique_ptr<grpc::ClientWriter<pb::ImportSessionRequest>> held;
  pb::Session held_out;
  for (int attempt = 0; attempt < 50; ++attempt) {
    if (held != nullptr) {
      held_ctx->TryCancel();
      held->Finish();
    }
    held_ctx = Ctx();
    held = stub_->ImportSession(held_ctx.get(), &held_out);
    pb::ImportSessionRequest head;
    head.set_data(bytes.substr(0, 16));
    ASSERT_TRUE(held->Write(head));
    for (int i = 0; i < 20; ++i) {  // until the server has started the held one
      pb::Session s;
      second = Import(bytes, &s);
      if (!second.ok()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (second.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) break;
  }
  ExpectStatus(second, grpc::StatusCode::RESOURCE_EXHAUSTED, "--max_concurrent_imports");
  held_ctx->TryCancel();
  held->Finish();
  // Its slot comes back once the server is done with the cancelled call.
  grpc::Status st;
  for (int i = 0; i < 200; ++i) {
    pb::Session s;
    st = Import(bytes, &s);
    if (st.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(st.ok()) << st.error_message();
}

// Issue 9 #4: exports that are never read cannot pile up: past --max_concurrent_exports the
// next is refused at once, and once the stalled ones go, exports work again.
TEST_F(ServerTest, UnreadExportsAreCapped) {
  options_.max_concurrent_exports = 2;
  Start();
  const std::string id = Create();
  // A state of ~12 MB (the fixture caches 768 bytes per token): more than a client's transport
  // takes in without reading (it took a whole 0.4 MB state unread, BDP probing off or not, so an
  // "unread" export of a small state could finish and free its slot at once: the test flaked).
  // In pieces, each its own call: the fixture has no attention window, so one 16k-token call
  // could outlast a call's deadline on a loaded machine.
  const std::vector<int32_t> doc = Doc(16000);
  for (size_t at = 0; at < doc.size(); at += 2000) {
    std::vector<int32_t> piece(doc.begin() + at, doc.begin() + std::min(doc.size(), at + 2000));
    ASSERT_TRUE(IngestAll({Tokens(id, piece)}).ok()) << "at " << at;
  }
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  std::vector<std::unique_ptr<grpc::ClientReader<pb::ExportSessionResponse>>> stalled;
  pb::ExportSessionRequest er;
  er.set_session_id(id);
  for (int i = 0; i < 2; ++i) {
    ctxs.push_back(Ctx());
    stalled.push_back(stub_->ExportSession(ctxs.back().get(), er));
    // Its first piece: the server has taken a slot for it (one at a time, so the second is not
    // refused by a slot the first has not yet left). Then it is read no further.
    pb::ExportSessionResponse first;
    ASSERT_TRUE(stalled.back()->Read(&first)) << "export " << i << " did not start";
    ASSERT_GT(first.total_size(), int64_t{16000} * 768);
  }
  std::string ignored;
  ExpectStatus(ExportStatus(id, &ignored), grpc::StatusCode::RESOURCE_EXHAUSTED,
               "--max_concurrent_exports");
  for (size_t i = 0; i < stalled.size(); ++i) {
    ctxs[i]->TryCancel();
    stalled[i]->Finish();
  }
  // The cancelled exports give their slots back (bounded wait: their reactors end on the server's
  // threads, a little after the client's Finish).
  grpc::Status st;
  std::string bytes;
  for (int i = 0; i < 3000; ++i) {
    bytes.clear();
    st = ExportStatus(id, &bytes);
    if (st.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_GT(bytes.size(), size_t{16000} * 768);
}

// Issue 9 #11: an import whose call ends CANCELLED, after all its bytes were sent, creates no
// session.
TEST_F(ServerTest, CancelledImportLeavesNothingBehind) {
  Start();
  const std::string id = Create();
  ASSERT_TRUE(IngestAll({Tokens(id, Doc(static_cast<int>(chunk_ + 1)))}).ok());
  const std::string bytes = Export(id);
  {
    auto ctx = Ctx();
    pb::Session s;
    auto w = stub_->ImportSession(ctx.get(), &s);
    pb::ImportSessionRequest r;
    r.set_data(bytes);
    ASSERT_TRUE(w->Write(r));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // every byte at the server
    ctx->TryCancel();
    EXPECT_EQ(w->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  // Whatever the server was doing with the call has finished by now.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  pb::ListSessionsResponse list;
  ASSERT_TRUE(stub_->ListSessions(Ctx().get(), pb::ListSessionsRequest(), &list).ok());
  ASSERT_EQ(list.sessions_size(), 1);
  EXPECT_EQ(list.sessions(0).session_id(), id);
}

// Issue 21: every message the engine applied is acknowledged, in order, before the error of a
// later message, whichever check refuses it: the vocabulary (the session's), the message's
// form (the server's edge), its text (the tokenizer). (The ingest rate: server_quotas_test; a
// revoked credential and a store write that fails: below.)
TEST_F(ServerTest, IngestAcknowledgesEveryAppliedMessageBeforeABadTokenId) {
  Start();
  const std::string id = Create();
  std::vector<pb::IngestRequest> good;
  for (int i = 0; i < 10; ++i) good.push_back(Tokens(i == 0 ? id : "", Doc(50, i)));
  ExpectEveryAppliedMessageAcknowledged(good, Tokens("", {5, static_cast<int32_t>(vocab_)}),
                                        grpc::StatusCode::INVALID_ARGUMENT,
                                        "outside the vocabulary", 500);
}

TEST_F(ServerTest, IngestAcknowledgesEveryAppliedMessageBeforeAMalformedOne) {
  Start();
  const std::string id = Create();
  std::vector<pb::IngestRequest> good;
  for (int i = 0; i < 10; ++i) good.push_back(Tokens(i == 0 ? id : "", Doc(50, i)));
  pb::IngestRequest both = Tokens("", {5});
  both.set_text("text and token ids");
  ExpectEveryAppliedMessageAcknowledged(good, both, grpc::StatusCode::INVALID_ARGUMENT, "both",
                                        500);
  const std::string other = Create();
  good[0].set_session_id(other);
  ExpectEveryAppliedMessageAcknowledged(good, pb::IngestRequest(),
                                        grpc::StatusCode::INVALID_ARGUMENT, "empty", 500);
}

TEST_F(ServerTest, IngestAcknowledgesEveryAppliedMessageBeforeTextThatIsNotUtf8) {
  StartWithTokenizer();
  ASSERT_TRUE(server_ && server_->has_tokenizer());
  const std::string id = Create();
  std::vector<pb::IngestRequest> good;
  for (int i = 0; i < 8; ++i) {
    pb::IngestRequest m;
    if (i == 0) m.set_session_id(id);
    m.set_text("the quick brown fox ");  // one token per byte (the test's tokenizer)
    m.set_flush(i % 2 == 1);             // every other message only buffers its text
    good.push_back(m);
  }
  pb::IngestRequest bad;
  bad.set_text(std::string("bad \xff bytes"));
  bad.set_flush(true);
  ExpectEveryAppliedMessageAcknowledged(good, bad, grpc::StatusCode::INVALID_ARGUMENT, "UTF-8",
                                        8 * 20);
}

// Issue 21: a stream the client cancels applies nothing beyond what it acknowledged: text the
// client left buffered is dropped, not flushed as at a half-close (gRPC marks the call cancelled
// before the server's failed read, which may come before OnCancel).
TEST_F(ServerTest, CancelledIngestDropsBufferedTextAndAppliesOnlyWhatItAcknowledged) {
  StartWithTokenizer();
  ASSERT_TRUE(server_ && server_->has_tokenizer());
  for (int run = 0; run < 5; ++run) {
    const std::string id = Create();
    auto ctx = Ctx();
    auto stream = stub_->Ingest(ctx.get());
    pb::IngestRequest flushed;
    flushed.set_session_id(id);
    flushed.set_text("the quick brown fox ");
    flushed.set_flush(true);
    pb::IngestRequest buffered;
    buffered.set_text("jumps over the lazy dog");
    std::vector<pb::IngestResponse> responses(2);
    ASSERT_TRUE(stream->Write(flushed));
    ASSERT_TRUE(stream->Read(&responses[0]));
    ASSERT_TRUE(stream->Write(buffered));
    ASSERT_TRUE(stream->Read(&responses[1]));
    ASSERT_EQ(responses[1].buffered_text_bytes(), 23);
    ctx->TryCancel();
    pb::IngestResponse r;
    while (stream->Read(&r)) {
    }
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
    EXPECT_EQ(AckedTokens(responses), 20);
    EXPECT_EQ(Settled(id).counters().position(), 20) << "run " << run;
  }
}

// Issue 21: with --durability=sync, a message whose store write fails ends the stream UNAVAILABLE
// after the answers to every message before it; nothing after it is applied, and the message
// itself is undone (the session goes back to its last durable copy), so acknowledgements ==
// applied position on this path too.
TEST_F(ServerTest, IngestWhoseStoreWriteFailsAppliesNothingAfterIt) {
  options_.sync_durability = true;
  Start();
  const std::string id = Create();
  std::vector<pb::IngestRequest> first = {Tokens(id, Doc(30, 1))};
  first[0].set_flush(true);
  std::vector<pb::IngestResponse> responses;
  ASSERT_TRUE(IngestAll(first, &responses).ok());
  // The store cannot write this tenant's session files any more: where its folder was is a file
  // (a plain permission change would not stop a test running as root).
  const fs::path sessions = dir_ / "ckpt" / "default" / "sessions";
  ASSERT_TRUE(fs::is_directory(sessions));
  fs::remove_all(sessions);
  std::ofstream(sessions) << "not a folder";
  // Sync durability: every message is written before its acknowledgement, flush or not; the
  // first write fails, so nothing is acknowledged, and the session goes back to its last durable
  // copy: what is applied is what was acknowledged (issue 21).
  std::vector<pb::IngestRequest> msgs;
  for (int i = 0; i < 4; ++i) msgs.push_back(Tokens(i == 0 ? id : "", Doc(25, i)));
  responses.clear();
  ExpectStatus(IngestAll(msgs, &responses), grpc::StatusCode::UNAVAILABLE,
               "back at its last durable copy");
  EXPECT_EQ(responses.size(), 0u);
  EXPECT_EQ(AckedTokens(responses), 0);
  EXPECT_EQ(Settled(id).counters().position(), 30);
}

// Issue 21: a token removed from the tokens file ends its open Ingest streams (UNAUTHENTICATED,
// after acknowledging what was applied): one that writes at its next message, an idle one at the
// next check of its credential (each second); new calls are refused too.
TEST_F(ServerTest, RevokedTokenEndsItsOpenIngestStreams) {
  fs::create_directories(dir_);
  const std::string tokens = (dir_ / "tokens").string();
  auto write_tokens = [&](const std::string& text) {
    std::ofstream(tokens + ".tmp") << text;
    fs::rename(tokens + ".tmp", tokens);
  };
  const std::string keep = "alice " + util::Sha256Hex("alice-kept") + "\n";
  write_tokens(keep + "alice " + util::Sha256Hex("alice-revoked") + "\n");
  options_.auth_tokens_file = tokens;
  auto started = Server::Start(options_);
  ASSERT_TRUE(started.ok()) << started.status();
  server_ = std::move(*started);
  stub_ = pb::TttService::NewStub(server_->InProcessChannel());
  auto ctx = [](const std::string& token) {
    auto c = Ctx();
    c->AddMetadata("authorization", "Bearer " + token);
    return c;
  };
  pb::Session created;
  ASSERT_TRUE(
      stub_->CreateSession(ctx("alice-revoked").get(), pb::CreateSessionRequest(), &created).ok());
  const std::string id = created.session_id();
  ASSERT_TRUE(
      stub_->CreateSession(ctx("alice-revoked").get(), pb::CreateSessionRequest(), &created).ok());
  const std::string idle_id = created.session_id();
  auto stream_ctx = ctx("alice-revoked");
  auto stream = stub_->Ingest(stream_ctx.get());
  std::vector<pb::IngestResponse> responses(1);
  ASSERT_TRUE(stream->Write(Tokens(id, {5, 6, 7})));
  ASSERT_TRUE(stream->Read(&responses[0]));
  auto idle_ctx = ctx("alice-revoked");
  auto idle = stub_->Ingest(idle_ctx.get());
  std::vector<pb::IngestResponse> idle_responses(1);
  ASSERT_TRUE(idle->Write(Tokens(idle_id, {5, 6, 7, 8})));
  ASSERT_TRUE(idle->Read(&idle_responses[0]));

  write_tokens(keep);
  // Bounded wait for the server to read the new file (it polls it every second).
  pb::GetSessionRequest get;
  get.set_session_id(id);
  pb::Session s;
  grpc::Status refused;
  for (int i = 0; i < 500 && refused.ok(); ++i) {
    refused = stub_->GetSession(ctx("alice-revoked").get(), get, &s);
    if (refused.ok()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ExpectStatus(refused, grpc::StatusCode::UNAUTHENTICATED, "unknown bearer token");

  stream->Write(Tokens("", {8, 9}));  // may fail once the server has ended the stream
  pb::IngestResponse r;
  while (stream->Read(&r)) responses.push_back(r);
  ExpectStatus(stream->Finish(), grpc::StatusCode::UNAUTHENTICATED,
               "the credential this stream opened with was revoked or changed");
  EXPECT_EQ(responses.size(), 1u);
  EXPECT_EQ(AckedTokens(responses), 3);
  EXPECT_EQ(Settled(id, "alice-kept").counters().position(), 3);

  // The idle stream sends nothing more: the server ends it (bounded by its 60 s deadline).
  while (idle->Read(&r)) idle_responses.push_back(r);
  ExpectStatus(idle->Finish(), grpc::StatusCode::UNAUTHENTICATED,
               "the open Ingest stream: the credential this stream opened with was revoked");
  EXPECT_EQ(idle_responses.size(), 1u);
  EXPECT_EQ(AckedTokens(idle_responses), 4);
  EXPECT_EQ(Settled(idle_id, "alice-kept").counters().position(), 4);
}

// The value of the counter `name` in the server's /metrics whose labels contain every fragment
// of `labels` (e.g. `code="OK"`), or -1 without one.
double ScrapeCounter(int port, const std::string& name, const std::vector<std::string>& labels) {
  const std::string body = testing::ScrapeMetrics(port);
  for (size_t at = body.find("\n" + name + "{"); at != std::string::npos;
       at = body.find("\n" + name + "{", at + 1)) {
    const size_t end = body.find('}', at);
    const std::string set = body.substr(at, end - at);
    bool all = end != std::string::npos;
    for (const std::string& l : labels) all = all && set.find(l) != std::string::npos;
    if (all) return std::strtod(body.c_str() + end + 2, nullptr);
  }
  return -1;
}

// Issue 21: a call whose client deadline passed is counted DEADLINE_EXCEEDED, not CANCELLED
// (which stays for calls the client cancelled), so the error-rate alert sees a slow server.
TEST_F(ServerTest, DeadlinesAreCountedAsDeadlineExceededNotCancelled) {
  options_.metrics_listen = "127.0.0.1:0";
  Start();
  const std::string id = Create();
  {
    // Long enough for the server to answer the first message even on a loaded machine (the call
    // must have reached the reactor), then the stream stays open until its deadline passes.
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
    auto stream = stub_->Ingest(&ctx);
    ASSERT_TRUE(stream->Write(Tokens(id, {5, 6})));
    pb::IngestResponse r;
    ASSERT_TRUE(stream->Read(&r));
    while (stream->Read(&r)) {
    }
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  {
    auto ctx = Ctx();
    auto stream = stub_->Ingest(ctx.get());
    ASSERT_TRUE(stream->Write(Tokens(id, {5, 6})));
    pb::IngestResponse first;
    ASSERT_TRUE(stream->Read(&first));  // the server has the call
    ctx->TryCancel();
    pb::IngestResponse r;
    while (stream->Read(&r)) {
    }
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  // Bounded wait: each call is counted when the server has wound it down.
  const std::string name = "tttserve_requests_total";
  double deadline = -1, cancelled = -1;
  for (int i = 0; i < 500 && (deadline < 1 || cancelled < 1); ++i) {
    deadline = ScrapeCounter(server_->metrics_port(), name,
                             {"method=\"Ingest\"", "code=\"DEADLINE_EXCEEDED\""});
    cancelled =
        ScrapeCounter(server_->metrics_port(), name, {"method=\"Ingest\"", "code=\"CANCELLED\""});
    if (deadline < 1 || cancelled < 1) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(deadline, 1);
  EXPECT_EQ(cancelled, 1);
}

}  // namespace
}  // namespace ttt::server
