// Residency: where a session's state lives. Idle sessions past their TTL are removed, those idle
// past compact_idle_after_ms keep their fast weights in bf16 (CompactIdle: the tier between fp32
// and disk), and idle resident ones are evicted to their session file, least recently used first,
// while the resident pool exceeds its limits (bytes, sessions): at once when a session becomes
// resident (EvictToFit) and at each reaper pass; an evicted or compact session is back in fp32 on
// its next use (EnsureResident). Evictions only queue work; the write runs on the engine thread.
// PersistAll writes every resident session at shutdown and LoadPersisted registers them again
// in the next process. A session file is the session's durable copy: it is replaced by the next
// eviction or shutdown and removed only with the session (delete, TTL), never on reload, so a
// crash brings a session back as of its last copy. Files go through the CheckpointStore.
#include <algorithm>
#include <chrono>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "session/internal/checkpoint.h"
#include "session/internal/checkpoint_store.h"
#include "session/internal/cluster_store.h"
#include "session/internal/session_manager_impl.h"
#include "session/internal/session_record.h"
#include "session/session.h"
#include "util/log.h"
#include "util/status_macros.h"

namespace ttt::session {

void SessionManagerImpl::LoadPersisted() {
  auto persisted = store_->ListSessions(model_->fingerprint());
  // The most recently used come back first; --max_sessions holds here as anywhere.
  std::sort(persisted.begin(), persisted.end(), [](const auto& a, const auto& b) {
    return std::tie(b.meta.last_used_unix_ms, a.tenant, a.id) <
           std::tie(a.meta.last_used_unix_ms, b.tenant, b.id);
  });
  for (auto& p : persisted) {
    if (!CheckSessionLimit(session_count()).ok()) {
      // Kept, not lost: the tenant can restore it by the session id once there is room.
      absl::Status moved = store_->MoveSessionToCheckpoints(p.tenant, p.id);
      util::LogWarning(
          "session",
          absl::StrCat("--max_sessions=", options_.max_sessions, " reached: persisted session ",
                       p.id, " of tenant ", p.tenant, " ",
                       moved.ok() ? "is kept as the checkpoint of the same id"
                                  : absl::StrCat("stays on disk unloaded: ", moved.message())),
          {{"tenant", p.tenant}, {"session", p.id}});
      continue;
    }
    if (!ValidateOptions(p.meta.options).ok()) continue;
    auto s = std::make_shared<Session>(p.id, p.tenant, next_key_++, p.meta.options,
                                       p.meta.created_unix_ms, census_);
    s->counters = p.meta.counters;
    s->durable_counters = p.meta.counters;
    s->persisted_ms = NowMs();
    s->resident = false;
    std::lock_guard<std::mutex> lock(mu_);
    sessions_[p.tenant][p.id] = std::move(s);
    ++session_count_;
  }
}

void SessionManagerImpl::ReaperLoop() {
  const auto interval = std::chrono::milliseconds(options_.reaper_interval_ms);
  // On the cluster, handover requests are read between passes too: the asker is waiting.
  const int64_t poll_ms = absl::ToInt64Milliseconds(options_.cluster.handover_poll);
  const auto tick = cluster_ == nullptr || poll_ms <= 0
                        ? interval
                        : std::min(interval, std::chrono::milliseconds(poll_ms));
  auto next_pass = std::chrono::steady_clock::now() + interval;
  std::unique_lock<std::mutex> lock(reaper_mu_);
  while (!stop_reaper_) {
    reaper_cv_.wait_for(lock, tick);
    if (stop_reaper_) break;
    lock.unlock();
    if (std::chrono::steady_clock::now() >= next_pass) {
      next_pass = std::chrono::steady_clock::now() + interval;
      ReapNow();
      MaintainNow();
    } else {
      CheckOwnership();
    }
    lock.lock();
  }
}

void SessionManagerImpl::ReapNow() {
  const int64_t now = NowMs();
  std::vector<std::shared_ptr<Session>> expired;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [tenant, by_id] : sessions_) {
      for (auto it = by_id.begin(); it != by_id.end();) {
        Session& s = *it->second;
        std::lock_guard<std::mutex> slock(s.mu);
        const int64_t ttl =
            s.options.idle_ttl_seconds > 0 ? s.options.idle_ttl_seconds : options_.idle_ttl_seconds;
        if (s.inflight == 0 && !s.writer && now - s.last_used_ms > ttl * 1000) {
          s.deleted = true;
          expired.push_back(it->second);
          it = by_id.erase(it);
          --session_count_;
          continue;
        }
        ++it;
      }
    }
  }
  for (auto& s : expired) DropOnEngine(s);
  // States grow as they ingest, and sessions busy at admission could not make room then. A queued
  // compaction makes room itself once it has run, so that eviction sees what it saved.
  if (!CompactIdle()) EvictToFit(nullptr);
}

