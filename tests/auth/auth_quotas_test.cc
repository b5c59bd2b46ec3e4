// auth/quotas: the quotas file, each quota refused at its limit with its documented message
// while other tenants go on, the ingest token bucket on a fake clock, stream leases, reloads,
// and usage grouped by listed tenant (bounded metric labels).
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "auth/quotas.h"
#include "tests/testing/dirs.h"

namespace ttt::auth {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

TEST(QuotasFileTest, ListedTenantsOverrideTheDefaultsKeyByKey) {
  auto table = ParseQuotasFile(
      "# limits\n*  live_sessions=2 checkpoint_bytes=1Ki streams=1\n"
      "alice live_sessions=5 ingest_tokens_per_s=2.5 ingest_burst=10k  # more\n",
      "quotas.txt", nullptr);
  ASSERT_TRUE(table.ok()) << table.status();
  const TenantQuota& alice = table->For("alice");
  EXPECT_EQ(alice.live_sessions, 5);
  EXPECT_EQ(alice.checkpoint_bytes, 1024);  // from *
  EXPECT_EQ(alice.streams, 1);
  EXPECT_EQ(alice.ingest_tokens_per_s, 2.5);
  EXPECT_EQ(alice.ingest_burst, 10000);
  const TenantQuota& bob = table->For("bob");
  EXPECT_EQ(bob.live_sessions, 2);
  EXPECT_FALSE(bob.ingest_tokens_per_s.has_value());  // unlimited
}

TEST(QuotasFileTest, RefusesBadLinesNamingTheLine) {
  struct Case {
    const char* text;
    const char* fragment;
  } cases[] = {
      {"* sessions=3\n", "q:1: unknown quota 'sessions' (valid: live_sessions,"},
      {"* live_sessions=-1\n", "q:1: live_sessions=-1: must be a non-negative integer"},
      {"* live_sessions=3x\n", "q:1: live_sessions=3x: must be a non-negative integer"},
      {"* ingest_tokens_per_s=fast\n", "q:1: ingest_tokens_per_s=fast: must be a non-negative"},
      {"alice\n", "q:1: expected '<tenant|*> key=value ...'"},
      {"alice streams=1\n\nalice streams=2\n", "q:3: tenant 'alice' is already on line 1"},
  };
  for (const Case& c : cases) {
    auto table = ParseQuotasFile(c.text, "q", nullptr);
    ASSERT_FALSE(table.ok()) << c.text;
    EXPECT_EQ(table.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(table.status().message()), HasSubstr(c.fragment));
  }
}

class QuotasTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ttt::testing::FreshTestDir();
    fs::create_directories(dir_);
    path_ = (dir_ / "quotas.txt").string();
  }
  void TearDown() override { fs::remove_all(dir_); }
  void Write(const std::string& text) {
    std::ofstream(path_ + ".tmp") << text;
    fs::rename(path_ + ".tmp", path_);
  }
  std::unique_ptr<Quotas> Open(const std::string& text, int poll_ms = 0) {
    Write(text);
    QuotasOptions o;
    o.path = path_;
    o.poll_interval_ms = poll_ms;
    o.now = [this] { return now_; };
    auto q = Quotas::Open(std::move(o));
    EXPECT_TRUE(q.ok()) << q.status();
    return q.ok() ? std::move(*q) : nullptr;
  }
  static void ExpectExhausted(const absl::Status& st, const std::string& fragment) {
    EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
    EXPECT_THAT(std::string(st.message()), HasSubstr(fragment));
  }

  fs::path dir_;
  std::string path_;
  absl::Time now_ = absl::FromUnixSeconds(1000);
};

TEST_F(QuotasTest, LiveSessionsRefusedAtTheLimitOthersUnaffected) {
  auto q = Open("alice live_sessions=2\n");
  EXPECT_TRUE(q->CheckLiveSessions("alice", 1).ok());
  ExpectExhausted(q->CheckLiveSessions("alice", 2),
                  "tenant 'alice' has 2 live sessions, at its quota of 2 (live_sessions)");
  EXPECT_TRUE(q->CheckLiveSessions("bob", 1000).ok());  // not listed, no default: unlimited
}

TEST_F(QuotasTest, CheckpointBytesRefusedPastTheLimit) {
  auto q = Open("* checkpoint_bytes=1k\n");
  EXPECT_TRUE(q->CheckCheckpointBytes("alice", 600, 400).ok());  // exactly the limit
  ExpectExhausted(q->CheckCheckpointBytes("alice", 600, 401),
                  "tenant 'alice' would hold 1001 checkpoint bytes, over its quota of 1000 "
                  "(checkpoint_bytes)");
  EXPECT_TRUE(q->CheckCheckpointBytes("bob", 0, 1000).ok());
}

