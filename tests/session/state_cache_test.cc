// The cache of adapted states (issue 27 items 2 and 5) on the real engine and the golden llama
// fixture: a session that reads what another read from the same starting state adopts the
// cached state, and everything after is bit-identical to computing it; entries never cross
// tenants (unless shared on purpose), models or bases; checkpoints and exports of an adopted
// state restore in a manager whose cache is empty; the byte budget evicts the least recently
// used entries.
#include "session/internal/state_cache.h"

#include <cstring>
#include <filesystem>
#include <future>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "session/session.h"
#include "tests/testing/dirs.h"
#include "tests/testing/tokens.h"

namespace ttt::session {
namespace {

namespace fs = std::filesystem;
using ttt::testing::FreshTestDir;
using ttt::testing::GoldenDir;

using ttt::testing::Tokens;

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

class StateCacheTest : public ::testing::Test {
 protected:
  void SetUp() override { Open(int64_t{256} << 20); }
  void TearDown() override {
    manager_.reset();
    scheduler_.reset();
    fs::remove_all(dir_);
  }

  // A fresh manager over the same folder, its cache empty.
  void Open(int64_t cache_bytes, bool shared_across_tenants = false,
            int64_t pool_budget = int64_t{1} << 30) {
    manager_.reset();
    scheduler_.reset();
    model_.reset();
    auto model = engine::Model::Load(GoldenDir() / "llama");
    ASSERT_TRUE(model.ok()) << model.status() << " (set TTT_GOLDEN_DIR to the golden fixtures)";
    model_ = std::move(*model);
    auto sched = engine::Scheduler::Create(model_.get(), engine::SchedulerOptions{});
    ASSERT_TRUE(sched.ok());
    scheduler_ = std::move(*sched);
    if (dir_.empty()) dir_ = FreshTestDir();
    ManagerOptions opt;
    opt.checkpoint_dir = dir_;
    opt.reaper_interval_ms = 3600 * 1000;
    opt.memory_budget_bytes = pool_budget;
    opt.state_cache.budget_bytes = cache_bytes;
    opt.state_cache.shared_across_tenants = shared_across_tenants;
    auto m = SessionManager::Create(model_.get(), scheduler_.get(), opt);
    ASSERT_TRUE(m.ok()) << m.status();
    manager_ = std::move(*m);
    vocab_ = static_cast<int>(model_->config().vocab_size);
    chunk_ = model_->config().ttt_chunk;
  }

  std::string Create(const std::string& tenant = "t", bool reset_at_document_end = false) {
    SessionOptions options;
    options.reset_at_document_end = reset_at_document_end;
    auto info = manager_->CreateSession(tenant, options);
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? info->id : "";
  }
  IngestProgress Ingest(const std::string& id, std::vector<int32_t> tokens, bool eod = false,
                        const std::string& tenant = "t") {
    auto w = manager_->OpenWriter(tenant, id, "test");
    EXPECT_TRUE(w.ok()) << w.status();
    if (!w.ok()) return {};
    std::promise<absl::StatusOr<IngestProgress>> p;
    absl::Status st = (*w)->Ingest(std::move(tokens), eod, nullptr,
                                   [&](absl::StatusOr<IngestProgress> r) { p.set_value(r); });
    EXPECT_TRUE(st.ok()) << st;
    if (!st.ok()) return {};
    absl::StatusOr<IngestProgress> r = p.get_future().get();
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : IngestProgress{};
  }
  std::vector<float> Score(const std::string& id, const std::string& tenant = "t") {
    std::promise<absl::StatusOr<ScoreResult>> p;
    absl::Status st = manager_->Score(tenant, id, Tokens(20, vocab_, 99), nullptr,
                                      [&](absl::StatusOr<ScoreResult> r) { p.set_value(r); });
    EXPECT_TRUE(st.ok()) << st;
    if (!st.ok()) return {};
    auto r = p.get_future().get();
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->logprobs : std::vector<float>{};
  }
  std::string Fork(const std::string& id) {
    std::promise<absl::StatusOr<SessionInfo>> p;
    EXPECT_TRUE(manager_->Fork("t", id, std::nullopt, [&](auto r) { p.set_value(r); }).ok());
    auto r = p.get_future().get();
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->id : "";
  }
  std::string Export(const std::string& id) {
    std::promise<absl::StatusOr<std::string>> p;
    EXPECT_TRUE(manager_->ExportSession("t", id, [&](auto r) { p.set_value(r); }).ok());
    auto r = p.get_future().get();
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : "";
  }
  void Checkpoint(const std::string& id, const std::string& checkpoint) {
    std::promise<absl::StatusOr<CheckpointInfo>> p;
    ASSERT_TRUE(manager_->Checkpoint("t", id, checkpoint, [&](auto r) { p.set_value(r); }).ok());
    ASSERT_TRUE(p.get_future().get().ok());
  }
  std::string Restore(const std::string& checkpoint) {
    std::promise<absl::StatusOr<SessionInfo>> p;
    EXPECT_TRUE(
        manager_->Restore("t", checkpoint, "", std::nullopt, [&](auto r) { p.set_value(r); }).ok());
    auto r = p.get_future().get();
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->id : "";
  }