bool SessionManagerImpl::CompactIdle() {
  if (options_.compact_idle_after_ms <= 0) return false;
  const int64_t now = NowMs();
  std::vector<std::shared_ptr<Session>> idle;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [tenant, by_id] : sessions_) {
      for (auto& [id, s] : by_id) {
        std::lock_guard<std::mutex> slock(s->mu);
        if (IdleLocked(*s) && !s->compact &&
            now - s->last_used_ms >= options_.compact_idle_after_ms) {
          idle.push_back(s);
        }
      }
    }
  }
  if (idle.empty()) return false;
  engine::Work w;
  w.key = idle.front()->key;
  // Captures the link, not `this`, as Evict does.
  w.task = [idle, link = link_] {
    std::lock_guard<std::mutex> linked(link->mu);
    if (link->manager != nullptr) link->manager->FinishCompaction(idle);
  };
  return scheduler_->Submit(std::move(w), /*bypass_limits=*/true).ok();
}

bool SessionManagerImpl::IdleLocked(const Session& s) {
  return s.resident && !s.evicting && !s.deleted && !s.writer && s.inflight == 0;
}

void SessionManagerImpl::FinishCompaction(const std::vector<std::shared_ptr<Session>>& listed) {
  // Only those still idle: work admitted since the listing runs after this task (one engine
  // thread), and its EnsureResident expands again; a session in use keeps its fp32 state.
  std::vector<std::shared_ptr<Session>> idle;
  std::vector<engine::SequenceState*> states;
  for (const auto& s : listed) {
    std::lock_guard<std::mutex> lock(s->mu);
    if (!IdleLocked(*s)) continue;
    idle.push_back(s);
    states.push_back(&s->state);
  }
  const engine::CompactResult done =
      engine::CompactStates(absl::MakeSpan(states), {.kv_cache = options_.compact_kv_cache});
  for (const auto& s : idle) {
    std::lock_guard<std::mutex> lock(s->mu);
    // Unchanged (its buffers shared with a session in use): no refresh, whose delta norms read
    // every delta; the reaper lists such a session again at each pass.
    const std::vector<engine::HeldBuffer> now = s->state.HeldBuffers();
    const bool same = now.size() == s->held.size() &&
                      std::equal(now.begin(), now.end(), s->held.begin(),
                                 [](const engine::HeldBuffer& a, const engine::HeldBuffer& b) {
                                   return a.identity == b.identity && a.bytes == b.bytes;
                                 });
    if (!same) s->RefreshLocked();
  }
  if (listener_ != nullptr && done.bytes_before > done.bytes_after) {
    listener_->OnCompacted(done.states, done.bytes_before - done.bytes_after);
  }
  EvictToFit(nullptr);
}

