// Sessions shared through etcd (docs/coordination.md), against a real etcd member and the real
// engine with the golden llama fixture: two SessionManagers in this process, each with its own
// etcd client and process lease, stand for two replicas on one shared folder. A replica's death
// or stall is its lease revoked, or its owner key deleted behind its back (what etcd does when a
// lease expires while its process is paused), so no test waits for a TTL. Each test has its own
// key prefix on the one etcd member.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <future>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "coord/etcd_client.h"
#include "engine/model.h"
#include "engine/scheduler.h"
#include "session/session.h"
#include "tests/testing/dirs.h"
#include "tests/testing/etcd.h"
#include "tests/testing/tokens.h"
#include "util/error_reason.h"

namespace ttt::session {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ttt::testing::EtcdCluster;
using ttt::testing::FreshTestDir;
using ttt::testing::GoldenLlama;
using ttt::testing::MakeClient;
using ttt::testing::TempDir;

using ttt::testing::Tokens;

absl::StatusOr<IngestProgress> IngestOn(SessionManager& m, const std::string& id,
                                        std::vector<int32_t> tokens, bool durable) {
  auto w = m.OpenWriter("t", id, "test");
  if (!w.ok()) return w.status();
  std::promise<absl::StatusOr<IngestProgress>> p;
  absl::Status st = (*w)->Ingest(
      std::move(tokens), false, nullptr, [&](absl::StatusOr<IngestProgress> r) { p.set_value(r); },
      durable);
  if (!st.ok()) return st;
  return p.get_future().get();
}

absl::StatusOr<ScoreResult> ScoreOn(SessionManager& m, const std::string& id,
                                    std::vector<int32_t> tokens) {
  std::promise<absl::StatusOr<ScoreResult>> p;
  absl::Status st = m.Score("t", id, std::move(tokens), nullptr,
                            [&](absl::StatusOr<ScoreResult> r) { p.set_value(r); });
  if (!st.ok()) return st;
  return p.get_future().get();
}

// One replica: its etcd client, its process lease (kept alive), its engine and its manager.
struct Replica {
  std::shared_ptr<coord::EtcdClient> etcd;
  std::shared_ptr<coord::KeptLease> lease;
  std::unique_ptr<engine::Scheduler> scheduler;
  std::unique_ptr<SessionManager> sessions;
};

class ClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    etcd_dir_ = new TempDir("session_cluster");
    etcd_ = new EtcdCluster(1, etcd_dir_->path());
    etcd_->Start();
  }
  static void TearDownTestSuite() {
    delete etcd_;
    delete etcd_dir_;
  }

  void SetUp() override {
    ASSERT_FALSE(HasFatalFailure());
    auto model = engine::Model::Load(GoldenLlama());
    ASSERT_TRUE(model.ok()) << model.status() << " (set TTT_GOLDEN_DIR to the golden fixtures)";
    model_ = std::move(*model);
    vocab_ = static_cast<int>(model_->config().vocab_size);
    chunk_ = static_cast<int>(model_->config().ttt_chunk);
    dir_ = FreshTestDir();
    prefix_ =
        absl::StrCat("/", ::testing::UnitTest::GetInstance()->current_test_info()->name(), "/");
    observer_ = MakeClient(etcd_->endpoints());
    a_ = Start("a");
    b_ = Start("b");
    ASSERT_TRUE(a_ && b_);
  }
  void TearDown() override {
    a_.reset();
    b_.reset();
    fs::remove_all(dir_);
  }

  // `cluster` false: a server alone on a folder of its own (the reference replay).
  std::unique_ptr<Replica> Start(const std::string& name, bool cluster = true) {
    auto r = std::make_unique<Replica>();
    auto scheduler = engine::Scheduler::Create(model_.get(), engine::SchedulerOptions{});
    EXPECT_TRUE(scheduler.ok()) << scheduler.status();
    if (!scheduler.ok()) return nullptr;
    r->scheduler = std::move(*scheduler);
    ManagerOptions options;
    options.checkpoint_dir = cluster ? dir_ : dir_ / ("alone-" + name);
    options.reaper_interval_ms = 3600 * 1000;  // tests call MaintainNow()
    options.persist_interval_ms = 0;
    if (cluster) {
      r->etcd = MakeClient(etcd_->endpoints());
      auto lease = r->etcd->GrantKept(absl::Seconds(20));
      EXPECT_TRUE(lease.ok()) << lease.status();
      if (!lease.ok()) return nullptr;
      r->lease = std::move(*lease);
      options.cluster.etcd = r->etcd;
      options.cluster.lease = r->lease;
      options.cluster.prefix = prefix_;
      options.cluster.replica_id = name;
      options.cluster.margin = absl::Seconds(5);
      options.cluster.gc_interval = absl::ZeroDuration();  // a sweep in every MaintainNow()
      options.cluster.handover_poll = handover_poll_;
      options.cluster.handover_wait = handover_wait_;
      if (session_quota_ > 0) {
        options.cluster.admit_session = [limit = session_quota_](const std::string& tenant,
                                                                 int64_t live_now) {
          if (live_now < limit) return absl::OkStatus();
          return absl::ResourceExhaustedError(
              absl::StrCat("tenant ", tenant, " has ", live_now, " live sessions"));
        };
      }
    }
    auto sessions = SessionManager::Create(model_.get(), r->scheduler.get(), options);
    EXPECT_TRUE(sessions.ok()) << sessions.status();
    if (!sessions.ok()) return nullptr;
    r->sessions = std::move(*sessions);
    return r;
  }

  std::string Key(const std::string& rest) const { return prefix_ + rest; }

  // The scores of `probe` after a single server alone replayed `history` (each piece one
  // Ingest): what a cluster must give after acknowledging exactly that history.
  std::vector<float> Replayed(const std::vector<std::vector<int32_t>>& history,
                              const std::vector<int32_t>& probe) {
    auto alone = Start("reference", /*cluster=*/false);
    EXPECT_TRUE(alone->sessions->CreateSession("t", {}, "s1").ok());
    for (const auto& piece : history)
      EXPECT_TRUE(IngestOn(*alone->sessions, "s1", piece, false).ok());
    auto scored = ScoreOn(*alone->sessions, "s1", probe);
    EXPECT_TRUE(scored.ok()) << scored.status();
    return scored.ok() ? scored->logprobs : std::vector<float>{};
  }

  static TempDir* etcd_dir_;
  static EtcdCluster* etcd_;
  std::unique_ptr<engine::Model> model_;
  int vocab_ = 0;
  int chunk_ = 0;
  fs::path dir_;
  std::string prefix_;
  int64_t session_quota_ = 0;  // live_sessions for replicas started from now on; 0: none
  // Handover between live replicas, for replicas started from now on. Zero: requests are read
  // only by MaintainNow(), and a call for a session owned elsewhere answers UNAVAILABLE at once.
  absl::Duration handover_poll_ = absl::ZeroDuration();
  absl::Duration handover_wait_ = absl::ZeroDuration();
  std::unique_ptr<coord::EtcdClient> observer_;  // reads and changes keys as a test needs
  std::unique_ptr<Replica> a_;
  std::unique_ptr<Replica> b_;
};