TEST_F(QuotasTest, IngestBucketRefillsAtTheRateAndSaysWhenToRetry) {
  auto q = Open("alice ingest_tokens_per_s=100 ingest_burst=200\n");
  EXPECT_TRUE(q->TakeIngestTokens("alice", 150).ok());  // a new bucket starts full (200)
  absl::Status st = q->TakeIngestTokens("alice", 100);  // 50 left: 50 more need 0.5 s
  ExpectExhausted(st,
                  "tenant 'alice' is over its ingest quota of 100 tokens/s "
                  "(ingest_tokens_per_s; 50 of a burst of 200 tokens left, 100 asked): "
                  "retry in 0.500 s");
  EXPECT_EQ(RetryAfterMs(st), 500);
  EXPECT_TRUE(q->TakeIngestTokens("bob", 1000000).ok());  // other tenants unaffected
  now_ += absl::Milliseconds(500);
  EXPECT_TRUE(q->TakeIngestTokens("alice", 100).ok());  // refilled as promised
  now_ += absl::Seconds(60);                            // refills only up to the burst
  EXPECT_TRUE(q->TakeIngestTokens("alice", 200).ok());
  ExpectExhausted(q->TakeIngestTokens("alice", 1), "retry in 0.010 s");
  ExpectExhausted(q->TakeIngestTokens("alice", 201),
                  "a message of 201 tokens is over tenant 'alice''s ingest burst of 200 tokens");
}

TEST_F(QuotasTest, ZeroRateAllowsNoIngest) {
  auto q = Open("alice ingest_tokens_per_s=0 ingest_burst=0\n");
  absl::Status st = q->TakeIngestTokens("alice", 1);
  ExpectExhausted(st, "over tenant 'alice''s ingest burst of 0");
  EXPECT_EQ(RetryAfterMs(st), std::nullopt);  // no retry can succeed
  EXPECT_TRUE(q->TakeIngestTokens("alice", 0).ok());
}

TEST_F(QuotasTest, StreamsAreCountedUntilTheLeaseEnds) {
  auto q = Open("* streams=2\n");
  auto a = q->AcquireStream("alice");
  auto b = q->AcquireStream("alice");
  ASSERT_TRUE(a.ok() && b.ok());
  auto c = q->AcquireStream("alice");
  ExpectExhausted(c.status(), "tenant 'alice' has 2 streams open, at its quota of 2 (streams)");
  EXPECT_TRUE(q->AcquireStream("bob").ok());      // and released at once
  { Quotas::StreamLease moved = std::move(*a); }  // ends one
  EXPECT_TRUE(q->AcquireStream("alice").ok());
}

TEST_F(QuotasTest, UsageIsPerListedTenantAndOthersSummed) {
  auto q = Open("alice streams=5\n");
  auto s1 = q->AcquireStream("alice");
  auto s2 = q->AcquireStream("bob");
  auto s3 = q->AcquireStream("carol");
  ASSERT_TRUE(q->TakeIngestTokens("bob", 7).ok());
  ASSERT_TRUE(q->CheckLiveSessions("alice", 0).ok());
  std::vector<QuotaUsage> usage = q->Usage();
  ASSERT_EQ(usage.size(), 2u);
  EXPECT_EQ(usage[0].tenant, "alice");
  EXPECT_EQ(usage[0].streams_open, 1);
  EXPECT_EQ(usage[1].tenant, "*");
  EXPECT_EQ(usage[1].streams_open, 2);
  EXPECT_EQ(usage[1].ingest_tokens_admitted, 7);
}

TEST_F(QuotasTest, LimitsByKeyListsOnlyTheLimitedQuotas) {
  auto q = Open("* streams=4\nalice ingest_tokens_per_s=2.5 checkpoint_bytes=1Ki\n");
  const std::map<std::string, double> alice = LimitsByKey(q->LimitsFor("alice"));
  EXPECT_EQ(alice, (std::map<std::string, double>{
                       {"checkpoint_bytes", 1024}, {"ingest_tokens_per_s", 2.5}, {"streams", 4}}));
  EXPECT_EQ(LimitsByKey(q->LimitsFor("bob")), (std::map<std::string, double>{{"streams", 4}}));
  EXPECT_TRUE(q->Listed("alice"));
  EXPECT_FALSE(q->Listed("bob"));
  EXPECT_EQ(q->ListedTenants(), std::vector<std::string>{"alice"});
}

TEST_F(QuotasTest, ReloadAppliesNewLimitsAndABadFileKeepsTheOld) {
  auto q = Open("alice live_sessions=1\n", /*poll_ms=*/20);
  ExpectExhausted(q->CheckLiveSessions("alice", 1), "at its quota of 1 (live_sessions)");
  Write("alice live_sessions=3\n");
  for (int i = 0; i < 1000 && q->generation() < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(q->generation(), 2u);
  EXPECT_TRUE(q->CheckLiveSessions("alice", 2).ok());
  Write("alice live_sessions=lots\n");
  absl::Status st = q->Reload();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  ExpectExhausted(q->CheckLiveSessions("alice", 3), "at its quota of 3 (live_sessions)");
}

}  // namespace
}  // namespace ttt::auth