void SessionManagerImpl::EvictToFit(const Session* admitted) {
  struct Candidate {
    int64_t last_used_ms;
    uint64_t key;  // ties: the older admission first
    std::vector<engine::HeldBuffer> held;
    std::shared_ptr<Session> session;
  };
  std::vector<Candidate> idle;
  internal::SharedBytes pool;  // a buffer forks share counts once, and goes with its last holder
  int64_t count = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [tenant, by_id] : sessions_) {
      for (auto& [id, s] : by_id) {
        std::lock_guard<std::mutex> slock(s->mu);
        if (!s->resident || s->evicting) continue;  // a queued eviction frees its place
        pool.Add(s->held);
        ++count;
        if (s->inflight == 0 && !s->writer && s.get() != admitted) {
          idle.push_back({s->last_used_ms, s->key, s->held, s});
        }
      }
    }
  }
  const int64_t count_limit = resident_session_limit();
  auto fits = [&] { return pool.bytes() <= options_.memory_budget_bytes && count <= count_limit; };
  if (fits()) return;
  std::sort(idle.begin(), idle.end(), [](const Candidate& a, const Candidate& b) {
    return std::tie(a.last_used_ms, a.key) < std::tie(b.last_used_ms, b.key);
  });
  for (const Candidate& c : idle) {
    if (fits()) break;
    if (!Evict(c.session)) continue;  // used since it was listed: it stays
    pool.Remove(c.held);              // frees only what no remaining session shares
    --count;
  }
}

void SessionManagerImpl::DropOnEngine(const std::shared_ptr<Session>& s) {
  engine::Work w;
  w.key = s->key;
  // Captures the stores and the link, not `this`: a delete's clean-up may run after the manager
  // is destroyed.
  w.task = [s, store = store_, cluster = cluster_, link = link_] {
    if (cluster != nullptr) {
      // Expired here: gone from the cluster too, while still this process's (a delete has
      // taken the ownership already).
      const Session::Ownership owned = s->TakeOwnership();
      if (owned.fence > 0) (void)cluster->Delete(s->tenant, s->id, owned.fence, owned.blob);
    } else {
      std::lock_guard<std::mutex> lock(link->mu);
      // A client may have created a new session of the same id meanwhile (ids can be chosen):
      // its file is not this session's to remove.
      if (link->manager == nullptr || !link->manager->Holds(s->tenant, s->id)) {
        store->RemoveSession(s->tenant, s->id);
      }
    }
    s->state = engine::SequenceState{};
    std::lock_guard<std::mutex> lock(s->mu);
    s->SetHeldLocked({});
  };
  (void)scheduler_->Submit(std::move(w), /*bypass_limits=*/true);
}

absl::StatusOr<int64_t> SessionManagerImpl::WriteSessionFile(const std::shared_ptr<Session>& s) {
  const auto start = std::chrono::steady_clock::now();
  int64_t fence = 0;
  int64_t sequence = 0;
  std::string previous_blob;
  int64_t dirty_since = 0;
  {
    std::lock_guard<std::mutex> lock(s->mu);
    fence = s->fence;
    sequence = ++s->commits;
    previous_blob = s->head_blob;
    dirty_since = s->persisted_ms > 0 ? s->persisted_ms : s->created_ms;
    s->dirty = false;  // a write after this point marks it again
  }
  auto fail = [&](absl::Status st) {
    std::lock_guard<std::mutex> lock(s->mu);
    s->dirty = true;
    return st;
  };
  const internal::CheckpointMeta meta = MetaOf(*s, "");
  auto bytes = internal::EncodeCheckpoint(s->state, meta);
  if (!bytes.ok()) return fail(bytes.status());
  if (cluster_ != nullptr) {
    auto head = cluster_->Commit(s->tenant, s->id, fence, sequence, *bytes, meta, previous_blob);
    if (absl::IsFailedPrecondition(head.status())) {
      // Fenced: another process owns the session; nothing of this state was committed.
      Disown(s, head.status());
      return head.status();
    }
    if (!head.ok()) return fail(head.status());
    std::lock_guard<std::mutex> lock(s->mu);
    s->head_blob = head->blob;
  } else {
    absl::Status written = store_->WriteSession(s->tenant, s->id, *bytes);
    if (!written.ok()) return fail(written);
  }
  const int64_t now = NowMs();
  {
    std::lock_guard<std::mutex> lock(s->mu);
    s->persisted_ms = now;
    s->durable_counters = meta.counters;
  }
  if (listener_ != nullptr) {
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    listener_->OnSessionPersisted(seconds, (now - dirty_since) / 1000.0);
  }
  return static_cast<int64_t>(bytes->size());
}