TempDir* ClusterTest::etcd_dir_ = nullptr;
EtcdCluster* ClusterTest::etcd_ = nullptr;

TEST_F(ClusterTest, AnIdIsCreatedOnceOnTheClusterAndOnlyItsOwnerServesIt) {
  ASSERT_TRUE(a_->sessions->CreateSession("t", {}, "s1").ok());
  auto twice = b_->sessions->CreateSession("t", {}, "s1");
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(twice.status().message(), HasSubstr("already exists for tenant 't' on this cluster"));
  auto elsewhere = b_->sessions->GetSession("t", "s1");
  EXPECT_EQ(elsewhere.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(elsewhere.status().message(), HasSubstr("is owned by replica 'a'"));
  const auto reason = util::ReasonOf(elsewhere.status());  // the client's ErrorInfo reason
  ASSERT_TRUE(reason.has_value());
  EXPECT_EQ(reason->reason, util::kReasonSessionOwnedElsewhere);
  // It asked the owner to hand the session over, under its own lease.
  auto want = observer_->Get(Key("wants/t/s1"));
  ASSERT_TRUE(want.ok()) << want.status();
  EXPECT_EQ(want->value, "b");
  EXPECT_EQ(want->lease, b_->lease->id());
  auto owner = observer_->Get(Key("sessions/t/s1/owner"));
  ASSERT_TRUE(owner.ok());
  EXPECT_EQ(owner->lease, a_->lease->id());
}

TEST_F(ClusterTest, ACommittedStateMovesToTheNextOwnerBitIdentical) {
  const auto first = Tokens(2 * chunk_ + 5, vocab_, 1);
  const auto probe = Tokens(9, vocab_, 2);
  ASSERT_TRUE(a_->sessions->CreateSession("t", {}, "s1").ok());
  ASSERT_TRUE(IngestOn(*a_->sessions, "s1", first, /*durable=*/true).ok());
  auto on_a = ScoreOn(*a_->sessions, "s1", probe);
  ASSERT_TRUE(on_a.ok()) << on_a.status();
  // A dies: etcd expires its lease (revoked here rather than waited for), deleting its owner key.
  ASSERT_TRUE(a_->lease->Revoke().ok());
  auto on_b = ScoreOn(*b_->sessions, "s1", probe);
  ASSERT_TRUE(on_b.ok()) << on_b.status();
  EXPECT_EQ(on_b->logprobs, on_a->logprobs);
  auto info = b_->sessions->GetSession("t", "s1");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->counters.tokens_received, static_cast<int64_t>(first.size()));
  EXPECT_EQ(on_b->logprobs, Replayed({first}, probe));
}