  fs::path dir_;
  std::unique_ptr<engine::Model> model_;
  std::unique_ptr<engine::Scheduler> scheduler_;
  std::unique_ptr<SessionManager> manager_;
  int vocab_ = 0;
  int64_t chunk_ = 0;
};

TEST_F(StateCacheTest, AReaderOfACachedDocumentAdoptsItAndScoresBitForBit) {
  const std::vector<int32_t> doc = Tokens(100, vocab_, 1);
  const std::string first = Create();
  const IngestProgress computed = Ingest(first, doc);
  StateCacheStats stats = manager_->state_cache_stats();
  EXPECT_EQ(stats.hits, 0);
  EXPECT_EQ(stats.misses, 1);
  EXPECT_EQ(stats.insertions, 1);
  EXPECT_GT(stats.bytes, 0);

  const std::string second = Create();
  const IngestProgress adopted = Ingest(second, doc);
  stats = manager_->state_cache_stats();
  EXPECT_EQ(stats.hits, 1);
  const int64_t boundary = (100 / chunk_) * chunk_;  // the last boundary the document reaches
  EXPECT_EQ(stats.tokens_skipped, boundary);
  // What the client sees of the ingest is the same, the loss too (the skipped tokens' share
  // comes from the cache), bit for bit.
  EXPECT_EQ(adopted.tokens, computed.tokens);
  EXPECT_EQ(adopted.nll_count, computed.nll_count);
  EXPECT_EQ(std::memcmp(&adopted.nll_sum, &computed.nll_sum, sizeof(double)), 0)
      << adopted.nll_sum << " vs " << computed.nll_sum;
  EXPECT_EQ(adopted.counters.chunks_applied, computed.counters.chunks_applied);
  EXPECT_EQ(adopted.counters.position, computed.counters.position);
  EXPECT_EQ(adopted.counters.tokens_pending, computed.counters.tokens_pending);
  const std::vector<float> scores = Score(first);
  EXPECT_TRUE(SameBits(Score(second), scores));

  // They diverge: each sees only its own writes, and stays equal to a session that computed
  // the same tokens.
  const std::vector<int32_t> more = Tokens(37, vocab_, 2);
  Ingest(second, more);
  EXPECT_TRUE(SameBits(Score(first), scores));
  Ingest(first, more);
  EXPECT_TRUE(SameBits(Score(first), Score(second)));
}

TEST_F(StateCacheTest, ADocumentSentInPiecesFindsTheStateCachedAtAWholeRead) {
  const std::vector<int32_t> doc = Tokens(100, vocab_, 3);
  const std::string whole = Create();
  Ingest(whole, doc);
  const std::string pieces = Create();
  // The first piece's boundaries were never cached (a miss); the second reaches the whole
  // read's last boundary, the same path: it adopts it.
  Ingest(pieces, std::vector<int32_t>(doc.begin(), doc.begin() + 50));
  EXPECT_EQ(manager_->state_cache_stats().hits, 0);
  const IngestProgress rest = Ingest(pieces, std::vector<int32_t>(doc.begin() + 50, doc.end()));
  EXPECT_EQ(manager_->state_cache_stats().hits, 1);
  EXPECT_EQ(rest.counters.position, 100);
  EXPECT_TRUE(SameBits(Score(pieces), Score(whole)));
}

TEST_F(StateCacheTest, CachedStatesAreNotServedToAnotherTenantUnlessShared) {
  const std::vector<int32_t> doc = Tokens(64, vocab_, 4);
  Ingest(Create("t"), doc);
  Ingest(Create("u"), doc, false, "u");
  StateCacheStats stats = manager_->state_cache_stats();
  EXPECT_EQ(stats.hits, 0);
  EXPECT_EQ(stats.misses, 2);
  EXPECT_EQ(stats.insertions, 2);  // one per tenant

  Open(int64_t{256} << 20, /*shared_across_tenants=*/true);
  const std::string mine = Create("t");
  Ingest(mine, doc);
  const std::string theirs = Create("u");
  Ingest(theirs, doc, false, "u");
  stats = manager_->state_cache_stats();
  EXPECT_EQ(stats.hits, 1);
  EXPECT_TRUE(SameBits(Score(theirs, "u"), Score(mine, "t")));
}

TEST_F(StateCacheTest, KeysOfAnotherModelOrBaseNeverMatch) {
  const std::vector<int32_t> doc = Tokens(8, vocab_, 5);
  using internal::StatePath;
  const StatePath llama = StatePath::Empty(model_->fingerprint());
  const StatePath other = StatePath::Empty("another model's fingerprint");
  const auto llama_key = StatePath::Chain(llama.key, doc.data(), doc.size());
  EXPECT_NE(llama_key, StatePath::Chain(other.key, doc.data(), doc.size()));
  EXPECT_NE(llama_key, StatePath::Chain(StatePath::Opaque(0).key, doc.data(), doc.size()));
  EXPECT_NE(StatePath::Opaque(0).key, StatePath::Opaque(0).key);
  // One cache holding a state of this model under this path: a cache over another model (its
  // fingerprint in every key) finds nothing under the same path and tenant.
  internal::StateCache cache(int64_t{64} << 20, false, model_->fingerprint());
  internal::StateCache other_model(int64_t{64} << 20, false, "another model's fingerprint");
  engine::SequenceState state = model_->NewSequence();
  cache.Insert(cache.KeyFor("t", llama_key), state, std::vector<float>(8, 0.0f));
  auto hit = cache.Lookup(cache.KeyFor("t", llama_key));
  ASSERT_TRUE(hit.has_value());
  EXPECT_EQ(hit->logprobs.size(), 8u);
  EXPECT_FALSE(cache.Lookup(other_model.KeyFor("t", llama_key)).has_value());
  EXPECT_FALSE(cache.Lookup(cache.KeyFor("u", llama_key)).has_value());
}

TEST_F(StateCacheTest, ForksShareTheirParentsPathAndRestoredStatesStartTheirOwn) {
  const std::string parent = Create();
  Ingest(parent, Tokens(21, vocab_, 6));  // a system prompt, ending mid-chunk
  const std::string a = Fork(parent);
  const std::string b = Fork(parent);
  Checkpoint(parent, "prompt");
  const std::string restored = Restore("prompt");
  const std::vector<int32_t> doc = Tokens(60, vocab_, 7);
  Ingest(a, doc);
  Ingest(b, doc);
  EXPECT_EQ(manager_->state_cache_stats().hits, 1);  // b adopted what a computed
  EXPECT_TRUE(SameBits(Score(a), Score(b)));
  // The same tokens from another starting state: the restored copy (a base of its own, though
  // its state equals the parent's) and a fresh session never adopt the forks' state.
  Ingest(restored, doc);
  Ingest(Create(), doc);
  StateCacheStats stats = manager_->state_cache_stats();
  EXPECT_EQ(stats.hits, 1);
  EXPECT_EQ(stats.misses, 4);  // the parent's prompt, a, the restored copy, the fresh session
}

TEST_F(StateCacheTest, SessionsResetAtEachDocumentEndShareTheEmptyBase) {
  const std::vector<int32_t> doc = Tokens(48, vocab_, 8);
  const std::string reader = Create("t", /*reset_at_document_end=*/true);
  Ingest(reader, Tokens(30, vocab_, 9), /*eod=*/true);  // another document, then reset
  Ingest(reader, doc, /*eod=*/false);
  const std::string fresh = Create();
  Ingest(fresh, doc);
  EXPECT_EQ(manager_->state_cache_stats().hits, 1);
  EXPECT_TRUE(SameBits(Score(fresh), Score(reader)));
  // Reset goes back to the empty base too.
  std::promise<absl::StatusOr<SessionInfo>> reset;
  ASSERT_TRUE(manager_->Reset("t", fresh, [&](auto r) { reset.set_value(r); }).ok());
  ASSERT_TRUE(reset.get_future().get().ok());
  Ingest(fresh, doc);
  EXPECT_EQ(manager_->state_cache_stats().hits, 2);
  EXPECT_TRUE(SameBits(Score(fresh), Score(reader)));
}

TEST_F(StateCacheTest, SessionsFadingAlikeAtDocumentEndsShareWhatFollowsAndOthersDoNot) {
  const std::vector<int32_t> first = Tokens(40, vocab_, 16);
  const std::vector<int32_t> second = Tokens(40, vocab_, 17);
  auto reader = [&](double fade) {
    SessionOptions options;
    options.fade_at_document_end = fade;
    auto info = manager_->CreateSession("t", options);
    EXPECT_TRUE(info.ok()) << info.status();
    Ingest(info->id, first, /*eod=*/true);
    Ingest(info->id, second);
    return info->id;
  };
  const std::string a = reader(0.5);
  const std::string b = reader(0.5);
  EXPECT_EQ(manager_->state_cache_stats().hits, 2);  // b: both documents
  EXPECT_TRUE(SameBits(Score(b), Score(a)));
  reader(0.25);  // the first document is the same path; after its fade it is not
  reader(0);
  StateCacheStats stats = manager_->state_cache_stats();
  EXPECT_EQ(stats.hits, 4);
  EXPECT_EQ(stats.misses, 4);  // a's two, then the second document of each of the other two
}

TEST_F(StateCacheTest, CheckpointsAndExportsOfAnAdoptedStateRestoreWithAnEmptyCache) {
  const std::vector<int32_t> doc = Tokens(90, vocab_, 10);
  Ingest(Create(), doc);
  const std::string adopter = Create();
  Ingest(adopter, doc);
  ASSERT_EQ(manager_->state_cache_stats().hits, 1);
  const std::vector<float> scores = Score(adopter);
  Checkpoint(adopter, "adopted");
  const std::string exported = Export(adopter);

  Open(int64_t{256} << 20);  // a fresh manager: nothing cached
  ASSERT_EQ(manager_->state_cache_stats().entries, 0);
  EXPECT_TRUE(SameBits(Score(Restore("adopted")), scores));
  auto imported = manager_->ImportSession("t", exported, std::nullopt);
  ASSERT_TRUE(imported.ok()) << imported.status();
  EXPECT_TRUE(SameBits(Score(imported->id), scores));
}

TEST_F(StateCacheTest, AnAdoptedStateEvictedToDiskReloadsWholeAndKeepsItsPathInThisProcess) {
  Open(int64_t{256} << 20, false, /*pool_budget=*/0);  // idle sessions go to disk at once
  const std::vector<int32_t> doc = Tokens(72, vocab_, 13);
  const std::string computed = Create();
  Ingest(computed, doc);
  const std::string adopter = Create();
  Ingest(adopter, doc);
  ASSERT_EQ(manager_->state_cache_stats().hits, 1);
  const std::vector<float> scores = Score(adopter);
  manager_->ReapNow();
  for (int i = 0; i < 250 && manager_->GetSession("t", adopter)->resident; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_FALSE(manager_->GetSession("t", adopter)->resident);
  EXPECT_TRUE(SameBits(Score(adopter), scores));  // reloaded from its file: the whole state
  // The reloaded state is where its path says: the same next tokens as the other session's
  // are found in the cache.
  const std::vector<int32_t> more = Tokens(24, vocab_, 14);
  Ingest(adopter, more);
  Ingest(computed, more);
  EXPECT_EQ(manager_->state_cache_stats().hits, 2);
  EXPECT_TRUE(SameBits(Score(adopter), Score(computed)));

  // Another process knows nothing of their paths: each starts a base of its own.
  ASSERT_TRUE(manager_->PersistAll().ok());
  Open(int64_t{256} << 20);
  const std::vector<int32_t> last = Tokens(24, vocab_, 15);
  Ingest(adopter, last);
  Ingest(computed, last);
  EXPECT_EQ(manager_->state_cache_stats().hits, 0);
  EXPECT_EQ(manager_->state_cache_stats().misses, 2);
  EXPECT_TRUE(SameBits(Score(adopter), Score(computed)));
}

TEST_F(StateCacheTest, TheByteBudgetEvictsTheLeastRecentlyUsed) {
  const std::vector<int32_t> first = Tokens(64, vocab_, 11);
  const std::vector<int32_t> second = Tokens(64, vocab_, 12);
  Ingest(Create(), first);
  const int64_t entry_bytes = manager_->state_cache_stats().bytes;
  ASSERT_GT(entry_bytes, 0);

  Open(entry_bytes + entry_bytes / 2);  // room for one entry of this size
  Ingest(Create(), first);
  Ingest(Create(), second);  // evicts the first
  StateCacheStats stats = manager_->state_cache_stats();
  EXPECT_EQ(stats.insertions, 2);
  EXPECT_EQ(stats.evictions, 1);
  EXPECT_EQ(stats.entries, 1);
  EXPECT_LE(stats.bytes, stats.budget_bytes);
  Ingest(Create(), second);
  Ingest(Create(), first);
  stats = manager_->state_cache_stats();
  EXPECT_EQ(stats.hits, 1);  // the second, still cached; the first was gone
  EXPECT_EQ(stats.misses, 3);
}

TEST_F(StateCacheTest, ANegativeBudgetIsRefused) {
  ManagerOptions opt;
  opt.checkpoint_dir = dir_;
  opt.state_cache.budget_bytes = -1;
  auto m = SessionManager::Create(model_.get(), scheduler_.get(), opt);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(m.status().message().find("state cache's budget must be >= 0"), std::string::npos)
      << m.status();
}

}  // namespace
}  // namespace ttt::session
