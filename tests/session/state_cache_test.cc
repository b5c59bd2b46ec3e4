// The cache of adapted states (issue 27 items 2 and 5) on the real engine and the golden llama
// fixture: a session that reads what another read from the same starting state adopts the
// cached state, and everything after is bit-identical to computing it; entries never cross
// tenants (unless shared on purpose), models or bases; checkpoints and exports of an adopted
// state restore in a manager whose cache is empty; the byte budget evicts the least recently
// used entries. StateCacheRaceTest (its own ctest, state_cache_race_test, run under TSan in CI):
// readers of two tenants at once through a cache small enough to evict during the race.
#include "session/internal/state_cache.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <future>
#include <map>
#include <mutex>
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
    auto sched = engine::Scheduler::Create(model_.get(), scheduler_options_);
    ASSERT_TRUE(sched.ok());
    scheduler_ = std::move(*sched);
    if (dir_.empty()) dir_ = FreshTestDir();
    ManagerOptions opt;
    opt.checkpoint_dir = dir_;
    opt.reaper_interval_ms = 3600 * 1000;
    opt.memory_budget_bytes = pool_budget;
    opt.state_cache.budget_bytes = cache_bytes;
    opt.state_cache.shared_across_tenants = shared_across_tenants;
    auto m = SessionManager::Create(model_.get(), scheduler_.get(), opt, listener_);
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
  std::string Fork(const std::string& id, const std::string& tenant = "t") {
    std::promise<absl::StatusOr<SessionInfo>> p;
    EXPECT_TRUE(manager_->Fork(tenant, id, std::nullopt, [&](auto r) { p.set_value(r); }).ok());
    auto r = p.get_future().get();
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->id : "";
  }
  std::string Export(const std::string& id, const std::string& tenant = "t") {
    std::promise<absl::StatusOr<std::string>> p;
    EXPECT_TRUE(manager_->ExportSession(tenant, id, [&](auto r) { p.set_value(r); }).ok());
    auto r = p.get_future().get();
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : "";
  }
  void Checkpoint(const std::string& id, const std::string& checkpoint,
                  const std::string& tenant = "t") {
    std::promise<absl::StatusOr<CheckpointInfo>> p;
    ASSERT_TRUE(manager_->Checkpoint(tenant, id, checkpoint, [&](auto r) { p.set_value(r); }).ok());
    ASSERT_TRUE(p.get_future().get().ok());
  }
  std::string Restore(const std::string& checkpoint, const std::string& tenant = "t") {
    std::promise<absl::StatusOr<SessionInfo>> p;
    EXPECT_TRUE(
        manager_->Restore(tenant, checkpoint, "", std::nullopt, [&](auto r) { p.set_value(r); })
            .ok());
    auto r = p.get_future().get();
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->id : "";
  }
  void Reset(const std::string& id, const std::string& tenant = "t") {
    std::promise<absl::StatusOr<SessionInfo>> p;
    ASSERT_TRUE(manager_->Reset(tenant, id, [&](auto r) { p.set_value(r); }).ok());
    ASSERT_TRUE(p.get_future().get().ok());
  }

  fs::path dir_;
  std::unique_ptr<engine::Model> model_;
  std::unique_ptr<engine::Scheduler> scheduler_;
  std::unique_ptr<SessionManager> manager_;
  int vocab_ = 0;
  int64_t chunk_ = 0;
  engine::SchedulerOptions scheduler_options_;
  SessionListener* listener_ = nullptr;  // set before Open
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

// Per tenant, in order, what each of its Ingests adopted from the state cache (0: a miss).
class LookupLog : public SessionListener {
 public:
  void OnStateCacheLookup(const std::string& tenant, int64_t tokens_adopted) override {
    std::lock_guard<std::mutex> lock(mu_);
    adopted_[tenant].push_back(tokens_adopted);
  }
  std::vector<int64_t> Of(const std::string& tenant) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = adopted_.find(tenant);
    return it == adopted_.end() ? std::vector<int64_t>{} : it->second;
  }

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::vector<int64_t>> adopted_;
};

// What one reader saw (StateCacheRaceTest::Read).
struct Observed {
  std::vector<float> after_documents, parent_after_fork_wrote, fork, fork_after_parent_wrote,
      reread, restored;
  std::string fork_id, checkpoint, parent_export, fork_export;
};