TEST_F(ClusterTest, AStaleOwnerIsFencedAndAcknowledgesNothing) {
  const auto first = Tokens(chunk_ + 3, vocab_, 3);
  const auto second = Tokens(chunk_ + 7, vocab_, 4);
  const auto late = Tokens(chunk_, vocab_, 5);
  const auto probe = Tokens(9, vocab_, 6);
  ASSERT_TRUE(a_->sessions->CreateSession("t", {}, "s1").ok());
  ASSERT_TRUE(IngestOn(*a_->sessions, "s1", first, true).ok());
  // etcd expired A's ownership while A was paused: A's lease still looks live to A, so only the
  // fence stands between A's late commit and B's history.
  auto owner = observer_->Get(Key("sessions/t/s1/owner"));
  ASSERT_TRUE(owner.ok());
  ASSERT_TRUE(observer_->DeleteIfOwner(owner->key, owner->create_revision, owner->key).ok());
  ASSERT_TRUE(IngestOn(*b_->sessions, "s1", second, true).ok());
  auto stale = IngestOn(*a_->sessions, "s1", late, true);
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(stale.status().message(), HasSubstr("owned by another replica"));
  // A forgot it: its next call finds B the owner.
  auto again = a_->sessions->GetSession("t", "s1");
  EXPECT_EQ(again.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(again.status().message(), HasSubstr("is owned by replica 'b'"));
  auto on_b = ScoreOn(*b_->sessions, "s1", probe);
  ASSERT_TRUE(on_b.ok()) << on_b.status();
  EXPECT_EQ(on_b->logprobs, Replayed({first, second}, probe));
}

TEST_F(ClusterTest, AnIdleSessionIsHandedOverOnRequestWithItsUncommittedInput) {
  const auto tokens = Tokens(chunk_ + 2, vocab_, 7);
  ASSERT_TRUE(a_->sessions->CreateSession("t", {}, "s1").ok());
  ASSERT_TRUE(IngestOn(*a_->sessions, "s1", tokens, /*durable=*/false).ok());
  EXPECT_EQ(b_->sessions->GetSession("t", "s1").status().code(), absl::StatusCode::kUnavailable);
  a_->sessions->MaintainNow();  // sees the request; commits and lets go on its engine thread
  absl::StatusOr<SessionInfo> moved;
  for (int i = 0; i < 100; ++i) {  // bounded: 10 s
    moved = b_->sessions->GetSession("t", "s1");
    if (moved.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_EQ(moved->counters.tokens_received, static_cast<int64_t>(tokens.size()));
  EXPECT_EQ(a_->sessions->session_count(), 0);
  EXPECT_EQ(observer_->Get(Key("wants/t/s1")).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ClusterTest, ACallForASessionALiveReplicaOwnsWaitsForItsHandoverAndSucceeds) {
  // As the server runs them: the owner reads handover requests between its maintenance passes,
  // and the replica a call reaches waits for the handover it asked for (a rolling restart).
  handover_poll_ = absl::Milliseconds(20);
  handover_wait_ = absl::Seconds(30);  // a bound, not an expectation
  auto owner = Start("c");
  auto asker = Start("d");
  ASSERT_TRUE(owner && asker);
  const auto tokens = Tokens(chunk_ + 2, vocab_, 8);
  const auto probe = Tokens(9, vocab_, 9);
  ASSERT_TRUE(owner->sessions->CreateSession("t", {}, "s2").ok());
  ASSERT_TRUE(IngestOn(*owner->sessions, "s2", tokens, /*durable=*/false).ok());
  // No UNAVAILABLE to retry: the first call succeeds, on the input the owner had not committed.
  auto on_asker = ScoreOn(*asker->sessions, "s2", probe);
  ASSERT_TRUE(on_asker.ok()) << on_asker.status();
  EXPECT_EQ(on_asker->logprobs, Replayed({tokens}, probe));
  EXPECT_EQ(owner->sessions->session_count(), 0);
  auto owner_key = observer_->Get(Key("sessions/t/s2/owner"));
  ASSERT_TRUE(owner_key.ok()) << owner_key.status();
  EXPECT_EQ(owner_key->lease, asker->lease->id());
  EXPECT_EQ(observer_->Get(Key("wants/t/s2")).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ClusterTest, AProcessWhoseLeaseIsLostAnswersForNoneOfItsSessions) {
  ASSERT_TRUE(a_->sessions->CreateSession("t", {}, "s1").ok());
  ASSERT_TRUE(a_->lease->Revoke().ok());
  auto read = a_->sessions->GetSession("t", "s1");
  EXPECT_EQ(read.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(read.status().message(), HasSubstr("this replica (a) lost contact with etcd"));
  EXPECT_EQ(ScoreOn(*a_->sessions, "s1", Tokens(4, vocab_, 8)).status().code(),
            absl::StatusCode::kUnavailable);
  a_->sessions->MaintainNow();
  EXPECT_EQ(a_->sessions->session_count(), 0);
  EXPECT_TRUE(b_->sessions->GetSession("t", "s1").ok());  // its owner key went with the lease
}

TEST_F(ClusterTest, ListingAndDeletingSpanTheCluster) {
  SessionOptions labelled;
  labelled.labels["team"] = "x";
  ASSERT_TRUE(a_->sessions->CreateSession("t", labelled, "s1").ok());
  ASSERT_TRUE(b_->sessions->CreateSession("t", {}, "s2").ok());
  ASSERT_TRUE(b_->sessions->CreateSession("other", {}, "s3").ok());
  auto ids = [](const std::vector<SessionInfo>& infos) {
    std::vector<std::string> out;
    for (const auto& info : infos) out.push_back(info.id);
    return out;
  };
  EXPECT_THAT(ids(a_->sessions->ListSessions("t")), ::testing::UnorderedElementsAre("s1", "s2"));
  EXPECT_THAT(ids(b_->sessions->ListSessions("t", {{"team", "x"}})), ::testing::ElementsAre("s1"));
  ASSERT_TRUE(a_->sessions->DeleteSession("t", "s1").ok());
  EXPECT_TRUE(b_->sessions->CreateSession("t", {}, "s1").ok());  // the id is free again
  EXPECT_EQ(a_->sessions->GetSession("t", "s1").status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(ClusterTest, AFailedCommitUndoesTheMessageOnEveryReplica) {
  const auto first = Tokens(chunk_ + 1, vocab_, 11);
  const auto lost = Tokens(chunk_ + 2, vocab_, 12);
  ASSERT_TRUE(a_->sessions->CreateSession("t", {}, "s1").ok());
  ASSERT_TRUE(IngestOn(*a_->sessions, "s1", first, true).ok());
  // The session's blob folder becomes a file: the next blob cannot be written.
  const fs::path blobs = dir_ / "t" / "blobs" / "s1";
  fs::rename(blobs, dir_ / "kept");
  std::ofstream(blobs) << "not a folder";
  auto failed = IngestOn(*a_->sessions, "s1", lost, true);
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(failed.status().message(), HasSubstr("could not be committed"));
  fs::remove(blobs);
  fs::rename(dir_ / "kept", blobs);
  // A let the session go; whoever serves it next has exactly the acknowledged input.
  auto info = b_->sessions->GetSession("t", "s1");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->counters.tokens_received, static_cast<int64_t>(first.size()));
}

TEST_F(ClusterTest, AForkIsCommittedWithItsCreation) {
  const auto tokens = Tokens(chunk_ + 4, vocab_, 9);
  const auto probe = Tokens(9, vocab_, 10);
  ASSERT_TRUE(a_->sessions->CreateSession("t", {}, "s1").ok());
  ASSERT_TRUE(IngestOn(*a_->sessions, "s1", tokens, true).ok());
  std::promise<absl::StatusOr<SessionInfo>> forked;
  ASSERT_TRUE(
      a_->sessions->Fork("t", "s1", std::nullopt, [&](auto r) { forked.set_value(r); }).ok());
  auto child = forked.get_future().get();
  ASSERT_TRUE(child.ok()) << child.status();
  ASSERT_TRUE(a_->lease->Revoke().ok());  // the fork was never written by write-behind
  auto on_b = ScoreOn(*b_->sessions, child->id, probe);
  ASSERT_TRUE(on_b.ok()) << on_b.status();
  EXPECT_EQ(on_b->logprobs, Replayed({tokens}, probe));
}

TEST_F(ClusterTest, TheSessionQuotaHoldsForReplicasCreatingAtTheSameInstant) {
  session_quota_ = 2;
  a_ = Start("a");
  b_ = Start("b");
  ASSERT_TRUE(a_ && b_);
  // Four creations at once, two on each replica: the count key lets exactly two through.
  std::vector<std::future<absl::StatusOr<SessionInfo>>> creations;
  for (int i = 0; i < 4; ++i) {
    SessionManager* on = (i % 2 == 0 ? a_ : b_)->sessions.get();
    creations.push_back(std::async(
        std::launch::async, [on, i] { return on->CreateSession("t", {}, absl::StrCat("s", i)); }));
  }
  int created = 0;
  for (auto& c : creations) {
    auto r = c.get();
    if (r.ok()) {
      ++created;
    } else {
      EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
    }
  }
  EXPECT_EQ(created, 2);
  EXPECT_EQ(observer_->Get(Key("tenants/t/sessions"))->value, "2");
  // A fork is a creation too; a delete gives its place back, on whichever replica.
  std::vector<std::string> ids;
  for (const auto& info : a_->sessions->ListSessions("t")) ids.push_back(info.id);
  ASSERT_EQ(ids.size(), 2u);
  std::promise<absl::StatusOr<SessionInfo>> forked;
  auto& owner_of_first = a_->sessions->GetSession("t", ids[0]).ok() ? a_ : b_;
  ASSERT_TRUE(owner_of_first->sessions
                  ->Fork("t", ids[0], std::nullopt, [&](auto r) { forked.set_value(r); })
                  .ok());
  EXPECT_EQ(forked.get_future().get().status().code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(owner_of_first->sessions->DeleteSession("t", ids[0]).ok());
  EXPECT_EQ(observer_->Get(Key("tenants/t/sessions"))->value, "1");
  EXPECT_TRUE(b_->sessions->CreateSession("t", {}, "again").ok());
}

TEST_F(ClusterTest, ATenantWithoutACountIsCountedFromItsHeadsOnce) {
  ASSERT_TRUE(a_->sessions->CreateSession("t", {}, "s1").ok());
  ASSERT_TRUE(b_->sessions->CreateSession("t", {}, "s2").ok());
  // As a cluster whose sessions predate the count key (or whose key an operator removed).
  ASSERT_TRUE(observer_->Transact({}, {coord::Operation::Delete(Key("tenants/t/sessions"))}).ok());
  ASSERT_TRUE(a_->sessions->CreateSession("t", {}, "s3").ok());
  EXPECT_EQ(observer_->Get(Key("tenants/t/sessions"))->value, "3");
  ASSERT_TRUE(observer_->Transact({}, {coord::Operation::Delete(Key("tenants/t/sessions"))}).ok());
  ASSERT_TRUE(b_->sessions->DeleteSession("t", "s2").ok());
  EXPECT_EQ(observer_->Get(Key("tenants/t/sessions"))->value, "2");
}

TEST_F(ClusterTest, SyncMessagesQueuedTogetherAreCommittedOnceAndAllAcknowledged) {
  const std::vector<std::vector<int32_t>> pieces = {
      Tokens(chunk_ + 1, vocab_, 31), Tokens(3, vocab_, 32), Tokens(chunk_ * 2, vocab_, 33),
      Tokens(5, vocab_, 34)};
  const auto probe = Tokens(9, vocab_, 35);
  ASSERT_TRUE(a_->sessions->CreateSession("t", {}, "s1").ok());
  auto writer = a_->sessions->OpenWriter("t", "s1", "test");
  ASSERT_TRUE(writer.ok()) << writer.status();
  // The engine thread is held until every message is queued behind it.
  std::promise<void> gate;
  engine::Work hold;
  hold.key = 987654321;
  hold.task = [opened = gate.get_future().share()] { opened.wait(); };
  ASSERT_TRUE(a_->scheduler->Submit(std::move(hold), /*bypass_limits=*/true).ok());
  std::vector<std::promise<absl::StatusOr<IngestProgress>>> acks(pieces.size());
  std::vector<int> order;
  std::mutex order_mu;
  for (size_t i = 0; i < pieces.size(); ++i) {
    ASSERT_TRUE((*writer)
                    ->Ingest(
                        pieces[i], false, nullptr,
                        [&, i](absl::StatusOr<IngestProgress> r) {
                          {
                            std::lock_guard<std::mutex> lock(order_mu);
                            order.push_back(static_cast<int>(i));
                          }
                          acks[i].set_value(r);
                        },
                        /*durable=*/true)
                    .ok());
  }
  gate.set_value();
  int64_t received = 0;
  for (size_t i = 0; i < pieces.size(); ++i) {
    auto ack = acks[i].get_future().get();
    ASSERT_TRUE(ack.ok()) << ack.status();
    received += static_cast<int64_t>(pieces[i].size());
    EXPECT_EQ(ack->counters.tokens_received, received);  // each its own position
  }
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3}));
  writer->reset();
  // One commit for the four (the blob is named <fence>-<commit number>), holding all of them.
  auto head = observer_->Get(Key("sessions/t/s1/head"));
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_THAT(head->value, HasSubstr("-1\""));
  ASSERT_TRUE(a_->lease->Revoke().ok());
  auto on_b = ScoreOn(*b_->sessions, "s1", probe);
  ASSERT_TRUE(on_b.ok()) << on_b.status();
  EXPECT_EQ(on_b->logprobs, Replayed(pieces, probe));
}

// A blob file in the shared folder, last written `age` ago.
fs::path Blob(const fs::path& dir, const std::string& id, const std::string& name,
              std::chrono::seconds age) {
  const fs::path path = dir / "t" / "blobs" / id / (name + ".safetensors");
  fs::create_directories(path.parent_path());
  std::ofstream(path) << "leftover";
  fs::last_write_time(path, fs::file_time_type::clock::now() - age);
  return path;
}

TEST_F(ClusterTest, TheGarbageSweepDeletesOnlyOldBlobsThatNoHeadNames) {
  const auto tokens = Tokens(chunk_ + 3, vocab_, 21);
  const auto probe = Tokens(9, vocab_, 22);
  ASSERT_TRUE(a_->sessions->CreateSession("t", {}, "s1").ok());
  ASSERT_TRUE(IngestOn(*a_->sessions, "s1", tokens, true).ok());
  std::vector<fs::path> committed;
  for (const auto& e : fs::directory_iterator(dir_ / "t" / "blobs" / "s1")) {
    committed.push_back(e.path());
  }
  ASSERT_EQ(committed.size(), 1u);
  const auto hour = std::chrono::hours(1);
  fs::last_write_time(committed[0], fs::file_time_type::clock::now() - hour);  // old, yet named
  const fs::path crashed = Blob(dir_, "s1", "999-1", hour);  // a commit a crash interrupted
  const fs::path in_flight = Blob(dir_, "s1", "999-2", std::chrono::seconds(1));
  const fs::path deleted = Blob(dir_, "gone", "5-1", hour);  // a deleted session's leftover

  // While another process holds the sweep's key, this one sweeps nothing.
  ASSERT_TRUE(observer_->CreateIfAbsent(Key("gc"), "elsewhere", 0).ok());
  a_->sessions->MaintainNow();
  EXPECT_TRUE(fs::exists(crashed));
  ASSERT_TRUE(observer_->Transact({}, {coord::Operation::Delete(Key("gc"))}).ok());

  b_->sessions->MaintainNow();
  EXPECT_FALSE(fs::exists(crashed));
  EXPECT_FALSE(fs::exists(deleted));
  EXPECT_FALSE(fs::exists(deleted.parent_path()));
  EXPECT_TRUE(fs::exists(in_flight));
  EXPECT_TRUE(fs::exists(committed[0]));
  // The sweep released its key; the session still loads from its head on the next owner.
  EXPECT_EQ(observer_->Get(Key("gc")).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(a_->lease->Revoke().ok());
  auto on_b = ScoreOn(*b_->sessions, "s1", probe);
  ASSERT_TRUE(on_b.ok()) << on_b.status();
  EXPECT_EQ(on_b->logprobs, Replayed({tokens}, probe));
}

}  // namespace
}  // namespace ttt::session