bool SessionManagerImpl::Evict(const std::shared_ptr<Session>& s) {
  {
    std::lock_guard<std::mutex> lock(s->mu);
    if (!s->resident || s->inflight > 0 || s->writer || s->evicting || s->deleted) return false;
    s->evicting = true;
  }
  engine::Work w;
  w.key = s->key;
  // Captures the link, not `this`: the engine may run the task after this manager is gone. The
  // destructor unlinks it under link->mu, so it also waits for an eviction that is running.
  w.task = [s, link = link_] {
    std::lock_guard<std::mutex> linked(link->mu);
    if (link->manager == nullptr) {
      std::lock_guard<std::mutex> lock(s->mu);
      s->evicting = false;
      return;  // the manager is gone: its sessions go with it
    }
    link->manager->FinishEviction(s);
  };
  if (scheduler_->Submit(std::move(w), /*bypass_limits=*/true).ok()) return true;
  std::lock_guard<std::mutex> lock(s->mu);  // shutting down: nothing will run it
  s->evicting = false;
  return false;
}

void SessionManagerImpl::FinishEviction(const std::shared_ptr<Session>& s) {
  {
    std::lock_guard<std::mutex> lock(s->mu);
    if (s->deleted || s->inflight > 0 || !s->resident) {
      s->evicting = false;
      return;  // someone uses it again: keep it
    }
  }
  absl::StatusOr<int64_t> written = WriteSessionFile(s);
  std::lock_guard<std::mutex> lock(s->mu);
  s->evicting = false;
  if (!written.ok()) {
    util::LogWarning("session",
                     absl::StrCat("eviction of ", s->id, " failed: ", written.status().message()),
                     {{"tenant", s->tenant}, {"session", s->id}});
    return;
  }
  s->state = engine::SequenceState{};
  s->resident = false;
  s->SetHeldLocked({});
  if (listener_ != nullptr) listener_->OnEvicted();
}

absl::Status SessionManagerImpl::PersistAll() {
  std::vector<std::shared_ptr<Session>> all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [tenant, by_id] : sessions_) {
      for (auto& [id, s] : by_id) all.push_back(s);
    }
  }
  absl::Status first;
  for (auto& s : all) {
    absl::Status result;
    absl::Status ran = scheduler_->RunAndWait(s->key, [&] {
      {
        std::lock_guard<std::mutex> lock(s->mu);
        if (!s->resident || s->deleted) return;
      }
      absl::StatusOr<int64_t> written = WriteSessionFile(s);
      result = written.status();
      if (written.ok() && listener_ != nullptr) listener_->OnCheckpointWritten(*written, 0.0);
    });
    if (!ran.ok()) result = ran;
    if (!result.ok() && first.ok()) first = result;
    if (cluster_ != nullptr && result.ok()) {
      // Its last state is committed: another replica may take it over now, and this one
      // forgets it (a later call here takes it back if the proxy still routes it here).
      int64_t fence;
      {
        std::lock_guard<std::mutex> lock(s->mu);
        fence = s->fence;
      }
      Disown(s, absl::OkStatus());
      cluster_->Release(s->tenant, s->id, fence);
    }
  }
  return first;
}

SessionManagerImpl::ResidentPool SessionManagerImpl::resident_pool() const {
  ResidentPool pool;
  internal::SharedBytes distinct;  // forks' shared buffers once
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [tenant, by_id] : sessions_) {
      for (const auto& [id, s] : by_id) {
        std::lock_guard<std::mutex> slock(s->mu);
        if (!s->resident) continue;
        ++pool.sessions;
        if (s->compact) ++pool.compact_sessions;
        distinct.Add(s->held);
      }
    }
  }
  pool.bytes = distinct.bytes();
  pool.held_bytes = pool.bytes + scratch_bytes_.load(std::memory_order_relaxed);
  return pool;
}