// Item 5 under concurrency: readers of two tenants read the same documents at once through a
// cache too small for what they insert, so lookups, adoptions, insertions and LRU evictions
// race on the engine thread while RPC threads fork, export, checkpoint, reset and restore.
// Every result must equal that of a manager without the cache making the same calls one reader
// at a time, within the contract's float tolerance: readers at once share engine steps, and a
// step's composition changes float rounding (a reader alone gives the reference's bits; the
// tests above prove a hit bit-identical to the computation it stands for). A state leaking from
// another reader, tenant or path would be off by far more (checked below).
class StateCacheRaceTest : public StateCacheTest {
 protected:
  void SetUp() override {
    // Every message and score runs whole beside the others (engine/scheduler.h ShareBudget):
    // the split is the same as the reference's.
    scheduler_options_.max_batch_tokens = 4096;
    scheduler_options_.max_decode_batch_tokens = 4096;
    listener_ = &log_;
    Open(0);  // the reference: no cache
  }

  std::vector<int32_t> Message(int index) { return Tokens(2 * chunk_, vocab_, 1000 + index); }

  // One reader's calls, `wait_rounds` scores first (that many engine rounds late to the
  // documents, so some readers find what others cached and some race them to it).
  Observed Read(const std::string& tenant, int reader, int wait_rounds) {
    const std::string s = Create(tenant);
    for (int i = 0; i < wait_rounds; ++i) Score(s, tenant);
    Observed o;
    for (int m = 0; m < 3; ++m) Ingest(s, Message(m), false, tenant);  // the shared documents
    o.after_documents = Score(s, tenant);
    o.fork_id = Fork(s, tenant);
    Ingest(o.fork_id, Tokens(2 * chunk_, vocab_, 2000 + reader), false, tenant);  // its own
    o.parent_after_fork_wrote = Score(s, tenant);
    o.fork = Score(o.fork_id, tenant);
    o.parent_export = Export(s, tenant);
    o.fork_export = Export(o.fork_id, tenant);
    o.checkpoint = "race-" + std::to_string(reader);
    Checkpoint(s, o.checkpoint, tenant);
    Ingest(s, Message(3), false, tenant);  // the parent writes after the fork
    o.fork_after_parent_wrote = Score(o.fork_id, tenant);
    Reset(s, tenant);
    Ingest(s, Message(0), false, tenant);  // the first document again, maybe evicted by now
    o.reread = Score(s, tenant);
    const std::string r = Restore(o.checkpoint, tenant);
    Ingest(r, Message(3), false, tenant);  // an opaque base: never a hit
    o.restored = Score(r, tenant);
    return o;
  }

  static constexpr double kTolerance = 1e-4;  // the contract's ~1e-6 relative, with room
  static void ExpectNear(const std::vector<float>& got, const std::vector<float>& want,
                         const std::string& what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_NEAR(got[i], want[i], kTolerance * (1 + std::abs(want[i]))) << what << ", token " << i;
    }
  }
  static float LargestDifference(const std::vector<float>& a, const std::vector<float>& b) {
    float most = 0;
    for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
      most = std::max(most, std::abs(a[i] - b[i]));
    }
    return most;
  }

  LookupLog log_;
};

