// The session store beyond one process: write-behind of changed sessions, and, when the replicas
// of a deployment share sessions through etcd (ManagerOptions::cluster), ownership: creating a
// session on the cluster, taking over one this process does not own, letting go of one it lost
// or was asked to hand over (internal/cluster_store.h says what etcd guarantees).

#include "absl/strings/str_cat.h"
#include "session/internal/checkpoint.h"
#include "session/internal/checkpoint_store.h"
#include "session/internal/cluster_store.h"
#include "session/internal/names.h"
#include "session/internal/session_manager_impl.h"
#include "session/internal/session_record.h"
#include "session/session.h"
#include "util/error_reason.h"
#include "util/log.h"
#include "util/status_macros.h"

namespace ttt::session {

using internal::Quote;
using internal::RandomHex;

absl::Status SessionManagerImpl::CheckIdFreeLocked(const std::string& tenant,
                                                   const std::string& id) const {
  auto t = sessions_.find(tenant);
  const bool here = t != sessions_.end() && t->second.count(id) > 0;
  // The store counts too: a session persisted there by a previous process still owns its id,
  // and a new session would overwrite it.
  if (here || store_->HasSession(tenant, id)) {
    return absl::AlreadyExistsError(absl::StrCat(
        "session ", Quote(id), " already exists for tenant ", Quote(tenant),
        " (resident, evicted or persisted in the session store); choose another id, or use the "
        "existing session"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<Session>> SessionManagerImpl::RegisterLocked(
    const std::string& tenant, const std::string& id, const SessionOptions& options,
    int64_t created_ms) {
  RETURN_IF_ERROR(CheckSessionLimit(session_count_));
  auto s = std::make_shared<Session>(id, tenant, next_key_++, options, created_ms, census_);
  sessions_[tenant][id] = s;
  ++session_count_;
  return s;
}

absl::StatusOr<std::shared_ptr<Session>> SessionManagerImpl::PublishShared(
    const std::string& tenant, const SessionOptions& options, engine::SequenceState state,
    const Counters& counters, const std::string& wanted, internal::StatePath path) {
  RETURN_IF_ERROR(CheckSessionLimit(session_count()));
  const std::string id = wanted.empty() ? "s-" + RandomHex(16) : wanted;
  const int64_t now = NowMs();
  auto s = std::make_shared<Session>(id, tenant, 0, options, now);
  s->state = std::move(state);
  {
    std::lock_guard<std::mutex> lock(s->mu);
    s->counters = counters;
  }
  // A state with content (fork, restore, import) is committed with the session: its creation is
  // as durable as the session itself. An empty one needs no blob.
  std::string bytes;
  if (counters.tokens_received > 0 || counters.position > 0) {
    ASSIGN_OR_RETURN(bytes, internal::EncodeCheckpoint(s->state, MetaOf(*s, "")));
  }
  ASSIGN_OR_RETURN(internal::Owned owned, cluster_->Create(tenant, id, bytes, MetaOf(*s, "")));
  absl::StatusOr<std::shared_ptr<Session>> registered;
  {
    std::lock_guard<std::mutex> lock(mu_);
    registered = RegisterLocked(tenant, id, options, now);
    if (registered.ok()) {  // whole before anyone can find it
      Session& r = **registered;
      r.state = std::move(s->state);
      r.path = std::move(path);
      std::lock_guard<std::mutex> slock(r.mu);
      r.counters = counters;
      r.RefreshLocked();
      r.fence = owned.fence;
      r.head_blob = owned.head.blob;
      r.persisted_ms = now;
      r.durable_counters = counters;
    }
  }
  if (!registered.ok()) (void)cluster_->Delete(tenant, id, owned.fence, owned.head.blob);
  return registered;
}

absl::StatusOr<std::shared_ptr<Session>> SessionManagerImpl::Adopt(const std::string& tenant,
                                                                   const std::string& id) {
  std::lock_guard<std::mutex> adopting(adopt_mu_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto t = sessions_.find(tenant);
    if (t != sessions_.end()) {
      if (auto it = t->second.find(id); it != t->second.end()) return it->second;  // meanwhile
    }
  }
  RETURN_IF_ERROR(CheckSessionLimit(session_count()));
  ASSIGN_OR_RETURN(internal::Owned owned, cluster_->TakeOver(tenant, id));
  const internal::CheckpointMeta& meta = owned.head.meta;
  absl::Status refused;
  if (meta.model_fingerprint != model_->fingerprint()) {
    refused = util::WithReason(
        absl::FailedPreconditionError(absl::StrCat(
            "session ", Quote(id), " was committed by another model (", meta.model_fingerprint,
            "); replicas sharing sessions must serve the same model")),
        util::kReasonStateFromOtherModel);
  }
  // (A StatusOr cannot hold an OK status without a value.)
  absl::StatusOr<std::shared_ptr<Session>> registered =
      refused.ok() ? absl::UnknownError("not registered") : refused;
  if (refused.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    registered = RegisterLocked(tenant, id, meta.options, meta.created_unix_ms);
    if (registered.ok()) {  // whole before anyone can find it
      Session& r = **registered;
      std::lock_guard<std::mutex> slock(r.mu);
      r.counters = meta.counters;
      r.resident = false;  // its state loads on first use (EnsureResident)
      r.fence = owned.fence;
      r.head_blob = owned.head.blob;
      r.persisted_ms = NowMs();
      r.durable_counters = meta.counters;
    }
  }
  if (!registered.ok()) {
    cluster_->Release(tenant, id, owned.fence);
    return registered.status();
  }
  std::shared_ptr<Session> s = *registered;
  util::LogInfo("session",
                absl::StrCat("took over session ", id, " of tenant ", tenant, " (fencing revision ",
                             owned.fence, ")"),
                {{"tenant", tenant}, {"session", id}, {"fence", owned.fence}});
  return s;
}

// `why` OK: handed over on purpose (shutdown, request), nothing to log.
void SessionManagerImpl::Disown(const std::shared_ptr<Session>& s, const absl::Status& why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto t = sessions_.find(s->tenant);
    if (t != sessions_.end()) {
      auto it = t->second.find(s->id);
      if (it != t->second.end() && it->second == s) {
        t->second.erase(it);
        --session_count_;
      }
    }
  }
  {
    std::lock_guard<std::mutex> lock(s->mu);
    if (s->deleted) return;
    s->deleted = true;
    s->fence = 0;  // every later commit of it here fails
    for (auto& w : s->cancels) {
      if (auto c = w.lock()) c->Cancel();
    }
  }
  if (!why.ok()) {
    util::LogWarning("session",
                     absl::StrCat("session ", s->id, " of tenant ", s->tenant,
                                  " is no longer this replica's: ", why.message()),
                     {{"tenant", s->tenant}, {"session", s->id}});
  }
  // Its committed state is the new owner's; only the copy here goes, after the work queued on it.
  engine::Work w;
  w.key = s->key;
  w.task = [s] {
    s->state = engine::SequenceState{};
    std::lock_guard<std::mutex> lock(s->mu);
    s->SetHeldLocked({});
  };
  (void)scheduler_->Submit(std::move(w), /*bypass_limits=*/true);
}

void SessionManagerImpl::MaintainNow() {
  CheckOwnership();
  SweepGarbageIfDue();
  WriteBehind();
}

void SessionManagerImpl::SweepGarbageIfDue() {
  if (cluster_ == nullptr || absl::Now() < next_sweep_) return;
  next_sweep_ = absl::Now() + options_.cluster.gc_interval;
  absl::StatusOr<int64_t> deleted = cluster_->SweepGarbage(options_.cluster.gc_grace);
  if (!deleted.ok()) {
    // Another replica sweeping, or etcd away: the next interval tries again.
    if (!absl::IsFailedPrecondition(deleted.status())) {
      util::LogWarning("session", absl::StrCat("garbage sweep: ", deleted.status().ToString()));
    }
    return;
  }
  if (*deleted == 0) return;
  util::LogInfo("session", absl::StrCat("garbage sweep deleted ", *deleted, " unreferenced blobs"),
                {{"blobs", *deleted}});
  if (listener_ != nullptr) listener_->OnBlobsCollected(*deleted);
}

void SessionManagerImpl::CheckOwnership() {
  if (cluster_ == nullptr) return;
  std::vector<std::shared_ptr<Session>> lost;
  std::vector<std::shared_ptr<Session>> wanted;
  const bool lease_lost = cluster_->LeaseLost();
  std::vector<std::pair<std::string, std::string>> asked;
  if (!lease_lost) {
    auto listed = cluster_->Wanted();
    if (listed.ok()) asked = std::move(*listed);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (lease_lost) {
      for (auto& [tenant, by_id] : sessions_) {
        for (auto& [id, s] : by_id) lost.push_back(s);
      }
    }
    for (const auto& [tenant, id] : asked) {
      auto t = sessions_.find(tenant);
      if (t == sessions_.end()) continue;
      if (auto it = t->second.find(id); it != t->second.end()) wanted.push_back(it->second);
    }
  }
  // etcd deleted every owner key of the lost lease: other replicas may own these already.
  const absl::Status why = absl::UnavailableError("etcd expired this process's lease");
  for (auto& s : lost) Disown(s, why);
  for (auto& s : wanted) HandOver(s);
}

void SessionManagerImpl::HandOver(const std::shared_ptr<Session>& s) {
  {
    // Asked at every poll until it goes: one handover queued at a time.
    std::lock_guard<std::mutex> lock(s->mu);
    if (s->handover_queued) return;
    s->handover_queued = true;
  }
  engine::Work w;
  w.key = s->key;
  // On the engine, after the work queued on the session: the state committed is its latest.
  w.task = [this, s, cluster = cluster_] {
    bool changed;  // since its last commit
    {
      std::lock_guard<std::mutex> lock(s->mu);
      s->handover_queued = false;
      if (s->deleted || s->inflight > 0 || s->writer) return;  // busy: asked again next poll
      changed = s->resident && s->dirty;
    }
    if (changed) {
      absl::StatusOr<int64_t> written = WriteSessionFile(s);
      if (!written.ok()) return;  // kept (a fenced commit has disowned it already)
    }
    int64_t fence;
    {
      std::lock_guard<std::mutex> lock(s->mu);
      fence = s->fence;
    }
    // Forgotten here before ownership goes: the other replica may take it over at once, and
    // nothing of this manager is touched after the release.
    Disown(s, absl::OkStatus());
    util::LogInfo(
        "session",
        absl::StrCat("handing session ", s->id, " of tenant ", s->tenant, " over on request"),
        {{"tenant", s->tenant}, {"session", s->id}});
    cluster->Release(s->tenant, s->id, fence);
  };
  if (!scheduler_->Submit(std::move(w), /*bypass_limits=*/true).ok()) {
    std::lock_guard<std::mutex> lock(s->mu);
    s->handover_queued = false;
  }
}

void SessionManagerImpl::WriteBehind() {
  if (options_.persist_interval_ms <= 0) return;
  const int64_t now = NowMs();
  std::vector<std::shared_ptr<Session>> due;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [tenant, by_id] : sessions_) {
      for (auto& [id, s] : by_id) {
        std::lock_guard<std::mutex> slock(s->mu);
        const bool stale =
            s->persisted_ms == 0 || now - s->persisted_ms >= options_.persist_interval_ms;
        if (s->dirty && stale && s->resident && !s->evicting && !s->persist_queued) {
          s->persist_queued = true;
          due.push_back(s);
        }
      }
    }
  }
  for (auto& s : due) {
    engine::Work w;
    w.key = s->key;
    // After the work already queued on the session: the copy is a state between two writes.
    w.task = [this, s] {
      {
        std::lock_guard<std::mutex> lock(s->mu);
        s->persist_queued = false;
        if (s->deleted || !s->resident || !s->dirty) return;
      }
      absl::StatusOr<int64_t> written = WriteSessionFile(s);
      if (!written.ok()) {
        util::LogWarning("session",
                         absl::StrCat("write-behind of session ", s->id,
                                      " failed: ", written.status().message()),
                         {{"tenant", s->tenant}, {"session", s->id}});
      }
    };
    if (!scheduler_->Submit(std::move(w), /*bypass_limits=*/true).ok()) {
      std::lock_guard<std::mutex> lock(s->mu);
      s->persist_queued = false;
    }
  }
}

}  // namespace ttt::session