absl::Status SessionManagerImpl::EnsureResident(Session& s) {
  bool compact = false;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.resident && !s.compact) return absl::OkStatus();
    compact = s.resident;
  }
  if (compact) {  // idle for a while: its bf16 copies back in fp32 buffers of its own
    engine::ExpandState(s.state);
    {
      std::lock_guard<std::mutex> lock(s.mu);
      s.RefreshLocked();
    }
    EvictToFit(&s);  // it grew, and is in use: others make room
    return absl::OkStatus();
  }
  std::string blob;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    blob = s.head_blob;
  }
  if (cluster_ != nullptr && blob.empty()) {  // created empty, never committed since
    s.state = model_->NewSequence();
    s.path = internal::StatePath::Empty(model_->fingerprint());
    std::lock_guard<std::mutex> lock(s.mu);
    s.resident = true;
    s.RefreshLocked();
    return absl::OkStatus();
  }
  const std::string source = cluster_ != nullptr ? absl::StrCat("blob ", blob, " of session ", s.id)
                                                 : store_->SessionFileName(s.tenant, s.id);
  auto bytes = cluster_ != nullptr ? cluster_->ReadBlob(s.tenant, s.id, blob)
                                   : store_->ReadSession(s.tenant, s.id);
  if (!bytes.ok()) {
    return absl::DataLossError(absl::StrCat(
        "session ", s.id, " could not be reloaded from disk: ", bytes.status().message()));
  }
  auto decoded = internal::DecodeCheckpoint(std::move(*bytes), source, *model_);
  if (!decoded.ok()) {
    return absl::Status(decoded.status().code(),
                        absl::StrCat("session ", s.id, " could not be reloaded from disk: ",
                                     decoded.status().message()));
  }
  s.state = std::move(decoded->state);
  // The file stays: it is the session's durable copy until a newer one replaces it (the next
  // eviction or shutdown) or the session goes; a crash meanwhile brings the session back as of
  // that copy instead of losing it.
  {
    std::lock_guard<std::mutex> lock(s.mu);
    s.resident = true;
    s.RefreshLocked();
  }
  EvictToFit(&s);  // it is in use, so others make room
  return absl::OkStatus();
}

void SessionManagerImpl::RewindToDurable(Session& s) {
  std::lock_guard<std::mutex> lock(s.mu);
  s.counters = s.durable_counters;
  s.dirty = false;
  s.path = {};                // the durable copy's path is not known
  if (s.persisted_ms == 0) {  // never written: its durable copy is the empty state
    s.state = model_->NewSequence();
    s.RefreshLocked();
    return;
  }
  s.state = engine::SequenceState{};  // its next use reloads the durable copy
  s.resident = false;
  s.SetHeldLocked({});
}

internal::CheckpointMeta SessionManagerImpl::MetaOf(Session& s,
                                                    const std::string& checkpoint_id) const {
  internal::CheckpointMeta meta;
  meta.model_fingerprint = model_->fingerprint();
  meta.tenant = s.tenant;
  meta.session_id = s.id;
  meta.checkpoint_id = checkpoint_id;
  std::lock_guard<std::mutex> lock(s.mu);
  // A checkpoint's creation, or the session's own (what a takeover or a restart restores).
  meta.created_unix_ms = checkpoint_id.empty() ? s.created_ms : NowMs();
  meta.last_used_unix_ms = s.last_used_ms;
  meta.counters = s.counters;
  meta.options = s.options;
  return meta;
}

absl::StatusOr<std::string> SessionManagerImpl::EncodeSession(Session& s,
                                                              const std::string& checkpoint_id) {
  // A fork's increments are written as they are (checkpoint format 3): what restores from the
  // bytes scores exactly as the session does from here on.
  return internal::EncodeCheckpoint(s.state, MetaOf(s, checkpoint_id));
}

}  // namespace ttt::session