TEST_F(StateCacheRaceTest, ReadersRacingThroughASmallCacheGetTheUncachedResults) {
  struct Reader {
    std::string tenant;
    int wait_rounds;
  };
  // Tenant t: three readers, staggered; tenant u: one, so none of its lookups can find a state
  // of its own except its re-read of the first document.
  const std::vector<Reader> readers = {{"t", 0}, {"t", 1}, {"t", 3}, {"u", 2}};
  std::vector<Observed> want;
  for (size_t i = 0; i < readers.size(); ++i) want.push_back(Read(readers[i].tenant, i, 0));
  ASSERT_TRUE(log_.Of("t").empty());  // no cache, no lookups
  // What a leaked write would change: far more than the tolerance.
  ASSERT_GT(LargestDifference(want[0].fork, want[0].after_documents), 100 * kTolerance);
  ASSERT_GT(LargestDifference(want[0].restored, want[0].after_documents), 100 * kTolerance);

  // The cache: room for about two entries of the first document's state, far less than the
  // readers insert (two tenants, four documents, each reader's fork and re-read).
  manager_.reset();
  fs::remove_all(dir_);
  dir_.clear();
  Open(int64_t{1} << 30);
  Ingest(Create("probe"), Message(0), false, "probe");
  const int64_t entry_bytes = manager_->state_cache_stats().bytes;
  ASSERT_GT(entry_bytes, 0);
  Open(2 * entry_bytes);
  const int64_t budget = manager_->state_cache_stats().budget_bytes;

  std::atomic<bool> racing{true};
  std::atomic<int64_t> most_bytes{0};
  std::thread watcher([&] {  // the bound holds at every moment anyone can see
    while (racing.load()) {
      most_bytes = std::max<int64_t>(most_bytes, manager_->state_cache_stats().bytes);
      std::this_thread::yield();
    }
  });
  std::vector<std::future<Observed>> got;
  for (size_t i = 0; i < readers.size(); ++i) {
    got.push_back(std::async(
        std::launch::async, [&, i] { return Read(readers[i].tenant, i, readers[i].wait_rounds); }));
  }
  std::vector<Observed> seen;
  for (auto& g : got) seen.push_back(g.get());
  racing = false;
  watcher.join();

  const StateCacheStats stats = manager_->state_cache_stats();
  EXPECT_LE(most_bytes.load(), budget);
  EXPECT_LE(stats.bytes, budget);
  EXPECT_GT(stats.evictions, 0);
  EXPECT_GT(stats.insertions, stats.entries);
  // Tenant u's lookups, in its reader's order: three documents, its fork's own tokens, the
  // parent's fourth message, the re-read, the restored copy. Only the re-read may find a state
  // (u's own first one, unless evicted): none of t's ever.
  const std::vector<int64_t> u = log_.Of("u");
  ASSERT_EQ(u.size(), 7u);
  for (size_t i = 0; i < u.size(); ++i) {
    if (i != 5) {
      EXPECT_EQ(u[i], 0) << "tenant u's lookup " << i << " adopted a state";
    }
  }
  EXPECT_EQ(log_.Of("t").size(), 21u);
  // And once more, one call at a time: t's state of the first document is surely cached now.
  Ingest(Create("t"), Message(0));
  ASSERT_EQ(log_.Of("t").size(), 22u);
  Ingest(Create("u"), Message(0), false, "u");
  ASSERT_EQ(log_.Of("u").size(), 8u);
  EXPECT_EQ(log_.Of("u").back(), 0) << "tenant u adopted tenant t's state";

  for (size_t i = 0; i < readers.size(); ++i) {
    const std::string who = "reader " + std::to_string(i) + ": ";
    ExpectNear(seen[i].after_documents, want[i].after_documents, who + "documents");
    // Neither the parent nor its fork sees the other's writes.
    ExpectNear(seen[i].parent_after_fork_wrote, want[i].after_documents,
               who + "the parent after its fork wrote");
    ExpectNear(seen[i].fork, want[i].fork, who + "fork");
    ExpectNear(seen[i].fork_after_parent_wrote, want[i].fork,
               who + "the fork after its parent wrote");
    ExpectNear(seen[i].reread, want[i].reread, who + "re-read after Reset");
    ExpectNear(seen[i].restored, want[i].restored, who + "restored checkpoint");
  }
  // One call at a time now, so bit for bit: each export is the whole state it was taken from,
  // whatever the cache held or dropped since. The fork's export scores as the fork does now
  // (its parent wrote, reset and re-read since); the parent's, as its checkpoint taken next.
  for (size_t i = 0; i < readers.size(); ++i) {
    const std::string& tenant = readers[i].tenant;
    const std::string who = "reader " + std::to_string(i);
    auto fork_copy = manager_->ImportSession(tenant, seen[i].fork_export, std::nullopt);
    ASSERT_TRUE(fork_copy.ok()) << fork_copy.status();
    EXPECT_TRUE(SameBits(Score(fork_copy->id, tenant), Score(seen[i].fork_id, tenant))) << who;
    auto parent_copy = manager_->ImportSession(tenant, seen[i].parent_export, std::nullopt);
    ASSERT_TRUE(parent_copy.ok()) << parent_copy.status();
    EXPECT_TRUE(SameBits(Score(parent_copy->id, tenant),
                         Score(Restore(seen[i].checkpoint, tenant), tenant)))
        << who;
  }
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
